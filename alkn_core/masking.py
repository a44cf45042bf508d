"""The pieces of ALKN's adaptive localisation, each a small pure function.

- soft-label weights from the model's initial token probabilities (adaptive intensity);
- the per-tensor threshold that keeps about a fraction `u` of a score tensor;
- the unmask-ratio schedule of the first task;
- the split of parameter tensors into low- and base-lr groups by previous-mask coverage;
- bit-packing of boolean masks (one bit per parameter) for storage.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch


def soft_label_weights(p: torch.Tensor, k: float = 1.5) -> torch.Tensor:
    """w = sigmoid(k (p - 0.8)) - sigmoid(-0.8 k), clamped to [0, 1]: w(0) = 0, so tokens an
    earlier task already made improbable barely contribute to this task's update."""
    w = torch.sigmoid(k * (p - 0.8)) - torch.sigmoid(torch.tensor(-0.8 * k, dtype=p.dtype))
    return w.clamp(0.0, 1.0)


def accumulate_score(score: torch.Tensor, grad: torch.Tensor, retain_grad: torch.Tensor,
                     sign: float = 1.0, prev: torch.Tensor | None = None,
                     mask_p_k: float = 0.5) -> None:
    """score += sign * g * g_r; then, where an earlier task's mask is set,
    score -= std(g * g_r) * mask_p_k, which pushes already-used coordinates out."""
    if prev is None or grad.numel() < 2:
        score.addcmul_(grad.float(), retain_grad, value=sign)  # fused: no temporary
        return
    s = grad.float() * retain_grad
    if sign < 0:
        s.neg_()
    score.add_(s)
    score.sub_(prev.to(score.dtype).mul_(float(s.std()) * mask_p_k))


def unmask_ratio_at(step: int, total: int, start: float) -> float:
    """Linear decrease from `start` to `start / 2` over a task's optimiser steps."""
    if total <= 1:
        return start
    return start - (start / 2) * step / (total - 1)


def _kth(flat: torch.Tensor, k: int) -> float:
    """k-th smallest value (1-based), computed in fp32 on the tensor's device."""
    return float(torch.kthvalue(flat, k).values)


SAMPLE_SIZE = 1 << 14


def sample_positions(numel: int, generator: torch.Generator,
                     size: int = SAMPLE_SIZE) -> torch.Tensor | None:
    """Fixed random positions at which a large tensor's order statistics are estimated
    (None: the tensor is small enough to use whole)."""
    if numel <= size:
        return None
    return torch.randint(numel, (size,), generator=generator)


def robust_threshold(score: torch.Tensor, keep: float, trim_ratio: float = 0.15,
                     positions: torch.Tensor | None = None) -> float:
    """A threshold such that about `keep` of the elements satisfy score > threshold.

    As the reference: take the k-th largest (hi) and k-th smallest (lo) values with
    k = max(5, trim_ratio * N) and interpolate linearly between them, which ignores
    outliers at both ends. Tensors too small for that get the exact order statistic.
    With `positions`, the order statistics are those of the sampled elements: exact
    selection over millions of elements at every step would cost more than the training
    step itself, while 2^14 samples put the kept fraction within ~1 point of exact.
    """
    flat = score.detach().reshape(-1)
    if positions is not None:
        flat = flat[positions.to(flat.device)]
    flat = flat.float()
    n = flat.numel()
    n_keep = keep * n
    if n_keep >= n:
        return -math.inf
    if n_keep <= 0:
        return math.inf
    k = max(5, int(trim_ratio * n))
    if n - 2 * k + 2 <= 0:
        # Exact: the (n - n_keep)-th smallest value, so the n_keep largest lie above it.
        return _kth(flat, max(1, n - round(n_keep)))
    hi = _kth(flat, n - k + 1)
    lo = _kth(flat, k)
    return hi - (hi - lo) * (n_keep - k + 1) / (n - 2 * k + 2)


def low_lr_names(coverage: Mapping[str, float]) -> set[str]:
    """The more-covered half of the tensors (by fraction of elements already in the previous
    mask): these get lr * low_lr_ratio. Ties keep name order, so the split is deterministic."""
    ranked = sorted(coverage, key=lambda n: -coverage[n])
    return set(ranked[: len(ranked) // 2])


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """Bool tensor -> uint8 tensor of ceil(N / 8) bytes (big-endian bit order)."""
    bits = mask.detach().reshape(-1).to("cpu", torch.bool).numpy()
    return torch.from_numpy(np.packbits(bits))


def unpack_mask(packed: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    n = math.prod(shape)
    if packed.numel() != (n + 7) // 8:
        raise ValueError(f"packed mask has {packed.numel()} bytes, expected {(n + 7) // 8}")
    bits = np.unpackbits(packed.to("cpu", torch.uint8).numpy(), count=n)
    return torch.from_numpy(bits.astype(np.bool_)).reshape(shape)
