"""What the service keeps, and for how long.

Forget data is personal data: a finished request keeps its items only for
ALKN_FORGET_DATA_RETENTION, then they are replaced by their HMACs (registry/hashing.py) and
erased from the database files (registry/erasure.py). What stays is enough to prove what was
processed (the operator, who holds the secret, can hash an item and find it) and nothing
that reveals it. Once purged, later jobs no longer measure that task's forget set in their
continual evaluation (`task/v<N>`): nothing is left to measure it on.

The items are stored in `forget_items` only: no other row holds forget text (job rows hold
request ids, parameters and aggregate metrics; events hold stages and numbers; outbox rows a
model id; idempotency records the HMAC of the body and the response, which has no items;
error messages name an item by its index, never by its text).

Idempotency records are kept for ALKN_IDEMPOTENCY_TTL after they were written.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select

from .db import session_scope
from .erasure import erase_deleted, erase_pending, note_deletion
from .hashing import keyed_hash
from .models import FINISHED, ForgetItems, ForgetRequest, IdempotencyRecord, utcnow


def item_hash(secret: bytes, item: Any) -> str:
    """HMAC-SHA256 hex of the item's canonical JSON (see registry/hashing.py)."""
    return keyed_hash(secret, item)


def purge_forget_items(url: str, retention_s: float, secret: bytes,
                       limit: int = 500) -> list[str]:
    """Purge the items of up to `limit` requests that finished more than `retention_s` ago
    (oldest first), then erase them from the database files; returns their ids. Rows locked
    by another sweeper are skipped."""
    now = utcnow()
    with session_scope(url) as s:
        rows = s.scalars(
            select(ForgetRequest)
            .where(ForgetRequest.items_purged_at.is_(None), ForgetRequest.status.in_(FINISHED),
                   ForgetRequest.finished_at < now - timedelta(seconds=retention_s))
            .order_by(ForgetRequest.finished_at).limit(limit)
            .with_for_update(skip_locked=True)).all()
        ids = [r.id for r in rows]
        stored = dict(s.execute(select(ForgetItems.request_id, ForgetItems.items)
                                .where(ForgetItems.request_id.in_(ids))).all()) \
            if ids else {}
        for r in rows:
            r.item_hashes = [item_hash(secret, item) for item in stored.get(r.id) or []]
            r.items_purged_at = now
        xid = 0
        if ids:
            s.execute(delete(ForgetItems).where(ForgetItems.request_id.in_(ids)))
            xid = note_deletion(s)
    if ids or erase_pending(url):
        erase_deleted(url, xid)
    return ids


def expire_idempotency_records(url: str, ttl_s: float) -> int:
    """Delete the idempotency records written more than `ttl_s` ago; returns how many."""
    with session_scope(url) as s:
        result = s.execute(delete(IdempotencyRecord).where(
            IdempotencyRecord.created_at < utcnow() - timedelta(seconds=ttl_s)))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
