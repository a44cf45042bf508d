"""The one training loop every method shares.

The loop owns batching, the optimiser (AdamW), the warm-up + linear-decay schedule,
gradient accumulation and clipping. A method supplies the loss and, optionally, a
gradient hook (called after clipping, before each optimiser step) and per-tensor
learning-rate scales.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .data import Example, batch_indices, collate, cycle_batches, encode_items, num_batches
from .data import pad_id as tokenizer_pad_id
from .losses import nll
from .params import LoopParams
from .runtime import autocast_for, model_device, place

Batch = dict[str, torch.Tensor]
LossFn = Callable[[torch.nn.Module, Batch, Batch | None], torch.Tensor]
GradHook = Callable[[int, int], None]
Progress = Callable[[str, int, int], None]


@dataclass
class LoopResult:
    steps: int
    seconds: float
    losses: list[float] = field(default_factory=list)


def steps_per_epoch(n_examples: int, params: dict[str, Any]) -> int:
    return math.ceil(num_batches(n_examples, params["batch_size"]) / params["grad_accum"])


def total_steps(n_examples: int, params: dict[str, Any]) -> int:
    return params["epochs"] * steps_per_epoch(n_examples, params)


def lr_lambda(total: int, warmup: int) -> Callable[[int], float]:
    """Linear warm-up from lr/(warmup+1) (never a wasted zero-lr step), then linear decay."""

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def build_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                    lr_scale: Callable[[str], float] | None = None) -> torch.optim.AdamW:
    """AdamW with one group per (lr scale, decay); norms and biases are not decayed."""
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = lr_scale(name) if lr_scale else 1.0
        decay = weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((scale, decay), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "lr": lr * s, "weight_decay": d} for (s, d), ps in groups.items()],
        lr=lr,
    )


def train_loop(
    model: torch.nn.Module,
    forget: Sequence[Example],
    loss_fn: LossFn,
    params: dict[str, Any],
    pad: int,
    *,
    retain: Sequence[Example] | None = None,
    lr: float | None = None,
    lr_scale: Callable[[str], float] | None = None,
    grad_hook: GradHook | None = None,
    progress: Progress | None = None,
    checkpoint: Path | None = None,
) -> LoopResult:
    """Run `params["epochs"]` epochs over `forget` (each batch paired with a retain batch
    when `retain` is given) and return the number of optimiser steps taken.

    With `checkpoint`, the whole loop state is saved there after every epoch and a run
    finding one resumes after its last epoch, exactly as if never stopped (plain
    fine-tuning only: the retain pairing has no resumable position)."""
    start = time.perf_counter()
    device = model_device(model)
    lr = params["lr"] if lr is None else lr
    bs, accum = params["batch_size"], params["grad_accum"]
    total = total_steps(len(forget), params)
    optimizer = build_optimizer(model, lr, params["weight_decay"], lr_scale)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(total, round(params["warmup_ratio"] * total)))
    trainable = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(params["seed"])
    retain_batches = cycle_batches(len(retain), bs, generator) if retain else None
    result = LoopResult(steps=0, seconds=0.0)
    first_epoch = 0
    if checkpoint is not None:
        if retain:
            raise ValueError("checkpoints are for plain fine-tuning (no retain batches)")
        first_epoch = _resume(checkpoint, params, model, optimizer, schedule, generator,
                              result)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    for epoch in range(first_epoch, params["epochs"]):
        batches = batch_indices(len(forget), bs, generator)
        for i, idx in enumerate(batches):
            group_start = i - i % accum
            group_size = min(accum, len(batches) - group_start)
            forget_batch = collate([forget[j] for j in idx], pad, device)
            retain_batch = (collate([retain[j] for j in next(retain_batches)], pad, device)
                            if retain_batches and retain else None)
            with autocast_for(model):
                loss = loss_fn(model, forget_batch, retain_batch)
            (loss / group_size).backward()
            result.losses.append(float(loss.detach()))
            if i - group_start + 1 < group_size:
                continue
            torch.nn.utils.clip_grad_norm_(trainable, params["max_grad_norm"])
            if grad_hook is not None:
                grad_hook(result.steps, total)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            result.steps += 1
            if progress is not None:
                progress("training", result.steps, total)
        if checkpoint is not None:
            _save_checkpoint(checkpoint, {
                "epoch": epoch + 1, "steps": result.steps, "losses": result.losses,
                "params": _comparable(params), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                "generator": generator.get_state()})
    model.eval()
    del optimizer  # its state is the largest allocation of a task: free it before negation
    result.seconds = time.perf_counter() - start
    return result


def _comparable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in sorted(params.items())}


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Written beside, then renamed: a crash mid-write leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _resume(path: Path, params: dict[str, Any], model: torch.nn.Module,
            optimizer: torch.optim.Optimizer, schedule: Any, generator: torch.Generator,
            result: LoopResult) -> int:
    """Load a checkpoint if there is one; returns the epoch to start from."""
    if not path.is_file():
        return 0
    state = torch.load(path, map_location=model_device(model), weights_only=True)
    if state["params"] != _comparable(params):
        raise ValueError(f"checkpoint {path} was made with other parameters; "
                         "remove it to start over")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    generator.set_state(state["generator"].cpu())
    result.steps, result.losses = state["steps"], list(state["losses"])
    return int(state["epoch"])


def finetune(model: torch.nn.Module, tokenizer: Any, items: Sequence[dict[str, Any]],
             params: dict[str, Any] | None = None, progress: Progress | None = None,
             checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Plain fine-tuning (NLL on answer tokens / all text tokens): how target, retain and
    demo models are made. Returns the loop's statistics."""
    p = LoopParams.parse(params)
    place(model)
    examples = encode_items(items, tokenizer, p)
    torch.manual_seed(p["seed"])
    res = train_loop(model, examples, lambda m, f, r: nll(m, f), p, tokenizer_pad_id(tokenizer),
                     progress=progress,
                     checkpoint=Path(checkpoint) if checkpoint is not None else None)
    tail = res.losses[-max(1, len(res.losses) // 10):]
    return {"steps": res.steps, "seconds": res.seconds, "final_loss": sum(tail) / len(tail)}
