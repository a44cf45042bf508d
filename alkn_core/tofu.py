"""Reading a TOFU-layout data directory (the real TOFU files or our synthetic corpus).

Files: `full.json`, `retain90.json`, `forget10.json` (required for the continual benchmark),
and the optional `forget10_perturbed.json`, `retain_perturbed.json`,
`real_authors_perturbed.json`, `world_facts_perturbed.json`, `holdout10.json`. Each is a
JSON array or JSON Lines with TOFU's field names (`question`, `answer`,
`paraphrased_answer`, `perturbed_answer`). A missing optional file reduces the metrics
that can be computed; `TofuData.notes` says which, so reports can say it too.

Records name their person in `person` (our corpus). TOFU's files carry no such field: its
`full.json` holds each author's QA_PER_AUTHOR questions in a row, so a record without a
`person` is given the author of its place in `full.json` (a note says so), which is how
TOFU's forget sets are whole authors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .demo_corpus import read_jsonl

Record = dict[str, Any]

REQUIRED = {"full": "full.json", "retain90": "retain90.json", "forget10": "forget10.json"}
OPTIONAL = {
    "forget10_perturbed": ("forget10_perturbed.json",
                           "no truth ratio or forget quality on the forget set"),
    "retain_perturbed": ("retain_perturbed.json",
                         "retain set metrics use retain90 without truth ratio"),
    "real_authors_perturbed": ("real_authors_perturbed.json",
                               "no real-authors general-knowledge set in model utility"),
    "world_facts_perturbed": ("world_facts_perturbed.json",
                              "no world-facts general-knowledge set in model utility"),
    "holdout10": ("holdout10.json", "no Min-K% privacy-leak AUC (needs holdout items)"),
}
QA_PER_AUTHOR = 20  # TOFU: 200 fictitious authors x 20 QA in full.json, author by author


@dataclass
class TofuData:
    full: list[Record]
    retain90: list[Record]
    forget10: list[Record]
    forget10_perturbed: list[Record] = field(default_factory=list)
    retain_perturbed: list[Record] = field(default_factory=list)
    real_authors_perturbed: list[Record] = field(default_factory=list)
    world_facts_perturbed: list[Record] = field(default_factory=list)
    holdout10: list[Record] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is missing and what that costs

    def general_sets(self) -> dict[str, list[Record]]:
        sets = {"real_authors": self.real_authors_perturbed,
                "world_facts": self.world_facts_perturbed}
        return {name: items for name, items in sets.items() if items}


def _check(records: list[Record], path: Path) -> list[Record]:
    for i, r in enumerate(records):
        if not isinstance(r, dict) or not isinstance(r.get("question"), str) \
                or not isinstance(r.get("answer"), str):
            raise ValueError(f"{path}: record {i} needs string 'question' and 'answer'")
    return records


def load_tofu_dir(directory: str | Path) -> TofuData:
    """Load a TOFU-layout directory; ValueError names a missing required file or a bad
    record."""
    d = Path(directory)
    data: dict[str, Any] = {}
    for name, fname in REQUIRED.items():
        if not (d / fname).is_file():
            raise ValueError(f"{d}: required file {fname} is missing")
        data[name] = _check(read_jsonl(d / fname), d / fname)
    notes = []
    for name, (fname, cost) in OPTIONAL.items():
        if (d / fname).is_file():
            data[name] = _check(read_jsonl(d / fname), d / fname)
        else:
            notes.append(f"{fname} missing: {cost}")
    tofu = TofuData(**data, notes=notes)
    _people_from_layout(tofu)
    return tofu


def _people_from_layout(data: TofuData) -> None:
    """Give records without a `person` their author: in full.json, retain90 and forget10 by
    place, when none of them names one and they have TOFU's layout (full.json QA_PER_AUTHOR
    QA per author, the other two whole-author slices of it); in the perturbed files, the
    person of the record of full.json, retain90 or forget10 with the same question and
    answer (where only one person has that pair). Notes say what was done or why not."""
    base = (data.full, data.retain90, data.forget10)
    named = [r.get("person") is not None for records in base for r in records]
    if not all(named):
        if any(named):
            data.notes.append("some records of full, retain90 and forget10 name a person and "
                              "some do not: no author is made up for the others")
        else:
            _authors_by_place(data)
    owner: dict[tuple[Any, Any], Any] = {}
    for records in base:
        for r in records:
            key, person = _qa(r), r.get("person")
            # a pair several people have: no owner
            owner[key] = person if owner.get(key, person) == person else None
    for records in (data.forget10_perturbed, data.retain_perturbed):
        for r in records:
            if r.get("person") is None:
                r["person"] = owner.get(_qa(r))


def _authors_by_place(data: TofuData) -> None:
    places: dict[tuple[Any, Any], list[int]] = {}
    for i, r in enumerate(data.full):
        places.setdefault(_qa(r), []).append(i)
    slices = [(data.full, 0)] + [(records, _slice_start(data.full, records, places))
                                 for records in (data.retain90, data.forget10)]
    if any(start is None or start % QA_PER_AUTHOR or len(records) % QA_PER_AUTHOR
           for records, start in slices):
        data.notes.append(f"no 'person' field, and full.json is not {QA_PER_AUTHOR} QA per "
                          "author with retain90 and forget10 whole-author slices of it: tasks "
                          "are equal chunks of forget10, and people may span tasks")
        return
    for records, start in slices:
        for j, r in enumerate(records):
            r["person"] = f"author {(start + j) // QA_PER_AUTHOR + 1}"  # type: ignore[operator]
    data.notes.append(f"no 'person' field: each record's author is its place in full.json, "
                      f"{QA_PER_AUTHOR} QA per author (TOFU's layout)")


def _qa(r: Record) -> tuple[Any, Any]:
    return r["question"], r["answer"]


def _slice_start(full: list[Record], records: list[Record],
                 places: dict[tuple[Any, Any], list[int]]) -> int | None:
    """Where `records` lie in `full` as one contiguous run, if they do (an empty list: at 0)."""
    if not records:
        return 0
    for start in places.get(_qa(records[0]), []):
        run = full[start : start + len(records)]
        if len(run) == len(records) and all(_qa(a) == _qa(b) for a, b in zip(run, records,
                                                                                strict=True)):
            return start
    return None
