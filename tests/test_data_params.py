"""Tokenisation of items and validation of parameters."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from alkn_core import method_params, unlearn
from alkn_core.data import IGNORE, encode_item, validate_items
from alkn_core.params import DEFAULT_QA_TEMPLATE

from .conftest import random_tiny_model


def _trained_text(tokenizer: Any, ex: Any) -> str:
    return tokenizer.decode([t for t in ex.labels if t != IGNORE])


def test_qa_tokenisation_masks_the_question(tokenizer: Any) -> None:
    item = {"question": "Where was Ilsa born?", "answer": "Ilsa was born in Port Tavrin."}
    ex = encode_item(item, tokenizer, template=DEFAULT_QA_TEMPLATE)
    assert len(ex.input_ids) == len(ex.labels)
    assert ex.input_ids[0] == tokenizer.bos_token_id and ex.labels[0] == IGNORE
    assert ex.input_ids[-1] == tokenizer.eos_token_id == ex.labels[-1]
    # exactly the answer (with its leading space) and EOS are trained
    assert _trained_text(tokenizer, ex) == " Ilsa was born in Port Tavrin." + tokenizer.eos_token
    first = next(i for i, t in enumerate(ex.labels) if t != IGNORE)
    prompt = tokenizer.decode(ex.input_ids[1:first])
    assert prompt == "Question: Where was Ilsa born?\nAnswer:"
    assert all(t == IGNORE for t in ex.labels[:first])


def test_custom_template_and_text_items(tokenizer: Any) -> None:
    ex = encode_item({"question": "Q?", "answer": "A."}, tokenizer,
                     template="### {question}\n=> {answer}")
    assert _trained_text(tokenizer, ex) == " A." + tokenizer.eos_token
    text = encode_item({"text": "Ilsa was born in Port Tavrin."}, tokenizer,
                       template=DEFAULT_QA_TEMPLATE)
    assert text.labels[0] == IGNORE  # BOS
    assert all(t != IGNORE for t in text.labels[1:])


def test_truncation_keeps_answer_or_refuses(tokenizer: Any) -> None:
    item = {"question": "word " * 40, "answer": "yes"}
    with pytest.raises(ValueError, match="max_length"):
        encode_item(item, tokenizer, template=DEFAULT_QA_TEMPLATE, max_length=10)
    item = {"question": "Q?", "answer": "a b c d e f g h i j k l m n o p"}
    full = encode_item(item, tokenizer, template=DEFAULT_QA_TEMPLATE)
    cut = encode_item(item, tokenizer, template=DEFAULT_QA_TEMPLATE,
                      max_length=len(full.input_ids) - 5)
    assert cut.input_ids == full.input_ids[:-5] and cut.labels == full.labels[:-5]
    assert cut.n_targets == full.n_targets - 5


def test_chat_template_requires_one(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="no chat template"):
        encode_item({"question": "Q?", "answer": "A."}, tokenizer,
                    template=DEFAULT_QA_TEMPLATE, chat_template=True)


@pytest.mark.parametrize("items, message", [
    ("nope", "must be a list"),
    ([{"question": "q"}], "needs either"),
    ([{"question": "q", "answer": ""}], "answer must be a non-empty"),
    ([{"text": 3}], "text must be"),
    ([1], "must be an object"),
])
def test_item_validation(items: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_items(items, "forget")


def test_params_defaults_and_validation() -> None:
    p = method_params("alkn", None)
    assert (p["lr"], p["epochs"], p["batch_size"], p["grad_accum"]) == (2e-5, 5, 16, 4)
    assert (p["unmask_ratio"], p["mask_p_k"], p["low_lr_ratio"], p["init_prob_k"]) == (
        0.8, 0.5, 0.1, 1.5)
    assert p["mask_rule"] == "retain_safe" and p["retain_gradient_sets"] == "retain"
    assert method_params("npo", {"beta": 0.2})["beta"] == 0.2
    assert method_params("grad_diff", {"epochs": 3.0})["epochs"] == 3
    bad = [
        ("alkn", {"learning_rate": 1e-3}, "unknown param.*'learning_rate'"),
        ("alkn", {"lr": "fast"}, "'lr' must be 'auto' or a number"),
        ("alkn", {"epochs": 2.5}, "'epochs' must be an integer"),
        ("alkn", {"epochs": True}, "'epochs' must be an integer"),
        ("alkn", {"lr": -1.0}, "'lr' must be > 0"),
        ("alkn", {"unmask_ratio": 1.5}, "'unmask_ratio' must be <= 1"),
        ("alkn", {"mask_rule": "largest"}, "'mask_rule' must be one of"),
        ("alkn", {"lr": float("nan")}, "finite"),
        ("alkn", {"chat_template": "yes"}, "boolean"),
        ("alkn", {"qa_template": "{answer} {question}"}, "qa_template"),
        ("grad_ascent", {"alpha": 2.0}, "unknown param.*'alpha'"),
        ("task_vector", {"beta": 0.1}, "unknown param.*'beta'"),
    ]
    for method, params, message in bad:
        with pytest.raises(ValueError, match=message):
            method_params(method, params)
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        method_params("sgd", {})


def test_unlearn_refuses_bad_calls(tokenizer: Any) -> None:
    model = random_tiny_model(tokenizer)
    qa = [{"question": "Q?", "answer": "A."}]
    with pytest.raises(ValueError, match="needs a retain set"):
        unlearn(model, tokenizer, qa, None, method="alkn")
    with pytest.raises(ValueError, match="needs a retain set"):
        unlearn(model, tokenizer, qa, None, method="grad_diff")
    with pytest.raises(ValueError, match="at least one item"):
        unlearn(model, tokenizer, [], qa, method="grad_ascent")
    with pytest.raises(ValueError, match="unknown param"):
        unlearn(model, tokenizer, qa, qa, method="alkn", params={"nope": 1})


def test_chat_template_wraps_qa_and_masks_the_prompt(tokenizer: Any) -> None:
    chatty = copy.deepcopy(tokenizer)
    chatty.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    ex = encode_item({"question": "Who?", "answer": "Ilsa."}, chatty,
                     template=DEFAULT_QA_TEMPLATE, chat_template=True)
    text = chatty.decode(ex.input_ids)
    assert text.startswith("<|user|>Who?\n<|assistant|>")
    assert _trained_text(chatty, ex) == "Ilsa.\n" + chatty.eos_token
