"""Per-token log-probabilities of a batch and the losses built from them."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .data import IGNORE, Example, collate


def token_logprobs(model: torch.nn.Module, batch: dict[str, torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(token_t | tokens_<t) for t = 1..T-1, and the mask of trained positions.

    Uses cross-entropy on the gathered targets, so no [B, T, V] log-softmax is kept.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits = logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != IGNORE
    logp = -F.cross_entropy(logits.reshape(-1, logits.size(-1)),
                            targets.clamp(min=0).reshape(-1), reduction="none")
    return logp.view(targets.shape) * mask, mask


def nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean negative log-likelihood over the trained tokens of the batch."""
    logp, mask = token_logprobs(model, batch)
    return -logp.sum() / mask.sum().clamp(min=1)


def weighted_nll(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """-sum_i w_i log p(y_i) / (number of trained tokens); weights aligned with input_ids."""
    logp, mask = token_logprobs(model, batch)
    weights = batch["weights"][:, 1:]
    return -(weights * logp).sum() / mask.sum().clamp(min=1)


def sequence_logprob(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the trained tokens' log-probabilities, one value per example."""
    logp, _ = token_logprobs(model, batch)
    return logp.sum(dim=1)


@torch.no_grad()
def per_example_token_probs(model: torch.nn.Module, examples: Sequence[Example], pad: int,
                            batch_size: int, device: torch.device) -> list[list[float]]:
    """p(y_i | prefix) of every trained token, per example, aligned with its input_ids
    (0.0 where a position is not trained)."""
    was_training = model.training
    model.eval()
    out: list[list[float]] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk, pad, device)
        logp, mask = token_logprobs(model, batch)
        probs = (logp.exp() * mask).cpu()
        for row, e in enumerate(chunk):
            out.append([0.0, *probs[row, : len(e.input_ids) - 1].tolist()])
    model.train(was_training)
    return out


@torch.no_grad()
def mean_answer_probability(model: torch.nn.Module, examples: Sequence[Example], pad: int,
                            batch_size: int = 16, device: torch.device | None = None) -> float:
    """Mean over items of p(a|q) = exp(-mean token NLL of the answer): TOFU's probability."""
    device = device or next(model.parameters()).device
    batches = [collate(examples[start : start + batch_size], pad, device)
               for start in range(0, len(examples), batch_size)]
    return mean_batch_probability(model, batches)


@torch.no_grad()
def mean_batch_probability(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]]
                           ) -> float:
    """`mean_answer_probability` over batches already collated on the model's device (kept
    and reused when the same items are measured many times, e.g. by alpha calibration)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for batch in batches:
        logp, mask = token_logprobs(model, batch)
        total += (logp.sum(1) / mask.sum(1).clamp(min=1)).exp().sum().item()
        count += int(batch["input_ids"].shape[0])
    model.train(was_training)
    return total / max(1, count)
