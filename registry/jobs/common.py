"""What the jobs modules share: the attempt and merge bounds, progress constants, the write
transaction, job errors, events, and settling requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from ..db import session_scope
from ..models import ForgetRequest, Job, JobEvent, Version, utcnow

# A job that killed its worker this many times is failed instead of being run again.
MAX_ATTEMPTS = 3


# Upper bound on the requests merged into one job (keeps one run's forget set reasonable).
MAX_MERGE = 64


QUEUED_PROGRESS: dict[str, Any] = {"stage": "queued", "step": 0, "total_steps": 0,
                                   "fraction": 0.0}


DONE_PROGRESS: dict[str, Any] = {"stage": "done", "step": 1, "total_steps": 1, "fraction": 1.0}


@contextmanager
def write_tx(url: str) -> Iterator[Session]:
    """A transaction that will write. On SQLite it takes the write lock up front
    (BEGIN IMMEDIATE): a WAL read transaction that later writes fails at once when another
    writer committed in between, instead of waiting for the busy timeout."""
    with session_scope(url) as session:
        if session.get_bind().dialect.name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE"))
        yield session


def _lease_expiry(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


@dataclass
class JobError:
    type: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


def _fail_requests(s: Session, requests: Sequence[ForgetRequest], error: JobError) -> None:
    now = utcnow()
    for r in requests:
        r.status, r.error, r.finished_at = "failed", error.as_dict(), now


def _event(s: Session, job_id: str, stage: str, message: str,
           data: dict[str, Any] | None = None) -> None:
    # Numbered within the job: the job's row lock (usually held already) orders the
    # writers of one job's events, and the max is read after it.
    s.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    seq = (s.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id)) or 0) + 1
    s.add(JobEvent(job_id=job_id, seq=seq, stage=stage, message=message, data=data or {}))


def _mark_succeeded(s: Session, job: Job, version: Version,
                    request_metrics: Mapping[str, Any] | None = None) -> None:
    now = utcnow()
    done = dict(DONE_PROGRESS)
    job.status, job.result_version, job.finished_at, job.progress = \
        "succeeded", version.number, now, done
    job.error = None
    for r in s.scalars(select(ForgetRequest).where(
            ForgetRequest.id.in_(job.forget_request_ids))):
        if r.status in ("succeeded", "failed", "cancelled"):
            continue
        r.status, r.result_version, r.finished_at, r.progress = \
            "succeeded", version.number, now, done
        if request_metrics is not None:
            r.metrics = request_metrics.get(r.id, job.metrics)
    _event(s, job.id, "done", f"version {version.number} published",
           {"version": version.number})


def jsonable(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (PostgreSQL's JSON refuses NaN),
    unknown objects their string."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars, without importing them
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)
