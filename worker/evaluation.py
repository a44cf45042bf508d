"""What a job measures before and after unlearning: mean answer probability per item set.

Kept apart from the job logic so that a wider evaluation (ROUGE, truth ratio, privacy
leak, ...) replaces this one function without touching the runner.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from alkn_core.data import Example, encode_item, pad_id
from alkn_core.losses import mean_answer_probability

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]


def _encode(items: Sequence[dict[str, Any]], tokenizer: Any, params: Mapping[str, Any]
            ) -> tuple[list[Example], int]:
    """Encode what fits; an item whose answer is cut off by max_length is skipped (counted)
    rather than failing the evaluation of the whole set."""
    out, skipped = [], 0
    for item in items:
        try:
            out.append(encode_item(item, tokenizer, template=params["qa_template"],
                                   chat_template=params["chat_template"],
                                   max_length=params["max_length"]))
        except (ValueError, KeyError, TypeError):
            skipped += 1
    return out, skipped


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokenizer: Any,
             sets: Mapping[str, Sequence[dict[str, Any]]], params: Mapping[str, Any],
             progress: Progress | None = None) -> dict[str, dict[str, Any]]:
    """{set name: {"probability": mean p(answer|question), "items": n, "skipped": k}} for
    every non-empty set; `progress("evaluating", step, total)` once per batch."""
    pad = pad_id(tokenizer)
    bs = max(1, int(params["batch_size"]))
    encoded = {name: _encode(items, tokenizer, params) for name, items in sets.items() if items}
    total = sum((len(ex) + bs - 1) // bs for ex, _ in encoded.values())
    step = 0
    if progress is not None:
        progress("evaluating", 0, total)
    out: dict[str, dict[str, Any]] = {}
    for name, (examples, skipped) in encoded.items():
        weighted = 0.0
        for start in range(0, len(examples), bs):
            chunk = examples[start : start + bs]
            weighted += mean_answer_probability(model, chunk, pad, batch_size=bs) * len(chunk)
            step += 1
            if progress is not None:
                progress("evaluating", step, total)
        out[name] = {"probability": weighted / len(examples) if examples else None,
                     "items": len(examples), "skipped": skipped}
        if skipped:
            log.info("evaluation of %s skipped %d item(s) longer than max_length", name, skipped)
    return out
