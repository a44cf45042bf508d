"""Gradient ascent (GA): maximise the NLL of the forget set."""

from __future__ import annotations

import torch

from ..losses import nll
from .base import Batch, Method


class GradAscent(Method):
    name = "grad_ascent"

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        return -nll(model, forget)
