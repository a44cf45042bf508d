"""The progress bar's stage spans follow each stage's work; the ETA from what was done."""

from __future__ import annotations

import pytest

from registry.jobs.build import repair_rounds_seen
from registry.models import Version
from worker.progress_plan import (
    LOAD_SAVE_SHARE,
    ORDER,
    eta_seconds,
    eval_work,
    expected_repair_rounds,
    spans,
    unlearning_work,
)


def test_spans_are_contiguous_and_proportional_to_work() -> None:
    work = {"evaluating:before": 0.0, "probing": 10.0, "training": 30.0, "negating": 40.0,
            "evaluating:after": 20.0}
    s = spans(work)
    assert s["loading"] == (0.0, LOAD_SAVE_SHARE) and s["saving"][1] == pytest.approx(1.0)
    for a, b in zip(ORDER, ORDER[1:], strict=False):
        assert s[a][1] == pytest.approx(s[b][0])
    width = {k: s[k][1] - s[k][0] for k in ORDER}
    assert width["evaluating:before"] == 0.0  # nothing to measure: no time on the bar
    assert width["negating"] == pytest.approx(2 * width["evaluating:after"])
    assert width["training"] == pytest.approx(3 * width["probing"])


def test_work_estimates_follow_sizes() -> None:
    params = {"epochs": 5, "alpha": "auto", "calibration_evals": 8, "repair_steps": 30,
              "repair_rounds": 5, "batch_size": 8}
    small = unlearning_work("alkn", params, 4, 100, 0)
    big = unlearning_work("alkn", params, 40, 100, 0)
    assert big["training"] == pytest.approx(10 * small["training"])
    assert big["negating"] > small["negating"]
    assert eval_work(100, 20) > eval_work(100, 0) == 100.0
    # a 640-item request's hinge takes 8 batches a step (repair_hinge_passes 3): 7 more
    # forward passes of a batch per step than one a step; 40 items take one either way
    def negating(n: int, passes: int) -> float:
        return unlearning_work("alkn", {**params, "repair_hinge_passes": passes}, n, 100,
                               0)["negating"]
    steps = 30 * 2.5  # repair_steps x the rounds expected without a lineage (half of 5)
    assert negating(640, 3) - negating(640, 0) == pytest.approx(steps * 8 * 7)
    assert negating(40, 3) == negating(40, 0)


def test_eta() -> None:
    assert eta_seconds(10.0, 0.01) is None
    assert eta_seconds(10.0, 0.25) == pytest.approx(30.0)
    assert eta_seconds(10.0, 1.0) == 0.0


def _version(rounds: int | None) -> Version:
    """A version whose job ran `rounds` repair rounds (0: none, its request negated nothing;
    None: no repair in its metrics, as a root version)."""
    if rounds is None:
        return Version(metrics=None)
    return Version(metrics={"unlearning": {"repair": {"rounds": [{"steps": 30}] * rounds}}})


def test_the_repair_estimate_follows_the_lineages_last_repair() -> None:
    params = {"epochs": 5, "alpha": "auto", "calibration_evals": 8, "repair_steps": 30,
              "repair_rounds": 5, "batch_size": 8}
    # base first: a request that negated nothing (no round), then one that ran 3, the root
    chain = [_version(0), _version(3), _version(None)]
    assert repair_rounds_seen(chain) == 3
    assert repair_rounds_seen([_version(0), _version(None)]) is None  # none ran: no history
    assert expected_repair_rounds(params, None) == 2.5  # half of repair_rounds
    assert expected_repair_rounds(params, 1) == 1.0
    assert expected_repair_rounds(params, 9) == 5.0  # never more than the params allow

    def negating(seen: int | None) -> float:
        return unlearning_work("alkn", params, 4, 100, 2, seen)["negating"]

    search = 8 * (4 + 16)  # the alpha search's passes, the same whatever the rounds
    assert (negating(4) - search) == pytest.approx(4 * (negating(1) - search))
    assert negating(None) == pytest.approx(negating(1) + 1.5 * (negating(1) - search))
