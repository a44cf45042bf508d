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

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .data import pad_id
from .eval_aggregate import PLAIN_PROBABILITY, aggregate_set
from .eval_plan import Entry, SetPlan, is_normalised, plan_set
from .eval_samples import ItemScores, Limits, fingerprint, item_key, sample, sample_order
from .evaluate import (
    MIN_K,
    Item,
    Progress,
    _Encoding,
    _inference,
    _is_qa,
    _min_k,
    _probability,
    _trained_logprobs,
    greedy_answers,
    model_utility,
    rouge_l_recall,
)
from .params import DEFAULT_QA_TEMPLATE, EVAL_MAX_NEW_TOKENS

__all__ = ["RESERVED_KEYS", "EvalPlan", "ItemScores", "Limits", "evaluate_sets", "fingerprint",
           "item_key", "plan_evaluation", "run_plan", "sample", "sample_order"]

# Greedy answers are generated GENERATE_BATCH x batch_size at a time: generation holds no
# gradients or optimiser state, and its cost is mostly per step, not per sequence (4x the
# batch: 0.6 s instead of 1.1 s for 96 answers on the demo model, bench/eval_speed.py).
GENERATE_BATCH = 4
# Top-level keys of evaluate_sets' result that are not set names.
RESERVED_KEYS = frozenset({"model_utility", "model_utility_skipped"})


# --------------------------------------------------------------------------------------------
# Computing what is missing
# --------------------------------------------------------------------------------------------


@dataclass
class _Work:
    """The passes still to run, each entry once (an item may be in several sets)."""

    main: dict[str, Entry] = field(default_factory=dict)
    para: dict[str, Entry] = field(default_factory=dict)
    pert: dict[str, Entry] = field(default_factory=dict)
    rouge: dict[str, Entry] = field(default_factory=dict)

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


def _missing(plans: Sequence[SetPlan], holdout: SetPlan | None, cache: ItemScores) -> _Work:
    work = _Work()
    for plan in [*plans, *([holdout] if holdout is not None else [])]:
        p_needed = plan.n_detail if is_normalised(plan) else len(plan.entries)
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
                                      chat_template=enc.chat_template,
                                      max_length=enc.max_length)
            tick()
        scores = rouge_l_recall(answers, [it["answer"] for it in items])
        for k, s in zip(keys, scores, strict=True):
            cache.record(k)["rouge"] = s


# --------------------------------------------------------------------------------------------
# evaluate_sets
# --------------------------------------------------------------------------------------------


@dataclass
class EvalPlan:
    """What `evaluate_sets` will measure: the sets' samples and the passes still missing
    from the cache (`work_sequences`: sequences to score or generate, for progress
    estimates). Made by `plan_evaluation`, run by `evaluate_sets`."""

    sets: list[SetPlan]
    holdout: SetPlan | None
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
        plans.append(plan_set(name, kind, list(items or []),
                              (set_limits or {}).get(name, limits), tokenizer, enc))
    hplan, note = None, None
    if holdout and any(p.kind == "forget" for p in plans):
        hplan = plan_set("holdout", "general", list(holdout), Limits(limits.max_items, 0),
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
                  batch_size: int = 16, max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
                  chat_template: bool = False,
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
      real authors and world facts), the perturbed answers' probabilities averaged (TOFU's
      model utility); forget sets mean(min(TR, 1/TR)), others mean(max(0, 1 - TR)).
    - forget sets also get "truth_ratios" (per item, the perturbed answers' per-token losses
      averaged, as TOFU's forget quality takes them; to serve as `retain_model_trs` when this
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
             max_new_tokens: int = EVAL_MAX_NEW_TOKENS, min_k: float = MIN_K,
             holdout_given: bool = False,
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
        out[p.name] = aggregate_set(p, cache, plan.holdout, plan.holdout_note,
                                 retain_model_trs or {}, retain_model_aucs or {},
                                 holdout_given)
    kinds = {p.name: p.kind for p in plan.sets}
    utility_sets = {name: m for name, m in out.items() if kinds[name] != "forget"}
    utility_skipped = [f"{name}: {key} is None" for name, m in utility_sets.items()
                       for key in ("probability", "rouge_l", "truth_ratio") if m[key] is None]
    # TOFU's utility takes a general set's normalised probability: say where the plain one
    # stood in (some items without usable perturbed answers)
    utility_skipped += [f"{name}: probability plain, not normalised" for name, m in
                        utility_sets.items() if any(s.startswith(PLAIN_PROBABILITY)
                                                    for s in m["skipped"])]
    try:
        out["model_utility"] = model_utility(utility_sets)
    except ValueError:
        out["model_utility"] = None
        utility_skipped.insert(0, "no retain or general set metric to combine")
    out["model_utility_skipped"] = utility_skipped
    return out
