"""Loading TOFU-layout directories: JSON Lines or arrays, optional files reduce metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alkn_core.demo_corpus import generate_corpus, write_corpus
from alkn_core.tofu import load_tofu_dir


def test_full_directory_and_json_arrays(tmp_path: Path) -> None:
    corpus = generate_corpus(people=10, holdout_people=1, seed=3)
    write_corpus(corpus, tmp_path)
    # TOFU's hub files are JSON arrays: the loader takes both forms.
    (tmp_path / "forget10.json").write_text(json.dumps(corpus.forget10))
    data = load_tofu_dir(tmp_path)
    assert data.notes == []
    assert data.forget10 == corpus.forget10 and len(data.full) == len(corpus.full)
    assert set(data.general_sets()) == {"real_authors", "world_facts"}
    assert all(len(r["perturbed_answer"]) == 5 for r in data.forget10_perturbed)


def test_missing_optional_files_are_reported(tmp_path: Path) -> None:
    write_corpus(generate_corpus(people=10, holdout_people=1, seed=3), tmp_path)
    (tmp_path / "holdout10.json").unlink()
    (tmp_path / "world_facts_perturbed.json").unlink()
    data = load_tofu_dir(tmp_path)
    assert data.holdout10 == [] and set(data.general_sets()) == {"real_authors"}
    assert any("holdout10.json missing" in n and "privacy" in n for n in data.notes)
    assert any("world_facts_perturbed.json missing" in n for n in data.notes)


def test_required_files_and_bad_records(tmp_path: Path) -> None:
    write_corpus(generate_corpus(people=10, holdout_people=1, seed=3), tmp_path)
    (tmp_path / "retain90.json").unlink()
    with pytest.raises(ValueError, match="retain90.json is missing"):
        load_tofu_dir(tmp_path)
    write_corpus(generate_corpus(people=10, holdout_people=1, seed=3), tmp_path)
    (tmp_path / "forget10.json").write_text('{"question": "q"}\n')
    with pytest.raises(ValueError, match="record 0"):
        load_tofu_dir(tmp_path)


def test_alkn_demo_data_writes_a_loadable_directory(tmp_path: Path) -> None:
    from alkn_cli.main import main

    assert main(["demo", "data", "--out", str(tmp_path), "--people", "10",
                 "--holdout-people", "1"]) == 0
    data = load_tofu_dir(tmp_path)
    assert data.notes == [] and len({r["person"] for r in data.full}) == 10
