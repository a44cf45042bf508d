"""`unlearn`: the one public entry point (the worker and the benchmarks call it)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import encode_items, pad_id, validate_items
from .methods import TaskContext, get_method
from .params import method_params, resolve_params  # noqa: F401  (re-exported)
from .runtime import place
from .state import UnlearnState
from .task_vector import TaskVector, snapshot
from .train import train_loop

Progress = Callable[[str, int, int], None]
Items = Sequence[dict[str, Any]]


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
) -> UnlearnResult:
    """Remove `forget` from `model` (in place) and return it with the state for the next task.

    `eval_sets` (the model's general-knowledge sets) are used only by
    `retain_gradient_sets="retain+eval"`.
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
        ctx.report("negating", 0, 1)
        alpha = p["alpha"] * p["coef_decay"] ** ctx.task_index
        tau = TaskVector.between(base, model)
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
