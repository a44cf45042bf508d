"""Negative Preference Optimisation (NPO) and NPO + retain NLL (npo_gd).

The frozen reference model is the model before the task; its per-example log-probabilities
of the forget set are computed once while probing, so no second copy of the model is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..data import collate
from ..losses import nll, sequence_logprob
from ..params import METHOD_DEFAULTS
from .base import Batch, Method


class Npo(Method):
    name = "npo"
    defaults = METHOD_DEFAULTS["npo"]

    @torch.no_grad()
    def prepare(self) -> None:
        ctx = self.ctx
        ctx.model.eval()
        bs = self.params["batch_size"]
        for start in range(0, len(ctx.forget), bs):
            chunk = ctx.forget[start : start + bs]
            ref = sequence_logprob(ctx.model, collate(chunk, ctx.pad, ctx.device)).float().cpu()
            for e, value in zip(chunk, ref.tolist(), strict=True):
                e.extras["ref_logp"] = value
            ctx.report("probing", min(start + bs, len(ctx.forget)), len(ctx.forget))

    def npo_loss(self, model: torch.nn.Module, forget: Batch) -> torch.Tensor:
        beta = self.params["beta"]
        log_ratio = sequence_logprob(model, forget) - forget["ref_logp"]
        return -(2.0 / beta) * F.logsigmoid(-beta * log_ratio).mean()

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        return self.npo_loss(model, forget)


class NpoGd(Npo):
    name = "npo_gd"
    defaults = METHOD_DEFAULTS["npo_gd"]
    trains_on_retain = True

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        assert retain is not None
        return (self.params["forget_weight"] * self.npo_loss(model, forget)
                + self.params["retain_weight"] * nll(model, retain))
