"""evaluate_sets on samples with a score cache: TOFU's model utility by hand over its nine
components, samples stable and nested, the cache reused exactly, item counts reported."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from alkn_core import eval_sets as es
from alkn_core.demo_corpus import generate_corpus
from tests.conftest import TinyWorld, random_tiny_model
from tests.test_evaluate import STUB_ITEMS, StubModel, WordTokenizer, geo, q

# TOFU's real-authors / world-facts shape: an answer and perturbed answers, no paraphrase.
GENERAL_ITEMS = [
    {"question": "who", "answer": "A", "perturbed_answer": ["B", "C"]},
    {"question": "who", "answer": "D", "perturbed_answer": ["A E"]},
]
ROUGE = {0: 0.5, 1: 0.25}  # given through the cache: the stub model cannot generate


def _cache_with_rouge(sets: dict[str, list[dict[str, Any]]]) -> es.ItemScores:
    cache = es.ItemScores(es.fingerprint())
    for items in sets.values():
        for i, item in enumerate(items):
            cache.record(es.item_key(item))["rouge"] = ROUGE[i]
    return cache


def test_model_utility_is_tofus_harmonic_mean_of_nine_values_by_hand() -> None:
    sets = {"retain": STUB_ITEMS, "eval/real_authors": GENERAL_ITEMS,
            "eval/world_facts": list(reversed(GENERAL_ITEMS))}
    res = es.evaluate_sets(StubModel(), WordTokenizer(), sets,
                           cache=_cache_with_rouge(sets), batch_size=2)

    # retain: plain probability, truth ratio against the paraphrase
    p = [geo(q("A", "</s>")), geo(q("B", "A", "</s>"))]
    tr = [(geo(q("C", "</s>")) + geo(q("D", "C", "</s>"))) / 2 / geo(q("B", "</s>")),
          geo(q("E", "</s>")) / geo(q("A", "</s>"))]
    retain = [sum(p) / 2, (ROUGE[0] + ROUGE[1]) / 2, sum(max(0, 1 - t) for t in tr) / 2]
    # general sets: normalised probability, truth ratio against the answer itself
    a = [geo(q("A", "</s>")), geo(q("D", "</s>"))]
    pert = [[geo(q("B", "</s>")), geo(q("C", "</s>"))], [geo(q("A", "E", "</s>"))]]
    norm = [a[i] / (a[i] + sum(pert[i])) for i in range(2)]
    tr_g = [sum(pert[i]) / len(pert[i]) / a[i] for i in range(2)]
    general = [sum(norm) / 2, (ROUGE[0] + ROUGE[1]) / 2, sum(max(0, 1 - t) for t in tr_g) / 2]
    values = retain + general + general  # world facts: the same items in another order
    assert len(values) == 9 and all(v > 0 for v in values)

    r, ra = res["retain"], res["eval/real_authors"]
    assert [r["probability"], r["rouge_l"], r["truth_ratio"]] == pytest.approx(retain)
    assert [ra["probability"], ra["rouge_l"], ra["truth_ratio"]] == pytest.approx(general)
    assert r["truth_ratio_reference"] == "paraphrased_answer"
    assert ra["truth_ratio_reference"] == "answer" and ra["probability_kind"] == "normalized"
    assert res["model_utility"] == pytest.approx(9 / sum(1 / v for v in values), rel=1e-6)
    assert res["model_utility_skipped"] == []


def test_forget_quality_takes_the_perturbed_answers_losses_averaged() -> None:
    """TOFU reports model utility from truth ratios over the perturbed answers' mean
    probability (utils.get_model_utility) and forget quality from their mean per-token loss
    (get_forget_quality): the forget set's statistic is the first's, its per-item
    `truth_ratios` (the KS test's input) the second's."""
    sets = {"forget": STUB_ITEMS}
    res = es.evaluate_sets(StubModel(), WordTokenizer(), sets, cache=_cache_with_rouge(sets),
                           batch_size=2, retain_model_trs={"forget": [0.5, 1.0, 2.0]})
    pert0 = [geo(q("C", "</s>")), geo(q("D", "C", "</s>"))]
    para = [geo(q("B", "</s>")), geo(q("A", "</s>"))]
    arithmetic = [sum(pert0) / 2 / para[0], geo(q("E", "</s>")) / para[1]]
    losses_averaged = [math.sqrt(pert0[0] * pert0[1]) / para[0], arithmetic[1]]
    assert arithmetic[0] != pytest.approx(losses_averaged[0])
    f = res["forget"]
    assert f["truth_ratio"] == pytest.approx(sum(min(t, 1 / t) for t in arithmetic) / 2)
    assert f["truth_ratios"] == pytest.approx(losses_averaged)
    from scipy.stats import ks_2samp
    assert f["forget_quality"] == pytest.approx(
        ks_2samp(losses_averaged, [0.5, 1.0, 2.0]).pvalue)


def test_a_set_whose_items_lack_some_paraphrases_says_so() -> None:
    items = [*STUB_ITEMS, {k: v for k, v in STUB_ITEMS[1].items() if k != "paraphrased_answer"}]
    sets = {"retain": items}
    cache = _cache_with_rouge({"retain": items[:2]})
    cache.record(es.item_key(items[2]))["rouge"] = 0.5
    r = es.evaluate_sets(StubModel(), WordTokenizer(), sets, cache=cache, batch_size=2)["retain"]
    assert r["truth_ratio_reference"] == "mixed" and r["truth_ratio_items"] == 3
    assert any("1 of 3 items against the answer" in n for n in r["skipped"]), r["skipped"]


def test_model_utility_says_where_a_plain_probability_stood_in() -> None:
    general = [GENERAL_ITEMS[0], {k: v for k, v in GENERAL_ITEMS[1].items()
                                  if k != "perturbed_answer"}]
    sets = {"retain": STUB_ITEMS, "eval/real_authors": general}
    res = es.evaluate_sets(StubModel(), WordTokenizer(), sets, cache=_cache_with_rouge(sets),
                           batch_size=2)
    assert res["eval/real_authors"]["probability_kind"] == "plain"
    assert res["model_utility_skipped"] == [
        "eval/real_authors: probability plain, not normalised"]


def test_samples_are_fixed_nested_and_independent_of_order() -> None:
    items = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(50)]
    shuffled = random.Random(1).sample(items, len(items))
    assert es.sample(items, 10) == es.sample(shuffled, 10)  # the same on every version
    assert es.sample(items, 10) == es.sample(items, 25)[:10]  # a smaller one is a prefix
    halves = items[:25], items[25:]
    union = es.sample(items, 8)
    for half in halves:  # a union's sample holds only items of its sets' own samples
        assert all(it in es.sample(half, 8) for it in union if it in half)
    assert es.sample(items, None) == es.sample(items, 1000)
    assert es.item_key({"a": 1, "b": 2}) == es.item_key({"b": 2, "a": 1})
    # a lone surrogate is keyed, not raised on, and apart from the replacement character
    assert es.item_key({"q": "a\udc80"}) != es.item_key({"q": "a\ufffd"})
    assert es.item_key({"q": "é"}) == "4b8e3fd40acdad6181314bfe"  # stored keys stay valid


def _sets(n_people: int = 4) -> dict[str, list[dict[str, Any]]]:
    corpus = generate_corpus(people=n_people, holdout_people=0, seed=5)
    return {"forget": corpus.forget10_perturbed[:3], "retain": corpus.retain_perturbed[:12],
            "eval/wf": corpus.world_facts_perturbed[:9]}


def test_cached_scores_give_identical_numbers_and_only_new_items_are_measured(
        tiny_world: TinyWorld) -> None:
    tok = tiny_world.tokenizer
    model = random_tiny_model(tok)
    sets = _sets()
    holdout = [{"question": r["question"], "answer": r["answer"]}
               for r in generate_corpus(people=2, holdout_people=0, seed=9).full[:6]]
    kw: dict[str, Any] = {"holdout": holdout, "max_new_tokens": 4, "batch_size": 4,
                          "limits": es.Limits(8, 4)}
    cache = es.ItemScores(es.fingerprint(max_new_tokens=4))
    first = es.evaluate_sets(model, tok, sets, cache=cache, **kw)
    stored = json.loads(json.dumps(cache.as_json()))  # as a version stores it

    again = es.ItemScores.from_json(stored, es.fingerprint(max_new_tokens=4))
    plan = es.plan_evaluation(tok, sets, holdout=holdout, limits=es.Limits(8, 4), cache=again)
    assert plan.work_sequences == 0
    assert es.evaluate_sets(model, tok, sets, cache=again, **kw) == first

    # a new forget set on the same model: only its items are measured
    new = {**sets, "forget": _sets(6)["forget"][:2]}
    plan = es.plan_evaluation(tok, new, holdout=holdout, limits=es.Limits(8, 4), cache=again)
    assert len(plan.work.main) == 2 and len(plan.work.rouge) == 2
    res = es.evaluate_sets(model, tok, new, cache=again, **kw)
    assert {k: res[k] for k in ("retain", "eval/wf")} == {k: first[k] for k in
                                                          ("retain", "eval/wf")}
    # scores made under another encoding are not reused
    other = es.ItemScores.from_json(stored, es.fingerprint(max_new_tokens=5))
    assert other.items == {}


def test_metrics_say_how_many_items_each_number_is_over(tiny_world: TinyWorld) -> None:
    tok = tiny_world.tokenizer
    sets = _sets()
    res = es.evaluate_sets(random_tiny_model(tok), tok, sets, max_new_tokens=2,
                           limits=es.Limits(8, 3), set_limits={"eval/wf": es.Limits(5, 2)})
    r, f, wf = res["retain"], res["forget"], res["eval/wf"]
    assert (r["items"], r["of"], r["detail_items"]) == (8, 12, 3)
    assert (r["probability_items"], r["rouge_l_items"], r["truth_ratio_items"]) == (8, 3, 3)
    assert (f["items"], f["of"], f["probability_items"]) == (3, 3, 3)
    assert (wf["items"], wf["of"], wf["detail_items"]) == (5, 9, 2)
    assert wf["probability_kind"] == "normalized" and wf["probability_items"] == 2
    assert len(f["truth_ratios"]) == f["truth_ratio_items"] == 3
