"""Shared fixtures: a tiny tokenizer and a tiny Llama trained on a few fictitious people."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from alkn_core.demo_corpus import generate_corpus
from alkn_core.demo_model import build_tokenizer, corpus_texts, tiny_llama_config
from alkn_core.train import finetune

# Model work on one thread, here and in every process the tests start (they inherit the
# environment): the models are tiny (hidden 64-128), so a second thread buys nothing, and on
# two cores shared with a worker, a server or anything else, OpenMP's threads spin at every
# barrier (an alkn job took 18 s on two threads, 1.8 s on one, with another process busy).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@dataclass
class TinyWorld:
    tokenizer: Any
    people: list[str]
    items: list[dict[str, Any]]  # QA of every person, with "person"

    def of(self, *people: str) -> list[dict[str, Any]]:
        return [i for i in self.items if i["person"] in people]


@pytest.fixture(scope="session")
def tiny_world() -> TinyWorld:
    corpus = generate_corpus(people=8, holdout_people=0, seed=1)
    tokenizer = build_tokenizer(corpus_texts(corpus), vocab_size=512)
    items = [{"question": r["question"], "answer": r["answer"], "person": r["person"]}
             for r in corpus.full]
    return TinyWorld(tokenizer, corpus.people("full"), items)


@pytest.fixture(scope="session")
def tokenizer(tiny_world: TinyWorld) -> Any:
    return tiny_world.tokenizer


@pytest.fixture(scope="session")
def trained(tiny_world: TinyWorld) -> torch.nn.Module:
    """Train the fixture model on every person (a few seconds on one thread)."""
    from transformers import LlamaForCausalLM

    from alkn_core.demo_model import tiny_llama_config

    cfg = tiny_llama_config(len(tiny_world.tokenizer), "test", tiny_world.tokenizer)
    cfg.hidden_size, cfg.intermediate_size = 128, 256
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    finetune(model, tiny_world.tokenizer, tiny_world.items,
             {"lr": 3e-3, "epochs": 15, "batch_size": 16, "grad_accum": 1,
              "warmup_ratio": 0.05})
    return model


@pytest.fixture(scope="session")
def trained_dir(trained: torch.nn.Module, tiny_world: TinyWorld, tmp_path_factory: Any) -> Any:
    """The trained fixture model saved as a Hugging Face directory."""
    out = tmp_path_factory.mktemp("models") / "tiny"
    trained.save_pretrained(out)
    tiny_world.tokenizer.save_pretrained(out)
    return out


def random_tiny_model(tokenizer: Any, seed: int = 0) -> torch.nn.Module:
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(len(tokenizer), "test", tokenizer))


from .apikit import api_world  # noqa: E402,F401  (an API on a database of its own)
from .services import module_pg_url, pg_url, redis_url  # noqa: E402,F401  (service fixtures)
