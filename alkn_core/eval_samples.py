"""Samples and the per-item score cache of the evaluation (eval_sets.py's module docstring
says how they are used): an item's key, a set's fixed sample, sample sizes, `ItemScores` and
the fingerprint of the encoding the scores depend on."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .evaluate import MIN_K
from .params import DEFAULT_QA_TEMPLATE, EVAL_MAX_NEW_TOKENS


def item_key(item: Any) -> str:
    """A stable key of an item's content (sha256 of its canonical JSON, 24 hex digits).
    A lone surrogate (a str a library caller built from bad bytes; JSON never yields one)
    is hashed as its code point rather than raising; other strings hash as UTF-8."""
    raw = json.dumps(item, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                     default=str)
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def sample_order(items: Sequence[Any]) -> list[int]:
    """Indices of `items` in key order (ties by position): the order samples are cut from."""
    keys = [item_key(it) for it in items]
    return sorted(range(len(items)), key=lambda i: (keys[i], i))


def sample(items: Sequence[Any], limit: int | None) -> list[Any]:
    """The first `limit` items in key order (all of them, in key order, for None)."""
    order = sample_order(items)
    return [items[i] for i in (order if limit is None else order[: max(0, limit)])]


@dataclass(frozen=True)
class Limits:
    """Sample sizes of one set: `max_items` for probability and Min-K, `detail_items` (a
    prefix of that sample) for ROUGE-L, truth ratio and normalised probability. None: all."""

    max_items: int | None = None
    detail_items: int | None = None

    def detail(self) -> int | None:
        if self.detail_items is None:
            return self.max_items
        return self.detail_items if self.max_items is None else min(self.detail_items,
                                                                    self.max_items)


class ItemScores:
    """Per-item model outputs of one model under one encoding (see the module docstring)."""

    def __init__(self, fingerprint: str, items: dict[str, dict[str, Any]] | None = None
                 ) -> None:
        self.fingerprint = fingerprint
        self.items: dict[str, dict[str, Any]] = items if items is not None else {}

    @classmethod
    def from_json(cls, data: Any, fingerprint: str) -> ItemScores:
        """A cache read back from `as_json`; empty when it was made under another encoding."""
        if (isinstance(data, Mapping) and data.get("fingerprint") == fingerprint
                and isinstance(data.get("items"), Mapping)):
            return cls(fingerprint, {str(k): dict(v) for k, v in data["items"].items()
                                     if isinstance(v, Mapping)})
        return cls(fingerprint)

    def as_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint, "items": self.items}

    def record(self, key: str) -> dict[str, Any]:
        return self.items.setdefault(key, {})


def fingerprint(*, qa_template: str = DEFAULT_QA_TEMPLATE, chat_template: bool = False,
                max_length: int = 500, max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
                min_k: float = MIN_K) -> str:
    """What per-item scores depend on besides the model and the item."""
    raw = json.dumps([qa_template, bool(chat_template), int(max_length), int(max_new_tokens),
                      float(min_k)])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]
