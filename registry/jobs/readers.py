"""Readers of jobs and their events for the API (tenant-scoped: another tenant's job is 404).
"""

from __future__ import annotations

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from alkn_core.quoting import quoted

from ..errors import NotFound
from ..forget_requests import is_id
from ..models import Job, JobEvent


def get_job(session: Session, tenant_id: str, job_id: str) -> Job:
    if not is_id(job_id):
        raise NotFound(f"job {quoted(job_id)} not found")
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise NotFound(f"job {quoted(job_id)} not found")
    return job


def jobs_query(tenant_id: str, model_id: str | None = None,
               status: str | None = None) -> Select[Job]:
    q = select(Job).where(Job.tenant_id == tenant_id)
    if model_id is not None:
        q = q.where(Job.model_id == model_id)
    if status is not None:
        q = q.where(Job.status == status)
    return q


def job_events_query(job: Job) -> Select[JobEvent]:
    return select(JobEvent).where(JobEvent.job_id == job.id)
