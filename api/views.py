"""Response bodies: the Out models of api/schemas.py (the shapes docs/api.md documents) built
from registry rows, here and nowhere else. Reads only what a body shows; never writes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Row, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.orm import Session

from alkn_core.params import EVAL_DETAIL_ITEMS, EVAL_MAX_ITEMS
from registry.catalog import as_utc
from registry.models import ForgetRequest, Job, JobEvent, Model, Version
from registry.versions import aliases_of, latest_numbers

from .schemas import (
    ForgetRequestOut,
    JobEventOut,
    JobOut,
    ModelOut,
    VersionOut,
    VersionSummaryOut,
)


def progress_dict(progress: dict[str, Any] | None, status: str) -> dict[str, Any]:
    p = dict(progress or {})
    default_stage = {"queued": "queued", "succeeded": "done"}.get(status, status)
    p.setdefault("stage", default_stage)
    for key in ("step", "total_steps", "fraction"):
        p.setdefault(key, None)
    if p["fraction"] is None and status == "succeeded":
        p["fraction"] = 1.0
    return p


def model_names(session: Session, model_ids: Iterable[str]) -> dict[str, str]:
    ids = list(set(model_ids))
    if not ids:
        return {}
    return dict(session.execute(select(Model.id, Model.name).where(Model.id.in_(ids))).all())


def _loaded(obj: Any, name: str) -> bool:
    state = sa_inspect(obj, raiseerr=False)  # None for a Row (request_view)
    return state is None or name not in state.unloaded


def request_out(req: ForgetRequest, model_name: str | None, job: Job | None = None, *,
                job_base: int | None = None) -> ForgetRequestOut:
    # base_version as submitted; once a job runs it, the version that job really started from.
    base = req.base_version if req.base_version is not None else (
        job.base_version if job is not None else job_base)
    return ForgetRequestOut.model_validate({
        "id": req.id,
        "model": model_name,
        "status": req.status,
        "method": req.method,
        "params": dict(req.params or {}),
        "base_version": base,
        "result_version": req.result_version,
        "job_id": req.job_id,
        "item_count": req.item_count,
        # Set once the items were purged (ALKN_FORGET_DATA_RETENTION): what is left of them.
        # Listings do not load them (a lazy load per row would follow).
        "item_hashes": req.item_hashes if _loaded(req, "item_hashes") else None,
        "items_purged_at": as_utc(req.items_purged_at),
        "progress": progress_dict(req.progress, req.status),
        "metrics": req.metrics,
        "error": req.error,
        "cancel_requested": req.cancel_requested,
        "created_at": as_utc(req.created_at),
        "started_at": as_utc(req.started_at),
        "finished_at": as_utc(req.finished_at),
    })


def request_outs(session: Session, reqs: Sequence[ForgetRequest]) -> list[ForgetRequestOut]:
    names = model_names(session, (r.model_id for r in reqs))
    job_ids = {r.job_id for r in reqs if r.job_id is not None}
    jobs = {j.id: j for j in session.scalars(select(Job).where(Job.id.in_(job_ids)))} \
        if job_ids else {}
    return [request_out(r, names.get(r.model_id), jobs.get(r.job_id or "")) for r in reqs]


def job_out(job: Job, model_name: str | None) -> JobOut:
    metrics = job.metrics or {}
    return JobOut.model_validate({
        "id": job.id,
        "model": model_name,
        "kind": job.kind or "unlearn",
        "status": job.status,
        "method": job.method,
        "params": dict(job.params or {}),
        "forget_request_ids": list(job.forget_request_ids or []),
        "base_version": job.base_version,
        "result_version": job.result_version,
        "progress": progress_dict(job.progress, job.status),
        "metrics": {"before": metrics.get("before"), "after": metrics.get("after"),
                    **{k: v for k, v in metrics.items() if k not in ("before", "after")}},
        "timings": dict(job.timings or {}),
        "error": job.error,
        "cancel_requested": job.cancel_requested,
        "attempts": job.attempts,
        "created_at": as_utc(job.created_at),
        "started_at": as_utc(job.started_at),
        "finished_at": as_utc(job.finished_at),
        "quality": job.quality,
    })


def job_outs(session: Session, jobs: Sequence[Job]) -> list[JobOut]:
    names = model_names(session, (j.model_id for j in jobs))
    return [job_out(j, names.get(j.model_id)) for j in jobs]


def event_out(event: JobEvent) -> JobEventOut:
    return JobEventOut.model_validate({
        "id": event.seq, "at": as_utc(event.at), "stage": event.stage,
        "message": event.message, "data": dict(event.data or {})})


def request_row_out(row: Row[Any]) -> ForgetRequestOut:
    """The body of `registry.forget_requests.request_view`'s row (a Row reads like the ORM
    object here)."""
    return request_out(row, row.model_name, job_base=row.job_base)  # type: ignore[arg-type]


def version_out(version: Version, model_name: str | None = None) -> VersionOut:
    """A version as docs/api.md shows it."""
    return VersionOut.model_validate(_version_fields(version, model_name, files=True))


def version_summary_out(version: Version, model_name: str | None = None) -> VersionSummaryOut:
    """A version in a list: without its file list (not read)."""
    return VersionSummaryOut.model_validate(_version_fields(version, model_name, files=False))


def _version_fields(version: Version, model_name: str | None, *,
                    files: bool) -> dict[str, Any]:
    out = {
        "model": model_name,
        "version": version.number,
        "status": version.status,
        "parent_version": version.parent_version,
        "job_id": version.job_id,
        "forget_request_ids": list(version.forget_request_ids or []),
        "method": version.method,
        "size_bytes": version.size_bytes,
        "files": list(version.files or []) if files else None,
        "metrics": version.metrics,
        "has_state": version.has_state,
        "created_at": as_utc(version.created_at),
        "revoked_at": as_utc(version.revoked_at),
        "quality": version.quality,
    }
    if not files:
        del out["files"]
    return out


def model_out(model: Model, latest_version: int | None,
              aliases: dict[str, int] | None = None) -> ModelOut:
    return ModelOut.model_validate({
        "id": model.id,
        "name": model.name,
        "description": model.description,
        "created_at": as_utc(model.created_at),
        "latest_version": latest_version,
        "aliases": dict(aliases or {}),
        "qa_template": model.qa_template,
        "default_params": dict(model.default_params or {}),
        # Sizes only: the sets can be large and a listing should stay small.
        "retain_set_size": len(model.retain_set or []),
        "holdout_set_size": len(model.holdout_set or []),
        "eval_sets": {k: len(v or []) for k, v in (model.eval_sets or {}).items()},
        "eval_max_items": model.eval_max_items or EVAL_MAX_ITEMS,
        "eval_detail_items": model.eval_detail_items or EVAL_DETAIL_ITEMS,
        "min_gpu_memory_gb": model.min_gpu_memory_gb,
    })


def model_outs(session: Session, models: Sequence[Model]) -> list[ModelOut]:
    ids = [m.id for m in models]
    latest, aliases = latest_numbers(session, ids), aliases_of(session, ids)
    return [model_out(m, latest.get(m.id), aliases.get(m.id)) for m in models]
