"""A job's progress bar: each stage's span of the overall fraction, in proportion to the work
the stage will do, and an estimate of the time left.

Work is counted in sequence passes (one forward pass over one item = 1): the evaluations'
exact counts from their plans (`EvalPlan.work_sequences`, generated answers weighted by
GENERATE_COST), the unlearning stages estimated from the method's params and the item counts
(`unlearning_work`). Loading and saving get LOAD_SAVE_SHARE each. No I/O, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alkn_core.params import hinge_batches

# A greedy answer (48 new tokens, KV-cached) against one scoring pass of a QA item, as
# measured by bench/eval_speed.py on the demo model (0.62 s vs 0.46 s for 96 items batched,
# 1.10 s at batch size 8).
GENERATE_COST = 2.5
# A training step per item: forward and backward.
TRAIN_COST = 3.0
LOAD_SAVE_SHARE = 0.02
# Methods whose loop pairs a retain batch with each forget batch (trains_on_retain).
RETAIN_TRAINING = ("grad_diff", "npo_gd")
ORDER = ("loading", "evaluating:before", "probing", "training", "negating",
         "evaluating:after", "saving")


def expected_repair_rounds(params: Mapping[str, Any], seen: int | None) -> float:
    """The repair rounds a job is expected to run: as many as the lineage's newest repair
    ran (`JobSpec.repair_rounds_seen`: the rounds follow the wear the lineage's requests left,
    so they change slowly along it), else half of `repair_rounds`; at most `repair_rounds`."""
    rounds = float(params.get("repair_rounds") or 1)
    return min(rounds, float(seen)) if seen else 0.5 * rounds


def unlearning_work(method: str, params: Mapping[str, Any], n_forget: int, n_retain: int,
                    n_earlier_sets: int, repair_rounds_seen: int | None = None
                    ) -> dict[str, float]:
    """Sequence passes of the probing, training and negating stages (an estimate: the
    alpha search and the repair stop early when their aims are met)."""
    epochs = float(params.get("epochs") or 1)
    train = epochs * n_forget * TRAIN_COST
    if n_retain and method in RETAIN_TRAINING:
        train *= 2  # a retain batch beside each forget batch
    probing = 2.0 * n_forget + 16 + 16 + 32 * min(16, n_earlier_sets)
    negating = 0.0
    if method == "alkn":
        probing += n_forget * TRAIN_COST  # the mean retain gradient
        evals = float(params.get("calibration_evals") or 0) if params.get("alpha") == "auto" \
            else 1.0
        negating += evals * (n_forget + 16)
        steps = float(params.get("repair_steps") or 0) * expected_repair_rounds(
            params, repair_rounds_seen)
        bs = float(params.get("batch_size") or 1)
        # teacher pass + student forward/backward per repair item, + the hinge's sets
        negating += steps * bs * (1 + TRAIN_COST) * 1.5
        # + a large request's further hinge batches a step (a forward pass each, mostly idle)
        more = hinge_batches(-(-n_forget // max(1, int(bs))),
                             int(params.get("repair_steps") or 0),
                             int(params.get("repair_hinge_passes") or 0)) - 1
        negating += steps * bs * more
    return {"probing": probing, "training": train, "negating": negating}


def spans(work: Mapping[str, float]) -> dict[str, tuple[float, float]]:
    """{stage key: (start, end)} over ORDER, each stage's width its share of the work;
    loading and saving LOAD_SAVE_SHARE each. A stage with no work has zero width."""
    rest = 1.0 - 2 * LOAD_SAVE_SHARE
    total = sum(max(0.0, float(work.get(k, 0.0))) for k in ORDER[1:-1]) or 1.0
    out: dict[str, tuple[float, float]] = {"queued": (0.0, 0.0)}
    at = 0.0
    for key in ORDER:
        if key in ("loading", "saving"):
            width = LOAD_SAVE_SHARE
        else:
            width = rest * max(0.0, float(work.get(key, 0.0))) / total
        out[key] = (round(at, 6), round(min(1.0, at + width), 6))
        at += width
    out["done"] = (1.0, 1.0)
    return out


def eta_seconds(elapsed: float, fraction: float) -> float | None:
    """Time left if the rest goes as fast as what was done; None before 2% is done."""
    if fraction < 0.02 or elapsed <= 0:
        return None
    return max(0.0, elapsed * (1.0 - fraction) / fraction)


def eval_work(sequences: int, generated: int) -> float:
    return float(sequences - generated) + GENERATE_COST * generated


def describe(stage: str, phase: str) -> str:
    """The stage as people read it: "evaluating (before)"."""
    return f"{stage} ({phase})" if stage == "evaluating" and phase else stage

