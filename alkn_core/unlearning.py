"""`unlearn`: the one public entry point (the worker and the benchmarks call it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from . import adapters
from .calibration import CalibrationError
from .data import encode_items, length_sorted_batches, pad_id, validate_items
from .lr_probe import probe_lr
from .methods import TaskContext, get_method
from .methods.base import Method
from .negation import (
    GENERAL_REFERENCE,
    HOLDOUT_REFERENCE,
    MIN_FORGET_DROP,
    RETAIN_REFERENCE,
    NegationProbe,
    calibrate,
    calibration_stats,
    floor_stats,
    repair_and_guard,
)
from .params import AUTO, Params
from .runtime import place
from .state import UnlearnState
from .task_vector import TaskVector, snapshot
from .train import LoopResult, train_loop

Progress = Callable[[str, int, int], None]
Items = Sequence[dict[str, Any]]

# Out of reach at alpha_max: the forget fine-tune is run again with lr x this (x this^2, ...),
# `escalations` times at most.
ESCALATION_LR_FACTOR = 3.0
# lr "auto": the lr the probe chose on the lineage's first task, kept in the state.
PROBED_LR = "probed_lr"
# repair_lr unset: this fraction of the forget fine-tune's lr (the lr probe's choice for the
# model size): measured best of 1, 0.33, 0.1 and 0.033 on the test fixture.
REPAIR_LR_FRACTION = 0.1


@dataclass
class UnlearnResult:
    model: torch.nn.Module
    state: UnlearnState | None
    stats: dict[str, Any] = field(default_factory=dict)


def _general_items(eval_sets: Mapping[str, Items] | Items | None) -> list[dict[str, Any]]:
    if eval_sets is None:
        return []
    if isinstance(eval_sets, Mapping):
        return [item for items in eval_sets.values() for item in items]
    return list(eval_sets)


def _sets(earlier: Items | Sequence[Items] | None) -> list[Items]:
    """`earlier_forget` as a list of sets: a list of items is one set."""
    if not earlier:
        return []
    if isinstance(earlier, Sequence) and all(isinstance(x, Mapping) for x in earlier):
        return [earlier]  # type: ignore[list-item]
    if not all(isinstance(x, Sequence) and not isinstance(x, str | bytes) for x in earlier):
        raise ValueError("earlier_forget must be a list of items or a list of lists of items")
    return list(earlier)  # type: ignore[arg-type]


def unlearn(
    model: torch.nn.Module,
    tokenizer: Any,
    forget: Items,
    retain: Items | None = None,
    method: str = "alkn",
    params: Mapping[str, Any] | None = None,
    state: UnlearnState | None = None,
    progress: Progress | None = None,
    *,
    eval_sets: Mapping[str, Items] | Items | None = None,
    holdout: Items | None = None,
    earlier_forget: Items | Sequence[Items] | None = None,
) -> UnlearnResult:
    """Remove `forget` from `model` (in place) and return it with the state for the next task.

    `eval_sets` (the model's general-knowledge sets) are used only by
    `retain_gradient_sets="retain+eval"` and `repair_sets="retain+eval"`. `holdout` (items of
    the model's distribution it never saw) sets the forget target of `alpha="auto"`, the
    default of `alkn` (`task_vector` defaults to alpha 1): the negation strength is then the
    smallest alpha in (0, `alpha_max`] that brings the forget items' mean answer probability
    down to `target_forget_prob` if given, else to the holdout items' probability measured
    before the lineage's first calibrated task (kept in the state: `HOLDOUT_REFERENCE`), else
    to `target_forget_ratio` x the forget items' own. A number keeps the fixed alpha
    (x `coef_decay`^task).

    Out of reach at `alpha_max`, the forget fine-tune runs again with a larger lr
    (`escalations` times at most); still out of reach, the most-forgetting model found is
    returned with `stats["target_met"] = False` (and `stats["calibration"]`'s target, reached
    `forget_prob` and `attempts`). `CalibrationError` (the model left as it was) only when
    nothing could be forgotten at all. Then, with `repair_steps` > 0, the repair towards the
    pre-task model with its forget guard (negation.py, `stats["repair"]`; skipped when the
    search's alpha is 0: the forget items were at the target before, nothing was negated), and
    `stats["floor"]`: the retain probe against `utility_floor` x its first measurement on the
    lineage (`met`). `earlier_forget` (the forget items of the lineage's earlier tasks: one
    list of items, or one list per earlier task): the repair's hinge holds each set's mean
    under the target too, so no earlier request comes back (a pooled mean hid one person
    coming back behind the others forgotten deeper, docs/bench/selectivity_ablation.md).
    """
    cls = get_method(method)
    task = _Task(cls, model, tokenizer, _Inputs.check(
        cls, model, params, forget, retain, eval_sets, holdout, earlier_forget, state),
        progress)
    task.keep_base()
    # adapter "lora": from the lr probe to the end of training LoRA factors train, merged
    # after it (discarded if it fails: the caller's model is left plain)
    with adapters.attached(model, task.ctx.params):
        task.prepare()
        task.train()
    if cls.negates:
        task.negate()
    return task.result()


@dataclass
class _Inputs:
    """unlearn's arguments, validated."""

    params: Params
    forget: list[dict[str, Any]]
    retain: list[dict[str, Any]] | None
    general: list[dict[str, Any]]
    holdout: list[dict[str, Any]]
    earlier: list[list[dict[str, Any]]]
    state: UnlearnState | None

    @classmethod
    def check(cls, method: type[Method], model: torch.nn.Module,
              params: Mapping[str, Any] | None, forget: Items, retain: Items | None,
              eval_sets: Mapping[str, Items] | Items | None, holdout: Items | None,
              earlier_forget: Items | Sequence[Items] | None,
              state: UnlearnState | None) -> _Inputs:
        p = method.Params.parse(dict(params or {}))
        forget = validate_items(forget, "forget")
        if not forget:
            raise ValueError("forget must contain at least one item")
        retain = validate_items(retain, "retain") if retain else None
        if method.needs_retain and not retain:
            raise ValueError(f"method {method.name!r} needs a retain set")
        if not method.stateful:
            state = None
        elif state is not None:
            if state.method != method.name:
                raise ValueError(f"the unlearning state was made by {state.method!r}, "
                                 f"not {method.name!r}")
            made_with = state.info.get("adapter", adapters.NONE)
            if made_with != p.get("adapter", adapters.NONE):
                raise ValueError(f"the lineage was unlearnt with adapter {made_with!r}: its "
                                 f"state (masks) cannot carry over to adapter "
                                 f"{p.get('adapter', adapters.NONE)!r}")
            if made_with == adapters.NONE:  # LoRA factors are checked once attached
                state.check_compatible(model)
        return cls(p, forget, retain, validate_items(_general_items(eval_sets), "eval_sets"),
                   # the holdout sets the forget target of a negation only
                   validate_items(holdout, "holdout") if holdout and method.negates else [],
                   [validate_items(items, "earlier_forget") for items in _sets(earlier_forget)],
                   state)


class _Task:
    """One unlearning task, stage by stage: prepare, train, negate (with calibration and
    repair, for the methods that negate), result."""

    def __init__(self, cls: type[Method], model: torch.nn.Module, tokenizer: Any,
                 inputs: _Inputs, progress: Progress | None) -> None:
        self.cls, self.inputs = cls, inputs
        self.t0 = time.perf_counter()
        device = place(model)
        p = inputs.params
        torch.manual_seed(p["seed"])
        enc = partial(encode_items, tokenizer=tokenizer, params=p)
        self.ctx = TaskContext(
            model=model, tokenizer=tokenizer, params=p, pad=pad_id(tokenizer), device=device,
            forget=enc(inputs.forget, what="forget"),
            retain=enc(inputs.retain, what="retain") if inputs.retain else None,
            general=enc(inputs.general, what="eval_sets") if inputs.general else None,
            state=inputs.state, progress=progress)
        self.times: dict[str, float] = {}
        self.stats: dict[str, Any] = {}
        self.new_state: UnlearnState | None = None

    def keep_base(self) -> None:
        """The weights before training, under their own names (before any adapter)."""
        p = self.ctx.params
        self.base = snapshot(self.ctx.model, p["offload"]) if self.cls.negates else None

    def prepare(self) -> None:
        """lr "auto", the method's probing, the negation's fixed measurements and the
        repair's teacher (with LoRA factors attached, if any)."""
        ctx, cls, p = self.ctx, self.cls, self.ctx.params
        if p.get("adapter") == adapters.LORA and self.inputs.state is not None:
            self.inputs.state.check_compatible(ctx.model)  # its masks are the factors'
        self.lr_probe = _resolve_lr(ctx) if p["lr"] == AUTO else None
        self.impl = cls(ctx)
        ctx.report("probing", 0, 1)
        self.auto = cls.negates and p["alpha"] == AUTO
        self.probe = (NegationProbe(ctx, self.inputs.holdout, self.auto,
                                    [encode_items(items, ctx.tokenizer, ctx.params,
                                                  "earlier_forget")
                                     for items in self.inputs.earlier if items])
                      if cls.negates else None)
        self.teacher = (self.probe.teacher()
                        if self.probe is not None and p["repair_steps"] > 0 else None)
        self.impl.prepare()
        self.times["probing"] = time.perf_counter() - self.t0

    def train(self) -> None:
        self.lr = self.impl.lr()
        loop = _train(self.impl, self.lr)
        self.times["training"] = loop.seconds
        self.new_state = self.impl.finish()
        self.stats = {"method": self.cls.name, "steps": loop.steps, "lr": self.lr,
                      "final_loss": loop.losses[-1] if loop.losses else None}
        if self.lr_probe is not None:
            self.stats["lr_probe"] = self.lr_probe

    def negate(self) -> None:
        """theta - alpha x tau with a fixed or calibrated alpha, then the repair."""
        ctx, p, probe, base = self.ctx, self.ctx.params, self.probe, self.base
        assert probe is not None and base is not None
        t1 = time.perf_counter()
        target_met: bool | None = None
        if not self.auto:
            tau = TaskVector.between(base, ctx.model, p["offload"])
            ctx.report("negating", 0, 1)
            alpha = p["alpha"] * p["coef_decay"] ** ctx.task_index
        else:
            tau, alpha, target_met = self._calibrate()
        # A calibrated alpha that met its target: the repair starts from part of it and its
        # hinge holds the forget items at the target (negation.repair_and_guard's guard)
        applied = (alpha * p["repair_start"] if target_met and self.teacher is not None
                   else alpha)
        tau.apply_to(ctx.model, base, scale=-applied)
        self.stats.update(alpha=alpha, alpha_applied=applied, task_vector_norm=tau.norm(),
                          # alpha 0 runs no repair either: the caller may reuse what it
                          # measured on the model before (checked, not assumed)
                          weights_unchanged=applied == 0 and _same_weights(ctx.model, base))
        self.base = None
        del base
        ctx.report("negating", 1, 1)
        self._carry_references()
        if self.teacher is not None:
            retain_probe = self._repair(tau, applied, target_met)
        else:
            retain_probe = probe.measure(ctx.model)[1]
        del tau
        self.stats["floor"] = floor_stats(probe, retain_probe)
        if target_met is not None:
            self.stats["target_met"] = target_met
        self.times["negating"] = time.perf_counter() - t1

    def _calibrate(self) -> tuple[TaskVector, float, bool]:
        """alpha "auto": search alpha; out of reach at alpha_max, the forget fine-tune again
        from theta_t (the failed search left the model there) with a larger lr each time;
        the most-forgetting attempt wins."""
        ctx, p, probe, base = self.ctx, self.ctx.params, self.probe, self.base
        assert probe is not None and base is not None
        # tau lives in the attempts only: a dropped one is freed before the next fine-tune
        def tau() -> TaskVector:
            return TaskVector.between(base, ctx.model, p["offload"])

        attempts = [calibrate(probe, ctx.model, base, tau(), self.lr, self.new_state)]
        while attempts[-1].search is None and len(attempts) <= p["escalations"]:
            best = min(attempts, key=lambda a: a.forget_prob)
            for a in attempts:
                if a is not best:
                    a.tau = None
            lr_a = self.lr * ESCALATION_LR_FACTOR ** len(attempts)
            with adapters.attached(ctx.model, p):
                impl = self.cls(ctx)
                impl.prepare()
                more = _train(impl, lr_a)
                made = impl.finish()
            self.times["training"] += more.seconds
            self.stats["steps"] += more.steps
            attempts.append(calibrate(probe, ctx.model, base, tau(), lr_a, made))
        chosen = (attempts[-1] if attempts[-1].search is not None
                  else min(attempts, key=lambda a: a.forget_prob))
        self.stats["calibration"] = calib = calibration_stats(probe, chosen, attempts,
                                                              self.times["training"])
        if chosen.search is None and not (
                chosen.forget_prob <= (1 - MIN_FORGET_DROP) * probe.forget_before):
            # Nothing could be forgotten at all: the model stays as it was.
            raise CalibrationError(calib["target"], chosen.curve, p["alpha_max"],
                                   p["calibration_evals"])
        assert chosen.tau is not None and calib["alpha"] is not None
        self.new_state, alpha = chosen.state, float(calib["alpha"])
        self.times["calibration"] = probe.probe_seconds + probe.search_seconds
        if self.new_state is not None:  # the next task's search starts from this alpha
            self.new_state.info["calibrated_alpha"] = alpha
            if probe.holdout_prob is not None:
                self.new_state.info[HOLDOUT_REFERENCE] = probe.holdout_prob
        return chosen.tau, alpha, chosen.search is not None

    def _carry_references(self) -> None:
        """What the lineage's next tasks start from, in the state."""
        state, probe = self.new_state, self.probe
        if state is None or probe is None:
            return
        state.info["adapter"] = self.ctx.params["adapter"]  # the lineage keeps it
        if self.lr_probe is not None:  # the next tasks start from it (x lr_decay)
            state.info[PROBED_LR] = self.lr_probe["lr"]
        if probe.retain_reference is not None:
            state.info[RETAIN_REFERENCE] = probe.retain_reference
        if probe.general_reference is not None:
            state.info[GENERAL_REFERENCE] = probe.general_reference
        if self.teacher is not None and self.ctx.params["repair_reference"] == "first":
            state.teacher = self.teacher.to_tensors()  # the next task repairs towards it too

    def _repair(self, tau: TaskVector, alpha: float, target_met: bool | None) -> float | None:
        probe, teacher, p = self.probe, self.teacher, self.ctx.params
        assert probe is not None and teacher is not None
        t2 = time.perf_counter()
        if target_met and alpha == 0:
            # The forget items were at the target on the model as the task found it (the
            # search's alpha 0): nothing of this task is in the model, so nothing to repair.
            # Its rounds would only chase the lineage's earlier wear, which they did not
            # bring back (bench/job_cost.py: 1-4 rounds, general probe +0.004).
            forget, retain = probe.measure(self.ctx.model)
            self.stats["repair"] = {"rounds": [], "skipped": "nothing negated",
                                    "forget_prob": forget, "retain_probe": retain}
            self.times["repair"] = time.perf_counter() - t2
            return retain
        guard = (probe.target if target_met and probe.target is not None
                 else probe.measure(self.ctx.model)[0])
        repair = repair_and_guard(probe, teacher, self.ctx.model, tau, alpha, guard,
                                  p["repair_lr"] or REPAIR_LR_FRACTION * self.lr)
        self.stats["repair"] = repair
        if "calibration" in self.stats:  # what the published model forgets, after repair
            calib = self.stats["calibration"]
            calib["forget_prob_negated"] = calib["forget_prob"]
            calib["forget_prob"] = repair["forget_prob"]
        self.times["repair"] = time.perf_counter() - t2
        return repair["retain_probe"]

    def result(self) -> UnlearnResult:
        ctx = self.ctx
        self.stats.update(ctx.stats)
        self.stats["task_index"] = ctx.task_index
        self.stats["seconds"] = self.times
        ctx.model.eval()
        return UnlearnResult(model=ctx.model, state=self.new_state, stats=self.stats)


def _same_weights(model: torch.nn.Module, base: Mapping[str, torch.Tensor]) -> bool:
    """Every parameter `base` holds (the trained ones) equal to the model's, bit for bit."""
    params = dict(model.named_parameters())
    return all(torch.equal(params[n], b.to(params[n].device)) for n, b in base.items())


def _resolve_lr(ctx: TaskContext) -> dict[str, Any]:
    """`lr="auto"`: the lineage's probed lr (carried in the state), else the probe's
    (lr_probe.py) on this task's forget items; sets it in ctx.params, returns the record."""
    p = ctx.params
    t = time.perf_counter()
    carried = ctx.state.info.get(PROBED_LR) if ctx.state is not None else None
    if isinstance(carried, int | float) and not isinstance(carried, bool) and carried > 0:
        ctx.params = p.replace(lr=float(carried))
        return {"lr": float(carried), "carried": True, "seconds": time.perf_counter() - t}
    batches = length_sorted_batches(ctx.forget, p["batch_size"], ctx.pad, ctx.device)
    ctx.report("probing", 0, 1)
    lr, record = probe_lr(ctx.model, batches, p["max_grad_norm"])
    ctx.params = p.replace(lr=lr)
    return {**record, "carried": False, "seconds": time.perf_counter() - t}


def _train(impl: Method, lr: float) -> LoopResult:
    ctx = impl.ctx
    return train_loop(ctx.model, ctx.forget, impl.loss, ctx.params, ctx.pad,
                      retain=ctx.retain if impl.trains_on_retain else None, lr=lr,
                      lr_scale=impl.lr_scale(), grad_hook=impl.grad_hook,
                      progress=ctx.progress)
