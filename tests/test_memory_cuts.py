"""Issue 17: what ALKN holds beyond fine-tuning, cut without changing what it computes.

- snapshots and task vectors parked off the compute device (offload.py) read back exactly;
- the repair's gradient, taken in row parts (the KL's, the hinge's surrogate), equals
  autograd's on the whole batch;
- the score and g_r in bf16 choose (almost) the same mask as in fp32.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch

from alkn_core import unlearn
from alkn_core.data import encode_items, length_sorted_batches, pad_id
from alkn_core.methods import method_params
from alkn_core.offload import park, resolve
from alkn_core.repair import Teacher, _item_logprobs, forget_hinge, hinge_step
from alkn_core.task_vector import TaskVector, snapshot

from .conftest import TinyWorld

LOOP = {"lr": 3e-3, "epochs": 3, "batch_size": 8, "grad_accum": 1}


def test_parked_tensors_read_back_exactly_wherever_they_wait(trained: torch.nn.Module) -> None:
    model = copy.deepcopy(trained)
    named = {n: p.detach().clone() for n, p in model.named_parameters()}
    assert resolve("auto", torch.device("cpu")) == "disk"
    assert resolve("auto", torch.device("cuda")) == "cpu"
    assert resolve("cpu", torch.device("cpu")) == "memory"
    with pytest.raises(ValueError, match="offload must be one of"):
        resolve("gpu", torch.device("cpu"))
    for where in ("memory", "disk", "auto"):
        base = snapshot(model, where)
        assert base.where in ("memory", "disk") and set(base) == set(named)
        with torch.no_grad():  # the live model moves on; the snapshot does not
            for p in model.parameters():
                p.add_(1.0)
        assert all(torch.equal(base[n], t) for n, t in named.items())
        tau = TaskVector.between(base, model, where)
        tau.apply_to(model, base, scale=0.0)  # back to the snapshot
        assert all(torch.equal(p, named[n]) for n, p in model.named_parameters())
        assert torch.allclose(tau.vector[next(iter(named))], torch.ones(()))
    bf16 = park([("w", torch.randn(3, 5).to(torch.bfloat16)), ("b", torch.randn(7))], "disk")
    assert bf16["w"].dtype == torch.bfloat16 and bf16["b"].shape == (7,)
    assert park([], "disk").stored_bytes() == 0


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_part_wise_repair_gradients_equal_the_whole_batch(trained: torch.nn.Module,
                                                          tiny_world: TinyWorld) -> None:
    model = copy.deepcopy(trained)
    tok, p = tiny_world.tokenizer, method_params("alkn", {})
    people = tiny_world.people
    examples = encode_items(tiny_world.of(*people[4:]), tok, p)
    forget = length_sorted_batches(encode_items(tiny_world.of(people[0]), tok, p), 8,
                                   pad_id(tok), torch.device("cpu"))[0]
    teacher = Teacher.record(model, examples, pad_id(tok), 8, torch.device("cpu"))
    with torch.no_grad():  # a student that differs from its teacher
        for q in model.parameters():
            q.mul_(0.9)
    model.zero_grad(set_to_none=True)
    whole = teacher.kl(model, 0)
    whole.backward()
    expected = _grads(model)
    model.zero_grad(set_to_none=True)
    value = teacher.kl_backward(model, 0)
    assert value == pytest.approx(float(whole.detach()), rel=1e-5)
    got = _grads(model)
    assert all(torch.allclose(got[n], g, rtol=1e-4, atol=1e-7) for n, g in expected.items())
    # the hinge: active (a target under the items' mean), then inactive (above it)
    with torch.no_grad():
        log_mean = float(torch.logsumexp(_item_logprobs(model, forget), 0)
                         - math.log(len(forget["input_ids"])))
    for log_target, active in ((log_mean - 0.5, True), (log_mean + 0.5, False)):
        model.zero_grad(set_to_none=True)
        ref = forget_hinge(model, forget, log_target)
        (3.0 * ref).backward()
        expected = _grads(model)
        model.zero_grad(set_to_none=True)
        value = hinge_step(model, forget, log_target, weight=3.0)[0]
        assert value == pytest.approx(float(ref.detach()), rel=1e-5, abs=1e-9)
        assert (value > 0) is active
        got = _grads(model)
        if not active:
            assert not got  # no backward pass at all
            continue
        assert got.keys() == expected.keys()
        assert all(torch.allclose(got[n], expected[n], rtol=1e-4, atol=1e-7) for n in got)


def _masks(trained: torch.nn.Module, world: TinyWorld, dtype: str) -> list[dict[str, Any]]:
    model, state, out = copy.deepcopy(trained), None, []
    ppl = world.people
    for person in ppl[:2]:
        r = unlearn(model, world.tokenizer, world.of(person), world.of(*ppl[4:]),
                    params={**LOOP, "alpha": 1.0, "repair_steps": 0, "score_dtype": dtype},
                    state=state)
        model, state = r.model, r.state
        assert state is not None
        out.append(dict(state.masks))
    return out


def test_bf16_score_chooses_the_fp32_mask(trained: torch.nn.Module,
                                          tiny_world: TinyWorld) -> None:
    """bf16 has fp32's range (no product of two gradients underflows) and 8 bits of
    mantissa: only coordinates within a rounding of the threshold can change side."""
    exact, half = _masks(trained, tiny_world, "float32"), _masks(trained, tiny_world, "bfloat16")
    for a, b in zip(exact, half, strict=True):
        same = sum(int((a[n] == b[n]).sum()) for n in a)
        total = sum(a[n].numel() for n in a)
        assert same / total >= 0.98, f"masks agree on {same / total:.4f} only"
    assert method_params("alkn", {})["score_dtype"] == "bfloat16"


def test_a_full_disk_keeps_the_rest_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC mid-way: what was written stays mapped, the rest is kept in memory, nothing is
    lost or wrong."""
    import errno
    import io

    from alkn_core import offload

    class Full(io.FileIO):
        written = 0

        def write(self, b: Any) -> int:
            n = len(memoryview(b).cast("B"))
            if Full.written + n > 200:
                raise OSError(errno.ENOSPC, "No space left on device")
            Full.written += n
            return super().write(b)

    monkeypatch.setattr(offload.os, "fdopen", lambda fd, mode: Full(fd, "w"))
    tensors = {f"t{i}": torch.full((10,), float(i)) for i in range(5)}  # 40 bytes (+ pad) each
    parked = park(tensors.items(), "disk")
    assert parked.where == "disk+memory" and set(parked) == set(tensors)
    assert all(torch.equal(parked[n], t) for n, t in tensors.items())
    for t in tensors.values():
        t.add_(1.0)  # copies, not the live tensors
    assert torch.equal(parked["t4"], torch.full((10,), 4.0))
