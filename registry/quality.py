"""The quality gate's reference: what the first version of a job's lineage measured.

A job's `quality` block (worker/quality.py) compares the version it makes with the first
version of its lineage: the root that its base version descends from through parent links.
Root versions are registered or uploaded, never made by a job, so their numbers are found,
in this order:

1. the root version's own stored `evaluation`, when one was stored;
2. the "before" evaluation of the earliest succeeded job that started from the root (which
   measured the root on the model's retain and evaluation sets);
3. none: the job is the first to start from the root; the worker then uses its own "before"
   evaluation (of the root, when its base is the root) and says so.

Read in the transaction that claims the job (registry.jobs), so the worker needs no second
round trip to the database after hours of training.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Job, Version


def lineage_root(s: Session, model_id: str, base: Version) -> Version:
    """The first version of `base`'s lineage (itself when it has no parent)."""
    parents = {number: parent for number, parent in s.execute(
        select(Version.number, Version.parent_version).where(Version.model_id == model_id))}
    number, seen = base.number, {base.number}
    while parents.get(number) is not None and parents[number] not in seen:
        number = int(parents[number])
        seen.add(number)
    if number == base.number:
        return base
    root = s.scalar(select(Version).where(Version.model_id == model_id,
                                          Version.number == number))
    return root if root is not None else base


def first_version_reference(s: Session, model_id: str, base: Version) -> dict[str, Any] | None:
    """{"version", "source", "job_id", "evaluation"} of the lineage's first version, or None
    when nothing measured it yet. `source` is "version_evaluation" (its stored evaluation)
    or "job_before" (the earliest succeeded job from it, `job_id`)."""
    root = lineage_root(s, model_id, base)
    if root.evaluation:
        return {"version": root.number, "source": "version_evaluation", "job_id": None,
                "evaluation": dict(root.evaluation)}
    jobs = s.scalars(select(Job).where(
        Job.model_id == model_id, Job.base_version == root.number, Job.status == "succeeded")
        .order_by(Job.finished_at, Job.created_at).limit(8))
    for job in jobs:  # a job's metrics may lack "before" (written by an older release)
        before = (job.metrics or {}).get("before")
        if isinstance(before, dict) and before:
            return {"version": root.number, "source": "job_before", "job_id": job.id,
                    "evaluation": dict(before)}
    return None
