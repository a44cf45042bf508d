"""What a job measures before and after unlearning: every metric of docs/evaluation.md
(alkn_core.eval_sets) on the job's forget set, on the forget sets of earlier tasks of the
lineage (the continual view), on the retain set and on the general-knowledge sets.

Set names: "forget" (this job), "task/v<N>" (the task that produced version N; the most
recent EVAL_RECENT_TASKS), "task/earlier" (the older tasks pooled), "request/<id>" (one
request of a merged job), "retain", "eval/<name>".

Each set is measured on a fixed sample (the model's `eval_max_items` / `eval_detail_items`;
earlier tasks at 1/EVAL_RECENT_TASKS of them), the same on every version. A version's
per-item scores are stored with it; a job's "before" reads its base's scores and measures only
what they lack (normally: the new forget set). A full evaluation (`JobEvaluation.of_job(...,
full=True)`) measures every item of every set.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from alkn_core.eval_sets import (
    EvalPlan,
    ItemScores,
    Limits,
    fingerprint,
    plan_evaluation,
    run_plan,
)
from alkn_core.params import (
    EVAL_DETAIL_ITEMS,
    EVAL_MAX_ITEMS,
    EVAL_MAX_NEW_TOKENS,
    EVAL_RECENT_TASKS,
)
from registry.jobs import JobSpec

Progress = Callable[[str, int, int], None]
Items = list[dict[str, Any]]
FORGET_PREFIXES = ("task/", "request/")


def is_forget_set(name: str) -> bool:
    return name == "forget" or name.startswith(FORGET_PREFIXES)


@dataclass
class JobEvaluation:
    """The sets of one job with their samples, and how its items are encoded."""

    sets: dict[str, Items]
    params: Mapping[str, Any]
    limits: Limits = Limits()
    set_limits: dict[str, Limits] = field(default_factory=dict)
    holdout: Items = field(default_factory=list)

    @classmethod
    def of_job(cls, forget: Items, retain: Items, eval_sets: Mapping[str, Items],
               earlier_tasks: Mapping[int, Items], request_items: Mapping[str, Items],
               holdout: Items, params: Mapping[str, Any], max_items: int | None = None,
               detail_items: int | None = None, *, full: bool = False) -> JobEvaluation:
        """The continual view of a job; `full`: every item, every earlier task on its own."""
        limits = Limits() if full else Limits(max_items or EVAL_MAX_ITEMS,
                                              detail_items or EVAL_DETAIL_ITEMS)
        sets: dict[str, Items] = {"forget": forget, "retain": retain}
        numbers = sorted(earlier_tasks)
        recent = numbers if full else numbers[-EVAL_RECENT_TASKS:]
        sets.update({f"task/v{n}": list(earlier_tasks[n]) for n in recent})
        older = [it for n in numbers if n not in recent for it in earlier_tasks[n]]
        if older:
            sets["task/earlier"] = older
        sets.update({f"eval/{name}": list(items) for name, items in eval_sets.items()})
        if len(request_items) > 1:  # a merged job: each request also gets its own numbers
            sets.update({f"request/{rid}": list(items) for rid, items in request_items.items()})
        task_limits = limits if full else Limits(
            max(1, limits.max_items // EVAL_RECENT_TASKS),  # type: ignore[operator]
            max(1, (limits.detail() or 0) // EVAL_RECENT_TASKS))
        present = {name: items for name, items in sets.items() if items}
        return cls(present, params, limits,
                   {n: task_limits for n in present if n.startswith("task/")}, list(holdout))

    def fingerprint(self) -> str:
        p = self.params
        return fingerprint(qa_template=p["qa_template"], chat_template=p["chat_template"],
                           max_length=p["max_length"], max_new_tokens=EVAL_MAX_NEW_TOKENS)

    def cache(self, stored: Any = None) -> ItemScores:
        """The score cache of a model: `stored` (a version's `item_scores`) if it was made
        under this encoding, else empty."""
        return ItemScores.from_json(stored, self.fingerprint())

    def plan(self, tokenizer: Any, cache: ItemScores) -> EvalPlan:
        p = self.params
        return plan_evaluation(
            tokenizer, self.sets, qa_template=p["qa_template"], holdout=self.holdout or None,
            forget_names=[n for n in self.sets if is_forget_set(n)], retain_names=("retain",),
            limits=self.limits, set_limits=self.set_limits,
            chat_template=p["chat_template"], max_length=p["max_length"], cache=cache)

    @torch.no_grad()
    def run(self, model: torch.nn.Module, tokenizer: Any, plan: EvalPlan, cache: ItemScores,
            progress: Progress | None = None) -> dict[str, Any]:
        """{set name: {"probability", "rouge_l", "truth_ratio", ..., "items", "skipped"},
        "model_utility": ...}; `progress("evaluating", step, total)`."""
        return run_plan(model, tokenizer, plan, cache,
                        batch_size=max(1, int(self.params["batch_size"])),
                        max_new_tokens=EVAL_MAX_NEW_TOKENS, holdout_given=bool(self.holdout),
                        progress=progress)

    def evaluate(self, model: torch.nn.Module, tokenizer: Any,
                 cache: ItemScores | None = None, progress: Progress | None = None
                 ) -> dict[str, Any]:
        cache = cache if cache is not None else self.cache()
        return self.run(model, tokenizer, self.plan(tokenizer, cache), cache, progress)


def evaluate(evaluation: JobEvaluation, model: torch.nn.Module, tokenizer: Any,
             plan: EvalPlan, cache: ItemScores, progress: Progress | None) -> dict[str, Any]:
    """One of a job's evaluations: `plan`'s missing passes into `cache`, then the numbers
    (the one call every evaluation of a job goes through)."""
    return evaluation.run(model, tokenizer, plan, cache, progress)


def job_evaluation(spec: JobSpec, *, full: bool = False) -> JobEvaluation:
    """The job's sets on the model's samples (`full`: every item)."""
    return JobEvaluation.of_job(
        spec.forget_items, spec.retain_set, spec.eval_sets, spec.earlier_tasks,
        spec.request_items if len(spec.request_ids) > 1 else {}, spec.holdout_set,
        spec.params, spec.eval_max_items, spec.eval_detail_items, full=full)
