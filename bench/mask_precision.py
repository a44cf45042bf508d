"""Does ALKN choose the same mask when its score and mean retain gradient are held in less
precision? The demo model's first tasks (one forget10 person each, alpha 1, no repair, the
bench's loop settings) run once per precision from the same weights; printed per task: the
fraction of coordinates whose cumulative mask equals float32's, and the forget probability.

    python bench/mask_precision.py [--tasks 3] [--settings float32,bfloat16]

A setting is a `score_dtype`; the first is the reference. The masks diverge more by the
later tasks than rounding alone would make them: each task starts from weights the earlier
tasks' (slightly different) masks made.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: bench.* importable


def run(model: Any, tok: Any, tasks: list[list[dict[str, Any]]], retain: list[dict[str, Any]],
        setting: str) -> tuple[list[dict[str, Any]], list[float]]:
    from alkn_core import unlearn
    from alkn_core.data import encode_items, pad_id
    from alkn_core.losses import mean_answer_probability
    from alkn_core.params import LoopParams

    params = {"lr": 2e-3, "epochs": 5, "batch_size": 8, "grad_accum": 1, "max_length": 128,
              "alpha": 1.0, "repair_steps": 0, "score_dtype": setting}
    model, state = copy.deepcopy(model), None
    masks, forget_probs = [], []
    for forget in tasks:
        r = unlearn(model, tok, forget, retain, params=params, state=state)
        state = r.state
        assert state is not None and state.masks is not None
        masks.append(dict(state.masks))
        forget_probs.append(mean_answer_probability(
            model, encode_items(forget, tok, LoopParams(max_length=128)), pad_id(tok)))
    return masks, forget_probs


def main(argv: list[str] | None = None) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alkn_core.demo_corpus import read_jsonl
    from alkn_core.demo_model import demo_data_dir, demo_model_dir
    from bench.continual_data import split_tasks

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--settings", default="float32,bfloat16")
    args = ap.parse_args(argv)
    settings = [s for s in args.settings.split(",") if s]
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir())
    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    data = Path(demo_data_dir())
    tasks = split_tasks(read_jsonl(data / "forget10.json"), 5)[: args.tasks]
    retain = read_jsonl(data / "retain90.json")[:128]
    results = {s: run(model, tok, tasks, retain, s) for s in settings}
    ref_masks, _ = results[settings[0]]
    print(f"{'setting':24s}" + "".join(f"   task {i + 1}: same mask, forget p"
                                       for i in range(args.tasks)))
    for s, (masks, probs) in results.items():
        cells = []
        for ref, got, prob in zip(ref_masks, masks, probs, strict=True):
            same = sum(int((ref[n] == got[n]).sum()) for n in ref)
            total = sum(m.numel() for m in ref.values())
            cells.append(f"{same / total:>20.4f}, {prob:.4f}")
        print(f"{s:24s}" + "".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
