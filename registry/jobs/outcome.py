"""A job's end: the version published with the requests' outcome in one transaction, or the
job failed or cancelled.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import session_scope
from ..models import ForgetRequest, Job, Model, Version, utcnow
from .common import (
    QUEUED_PROGRESS,
    JobError,
    _event,
    _fail_requests,
    _mark_succeeded,
    jsonable,
    write_tx,
)


def next_version_number(url: str, model_id: str) -> int:
    """A guess of the number the next version gets (used only to name its storage key)."""
    with session_scope(url) as s:
        return int(s.scalar(select(func.coalesce(func.max(Version.number), 0))
                            .where(Version.model_id == model_id)) or 0) + 1


def version_of_job(url: str, model_id: str, job_id: str) -> int | None:
    with session_scope(url) as s:
        return s.scalar(select(Version.number).where(Version.model_id == model_id,
                                                     Version.job_id == job_id))


@dataclass
class PublishOutcome:
    version: int | None  # the job's version (new or found), None when not published
    created: bool  # False: our files are referenced by no row and may be deleted
    status: str  # the job's status afterwards


def publish_version(url: str, job_id: str, *, storage_key: str, files: Sequence[Mapping[str, Any]],
                    has_state: bool, metrics: Mapping[str, Any],
                    request_metrics: Mapping[str, Any], timings: Mapping[str, Any],
                    evaluation: Mapping[str, Any] | None = None,
                    quality: Mapping[str, Any] | None = None,
                    item_scores: Mapping[str, Any] | None = None,
                    base_scores: Mapping[str, Any] | None = None) -> PublishOutcome:
    """One transaction: the new ready version plus job and requests succeeded; with a
    `quality` block that did not pass, also the job's `quality_gate_failed` event (the
    version is published all the same: forgetting wins).

    Idempotent: when the job already has a version (a redelivered task), nothing new is
    written. A job that is no longer running, or whose cancel was requested meanwhile, is
    not published (it is cancelled in the second case).

    `item_scores`: the new version's per-item scores; `base_scores`: the base version's, stored
    on it when the job measured them (it had none under this encoding)."""
    for attempt in range(3):
        try:
            return _publish_tx(url, job_id, storage_key=storage_key, files=files,
                               has_state=has_state, metrics=metrics,
                               request_metrics=request_metrics, timings=timings,
                               evaluation=evaluation, quality=quality,
                               item_scores=item_scores, base_scores=base_scores)
        except IntegrityError:
            # A version number taken concurrently (a root upload): count again. A second
            # version for the same job cannot slip through: the retry finds the first.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _store_scores(s: Session, model_id: str, number: int, scores: Mapping[str, Any]) -> None:
    base = s.scalar(select(Version).where(Version.model_id == model_id,
                                          Version.number == number))
    if base is not None:
        base.item_scores = jsonable(scores)


def _publish_tx(url: str, job_id: str, *, storage_key: str, files: Sequence[Mapping[str, Any]],
                has_state: bool, metrics: Mapping[str, Any], request_metrics: Mapping[str, Any],
                timings: Mapping[str, Any], evaluation: Mapping[str, Any] | None,
                quality: Mapping[str, Any] | None = None,
                item_scores: Mapping[str, Any] | None = None,
                base_scores: Mapping[str, Any] | None = None) -> PublishOutcome:
    with write_tx(url) as s:
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            raise ValueError(f"no job {job_id}")
        # The model row is the lock that serialises version numbers of one lineage.
        s.scalar(select(Model.id).where(Model.id == job.model_id).with_for_update())
        existing = s.scalar(select(Version).where(Version.model_id == job.model_id,
                                                  Version.job_id == job.id))
        if existing is not None:
            if job.status == "running":
                job.quality = existing.quality
                _mark_succeeded(s, job, existing)
            return PublishOutcome(existing.number, False, job.status)
        if job.status != "running":
            return PublishOutcome(None, False, job.status)
        if job.cancel_requested or _any_request_cancelled(s, job):
            # A cancel that arrived after the last progress check still wins.
            _cancel(s, job, requeue_others=True)
            return PublishOutcome(None, False, job.status)
        number = int(s.scalar(select(func.coalesce(func.max(Version.number), 0))
                              .where(Version.model_id == job.model_id)) or 0) + 1
        version = Version(
            model_id=job.model_id, number=number, status="ready",
            parent_version=job.base_version, job_id=job.id,
            forget_request_ids=list(job.forget_request_ids), method=job.method,
            size_bytes=sum(int(f["size"]) for f in files), files=[dict(f) for f in files],
            metrics=jsonable(metrics), evaluation=jsonable(evaluation),
            storage_key=storage_key, has_state=has_state, quality=jsonable(quality),
            item_scores=jsonable(item_scores))
        s.add(version)
        if base_scores is not None:
            _store_scores(s, job.model_id, job.base_version, base_scores)
        job.metrics, job.timings = jsonable(metrics), jsonable(timings)
        job.quality = jsonable(quality)
        if quality is not None and quality.get("passed") is False:
            _event(s, job.id, "quality_gate_failed", str(quality.get("message", ""))[:2000],
                   jsonable({k: v for k, v in quality.items() if k != "kept"}))
        s.flush()
        _mark_succeeded(s, job, version, jsonable(request_metrics))
        return PublishOutcome(number, True, job.status)


def _any_request_cancelled(s: Session, job: Job) -> bool:
    return s.scalar(select(ForgetRequest.id).where(
        ForgetRequest.job_id == job.id, ForgetRequest.status == "running",
        ForgetRequest.cancel_requested.is_(True)).limit(1)) is not None


def _cancel(s: Session, job: Job, requeue_others: bool) -> None:
    now = utcnow()
    job.status, job.finished_at = "cancelled", now
    requests = s.scalars(select(ForgetRequest).where(ForgetRequest.job_id == job.id,
                                                     ForgetRequest.status == "running"))
    requeued = 0
    for r in requests:
        if job.cancel_requested or r.cancel_requested or not requeue_others:
            r.status, r.finished_at = "cancelled", now
        else:
            # Another request of the same job asked to stop: this one did not, so it goes
            # back to the queue (same seq: it stays first) and runs in the next job.
            r.status, r.job_id, r.started_at, r.progress = "queued", None, None, \
                dict(QUEUED_PROGRESS)
            requeued += 1
    _event(s, job.id, "done", "cancelled" + (f"; {requeued} request(s) queued again"
                                             if requeued else ""))


def cancel_job(url: str, job_id: str) -> None:
    """Cancel a running job: the requests that asked for it (or all, when the job itself
    was cancelled) turn cancelled; the others are queued again."""
    with write_tx(url) as s:
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is not None and job.status == "running":
            _cancel(s, job, requeue_others=True)


def fail_job(url: str, job_id: str, error: JobError) -> None:
    with write_tx(url) as s:
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status != "running":
            return
        job.status, job.error, job.finished_at = "failed", error.as_dict(), utcnow()
        _fail_requests(s, list(s.scalars(select(ForgetRequest).where(
            ForgetRequest.job_id == job_id, ForgetRequest.status == "running"))), error)
        _event(s, job_id, "done", f"failed: {error.message}", error.as_dict())
