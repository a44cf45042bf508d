"""Where and in what precision model work runs: chosen at run time, never hard-coded."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def pick_dtype(device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it (half the memory, same range as fp32), fp32 elsewhere."""
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def place(model: torch.nn.Module) -> torch.device:
    """Move a CPU model to the GPU when there is one; a model already placed (also one
    spread over GPUs by accelerate's device_map) stays where it is."""
    device = model_device(model)
    if device.type == "cpu" and torch.cuda.is_available() and not hasattr(model, "hf_device_map"):
        model.to(pick_device())
        device = model_device(model)
    return device


@contextlib.contextmanager
def autocast_for(model: torch.nn.Module) -> Iterator[None]:
    """bf16 autocast for an fp32 model on CUDA; a no-op on CPU or for a bf16 model."""
    device = model_device(model)
    dtype = next(model.parameters()).dtype
    if device.type == "cuda" and dtype == torch.float32 and torch.cuda.is_bf16_supported():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            yield
    else:
        yield
