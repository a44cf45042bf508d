"""Hyper-parameters of every method: names, defaults, types and validation.

The names are part of the public contract (API `params`, benchmarks), see ALKN_SPEC.md.
"""

from __future__ import annotations

from typing import Any

from .quoting import quoted

DEFAULT_QA_TEMPLATE = "Question: {question}\nAnswer: {answer}"

# Shared by every method: the training loop.
LOOP_DEFAULTS: dict[str, Any] = {
    "lr": 2e-5,
    "epochs": 5,
    "batch_size": 16,
    "grad_accum": 4,
    "weight_decay": 0.01,
    "warmup_ratio": 0.2,
    "max_grad_norm": 1.0,
    "max_length": 500,
    "seed": 42,
    "qa_template": DEFAULT_QA_TEMPLATE,
    "chat_template": False,
}

# alpha: a number, or "auto" = the smallest alpha in (0, alpha_max] whose negated model
# reaches the forget target (alkn_core/calibration.py). The target is target_forget_prob if
# set, else the holdout items' answer probability when the caller gives holdout items, else
# target_forget_ratio x the forget items' probability before the task.
AUTO = "auto"
NEGATION_DEFAULTS: dict[str, Any] = {
    "alpha": 1.0, "coef_decay": 1.0, "lr_decay": 1.0,
    "target_forget_prob": None, "target_forget_ratio": 0.1, "alpha_max": 4.0,
    "calibration_evals": 8,
    # Out of reach at alpha_max: the forget fine-tune again with lr x3, x9, ... this often.
    "escalations": 2,
    # After negation: steps of KL(pre-task model || now) on retain (+ general) answer tokens
    # with a hinge holding the forget items under the target (alkn_core/repair.py). 0 = off;
    # repair_lr None = 0.1 x the forget fine-tune's lr.
    "repair_steps": 30, "repair_lr": None, "repair_forget_weight": 1.0,
    # Repair items at most (a seeded sample of the pool beyond): the teacher's memory and
    # forward cost; more items, less of the repair that only fits the items it saw.
    "repair_items": 128,
    # Repair rounds at most (each: repair_steps, then the forget guard or relax); they stop
    # once the retain probe is back to repair_aim x its lineage's first value (or the
    # utility floor if higher). Stopping at the floor itself left each task's model just
    # above it and the people no repair item stood for below it (docs/bench/selectivity_*).
    "repair_rounds": 5, "repair_aim": 0.95,
    # ...or once a round gained less than this fraction of the probes' references (neither
    # probe improved): later rounds on a long lineage added nothing and cost most of its
    # jobs' time (bench/job_cost.py); 0.01 stopped some rounds that still helped
    # (docs/bench/selectivity_ablation.md). 0 = always run every round.
    "repair_min_gain": 0.002,
    "repair_sets": "retain",
    # The repair's target: the lineage's first model (its distributions on a fixed sample of
    # repair items, carried in the state) or the model before this task.
    "repair_reference": "first",
    # After repair, forget items far under the target: give back part of the negation.
    "repair_relax": True,
}

ALKN_DEFAULTS: dict[str, Any] = {
    "unmask_ratio": 0.8,
    "mask_p_k": 0.5,
    "low_lr_ratio": 0.1,
    "init_prob_k": 1.5,
    "threshold_update_step": 1,
    "trim_ratio": 0.15,
    # retain_safe: measured far better than the reference rule (README, bench/continual.py).
    "mask_rule": "retain_safe",
    "retain_gradient_sets": "retain",
}

# The quality gate (every method): a version should keep at least this fraction of the
# lineage's first version's retain answer probability and model utility. Forgetting wins
# when both cannot be had; the version then says so (its `quality` block).
QUALITY_DEFAULTS: dict[str, Any] = {"utility_floor": 0.85}

NPO_DEFAULTS: dict[str, Any] = {"beta": 0.1}
LOSS_WEIGHT_DEFAULTS: dict[str, Any] = {"forget_weight": 1.0, "retain_weight": 1.0}

# Every method's parameters (the methods' modules use these; the web tier validates with
# them without importing torch).
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    # alpha "auto": forget exactly enough (bench/calibration.py: it reached its target on
    # every task and kept more utility than the best fixed alpha, with either target).
    # lr "auto" (a short probe on the model picks it, lr_probe.py) is not the default: on the
    # selectivity benchmark it kept less of the general sets than the hand-tuned lr
    # (docs/bench/selectivity_demo.md, selectivity_heldout.md).
    "alkn": {**LOOP_DEFAULTS, **QUALITY_DEFAULTS, **NEGATION_DEFAULTS, **ALKN_DEFAULTS,
             "alpha": AUTO},
    "task_vector": {**LOOP_DEFAULTS, **QUALITY_DEFAULTS, **NEGATION_DEFAULTS},
    "grad_ascent": {**LOOP_DEFAULTS, **QUALITY_DEFAULTS},
    "grad_diff": {**LOOP_DEFAULTS, **QUALITY_DEFAULTS, **LOSS_WEIGHT_DEFAULTS},
    "npo": {**LOOP_DEFAULTS, **QUALITY_DEFAULTS, **NPO_DEFAULTS},
    "npo_gd": {**LOOP_DEFAULTS, **QUALITY_DEFAULTS, **NPO_DEFAULTS, **LOSS_WEIGHT_DEFAULTS},
}
# Methods that cannot run without a retain set.
NEEDS_RETAIN = frozenset({"alkn", "grad_diff", "npo_gd"})

# Allowed values of the string-valued parameters.
CHOICES: dict[str, tuple[str, ...]] = {
    "mask_rule": ("reference", "retain_safe"),
    "retain_gradient_sets": ("retain", "retain+eval"),
    "repair_sets": ("retain", "retain+eval"),
    "repair_reference": ("first", "pre_task"),
}

# Parameters that must be > 0 (the rest of the numbers must be >= 0).
POSITIVE = {"lr", "epochs", "batch_size", "grad_accum", "max_length", "alpha", "coef_decay",
            "lr_decay", "init_prob_k", "threshold_update_step", "beta", "max_grad_norm",
            "target_forget_prob", "target_forget_ratio", "alpha_max", "calibration_evals",
            "repair_lr", "repair_items", "repair_rounds"}
# Parameters in [0, 1].
FRACTIONS = {"warmup_ratio", "unmask_ratio", "low_lr_ratio", "trim_ratio",
             "target_forget_prob", "target_forget_ratio", "utility_floor", "repair_aim",
             "repair_min_gain"}
# Numbers that may also be the string "auto" (their default may be either).
AUTO_OR_NUMBER = {"alpha", "lr"}
# Numbers that may be null (= not set; the default is None).
OPTIONAL_NUMBERS = {"target_forget_prob", "repair_lr"}
# Upper bounds of the other numbers (FRACTIONS stop at 1): far past any useful value, but a
# request can no longer hold its lineage's worker for ever (epochs=1e9) or ask for what no
# accelerator holds (batch_size=1e6). Every number has one (tests/test_param_bounds.py).
MAXIMA: dict[str, float] = {
    "lr": 1.0, "epochs": 100, "batch_size": 1024, "grad_accum": 1024, "max_length": 8192,
    "weight_decay": 10.0, "max_grad_norm": 1e4, "seed": 2**31 - 1,
    "alpha": 100.0, "coef_decay": 100.0, "lr_decay": 100.0, "alpha_max": 100.0,
    "calibration_evals": 100, "mask_p_k": 100.0, "init_prob_k": 100.0,
    "threshold_update_step": 1_000_000, "beta": 100.0, "forget_weight": 1000.0,
    "retain_weight": 1000.0, "escalations": 10, "repair_steps": 10_000, "repair_lr": 1.0,
    "repair_forget_weight": 1000.0, "repair_items": 100_000, "repair_rounds": 100,
}
MAX_TEMPLATE_CHARS = 4096


def _check_type(name: str, value: Any, default: Any) -> Any:
    """Coerce `value` to the type of `default`, refusing anything that would lose meaning."""
    if name in AUTO_OR_NUMBER:
        if isinstance(value, str):
            if value != AUTO:
                raise ValueError(f"param {name!r} must be {AUTO!r} or a number > 0, "
                                 f"got {quoted(value)}")
            return value
        default = 1.0  # then checked as a number
    if name in OPTIONAL_NUMBERS:
        if value is None:
            return None
        default = 1.0
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"param {name!r} must be a boolean, got {quoted(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"param {name!r} must be an integer, got {quoted(value)}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"param {name!r} must be a number, got {quoted(value)}")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"param {name!r} must be finite, got {quoted(value)}")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ValueError(f"param {name!r} must be a string, got {quoted(value)}")
        return value
    raise AssertionError(f"no type rule for {name}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def resolve_params(defaults: dict[str, Any], params: dict[str, Any] | None) -> dict[str, Any]:
    """Merge `params` over `defaults`; raise ValueError naming any unknown or ill-typed key."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ValueError(f"params must be a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"unknown param(s) {', '.join(map(quoted, unknown[:5]))}; "
                         f"allowed: {', '.join(sorted(defaults))}")
    out = dict(defaults)
    for name, value in params.items():
        value = _check_type(name, value, defaults[name])
        if name in CHOICES and value not in CHOICES[name]:
            raise ValueError(f"param {name!r} must be one of {CHOICES[name]}, got {quoted(value)}")
        if isinstance(value, str) and len(value) > MAX_TEMPLATE_CHARS:
            raise ValueError(f"param {name!r} must be at most {MAX_TEMPLATE_CHARS} characters, "
                             f"got {len(value)}")
        if not _is_number(value):  # "auto", None and the string/boolean params
            out[name] = value
            continue
        if name in POSITIVE and value <= 0:
            raise ValueError(f"param {name!r} must be > 0, got {quoted(value)}")
        if value < 0:
            raise ValueError(f"param {name!r} must be >= 0, got {quoted(value)}")
        if name in FRACTIONS and value > 1:
            raise ValueError(f"param {name!r} must be <= 1, got {quoted(value)}")
        if name in MAXIMA and value > MAXIMA[name]:
            raise ValueError(f"param {name!r} must be <= {MAXIMA[name]!r}, got {quoted(value)}")
        out[name] = value
    template = out.get("qa_template")
    if template is not None and not (0 <= template.find("{question}") < template.find("{answer}")):
        raise ValueError("param 'qa_template' must contain {question} followed by {answer}")
    return out


def method_params(method: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """The full, validated parameter set of a method (ValueError names a bad key)."""
    if method not in METHOD_DEFAULTS:
        raise ValueError(f"unknown method {quoted(method)}; one of {', '.join(METHOD_DEFAULTS)}")
    return resolve_params(METHOD_DEFAULTS[method], dict(params or {}))


# Evaluation samples (alkn_core/eval_sets.py): per set, items for the answer probability and
# Min-K, and the first of them for ROUGE-L, truth ratio and normalised probability. The
# continual view measures the most recent EVAL_RECENT_TASKS earlier tasks one by one and the
# older ones pooled, each at 1/EVAL_RECENT_TASKS of these sizes: a job's evaluation does not
# grow with the lineage.
EVAL_MAX_ITEMS = 200
EVAL_DETAIL_ITEMS = 32
EVAL_RECENT_TASKS = 8
