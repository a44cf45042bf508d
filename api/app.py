"""The FastAPI application: `uvicorn api.app:app`, or `create_app(settings)` in tests.

Importing this module touches neither the database nor the store (and never torch): the
lifespan opens the store and makes ALKN_BOOTSTRAP_API_KEY valid. Migrations are the
deploy's (or `alkn serve`'s) job, not the web tier's.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.exc import IntegrityError, OperationalError

from config.settings import Settings, get_settings
from observability.logs import configure_logging
from registry.change_feed import ChangeFeed
from registry.db import session_scope
from registry.keys import ensure_bootstrap_key
from registry.store import open_store

from . import dashboard, errors, metrics
from .read_cache import ReadCache
from .revocation import RevocationWatch
from .routes import aliases, downloads, health, hub, jobs, models, requests, versions

log = logging.getLogger("api")

BOOTSTRAP_WAIT_S = 30.0

DESCRIPTION = """Continual machine unlearning for language models (ALKN).

Every `/v1` route needs `Authorization: Bearer <api key>`. Errors are RFC 9457 problem
documents (`application/problem+json`)."""


def _bootstrap(db_url: str, key: str, wait_s: float = BOOTSTRAP_WAIT_S) -> None:
    """Make the bootstrap key valid, waiting a little for a database that is still starting
    (docker-compose starts everything at once)."""
    deadline = time.monotonic() + wait_s
    races = 0
    while True:
        try:
            with session_scope(db_url) as session:
                ensure_bootstrap_key(session, key)
            return
        except IntegrityError:
            # Several API workers start at once: the loser of the unique-key race retries.
            races += 1
            if races >= 3:
                raise
        except OperationalError as e:
            if time.monotonic() >= deadline:
                raise
            log.warning("database not reachable yet (%s); retrying", type(e.orig).__name__)
            time.sleep(1.0)


def _freeze_startup_heap() -> None:
    """Move what the process holds after start-up (modules, routes, schemas: ~110k objects)
    out of the collector's reach. A full collection over it takes ~50 ms and pauses every
    request in flight; afterwards full collections scan only what was allocated since.
    Once per process: tests build many apps in one."""
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_format, settings.log_level)  # served, not imported
        app.state.store = await run_in_threadpool(open_store, settings.resolved_artifact_root)
        if settings.bootstrap_api_key:
            await run_in_threadpool(_bootstrap, app.state.db_url, settings.bootstrap_api_key)
            log.info("bootstrap API key is valid for tenant 'default'")
        feed = None
        if app.state.db_url.startswith("postgresql"):  # SQLite has no NOTIFY: no caching
            cache: ReadCache = app.state.read_cache
            feed = ChangeFeed(app.state.db_url, cache.invalidate, cache.set_live).start()
        _freeze_startup_heap()
        try:
            yield
        finally:
            if feed is not None:
                await run_in_threadpool(feed.stop)

    app = FastAPI(title="ALKN-as-a-service", version="1.0.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.db_url = settings.resolved_database_url
    app.state.store = None  # opened by the lifespan (or lazily by api.deps.get_store)
    app.state.read_cache = ReadCache()  # live only while the lifespan's change feed is
    app.state.revocations = RevocationWatch(app.state.db_url)
    errors.install(app, settings.max_json_bytes, settings.max_upload_bytes,
                   versions.is_upload_path)
    for module in (health, models, versions, downloads, aliases, requests, jobs, hub):
        app.include_router(module.router)
    app.include_router(downloads.links_router)
    dashboard.install(app)
    metrics.install(app, app.state.db_url)  # its middleware last: the outermost
    return app


app = create_app()
