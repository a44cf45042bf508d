"""Issue 13: `lr: "auto"`, a short probe on the model picks the forget fine-tune's lr.

The tiny fixture model (tests/conftest.py); relative numbers only.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from alkn_core import unlearn
from alkn_core.data import collate, encode_items, pad_id
from alkn_core.lr_probe import CANDIDATES, probe_lr
from alkn_core.methods import method_params
from alkn_core.unlearning import PROBED_LR

from .conftest import TinyWorld

LOOP = {"epochs": 5, "batch_size": 8, "grad_accum": 1}


def _batches(world: TinyWorld, items: list[dict[str, Any]]) -> list[dict[str, torch.Tensor]]:
    ex = encode_items(items, world.tokenizer, method_params("alkn", {}))
    return [collate(ex[i : i + 8], pad_id(world.tokenizer), torch.device("cpu"))
            for i in range(0, len(ex), 8)]


def test_the_probe_picks_the_edge_of_stability_and_leaves_the_model_as_it_was(
        trained: torch.nn.Module, tiny_world: TinyWorld) -> None:
    model = copy.deepcopy(trained)
    before = {n: q.detach().clone() for n, q in model.named_parameters()}
    lr, rec = probe_lr(model, _batches(tiny_world, tiny_world.of(tiny_world.people[0])), 1.0)
    assert all(torch.equal(q, before[n]) for n, q in model.named_parameters())
    assert all(q.grad is None for q in model.parameters())
    lrs, losses = [c[0] for c in rec["curve"]], [c[1] for c in rec["curve"]]
    assert lrs == sorted(CANDIDATES)[: len(lrs)]
    # every candidate up to the last improving one (a) fits the items better, the next one
    # (b) does not, and the choice lies between them: sqrt(a * b)
    improving = [x < rec["loss_before"] for x in losses]
    assert improving[:-1] == [True] * (len(lrs) - 1) and improving[-1] is False
    assert lr == pytest.approx(math.sqrt(lrs[-2] * lrs[-1])) and rec["lr"] == lr
    # a fine-tune of a few steps is stable far above the library's 2e-5 on a tiny model
    assert lr > 2e-5
    with pytest.raises(ValueError, match="at least one forget batch"):
        probe_lr(model, [], 1.0)
    # every candidate improving: the largest one
    top, rec = probe_lr(model, _batches(tiny_world, tiny_world.of(tiny_world.people[0])), 1.0,
                        candidates=(1e-6, 1e-5), steps=2)
    assert top == 1e-5 and len(rec["curve"]) == 2


def test_lr_auto_forgets_where_the_fixed_default_cannot_and_is_carried(
        trained: torch.nn.Module, tiny_world: TinyWorld) -> None:
    """The library's lr (2e-5, for billion-parameter models) cannot reach the target on the
    tiny model even escalated; "auto" does, and the lineage's next task reuses its lr."""
    ppl, world = tiny_world.people, tiny_world
    forget, retain = world.of(ppl[0]), world.of(*ppl[4:])
    params = {**LOOP, "repair_steps": 0, "escalations": 0, "target_forget_ratio": 0.1}
    fixed = unlearn(copy.deepcopy(trained), world.tokenizer, forget, retain,
                    params={**params, "lr": 2e-5})
    assert fixed.stats["calibration"]["target_met"] is False
    model = copy.deepcopy(trained)
    auto = unlearn(model, world.tokenizer, forget, retain, params={**params, "lr": "auto"})
    probe = auto.stats["lr_probe"]
    assert auto.stats["calibration"]["target_met"] is True
    assert probe["carried"] is False and auto.stats["lr"] == probe["lr"] > 2e-5
    assert auto.state is not None and auto.state.info[PROBED_LR] == probe["lr"]
    second = unlearn(model, world.tokenizer, world.of(ppl[1]), retain,
                     params={**params, "lr": "auto", "escalations": 1}, state=auto.state)
    assert second.state is not None and second.state.info[PROBED_LR] == probe["lr"]
    assert second.stats["lr_probe"] == {"lr": probe["lr"], "carried": True,
                                        "seconds": second.stats["lr_probe"]["seconds"]}


def test_lr_auto_is_validated() -> None:
    assert method_params("alkn", {"lr": "auto"})["lr"] == "auto"
    assert method_params("npo", {"lr": "auto"})["lr"] == "auto"
    with pytest.raises(ValueError, match="'lr' must be 'auto' or a number > 0"):
        method_params("alkn", {"lr": "fast"})
    with pytest.raises(ValueError, match="'lr' must be > 0"):
        method_params("alkn", {"lr": 0})
