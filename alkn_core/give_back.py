"""Giving back part of a task's change when the repair left the forget items far under the
target (negation.repair_and_guard).

`relax`, after a repair round: part of the negation, theta_r + (alpha - a) x tau with the
smallest a in (0, alpha] that keeps the forget items at or under the target.

`shrink`, after the last round: the whole change of the task (negation, repair steps, the
guard's extra negation), scaled back towards the model before the task,

    theta(lam) = theta_t + lam x (theta_r - theta_t),   theta_t = theta_negated + alpha x tau,

with the smallest lam in (0, 1] that keeps this task's forget items and every earlier
task's forget set at or under the target. Relax cannot reach below the negation: once
it is given back, what holds the forget items down is the repair's hinge, whose steps left
them at a fraction of the target (0.15-0.4 of the never-seen level after their own task in
the continual benchmark) and everyone else lower with them.

Both are the calibration's search (calibration.search_alpha) over forward passes only; the
model is left at what they return, or as it was when the search finds nothing.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch

from .calibration import CalibrationError, search_alpha
from .task_vector import TaskVector, snapshot

if TYPE_CHECKING:
    from .negation import NegationProbe

# After a repair round, forget items below this fraction of the target: part of the task's
# change is given back (`repair_relax`, `repair_shrink`).
RELAX_BELOW = 0.75
# Relax runs while at least this fraction of the negation the repair started from is left in
# the model: the first round's relax gave back nearly all of a quarter start, and the
# searches of the later rounds (a quarter of a round's time) gave back 1e-5 of alpha and less.
RELAX_LEFT = 0.01


def relax(probe: NegationProbe, model: torch.nn.Module, tau: TaskVector, alpha: float,
          guard: float) -> float:
    """The repair left the forget items far under the target: give back part of the
    negation, theta_r + (alpha - a) x tau with the smallest a in (0, alpha] that still
    keeps them at or under it (the same search, forward passes only); returns a."""
    ctx, p = probe.ctx, probe.ctx.params
    if not (alpha > 0 and guard > 0):  # nothing negated, or nothing to aim at
        return alpha
    repaired = snapshot(model, p["offload"])
    t = time.perf_counter()

    def evaluate(a: float) -> tuple[float, float | None]:
        tau.apply_to(model, repaired, scale=alpha - a)
        ctx.report("negating", 0, 1)
        return probe.measure(model)

    try:
        found = search_alpha(evaluate, guard, alpha_max=alpha, max_evals=p["calibration_evals"],
                             start=0.5 * alpha)
        tau.apply_to(model, repaired, scale=alpha - found.alpha)
        return found.alpha
    except CalibrationError:
        tau.apply_to(model, repaired, scale=0.0)  # the repaired model as it was
        return alpha
    finally:
        probe.search_seconds += time.perf_counter() - t


def shrink(probe: NegationProbe, model: torch.nn.Module, negated: Mapping[str, torch.Tensor],
           tau: TaskVector, alpha: float, guard: float) -> float | None:
    """The task's whole change scaled back (the module docstring) to the smallest lam that
    keeps every forget set the repair holds at or under `guard`; returns lam, or None when
    even lam = 1 does not (the model is then left as it was). `negated`: the model right
    after the negation by `alpha` x `tau` (repair_and_guard's snapshot)."""
    ctx, p = probe.ctx, probe.ctx.params
    repaired = snapshot(model, p["offload"])
    params = dict(model.named_parameters())
    t = time.perf_counter()

    @torch.no_grad()
    def set_to(lam: float) -> None:
        for name, r in repaired.items():  # in fp32: theta_t is rebuilt from bf16 tensors
            q = params[name]
            after = r.to(device=q.device, dtype=torch.float32)
            before = negated[name].to(device=q.device, dtype=torch.float32, copy=True)
            if name in tau.vector:
                before += alpha * tau.vector[name].to(device=q.device, dtype=torch.float32)
            q.copy_(before.lerp_(after, lam))

    def evaluate(lam: float) -> tuple[float, float | None]:
        set_to(lam)
        ctx.report("negating", 0, 1)
        forget, retain = probe.measure(model)
        return max(forget, probe.measure_earlier(model) or 0.0), retain

    try:
        found = search_alpha(evaluate, guard, alpha_max=1.0, max_evals=p["calibration_evals"],
                             start=0.5)
        set_to(found.alpha)
        return found.alpha
    except CalibrationError:
        set_to(1.0)  # the repaired model as it was
        return None
    finally:
        probe.search_seconds += time.perf_counter() - t
