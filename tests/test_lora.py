"""adapter "lora" (alkn_core/adapters.py): LoRA factors attached for a fine-tune and merged
back, leaving a plain model; ALKN's mask on the factors; the repair on LoRA; a lineage keeps
its adapter. The architectures' two-task runs with LoRA are in test_architectures.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from alkn_core import unlearn
from alkn_core.adapters import attach, attached
from alkn_core.data import encode_items, pad_id
from alkn_core.losses import mean_answer_probability
from alkn_core.params import LoopParams

from .conftest import TinyWorld
from .test_architectures import tiny_config

LORA = {"adapter": "lora", "lora_rank": 4, "lora_alpha": 8.0, "lora_targets": "all-linear",
        "seed": 0}


def _random(arch: str, tok: Any) -> torch.nn.Module:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(
        tiny_config(arch, len(tok), tok.pad_token_id or 0)).float().eval()


@pytest.mark.parametrize("arch", ["llama", "gpt2"])  # nn.Linear; Conv1D (transposed)
def test_merge_is_the_adapted_model_and_a_plain_one(arch: str, tiny_world: TinyWorld) -> None:
    model = _random(arch, tiny_world.tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    keys = set(model.state_dict())
    adapter = attach(model, LORA)
    assert adapter is not None
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    x = torch.randint(5, len(tiny_world.tokenizer), (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, _plain_logits(before, arch, tiny_world, x),
                              atol=1e-5)  # B = 0: the adapter starts as the identity
        for n, p in model.named_parameters():
            if ".lora_B." in n:
                p.normal_(0, 0.1)
        adapted = model(input_ids=x).logits
    adapter.merge()
    assert not hasattr(model, "peft_config")
    assert set(model.state_dict()) == keys
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    with torch.no_grad():
        assert torch.allclose(model(input_ids=x).logits, adapted, atol=1e-4)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    linear = {f"{n}.weight" for n, m in model.named_modules()
              if type(m).__name__ in ("Linear", "Conv1D")}
    head = {n for n, p in model.named_parameters()
            if p is model.get_output_embeddings().weight}
    assert changed and changed <= linear - head  # the output head and embeddings stay
    for n in changed:  # each update has rank <= r
        delta = (model.get_parameter(n) - before[n]).detach()
        assert int(torch.linalg.matrix_rank(delta)) <= LORA["lora_rank"], n


def _plain_logits(weights: dict[str, torch.Tensor], arch: str, tiny_world: TinyWorld,
                  x: torch.Tensor) -> torch.Tensor:
    model = _random(arch, tiny_world.tokenizer)
    model.load_state_dict(weights, strict=False)
    return model(input_ids=x).logits


def test_discard_and_failure_leave_the_weights(tiny_world: TinyWorld) -> None:
    model = _random("llama", tiny_world.tokenizer)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(RuntimeError, match="boom"), attached(model, LORA):
        with torch.no_grad():
            for n, p in model.named_parameters():
                if ".lora_B." in n:
                    p.fill_(1.0)
        raise RuntimeError("boom")
    assert {n: p for n, p in model.named_parameters()}.keys() == before.keys()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(ValueError, match="lora_targets 'no_such_proj'"):
        attach(model, {**LORA, "lora_targets": "no_such_proj"})
    assert {n for n, _ in model.named_parameters()} == before.keys()
    assert attach(model, {**LORA, "adapter": "none"}) is None


def test_alkn_lora_lineage_with_repair(tiny_world: TinyWorld, trained: torch.nn.Module
                                       ) -> None:
    """Two tasks on the trained fixture with enough retain items for the repair to run on
    LoRA too: forgotten, the mask on the factors (A unmasked), the state refuses another
    adapter, and a bad target list fails the task with the model left plain."""
    tok = tiny_world.tokenizer
    model = trained
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    people = tiny_world.people
    retain = tiny_world.of(*people[3:])
    enc = lambda items: encode_items(items, tok, LoopParams(max_length=64))  # noqa: E731
    params = {"adapter": "lora", "lr": "auto", "epochs": 2, "batch_size": 8, "grad_accum": 1,
              "max_length": 64, "repair_steps": 6, "repair_rounds": 2,
              "calibration_evals": 5}
    try:
        forget = tiny_world.of(people[0])[:6]
        p0 = mean_answer_probability(model, enc(forget), pad_id(tok))
        # target: 0.1 x the forget items' probability (every fixture person was trained)
        r = unlearn(model, tok, forget, retain, method="alkn", params=params)
        assert r.state is not None and r.state.info["adapter"] == "lora"
        assert mean_answer_probability(model, enc(forget), pad_id(tok)) < 0.5 * p0
        assert r.stats["repair"]["rounds"], "the repair did not run"
        masks = r.state.masks
        assert masks is not None
        a = [n for n in masks if ".lora_A." in n]
        b = [n for n in masks if ".lora_B." in n]
        assert a and b and len(a) + len(b) == len(masks)
        assert all(bool(masks[n].all()) for n in a)  # no retain gradient to rank them by
        assert not all(bool(masks[n].all()) for n in b)  # B is masked
        with pytest.raises(ValueError, match="adapter 'lora'"):
            unlearn(model, tok, tiny_world.of(people[1])[:6], retain, method="alkn",
                    params={**params, "adapter": "none"}, state=r.state)
        with pytest.raises(ValueError, match="lora_targets"):
            unlearn(model, tok, tiny_world.of(people[1])[:6], retain, method="alkn",
                    params={**params, "lora_targets": "no_such_proj"}, state=r.state)
        assert all(".lora_" not in n for n, _ in model.named_parameters())
        r2 = unlearn(model, tok, tiny_world.of(people[1])[:6], retain, method="alkn",
                     params=params, state=r.state, earlier_forget=[forget])
        assert r2.state is not None and r2.state.task_index == 2
        assert r2.stats["low_lr_tensors"] > 0
    finally:  # the fixture is shared
        with torch.no_grad():
            for n, p in model.named_parameters():
                p.copy_(before[n])
