"""Tokenizer, tiny Llama and the build of the committed demo model.

The demo model is a ~3.7M-parameter Llama trained from scratch to memorise the synthetic corpus
of :mod:`alkn_core.demo_corpus` (plus the general-knowledge sets), so unlearning can be shown
end to end on a CPU without downloading anything.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from .demo_corpus import Corpus, generate_corpus, training_items, write_corpus
from .params import DEFAULT_QA_TEMPLATE

UNK, BOS, EOS, PAD = "<unk>", "<s>", "</s>", "<pad>"
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD)  # ids 0..3, Llama's order for unk/bos/eos
DEFAULT_VOCAB_SIZE = 2048

# Training settings of the committed model, tuned for 2 CPU cores (see build_demo_model).
DEMO_TRAIN_PARAMS: dict[str, Any] = {
    "lr": 2e-3,
    "epochs": 15,
    "batch_size": 16,
    "grad_accum": 1,
    "warmup_ratio": 0.03,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "max_length": 128,
    "seed": 0,
    "qa_template": DEFAULT_QA_TEMPLATE,
}

_ASSETS = Path(__file__).resolve().parent / "demo_assets"


def demo_model_dir() -> Path:
    """Directory of the committed demo model (``from_pretrained``-loadable)."""
    return _ASSETS / "model"


def demo_data_dir() -> Path:
    """Directory of the committed demo corpus (TOFU layout, JSON Lines)."""
    return _ASSETS / "data"


def demo_registration_sets(data_dir: Path | None = None) -> dict[str, Any]:
    """The sets `alkn serve` registers the demo model with: `retain`, `holdout` and
    `eval_sets` (real authors, world facts), each item with its TOFU fields only; from
    `data_dir` (another build's corpus) if given, else the committed one."""
    from .demo_corpus import read_jsonl

    keep = ("question", "answer", "paraphrased_answer", "perturbed_answer")
    data = data_dir or demo_data_dir()

    def qa(name: str) -> list[dict[str, Any]]:
        return [{k: r[k] for k in keep if k in r} for r in read_jsonl(data / name)]

    return {"retain": qa("retain_perturbed.json"), "holdout": qa("holdout10.json"),
            "eval_sets": {"real_authors": qa("real_authors_perturbed.json"),
                          "world_facts": qa("world_facts_perturbed.json")}}


# --------------------------------------------------------------------------------------------
# Tokenizer and config
# --------------------------------------------------------------------------------------------


def corpus_texts(corpus: Corpus, qa_template: str = DEFAULT_QA_TEMPLATE) -> list[str]:
    """Every QA of the corpus (all splits, all answer variants) rendered with ``qa_template``,
    so the tokenizer learns the template and question words in their in-context form."""
    texts: list[str] = []
    for records in corpus.splits().values():
        for rec in records:
            answers = [rec["answer"]]
            if "paraphrased_answer" in rec:
                answers += [rec["paraphrased_answer"], *rec["perturbed_answer"]]
            texts.extend(qa_template.format(question=rec["question"], answer=a) for a in answers)
    return texts


def build_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
                    ) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts``; adds BOS like Llama, never EOS (the trainer does).

    Byte-level means any string encodes without <unk>, so the model can be probed with text
    outside the corpus.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.Sequence([
        # Keep byte offsets exact: data.encode_item locates the answer by character offsets.
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
        ),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        model_max_length=256,
        clean_up_tokenization_spaces=False,
    )


def tiny_llama_config(vocab_size: int, size: str = "demo",
                      tokenizer: PreTrainedTokenizerFast | None = None) -> LlamaConfig:
    """Config of the tiny Llama: "demo" (~3.7M params with a 2048 vocab) or "test" (~0.2M)."""
    dims = {
        "demo": {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                 "num_attention_heads": 4},
        "test": {"hidden_size": 64, "intermediate_size": 172, "num_hidden_layers": 2,
                 "num_attention_heads": 2},
    }
    if size not in dims:
        raise ValueError(f"size must be one of {sorted(dims)}, got {size!r}")
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
               "pad_token_id": tokenizer.pad_token_id}
    d = dims[size]
    return LlamaConfig(
        vocab_size=vocab_size,
        num_key_value_heads=d["num_attention_heads"],
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rms_norm_eps=1e-6,
        **d,
        **ids,
    )


# --------------------------------------------------------------------------------------------
# Greedy answers and recall
# --------------------------------------------------------------------------------------------


def answer_recall(model: torch.nn.Module, tokenizer: Any, items: Sequence[dict[str, Any]],
                  qa_template: str = DEFAULT_QA_TEMPLATE, max_new_tokens: int = 48) -> float:
    """Mean ROUGE-L recall (stemmed) of greedy answers against the gold answers."""
    from .evaluate import greedy_answers, rouge_l_recall

    if not items:
        return 0.0
    answers = greedy_answers(model, tokenizer, items, qa_template=qa_template,
                             max_new_tokens=max_new_tokens)
    scores = rouge_l_recall(answers, [it["answer"] for it in items])
    return sum(scores) / len(scores)


# --------------------------------------------------------------------------------------------
# Build
# --------------------------------------------------------------------------------------------


class _Bar:
    """tqdm bar fed by train.finetune's progress(stage, step, total) callback."""

    def __init__(self) -> None:
        self.bar: Any = None

    def __call__(self, stage: str, step: int, total: int) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=stage, unit="step")
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def build_demo_model(out_dir: str | Path, people: int = 50, seed: int = 0,
                     epochs: int | None = None, size: str = "demo", progress: bool = True,
                     holdout_people: int = 5, vocab_size: int = DEFAULT_VOCAB_SIZE,
                     train_params: dict[str, Any] | None = None,
                     eval_recall: bool = True) -> Path:
    """Generate the corpus, train a tiny Llama to memorise it, save everything under out_dir.

    Writes ``out_dir/data/*.json`` (TOFU layout), ``out_dir/model/`` (safetensors + tokenizer)
    and ``out_dir/build_info.json`` (settings, wall time, loss, ROUGE-L recall). Returns the
    model directory. ``train_params`` override :data:`DEMO_TRAIN_PARAMS`; ``epochs`` overrides
    both.
    """
    from .train import finetune

    start = time.perf_counter()
    out = Path(out_dir)
    corpus = generate_corpus(people=people, holdout_people=holdout_people, seed=seed)
    write_corpus(corpus, out / "data")
    items = training_items(corpus)

    tokenizer = build_tokenizer(corpus_texts(corpus), vocab_size)
    config = tiny_llama_config(len(tokenizer), size, tokenizer)
    torch.manual_seed(seed)  # the weight init is the only other source of randomness
    model = LlamaForCausalLM(config)

    params = {**DEMO_TRAIN_PARAMS, **(train_params or {}), "seed": seed}
    if epochs is not None:
        params["epochs"] = epochs
    bar = _Bar() if progress else None
    train_start = time.perf_counter()
    try:
        stats = finetune(model, tokenizer, items, params, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    train_seconds = time.perf_counter() - train_start

    model.to("cpu")
    model_dir = out / "model"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    recall = answer_recall(model, tokenizer, items, params["qa_template"]) if eval_recall else None
    info = {
        "people": people,
        "holdout_people": holdout_people,
        "seed": seed,
        "size": size,
        "vocab_size": len(tokenizer),
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_train_items": len(items),
        "train_params": params,
        "train_stats": stats,
        "train_seconds": round(train_seconds, 1),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "rougeL_recall_train": recall,
        "torch": torch.__version__,
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n",
                                         encoding="utf-8")
    return model_dir


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m alkn_core.demo",
                                     description="Build the tiny demo model and its corpus.")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="generate the corpus and train the demo model")
    b.add_argument("--out", type=Path, default=_ASSETS, help="output dir (default: demo_assets)")
    b.add_argument("--people", type=int, default=50)
    b.add_argument("--holdout-people", type=int, default=5)
    b.add_argument("--epochs", type=int, default=None,
                   help=f"default {DEMO_TRAIN_PARAMS['epochs']}")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", choices=("demo", "test"), default="demo")
    b.add_argument("--lr", type=float, default=None)
    b.add_argument("--batch-size", type=int, default=None)
    b.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    if args.lr is not None:
        overrides["lr"] = args.lr
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    start = time.perf_counter()
    model_dir = build_demo_model(args.out, people=args.people, seed=args.seed,
                                 epochs=args.epochs, size=args.size,
                                 progress=not args.no_progress,
                                 holdout_people=args.holdout_people, train_params=overrides)
    info = json.loads((Path(args.out) / "build_info.json").read_text(encoding="utf-8"))
    print(f"model: {model_dir}")
    print(f"wall time: {time.perf_counter() - start:.1f} s "
          f"(training {info['train_seconds']:.1f} s, final loss "
          f"{info['train_stats']['final_loss']:.4f})")
    print(f"ROUGE-L recall on {info['n_train_items']} training QA: "
          f"{info['rougeL_recall_train']:.4f}")
    return 0
