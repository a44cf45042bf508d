"""A full evaluation of a version (a job of `kind` "evaluate", asked for with
`POST /v1/models/{name}/versions/{ref}:evaluate`): every item of every set; makes no version."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

from config.settings import Settings
from registry.evaluations import finish_evaluation
from registry.jobs import JobSpec

from .evaluation import evaluate, job_evaluation
from .job_control import ProgressReporter
from .version_files import Store, load_base

log = logging.getLogger(__name__)


# The progress bar of a full evaluation: loading, then the evaluation (phase "full").
EVALUATION_SPANS: dict[str, tuple[float, float]] = {
    "queued": (0.0, 0.0), "loading": (0.0, 0.05), "evaluating:full": (0.05, 1.0),
    "done": (1.0, 1.0)}


def run_full_evaluation(settings: Settings, store: Store, spec: JobSpec,
                      report: ProgressReporter) -> str:
    """A full evaluation of the base version (`kind` "evaluate"): every item of every set,
    what the version's stored scores hold read from them; the numbers go on the job, the
    scores on the version. Makes no version."""
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    report.spans = dict(EVALUATION_SPANS)
    with tempfile.TemporaryDirectory(prefix="alkn-job-") as tmp:
        report.begin("loading")
        base = load_base(store, spec, Path(tmp), settings)
        model, tokenizer = base.model, base.tokenizer
        del base
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
