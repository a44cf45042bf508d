"""The continual benchmarks' tasks and models (bench/continual.py, bench/calibration.py):
forget10 split into tasks by person, sets capped to a sample, and the target and retain
models loaded, or trained from the data when none is given."""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def split_tasks(forget: list[Record], n_tasks: int) -> list[list[Record]]:
    """Disjoint tasks by person (contiguous groups of people), else contiguous equal chunks."""
    people: list[str] = []
    for r in forget:
        if r.get("person") is not None and r["person"] not in people:
            people.append(r["person"])
    if len(people) >= n_tasks and all(r.get("person") is not None for r in forget):
        groups = _chunks(people, n_tasks)
        return [[r for r in forget if r["person"] in set(g)] for g in groups]
    if len(forget) < n_tasks:
        raise ValueError(f"{len(forget)} forget items cannot make {n_tasks} tasks")
    return _chunks(forget, n_tasks)


def with_perturbed(tasks: list[list[Record]], perturbed: list[Record]) -> list[list[Record]]:
    """Each task's items as their perturbed records (forget10_perturbed), matched by question
    and answer (a question alone may be asked of several people), else as they are."""
    by_qa = {(r["question"], r["answer"]): r for r in perturbed}
    return [[by_qa.get((r["question"], r["answer"]), r) for r in t] for t in tasks]


def held_out_people(items: list[Record], exclude: set[Any], n: int,
                    rng: random.Random) -> list[Record]:
    """The items of `n` people of `items` drawn with `rng`, none of them in `exclude`."""
    people = sorted({r["person"] for r in items
                     if r.get("person") is not None and r["person"] not in exclude})
    if len(people) < n:
        raise ValueError(f"{len(people)} people left for {n} tasks")
    pick = set(rng.sample(people, n))
    return [r for r in items if r.get("person") in pick]


def _chunks(xs: list[Any], n: int) -> list[list[Any]]:
    size, extra = divmod(len(xs), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(xs[start:end])
        start = end
    return out


def cap(items: list[Record], n: int | None, rng: random.Random | None = None) -> list[Record]:
    if n is None or len(items) <= n:
        return list(items)
    # A seeded sample keeps the cap representative (the files are sorted by person).
    return rng.sample(items, n) if rng is not None else items[:n]


def load_or_train(kind: str, given: str | None, out: Path, items: list[Record], tokenizer: Any,
                  args: argparse.Namespace) -> tuple[Any, Any]:
    """A model from `given`, else from OUT/kind if a previous run saved it, else trained."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    from alkn_core.demo_model import DEMO_TRAIN_PARAMS, tiny_llama_config
    from alkn_core.train import finetune

    path = Path(given) if given else out / kind
    if (path / "config.json").is_file():
        print(f"{kind}: loading {path}", flush=True)
        return AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    if given:
        raise ValueError(f"--{kind} {given}: no config.json there")
    print(f"{kind}: training a tiny '{args.tiny_size}' Llama on {len(items)} items", flush=True)
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    model = LlamaForCausalLM(tiny_llama_config(len(tokenizer), args.tiny_size, tokenizer))
    finetune(model, tokenizer, items,
             {**DEMO_TRAIN_PARAMS, "epochs": args.finetune_epochs, "seed": args.seed})
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    print(f"{kind}: trained in {time.perf_counter() - t0:.1f}s -> {path}", flush=True)
    return model, tokenizer


def build_data_tokenizer(data: Any, vocab_size: int) -> Any:
    from alkn_core.demo_model import build_tokenizer
    from alkn_core.params import DEFAULT_QA_TEMPLATE

    texts = []
    for records in (data.full, data.forget10_perturbed, data.retain_perturbed,
                    data.real_authors_perturbed, data.world_facts_perturbed, data.holdout10):
        for r in records:
            perturbed = r.get("perturbed_answer")
            if not isinstance(perturbed, list):  # a malformed one is skipped in evaluation
                perturbed = [perturbed]
            answers = [r["answer"], r.get("paraphrased_answer"), *perturbed]
            texts += [DEFAULT_QA_TEMPLATE.format(question=r["question"], answer=a)
                      for a in answers if isinstance(a, str)]
    return build_tokenizer(texts, vocab_size)
