"""Repair after negation: distil the pre-task model back into the negated one, forget kept out.

Negating a task vector also removes the generic "answer such questions" direction that
fine-tuning on the forget items learnt, so the other people's answers fall with the forget
items' (issue 13). A few optimiser steps after negation bring the model's answer-token
distributions on repair items (retain items, + the general sets with `repair_sets=
"retain+eval"`) back towards those of the model before the task, while a hinge keeps every
forget item's answer probability at or below the forget target:

    loss = KL(p_before || p_now) over the repair items' answer tokens
           + repair_forget_weight * relu(log mean_i p_now(a_i|q_i) - log target)

`Teacher` records p_before once, before the forget fine-tune (forward passes only, no second
model copy): the top `TOP_K` log-probabilities of every answer token plus the remaining mass
as one bucket, so the memory is bounded for any vocabulary and the KL is exact on that
coarse-grained distribution. `repair` runs the steps (AdamW, constant lr, weight decay 0,
first-moment decay `repair_beta1`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .adapters import attached
from .data import IGNORE, Example, length_sorted_batches
from .losses import token_logprobs
from .params import hinge_batches
from .runtime import autocast_for

Batch = dict[str, torch.Tensor]
Probes = tuple[float | None, float | None]
TOP_K = 64  # answer-token distribution kept per position (+ one bucket for the rest)
# Earlier forget sets in the hinge per step at most (taken in turn beyond): a step's cost then
# does not grow with the lineage. With 4, a repair round cost 2.3x more from the 5th request
# on than in the first (bench/job_cost.py); 1 kept both splits' selectivity (worst forget
# 0.18 / 0.37 of never seen, docs/bench/selectivity_ablation.md).
HINGE_EARLIER_SETS = 1
# A repair step back-propagates each batch (the KL's, each hinge set's) in this many row
# parts: it holds one part's activations beside the gradients, where a whole batch's made the
# repair the task's memory peak (bench/memory.py).
REPAIR_PARTS = 2
# The hinge aims this far below the target: the measured mean then lands at or under it.
HINGE_MARGIN = 0.8
# A batch measured under HINGE_IDLE_BELOW x the hinge's aim is not measured again for the
# next HINGE_IDLE_STEPS steps (its hinge is inactive and small repair steps do not double an
# answer probability in a few steps): the measurement was a quarter of a repair step's time
# though the hinge is inactive after the first steps of a task (bench/job_cost.py).
HINGE_IDLE_BELOW = 0.5
HINGE_IDLE_STEPS = 4


def _answer_logits(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Logits predicting each trained (answer) token: [n_tokens, vocab], fp32."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    mask = batch["labels"][:, 1:] != IGNORE
    return logits[:, :-1][mask].float()


def _bucketed(logp: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """log-probabilities of the top-k tokens `idx` and of everything else: [n, k + 1]."""
    top = logp.gather(1, idx)
    rest = torch.log1p(-top.exp().sum(1).clamp(max=1 - 1e-6))
    return torch.cat([top, rest.unsqueeze(1)], dim=1)


@dataclass
class Teacher:
    """The pre-task model's answer-token distributions on the repair items."""

    batches: list[Batch]
    top_idx: list[torch.Tensor]
    top_logp: list[torch.Tensor]  # [n, k + 1], the last column the remaining mass

    @classmethod
    @torch.no_grad()
    def record(cls, model: torch.nn.Module, examples: Sequence[Example], pad: int,
               batch_size: int, device: torch.device) -> Teacher:
        was_training = model.training
        model.eval()
        batches = length_sorted_batches(examples, batch_size, pad, device)
        idxs, logps = [], []
        for batch in batches:
            logp = F.log_softmax(_answer_logits(model, batch), dim=-1)
            idx = logp.topk(min(TOP_K, logp.size(-1)), dim=-1).indices
            idxs.append(idx)
            logps.append(_bucketed(logp, idx))
        model.train(was_training)
        return cls(batches, idxs, logps)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """Flat CPU tensors for the state file (UnlearnState.teacher)."""
        out: dict[str, torch.Tensor] = {}
        for i, (b, idx, logp) in enumerate(zip(self.batches, self.top_idx, self.top_logp,
                                                strict=True)):
            out.update({f"{i}.{k}": v.cpu() for k, v in b.items()})
            out[f"{i}.top_idx"], out[f"{i}.top_logp"] = idx.cpu(), logp.cpu()
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], device: torch.device) -> Teacher:
        n = len({k.split(".", 1)[0] for k in tensors})
        batches = [{k: tensors[f"{i}.{k}"].to(device)
                    for k in ("input_ids", "attention_mask", "labels")} for i in range(n)]
        return cls(batches, [tensors[f"{i}.top_idx"].to(device) for i in range(n)],
                   [tensors[f"{i}.top_logp"].to(device) for i in range(n)])

    def kl(self, model: torch.nn.Module, i: int) -> torch.Tensor:
        """Mean over answer tokens of KL(teacher || model) on batch i."""
        logp = F.log_softmax(_answer_logits(model, self.batches[i]), dim=-1)
        student = _bucketed(logp, self.top_idx[i])
        teacher = self.top_logp[i]
        return (teacher.exp() * (teacher - student)).sum(1).mean()

    def kl_backward(self, model: torch.nn.Module, i: int, weight: float = 1.0) -> float:
        """`kl(model, i)`'s gradient x `weight` accumulated into the parameters' .grad, one
        row part of the batch at a time (REPAIR_PARTS): one part's activations are held, not
        the batch's. Returns the KL."""
        batch = self.batches[i]
        counts = (batch["labels"][:, 1:] != IGNORE).sum(1)  # answer tokens per row
        total = max(1, int(counts.sum()))
        value, first = 0.0, 0  # rows are row-major in the teacher's token order
        for rows in _parts(int(counts.numel())):
            n = int(counts[rows].sum())
            if n == 0:
                continue
            with autocast_for(model):
                logp = F.log_softmax(_answer_logits(model, _rows(batch, rows)), dim=-1)
                student = _bucketed(logp, self.top_idx[i][first : first + n])
                teacher = self.top_logp[i][first : first + n]
                part = (teacher.exp() * (teacher - student)).sum() / total
            (weight * part).backward()
            value += float(part.detach())
            first += n
        return value


def _parts(n_rows: int) -> list[slice]:
    size = max(1, math.ceil(n_rows / REPAIR_PARTS))
    return [slice(s, min(n_rows, s + size)) for s in range(0, n_rows, size)]


def _rows(batch: Batch, rows: slice) -> Batch:
    return {k: v[rows] for k, v in batch.items()}


def _item_logprobs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """log p(a|q) per item: the mean log-probability of its trained tokens."""
    logp, mask = token_logprobs(model, batch)
    return logp.sum(1) / mask.sum(1).clamp(min=1)


def _log_mean(item: torch.Tensor) -> torch.Tensor:
    """log mean_i p(a_i|q_i) from the items' log-probabilities."""
    return torch.logsumexp(item, 0) - math.log(item.numel())


def _mean_hinge(item: torch.Tensor, log_target: float) -> torch.Tensor:
    return F.relu(_log_mean(item) - log_target)


def forget_hinge(model: torch.nn.Module, batch: Batch, log_target: float) -> torch.Tensor:
    """relu(log mean_i p(a_i|q_i) - log_target), p(a|q) = exp(mean token log p): only the
    batch's mean (what the target is about) is held down, not every item further."""
    return _mean_hinge(_item_logprobs(model, batch), log_target)


def hinge_step(model: torch.nn.Module, batch: Batch, log_target: float,
               weight: float = 1.0) -> tuple[float, float]:
    """`forget_hinge`'s gradient x `weight` accumulated into .grad; returns the hinge and the
    batch's log mean answer probability.

    The items' log-probabilities are measured first without a graph: an inactive hinge (the
    forget items already under the target, the usual case) costs no backward pass, and an
    active one is back-propagated in row parts through the surrogate sum_i w_i log p(a_i|q_i),
    w = softmax of those log-probabilities (d logsumexp / d item), whose gradient is the
    hinge's: one part's activations are held, not the batch's."""
    with torch.no_grad(), autocast_for(model):
        items = _item_logprobs(model, batch).float()
    log_mean = float(_log_mean(items))
    hinge = max(0.0, log_mean - log_target)
    if hinge <= 0:
        return 0.0, log_mean
    w = torch.softmax(items, 0)
    for rows in _parts(int(items.numel())):
        with autocast_for(model):
            part = (w[rows] * _item_logprobs(model, _rows(batch, rows)).float()).sum()
        (weight * part).backward()
    return hinge, log_mean


def batch_turn(step: int, n: int, before: int, steps: int) -> int:
    """The batch (of `n`, length-sorted: shortest first) a round's `step` takes. When a
    round's `steps` cover all n, every round starts at the first; else the rounds take them
    in turn (`before`: the steps of the rounds before), so that no batch, the longest items
    included, is left out of every round (with 64 batches and 30 steps, the same shortest 30
    were the only ones any round saw)."""
    return (step if n <= steps else before + step) % n


def _hinge_sets(forget: Sequence[Sequence[Batch]], step: int) -> list[int]:
    """Indices into `forget` of this step's sets: the first (this task's) and the earlier
    ones' turn."""
    first = [0] if forget and forget[0] else []
    rest = [i for i in range(1, len(forget)) if forget[i]]
    if len(rest) > HINGE_EARLIER_SETS:
        start = step * HINGE_EARLIER_SETS
        rest = [rest[(start + i) % len(rest)] for i in range(HINGE_EARLIER_SETS)]
    return first + rest


class _Hinges:
    """The hinge of each forget set, measured only when it may be active (HINGE_IDLE_*)."""

    def __init__(self, forget: Sequence[Sequence[Batch]], log_target: float, weight: float,
                 before: int, steps: int, passes: int = 0) -> None:
        self.forget, self.log_target, self.weight = forget, log_target, weight
        self.before, self.steps = before, steps  # batch_turn's
        self.passes = passes  # repair_hinge_passes
        self.idle_until: dict[tuple[int, int], int] = {}  # (set, batch) -> step
        self.measured = 0

    def backward(self, model: torch.nn.Module, step: int) -> float:
        total = 0.0
        for i in _hinge_sets(self.forget, step):
            for b in self.turns(i, step):
                key = (i, b)  # each batch has its own mean
                if self.idle_until.get(key, 0) > step:
                    continue
                hinge, log_mean = hinge_step(model, self.forget[i][b], self.log_target,
                                             self.weight)
                self.measured += 1
                if log_mean < self.log_target + math.log(HINGE_IDLE_BELOW):
                    self.idle_until[key] = step + 1 + HINGE_IDLE_STEPS
                total += hinge
        return total

    def turns(self, i: int, step: int) -> list[int]:
        """Set i's batches at this step: one in turn (`batch_turn`), or, for this task's set
        when a round would not come around it `repair_hinge_passes` times, `hinge_batches`
        of them, consecutive, so that it does."""
        n = len(self.forget[i])
        k = hinge_batches(n, self.steps, self.passes) if i == 0 else 1
        if k == 1:
            return [batch_turn(step, n, self.before, self.steps)]
        start = (self.before + step) * k
        return sorted({(start + j) % n for j in range(k)})


def repair(model: torch.nn.Module, teacher: Teacher, forget: Sequence[Sequence[Batch]],
           target: float, params: dict[str, Any], lr: float, round_index: int = 0,
           report: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """`params["repair_steps"]` steps on the repair loss, in place; returns its statistics.
    `forget`: the sets the hinge holds under the target, each on its own (this task's first,
    then the earlier tasks'): one batch of this task's and of at most HINGE_EARLIER_SETS
    earlier sets (in turn) per step. `round_index`: the repair's round (`batch_turn`)."""
    with attached(model, params):  # adapter "lora": the steps train LoRA factors, merged
        return _repair_steps(model, teacher, forget, target, params, lr,
                             round_index * params["repair_steps"], report)


def _repair_steps(model: torch.nn.Module, teacher: Teacher, forget: Sequence[Sequence[Batch]],
                  target: float, params: dict[str, Any], lr: float, before: int,
                  report: Callable[[int, int], None] | None) -> dict[str, Any]:
    t = time.perf_counter()
    steps = params["repair_steps"]
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0,
                                  betas=(params["repair_beta1"], 0.999))
    log_target = math.log(max(target * HINGE_MARGIN, 1e-30))
    weight = params["repair_forget_weight"]
    kls: list[float] = []
    hinges: list[float] = []
    watch = _Hinges(forget, log_target, weight, before, steps, params["repair_hinge_passes"])
    model.train()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)  # no gradient held through the first forward
        if weight > 0:
            hinges.append(watch.backward(model, step))
        kl = teacher.kl_backward(model, batch_turn(step, len(teacher.batches), before, steps))
        torch.nn.utils.clip_grad_norm_(trainable, params["max_grad_norm"])
        optimizer.step()
        kls.append(kl)
        if report is not None:
            report(step + 1, steps)
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    model.eval()
    return {"steps": steps, "lr": lr, "kl_first": kls[0] if kls else None,
            "kl_last": kls[-1] if kls else None,
            "hinge_last": hinges[-1] if hinges else None, "hinge_measured": watch.measured,
            "items": sum(int(b["input_ids"].shape[0]) for b in teacher.batches),
            "seconds": time.perf_counter() - t}


def plateau(now: Probes, best: Probes | None, gain: float, floor: float) -> bool:
    """The repair's rounds stop (negation.repair_and_guard): no probe (retain, general:
    fractions of their references, None without one) gained `gain` on its best so far, and
    every probe is at or above the utility floor. Under the floor a flat round is no reason
    to stop: rounds that gained nothing there still brought the model back later, and
    stopping left the people no probe stands for at half their level (docs/benchmarks.md,
    "Another seed")."""
    return gain > 0 and best is not None and all(
        u is None or floor <= u < (b or 0.0) + gain for u, b in zip(now, best, strict=True))
