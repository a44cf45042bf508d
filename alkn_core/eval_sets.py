"""`evaluate_sets`: every metric of `evaluate` on named item sets, on fixed samples, measuring
only what a score cache does not already hold.

Samples. Every item has a key (`item_key`: a hash of its content). A set's sample is its
items in key order, cut at a limit: `max_items` for the answer probability and Min-K (one
model pass per item), `detail_items` (the first of those) for ROUGE-L (generation), the truth
ratio and the normalised probability (a pass per paraphrased and perturbed answer). The order
depends only on the items, so a set is sampled alike on every version of a model, and a
smaller sample of a set is a prefix of a larger one (the sample of a union of sets holds no
item that is not in its own set's sample at the same limit).

Score cache. `ItemScores` holds per item what the model computed: "p" (probability of the item
as trained), "mink" (its Min-K% score), "para", "pert" (probabilities of the paraphrased and
perturbed answers), "rouge" (ROUGE-L recall of the greedy answer). Given the cache of a model,
`evaluate_sets` computes only the missing entries and adds them; a set's numbers are always
aggregated from these per-item values, so the same items on the same model give the same
numbers whether they were computed now or read back. A cache is tied to how items are encoded
and scored (`fingerprint`); another encoding starts empty.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import Example, pad_id
from .evaluate import (
    MIN_K,
    Item,
    Progress,
    _Encoding,
    _inference,
    _is_qa,
    _is_text,
    _min_k,
    _probability,
    _trained_logprobs,
    _try_example,
    _valid_list,
    _valid_str,
    auc,
    forget_quality,
    greedy_answers,
    model_utility,
    normalized_probability,
    privacy_leak,
    rouge_l_recall,
    truth_ratio_score,
    truth_ratios,
)
from .params import DEFAULT_QA_TEMPLATE

# Greedy answers are generated GENERATE_BATCH x batch_size at a time: generation holds no
# gradients or optimiser state, and its cost is mostly per step, not per sequence (4x the
# batch: 0.6 s instead of 1.1 s for 96 answers on the demo model, bench/eval_speed.py).
GENERATE_BATCH = 4
# Top-level keys of evaluate_sets' result that are not set names.
RESERVED_KEYS = frozenset({"model_utility", "model_utility_skipped"})


def item_key(item: Any) -> str:
    """A stable key of an item's content (sha256 of its canonical JSON, 24 hex digits)."""
    raw = json.dumps(item, sort_keys=True, ensure_ascii=False, separators=(",", ":"),
                     default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


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
                max_length: int = 500, max_new_tokens: int = 48, min_k: float = MIN_K) -> str:
    """What per-item scores depend on besides the model and the item."""
    raw = json.dumps([qa_template, bool(chat_template), int(max_length), int(max_new_tokens),
                      float(min_k)])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Planning: which items of which set need which pass
# --------------------------------------------------------------------------------------------


@dataclass
class _Entry:
    """One scorable item: its key and the examples of each pass it may need."""

    key: str
    item: Item
    main: Example
    para: Example | None = None
    pert: list[Example] | None = None


@dataclass
class _SetPlan:
    name: str
    kind: str  # "forget" | "retain" | "general"
    n_items: int
    entries: list[_Entry] = field(default_factory=list)  # the probability sample
    n_detail: int = 0  # entries[:n_detail] are the detail sample
    skipped: list[str] = field(default_factory=list)

    @property
    def detail(self) -> list[_Entry]:
        return self.entries[: self.n_detail]


def _entry(item: Any, tokenizer: Any, enc: _Encoding) -> _Entry | str:
    """The item's examples, or why it cannot be scored ("unusable" / "too_long")."""
    if not isinstance(item, Mapping) or not (
            (_is_qa(item) and _valid_str(item["question"]) and _valid_str(item["answer"]))
            or (_is_text(item) and _valid_str(item["text"]))):
        return "unusable"
    main = _try_example(item, None, tokenizer, enc)
    if main is None:
        return "too_long"
    entry = _Entry(item_key(item), item, main)
    if _is_qa(item):
        if _valid_str(item.get("paraphrased_answer")):
            entry.para = _try_example(item, item["paraphrased_answer"], tokenizer, enc)
        if _valid_list(item.get("perturbed_answer")):
            pert = [_try_example(item, a, tokenizer, enc) for a in item["perturbed_answer"]]
            entry.pert = [p for p in pert if p is not None] if all(
                p is not None for p in pert) else None
    return entry


def _plan(name: str, kind: str, items: Sequence[Any], limits: Limits, tokenizer: Any,
          enc: _Encoding) -> _SetPlan:
    plan = _SetPlan(name, kind, len(items))
    counts = {"unusable": 0, "too_long": 0}
    # Walk the key order: the sample is the first `max_items` scorable items.
    for i in sample_order(items):
        if limits.max_items is not None and len(plan.entries) >= limits.max_items:
            break
        got = _entry(items[i], tokenizer, enc)
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


# --------------------------------------------------------------------------------------------
# Computing what is missing
# --------------------------------------------------------------------------------------------


@dataclass
class _Work:
    """The passes still to run, each entry once (an item may be in several sets)."""

    main: dict[str, _Entry] = field(default_factory=dict)
    para: dict[str, _Entry] = field(default_factory=dict)
    pert: dict[str, _Entry] = field(default_factory=dict)
    rouge: dict[str, _Entry] = field(default_factory=dict)

    def batches(self, bs: int) -> int:
        n_pert = sum(len(e.pert or []) for e in self.pert.values())
        return (sum(_n_batches(n, bs) for n in (len(self.main), len(self.para), n_pert))
                + _n_batches(len(self.rouge), bs * GENERATE_BATCH))

    def sequences(self) -> int:
        """Model passes over one sequence each; a generated answer counts as one."""
        return (len(self.main) + len(self.para) + len(self.rouge)
                + sum(len(e.pert or []) for e in self.pert.values()))


def _n_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


def _normalised(plan: _SetPlan) -> bool:
    """A general set of QA items whose detail sample all carry perturbed answers: its
    probability is TOFU's normalised one, over the detail sample only."""
    detail = plan.detail
    return (plan.kind == "general" and bool(detail) and all(_is_qa(e.item) for e in plan.entries)
            and all(e.pert is not None for e in detail))


def _missing(plans: Sequence[_SetPlan], holdout: _SetPlan | None, cache: ItemScores) -> _Work:
    work = _Work()
    for plan in [*plans, *([holdout] if holdout is not None else [])]:
        p_needed = plan.n_detail if _normalised(plan) else len(plan.entries)
        for pos, e in enumerate(plan.entries):
            rec = cache.items.get(e.key, {})
            if "p" not in rec and pos < p_needed:
                work.main[e.key] = e
            if pos >= plan.n_detail or plan is holdout:
                continue
            if e.para is not None and "para" not in rec:
                work.para[e.key] = e
            if e.pert is not None and "pert" not in rec:
                work.pert[e.key] = e
            if _is_qa(e.item) and "rouge" not in rec:
                work.rouge[e.key] = e
    return work


def _compute(model: torch.nn.Module, tokenizer: Any, work: _Work, cache: ItemScores,
             enc: _Encoding, bs: int, max_new_tokens: int, min_k: float,
             tick: Callable[[], None]) -> None:
    pad = pad_id(tokenizer)
    with _inference(model):
        keys = list(work.main)
        rows = _trained_logprobs(model, [work.main[k].main for k in keys], pad, bs, tick)
        for k, r in zip(keys, rows, strict=True):
            # floored: a -inf would not survive JSON storage
            cache.record(k).update(p=_probability(r), mink=max(_min_k(r, min_k), -1e300))
        keys = list(work.para)
        rows = _trained_logprobs(model, [work.para[k].para for k in keys  # type: ignore[misc]
                                         ], pad, bs, tick)
        for k, r in zip(keys, rows, strict=True):
            cache.record(k)["para"] = _probability(r)
        keys = list(work.pert)
        flat = [ex for k in keys for ex in work.pert[k].pert or []]
        probs = [_probability(r) for r in _trained_logprobs(model, flat, pad, bs, tick)]
        start = 0
        for k in keys:
            n = len(work.pert[k].pert or [])
            cache.record(k)["pert"] = probs[start : start + n]
            start += n
        keys = list(work.rouge)
        items = [work.rouge[k].item for k in keys]
        answers: list[str] = []
        for start in range(0, len(items), bs * GENERATE_BATCH):
            answers += greedy_answers(model, tokenizer, items[start : start + bs * GENERATE_BATCH],
                                      qa_template=enc.qa_template,
                                      max_new_tokens=max_new_tokens,
                                      batch_size=bs * GENERATE_BATCH,
                                      chat_template=enc.chat_template)
            tick()
        scores = rouge_l_recall(answers, [it["answer"] for it in items])
        for k, s in zip(keys, scores, strict=True):
            cache.record(k)["rouge"] = s


# --------------------------------------------------------------------------------------------
# Aggregating a set from its items' scores
# --------------------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _tr_reference(entry: _Entry) -> str | None:
    """TOFU: the paraphrase where the item has one, else the answer itself (real authors,
    world facts); None when the item has no perturbed answers."""
    if entry.pert is None:
        return None
    return "paraphrased_answer" if entry.para is not None else "answer"


@dataclass
class _Aggregate:
    plan: _SetPlan
    cache: ItemScores
    res: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def rec(self, e: _Entry) -> dict[str, Any]:
        return self.cache.items[e.key]

    def probability(self) -> None:
        plan, res = self.plan, self.res
        if not plan.entries:
            return
        detail = plan.detail
        qa_detail = [e for e in detail if _is_qa(e.item)]
        if _normalised(plan):
            probs = normalized_probability([self.rec(e)["p"] for e in qa_detail],
                                           [self.rec(e)["pert"] for e in qa_detail])
            res.update(probability=_mean(probs), probability_kind="normalized",
                       probability_items=len(probs))
            return
        res.update(probability=_mean([self.rec(e)["p"] for e in plan.entries]),
                   probability_items=len(plan.entries))
        with_pert = sum(1 for e in qa_detail if e.pert is not None)
        if plan.kind == "general" and with_pert:
            self.skipped.append(f"probability: plain, not normalised: only {with_pert} of "
                                f"{len(detail)} items have a usable perturbed_answer")

    def rouge(self) -> None:
        qa = [e for e in self.plan.detail if _is_qa(e.item)]
        if qa:
            self.res.update(rouge_l=_mean([self.rec(e)["rouge"] for e in qa]),
                            rouge_l_items=len(qa))
        elif self.plan.entries:
            self.skipped.append("rouge_l: no QA items")

    def truth_ratio(self, forget: bool) -> list[float]:
        detail = self.plan.detail
        usable = [e for e in detail if _tr_reference(e) is not None]
        refs = {_tr_reference(e) for e in usable}
        trs = truth_ratios(
            [self.rec(e)["para"] if e.para is not None else self.rec(e)["p"] for e in usable],
            [self.rec(e)["pert"] for e in usable])
        if trs:
            self.res.update(truth_ratio=truth_ratio_score(trs, forget),
                            truth_ratio_items=len(trs),
                            truth_ratio_reference=refs.pop() if len(refs) == 1 else "mixed")
            if len(trs) < len(detail):
                self.skipped.append(f"truth_ratio: over {len(trs)} of {len(detail)} items "
                                    "(the others lack a usable perturbed_answer)")
        elif self.plan.entries:
            self.skipped.append("truth_ratio: no item has a usable perturbed_answer")
        return trs


def _aggregate(plan: _SetPlan, cache: ItemScores, holdout: _SetPlan | None,
               holdout_note: str | None, retain_model_trs: Mapping[str, Sequence[float]],
               retain_model_aucs: Mapping[str, float], holdout_given: bool) -> dict[str, Any]:
    forget = plan.kind == "forget"
    agg = _Aggregate(plan, cache, skipped=list(plan.skipped))
    agg.res.update({
        "items": len(plan.entries), "of": plan.n_items, "detail_items": plan.n_detail,
        "probability": None, "probability_kind": "plain", "probability_items": 0,
        "rouge_l": None, "rouge_l_items": 0, "truth_ratio": None, "truth_ratio_items": 0,
        "truth_ratio_reference": None,
        "truth_ratio_convention": "mean(min(TR, 1/TR))" if forget else "mean(max(0, 1 - TR))",
    })
    agg.probability()
    agg.rouge()
    trs = agg.truth_ratio(forget)
    res, skipped = agg.res, agg.skipped
    if forget:
        # Forget sets always carry these keys; None (with a note) when not computable.
        res.update(truth_ratios=trs, forget_quality=None, privacy_auc=None, privacy_leak=None)
        retain_trs = retain_model_trs.get(plan.name)
        if retain_trs is None:
            skipped.append("forget_quality: no retain-model truth ratios given")
        elif not (trs and retain_trs):
            skipped.append("forget_quality: no truth ratios on one side")
        else:
            res["forget_quality"] = forget_quality(trs, retain_trs)
        hold = [cache.items[e.key]["mink"] for e in holdout.entries] if holdout else []
        if not holdout_given:
            skipped.append("privacy_auc: no holdout items given")
        elif not (hold and plan.entries):
            skipped.append("privacy_auc: no usable holdout items" if plan.entries
                           else "privacy_auc: no scored items")
        else:
            res["privacy_auc"] = auc([cache.items[e.key]["mink"] for e in plan.entries], hold)
            res["privacy_auc_items"] = [len(plan.entries), len(hold)]
        auc_retain = retain_model_aucs.get(plan.name)
        if res["privacy_auc"] is None or auc_retain is None:
            skipped.append("privacy_leak: needs privacy_auc and the retain model's AUC")
        elif auc_retain <= 0:
            skipped.append("privacy_leak: the retain model's AUC is not > 0")
        else:
            res["privacy_leak"] = privacy_leak(res["privacy_auc"], auc_retain)
        if holdout_note is not None:
            skipped.append(holdout_note)
    res["skipped"] = skipped
    return res


# --------------------------------------------------------------------------------------------
# evaluate_sets
# --------------------------------------------------------------------------------------------


@dataclass
class EvalPlan:
    """What `evaluate_sets` will measure: the sets' samples and the passes still missing
    from the cache (`work_sequences`: sequences to score or generate, for progress
    estimates). Made by `plan_evaluation`, run by `evaluate_sets`."""

    sets: list[_SetPlan]
    holdout: _SetPlan | None
    holdout_note: str | None
    work: _Work
    encoding: _Encoding

    @property
    def work_sequences(self) -> int:
        return self.work.sequences()

    @property
    def work_generated(self) -> int:
        """Of `work_sequences`, the greedy answers to generate (costlier than a pass)."""
        return len(self.work.rouge)

    def with_cache(self, cache: ItemScores) -> EvalPlan:
        """The same samples against another model's cache (no item encoded again)."""
        return EvalPlan(self.sets, self.holdout, self.holdout_note,
                        _missing(self.sets, self.holdout, cache), self.encoding)


def plan_evaluation(tokenizer: Any, sets: Mapping[str, Sequence[Item]], *,
                    qa_template: str = DEFAULT_QA_TEMPLATE,
                    holdout: Sequence[Item] | None = None,
                    forget_names: Collection[str] = ("forget",),
                    retain_names: Collection[str] = ("retain",),
                    limits: Limits = Limits(), set_limits: Mapping[str, Limits] | None = None,
                    chat_template: bool = False, max_length: int = 500,
                    cache: ItemScores | None = None) -> EvalPlan:
    """The samples of every set (and of `holdout`, at `limits.max_items`) and what of them
    `cache` lacks. `set_limits` overrides `limits` per set name."""
    clash = RESERVED_KEYS & set(sets)
    if clash:
        raise ValueError(f"set name(s) {sorted(clash)} are reserved")
    enc = _Encoding(qa_template, chat_template, max_length)
    plans = []
    for name, items in sets.items():
        kind = "forget" if name in forget_names else "retain" if name in retain_names \
            else "general"
        plans.append(_plan(name, kind, list(items or []), (set_limits or {}).get(name, limits),
                           tokenizer, enc))
    hplan, note = None, None
    if holdout and any(p.kind == "forget" for p in plans):
        hplan = _plan("holdout", "general", list(holdout), Limits(limits.max_items, 0),
                      tokenizer, enc)
        hplan.n_detail = 0
        if hplan.skipped:
            note = "holdout: " + "; ".join(hplan.skipped)
    work = _missing(plans, hplan, cache if cache is not None else ItemScores(""))
    return EvalPlan(plans, hplan, note, work, enc)


def evaluate_sets(model: torch.nn.Module, tokenizer: Any, sets: Mapping[str, Sequence[Item]],
                  *, qa_template: str = DEFAULT_QA_TEMPLATE,
                  holdout: Sequence[Item] | None = None,
                  forget_names: Collection[str] = ("forget",),
                  retain_names: Collection[str] = ("retain",),
                  retain_model_trs: Mapping[str, Sequence[float]] | None = None,
                  retain_model_aucs: Mapping[str, float] | None = None,
                  batch_size: int = 16, max_new_tokens: int = 48, chat_template: bool = False,
                  max_length: int = 500, min_k: float = MIN_K,
                  limits: Limits = Limits(), set_limits: Mapping[str, Limits] | None = None,
                  cache: ItemScores | None = None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """Every metric of docs/evaluation.md on every named set; a JSON-serialisable dict.

    Sets named in `forget_names` are forget sets, those in `retain_names` retain sets, the rest
    general-knowledge sets. Each set is measured on its sample (module docstring; `limits`,
    per set `set_limits`; all items by default). Per set::

        {"items": n scored (the probability sample), "of": n in the set, "detail_items",
         "probability", "probability_kind": "plain" | "normalized", "probability_items",
         "rouge_l", "rouge_l_items", "truth_ratio", "truth_ratio_items",
         "truth_ratio_reference": "paraphrased_answer" | "answer" | "mixed",
         "truth_ratio_convention", "skipped": [why something was not computed]}

    - probability: mean p(a|q) over the sample (text items: exp(-mean NLL) of the text). On a
      general set of QA items that all carry `perturbed_answer` it is TOFU's normalised
      p(true) / (p(true) + sum p(perturbed)) over the detail sample instead; forget and
      retain sets always report the plain probability, the quantity unlearning drives down.
    - rouge_l: mean ROUGE-L recall of greedy answers (QA items of the detail sample).
    - truth_ratio: over the detail sample's QA items with `perturbed_answer`, against the
      `paraphrased_answer` where there is one, else against the answer (TOFU's definition on
      real authors and world facts); forget sets mean(min(TR, 1/TR)), others
      mean(max(0, 1 - TR)).
    - forget sets also get "truth_ratios" (per item, to serve as `retain_model_trs` when this
      runs on a retain model), "privacy_auc" (Min-K% AUC of the sample against `holdout`'s,
      "privacy_auc_items" [set, holdout]), "forget_quality" (needs `retain_model_trs[name]`)
      and "privacy_leak" (needs `retain_model_aucs[name]`); None when not computable.

    Top level: "model_utility" (harmonic mean over the non-forget sets' probability, ROUGE-L
    and truth ratio; None without any) and "model_utility_skipped". `cache`: the model's
    per-item scores; only what it lacks is computed, and it is updated. `progress(
    "evaluating", step, total)` is called once per model batch.
    """
    cache = cache if cache is not None else ItemScores(fingerprint(
        qa_template=qa_template, chat_template=chat_template, max_length=max_length,
        max_new_tokens=max_new_tokens, min_k=min_k))
    plan = plan_evaluation(tokenizer, sets, qa_template=qa_template, holdout=holdout,
                           forget_names=forget_names, retain_names=retain_names,
                           limits=limits, set_limits=set_limits, chat_template=chat_template,
                           max_length=max_length, cache=cache)
    return run_plan(model, tokenizer, plan, cache, retain_model_trs=retain_model_trs,
                    retain_model_aucs=retain_model_aucs, batch_size=batch_size,
                    max_new_tokens=max_new_tokens, min_k=min_k, holdout_given=bool(holdout),
                    progress=progress)


def run_plan(model: torch.nn.Module, tokenizer: Any, plan: EvalPlan, cache: ItemScores, *,
             retain_model_trs: Mapping[str, Sequence[float]] | None = None,
             retain_model_aucs: Mapping[str, float] | None = None, batch_size: int = 16,
             max_new_tokens: int = 48, min_k: float = MIN_K, holdout_given: bool = False,
             progress: Progress | None = None) -> dict[str, Any]:
    """Compute `plan`'s missing passes into `cache`, then every set's numbers from it."""
    bs = max(1, int(batch_size))
    total = plan.work.batches(bs)
    step = 0

    def tick() -> None:
        nonlocal step
        step += 1
        if progress is not None:
            progress("evaluating", step, total)

    if progress is not None:
        progress("evaluating", 0, total)
    _compute(model, tokenizer, plan.work, cache, plan.encoding, bs, max_new_tokens, min_k,
             tick)
    out: dict[str, Any] = {}
    for p in plan.sets:
        out[p.name] = _aggregate(p, cache, plan.holdout, plan.holdout_note,
                                 retain_model_trs or {}, retain_model_aucs or {},
                                 holdout_given)
    kinds = {p.name: p.kind for p in plan.sets}
    utility_sets = {name: m for name, m in out.items() if kinds[name] != "forget"}
    utility_skipped = [f"{name}: {key} is None" for name, m in utility_sets.items()
                       for key in ("probability", "rouge_l", "truth_ratio") if m[key] is None]
    try:
        out["model_utility"] = model_utility(utility_sets)
    except ValueError:
        out["model_utility"] = None
        utility_skipped.insert(0, "no retain or general set metric to combine")
    out["model_utility_skipped"] = utility_skipped
    return out
