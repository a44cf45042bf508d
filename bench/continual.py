"""Continual-unlearning benchmark (docs/benchmarks.md, "Continual benchmark").

forget10 is split by person into T disjoint tasks, unlearned in sequence from the target model
(state carried between tasks); after every task each forgotten task, the retain set, the
general sets and the privacy holdout are evaluated. Each method's intensity knob can be swept
so methods are compared at matched forgetting.

    python bench/continual.py --data-dir DIR --out DIR [--target DIR] [--retain DIR]
        [--tasks 5] [--methods alkn,task_vector,grad_ascent,grad_diff,npo,npo_gd]
        [--epochs 5] [--people N] [--max-items N] [--params JSON]
        [--sweep "alkn:alpha=0.5,1;alkn:mask_rule=retain_safe&alpha=0.5,1;npo:lr=1e-3"]
        [--finetune-epochs 15]

Each method runs with the library's defaults (alkn: alpha "auto" with the holdout target,
repair) over the tiny model's loop settings; --params / --sweep override them (a param the
method does not take is an error). The evaluated retain people are never given to
unlearning, and the general sets are split into an evaluated part and the part unlearning
may use. Per task: each forget set against the never-seen level (the holdout items on the
target model), retain ("people not requested"), each general set and model utility as
fractions of the target model's.

Writes OUT/results.json, OUT/results.md, OUT/utility_per_task.png, OUT/fq_vs_utility.png and
OUT/front.png (forget level vs utility).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.* importable

from alkn_core.params import EVAL_MAX_NEW_TOKENS  # noqa: E402
from bench.continual_data import (  # noqa: E402
    build_data_tokenizer,
    cap,
    held_out_people,
    load_or_train,
    split_tasks,
    with_perturbed,
)
from bench.continual_report import fmt, matched, short, write_markdown, write_plots  # noqa: E402

ALL_METHODS = "alkn,task_vector,grad_ascent,grad_diff,npo,npo_gd"
Record = dict[str, Any]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="TOFU-layout directory")
    ap.add_argument("--out", required=True)
    ap.add_argument("--target", help="HF model dir; default: train a tiny Llama on full.json")
    ap.add_argument("--retain", help="HF model dir; default: train one on retain90.json")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--methods", default=ALL_METHODS)
    ap.add_argument("--epochs", type=int, default=5, help="unlearning epochs per task")
    ap.add_argument("--people", type=int, help="use only the first N forget people")
    ap.add_argument("--max-items", type=int, help="cap on items per task and per eval set")
    ap.add_argument("--retain-items", type=int, default=128,
                    help="retain items given to unlearning (people never evaluated; a "
                         "registered model's retain set is of this order)")
    ap.add_argument("--task-people", choices=("forget10", "retain90"), default="forget10",
                    help="whose facts the tasks forget: forget10's people, or as many of "
                         "retain90's as there are tasks (a split held out from tuning; "
                         "those people are then neither evaluated as retain nor repaired on)")
    ap.add_argument("--params", default="{}", help='JSON {"method": {param: value}}')
    ap.add_argument("--sweep", default="", help='"method:key=v1,v2;method:key=v&key2=w1,w2" (grid)')
    ap.add_argument("--finetune-epochs", type=int, default=15)
    ap.add_argument("--tiny-size", choices=("demo", "test"), default="demo")
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--max-new-tokens", type=int, default=EVAL_MAX_NEW_TOKENS)
    ap.add_argument("--eval-batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-earlier-forget", action="store_true",
                    help="do not give unlearning the earlier tasks' forget items (ablation)")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite OUT/results.md and the plots from OUT/results.json")
    ap.add_argument("--resume", action="store_true",
                    help="reuse the finished runs in OUT/results.json made with the same "
                         "data, models and sizes (a long sweep can be stopped and extended)")
    return ap.parse_args(argv)


def _value(text: str) -> float | str | bool:
    if text.strip() in ("true", "false"):
        return text.strip() == "true"
    try:
        return float(text)
    except ValueError:
        return text.strip()


def parse_sweep(spec: str) -> dict[str, list[dict[str, float | str | bool]]]:
    """Settings to run per method. Parts are `;`-separated, each `method:key=v1,v2`, with
    `&` joining keys into a grid: 'alkn:alpha=0.5,1;alkn:mask_rule=retain_safe&alpha=1' ->
    {"alkn": [{"alpha": 0.5}, {"alpha": 1.0}, {"mask_rule": "retain_safe", "alpha": 1.0}]}.
    Values that are not numbers stay strings."""
    out: dict[str, list[dict[str, float | str | bool]]] = {}
    for part in filter(None, (p.strip() for p in spec.split(";"))):
        method, _, rest = part.partition(":")
        grid: list[dict[str, float | str | bool]] = [{}]
        for term in rest.split("&"):
            key, _, values = term.partition("=")
            options = [_value(v) for v in values.split(",") if v.strip()]
            if not (method.strip() and key.strip() and options):
                raise ValueError(f"bad --sweep part {part!r}; want method:key=v1,v2[&key=v]")
            grid = [{**g, key.strip(): v} for g in grid for v in options]
        out.setdefault(method.strip(), []).extend(grid)
    return out


def setting_label(setting: dict[str, float | str | bool]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in setting.items())


def default_params(method: str, epochs: int, seed: int) -> dict[str, Any]:
    """The loop settings of the tiny demo model (lr per docs/benchmarks.md's lr probe; the library's
    lr default is for billion-parameter models); everything else is the library's default
    (alkn: alpha "auto" with the holdout target, repair). A param the method does not take
    is an error (unlearn's validation), never silently dropped."""
    lr = 2e-3 if method in ("alkn", "task_vector") else 1e-3
    return {"lr": lr, "epochs": epochs, "batch_size": 8, "grad_accum": 1, "seed": seed}


def check_params(methods: Sequence[str], user_params: Any,
                 sweep: dict[str, list[dict[str, float | str | bool]]], epochs: int,
                 seed: int) -> None:
    """Every --params / --sweep setting is one the run honours, before anything is trained:
    a method it does not run, or a param the method does not take, is a ValueError."""
    from alkn_core.methods import method_params

    if not isinstance(user_params, dict) or not all(isinstance(v, dict)
                                                    for v in user_params.values()):
        raise ValueError('--params must be a JSON object {"method": {param: value}}')
    for what, keys in (("--params", user_params), ("--sweep", sweep)):
        stray = [k for k in keys if k not in methods]
        if stray:
            raise ValueError(f"{what} names {', '.join(map(repr, stray))}, which this run "
                             f"does not run (--methods {','.join(methods)})")
    for method in methods:
        for overrides in sweep.get(method, [{}]):
            method_params(method, {**default_params(method, epochs, seed),
                                   **user_params.get(method, {}), **overrides})


def _fq(values: list[float], reference: list[float]) -> float | None:
    from alkn_core.evaluate import forget_quality

    return forget_quality(values, reference) if values and reference else None


def summarize(metrics: dict[str, Any], task_names: list[str],
              retain_trs: dict[str, list[float]]) -> dict[str, Any]:
    """Mean forget probability over the tasks so far, forget quality over their union
    (a KS test over all forgotten items, like TOFU's on the whole forget10), utility."""
    probs = [metrics[n]["probability"] for n in task_names
             if metrics[n].get("probability") is not None]
    trs = [x for n in task_names for x in (metrics[n].get("truth_ratios") or [])]
    ref = [x for n in task_names for x in retain_trs.get(n, [])]
    return {"mean_forget_probability": sum(probs) / len(probs) if probs else None,
            "forget_quality": _fq(trs, ref),
            "model_utility": metrics.get("model_utility")}


def _never_seen(model: Any, tokenizer: Any, holdout: list[Record] | None) -> float | None:
    """The holdout items' mean answer probability on the target model: the "never seen"
    level that alpha "auto" aims at (the forget sets should end at or below it)."""
    from alkn_core.evaluate import answer_probabilities

    if not holdout:
        return None
    probs = answer_probabilities(model, tokenizer, holdout)  # evaluation's max_length
    return sum(probs) / len(probs)


def ratios(m: dict[str, Any], tgt: dict[str, Any], seen: list[str],
           never_seen: float | None) -> dict[str, Any]:
    """After a task: each forgotten task's forget probability / the never-seen level (the
    worst of them and this task's), and the retain set ("people not requested"), each general
    set and model utility as fractions of the target model's."""

    def frac(a: Any, b: Any) -> float | None:
        return a / b if isinstance(a, int | float) and isinstance(b, int | float) and b else None

    forget = [frac(m[n].get("probability"), never_seen) for n in seen]
    known = [f for f in forget if f is not None]
    general = [k for k in tgt if k not in (*seen, "retain", "model_utility",
                                           "model_utility_skipped") and not k.startswith("task")]
    return {
        "forget_vs_never_seen_this_task": forget[-1] if forget else None,
        "forget_vs_never_seen_worst": max(known) if known else None,
        "retain": frac(m["retain"].get("probability"), tgt["retain"].get("probability")),
        **{f"general:{k}": frac(m[k].get("probability"), tgt[k].get("probability"))
           for k in general},
        "model_utility": frac(m.get("model_utility"), tgt.get("model_utility")),
    }


@dataclass
class _Setup:
    """What every method's run shares: the models, the tasks, the evaluation sets and the
    reference evaluations (the retain model's and the target's)."""

    args: argparse.Namespace
    out: Path
    tok: Any
    target: Any
    tasks: list[list[Record]]
    task_names: list[str]
    retain_train: list[Record]
    general_train: dict[str, list[Record]]
    holdout: list[Record] | None
    evaluate: Callable[..., dict[str, Any]]
    reference_kw: dict[str, Any]
    retain_trs: dict[str, list[float]]
    tgt: dict[str, Any]
    retain_metrics: dict[str, Any]
    never_seen: float | None
    reference_started: float  # perf_counter() when the reference evaluations began


def _setup(args: argparse.Namespace, notes: list[str]) -> _Setup:
    from alkn_core.eval_sets import evaluate_sets
    from alkn_core.tofu import load_tofu_dir

    out = Path(args.out)
    data = load_tofu_dir(args.data_dir)
    notes += data.notes
    rng = random.Random(args.seed)
    if args.people and any(r.get("person") is None for r in data.forget10):
        raise ValueError("--people: the forget items do not say whose they are")

    # Models: a shared tokenizer so target and retain see the same text the same way.
    tokenizer = None
    if not args.target and not (out / "target" / "config.json").is_file():
        tokenizer = build_data_tokenizer(data, args.vocab_size)
    target, tok = load_or_train("target", args.target, out, data.full, tokenizer, args)
    retain_model, retain_tok = load_or_train("retain", args.retain, out, data.retain90, tok,
                                             args)

    # Tasks and evaluation sets.
    forget = list(data.forget10)
    if data.retain_perturbed:
        retain_eval = cap(data.retain_perturbed, args.max_items, rng)
    else:
        retain_eval = cap(data.retain90, args.max_items or 200, rng)
        notes.append("no retain_perturbed: retain set is a sample of retain90 (no truth ratio)")
    evaluated_people = {r.get("person") for r in retain_eval if r.get("person") is not None}
    if args.task_people == "retain90":
        forget = held_out_people(data.retain90, evaluated_people, args.tasks,
                                 random.Random(args.seed + 1))
        notes.append("tasks: people of retain90 held out from the defaults' tuning (the retain "
                     "model learnt them: forget quality is not meaningful here)")
    if args.people:
        people = list(dict.fromkeys(r.get("person") for r in forget))[: args.people]
        forget = [r for r in forget if r.get("person") in people]
    tasks = [cap(t, args.max_items) for t in split_tasks(forget, args.tasks)]
    owners = [{r.get("person") for r in t} for t in tasks]
    if any(None in o or o & p for i, o in enumerate(owners) for p in owners[:i]):
        notes.append("tasks are equal chunks of the forget items, not whole people (too few "
                     "people for the tasks, or items without one): a person may span tasks")
    task_names = [f"task{i}" for i in range(1, len(tasks) + 1)]
    if not data.forget10_perturbed:
        notes.append("no forget10_perturbed: forget sets evaluated without truth ratios")
    task_eval = dict(zip(task_names, with_perturbed(tasks, data.forget10_perturbed),
                         strict=True))
    # "People not requested": the evaluated retain people are never given to unlearning (its
    # retain items come from the other retain people), and the general sets are split into
    # an evaluated part and a part unlearning may use (eval_sets): no item is both.
    task_people = {r.get("person") for t in tasks for r in t}
    retain_train = cap([r for r in data.retain90
                         if r.get("person") not in evaluated_people | task_people],
                        args.retain_items, random.Random(args.seed + 2))
    general, general_train = {}, {}
    for name, items in data.general_sets().items():
        general[name] = cap(items, args.max_items, rng)
        seen = {r["question"] for r in general[name]}
        general_train[name] = [r for r in items if r["question"] not in seen]
    holdout = cap(data.holdout10, args.max_items, rng) or None
    eval_kw = {"forget_names": task_names, "retain_names": ["retain"], "holdout": holdout,
               "batch_size": args.eval_batch_size, "max_new_tokens": args.max_new_tokens}

    def evaluate(model: Any, tok_: Any, names: list[str], **kw: Any) -> dict[str, Any]:
        sets = {**{n: task_eval[n] for n in names}, "retain": retain_eval, **general}
        return evaluate_sets(model, tok_, sets, **{**eval_kw, "forget_names": names}, **kw)

    started = time.perf_counter()
    ref = evaluate(retain_model, retain_tok, task_names)
    retain_trs = {n: ref[n].get("truth_ratios") or [] for n in task_names}
    retain_aucs = {n: ref[n]["privacy_auc"] for n in task_names
                   if ref[n].get("privacy_auc") is not None}
    kw = {"retain_model_trs": retain_trs, "retain_model_aucs": retain_aucs}
    return _Setup(args, out, tok, target, tasks, task_names, retain_train,
                  {k: v for k, v in general_train.items() if v}, holdout, evaluate, kw,
                  retain_trs, evaluate(target, tok, task_names, **kw), ref,
                  _never_seen(target, tok, holdout), started)


def _run(setup: _Setup, method: str, params: dict[str, Any], run: dict[str, Any],
         label: str) -> None:
    """One method over the tasks in sequence, from the target (state carried), evaluated
    after every task."""
    import torch

    from alkn_core import unlearn

    args, tasks, task_names = setup.args, setup.tasks, setup.task_names
    kw = setup.reference_kw
    torch.manual_seed(args.seed)
    model, state = copy.deepcopy(setup.target), None
    for i, forget_items in enumerate(tasks):
        t1 = time.perf_counter()
        r = unlearn(model, setup.tok, forget_items, setup.retain_train, method=method,
                    params=params, state=state, eval_sets=setup.general_train or None,
                    holdout=setup.holdout, earlier_forget=None if args.no_earlier_forget
                    else tasks[:i] or None)
        model, state = r.model, r.state
        t2 = time.perf_counter()
        seen = task_names[: i + 1]
        m = setup.evaluate(model, setup.tok, seen, **kw)
        t3 = time.perf_counter()
        s = summarize(m, seen, setup.retain_trs)
        s["ratios"] = ratios(m, setup.tgt, seen, setup.never_seen)
        run["tasks"].append({"task": i + 1, "stats": r.stats, "metrics": m, "summary": s,
                             "seconds": {"unlearn": t2 - t1, "evaluate": t3 - t2}})
        print(f"[{label}] task {i + 1}/{len(tasks)} unlearn {t2 - t1:.1f}s "
              f"eval {t3 - t2:.1f}s forget_p {fmt(s['mean_forget_probability'])} "
              f"fq {fmt(s['forget_quality'], 'e')} mu {fmt(s['model_utility'])} "
              f"ratios {short(s['ratios'])}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    if args.render:
        res = json.loads((out / "results.json").read_text())
        res["matched"] = matched(res)
        write_markdown(res, out / "results.md")
        write_plots(res, out)
        return 0
    import torch

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    user_params = json.loads(args.params)
    sweep = parse_sweep(args.sweep)
    check_params(methods, user_params, sweep, args.epochs, args.seed)
    notes: list[str] = []
    setup = _setup(args, notes)
    t0 = setup.reference_started
    print(f"reference evaluations {time.perf_counter() - t0:.1f}s; never-seen level "
          f"{fmt(setup.never_seen)}", flush=True)
    tasks, task_names = setup.tasks, setup.task_names
    res: dict[str, Any] = {
        "config": {**vars(args), "methods": methods, "sweep": sweep, "metrics": METRICS,
                   "task_sizes": [len(t) for t in tasks],
                   "task_people": [sorted({str(r.get("person")) for r in t}) for t in tasks]},
        "notes": notes,
        "retain_model": {"metrics": setup.retain_metrics},
        "target": {"metrics": setup.tgt,
                   "summary": summarize(setup.tgt, task_names, setup.retain_trs)},
        "never_seen": setup.never_seen,
        "runs": [],
    }

    done = finished_runs(out, res["config"], len(tasks)) if args.resume else {}
    for method in methods:
        for overrides in sweep.get(method, [{}]):
            params = {**default_params(method, args.epochs, args.seed),
                      **user_params.get(method, {}), **overrides}
            setting = setting_label(overrides)
            label = f"{method} {setting}".strip()
            if label in done:
                res["runs"].append(done[label])
                print(f"[{label}] reused from {out / 'results.json'}", flush=True)
                continue
            run: dict[str, Any] = {"method": method, "setting": setting, "label": label,
                                   "params": params, "tasks": []}
            res["runs"].append(run)
            _run(setup, method, params, run, label)
            _dump(res, out)  # partial results survive an interrupted long run

    res["matched"] = matched(res)
    res["seconds_total"] = time.perf_counter() - t0
    _dump(res, out)
    write_markdown(res, out / "results.md")
    write_plots(res, out)
    print(f"wrote {out / 'results.json'}, results.md and 3 plots", flush=True)
    return 0


# Config keys that change what a finished run measured (not which runs are wanted).
SAME_RUN_KEYS = ("data_dir", "target", "retain", "tasks", "epochs", "people", "max_items",
                 "retain_items", "task_people",
                 "params", "finetune_epochs", "tiny_size", "vocab_size", "max_new_tokens",
                 "seed", "task_sizes", "task_people", "no_earlier_forget", "metrics")
# What the numbers mean: a results.json of another definition is not resumed (forget quality
# from losses-averaged truth ratios, no max_length of 128 in the loop settings, since 2026-12).
METRICS = "tofu-fq-geometric/loop-max-length-default"


def finished_runs(out: Path, config: dict[str, Any], n_tasks: int) -> dict[str, Any]:
    """Runs of an earlier invocation into OUT that can stand for this one, by label."""
    path = out / "results.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    differs = [k for k in SAME_RUN_KEYS
               if json.dumps(old["config"].get(k)) != json.dumps(config.get(k))]
    if differs:
        raise SystemExit(f"--resume: {path} was made with other {', '.join(differs)}")
    return {r["label"]: r for r in old["runs"] if len(r["tasks"]) == n_tasks}


def _dump(res: dict[str, Any], out: Path) -> None:
    def clean(x: Any) -> Any:
        # JSON has no NaN/inf; write null rather than invalid JSON.
        if isinstance(x, float) and not math.isfinite(x):
            return None
        if isinstance(x, dict):
            return {str(k): clean(v) for k, v in x.items()}
        if isinstance(x, list | tuple):
            return [clean(v) for v in x]
        return x if isinstance(x, str | int | float | bool | type(None)) else str(x)

    (out / "results.json").write_text(json.dumps(clean(res), indent=1))


if __name__ == "__main__":
    raise SystemExit(main())
