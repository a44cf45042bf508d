"""Request and response models of the HTTP contract (docs/api.md); /openapi.json is built from
these. Requests refuse unknown fields (a typo must not be silently ignored); responses may
grow fields."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

import pydantic
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StrictInt,
    StringConstraints,
    WithJsonSchema,
    model_serializer,
)

from alkn_core.methods import METHODS, params_json_schema
from alkn_core.params import DEFAULT_QA_TEMPLATE, EVAL_DETAIL_ITEMS, EVAL_MAX_ITEMS

T = TypeVar("T")

# Generated from the method registry (alkn_core.methods): a new method shows up here.
METHODS_DESCRIPTION = "; ".join(f"`{name}`: {cls.summary()}" for name, cls in METHODS.items())
PARAMS_SCHEMA = {k: v for k, v in params_json_schema().items() if k != "type"}


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
# Version numbers are PostgreSQL integers: a larger one must be a 4xx, not an overflow.
MAX_VERSION = 2**31 - 1

# Bounds on what one request may hold, so that a body under ALKN_MAX_JSON_BYTES (32 MiB)
# still cannot queue a million-item job or a 30 MB "answer".
MAX_FORGET_ITEMS = 10_000
MAX_SET_ITEMS = 100_000
MAX_EVAL_SETS = 64
MAX_STRING_CHARS = 100_000  # any string in items and params
MAX_PERTURBED = 64
MAX_KEY_CHARS = 256  # any key of an object in items and params
# Nesting of items and params (pydantic cannot serialise past 255 levels; a flat item or
# param set needs 2 or 3).
MAX_JSON_DEPTH = 32

# NUL (PostgreSQL text cannot hold it), the other C0 controls but tab/newline/CR, DEL, C1
# controls, and unpaired surrogates (not encodable as UTF-8). Bidi marks (U+200E/F,
# U+202A-E, U+2066-9) are accepted: they occur in real right-to-left text, and forget items
# must match what the model was trained on; identifiers (names, aliases) exclude them by
# pattern.
_CONTROLS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_BAD_CHARS = re.compile(f"[{_CONTROLS}\ud800-\udfff]")
_BAD_TEXT = "must not contain NUL, control characters or unpaired surrogates"
# The same rule as published in /openapi.json (surrogates cannot occur in valid JSON text).
CLEAN_PATTERN = f"^[^{_CONTROLS}]*$"
CLEAN_NON_BLANK_PATTERN = f"^[^{_CONTROLS}]*[^{_CONTROLS}\\s][^{_CONTROLS}]*$"


class _Publish:
    """Annotation metadata that adds keywords to a type's published JSON schema only (the
    validators enforce them, with messages written for people)."""

    def __init__(self, **keywords: Any) -> None:
        self.keywords = keywords

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema: dict[str, Any] = handler(core_schema)
        schema.update(self.keywords)
        return schema


def _clean_text(value: str) -> str:
    if _BAD_CHARS.search(value):
        raise ValueError(_BAD_TEXT)
    return value


def _clean_json(value: Any) -> Any:
    """Every key and string of a JSON value (items, params) is clean text, every number
    finite (NaN and Infinity are not JSON: PostgreSQL refuses them), every key at most
    MAX_KEY_CHARS long and the nesting at most MAX_JSON_DEPTH deep. Iterative, so a deep
    value is refused without recursion; the message never echoes the input."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH and isinstance(node, dict | list):
            raise ValueError(f"values must be nested at most {MAX_JSON_DEPTH} levels deep")
        if isinstance(node, str):
            if _BAD_CHARS.search(node):
                raise ValueError(f"strings {_BAD_TEXT}")
            if len(node) > MAX_STRING_CHARS:
                raise ValueError(f"strings must be at most {MAX_STRING_CHARS} characters")
        elif isinstance(node, float):
            if not math.isfinite(node):
                raise ValueError("numbers must be finite (no NaN or Infinity)")
        elif isinstance(node, dict):
            if any(_BAD_CHARS.search(k) for k in node):
                raise ValueError(f"keys {_BAD_TEXT}")
            if any(len(k) > MAX_KEY_CHARS for k in node):
                raise ValueError(f"keys must be at most {MAX_KEY_CHARS} characters")
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return value


def _check_item_extras(item: dict[str, Any]) -> dict[str, Any]:
    # alkn_core.items checks text/question/answer; the optional evaluation fields are only
    # read by the worker, so their types are checked here, before anything is stored.
    if "paraphrased_answer" in item and not isinstance(item["paraphrased_answer"], str):
        raise ValueError("paraphrased_answer must be a string")
    perturbed = item.get("perturbed_answer", [])
    if not isinstance(perturbed, list) or not all(isinstance(p, str) for p in perturbed):
        raise ValueError("perturbed_answer must be a list of strings")
    if len(perturbed) > MAX_PERTURBED:
        raise ValueError(f"perturbed_answer must have at most {MAX_PERTURBED} answers")
    return item


_CLEAN = {"type": "string", "pattern": CLEAN_PATTERN, "maxLength": MAX_STRING_CHARS}
_NON_BLANK = {"type": "string", "pattern": CLEAN_NON_BLANK_PATTERN,
              "maxLength": MAX_STRING_CHARS}
# The item formats of docs/api.md, published so that clients (and schemathesis) see them; the
# checks themselves are alkn_core.items.validate_items and the validators here. Other keys
# are kept (the worker ignores them) as long as they are clean JSON.
ITEM_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": '{"question", "answer"} (optionally "paraphrased_answer" and '
                   '"perturbed_answer": [...]) or {"text"}',
    "propertyNames": {"pattern": CLEAN_PATTERN, "maxLength": MAX_KEY_CHARS},
    "properties": {"text": _NON_BLANK, "question": _NON_BLANK, "answer": _NON_BLANK,
                   "paraphrased_answer": _CLEAN,
                   "perturbed_answer": {"type": "array", "items": _CLEAN,
                                        "maxItems": MAX_PERTURBED}},
    "anyOf": [{"required": ["text"]}, {"required": ["question", "answer"]}],
}

Text = Annotated[str, AfterValidator(_clean_text), _Publish(pattern=CLEAN_PATTERN)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_clean_json),
                       _Publish(propertyNames={"pattern": CLEAN_PATTERN,
                                               "maxLength": MAX_KEY_CHARS})]
Item = Annotated[dict[str, Any], AfterValidator(_clean_json), AfterValidator(_check_item_extras),
                 WithJsonSchema(ITEM_JSON_SCHEMA)]
ItemSet = Annotated[list[Item], Field(max_length=MAX_SET_ITEMS)]
SetName = Annotated[str, StringConstraints(min_length=1, max_length=64),
                    AfterValidator(_clean_text), _Publish(pattern=CLEAN_PATTERN)]


class _In(BaseModel):
    """A request body. Its integers are StrictInt: "1", true and 1.0 are refused (422), as
    method params refuse them, rather than read as 1."""

    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class Problem(BaseModel):
    """RFC 9457 problem document (application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[dict[str, Any]] | None = Field(
        default=None, description="validation failures: [{loc, msg, type}]")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; "
                                                "null on the last page")


# --------------------------------------------------------------------------------------------
# Health
# --------------------------------------------------------------------------------------------


class HealthOut(BaseModel):
    status: str = "ok"


class ReadyOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(description="database, store, broker: ok | skipped | "
                                               "unavailable")


# --------------------------------------------------------------------------------------------
# Models and versions
# --------------------------------------------------------------------------------------------


class SourceIn(_In):
    path: Text = Field(min_length=1, max_length=4096,
                      description="Hugging Face model directory readable by the server, "
                                  "under one of the tenant's source roots (its own, else "
                                  "ALKN_MODEL_SOURCE_ROOTS), not in the artifact store")


class ModelCreate(_In):
    name: str = Field(pattern=NAME_PATTERN, examples=["demo"])
    source: SourceIn | None = Field(
        default=None, description="copied as version 1; without it, upload a version with "
                                  "POST /v1/models/{name}/versions:upload")
    description: Text = Field(default="", max_length=10_000)
    qa_template: Text = Field(default=DEFAULT_QA_TEMPLATE, max_length=10_000)
    default_params: JsonObject = Field(
        default_factory=dict, json_schema_extra=PARAMS_SCHEMA,
        description="defaults of the model's requests: any method's params (each request "
                    "takes those its method knows)")
    retain_set: ItemSet = Field(default_factory=list)
    holdout_set: ItemSet = Field(default_factory=list)
    eval_sets: dict[SetName, ItemSet] = Field(default_factory=dict, max_length=MAX_EVAL_SETS)
    eval_max_items: StrictInt | None = Field(
        default=None, ge=1, le=100_000,
        description=f"items of each set a job evaluates (a fixed sample, the same on every "
                    f"version), for answer probability and Min-K; null: {EVAL_MAX_ITEMS}")
    eval_detail_items: StrictInt | None = Field(
        default=None, ge=1, le=100_000,
        description=f"the first of those for ROUGE-L (generation), truth ratio and the "
                    f"normalised probability; null: {EVAL_DETAIL_ITEMS}")
    min_gpu_memory_gb: StrictInt | None = Field(
        default=None, ge=1, le=100_000,
        description="GPU memory the model's jobs need: they go to the smallest worker queue "
                    "of ALKN_QUEUE_ROUTES whose GPUs have as much; null: the default queue")


class ModelOut(_Out):
    id: str
    name: str
    description: str
    created_at: UtcDatetime
    latest_version: int | None = Field(description="newest ready version")
    aliases: dict[str, int]
    qa_template: str
    default_params: dict[str, Any]
    retain_set_size: int
    holdout_set_size: int
    eval_sets: dict[str, int] = Field(description="item count of each evaluation set")
    eval_max_items: int = Field(default=EVAL_MAX_ITEMS,
                                description="items of each set a job evaluates")
    eval_detail_items: int = Field(default=EVAL_DETAIL_ITEMS,
                                   description="of those, items for ROUGE-L and truth ratio")
    min_gpu_memory_gb: int | None = None


class FileOut(BaseModel):
    path: str
    size: int
    sha256: str


# The quality gate's block (worker/quality.py; docs/api.md, quality gate).
QUALITY_DESCRIPTION = (
    "the quality gate's verdict on the version (null for registered or uploaded ones): "
    "`floor` (param utility_floor), `retain_probability_ratio` and `model_utility_ratio` "
    "(against the lineage's first version, named in `reference`), `target_met`, `passed`, "
    "`reasons`, `message`, and `kept` (what each set kept, against the base and the first "
    "version). A version below the floor is still published (forgetting wins).")


class VersionOut(_Out):
    model: str | None = None
    version: int
    status: str = Field(description="pending | ready | failed | revoked")
    parent_version: int | None
    job_id: str | None
    forget_request_ids: list[str]
    method: str | None
    size_bytes: int
    files: list[FileOut]
    metrics: dict[str, Any] | None
    created_at: UtcDatetime
    revoked_at: UtcDatetime | None = None
    quality: dict[str, Any] | None = Field(default=None, description=QUALITY_DESCRIPTION)


# A version in a list: every field of VersionOut but `files` (a version may hold
# ALKN_MAX_VERSION_FILES of them; GET .../versions/{ref} has them).
VersionSummaryOut = pydantic.create_model(
    "VersionSummaryOut", __base__=_Out,
    __doc__="A version as listed: without `files` (GET /v1/models/{name}/versions/{ref} "
            "has them).",
    **{name: (field.annotation, field) for name, field in VersionOut.model_fields.items()
       if name != "files"})


class RequestItemsOut(BaseModel):
    id: str
    items: list[dict[str, Any]] = Field(description="as submitted, in order")


class ArchiveLinkOut(BaseModel):
    url: str = Field(description="GET it without a key: the version's tar (410 once expired)")
    expires_at: UtcDatetime


class AliasIn(_In):
    version: StrictInt = Field(ge=1, le=MAX_VERSION)


class AliasOut(BaseModel):
    alias: str
    version: int


# --------------------------------------------------------------------------------------------
# Forget requests and jobs
# --------------------------------------------------------------------------------------------


class ForgetRequestCreate(_In):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"items": [{"question": "Where was Ilsa born?", "answer": "In Port Tavrin."}],
         "method": "alkn"},
        {"items": [{"text": "Ilsa Marr lives at 4 Quay Lane."}], "method": "npo",
         "params": {"epochs": 2}}]})

    items: list[Item] = Field(min_length=1, max_length=MAX_FORGET_ITEMS,
                              description='{"question", "answer"} or {"text"}')
    method: Text = Field(default="alkn", max_length=64,
                         json_schema_extra={"enum": list(METHODS)},
                         description=METHODS_DESCRIPTION)
    params: JsonObject = Field(
        default_factory=dict, json_schema_extra=PARAMS_SCHEMA,
        description="over the model's default_params and the method's defaults; the method's "
                    "params only (docs/methods.md)")
    base_version: StrictInt | None = Field(default=None, ge=1, le=MAX_VERSION,
                                     description="default: the newest ready version")


class ProgressOut(_Out):
    """docs/api.md's four fields; while a job runs also `phase`, `label` and `eta_seconds` (left
    out when the worker did not write them: the four stay the whole object then)."""

    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    fraction: float | None = None
    phase: str | None = Field(default=None, description="while `evaluating`: before | after "
                                                       "(unlearning) or full (an evaluation job)")
    label: str | None = Field(default=None, description='the stage as shown, e.g. '
                                                       '"evaluating (after)"')
    eta_seconds: float | None = Field(default=None, description="estimated seconds left "
                                                               "(null until 2% is done)")

    @model_serializer(mode="wrap")
    def _without_unwritten(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        for key in ("phase", "label", "eta_seconds"):
            if key not in self.model_fields_set:
                data.pop(key, None)
        return data


class ErrorOut(_Out):
    type: str
    message: str


class ForgetRequestOut(_Out):
    id: str
    model: str | None
    status: str = Field(description="queued | running | succeeded | failed | cancelled")
    method: str
    params: dict[str, Any]
    base_version: int | None
    result_version: int | None
    job_id: str | None
    item_count: int
    item_hashes: list[str] | None = Field(
        default=None, description="once the items were purged (ALKN_FORGET_DATA_RETENTION "
        "after the request finished): the sha256 of each item's canonical JSON, in order; "
        "not in listings")
    items_purged_at: UtcDatetime | None = None
    progress: ProgressOut
    metrics: dict[str, Any] | None
    error: ErrorOut | None
    cancel_requested: bool = False
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None


class JobMetrics(_Out):
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = Field(
        default=None, description="an evaluation job's numbers (every item of every set)")


class JobOut(_Out):
    id: str
    model: str | None
    kind: Literal["unlearn", "evaluate", "register"] = Field(
        default="unlearn", description="unlearn (from forget requests; makes a version), "
                                       "evaluate (POST .../versions/{ref}:evaluate; makes none) "
                                       "or register (copies a large source: makes version 1)")
    status: str
    method: str
    params: dict[str, Any]
    forget_request_ids: list[str]
    base_version: int
    result_version: int | None
    progress: ProgressOut
    metrics: JobMetrics
    timings: dict[str, Any]
    error: ErrorOut | None
    cancel_requested: bool = False
    created_at: UtcDatetime
    started_at: UtcDatetime | None
    finished_at: UtcDatetime | None
    quality: dict[str, Any] | None = Field(default=None, description=QUALITY_DESCRIPTION)


class JobEventOut(_Out):
    at: UtcDatetime
    stage: str
    message: str
    data: dict[str, Any]
    id: int | None = Field(default=None, description="the event's number within its job: "
                                                     "1, 2, 3, ...")


RequestStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

_PROBLEM_CONTENT = {
    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


# A binary request or response body in the OpenAPI document.
BINARY_BODY = {"schema": {"type": "string", "format": "binary"}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error statuses (all problem documents)."""
    text = {400: "malformed JSON", 401: "missing or invalid API key",
            404: "unknown (or another tenant's) model, version, request or job",
            409: "the current state does not allow it", 413: "body too large",
            416: "range not satisfiable", 422: "validation failed (`errors` lists why)",
            429: "too many unfinished requests for this tenant; retry after `Retry-After` s",
            503: "a dependency is unavailable; retry later"}
    return {s: {"model": Problem, "description": text.get(s, "error"),
                "content": _PROBLEM_CONTENT} for s in statuses}
