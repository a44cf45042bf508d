"""The Celery app: `celery -A worker.app worker -Q gpu` (one worker, concurrency 1, per GPU).

Each worker runs the outbox dispatcher (a thread started when the worker is ready, stopped at
shutdown), so committed outbox rows reach the broker without any other process. With
ALKN_WORKER_METRICS_PORT it also serves Prometheus /metrics (worker/metrics.py); with
ALKN_LOG_FORMAT=json its log lines are JSON objects carrying the job id.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from celery import Celery, signals

from config.settings import Settings, get_settings
from observability.logs import make_formatter, use_formatter

from . import metrics
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
# Before the tasks module (and so prometheus_client) is imported: see worker/metrics.py.
_metrics_dir = metrics.enable_multiprocess() if settings.worker_metrics_port else None
app = make_app(settings)
_dispatcher: Dispatcher | None = None
_metrics_server: Any = None


@signals.worker_init.connect
def _warm_up(**_: Any) -> None:
    # Before the pool starts (prefork forks its children after this): model code imported
    # once here, so no job's child spends its time limit importing (worker/job_process.py).
    from .job_process import warm_imports

    warm_imports()


@signals.worker_ready.connect
def _start_dispatcher(sender: Any = None, **_: Any) -> None:
    global _dispatcher, _metrics_server
    if _dispatcher is None:
        _dispatcher = Dispatcher(app, settings)
        _dispatcher.start()
    if settings.worker_metrics_port and _metrics_server is None:
        _metrics_server = metrics.serve(settings.worker_metrics_port)


@signals.worker_shutdown.connect
def _stop_dispatcher(sender: Any = None, **_: Any) -> None:
    global _dispatcher, _metrics_server
    if _dispatcher is not None:
        _dispatcher.stop()
        _dispatcher = None
    if _metrics_server is not None:
        _metrics_server.shutdown()
        _metrics_server = None
        metrics.remove_dir(_metrics_dir)


@signals.worker_process_shutdown.connect
def _child_exited(pid: int | None = None, **_: Any) -> None:
    if pid is not None:
        metrics.child_exited(pid)


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _log_format(logger: Any = None, **_: Any) -> None:
    # Text keeps Celery's own format (process names show which pool child ran a job).
    if settings.log_format == "json" and logger is not None:
        use_formatter(make_formatter("json"), logger)


@signals.worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A prefork child inherits the parent's pooled database connections: drop them without
    # closing (the parent's dispatcher still uses its own).
    from registry.db import get_engine

    get_engine(settings.resolved_database_url).dispose(close=False)
