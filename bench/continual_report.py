"""The continual benchmark's report (bench/continual.py writes it): results.md, the plots, the
selectivity front, and the comparison at matched forgetting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MATCH_FRACTION = 0.10  # matched forgetting: forget probability <= 10% of the target's


def short(r: dict[str, Any]) -> str:
    return " ".join(f"{k.replace('forget_vs_never_seen', 'fvn')}={fmt(v, '.3f')}"
                    for k, v in r.items())


def fmt(x: Any, spec: str = ".4f") -> str:
    if x is None:
        return "n/a"
    return format(x, ".2e") if spec == "e" else format(x, spec)


def write_markdown(res: dict[str, Any], path: Path) -> None:
    T = res["config"]["tasks"]
    target = res["target"]["summary"]
    lines = ["# Continual unlearning benchmark", "",
             f"{T} tasks, methods {', '.join(res['config']['methods'])}; target mean forget "
             f"probability {fmt(target['mean_forget_probability'])}, model utility "
             f"{fmt(target['model_utility'])}.", ""]
    if res["notes"]:
        lines += ["Notes:", *[f"- {n}" for n in res["notes"]], ""]
    lines += [f"## After task {T}", "",
              "| method | setting | mean forget prob | forget quality | model utility |",
              "|---|---|---|---|---|"]
    for r in res["runs"]:
        s = r["tasks"][-1]["summary"] if r["tasks"] else {}
        lines.append(f"| {r['method']} | {r['setting'] or 'default'} | "
                     f"{fmt(s.get('mean_forget_probability'))} | "
                     f"{fmt(s.get('forget_quality'), 'e')} | {fmt(s.get('model_utility'))} |")
    lines += ["", *selectivity_lines(res), *per_task_lines(res)]
    lines += ["", "## Utility at matched forgetting (every forget set at the never-seen level; "
              f"without one, mean forget prob <= {MATCH_FRACTION:.0%} of the target's = "
              f"{fmt(res['matched']['threshold'])})", "",
              "| method | best model utility | setting |", "|---|---|---|"]
    for method, m in res["matched"]["per_method"].items():
        lines.append(f"| {method} | {fmt(m['model_utility'])} | {m['setting'] or 'n/a'} |")
    head = " | ".join(["target"] + [f"task {t}" for t in range(1, T + 1)])
    lines += ["", "## Model utility per task", "", f"| run | {head} |",
              "|---" * (T + 2) + "|"]
    for r in res["runs"]:
        cells = [fmt(target["model_utility"])] + [fmt(t["summary"]["model_utility"])
                                                   for t in r["tasks"]]
        lines.append(f"| {r['label']} | " + " | ".join(cells) + " |")
    path.write_text("\n".join(lines) + "\n")


def write_plots(res: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")  # no display on a server or in CI
    import matplotlib.pyplot as plt

    # One colour per run from a 20-colour map, one line style and marker per method: runs
    # stay apart however many settings a sweep has.
    colours = plt.get_cmap("tab20").colors
    methods = list(dict.fromkeys(r["method"] for r in res["runs"]))
    styles = ["-", "--", ":", "-.", (0, (5, 1)), (0, (1, 1))]
    markers = "osD^vP*X"

    def look(i: int, r: dict[str, Any]) -> dict[str, Any]:
        m = methods.index(r["method"])
        return {"color": colours[i % len(colours)], "marker": markers[m % len(markers)]}

    base = res["target"]["summary"]["model_utility"]
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(res["runs"]):
        ys = [base] + [t["summary"]["model_utility"] for t in r["tasks"]]
        xs = [i for i, y in enumerate(ys) if y is not None]
        ax.plot(xs, [y for y in ys if y is not None], label=r["label"],
                linestyle=styles[methods.index(r["method"]) % len(styles)], **look(i, r))
    ax.set_xlabel("task (0 = target)")
    ax.set_ylabel("model utility")
    ax.set_title("Model utility over the continual sequence")
    ax.legend(fontsize=7)
    p1 = out / "utility_per_task.png"
    fig.tight_layout()
    fig.savefig(p1, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 5))
    for i, r in enumerate(res["runs"]):
        s = r["tasks"][-1]["summary"] if r["tasks"] else {}
        fq, mu = s.get("forget_quality"), s.get("model_utility")
        if fq is None or mu is None:
            continue
        ax.scatter([mu], [max(fq, 1e-300)], label=r["label"], **look(i, r))  # log: no zeros
    ax.set_yscale("log")
    ax.set_xlabel("model utility")
    ax.set_ylabel("forget quality (KS p-value)")
    ax.set_title(f"After task {res['config']['tasks']}")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    p2 = out / "fq_vs_utility.png"
    fig.tight_layout()
    fig.savefig(p2, dpi=100)
    plt.close(fig)
    return [p1, p2, write_front(res, out / "front.png")]


# What issue 13 asks after the last task, as fractions of the target model's.
GOALS = {"retain": 0.85, "model_utility": 0.85, "general": 0.9}
NEVER_SEEN_TOL = 1.05  # a forget set within 5% above the never-seen level counts as there


def forgets_enough(run: dict[str, Any]) -> bool | None:
    """Every task's forget set at (or below) the never-seen level, right after its task and
    after the last one; None without a never-seen level."""
    rs = [t["summary"].get("ratios") or {} for t in run["tasks"]]
    own = [r.get("forget_vs_never_seen_this_task") for r in rs]
    last = rs[-1].get("forget_vs_never_seen_worst") if rs else None
    if not rs or last is None or any(x is None for x in own):
        return None
    return max([*own, last]) <= NEVER_SEEN_TOL


def keeps_enough(run: dict[str, Any]) -> bool | None:
    r = run["tasks"][-1]["summary"].get("ratios") if run["tasks"] else None
    if not r or r.get("retain") is None or r.get("model_utility") is None:
        return None
    general = [v for k, v in r.items() if k.startswith("general:")]
    return (r["retain"] >= GOALS["retain"] and r["model_utility"] >= GOALS["model_utility"]
            and all(v is not None and v >= GOALS["general"] for v in general))


def selectivity_lines(res: dict[str, Any]) -> list[str]:
    """Per run after the last task: forget level vs never seen, what was kept, the verdict."""
    T = res["config"]["tasks"]
    runs = [r for r in res["runs"] if r["tasks"]]
    if not runs:
        return []
    names = [k for k in (runs[0]["tasks"][-1]["summary"].get("ratios") or {})
             if k.startswith("general:")]
    head = ["method", "setting", "worst forget / never seen (own task)",
            f"all forget / never seen (after task {T})", "retain (people not requested)",
            *[n.split(":", 1)[1] for n in names], "model utility", "forgets enough",
            "keeps enough"]
    lines = [f"## Selectivity after task {T} (fractions of the target model's; never-seen "
             f"level {fmt(res.get('never_seen'))})", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in runs:
        rs = [t["summary"].get("ratios") or {} for t in r["tasks"]]
        own = [x for x in (q.get("forget_vs_never_seen_this_task") for q in rs) if x is not None]
        last = rs[-1]
        cells = [r["method"], r["setting"] or "default", fmt(max(own) if own else None, ".3f"),
                 fmt(last.get("forget_vs_never_seen_worst"), ".3f"),
                 fmt(last.get("retain"), ".3f"), *[fmt(last.get(n), ".3f") for n in names],
                 fmt(last.get("model_utility"), ".3f"), _yes(forgets_enough(r)),
                 _yes(keeps_enough(r))]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def per_task_lines(res: dict[str, Any]) -> list[str]:
    """Every run, every task: this task's forget set / never seen, the worst of the forgotten
    sets, retain, each general set and model utility (fractions of the target's)."""
    runs = [r for r in res["runs"] if r["tasks"]]
    if not runs:
        return []
    keys = list(runs[0]["tasks"][0]["summary"].get("ratios") or {})
    head = ["run", "task", *[k.replace("forget_vs_never_seen_", "forget/never seen: ")
                             .replace("general:", "") for k in keys]]
    lines = ["## Per task (fractions of the target model's)", "",
             "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for r in runs:
        for t in r["tasks"]:
            q = t["summary"].get("ratios") or {}
            lines.append("| " + " | ".join([r["label"], str(t["task"]),
                                            *[fmt(q.get(k), ".3f") for k in keys]]) + " |")
    return [*lines, ""]


def _yes(x: bool | None) -> str:
    return "n/a" if x is None else "yes" if x else "no"


def write_front(res: dict[str, Any], path: Path) -> Path:
    """Forget level (worst forget set / never seen, after the last task) vs model utility
    (fraction of the target's): the front every run sits on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    markers = "osD^vP*X"
    methods = list(dict.fromkeys(r["method"] for r in res["runs"]))
    for i, r in enumerate(res["runs"]):
        last = r["tasks"][-1]["summary"].get("ratios") if r["tasks"] else None
        if not last or last.get("forget_vs_never_seen_worst") is None:
            continue
        ax.scatter([last["forget_vs_never_seen_worst"]], [last.get("model_utility") or 0.0],
                   marker=markers[methods.index(r["method"]) % len(markers)],
                   color=plt.get_cmap("tab20").colors[i % 20], label=r["label"])
    ax.axvline(1.0, color="grey", linestyle=":", label="never-seen level")
    ax.axhline(GOALS["model_utility"], color="grey", linestyle="--", label="0.85 x target")
    ax.set_xscale("log")
    ax.set_xlabel("worst forget set / never-seen level after the last task (lower: forgets more)")
    ax.set_ylabel("model utility / target model's")
    ax.set_title(f"Forgetting vs utility after task {res['config']['tasks']}")
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def matched(res: dict[str, Any]) -> dict[str, Any]:
    """Per method, the run with the most model utility among those that forget enough (at
    the never-seen level; without one, mean forget probability <= MATCH_FRACTION x the
    target's)."""
    target_p = res["target"]["summary"]["mean_forget_probability"]
    threshold = None if target_p is None else MATCH_FRACTION * target_p
    per: dict[str, Any] = {}
    for r in res["runs"]:
        best = per.setdefault(r["method"], {"model_utility": None, "setting": None})
        s = r["tasks"][-1]["summary"] if r["tasks"] else {}
        p, mu = s.get("mean_forget_probability"), s.get("model_utility")
        enough = forgets_enough(r) if res.get("never_seen") is not None else None
        if enough is None:
            enough = threshold is not None and p is not None and p <= threshold
        if not enough or mu is None:
            continue
        if best["model_utility"] is None or mu > best["model_utility"]:
            best.update(model_utility=mu, setting=r["setting"] or "default")
    return {"fraction": MATCH_FRACTION, "threshold": threshold, "per_method": per}
