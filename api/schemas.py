"""Request and response models of the HTTP contract (API.md); /openapi.json is built from
these. Requests refuse unknown fields (a typo must not be silently ignored); responses may
grow fields."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from alkn_core.params import DEFAULT_QA_TEMPLATE

T = TypeVar("T")


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
Item = dict[str, Any]
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"


class _In(BaseModel):
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
    path: str = Field(min_length=1, max_length=4096,
                      description="Hugging Face model directory readable by the server, "
                                  "under one of ALKN_MODEL_SOURCE_ROOTS")


class ModelCreate(_In):
    name: str = Field(pattern=NAME_PATTERN, examples=["demo"])
    source: SourceIn | None = Field(
        default=None, description="copied as version 1; without it, upload a version with "
                                  "POST /v1/models/{name}/versions:upload")
    description: str = Field(default="", max_length=10_000)
    qa_template: str = Field(default=DEFAULT_QA_TEMPLATE, max_length=10_000)
    default_params: dict[str, Any] = Field(default_factory=dict)
    retain_set: list[Item] = Field(default_factory=list)
    holdout_set: list[Item] = Field(default_factory=list)
    eval_sets: dict[str, list[Item]] = Field(default_factory=dict)


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


class FileOut(BaseModel):
    path: str
    size: int
    sha256: str


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


class AliasIn(_In):
    version: int = Field(ge=1)


class AliasOut(BaseModel):
    alias: str
    version: int


# --------------------------------------------------------------------------------------------
# Forget requests and jobs
# --------------------------------------------------------------------------------------------


class ForgetRequestCreate(_In):
    items: list[Item] = Field(min_length=1, description='{"question", "answer"} or {"text"}')
    method: str = Field(default="alkn", description="alkn | task_vector | grad_ascent | "
                                                    "grad_diff | npo | npo_gd")
    params: dict[str, Any] = Field(default_factory=dict)
    base_version: int | None = Field(default=None, ge=1,
                                     description="default: the newest ready version")


class ProgressOut(_Out):
    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    fraction: float | None = None


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


class JobOut(_Out):
    id: str
    model: str | None
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


class JobEventOut(_Out):
    at: UtcDatetime
    stage: str
    message: str
    data: dict[str, Any]


RequestStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]

_PROBLEM_CONTENT = {
    "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for error statuses (all problem documents)."""
    text = {400: "malformed JSON", 401: "missing or invalid API key",
            404: "unknown (or another tenant's) model, version, request or job",
            409: "the current state does not allow it", 413: "body too large",
            416: "range not satisfiable", 422: "validation failed (`errors` lists why)"}
    return {s: {"model": Problem, "description": text.get(s, "error"),
                "content": _PROBLEM_CONTENT} for s in statuses}
