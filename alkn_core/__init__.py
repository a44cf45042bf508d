"""alkn_core: continual LLM unlearning (ALKN and baselines). Depends on torch + transformers
only; nothing of ours is imported here.

The package is imported lazily: `alkn_core.params`, `alkn_core.items` and the method
registry `alkn_core.methods` import without torch, so the web tier validates requests
without loading it.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "unlearn": "unlearning", "UnlearnResult": "unlearning", "UnlearnState": "state",
    "TaskVector": "task_vector", "METHODS": "methods", "method_params": "methods",
    "DEFAULT_QA_TEMPLATE": "params", "CalibrationError": "calibration",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'alkn_core' has no attribute {name!r}")
