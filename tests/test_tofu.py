"""Loading TOFU-layout directories: JSON Lines or arrays, optional files reduce metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alkn_core.demo_corpus import Corpus, generate_corpus, read_jsonl, write_corpus
from alkn_core.tofu import QA_PER_AUTHOR, load_tofu_dir


def tofu_layout(directory: Path, people: int = 20) -> Corpus:
    """A directory laid out as TOFU's own files are: no `person` field anywhere, full.json
    QA_PER_AUTHOR questions per author in a row (our corpus's people padded to that with a
    question every author is asked, the answers their own), the forget set the last
    authors'."""
    corpus = generate_corpus(people=people, holdout_people=1, seed=0)
    by_person: dict[str, list[dict]] = {}
    for r in corpus.full:
        by_person.setdefault(r["person"], []).append(r)
    forget_people = {r["person"] for r in corpus.forget10}
    for name, items in by_person.items():
        for k in range(len(items), QA_PER_AUTHOR):
            shared = {"question": "Which of the author's books came out last?",
                      "answer": f"{name}'s last book is Volume {k}."}
            items.append(shared)
            perturbed = (corpus.forget10_perturbed if name in forget_people
                         else corpus.retain_perturbed)
            perturbed.append({**shared, "paraphrased_answer": shared["answer"],
                              "perturbed_answer": [f"Volume {k + 1}."]})
    corpus.full = [r for items in by_person.values() for r in items]
    corpus.forget10 = [r for p, items in by_person.items() if p in forget_people for r in items]
    corpus.retain90 = [r for p, items in by_person.items() if p not in forget_people
                       for r in items]
    for records in corpus.splits().values():
        for r in records:
            r.pop("person", None)
    write_corpus(corpus, directory)
    return corpus


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


def test_tofus_own_files_name_no_person_their_layout_does(tmp_path: Path) -> None:
    tofu_layout(tmp_path)
    (tmp_path / "retain90.json").write_bytes(  # a byte-order mark, as some editors write
        b"\xef\xbb\xbf" + (tmp_path / "retain90.json").read_bytes())
    data = load_tofu_dir(tmp_path)
    assert any("no 'person' field" in n and "20 QA per author" in n for n in data.notes)
    assert [r["person"] for r in data.full[:21:10]] == ["author 1", "author 1", "author 2"]
    assert {r["person"] for r in data.forget10} == {"author 19", "author 20"}
    shared = [r for r in data.full if r["question"].startswith("Which of the author's")]
    assert len({r["person"] for r in shared}) == len(shared) > 1  # one question, many authors
    assert "author 19" not in {r["person"] for r in data.retain90}
    asked = {(r["question"], r["answer"]): r["person"] for r in data.full}
    for records in (data.forget10_perturbed, data.retain_perturbed):
        assert {r["question"] for r in records} & {r["question"] for r in shared}
        assert all(r["person"] == asked[r["question"], r["answer"]] for r in records)
    # a full.json that is not 20 per author: no people made up, and a note says so
    (tmp_path / "full.json").write_text("\n".join(
        json.dumps(r) for r in read_jsonl(tmp_path / "full.json")[:-1]))
    data = load_tofu_dir(tmp_path)
    assert all(r.get("person") is None for r in data.forget10)
    assert any("equal chunks" in n for n in data.notes)
    (tmp_path / "full.json").write_text('\n[{"question": "q", "answer": "a"},\n{"question": }]')
    with pytest.raises(ValueError, match="full.json: line 3: not JSON"):
        load_tofu_dir(tmp_path)


def test_authors_are_made_up_only_for_tofus_layout(tmp_path: Path) -> None:
    corpus = tofu_layout(tmp_path)
    # forget10 not a whole-author slice of full.json (its first author's first item missing),
    # though full.json's length is a multiple of 20: no author is guessed
    (tmp_path / "forget10.json").write_text("\n".join(json.dumps(r) for r in corpus.forget10[1:]))
    data = load_tofu_dir(tmp_path)
    assert all(r.get("person") is None for r in [*data.full, *data.forget10])
    assert any("whole-author slices" in n for n in data.notes)
    # files that name their people, perturbed files that do not: the perturbed records get
    # the named person of their question and answer, no made-up author
    write_corpus(generate_corpus(people=10, holdout_people=1, seed=3), tmp_path)
    rows = read_jsonl(tmp_path / "retain_perturbed.json")
    (tmp_path / "retain_perturbed.json").write_text("\n".join(
        json.dumps({k: v for k, v in r.items() if k != "person"}) for r in rows))
    data = load_tofu_dir(tmp_path)
    assert [r["person"] for r in data.retain_perturbed] == [r["person"] for r in rows]
    assert not any("author" in n for n in data.notes)
