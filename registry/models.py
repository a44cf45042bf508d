"""ORM models (SQLAlchemy 2). The same schema runs on PostgreSQL and SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Status values are part of the HTTP contract (docs/api.md).
VERSION_STATUSES = ("pending", "ready", "failed", "revoked")
REQUEST_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Directories this tenant may register models from (`alkn keys create --source-root`);
    # None: ALKN_MODEL_SOURCE_ROOTS applies (registry/source_roots.py).
    source_roots: Mapped[list[Any] | None] = mapped_column(JSON)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the key
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to tell keys apart
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Model(Base):
    """A registered model: one lineage of versions."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    qa_template: Mapped[str] = mapped_column(Text)
    default_params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    retain_set: Mapped[list[Any]] = mapped_column(default=list)
    holdout_set: Mapped[list[Any]] = mapped_column(default=list)
    eval_sets: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Sample sizes of the model's evaluation (None: EVAL_MAX_ITEMS / EVAL_DETAIL_ITEMS).
    eval_max_items: Mapped[int | None] = mapped_column(Integer)
    eval_detail_items: Mapped[int | None] = mapped_column(Integer)
    # GPU memory its jobs need (ALKN_QUEUE_ROUTES picks the worker queue); None: any worker.
    min_gpu_memory_gb: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Lineage lease: the worker that runs this model's jobs holds it (one job at a time).
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Version(Base):
    __tablename__ = "versions"
    __table_args__ = (UniqueConstraint("model_id", "number"),
                      UniqueConstraint("model_id", "job_id"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    parent_version: Mapped[int | None] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(String(36))
    forget_request_ids: Mapped[list[Any]] = mapped_column(default=list)
    method: Mapped[str | None] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    files: Mapped[list[Any]] = mapped_column(default=list)  # [{"path", "size", "sha256"}]
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    storage_key: Mapped[str] = mapped_column(String(256))  # where its bytes live in the store
    has_state: Mapped[bool] = mapped_column(Boolean, default=False)  # ALKN state stored
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The quality gate's verdict (worker/quality.py); None for root versions.
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Per-item scores of its last evaluation (alkn_core.eval_sets.ItemScores): the next job's
    # "before" reads them. Deferred: only the worker's job build needs them.
    item_scores: Mapped[dict[str, Any] | None] = mapped_column(JSON, deferred=True)


class Alias(Base):
    __tablename__ = "aliases"
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(Integer)


class ForgetRequest(Base):
    __tablename__ = "forget_requests"
    __table_args__ = (
        Index("ix_requests_model_status", "model_id", "status", "created_at"),
        # The retention sweep's query: finished requests whose items are still stored.
        Index("ix_requests_purge", "finished_at", postgresql_where=text("items_purged_at IS NULL"),
              sqlite_where=text("items_purged_at IS NULL")),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # as submitted
    base_version: Mapped[int | None] = mapped_column(Integer)  # as submitted (None: newest)
    result_version: Mapped[int | None] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(String(36), index=True)
    item_count: Mapped[int] = mapped_column(Integer)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    seq: Mapped[int] = mapped_column(BigInteger, default=0)  # submission order on a lineage
    # ALKN_FORGET_DATA_RETENTION after it finished, its ForgetItems row is deleted and the
    # HMAC of each item's canonical JSON is kept here instead (registry/retention.py).
    item_hashes: Mapped[list[Any] | None] = mapped_column(JSON)
    items_purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The items live in a table of their own (ForgetItems): loaded only when asked for.
    item_row: Mapped[ForgetItems | None] = relationship(
        lazy="select", cascade="all, delete-orphan", passive_deletes=True)

    @property
    def items(self) -> list[Any]:
        """The request's items; [] once purged."""
        return list(self.item_row.items) if self.item_row is not None else []

    @items.setter
    def items(self, value: list[Any]) -> None:
        if self.item_row is None:
            self.item_row = ForgetItems(items=list(value))
        else:
            self.item_row.items = list(value)


class ForgetItems(Base):
    """A forget request's items: the only place the service stores forget text. In a table of
    their own so that the purge can rewrite it (registry/erasure.py), which it could not do
    to forget_requests (every poll and status change writes there)."""

    __tablename__ = "forget_items"
    request_id: Mapped[str] = mapped_column(
        ForeignKey("forget_requests.id", ondelete="CASCADE"), primary_key=True)
    items: Mapped[list[Any]] = mapped_column(default=list)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), index=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id"), index=True)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    # "unlearn" (from forget requests; makes a version) or "evaluate" (a full evaluation of
    # base_version on demand; makes none).
    kind: Mapped[str] = mapped_column(String(16), default="unlearn", server_default="unlearn")
    method: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)  # resolved, with defaults
    forget_request_ids: Mapped[list[Any]] = mapped_column(default=list)
    base_version: Mapped[int] = mapped_column(Integer)
    result_version: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    timings: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Last sign of life of the worker running it: progress writes, and lease renewals while it
    # loads or saves (no steps there). ALKN_JOB_HEARTBEAT_TIMEOUT without one: presumed hung.
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The quality gate's verdict on the version it made (the version's `quality`, copied).
    quality: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class JobEvent(Base):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_seq", "job_id", "seq", unique=True),)
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    # The event's number within its job (1, 2, ...): the id the API shows; `id` is one
    # sequence over every tenant's jobs and stays internal.
    seq: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stage: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Outbox(Base):
    """Messages to publish to the broker, written in the same transaction as their cause."""

    __tablename__ = "outbox"
    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    task: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class IdempotencyRecord(Base):
    """The first answer to a POST with an Idempotency-Key, replayed for the same body, until
    ALKN_IDEMPOTENCY_TTL after `created_at` (then the sweep deletes it). Holds the HMAC of
    the request body and the response, never the body."""

    __tablename__ = "idempotency_keys"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    route: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256 (registry/hashing)
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DeploymentSecret(Base):
    """Secrets of the deployment made once and shared by all its processes: `hash` keys the
    HMACs of registry/hashing.py when ALKN_HASH_SECRET is not set."""

    __tablename__ = "deployment_secrets"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
