"""Each ALKN mechanism against hand-computed values (no servers, no training)."""

from __future__ import annotations

import math

import pytest
import torch

from alkn_core import TaskVector, UnlearnState
from alkn_core.masking import (
    accumulate_score,
    low_lr_names,
    pack_mask,
    robust_threshold,
    sample_positions,
    soft_label_weights,
    unmask_ratio_at,
    unpack_mask,
)
from alkn_core.train import build_optimizer, lr_lambda

from .conftest import random_tiny_model


def test_soft_label_weights_hand_values() -> None:
    # w(p) = sigmoid(1.5 (p - 0.8)) - sigmoid(-1.2)
    p = torch.tensor([0.0, 0.5, 0.8, 1.0])
    expected = [0.0, 0.3893608 - 0.2314752, 0.5 - 0.2314752, 0.5744425 - 0.2314752]
    assert soft_label_weights(p, 1.5).tolist() == pytest.approx(expected, abs=1e-6)
    # larger k sharpens, and the weight never leaves [0, 1]
    w = soft_label_weights(torch.linspace(0, 1, 101), 50.0)
    assert float(w.min()) >= 0.0 and float(w.max()) <= 1.0
    assert soft_label_weights(torch.tensor([1.0]), 3.0).item() == pytest.approx(
        1 / (1 + math.exp(-0.6)) - 1 / (1 + math.exp(2.4)), abs=1e-6)


@pytest.mark.parametrize("dist", ["normal", "uniform"])
@pytest.mark.parametrize("keep", [0.8, 0.6, 0.4])
def test_threshold_keeps_requested_fraction(dist: str, keep: float) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, generator=g) if dist == "normal" else torch.rand(200_000, generator=g)
    thr = robust_threshold(x.view(400, 500), keep, 0.15)
    assert abs(float((x > thr).float().mean()) - keep) <= 0.02


def test_threshold_hand_case_and_small_tensors() -> None:
    # 0..99 (N=100, k=15): hi = 15th largest = 85, lo = 15th smallest = 14,
    # thr = hi - (hi - lo) * (u N - k + 1) / (N - 2k + 2) = 85 - 71 * 66 / 72 = 19.92
    x = torch.arange(100, dtype=torch.float32)
    assert robust_threshold(x, 0.8, 0.15) == pytest.approx(85 - 71 * 66 / 72)
    assert int((x > robust_threshold(x, 0.8, 0.15)).sum()) == 80
    small = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0])  # too small to trim: exact order statistic
    assert int((small > robust_threshold(small, 0.4, 0.15)).sum()) == 2
    assert robust_threshold(small, 1.0) == -math.inf
    assert robust_threshold(small, 0.0) == math.inf


def test_unmask_ratio_schedule() -> None:
    assert [unmask_ratio_at(s, 5, 0.8) for s in range(5)] == pytest.approx(
        [0.8, 0.7, 0.6, 0.5, 0.4])
    assert unmask_ratio_at(0, 1, 0.8) == 0.8


def test_score_accumulates_and_sign() -> None:
    score = torch.zeros(3)
    g, gr = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([2.0, 2.0, -1.0])
    accumulate_score(score, g, gr)
    accumulate_score(score, g, gr)
    assert score.tolist() == [4.0, -8.0, -6.0]
    neg = torch.zeros(3)
    accumulate_score(neg, g, gr, sign=-1.0)
    assert neg.tolist() == [-2.0, 4.0, 3.0]


def test_previous_mask_penalty_lowers_reuse() -> None:
    gen = torch.Generator().manual_seed(1)
    g, gr = torch.randn(50_000, generator=gen), torch.randn(50_000, generator=gen)
    prev = torch.rand(50_000, generator=gen) < 0.5  # half the coordinates used before
    s = g * gr
    # hand value: penalty = std(g * g_r) * mask_p_k where prev is set
    penalised = torch.zeros(50_000)
    accumulate_score(penalised, g, gr, prev=prev, mask_p_k=0.5)
    assert torch.allclose(penalised, s - float(s.std()) * 0.5 * prev.float())
    plain = torch.zeros(50_000)
    accumulate_score(plain, g, gr)

    def reuse(score: torch.Tensor) -> float:
        kept = score > robust_threshold(score, 0.4)
        return float((kept & prev).sum() / kept.sum())

    assert reuse(plain) == pytest.approx(0.5, abs=0.02)
    assert reuse(penalised) < reuse(plain) - 0.1


def test_low_lr_groups(tokenizer: object) -> None:
    coverage = {"a": 0.9, "b": 0.1, "c": 0.5, "d": 0.7, "e": 0.0}
    assert low_lr_names(coverage) == {"a", "d"}
    model = random_tiny_model(tokenizer)
    names = [n for n, _ in model.named_parameters()]
    low = set(names[:3])
    opt = build_optimizer(model, 1e-3, 0.01, lambda n: 0.1 if n in low else 1.0)
    lr_of = {id(p): grp["lr"] for grp in opt.param_groups for p in grp["params"]}
    for n, p in model.named_parameters():
        assert lr_of[id(p)] == pytest.approx(1e-4 if n in low else 1e-3)
    # norms and biases are not weight-decayed
    decay_of = {id(p): grp["weight_decay"] for grp in opt.param_groups for p in grp["params"]}
    assert all(decay_of[id(p)] == (0.01 if p.ndim >= 2 else 0.0) for p in model.parameters())


def test_lr_schedule_warmup_then_linear_decay() -> None:
    f = lr_lambda(total=10, warmup=2)
    assert [round(f(s), 4) for s in range(10)] == [
        0.3333, 0.6667, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]


def test_negation_arithmetic(tokenizer: object) -> None:
    base = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    ft = torch.nn.Module()
    ft.w = torch.nn.Parameter(torch.tensor([3.0, 1.0]))
    ft.b = torch.nn.Parameter(torch.tensor([0.5]))
    tau = TaskVector.between(base, ft)
    assert tau.vector["w"].tolist() == [2.0, -1.0]
    assert (tau + tau).vector["w"].tolist() == [4.0, -2.0]
    assert (-tau).vector["w"].tolist() == [-2.0, 1.0]
    assert (0.5 * tau).vector["w"].tolist() == [1.0, -0.5]
    assert tau.norm() == pytest.approx(math.sqrt(5))
    tau.apply_to(ft, base, scale=-1.5)  # theta_t - alpha * tau
    assert ft.w.tolist() == [1.0 - 3.0, 2.0 + 1.5]
    assert ft.b.tolist() == [0.5]


def test_mask_packing_is_one_bit_per_parameter() -> None:
    m = torch.rand(3, 7, generator=torch.Generator().manual_seed(0)) > 0.5
    packed = pack_mask(m)
    assert packed.dtype == torch.uint8 and packed.numel() == 3  # ceil(21 / 8)
    assert torch.equal(unpack_mask(packed, (3, 7)), m)
    with pytest.raises(ValueError):
        unpack_mask(packed, (5, 7))


def test_state_round_trip_and_mismatch(tmp_path, tokenizer: object) -> None:
    model = random_tiny_model(tokenizer)
    gen = torch.Generator().manual_seed(0)
    shapes = {n: list(p.shape) for n, p in model.named_parameters()}
    masks = {n: torch.rand(p.shape, generator=gen) > 0.7 for n, p in model.named_parameters()}
    thresholds = {n: float(torch.randn(1, generator=gen)) / 3 for n in shapes}
    thresholds[next(iter(shapes))] = -math.inf
    state = UnlearnState("alkn", 2, shapes, masks, thresholds, {"mask_rule": "reference"})
    state.save(tmp_path / "s")
    loaded = UnlearnState.load(tmp_path / "s")
    assert loaded.task_index == 2 and loaded.method == "alkn" and loaded.info == state.info
    assert loaded.thresholds == thresholds  # exact floats
    assert loaded.masks is not None
    assert all(torch.equal(loaded.masks[n], masks[n]) for n in masks)
    n_params = sum(p.numel() for p in model.parameters())
    mask_bytes = (tmp_path / "s" / "alkn_masks.safetensors").stat().st_size
    assert mask_bytes < n_params / 8 + 20_000  # bit-packed (plus the safetensors header)
    loaded.check_compatible(model)

    from transformers import LlamaForCausalLM

    from alkn_core.demo_model import tiny_llama_config

    cfg = tiny_llama_config(len(tokenizer), "test", tokenizer)  # type: ignore[arg-type]
    cfg.intermediate_size += 4
    other = LlamaForCausalLM(cfg)
    with pytest.raises(ValueError, match="does not match the model"):
        loaded.check_compatible(other)
    with pytest.raises(ValueError, match="no unlearning state"):
        UnlearnState.load(tmp_path / "missing")


def test_sampled_threshold_keeps_requested_fraction() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2_000_000, generator=gen) ** 3  # heavy-tailed, like products of gradients
    positions = sample_positions(x.numel(), torch.Generator().manual_seed(0))
    assert positions is not None and x[positions].numel() == 1 << 14
    # a matrix: the stride does not divide the row length, so every column is sampled
    rows = sample_positions(4096 * 1792, torch.Generator().manual_seed(0), row=1792)
    assert rows is not None and 1792 % rows.step
    cols = torch.arange(4096 * 1792)[rows] % 1792
    assert cols.unique().numel() == 1792 and cols.numel() == 1 << 14
    for keep in (0.8, 0.4):
        exact = robust_threshold(x, keep)
        sampled = robust_threshold(x, keep, positions=positions)
        kept_exact = float((x > exact).float().mean())
        assert abs(float((x > sampled).float().mean()) - kept_exact) <= 0.01
    assert sample_positions(60_000, torch.Generator()) is None  # small tensors are used whole
