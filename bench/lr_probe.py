"""One unlearning task per (method, lr) on the demo model: how hard each setting forgets and
what it keeps. Used to pick the recommended lr per model size (docs/benchmarks.md); the full
continual benchmark with every metric is a separate tool.

Forget set: the first person of forget10 (about 20 QA). Reported: mean answer probability
p(a|q) on that forget set, on retain90 and on the general-knowledge sets, before and after.

    python bench/lr_probe.py [--model DIR] [--data DIR] [--lrs 1e-3,3e-3] [--methods ...]
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path
from typing import Any


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alkn_core import unlearn
    from alkn_core.data import encode_items, pad_id
    from alkn_core.demo import demo_data_dir, demo_model_dir, read_jsonl
    from alkn_core.losses import mean_answer_probability
    from alkn_core.params import LoopParams

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(demo_model_dir()))
    ap.add_argument("--data", default=str(demo_data_dir()))
    ap.add_argument("--lrs", default="3e-4,1e-3,3e-3")
    ap.add_argument("--methods", default="alkn:reference,alkn:retain_safe,task_vector,grad_diff")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--retain-items", type=int, default=200, help="retain items evaluated")
    args = ap.parse_args()

    model = AutoModelForCausalLM.from_pretrained(args.model)
    tok = AutoTokenizer.from_pretrained(args.model)
    data = Path(args.data)
    forget10 = read_jsonl(data / "forget10.json")
    first = forget10[0]["person"]
    forget = [r for r in forget10 if r["person"] == first]
    retain = read_jsonl(data / "retain90.json")
    general = (read_jsonl(data / "real_authors_perturbed.json")
               + read_jsonl(data / "world_facts_perturbed.json"))
    p = LoopParams()
    sets = {"forget": encode_items(forget, tok, p),
            "retain": encode_items(retain[: args.retain_items], tok, p),
            "general": encode_items(general, tok, p)}

    def probs(m: Any) -> dict[str, float]:
        return {k: mean_answer_probability(m, v, pad_id(tok)) for k, v in sets.items()}

    before = probs(model)
    print(f"{len(forget)} forget items ({first}); before: "
          + "  ".join(f"{k} {v:.3f}" for k, v in before.items()))
    print(f"{'method':24s} {'lr':>8s} {'forget':>7s} {'retain':>7s} {'general':>7s} {'sec':>5s}")
    for spec in args.methods.split(","):
        method, _, rule = spec.partition(":")
        for lr in (float(x) for x in args.lrs.split(",")):
            params: dict[str, Any] = {"lr": lr, "epochs": args.epochs, "batch_size": 8,
                                      "grad_accum": 1, "max_length": 128}
            if rule:
                params["mask_rule"] = rule
            if method == "alkn":  # a fixed alpha: the probe compares the lrs' task vectors
                params["alpha"] = 1.0
            m = copy.deepcopy(model)
            t = time.perf_counter()
            unlearn(m, tok, forget, retain, method=method, params=params)
            took = time.perf_counter() - t
            after = probs(m)
            print(f"{spec:24s} {lr:8.0e} {after['forget']:7.3f} {after['retain']:7.3f} "
                  f"{after['general']:7.3f} {took:5.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
