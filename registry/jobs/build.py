"""Building the next job: an evaluation claimed first, a dead worker's job resumed, else the
oldest queued requests merged (same method, params and base) into a new job; the `JobSpec`
the worker runs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ..errors import Invalid
from ..forget_requests import resolve_params
from ..models import ForgetRequest, Job, Model, Tenant, Version, new_id, utcnow
from ..quality import first_version_reference
from .common import (
    MAX_ATTEMPTS,
    MAX_MERGE,
    QUEUED_PROGRESS,
    JobError,
    _event,
    _fail_requests,
    _mark_succeeded,
    write_tx,
)


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
    # The model as a Hugging Face repo id, <tenant>/<model> (its versions' model cards).
    repo_id: str = ""
    # The repair rounds of the newest job on the base's lineage that ran a repair: the
    # progress bar's estimate of this job's (a lineage's rounds follow its wear); None: none.
    repair_rounds_seen: int | None = None

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
    chain = lineage_chain(s, model.id, base)
    return JobSpec(
        job_id=job.id, model_id=model.id, method=job.method, params=dict(job.params),
        base_version=base.number, base_storage_key=base.storage_key,
        base_state=bool(base.has_state and base.method == job.method),
        request_ids=ids, request_items={rid: list(requests[rid].items) for rid in ids},
        retain_set=list(model.retain_set or []),
        eval_sets={k: list(v) for k, v in (model.eval_sets or {}).items()},
        attempts=job.attempts, resumed=resumed,
        holdout_set=list(model.holdout_set or []),
        earlier_tasks=_earlier_tasks(s, chain),
        reference=first_version_reference(s, model.id, base),
        eval_max_items=model.eval_max_items, eval_detail_items=model.eval_detail_items,
        base_scores=base.item_scores, kind=job.kind or "unlearn",
        repo_id=_repo_id(s, model), repair_rounds_seen=repair_rounds_seen(chain),
    )


def lineage_chain(s: Session, model_id: str, base: Version) -> list[Version]:
    """The base and its ancestors by their parent links, the base first, the root last."""
    versions = {v.number: v for v in s.scalars(select(Version).where(
        Version.model_id == model_id))}
    chain: list[Version] = []
    current: Version | None = base
    while current is not None and len(chain) <= len(versions):
        chain.append(current)
        current = versions.get(current.parent_version) if current.parent_version else None
    return chain


def repair_stats(metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The repair's statistics in a job's or a version's metrics ({} when it ran none)."""
    repair = ((metrics or {}).get("unlearning") or {}).get("repair")
    return repair if isinstance(repair, dict) else {}


def repair_rounds_seen(chain: Sequence[Version]) -> int | None:
    """The repair rounds of the newest version on `chain` whose job ran a repair (one that
    negated nothing ran none and says nothing of the next); None when no job did."""
    for version in chain:
        rounds = repair_stats(version.metrics).get("rounds")
        if rounds:
            return len(rounds)
    return None


def _earlier_tasks(s: Session, chain: Sequence[Version]) -> dict[int, list[dict[str, Any]]]:
    """Each version on the chain made by a job contributes the items of the requests it
    served, oldest first."""
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
        registration = _claim_registration(s, model)
        if registration is not None:
            return registration
        evaluation = _claim_evaluation(s, model)
        if evaluation is not None:
            return evaluation
        return _build(s, model)


def _repo_id(s: Session, model: Model) -> str:
    return f"{s.get(Tenant, model.tenant_id).name}/{model.name}"  # type: ignore[union-attr]


def _registration_spec(s: Session, model: Model, job: Job, resumed: bool) -> JobSpec:
    return JobSpec(job_id=job.id, model_id=model.id, method=job.method,
                   params=dict(job.params), base_version=0, base_storage_key="",
                   base_state=False, request_ids=[], request_items={}, retain_set=[],
                   eval_sets={}, attempts=job.attempts, resumed=resumed, kind="register",
                   repo_id=_repo_id(s, model))


def _oldest_queued(s: Session, model: Model, kind: str) -> Job | None:
    return s.scalar(select(Job).where(Job.model_id == model.id, Job.status == "queued",
                                      Job.kind == kind)
                    .order_by(Job.created_at, Job.id).limit(1).with_for_update())


def _claim_registration(s: Session, model: Model) -> JobSpec | None:
    """The oldest queued registration job (`kind` "register", made by
    registry.registrations), now running; None when there is none."""
    job = _oldest_queued(s, model, "register")
    if job is None:
        return None
    now = utcnow()
    job.status, job.started_at, job.heartbeat_at, job.attempts = "running", now, now, 1
    job.progress = dict(QUEUED_PROGRESS)
    _event(s, job.id, "queued", "registration: copying the source into the store")
    return _registration_spec(s, model, job, resumed=False)


def _claim_evaluation(s: Session, model: Model) -> JobSpec | object | None:
    """The oldest queued evaluation job (`kind` "evaluate", made by
    registry.evaluations.enqueue_evaluation), now running; None when there is none."""
    job = _oldest_queued(s, model, "evaluate")
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
    if job.kind == "register":  # no base, no requests: it copies again from the start
        if job.cancel_requested or job.attempts >= max_attempts:
            error = None if job.cancel_requested else JobError(
                "worker_lost", f"the worker running this registration stopped "
                               f"{job.attempts} times; not retried")
            job.status, job.finished_at = ("cancelled" if error is None else "failed"), utcnow()
            job.error = error.as_dict() if error is not None else None
            _event(s, job.id, "done", error.message if error else "cancelled while its "
                   "worker was lost")
            return _RETRY
        job.attempts += 1
        job.progress, job.heartbeat_at = dict(QUEUED_PROGRESS), utcnow()
        _event(s, job.id, "retry", f"attempt {job.attempts} after worker loss",
               {"attempt": job.attempts})
        return _registration_spec(s, model, job, resumed=True)
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
            p = resolve_params(model, r.method, r.params)
        except Invalid as exc:
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
