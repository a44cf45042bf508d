"""Database side of running jobs: the lineage lease, building the next job from queued
requests, progress and events, and the final outcome (publish / fail / cancel).

Every function takes the database URL and runs its own short transaction, so a long
unlearning run never holds a transaction open. No torch here: the worker calls these.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, selectinload

from alkn_core.params import METHOD_DEFAULTS, method_params

from .db import session_scope
from .models import ForgetRequest, Job, JobEvent, Model, Outbox, Version, new_id, utcnow
from .quality import first_version_reference

RUN_LINEAGE_TASK = "worker.tasks.run_lineage"
# A job that killed its worker this many times is failed instead of being run again.
MAX_ATTEMPTS = 3
# Upper bound on the requests merged into one job (keeps one run's forget set reasonable).
MAX_MERGE = 64
QUEUED_PROGRESS: dict[str, Any] = {"stage": "queued", "step": 0, "total_steps": 0,
                                   "fraction": 0.0}
DONE_PROGRESS: dict[str, Any] = {"stage": "done", "step": 1, "total_steps": 1, "fraction": 1.0}


# --------------------------------------------------------------------------------------------
# Transactions
# --------------------------------------------------------------------------------------------


@contextmanager
def write_tx(url: str) -> Iterator[Session]:
    """A transaction that will write. On SQLite it takes the write lock up front
    (BEGIN IMMEDIATE): a WAL read transaction that later writes fails at once when another
    writer committed in between, instead of waiting for the busy timeout."""
    with session_scope(url) as session:
        if session.get_bind().dialect.name == "sqlite":
            session.execute(text("BEGIN IMMEDIATE"))
        yield session


def _lease_expiry(seconds: float) -> datetime:
    return utcnow() + timedelta(seconds=seconds)


# --------------------------------------------------------------------------------------------
# Lineage lease
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Building the next job
# --------------------------------------------------------------------------------------------


@dataclass
class JobSpec:
    """Everything a worker needs to run one job, read in the transaction that claimed it."""

    job_id: str
    model_id: str
    method: str
    params: dict[str, Any]
    base_version: int
    base_storage_key: str
    base_state: bool  # the base holds an unlearning state made by this job's method
    request_ids: list[str]
    request_items: dict[str, list[dict[str, Any]]]
    retain_set: list[dict[str, Any]]
    eval_sets: dict[str, list[dict[str, Any]]]
    attempts: int
    resumed: bool = False  # re-run of a job whose worker died
    holdout_set: list[dict[str, Any]] = field(default_factory=list)
    # The continual view: forget items of every earlier task on the base's lineage, by the
    # version that task produced ({2: [...], 3: [...]}), oldest first.
    earlier_tasks: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    # What the lineage's first version measured (registry.quality), for the quality gate;
    # None when no job has measured it yet.
    reference: dict[str, Any] | None = None
    # The evaluation's sample sizes (the model's; None: the defaults) and the base version's
    # stored per-item scores (alkn_core.eval_sets.ItemScores JSON; None when it has none).
    eval_max_items: int | None = None
    eval_detail_items: int | None = None
    base_scores: dict[str, Any] | None = None
    # "unlearn", or "evaluate": a full evaluation of the base version, no new version.
    kind: str = "unlearn"

    @property
    def forget_items(self) -> list[dict[str, Any]]:
        """The requests' items in request order; exact duplicates kept once."""
        seen: set[str] = set()
        out = []
        for rid in self.request_ids:
            for item in self.request_items[rid]:
                key = json.dumps(item, sort_keys=True)
                if key not in seen:
                    seen.add(key)
                    out.append(item)
        return out


@dataclass
class JobError:
    type: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


def resolve_request_params(model: Model, method: str, params: Mapping[str, Any] | None
                           ) -> dict[str, Any]:
    """The job parameters of a request: method defaults < model defaults < request params.
    Model defaults that the method does not know are skipped (a model may carry defaults
    for several methods); unknown request params are an error (ValueError)."""
    known = METHOD_DEFAULTS.get(method, {})
    defaults = {k: v for k, v in (model.default_params or {}).items() if k in known}
    return method_params(method, {**defaults, "qa_template": model.qa_template,
                                  **(params or {})})


def _fail_requests(s: Session, requests: Sequence[ForgetRequest], error: JobError) -> None:
    now = utcnow()
    for r in requests:
        r.status, r.error, r.finished_at = "failed", error.as_dict(), now


def _ready_version(s: Session, model_id: str, number: int | None) -> Version | None:
    # Locked: a concurrent revoke (which locks the same row) either sees this job or waits.
    q = select(Version).where(Version.model_id == model_id,
                              Version.status == "ready").with_for_update()
    if number is not None:
        return s.scalar(q.where(Version.number == number))
    return s.scalar(q.order_by(Version.number.desc()).limit(1))


def _spec(s: Session, model: Model, job: Job, base: Version, resumed: bool) -> JobSpec:
    requests = {r.id: r for r in s.scalars(
        select(ForgetRequest).options(selectinload(ForgetRequest.item_row))
        .where(ForgetRequest.id.in_(job.forget_request_ids)))}
    ids = [rid for rid in job.forget_request_ids if rid in requests]
    return JobSpec(
        job_id=job.id, model_id=model.id, method=job.method, params=dict(job.params),
        base_version=base.number, base_storage_key=base.storage_key,
        base_state=bool(base.has_state and base.method == job.method),
        request_ids=ids, request_items={rid: list(requests[rid].items) for rid in ids},
        retain_set=list(model.retain_set or []),
        eval_sets={k: list(v) for k, v in (model.eval_sets or {}).items()},
        attempts=job.attempts, resumed=resumed,
        holdout_set=list(model.holdout_set or []),
        earlier_tasks=_earlier_tasks(s, model.id, base),
        reference=first_version_reference(s, model.id, base),
        eval_max_items=model.eval_max_items, eval_detail_items=model.eval_detail_items,
        base_scores=base.item_scores, kind=job.kind or "unlearn",
    )


def _earlier_tasks(s: Session, model_id: str, base: Version) -> dict[int, list[dict[str, Any]]]:
    """Walk the base's parent links to the root; each version made by a job contributes
    the items of the requests it served."""
    versions = {v.number: v for v in s.scalars(select(Version).where(
        Version.model_id == model_id))}
    chain: list[Version] = []
    current: Version | None = base
    while current is not None and len(chain) <= len(versions):
        chain.append(current)
        current = versions.get(current.parent_version) if current.parent_version else None
    out: dict[int, list[dict[str, Any]]] = {}
    for v in reversed(chain):
        ids = list(v.forget_request_ids or [])
        if not ids:
            continue
        items = {r.id: list(r.items) for r in s.scalars(
            select(ForgetRequest).options(selectinload(ForgetRequest.item_row))
            .where(ForgetRequest.id.in_(ids)))}
        out[v.number] = [item for rid in ids for item in items.get(rid, [])]
    return out


def _event(s: Session, job_id: str, stage: str, message: str,
           data: dict[str, Any] | None = None) -> None:
    # Numbered within the job: the job's row lock (usually held already) orders the
    # writers of one job's events, and the max is read after it.
    s.execute(select(Job.id).where(Job.id == job_id).with_for_update())
    seq = (s.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id)) or 0) + 1
    s.add(JobEvent(job_id=job_id, seq=seq, stage=stage, message=message, data=data or {}))


def _mark_succeeded(s: Session, job: Job, version: Version,
                    request_metrics: Mapping[str, Any] | None = None) -> None:
    now = utcnow()
    done = dict(DONE_PROGRESS)
    job.status, job.result_version, job.finished_at, job.progress = \
        "succeeded", version.number, now, done
    job.error = None
    for r in s.scalars(select(ForgetRequest).where(
            ForgetRequest.id.in_(job.forget_request_ids))):
        if r.status in ("succeeded", "failed", "cancelled"):
            continue
        r.status, r.result_version, r.finished_at, r.progress = \
            "succeeded", version.number, now, done
        if request_metrics is not None:
            r.metrics = request_metrics.get(r.id, job.metrics)
    _event(s, job.id, "done", f"version {version.number} published",
           {"version": version.number})


_RETRY = object()  # next_job: something was settled without a job; look again


def _next_job_tx(url: str, model_id: str, max_attempts: int) -> JobSpec | None | object:
    with write_tx(url) as s:
        model = s.get(Model, model_id)
        if model is None:
            return None
        running = s.scalar(select(Job).where(Job.model_id == model_id, Job.status == "running")
                           .order_by(Job.created_at).limit(1).with_for_update())
        if running is not None:
            return _resume(s, model, running, max_attempts)
        evaluation = _claim_evaluation(s, model)
        if evaluation is not None:
            return evaluation
        return _build(s, model)


def _claim_evaluation(s: Session, model: Model) -> JobSpec | object | None:
    """The oldest queued evaluation job (`kind` "evaluate", made by
    registry.evaluations.enqueue_evaluation), now running; None when there is none."""
    job = s.scalar(select(Job).where(Job.model_id == model.id, Job.status == "queued",
                                     Job.kind == "evaluate")
                   .order_by(Job.created_at, Job.id).limit(1).with_for_update())
    if job is None:
        return None
    now = utcnow()
    base = _ready_version(s, model.id, job.base_version)
    if base is None:
        error = JobError("base_version_unavailable",
                         f"version {job.base_version} is no longer ready")
        job.status, job.error, job.finished_at = "failed", error.as_dict(), now
        _event(s, job.id, "done", error.message, error.as_dict())
        return _RETRY
    job.status, job.started_at, job.heartbeat_at, job.attempts = "running", now, now, 1
    job.progress = dict(QUEUED_PROGRESS)
    _event(s, job.id, "queued", f"full evaluation of version {base.number}",
           {"base_version": base.number})
    return _spec(s, model, job, base, resumed=False)


def _resume(s: Session, model: Model, job: Job, max_attempts: int) -> JobSpec | object:
    """A running job while we hold the lease: its worker died. Settle it or run it again."""
    done = s.scalar(select(Version).where(Version.model_id == model.id,
                                          Version.job_id == job.id))
    if done is not None:  # published, but the outcome was not recorded: record it now
        _mark_succeeded(s, job, done)
        return _RETRY
    requests = list(s.scalars(select(ForgetRequest).where(
        ForgetRequest.id.in_(job.forget_request_ids))))
    base = _ready_version(s, model.id, job.base_version)
    error = None
    if job.cancel_requested or (requests and all(r.cancel_requested for r in requests)):
        job.status, job.finished_at = "cancelled", utcnow()
        for r in requests:
            if r.status == "running":
                r.status, r.finished_at = "cancelled", utcnow()
        _event(s, job.id, "done", "cancelled while its worker was lost")
        return _RETRY
    if job.attempts >= max_attempts:
        error = JobError("worker_lost", f"the worker running this job stopped {job.attempts} "
                                        "times (out of memory or killed); not retried")
    elif base is None:
        error = JobError("base_version_unavailable",
                         f"base version {job.base_version} is no longer ready")
    if error is not None:
        job.status, job.error, job.finished_at = "failed", error.as_dict(), utcnow()
        _fail_requests(s, [r for r in requests if r.status == "running"], error)
        _event(s, job.id, "done", error.message, error.as_dict())
        return _RETRY
    assert base is not None
    job.attempts += 1
    # It starts over: progress goes back to the start of the job (requests' too).
    job.progress, job.heartbeat_at = dict(QUEUED_PROGRESS), utcnow()
    for r in requests:
        if r.status == "running":
            r.progress = dict(QUEUED_PROGRESS)
    _event(s, job.id, "retry", f"attempt {job.attempts} after worker loss: the job starts "
                               "over from the beginning", {"attempt": job.attempts})
    return _spec(s, model, job, base, resumed=True)


def _build(s: Session, model: Model) -> JobSpec | None | object:
    """The oldest queued request merged with the following ones that share method, params
    and base version; the first one that differs ends the job (submission order is kept)."""
    queued = s.scalars(
        select(ForgetRequest)
        .where(ForgetRequest.model_id == model.id, ForgetRequest.status == "queued")
        .order_by(ForgetRequest.seq, ForgetRequest.created_at, ForgetRequest.id)
        .limit(MAX_MERGE * 4).with_for_update()
    ).all()
    now = utcnow()
    settled = False
    head: tuple[str, str, int | None] | None = None
    params: dict[str, Any] = {}
    group: list[ForgetRequest] = []
    for r in queued:
        if r.cancel_requested:
            r.status, r.finished_at = "cancelled", now
            settled = True
            continue
        try:
            p = resolve_request_params(model, r.method, r.params)
        except ValueError as exc:
            if head is not None:
                break  # it differs from the group; it fails on its own turn
            _fail_requests(s, [r], JobError("invalid_params", str(exc)))
            settled = True
            continue
        key = (r.method, json.dumps(p, sort_keys=True), r.base_version)
        if head is None:
            head, params = key, p
        elif key != head:
            break
        group.append(r)
        if len(group) >= MAX_MERGE:
            break
    if not group:
        return _RETRY if settled else None
    first = group[0]
    base = _ready_version(s, model.id, first.base_version)
    if base is None:
        what = (f"base version {first.base_version} is not a ready version of this model"
                if first.base_version is not None else "the model has no ready version")
        _fail_requests(s, group, JobError("base_version_unavailable", what))
        return _RETRY
    job = Job(id=new_id(), tenant_id=model.tenant_id, model_id=model.id, status="running",
              method=first.method, params=params, forget_request_ids=[r.id for r in group],
              base_version=base.number, progress=dict(QUEUED_PROGRESS), attempts=1,
              started_at=now, heartbeat_at=now)
    s.add(job)
    for r in group:
        r.status, r.job_id, r.started_at, r.progress = "running", job.id, now, \
            dict(QUEUED_PROGRESS)
    s.flush()
    _event(s, job.id, "queued",
           f"job for {len(group)} request(s) on version {base.number}",
           {"forget_request_ids": job.forget_request_ids, "base_version": base.number})
    return _spec(s, model, job, base, resumed=False)


def next_job(url: str, model_id: str, max_attempts: int = MAX_ATTEMPTS) -> JobSpec | None:
    """The next job of a lineage whose lease the caller holds: a running job left by a dead
    worker (attempts += 1), else a new job from queued requests; None when nothing is left.
    Requests that cannot run (cancel requested, invalid params, missing base) are settled
    on the way."""
    while True:
        out = _next_job_tx(url, model_id, max_attempts)
        if out is not _RETRY:
            return out  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# Progress and events
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Outcomes
# --------------------------------------------------------------------------------------------


def jsonable(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (PostgreSQL's JSON refuses NaN),
    unknown objects their string."""
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    item = getattr(value, "item", None)  # numpy / torch scalars, without importing them
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


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


# --------------------------------------------------------------------------------------------
# Outbox: enqueueing lineages, and the sweeper's view of stranded ones
# --------------------------------------------------------------------------------------------


def enqueue_lineage(session: Session, model_id: str) -> Outbox:
    """Add an outbox row that asks a worker to run the lineage (in the caller's
    transaction, with whatever caused it)."""
    row = Outbox(task=RUN_LINEAGE_TASK, payload={"model_id": model_id})
    session.add(row)
    return row


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


def prune_outbox(url: str, older_than: float = 7 * 86400.0) -> int:
    """Delete published outbox rows older than `older_than` s (the table only grows else)."""
    from sqlalchemy import delete

    with session_scope(url) as s:
        res = s.execute(delete(Outbox).where(
            Outbox.published_at.is_not(None),
            Outbox.published_at < utcnow() - timedelta(seconds=older_than)))
        return int(res.rowcount or 0)  # type: ignore[attr-defined]
