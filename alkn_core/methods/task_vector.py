"""Task-vector negation (TV): fine-tune on the forget set with plain NLL, then negate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..lazy_import import LazyModule
from ..params import NegationParams
from .base import BaseParams, Method

if TYPE_CHECKING:
    import torch

    from .. import losses, state
    from .base import Batch
else:
    losses = LazyModule("alkn_core.losses")
    state = LazyModule("alkn_core.state")


@dataclass(frozen=True, kw_only=True)
class TaskVectorParams(NegationParams, BaseParams):
    pass


class TaskVectorMethod(Method):
    """Task-vector negation: fine-tune on the forget set with plain NLL, then negate."""

    name = "task_vector"
    Params = TaskVectorParams
    negates = True
    stateful = True  # only the task index, for the per-task decay of alpha and lr

    def lr(self) -> float:
        return float(self.params["lr"]) * self.params["lr_decay"] ** self.ctx.task_index

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        return losses.nll(model, forget)

    def finish(self) -> state.UnlearnState | None:
        return state.UnlearnState(method=self.name, task_index=self.ctx.task_index + 1)
