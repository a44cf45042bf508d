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
coarse-grained distribution. `repair` runs the steps (AdamW, constant lr, weight decay 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .data import IGNORE, Example, length_sorted_batches
from .losses import token_logprobs
from .runtime import autocast_for

Batch = dict[str, torch.Tensor]
TOP_K = 64  # answer-token distribution kept per position (+ one bucket for the rest)
# Earlier forget sets in the hinge per step at most (taken in turn beyond): a step's cost then
# does not grow with the lineage. With 4, a repair round cost 2.3x more from the 5th request
# on than in the first (bench/job_cost.py); 1 kept both splits' selectivity (worst forget
# 0.18 / 0.37 of never seen, docs/bench/selectivity_ablation.md).
HINGE_EARLIER_SETS = 1
# The hinge aims this far below the target: the measured mean then lands at or under it.
HINGE_MARGIN = 0.8


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


def forget_hinge(model: torch.nn.Module, batch: Batch, log_target: float) -> torch.Tensor:
    """relu(log mean_i p(a_i|q_i) - log_target), p(a|q) = exp(mean token log p): only the
    batch's mean (what the target is about) is held down, not every item further."""
    return _mean_hinge(_item_logprobs(model, batch), log_target)


def _item_logprobs(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """log p(a|q) per item: the mean log-probability of its trained tokens."""
    logp, mask = token_logprobs(model, batch)
    return logp.sum(1) / mask.sum(1).clamp(min=1)


def _mean_hinge(item: torch.Tensor, log_target: float) -> torch.Tensor:
    return F.relu(torch.logsumexp(item, 0) - math.log(item.numel()) - log_target)


def _stacked(batches: Sequence[Batch]) -> Batch:
    """One batch of several (right padding to the longest; padded positions masked out and
    never trained on), so a step's hinge sets take one forward pass, not one each."""
    width = max(int(b["input_ids"].shape[1]) for b in batches)
    fill = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE}
    return {k: torch.cat([F.pad(b[k], (0, width - int(b[k].shape[1])), value=v)
                          for b in batches]) for k, v in fill.items()}


def hinge_sum(model: torch.nn.Module, batches: Sequence[Batch], log_target: float
              ) -> torch.Tensor:
    """sum over the batches of `forget_hinge`, in one forward pass: an item's score does not
    depend on the others of its batch (right padding, causal attention)."""
    if len(batches) == 1:
        return forget_hinge(model, batches[0], log_target)
    items = _item_logprobs(model, _stacked(batches))
    sizes = [int(b["input_ids"].shape[0]) for b in batches]
    return sum((_mean_hinge(part, log_target) for part in items.split(sizes)),
               items.new_zeros(()))


def _hinge_sets(forget: Sequence[Sequence[Batch]], step: int) -> list[Sequence[Batch]]:
    """This step's sets: the first (this task's) and the earlier ones' turn."""
    first, rest = [f for f in forget[:1] if f], [f for f in forget[1:] if f]
    if len(rest) > HINGE_EARLIER_SETS:
        start = step * HINGE_EARLIER_SETS
        rest = [rest[(start + i) % len(rest)] for i in range(HINGE_EARLIER_SETS)]
    return first + rest


def repair(model: torch.nn.Module, teacher: Teacher, forget: Sequence[Sequence[Batch]],
           target: float, params: dict[str, Any], lr: float,
           report: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """`params["repair_steps"]` steps on the repair loss, in place; returns its statistics.
    `forget`: the sets the hinge holds under the target, each on its own (this task's first,
    then the earlier tasks'): one batch of this task's and of at most HINGE_EARLIER_SETS
    earlier sets (in turn) per step."""
    t = time.perf_counter()
    steps = params["repair_steps"]
    trainable = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=0.0)
    log_target = math.log(max(target * HINGE_MARGIN, 1e-30))
    weight = params["repair_forget_weight"]
    kls: list[float] = []
    hinges: list[float] = []
    model.train()
    for step in range(steps):
        with autocast_for(model):
            kl = teacher.kl(model, step % len(teacher.batches))
            loss = kl
            sets = _hinge_sets(forget, step)
            if weight > 0 and sets:
                hinge = hinge_sum(model, [f[step % len(f)] for f in sets], log_target)
                loss = loss + weight * hinge
                hinges.append(float(hinge.detach()))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, params["max_grad_norm"])
        optimizer.step()
        kls.append(float(kl.detach()))
        if report is not None:
            report(step + 1, steps)
    optimizer.zero_grad(set_to_none=True)
    del optimizer
    model.eval()
    return {"steps": steps, "lr": lr, "kl_first": kls[0] if kls else None,
            "kl_last": kls[-1] if kls else None,
            "hinge_last": hinges[-1] if hinges else None,
            "items": sum(int(b["input_ids"].shape[0]) for b in teacher.batches),
            "seconds": time.perf_counter() - t}
