"""Recording a job's outcome in the database: the version row published (retried while the
database is away), a failure or cancel settled, the alpha search's event."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from registry import jobs
from registry.jobs import JobSpec

from .job_control import DatabaseLost, db_unreachable

log = logging.getLogger(__name__)


def publish_row(url: str, spec: JobSpec, retry_for: float, **kwargs: Any
                 ) -> jobs.PublishOutcome:
    """jobs.publish_version, retried while the database is unreachable: the files are
    written, so waiting is worth it, for about our lease (after that another worker may
    have taken the lineage over; publishing stays idempotent either way). DatabaseLost when
    it stays down."""
    deadline = time.monotonic() + retry_for
    delay = 0.25
    while True:
        try:
            return jobs.publish_version(url, spec.job_id, **kwargs)
        except DBAPIError as exc:
            if not db_unreachable(exc):
                raise
            if time.monotonic() + delay > deadline:
                raise DatabaseLost(f"the database stayed unreachable for {retry_for:g} s "
                                   "while publishing") from exc
            log.warning("job %s: database unreachable while publishing; retrying in %.2g s",
                        spec.job_id, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


def settle(record: Callable[..., None], *args: Any) -> bool:
    """Record a job's end (fail_job, cancel_job); False when the database is unreachable (the
    job then stays running and is requeued: its end is recorded by the next attempt)."""
    try:
        record(*args)
        return True
    except SQLAlchemyError as exc:
        if not db_unreachable(exc):
            raise
        log.error("could not record the end of job %s: the database is unreachable", args[1])
        return False


def calibration_event(url: str, spec: JobSpec, calibration: dict[str, Any]) -> None:
    """The alpha search's target and curve [[alpha, forget_prob, retain_prob], ...] as an
    event of the negating stage (also in the job's metrics["unlearning"] on success)."""
    data = {k: calibration.get(k) for k in ("alpha", "target", "target_source", "curve",
                                            "evaluations", "best_alpha", "best_forget_prob",
                                            "target_met", "attempts")
            if k in calibration}
    if "alpha" in data and data.get("target_met") is False:
        # The escalated fine-tunes could not reach the target either: the most-forgetting
        # model is published, and the quality block says the target was missed.
        message = (f"forget target {data['target']:.4g} ({data['target_source']}) not "
                   f"reached: alpha {data['alpha']:.4g} left the forget probability at "
                   f"{calibration['forget_prob']:.4g} after "
                   f"{len(calibration.get('attempts') or []) or 1} fine-tune(s)")
    elif "alpha" in data:
        message = (f"alpha {data['alpha']:.4g} chosen: forget probability "
                   f"{calibration['forget_prob']:.4g} <= target {data['target']:.4g} "
                   f"({data['target_source']}) after {data['evaluations']} evaluations")
    else:
        message = f"no alpha reached the forget target {data['target']:.4g}"
    try:
        jobs.add_event(url, spec.job_id, "negating", message, jobs.jsonable(data))
    except SQLAlchemyError as exc:  # the numbers are also in the metrics: not worth a failure
        log.warning("calibration event of job %s not written: %s", spec.job_id, exc)
