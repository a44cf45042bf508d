"""What a Celery worker reports to Prometheus: job stage durations, jobs finished by outcome,
the job running now, versions published below the quality gate; served on
ALKN_WORKER_METRICS_PORT.

Multiprocess mode (prometheus_client's PROMETHEUS_MULTIPROC_DIR): under the default prefork
pool a job runs in a child process while the dispatcher thread and any HTTP server live in
the parent, and a child may be replaced; each process writes its numbers to a file in one
directory and the parent's endpoint sums them, so nothing is lost whichever process ran the
job. `enable_multiprocess` must run before prometheus_client is first imported (the value
class is chosen at import), which is why nothing here imports it at module level.

Without a port nothing is served and nothing is written to disk: the hooks still count in
memory (tests call the runner in-process).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from typing import Any, TypeVar

from observability.logs import JOB_ID
from observability.prometheus import scrape_registry

log = logging.getLogger(__name__)

T = TypeVar("T")

# Jobs last seconds (tiny models) to hours (7B on a big forget set).
STAGE_BUCKETS = (0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0,
                 3600.0, 7200.0, 14400.0, 43200.0)


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.stage = Histogram("alkn_job_stage_duration_seconds", "seconds a job spent in "
                               "each stage (loading, evaluating_before, probing, training, "
                               "negating, evaluating_after, saving)", ["stage"],
                               buckets=STAGE_BUCKETS)
        self.duration = Histogram("alkn_job_duration_seconds", "a job's run time in this "
                                  "worker, by outcome", ["status"], buckets=STAGE_BUCKETS)
        self.finished = Counter("alkn_worker_jobs", "jobs this worker ran, by outcome "
                                "(succeeded, failed, cancelled, lease_lost)", ["status"])
        self.running = Gauge("alkn_worker_jobs_running", "jobs running in this worker now",
                             multiprocess_mode="livesum")
        self.quality_failed = Counter(
            "alkn_quality_gate_failed", "versions published below the quality gate, by "
            "reason (retain_probability, model_utility, target_missed; a version that fails "
            "on two counts is counted under both)", ["reason"])


@lru_cache(maxsize=1)
def _metrics() -> _Metrics:
    return _Metrics()


def track_job(job_id: str, run: Callable[..., T], *args: Any) -> T:
    """`run(*args)` (the runner's run_job) with the job id in every log record it makes,
    and its outcome and run time counted."""
    m = _metrics()
    token = JOB_ID.set(job_id)
    m.running.inc()
    start = time.perf_counter()
    status = "failed"
    try:
        result = run(*args)
        status = str(result)
        return result
    finally:
        m.running.dec()
        m.duration.labels(status).observe(time.perf_counter() - start)
        m.finished.labels(status).inc()
        JOB_ID.reset(token)


# A job runs in a forked child (worker/job_process.py). Outside multiprocess mode what the
# child counts dies with it, and in it the parent would count it twice if both recorded: so
# the child defers its observations and returns them, and the parent replays them.
_deferred: list[tuple[str, Any]] | None = None


def defer() -> None:
    """From now on (in this process: the job's child) observations are kept for `deferred`."""
    global _deferred
    _deferred = []


def deferred() -> list[tuple[str, Any]]:
    """The observations kept since `defer`, to send to the parent (plain, picklable data)."""
    return list(_deferred or [])


def replay(records: Iterable[tuple[str, Any]]) -> None:
    """Record, in this process, what a job's child deferred."""
    recorders: dict[str, Callable[[Any], None]] = {
        "stages": observe_stages, "quality": count_quality_gate_failures}
    for kind, value in records:
        recorders[kind](value)


def observe_stages(timings: Mapping[str, float]) -> None:
    """A finished job's seconds per stage ("total" is alkn_job_duration_seconds)."""
    if _deferred is not None:
        _deferred.append(("stages", dict(timings)))
        return
    m = _metrics()
    for stage, seconds in timings.items():
        if stage != "total" and isinstance(seconds, int | float):
            m.stage.labels(stage).observe(float(seconds))


def count_quality_gate_failures(reasons: Iterable[str]) -> None:
    """A published version that did not pass the quality gate, once per reason."""
    if _deferred is not None:
        _deferred.append(("quality", list(reasons)))
        return
    m = _metrics()
    for reason in reasons:
        m.quality_failed.labels(reason).inc()


# --------------------------------------------------------------------------------------------
# Serving (the worker's main process)
# --------------------------------------------------------------------------------------------


def enable_multiprocess() -> str | None:
    """Point prometheus_client at a fresh directory for this worker's processes (inherited
    by the pool's children); returns it (to be removed at shutdown). None when the operator
    set PROMETHEUS_MULTIPROC_DIR (theirs to manage), or when prometheus_client is already
    imported (then only this process counts, which is all a solo pool needs)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    if "prometheus_client" in sys.modules:
        log.warning("prometheus_client was imported before the worker set up multiprocess "
                    "metrics; only the main process's numbers will be served")
        return None
    path = tempfile.mkdtemp(prefix="alkn-worker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def serve(port: int, addr: str = "0.0.0.0") -> Any:
    """Prometheus's HTTP server on a daemon thread; returns it (shutdown() stops it)."""
    from prometheus_client import REGISTRY, start_http_server

    _metrics()  # the families exist (at zero) before the first job
    server, _thread = start_http_server(port, addr=addr,
                                        registry=scrape_registry(REGISTRY))
    log.info("worker metrics on http://%s:%d/metrics", addr, port)
    return server


def child_exited(pid: int) -> None:
    """Drop a dead pool child's live gauge (its counters stay in the sums)."""
    from prometheus_client import multiprocess

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        multiprocess.mark_process_dead(pid)


def remove_dir(path: str | None) -> None:
    if path:
        shutil.rmtree(path, ignore_errors=True)
