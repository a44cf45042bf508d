"""Listens for the rows' change notifications (migration 0002) in a background thread.

`ChangeFeed(url, on_change, on_live)` calls `on_change(payload)` for every notification and
`on_live(True/False)` when the listening connection comes up or goes away. While it is down,
notifications are lost, so whoever caches must stop trusting its cache (on_live(False)) and
start empty when it is back. PostgreSQL only: SQLite has no NOTIFY.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import psycopg
from sqlalchemy.engine import make_url

log = logging.getLogger("registry.change_feed")

CHANNEL = "alkn_changes"
APPLICATION_NAME = "alkn-change-feed"  # how its connection shows in pg_stat_activity
# How long one wait for notifications lasts; between waits the connection is probed, so a
# dead server is noticed within about this time even when nothing changes.
POLL_S = 2.0
# A wait is cut into slices this long, so that stop() ends it at once (an app's shutdown took
# up to POLL_S, and the tests start and stop many apps).
STOP_CHECK_S = 0.1
RETRY_S = (0.5, 1.0, 2.0, 5.0)


def libpq_dsn(url: str) -> str:
    """The SQLAlchemy URL `postgresql+psycopg://...` as a libpq connection string."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class ChangeFeed:
    def __init__(self, url: str, on_change: Callable[[str], None],
                 on_live: Callable[[bool], None]) -> None:
        self._dsn = libpq_dsn(url)
        self._on_change = on_change
        self._on_live = on_live
        self._stop = threading.Event()
        self._conn: psycopg.Connection | None = None
        self._thread = threading.Thread(target=self._run, name="alkn-change-feed", daemon=True)

    def start(self) -> ChangeFeed:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=POLL_S + 5)

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                with psycopg.connect(self._dsn, autocommit=True, connect_timeout=5,
                                     application_name=APPLICATION_NAME) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._on_live(True)
                    failures = 0
                    while not self._stop.is_set():
                        self._listen(conn, time.monotonic() + POLL_S)
                        conn.execute("SELECT 1")  # raises if the server went away
            except Exception as e:  # noqa: BLE001 - any failure means: not listening
                if not self._stop.is_set():
                    log.warning("change feed lost (%s: %s); caches are off until it is back",
                                type(e).__name__, e)
            self._on_live(False)
            self._stop.wait(RETRY_S[min(failures, len(RETRY_S) - 1)])
            failures += 1

    def _listen(self, conn: psycopg.Connection, until: float) -> None:
        """Hand over notifications until `until` (monotonic) or stop()."""
        while not self._stop.is_set() and (left := until - time.monotonic()) > 0:
            for note in conn.notifies(timeout=min(STOP_CHECK_S, left)):
                self._on_change(note.payload)
