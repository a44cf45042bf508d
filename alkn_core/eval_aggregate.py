"""A set's numbers, aggregated from its items' cached scores (the same items on the same
model give the same numbers, computed now or read back)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .eval_plan import Entry, SetPlan, is_normalised
from .eval_samples import ItemScores
from .evaluate import (
    _is_qa,
    auc,
    forget_quality,
    normalized_probability,
    privacy_leak,
    truth_ratio_score,
    truth_ratios,
)

# A general set's note when its plain probability stands in for TOFU's normalised one
# (eval_sets.run_plan repeats it in model_utility_skipped).
PLAIN_PROBABILITY = "probability: plain, not normalised"


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _tr_reference(entry: Entry) -> str | None:
    """TOFU: the paraphrase where the item has one, else the answer itself (real authors,
    world facts); None when the item has no perturbed answers."""
    if entry.pert is None:
        return None
    return "paraphrased_answer" if entry.para is not None else "answer"


@dataclass
class _Aggregate:
    plan: SetPlan
    cache: ItemScores
    res: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def rec(self, e: Entry) -> dict[str, Any]:
        return self.cache.items[e.key]

    def probability(self) -> None:
        plan, res = self.plan, self.res
        if not plan.entries:
            return
        detail = plan.detail
        qa_detail = [e for e in detail if _is_qa(e.item)]
        if is_normalised(plan):
            probs = normalized_probability([self.rec(e)["p"] for e in qa_detail],
                                           [self.rec(e)["pert"] for e in qa_detail])
            res.update(probability=_mean(probs), probability_kind="normalized",
                       probability_items=len(probs))
            return
        res.update(probability=_mean([self.rec(e)["p"] for e in plan.entries]),
                   probability_items=len(plan.entries))
        with_pert = sum(1 for e in qa_detail if e.pert is not None)
        if plan.kind == "general" and with_pert:
            self.skipped.append(f"{PLAIN_PROBABILITY}: only {with_pert} of "
                                f"{len(detail)} items have a usable perturbed_answer")

    def rouge(self) -> None:
        qa = [e for e in self.plan.detail if _is_qa(e.item)]
        if qa:
            self.res.update(rouge_l=_mean([self.rec(e)["rouge"] for e in qa]),
                            rouge_l_items=len(qa))
        elif self.plan.entries:
            self.skipped.append("rouge_l: no QA items")

    def truth_ratio(self, forget: bool) -> list[float]:
        """The set's truth-ratio statistic (the perturbed answers' arithmetic mean, as model
        utility takes it); returns, on a forget set, the per-item ratios forget quality takes
        (their geometric mean: TOFU's get_forget_quality)."""
        detail = self.plan.detail
        usable = [e for e in detail if _tr_reference(e) is not None]
        refs = {_tr_reference(e) for e in usable}
        ref_p = [self.rec(e)["para"] if e.para is not None else self.rec(e)["p"] for e in usable]
        pert = [self.rec(e)["pert"] for e in usable]
        trs = truth_ratios(ref_p, pert)
        if trs:
            self.res.update(truth_ratio=truth_ratio_score(trs, forget),
                            truth_ratio_items=len(trs),
                            truth_ratio_reference=next(iter(refs)) if len(refs) == 1 else "mixed")
            if len(trs) < len(detail):
                self.skipped.append(f"truth_ratio: over {len(trs)} of {len(detail)} items "
                                    "(the others lack a usable perturbed_answer)")
            if len(refs) > 1:
                on_answer = sum(1 for e in usable if e.para is None)
                self.skipped.append(f"truth_ratio: {on_answer} of {len(usable)} items against "
                                    "the answer (no usable paraphrased_answer), the others "
                                    "against their paraphrase")
        elif self.plan.entries:
            self.skipped.append("truth_ratio: no item has a usable perturbed_answer")
        return truth_ratios(ref_p, pert, mean="geometric") if forget else []


def aggregate_set(plan: SetPlan, cache: ItemScores, holdout: SetPlan | None,
                  holdout_note: str | None, retain_model_trs: Mapping[str, Sequence[float]],
                  retain_model_aucs: Mapping[str, float], holdout_given: bool
                  ) -> dict[str, Any]:
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
