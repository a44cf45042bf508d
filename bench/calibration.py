"""Calibrated negation (`alpha: "auto"`) against fixed alphas over a continual sequence.

forget10 is split by person into T tasks (as bench/continual.py does), unlearned in sequence
with ALKN from the target model, once per setting: alpha "auto" with each forget target
(`holdout`: the holdout items' probability on the model before the first task, what the
service does for a model with a holdout set; `ratio`: 0.1 x the task's forget probability
before it) and every fixed alpha of a grid. The targets are measured on that run's own
model; after each task,
the task's forget probability, the mean over the tasks so far, forget quality and model
utility (bench/continual.py's evaluation). The best fixed alpha in hindsight, per target,
is the one that reached the target on every task with the highest final utility. Reported
too: the alpha search's cost as a fraction of the task's training time (goal <= 0.3).

    python bench/calibration.py --data-dir DIR --out DIR [--target DIR] [--retain DIR]
        [--tasks 5] [--max-items 40] [--alphas 0.5,1,1.5,2,2.5,3]
        [--auto-targets holdout,ratio] [--params JSON]

Writes OUT/results.json, OUT/results.md and OUT/calibration.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.* importable

Record = dict[str, Any]
SEARCH_COST_GOAL = 0.3
TARGET_KINDS = ("holdout", "ratio")


def _continual() -> ModuleType:
    """bench/continual.py's definitions (not its CLI): the same data, models and evaluation."""
    import bench.continual

    return bench.continual


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Our options; every other one is bench/continual.py's (same meaning and default)."""
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Also every option of bench/continual.py that sets the models, tasks and "
               "evaluation: --target, --retain, --tasks, --epochs, --finetune-epochs, "
               "--tiny-size, --vocab-size, --max-new-tokens, --eval-batch-size, --seed.")
    ap.add_argument("--data-dir", default="alkn_core/demo_assets/data")
    ap.add_argument("--out", default="bench/out/calibration")
    ap.add_argument("--max-items", type=int, default=40,
                    help="cap on items per task and per eval set")
    ap.add_argument("--alphas", default="0.5,1,1.5,2,2.5,3", help="the fixed-alpha grid")
    ap.add_argument("--auto-targets", default="holdout,ratio",
                    help=f"targets of the auto runs, of {','.join(TARGET_KINDS)}")
    ap.add_argument("--params", default='{"mask_rule": "retain_safe"}',
                    help="JSON params of every run (over bench/continual.py's defaults)")
    ours, rest = ap.parse_known_args(argv)
    args = _continual().parse_args(["--data-dir", ours.data_dir, "--out", ours.out,
                                    "--max-items", str(ours.max_items), *rest])
    args.alphas, args.auto_targets, args.params = ours.alphas, ours.auto_targets, ours.params
    for unused in ("methods", "sweep", "people"):  # continual's, not ours
        vars(args).pop(unused, None)
    return args


# --------------------------------------------------------------------------------------------
# Summaries (pure: tested on hand-made runs)
# --------------------------------------------------------------------------------------------


def reached_all(run: Record, kind: str) -> bool:
    return bool(run["tasks"]) and all(t["reached"][kind] for t in run["tasks"])


def best_fixed(runs: list[Record], kind: str) -> Record | None:
    """The fixed-alpha run that reached the `kind` target on every task with the highest
    utility after the last task; failing that, the one reaching it on most tasks."""
    fixed = [r for r in runs if r["alpha"] != "auto" and r["tasks"]]

    def key(r: Record) -> tuple[int, float]:
        return (sum(t["reached"][kind] for t in r["tasks"]),
                r["tasks"][-1]["model_utility"] or 0.0)

    return max(fixed, key=key) if fixed else None


def search_costs(run: Record) -> dict[str, float | None]:
    """The alpha search's seconds over the task's training seconds (mean and max over the
    tasks), and the same with the target's probes (forget, retain probe, holdout) added."""
    search, total = [], []
    for t in run["tasks"]:
        c, train = t.get("calibration"), t["seconds"]["training"]
        if c is None or not train:
            continue
        search.append(c["search_seconds"] / train)
        total.append((c["search_seconds"] + c["probe_seconds"]) / train)

    def agg(xs: list[float], f: Any) -> float | None:
        return f(xs) if xs else None

    return {"search_mean": agg(search, statistics.mean), "search_max": agg(search, max),
            "with_probes_mean": agg(total, statistics.mean),
            "with_probes_max": agg(total, max)}


def _fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "n/a"
    return format(x, ".2e") if spec == "e" else format(x, spec)


def comparison_rows(res: Record, kind: str) -> list[Record]:
    """auto (this target), the best fixed alpha in hindsight (for this target), alpha = 1."""
    runs = res["runs"]
    auto = next((r for r in runs if r["alpha"] == "auto" and r["target_kind"] == kind), None)
    best = best_fixed(runs, kind)
    one = next((r for r in runs if r["alpha"] == 1.0), None)
    rows = []
    for role, r in (("auto", auto), ("best fixed", best), ("alpha 1", one)):
        if r is not None:
            label = f"best fixed in hindsight ({r['label']})" if role == "best fixed" \
                else r["label"]
            rows.append({"role": role, "run": r, "label": label})
    return rows


def write_markdown(res: Record, path: Path) -> list[str]:
    T = res["config"]["tasks"]
    head = " | ".join(f"task {t}" for t in range(1, T + 1))
    lines = ["# Calibrated negation (alpha: auto) vs fixed alphas", "",
             f"{T} continual tasks, ALKN params {json.dumps(res['config']['run_params'])}; "
             f"target model: forget probability {_fmt(res['target_forget_probability'])}, "
             f"model utility {_fmt(res['target_utility'])}.", ""]
    for kind in res["config"]["auto_targets"]:
        lines += [f"## Target: {kind}", "",
                  "Per task: alpha used / this task's forget probability after it (target "
                  "measured before it; * = reached) / model utility.", "",
                  f"| run | | {head} |", "|---|---" + "|---" * T + "|"]
        for row in comparison_rows(res, kind):
            r, label = row["run"], row["label"]
            alphas = [("failed" if t["failed"] else _fmt(t["alpha"], ".3g"))
                      for t in r["tasks"]]
            forget = [f"{_fmt(t['forget_after'])}{'*' if t['reached'][kind] else ''} "
                      f"(<= {_fmt(t['targets'][kind])})" for t in r["tasks"]]
            utility = [_fmt(t["model_utility"]) for t in r["tasks"]]
            lines += [f"| {label} | alpha | " + " | ".join(alphas) + " |",
                      "| | forget prob | " + " | ".join(forget) + " |",
                      "| | model utility | " + " | ".join(utility) + " |"]
        lines.append("")
    lines += ["## Every run", "",
              f"| run | reached (holdout) | reached (ratio) | mean forget prob after task {T} "
              f"| forget quality | model utility after task {T} |", "|---|---|---|---|---|---|"]
    for r in res["runs"]:
        last = r["tasks"][-1] if r["tasks"] else {}
        n = [sum(t["reached"][k] for t in r["tasks"]) for k in TARGET_KINDS]
        lines.append(f"| {r['label']} | {n[0]}/{T} | {n[1]}/{T} | "
                     f"{_fmt(last.get('mean_forget_probability'))} | "
                     f"{_fmt(last.get('forget_quality'), 'e')} | "
                     f"{_fmt(last.get('model_utility'))} |")
    lines += ["", f"## Cost of the search (goal <= {SEARCH_COST_GOAL} of training)", "",
              "| run | evaluations per task | search / training (mean, max) | "
              "with the target's probes (mean, max) |", "|---|---|---|---|"]
    for r in res["runs"]:
        if r["alpha"] != "auto":
            continue
        c = r["search_cost"]
        evals = [str(t["calibration"]["evaluations"]) if t.get("calibration") else "-"
                 for t in r["tasks"]]
        lines.append(f"| {r['label']} | {', '.join(evals)} | {_fmt(c['search_mean'], '.2f')}, "
                     f"{_fmt(c['search_max'], '.2f')} | {_fmt(c['with_probes_mean'], '.2f')}, "
                     f"{_fmt(c['with_probes_max'], '.2f')} |")
    lines += ["", "## Verdict", "", *[f"- {v}" for v in res["verdict"]]]
    path.write_text("\n".join(lines) + "\n")
    return lines


def verdict(res: Record) -> list[str]:
    out = []
    for kind in res["config"]["auto_targets"]:
        auto = next(r for r in res["runs"] if r["alpha"] == "auto" and r["target_kind"] == kind)
        best = best_fixed(res["runs"], kind)
        n = sum(t["reached"][kind] for t in auto["tasks"])
        line = f"{kind} target: auto reached it on {n}/{len(auto['tasks'])} tasks"
        if best is not None:
            m = sum(t["reached"][kind] for t in best["tasks"])
            ua, ub = auto["tasks"][-1]["model_utility"], best["tasks"][-1]["model_utility"]
            per_task = sum((a["model_utility"] or 0) >= (b["model_utility"] or 0) - 1e-12
                           for a, b in zip(auto["tasks"], best["tasks"], strict=True))
            line += (f"; best fixed alpha in hindsight {best['label']} reached it on "
                     f"{m}/{len(best['tasks'])}; utility after the last task {_fmt(ua)} vs "
                     f"{_fmt(ub)} ({'at least as much' if (ua or 0) >= (ub or 0) else 'less'}"
                     f"; auto >= it after {per_task}/{len(auto['tasks'])} tasks)")
        c = auto["search_cost"]
        line += (f"; search cost {_fmt(c['search_mean'], '.2f')} of training on average, "
                 f"max {_fmt(c['search_max'], '.2f')} (goal <= {SEARCH_COST_GOAL}); "
                 f"{_fmt(c['with_probes_mean'], '.2f')} with the target's probes")
        out.append(line)
    return out


def write_plot(res: Record, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or in CI
    import matplotlib.pyplot as plt

    kinds = res["config"]["auto_targets"]
    fig, axes = plt.subplots(len(kinds), 2, figsize=(11, 4 * len(kinds)), squeeze=False)
    for row, kind in enumerate(kinds):
        ax_f, ax_u = axes[row]
        for item in comparison_rows(res, kind):
            r, label = item["run"], item["label"]
            xs = [t["task"] for t in r["tasks"]]
            line = ax_f.plot(xs, [max(t["forget_after"], 1e-6) for t in r["tasks"]],
                             marker="o", label=label)[0]
            ax_f.plot(xs, [t["targets"][kind] for t in r["tasks"]], linestyle=":",
                      color=line.get_color())
            ax_u.plot([0, *xs], [res["target_utility"]] + [t["model_utility"]
                                                         for t in r["tasks"]],
                      marker="o", label=label)
        T = res["config"]["tasks"]
        ax_f.set_xticks(range(1, T + 1))
        ax_u.set_xticks(range(0, T + 1))
        ax_f.set_yscale("log")
        ax_f.set_xlabel("task")
        ax_f.set_ylabel("this task's forget probability (dotted: target)")
        ax_f.set_title(f"{kind} target: forgetting")
        ax_f.legend(fontsize=7)
        ax_u.set_xlabel("task (0 = target model)")
        ax_u.set_ylabel("model utility")
        ax_u.set_title(f"{kind} target: utility")
        ax_u.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


def run_settings(alphas: str, auto_targets: list[str]) -> list[Record]:
    out: list[Record] = [{"label": f"auto ({k} target)", "alpha": "auto", "target_kind": k}
                         for k in auto_targets]
    out += [{"label": f"alpha={float(a):g}", "alpha": float(a), "target_kind": None}
            for a in alphas.split(",") if a.strip()]
    return out


@dataclass
class _World:
    """What every setting's run shares: models, tasks and evaluation sets (bench/continual.py's
    data, capped and sampled the same way)."""

    args: argparse.Namespace
    tok: Any
    target: Any
    tasks: list[list[Record]]
    names: list[str]
    retain_train: list[Record]
    general: dict[str, list[Record]]
    holdout: list[Record]
    params: dict[str, Any]
    prob: Callable[[Any, list[Record]], float]
    evaluate: Callable[..., Record]
    retain_trs: dict[str, list[float]]


def _world(args: argparse.Namespace, out: Path) -> tuple[_World, Any]:
    """The shared world, and the retain model (for the reference evaluation)."""
    from alkn_core.data import encode_items, pad_id
    from alkn_core.eval_sets import evaluate_sets
    from alkn_core.losses import mean_answer_probability
    from alkn_core.methods import method_params
    from alkn_core.tofu import load_tofu_dir
    from bench.continual_data import (
        build_data_tokenizer,
        cap,
        load_or_train,
        split_tasks,
        with_perturbed,
    )

    cont = _continual()
    data = load_tofu_dir(args.data_dir)
    if not data.holdout10 and "holdout" in args.auto_targets:
        raise SystemExit("the holdout target needs holdout10.json in --data-dir")
    rng = random.Random(args.seed)
    tokenizer = None
    if not args.target and not (out / "target" / "config.json").is_file():
        tokenizer = build_data_tokenizer(data, args.vocab_size)
    target, tok = load_or_train("target", args.target, out, data.full, tokenizer, args)
    retain_model, retain_tok = load_or_train("retain", args.retain, out, data.retain90, tok,
                                             args)
    tasks = [cap(t, args.max_items) for t in split_tasks(list(data.forget10), args.tasks)]
    names = [f"task{i}" for i in range(1, len(tasks) + 1)]
    task_eval = dict(zip(names, with_perturbed(tasks, data.forget10_perturbed), strict=True))
    retain_eval = cap(data.retain_perturbed or data.retain90, args.max_items, rng)
    retain_train = cap(data.retain90, args.max_items, rng)
    general = {k: cap(v, args.max_items, rng) for k, v in data.general_sets().items()}
    holdout = cap(data.holdout10, args.max_items, rng)
    params = {**cont.default_params("alkn", args.epochs, args.seed), **json.loads(args.params)}
    enc = method_params("alkn", params)

    def prob(model: Any, items: list[Record]) -> float:
        return mean_answer_probability(model, encode_items(items, tok, enc), pad_id(tok),
                                       params["batch_size"])

    def evaluate(model: Any, tok_: Any, seen: list[str], **kw: Any) -> Record:
        sets = {**{n: task_eval[n] for n in seen}, "retain": retain_eval, **general}
        return evaluate_sets(model, tok_, sets, forget_names=seen, retain_names=["retain"],
                             holdout=holdout or None, batch_size=args.eval_batch_size,
                             max_new_tokens=args.max_new_tokens, **kw)

    world = _World(args, tok, target, tasks, names, retain_train, general, holdout, params,
                   prob, evaluate, {})
    return world, (retain_model, retain_tok)


def _run_setting(w: _World, setting: Record) -> Record:
    """One setting (alpha "auto" with a target, or a fixed alpha) over the tasks."""
    import torch

    from alkn_core import CalibrationError, unlearn

    cont = _continual()
    run: Record = {**setting, "tasks": []}
    run_params = {**w.params, "alpha": setting["alpha"]}
    torch.manual_seed(w.args.seed)
    model, state = copy.deepcopy(w.target), None
    holdout_ref = w.prob(model, w.holdout) if w.holdout else None
    kw = {"retain_model_trs": w.retain_trs}
    for i, items in enumerate(w.tasks):
        # The targets the service would set for this task, on this run's model: the
        # holdout level of the model before the first task (the service keeps it in the
        # lineage's state), the ratio of this task's own forget probability.
        forget_before = w.prob(model, items)
        targets = {"holdout": holdout_ref, "ratio": 0.1 * forget_before}
        t1 = time.perf_counter()
        failed = None
        try:
            r = unlearn(model, w.tok, items, w.retain_train, method="alkn", params=run_params,
                        state=state, eval_sets=w.general,
                        holdout=w.holdout if setting["target_kind"] == "holdout" else None)
            model, state, stats = r.model, r.state, r.stats
        except CalibrationError as exc:  # the service fails the job: the model stays
            failed, stats = str(exc), {"alpha": None, "seconds": {"training": None}}
        t2 = time.perf_counter()
        forget_after = w.prob(model, items)
        seen = w.names[: i + 1]
        s = cont.summarize(w.evaluate(model, w.tok, seen, **kw), seen, w.retain_trs)
        task = {
            "task": i + 1, "alpha": stats.get("alpha"), "failed": failed,
            "forget_before": forget_before, "forget_after": forget_after,
            "targets": targets,
            "reached": {k: v is not None and forget_after <= v for k, v in targets.items()},
            "mean_forget_probability": s["mean_forget_probability"],
            "forget_quality": s["forget_quality"], "model_utility": s["model_utility"],
            "calibration": stats.get("calibration"),
            "seconds": {"training": stats["seconds"].get("training"),
                        "unlearn": t2 - t1, "evaluate": time.perf_counter() - t2},
        }
        run["tasks"].append(task)
        c = task["calibration"]
        print(f"[{run['label']}] task {i + 1}/{len(w.tasks)} alpha "
              f"{'failed' if failed else _fmt(task['alpha'], '.3g')} forget "
              f"{_fmt(forget_before)} -> {_fmt(forget_after)} (holdout target "
              f"{_fmt(targets['holdout'])}, ratio target {_fmt(targets['ratio'])}) "
              f"mu {_fmt(s['model_utility'])} unlearn {t2 - t1:.1f}s"
              + (f" evals {c['evaluations']} search/train "
                 f"{_fmt(c['search_vs_training'], '.2f')}" if c else ""), flush=True)
    run["search_cost"] = search_costs(run)
    return run


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    cont = _continual()
    args.auto_targets = [k.strip() for k in args.auto_targets.split(",") if k.strip()]
    if not set(args.auto_targets) <= set(TARGET_KINDS):
        raise SystemExit(f"--auto-targets: one or more of {', '.join(TARGET_KINDS)}")
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    w, (retain_model, retain_tok) = _world(args, out)

    t0 = time.perf_counter()
    ref = w.evaluate(retain_model, retain_tok, w.names)
    w.retain_trs = {n: ref[n].get("truth_ratios") or [] for n in w.names}
    tgt = w.evaluate(w.target, w.tok, w.names, retain_model_trs=w.retain_trs)
    res: Record = {
        "config": {**vars(args), "run_params": w.params,
                   "task_sizes": [len(t) for t in w.tasks], "holdout_items": len(w.holdout)},
        "target_forget_probability": cont.summarize(tgt, w.names, w.retain_trs)[
            "mean_forget_probability"],
        "target_utility": tgt["model_utility"],
        "runs": [],
    }
    print(f"reference evaluations {time.perf_counter() - t0:.1f}s", flush=True)
    for setting in run_settings(args.alphas, args.auto_targets):
        res["runs"].append(_run_setting(w, setting))
        cont._dump(res, out)  # partial results survive an interrupted run

    res["verdict"] = verdict(res)
    res["seconds_total"] = time.perf_counter() - t0
    cont._dump(res, out)
    lines = write_markdown(res, out / "results.md")
    write_plot(res, out / "calibration.png")
    print("\n".join(lines), flush=True)
    print(f"wrote {out / 'results.json'}, results.md and calibration.png", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
