"""Forget data is personal data: a finished request keeps its items only for
ALKN_FORGET_DATA_RETENTION, then they are replaced by their hashes.

What stays is enough to prove what was processed (a client holding an item can hash it and
find it) and nothing that reveals it. Once purged, later jobs no longer measure that task's
forget set in their continual evaluation (`task/v<N>`): nothing is left to measure it on.
"""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from .db import session_scope
from .models import FINISHED, ForgetRequest, utcnow


def item_hash(item: Any) -> str:
    """sha256 hex of the item's canonical JSON: keys sorted, no whitespace, UTF-8 (not
    ASCII-escaped), e.g. '{"answer":"...","question":"..."}'."""
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def purge_forget_items(url: str, retention_s: float, limit: int = 500) -> list[str]:
    """Purge the items of up to `limit` requests that finished more than `retention_s` ago
    (oldest first); returns their ids. Rows locked by another sweeper are skipped."""
    now = utcnow()
    with session_scope(url) as s:
        rows = s.scalars(
            select(ForgetRequest)
            .where(ForgetRequest.items_purged_at.is_(None), ForgetRequest.status.in_(FINISHED),
                   ForgetRequest.finished_at < now - timedelta(seconds=retention_s))
            .order_by(ForgetRequest.finished_at).limit(limit)
            .with_for_update(skip_locked=True)).all()
        for r in rows:
            r.item_hashes = [item_hash(item) for item in r.items or []]
            r.items = []
            r.items_purged_at = now
        return [r.id for r in rows]
