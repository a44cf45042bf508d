"""`unlearn`: the one public entry point (the worker and the benchmarks call it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .calibration import AlphaSearch, CalibrationError, forget_target, search_alpha
from .data import Example, collate, encode_item, encode_items, pad_id, validate_items
from .losses import mean_batch_probability
from .methods import TaskContext, get_method
from .params import AUTO, method_params, resolve_params  # noqa: F401  (re-exported)
from .runtime import place
from .state import UnlearnState
from .task_vector import TaskVector, snapshot
from .train import train_loop

Progress = Callable[[str, int, int], None]
Items = Sequence[dict[str, Any]]
Batches = list[dict[str, torch.Tensor]]

# alpha "auto": the fixed sample of the retain set measured beside the forget items at every
# evaluated alpha (its utility cost), and the most holdout items measured for the target.
RETAIN_PROBE_ITEMS = 16
HOLDOUT_PROBE_ITEMS = 64


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
) -> UnlearnResult:
    """Remove `forget` from `model` (in place) and return it with the state for the next task.

    `eval_sets` (the model's general-knowledge sets) are used only by
    `retain_gradient_sets="retain+eval"`. `holdout` (items of the model's distribution it
    never saw) sets the forget target of `alpha="auto"`, the default of `alkn`
    (`task_vector` defaults to alpha 1): the negation strength is then the smallest alpha in
    (0, `alpha_max`] that brings the forget items' mean answer probability down to
    `target_forget_prob` if given, else to the holdout items' probability measured before
    the lineage's first calibrated task (kept in the state: `HOLDOUT_REFERENCE`), else to
    `target_forget_ratio` x the forget items' own. `CalibrationError`
    (the model left as it was) when no alpha reaches it; `stats["calibration"]` holds the
    target and the curve. A number keeps the fixed alpha (x `coef_decay`^task).
    """
    cls = get_method(method)
    p = resolve_params(cls.defaults, dict(params or {}))
    forget = validate_items(forget, "forget")
    if not forget:
        raise ValueError("forget must contain at least one item")
    retain = validate_items(retain, "retain") if retain else None
    general = validate_items(_general_items(eval_sets), "eval_sets")
    if cls.needs_retain(p) and not retain:
        raise ValueError(f"method {method!r} needs a retain set")
    if not cls.stateful:
        state = None
    elif state is not None:
        if state.method != method:
            raise ValueError(f"the unlearning state was made by {state.method!r}, "
                             f"not {method!r}")
        state.check_compatible(model)

    times: dict[str, float] = {}
    t0 = time.perf_counter()
    device = place(model)
    torch.manual_seed(p["seed"])
    ctx = TaskContext(
        model=model, tokenizer=tokenizer, params=p, pad=pad_id(tokenizer), device=device,
        forget=encode_items(forget, tokenizer, p, "forget"),
        retain=encode_items(retain, tokenizer, p, "retain") if retain else None,
        general=encode_items(general, tokenizer, p, "eval_sets") if general else None,
        state=state, progress=progress,
    )
    impl = cls(ctx)
    ctx.report("probing", 0, 1)
    probe = (_NegationProbe(ctx, validate_items(holdout, "holdout") if holdout else [])
             if cls.negates and p["alpha"] == AUTO else None)
    impl.prepare()
    base = snapshot(model) if cls.negates else None
    times["probing"] = time.perf_counter() - t0

    lr = impl.lr()
    loop = train_loop(model, ctx.forget, impl.loss, p, ctx.pad,
                      retain=ctx.retain if cls.trains_on_retain else None, lr=lr,
                      lr_scale=impl.lr_scale(), grad_hook=impl.grad_hook, progress=progress)
    times["training"] = loop.seconds
    new_state = impl.finish()

    stats: dict[str, Any] = {"method": method, "steps": loop.steps, "lr": lr,
                             "final_loss": loop.losses[-1] if loop.losses else None}
    if base is not None:
        t1 = time.perf_counter()
        tau = TaskVector.between(base, model)
        if probe is None:
            ctx.report("negating", 0, 1)
            alpha = p["alpha"] * p["coef_decay"] ** ctx.task_index
        else:
            search = probe.search(model, base, tau)
            alpha = search.alpha
            stats["calibration"] = probe.stats(search, loop.seconds)
            times["calibration"] = probe.probe_seconds + probe.search_seconds
            if new_state is not None:  # the next task's search starts from this alpha
                new_state.info["calibrated_alpha"] = alpha
                if probe.holdout_prob is not None:
                    new_state.info[HOLDOUT_REFERENCE] = probe.holdout_prob
        tau.apply_to(model, base, scale=-alpha)
        stats.update(alpha=alpha, task_vector_norm=tau.norm())
        del tau, base
        ctx.report("negating", 1, 1)
        times["negating"] = time.perf_counter() - t1
    stats.update(ctx.stats)
    stats["task_index"] = ctx.task_index
    stats["seconds"] = times
    model.eval()
    return UnlearnResult(model=model, state=new_state, stats=stats)


# The holdout probability of the lineage's first calibrated task, kept in the state: the
# "never seen" level is that of the model before any unlearning. Measured again on each
# model, it falls as unlearning wears the model down, and each task would then chase a
# lower target on a weaker model (README, "Calibrated negation").
HOLDOUT_REFERENCE = "holdout_reference"


class _NegationProbe:
    """What `alpha="auto"` measures: the forget items and a fixed retain probe, tokenised and
    collated once, at theta_t before training (and the holdout items, for the target), then
    at theta_t - alpha * tau for each alpha the search tries (forward passes only)."""

    def __init__(self, ctx: TaskContext, holdout: list[dict[str, Any]]) -> None:
        t = time.perf_counter()
        self.ctx, p = ctx, ctx.params
        self.forget = self._batches(ctx.forget)
        retain = list(ctx.retain or [])
        pick = torch.randperm(len(retain), generator=torch.Generator().manual_seed(
            p["seed"] + 2)).tolist()[:RETAIN_PROBE_ITEMS]
        self.retain = self._batches([retain[i] for i in sorted(pick)]) if retain else None
        self.forget_before, self.retain_before = self.measure(ctx.model)
        self.holdout_prob: float | None = None
        self.holdout_items = 0
        self.holdout_carried = False
        if holdout and p["target_forget_prob"] is None:
            carried = ctx.state.info.get(HOLDOUT_REFERENCE) if ctx.state is not None else None
            if isinstance(carried, int | float) and not isinstance(carried, bool):
                self.holdout_prob, self.holdout_carried = float(carried), True
            else:
                self._measure_holdout(holdout)
        self.target, self.source = forget_target(
            self.forget_before, explicit=p["target_forget_prob"],
            holdout_prob=self.holdout_prob, ratio=p["target_forget_ratio"])
        self.probe_seconds = time.perf_counter() - t  # before training: the target's cost
        self.search_seconds = 0.0

    def _batches(self, examples: Sequence[Example]) -> Batches:
        # Length-sorted: little padding; the mean does not depend on the order.
        ordered = sorted(examples, key=lambda e: len(e.input_ids))
        bs = self.ctx.params["batch_size"]
        return [collate(ordered[i : i + bs], self.ctx.pad, self.ctx.device)
                for i in range(0, len(ordered), bs)]

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
        if len(examples) > HOLDOUT_PROBE_ITEMS:  # a fixed sample bounds the cost
            pick = torch.randperm(len(examples), generator=torch.Generator().manual_seed(
                p["seed"] + 3)).tolist()[:HOLDOUT_PROBE_ITEMS]
            examples = [examples[i] for i in sorted(pick)]
        if examples:
            self.holdout_prob = mean_batch_probability(self.ctx.model, self._batches(examples))
            self.holdout_items = len(examples)

    def measure(self, model: torch.nn.Module) -> tuple[float, float | None]:
        forget = mean_batch_probability(model, self.forget)
        retain = mean_batch_probability(model, self.retain) if self.retain else None
        return forget, retain

    def search(self, model: torch.nn.Module, base: dict[str, torch.Tensor], tau: TaskVector
               ) -> AlphaSearch:
        ctx, p = self.ctx, self.ctx.params
        t = time.perf_counter()
        budget = p["calibration_evals"]
        ctx.report("negating", 0, budget)

        def evaluate(alpha: float) -> tuple[float, float | None]:
            tau.apply_to(model, base, scale=-alpha)
            out = self.measure(model)
            calls.append(alpha)
            ctx.report("negating", len(calls), budget)
            return out

        calls: list[float] = []
        prev = ctx.state.info.get("calibrated_alpha") if ctx.state is not None else None
        try:
            return search_alpha(evaluate, self.target, alpha_max=p["alpha_max"],
                                max_evals=budget, forget_at_zero=self.forget_before,
                                start=prev if isinstance(prev, int | float) else None)
        except CalibrationError:
            tau.apply_to(model, base, scale=0.0)  # nothing of this task stays in the model
            model.eval()
            raise
        finally:
            self.search_seconds = time.perf_counter() - t

    def stats(self, search: AlphaSearch, training_seconds: float) -> dict[str, Any]:
        return {
            "alpha": search.alpha, "target": search.target, "target_source": self.source,
            "forget_prob": search.forget_prob, "forget_prob_before": self.forget_before,
            "retain_probe_before": self.retain_before, "holdout_prob": self.holdout_prob,
            "holdout_items": self.holdout_items,
            # measured at this task, or carried from the lineage's first calibrated task
            "holdout_carried": self.holdout_carried,
            "retain_probe_items": sum(len(b["input_ids"]) for b in self.retain or []),
            "curve": search.sorted_curve(), "evaluations": search.evaluations,
            "budget": self.ctx.params["calibration_evals"],
            "alpha_max": self.ctx.params["alpha_max"],
            "within_tolerance": search.within_tolerance,
            "search_seconds": self.search_seconds, "probe_seconds": self.probe_seconds,
            # The search's cost (forward passes at the tried alphas) next to training's.
            "search_vs_training": (self.search_seconds / training_seconds
                                   if training_seconds > 0 else None),
        }
