"""The outbox: rows that ask a worker to run a lineage, added in the transaction of whatever
caused them (a submission, an evaluation, a yielded turn, a sweep) and published to the broker
by the dispatcher once committed, so a broker outage loses nothing. Functions flush or add,
the caller commits (`prune_outbox` runs its own transaction)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.orm import Session

from .db import session_scope
from .models import Outbox, utcnow

RUN_LINEAGE_TASK = "worker.tasks.run_lineage"


def enqueue_lineage(session: Session, model_id: str) -> Outbox:
    """Add an outbox row that asks a worker to run the lineage (in the caller's
    transaction, with whatever caused it)."""
    row = Outbox(task=RUN_LINEAGE_TASK, payload={"model_id": model_id})
    session.add(row)
    return row


def prune_outbox(url: str, older_than: float = 7 * 86400.0) -> int:
    """Delete published outbox rows older than `older_than` s (the table only grows else)."""
    with session_scope(url) as s:
        res = s.execute(delete(Outbox).where(
            Outbox.published_at.is_not(None),
            Outbox.published_at < utcnow() - timedelta(seconds=older_than)))
        return int(res.rowcount or 0)  # type: ignore[attr-defined]
