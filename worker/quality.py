"""The quality gate: after a job's "after" evaluation, how much of everything else the new
version kept, and whether that meets the lineage's utility floor. Never silent, never a
failure: a version below the floor is still published (forgetting wins), and says so.

`assess` returns the `quality` block stored on the version and the job (no I/O, no torch):

- `floor`: the job's `utility_floor` param (a fraction of the first version's numbers).
- `reference`: what the ratios compare with: the lineage's first version, as measured by
  `registry.quality` (`source` "version_evaluation" or "job_before" with its `job_id`), or
  this job's own "before" (`source` "this_job_before") when nothing measured it earlier;
  `version` names the version that was measured.
- `retain_probability_ratio`: retain answer probability after / reference; `model_utility_ratio`
  likewise; None when not measurable (no retain set, a reference of 0).
- `target_met`: whether the forgetting target was reached: the unlearning stats'
  `target_met` when the method reports it, else the alpha search's (`calibration`: forget
  probability <= target); None when the job had no target (a fixed alpha, other methods).
  `forget_target` holds the numbers; `search` the method's own `quality` stats, if any.
- `passed`: every measured ratio >= floor and the target not missed; `reasons` names what
  failed ("retain_probability", "model_utility", "target_missed": the labels of
  alkn_quality_gate_failed_total); `message` says it in a sentence.
- `kept`: the collateral damage: "people_not_requested" (the retain set: people no request
  named; `requested_items` counts its items that a request of this lineage did name), each
  general set (`eval/<name>`) and the model utility, each metric with `before`, `after`,
  `first` and the ratios `vs_before` (after / before: what this job kept) and `vs_first`
  (after / first version). The same block is the job metrics' `kept`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from alkn_core.params import QualityParams
from registry.jobs import JobSpec

from .metrics import count_quality_gate_failures

log = logging.getLogger(__name__)

KEPT_METRICS = ("probability", "rouge_l")
REASONS = ("retain_probability", "model_utility", "target_missed")
_EVAL_PREFIX = "eval/"


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return float(value) if ok else None


def _ratio(num: Any, den: Any) -> float | None:
    a, b = _number(num), _number(den)
    return a / b if a is not None and b is not None and b > 0 else None


def _metric(evaluation: Mapping[str, Any], name: str, metric: str) -> Any:
    entry = evaluation.get(name)
    return entry.get(metric) if isinstance(entry, Mapping) else None


def _kept_metric(before: Any, after: Any, first: Any) -> dict[str, Any]:
    return {"before": _number(before), "after": _number(after), "first": _number(first),
            "vs_before": _ratio(after, before), "vs_first": _ratio(after, first)}


def _kept_set(name: str, before: Mapping[str, Any], after: Mapping[str, Any],
              first: Mapping[str, Any]) -> dict[str, Any]:
    return {"items": _metric(after, name, "items"),
            **{m: _kept_metric(_metric(before, name, m), _metric(after, name, m),
                               _metric(first, name, m)) for m in KEPT_METRICS}}


def _key(item: Mapping[str, Any]) -> str | None:
    value = item.get("question", item.get("text"))
    return value.strip() if isinstance(value, str) else None


def requested_in_retain(spec: JobSpec) -> int:
    """Retain items that a request of this lineage named (this job's or an earlier task's):
    their loss was asked for, so it is not collateral."""
    named = {_key(i) for items in [spec.forget_items, *spec.earlier_tasks.values()]
             for i in items}
    named.discard(None)
    return sum(1 for i in spec.retain_set if _key(i) in named)


def kept(spec: JobSpec, before: Mapping[str, Any], after: Mapping[str, Any],
         first: Mapping[str, Any]) -> dict[str, Any]:
    """What each non-forget set kept, against the base (`vs_before`) and the first version
    (`vs_first`)."""
    people = None
    if isinstance(after.get("retain"), Mapping):
        people = {"set": "retain", **_kept_set("retain", before, after, first),
                  "requested_items": requested_in_retain(spec)}
    general = {name[len(_EVAL_PREFIX):]: _kept_set(name, before, after, first)
               for name in after if name.startswith(_EVAL_PREFIX)
               and isinstance(after[name], Mapping)}
    return {"people_not_requested": people, "general": general,
            "model_utility": _kept_metric(before.get("model_utility"),
                                          after.get("model_utility"),
                                          first.get("model_utility"))}


def _reference(spec: JobSpec, before: Mapping[str, Any]
               ) -> tuple[dict[str, Any], Mapping[str, Any]]:
    ref = spec.reference
    if ref and isinstance(ref.get("evaluation"), Mapping):
        return ({k: ref.get(k) for k in ("version", "source", "job_id")}, ref["evaluation"])
    return ({"version": spec.base_version, "source": "this_job_before", "job_id": None},
            before)


def _target(stats: Mapping[str, Any]) -> tuple[bool | None, dict[str, Any] | None]:
    cal = stats.get("calibration")
    numbers = None
    if isinstance(cal, Mapping):
        numbers = {"target": _number(cal.get("target")),
                   "forget_prob": _number(cal.get("forget_prob")),
                   "source": cal.get("target_source")}
    met = stats.get("target_met")
    if isinstance(met, bool):
        return met, numbers
    if numbers and numbers["target"] is not None and numbers["forget_prob"] is not None:
        return numbers["forget_prob"] <= numbers["target"], numbers
    return None, numbers


def _failures(floor: float, version: Any, ratios: Mapping[str, float | None],
              target_met: bool | None, target: Mapping[str, Any] | None
              ) -> list[tuple[str, str]]:
    what = {"retain_probability": "retain answer probability", "model_utility": "model utility"}
    out = [(reason, f"{what[reason]} kept {r:.3f} of version {version}'s, below the floor "
                    f"{floor:g}")
           for reason, r in ratios.items() if r is not None and r < floor]
    if target_met is False:
        detail = ""
        if target and target.get("target") is not None and target.get("forget_prob") is not None:
            detail = (f" (forget probability {target['forget_prob']:.4g} > target "
                      f"{target['target']:.4g})")
        out.append(("target_missed", f"the forgetting target was not met{detail}"))
    return out


def assess(spec: JobSpec, before: Mapping[str, Any], after: Mapping[str, Any],
           stats: Mapping[str, Any]) -> dict[str, Any]:
    """The job's `quality` block (see the module docstring)."""
    floor = float(spec.params.get("utility_floor", QualityParams().utility_floor))
    reference, first = _reference(spec, before)
    ratios = {"retain_probability": _ratio(_metric(after, "retain", "probability"),
                                           _metric(first, "retain", "probability")),
              "model_utility": _ratio(after.get("model_utility"), first.get("model_utility"))}
    target_met, target = _target(stats)
    failures = _failures(floor, reference["version"], ratios, target_met, target)
    passed = not failures
    if passed:
        shown = [f"{name.replace('_', ' ')} {r:.3f}" for name, r in ratios.items()
                 if r is not None]
        message = (f"quality gate passed: kept {', '.join(shown) or 'nothing measured'} of "
                   f"version {reference['version']}'s (floor {floor:g})")
    else:
        message = ("quality gate failed: " + "; ".join(m for _, m in failures)
                   + "; the version is published all the same (forgetting wins)")
    block: dict[str, Any] = {
        "floor": floor, "passed": passed, "reasons": [r for r, _ in failures],
        "message": message, "reference": reference,
        "retain_probability_ratio": ratios["retain_probability"],
        "model_utility_ratio": ratios["model_utility"],
        "target_met": target_met, "forget_target": target,
        "kept": kept(spec, before, after, first)}
    if isinstance(stats.get("quality"), Mapping):
        block["search"] = dict(stats["quality"])
    return block


def published(job_id: str, quality: Mapping[str, Any]) -> None:
    """The job's version is published: a gate that did not pass is logged and counted
    (alkn_quality_gate_failed_total, once per reason); its event went with the version."""
    if quality.get("passed"):
        return
    log.warning("job %s: %s", job_id, quality.get("message"))
    count_quality_gate_failures(quality.get("reasons") or ["unknown"])
