"""Typed results mirroring the shapes of docs/api.md.

Every model accepts fields it does not know (the contract lets the server add fields) and
keeps them: `model.model_extra` / `model.model_dump()` still show them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T")

FINISHED = frozenset({"succeeded", "failed", "cancelled"})


class ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class Page(ApiModel, Generic[T]):
    """One page of a list route; pass `next_cursor` back as `cursor=` for the next one."""

    items: list[T]
    next_cursor: str | None = None


class Health(ApiModel):
    status: str


class Readiness(ApiModel):
    """`GET /readyz`: 200 and 503 both parse into this (503 is an answer, not a failure)."""

    ready: bool
    checks: dict[str, str] = Field(default_factory=dict)
    detail: str | None = None


class Model(ApiModel):
    name: str
    id: str | None = None
    description: str = ""
    created_at: datetime | None = None
    latest_version: int | None = None
    aliases: dict[str, int] = Field(default_factory=dict)
    qa_template: str | None = None
    default_params: dict[str, Any] = Field(default_factory=dict)
    min_gpu_memory_gb: int | None = None


class FileEntry(ApiModel):
    path: str
    size: int
    sha256: str


class Version(ApiModel):
    version: int
    status: str
    model: str | None = None
    parent_version: int | None = None
    job_id: str | None = None
    forget_request_ids: list[str] = Field(default_factory=list)
    method: str | None = None
    size_bytes: int = 0
    files: list[FileEntry] = Field(default_factory=list)
    metrics: dict[str, Any] | None = None
    created_at: datetime | None = None
    quality: dict[str, Any] | None = None  # the quality gate's verdict ("passed", ...)


class Alias(ApiModel):
    alias: str
    version: int


class Progress(ApiModel):
    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    fraction: float | None = None
    phase: str | None = None  # while evaluating: "before" / "after" / "full"
    label: str | None = None  # the stage as shown: "evaluating (after)"
    eta_seconds: float | None = None  # estimated time left


class ErrorInfo(ApiModel):
    type: str
    message: str


class ForgetRequest(ApiModel):
    id: str
    status: str
    model: str | None = None
    method: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    base_version: int | None = None
    result_version: int | None = None
    job_id: str | None = None
    item_count: int = 0
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, Any] | None = None
    error: ErrorInfo | None = None
    cancel_requested: bool = False
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobMetrics(ApiModel):
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None  # an evaluation job's numbers


class Job(ApiModel):
    id: str
    status: str
    kind: str = "unlearn"  # "evaluate": a full evaluation of base_version; "register"
    model: str | None = None
    method: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    forget_request_ids: list[str] = Field(default_factory=list)
    base_version: int | None = None
    result_version: int | None = None
    progress: Progress = Field(default_factory=Progress)
    metrics: JobMetrics = Field(default_factory=JobMetrics)
    timings: dict[str, Any] = Field(default_factory=dict)
    error: ErrorInfo | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    quality: dict[str, Any] | None = None  # the quality gate's verdict ("passed", ...)


class JobEvent(ApiModel):
    at: datetime
    stage: str
    message: str = ""
    data: dict[str, Any] = Field(default_factory=dict)
