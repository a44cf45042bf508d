"""What the negating methods (alkn, task_vector) do after the forget fine-tune.

theta = theta_t - alpha * tau, alpha fixed or calibrated (`alpha="auto"`, calibration.py; a
calibrated one that met its target x `repair_start` before a repair); then, with
`repair_steps` > 0, a repair (repair.py) towards the pre-task model on repair
items with a forget guard (the forget items are measured again after it; if they came back
above the target, tau is negated further from the repaired model, else the repair is undone;
far under it, part of the change is given back: give_back.py);
then the utility floor's check on a fixed retain probe.

`NegationProbe` measures, before training: the forget items, a fixed retain probe (its
probability on the lineage's first model is the floor's reference, carried in the state like
the holdout level) and the holdout items (the target), and records the repair teacher.
`Negation.finish` applies the chosen negation to the model and returns the stats.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .calibration import AlphaSearch, CalibrationError, CurvePoint, forget_target, search_alpha
from .data import Example, encode_item, length_sorted_batches
from .give_back import RELAX_BELOW, RELAX_LEFT, relax, shrink
from .losses import mean_batch_probability
from .methods import TaskContext
from .repair import Teacher, plateau, repair
from .task_vector import TaskVector, restore, snapshot

Batches = list[dict[str, torch.Tensor]]

# alpha "auto": the fixed sample of the retain set measured beside the forget items at every
# evaluated alpha (its utility cost, and the floor's probe), and the most holdout items
# measured for the target.
RETAIN_PROBE_ITEMS = 16
HOLDOUT_PROBE_ITEMS = 64
# The earlier tasks' forget sets the repair's hinge also holds under the target, each on its
# own: at most EARLIER_SETS sets (the most recent; older ones pooled into one) of at most
# EARLIER_SET_ITEMS items each (a fixed sample beyond): bounds the cost for a long lineage.
EARLIER_SETS = 16
EARLIER_SET_ITEMS = 32

# The holdout probability of the lineage's first calibrated task, kept in the state: the
# "never seen" level is that of the model before any unlearning. Measured again on each
# model, it falls as unlearning wears the model down, and each task would then chase a
# lower target on a weaker model (docs/benchmarks.md, "Calibrated negation").
HOLDOUT_REFERENCE = "holdout_reference"
# The retain probe's probability on the lineage's first model: the utility floor's 1.0.
RETAIN_REFERENCE = "retain_probe_reference"
# The same for a fixed sample of the general sets (`eval_sets`), when the caller gives them:
# the repair's rounds aim at both (the people no item stood for and general knowledge).
GENERAL_REFERENCE = "general_probe_reference"
# Out of reach, the most-forgetting model is kept only if it lowered the forget probability
# by at least this fraction; else nothing could be forgotten (CalibrationError).
MIN_FORGET_DROP = 0.01


def seeded_pick(n: int, k: int, seed: int) -> list[int]:
    """A fixed sample of at most k of range(n) drawn with `seed`, in increasing order."""
    if n <= k:
        return list(range(n))
    gen = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=gen).tolist()[:k])


class NegationProbe:
    """The fixed measurements of one task: forget items, a retain probe, the target."""

    def __init__(self, ctx: TaskContext, holdout: list[dict[str, Any]], auto: bool,
                 earlier: Sequence[Sequence[Example]] = ()) -> None:
        t = time.perf_counter()
        self.ctx, p = ctx, ctx.params
        self.forget = self._batches(ctx.forget)
        sets = [list(e) for e in earlier if e]
        if len(sets) > EARLIER_SETS:  # the oldest pooled into one set
            cut = len(sets) - EARLIER_SETS + 1
            sets = [[x for e in sets[:cut] for x in e], *sets[cut:]]
        self.earlier = [self._batches([e[j] for j in seeded_pick(
            len(e), EARLIER_SET_ITEMS, p["seed"] + 5 + i)]) for i, e in enumerate(sets)]
        self.retain_pick, self.retain = self._probe(ctx.retain, p["seed"] + 2)
        self.general_pick, self.general = self._probe(ctx.general, p["seed"] + 6)
        self.forget_before, self.retain_before = self.measure(ctx.model)
        self.holdout_prob: float | None = None
        self.holdout_items = 0
        self.holdout_carried = False
        self.target: float | None = None
        self.source = "fixed alpha"
        if auto:
            if holdout and p["target_forget_prob"] is None:
                carried = self._carried(HOLDOUT_REFERENCE)
                if carried is not None:
                    self.holdout_prob, self.holdout_carried = carried, True
                else:
                    self._measure_holdout(holdout)
            self.target, self.source = forget_target(
                self.forget_before, explicit=p["target_forget_prob"],
                holdout_prob=self.holdout_prob, ratio=p["target_forget_ratio"])
        carried = self._carried(RETAIN_REFERENCE)
        self.retain_reference = carried if carried is not None else self.retain_before
        carried = self._carried(GENERAL_REFERENCE)
        self.general_reference = (carried if carried is not None
                                  else self.measure_general(ctx.model))
        self.teacher_carried = False
        self.probe_seconds = time.perf_counter() - t  # before training: the target's cost
        self.search_seconds = 0.0

    def _carried(self, key: str) -> float | None:
        value = self.ctx.state.info.get(key) if self.ctx.state is not None else None
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        return None

    def _batches(self, examples: Sequence[Example]) -> Batches:
        return length_sorted_batches(examples, self.ctx.params["batch_size"], self.ctx.pad,
                                     self.ctx.device)

    def _probe(self, examples: Sequence[Example] | None, seed: int
               ) -> tuple[set[int], Batches | None]:
        """A fixed RETAIN_PROBE_ITEMS-item sample: its indices (kept out of the repair
        items) and its batches (None without examples)."""
        pick = seeded_pick(len(examples or []), RETAIN_PROBE_ITEMS, seed)
        return set(pick), (self._batches([examples[i] for i in pick]) if examples else None)

    def _measure_holdout(self, items: list[dict[str, Any]]) -> None:
        p = self.ctx.params
        examples = []
        for item in items:  # as evaluation does, an item that does not fit is left out
            try:
                examples.append(encode_item(item, self.ctx.tokenizer, template=p["qa_template"],
                                            chat_template=p["chat_template"],
                                            max_length=p["max_length"]))
            except ValueError:
                continue
        # a fixed sample bounds the cost
        examples = [examples[i] for i in seeded_pick(len(examples), HOLDOUT_PROBE_ITEMS,
                                                     p["seed"] + 3)]
        if examples:
            self.holdout_prob = mean_batch_probability(self.ctx.model, self._batches(examples))
            self.holdout_items = len(examples)

    def measure(self, model: torch.nn.Module) -> tuple[float, float | None]:
        forget = mean_batch_probability(model, self.forget)
        retain = mean_batch_probability(model, self.retain) if self.retain else None
        return forget, retain

    def measure_general(self, model: torch.nn.Module) -> float | None:
        return mean_batch_probability(model, self.general) if self.general else None

    def utility(self, model: torch.nn.Module) -> tuple[float | None, float | None]:
        """The retain probe and the general probe (None without one) as fractions of their
        references."""
        return self.fractions(self.measure(model)[1], self.measure_general(model))

    def fractions(self, retain: float | None, general: float | None
                  ) -> tuple[float | None, float | None]:
        """Measured retain and general probes as fractions of their references."""
        return (None if retain is None else retain / max(self.retain_reference or 0.0, 1e-12),
                None if general is None else general / max(self.general_reference or 0.0,
                                                           1e-12))

    def back_to(self, model: torch.nn.Module, fraction: float) -> bool:
        """The retain probe and the general probe (if any) at or above `fraction` of their
        references."""
        return all(u is None or u >= fraction for u in self.utility(model))

    def measure_earlier(self, model: torch.nn.Module) -> float | None:
        """The worst (highest) mean answer probability of the earlier forget sets."""
        return max((mean_batch_probability(model, b) for b in self.earlier), default=None)

    def teacher(self) -> Teacher | None:
        """The repair items' distributions on the lineage's first model (carried in the
        state; `repair_reference="first"`) or on the pre-task model (retain items outside
        the probe, + the general sets with repair_sets="retain+eval"); None without any."""
        ctx, p = self.ctx, self.ctx.params
        carried = ctx.state.teacher if ctx.state is not None else None
        self.teacher_carried = bool(p["repair_reference"] == "first" and carried)
        if self.teacher_carried:
            assert carried is not None
            return Teacher.from_tensors(carried, ctx.device)
        pool = [e for i, e in enumerate(ctx.retain or []) if i not in self.retain_pick]
        if p["repair_sets"] == "retain+eval":
            pool += [e for i, e in enumerate(ctx.general or []) if i not in self.general_pick]
        if not pool:
            return None
        pool = [pool[i] for i in seeded_pick(len(pool), p["repair_items"], p["seed"] + 4)]
        return Teacher.record(ctx.model, pool, ctx.pad, p["batch_size"], ctx.device)

    def search(self, model: torch.nn.Module, base: Mapping[str, torch.Tensor], tau: TaskVector,
               target: float, start: float | None, forget_at_zero: float) -> AlphaSearch:
        """The smallest alpha with forget <= target on base - alpha * tau; on
        CalibrationError the model is left at base."""
        ctx, p = self.ctx, self.ctx.params
        t = time.perf_counter()
        budget = p["calibration_evals"]
        ctx.report("negating", 0, budget)
        calls: list[float] = []

        def evaluate(alpha: float) -> tuple[float, float | None]:
            tau.apply_to(model, base, scale=-alpha)
            out = self.measure(model)
            calls.append(alpha)
            ctx.report("negating", len(calls), budget)
            return out

        try:
            return search_alpha(evaluate, target, alpha_max=p["alpha_max"], max_evals=budget,
                                forget_at_zero=forget_at_zero, start=start)
        except CalibrationError:
            tau.apply_to(model, base, scale=0.0)  # nothing of this task stays in the model
            model.eval()
            raise
        finally:
            self.search_seconds += time.perf_counter() - t


@dataclass
class Attempt:
    """One forget fine-tune and where its negation got (escalation keeps the best)."""

    lr: float
    tau: TaskVector | None  # dropped once another attempt forgets more
    state: Any
    search: AlphaSearch | None  # None: the target was out of reach
    best: CurvePoint | None  # the most-forgetting point tried when out of reach
    curve: list[CurvePoint]

    @property
    def forget_prob(self) -> float:
        if self.search is not None:
            return self.search.forget_prob
        return self.best.forget_prob if self.best is not None else float("inf")

    def summary(self) -> dict[str, Any]:
        return {"lr": self.lr, "target_met": self.search is not None,
                "forget_prob": self.forget_prob,
                "alpha": self.search.alpha if self.search else (
                    self.best.alpha if self.best else None)}


def calibrate(probe: NegationProbe, model: torch.nn.Module, base: Mapping[str, torch.Tensor],
              tau: TaskVector, lr: float, state: Any) -> Attempt:
    """Search alpha for one fine-tune; out of reach, note its most-forgetting point."""
    assert probe.target is not None
    prev = probe._carried("calibrated_alpha")
    try:
        search = probe.search(model, base, tau, probe.target, prev, probe.forget_before)
        return Attempt(lr, tau, state, search, None, search.curve)
    except CalibrationError as exc:
        best = min(exc.curve, key=lambda c: c.forget_prob) if exc.curve else None
        return Attempt(lr, tau, state, None, best, exc.curve)


def calibration_stats(probe: NegationProbe, attempt: Attempt, attempts: list[Attempt],
                      training_seconds: float) -> dict[str, Any]:
    p = probe.ctx.params
    assert probe.target is not None
    search = attempt.search
    curve = search.curve if search else attempt.curve
    return {
        "alpha": search.alpha if search else (attempt.best.alpha if attempt.best else None),
        "target": probe.target, "target_source": probe.source,
        "target_met": search is not None,
        "forget_prob": attempt.forget_prob, "forget_prob_before": probe.forget_before,
        "retain_probe_before": probe.retain_before, "holdout_prob": probe.holdout_prob,
        "holdout_items": probe.holdout_items,
        # measured at this task, or carried from the lineage's first calibrated task
        "holdout_carried": probe.holdout_carried,
        "retain_probe_items": sum(len(b["input_ids"]) for b in probe.retain or []),
        "curve": [c.as_list() for c in sorted(curve, key=lambda c: c.alpha)],
        "evaluations": sum(len(a.curve) for a in attempts), "budget": p["calibration_evals"],
        "alpha_max": p["alpha_max"],
        "within_tolerance": search.within_tolerance if search else False,
        # every forget fine-tune tried (the first, then the escalations), in order
        "attempts": [a.summary() for a in attempts],
        "search_seconds": probe.search_seconds, "probe_seconds": probe.probe_seconds,
        # The search's cost (forward passes at the tried alphas) next to training's.
        "search_vs_training": (probe.search_seconds / training_seconds
                               if training_seconds > 0 else None),
    }


def repair_and_guard(probe: NegationProbe, teacher: Teacher, model: torch.nn.Module,
                     tau: TaskVector, alpha: float, guard: float, lr: float) -> dict[str, Any]:
    """Repair rounds (at most `repair_rounds`, until the retain probe and the general probe
    are back to `repair_aim` of their references, or to the floor if higher, or a round
    gained less than `repair_min_gain` of them on both: a plateau), each followed
    by the forget guard: forget above `guard` -> negate tau further from the repaired model
    (if that cannot bring it back, the repair is undone: forgetting wins, and the rounds
    stop); forget far under it -> give back part of the negation (`repair_relax`, while
    RELAX_LEFT of the starting `alpha` is left). After the rounds, every forget set far under
    the guard -> the whole change scaled back towards the model before the task
    (`repair_shrink`, give_back.py)."""
    ctx, p = probe.ctx, probe.ctx.params
    negated = snapshot(model, p["offload"])
    aim = max(p["utility_floor"], p["repair_aim"])
    n_rounds = p["repair_rounds"]
    rounds: list[dict[str, Any]] = []
    # The negation still in the model: relax gives back at most this much, over all rounds
    # (each round giving back the task's whole alpha again would add tau back beyond it).
    negation = alpha
    out: dict[str, Any] = {"rounds": rounds, "guard": guard, "undone": False,
                           # the repair's target: the lineage's first model, carried
                           "teacher_carried": probe.teacher_carried,
                           "earlier_forget_items": sum(len(b["input_ids"]) for e in
                                                       probe.earlier for b in e),
                           "earlier_forget_sets": len(probe.earlier)}
    best: tuple[float | None, float | None] | None = None  # the probes' best so far
    for r in range(n_rounds):
        t_round = time.perf_counter()
        info = repair(model, teacher, [probe.forget, *probe.earlier], guard, p, lr, r,
                      report=lambda i, n, r=r: ctx.report("negating", r * n + i, n_rounds * n))
        forget, retain = probe.measure(model)
        info.update(forget_prob=forget, retain_probe=retain,
                    general_probe=probe.measure_general(model), extra_alpha=0.0,
                    relaxed_alpha=None)
        rounds.append(info)
        now = probe.fractions(retain, info["general_probe"])  # measured again if changed
        if forget > guard:
            repaired = snapshot(model, p["offload"])
            try:
                extra = probe.search(model, repaired, tau, guard, 0.25 * max(alpha, 0.1),
                                     forget)
                tau.apply_to(model, repaired, scale=-extra.alpha)
                info["extra_alpha"] = extra.alpha
                negation += extra.alpha
                now = probe.utility(model)
            except CalibrationError:
                restore(model, negated)  # back to the negated model
                out["undone"] = True
                break
            finally:
                del repaired
        elif (p["repair_relax"] and forget < RELAX_BELOW * guard
              and negation > RELAX_LEFT * alpha):
            relaxed = relax(probe, model, tau, negation, guard)
            if relaxed != negation:  # else the search left the model as it was
                now = probe.utility(model)
            info["relaxed_alpha"] = negation = relaxed
        # the whole round: steps, probes, and the guard's or relax's alpha search
        info["round_seconds"] = time.perf_counter() - t_round
        if all(u is None or u >= aim for u in now):
            break
        if plateau(now, best, p["repair_min_gain"], p["utility_floor"]):
            info["plateau"] = True  # neither probe gained: more rounds would not help
            break
        best = now if best is None else tuple(  # type: ignore[assignment]
            None if u is None else max(u, b or 0.0) for u, b in zip(now, best, strict=True))
    model.eval()
    levels = forget, _, earlier = _levels(probe, model)
    if p["repair_shrink"] and not out["undone"] and max(
            forget, earlier or 0.0) < RELAX_BELOW * guard:
        out["shrink"] = shrink(probe, model, negated, tau, alpha, guard)
        levels = _levels(probe, model)  # the shrunk model's
    del negated
    out["forget_prob"], out["retain_probe"], out["earlier_forget_prob"] = levels
    out["general_probe"] = probe.measure_general(model)
    out["general_probe_reference"] = probe.general_reference
    return out


def _levels(probe: NegationProbe, model: torch.nn.Module
            ) -> tuple[float, float | None, float | None]:
    """This task's forget items, the retain probe and the worst earlier forget set."""
    return (*probe.measure(model), probe.measure_earlier(model))


def floor_stats(probe: NegationProbe, retain_probe: float | None) -> dict[str, Any]:
    """The retain probe against utility_floor x the lineage's first measurement."""
    ref, frac = probe.retain_reference, probe.ctx.params["utility_floor"]
    ratio = retain_probe / ref if retain_probe is not None and ref else None
    return {"utility_floor": frac, "retain_probe_reference": ref, "retain_probe": retain_probe,
            "retain_ratio": ratio, "met": None if ratio is None else ratio >= frac}
