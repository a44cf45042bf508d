"""Lineages nobody works on: the stranded sweep enqueues them again, the reaper takes back
jobs whose worker went silent.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import and_, or_, select, update

from ..db import session_scope
from ..models import ForgetRequest, Job, Model, Outbox, utcnow
from ..outbox import RUN_LINEAGE_TASK, enqueue_lineage
from .common import (
    _event,
    write_tx,
)


def stranded_lineages(url: str, *, queued_for: float = 30.0) -> list[str]:
    """Models with work (a request queued for over `queued_for` s, or a running job) and no
    live lease: nobody is working on them, so they need a task."""
    now = utcnow()
    with session_scope(url) as s:
        waiting = (select(ForgetRequest.model_id)
                   .where(ForgetRequest.status == "queued",
                          ForgetRequest.created_at < now - timedelta(seconds=queued_for)))
        running = select(Job.model_id).where(
            or_(Job.status == "running",
                and_(Job.status == "queued",
                     Job.created_at < now - timedelta(seconds=queued_for))))
        return list(s.scalars(
            select(Model.id)
            .where(or_(Model.id.in_(waiting), Model.id.in_(running)),
                   or_(Model.lease_until.is_(None), Model.lease_until < now))
            .order_by(Model.id)))


def sweep_stranded(url: str, *, queued_for: float = 30.0, quiet_for: float = 120.0) -> list[str]:
    """Enqueue every stranded lineage that has had no run_lineage outbox row in the last
    `quiet_for` s (a task may just be waiting behind busy workers); returns those enqueued."""
    stranded = stranded_lineages(url, queued_for=queued_for)
    if not stranded:
        return []
    since = utcnow() - timedelta(seconds=quiet_for)
    with write_tx(url) as s:
        recent = {(p or {}).get("model_id") for p in s.scalars(
            select(Outbox.payload).where(Outbox.task == RUN_LINEAGE_TASK,
                                         Outbox.created_at > since))}
        todo = [m for m in stranded if m not in recent]
        for model_id in todo:
            enqueue_lineage(s, model_id)
    return todo


def reap_silent_jobs(url: str, timeout: float) -> list[str]:
    """Running jobs with no heartbeat for `timeout` s: their worker hung (its lease keeper
    thread may still renew the lease, so the stranded sweep never sees them) or died. The
    lineage lease is taken back (the hung worker stops at its next step, LeaseLost), the
    job's clock restarted (one reap per timeout) and the lineage enqueued: the next worker
    resumes the job as a new attempt. Returns the jobs reaped."""
    now = utcnow()
    with write_tx(url) as s:
        silent = s.scalars(select(Job).where(
            Job.status == "running", Job.heartbeat_at < now - timedelta(seconds=timeout))
            .order_by(Job.id).with_for_update(skip_locked=True)).all()
        for job in silent:
            s.execute(update(Model).where(Model.id == job.model_id)
                      .values(lease_owner=None, lease_until=None))
            job.heartbeat_at = now
            _event(s, job.id, "lost", f"no heartbeat for {timeout:g} s: the worker is presumed "
                                      "hung or dead; the job is queued again")
            enqueue_lineage(s, job.model_id)
        return [job.id for job in silent]
