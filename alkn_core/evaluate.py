"""Evaluation metrics of docs/evaluation.md (TOFU conventions): the model passes and the metrics on
their numbers. `eval_sets.evaluate_sets` runs them on named item sets.

Every model pass is deterministic, batched, runs on the model's device without gradients, and
restores the model's train/eval mode afterwards. Scores of one item never depend on the other
items of its batch (right padding under causal attention), so any batch size gives the same
numbers up to float rounding.

Conventions (TOFU; see the functions for details):
- p(a|q) = exp(-mean token NLL of the answer and its EOS given the question): the per-token
  normalisation keeps long and short answers comparable. The tokens are exactly those that
  training trains on (`data.encode_item`).
- Truth ratio TR = mean_j p(perturbed_j) / p(reference), each p per-token normalised; the
  reference is the paraphrased answer, or the answer where there is none (TOFU on real authors
  and world facts).
- Min-K% = mean of the lowest k fraction of the trained tokens' log-probabilities.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .chat_template import render_chat
from .data import Example, collate, encode_item, pad_id, qa_prompt
from .losses import token_logprobs
from .params import DEFAULT_QA_TEMPLATE, EVAL_MAX_NEW_TOKENS

Item = Mapping[str, Any]
Progress = Callable[[str, int, int], None]

MIN_K = 0.4
# Floor for a denominator probability: exp(-NLL) underflows to 0.0 past NLL ~745, and a ratio
# must stay finite to be JSON-serialisable.
_TINY_P = 1e-300


# --------------------------------------------------------------------------------------------
# Model passes
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Encoding:
    """How items become token ids: the same settings training used."""

    qa_template: str = DEFAULT_QA_TEMPLATE
    chat_template: bool = False
    max_length: int = 500


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # a parameter-free stub
        return torch.device("cpu")


@contextmanager
def _inference(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _is_qa(item: Item) -> bool:
    return isinstance(item.get("question"), str) and isinstance(item.get("answer"), str)


def _is_text(item: Item) -> bool:
    return isinstance(item.get("text"), str) and not _is_qa(item)


def _valid_str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _valid_list(value: Any) -> bool:
    return isinstance(value, list | tuple) and bool(value) and all(map(_valid_str, value))


def _example(item: Item, answer: str | None, tokenizer: Any, enc: _Encoding) -> Example:
    """The item as trained (answer=None: its QA answer or its whole text), or the item's
    question with another answer. ValueError when it does not fit max_length."""
    if answer is None:
        src = {"text": item["text"]} if _is_text(item) else {
            "question": item["question"], "answer": item["answer"]}
    else:
        src = {"question": item["question"], "answer": answer}
    return encode_item(src, tokenizer, template=enc.qa_template,
                       chat_template=enc.chat_template, max_length=enc.max_length)


def _try_example(item: Item, answer: str | None, tokenizer: Any, enc: _Encoding
                 ) -> Example | None:
    try:
        return _example(item, answer, tokenizer, enc)
    except (ValueError, KeyError, TypeError):
        return None


def _trained_logprobs(model: torch.nn.Module, examples: Sequence[Example], pad: int,
                      batch_size: int, tick: Callable[[], None] | None = None
                      ) -> list[list[float]]:
    """log p of every trained token of each example, in the examples' order. The caller holds
    `_inference(model)`."""
    device = _device(model)
    # Batching length-sorted examples wastes little compute on padding.
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
    out: list[list[float]] = [[] for _ in examples]
    for start in range(0, len(order), max(1, batch_size)):
        idx = order[start : start + max(1, batch_size)]
        logp, mask = token_logprobs(model, collate([examples[i] for i in idx], pad, device))
        logp, mask = logp.double().cpu(), mask.cpu()
        for row, i in enumerate(idx):
            out[i] = logp[row][mask[row]].tolist()
        if tick is not None:
            tick()
    return out


def _probability(logps: Sequence[float]) -> float:
    return math.exp(sum(logps) / len(logps))


def _min_k(logps: Sequence[float], k: float) -> float:
    # The epsilon keeps e.g. 0.29 * 100 = 28.999... from dropping a token.
    n = max(1, int(len(logps) * k + 1e-9))
    lowest = sorted(logps)[:n]
    return sum(lowest) / n


def _field_examples(items: Sequence[Item], field: str, tokenizer: Any, enc: _Encoding
                    ) -> list[Example]:
    out = []
    for i, item in enumerate(items):
        if field == "answer" and _is_text(item):
            answer = None  # a text item is scored as trained: every token
        elif not _valid_str(item.get("question")) or not _valid_str(item.get(field)):
            raise ValueError(f"items[{i}] has no question and {field!r} string")
        else:
            answer = item[field]
        try:
            out.append(_example(item, answer, tokenizer, enc))
        except ValueError as exc:
            raise ValueError(f"items[{i}]: {exc}") from None
    return out


def answer_probabilities(model: torch.nn.Module, tokenizer: Any, items: Sequence[Item], *,
                         qa_template: str = DEFAULT_QA_TEMPLATE, batch_size: int = 16,
                         field: str = "answer", chat_template: bool = False,
                         max_length: int = 500) -> list[float]:
    """Per item p(a|q) = exp(-mean token NLL of `item[field]` (and EOS) given the question),
    TOFU's "probability". `field` is "answer" or "paraphrased_answer"; with "answer" a
    {"text"} item gets exp(-mean NLL) of its whole text. ValueError names an item without the
    field or whose answer does not fit `max_length`."""
    enc = _Encoding(qa_template, chat_template, max_length)
    examples = _field_examples(items, field, tokenizer, enc)
    with _inference(model):
        rows = _trained_logprobs(model, examples, pad_id(tokenizer), batch_size)
    return [_probability(r) for r in rows]


def perturbed_probabilities(model: torch.nn.Module, tokenizer: Any, items: Sequence[Item], *,
                            qa_template: str = DEFAULT_QA_TEMPLATE, batch_size: int = 16,
                            field: str = "perturbed_answer", chat_template: bool = False,
                            max_length: int = 500) -> list[list[float]]:
    """Per item, p(a|q) of every answer in the list `item[field]` (as `answer_probabilities`)."""
    enc = _Encoding(qa_template, chat_template, max_length)
    flat: list[Item] = []
    sizes: list[int] = []
    for i, item in enumerate(items):
        if not _valid_str(item.get("question")) or not _valid_list(item.get(field)):
            raise ValueError(f"items[{i}] has no question and non-empty {field!r} list")
        flat.extend({"question": item["question"], "answer": a} for a in item[field])
        sizes.append(len(item[field]))
    probs = answer_probabilities(model, tokenizer, flat, qa_template=qa_template,
                                 batch_size=batch_size, chat_template=enc.chat_template,
                                 max_length=enc.max_length)
    out, start = [], 0
    for n in sizes:
        out.append(probs[start : start + n])
        start += n
    return out


def min_k_scores(model: torch.nn.Module, tokenizer: Any, items: Sequence[Item],
                 k: float = MIN_K, *, qa_template: str = DEFAULT_QA_TEMPLATE,
                 batch_size: int = 16, chat_template: bool = False, max_length: int = 500
                 ) -> list[float]:
    """Min-K% per item: mean of the lowest `k` fraction (at least one) of the log-probabilities
    of the item's trained tokens (answer and EOS for QA, every token but BOS for text). Higher
    means more likely seen in training."""
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    enc = _Encoding(qa_template, chat_template, max_length)
    examples = _field_examples(items, "answer", tokenizer, enc)
    with _inference(model):
        rows = _trained_logprobs(model, examples, pad_id(tokenizer), batch_size)
    return [_min_k(r, k) for r in rows]


def greedy_answers(model: torch.nn.Module, tokenizer: Any, items: Sequence[Item], *,
                   qa_template: str = DEFAULT_QA_TEMPLATE,
                   max_new_tokens: int = EVAL_MAX_NEW_TOKENS,
                   batch_size: int = 32, chat_template: bool = False,
                   max_length: int | None = None) -> list[str]:
    """Greedy answers to the items' questions, prompted exactly as training prompts them.

    Works with tokenizers that have no pad token, and with chat templates. The model's own
    generation settings (sampling, penalties) are overridden: evaluation is plain greedy.
    A prompt longer than `max_length` tokens keeps its last `max_length` (where the answer
    begins): a batch's memory is bounded by the job's max_length, not by the question.
    """
    from transformers import GenerationConfig

    prompts: list[list[int]] = []
    for item in items:
        if chat_template:
            text = render_chat(tokenizer, [{"role": "user", "content": item["question"]}],
                               add_generation_prompt=True)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(qa_prompt(item["question"], qa_template),
                            add_special_tokens=True)["input_ids"]
        prompts.append(list(ids)[-max_length:] if max_length else list(ids))
    pad, eos = pad_id(tokenizer), tokenizer.eos_token_id
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                              pad_token_id=pad, eos_token_id=eos,
                              bos_token_id=tokenizer.bos_token_id)
    device = _device(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding
    out: list[str] = [""] * len(prompts)
    with _inference(model):
        for start in range(0, len(order), max(1, batch_size)):
            idx = order[start : start + max(1, batch_size)]
            width = max(len(prompts[i]) for i in idx)
            # Left padding puts every prompt's end at the same column, where generation starts.
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                n = len(prompts[i])
                ids[row, width - n :] = torch.tensor(prompts[i])
                mask[row, width - n :] = 1
            gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 generation_config=config)
            for row, i in enumerate(idx):
                new = gen[row, width:].tolist()
                if eos is not None and eos in new:  # the pad id need not be a special token
                    new = new[: new.index(eos)]
                out[i] = tokenizer.decode(new, skip_special_tokens=True).strip()
    return out


# --------------------------------------------------------------------------------------------
# Metrics on numbers
# --------------------------------------------------------------------------------------------


def normalized_probability(p_true: Sequence[float], p_perturbed_lists: Sequence[Sequence[float]]
                           ) -> list[float]:
    """Per item p(true) / (p(true) + sum_j p(perturbed_j)): TOFU's probability on
    multiple-choice-like sets (real authors, world facts)."""
    if len(p_true) != len(p_perturbed_lists):
        raise ValueError("p_true and p_perturbed_lists differ in length")
    out = []
    for p, perturbed in zip(p_true, p_perturbed_lists, strict=True):
        total = p + sum(perturbed)
        out.append(p / total if total > 0 else 0.0)
    return out


def truth_ratios(p_paraphrased: Sequence[float], p_perturbed_lists: Sequence[Sequence[float]],
                 *, mean: str = "arithmetic") -> list[float]:
    """Per item TR = m_j p(perturbed_j) / p(paraphrased), each p per-token normalised, m the
    perturbed answers' mean:
    - "arithmetic" (the spec; TOFU's `utils.get_model_utility`, whose model utility its
      evaluation reports): mean_j p(perturbed_j);
    - "geometric" (TOFU's `get_forget_quality`, its `aggregate_eval_stat.py` and
      open-unlearning: the perturbed answers' per-token losses averaged):
      exp(mean_j log p(perturbed_j)), what forget quality's KS test takes.
    A vanishing probability is floored so TR stays finite."""
    if len(p_paraphrased) != len(p_perturbed_lists):
        raise ValueError("p_paraphrased and p_perturbed_lists differ in length")
    if mean not in ("arithmetic", "geometric"):
        raise ValueError(f"mean must be 'arithmetic' or 'geometric', not {mean!r}")
    out = []
    for p_para, perturbed in zip(p_paraphrased, p_perturbed_lists, strict=True):
        if not perturbed:
            raise ValueError("an item has no perturbed probabilities")
        if mean == "arithmetic":
            m = sum(perturbed) / len(perturbed)
        else:
            m = math.exp(sum(math.log(max(p, _TINY_P)) for p in perturbed) / len(perturbed))
        out.append(m / max(p_para, _TINY_P))
    return out


def truth_ratio_score(trs: Sequence[float], forget: bool) -> float:
    """Forget sets: mean(min(TR, 1/TR)) (1 = the model cannot tell true from false, as a model
    that never saw the data); other sets: mean(max(0, 1 - TR)) (1 = true answers preferred)."""
    if not trs:
        raise ValueError("no truth ratios")
    if forget:
        # TR == 0 (every perturbed answer impossible) scores 0, as min(0, inf) would.
        return sum(min(tr, 1 / tr) if tr > 0 else 0.0 for tr in trs) / len(trs)
    return sum(max(0.0, 1 - tr) for tr in trs) / len(trs)


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """Per pair, ROUGE-L recall (stemmed) of the prediction against the reference: the fraction
    of the reference covered by the longest common subsequence."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [float(scorer.score(ref, pred)["rougeL"].recall)
            for pred, ref in zip(predictions, references, strict=True)]


def forget_quality(unlearned_trs: Sequence[float], retain_model_trs: Sequence[float]) -> float:
    """Two-sample KS-test p-value between the forget set's truth ratios of the unlearned model
    and of a retain model: high = indistinguishable from never having trained on it."""
    from scipy.stats import ks_2samp

    if not unlearned_trs or not retain_model_trs:
        raise ValueError("forget_quality needs truth ratios on both sides")
    with warnings.catch_warnings():
        # With ties scipy's exact method may give up and fall back to the asymptotic one
        # itself; that is expected here, not worth a warning per evaluation.
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful")
        return float(ks_2samp(list(unlearned_trs), list(retain_model_trs)).pvalue)


def model_utility(metrics_per_set: Mapping[str, Mapping[str, Any]]) -> float:
    """Harmonic mean of every available probability, ROUGE-L and truth-ratio score of the given
    (retain and general) sets, pooled as TOFU does; 0 if any of them is 0. None values (metrics
    a set could not compute) are left out."""
    values = [float(m[key]) for m in metrics_per_set.values()
              for key in ("probability", "rouge_l", "truth_ratio") if m.get(key) is not None]
    if not values:
        raise ValueError("no metric values to combine")
    if any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1 / v for v in values)


def auc(scores_members: Sequence[float], scores_nonmembers: Sequence[float]) -> float:
    """ROC AUC of telling members (expected to score higher) from non-members: the Mann-Whitney
    U statistic over all pairs, ties counting one half, divided by the number of pairs."""
    if not scores_members or not scores_nonmembers:
        raise ValueError("auc needs at least one score on each side")
    members = np.asarray(scores_members, dtype=np.float64)
    others = np.sort(np.asarray(scores_nonmembers, dtype=np.float64))
    below = np.searchsorted(others, members, side="left")  # non-members strictly lower
    not_above = np.searchsorted(others, members, side="right")
    wins = below.sum() + 0.5 * (not_above - below).sum()
    return float(wins / (len(members) * len(others)))


def privacy_leak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE PrivLeak in percent: (AUC_unlearned - AUC_retain) / AUC_retain * 100 (0 = leaks as
    much as a model that never saw the forget set)."""
    if auc_retain <= 0:
        raise ValueError("auc_retain must be > 0")
    return (auc_unlearned - auc_retain) / auc_retain * 100
