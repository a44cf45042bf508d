"""alpha "auto": the search on synthetic curves (pure, fast), the parameters, a tiny model
reaching its target, and the worker's success and failure paths."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from alkn_core import CalibrationError, unlearn
from alkn_core.calibration import (
    ALPHA_TOL,
    FORGET_TOL,
    AlphaSearch,
    forget_target,
    search_alpha,
)
from alkn_core.data import encode_items, pad_id
from alkn_core.losses import mean_answer_probability
from alkn_core.methods import method_params

from .conftest import TinyWorld
from .test_worker import worker_world as worker_world  # noqa: F401  (the fixture)

Curve = Callable[[float], float]

# Monotone decreasing forget-probability curves p(alpha), p(0) ~ 0.9.
CURVES: dict[str, Curve] = {
    "exponential": lambda a: 0.9 * math.exp(-1.7 * a),
    "accelerating": lambda a: 0.9 * math.exp(-0.4 * a - 0.9 * a * a),  # like ALKN's
    "logistic_cliff": lambda a: 0.9 / (1 + math.exp(6 * (a - 2.2))),
    "slow_start": lambda a: 0.9 * math.exp(-(a ** 3) / 2),
    "linear": lambda a: max(0.0, 0.9 - 0.3 * a),
}


def _root(curve: Curve, target: float, hi: float = 4.0) -> float:
    """The smallest alpha with curve(alpha) <= target (bisection to 1e-12)."""
    lo = 0.0
    while hi - lo > 1e-12:
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if curve(mid) <= target else (mid, hi)
    return hi


def _counted(curve: Curve, calls: list[float]) -> Callable[[float], tuple[float, float]]:
    def evaluate(alpha: float) -> tuple[float, float]:
        calls.append(alpha)
        return curve(alpha), 1.0 - alpha / 10  # a retain probe that falls with alpha

    return evaluate


def _just_enough(res: AlphaSearch, curve: Curve, target: float) -> None:
    """The chosen alpha reaches the target and is the smallest one within tolerance."""
    root = _root(curve, target)
    assert res.alpha >= root - 1e-12 and curve(res.alpha) <= target
    assert res.forget_prob == curve(res.alpha) <= target
    assert res.forget_prob >= target * (1 - FORGET_TOL) or res.alpha <= root / (1 - ALPHA_TOL)


# --------------------------------------------------------------------------------------------
# The search (pure functions)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CURVES))
@pytest.mark.parametrize("target", [0.3, 0.09, 0.02])
def test_search_finds_the_smallest_alpha_within_tolerance(name: str, target: float) -> None:
    curve = CURVES[name]
    if curve(4.0) > target:
        pytest.skip("out of reach (the failure test covers it)")
    calls: list[float] = []
    res = search_alpha(_counted(curve, calls), target, alpha_max=4.0, max_evals=8,
                       forget_at_zero=curve(0.0))
    assert res.within_tolerance and res.target == target
    _just_enough(res, curve, target)
    assert len(calls) == res.evaluations <= 8
    assert [p.alpha for p in res.curve] == calls
    assert all(0 < a <= 4.0 for a in calls)
    assert [row[0] for row in res.sorted_curve()] == sorted(calls)
    assert res.sorted_curve()[0][2] is not None  # the retain probe rides along


@pytest.mark.parametrize("name", ["exponential", "accelerating"])
@pytest.mark.parametrize("target", [0.3, 0.09, 0.02])
def test_search_is_cheap_on_smooth_curves(name: str, target: float) -> None:
    # The budget is a ceiling; smooth curves need far fewer forward passes.
    calls: list[float] = []
    curve = CURVES[name]
    search_alpha(_counted(curve, calls), target, alpha_max=4.0, max_evals=8,
                 forget_at_zero=curve(0.0))
    assert len(calls) <= 4


@pytest.mark.parametrize("budget", [1, 2, 3, 5, 8])
def test_search_respects_the_evaluation_budget(budget: int) -> None:
    # A step: no alpha lands inside the forget window, only the bracket can end the search.
    def step(a: float) -> float:
        return 0.9 if a < 1.2345 else 0.001

    calls: list[float] = []
    try:
        res = search_alpha(_counted(step, calls), 0.05, alpha_max=4.0, max_evals=budget,
                           forget_at_zero=0.9)
    except CalibrationError as exc:
        assert budget == 1 and exc.curve and len(exc.curve) == 1
    else:
        assert step(res.alpha) <= 0.05 and res.alpha >= 1.2345
        if res.within_tolerance:  # then it is proven: a missing alpha lies that close below
            assert res.alpha - 1.2345 <= ALPHA_TOL * res.alpha
        assert res.within_tolerance == (budget == 8)  # fewer: the smallest reaching one found
    assert len(calls) <= budget


def test_search_without_a_known_start_point() -> None:
    # forget_at_zero unknown: alpha doubles until it reaches, then bisects/interpolates.
    curve = CURVES["accelerating"]
    calls: list[float] = []
    res = search_alpha(_counted(curve, calls), 0.02, alpha_max=4.0, max_evals=8)
    _just_enough(res, curve, 0.02)
    assert calls[0] == 1.0 and len(calls) <= 8


def test_search_starts_from_the_previous_alpha() -> None:
    curve = CURVES["exponential"]
    calls: list[float] = []
    root = _root(curve, 0.1)
    res = search_alpha(_counted(curve, calls), 0.1, alpha_max=4.0, max_evals=8,
                       forget_at_zero=0.9, start=root * 1.02)
    assert calls == [root * 1.02] and res.alpha == root * 1.02  # inside the window at once
    calls.clear()
    search_alpha(_counted(curve, calls), 0.1, alpha_max=4.0, max_evals=8,
                 forget_at_zero=0.9, start=9.0)  # past alpha_max: ignored
    assert calls[0] == 1.0


def test_search_reports_failure_when_out_of_reach() -> None:
    def floor(a: float) -> float:  # never below 0.2
        return 0.2 + 0.7 * math.exp(-a)

    calls: list[float] = []
    with pytest.raises(CalibrationError) as info:
        search_alpha(_counted(floor, calls), 0.05, alpha_max=4.0, max_evals=8,
                     forget_at_zero=0.9)
    exc = info.value
    assert calls[-1] == 4.0 and len(calls) <= 8  # grew up to alpha_max, then stopped
    assert exc.best_alpha == 4.0 and exc.best_forget_prob == pytest.approx(floor(4.0))
    message = str(exc)
    assert "best alpha tried, 4," in message and f"{floor(4.0):.4g}" in message
    assert "target 0.05" in message and "(0, 4]" in message
    details = exc.details()
    assert details["best_alpha"] == 4.0 and len(details["curve"]) == len(calls)
    # A budget too small to reach alpha_max fails too, naming what it tried.
    calls.clear()
    with pytest.raises(CalibrationError, match="in 2 of 2 evaluations"):
        search_alpha(_counted(CURVES["slow_start"], calls), 1e-6, alpha_max=4.0,
                     max_evals=2, forget_at_zero=0.9)
    assert len(calls) == 2


def test_search_edge_cases() -> None:
    calls: list[float] = []
    res = search_alpha(_counted(CURVES["linear"], calls), 0.5, alpha_max=4.0, max_evals=8,
                       forget_at_zero=0.4)  # already below the target: nothing to negate
    assert res.alpha == 0.0 and res.evaluations == 0 and not calls
    res = search_alpha(_counted(CURVES["exponential"], calls), 0.5, alpha_max=0.5,
                       max_evals=8, forget_at_zero=0.9)
    assert calls[0] == 0.5 and res.alpha <= 0.5  # alpha_max below the default start
    with pytest.raises(ValueError):
        search_alpha(_counted(CURVES["linear"], calls), 0.0, alpha_max=4.0, max_evals=8)


def test_forget_target_precedence() -> None:
    assert forget_target(0.8) == (pytest.approx(0.08), "ratio")
    assert forget_target(0.8, ratio=0.5) == (0.4, "ratio")
    assert forget_target(0.8, holdout_prob=0.03) == (0.03, "holdout")
    assert forget_target(0.8, explicit=0.2, holdout_prob=0.03) == (0.2, "explicit")


# --------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------


def test_auto_params_defaults_and_validation() -> None:
    p = method_params("alkn", None)
    assert p["alpha"] == "auto"  # the default of alkn: forget exactly enough
    assert method_params("alkn", {"alpha": "auto"})["alpha"] == "auto"
    assert (p["target_forget_prob"], p["target_forget_ratio"], p["alpha_max"],
            p["calibration_evals"]) == (None, 0.1, 4.0, 8)
    assert method_params("task_vector", None)["alpha"] == 1.0  # unchanged
    assert method_params("task_vector", {"alpha": "auto"})["alpha"] == "auto"
    assert method_params("alkn", {"alpha": 2})["alpha"] == 2.0
    assert method_params("alkn", {"target_forget_prob": 0.05})["target_forget_prob"] == 0.05
    assert method_params("alkn", {"target_forget_prob": None})["target_forget_prob"] is None
    assert method_params("alkn", {"calibration_evals": 3.0})["calibration_evals"] == 3
    bad = [
        ({"alpha": "fast"}, "'alpha' must be 'auto' or a number > 0"),
        ({"alpha": 0}, "'alpha' must be > 0"),
        ({"alpha": True}, "'alpha' must be a number"),
        ({"target_forget_prob": 1.5}, "'target_forget_prob' must be <= 1"),
        ({"target_forget_prob": 0.0}, "'target_forget_prob' must be > 0"),
        ({"target_forget_prob": "low"}, "'target_forget_prob' must be a number"),
        ({"target_forget_ratio": 2.0}, "'target_forget_ratio' must be <= 1"),
        ({"alpha_max": -1.0}, "'alpha_max' must be > 0"),
        ({"calibration_evals": 0}, "'calibration_evals' must be > 0"),
        ({"calibration_evals": 2.5}, "'calibration_evals' must be an integer"),
    ]
    for params, message in bad:
        with pytest.raises(ValueError, match=message):
            method_params("alkn", params)
    with pytest.raises(ValueError, match="unknown param.*'alpha_max'"):
        method_params("grad_ascent", {"alpha_max": 2.0})
    # A model's default_params (any method's keys) take "auto" and null too.
    from registry.catalog import validate_default_params

    ok = {"alpha": "auto", "target_forget_prob": None, "alpha_max": 3.0}
    assert validate_default_params(ok, "Q: {question} A: {answer}") == ok


# --------------------------------------------------------------------------------------------
# A tiny model
# --------------------------------------------------------------------------------------------

TINY = {"lr": 3e-3, "epochs": 5, "batch_size": 8, "grad_accum": 1,
        "mask_rule": "retain_safe", "alpha": "auto"}


def _prob(model: torch.nn.Module, world: TinyWorld, items: list[dict[str, Any]]) -> float:
    p = method_params("alkn", {})
    return mean_answer_probability(model, encode_items(items, world.tokenizer, p),
                                   pad_id(world.tokenizer), 8)


def test_auto_alpha_reaches_its_target_on_a_tiny_model(trained: torch.nn.Module,
                                                       tiny_world: TinyWorld) -> None:
    people = tiny_world.people
    forget, retain = tiny_world.of(people[0]), tiny_world.of(*people[4:])
    model = copy.deepcopy(trained)
    before = _prob(model, tiny_world, forget)
    stages: list[tuple[str, int, int]] = []
    r = unlearn(model, tiny_world.tokenizer, forget, retain, params=TINY,
                progress=lambda *a: stages.append(a))
    c = r.stats["calibration"]
    assert c["target_source"] == "ratio" and c["target"] == pytest.approx(0.1 * before)
    assert c["forget_prob_before"] == pytest.approx(before)
    after = _prob(model, tiny_world, forget)
    assert after <= c["target"] * (1 + 1e-6) and after == pytest.approx(c["forget_prob"])
    assert r.stats["alpha"] == c["alpha"] > 0 and c["within_tolerance"]
    assert 1 <= c["evaluations"] == len(c["curve"]) <= c["budget"] == 8
    assert [row[0] for row in c["curve"]] == sorted(row[0] for row in c["curve"])
    assert all(row[2] is not None for row in c["curve"]) and c["retain_probe_items"] == 16
    assert c["search_seconds"] > 0 and r.stats["seconds"]["calibration"] > 0
    # Forgetting just enough: the chosen alpha is the smallest reaching one it evaluated.
    assert all(f > c["target"] for a, f, _ in c["curve"] if a < c["alpha"])
    assert ("negating", 1, 8) in stages
    assert r.state is not None and r.state.info["calibrated_alpha"] == c["alpha"]

    # The next task starts its search from this alpha; a holdout set sets the target.
    holdout = [{"question": a["question"], "answer": b["answer"]}  # pairs never trained
               for a, b in zip(tiny_world.of(people[2]), tiny_world.of(people[3]),
                               strict=False)]
    holdout_before = _prob(model, tiny_world, holdout)
    r2 = unlearn(model, tiny_world.tokenizer, tiny_world.of(people[1]), retain, params=TINY,
                 state=r.state, holdout=holdout)
    c2 = r2.stats["calibration"]
    assert c2["target_source"] == "holdout" and c2["holdout_items"] == len(holdout)
    assert c2["target"] == pytest.approx(holdout_before)
    assert c2["forget_prob"] <= c2["target"]
    assert any(row[0] == c["alpha"] for row in c2["curve"])  # tried first
    assert not c2["holdout_carried"] and r2.state is not None
    assert r2.state.info["holdout_reference"] == pytest.approx(holdout_before)
    # The lineage keeps that "never seen" level: the next task aims at it again, not at
    # the holdout items' level on the model this task has worn down.
    # (the repair keeps it close: it moved by about 0.07% here, still far beyond the 1e-6
    # at which the carried target is compared below)
    assert _prob(model, tiny_world, holdout) != pytest.approx(holdout_before, rel=1e-4)
    r2b = unlearn(model, tiny_world.tokenizer, tiny_world.of(people[3]), retain, params=TINY,
                  state=r2.state, holdout=holdout)
    c2b = r2b.stats["calibration"]
    assert c2b["holdout_carried"] and c2b["target_source"] == "holdout"
    assert c2b["target"] == pytest.approx(holdout_before) and c2b["holdout_items"] == 0
    assert r2b.state is not None
    assert r2b.state.info["holdout_reference"] == pytest.approx(holdout_before)
    # An explicit target wins over the holdout items.
    r3 = unlearn(copy.deepcopy(model), tiny_world.tokenizer, tiny_world.of(people[1]),
                 retain, params={**TINY, "target_forget_prob": 0.5}, holdout=holdout)
    assert r3.stats["calibration"]["target_source"] == "explicit"


def test_unreachable_target_returns_the_most_forgetting_model(trained: torch.nn.Module,
                                                               tiny_world: TinyWorld) -> None:
    """Out of reach at alpha_max: escalated fine-tunes, then the best model found, flagged."""
    people = tiny_world.people
    forget = tiny_world.of(people[0])[:8]
    params = {"lr": 1e-3, "epochs": 1, "batch_size": 8, "grad_accum": 1, "alpha": "auto",
              "alpha_max": 0.02, "calibration_evals": 3, "repair_steps": 0}
    model = copy.deepcopy(trained)
    before = _prob(model, tiny_world, forget)
    r = unlearn(model, tiny_world.tokenizer, forget, tiny_world.of(*people[4:]),
                params=params, method="task_vector")
    c = r.stats["calibration"]
    assert r.stats["target_met"] is False and c["target_met"] is False
    assert [a["lr"] for a in c["attempts"]] == pytest.approx([1e-3, 3e-3, 9e-3])
    assert not any(a["target_met"] for a in c["attempts"])
    after = _prob(model, tiny_world, forget)
    assert c["target"] < after < 0.99 * before and after == pytest.approx(c["forget_prob"])
    assert 0 < c["alpha"] <= 0.02


def test_nothing_forgettable_raises_and_leaves_the_model(trained: torch.nn.Module,
                                                         tiny_world: TinyWorld) -> None:
    people = tiny_world.people
    model = copy.deepcopy(trained)
    with pytest.raises(CalibrationError, match="best alpha tried") as info:
        unlearn(model, tiny_world.tokenizer, tiny_world.of(people[0])[:8],
                tiny_world.of(*people[4:]),
                params={"lr": 1e-9, "epochs": 1, "batch_size": 8, "grad_accum": 1,
                        "alpha": "auto", "alpha_max": 0.02, "calibration_evals": 3,
                        "escalations": 0},
                method="task_vector")
    assert info.value.best_alpha is not None and info.value.best_alpha <= 0.02
    for a, b in zip(model.parameters(), trained.parameters(), strict=True):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------------------------
# The worker: metrics and events on success; a failed job publishes nothing
# --------------------------------------------------------------------------------------------


def test_worker_reports_the_curve_and_fails_unreachable_targets(
        module_pg_url: str, tmp_path: Path, worker_world: Any) -> None:  # noqa: F811
    from sqlalchemy import select

    from config.settings import Settings
    from registry.db import session_scope
    from registry.models import ForgetRequest, Job, JobEvent
    from registry.store import LocalStore
    from worker.runner import run_lineage_once

    from .test_worker import PARAMS, get, register, submit, versions

    # Its own database: other modules' queued requests would make the lineage yield.
    settings = Settings(database_url=module_pg_url, artifact_root=str(tmp_path / "artifacts"),
                        home=tmp_path, queue="unused")
    store = LocalStore(settings.resolved_artifact_root)
    url = settings.resolved_database_url
    # alpha "auto" as the model's default; the fixture's two-epoch task vector reaches half
    # the forget probability, not the default tenth.
    defaults = {**PARAMS, "alpha": "auto", "target_forget_ratio": 0.5}
    model_id = register(url, store, worker_world, default_params=defaults)
    person = worker_world.items[worker_world.people[0]]
    # Nothing can be forgotten (a near-zero lr, no escalation): the only failure left.
    bad = submit(url, model_id, person[:6], params={"alpha_max": 0.01, "lr": 1e-9,
                                                    "calibration_evals": 2,
                                                    "escalations": 0})
    good = submit(url, model_id, person[6:12])
    assert run_lineage_once(settings, model_id, "w-1", store=store) == 2

    failed, ok = get(url, ForgetRequest, bad), get(url, ForgetRequest, good)
    assert failed.status == "failed" and failed.error["type"] == "calibration_failed"
    assert "best alpha tried" in failed.error["message"]
    assert ok.status == "succeeded" and ok.result_version == 2
    assert [v.number for v in versions(url, model_id)] == [1, 2]  # nothing of the failure

    job = get(url, Job, ok.job_id)
    cal = job.metrics["unlearning"]["calibration"]
    assert job.metrics["unlearning"]["alpha"] == cal["alpha"] > 0
    assert cal["forget_prob"] <= cal["target"] and cal["curve"]
    assert job.timings["calibration"] > 0
    # The quality gate reads the search's verdict (issue 13).
    assert job.quality["target_met"] is True
    assert job.quality["forget_target"] == {"target": cal["target"],
                                            "forget_prob": cal["forget_prob"],
                                            "source": cal["target_source"]}
    with session_scope(url) as s:
        events = {jid: [(e.stage, e.message, e.data) for e in s.scalars(
            select(JobEvent).where(JobEvent.job_id == jid).order_by(JobEvent.id))]
            for jid in (ok.job_id, failed.job_id)}
    chosen = [e for e in events[ok.job_id] if e[1].startswith("alpha ")]
    assert len(chosen) == 1 and chosen[0][0] == "negating"
    assert chosen[0][2]["curve"] == cal["curve"] and chosen[0][2]["alpha"] == cal["alpha"]
    missed = [e for e in events[failed.job_id] if e[1].startswith("no alpha reached")]
    assert len(missed) == 1 and len(missed[0][2]["curve"]) <= 2
    assert events[failed.job_id][-1][0] == "done"



# --------------------------------------------------------------------------------------------
# bench/calibration.py
# --------------------------------------------------------------------------------------------


def _load_bench() -> Any:
    import bench.calibration  # bench/ is a namespace package from the checkout's root

    return bench.calibration


def _task(k: int, utility: float, holdout: bool, ratio: bool = False,
          search: float | None = None) -> dict[str, Any]:
    cal = None if search is None else {"search_seconds": search, "probe_seconds": 1.0,
                                       "evaluations": 3}
    return {"task": k, "alpha": 1.0, "failed": None, "forget_after": 0.01,
            "targets": {"holdout": 0.02, "ratio": 0.09},
            "reached": {"holdout": holdout, "ratio": ratio}, "model_utility": utility,
            "mean_forget_probability": 0.01, "forget_quality": 0.5, "calibration": cal,
            "seconds": {"training": 10.0}}


def test_bench_summaries_pick_the_hindsight_alpha(tmp_path: Path) -> None:
    bench = _load_bench()
    runs = [
        {"label": "auto (holdout target)", "alpha": "auto", "target_kind": "holdout",
         "tasks": [_task(1, 0.6, True, search=2.0), _task(2, 0.5, True, search=1.0)]},
        {"label": "alpha=1", "alpha": 1.0, "tasks": [_task(1, 0.7, True), _task(2, 0.6, False)]},
        {"label": "alpha=2", "alpha": 2.0, "tasks": [_task(1, 0.4, True), _task(2, 0.3, True)]},
        {"label": "alpha=3", "alpha": 3.0, "tasks": [_task(1, 0.2, True), _task(2, 0.1, True)]},
    ]
    assert bench.best_fixed(runs, "holdout")["label"] == "alpha=2"  # reaches all, most utility
    assert bench.best_fixed(runs, "ratio")["label"] == "alpha=1"  # none reaches: utility decides
    assert bench.reached_all(runs[0], "holdout") and not bench.reached_all(runs[1], "holdout")
    cost = bench.search_costs(runs[0])
    assert cost["search_mean"] == pytest.approx(0.15) and cost["search_max"] == 0.2
    assert cost["with_probes_max"] == pytest.approx(0.3)
    assert [s["label"] for s in bench.run_settings("1,2.5", ["holdout"])] == [
        "auto (holdout target)", "alpha=1", "alpha=2.5"]
    runs[0]["search_cost"] = cost
    res = {"config": {"tasks": 2, "auto_targets": ["holdout"], "run_params": {"lr": 1e-3}},
           "target_forget_probability": 0.9, "target_utility": 0.8, "runs": runs}
    res["verdict"] = bench.verdict(res)
    assert res["verdict"][0].startswith("holdout target: auto reached it on 2/2 tasks; best "
                                        "fixed alpha in hindsight alpha=2 reached it on 2/2")
    assert "0.5000 vs 0.3000 (at least as much" in res["verdict"][0]
    md = "\n".join(bench.write_markdown(res, tmp_path / "r.md"))
    assert "best fixed in hindsight (alpha=2)" in md and "0.0100* (<= 0.0200)" in md
    bench.write_plot(res, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
