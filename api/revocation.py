"""Downloads of a version that is revoked while they run are cut short.

A download stream asks `RevocationWatch.revoked(version_id)` between chunks. A revoke this
process served is known at once (no I/O); any other (another API process, `alkn`, a DBA)
is read from the database at most once per `interval_s` per version and process: every
download of a version shares that read, so a thousand slow readers cost one query a
second, not one per chunk. `guard` wraps a download's chunks: when the version is revoked it
raises `ResponseCut`, and the server closes the connection short of its Content-Length, so
no client mistakes the partial body for the file.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from registry.db import session_scope
from registry.models import Version

from .errors import ResponseCut

CHECK_INTERVAL_S = 1.0
_MAX_ENTRIES = 10_000


class RevocationWatch:
    def __init__(self, db_url: str, interval_s: float = CHECK_INTERVAL_S) -> None:
        self._db_url = db_url
        self._interval_s = interval_s
        self._checked: dict[str, tuple[float, bool]] = {}  # version id: (monotonic, revoked)
        self._revoked_here: set[str] = set()
        self._flights: dict[str, asyncio.Future[bool]] = {}

    def mark_revoked(self, version_id: str) -> None:
        """This process revoked the version: its downloads stop at their next chunk."""
        if len(self._revoked_here) >= _MAX_ENTRIES:  # a bound; the database still knows
            self._revoked_here.clear()
        self._revoked_here.add(version_id)

    def _read(self, version_id: str) -> bool:
        with session_scope(self._db_url) as session:
            status = session.scalar(select(Version.status).where(Version.id == version_id))
        return status != "ready"

    async def revoked(self, version_id: str) -> bool:
        """Whether the version is no longer ready: at most `interval_s` old. A database
        error leaves the answer as it was (the download goes on; the bytes are gone anyway
        once the revoke has deleted them)."""
        if version_id in self._revoked_here:
            return True
        now = time.monotonic()
        seen = self._checked.get(version_id)
        if seen is not None and now - seen[0] < self._interval_s:
            return seen[1]
        flight = self._flights.get(version_id)
        if flight is None:
            flight = asyncio.ensure_future(run_in_threadpool(self._read, version_id))
            self._flights[version_id] = flight
            flight.add_done_callback(lambda _: self._flights.pop(version_id, None))
        try:
            revoked = await asyncio.shield(flight)
        except Exception:  # noqa: BLE001 - see the docstring
            return seen[1] if seen is not None else False
        if len(self._checked) >= _MAX_ENTRIES:
            self._checked.clear()
        self._checked[version_id] = (time.monotonic(), revoked)
        return revoked

    async def guard(self, chunks: AsyncIterator[bytes | memoryview], version_id: str
                    ) -> AsyncIterator[bytes | memoryview]:
        """`chunks`, cut (ResponseCut) once the version is revoked; checked before each
        chunk, the database at most every `interval_s`."""
        async with aclosing(chunks):  # closes the file (or S3 body) when cut
            async for chunk in chunks:
                if version_id in self._revoked_here or await self.revoked(version_id):
                    raise ResponseCut(f"version {version_id} was revoked during a download")
                yield chunk


def revocations(request: Request) -> RevocationWatch:
    """The app's watch (api/app.py starts it)."""
    watch: RevocationWatch = request.app.state.revocations
    return watch
