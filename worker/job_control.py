"""A running job's control channel: the lease kept in the background, the progress callback
(which is also the heartbeat and where a cancel or a lost lease is noticed), and the
exceptions that stop a job from inside."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid

from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from registry import jobs
from registry.jobs import JobSpec

from .progress_plan import describe, eta_seconds, spans

log = logging.getLogger(__name__)

# Share of the job's overall progress fraction per stage until the job's own estimate is known
# (progress_plan.spans, once the base is loaded and the evaluations planned).
SPANS: dict[str, tuple[float, float]] = spans({
    "evaluating:before": 1.0, "probing": 1.0, "training": 6.0, "negating": 4.0,
    "evaluating:after": 2.0})
MESSAGES = {
    "loading": "loading the base version", "evaluating:before": "evaluating before unlearning",
    "probing": "probing (initial probabilities, retain gradient)",
    "training": "training", "negating": "negating the task vector",
    "evaluating:after": "evaluating after unlearning", "saving": "saving the new version",
    "evaluating:full": "evaluating every item of the version",
    "copying": "copying the source model into the store",  # registration jobs
}


# The progress callback renews the lease at most this often (s); LeaseKeeper covers the
# phases without progress.
RENEW_EVERY = 5.0
# Stages that are one long library call (from_pretrained, save_pretrained and the upload):
# no progress steps, so the LeaseKeeper's renewals are the job's heartbeat there.
SILENT_STAGES = ("loading", "saving")


class Cancelled(Exception):
    """Raised from the progress callback: the job or one of its requests was cancelled."""


class LeaseLost(Exception):
    """Our lineage lease expired and another worker took it: stop without a trace."""


class DatabaseLost(Exception):
    """The database stayed unreachable when the job's outcome had to be recorded: the job
    stays running, and the sweeper requeues it once our lease has expired."""


def db_unreachable(exc: BaseException) -> bool:
    """A database outage (connection refused or dropped), not an error in what we asked."""
    return isinstance(exc, OperationalError) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated)


def new_worker_id() -> str:
    """Unique per task run (not per process: a thread pool runs several in one process)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class LeaseKeeper:
    """Renews the lease in the background while we hold it, so long silent phases (loading
    a large model, saving it) never let it lapse; `lost` is set when it is no longer ours."""

    def __init__(self, url: str, model_id: str, owner: str, seconds: float) -> None:
        self.url, self.model_id, self.owner, self.seconds = url, model_id, owner, seconds
        self.lost = threading.Event()
        self.beat_job: str | None = None  # renewals are this job's heartbeat (SILENT_STAGES)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{model_id[:8]}",
                                        daemon=True)

    def _run(self) -> None:
        interval = max(0.5, self.seconds / 4)
        while not self._stop.wait(interval):
            try:
                if not jobs.renew_lease(self.url, self.model_id, self.owner, self.seconds,
                                        heartbeat_job=self.beat_job):
                    self.lost.set()
                    return
            except SQLAlchemyError as exc:  # transient: the lease still has time left
                log.warning("lease renewal failed: %s", exc)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class ProgressReporter:
    """The progress callback: writes progress (throttled, but always stage changes and the
    last step), an event per stage, renews the lease and raises on cancel or lost lease."""

    def __init__(self, url: str, spec: JobSpec, owner: str, lease_seconds: float,
                 keeper: LeaseKeeper | None = None, min_interval: float = 0.5) -> None:
        self.url, self.spec, self.owner, self.lease_seconds = url, spec, owner, lease_seconds
        self.keeper, self.min_interval = keeper, min_interval
        self.phase = ""  # "before"/"after" for evaluating
        self.stage: str | None = None
        self.spans = dict(SPANS)
        self._started = time.monotonic()
        self._last_write = 0.0
        self._last_renew = 0.0

    def _key(self, stage: str) -> str:
        return f"{stage}:{self.phase}" if stage == "evaluating" else stage

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.keeper is not None and self.keeper.lost.is_set():
            raise LeaseLost()
        key = self._key(stage)
        changed = key != self.stage
        now = time.monotonic()
        last = total > 0 and step >= total
        if self.keeper is not None:  # only while the silent call runs, not after it
            silent = stage in SILENT_STAGES and not last
            self.keeper.beat_job = self.spec.job_id if silent else None
        if not changed and not last and now - self._last_write < self.min_interval:
            return
        self.stage = key
        lo, hi = self.spans.get(key, (0.0, 0.0))
        frac = lo + (hi - lo) * (min(step, total) / total if total > 0 else 0.0)
        eta = eta_seconds(now - self._started, frac)
        progress = {"stage": stage, "step": step, "total_steps": total,
                    "fraction": round(frac, 4), "label": describe(stage, self.phase),
                    "eta_seconds": None if eta is None else round(eta, 1)}
        if stage == "evaluating":
            progress["phase"] = self.phase
        event = (stage, MESSAGES.get(key, stage),
                 {"total_steps": total, **({"phase": self.phase} if stage == "evaluating"
                                           else {})}) if changed else None
        renew = now - self._last_renew >= RENEW_EVERY
        try:
            ack = jobs.report_progress(self.url, self.spec.job_id, progress,
                                       model_id=self.spec.model_id, owner=self.owner,
                                       lease_seconds=self.lease_seconds, renew=renew,
                                       event=event)
        except SQLAlchemyError as exc:
            # A database hiccup must not kill an hours-long run; the next write retries (no
            # sooner than the throttle allows: an outage is not hammered once per step).
            log.warning("progress write failed for job %s: %s", self.spec.job_id, exc)
            self._last_write = now
            return
        self._last_write = now
        if renew:
            self._last_renew = now
        if not ack.lease_ok:
            raise LeaseLost()
        if ack.cancel_job or ack.cancelled_requests:
            raise Cancelled()

    def begin(self, stage: str, phase: str = "") -> None:
        self.phase = phase
        self(stage, 0, 1 if stage in ("loading", "saving") else 0)
