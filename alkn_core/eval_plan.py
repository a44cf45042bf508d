"""Planning an evaluation: which items of a set are scored (its fixed sample, without the
items that cannot be), with the examples each pass over them needs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .data import Example
from .eval_samples import Limits, item_key, sample_order
from .evaluate import Item, _Encoding, _is_qa, _is_text, _try_example, _valid_list, _valid_str


@dataclass
class Entry:
    """One scorable item: its key and the examples of each pass it may need."""

    key: str
    item: Item
    main: Example
    para: Example | None = None
    pert: list[Example] | None = None


@dataclass
class SetPlan:
    name: str
    kind: str  # "forget" | "retain" | "general"
    n_items: int
    entries: list[Entry] = field(default_factory=list)  # the probability sample
    n_detail: int = 0  # entries[:n_detail] are the detail sample
    skipped: list[str] = field(default_factory=list)

    @property
    def detail(self) -> list[Entry]:
        return self.entries[: self.n_detail]


def make_entry(item: Any, tokenizer: Any, enc: _Encoding) -> Entry | str:
    """The item's examples, or why it cannot be scored ("unusable" / "too_long")."""
    if not isinstance(item, Mapping) or not (
            (_is_qa(item) and _valid_str(item["question"]) and _valid_str(item["answer"]))
            or (_is_text(item) and _valid_str(item["text"]))):
        return "unusable"
    main = _try_example(item, None, tokenizer, enc)
    if main is None:
        return "too_long"
    entry = Entry(item_key(item), item, main)
    if _is_qa(item):
        if _valid_str(item.get("paraphrased_answer")):
            entry.para = _try_example(item, item["paraphrased_answer"], tokenizer, enc)
        if _valid_list(item.get("perturbed_answer")):
            pert = [_try_example(item, a, tokenizer, enc) for a in item["perturbed_answer"]]
            entry.pert = [p for p in pert if p is not None] if all(
                p is not None for p in pert) else None
    return entry


def plan_set(name: str, kind: str, items: Sequence[Any], limits: Limits, tokenizer: Any,
             enc: _Encoding) -> SetPlan:
    plan = SetPlan(name, kind, len(items))
    counts = {"unusable": 0, "too_long": 0}
    # Walk the key order: the sample is the first `max_items` scorable items.
    for i in sample_order(items):
        if limits.max_items is not None and len(plan.entries) >= limits.max_items:
            break
        got = make_entry(items[i], tokenizer, enc)
        if isinstance(got, str):
            counts[got] += 1
        else:
            plan.entries.append(got)
    detail = limits.detail()
    plan.n_detail = len(plan.entries) if detail is None else min(detail, len(plan.entries))
    if not items:
        plan.skipped.append("the set is empty: no metric computed")
    if counts["unusable"]:
        plan.skipped.append(f"{counts['unusable']} of {len(items)} items are neither a QA "
                            "item nor a text item: not scored")
    if counts["too_long"]:
        plan.skipped.append(f"{counts['too_long']} of {len(items)} items could not be encoded "
                            f"(no answer token within max_length={enc.max_length}): not "
                            "scored")
    return plan


def is_normalised(plan: SetPlan) -> bool:
    """A general set of QA items whose detail sample all carry perturbed answers: its
    probability is TOFU's normalised one, over the detail sample only."""
    detail = plan.detail
    return (plan.kind == "general" and bool(detail) and all(_is_qa(e.item) for e in plan.entries)
            and all(e.pert is not None for e in detail))
