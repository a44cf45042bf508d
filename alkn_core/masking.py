"""The pieces of ALKN's adaptive localisation, each a small pure function.

- soft-label weights from the model's initial token probabilities (adaptive intensity);
- the per-tensor threshold that keeps about a fraction `u` of a score tensor;
- the unmask-ratio schedule of the first task;
- the split of parameter tensors into low- and base-lr groups by previous-mask coverage;
- bit-packing of boolean masks (one bit per parameter) for storage.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import numpy as np
import torch


def soft_label_weights(p: torch.Tensor, k: float = 1.5) -> torch.Tensor:
    """w = sigmoid(k (p - 0.8)) - sigmoid(-0.8 k), clamped to [0, 1]: w(0) = 0, so tokens an
    earlier task already made improbable barely contribute to this task's update."""
    w = torch.sigmoid(k * (p - 0.8)) - torch.sigmoid(torch.tensor(-0.8 * k, dtype=p.dtype))
    return w.clamp(0.0, 1.0)


# Elements per piece of the score's element-wise arithmetic on the CPU. There, mixed precision
# (a bf16 score and retain gradient, fp32 gradients) copies the operands to fp32 first, about
# 12 bytes per element: in pieces that is a piece's, not the largest tensor's (an 8B Llama's
# embedding has 525M elements). CUDA kernels cast as they read: whole tensors there.
PIECE = 1 << 18


def pieces(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Aligned flat pieces of same-shaped tensors, as views (writes reach the tensors); the
    tensors whole off the CPU or when one is not contiguous (the arithmetic is element-wise
    either way)."""
    if tensors[0].device.type != "cpu" or not all(t.is_contiguous() for t in tensors):
        yield tensors
        return
    flat = [t.view(-1) for t in tensors]
    for start in range(0, flat[0].numel(), PIECE):
        yield tuple(f[start : start + PIECE] for f in flat)


def accumulate_score(score: torch.Tensor, grad: torch.Tensor, retain_grad: torch.Tensor,
                     sign: float = 1.0, prev: torch.Tensor | None = None,
                     mask_p_k: float = 0.5) -> None:
    """score += sign * g * g_r; then, where an earlier task's mask is set,
    score -= std(g * g_r) * mask_p_k, which pushes already-used coordinates out. In pieces
    (PIECE); the std is the whole tensor's."""
    if prev is None or grad.numel() < 2:
        for s, g, r in pieces(score, grad, retain_grad):
            s.addcmul_(g.float(), r, value=sign)
        return
    penalty = product_std(grad, retain_grad) * mask_p_k
    for s, g, r, m in pieces(score, grad, retain_grad, prev):
        part = g.float() * r
        if sign < 0:
            part.neg_()
        part.sub_(m.to(part.dtype), alpha=penalty)
        s.add_(part)


def product_std(grad: torch.Tensor, retain_grad: torch.Tensor) -> float:
    """The unbiased std of g * g_r over the whole tensor, from float64 sums over pieces."""
    total = torch.zeros((), dtype=torch.float64, device=grad.device)
    squares = torch.zeros((), dtype=torch.float64, device=grad.device)
    for g, r in pieces(grad, retain_grad):
        part = g.float() * r
        total += part.sum(dtype=torch.float64)
        squares += part.square().sum(dtype=torch.float64)
    n = grad.numel()
    return float(((squares - total * total / n) / (n - 1)).clamp(min=0).sqrt())


def keep_and_mask(score: torch.Tensor, grad: torch.Tensor | None,
                  threshold: float) -> torch.Tensor:
    """grad (if any) zeroed where score <= threshold, in pieces; returns how many coordinates
    score > threshold keeps (a 0-d tensor on the score's device: no synchronisation)."""
    kept = torch.zeros((), dtype=torch.int64, device=score.device)
    for parts in pieces(score) if grad is None else pieces(score, grad):
        keep = parts[0] > threshold
        if grad is not None:
            parts[1].mul_(keep)
        kept += keep.sum()
    return kept


def unmask_ratio_at(step: int, total: int, start: float) -> float:
    """Linear decrease from `start` to `start / 2` over a task's optimiser steps."""
    if total <= 1:
        return start
    return start - (start / 2) * step / (total - 1)


def _kth(flat: torch.Tensor, k: int) -> float:
    """k-th smallest value (1-based), computed in fp32 on the tensor's device."""
    return float(torch.kthvalue(flat, k).values)


SAMPLE_SIZE = 1 << 14


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def sample_positions(numel: int, generator: torch.Generator, size: int = SAMPLE_SIZE,
                     row: int = 1) -> slice | None:
    """The fixed positions at which a large tensor's order statistics are estimated: `size`
    elements `stride` apart from a random start, `stride` the largest prime <= numel / size
    that does not divide the row length `row` (so the sample walks every column of a matrix,
    not a few). A slice: a view of the score, no index tensor held per parameter. None: the
    tensor (under 4 x size elements, or no such prime) is used whole."""
    if numel < 4 * size:
        return None
    stride = next((p for p in range(numel // size, 1, -1) if _is_prime(p) and row % p),
                  None)
    if stride is None:
        return None
    # stride * size <= numel: the last sample lies inside the tensor from any start < stride
    start = int(torch.randint(stride, (1,), generator=generator))
    return slice(start, start + stride * (size - 1) + 1, stride)


def robust_threshold(score: torch.Tensor, keep: float, trim_ratio: float = 0.15,
                     positions: slice | None = None) -> float:
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
        flat = flat[positions]
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
