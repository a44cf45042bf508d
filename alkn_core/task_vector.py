"""Task vectors: tau = theta_finetuned - theta_base, with the few operators negation needs.

Snapshots and task vectors are whole-model tensors read a few times per task: they can be
parked off the compute device (`where`, offload.py); every operator here takes one tensor of
them at a time.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from .offload import park


def snapshot(model: torch.nn.Module, where: str = "memory") -> Mapping[str, torch.Tensor]:
    """A detached copy of every trainable parameter (the base of a task vector), parked
    `where` (offload.py)."""
    return park(((n, p) for n, p in model.named_parameters() if p.requires_grad), where)


@torch.no_grad()
def restore(model: torch.nn.Module, snap: Mapping[str, torch.Tensor]) -> None:
    """Set the model's parameters named in `snap` back to it, in place."""
    for name, q in model.named_parameters():
        if name in snap:
            q.copy_(snap[name])


class TaskVector:
    """A direction in parameter space, one tensor per parameter name."""

    def __init__(self, vector: Mapping[str, torch.Tensor]) -> None:
        self.vector = vector

    @classmethod
    def between(cls, base: Mapping[str, torch.Tensor], finetuned: torch.nn.Module,
                where: str = "memory") -> TaskVector:
        params = dict(finetuned.named_parameters())
        with torch.no_grad():
            return cls(park(((n, params[n].detach() - base[n]) for n in base), where,
                            copy=False))

    def __add__(self, other: TaskVector) -> TaskVector:
        if self.vector.keys() != other.vector.keys():
            raise ValueError("task vectors cover different parameters")
        return TaskVector({n: v + other.vector[n] for n, v in self.vector.items()})

    def __neg__(self) -> TaskVector:
        return TaskVector({n: -v for n, v in self.vector.items()})

    def __mul__(self, scale: float) -> TaskVector:
        return TaskVector({n: v * scale for n, v in self.vector.items()})

    __rmul__ = __mul__

    def norm(self) -> float:
        return float(torch.sqrt(sum((v.float() ** 2).sum() for v in self.vector.values())))

    @torch.no_grad()
    def apply_to(self, model: torch.nn.Module, base: Mapping[str, torch.Tensor],
                 scale: float = 1.0) -> None:
        """Set the model's parameters to base + scale * tau, in place."""
        params = dict(model.named_parameters())
        for n in self.vector:
            b = base[n]
            params[n].copy_(b + scale * self.vector[n].to(b.dtype))
