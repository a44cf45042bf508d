"""Negative Preference Optimisation (NPO) and NPO + retain NLL (npo_gd).

The frozen reference model is the model before the task; its per-example log-probabilities
of the forget set are computed once while probing, so no second copy of the model is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..lazy_import import LazyModule
from ..params import LossWeightParams, param
from .base import BaseParams, Method

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F

    from .. import data, losses
    from .base import Batch
else:
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")
    data = LazyModule("alkn_core.data")
    losses = LazyModule("alkn_core.losses")


@dataclass(frozen=True, kw_only=True)
class NpoParams(BaseParams):
    beta: float = param(0.1, "NPO's inverse temperature", positive=True, le=100.0)


@dataclass(frozen=True, kw_only=True)
class NpoGdParams(LossWeightParams, NpoParams):
    pass


class Npo(Method):
    """Negative Preference Optimisation against the model before the task."""

    name = "npo"
    Params = NpoParams

    def prepare(self) -> None:
        ctx = self.ctx
        ctx.model.eval()
        bs = self.params["batch_size"]
        with torch.no_grad():
            for start in range(0, len(ctx.forget), bs):
                chunk = ctx.forget[start : start + bs]
                batch = data.collate(chunk, ctx.pad, ctx.device)
                ref = losses.sequence_logprob(ctx.model, batch).float().cpu()
                for e, value in zip(chunk, ref.tolist(), strict=True):
                    e.extras["ref_logp"] = value
                ctx.report("probing", min(start + bs, len(ctx.forget)), len(ctx.forget))

    def npo_loss(self, model: torch.nn.Module, forget: Batch) -> torch.Tensor:
        beta = self.params["beta"]
        log_ratio = losses.sequence_logprob(model, forget) - forget["ref_logp"]
        return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        return self.npo_loss(model, forget)


class NpoGd(Npo):
    """NPO plus the retain set's NLL."""

    name = "npo_gd"
    Params = NpoGdParams
    trains_on_retain = needs_retain = True

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        assert retain is not None
        return (self.params["forget_weight"] * self.npo_loss(model, forget)
                + self.params["retain_weight"] * losses.nll(model, retain))
