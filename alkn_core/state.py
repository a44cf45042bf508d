"""The unlearning state a task leaves for the next task of the same lineage.

For ALKN: the cumulative mask (bool per parameter, stored bit-packed), the per-tensor
thresholds of the first task and the task index. For task_vector: the task index only
(it sets the per-task decay of alpha and lr).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from .masking import pack_mask, unpack_mask

STATE_FORMAT = 1
MASKS_FILE = "alkn_masks.safetensors"
META_FILE = "alkn_state.json"
TEACHER_FILE = "alkn_repair_teacher.safetensors"


@dataclass
class UnlearnState:
    method: str
    task_index: int  # number of tasks completed on this lineage
    shapes: dict[str, list[int]] = field(default_factory=dict)
    masks: dict[str, torch.Tensor] | None = None  # bool, same shapes as the parameters
    thresholds: dict[str, float] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # The lineage's first model's answer distributions on a fixed sample of repair items
    # (repair.Teacher.to_tensors; no forget text), the repair's target at every later task.
    teacher: dict[str, torch.Tensor] | None = None

    def check_compatible(self, model: torch.nn.Module) -> None:
        """Refuse a state made for another architecture: names and shapes must match."""
        if not self.shapes:
            return
        actual = {n: list(p.shape) for n, p in model.named_parameters() if p.requires_grad}
        missing = sorted(set(self.shapes) - set(actual))
        extra = sorted(set(actual) - set(self.shapes))
        if missing or extra:
            raise ValueError(f"unlearning state does not match the model: parameters missing "
                             f"from the model {missing[:3]}, not in the state {extra[:3]}")
        for name, shape in self.shapes.items():
            if actual[name] != shape:
                raise ValueError(f"unlearning state does not match the model: {name} has "
                                 f"shape {actual[name]}, the state {shape}")

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": STATE_FORMAT, "method": self.method, "task_index": self.task_index,
                "shapes": self.shapes, "thresholds": self.thresholds, "info": self.info,
                "has_masks": self.masks is not None, "has_teacher": self.teacher is not None}
        if self.masks is not None:
            save_file({n: pack_mask(m) for n, m in self.masks.items()},
                      str(directory / MASKS_FILE), metadata={"format": str(STATE_FORMAT)})
        if self.teacher is not None:
            save_file({n: t.detach().cpu().contiguous() for n, t in self.teacher.items()},
                      str(directory / TEACHER_FILE), metadata={"format": str(STATE_FORMAT)})
        # floats round-trip exactly through JSON (shortest repr); inf is written as Infinity
        (directory / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path) -> UnlearnState:
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text())
        except FileNotFoundError:
            raise ValueError(f"no unlearning state in {directory}") from None
        if meta.get("format") != STATE_FORMAT:
            raise ValueError(f"unsupported unlearning state format {meta.get('format')!r}")
        masks = None
        if meta["has_masks"]:
            packed = load_file(str(directory / MASKS_FILE))
            if set(packed) != set(meta["shapes"]):
                raise ValueError("unlearning state masks do not match its parameter list")
            masks = {n: unpack_mask(packed[n], tuple(meta["shapes"][n])) for n in packed}
        teacher = load_file(str(directory / TEACHER_FILE)) if meta.get("has_teacher") else None
        return cls(method=meta["method"], task_index=meta["task_index"],
                   shapes={n: list(s) for n, s in meta["shapes"].items()}, masks=masks,
                   thresholds=meta["thresholds"], info=meta.get("info", {}), teacher=teacher)

    def coverage(self) -> float:
        """Fraction of all parameters set in the cumulative mask."""
        if not self.masks:
            return 0.0
        total = sum(math.prod(s) for s in self.shapes.values())
        return sum(int(m.sum()) for m in self.masks.values()) / max(1, total)
