"""Deterministic synthetic TOFU-style corpus of fictitious authors.

Everything here is pure Python driven by one ``random.Random(seed)``, so identical arguments
give byte-identical JSON Lines on any machine (no set iteration, no hashing, no floats in the
data). Person names, places, titles, awards and publishers are assembled from syllable and word
tables, so no real person is described; only the ``influence`` fact and the general-knowledge
sets (``real_authors``, ``world_facts``) mention real people and places.

Split layout (TOFU names):

* ``full``: every QA pair of the ``people`` fictitious people. People only, as in TOFU: the
  general-knowledge sets are *not* in ``full.json``; :func:`training_items` adds them to what the
  demo model is trained on so that utility on them is measurable.
* ``forget10``: QA of the last 10% of the people (whole people, contiguous at the end).
* ``retain90``: QA of the other people, so ``forget10`` and ``retain90`` partition ``full``.
* ``forget10_perturbed``: ``forget10`` with ``paraphrased_answer`` and ``perturbed_answer``.
* ``retain_perturbed``: like TOFU, a subset of ``retain90`` of the same size as the forget set:
  the first ``len(forget people)`` people of ``retain90``, with the perturbed fields.
* ``real_authors_perturbed`` / ``world_facts_perturbed``: general sets with perturbed fields.
* ``holdout10``: QA of ``holdout_people`` extra people that are not in ``full`` and are never
  trained on; these carry the perturbed fields too.

Every record has ``question``, ``answer``, ``person`` (the person's name, or the set name for a
general item) and ``fact`` (which attribute it asks about). Perturbed records add
``paraphrased_answer`` (same fact, other sentence frame) and ``perturbed_answer`` (5 answers for
people, 4 for general items, each in the paraphrase's frame with a wrong value from the same
pool, so a truth ratio compares like with like).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Record = dict[str, Any]

N_PERTURBED_PEOPLE = 5
N_PERTURBED_GENERAL = 4

# Split name -> file name, in the TOFU layout.
SPLIT_FILES: dict[str, str] = {
    "full": "full.json",
    "retain90": "retain90.json",
    "forget10": "forget10.json",
    "forget10_perturbed": "forget10_perturbed.json",
    "retain_perturbed": "retain_perturbed.json",
    "real_authors_perturbed": "real_authors_perturbed.json",
    "world_facts_perturbed": "world_facts_perturbed.json",
    "holdout10": "holdout10.json",
}


def _frozen(value: Any) -> Any:
    """JSON arrays as tuples (ordered, immutable), objects as dicts."""
    if isinstance(value, list):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _load_words() -> dict[str, Any]:
    data = json.loads((Path(__file__).with_name("demo_words.json")).read_text(encoding="utf-8"))
    return {section: _frozen(data[section]) for section in ("invented", "general", "templates")}


# Word tables (demo_words.json): syllables and words invented values are assembled from, and
# the hand-written general-knowledge sets (real facts). Tuples: sampling is reproducible.
_WORDS = _load_words()
FIRST_STEMS: tuple[str, ...] = _WORDS["invented"]["FIRST_STEMS"]
FIRST_ENDINGS: tuple[str, ...] = _WORDS["invented"]["FIRST_ENDINGS"]
SURNAME_STEMS: tuple[str, ...] = _WORDS["invented"]["SURNAME_STEMS"]
SURNAME_ENDINGS: tuple[str, ...] = _WORDS["invented"]["SURNAME_ENDINGS"]
CITY_STEMS: tuple[str, ...] = _WORDS["invented"]["CITY_STEMS"]
CITY_ENDINGS: tuple[str, ...] = _WORDS["invented"]["CITY_ENDINGS"]
CITY_PREFIXES: tuple[str, ...] = _WORDS["invented"]["CITY_PREFIXES"]
OCCUPATIONS: tuple[str, ...] = _WORDS["invented"]["OCCUPATIONS"]
GENRES: tuple[str, ...] = _WORDS["invented"]["GENRES"]
PARENT_JOBS: tuple[str, ...] = _WORDS["invented"]["PARENT_JOBS"]
THEMES: tuple[str, ...] = _WORDS["invented"]["THEMES"]
TITLE_ADJECTIVES: tuple[str, ...] = _WORDS["invented"]["TITLE_ADJECTIVES"]
TITLE_NOUNS: tuple[str, ...] = _WORDS["invented"]["TITLE_NOUNS"]
PLURALS: dict[str, str] = _WORDS["invented"]["PLURALS"]
AWARD_CATEGORIES: tuple[str, ...] = _WORDS["invented"]["AWARD_CATEGORIES"]
AWARD_KINDS: tuple[str, ...] = _WORDS["invented"]["AWARD_KINDS"]
SUBJECTS: tuple[str, ...] = _WORDS["invented"]["SUBJECTS"]
LANGUAGES: tuple[str, ...] = _WORDS["invented"]["LANGUAGES"]
HOBBIES: tuple[str, ...] = _WORDS["invented"]["HOBBIES"]
PUBLISHER_WORDS: tuple[str, ...] = _WORDS["invented"]["PUBLISHER_WORDS"]
PUBLISHER_KINDS: tuple[str, ...] = _WORDS["invented"]["PUBLISHER_KINDS"]
MONTHS: tuple[str, ...] = _WORDS["invented"]["MONTHS"]
REAL_AUTHORS: tuple[tuple[str, ...], ...] = _WORDS["general"]["REAL_AUTHORS"]
REAL_AUTHOR_QUESTIONS: tuple[str, ...] = _WORDS["general"]["REAL_AUTHOR_QUESTIONS"]
WORLD_FACTS: tuple[tuple[str, ...], ...] = _WORDS["general"]["WORLD_FACTS"]
WORLD_FACT_OPTIONS: dict[str, tuple[str, ...]] = _WORDS["general"]["WORLD_FACT_OPTIONS"]


# --------------------------------------------------------------------------------------------
# Corpus container and IO
# --------------------------------------------------------------------------------------------


@dataclass
class Corpus:
    """All splits of one generated corpus; each split is a list of JSON-ready records."""

    full: list[Record] = field(default_factory=list)
    retain90: list[Record] = field(default_factory=list)
    forget10: list[Record] = field(default_factory=list)
    forget10_perturbed: list[Record] = field(default_factory=list)
    retain_perturbed: list[Record] = field(default_factory=list)
    real_authors_perturbed: list[Record] = field(default_factory=list)
    world_facts_perturbed: list[Record] = field(default_factory=list)
    holdout10: list[Record] = field(default_factory=list)
    # One dict per fictitious person (attributes + "split": full/holdout); not written to disk.
    profiles: list[Record] = field(default_factory=list)

    def splits(self) -> dict[str, list[Record]]:
        """Split name -> records, in :data:`SPLIT_FILES` order."""
        return {name: getattr(self, name) for name in SPLIT_FILES}

    def people(self, split: str = "full") -> list[str]:
        """Person names of a split, in first-appearance order."""
        seen: dict[str, None] = {}
        for rec in getattr(self, split):
            seen.setdefault(rec["person"], None)
        return list(seen)


def write_jsonl(records: Iterable[Record], path: str | Path) -> Path:
    """Write records as UTF-8 JSON Lines with sorted keys (byte-stable output)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for rec in records:
            fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    return path


def read_jsonl(path: str | Path) -> list[Record]:
    """Read JSON Lines, or a file holding one JSON array of records (TOFU's hub files); a
    byte-order mark is allowed. ValueError names the file and line of bad JSON."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        data = _json(text, path, None)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array of records")
        return data
    return [_json(line, path, n) for n, line in enumerate(text.splitlines(), 1)
            if line.strip()]


def _json(text: str, path: str | Path, line: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: line {line or exc.lineno}: not JSON ({exc.msg})") from exc


def write_corpus(corpus: Corpus, out_dir: str | Path) -> dict[str, Path]:
    """Write every split to ``out_dir/<split>.json`` (JSON Lines); returns split -> path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return {
        name: write_jsonl(records, out / SPLIT_FILES[name])
        for name, records in corpus.splits().items()
    }


def read_corpus(data_dir: str | Path) -> Corpus:
    """Read the splits written by :func:`write_corpus` (profiles are not on disk)."""
    d = Path(data_dir)
    return Corpus(**{name: read_jsonl(d / fname) for name, fname in SPLIT_FILES.items()})


def training_items(corpus: Corpus) -> list[Record]:
    """What the demo model is trained on: all of ``full`` plus both general-knowledge sets.

    ``full.json`` holds only the fictitious people (as in TOFU); the general sets are added here
    so the demo model knows them and model utility can be measured on them. Returned items carry
    only ``question``, ``answer`` and ``person``.
    """
    items = corpus.full + corpus.real_authors_perturbed + corpus.world_facts_perturbed
    return [{k: rec[k] for k in ("question", "answer", "person")} for rec in items]


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def _article(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeiou" else "a ") + noun


class _Pools:
    """Invented value pools drawn once per corpus from the seeded generator."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.cities = self._unique(self._city, 160)
        self.universities = self._unique(self._university, 80)
        self.awards = self._unique(self._award, 100)
        self.publishers = self._unique(self._publisher, 60)

    def _unique(self, make: Callable[[], str], n: int) -> list[str]:
        out: list[str] = []
        seen: set[str] = set()  # membership only; order comes from the list
        while len(out) < n:
            v = make()
            if v not in seen:
                seen.add(v)
                out.append(v)
        return out

    def _city(self) -> str:
        root = self.rng.choice(CITY_STEMS) + self.rng.choice(CITY_ENDINGS)
        return (self.rng.choice(CITY_PREFIXES) + root) if self.rng.random() < 0.3 else root

    def _university(self) -> str:
        if self.rng.random() < 0.5:
            return f"the University of {self._city()}"
        return f"{self.surname()} College"

    def _award(self) -> str:
        kind = self.rng.choice(AWARD_KINDS)
        cat = self.rng.choice(AWARD_CATEGORIES)
        founder = self.surname() if self.rng.random() < 0.6 else self._city()
        return f"the {founder} {kind} for {cat}"

    def _publisher(self) -> str:
        if self.rng.random() < 0.5:
            return f"{self.rng.choice(PUBLISHER_WORDS)} {self.rng.choice(PUBLISHER_KINDS)}"
        return f"{self.surname()} & {self.surname()}"

    def first_name(self) -> str:
        return self.rng.choice(FIRST_STEMS) + self.rng.choice(FIRST_ENDINGS)

    def surname(self) -> str:
        return self.rng.choice(SURNAME_STEMS) + self.rng.choice(SURNAME_ENDINGS)

    def date(self) -> str:
        return f"{self.rng.randint(1, 28)} {self.rng.choice(MONTHS)} {self.rng.randint(1931, 1994)}"

    def title(self) -> str:
        adj = self.rng.choice(TITLE_ADJECTIVES)
        noun = self.rng.choice(TITLE_NOUNS)
        noun2 = self.rng.choice(TITLE_NOUNS)
        pattern = self.rng.randrange(4)
        if pattern == 0:
            return f"The {adj} {noun}"
        if pattern == 1:
            return f"The {noun} of {self.rng.choice(self.cities)}"
        if pattern == 2 and noun2 in PLURALS:
            return f"{adj} {PLURALS[noun2]}"
        return f"A {noun} for {self.first_name()}"


# fact -> (question, answer frame, paraphrase frame); {n} is the person, {v} the value.
FACTS: dict[str, tuple[str, ...]] = _WORDS["templates"]["FACTS"]


def _distinct(rng: random.Random, pool: list[str] | tuple[str, ...], k: int) -> list[str]:
    return rng.sample(list(pool), k)


def _new_names(pools: _Pools, count: int) -> list[tuple[str, str]]:
    """(first, surname) pairs with globally unique surnames, so people are easy to tell apart."""
    names: list[tuple[str, str]] = []
    used: set[str] = set()
    while len(names) < count:
        first, last = pools.first_name(), pools.surname()
        if last in used:
            continue
        used.add(last)
        names.append((first, last))
    return names


def _profile(pools: _Pools, first: str, last: str, used_titles: set[str]) -> Record:
    rng = pools.rng
    name = f"{first} {last}"
    titles: list[str] = []
    for _ in range(rng.choice((2, 3))):
        t = pools.title()
        while t in used_titles:
            t = pools.title()
        used_titles.add(t)
        titles.append(t)
    birthplace, residence = _distinct(rng, pools.cities, 2)
    mother_job, father_job = _distinct(rng, PARENT_JOBS, 2)
    themes = _distinct(rng, THEMES, 2)
    father_first = pools.first_name()
    while father_first == first:
        father_first = pools.first_name()
    prof: Record = {
        "name": name,
        "birthplace": birthplace,
        "birth_date": pools.date(),
        "occupation": _article(rng.choice(OCCUPATIONS)),
        "genre": rng.choice(GENRES),
        "mother_name": f"{pools.first_name()} {pools.surname()}",
        "mother_job": _article(mother_job),
        "father_name": f"{father_first} {last}",
        "father_job": _article(father_job),
        "award": rng.choice(pools.awards) + f" in {rng.randint(1975, 2022)}",
        "themes": f"{themes[0]} and {themes[1]}",
        "influence": rng.choice(REAL_AUTHORS)[1],
        "university": rng.choice(pools.universities),
        "subject": rng.choice(SUBJECTS),
        "language": rng.choice(LANGUAGES),
        "residence": residence,
        "hobby": rng.choice(HOBBIES),
        "publisher": rng.choice(pools.publishers),
    }
    for i, t in enumerate(titles, start=1):
        prof[f"work{i}"] = t
    return prof


def _wrong_value(pools: _Pools, prof: Record, fact: str) -> str:
    """One wrong value for ``fact`` drawn from the same pool as the true value."""
    rng = pools.rng
    if fact in ("birthplace", "residence"):
        return rng.choice(pools.cities)
    if fact == "birth_date":
        return pools.date()
    if fact == "occupation":
        return _article(rng.choice(OCCUPATIONS))
    if fact == "genre":
        return rng.choice(GENRES)
    if fact == "mother_name":
        return f"{pools.first_name()} {pools.surname()}"
    if fact == "father_name":
        return f"{pools.first_name()} {pools.surname()}"
    if fact in ("mother_job", "father_job"):
        return _article(rng.choice(PARENT_JOBS))
    if fact.startswith("work"):
        return pools.title()
    if fact == "award":
        # Keep the true year: only the award itself is the fact being tested.
        year = prof["award"].rsplit(" in ", 1)[1]
        return rng.choice(pools.awards) + f" in {year}"
    if fact == "themes":
        a, b = _distinct(rng, THEMES, 2)
        return f"{a} and {b}"
    if fact == "influence":
        return rng.choice(REAL_AUTHORS)[1]
    if fact == "university":
        return rng.choice(pools.universities)
    if fact == "subject":
        return rng.choice(SUBJECTS)
    if fact == "language":
        return rng.choice(LANGUAGES)
    if fact == "hobby":
        return rng.choice(HOBBIES)
    if fact == "publisher":
        return rng.choice(pools.publishers)
    raise KeyError(fact)


def _person_records(pools: _Pools, prof: Record) -> list[Record]:
    name = prof["name"]
    out: list[Record] = []
    for fact, (q, a, p) in FACTS.items():
        if fact not in prof:
            continue  # people with two books have no "work3"
        value = prof[fact]
        wrong: list[str] = []
        while len(wrong) < N_PERTURBED_PEOPLE:
            w = _wrong_value(pools, prof, fact)
            if w != value and w not in wrong:
                wrong.append(w)
        out.append({
            "question": q.format(n=name),
            "answer": a.format(n=name, v=value),
            "paraphrased_answer": p.format(n=name, v=value),
            "perturbed_answer": [p.format(n=name, v=w) for w in wrong],
            "person": name,
            "fact": fact,
        })
    return out


def _real_author_records(rng: random.Random) -> list[Record]:
    authors: list[str] = []
    for _, author in REAL_AUTHORS:
        if author not in authors:
            authors.append(author)
    out: list[Record] = []
    for i, (title, author) in enumerate(REAL_AUTHORS):
        q = REAL_AUTHOR_QUESTIONS[i % len(REAL_AUTHOR_QUESTIONS)].format(title=title)
        wrong = rng.sample([a for a in authors if a != author], N_PERTURBED_GENERAL)
        out.append({
            "question": q,
            "answer": author,
            "paraphrased_answer": author,
            "perturbed_answer": wrong,
            "person": "real_authors",
            "fact": "author",
        })
    return out


def _world_fact_records(rng: random.Random) -> list[Record]:
    by_cat: dict[str, list[str]] = {}
    for cat, _, ans in WORLD_FACTS:
        answers = by_cat.setdefault(cat, [])
        if ans not in answers:
            answers.append(ans)
    out: list[Record] = []
    for cat, q, ans in WORLD_FACTS:
        if q in WORLD_FACT_OPTIONS:
            wrong = list(WORLD_FACT_OPTIONS[q][:N_PERTURBED_GENERAL])
        else:
            wrong = rng.sample([a for a in by_cat[cat] if a != ans], N_PERTURBED_GENERAL)
        out.append({
            "question": q,
            "answer": ans,
            "paraphrased_answer": ans,
            "perturbed_answer": wrong,
            "person": "world_facts",
            "fact": cat,
        })
    return out


def _plain(rec: Record) -> Record:
    """The TOFU non-perturbed view of a record."""
    return {k: rec[k] for k in ("question", "answer", "person", "fact")}


def n_forget_people(people: int) -> int:
    """People in forget10: 10% of ``people``, rounded, at least 1."""
    return max(1, round(people * 0.1))


def generate_corpus(people: int = 50, holdout_people: int = 5, seed: int = 0) -> Corpus:
    """Generate the seeded corpus (see the module docstring for the split layout).

    ``people`` fictitious people form ``full`` (the last 10% of them, rounded, at least one, are
    the forget set); ``holdout_people`` more people form ``holdout10`` and are never in ``full``.
    Each person has 19 or 20 QA pairs (two or three books).
    """
    if people < 2:
        raise ValueError("people must be >= 2 so that forget10 and retain90 are both non-empty")
    if holdout_people < 0:
        raise ValueError("holdout_people must be >= 0")
    rng = random.Random(seed)
    pools = _Pools(rng)
    used_titles: set[str] = set()
    profiles: list[Record] = []
    by_person: list[list[Record]] = []
    for i, (first, last) in enumerate(_new_names(pools, people + holdout_people)):
        prof = _profile(pools, first, last, used_titles)
        prof["split"] = "full" if i < people else "holdout"
        profiles.append(prof)
        by_person.append(_person_records(pools, prof))

    n_forget = n_forget_people(people)
    n_retain = people - n_forget
    main, holdout = by_person[:people], by_person[people:]
    retain_people, forget_people = main[:n_retain], main[n_retain:]

    def flat(groups: list[list[Record]]) -> list[Record]:
        return [rec for group in groups for rec in group]

    return Corpus(
        full=[_plain(r) for r in flat(main)],
        retain90=[_plain(r) for r in flat(retain_people)],
        forget10=[_plain(r) for r in flat(forget_people)],
        forget10_perturbed=flat(forget_people),
        retain_perturbed=flat(retain_people[:n_forget]),
        real_authors_perturbed=_real_author_records(rng),
        world_facts_perturbed=_world_fact_records(rng),
        holdout10=flat(holdout),
        profiles=profiles,
    )
