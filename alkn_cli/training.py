"""`alkn finetune` (train a model on QA data: the benchmark's target and retain models) and
`alkn demo data|build` (the synthetic corpus and the demo model)."""

from __future__ import annotations

import argparse
import json
from typing import Any


def add_parsers(sub: Any) -> None:
    f = sub.add_parser("finetune", help="train a model on QA data (resumable)")
    f.add_argument("--data", required=True, help="JSON Lines or array of QA/text items")
    f.add_argument("--out", required=True)
    base = f.add_mutually_exclusive_group(required=True)
    base.add_argument("--base", help="a Hugging Face model directory to start from")
    base.add_argument("--tiny", choices=("demo", "test"), help="a tiny Llama from scratch")
    f.add_argument("--epochs", type=int, default=15)
    f.add_argument("--lr", type=float, default=2e-3)
    f.add_argument("--batch-size", type=int, default=16)
    f.add_argument("--max-length", type=int, default=128)
    f.add_argument("--vocab-size", type=int, default=2048)
    f.add_argument("--seed", type=int, default=0)
    f.set_defaults(handler=finetune)
    d = sub.add_parser("demo", help="the demo corpus and model")
    dsub = d.add_subparsers(dest="demo_command", required=True)
    db = dsub.add_parser("build", help="rebuild the demo model (python -m alkn_core.demo build)")
    db.add_argument("rest", nargs=argparse.REMAINDER)
    db.set_defaults(handler=demo_build)
    dd = dsub.add_parser("data", help="write the synthetic corpus in the TOFU layout")
    dd.add_argument("--out", required=True)
    dd.add_argument("--people", type=int, default=50)
    dd.add_argument("--holdout-people", type=int, default=5)
    dd.add_argument("--seed", type=int, default=0)
    dd.set_defaults(handler=demo_data)


def demo_data(args: argparse.Namespace) -> int:
    from alkn_core.demo_corpus import generate_corpus, write_corpus

    paths = write_corpus(generate_corpus(args.people, args.holdout_people, args.seed), args.out)
    print(json.dumps({name: str(p) for name, p in paths.items()}, indent=1))
    return 0


def demo_build(args: argparse.Namespace) -> int:
    from alkn_core.demo_model import main as demo_main

    return demo_main(["build", *args.rest])


def finetune(args: argparse.Namespace) -> int:
    """Train a model on QA (or text) data: the target and retain models of the benchmark.
    Resumable: a checkpoint after every epoch under OUT/checkpoint; rerun to continue."""
    import shutil
    from pathlib import Path

    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from alkn_core.demo_corpus import read_jsonl
    from alkn_core.demo_model import build_tokenizer, tiny_llama_config
    from alkn_core.params import DEFAULT_QA_TEMPLATE
    from alkn_core.runtime import pick_device, pick_dtype
    from alkn_core.train import finetune as run_finetune

    out = Path(args.out)
    items = [{k: r[k] for k in ("question", "answer", "text") if k in r}
             for r in read_jsonl(args.data)]
    params = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
              "grad_accum": 1, "max_length": args.max_length, "seed": args.seed,
              "warmup_ratio": 0.03, "weight_decay": 0.0}
    if args.base:
        tokenizer = AutoTokenizer.from_pretrained(args.base)
        model = AutoModelForCausalLM.from_pretrained(
            args.base, dtype=pick_dtype(pick_device()))
    else:  # a tiny Llama from scratch, with a BPE tokenizer trained on the data
        if (out / "tokenizer.json").is_file():  # resuming: the same tokenizer
            tokenizer = AutoTokenizer.from_pretrained(out)
        else:
            texts = [r.get("text") or DEFAULT_QA_TEMPLATE.format(**r) for r in items]
            tokenizer = build_tokenizer(texts, args.vocab_size)
            tokenizer.save_pretrained(out)
        torch.manual_seed(args.seed)
        model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), args.tiny, tokenizer))
    bar = tqdm(desc="finetune", unit="step")

    def progress(stage: str, step: int, total: int) -> None:
        bar.total = total
        bar.update(step - bar.n)

    checkpoint = out / "checkpoint" / "last.pt"
    if checkpoint.is_file():
        print(f"resuming from {checkpoint}", flush=True)
    stats = run_finetune(model, tokenizer, items, params, progress=progress,
                         checkpoint=checkpoint)
    bar.close()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    shutil.rmtree(out / "checkpoint", ignore_errors=True)
    print(json.dumps({"out": str(out), **stats}))
    return 0
