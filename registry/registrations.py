"""Registration of a large model off the request path: copying and hashing a source directory
into the store is a job (`kind` "register") that a worker runs with progress, so a 15 GB
model never holds an HTTP request open. The model row exists at once (without versions);
the job publishes its version 1, a root version. Functions flush, the caller commits, except
`finish_registration` (its own transaction, as the worker records an outcome).

Sources smaller than ALKN_REGISTER_INLINE_BYTES are still copied inside the request
(catalog.register_model); `source_bytes` is how the API decides.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .jobs.common import DONE_PROGRESS, QUEUED_PROGRESS, _event, write_tx
from .models import Job, Model, Version, new_id, utcnow
from .outbox import enqueue_lineage
from .store import FileInfo

KIND = "register"
SOURCE = "source_path"  # the job's params: where to copy from (checked at submission)


def source_bytes(src: Path, stop_at: int) -> int:
    """The size of the files under `src`, counted up to the first byte past `stop_at` (a
    directory listing only: nothing is read)."""
    total = 0
    for dirpath, _, filenames in os.walk(src):
        for name in filenames:
            total += os.lstat(os.path.join(dirpath, name)).st_size
            if total > stop_at:
                return total
    return total


def enqueue_registration(session: Session, model: Model, src: Path) -> Job:
    """A queued registration job for `model` (just added, no versions) from `src`."""
    job = Job(id=new_id(), tenant_id=model.tenant_id, model_id=model.id, kind=KIND,
              status="queued", method=KIND, params={SOURCE: str(src)}, forget_request_ids=[],
              base_version=0, progress=dict(QUEUED_PROGRESS), attempts=0,
              created_at=utcnow())
    session.add(job)
    session.flush()
    _event(session, job.id, "queued", f"registration of {model.name} from its source queued")
    enqueue_lineage(session, model.id)
    return job


def finish_registration(url: str, job_id: str, *, storage_key: str,
                        files: Sequence[FileInfo]) -> tuple[str, int | None]:
    """Record a finished registration: a root version of the copied files, the job
    succeeded. (status, version number); a job no longer running (cancelled meanwhile) is
    left as it is and makes no version: the caller deletes the files."""
    with write_tx(url) as s:
        job = s.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None:
            raise ValueError(f"no job {job_id}")
        if job.status != "running":
            return job.status, None
        if job.cancel_requested:
            job.status, job.finished_at = "cancelled", utcnow()
            _event(s, job.id, "done", "cancelled")
            return job.status, None
        number = (s.scalar(select(func.max(Version.number))
                           .where(Version.model_id == job.model_id)) or 0) + 1
        s.add(Version(model_id=job.model_id, number=number, status="ready",
                      parent_version=None, job_id=job.id, forget_request_ids=[], method=None,
                      size_bytes=sum(f.size for f in files),
                      files=[f.as_dict() for f in files], storage_key=storage_key,
                      has_state=False, created_at=utcnow()))
        job.status, job.result_version, job.finished_at = "succeeded", number, utcnow()
        job.progress, job.error = dict(DONE_PROGRESS), None
        _event(s, job.id, "done", f"version {number} registered", {"version": number})
        return job.status, number
