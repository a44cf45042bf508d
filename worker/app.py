"""The Celery app: `celery -A worker.app worker -Q gpu` (one worker, concurrency 1, per GPU).

Each worker runs the outbox dispatcher (a thread started when the worker is ready, stopped at
shutdown), so committed outbox rows reach the broker without any other process.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery, signals

from registry.settings import Settings, get_settings

from .dispatcher import Dispatcher

log = logging.getLogger(__name__)


def _transport_options(broker_url: str) -> dict[str, Any]:
    if broker_url.startswith(("sqla+sqlite", "sqlalchemy+sqlite")):
        # Worker, dispatcher and API share one SQLite file: wait for its lock, don't fail.
        return {"connect_args": {"timeout": 30}}
    if broker_url.startswith(("redis://", "rediss://")):
        # Fail fast on an unreachable host; the dispatcher retries on its own schedule.
        return {"socket_connect_timeout": 5}
    return {}


def make_app(settings: Settings) -> Celery:
    broker = settings.resolved_broker_url
    if broker.startswith(("sqla+sqlite:///", "sqlalchemy+sqlite:///")):
        # SQLite creates the file, not its directory ($ALKN_HOME on a first start).
        Path(broker.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    celery = Celery("alkn", broker=broker, include=["worker.tasks"])
    celery.conf.update(
        task_default_queue=settings.queue,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_backend=None,
        task_ignore_result=True,
        # A job is acknowledged only when it ended; a worker that dies mid-job leaves the
        # message to be delivered again (the lineage lease makes a second delivery harmless).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # One job at a time per worker: a job takes the whole GPU (run one worker per GPU;
        # --concurrency overrides).
        worker_concurrency=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options=_transport_options(broker),
        # Keep an hours-long job running through a broker blip: its ack may fail, and the
        # redelivered message then finds the job done.
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return celery


settings = get_settings()
app = make_app(settings)
_dispatcher: Dispatcher | None = None


@signals.worker_ready.connect
def _start_dispatcher(sender: Any = None, **_: Any) -> None:
    global _dispatcher
    if _dispatcher is None:
        _dispatcher = Dispatcher(app, settings)
        _dispatcher.start()


@signals.worker_shutdown.connect
def _stop_dispatcher(sender: Any = None, **_: Any) -> None:
    global _dispatcher
    if _dispatcher is not None:
        _dispatcher.stop()
        _dispatcher = None


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A prefork child inherits the parent's pooled database connections: drop them without
    # closing (the parent's dispatcher still uses its own).
    from registry.db import get_engine

    get_engine(settings.resolved_database_url).dispose(close=False)
