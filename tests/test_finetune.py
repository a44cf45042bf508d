"""`finetune` checkpoints and resumes exactly; `alkn finetune` makes a loadable model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from alkn_core.train import finetune

from .conftest import TinyWorld, random_tiny_model

PARAMS = {"epochs": 3, "lr": 3e-3, "batch_size": 8, "grad_accum": 1, "max_length": 96}


class Stop(Exception):
    pass


def test_interrupted_run_resumes_exactly(tiny_world: TinyWorld, tmp_path: Path) -> None:
    items = tiny_world.of(*tiny_world.people[:2])
    whole = random_tiny_model(tiny_world.tokenizer)
    finetune(whole, tiny_world.tokenizer, items, PARAMS)

    steps_per_epoch = -(-len(items) // 8)
    ck = tmp_path / "ck" / "last.pt"

    def crash(stage: str, step: int, total: int) -> None:
        if step == steps_per_epoch + 2:  # inside the second epoch
            raise Stop

    first = random_tiny_model(tiny_world.tokenizer)
    with pytest.raises(Stop):
        finetune(first, tiny_world.tokenizer, items, PARAMS, progress=crash, checkpoint=ck)
    assert ck.is_file()
    resumed = random_tiny_model(tiny_world.tokenizer)  # a fresh process would start like this
    seen: list[int] = []
    finetune(resumed, tiny_world.tokenizer, items, PARAMS, checkpoint=ck,
             progress=lambda stage, step, total: seen.append(step))
    assert seen[0] == steps_per_epoch + 1  # continued after the saved epoch
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="other parameters"):
        finetune(random_tiny_model(tiny_world.tokenizer), tiny_world.tokenizer, items,
                 {**PARAMS, "lr": 1e-3}, checkpoint=ck)


def test_alkn_finetune_tiny(tiny_world: TinyWorld, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alkn_cli.main import main

    data = tmp_path / "full.json"
    data.write_text("\n".join(json.dumps({"question": i["question"], "answer": i["answer"]})
                              for i in tiny_world.of(tiny_world.people[0])))
    out = tmp_path / "model"
    assert main(["finetune", "--data", str(data), "--out", str(out), "--tiny", "test",
                 "--epochs", "2", "--vocab-size", "400"]) == 0
    model: Any = AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).bos_token_id is not None
    assert model.config.model_type == "llama" and not (out / "checkpoint").exists()
