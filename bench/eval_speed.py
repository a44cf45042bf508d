"""Evaluation throughput on the demo model: batched vs one-by-one, in one run.

Greedy generation (the ROUGE-L part of evaluation, its slowest step) and answer-probability
scoring, each over the same items at batch size B and at batch size 1, alternating rounds.
Prints items per second and the batched/one-by-one ratios, and checks both give the same
answers.

    python bench/eval_speed.py [--items 64] [--batch-size 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alkn_core.demo_corpus import read_jsonl
    from alkn_core.demo_model import demo_data_dir, demo_model_dir
    from alkn_core.evaluate import answer_probabilities, greedy_answers

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    model = AutoModelForCausalLM.from_pretrained(demo_model_dir())
    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    items = read_jsonl(demo_data_dir() / "retain90.json")[: args.items]
    rates: dict[str, list[float]] = {}
    answers: dict[int, list[str]] = {}
    for _ in range(args.rounds):
        for bs in (args.batch_size, 1):
            t = time.perf_counter()
            answers[bs] = greedy_answers(model, tok, items, batch_size=bs)
            rates.setdefault(f"generate bs={bs}", []).append(
                len(items) / (time.perf_counter() - t))
            t = time.perf_counter()
            answer_probabilities(model, tok, items, batch_size=bs)
            rates.setdefault(f"score bs={bs}", []).append(len(items) / (time.perf_counter() - t))
    print(f"demo model, {len(items)} retain items, medians of {args.rounds} rounds")
    for name, r in rates.items():
        print(f"  {name:18s} {statistics.median(r):8.1f} items/s")
    same = sum(a == b for a, b in zip(answers[args.batch_size], answers[1], strict=True))
    print(f"  identical greedy answers batched vs one-by-one: {same}/{len(items)}")
    for kind in ("generate", "score"):
        ratio = (statistics.median(rates[f"{kind} bs={args.batch_size}"])
                 / statistics.median(rates[f"{kind} bs=1"]))
        print(f"RATIO {kind} batched/one-by-one = {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
