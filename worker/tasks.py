"""Celery tasks. `worker.tasks.run_lineage` is the only one: it runs a model lineage's
queued jobs (the name is written into outbox rows by the API: keep it)."""

from __future__ import annotations

from config.settings import get_settings
from registry.outbox import RUN_LINEAGE_TASK

from .app import app
from .job_control import new_worker_id
from .runner import run_lineage_once


@app.task(name=RUN_LINEAGE_TASK, ignore_result=True)
def run_lineage(model_id: str) -> int:
    """Idempotent: without the lineage lease it returns at once (the holder runs what is
    queued); a job already published is never published again."""
    return run_lineage_once(get_settings(), model_id, new_worker_id())
