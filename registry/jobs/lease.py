"""The lineage lease: one worker runs a model's jobs at a time, in order; it yields its turn
to another tenant's lineage served less recently.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from ..db import session_scope
from ..models import ForgetRequest, Job, Model, utcnow
from ..outbox import enqueue_lineage
from .common import (
    _lease_expiry,
)


def take_lease(url: str, model_id: str, owner: str, seconds: float) -> bool:
    """Take (or re-take) the lineage lease atomically; False when another owner holds it."""
    now = utcnow()
    with session_scope(url) as s:
        res = s.execute(
            update(Model)
            .where(Model.id == model_id,
                   or_(Model.lease_until.is_(None), Model.lease_until < now,
                       Model.lease_owner == owner))
            .values(lease_owner=owner, lease_until=now + timedelta(seconds=seconds))
        )
        return res.rowcount == 1  # type: ignore[attr-defined]


def renew_lease(url: str, model_id: str, owner: str, seconds: float,
                session: Session | None = None, heartbeat_job: str | None = None) -> bool:
    """Extend a lease we hold; False when it is no longer ours (it expired and was taken, or
    the reaper took it back). `heartbeat_job`: also a heartbeat of that job."""
    stmt = (update(Model).where(Model.id == model_id, Model.lease_owner == owner)
            .values(lease_until=_lease_expiry(seconds)))
    if session is not None:
        return session.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
    with session_scope(url) as s:
        ours = s.execute(stmt).rowcount == 1  # type: ignore[attr-defined]
        if ours and heartbeat_job is not None:
            s.execute(update(Job).where(Job.id == heartbeat_job, Job.status == "running")
                      .values(heartbeat_at=utcnow()))
        return ours


def release_lease(url: str, model_id: str, owner: str) -> None:
    with session_scope(url) as s:
        s.execute(update(Model).where(Model.id == model_id, Model.lease_owner == owner)
                  .values(lease_owner=None, lease_until=None))


def yield_turn(url: str, model_id: str, owner: str) -> bool:
    """Fair scheduling between tenants: True (and the lineage is enqueued again, behind the
    others, in the same transaction) when this lineage has queued requests and another
    tenant has queued requests on a lineage nobody holds and was served less recently than
    this lineage's tenant (its last job started earlier, or it never had one). The caller
    then releases the lease and returns. The lineage yielded to is enqueued as well.

    A tenant that was never served never yields; of two tenants, the one served less
    recently goes first, so two workers never yield to each other in turn."""
    now = utcnow()
    with session_scope(url) as s:
        tenant = s.scalar(select(Model.tenant_id).where(Model.id == model_id,
                                                        Model.lease_owner == owner))
        ours = s.scalar(select(func.max(Job.started_at)).where(Job.tenant_id == tenant)) \
            if tenant is not None else None
        if ours is None or s.scalar(select(ForgetRequest.id).where(
                ForgetRequest.model_id == model_id, ForgetRequest.status == "queued")
                .limit(1)) is None:
            return False
        waiting = (select(ForgetRequest.tenant_id, ForgetRequest.model_id)
                   .join(Model, Model.id == ForgetRequest.model_id)
                   .where(ForgetRequest.status == "queued", ForgetRequest.tenant_id != tenant,
                          or_(Model.lease_until.is_(None), Model.lease_until < now))
                   .distinct().subquery())
        served = (select(Job.tenant_id, func.max(Job.started_at).label("last"))
                  .where(Job.tenant_id.in_(select(waiting.c.tenant_id)))
                  .group_by(Job.tenant_id).subquery())
        due = s.scalar(select(waiting.c.model_id)
                       .outerjoin(served, served.c.tenant_id == waiting.c.tenant_id)
                       .where(or_(served.c.last.is_(None), served.c.last < ours))
                       .order_by(served.c.last.is_not(None), served.c.last).limit(1))
        if due is None:
            return False
        # The lineage we yield to is woken too, ahead of ours: should its own message be
        # lost, we would otherwise yield to it until the stranded sweep re-enqueued it.
        enqueue_lineage(s, due)
        enqueue_lineage(s, model_id)
        return True


def has_queued(url: str, model_id: str) -> bool:
    with session_scope(url) as s:
        return s.scalar(select(ForgetRequest.id).where(
            ForgetRequest.model_id == model_id, ForgetRequest.status == "queued").limit(1)
        ) is not None or s.scalar(select(Job.id).where(
            Job.model_id == model_id, Job.status == "queued").limit(1)) is not None
