"""Evaluation metrics: hand-computed cases on a stub model, and evaluate_sets end to end."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from alkn_core import eval_sets as es
from alkn_core import evaluate as ev
from alkn_core.data import encode_items
from alkn_core.demo_corpus import generate_corpus
from alkn_core.losses import mean_answer_probability
from alkn_core.params import LoopParams
from tests.conftest import TinyWorld, random_tiny_model

# --------------------------------------------------------------------------------------------
# A stub world whose token probabilities are known by construction
# --------------------------------------------------------------------------------------------

# Next-token distribution of the stub model, the same at every position.
STUB_PROBS = {"<pad>": 0.02, "<s>": 0.02, "</s>": 0.4, "Question:": 0.02, "Answer:": 0.02,
              "who": 0.02, "A": 0.2, "B": 0.1, "C": 0.1, "D": 0.05, "E": 0.05}
VOCAB = list(STUB_PROBS)


class WordTokenizer:
    """Whitespace tokenizer over VOCAB (slow: encode_item masks the prompt by token count)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    is_fast = False
    chat_template = None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        ids = [VOCAB.index(w) for w in text.split()]
        return {"input_ids": [self.bos_token_id, *ids] if add_special_tokens else ids}


class StubModel(torch.nn.Module):
    """Logits = log STUB_PROBS at every position, whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.log_q = torch.nn.Parameter(torch.tensor([math.log(STUB_PROBS[w]) for w in VOCAB]))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
                ) -> SimpleNamespace:
        return SimpleNamespace(logits=self.log_q.expand(*input_ids.shape, len(VOCAB)))


def q(*words: str) -> list[float]:
    return [STUB_PROBS[w] for w in words]


def geo(ps: list[float]) -> float:
    return math.prod(ps) ** (1 / len(ps))


STUB_ITEMS = [
    # answer tokens are the answer's words plus EOS
    {"question": "who", "answer": "A", "paraphrased_answer": "B",
     "perturbed_answer": ["C", "D C"]},
    {"question": "who", "answer": "B A", "paraphrased_answer": "A",
     "perturbed_answer": ["E"]},
]


def test_answer_probabilities_match_hand_values() -> None:
    model, tok = StubModel(), WordTokenizer()
    model.train()
    for bs in (1, 2):
        p = ev.answer_probabilities(model, tok, STUB_ITEMS, batch_size=bs)
        assert p == pytest.approx([geo(q("A", "</s>")), geo(q("B", "A", "</s>"))], rel=1e-6)
    p_para = ev.answer_probabilities(model, tok, STUB_ITEMS, field="paraphrased_answer")
    assert p_para == pytest.approx([geo(q("B", "</s>")), geo(q("A", "</s>"))], rel=1e-6)
    p_pert = ev.perturbed_probabilities(model, tok, STUB_ITEMS, batch_size=2)
    assert len(p_pert) == 2 and len(p_pert[0]) == 2 and len(p_pert[1]) == 1
    assert p_pert[0] == pytest.approx([geo(q("C", "</s>")), geo(q("D", "C", "</s>"))], rel=1e-6)
    assert p_pert[1] == pytest.approx([geo(q("E", "</s>"))], rel=1e-6)
    assert model.training  # mode restored
    with pytest.raises(ValueError, match="items\\[0\\]"):
        ev.answer_probabilities(model, tok, [{"question": "who", "answer": "A"}],
                                field="paraphrased_answer")


def test_truth_ratio_and_normalised_probability_hand_values() -> None:
    model, tok = StubModel(), WordTokenizer()
    p_true = ev.answer_probabilities(model, tok, STUB_ITEMS)
    p_para = ev.answer_probabilities(model, tok, STUB_ITEMS, field="paraphrased_answer")
    p_pert = ev.perturbed_probabilities(model, tok, STUB_ITEMS)

    pert0 = [geo(q("C", "</s>")), geo(q("D", "C", "</s>"))]
    tr0 = (sum(pert0) / 2) / geo(q("B", "</s>"))
    tr1 = geo(q("E", "</s>")) / geo(q("A", "</s>"))
    trs = ev.truth_ratios(p_para, p_pert)
    assert trs == pytest.approx([tr0, tr1], rel=1e-6)
    assert ev.truth_ratio_score(trs, forget=True) == pytest.approx(
        (min(tr0, 1 / tr0) + min(tr1, 1 / tr1)) / 2, rel=1e-6)
    assert ev.truth_ratio_score(trs, forget=False) == pytest.approx(
        (max(0, 1 - tr0) + max(0, 1 - tr1)) / 2, rel=1e-6)

    a0, a1 = geo(q("A", "</s>")), geo(q("B", "A", "</s>"))
    assert ev.normalized_probability(p_true, p_pert) == pytest.approx(
        [a0 / (a0 + sum(pert0)), a1 / (a1 + geo(q("E", "</s>")))], rel=1e-6)


def test_truth_ratio_score_and_normalisation_plain_numbers() -> None:
    assert ev.truth_ratios([0.5, 0.2], [[0.25, 0.75], [0.1]]) == pytest.approx([1.0, 0.5])
    # forget quality's: the perturbed answers' losses averaged (a geometric mean)
    assert ev.truth_ratios([0.5], [[0.9, 0.1]]) == pytest.approx([1.0])
    assert ev.truth_ratios([0.5], [[0.9, 0.1]], mean="geometric") == pytest.approx([0.6])
    assert ev.truth_ratios([0.5], [[0.0, 0.1]], mean="geometric")[0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="mean"):
        ev.truth_ratios([0.5], [[0.1]], mean="harmonic")
    assert ev.truth_ratio_score([0.5, 2.0, 1.0], forget=True) == pytest.approx(2 / 3)
    assert ev.truth_ratio_score([0.5, 2.0, 1.0], forget=False) == pytest.approx(1 / 6)
    assert ev.truth_ratio_score([0.0], forget=True) == 0.0
    assert math.isfinite(ev.truth_ratios([0.0], [[0.5]])[0])
    assert ev.normalized_probability([0.6], [[0.2, 0.2]]) == pytest.approx([0.6])


def test_min_k_hand_values() -> None:
    model, tok = StubModel(), WordTokenizer()
    items = [{"text": "A B D E A"}, {"question": "who", "answer": "A"}]
    ln = math.log
    # text: every token but BOS; QA: the answer and EOS. k=0.4 of 5 tokens -> 2 lowest;
    # of 2 tokens -> at least one.
    assert ev.min_k_scores(model, tok, items) == pytest.approx([ln(0.05), ln(0.2)], rel=1e-6)
    assert ev.min_k_scores(model, tok, items, k=0.6) == pytest.approx(
        [(2 * ln(0.05) + ln(0.1)) / 3, ln(0.2)], rel=1e-6)
    assert ev.min_k_scores(model, tok, items, k=1.0, batch_size=1) == pytest.approx(
        [(2 * ln(0.2) + ln(0.1) + 2 * ln(0.05)) / 5, (ln(0.2) + ln(0.4)) / 2], rel=1e-6)


def test_rouge_l_recall() -> None:
    scores = ev.rouge_l_recall(["the cat sat", "cats running", ""],
                               ["the cat sat on the mat", "cat run", "anything"])
    assert scores == pytest.approx([0.5, 1.0, 0.0])  # stemming: cats~cat, running~run


def test_forget_quality_ks() -> None:
    same = [0.1, 0.5, 0.9, 1.3]
    assert ev.forget_quality(same, same) == pytest.approx(1.0)
    # Fully separated samples of size n: D = 1, reached by 2 of the C(2n, n) equally likely
    # orderings (all of one sample first), so the exact two-sided p-value is 2 / C(2n, n).
    for n in (3, 5, 8):
        low = [0.01 * i for i in range(n)]
        high = [1 + 0.01 * i for i in range(n)]
        assert ev.forget_quality(low, high) == pytest.approx(2 / math.comb(2 * n, n), rel=1e-9)


def test_auc_mann_whitney() -> None:
    assert ev.auc([3, 4], [1, 2]) == 1.0
    assert ev.auc([1, 2], [3, 4]) == 0.0
    assert ev.auc([2, 2], [2, 2, 2]) == 0.5
    # pairs (2,2)=1/2, (2,1)=1, (3,2)=1, (3,1)=1
    assert ev.auc([2, 3], [2, 1]) == pytest.approx(3.5 / 4)
    from scipy.stats import mannwhitneyu

    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 6, (30,), generator=g).tolist()
    b = torch.randint(0, 6, (17,), generator=g).tolist()
    assert ev.auc(a, b) == pytest.approx(mannwhitneyu(a, b).statistic / (30 * 17))


def test_model_utility_and_privacy_leak() -> None:
    assert ev.model_utility({"retain": {"probability": 0.5, "rouge_l": 1.0,
                                        "truth_ratio": 0.25}}) == pytest.approx(3 / 7)
    # pooled over sets, None left out
    assert ev.model_utility({"retain": {"probability": 0.5, "rouge_l": None, "truth_ratio": 1.0},
                             "eval/x": {"probability": 0.25, "rouge_l": 1.0,
                                        "truth_ratio": None}}) == pytest.approx(4 / 8)
    assert ev.model_utility({"r": {"probability": 0.0, "rouge_l": 1.0, "truth_ratio": 1.0}}) == 0
    assert ev.privacy_leak(0.6, 0.5) == pytest.approx(20.0)
    assert ev.privacy_leak(0.4, 0.5) == pytest.approx(-20.0)


# --------------------------------------------------------------------------------------------
# Real (tiny) models
# --------------------------------------------------------------------------------------------


def test_answer_probabilities_agree_with_losses(tiny_world: TinyWorld) -> None:
    tok = tiny_world.tokenizer
    model = random_tiny_model(tok)
    items = tiny_world.items[:7]
    p1 = ev.answer_probabilities(model, tok, items, batch_size=1)
    p3 = ev.answer_probabilities(model, tok, items, batch_size=3)
    assert p1 == pytest.approx(p3, abs=1e-6)
    examples = encode_items(items, tok, LoopParams())
    assert sum(p1) / len(p1) == pytest.approx(
        mean_answer_probability(model, examples, tok.pad_token_id), abs=1e-6)


def test_generation_prompts_are_cut_to_max_length(tiny_world: TinyWorld) -> None:
    """A question far longer than max_length reaches generate as its last max_length
    tokens (where the answer begins), not whole: memory bounded by the job's max_length."""
    tok = tiny_world.tokenizer
    model = random_tiny_model(tok)
    widths: list[int] = []
    generate = model.generate

    def recording(**kw: Any) -> Any:
        widths.append(int(kw["input_ids"].shape[1]))
        return generate(**kw)

    model.generate = recording  # type: ignore[method-assign]
    long = {"question": " ".join(["word"] * 3000) + "?", "answer": "x"}
    answers = ev.greedy_answers(model, tok, [long, tiny_world.items[0]], max_new_tokens=4,
                                max_length=64)
    assert len(answers) == 2 and widths == [64]
    ev.greedy_answers(model, tok, [long], max_new_tokens=4)
    assert widths[-1] > 3000  # without max_length, the whole question


def test_evaluate_sets_survives_odd_items(tiny_world: TinyWorld) -> None:
    tok = tiny_world.tokenizer
    model = random_tiny_model(tok)
    base = tiny_world.items
    # the prompt alone exceeds max_length: no answer token left to score
    long_question = {"question": " ".join(["word"] * 80), "answer": "yes"}
    partial = [dict(base[1], paraphrased_answer=base[2]["answer"],
                    perturbed_answer=[base[3]["answer"]]), dict(base[4])]
    sets: dict[str, list[Any]] = {
        "forget": [*base[:3], long_question, {"text": "Some raw text about a person."}],
        "retain": [],
        "eval/mixed": [*partial, {"question": "no answer"}, "not a dict",
                       {"question": "q", "answer": "a", "perturbed_answer": "not a list"}],
        "eval/text": [{"text": "Only raw text here."}],
    }
    calls: list[tuple[str, int, int]] = []
    res = es.evaluate_sets(model, tok, sets, holdout=[*base[5:8], {"bad": 1}], max_length=64,
                           max_new_tokens=3, batch_size=2, retain_model_trs={"forget": [1.0]},
                           retain_model_aucs={"forget": 0.5},
                           progress=lambda *a: calls.append(a))
    json.dumps(res, allow_nan=False)  # plain, finite values only

    f = res["forget"]
    assert f["items"] == 4 and f["truth_ratio"] is None and f["truth_ratios"] == []
    assert f["probability"] is not None and f["rouge_l"] is not None
    assert 0 <= f["privacy_auc"] <= 1 and isinstance(f["privacy_leak"], float)
    assert f["forget_quality"] is None  # no truth ratio on the unlearned side
    assert any("max_length" in s for s in f["skipped"])
    assert any(s.startswith("holdout:") for s in f["skipped"])
    assert res["retain"]["items"] == 0 and res["retain"]["probability"] is None
    mixed = res["eval/mixed"]
    assert mixed["items"] == 3 and mixed["probability_kind"] == "plain"
    assert mixed["truth_ratio"] is not None  # over the one item that has both fields
    assert any("neither" in s for s in mixed["skipped"])
    assert any("truth_ratio: over 1 of 3" in s for s in mixed["skipped"])
    text = res["eval/text"]
    assert text["rouge_l"] is None and text["truth_ratio"] is None
    assert text["probability"] is not None
    assert res["model_utility"] is not None and res["model_utility_skipped"]

    steps = [c[1] for c in calls]
    assert calls[0] == ("evaluating", 0, calls[0][2]) and steps == sorted(steps)
    assert steps[-1] == calls[0][2] > 0
    with pytest.raises(ValueError, match="reserved"):
        es.evaluate_sets(model, tok, {"model_utility": []})


def _close(a: Any, b: Any, tol: float) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k], tol) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_close(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


def test_evaluate_sets_on_trained_model(trained: torch.nn.Module, tiny_world: TinyWorld) -> None:
    corpus = generate_corpus(people=8, holdout_people=0, seed=1)  # the fixture's corpus
    tok = tiny_world.tokenizer
    sets = {
        "forget": corpus.forget10_perturbed[:5],
        "retain": corpus.retain_perturbed[:5],
        # a general set the model was trained on (world facts were not: ROUGE-L 0, utility 0)
        "eval/people": corpus.retain_perturbed[5:9],
    }
    holdout = [{"question": r["question"], "answer": r["answer"]} for r in corpus.retain90[-4:]]
    kwargs: dict[str, Any] = {"holdout": holdout, "max_new_tokens": 32}
    first = es.evaluate_sets(trained, tok, sets, batch_size=8, **kwargs)
    again = es.evaluate_sets(trained, tok, sets, batch_size=8, **kwargs)
    single = es.evaluate_sets(trained, tok, sets, batch_size=1, **kwargs)
    assert first == again
    assert _close(first, single, 1e-5)
    json.dumps(first, allow_nan=False)

    for name in ("forget", "retain"):
        m = first[name]
        assert m["items"] == 5 and m["probability_kind"] == "plain"
        assert m["rouge_l"] > 0.5  # trained on these answers
        assert m["truth_ratio"] is not None
    assert first["retain"]["skipped"] == []
    assert first["eval/people"]["probability_kind"] == "normalized"
    f = first["forget"]
    assert len(f["truth_ratios"]) == 5 and 0 <= f["privacy_auc"] <= 1
    assert f["forget_quality"] is None and f["privacy_leak"] is None  # no retain model given
    assert "truth_ratios" not in first["retain"]
    assert 0 < first["model_utility"] <= 1

    # A retain model's truth ratios give forget quality; its own ones give p = 1.
    fq = es.evaluate_sets(trained, tok, {"forget": sets["forget"]}, max_new_tokens=1,
                          retain_model_trs={"forget": first["forget"]["truth_ratios"]})
    assert fq["forget"]["forget_quality"] == pytest.approx(1.0)
    assert fq["model_utility"] is None
