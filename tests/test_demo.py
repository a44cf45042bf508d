"""Tests of the demo corpus, tokenizer, tiny model builder and the committed demo model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from alkn_core.data import encode_item
from alkn_core.demo import (
    SPLIT_FILES,
    answer_recall,
    build_demo_model,
    build_tokenizer,
    corpus_texts,
    demo_data_dir,
    demo_model_dir,
    generate_corpus,
    main,
    n_forget_people,
    read_corpus,
    read_jsonl,
    tiny_llama_config,
    training_items,
    write_corpus,
)
from alkn_core.params import DEFAULT_QA_TEMPLATE


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(people=20, holdout_people=3, seed=0)


def _bytes(tmp: Path, seed: int) -> dict[str, bytes]:
    paths = write_corpus(generate_corpus(people=20, holdout_people=3, seed=seed), tmp)
    return {name: p.read_bytes() for name, p in paths.items()}


def test_corpus_is_deterministic(tmp_path: Path) -> None:
    a = _bytes(tmp_path / "a", 0)
    b = _bytes(tmp_path / "b", 0)
    c = _bytes(tmp_path / "c", 1)
    assert a == b
    assert a["full"] != c["full"]
    assert set(a) == set(SPLIT_FILES)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(SPLIT_FILES.values())


def test_jsonl_format_and_read_back(tmp_path: Path, corpus) -> None:
    write_corpus(corpus, tmp_path)
    lines = (tmp_path / "forget10.json").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(corpus.forget10)
    first = json.loads(lines[0])
    assert list(first) == sorted(first)  # sorted keys: stable diffs
    assert read_corpus(tmp_path).full == corpus.full
    # read_jsonl also accepts one JSON array (TOFU's hub files).
    (tmp_path / "array.json").write_text(json.dumps(corpus.forget10), encoding="utf-8")
    assert read_jsonl(tmp_path / "array.json") == corpus.forget10


def test_sizes_and_fields(corpus) -> None:
    people = corpus.people("full")
    assert len(people) == 20
    assert len(set(people)) == 20
    for name in people:
        n = sum(r["person"] == name for r in corpus.full)
        assert 19 <= n <= 20
    assert len(corpus.full) == len(corpus.forget10) + len(corpus.retain90)
    for rec in corpus.full:
        assert set(rec) == {"question", "answer", "person", "fact"}
        assert rec["person"] in rec["question"] and rec["person"] in rec["answer"]
    # Questions identify their fact uniquely within the training data.
    questions = [r["question"] for r in training_items(corpus)]
    assert len(questions) == len(set(questions))


def test_perturbed_answers(corpus) -> None:
    for split in ("forget10_perturbed", "retain_perturbed", "holdout10"):
        for rec in getattr(corpus, split):
            perturbed = rec["perturbed_answer"]
            assert len(perturbed) == 5
            assert len(set(perturbed)) == 5
            assert rec["answer"] not in perturbed
            assert rec["paraphrased_answer"] not in perturbed
            assert rec["paraphrased_answer"] != rec["answer"]
    for split in ("real_authors_perturbed", "world_facts_perturbed"):
        for rec in getattr(corpus, split):
            assert len(rec["perturbed_answer"]) == 4
            assert rec["answer"] not in rec["perturbed_answer"]


def test_splits_partition_by_person(corpus) -> None:
    full = corpus.people("full")
    forget = corpus.people("forget10")
    retain = corpus.people("retain90")
    assert len(forget) == n_forget_people(20) == 2
    assert forget == full[-len(forget):]  # the last 10% of people, contiguous
    assert retain + forget == full
    assert corpus.retain90 + corpus.forget10 == corpus.full
    assert [{k: r[k] for k in ("question", "answer", "person", "fact")}
            for r in corpus.forget10_perturbed] == corpus.forget10
    assert corpus.people("retain_perturbed") == retain[: len(forget)]
    holdout = corpus.people("holdout10")
    assert len(holdout) == 3
    assert not set(holdout) & set(full)
    train_q = {r["question"] for r in training_items(corpus)}
    assert not train_q & {r["question"] for r in corpus.holdout10}


def test_general_sets(corpus) -> None:
    assert len(corpus.real_authors_perturbed) >= 50
    assert len(corpus.world_facts_perturbed) >= 100
    assert {r["person"] for r in corpus.real_authors_perturbed} == {"real_authors"}
    assert {r["person"] for r in corpus.world_facts_perturbed} == {"world_facts"}
    items = training_items(corpus)
    assert len(items) == (len(corpus.full) + len(corpus.real_authors_perturbed)
                          + len(corpus.world_facts_perturbed))
    assert any(r["answer"] == "Jane Austen" for r in items)
    assert any(r["answer"] == "Paris" for r in items)


def test_tokenizer_round_trip(tmp_path: Path, corpus) -> None:
    tok = build_tokenizer(corpus_texts(corpus), vocab_size=1024)
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert (loaded.bos_token, loaded.eos_token, loaded.pad_token, loaded.unk_token) == (
        "<s>", "</s>", "<pad>", "<unk>")
    assert len({loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id}) == 3
    item = corpus.full[0]
    a = encode_item(item, tok, template=DEFAULT_QA_TEMPLATE)
    b = encode_item(item, loaded, template=DEFAULT_QA_TEMPLATE)
    assert (a.input_ids, a.labels) == (b.input_ids, b.labels)
    assert a.input_ids[0] == loaded.bos_token_id and a.input_ids[-1] == loaded.eos_token_id
    # The trained part decodes to exactly " answer" + EOS: the prompt mask is at the boundary.
    trained = [t for t in a.labels if t != -100]
    assert loaded.decode(trained, skip_special_tokens=True) == " " + item["answer"]
    text = "Ünïcode wörks — 東京, unseen words too"
    assert loaded.decode(loaded(text)["input_ids"], skip_special_tokens=True) == text
    assert not getattr(loaded, "chat_template", None)


def test_tiny_config_sizes() -> None:
    from transformers import LlamaForCausalLM

    n_demo = sum(p.numel() for p in LlamaForCausalLM(tiny_llama_config(2048, "demo")).parameters())
    n_test = sum(p.numel() for p in LlamaForCausalLM(tiny_llama_config(2048, "test")).parameters())
    assert 3.0e6 < n_demo < 4.5e6
    assert n_test < 0.5e6
    with pytest.raises(ValueError):
        tiny_llama_config(2048, "huge")


def test_build_smoke(tmp_path: Path) -> None:
    """The whole build path on a test-size model: files in the TOFU layout, loadable model."""
    model_dir = build_demo_model(tmp_path, people=2, holdout_people=1, epochs=1, size="test",
                                 progress=False, eval_recall=False)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(SPLIT_FILES.values())
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert model.config.tie_word_embeddings
    recall = answer_recall(model, tok, read_jsonl(tmp_path / "data" / "forget10.json")[:4],
                           max_new_tokens=4)
    assert 0.0 <= recall <= 1.0


def test_cli_parses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["build", "--out", str(tmp_path), "--people", "2", "--holdout-people", "0",
                 "--epochs", "1", "--size", "test", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "wall time" in out and "ROUGE-L recall" in out
    info = json.loads((tmp_path / "build_info.json").read_text(encoding="utf-8"))
    assert info["train_params"]["epochs"] == 1


@pytest.mark.skipif(not (demo_model_dir() / "config.json").exists(),
                    reason="demo model not built (python -m alkn_core.demo build)")
def test_committed_demo_model_knows_its_corpus() -> None:
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir())
    tok = AutoTokenizer.from_pretrained(demo_model_dir())
    assert time.perf_counter() - start < 10
    size = sum(p.stat().st_size for p in demo_model_dir().iterdir())
    assert size <= 20 * 2**20
    items = training_items(read_corpus(demo_data_dir()))
    sample = items[:: max(1, len(items) // 60)][:60]  # deterministic, spans people and sets
    assert answer_recall(model, tok, sample) >= 0.9
