"""Jobs (the unlearning runs that serve forget requests) and their progress events."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query

from registry import catalog, jobs
from registry.models import Job, JobEvent

from .. import views
from ..auth import TenantDep
from ..deps import SessionDep
from ..pagination import PageDep, paginate
from ..schemas import JobEventOut, JobOut, Page, RequestStatus, problems
from ..strict_json import StrictJSONRoute

router = APIRouter(route_class=StrictJSONRoute,
                   prefix="/v1/jobs", tags=["jobs"], responses=problems(401, 404))


@router.get("", response_model=Page[JobOut], responses=problems(422))
def list_jobs(session: SessionDep, tenant: TenantDep, page: PageDep,
              model: str | None = Query(default=None, description="model name"),
              status: RequestStatus | None = None) -> dict[str, Any]:
    model_id = catalog.get_model(session, tenant, model).id if model is not None else None
    rows, next_cursor = paginate(session, jobs.jobs_query(tenant, model_id, status),
                                 Job.created_at, Job.id, page)
    return {"items": views.job_outs(session, rows), "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobOut)
def get_job(job_id: str, session: SessionDep, tenant: TenantDep) -> JobOut:
    return views.job_outs(session, [jobs.get_job(session, tenant, job_id)])[0]


@router.get("/{job_id}/events", response_model=Page[JobEventOut], responses=problems(422))
def list_events(job_id: str, session: SessionDep, tenant: TenantDep,
                page: PageDep) -> dict[str, Any]:
    """The job's progress events, oldest first (a list page like every other list); an
    event's `id` is its number within the job (1, 2, ...)."""
    job = jobs.get_job(session, tenant, job_id)
    rows, next_cursor = paginate(session, jobs.job_events_query(job), JobEvent.at,
                                 JobEvent.seq, page)
    return {"items": [views.event_out(e) for e in rows], "next_cursor": next_cursor}
