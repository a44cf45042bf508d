"""What a method is: a loss, optional probing before training, optional gradient hook and
per-tensor learning rates, and the state it leaves. The loop and negation live elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..data import Example
from ..params import LOOP_DEFAULTS
from ..state import UnlearnState

Batch = dict[str, torch.Tensor]
Progress = Callable[[str, int, int], None]


@dataclass
class TaskContext:
    """Everything one unlearning task works on."""

    model: torch.nn.Module
    tokenizer: Any
    params: dict[str, Any]
    pad: int
    device: torch.device
    forget: list[Example]
    retain: list[Example] | None
    general: list[Example] | None  # the model's general-knowledge sets (retain+eval)
    state: UnlearnState | None
    progress: Progress | None = None
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def task_index(self) -> int:
        return self.state.task_index if self.state is not None else 0

    def report(self, stage: str, step: int, total: int) -> None:
        if self.progress is not None:
            self.progress(stage, step, total)


class Method:
    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = LOOP_DEFAULTS
    negates: ClassVar[bool] = False  # fine-tune, then theta - alpha * tau
    trains_on_retain: ClassVar[bool] = False  # the loop pairs a retain batch with each batch
    stateful: ClassVar[bool] = False  # reads and writes an UnlearnState

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.params = ctx.params

    @classmethod
    def needs_retain(cls, params: dict[str, Any]) -> bool:
        return cls.trains_on_retain

    def prepare(self) -> None:
        """Probing before training (initial probabilities, reference values, ...)."""

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        raise NotImplementedError

    def lr(self) -> float:
        return self.params["lr"]

    def lr_scale(self) -> Callable[[str], float] | None:
        return None

    grad_hook: Callable[[int, int], None] | None = None

    def finish(self) -> UnlearnState | None:
        """Called after training, before negation."""
        return None
