"""The method registry: one module per method, looked up by name."""

from __future__ import annotations

from .alkn import Alkn
from .base import Method, TaskContext
from .grad_ascent import GradAscent
from .grad_diff import GradDiff
from .npo import Npo, NpoGd
from .task_vector import TaskVectorMethod

METHODS: dict[str, type[Method]] = {
    m.name: m for m in (Alkn, TaskVectorMethod, GradAscent, GradDiff, Npo, NpoGd)
}


def get_method(name: str) -> type[Method]:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; one of {', '.join(METHODS)}") from None


__all__ = ["METHODS", "Method", "TaskContext", "get_method"]
