"""Whole-model tensors a task keeps but does not use at every step, parked off the compute
device.

The weights before training (until negation), the task vector and the repair's snapshots are
read a few times per task (once per alpha the calibration evaluates, once per repair round's
guard), never per optimiser step. Parked, they cost the compute device nothing:

- beside an accelerator (`"cpu"`): in CPU memory, pinned on CUDA so copies back run at the
  bus's full bandwidth;
- on the CPU (`"disk"`): in a file of the temporary directory, memory-mapped back: page cache
  the kernel can drop and read again, not the process's heap;
- `"memory"`: where the model is (the fastest, and the most memory).

`"auto"` is `"cpu"` beside an accelerator and `"disk"` on the CPU. `Parked` reads as a mapping
name -> tensor on that tensor's own device (a copy back per access from CPU memory, the mapped
view from a file): its users take one tensor at a time, so a whole-model copy never comes back.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping

import torch

WHERE = ("auto", "memory", "cpu", "disk")
_ALIGN = 64  # byte offset of each tensor in a file: any dtype's view of it is aligned


def resolve(where: str, device: torch.device) -> str:
    """"auto" -> "cpu" beside an accelerator, "disk" on the CPU; the others stay."""
    if where not in WHERE:
        raise ValueError(f"offload must be one of {', '.join(WHERE)}, got {where!r}")
    if where == "auto":
        return "disk" if device.type == "cpu" else "cpu"
    if where == "cpu" and device.type == "cpu":
        return "memory"  # the compute device's memory already
    return where


class Parked(Mapping[str, torch.Tensor]):
    """Tensors kept where `where` says; read back one at a time on their own device."""

    def __init__(self, stored: dict[str, torch.Tensor], devices: dict[str, torch.device],
                 where: str) -> None:
        self._stored, self._devices, self.where = stored, devices, where

    def __getitem__(self, name: str) -> torch.Tensor:
        t, device = self._stored[name], self._devices[name]
        return t if t.device == device else t.to(device, non_blocking=True)

    def __contains__(self, name: object) -> bool:  # Mapping's would copy the tensor back
        return name in self._stored

    def __iter__(self) -> Iterator[str]:
        return iter(self._stored)

    def __len__(self) -> int:
        return len(self._stored)

    def stored_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self._stored.values())


def park(tensors: Iterable[tuple[str, torch.Tensor]], where: str, *, copy: bool = True
         ) -> Parked:
    """The tensors parked (`where` resolved against each tensor's device). Taken one at a
    time from the iterable, so a generator of new tensors never holds more than one of them
    on the device. `copy`: the tensors may be live (a model's parameters) and must be copied
    even where they would stay on their device."""
    items = iter(tensors)
    first = next(items, None)
    if first is None:
        return Parked({}, {}, where)
    target = resolve(where, first[1].device)
    pairs = _chain(first, items)
    if target == "disk":
        return _to_file(pairs, copy)
    stored: dict[str, torch.Tensor] = {}
    devices: dict[str, torch.device] = {}
    for name, t in pairs:
        devices[name] = t.device
        t = t.detach()
        if target == "cpu" and t.device.type != "cpu":
            stored[name] = _host_copy(t)
        else:
            stored[name] = t.clone() if copy else t
    return Parked(stored, devices, target)


def _chain(first: tuple[str, torch.Tensor], rest: Iterator[tuple[str, torch.Tensor]]
           ) -> Iterator[tuple[str, torch.Tensor]]:
    yield first
    yield from rest


def _host_copy(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy, pinned where the platform allows it (a failed pin falls back to pageable)."""
    try:
        out = torch.empty(t.shape, dtype=t.dtype, pin_memory=t.device.type == "cuda")
    except RuntimeError:
        out = torch.empty(t.shape, dtype=t.dtype)
    out.copy_(t)
    return out


def _to_file(pairs: Iterable[tuple[str, torch.Tensor]], copy: bool) -> Parked:
    """Write every tensor into one file, then map it back (privately: nothing ever writes
    to it). The file is unlinked at once: the mapping keeps it until freed. A full disk
    keeps what was written mapped and the rest in memory, as `"memory"` would."""
    layout: list[tuple[str, int, torch.dtype, torch.Size, torch.device]] = []
    in_memory: dict[str, torch.Tensor] = {}
    fd, path = tempfile.mkstemp(prefix="alkn-parked-", suffix=".bin")
    try:
        offset = 0
        with os.fdopen(fd, "wb") as f:
            for name, t in pairs:
                if in_memory:  # the disk filled up: the rest stays in memory
                    in_memory[name] = t.detach().clone() if copy else t.detach()
                    continue
                raw = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu()
                pad = -raw.numel() % _ALIGN
                try:
                    f.write(memoryview(raw.numpy()))
                    f.write(b"\0" * pad)
                    f.flush()
                except OSError:
                    in_memory[name] = t.detach().clone() if copy else t.detach()
                    continue
                layout.append((name, offset, t.dtype, t.shape, t.device))
                offset += raw.numel() + pad
        mapped = (torch.from_file(path, shared=False, size=offset, dtype=torch.uint8)
                  if offset else torch.empty(0, dtype=torch.uint8))
    finally:
        os.unlink(path)
    stored, devices = {}, {}
    for name, start, dtype, shape, device in layout:
        n = shape.numel() * torch.empty((), dtype=dtype).element_size()
        stored[name] = mapped[start : start + n].view(dtype).view(shape)
        devices[name] = device
    for name, t in in_memory.items():
        stored[name], devices[name] = t, t.device
    return Parked(stored, devices, "disk" if not in_memory else "disk+memory")
