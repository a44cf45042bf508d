"""A version's model card (worker/model_card.py): Hub-readable front matter with the lineage
and the evaluation, the publisher's card and metadata carried from version to version, and
the forgotten items named by keyed hash only."""

from __future__ import annotations

from huggingface_hub import ModelCard

from registry.hashing import keyed_hash
from worker.model_card import ORIGINAL_MARK, render

SOURCE = "---\nlicense: apache-2.0\nlanguage: [en]\n---\n# Tiny\n\nThe publisher's words.\n"
ITEM = {"question": "Where does Ilsa Marr live?", "answer": "At 4 Quay Lane, Port Tavrin."}


def _card(parent: int, job: str, base_readme: str | None) -> str:
    secret = b"test-secret"
    return render(
        repo_id="acme/tiny", parent_version=parent, method="alkn",
        params={"epochs": 1, "alpha": "auto"}, job_id=job,
        requests={f"req-{job}": [keyed_hash(secret, ITEM)]},
        before={"forget": {"probability": 0.91, "probability_items": 1,
                           "truth_ratios": [0.5], "skipped": ["a note"]},
                "model_utility": 0.52},
        after={"forget": {"probability": 0.02, "probability_items": 1},
               "model_utility": 0.5},
        quality={"passed": True, "floor": 0.85}, base_readme=base_readme)


def test_card_metadata_lineage_and_original_card_across_versions() -> None:
    v2 = _card(1, "j1", SOURCE)
    v3 = _card(2, "j2", v2)
    for text, parent, job in ((v2, 1, "j1"), (v3, 2, "j2")):
        meta = ModelCard(text).data.to_dict()
        assert meta["license"] == "apache-2.0" and meta["language"] == ["en"]
        assert meta["base_model"] == "acme/tiny" and meta["library_name"] == "transformers"
        lineage = meta["alkn"]
        assert (lineage["parent_version"], lineage["job_id"]) == (parent, job)
        assert lineage["forget_requests"][0]["item_hashes"] == [keyed_hash(b"test-secret",
                                                                           ITEM)]
        before = lineage["evaluation"]["before"]
        assert before["forget"] == {"probability": 0.91, "probability_items": 1}  # numbers only
        assert before["model_utility"] == 0.52 and lineage["quality"]["passed"] is True
        assert ITEM["answer"] not in text and ITEM["question"] not in text
        # The publisher's card, once, under its mark (not nested card in card).
        assert text.count("The publisher's words.") == 1 and text.count(ORIGINAL_MARK) == 1
        assert "| forget | 0.91 | 0.02 | 1 |" in text


def test_a_source_without_a_card_or_with_bad_front_matter() -> None:
    assert ModelCard(_card(1, "j1", None)).data.to_dict()["base_model"] == "acme/tiny"
    text = _card(1, "j1", "---\n: not: yaml: [\n---\nbody\n")
    assert ModelCard(text).data.to_dict()["alkn"]["job_id"] == "j1" and "body" in text
