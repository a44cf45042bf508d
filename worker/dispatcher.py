"""The outbox dispatcher: publishes committed outbox rows to the broker, and a sweeper that
re-enqueues lineages nobody works on, requeues jobs whose worker went silent
(ALKN_JOB_HEARTBEAT_TIMEOUT), purges forget items past ALKN_FORGET_DATA_RETENTION and
deletes idempotency records past ALKN_IDEMPOTENCY_TTL.

Rows are marked published only after the broker accepted the message; while the broker is
down they stay unpublished (attempts and last_error record why) and go out once it is back.
A message may go out twice (a crash between publish and commit, two dispatchers on SQLite):
run_lineage is idempotent, so that costs one no-op task.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from kombu.exceptions import OperationalError as KombuOperationalError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError as SQLAlchemyOperationalError

from config.settings import Settings, get_settings
from registry import jobs, outbox
from registry.db import session_scope
from registry.erasure import erase_on_start
from registry.gc import collect_orphans
from registry.hashing import hash_secret
from registry.models import Model, Outbox, utcnow
from registry.retention import expire_idempotency_records, purge_forget_items
from registry.store import open_store

from .queue_routing import parse_routes, queue_for

log = logging.getLogger(__name__)

# What an unreachable broker raises (kombu wraps transport errors once its retries are spent;
# the SQLAlchemy transport's own errors may come through as they are).
BROKER_ERRORS: tuple[type[BaseException], ...] = (
    KombuOperationalError, SQLAlchemyOperationalError, ConnectionError, OSError, TimeoutError)

# Keep a publish attempt short while the broker is down: the next round retries anyway.
PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0.0, "interval_step": 0.2,
                        "interval_max": 0.5}


def _model_id(row: Outbox) -> str | None:
    payload = row.payload
    return str(payload.get("model_id")) if isinstance(payload, dict) else None


def _gpu_needs(s: Any, rows: Any) -> dict[str | None, int | None]:
    """min_gpu_memory_gb of the models the rows' lineages belong to."""
    ids = {i for i in map(_model_id, rows) if i is not None}
    return dict(s.execute(select(Model.id, Model.min_gpu_memory_gb)
                          .where(Model.id.in_(ids))).all()) if ids else {}


def publish_pending(db_url: str, celery_app: Any, limit: int = 100,
                    queue: str | None = None, queue_routes: str | None = None) -> int:
    """Publish up to `limit` unpublished outbox rows in id order, each to its model's queue
    (worker/queue_routing.py); returns how many went out. Stops at the first broker error
    (the rest would fail the same way)."""
    return _publish_round(db_url, celery_app, limit, queue, queue_routes)[0]


def _publish_round(db_url: str, celery_app: Any, limit: int = 100, queue: str | None = None,
                   queue_routes: str | None = None) -> tuple[int, bool]:
    """(rows published, whether the broker refused one)."""
    settings = get_settings() if queue is None or queue_routes is None else None
    queue = queue or (settings.queue if settings else "")
    routes = parse_routes(queue_routes if queue_routes is not None
                          else settings.queue_routes if settings else "")
    published, refused = 0, False
    with session_scope(db_url) as s:
        # SKIP LOCKED: concurrent dispatchers take disjoint rows instead of waiting
        # (PostgreSQL; SQLite ignores it and serialises writers anyway).
        rows = s.scalars(select(Outbox).where(Outbox.published_at.is_(None))
                         .order_by(Outbox.id).limit(limit)
                         .with_for_update(skip_locked=True)).all()
        needs = _gpu_needs(s, rows) if routes else {}
        for row in rows:
            row.attempts += 1
            target = queue_for(needs.get(_model_id(row)), routes, queue)
            try:
                celery_app.send_task(row.task, kwargs=dict(row.payload or {}), queue=target,
                                     retry=True, retry_policy=PUBLISH_RETRY_POLICY)
            except BROKER_ERRORS as exc:  # the broker is unreachable: keep the row for later
                row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                log.warning("outbox %d not published (broker): %s", row.id, row.last_error)
                refused = True
                break
            except Exception as exc:
                # This row cannot be sent (a payload that is not JSON): record it and go on,
                # so one bad row never holds back the ones behind it.
                row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
                log.error("outbox %d cannot be published: %s", row.id, row.last_error)
                continue
            row.published_at = utcnow()
            row.last_error = None
            published += 1
    return published, refused


class Dispatcher:
    """A daemon thread: publish the outbox every `interval` s; every `sweep_interval` s
    (default ALKN_SWEEP_INTERVAL) requeue silent jobs, re-enqueue stranded lineages (queued
    work, no live lease), purge old forget items and prune old outbox rows."""

    def __init__(self, celery_app: Any, settings: Settings | None = None, *,
                 interval: float | None = None, sweep_interval: float | None = None,
                 stranded_after: float = 30.0) -> None:
        self.app = celery_app
        self.settings = settings or get_settings()
        self.interval = interval if interval is not None else self.settings.dispatch_interval
        self.sweep_interval = sweep_interval if sweep_interval is not None \
            else self.settings.sweep_interval
        self.stranded_after = stranded_after
        self.gc_interval = 3600.0
        self._next_gc = time.monotonic() + 60.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        # Whatever a crash between a purge and its erasure (or a migration) left behind.
        erase_on_start(self.settings.resolved_database_url)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alkn-dispatcher", daemon=True)
        self._thread.start()
        log.info("dispatcher started (queue %s, every %.2f s)", self.settings.queue,
                 self.interval)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def sweep(self) -> list[str]:
        url = self.settings.resolved_database_url
        reaped = jobs.reap_silent_jobs(url, self.settings.job_heartbeat_timeout)
        if reaped:
            log.warning("requeued job(s) with no heartbeat for %g s: %s",
                        self.settings.job_heartbeat_timeout, ", ".join(reaped))
        enqueued = jobs.sweep_stranded(
            url, queued_for=self.stranded_after,
            quiet_for=max(self.sweep_interval * 2, self.settings.lease_seconds))
        if enqueued:
            log.info("re-enqueued stranded lineage(s): %s", ", ".join(enqueued))
        purged = purge_forget_items(url, self.settings.forget_data_retention_s,
                                    hash_secret(url, self.settings.hash_secret))
        if purged:
            log.info("purged the items of %d finished request(s) to hashes", len(purged))
        expire_idempotency_records(url, self.settings.idempotency_ttl_s)
        outbox.prune_outbox(url)
        if time.monotonic() >= self._next_gc:  # bytes a dead worker uploaded but never committed
            self._next_gc = time.monotonic() + self.gc_interval
            collect_orphans(url, open_store(self.settings.resolved_artifact_root))
        return enqueued

    def _run(self) -> None:
        url = self.settings.resolved_database_url
        next_sweep = time.monotonic() + min(self.sweep_interval, 5.0)
        failures = 0
        while not self._stop.is_set():
            wait = self.interval
            try:
                n, refused = _publish_round(url, self.app, queue=self.settings.queue,
                                            queue_routes=self.settings.queue_routes)
                if time.monotonic() >= next_sweep:
                    next_sweep = time.monotonic() + self.sweep_interval
                    self.sweep()
                failures = failures + 1 if refused else 0
                if n >= 100 and not refused:
                    wait = 0.0  # a backlog: keep going
            except Exception:  # the database is down: log and keep trying, never die
                failures += 1
                log.exception("dispatcher round failed")
            if failures:  # back off while the broker or the database is down
                wait = min(10.0, self.interval * 2 ** min(failures, 6))
            self._stop.wait(wait)
