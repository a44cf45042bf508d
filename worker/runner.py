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

import contextlib
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from alkn_core import CalibrationError, UnlearnState, unlearn
from alkn_core.chat_template import ChatTemplateError, TemplateLimits
from alkn_core.chat_template import set_limits as set_template_limits
from alkn_core.eval_sets import EvalPlan, ItemScores, sample
from alkn_core.runtime import pick_device, pick_dtype, place
from config.settings import Settings
from registry import jobs
from registry.evaluations import finish_evaluation
from registry.jobs import JobError, JobSpec
from registry.model_files import InvalidModelFiles, check_model_dir
from registry.store import LocalStore, S3Store, open_store

from . import metrics as worker_metrics
from .evaluation import JobEvaluation
from .job_process import model_modules, run_in_child, warm_imports
from .metrics import observe_stages, track_job
from .progress_plan import describe, eta_seconds, eval_work, spans, unlearning_work
from .quality import assess as assess_quality
from .quality import published as quality_published
from .weights_check import check_config_against_weights

log = logging.getLogger(__name__)

Store = LocalStore | S3Store

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
}


# Retain items unlearning gets at most: a fixed sample (the same for every job of a model).
# It uses far fewer (a 16-item probe, 128 repair items, a retain batch per forget batch);
# encoding a registered set of 100 000 items for each job would cost more than the rest.
UNLEARN_RETAIN_ITEMS = 2048
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


# --------------------------------------------------------------------------------------------
# One job
# --------------------------------------------------------------------------------------------


def describe_error(exc: BaseException, stage: str | None) -> JobError:
    """A clear error for clients: no stack trace, and no file path or internal detail (the
    traceback goes to the worker log)."""
    if isinstance(exc, CalibrationError):
        # Says which alpha came closest and how close: the client's next move depends on it.
        return JobError("calibration_failed", str(exc)[:1000])
    if isinstance(exc, InvalidModelFiles):
        # Its message names what is wrong within the version, never a path outside it.
        return JobError("invalid_model_files", str(exc)[:1000])
    if isinstance(exc, ChatTemplateError):  # whichever stage first rendered it
        return JobError("invalid_input", str(exc)[:1000])
    if isinstance(exc, torch.OutOfMemoryError):
        return JobError("out_of_memory", "the job ran out of accelerator memory; lower "
                                         "batch_size or max_length")
    reason = _store_failure(exc) if stage in ("loading", "saving") else None
    if reason is not None:  # disk full, read-only, permissions, S3 refusing
        what = "write the new version to" if stage == "saving" else "read the base version from"
        return JobError("artifact_store_error", f"could not {what} the artifact store "
                                                f"({reason}); nothing was published")
    if isinstance(exc, ValueError) and stage not in ("loading", "saving"):
        # alkn_core's ValueErrors name the bad parameter or item: meant for the client.
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return JobError("invalid_input", message[:1000])
    where = f" while {MESSAGES[stage]}" if stage in MESSAGES else ""
    return JobError("internal_error",
                    f"the job failed{where} ({type(exc).__name__}); see the worker log")


def _store_failure(exc: BaseException) -> str | None:
    """Why the store failed, without paths: the OS error's text (also when a library wraps
    it, as safetensors does: "... (os error 28)"), or the S3 client's error class."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    found = re.search(r"os error (\d+)", str(exc))
    if found:
        return os.strerror(int(found.group(1)))
    if type(exc).__module__.startswith(("botocore", "boto3")):
        return f"S3: {type(exc).__name__}"
    return None


def _staging(store: Store) -> Path:
    maker: Callable[[], Path] | None = getattr(store, "staging_dir", None)
    return maker() if maker is not None else Path(tempfile.mkdtemp(prefix="alkn-stage-"))


def load_base(store: Store, spec: JobSpec, workdir: Path, settings: Settings | None = None
              ) -> tuple[torch.nn.Module, Any, UnlearnState | None]:
    """The base version's model, tokenizer and state. Before anything in the version is
    loaded, every file it names must be one of its own files and its config must match
    its weights (InvalidModelFiles otherwise); only safetensors are read, never remote
    code. The tokenizer's chat template renders within the settings' limits."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # progress bars per load/save only clutter the log

    if settings is not None:
        set_template_limits(TemplateLimits(settings.template_time_limit,
                                           settings.template_output_limit,
                                           settings.template_memory_limit))
    files = check_model_dir(store.fetch_dir(spec.base_storage_key, workdir / "model"))
    check_config_against_weights(files)
    src = files.root
    device = pick_device()
    model = AutoModelForCausalLM.from_pretrained(src, dtype=pick_dtype(device),
                                                 use_safetensors=True, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    place(model)
    state = None
    if spec.base_state:
        state = UnlearnState.load(store.fetch_dir(spec.base_storage_key + "-state",
                                                  workdir / "state"))
        if state.method != spec.method:  # the base row said otherwise: trust the file
            log.warning("base state of job %s is %s, not %s; starting without it",
                        spec.job_id, state.method, spec.method)
            state = None
    return model, tokenizer, state


def evaluate(evaluation: JobEvaluation, model: torch.nn.Module, tokenizer: Any,
             plan: EvalPlan, cache: ItemScores, progress: ProgressReporter) -> dict[str, Any]:
    """One of a job's evaluations: `plan`'s missing passes into `cache`, then the numbers
    (the one call every evaluation of a job goes through)."""
    return evaluation.run(model, tokenizer, plan, cache, progress)


def job_evaluation(spec: JobSpec, *, full: bool = False) -> JobEvaluation:
    """The job's sets on the model's samples (`full`: every item)."""
    return JobEvaluation.of_job(
        spec.forget_items, spec.retain_set, spec.eval_sets, spec.earlier_tasks,
        spec.request_items if len(spec.request_ids) > 1 else {}, spec.holdout_set,
        spec.params, spec.eval_max_items, spec.eval_detail_items, full=full)


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


def _publish(store: Store, settings: Settings, spec: JobSpec, model: torch.nn.Module,
             tokenizer: Any, state: UnlearnState | None) -> tuple[str, list[dict[str, Any]]]:
    """Write the new version's files (and state) under a fresh key nothing points to yet;
    on failure nothing of it is left (a state already published is deleted again)."""
    try:
        number = jobs.next_version_number(settings.resolved_database_url, spec.model_id)
    except SQLAlchemyError:  # it only names the key: a guess will do while the database is away
        number = spec.base_version + 1
    key = f"{spec.model_id}/v{number}-{uuid.uuid4().hex[:8]}"
    staged: list[Path] = []
    try:
        model_dir = _staging(store)
        staged.append(model_dir)
        model.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        if state is not None:
            state_dir = _staging(store)
            staged.append(state_dir)
            state.save(state_dir)
            store.publish_dir(state_dir, key + "-state")
        files = [f.as_dict() for f in store.publish_dir(model_dir, key)]
    except BaseException:
        with contextlib.suppress(Exception):  # the original error is the one to report
            _drop(store, key)
        raise
    finally:
        for d in staged:  # LocalStore moved them away; anything left is a temp copy
            shutil.rmtree(d, ignore_errors=True)
    return key, files


def run_job(settings: Settings, store: Store, spec: JobSpec, owner: str,
            keeper: LeaseKeeper | None = None) -> str:
    """Run one claimed job to its end; returns the job's status (or "lease_lost")."""
    url = settings.resolved_database_url
    report = ProgressReporter(url, spec, owner, settings.lease_seconds, keeper)
    timings: dict[str, float] = {}
    key: str | None = None
    t_start = time.perf_counter()
    log.info("job %s: %s on v%d, %d request(s), attempt %d", spec.job_id, spec.method,
             spec.base_version, len(spec.request_ids), spec.attempts)
    try:
        if spec.kind == "evaluate":
            return _evaluate_version(settings, store, spec, report)
        with tempfile.TemporaryDirectory(prefix="alkn-job-") as tmp:
            t = time.perf_counter()
            report.begin("loading")
            model, tokenizer, state = load_base(store, spec, Path(tmp), settings)
            report("loading", 1, 1)
            timings["loading"] = time.perf_counter() - t

            evaluation = job_evaluation(spec)
            before_scores = evaluation.cache(spec.base_scores)
            measured_base = not before_scores.items  # the base had no scores to reuse
            plan_before = evaluation.plan(tokenizer, before_scores)
            after_scores = evaluation.cache()
            plan_after = plan_before.with_cache(after_scores)
            report.spans = spans({
                "evaluating:before": eval_work(plan_before.work_sequences,
                                               plan_before.work_generated),
                **unlearning_work(spec.method, spec.params, len(spec.forget_items),
                                  len(spec.retain_set), len(spec.earlier_tasks)),
                "evaluating:after": eval_work(plan_after.work_sequences,
                                              plan_after.work_generated)})
            t = time.perf_counter()
            report.phase = "before"
            before = evaluate(evaluation, model, tokenizer, plan_before, before_scores, report)
            timings["evaluating_before"] = time.perf_counter() - t

            retain = spec.retain_set if len(spec.retain_set) <= UNLEARN_RETAIN_ITEMS \
                else sample(spec.retain_set, UNLEARN_RETAIN_ITEMS)
            result = unlearn(model, tokenizer, spec.forget_items, retain or None,
                             method=spec.method, params=spec.params, state=state,
                             progress=report, eval_sets=spec.eval_sets or None,
                             holdout=spec.holdout_set or None,
                             # guarded by the repair, each task's set on its own: no
                             # earlier request comes back
                             earlier_forget=[items for _, items in
                                             sorted(spec.earlier_tasks.items())] or None)
            model, state = result.model, result.state
            stats = dict(result.stats)
            if "calibration" in stats:
                _calibration_event(url, spec, stats["calibration"])
            timings.update(stats.pop("seconds", {}))

            t = time.perf_counter()
            report.phase = "after"
            after = evaluate(evaluation, model, tokenizer, plan_after, after_scores, report)
            timings["evaluating_after"] = time.perf_counter() - t

            t = time.perf_counter()
            report.begin("saving")
            key, files = _publish(store, settings, spec, model, tokenizer, state)
            report("saving", 1, 1)  # a cancel that came meanwhile stops it here
            timings["saving"] = time.perf_counter() - t
            timings["total"] = time.perf_counter() - t_start
            observe_stages(timings)
            del model

        job_metrics, request_metrics = _split_metrics(before, after, spec)
        job_metrics["unlearning"] = stats
        quality = assess_quality(spec, before, after, stats)
        job_metrics["kept"] = quality["kept"]
        outcome = _publish_row(
            url, spec, settings.lease_seconds, storage_key=key, files=files,
            has_state=state is not None, metrics=job_metrics, request_metrics=request_metrics,
            timings=timings, evaluation=job_metrics["after"], quality=quality,
            item_scores=after_scores.as_json(),
            base_scores=before_scores.as_json() if measured_base else None)
        if not outcome.created:
            _drop(store, key)
        else:
            quality_published(spec.job_id, quality)
        log.info("job %s: %s, version %s", spec.job_id, outcome.status, outcome.version)
        return outcome.status
    except Cancelled:
        log.info("job %s: cancelled", spec.job_id)
        if not _settle(jobs.cancel_job, url, spec.job_id):
            return "db_lost"
        _drop_unreferenced(url, store, spec, key)
        return "cancelled"
    except LeaseLost:
        # Another worker holds the lineage now and re-runs this job: leave it alone.
        log.warning("job %s: lineage lease lost; leaving the job to its new holder",
                    spec.job_id)
        _drop_unreferenced(url, store, spec, key)
        return "lease_lost"
    except DatabaseLost as exc:
        # Our files stay (for the GC): whether the last commit landed is unknown.
        log.error("job %s: %s; it is requeued once the lease has expired", spec.job_id, exc)
        return "db_lost"
    except Exception as exc:
        if db_unreachable(exc):  # not the job's fault: it runs again, not failed
            log.error("job %s: database unreachable at %s; it is requeued once the lease has "
                      "expired", spec.job_id, report.stage, exc_info=exc)
            return "db_lost"
        log.exception("job %s failed at %s", spec.job_id, report.stage)
        if isinstance(exc, CalibrationError):
            _calibration_event(url, spec, exc.details())
        if not _settle(jobs.fail_job, url, spec.job_id,
                       describe_error(exc, (report.stage or "").split(":")[0])):
            return "db_lost"
        _drop_unreferenced(url, store, spec, key)
        return "failed"


# The progress bar of a full evaluation: loading, then the evaluation (phase "full").
EVALUATION_SPANS: dict[str, tuple[float, float]] = {
    "queued": (0.0, 0.0), "loading": (0.0, 0.05), "evaluating:full": (0.05, 1.0),
    "done": (1.0, 1.0)}


def _evaluate_version(settings: Settings, store: Store, spec: JobSpec,
                      report: ProgressReporter) -> str:
    """A full evaluation of the base version (`kind` "evaluate"): every item of every set,
    what the version's stored scores hold read from them; the numbers go on the job, the
    scores on the version. Makes no version."""
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    report.spans = dict(EVALUATION_SPANS)
    with tempfile.TemporaryDirectory(prefix="alkn-job-") as tmp:
        report.begin("loading")
        model, tokenizer, _ = load_base(store, spec, Path(tmp), settings)
        report("loading", 1, 1)
        timings["loading"] = time.perf_counter() - t_start
        evaluation = job_evaluation(spec, full=True)
        scores = evaluation.cache(spec.base_scores)
        t = time.perf_counter()
        report.phase = "full"
        result = evaluate(evaluation, model, tokenizer, evaluation.plan(tokenizer, scores),
                          scores, report)
        timings["evaluating_full"] = time.perf_counter() - t
        del model
    timings["total"] = time.perf_counter() - t_start
    status = finish_evaluation(settings.resolved_database_url, spec.job_id,
                               evaluation=result, timings=timings,
                               item_scores=scores.as_json())
    log.info("job %s: full evaluation of v%d, %s", spec.job_id, spec.base_version, status)
    return status


def _publish_row(url: str, spec: JobSpec, retry_for: float, **kwargs: Any
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


def _settle(record: Callable[..., None], *args: Any) -> bool:
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


def _calibration_event(url: str, spec: JobSpec, calibration: dict[str, Any]) -> None:
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


def _drop(store: Store, key: str | None) -> None:
    if key is not None:
        store.delete(key)
        store.delete(key + "-state")


def _drop_unreferenced(url: str, store: Store, spec: JobSpec, key: str | None) -> None:
    """Delete files we published only when we know no committed version points to them."""
    if key is None:
        return
    try:
        if jobs.version_of_job(url, spec.model_id, spec.job_id) is None:
            _drop(store, key)
    except SQLAlchemyError:
        log.warning("could not check job %s; its files under %s stay", spec.job_id, key)


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
        return "failed" if _settle(jobs.fail_job, url, spec.job_id, error) else "db_lost"
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
