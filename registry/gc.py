"""Garbage collection of artifact keys no version points to.

A worker that dies between uploading a new version's files and committing its row leaves
bytes under a key nothing references (never a visible half version). They, and staging
directories left by a crash, are deleted once older than a grace period that no running
job can still be inside.
"""

from __future__ import annotations

import logging
import time

from sqlalchemy import select

from .db import session_scope
from .models import Model, Version
from .store import ArtifactStore

log = logging.getLogger("registry.gc")

GRACE_SECONDS = 24 * 3600.0


def collect_orphans(db_url: str, store: ArtifactStore,
                    older_than: float = GRACE_SECONDS) -> list[str]:
    """Delete unreferenced keys (and stale staging dirs) older than `older_than` seconds;
    returns the keys deleted."""
    with session_scope(db_url) as session:
        model_ids = list(session.scalars(select(Model.id)))
        referenced: set[str] = set()
        for key in session.scalars(select(Version.storage_key)):
            referenced.update((key, key + "-state"))
    cutoff = time.time() - older_than
    deleted = []
    for prefix in [*model_ids, ".tmp"]:
        for key, mtime in store.list_keys(prefix):
            if key not in referenced and mtime < cutoff:
                store.delete(key)
                deleted.append(key)
    if deleted:
        log.info("deleted %d unreferenced artifact key(s)", len(deleted))
    return deleted
