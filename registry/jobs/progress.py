"""A running job's progress and events (each write renews the heartbeat; a cancel or a lost
lease is reported back).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update

from ..db import session_scope
from ..models import ForgetRequest, Job, Model, utcnow
from .common import (
    _event,
    write_tx,
)
from .lease import renew_lease


@dataclass
class ProgressAck:
    lease_ok: bool
    cancel_job: bool  # the job itself, or every one of its requests, asked to stop
    cancelled_requests: list[str] = field(default_factory=list)


def report_progress(url: str, job_id: str, progress: Mapping[str, Any], *, model_id: str,
                    owner: str, lease_seconds: float, renew: bool = True,
                    event: tuple[str, str, dict[str, Any]] | None = None) -> ProgressAck:
    """Write the job's and its running requests' progress, renew the lease (when `renew`)
    and read the cancel flags, in one short transaction. The progress of a job whose
    lease is no longer ours is not written."""
    with write_tx(url) as s:
        if renew:
            lease_ok = renew_lease(url, model_id, owner, lease_seconds, session=s)
        else:
            lease_ok = s.scalar(select(Model.lease_owner).where(Model.id == model_id)) == owner
        if not lease_ok:
            return ProgressAck(lease_ok=False, cancel_job=False)
        s.execute(update(Job).where(Job.id == job_id).values(progress=dict(progress),
                                                             heartbeat_at=utcnow()))
        s.execute(update(ForgetRequest)
                  .where(ForgetRequest.job_id == job_id, ForgetRequest.status == "running")
                  .values(progress=dict(progress)))
        if event is not None:
            _event(s, job_id, *event)
        job_cancel = bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))
        flags = s.execute(select(ForgetRequest.id, ForgetRequest.cancel_requested)
                          .where(ForgetRequest.job_id == job_id,
                                 ForgetRequest.status == "running")).all()
    cancelled = [rid for rid, flag in flags if flag]
    return ProgressAck(lease_ok=lease_ok,
                       cancel_job=job_cancel or (bool(flags) and len(cancelled) == len(flags)),
                       cancelled_requests=cancelled)


def add_event(url: str, job_id: str, stage: str, message: str = "",
              data: dict[str, Any] | None = None) -> None:
    with session_scope(url) as s:
        _event(s, job_id, stage, message, data)
