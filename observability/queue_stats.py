"""The queue numbers /metrics reads from the database at scrape time (three small reads)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import func, select

from registry.db import read_connection
from registry.models import REQUEST_STATUSES, ForgetRequest, Job, Outbox


@dataclass
class QueueStats:
    jobs: dict[str, int] = field(default_factory=dict)  # status -> count
    queued_requests: int = 0
    unpublished_outbox: int = 0
    outbox_lag_s: float = 0.0  # age of the oldest unpublished outbox row


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)  # SQLite drops the zone


def queue_stats(db_url: str) -> QueueStats:
    """Three small reads: jobs by status, queued requests, the unpublished outbox (indexed
    on published_at)."""
    with read_connection(db_url) as conn:
        jobs = dict.fromkeys(REQUEST_STATUSES, 0)
        for status, n in conn.execute(select(Job.status, func.count()).group_by(Job.status)):
            jobs[status] = int(n)
        queued = conn.scalar(select(func.count()).select_from(ForgetRequest)
                             .where(ForgetRequest.status == "queued")) or 0
        unpublished, oldest = conn.execute(
            select(func.count(), func.min(Outbox.created_at))
            .where(Outbox.published_at.is_(None))).one()
    if isinstance(oldest, str):  # SQLite's min() of a DATETIME column is its text
        oldest = datetime.fromisoformat(oldest)
    lag = (datetime.now(UTC) - _aware(oldest)).total_seconds() if oldest else 0.0
    return QueueStats(jobs, int(queued), int(unpublished or 0), max(0.0, lag))
