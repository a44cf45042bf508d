"""Calibrated negation strength (`alpha: "auto"`): the search over alpha, torch-free.

After training, theta_t - alpha * tau can be evaluated for any alpha at the price of forward
passes. The forget items' mean answer probability falls (roughly monotonically) as alpha
grows; the smallest alpha that brings it down to the target forgets exactly enough, any
larger one only costs utility. `search_alpha` finds it with a bracketing search on a fixed
budget of evaluations; `unlearning.py` supplies the evaluation (negate, measure the forget
items and a fixed retain probe) and the target (`forget_target`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A reaching alpha is "just enough" when its forget probability lies within this fraction
# below the target, or when the bracket around the smallest reaching alpha is this narrow
# (relative to it). Either ends the search early.
FORGET_TOL = 0.25
ALPHA_TOL = 0.05
# Interpolated points stay this far inside the bracket, so a bracket always shrinks.
_INSIDE = 0.1
# A reaching point this far below the target (e.g. a collapsed model, log p ~ -700) says
# nothing about where the curve crosses it: bisect instead of interpolating towards it.
_FLOOR = 1e-2
# Growth of alpha while nothing reaches the target yet: at least x1.5, at most x2.5 a step
# (a larger jump tends to land on a collapsed model, which says little about the root).
_GROW_MIN, _GROW_MAX = 1.5, 2.5
_TINY = 1e-300  # log(0) guard

# evaluate(alpha) -> (forget probability, retain-probe probability or None)
Evaluate = Callable[[float], tuple[float, float | None]]


@dataclass(frozen=True)
class CurvePoint:
    alpha: float
    forget_prob: float
    retain_prob: float | None

    def as_list(self) -> list[float | None]:
        return [self.alpha, self.forget_prob, self.retain_prob]


@dataclass
class AlphaSearch:
    """The search's outcome: the chosen alpha and every point it evaluated."""

    alpha: float
    forget_prob: float
    target: float
    curve: list[CurvePoint] = field(default_factory=list)  # in evaluation order
    within_tolerance: bool = True

    @property
    def evaluations(self) -> int:
        return len(self.curve)

    def sorted_curve(self) -> list[list[float | None]]:
        return [p.as_list() for p in sorted(self.curve, key=lambda p: p.alpha)]


class CalibrationError(RuntimeError):
    """No alpha in (0, alpha_max] reached the forget target within the evaluation budget.

    Not a ValueError: the request was valid, the model just cannot be brought to the target
    by negating this task vector; the message names the best alpha tried."""

    def __init__(self, target: float, curve: list[CurvePoint], alpha_max: float,
                 budget: int) -> None:
        self.target, self.curve, self.alpha_max, self.budget = target, curve, alpha_max, budget
        best = min(curve, key=lambda p: p.forget_prob) if curve else None
        self.best_alpha = best.alpha if best else None
        self.best_forget_prob = best.forget_prob if best else None
        tried = (f"the best alpha tried, {best.alpha:.4g}, left the forget probability at "
                 f"{best.forget_prob:.4g}" if best else "no alpha was evaluated")
        super().__init__(
            f"alpha calibration failed: no alpha in (0, {alpha_max:g}] brought the forget "
            f"items' probability down to the target {target:.4g} in {len(curve)} of "
            f"{budget} evaluations; {tried}. Train the task vector harder (lr, epochs), "
            "raise alpha_max, or set a reachable target_forget_prob")

    def details(self) -> dict[str, Any]:
        return {"target": self.target, "alpha_max": self.alpha_max, "budget": self.budget,
                "best_alpha": self.best_alpha, "best_forget_prob": self.best_forget_prob,
                "curve": [p.as_list() for p in sorted(self.curve, key=lambda p: p.alpha)]}


def forget_target(forget_before: float, *, explicit: float | None = None,
                  holdout_prob: float | None = None, ratio: float = 0.1
                  ) -> tuple[float, str]:
    """The forget probability to reach, and where it comes from: an explicit value wins, then
    the holdout items' probability (data the model never saw), else `ratio` x the forget
    items' probability before the task."""
    if explicit is not None:
        return float(explicit), "explicit"
    if holdout_prob is not None:
        return float(holdout_prob), "holdout"
    return ratio * forget_before, "ratio"


def _log(p: float) -> float:
    return math.log(max(p, _TINY))


def search_alpha(evaluate: Evaluate, target: float, *, alpha_max: float, max_evals: int,
                 forget_at_zero: float | None = None, start: float | None = None,
                 forget_tol: float = FORGET_TOL, alpha_tol: float = ALPHA_TOL
                 ) -> AlphaSearch:
    """The smallest alpha in (0, alpha_max] with evaluate(alpha)[0] <= target, found with at
    most `max_evals` calls of `evaluate`.

    Bracketing on g(alpha) = log forget probability - aim, where aim lies in the middle of the
    acceptance window [(1 - forget_tol) x target, target]: `lo` is the largest alpha seen
    that misses the target (0 at first, with g known when `forget_at_zero` is), `hi` the
    smallest that reaches it. Until something reaches it, alpha grows (secant extrapolation
    of g, x1.5 to x4 a step, capped at alpha_max); then regula falsi with the Illinois
    rule (an end kept twice in a row has its g halved, so cliffs converge too) picks the
    next alpha inside the bracket. The search stops as soon as hi is within tolerance: its
    forget probability inside the window, or hi - lo <= alpha_tol x hi. Out of budget with a
    reaching alpha, the smallest one found is returned (within_tolerance False); with none,
    CalibrationError.

    `start` is the first alpha tried (e.g. the previous task's choice; default 1, or
    alpha_max if smaller). If `forget_at_zero` already meets the target, alpha 0 is returned
    without any evaluation: the forget items already look unseen.
    """
    if not (target > 0 and alpha_max > 0 and max_evals >= 1):
        raise ValueError("search_alpha needs target > 0, alpha_max > 0 and max_evals >= 1")
    if forget_at_zero is not None and forget_at_zero <= target:
        return AlphaSearch(alpha=0.0, forget_prob=forget_at_zero, target=target)
    aim = _log(target) + 0.5 * math.log1p(-forget_tol)

    def g(p: float) -> float:
        return _log(max(p, _FLOOR * target)) - aim

    curve: list[CurvePoint] = []
    lo, g_lo = 0.0, (g(forget_at_zero) if forget_at_zero is not None else None)
    hi: float | None = None
    hi_p, g_hi = math.inf, 0.0
    before: tuple[float, float] | None = None  # the missing point lo replaced (growth)
    last_side = 0  # +1: the last point replaced lo, -1: it replaced hi
    widths: list[float] = []  # of the bracket, after each evaluation once there is one
    alpha = min(start if start is not None and 0 < start <= alpha_max else 1.0, alpha_max)

    while True:
        forget_p, retain_p = evaluate(alpha)
        curve.append(CurvePoint(alpha, forget_p, retain_p))
        if forget_p <= target:
            hi, hi_p, g_hi = alpha, forget_p, g(forget_p)
            if last_side == -1 and g_lo is not None:
                g_lo /= 2  # Illinois: lo kept twice
            last_side = -1
        else:
            before = (lo, g_lo) if g_lo is not None else None
            lo, g_lo = alpha, g(forget_p)
            if last_side == 1 and hi is not None:
                g_hi /= 2
            last_side = 1
        if hi is not None and (hi_p >= target * (1 - forget_tol) or hi - lo <= alpha_tol * hi):
            return AlphaSearch(alpha=hi, forget_prob=hi_p, target=target, curve=curve)
        if len(curve) >= max_evals or (hi is None and lo >= alpha_max):
            break
        if hi is None:
            alpha = min(alpha_max, lo * _growth(lo, g_lo, before))
            continue
        widths.append(hi - lo)
        frac = 0.5 if g_lo is None or g_lo <= g_hi else g_lo / (g_lo - g_hi)
        if hi_p <= _FLOOR * target or (len(widths) >= 3 and widths[-1] > 0.5 * widths[-3]):
            frac = 0.5  # no shape to interpolate, or creeping: two steps did not halve it
        alpha = lo + (hi - lo) * min(1 - _INSIDE, max(_INSIDE, frac))

    if hi is None:
        raise CalibrationError(target, curve, alpha_max, max_evals)
    return AlphaSearch(alpha=hi, forget_prob=hi_p, target=target, curve=curve,
                       within_tolerance=False)


def _growth(lo: float, g_lo: float | None, before: tuple[float, float] | None) -> float:
    """How much to multiply the largest missing alpha by: the secant through it and the
    point before it, extrapolated to g = 0, within [x1.5, x4]; x2 without a secant."""
    if g_lo is None or before is None or before[1] <= g_lo or lo <= before[0]:
        return 2.0
    slope = (g_lo - before[1]) / (lo - before[0])  # < 0
    guess = lo - g_lo / slope
    return min(_GROW_MAX, max(_GROW_MIN, guess / lo))
