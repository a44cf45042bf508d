"""A small cache for hot reads (request status, API key lookups) that is never stale by more
than a change notification's delivery time.

Entries are trusted only while the change feed is live; every notification drops its key.
A read that raced with a change must not be cached: callers take a `token()` before reading
the database and `put` with it, and the value is kept only if no change arrived in between
(a change committed before the read is in the read; one committed after it is either
notified before the put, which then refuses, or after it, which then drops the entry).
Without a live feed (SQLite, or PostgreSQL while the listener reconnects) nothing is cached.

`load` is the async way in: concurrent misses of one key share a single read, so an entry
that expires (or is dropped) under 64 polling clients costs one database round trip, not
64 queued behind each other in the thread pool (that queue was the status route's p99).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from functools import partial
from typing import Any

from fastapi.concurrency import run_in_threadpool


class ReadCache:
    def __init__(self, max_entries: int = 10_000, max_age_s: float = 60.0) -> None:
        self._max_entries = max_entries
        self._max_age_s = max_age_s  # a bound even if a notification were ever lost
        self._entries: OrderedDict[str, tuple[Any, float]] = OrderedDict()
        self._seq = 0
        self._live = False
        self._lock = threading.Lock()
        self._flights: dict[Hashable, asyncio.Future[Any]] = {}

    @property
    def live(self) -> bool:
        return self._live

    def get(self, key: str) -> Any | None:
        if not self._live:
            return None
        entry = self._entries.get(key)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    async def load(self, key: str, read: Callable[[], Any], flight: Hashable = None,
                   fresh: Callable[[Any], bool] = lambda _: True) -> Any:
        """The cached value of `key` if `fresh(value)`, else `read()` (blocking, run in a
        thread) shared with every caller of the same `flight` (default: the key) that
        misses meanwhile; its value is cached unless None. `read`'s exception reaches every
        caller of the flight."""
        hit = self.get(key)
        if hit is not None and fresh(hit):
            return hit
        flight = key if flight is None else flight
        pending = self._flights.get(flight)
        if pending is None or pending.get_loop() is not asyncio.get_running_loop():
            pending = asyncio.ensure_future(self._fill(key, read))
            self._flights[flight] = pending
            pending.add_done_callback(partial(self._landed, flight))
        # shield: a caller that goes away does not cancel the read the others wait for
        return await asyncio.shield(pending)

    def _landed(self, flight: Hashable, done: asyncio.Future[Any]) -> None:
        if self._flights.get(flight) is done:
            del self._flights[flight]

    async def _fill(self, key: str, read: Callable[[], Any]) -> Any:
        token = self.token()
        value = await run_in_threadpool(read)
        if value is not None:
            self.put(key, value, token)
        return value

    def token(self) -> int:
        return self._seq

    def put(self, key: str, value: Any, token: int) -> None:
        with self._lock:
            if not self._live or token != self._seq:
                return
            self._entries[key] = (value, time.monotonic() + self._max_age_s)
            self._entries.move_to_end(key)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)

    def invalidate(self, key: str) -> None:
        with self._lock:
            self._seq += 1
            self._entries.pop(key, None)

    def set_live(self, live: bool) -> None:
        """The feed came up (start empty: changes were missed) or went away (trust nothing)."""
        with self._lock:
            self._seq += 1
            self._entries.clear()
            self._live = live
