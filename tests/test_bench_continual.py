"""Smoke test of bench/continual.py at toy size: the whole pipeline, tiny models trained in it."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from alkn_core.demo_corpus import generate_corpus, write_corpus

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_bench() -> Any:
    # bench/ is not a package; load the script by path like `python bench/continual.py`.
    path = Path(__file__).resolve().parents[1] / "bench" / "continual.py"
    spec = importlib.util.spec_from_file_location("bench_continual", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_split_tasks_by_person_and_chunks() -> None:
    bench = _load_bench()
    items = [{"question": f"q{i}", "answer": "a", "person": f"p{i // 3}"} for i in range(12)]
    tasks = bench.split_tasks(items, 2)
    assert [len(t) for t in tasks] == [6, 6]
    assert not {r["person"] for r in tasks[0]} & {r["person"] for r in tasks[1]}
    # Fewer people than tasks: contiguous equal chunks.
    assert [len(t) for t in bench.split_tasks(items, 5)] == [3, 3, 2, 2, 2]
    # a task item's perturbed record: the one with its question and its answer
    asked = [{"question": "Who?", "answer": a} for a in ("Ann", "Bo")]
    perturbed = [{**x, "perturbed_answer": [x["answer"] + "n"]} for x in reversed(asked)]
    assert bench.with_perturbed([asked, [{"question": "q", "answer": "a"}]], perturbed) == [
        [perturbed[1], perturbed[0]], [{"question": "q", "answer": "a"}]]
    assert bench.parse_sweep(
        "alkn:alpha=0.5,1;grad_ascent:lr=1e-3;alkn:mask_rule=retain_safe&alpha=1,2") == {
        "alkn": [{"alpha": 0.5}, {"alpha": 1.0}, {"mask_rule": "retain_safe", "alpha": 1.0},
                 {"mask_rule": "retain_safe", "alpha": 2.0}],
        "grad_ascent": [{"lr": 1e-3}]}
    assert bench.setting_label({"mask_rule": "retain_safe", "alpha": 0.5}) == \
        "mask_rule=retain_safe alpha=0.5"
    with pytest.raises(ValueError, match="bad --sweep"):
        bench.parse_sweep("alkn:alpha=")


def test_continual_benchmark_smoke(tmp_path: Path) -> None:
    bench = _load_bench()
    data = tmp_path / "data"
    write_corpus(generate_corpus(people=10, holdout_people=1, seed=0), data)
    out = tmp_path / "out"
    rc = bench.main(["--data-dir", str(data), "--out", str(out), "--tasks", "2",
                     "--methods", "alkn,grad_ascent", "--epochs", "1", "--max-items", "6",
                     "--finetune-epochs", "2", "--tiny-size", "test", "--vocab-size", "512",
                     "--max-new-tokens", "8"])
    assert rc == 0
    assert (out / "target" / "config.json").is_file() and (out / "retain" / "config.json").is_file()

    res = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in res["runs"]] == ["alkn", "grad_ascent"]
    for run in res["runs"]:
        assert [t["task"] for t in run["tasks"]] == [1, 2]
        for t in run["tasks"]:
            assert isinstance(t["summary"]["model_utility"], float)
            assert isinstance(t["metrics"]["model_utility"], float)
        # After task 2 both forgotten tasks are evaluated separately, with forget quality.
        last = run["tasks"][-1]["metrics"]
        assert "task1" in last and "task2" in last
        assert run["tasks"][-1]["summary"]["forget_quality"] is not None
    assert set(res["matched"]["per_method"]) == {"alkn", "grad_ascent"}
    # The library's defaults: alkn's alpha "auto", aimed at the holdout items' level.
    assert res["runs"][0]["params"].get("alpha", "auto") == "auto"
    for t in res["runs"][0]["tasks"]:
        calibration = t["stats"]["calibration"]
        assert calibration["target_source"] == "holdout"
        assert isinstance(calibration["alpha"], float)
    # A param the run cannot honour is an error (before anything is trained), never ignored.
    for params, error in (('{"grad_ascent": {"target_forget_prob": 0.1}}', "target_forget_prob"),
                          ('{"target_forget_prob": 0.1}', "must be a JSON object"),
                          ('{"npo": {"lr": 0.1}}', "does not run")):
        with pytest.raises(ValueError, match=error):
            bench.main(["--data-dir", str(data), "--out", str(tmp_path / "bad"), "--tasks",
                        "2", "--methods", "grad_ascent", "--params", params])
    assert not (tmp_path / "bad" / "target").exists()

    md = (out / "results.md").read_text()
    assert "## After task 2" in md and "matched forgetting" in md
    assert "## Model utility per task" in md
    for name in ("utility_per_task.png", "fq_vs_utility.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC


def test_continual_benchmark_on_tofus_own_layout(tmp_path: Path) -> None:
    """TOFU's files name no person: the tasks are still whole authors (their place in
    full.json), the retain items given to unlearning the other authors' (it failed with
    "method 'alkn' needs a retain set" when people were read only from `person`), and a
    malformed perturbed_answer does not stop the run."""
    from tests.test_tofu import tofu_layout

    bench = _load_bench()
    data = tmp_path / "data"
    tofu_layout(data)
    rows = [json.loads(x) for x in (data / "retain_perturbed.json").read_text().splitlines()]
    rows[0]["perturbed_answer"] = None
    (data / "retain_perturbed.json").write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    assert bench.main(["--data-dir", str(data), "--out", str(out), "--tasks", "2",
                       "--methods", "alkn", "--epochs", "1", "--max-items", "6",
                       "--finetune-epochs", "1", "--tiny-size", "test", "--vocab-size", "512",
                       "--max-new-tokens", "8"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["config"]["task_people"] == [["author 19"], ["author 20"]]
    assert any("no 'person' field" in n for n in res["notes"])
    assert not any("equal chunks" in n for n in res["notes"])
    # items that say nobody's: --people is refused before any model is trained
    rows = [json.loads(x) for x in (data / "forget10.json").read_text().splitlines()]
    (data / "forget10.json").write_text("\n".join(json.dumps(r) for r in rows[1:]))
    with pytest.raises(ValueError, match="--people"):
        bench.main(["--data-dir", str(data), "--out", str(tmp_path / "people"), "--people",
                    "1", "--methods", "alkn", "--tiny-size", "test"])
    assert not (tmp_path / "people" / "target").exists()


def test_alkn_bench_continual_runs_the_checkout_benchmark(capsys: pytest.CaptureFixture[str]
                                                          ) -> None:
    from alkn_cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["bench", "continual", "--help"])
    assert exit_.value.code == 0
    assert "--data-dir" in capsys.readouterr().out
    assert main(["bench", "nope"]) == 2
    with pytest.raises(SystemExit) as exit_:  # the bench command's own help, not bench/--help.py
        main(["bench", "--help"])
    assert exit_.value.code == 0 and "continual: the paper's protocol" in capsys.readouterr().out


def test_resume_reuses_only_runs_of_the_same_setup(tmp_path: Path) -> None:
    bench = _load_bench()
    config = {k: 1 for k in bench.SAME_RUN_KEYS}
    runs = [{"label": "alkn alpha=1", "tasks": [{}, {}]}, {"label": "npo", "tasks": [{}]}]
    (tmp_path / "results.json").write_text(json.dumps({"config": config, "runs": runs}))
    assert list(bench.finished_runs(tmp_path, config, 2)) == ["alkn alpha=1"]  # npo stopped
    with pytest.raises(SystemExit, match="max_items"):
        bench.finished_runs(tmp_path, {**config, "max_items": 2}, 2)
    assert bench.finished_runs(tmp_path / "none", config, 2) == {}
