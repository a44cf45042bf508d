"""Gradient difference (GD): ascend on the forget set, descend on the retain set."""

from __future__ import annotations

import torch

from ..losses import nll
from ..params import METHOD_DEFAULTS
from .base import Batch, Method


class GradDiff(Method):
    name = "grad_diff"
    defaults = METHOD_DEFAULTS["grad_diff"]
    trains_on_retain = True

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        assert retain is not None
        return (-self.params["forget_weight"] * nll(model, forget)
                + self.params["retain_weight"] * nll(model, retain))
