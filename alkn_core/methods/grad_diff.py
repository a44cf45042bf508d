"""Gradient difference (GD): ascend on the forget set, descend on the retain set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..lazy_import import LazyModule
from ..params import LossWeightParams
from .base import BaseParams, Method

if TYPE_CHECKING:
    import torch

    from .. import losses
    from .base import Batch
else:
    losses = LazyModule("alkn_core.losses")


@dataclass(frozen=True, kw_only=True)
class GradDiffParams(LossWeightParams, BaseParams):
    pass


class GradDiff(Method):
    """Gradient difference: ascend on the forget set, descend on the retain set."""

    name = "grad_diff"
    Params = GradDiffParams
    trains_on_retain = needs_retain = True

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        assert retain is not None
        return (-self.params["forget_weight"] * losses.nll(model, forget)
                + self.params["retain_weight"] * losses.nll(model, retain))
