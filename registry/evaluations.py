"""Full evaluations of a version on demand: a job of its own (`kind` "evaluate") that
measures every item of the model's retain, holdout and general sets and of every forget
request on the version's lineage, and makes no version.

`enqueue_evaluation` (the API) adds the queued job and the outbox row in the caller's
transaction (functions flush, the caller commits); the lineage's worker claims it
(`registry.jobs.next_job`) before any forget request; `finish_evaluation` (the worker)
records the numbers on the job and the per-item scores on the version, so later jobs on it
measure none of those items again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import Conflict, Invalid
from .forget_requests import (
    DEFAULT_METHOD,
    check_queue_room_locked,
    lock_tenant,
    resolve_params,
)
from .jobs.common import (
    DONE_PROGRESS,
    QUEUED_PROGRESS,
    _event,
    jsonable,
    write_tx,
)
from .models import Job, Model, Version, new_id, utcnow
from .outbox import enqueue_lineage
from .versions import require_ready

KIND = "evaluate"


def enqueue_evaluation(session: Session, model: Model, version: Version,
                       max_queued: int | None = None) -> tuple[Job, bool]:
    """A queued full evaluation of `version` (ready, else Conflict), or the one already
    queued or running for it; (job, created). `max_queued`: the tenant's limit of
    unfinished work (forget_requests.check_queue_room; QueueFull past it)."""
    require_ready(version)
    # First: two calls at once would both find no pending job and queue two.
    lock_tenant(session, model.tenant_id)
    pending = session.scalar(select(Job).where(
        Job.model_id == model.id, Job.kind == KIND, Job.base_version == version.number,
        Job.status.in_(("queued", "running"))).limit(1))
    if pending is not None:
        return pending, False
    if max_queued is not None:
        check_queue_room_locked(session, model.tenant_id, max_queued)
    try:
        # How items are encoded: the model's defaults for its default method.
        params = resolve_params(model, DEFAULT_METHOD, None)
    except Invalid as exc:  # stored defaults an older release accepted
        raise Conflict(f"the model's default params are not valid: {exc}") from None
    job = Job(id=new_id(), tenant_id=model.tenant_id, model_id=model.id, kind=KIND,
              status="queued", method=DEFAULT_METHOD, params=params, forget_request_ids=[],
              base_version=version.number, progress=dict(QUEUED_PROGRESS), attempts=0,
              created_at=utcnow())
    session.add(job)
    session.flush()
    _event(session, job.id, "queued", f"full evaluation of version {version.number} queued",
           {"base_version": version.number})
    enqueue_lineage(session, model.id)
    return job, True


def finish_evaluation(url: str, job_id: str, *, evaluation: Mapping[str, Any],
                      timings: Mapping[str, Any], item_scores: Mapping[str, Any]) -> str:
    """Record a finished evaluation job: its metrics {"evaluation", "full": true}, and the
    version's per-item scores. Returns the job's status (a job no longer running, e.g.
    cancelled meanwhile, is left as it is)."""
    with write_tx(url) as s:
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            raise ValueError(f"no job {job_id}")
        if job.status != "running":
            return job.status
        if job.cancel_requested:
            job.status, job.finished_at = "cancelled", utcnow()
            _event(s, job.id, "done", "cancelled")
            return job.status
        version = s.scalar(select(Version).where(Version.model_id == job.model_id,
                                                 Version.number == job.base_version))
        if version is not None:
            version.item_scores = jsonable(item_scores)
        job.metrics = jsonable({"evaluation": dict(evaluation), "full": True})
        job.timings = jsonable(timings)
        job.status, job.finished_at = "succeeded", utcnow()
        job.progress = dict(DONE_PROGRESS)
        job.error = None
        _event(s, job.id, "done", f"version {job.base_version} evaluated",
               {"version": job.base_version})
        return job.status


def latest_full_evaluation(session: Session, model_id: str, number: int
                           ) -> dict[str, Any] | None:
    """The numbers of the newest succeeded full evaluation of a version, if any."""
    job = session.scalar(select(Job).where(
        Job.model_id == model_id, Job.kind == KIND, Job.base_version == number,
        Job.status == "succeeded").order_by(Job.finished_at.desc()).limit(1))
    found = (job.metrics or {}).get("evaluation") if job is not None else None
    return dict(found) if isinstance(found, dict) else None
