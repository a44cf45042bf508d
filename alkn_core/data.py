"""Items (QA pairs or raw text) -> token ids with a loss mask, and batches of them.

A QA item trains on its answer (and EOS) only: the prompt part of the template is masked
with -100. A text item trains on every token.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .chat_template import render_chat
from .items import validate_items  # noqa: F401  (re-exported)

IGNORE = -100


@dataclass
class Example:
    """One tokenised item. `extras` carries per-example values a method attaches
    (per-token weights aligned with `input_ids`, a reference log-probability, ...)."""

    input_ids: list[int]
    labels: list[int]
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def n_targets(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def qa_prompt(question: str, template: str) -> str:
    """The prompt part of a QA item: the template up to {answer}, without trailing space
    (the space is then part of the first answer token, as in running text)."""
    head = template[: template.index("{answer}")]
    return head.replace("{question}", question).rstrip()


def _chat_texts(item: dict[str, Any], tokenizer: Any) -> tuple[str, str]:
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("param 'chat_template' is true but the tokenizer has no chat template")
    user = [{"role": "user", "content": item["question"]}]
    prompt = render_chat(tokenizer, user, add_generation_prompt=True)
    full = render_chat(tokenizer, [*user, {"role": "assistant", "content": item["answer"]}])
    if not full.startswith(prompt):
        raise ValueError("the tokenizer's chat template does not extend the prompt with the answer")
    return prompt, full


def encode_item(
    item: dict[str, Any],
    tokenizer: Any,
    *,
    template: str,
    chat_template: bool = False,
    max_length: int = 500,
) -> Example:
    """Tokenise one item; QA prompts are masked out of the labels."""
    eos = tokenizer.eos_token_id
    if "text" in item:
        enc = tokenizer(item["text"], add_special_tokens=True)
        ids = list(enc["input_ids"])[:max_length]
        labels = [IGNORE if t == tokenizer.bos_token_id else t for t in ids]
        return Example(ids, labels)
    if chat_template:
        prompt, full = _chat_texts(item, tokenizer)
        boundary = len(prompt)
        add_specials = False  # the chat template writes its own special tokens
    else:
        prompt = qa_prompt(item["question"], template)
        tail = template[template.index("{answer}") :].replace("{answer}", item["answer"])
        head = template[: template.index("{answer}")].replace("{question}", item["question"])
        full = head + tail
        boundary = len(prompt)
        add_specials = True
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=add_specials, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        # A token is an answer token when it ends past the prompt (specials have (0, 0)).
        labels = [t if end > boundary else IGNORE for t, (_, end) in
                  zip(ids, enc["offset_mapping"], strict=True)]
    else:  # slow tokenizers have no offsets: mask as many tokens as the prompt has
        enc = tokenizer(full, add_special_tokens=add_specials)
        ids = list(enc["input_ids"])
        n_prompt = len(tokenizer(prompt, add_special_tokens=add_specials)["input_ids"])
        labels = [IGNORE] * min(n_prompt, len(ids)) + ids[n_prompt:]
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        labels.append(eos)
    ids, labels = ids[:max_length], labels[:max_length]
    if all(t == IGNORE for t in labels):
        raise ValueError(f"the answer does not fit in max_length={max_length} tokens "
                         f"after the question ({len(enc['input_ids'])} tokens)")
    return Example(ids, labels)


def encode_items(items: Sequence[dict[str, Any]], tokenizer: Any, params: Mapping[str, Any],
                 what: str = "items") -> list[Example]:
    out = []
    for i, item in enumerate(items):
        try:
            out.append(encode_item(item, tokenizer, template=params["qa_template"],
                                   chat_template=params["chat_template"],
                                   max_length=params["max_length"]))
        except ValueError as exc:
            raise ValueError(f"{what}[{i}]: {exc}") from None
    return out


def pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if candidate is not None:
            return int(candidate)
    return 0


def collate(examples: Sequence[Example], pad: int, device: torch.device | str = "cpu"
            ) -> dict[str, torch.Tensor]:
    """Right-pad a batch. Per-token extras (lists) are padded with 0, scalars stacked."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    for key in examples[0].extras:
        values = [e.extras[key] for e in examples]
        if isinstance(values[0], list | tuple):
            t = torch.zeros((len(examples), width), dtype=torch.float32)
            for row, v in enumerate(values):
                t[row, : len(v)] = torch.tensor(v, dtype=torch.float32)
            batch[key] = t
        else:
            batch[key] = torch.tensor(values, dtype=torch.float32)
    return {k: v.to(device) for k, v in batch.items()}


def length_sorted_batches(examples: Sequence[Example], batch_size: int, pad: int,
                          device: torch.device | str = "cpu") -> list[dict[str, torch.Tensor]]:
    """Batches of `examples` sorted by length (little padding), for passes whose result
    does not depend on the order (means, per-batch statistics)."""
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    return [collate(ordered[i : i + batch_size], pad, device)
            for i in range(0, len(ordered), batch_size)]


def batch_indices(n: int, batch_size: int, generator: torch.Generator | None) -> list[list[int]]:
    """Indices of one epoch in batches; shuffled when a generator is given."""
    order = torch.randperm(n, generator=generator).tolist() if generator else list(range(n))
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def num_batches(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def cycle_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[list[int]]:
    """Endless shuffled batches (retain data paired with forget batches)."""
    while True:
        yield from batch_indices(n, batch_size, generator)
