"""Continual unlearning on a tiny Llama trained in a fixture on eight fictitious people.

Three successive tasks forget three different people; the other five are the retain set.
After every task each forgotten person's mean answer probability must be at most half of
what it was before any unlearning, and the retain set's must stay within the margin each
method states below (retain >= RETAIN_FLOOR x its value before, and above the forgotten
sets' probability by RETAIN_OVER_FORGET: forgetting is selective, not a broken model).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from alkn_core import UnlearnState, unlearn
from alkn_core.data import encode_items, pad_id
from alkn_core.losses import mean_answer_probability
from alkn_core.params import LoopParams

from .conftest import TinyWorld

# Per method: hyper-parameters for this tiny model (it needs a far larger lr than a 7B one)
# and the retain margins it must keep, measured on this fixture. At the forgetting this test
# demands, task_vector loses most of the retain set by the third task (retain ~4% of its
# start: the "accumulative decline" ALKN exists to stop), so its floor is only 2%; ALKN
# keeps ~35% and stays level across tasks, grad_diff ~60% at this scale.
CASES: dict[str, dict[str, Any]] = {
    # alpha 1: the margins below were measured at a fixed alpha (alkn's default is "auto").
    "alkn": {"params": {"lr": 3e-3, "mask_rule": "retain_safe", "alpha": 1.0}, "floor": 0.3,
             "over": 1.5},
    "task_vector": {"params": {"lr": 1e-3, "alpha": 1.2}, "floor": 0.02, "over": 1.5},
    "grad_diff": {"params": {"lr": 1e-3}, "floor": 0.5, "over": 5.0},
}
COMMON = {"epochs": 5, "batch_size": 8, "grad_accum": 1}


def _prob(model: torch.nn.Module, world: TinyWorld, items: list[dict[str, Any]]) -> float:
    p = LoopParams()
    return mean_answer_probability(model, encode_items(items, world.tokenizer, p),
                                   pad_id(world.tokenizer))


@pytest.mark.parametrize("method", list(CASES))
def test_three_successive_tasks(method: str, trained: torch.nn.Module,
                                tiny_world: TinyWorld) -> None:
    case = CASES[method]
    people = tiny_world.people
    tasks = [tiny_world.of(person) for person in people[:3]]
    retain = tiny_world.of(*people[3:])
    model = copy.deepcopy(trained)
    before = [_prob(model, tiny_world, t) for t in tasks]
    retain_before = _prob(model, tiny_world, retain)
    assert min(before) > 0.6 and retain_before > 0.6, "the fixture model must know its people"

    state: UnlearnState | None = None
    seen_steps: list[str] = []
    for k, task in enumerate(tasks):
        result = unlearn(model, tiny_world.tokenizer, task, retain, method=method,
                         params={**COMMON, **case["params"]}, state=state,
                         progress=lambda stage, step, total: seen_steps.append(stage))
        if method == "alkn":
            assert result.state is not None and result.state.task_index == k + 1
            assert result.stats["task_index"] == k
            assert 0.0 < result.stats["unmask_ratio"] < 1.0
            state = result.state
        forgotten = [_prob(model, tiny_world, t) for t in tasks[: k + 1]]
        kept = _prob(model, tiny_world, retain)
        for j, p in enumerate(forgotten):
            assert p <= 0.5 * before[j], f"task {k + 1}: person {j + 1} at {p:.3f}"
        assert kept >= case["floor"] * retain_before, f"task {k + 1}: retain at {kept:.3f}"
        assert kept >= case["over"] * max(forgotten), f"task {k + 1}: {kept:.3f} {forgotten}"
    assert {"probing", "training"} <= set(seen_steps)


def test_alkn_state_carries_across_a_save(trained: torch.nn.Module, tiny_world: TinyWorld,
                                          tmp_path: Any) -> None:
    """Task 2 from a saved-and-loaded state equals task 2 from the in-memory state, and the
    cumulative mask grows while re-use of earlier coordinates stays low."""
    people = tiny_world.people
    retain = tiny_world.of(*people[3:])
    params = {**COMMON, **CASES["alkn"]["params"]}
    first = copy.deepcopy(trained)
    r1 = unlearn(first, tiny_world.tokenizer, tiny_world.of(people[0]), retain,
                 params=params)
    assert r1.state is not None
    r1.state.save(tmp_path / "state")
    twins = [copy.deepcopy(first), copy.deepcopy(first)]
    results = [
        unlearn(twins[0], tiny_world.tokenizer, tiny_world.of(people[1]), retain,
                params=params, state=r1.state),
        unlearn(twins[1], tiny_world.tokenizer, tiny_world.of(people[1]), retain,
                params=params, state=UnlearnState.load(tmp_path / "state")),
    ]
    for a, b in zip(twins[0].parameters(), twins[1].parameters(), strict=True):
        assert torch.equal(a, b)
    r2 = results[0]
    assert r2.state is not None and r2.state.masks is not None and r1.state.masks is not None
    assert r2.state.thresholds == r1.state.thresholds  # reused after the first task
    assert r2.stats["low_lr_tensors"] > 0
    for name, m in r1.state.masks.items():  # cumulative: everything of task 1 is kept
        assert bool((r2.state.masks[name] | ~m).all())
    assert r2.state.coverage() > r1.state.coverage()
    assert r2.stats["overlap_with_previous"] < r1.state.coverage()


def test_seed_makes_runs_reproducible(trained: torch.nn.Module, tiny_world: TinyWorld) -> None:
    forget = tiny_world.of(tiny_world.people[0])[:8]
    retain = tiny_world.of(*tiny_world.people[3:])[:16]
    outs = []
    for seed in (7, 7, 8):
        m = copy.deepcopy(trained)
        unlearn(m, tiny_world.tokenizer, forget, retain, method="npo_gd",
                params={**COMMON, "epochs": 1, "lr": 1e-3, "seed": seed})
        outs.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    assert torch.equal(outs[0], outs[1])
    assert not torch.equal(outs[0], outs[2])


@pytest.mark.parametrize("method", ["grad_ascent", "npo", "npo_gd"])
def test_other_baselines_lower_forget_probability(method: str, trained: torch.nn.Module,
                                                  tiny_world: TinyWorld) -> None:
    forget = tiny_world.of(tiny_world.people[0])
    retain = tiny_world.of(*tiny_world.people[3:])
    m = copy.deepcopy(trained)
    before = _prob(m, tiny_world, forget)
    result = unlearn(m, tiny_world.tokenizer, forget, retain, method=method,
                     params={**COMMON, "lr": 1e-3})
    assert result.state is None
    assert _prob(m, tiny_world, forget) <= 0.5 * before


def test_a_lineage_keeps_the_mask_rule_of_its_first_task(trained: torch.nn.Module,
                                                        tiny_world: TinyWorld) -> None:
    """The default rule changed (docs/benchmarks.md); a lineage begun under the old one goes on
    with it, since its thresholds and mask were made under it."""
    people = tiny_world.people
    retain = tiny_world.of(*people[3:])
    params = {**COMMON, "epochs": 1, "lr": 3e-3, "alpha": 1.0}
    r1 = unlearn(copy.deepcopy(trained), tiny_world.tokenizer, tiny_world.of(people[0]),
                 retain, params={**params, "mask_rule": "reference"})
    assert r1.state is not None and r1.state.info["mask_rule"] == "reference"
    r2 = unlearn(r1.model, tiny_world.tokenizer, tiny_world.of(people[1]), retain,
                 params=params, state=r1.state)
    assert r2.stats["mask_rule_from_state"] == "reference"
    assert r2.state is not None and r2.state.info["mask_rule"] == "reference"
    assert r2.state.thresholds == r1.state.thresholds
