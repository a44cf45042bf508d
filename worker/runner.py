"""Running a lineage's jobs: take the lease, run queued jobs one at a time, release.

`run_lineage_once` is what the Celery task calls; it needs no Celery, so tests call it
directly. Database work goes through `registry.jobs`; model work through `alkn_core`.

Each job runs in a child process (`worker.job_process`) that is killed at
ALKN_JOB_TIME_LIMIT (the job fails, `time_limit_exceeded`) or when the heartbeat sweep took
the lineage back (the job runs again as a new attempt); the worker is free either way. After
each job the lineage yields to another tenant's waiting lineage that was served less recently
(`registry.jobs.yield_turn`): no tenant's backlog holds the others back.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.exc import SQLAlchemyError

from alkn_core import CalibrationError, UnlearnState, unlearn
from alkn_core.eval_sets import sample
from config.settings import Settings
from registry import jobs
from registry.hashing import hash_secret, keyed_hash
from registry.jobs import JobError, JobSpec
from registry.store import open_store

from . import metrics as worker_metrics
from . import model_card
from .evaluation import evaluate, job_evaluation
from .full_evaluation import run_full_evaluation
from .job_control import (
    Cancelled,
    DatabaseLost,
    LeaseKeeper,
    LeaseLost,
    ProgressReporter,
    db_unreachable,
    new_worker_id,
)
from .job_errors import describe_error, is_panic
from .job_process import model_modules, run_in_child, warm_imports
from .job_records import calibration_event, publish_row, settle
from .metrics import observe_stages, track_job
from .progress_plan import eval_work, spans, unlearning_work
from .quality import assess as assess_quality
from .quality import published as quality_published
from .registration import RegistrationJob
from .version_files import Store, drop_files, drop_unreferenced, load_base, save_version

log = logging.getLogger(__name__)

# Retain items unlearning gets at most: a fixed sample (the same for every job of a model).
# It uses far fewer (a 16-item probe, 128 repair items, a retain batch per forget batch);
# encoding a registered set of 100 000 items for each job would cost more than the rest.
UNLEARN_RETAIN_ITEMS = 2048


# --------------------------------------------------------------------------------------------
# One job
# --------------------------------------------------------------------------------------------


def _split_metrics(before: dict[str, Any], after: dict[str, Any], spec: JobSpec
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    def job_part(m: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in m.items() if not k.startswith("request/")}

    def request_part(m: dict[str, Any], rid: str) -> dict[str, Any]:
        own = m.get(f"request/{rid}")
        return {**job_part(m), **({"forget": own} if own is not None else {})}

    job = {"before": job_part(before), "after": job_part(after)}
    per_request = {rid: {"before": request_part(before, rid), "after": request_part(after, rid)}
                   for rid in spec.request_ids}
    return job, per_request


def run_job(settings: Settings, store: Store, spec: JobSpec, owner: str,
            keeper: LeaseKeeper | None = None) -> str:
    """Run one claimed job to its end; returns the job's status (or "lease_lost")."""
    report = ProgressReporter(settings.resolved_database_url, spec, owner,
                              settings.lease_seconds, keeper)
    log.info("job %s: %s on v%d, %d request(s), attempt %d", spec.job_id, spec.method,
             spec.base_version, len(spec.request_ids), spec.attempts)
    job = (RegistrationJob if spec.kind == "register" else _UnlearningJob)(
        settings, store, spec, report)
    try:
        if spec.kind == "evaluate":
            return run_full_evaluation(settings, store, spec, report)
        return job.run()
    except Exception as exc:
        return _job_ended(exc, settings, store, spec, report, job.key)
    except BaseException as exc:
        # A Rust library's panic (pyo3's PanicException: tokenizers, safetensors) derives
        # from BaseException: uncaught, the job process died and the job ran 3 times, then
        # failed as worker_lost. Anything else of the kind stops the process as before.
        if not is_panic(exc):
            raise
        return _job_ended(exc, settings, store, spec, report, job.key)


class _UnlearningJob:
    """One unlearning job, stage by stage: load the base, plan both evaluations (the
    progress bar's spans come from their work), evaluate before, unlearn, evaluate after,
    save the files, publish the version row."""

    def __init__(self, settings: Settings, store: Store, spec: JobSpec,
                 report: ProgressReporter) -> None:
        self.settings, self.store, self.spec, self.report = settings, store, spec, report
        self.timings: dict[str, float] = {}
        self.key: str | None = None  # the new version's storage key, once files are written

    def _timed(self, name: str, t: float) -> None:
        self.timings[name] = time.perf_counter() - t

    def run(self) -> str:
        spec, report, t_start = self.spec, self.report, time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="alkn-job-") as tmp:
            t = time.perf_counter()
            report.begin("loading")
            base = load_base(self.store, spec, Path(tmp), self.settings)
            model, tokenizer, state, base_root = base.model, base.tokenizer, base.state, base.root
            del base  # `del model` below frees the model
            report("loading", 1, 1)
            self._timed("loading", t)

            self._plan(tokenizer)
            t = time.perf_counter()
            report.phase = "before"
            before = evaluate(self.evaluation, model, tokenizer, self.plan_before,
                              self.before_scores, report)
            self._timed("evaluating_before", t)

            model, state, stats = self._unlearn(model, tokenizer, state)
            if stats.get("weights_unchanged"):
                self._reuse_before()

            t = time.perf_counter()
            report.phase = "after"
            after = evaluate(self.evaluation, model, tokenizer, self.plan_after,
                             self.after_scores, report)
            self._timed("evaluating_after", t)

            t = time.perf_counter()
            report.begin("saving")
            quality = assess_quality(spec, before, after, stats)
            job_metrics, request_metrics = _split_metrics(before, after, spec)
            card = self._card(job_metrics, quality, base_root)
            self.key, files = save_version(self.store, self.settings, spec, model, state,
                                           base_root, card)
            report("saving", 1, 1)  # a cancel that came meanwhile stops it here
            self._timed("saving", t)
            self._timed("total", t_start)
            observe_stages(self.timings)
            del model
        return self._publish(job_metrics, request_metrics, stats, quality, files,
                             has_state=state is not None)

    def _plan(self, tokenizer: Any) -> None:
        """Both evaluations' passes: "before" reads what the base's stored scores hold."""
        spec = self.spec
        self.evaluation = job_evaluation(spec)
        self.before_scores = self.evaluation.cache(spec.base_scores)
        self.measured_base = not self.before_scores.items  # the base had no scores to reuse
        self.plan_before = self.evaluation.plan(tokenizer, self.before_scores)
        self.after_scores = self.evaluation.cache()
        self.plan_after = self.plan_before.with_cache(self.after_scores)
        self.report.spans = spans({
            "evaluating:before": eval_work(self.plan_before.work_sequences,
                                           self.plan_before.work_generated),
            **unlearning_work(spec.method, spec.params, len(spec.forget_items),
                              len(spec.retain_set), len(spec.earlier_tasks),
                              spec.repair_rounds_seen),
            "evaluating:after": eval_work(self.plan_after.work_sequences,
                                          self.plan_after.work_generated)})

    def _reuse_before(self) -> None:
        """Unlearning left every weight as it was (its forget items were at the target on
        the base already): the model after is the model before, so its scores are those the
        "before" evaluation holds, and the "after" one measures nothing."""
        self.after_scores = self.evaluation.cache(self.before_scores.as_json())
        self.plan_after = self.plan_before.with_cache(self.after_scores)

    def _unlearn(self, model: torch.nn.Module, tokenizer: Any, state: UnlearnState | None
                 ) -> tuple[torch.nn.Module, UnlearnState | None, dict[str, Any]]:
        spec = self.spec
        retain = spec.retain_set if len(spec.retain_set) <= UNLEARN_RETAIN_ITEMS \
            else sample(spec.retain_set, UNLEARN_RETAIN_ITEMS)
        result = unlearn(model, tokenizer, spec.forget_items, retain or None,
                         method=spec.method, params=spec.params, state=state,
                         progress=self.report, eval_sets=spec.eval_sets or None,
                         holdout=spec.holdout_set or None,
                         # guarded by the repair, each task's set on its own: no earlier
                         # request comes back
                         earlier_forget=[items for _, items in
                                         sorted(spec.earlier_tasks.items())] or None)
        stats = dict(result.stats)
        if "calibration" in stats:
            calibration_event(self.settings.resolved_database_url, spec, stats["calibration"])
        self.timings.update(stats.pop("seconds", {}))
        return result.model, result.state, stats

    def _card(self, job_metrics: dict[str, Any], quality: dict[str, Any],
              base_root: Path) -> str:
        """The new version's README.md (worker/model_card.py)."""
        spec = self.spec
        secret = hash_secret(self.settings.resolved_database_url, self.settings.hash_secret)
        readme = base_root / "README.md"
        return model_card.render(
            repo_id=spec.repo_id, parent_version=spec.base_version, method=spec.method,
            params=spec.params, job_id=spec.job_id,
            requests={rid: [keyed_hash(secret, item) for item in spec.request_items[rid]]
                      for rid in spec.request_ids},
            before=job_metrics["before"], after=job_metrics["after"], quality=quality,
            base_readme=readme.read_text(encoding="utf-8", errors="replace")
            if readme.is_file() else None)

    def _publish(self, job_metrics: dict[str, Any], request_metrics: dict[str, Any],
                 stats: dict[str, Any], quality: dict[str, Any], files: list[dict[str, Any]],
                 *, has_state: bool) -> str:
        """The version row, with the metrics and the quality gate's verdict."""
        spec = self.spec
        job_metrics["unlearning"] = stats
        job_metrics["kept"] = quality["kept"]
        outcome = publish_row(
            self.settings.resolved_database_url, spec, self.settings.lease_seconds,
            storage_key=self.key, files=files, has_state=has_state, metrics=job_metrics,
            request_metrics=request_metrics, timings=self.timings,
            evaluation=job_metrics["after"], quality=quality,
            item_scores=self.after_scores.as_json(),
            base_scores=self.before_scores.as_json() if self.measured_base else None)
        if not outcome.created:
            drop_files(self.store, self.key)
        else:
            quality_published(spec.job_id, quality)
        log.info("job %s: %s, version %s", spec.job_id, outcome.status, outcome.version)
        return outcome.status


def _job_ended(exc: BaseException, settings: Settings, store: Store, spec: JobSpec,
               report: ProgressReporter, key: str | None) -> str:
    """A job stopped by an exception: cancelled, lease lost, database lost, or failed (the
    error recorded for the client); the files it wrote are dropped unless a version
    points to them."""
    url = settings.resolved_database_url
    if isinstance(exc, Cancelled):
        log.info("job %s: cancelled", spec.job_id)
        if not settle(jobs.cancel_job, url, spec.job_id):
            return "db_lost"
        drop_unreferenced(url, store, spec, key)
        return "cancelled"
    if isinstance(exc, LeaseLost):
        # Another worker holds the lineage now and re-runs this job: leave it alone.
        log.warning("job %s: lineage lease lost; leaving the job to its new holder",
                    spec.job_id)
        drop_unreferenced(url, store, spec, key)
        return "lease_lost"
    if isinstance(exc, DatabaseLost):
        # Our files stay (for the GC): whether the last commit landed is unknown.
        log.error("job %s: %s; it is requeued once the lease has expired", spec.job_id, exc)
        return "db_lost"
    if db_unreachable(exc):  # not the job's fault: it runs again, not failed
        log.error("job %s: database unreachable at %s; it is requeued once the lease has "
                  "expired", spec.job_id, report.stage, exc_info=exc)
        return "db_lost"
    log.error("job %s failed at %s", spec.job_id, report.stage, exc_info=exc)
    if isinstance(exc, CalibrationError):
        calibration_event(url, spec, exc.details())
    if not settle(jobs.fail_job, url, spec.job_id,
                   describe_error(exc, (report.stage or "").split(":")[0])):
        return "db_lost"
    drop_unreferenced(url, store, spec, key)
    return "failed"


def run_job_bounded(settings: Settings, store: Store, spec: JobSpec, owner: str,
                    keeper: LeaseKeeper) -> str:
    """run_job in a child process, stopped from here: at ALKN_JOB_TIME_LIMIT (the job fails,
    `time_limit_exceeded`) or once `keeper` lost the lease (the heartbeat sweep took the job
    back; its next attempt runs from the start). Returns the job's status, "lease_lost",
    "db_lost" or "lost" (the child ended without an outcome: run it again)."""
    url = settings.resolved_database_url

    def job() -> tuple[str, list[str], list[tuple[str, Any]]]:
        worker_metrics.defer()  # counted by the parent, which outlives this process
        # The child's own keeper: its renewals are the job's heartbeat in silent stages.
        with LeaseKeeper(url, spec.model_id, owner, settings.lease_seconds) as own:
            status = run_job(settings, store, spec, owner, own)
        return status, model_modules(), worker_metrics.deferred()

    limit = settings.job_time_limit
    warm_imports()
    result = run_in_child(job, time_limit=limit, abandon=keeper.lost.is_set, db_url=url)
    if result.outcome == "finished":
        status, modules, observed = result.value
        warm_imports(modules)  # the next job on this architecture starts warm
        worker_metrics.replay(observed)
        return str(status)
    if result.outcome == "abandoned":
        log.warning("job %s: lineage lease lost after %.1f s; its process was stopped and "
                    "the job left to the next attempt", spec.job_id, result.seconds)
        return "lease_lost"
    if result.outcome == "time_limit":
        log.error("job %s: stopped at the time limit (%g s)", spec.job_id, limit)
        error = JobError("time_limit_exceeded",
                         f"the job ran longer than the service's time limit of {limit:g} s "
                         "and was stopped; nothing was published")
        return "failed" if settle(jobs.fail_job, url, spec.job_id, error) else "db_lost"
    log.error("job %s: its process ended without an outcome (exit code %s); it runs again "
              "as a new attempt", spec.job_id, result.exitcode)
    return "lost"


# --------------------------------------------------------------------------------------------
# A lineage
# --------------------------------------------------------------------------------------------


def run_lineage_once(settings: Settings, model_id: str, worker_id: str | None = None, *,
                     store: Store | None = None) -> int:
    """Run the queued jobs of a lineage if we can take its lease; returns how many jobs
    ran. Without the lease it returns at once: the holder picks up queued requests before
    it lets go. Before each job it may yield its turn to another tenant's waiting lineage
    (`jobs.yield_turn`: the lineage is enqueued again and this returns)."""
    url = settings.resolved_database_url
    owner = worker_id or new_worker_id()
    store = store if store is not None else open_store(settings.resolved_artifact_root)
    ran = 0
    while True:
        if not jobs.take_lease(url, model_id, owner, settings.lease_seconds):
            log.info("lineage %s is leased by another worker", model_id)
            return ran
        lost = db_lost = False
        try:
            with LeaseKeeper(url, model_id, owner, settings.lease_seconds) as keeper:
                while not keeper.lost.is_set() and jobs.renew_lease(
                        url, model_id, owner, settings.lease_seconds):
                    if jobs.yield_turn(url, model_id, owner):
                        log.info("lineage %s yields to another tenant's waiting work",
                                 model_id)
                        return ran
                    spec = jobs.next_job(url, model_id)
                    if spec is None:
                        break
                    status = track_job(spec.job_id, run_job_bounded, settings, store, spec,
                                       owner, keeper)
                    ran += 1
                    if status in ("lease_lost", "db_lost"):
                        db_lost = status == "db_lost"
                        break
                lost = keeper.lost.is_set()
        finally:
            try:
                jobs.release_lease(url, model_id, owner)
            except SQLAlchemyError as exc:  # it expires by itself
                log.warning("lease of lineage %s not released: %s", model_id, exc)
        # A request that arrived while we held the lease saw it taken and left it to us.
        if lost or db_lost or not jobs.has_queued(url, model_id):
            return ran
