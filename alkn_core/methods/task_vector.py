"""Task-vector negation (TV): fine-tune on the forget set with plain NLL, then negate."""

from __future__ import annotations

import torch

from ..losses import nll
from ..params import METHOD_DEFAULTS
from ..state import UnlearnState
from .base import Batch, Method


class TaskVectorMethod(Method):
    name = "task_vector"
    defaults = METHOD_DEFAULTS["task_vector"]
    negates = True
    stateful = True  # only the task index, for the per-task decay of alpha and lr

    def lr(self) -> float:
        return self.params["lr"] * self.params["lr_decay"] ** self.ctx.task_index

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        return nll(model, forget)

    def finish(self) -> UnlearnState | None:
        return UnlearnState(method=self.name, task_index=self.ctx.task_index + 1)
