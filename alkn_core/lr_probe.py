"""`lr: "auto"`: a short probe on the model picks the forget fine-tune's lr (issue 13).

One lr does not fit every model size (2e-3 for the 3.7M-parameter demo model, about 1e-5 for
billion-parameter ones), so a default number either cannot forget on one or wrecks the
other. The probe is a learning-rate range test on the forget items:

    for lr in CANDIDATES (ascending, x sqrt(10) apart):
        theta <- theta_0;  PROBE_STEPS AdamW steps of NLL(forget) at lr
        L(lr) = mean NLL(forget) after them
    a = the largest lr with L(lr) < L_0 (= before any step), b = the next candidate
    lr* = sqrt(a * b)   (a alone when every candidate improves)

i.e. the edge of stability of a fine-tune on these items, which lies between the last step
that still fits them better and the first that overshoots. The scan stops at the first lr
that does not improve (larger ones would not either). On the demo model a = 1e-3, lr* =
1.8e-3, where the hand-tuned 2e-3 was (docs/algorithm.md); a alone (1e-3) left the forget
target out of reach at alpha_max on some tasks (an escalation, and more collateral damage).
The weights are restored after every candidate (exactly: a copy of the trainable parameters), so the
probe leaves the model as it found it.
Functions do not touch anything else (no global RNG, no optimiser state kept).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from .losses import nll

Batch = dict[str, torch.Tensor]

# Candidate lrs: 1e-6 to 1e-2, x sqrt(10) apart.
CANDIDATES = tuple(10 ** (e / 2) for e in range(-12, -3))
# Optimiser steps per candidate (over the forget batches in turn).
PROBE_STEPS = 5


@torch.no_grad()
def _mean_loss(model: torch.nn.Module, batches: Sequence[Batch]) -> float:
    model.eval()
    return sum(float(nll(model, b)) for b in batches) / len(batches)


def probe_lr(model: torch.nn.Module, batches: Sequence[Batch], max_grad_norm: float,
             candidates: Sequence[float] = CANDIDATES, steps: int = PROBE_STEPS
             ) -> tuple[float, dict[str, Any]]:
    """lr* (see the module docstring) and the probe's record {"loss_before", "curve":
    [[lr, loss_after], ...], "steps", "lr"}. No candidate improving: the smallest one."""
    if not batches:
        raise ValueError("the lr probe needs at least one forget batch")
    params = [q for q in model.parameters() if q.requires_grad]
    saved = [q.detach().clone() for q in params]
    was_training = model.training
    before = _mean_loss(model, batches)
    curve: list[list[float]] = []
    chosen = min(candidates)
    try:
        for lr in sorted(candidates):
            optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
            model.train()
            for step in range(steps):
                loss = nll(model, batches[step % len(batches)])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
                optimizer.step()
            del optimizer
            after = _mean_loss(model, batches)
            with torch.no_grad():
                for q, s in zip(params, saved, strict=True):
                    q.copy_(s)
            curve.append([lr, after])
            if not (math.isfinite(after) and after < before):
                if curve[:-1]:  # between the last improving lr and this one
                    chosen = math.sqrt(chosen * lr)
                break
            chosen = lr
    finally:
        for q in params:
            q.grad = None
        model.train(was_training)
    return chosen, {"loss_before": before, "curve": curve, "steps": steps, "lr": chosen}
