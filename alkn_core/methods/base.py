"""What a method is: its name, its typed parameters (`Params`), a loss, optional probing
before training, optional gradient hook and per-tensor learning rates, and the state it
leaves. The loop and negation live elsewhere.

A method module must import without torch (the web tier reads its `Params` to validate
requests): it reaches torch and the torch parts of the core through `LazyModule`s, loaded
when a job first calls into it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from .. import params
from ..params import LoopParams, QualityParams

if TYPE_CHECKING:
    import torch

    from ..data import Example
    from ..state import UnlearnState

    Batch = dict[str, torch.Tensor]
Progress = Callable[[str, int, int], None]


@dataclass
class TaskContext:
    """Everything one unlearning task works on."""

    model: torch.nn.Module
    tokenizer: Any
    params: params.Params
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


@dataclass(frozen=True, kw_only=True)
class BaseParams(QualityParams, LoopParams):
    """Every method's parameters: the loop and the quality gate."""


class Method:
    """One unlearning method. Subclasses set `name` and `Params` (and the flags below) and
    define `loss`; the registry (methods/__init__.py) finds every subclass in the package."""

    name: ClassVar[str]
    Params: ClassVar[type[params.Params]] = BaseParams
    negates: ClassVar[bool] = False  # fine-tune, then theta - alpha * tau
    trains_on_retain: ClassVar[bool] = False  # the loop pairs a retain batch with each batch
    needs_retain: ClassVar[bool] = False  # refused without a retain set
    stateful: ClassVar[bool] = False  # reads and writes an UnlearnState

    def __init__(self, ctx: TaskContext) -> None:
        self.ctx = ctx
        self.params = ctx.params

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the method's docstring (the docs and the API show it)."""
        return " ".join((cls.__doc__ or cls.name).strip().split("\n\n")[0].split())

    def prepare(self) -> None:
        """Probing before training (initial probabilities, reference values, ...)."""

    def loss(self, model: torch.nn.Module, forget: Batch, retain: Batch | None) -> torch.Tensor:
        raise NotImplementedError

    def lr(self) -> float:
        return float(self.params["lr"])

    def lr_scale(self) -> Callable[[str], float] | None:
        return None

    grad_hook: Callable[[int, int], None] | None = None

    def finish(self) -> UnlearnState | None:
        """Called after training, before negation."""
        return None
