"""Gradient ascent (GA): maximise the NLL of the forget set."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy_import import LazyModule
from .base import Method

if TYPE_CHECKING:
    import torch

    from .. import losses
    from .base import Batch
else:
    losses = LazyModule("alkn_core.losses")


class GradAscent(Method):
    """Gradient ascent: maximise the NLL of the forget set."""

    name = "grad_ascent"

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        return -losses.nll(model, forget)
