"""Where a job's time goes, measured on real jobs of the worker in one run.

Every job runs as the service runs it (`worker.runner.run_lineage_once`: a child process per
job, the registry on SQLite, a local artifact store) on the demo model, registered as `alkn
serve` registers it (its retain, holdout and general sets), with the service's default
params. Four parts, each printed with its ratios:

1. A lineage of --jobs jobs of --facts facts each (different people's): each job's stages as
   shares of its time; evaluation's share (before + after) of the first job (which also
   measures the base version once for the lineage) and of every later job; the last job's
   time / the first's; each job's repair rounds and the general probe it left (a fraction of
   the lineage's first model's: the wear the rounds chase).
2. A retain set of 10 000 items against one of 200 (the same model, jobs alternating): job
   time ratio.
3. Growth: one job each at 1x, 4x and 16x --growth-facts forget items, each the first job
   on a measured base: the log-log slope of job time against forget tokens and the fixed
   overhead (the intercept of a least-squares line through the points) as a share of the 1x
   job, and the same without the repair's seconds.
4. A full evaluation of the lineage's last version (`kind: evaluate`) against a job's
   sampled one.

Each job's model utility kept (the quality gate's ratio to the lineage's first version) is
printed beside its time. `--variant NAME=JSON` (repeatable) runs the parts again with those
params over the defaults, each on a registry of its own, and ends with a table of every
variant's ratios and what it kept, side by side; `--demo-root DIR`: another demo build.

    python bench/job_cost.py [--jobs 10] [--facts 4] [--growth-facts 16] [--json out.json]
                             [--variant 'one_round={"repair_rounds": 1}' ...] [--demo-root DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.* importable

from bench.job_cost_variants import cell as _cell  # noqa: E402
from bench.job_cost_variants import summary_rows, variant  # noqa: E402

EVAL_STAGES = ("evaluating_before", "evaluating_after")
STAGES = ("loading", "evaluating_before", "probing", "training", "negating",
          "evaluating_after", "saving")
TARGET_EVAL_SHARE = 0.25
TARGET_LINEAGE = 1.3
TARGET_RETAIN = 1.2
TARGET_SLOPE = 1.1
TARGET_OVERHEAD = 0.2


def demo_dirs(root: Path | None) -> tuple[Path, Path]:
    """model/ and data/ of the committed demo, or of another build of it (`python -m
    alkn_core.demo build --out DIR --seed N`: another corpus, another model)."""
    from alkn_core.demo_model import demo_data_dir, demo_model_dir

    return (root / "model", root / "data") if root else (demo_model_dir(), demo_data_dir())


class Service:
    """A registry on SQLite with a local store under a temporary home."""

    def __init__(self, params: dict[str, Any] | None = None,
                 demo_root: Path | None = None) -> None:
        from config.settings import Settings
        from registry.migrate import upgrade

        self.params = dict(params or {})  # over the demo's registered defaults
        self.model_dir, self.data_dir = demo_dirs(demo_root)
        self.home = Path(tempfile.mkdtemp(prefix="alkn-jobcost-"))
        self.settings = Settings(home=self.home, register_demo=False)
        upgrade(self.settings.resolved_database_url)
        self.url = self.settings.resolved_database_url

    def register(self, name: str, retain: list[dict[str, Any]] | None = None) -> str:
        from alkn_cli.service import (
            DEMO_DEFAULT_PARAMS,  # what `alkn serve` registers the demo with
        )
        from alkn_core.demo_model import demo_registration_sets
        from registry.catalog import register_model, tenant_named
        from registry.db import session_scope
        from registry.store import open_store

        sets = demo_registration_sets(self.data_dir)
        with session_scope(self.url) as s:
            model = register_model(
                s, open_store(self.settings.resolved_artifact_root),
                tenant_named(s, "bench").id, name, self.model_dir,
                qa_template="Question: {question}\nAnswer: {answer}",
                default_params={**DEMO_DEFAULT_PARAMS, **self.params},
                retain_set=retain if retain is not None else sets["retain"],
                holdout_set=sets["holdout"], eval_sets=sets["eval_sets"])
            return str(model.id)

    def run(self, model_id: str, items: list[dict[str, Any]]) -> dict[str, float]:
        """Submit one request, run the lineage; the job's stage timings and wall time, its
        repair rounds and the progress bar's estimate of them."""
        from registry.db import session_scope
        from registry.forget_requests import submit_forget_request
        from registry.jobs.build import lineage_chain, repair_rounds_seen, repair_stats
        from registry.models import Job, Model
        from registry.versions import latest_ready
        from worker.progress_plan import expected_repair_rounds
        from worker.runner import run_lineage_once

        with session_scope(self.url) as s:
            model = s.get(Model, model_id)
            assert model is not None
            base = latest_ready(s, model)
            assert base is not None
            seen = repair_rounds_seen(lineage_chain(s, model_id, base))  # the job's spec's
            submit_forget_request(s, model.tenant_id, model, items)
        t = time.perf_counter()
        run_lineage_once(self.settings, model_id)
        wall = time.perf_counter() - t
        with session_scope(self.url) as s:
            job = s.query(Job).filter_by(model_id=model_id).order_by(
                Job.created_at.desc()).first()
            assert job is not None and job.status == "succeeded", (job and job.error)
            timings = {k: float(v) for k, v in (job.timings or {}).items()}
            repair = repair_stats(job.metrics)
            params = dict(job.params)
            general, ref = repair.get("general_probe"), repair.get("general_probe_reference")
            utility = (job.quality or {}).get("model_utility_ratio")
        return {**timings, "wall": wall, "repair_rounds": len(repair.get("rounds") or []),
                # the quality gate's model utility: after / the lineage's first version's
                "utility_kept": utility,
                # the model the job left: its general probe / the lineage's first model's
                "general_kept": general / ref if general is not None and ref else None,
                "rounds_expected": expected_repair_rounds(params, seen),
                "rounds_expected_without_history": expected_repair_rounds(params, None)}


def forget_pool(data: Path) -> dict[str, list[dict[str, Any]]]:
    """Forget items: forget10's people first (nobody in the registered retain set), then
    other people's facts that are not in it either ("others", also big_retain's source)."""
    from alkn_core.demo_corpus import read_jsonl
    from alkn_core.demo_model import demo_registration_sets

    forget10 = [{"question": r["question"], "answer": r["answer"]}
                for r in read_jsonl(data / "forget10.json")]
    taken = {r["question"] for r in demo_registration_sets(data)["retain"]} | {
        r["question"] for r in forget10}
    others = [{"question": r["question"], "answer": r["answer"]}
              for r in read_jsonl(data / "full.json") if r["question"] not in taken]
    return {"forget": forget10 + others, "others": others}


def big_retain(n: int, data: Path) -> list[dict[str, Any]]:
    """n distinct QA items of the retain people (facts repeated with a numbered suffix past
    the corpus's size, as a registered retain set of that size would be)."""
    base = forget_pool(data)["others"]
    out = []
    for i in range(n):
        item = base[i % len(base)]
        k = i // len(base)
        out.append(item if k == 0 else {"question": f"{item['question']} ({k})",
                                        "answer": item["answer"]})
    return out


def evaluation_share(t: dict[str, float]) -> float:
    return sum(t.get(k, 0.0) for k in EVAL_STAGES) / t["total"]


def without_repair(t: dict[str, Any]) -> float:
    """A job's time less its repair's: the repair's rounds adapt (until the probes are back),
    so each ratio is printed without them too."""
    return t["total"] - t.get("repair", 0.0)


def shares_row(label: str, t: dict[str, Any]) -> str:
    cells = " ".join(f"{t.get(k, 0.0) / t['total']:>6.2f}" for k in STAGES)
    return (f"{label:<8} {t['total']:>7.1f} s {cells} {evaluation_share(t):>6.2f} "
            f"{t.get('repair_rounds', 0):>6} {_cell(t.get('general_kept')):>7} "
            f"{_cell(t.get('utility_kept')):>7}")


def full_evaluation(svc: Service, model_id: str) -> dict[str, float]:
    """Evaluate the lineage's newest version in full (POST .../versions/{ref}:evaluate)."""
    from registry.db import session_scope
    from registry.evaluations import enqueue_evaluation
    from registry.models import Job, Model
    from registry.versions import latest_ready
    from worker.runner import run_lineage_once

    with session_scope(svc.url) as s:
        model = s.get(Model, model_id)
        assert model is not None
        version = latest_ready(s, model)
        assert version is not None
        job, _ = enqueue_evaluation(s, model, version)
        job_id = job.id
    run_lineage_once(svc.settings, model_id)
    with session_scope(svc.url) as s:
        done = s.get(Job, job_id)
        assert done is not None and done.status == "succeeded", done and done.error
        return {k: float(v) for k, v in (done.timings or {}).items()}


def lineage(svc: Service, n_jobs: int, facts: int, forget: list[dict[str, Any]]
            ) -> dict[str, Any]:
    model = svc.register("lineage")
    runs = [svc.run(model, forget[i * facts : (i + 1) * facts]) for i in range(n_jobs)]
    print(f"\n1. A lineage of {n_jobs} jobs, {facts} facts each: stage shares of each job")
    print(f"{'job':<8} {'time':>9} " + " ".join(f"{s[:6]:>6}" for s in STAGES)
          + "   eval rounds general utility")
    for i, t in enumerate(runs, 1):
        print(shares_row(f"job {i}", t))
    later = [evaluation_share(t) for t in runs[1:]]
    k = min(3, len(runs) // 2)
    first_k = statistics.median(t["total"] for t in runs[:k])
    last_k = statistics.median(t["total"] for t in runs[-k:])
    evals = [sum(t.get(s, 0.0) for s in EVAL_STAGES) for t in runs]
    rest = [without_repair(t) for t in runs]
    out = {"jobs": runs, "first_eval_share": evaluation_share(runs[0]),
           "later_eval_share_median": statistics.median(later) if later else None,
           "later_eval_share_max": max(later) if later else None,
           "last_over_first": runs[-1]["total"] / runs[0]["total"],
           "last_k_over_first_k": last_k / first_k,
           "evaluation_last_over_first": evals[-1] / evals[0],
           "repair_rounds": [t.get("repair_rounds") for t in runs],
           "without_repair_last_over_first": rest[-1] / rest[0],
           "without_repair_last_k_over_first_k": statistics.median(rest[-k:])
           / statistics.median(rest[:k]),
           "repair_seconds": [t.get("repair", 0.0) for t in runs],
           "last_utility_kept": runs[-1].get("utility_kept"),
           "min_utility_kept": min((t["utility_kept"] for t in runs
                                    if t.get("utility_kept") is not None), default=None)}
    print(f"evaluation share: job 1 (measures the base once) {out['first_eval_share']:.2f}; "
          f"jobs 2-{n_jobs} median {out['later_eval_share_median']:.2f}, max "
          f"{out['later_eval_share_max']:.2f} (target <= {TARGET_EVAL_SHARE})")
    print(f"job {n_jobs} / job 1: {out['last_over_first']:.2f}x; median of the last {k} / of "
          f"the first {k}: {out['last_k_over_first_k']:.2f}x (target <= {TARGET_LINEAGE}); "
          f"evaluation alone {out['evaluation_last_over_first']:.2f}x; repair rounds per job "
          f"{out['repair_rounds']} (the repair stops when the probes are back or stop "
          "improving, so a job's time varies with them)")
    print(f"without the repair: job {n_jobs} / job 1 {out['without_repair_last_over_first']:.2f}x"
          f", the last {k} / the first {k} {out['without_repair_last_k_over_first_k']:.2f}x; "
          "repair seconds per job " + " ".join(f"{x:.1f}" for x in out["repair_seconds"]))
    errors = {key: statistics.fmean(abs(t[key] - r)
                                    for t, r in zip(runs, out["repair_rounds"], strict=True))
              for key in ("rounds_expected", "rounds_expected_without_history")}
    out["rounds_estimate_error"] = errors
    print("the progress bar's estimate of the repair rounds: mean error "
          f"{errors['rounds_expected']:.2f} rounds from the lineage's last repair, "
          f"{errors['rounds_expected_without_history']:.2f} from half of repair_rounds; "
          "estimated " + " ".join(f"{t['rounds_expected']:g}" for t in runs))
    full = full_evaluation(svc, model)
    out["full_evaluation"] = full
    print(f"4. A full evaluation of version {n_jobs + 1} (every item, kind evaluate): "
          f"{full['evaluating_full']:.1f} s, against {runs[-1]['evaluating_after']:.1f} s for "
          f"job {n_jobs}'s sampled evaluation after unlearning")
    return out


def retain_size(svc: Service, facts: int, forget: list[dict[str, Any]], rounds: int
                ) -> dict[str, Any]:
    from alkn_core.eval_sets import sample

    big = big_retain(10_000, svc.data_dir)
    # the small set drawn from the big one: the same kind of items, only fewer
    small = svc.register("retain200", sample(big, 200))
    large = svc.register("retain10k", big)
    times: dict[str, list[float]] = {"200": [], "10000": []}
    runs: dict[str, list[dict[str, float]]] = {"200": [], "10000": []}
    start = 40  # forget10 items after the lineage's: nobody in either retain set
    for r in range(rounds + 1):  # round 0 warms both lineages up (their base is measured)
        items = forget[start : start + facts]  # the same request to both
        start += facts
        for label, model in (("200", small), ("10000", large)):
            t = svc.run(model, items)
            if r > 0:
                times[label].append(t["total"])
                runs[label].append(t)
    ratio = statistics.median(times["10000"]) / statistics.median(times["200"])
    rest = {k: statistics.median(without_repair(t) for t in v) for k, v in runs.items()}
    print(f"\n2. Retain set of 10 000 vs 200 items, {rounds} job(s) each after one warm-up: "
          f"median {statistics.median(times['10000']):.1f} s vs "
          f"{statistics.median(times['200']):.1f} s = {ratio:.2f}x (target <= "
          f"{TARGET_RETAIN}); without the repair {rest['10000']:.1f} s vs "
          f"{rest['200']:.1f} s = {rest['10000'] / rest['200']:.2f}x; repair rounds "
          f"{[t['repair_rounds'] for t in runs['10000']]} vs "
          f"{[t['repair_rounds'] for t in runs['200']]}")
    return {"seconds": times, "ratio": ratio, "jobs": runs,
            "ratio_without_repair": rest["10000"] / rest["200"]}


def growth(svc: Service, base_facts: int, forget: list[dict[str, Any]]) -> dict[str, Any]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(svc.model_dir)
    sizes = (1, 4, 16)
    points = []
    pos = 0
    for mult in sizes:
        n = base_facts * mult
        items = forget[pos : pos + n]
        pos += n
        # A lineage of its own each: every point is a first job on a measured base.
        model = svc.register(f"growth{mult}")
        svc.run(model, forget[-2:])  # measures the base; not timed
        tokens = sum(len(tok(f"{i['question']} {i['answer']}")["input_ids"]) for i in items)
        t = svc.run(model, items)
        points.append({"multiple": mult, "items": n, "tokens": tokens, "seconds": t["total"],
                       "timings": t})
    xs = [math.log(p["tokens"]) for p in points]
    ys = [math.log(p["seconds"]) for p in points]
    slope = _fit(xs, ys)[1]
    intercept = _fit([p["tokens"] for p in points], [p["seconds"] for p in points])[0]
    overhead = max(0.0, intercept) / points[0]["seconds"]
    rest = [without_repair(p["timings"]) for p in points]
    rest_intercept = _fit([p["tokens"] for p in points], rest)[0]
    rest_overhead = max(0.0, rest_intercept) / rest[0]
    print(f"\n3. Growth with the forget set ({base_facts} items = 1x):")
    for p in points:
        print(f"   {p['multiple']:>2}x {p['items']:>4} items {p['tokens']:>6} tokens "
              f"{p['seconds']:>7.1f} s, model utility kept "
              f"{_cell(p['timings'].get('utility_kept'))}")
    print(f"log-log slope {slope:.2f} (target <= {TARGET_SLOPE}); fixed overhead "
          f"{intercept:.1f} s = {overhead:.2f} of the 1x job (target <= {TARGET_OVERHEAD}); "
          f"without the repair {rest_intercept:.1f} s = {rest_overhead:.2f} of its "
          f"{rest[0]:.1f} s")
    for stage in STAGES[:-1] + ("repair",):
        print(f"   {stage:<18} " + " ".join(f"{p['timings'].get(stage, 0.0):>6.1f}"
                                            for p in points) + " s")
    service = [p["timings"].get("loading", 0.0) + p["timings"].get("saving", 0.0)
               + p["timings"]["wall"] - p["timings"]["total"] for p in points]
    print(f"   the service's own part (loading, saving, process and database around the job): "
          f"{service[0]:.1f} s = {service[0] / points[0]['seconds']:.2f} of the 1x job")
    return {"points": points, "slope": slope, "intercept_s": intercept, "overhead": overhead,
            "without_repair_intercept_s": rest_intercept,
            "without_repair_overhead": rest_overhead,
            "utility_kept": [p["timings"].get("utility_kept") for p in points]}


def _fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b x: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mx) ** 2 for x in xs)
    return my - b * mx, b


def run_parts(args: argparse.Namespace, params: dict[str, Any], forget: list[dict[str, Any]]
              ) -> dict[str, Any]:
    svc = Service(params, args.demo_root)
    parts = set(args.parts.split(","))
    out: dict[str, Any] = {"facts": args.facts, "params": params}
    if "lineage" in parts:
        out["lineage"] = lineage(svc, args.jobs, args.facts, forget)
    if "retain" in parts:
        out["retain"] = retain_size(svc, args.facts, forget, args.retain_rounds)
    if "growth" in parts:
        out["growth"] = growth(svc, args.growth_facts, forget)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=10)
    ap.add_argument("--facts", type=int, default=4)
    ap.add_argument("--retain-rounds", type=int, default=3)
    ap.add_argument("--growth-facts", type=int, default=16)
    ap.add_argument("--parts", default="lineage,retain,growth")
    ap.add_argument("--variant", type=variant, action="append", default=[],
                    help="NAME=JSON: the parts again with these params over the defaults")
    ap.add_argument("--demo-root", type=Path,
                    help="another build of the demo (python -m alkn_core.demo build --out DIR "
                         "--seed N): DIR's model/ and data/ instead of the committed ones")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    forget = forget_pool(demo_dirs(args.demo_root)[1])["forget"]
    results: dict[str, dict[str, Any]] = {}
    for name, params in [("defaults", {}), *args.variant]:
        if args.variant:
            print(f"\n===== {name}: {json.dumps(params)}")
        results[name] = run_parts(args, params, forget)
    if args.variant:
        print("\nSide by side (ratios within each variant; utility: model utility kept, "
              "a fraction of the lineage's first version's):")
        print("\n".join(summary_rows(results)))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        out = results["defaults"] if not args.variant else results
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
