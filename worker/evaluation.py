"""What a job measures before and after unlearning: every metric of ALKN_SPEC.md
(alkn_core.evaluate) on the job's forget set, on the forget set of every earlier task of
the lineage (the continual view), on the retain set and on the general-knowledge sets.

Set names: "forget" (this job), "task/v<N>" (the task that produced version N),
"request/<id>" (one request of a merged job), "retain", "eval/<name>".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from alkn_core.evaluate import evaluate_sets

Progress = Callable[[str, int, int], None]
FORGET_PREFIXES = ("task/", "request/")


def is_forget_set(name: str) -> bool:
    return name == "forget" or name.startswith(FORGET_PREFIXES)


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokenizer: Any,
             sets: Mapping[str, Sequence[dict[str, Any]]], params: Mapping[str, Any],
             progress: Progress | None = None,
             holdout: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """{set name: {"probability", "rouge_l", "truth_ratio", ..., "items", "skipped"},
    "model_utility": ...} for every non-empty set; `progress("evaluating", step, total)`."""
    present = {name: list(items) for name, items in sets.items() if items}
    return evaluate_sets(
        model, tokenizer, present, qa_template=params["qa_template"],
        holdout=list(holdout) if holdout else None,
        forget_names=[n for n in present if is_forget_set(n)], retain_names=("retain",),
        batch_size=max(1, int(params["batch_size"])), chat_template=params["chat_template"],
        max_length=params["max_length"], progress=progress)
