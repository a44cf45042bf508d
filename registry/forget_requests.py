"""The forget-request domain: params (`resolve_params`, the one merge and validation), submission
(the request row and, through the outbox, the lineage enqueued), cancellation, readers.

Torch-free. Like registry.catalog, functions flush and the caller commits, so a submission,
its outbox row and an idempotency record land in one transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, Row, Select, bindparam, func, select, update
from sqlalchemy.orm import Session, defer

from alkn_core.items import validate_items
from alkn_core.methods import METHOD_DEFAULTS, NEEDS_RETAIN, method_params
from alkn_core.quoting import quoted

from .catalog import lock_model
from .errors import Conflict, Invalid, NotFound, RegistryError
from .models import (
    FINISHED,
    REQUEST_STATUSES,
    ForgetRequest,
    Job,
    Model,
    Tenant,
    utcnow,
)
from .outbox import enqueue_lineage
from .versions import get_version, latest_ready, require_ready

DEFAULT_METHOD = "alkn"
# Retry-After of a 429: about what a queued job takes to make room.
QUEUE_FULL_RETRY_AFTER_S = 60


class QueueFull(RegistryError):
    """The tenant already has ALKN_MAX_QUEUED_PER_TENANT unfinished requests."""

    status = 429
    headers = {"Retry-After": str(QUEUE_FULL_RETRY_AFTER_S)}


def lock_tenant(session: Session, tenant_id: str) -> None:
    """The tenant's row, locked FOR NO KEY UPDATE (check_queue_room says why not FOR
    UPDATE) until the transaction ends: one tenant's submissions are counted in turn."""
    session.execute(select(Tenant.id).where(Tenant.id == tenant_id)
                    .with_for_update(key_share=True))


def check_queue_room(session: Session, tenant_id: str, limit: int) -> None:
    """QueueFull when one more request or job would take the tenant's unfinished (queued or
    running) work past `limit`: its forget requests, and its jobs of no request (full
    evaluations, registrations), which a tenant could otherwise queue without bound ahead
    of other tenants' lineages. The tenant row is locked first, so concurrent submissions
    of one tenant (on any of its models) are counted one after the other.

    FOR NO KEY UPDATE, not FOR UPDATE: a worker holding a model's lock inserts rows that
    reference the tenant (a foreign-key check takes FOR KEY SHARE on its row); FOR UPDATE
    here would block that while we wait for the same model's lock: a deadlock."""
    lock_tenant(session, tenant_id)
    check_queue_room_locked(session, tenant_id, limit)


def check_queue_room_locked(session: Session, tenant_id: str, limit: int) -> None:
    """check_queue_room for a caller that already holds lock_tenant's lock."""
    requests = session.scalar(select(func.count()).select_from(ForgetRequest).where(
        ForgetRequest.tenant_id == tenant_id, ForgetRequest.status.not_in(FINISHED))) or 0
    jobs = session.scalar(select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.status.not_in(FINISHED),
        Job.kind != "unlearn")) or 0  # jobs.kind is NOT NULL (migration 0007)
    if requests + jobs >= limit:
        what = f"{requests} unfinished forget requests" + (
            f" and {jobs} unfinished evaluation or registration jobs" if jobs else "")
        raise QueueFull(f"this tenant already has {what}, the most it may have queued "
                        f"(limit {limit}); retry once some have finished")


def is_id(value: str) -> bool:
    """A well-formed UUID: anything else names no row and is not sent to the database (a NUL
    byte there would be a database error, not a 404)."""
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def resolve_params(model: Model, method: str, params: Mapping[str, Any] | None
                   ) -> dict[str, Any]:
    """The full parameter set a job of this request runs with, validated (Invalid naming the
    field): method defaults < the model's defaults (the keys this method knows: a model may
    carry defaults for several methods) < the model's qa_template < the request's params.
    The one merge: submission checks with it, the job is built with it."""
    if method not in METHOD_DEFAULTS:
        raise Invalid(f"unknown method {quoted(method)}; one of {', '.join(METHOD_DEFAULTS)}",
                      loc=["body", "method"])
    known = METHOD_DEFAULTS[method]
    merged = {k: v for k, v in (model.default_params or {}).items() if k in known}
    merged["qa_template"] = model.qa_template
    merged.update(params or {})
    try:
        return method_params(method, merged)
    except ValueError as e:
        raise Invalid(str(e), loc=["body", "params"]) from None


def submit_forget_request(session: Session, tenant_id: str, model: Model, items: Any,
                          method: str = DEFAULT_METHOD, params: dict[str, Any] | None = None,
                          base_version: int | None = None, *,
                          max_queued: int | None = None) -> ForgetRequest:
    """Validate and queue a request: its row and the outbox message that wakes the worker
    are added to the session together (commit both, or neither). `max_queued`: the
    tenant's limit of unfinished requests (QueueFull past it)."""
    if model.tenant_id != tenant_id:
        raise NotFound(f"model {model.name!r} not found")
    resolve_params(model, method, params)
    try:
        checked = validate_items(items, "items")
    except ValueError as e:
        raise Invalid(str(e), loc=["body", "items"]) from None
    if not checked:
        raise Invalid("items must hold at least one item", loc=["body", "items"])
    if method in NEEDS_RETAIN and not model.retain_set:
        raise Invalid(f"method {method!r} needs a retain set and model {model.name!r} has "
                      "none; register the model with retain_set or pick another method",
                      loc=["body", "method"])

    if max_queued is not None:
        check_queue_room(session, tenant_id, max_queued)
    lock_model(session, model.id)  # seq and the base check see every earlier submission
    if base_version is not None:
        require_ready(get_version(session, model, base_version))
    elif latest_ready(session, model) is None:
        raise Conflict(f"model {model.name!r} has no ready version to unlearn from")
    seq = (session.scalar(select(func.max(ForgetRequest.seq))
                          .where(ForgetRequest.model_id == model.id)) or 0) + 1
    req = ForgetRequest(tenant_id=tenant_id, model_id=model.id, status="queued", method=method,
                        params=dict(params or {}), base_version=base_version,
                        items=list(checked), item_count=len(checked),
                        progress={"stage": "queued"}, cancel_requested=False, seq=seq,
                        created_at=utcnow())
    session.add(req)
    enqueue_lineage(session, model.id)
    session.flush()
    return req


def get_request(session: Session, tenant_id: str, request_id: str) -> ForgetRequest:
    if not is_id(request_id):
        raise NotFound(f"forget request {quoted(request_id)} not found")
    req = session.scalar(select(ForgetRequest).where(ForgetRequest.id == request_id,
                                                     ForgetRequest.tenant_id == tenant_id))
    if req is None:
        raise NotFound(f"forget request {quoted(request_id)} not found")
    return req


_VIEW_COLUMNS = (ForgetRequest.id, ForgetRequest.status, ForgetRequest.method,
                 ForgetRequest.params, ForgetRequest.base_version, ForgetRequest.result_version,
                 ForgetRequest.job_id, ForgetRequest.item_count, ForgetRequest.progress,
                 ForgetRequest.metrics, ForgetRequest.error, ForgetRequest.cancel_requested,
                 ForgetRequest.created_at, ForgetRequest.started_at, ForgetRequest.finished_at,
                 ForgetRequest.item_hashes, ForgetRequest.items_purged_at)
_VIEW = (select(*_VIEW_COLUMNS, Model.name.label("model_name"),
                Job.base_version.label("job_base"))
         .join(Model, Model.id == ForgetRequest.model_id)
         .outerjoin(Job, Job.id == ForgetRequest.job_id)
         .where(ForgetRequest.id == bindparam("request_id"),
                ForgetRequest.tenant_id == bindparam("tenant_id")))


def request_view(conn: Connection | Session, tenant_id: str, request_id: str) -> Row[Any]:
    """GET /v1/forget-requests/{id} in one statement and without ORM objects (clients poll
    it): the request's columns but its items, its model's name (`model_name`), its job's base
    version (`job_base`)."""
    if not is_id(request_id):
        raise NotFound(f"forget request {quoted(request_id)} not found")
    row = conn.execute(_VIEW, {"request_id": request_id, "tenant_id": tenant_id}).first()
    if row is None:
        raise NotFound(f"forget request {quoted(request_id)} not found")
    return row


def _reload(session: Session, request_id: str) -> ForgetRequest:
    return session.scalars(select(ForgetRequest).where(ForgetRequest.id == request_id)
                           .execution_options(populate_existing=True)).one()


def cancel_request(session: Session, tenant_id: str, request_id: str) -> ForgetRequest:
    """A queued request outside any job is cancelled at once; one that a job serves gets
    cancel_requested (and its job too once every request of that job asked to stop: the
    worker then stops at its next step, otherwise it drops just this one); a finished
    request is a Conflict.

    Locks are taken job first, then request, the order the worker uses, and with
    conditional UPDATEs, so a worker claiming the request concurrently is never overwritten
    and never deadlocks with us.
    """
    req = get_request(session, tenant_id, request_id)
    for _ in range(3):
        if req.status in FINISHED:
            raise Conflict(f"forget request {req.id} has already finished ({req.status})")
        if req.job_id is None:
            done = session.execute(
                update(ForgetRequest)
                .where(ForgetRequest.id == req.id, ForgetRequest.status == "queued",
                       ForgetRequest.job_id.is_(None))
                .values(status="cancelled", finished_at=utcnow(),
                        progress={"stage": "cancelled"})
                .execution_options(synchronize_session=False))
            if done.rowcount == 1:  # type: ignore[attr-defined]
                return _reload(session, req.id)
            req = _reload(session, req.id)  # a worker took it meanwhile: look again
            continue
        job = session.scalars(select(Job).where(Job.id == req.job_id).with_for_update()
                              .execution_options(populate_existing=True)).one_or_none()
        flagged = session.execute(
            update(ForgetRequest)
            .where(ForgetRequest.id == req.id, ForgetRequest.status.not_in(FINISHED))
            .values(cancel_requested=True).execution_options(synchronize_session=False))
        if flagged.rowcount == 0:  # type: ignore[attr-defined]
            req = _reload(session, req.id)
            continue
        if job is not None and job.status not in FINISHED:
            still_wanted = session.scalar(
                select(func.count()).select_from(ForgetRequest)
                .where(ForgetRequest.job_id == job.id, ForgetRequest.status.not_in(FINISHED),
                       ForgetRequest.cancel_requested.is_(False)))
            if not still_wanted:
                job.cancel_requested = True
                session.flush()
        return _reload(session, req.id)
    raise Conflict(f"forget request {req.id} changed state repeatedly; retry the cancel")


def requests_query(tenant_id: str, model_id: str | None = None,
                   status: str | None = None) -> Select[ForgetRequest]:
    # The items (possibly thousands per request; another table, never loaded here), or their
    # hashes, are not part of a listing.
    q = select(ForgetRequest).options(defer(ForgetRequest.item_hashes)).where(
        ForgetRequest.tenant_id == tenant_id)
    if model_id is not None:
        q = q.where(ForgetRequest.model_id == model_id)
    if status is not None:
        if status not in REQUEST_STATUSES:
            raise Invalid(f"status must be one of {', '.join(REQUEST_STATUSES)}",
                          loc=["query", "status"])
        q = q.where(ForgetRequest.status == status)
    return q
