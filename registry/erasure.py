"""After a purge, the purged forget text must be gone from the database's files, not just
unreachable through SQL. `erase_deleted(url, xid)` runs right after the purge commits.

A DELETE (or an UPDATE that empties a column) only marks the old bytes free: SQLite leaves
them in the page and in the write-ahead log, PostgreSQL in the dead tuple (and its TOAST
chunks) until the space is reused; a plain VACUUM makes the space reusable without
overwriting it (the issue found purged text with `pageinspect` after VACUUM).

- SQLite: every connection sets `PRAGMA secure_delete=ON` (registry/db.py; some builds,
  Debian's among them, have it on by default, others not), so a delete overwrites the
  deleted cells, and the pages it frees, with zeros. The WAL still holds the
  frames written when the items were inserted: here `PRAGMA wal_checkpoint(TRUNCATE)`
  copies the zeroed pages into the database file and truncates the WAL to zero bytes. A
  reader holding an older snapshot makes the checkpoint give up (busy): it is tried again
  after the next sweep.
- PostgreSQL: forget items live in a table of their own, `forget_items` (a row per request,
  inserted once, never updated), and the purge DELETEs the rows and then runs
  `VACUUM FULL forget_items`, which writes the live rows to new files (heap, TOAST and
  index) and truncates the old ones when it commits. VACUUM cannot run in a transaction:
  it runs on an autocommit connection, after the purge's commit. VACUUM FULL copies a
  deleted row that some transaction's snapshot may still see (tested: an open REPEATABLE
  READ transaction from before the purge makes it carry the text into the new file), so it
  runs only once no snapshot in this database (or of a walsender), replication slot or
  prepared transaction is older than the purge (`_horizon_passed`); until then it is
  tried again after each sweep.

Why this and not crypto-shredding (items encrypted with a per-request key that the purge
deletes): the key would be a row in the same database, and a deleted key row stays in its
dead tuple exactly like the text did, so the key table would need the same rewrite; and the
key is written to the WAL beside the ciphertext, so archives and replicas would hold both
either way. It would add a cipher and key handling for nothing more than a smaller table
to rewrite. The cost of the rewrite: VACUUM FULL holds an ACCESS EXCLUSIVE lock on
`forget_items` while it copies the items of the requests still within retention;
submissions and job starts wait for it. It takes the lock only if it gets it within
`LOCK_TIMEOUT` (else it is tried again after the next sweep, the rows already deleted), and
it runs once per sweep that purged something, not per request.

What this does not reach (SECURITY.md): PostgreSQL's WAL segments still hold the INSERT
until they are recycled, and WAL archives, replicas, backups and dumps keep what they copied.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

from .db import get_engine

log = logging.getLogger(__name__)

ITEMS_TABLE = "forget_items"
LOCK_TIMEOUT = "2s"

# Databases whose erasure is still to do (a purge not yet erased: busy, lock timeout, an
# old snapshot, an error), with the newest purge's transaction id (PostgreSQL; 0 on SQLite).
# A dispatcher marks its database pending when it starts (erase_on_start): what a crash
# between a purge and its erasure left behind is erased by its first sweep.
_pending: dict[str, int] = {}


def note_deletion(session: Session) -> int:
    """Call in the transaction that deletes forget items: its transaction id (PostgreSQL),
    which erase_deleted needs to know when no snapshot can see the deleted rows; 0 on
    SQLite."""
    if session.get_bind().dialect.name != "postgresql":
        return 0
    return int(session.execute(text("SELECT pg_current_xact_id()::text")).scalar_one())


def erase_on_start(url: str) -> None:
    _pending.setdefault(url, 0)


def erase_pending(url: str) -> bool:
    """True when a purge of `url` was not erased yet."""
    return url in _pending


def erase_deleted(url: str, xid: int = 0) -> bool:
    """Overwrite what the purge (transaction `xid`, committed) and earlier unerased ones left
    in the database files; True when done, else it stays pending."""
    xid = max(xid, _pending.get(url, 0))
    try:
        done = _checkpoint_sqlite(url) if url.startswith("sqlite") else _vacuum_items(url, xid)
    except Exception:  # the database is down or busy: the next sweep tries again
        log.exception("could not erase purged forget items from the database files")
        done = False
    if done:
        _pending.pop(url, None)
    else:
        _pending[url] = xid
    return done


def _checkpoint_sqlite(url: str) -> bool:
    with get_engine(url).connect() as conn:
        busy, _log_frames, _done = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    if busy:
        log.warning("WAL checkpoint after a purge was blocked by a reader; retried next sweep")
    return not busy


# Is anything that holds back the removal of dead rows as old as transaction :xid (or
# older)? Any transaction still running from then, in any database: the oldest running xid
# of the whole cluster bounds VACUUM FULL's horizon (our own snapshot's xmin, which counts
# prepared transactions too; a writer in another database, or one idle in a READ COMMITTED
# transaction here with no backend_xmin, made it copy a purged row into the new file);
# snapshots of backends of this database, and of none (walsenders with
# hot_standby_feedback): a read-only snapshot in another database does not hold back this
# database's tables, and waiting for one (another service's, a parallel test's) only
# delayed the erasure; replication slots. Ages compare 32-bit xids across wraparound.
# Another role's backend_xmin shows only to a role with pg_read_all_stats (SECURITY.md).
_HELD_BACK = text("""
    SELECT pg_snapshot_xmin(pg_current_snapshot()) <= CAST(:xid8 AS xid8)
        OR EXISTS (SELECT 1 FROM pg_stat_activity
                   WHERE pid <> pg_backend_pid() AND backend_xmin IS NOT NULL
                     AND (datname IS NULL OR datname = current_database())
                     AND age(backend_xmin) >= age(CAST(:xid AS xid)))
        OR EXISTS (SELECT 1 FROM pg_replication_slots
                   WHERE xmin IS NOT NULL AND age(xmin) >= age(CAST(:xid AS xid)))
        OR EXISTS (SELECT 1 FROM pg_prepared_xacts
                   WHERE age(transaction) >= age(CAST(:xid AS xid)))""")


def _horizon_passed(conn: Connection, xid: int) -> bool:
    """No snapshot can still see rows deleted by (committed) transaction `xid`."""
    if xid == 0:
        return True
    return not conn.execute(_HELD_BACK, {"xid": str(xid % 2**32),
                                         "xid8": str(xid)}).scalar_one()


def _vacuum_items(url: str, xid: int) -> bool:
    with get_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        if not _horizon_passed(conn, xid):
            log.info("a snapshot older than the purge is open; erasure retried next sweep")
            return False
        conn.execute(text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
        try:
            conn.execute(text(f"VACUUM FULL {ITEMS_TABLE}"))
        finally:
            conn.execute(text("RESET lock_timeout"))  # the connection goes back to the pool
    return True
