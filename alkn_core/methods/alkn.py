"""ALKN: Adaptive Localization of Knowledge Negation (docs/algorithm.md, steps 1-8).

Probing records the forget tokens' initial probabilities (-> soft-label weights) and the
mean retain gradient g_r. Training learns the forget set with the weighted NLL while a
dynamic mask lets through only the coordinates whose accumulated score g * g_r is above a
per-tensor threshold; coordinates used by earlier tasks are pushed out and tensors they
cover train with a lower lr. Negation happens outside (shared with task_vector); the mask,
thresholds and task index are carried to the next task in the UnlearnState.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..lazy_import import LazyModule
from ..params import NegationParams, param, redefault
from .base import BaseParams, Method

if TYPE_CHECKING:
    import torch

    from .. import data, losses, masking, state
    from .base import Batch
else:
    torch = LazyModule("torch")
    data = LazyModule("alkn_core.data")
    losses = LazyModule("alkn_core.losses")
    masking = LazyModule("alkn_core.masking")
    state = LazyModule("alkn_core.state")


@dataclass(frozen=True, kw_only=True)
class AlknParams(NegationParams, BaseParams):
    # "auto": forget exactly enough (bench/calibration.py: it reached its target on every
    # task and kept more utility than the best fixed alpha, with either target).
    alpha: float | str = redefault(NegationParams, "alpha", "auto")
    unmask_ratio: float = param(0.8, "fraction of coordinates the mask keeps at the first "
                                "step (falls to half by the last)", le=1)
    mask_p_k: float = param(0.5, "push-out of coordinates earlier tasks used", le=100.0)
    low_lr_ratio: float = param(0.1, "lr factor of the more-covered half of the tensors", le=1)
    init_prob_k: float = param(1.5, "slope of the soft-label weights (tokens an earlier "
                               "task already made improbable weigh less)", positive=True, le=100.0)
    threshold_update_step: int = param(1, "recompute the thresholds every N steps "
                                       "(first task)", positive=True, le=1_000_000)
    trim_ratio: float = param(0.15, "trimming of the threshold's order statistics", le=1)
    # retain_safe: measured far better than the reference rule (docs/bench/).
    mask_rule: str = param("retain_safe", "which end of g * g_r the mask keeps (the lineage "
                           "keeps its first task's rule)", choices=("reference", "retain_safe"))
    retain_gradient_sets: str = param("retain", "what the mean retain gradient g_r is "
                                      "computed on",
                                      choices=("retain", "retain+eval"))
    # bf16 chose 99.8% of fp32's mask on the demo model's first task, 97.2% by the third
    # (bench/mask_precision.py: the tasks diverge with their masks; tests/test_memory_cuts.py
    # holds >= 98% over two); the continual benchmark's numbers equal within noise
    # (docs/benchmarks.md, "Memory per method").
    score_dtype: str = param("bfloat16", "precision the score and g_r are held in (products "
                             "are taken in fp32 either way; bfloat16 halves their memory)",
                             choices=("float32", "bfloat16"))


class Alkn(Method):
    """ALKN: masked fine-tuning on the forget set, then task-vector negation with alpha
    calibrated to a forget target and a repair towards the lineage's first model."""

    name = "alkn"
    Params = AlknParams
    negates = True
    stateful = True
    needs_retain = True  # the mean retain gradient decides what the mask protects

    # -- probing ---------------------------------------------------------------------------

    def prepare(self) -> None:
        ctx, p = self.ctx, self.params
        made_with = ctx.state.info.get("mask_rule") if ctx.state is not None else None
        if made_with and made_with != p["mask_rule"]:
            # A lineage keeps the rule of its first task: its thresholds (reused after the
            # first task) and its cumulative mask only mean something under that rule.
            ctx.stats["mask_rule_from_state"] = made_with
            self.params = p = p.replace(mask_rule=made_with)
        self.named = [(n, q) for n, q in ctx.model.named_parameters() if q.requires_grad]
        self._soft_labels()
        # g * g_r cannot rank the coordinates of a tensor the retain loss has no gradient on
        # (LoRA's A factors: B starts at zero, so changing A alone leaves every output as it
        # was): such a tensor trains unmasked (threshold -inf).
        self.g_r, self.free = self._mean_retain_gradient()
        prev = ctx.state.masks if ctx.state is not None else None
        # Each tensor lives beside its parameter (a device_map may spread them over GPUs).
        where = {n: q.device for n, q in self.named}
        self.prev = ({n: m.to(where[n]) for n, m in prev.items()} if prev else None)
        self.first = self.prev is None
        if not self.first:
            assert ctx.state is not None and ctx.state.thresholds is not None
            self.thresholds: dict[str, float] = dict(ctx.state.thresholds)
        else:
            self.thresholds = {}
        self.thresholds.update({n: -math.inf for n in self.free})
        self.score = {n: torch.zeros_like(q, dtype=self._score_dtype()) for n, q in self.named}
        self.sign = 1.0 if p["mask_rule"] == "reference" else -1.0
        gen = torch.Generator().manual_seed(p["seed"])
        self.positions = {n: masking.sample_positions(q.numel(), gen,
                                                      row=q.shape[-1] if q.ndim else 1)
                          for n, q in self.named}
        self.kept_history: list[float] = []

    def _soft_labels(self) -> None:
        ctx, p = self.ctx, self.params
        probs = losses.per_example_token_probs(ctx.model, ctx.forget, ctx.pad,
                                               p["batch_size"], ctx.device)
        trained = 0
        prob_sum = 0.0
        for e, pr in zip(ctx.forget, probs, strict=True):
            pt = torch.tensor(pr)
            w = masking.soft_label_weights(pt, p["init_prob_k"])
            w[torch.tensor(e.labels) == data.IGNORE] = 0.0
            e.extras["weights"] = w.tolist()
            is_target = torch.tensor(e.labels) != data.IGNORE
            trained += int(is_target.sum())
            prob_sum += float(pt[is_target].sum())
        ctx.stats["initial_token_prob"] = prob_sum / max(1, trained)

    def _mean_retain_gradient(self) -> tuple[dict[str, torch.Tensor], set[str]]:
        """Mean over as many retain batches as the forget set has batches, at theta_t."""
        ctx, p = self.ctx, self.params
        pool = list(ctx.retain or [])
        if p["retain_gradient_sets"] == "retain+eval":
            pool += ctx.general or []
        n = data.num_batches(len(ctx.forget), p["batch_size"])
        batches = data.cycle_batches(len(pool), p["batch_size"],
                                     torch.Generator().manual_seed(p["seed"] + 1))
        model = ctx.model
        model.zero_grad(set_to_none=True)
        model.eval()
        for i in range(n):
            batch = data.collate([pool[j] for j in next(batches)], ctx.pad, ctx.device)
            (losses.nll(model, batch) / n).backward()
            ctx.report("probing", i + 1, n)
        dtype = self._score_dtype()
        g_r: dict[str, torch.Tensor] = {}
        free: set[str] = set()
        for name, q in self.named:
            g = q.grad if q.grad is not None else torch.zeros_like(q, dtype=dtype)
            if not bool(g.any()):
                free.add(name)
            g_r[name] = g.to(dtype)
            q.grad = None  # one fp32 gradient fewer at a time
        model.zero_grad(set_to_none=True)
        return g_r, free

    def _score_dtype(self) -> torch.dtype:
        # bf16's range is fp32's: products of two gradients, however tiny, do not underflow
        return torch.bfloat16 if self.params["score_dtype"] == "bfloat16" else torch.float32

    # -- training --------------------------------------------------------------------------

    def lr(self) -> float:
        return self.params["lr"] * self.params["lr_decay"] ** self.ctx.task_index

    def lr_scale(self) -> Callable[[str], float] | None:
        if self.first:
            return None
        assert self.prev is not None
        coverage = {n: float(m.float().mean()) for n, m in self.prev.items()}
        low = masking.low_lr_names(coverage)
        self.ctx.stats["low_lr_tensors"] = len(low)
        ratio = self.params["low_lr_ratio"]
        return lambda name: ratio if name in low else 1.0

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        return losses.weighted_nll(model, forget)

    def grad_hook(self, step: int, total: int) -> None:  # type: ignore[override]
        """Score, penalise earlier tasks' coordinates, threshold, and mask the gradient."""
        with torch.no_grad():
            self._mask_gradient(step, total)

    def _mask_gradient(self, step: int, total: int) -> None:
        p = self.params
        u = masking.unmask_ratio_at(step, total, p["unmask_ratio"])
        update = self.first and step % p["threshold_update_step"] == 0
        kept: list[torch.Tensor | int] = []  # summed once at the end: one sync per step
        count = 0
        for name, q in self.named:
            if name in self.free:
                count += q.numel()
                kept.append(q.numel())
                continue
            score = self.score[name]
            g = q.grad  # None when unused this step: a zero gradient adds nothing
            if g is not None:
                masking.accumulate_score(score, g, self.g_r[name], self.sign,
                                         self.prev[name] if self.prev is not None else None,
                                         p["mask_p_k"])
            if update or name not in self.thresholds:
                self.thresholds[name] = masking.robust_threshold(
                    score, u, p["trim_ratio"], self.positions[name])
            kept.append(masking.keep_and_mask(score, g, self.thresholds[name]))
            count += score.numel()
        self.kept_history.append(sum(int(k) for k in kept) / max(1, count))

    # -- state -----------------------------------------------------------------------------

    def finish(self) -> state.UnlearnState:
        with torch.no_grad():
            return self._cumulative_state()

    def _cumulative_state(self) -> state.UnlearnState:
        ctx = self.ctx
        masks: dict[str, torch.Tensor] = {}
        task_total = overlap = 0
        for name, _ in self.named:
            task = self.score[name] > self.thresholds[name]
            task_total += int(task.sum())
            if self.prev is not None:
                overlap += int((task & self.prev[name]).sum())
                task |= self.prev[name]
            masks[name] = task.cpu()
        del self.score, self.g_r  # free before negation
        ctx.stats.update(
            unmask_ratio=self.kept_history[-1] if self.kept_history else None,
            unmask_ratio_mean=(sum(self.kept_history) / len(self.kept_history)
                               if self.kept_history else None),
            overlap_with_previous=overlap / task_total if task_total and self.prev else 0.0,
        )
        new_state = state.UnlearnState(
            method=self.name, task_index=ctx.task_index + 1,
            shapes={n: list(q.shape) for n, q in self.named}, masks=masks,
            thresholds=dict(self.thresholds),
            info={"mask_rule": self.params["mask_rule"],
                  "retain_gradient_sets": self.params["retain_gradient_sets"]},
        )
        ctx.stats["mask_coverage"] = new_state.coverage()
        return new_state
