"""Method parameters: typed declarations with defaults, bounds and a line of doc each, and
their validation. Torch-free: the web tier validates requests with it.

A method's parameters are a frozen dataclass (`Params`) composed of the groups below; every
field is declared with `param(...)`, which holds its type and bounds:

- numbers are >= 0, and > 0 where `positive`; each has an upper bound `le` (inclusive), so no
  request can hold a worker for ever (epochs=1e9) or ask for what no accelerator holds;
- `auto=True`: the string "auto" is accepted too (the method then chooses the value);
- `nullable=True`: null means "not set";
- `choices`: the values a string may take; any string is at most MAX_TEMPLATE_CHARS long.

`Params.parse(mapping)` merges a mapping over the defaults and returns the validated instance
(ValueError names the key and what was wrong); `as_dict()` is what is stored and sent. A
`Params` reads like a read-only mapping too (`p["lr"]`), so the loop and the negation take any
method's. The names are part of the public contract (the API's `params`, the benchmarks).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from .quoting import quoted

AUTO = "auto"
DEFAULT_QA_TEMPLATE = "Question: {question}\nAnswer: {answer}"
MAX_TEMPLATE_CHARS = 4096


@dataclass(frozen=True)
class Spec:
    """What one parameter accepts."""

    kind: type  # bool, int, float or str
    doc: str
    positive: bool = False  # numbers: > 0 (else >= 0)
    le: float | None = None  # numbers: the inclusive upper bound
    choices: tuple[str, ...] = ()
    auto: bool = False  # the string "auto" too
    nullable: bool = False  # null too (= not set)

    def check(self, name: str, value: Any) -> Any:
        """`value` coerced to this parameter's type; ValueError says what is wrong."""
        if self.auto and isinstance(value, str):
            if value != AUTO:
                raise ValueError(f"param {name!r} must be {AUTO!r} or a number > 0, "
                                 f"got {quoted(value)}")
            return value
        if self.nullable and value is None:
            return None
        value = _coerce(name, value, self.kind)
        if isinstance(value, str):
            if self.choices and value not in self.choices:
                raise ValueError(f"param {name!r} must be one of {self.choices}, "
                                 f"got {quoted(value)}")
            if len(value) > MAX_TEMPLATE_CHARS:
                raise ValueError(f"param {name!r} must be at most {MAX_TEMPLATE_CHARS} "
                                 f"characters, got {len(value)}")
            return value
        if isinstance(value, bool):
            return value
        if self.positive and value <= 0:
            raise ValueError(f"param {name!r} must be > 0, got {quoted(value)}")
        if value < 0:
            raise ValueError(f"param {name!r} must be >= 0, got {quoted(value)}")
        if self.le is not None and value > self.le:
            raise ValueError(f"param {name!r} must be <= {self.le!r}, got {quoted(value)}")
        return value

    def json_schema(self, default: Any) -> dict[str, Any]:
        """This parameter as JSON Schema (the API's OpenAPI document shows it)."""
        base: dict[str, Any] = {"type": {bool: "boolean", int: "integer", float: "number",
                                         str: "string"}[self.kind]}
        if self.kind in (int, float):
            base["exclusiveMinimum" if self.positive else "minimum"] = 0
            if self.le is not None:
                base["maximum"] = self.le
        if self.choices:
            base["enum"] = list(self.choices)
        if self.kind is str and not self.choices:
            base["maxLength"] = MAX_TEMPLATE_CHARS
        alternatives = [base]
        if self.auto:
            alternatives.append({"const": AUTO})
        if self.nullable:
            alternatives.append({"type": "null"})
        schema: dict[str, Any] = base if len(alternatives) == 1 else {"anyOf": alternatives}
        return {**schema, "default": default, "description": self.doc}


def _coerce(name: str, value: Any, kind: type) -> Any:
    """Coerce `value` to `kind`, refusing anything that would lose meaning."""
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"param {name!r} must be a boolean, got {quoted(value)}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"param {name!r} must be an integer, got {quoted(value)}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"param {name!r} must be a number, got {quoted(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond float's range
            raise ValueError(f"param {name!r} is out of range, got {quoted(value)}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"param {name!r} must be finite, got {quoted(value)}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"param {name!r} must be a string, got {quoted(value)}")
    return value


def param(default: Any, doc: str, *, kind: type | None = None, positive: bool = False,
          le: float | None = None, choices: tuple[str, ...] = (), auto: bool = False,
          nullable: bool = False) -> Any:
    """A dataclass field declaring one parameter; `kind` defaults to the default's type."""
    if kind is None:
        kind = type(default)
    numeric = kind in (int, float)
    assert kind in (bool, int, float, str), kind
    assert not numeric or le is not None, f"every number has an upper bound: {doc}"
    spec = Spec(kind=kind, doc=doc, positive=positive, le=le, choices=choices, auto=auto,
                nullable=nullable)
    return field(default=default, metadata={"spec": spec})


def redefault(group: type[Params], name: str, default: Any) -> Any:
    """`group`'s parameter `name` with another default (a method that prefers another)."""
    f = group.declared()[name]
    return field(default=default, metadata={"spec": f[1]})


Declared = Mapping[str, tuple[Any, Spec]]  # name -> (default, spec)


def validate(declared: Declared, params: Mapping[str, Any] | None) -> dict[str, Any]:
    """`params` merged over the declared defaults; ValueError names any unknown or bad key."""
    if params is None:
        params = {}
    if not isinstance(params, Mapping):
        raise ValueError(f"params must be a mapping, got {type(params).__name__}")
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ValueError(f"unknown param(s) {', '.join(map(quoted, unknown[:5]))}; "
                         f"allowed: {', '.join(sorted(declared))}")
    out = {name: default for name, (default, _) in declared.items()}
    for name, value in params.items():
        out[name] = declared[name][1].check(name, value)
    template = out.get("qa_template")
    if template is not None and not (0 <= template.find("{question}") < template.find("{answer}")):
        raise ValueError("param 'qa_template' must contain {question} followed by {answer}")
    return out


@dataclass(frozen=True, kw_only=True)
class Params(Mapping[str, Any]):
    """A method's parameters: a frozen dataclass that also reads as a mapping."""

    _declared: ClassVar[dict[str, tuple[Any, Spec]] | None] = None

    @classmethod
    def declared(cls) -> dict[str, tuple[Any, Spec]]:
        if cls.__dict__.get("_declared") is None:
            cls._declared = {f.name: (f.default, f.metadata["spec"])
                             for f in dataclasses.fields(cls)}
        assert cls._declared is not None
        return cls._declared

    @classmethod
    def parse(cls, params: Mapping[str, Any] | None = None) -> Self:
        """`params` over the defaults, validated (ValueError names a bad key)."""
        return cls(**validate(cls.declared(), params))

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.declared()}

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)

    def __getitem__(self, name: str) -> Any:
        if name not in self.declared():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.declared())

    def __len__(self) -> int:
        return len(self.declared())


def json_schema(declared: Declared) -> dict[str, Any]:
    """A JSON Schema object of these parameters."""
    return {"type": "object", "additionalProperties": False,
            "properties": {name: spec.json_schema(default)
                           for name, (default, spec) in sorted(declared.items())}}


# -- the groups methods are made of ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class LoopParams(Params):
    """The training loop, shared by every method."""

    lr: float | str = param(
        2e-5, "learning rate of the forget fine-tune; \"auto\": a short probe on the model "
        "picks it on the lineage's first task", positive=True, le=1.0, auto=True)
    epochs: int = param(5, "passes over the forget items", positive=True, le=100)
    batch_size: int = param(16, "items per batch", positive=True, le=1024)
    grad_accum: int = param(4, "gradient accumulation steps", positive=True, le=1024)
    weight_decay: float = param(0.01, "AdamW, matrices only", le=10.0)
    warmup_ratio: float = param(0.2, "share of steps warming up, then linear decay", le=1)
    max_grad_norm: float = param(1.0, "clipping", positive=True, le=1e4)
    max_length: int = param(500, "tokens per item at most", positive=True, le=8192)
    seed: int = param(42, "makes a run reproducible", le=2**31 - 1)
    qa_template: str = param(DEFAULT_QA_TEMPLATE, "how a QA item becomes text ({question} "
                             "before {answer}; a model's own qa_template applies unless a "
                             "request sets this)")
    chat_template: bool = param(False, "wrap QA items in the tokenizer's chat template instead")


@dataclass(frozen=True, kw_only=True)
class QualityParams(Params):
    """The quality gate (every method)."""

    # Forgetting wins when both cannot be had; the version then says so (its `quality`).
    utility_floor: float = param(
        0.85, "a version should keep at least this fraction of the lineage's first version's "
        "retain answer probability and model utility", le=1)


@dataclass(frozen=True, kw_only=True)
class LossWeightParams(Params):
    """Methods that add a retain loss to a forget loss."""

    forget_weight: float = param(1.0, "weight of the forget loss", le=1000.0)
    retain_weight: float = param(1.0, "weight of the retain loss", le=1000.0)


@dataclass(frozen=True, kw_only=True)
class NegationParams(Params):
    """Fine-tune on the forget set, then negate the task vector (alkn, task_vector), with
    the calibration of alpha and the repair after it (docs/algorithm.md)."""

    # alpha "auto": the smallest alpha in (0, alpha_max] whose negated model reaches the
    # forget target (calibration.py): target_forget_prob if set, else the holdout items'
    # answer probability when the caller gives holdout items, else target_forget_ratio x
    # the forget items' probability before the task.
    alpha: float | str = param(
        1.0, "negation strength (theta - alpha x tau); \"auto\": the smallest alpha that "
        "reaches the forget target", positive=True, le=100.0, auto=True)
    coef_decay: float = param(1.0, "a fixed alpha x this^task", positive=True,
                              le=100.0)
    lr_decay: float = param(1.0, "lr x this^task", positive=True, le=100.0)
    target_forget_prob: float | None = param(
        None, "forget target of alpha \"auto\": the forget items' mean answer probability",
        kind=float, positive=True, le=1, nullable=True)
    target_forget_ratio: float = param(
        0.1, "forget target without holdout items or target_forget_prob: this x the forget "
        "items' probability before the task", positive=True, le=1)
    alpha_max: float = param(4.0, "alpha \"auto\" searches (0, alpha_max]", positive=True,
                             le=100.0)
    calibration_evals: int = param(8, "negated models the alpha search measures at most",
                                   positive=True, le=100)
    escalations: int = param(
        2, "target out of reach at alpha_max: the forget fine-tune again with lr x3, x9, ... "
        "this often", le=10)
    # Repair: steps of KL(reference model || now) on retain (+ general) answer tokens with a
    # hinge holding the forget items under the target (repair.py).
    repair_steps: int = param(30, "repair steps per round (0 = no repair)", le=10_000)
    repair_lr: float | None = param(
        None, "repair learning rate (null: 0.1 x the forget fine-tune's)", kind=float,
        positive=True, le=1.0, nullable=True)
    # Less momentum kept the hinge from pushing the forget items far under its aim and kept
    # more of everyone else in 3 of 4 continual runs, but lost half of the held-out people
    # in the fourth (docs/benchmarks.md, "Momentum in the repair"): Adam's default stays.
    repair_beta1: float = param(
        0.9, "the repair optimiser's first-moment decay (Adam's beta1; 0: no momentum, a step "
        "follows only the losses active now)", le=0.999)
    repair_forget_weight: float = param(
        1.0, "weight of the hinge that holds the forget items under the target", le=1000.0)
    # More items, less of the repair that only fits the items it saw; each costs teacher
    # memory and forward time. 512 kept more of the people not requested than 128 on both
    # splits with two seeds once the rounds took all of them in turn (docs/benchmarks.md,
    # "Every repair item trained on").
    repair_items: int = param(512, "repair items at most (a seeded sample of the pool)",
                              positive=True, le=100_000)
    # With one batch a step, a 640-item request's hinge saw each item 0.375 times a round: the
    # guard then negated tau further and model utility fell to 0.48 of version 1's, 0.70 with
    # 3 (0.50 and 0.63 on another demo build); requests of up to repair_steps / 3 batches (80
    # items at batch size 8) are unchanged (docs/benchmarks.md, "The hinge on large requests").
    repair_hinge_passes: int = param(
        3, "each repair round, the hinge takes this task's forget set at least this often "
        "(several of its batches a step past repair_steps / this batches; 0: one a step)",
        le=100)
    # Stopping at the floor itself left each task's model just above it and the people no
    # repair item stood for below it (docs/bench/selectivity_*).
    repair_rounds: int = param(5, "repair rounds at most (each: repair_steps, then the forget "
                               "guard or relax)", positive=True, le=100)
    repair_aim: float = param(
        0.95, "rounds stop once the retain probe is back to this x its lineage's first value "
        "(or the utility floor if higher)", le=1)
    # Later rounds on a long lineage added nothing and cost most of its jobs' time
    # (bench/job_cost.py); 0.01 stopped some that still helped (selectivity_ablation.md).
    repair_min_gain: float = param(
        0.002, "rounds stop once one gained less than this fraction of the probes' "
        "references, every probe at or above the utility floor (0 = always every round)",
        le=1)
    # The repair's hinge holds the forget items under the target; from the whole calibrated
    # negation the rounds first climb back from the damage it did (the retain probe from 0.95
    # to 0.07 after the demo split's first task) and give the negation back; a quarter kept
    # more of everyone else on both splits of the continual benchmark with two seeds, 0.1 and
    # 0.5 less (docs/benchmarks.md, "Where the repair starts").
    repair_start: float = param(
        0.25, "alpha \"auto\" with a repair: the repair starts from theta - repair_start x "
        "alpha x tau and its hinge takes the forget items the rest of the way to the target "
        "(1 = the whole calibrated negation)", positive=True, le=1)
    repair_sets: str = param("retain", "what the repair keeps: the retain set, or it and "
                             "the evaluation sets", choices=("retain", "retain+eval"))
    repair_reference: str = param(
        "first", "the repair's target: the lineage's first model (carried in the state) or "
        "the model before this task", choices=("first", "pre_task"))
    # Relax gives back only the negation; once it is given back, the hinge's steps had left the
    # forget sets at 0.15-0.4 of the never-seen level and everyone else lower with them.
    # Scaling the whole change back kept more of everyone else in all four continual runs
    # (docs/benchmarks.md, "Giving back the whole change").
    repair_shrink: bool = param(
        True, "after the repair, forget sets far under the target: the task's whole change is "
        "scaled back towards the model before it, as far as every forget set stays at or under "
        "the target")
    repair_relax: bool = param(True, "after repair, forget items far under the target get "
                               "part of the negation back")
    # Read a few times per task, never per step (offload.py): off the device they leave the
    # training's and the repair's peaks at little more than fine-tuning's (bench/memory.py).
    offload: str = param(
        "auto", "where the weights before training, the task vector and the repair's "
        "snapshots wait between uses: auto (CPU memory beside a GPU, a memory-mapped file on "
        "the CPU), memory (on the device), cpu, disk",
        choices=("auto", "memory", "cpu", "disk"))
    # LoRA (adapters.py): the forget fine-tune and each repair round train low-rank factors,
    # merged into the weights after each; a lineage keeps its first task's adapter.
    adapter: str = param("none", "what the forget fine-tune and the repair train: the weights "
                         "(none) or LoRA factors merged into them after each (lora)",
                         choices=("none", "lora"))
    lora_rank: int = param(8, "LoRA rank r (adapter lora)", positive=True, le=4096)
    lora_alpha: float = param(16.0, "LoRA scale: the update is lora_alpha / r x B A",
                              positive=True, le=4096.0)
    lora_targets: str = param("all-linear", "layers LoRA trains: all-linear (every linear "
                              "layer but the output head) or comma-separated module names")


# Evaluation samples (alkn_core/eval_sets.py): per set, items for the answer probability and
# Min-K, and the first of them for ROUGE-L, truth ratio and normalised probability. The
# continual view measures the most recent EVAL_RECENT_TASKS earlier tasks one by one and the
# older ones pooled, each at 1/EVAL_RECENT_TASKS of these sizes: a job's evaluation does not
# grow with the lineage.
EVAL_MAX_ITEMS = 200
EVAL_DETAIL_ITEMS = 32
EVAL_RECENT_TASKS = 8
# ROUGE-L's greedy answers: at most this many new tokens (open-unlearning's TOFU generation
# config; 48 cut 92 of 300 answers of TOFU's forget10 under Llama-2's tokenizer).
EVAL_MAX_NEW_TOKENS = 64


def hinge_batches(n_batches: int, steps: int, passes: int) -> int:
    """Batches of a task's forget set the repair's hinge takes per step (`repair_hinge_passes`
    = passes): enough that a round of `steps` takes each of its `n_batches` `passes` times; 1
    while one a step does, and for passes 0."""
    return max(1, -(-passes * n_batches // max(1, steps)))
