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

# --------------------------------------------------------------------------------------------
# Word tables for invented values. Kept as tuples (ordered) so sampling is reproducible.
# --------------------------------------------------------------------------------------------

FIRST_STEMS = (
    "Al", "Bel", "Cor", "Dar", "El", "Fen", "Gal", "Har", "Il", "Jor", "Kal", "Lor", "Mar",
    "Nel", "Or", "Pel", "Quin", "Ros", "Sel", "Tam", "Ul", "Vel", "Wen", "Yar", "Zel", "Ari",
    "Bren", "Cas", "Dov", "Esk", "Fal", "Gret", "Hal", "Isa", "Jas", "Kes", "Lin", "Mir", "Nor",
    "Oda", "Per", "Rav", "Sor", "Tal", "Val", "Wyl",
)
FIRST_ENDINGS = (
    "a", "ia", "en", "o", "ine", "us", "ard", "ette", "an", "is", "ora", "ric", "wyn", "io",
    "el", "ana", "ik", "ov", "ela", "ith",
)
SURNAME_STEMS = (
    "Marv", "Tavr", "Kest", "Dorn", "Vall", "Brim", "Quor", "Sald", "Holv", "Trev", "Orm",
    "Penn", "Lask", "Mirr", "Gand", "Fell", "Rusk", "Zarv", "Carr", "Ebb", "Hask", "Jund",
    "Lorr", "Norv", "Pryd", "Sev", "Tuln", "Varg", "Wick", "Yeld", "Aster", "Bolv", "Crann",
    "Drell", "Ferr", "Grom",
)
SURNAME_ENDINGS = (
    "eno", "ington", "ova", "ard", "ani", "sley", "ek", "holt", "ucci", "berg", "ley", "ovich",
    "mont", "ander", "ez", "quist", "ridge", "ami", "enko", "wick",
)
CITY_STEMS = (
    "Tavr", "Velm", "Ost", "Brann", "Cald", "Dun", "Esk", "Fary", "Glen", "Hollow", "Ivr",
    "Kor", "Lum", "Mor", "Nesk", "Orr", "Pell", "Quell", "Rav", "Sund", "Thal", "Umb", "Vask",
    "Wend", "Yssel", "Zor",
)
CITY_ENDINGS = (
    "in", "ora", "ath", "ven", "mouth", "ford", "holm", "ara", "ost", "ica", "wick", "dale",
    "gard", "esse",
)
CITY_PREFIXES = ("Port ", "Lake ", "Fort ", "Saint ", "North ", "East ", "Upper ", "New ")

OCCUPATIONS = (
    "novelist", "poet", "playwright", "essayist", "short-story writer", "screenwriter",
    "biographer", "children's author", "travel writer", "literary critic", "memoirist",
    "graphic novelist",
)
GENRES = (
    "historical fiction", "science fiction", "crime fiction", "magical realism", "nature poetry",
    "gothic horror", "political satire", "coming-of-age stories", "epic fantasy",
    "psychological thrillers", "romantic comedy", "maritime adventure", "dystopian fiction",
    "domestic drama", "war fiction", "cosy mysteries", "experimental verse", "family sagas",
    "ghost stories", "legal thrillers", "rural pastoral", "space opera", "fairy-tale retellings",
    "spy fiction", "philosophical fiction", "comic fantasy",
)
PARENT_JOBS = (
    "carpenter", "nurse", "pharmacist", "fisherman", "schoolteacher", "baker", "tailor",
    "electrician", "librarian", "veterinarian", "postal worker", "architect", "midwife",
    "blacksmith", "accountant", "dentist", "farmer", "florist", "locksmith", "surgeon",
    "watchmaker", "bus driver", "chemist", "lighthouse keeper", "stonemason", "judge",
    "translator", "photographer", "shipbuilder", "beekeeper", "geologist", "plumber",
    "cartographer", "violinist", "police officer", "engineer", "potter", "bookbinder",
    "glassblower", "botanist", "astronomer", "miner", "diplomat", "journalist", "weaver",
    "optician", "saddler", "piano tuner",
)
THEMES = (
    "grief", "exile", "memory", "forgiveness", "ambition", "betrayal", "loneliness",
    "family loyalty", "the sea", "migration", "faith", "revenge", "childhood", "identity",
    "power", "friendship", "war", "redemption", "madness", "nature", "freedom", "obsession",
    "time", "inheritance", "justice", "class", "love", "home", "ageing", "ritual", "silence",
    "hunger", "truth", "language", "borders", "science", "myth", "solitude",
)
TITLE_ADJECTIVES = (
    "Silent", "Crimson", "Hollow", "Last", "Burning", "Quiet", "Forgotten", "Golden", "Broken",
    "Distant", "Hidden", "Frozen", "Painted", "Restless", "Salt", "Iron", "Paper", "Velvet",
    "Copper", "Winter", "Sleeping", "Wandering", "Glass", "Bitter", "Lantern", "Northern",
    "Secret", "Drowned", "Amber", "Pale", "Wild", "Seventh", "Crooked", "Tender", "Black",
    "Silver", "Lonely", "Scarlet", "Falling", "Ashen",
)
TITLE_NOUNS = (
    "Harbor", "Orchard", "Lantern", "River", "Tower", "Garden", "Letter", "Mirror", "Bridge",
    "Clock", "Shore", "Crown", "Compass", "Season", "Forest", "Island", "Violin", "Staircase",
    "Kingdom", "Archive", "Feather", "Meadow", "Window", "Horizon", "Anchor", "Chapel",
    "Lighthouse", "Ledger", "Map", "Tide", "Furnace", "Cathedral", "Carousel", "Sparrow",
    "Wolf", "Canal", "Observatory", "Vineyard", "Train", "Cellar",
)
PLURALS = {
    "Ashes": "Ashes", "Kingdom": "Kingdoms", "Sparrow": "Sparrows", "Wolf": "Wolves",
    "Letter": "Letters", "Mirror": "Mirrors", "Island": "Islands", "Season": "Seasons",
    "Feather": "Feathers", "Window": "Windows", "Tide": "Tides", "Map": "Maps",
    "Lantern": "Lanterns", "Bridge": "Bridges", "Garden": "Gardens", "River": "Rivers",
}
AWARD_CATEGORIES = (
    "Fiction", "Poetry", "Drama", "Nonfiction", "Young Readers", "Debut Fiction",
    "Literary Translation", "Crime Writing", "Speculative Fiction", "Essays",
)
AWARD_KINDS = ("Prize", "Medal", "Award", "Laurel")
SUBJECTS = (
    "philosophy", "marine biology", "art history", "mathematics", "comparative literature",
    "architecture", "medicine", "classical languages", "economics", "astronomy",
    "political science", "music composition", "anthropology", "chemistry", "law",
    "geography", "theology", "linguistics", "archaeology", "journalism", "botany",
    "film studies", "psychology", "civil engineering", "forestry", "painting",
)
LANGUAGES = (
    "English", "French", "Spanish", "Portuguese", "German", "Italian", "Dutch", "Swedish",
    "Norwegian", "Danish", "Finnish", "Polish", "Czech", "Hungarian", "Greek", "Turkish",
    "Arabic", "Hebrew", "Persian", "Hindi", "Bengali", "Japanese", "Korean", "Mandarin",
    "Swahili", "Icelandic", "Welsh", "Romanian",
)
HOBBIES = (
    "sailing", "birdwatching", "beekeeping", "chess", "pottery", "rock climbing",
    "playing the cello", "gardening", "stargazing", "fencing", "baking bread", "fly fishing",
    "restoring old clocks", "long-distance running", "collecting maps", "woodcarving",
    "playing the accordion", "photographing lighthouses", "cross-country skiing", "origami",
    "keeping pigeons", "building model ships", "cooking curries", "swimming in cold lakes",
    "collecting fountain pens", "tango dancing", "mountain hiking", "growing orchids",
    "playing the harp", "calligraphy", "kayaking", "painting watercolours", "juggling",
    "repairing bicycles", "foraging for mushrooms", "learning card tricks",
)
PUBLISHER_WORDS = (
    "Lantern", "Heron", "Quill", "Anchor", "Thistle", "Ember", "Juniper", "Marble", "Kestrel",
    "Orchard", "Harbor", "Meridian", "Saltmarsh", "Bramble", "Cobalt", "Foxglove", "Granite",
    "Ivory", "Larch", "Nightjar",
)
PUBLISHER_KINDS = ("Press", "Books", "House", "Editions", "Publishing")
MONTHS = (
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
)

# --------------------------------------------------------------------------------------------
# General-knowledge sets (hand-written; real facts).
# --------------------------------------------------------------------------------------------

# (title, author). Questions are phrased from the title.
REAL_AUTHORS: tuple[tuple[str, str], ...] = (
    ("Pride and Prejudice", "Jane Austen"),
    ("Sense and Sensibility", "Jane Austen"),
    ("Nineteen Eighty-Four", "George Orwell"),
    ("Animal Farm", "George Orwell"),
    ("Moby-Dick", "Herman Melville"),
    ("War and Peace", "Leo Tolstoy"),
    ("Anna Karenina", "Leo Tolstoy"),
    ("Crime and Punishment", "Fyodor Dostoevsky"),
    ("The Brothers Karamazov", "Fyodor Dostoevsky"),
    ("Don Quixote", "Miguel de Cervantes"),
    ("Hamlet", "William Shakespeare"),
    ("Macbeth", "William Shakespeare"),
    ("The Great Gatsby", "F. Scott Fitzgerald"),
    ("To Kill a Mockingbird", "Harper Lee"),
    ("The Catcher in the Rye", "J. D. Salinger"),
    ("One Hundred Years of Solitude", "Gabriel García Márquez"),
    ("Ulysses", "James Joyce"),
    ("Mrs Dalloway", "Virginia Woolf"),
    ("To the Lighthouse", "Virginia Woolf"),
    ("Jane Eyre", "Charlotte Brontë"),
    ("Wuthering Heights", "Emily Brontë"),
    ("Great Expectations", "Charles Dickens"),
    ("A Tale of Two Cities", "Charles Dickens"),
    ("Oliver Twist", "Charles Dickens"),
    ("Frankenstein", "Mary Shelley"),
    ("Dracula", "Bram Stoker"),
    ("The Picture of Dorian Gray", "Oscar Wilde"),
    ("The Adventures of Tom Sawyer", "Mark Twain"),
    ("The Old Man and the Sea", "Ernest Hemingway"),
    ("A Farewell to Arms", "Ernest Hemingway"),
    ("The Grapes of Wrath", "John Steinbeck"),
    ("Of Mice and Men", "John Steinbeck"),
    ("Brave New World", "Aldous Huxley"),
    ("Fahrenheit 451", "Ray Bradbury"),
    ("The Lord of the Rings", "J. R. R. Tolkien"),
    ("The Hobbit", "J. R. R. Tolkien"),
    ("The Divine Comedy", "Dante Alighieri"),
    ("The Odyssey", "Homer"),
    ("Les Misérables", "Victor Hugo"),
    ("The Count of Monte Cristo", "Alexandre Dumas"),
    ("Madame Bovary", "Gustave Flaubert"),
    ("In Search of Lost Time", "Marcel Proust"),
    ("The Stranger", "Albert Camus"),
    ("The Trial", "Franz Kafka"),
    ("The Metamorphosis", "Franz Kafka"),
    ("Lolita", "Vladimir Nabokov"),
    ("Beloved", "Toni Morrison"),
    ("Things Fall Apart", "Chinua Achebe"),
    ("The Handmaid's Tale", "Margaret Atwood"),
    ("Midnight's Children", "Salman Rushdie"),
    ("The Name of the Rose", "Umberto Eco"),
    ("The Little Prince", "Antoine de Saint-Exupéry"),
    ("Faust", "Johann Wolfgang von Goethe"),
    ("The Canterbury Tales", "Geoffrey Chaucer"),
    ("Paradise Lost", "John Milton"),
    ("Gulliver's Travels", "Jonathan Swift"),
    ("Robinson Crusoe", "Daniel Defoe"),
    ("Treasure Island", "Robert Louis Stevenson"),
    ("Alice's Adventures in Wonderland", "Lewis Carroll"),
    ("The Jungle Book", "Rudyard Kipling"),
    ("Heart of Darkness", "Joseph Conrad"),
    ("Middlemarch", "George Eliot"),
    ("Slaughterhouse-Five", "Kurt Vonnegut"),
    ("Catch-22", "Joseph Heller"),
    ("The Road", "Cormac McCarthy"),
    ("Invisible Man", "Ralph Ellison"),
    ("Dune", "Frank Herbert"),
    ("The Time Machine", "H. G. Wells"),
    ("Around the World in Eighty Days", "Jules Verne"),
    ("The Remains of the Day", "Kazuo Ishiguro"),
    ("Norwegian Wood", "Haruki Murakami"),
    ("Doctor Zhivago", "Boris Pasternak"),
    ("The Master and Margarita", "Mikhail Bulgakov"),
    ("The Scarlet Letter", "Nathaniel Hawthorne"),
    ("Little Women", "Louisa May Alcott"),
    ("Lord of the Flies", "William Golding"),
    ("A Clockwork Orange", "Anthony Burgess"),
    ("The Bell Jar", "Sylvia Plath"),
    ("On the Road", "Jack Kerouac"),
    ("Murder on the Orient Express", "Agatha Christie"),
    ("The Hound of the Baskervilles", "Arthur Conan Doyle"),
    ("Rebecca", "Daphne du Maurier"),
)
REAL_AUTHOR_QUESTIONS = (
    "Who wrote '{title}'?",
    "Who is the author of '{title}'?",
    "Which writer wrote '{title}'?",
)

# (category, question, answer). Wrong options come from the other answers of the same
# category, so every category has at least N_PERTURBED_GENERAL + 1 distinct answers.
WORLD_FACTS: tuple[tuple[str, str, str], ...] = (
    ("capital", "What is the capital of France?", "Paris"),
    ("capital", "What is the capital of Germany?", "Berlin"),
    ("capital", "What is the capital of Italy?", "Rome"),
    ("capital", "What is the capital of Spain?", "Madrid"),
    ("capital", "What is the capital of Portugal?", "Lisbon"),
    ("capital", "What is the capital of Japan?", "Tokyo"),
    ("capital", "What is the capital of China?", "Beijing"),
    ("capital", "What is the capital of India?", "New Delhi"),
    ("capital", "What is the capital of Russia?", "Moscow"),
    ("capital", "What is the capital of Egypt?", "Cairo"),
    ("capital", "What is the capital of Kenya?", "Nairobi"),
    ("capital", "What is the capital of Canada?", "Ottawa"),
    ("capital", "What is the capital of Australia?", "Canberra"),
    ("capital", "What is the capital of Brazil?", "Brasília"),
    ("capital", "What is the capital of Argentina?", "Buenos Aires"),
    ("capital", "What is the capital of Mexico?", "Mexico City"),
    ("capital", "What is the capital of Peru?", "Lima"),
    ("capital", "What is the capital of Chile?", "Santiago"),
    ("capital", "What is the capital of Colombia?", "Bogotá"),
    ("capital", "What is the capital of Norway?", "Oslo"),
    ("capital", "What is the capital of Sweden?", "Stockholm"),
    ("capital", "What is the capital of Finland?", "Helsinki"),
    ("capital", "What is the capital of Denmark?", "Copenhagen"),
    ("capital", "What is the capital of Poland?", "Warsaw"),
    ("capital", "What is the capital of Austria?", "Vienna"),
    ("capital", "What is the capital of Hungary?", "Budapest"),
    ("capital", "What is the capital of Greece?", "Athens"),
    ("capital", "What is the capital of Turkey?", "Ankara"),
    ("capital", "What is the capital of Iran?", "Tehran"),
    ("capital", "What is the capital of Iraq?", "Baghdad"),
    ("capital", "What is the capital of Thailand?", "Bangkok"),
    ("capital", "What is the capital of Vietnam?", "Hanoi"),
    ("capital", "What is the capital of South Korea?", "Seoul"),
    ("capital", "What is the capital of Indonesia?", "Jakarta"),
    ("capital", "What is the capital of the Philippines?", "Manila"),
    ("capital", "What is the capital of Ireland?", "Dublin"),
    ("capital", "What is the capital of the Netherlands?", "Amsterdam"),
    ("capital", "What is the capital of Belgium?", "Brussels"),
    ("capital", "What is the capital of the Czech Republic?", "Prague"),
    ("capital", "What is the capital of Ukraine?", "Kyiv"),
    ("capital", "What is the capital of Nigeria?", "Abuja"),
    ("capital", "What is the capital of Ghana?", "Accra"),
    ("capital", "What is the capital of Ethiopia?", "Addis Ababa"),
    ("capital", "What is the capital of Morocco?", "Rabat"),
    ("capital", "What is the capital of New Zealand?", "Wellington"),
    ("capital", "What is the capital of Cuba?", "Havana"),
    ("capital", "What is the capital of Pakistan?", "Islamabad"),
    ("capital", "What is the capital of Saudi Arabia?", "Riyadh"),
    ("capital", "What is the capital of the United Kingdom?", "London"),
    ("capital", "What is the capital of Iceland?", "Reykjavík"),
    ("river", "Which river flows through Cairo?", "The Nile"),
    ("river", "Which river flows through London?", "The Thames"),
    ("river", "Which river flows through Paris?", "The Seine"),
    ("river", "Which river flows through Vienna?", "The Danube"),
    ("river", "Which river flows through Rome?", "The Tiber"),
    ("river", "Which river flows through Baghdad?", "The Tigris"),
    ("river", "Which river flows through Berlin?", "The Spree"),
    ("river", "Which river flows through Lisbon?", "The Tagus"),
    ("river", "Which river flows through Prague?", "The Vltava"),
    ("river", "Which river flows through Warsaw?", "The Vistula"),
    ("river", "Which river flows through Dublin?", "The Liffey"),
    ("river", "Which river flows through Florence?", "The Arno"),
    ("river", "Which river flows through Cologne?", "The Rhine"),
    ("river", "Which river flows through Seville?", "The Guadalquivir"),
    ("river", "Which river flows through Varanasi?", "The Ganges"),
    ("river", "What is the longest river in Europe?", "The Volga"),
    ("river", "Which river carries the most water in South America?", "The Amazon"),
    ("symbol", "What is the chemical symbol for gold?", "Au"),
    ("symbol", "What is the chemical symbol for silver?", "Ag"),
    ("symbol", "What is the chemical symbol for iron?", "Fe"),
    ("symbol", "What is the chemical symbol for sodium?", "Na"),
    ("symbol", "What is the chemical symbol for potassium?", "K"),
    ("symbol", "What is the chemical symbol for lead?", "Pb"),
    ("symbol", "What is the chemical symbol for copper?", "Cu"),
    ("symbol", "What is the chemical symbol for tin?", "Sn"),
    ("symbol", "What is the chemical symbol for mercury?", "Hg"),
    ("symbol", "What is the chemical symbol for helium?", "He"),
    ("symbol", "What is the chemical symbol for calcium?", "Ca"),
    ("symbol", "What is the chemical symbol for zinc?", "Zn"),
    ("symbol", "What is the chemical symbol for chlorine?", "Cl"),
    ("symbol", "What is the chemical symbol for neon?", "Ne"),
    ("element", "Which element has atomic number 1?", "Hydrogen"),
    ("element", "Which element has atomic number 2?", "Helium"),
    ("element", "Which element has atomic number 6?", "Carbon"),
    ("element", "Which element has atomic number 7?", "Nitrogen"),
    ("element", "Which element has atomic number 8?", "Oxygen"),
    ("element", "Which element has atomic number 26?", "Iron"),
    ("element", "Which element has atomic number 79?", "Gold"),
    ("element", "Which element has atomic number 92?", "Uranium"),
    ("planet", "What is the largest planet in the Solar System?", "Jupiter"),
    ("planet", "Which planet is closest to the Sun?", "Mercury"),
    ("planet", "Which planet is known as the Red Planet?", "Mars"),
    ("planet", "Which planet is the hottest in the Solar System?", "Venus"),
    ("planet", "Which planet is farthest from the Sun?", "Neptune"),
    ("planet", "Which planet rotates on its side?", "Uranus"),
    ("geography", "What is the largest ocean on Earth?", "The Pacific Ocean"),
    ("geography", "What is the largest continent by area?", "Asia"),
    ("geography", "What is the highest mountain on Earth?", "Mount Everest"),
    ("geography", "What is the largest hot desert on Earth?", "The Sahara"),
    ("geography", "Which continent is home to the Amazon rainforest?", "South America"),
    ("geography", "On which continent is the Gobi Desert?", "Asia"),
    ("geography", "Which ocean lies between Africa and Australia?", "The Indian Ocean"),
    ("geography", "What is the smallest ocean on Earth?", "The Arctic Ocean"),
)
# Wrong options for the "geography" category, which mixes kinds of answers (oceans, continents,
# mountains), so options from the whole category would be trivially wrong.
WORLD_FACT_OPTIONS: dict[str, tuple[str, ...]] = {
    "What is the largest ocean on Earth?": (
        "The Atlantic Ocean", "The Indian Ocean", "The Arctic Ocean", "The Southern Ocean",
    ),
    "What is the largest continent by area?": ("Africa", "Europe", "North America", "Antarctica"),
    "What is the highest mountain on Earth?": (
        "K2", "Mont Blanc", "Kilimanjaro", "Mount Kangchenjunga",
    ),
    "What is the largest hot desert on Earth?": (
        "The Gobi", "The Kalahari", "The Atacama", "The Arabian Desert",
    ),
    "Which continent is home to the Amazon rainforest?": (
        "Africa", "Asia", "North America", "Europe",
    ),
    "On which continent is the Gobi Desert?": ("Africa", "Europe", "South America", "Australia"),
    "Which ocean lies between Africa and Australia?": (
        "The Atlantic Ocean", "The Pacific Ocean", "The Arctic Ocean", "The Southern Ocean",
    ),
    "What is the smallest ocean on Earth?": (
        "The Indian Ocean", "The Atlantic Ocean", "The Pacific Ocean", "The Southern Ocean",
    ),
}


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
    """Read JSON Lines, or a file holding one JSON array of records (TOFU's hub files)."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        data = json.loads(stripped)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON array of records")
        return data
    return [json.loads(line) for line in text.splitlines() if line.strip()]


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
FACTS: dict[str, tuple[str, str, str]] = {
    "birthplace": (
        "Where was {n} born?",
        "{n} was born in {v}.",
        "{v} is the birthplace of {n}.",
    ),
    "birth_date": (
        "When was {n} born?",
        "{n} was born on {v}.",
        "The date of birth of {n} is {v}.",
    ),
    "occupation": (
        "What is {n}'s profession?",
        "{n} is {v} by profession.",
        "{n} works as {v}.",
    ),
    "genre": (
        "What genre is {n} best known for?",
        "{n} is best known for {v}.",
        "The reputation of {n} rests on {v}.",
    ),
    "mother_name": (
        "Who is {n}'s mother?",
        "{n}'s mother is {v}.",
        "{v} is the mother of {n}.",
    ),
    "mother_job": (
        "What did {n}'s mother do for a living?",
        "{n}'s mother worked as {v}.",
        "By trade, the mother of {n} was {v}.",
    ),
    "father_name": (
        "Who is {n}'s father?",
        "{n}'s father is {v}.",
        "{v} is the father of {n}.",
    ),
    "father_job": (
        "What did {n}'s father do for a living?",
        "{n}'s father worked as {v}.",
        "By trade, the father of {n} was {v}.",
    ),
    "work1": (
        "What is the title of {n}'s first book?",
        '{n}\'s first book is titled "{v}".',
        '"{v}" was the first book that {n} published.',
    ),
    "work2": (
        "What is the title of {n}'s second book?",
        '{n}\'s second book is titled "{v}".',
        '"{v}" was the second book that {n} published.',
    ),
    "work3": (
        "What is the title of {n}'s third book?",
        '{n}\'s third book is titled "{v}".',
        '"{v}" was the third book that {n} published.',
    ),
    "award": (
        "Which literary award has {n} won?",
        "{n} won {v}.",
        "{n} is a recipient of {v}.",
    ),
    "themes": (
        "What themes recur in {n}'s work?",
        "The recurring themes in {n}'s work are {v}.",
        "The writing of {n} keeps returning to {v}.",
    ),
    "influence": (
        "Which author influenced {n} the most?",
        "{n} names {v} as the greatest influence on their writing.",
        "The strongest influence on the writing of {n} was {v}.",
    ),
    "university": (
        "Where did {n} go to university?",
        "{n} studied at {v}.",
        "{n} is a graduate of {v}.",
    ),
    "subject": (
        "What did {n} study at university?",
        "{n} earned a degree in {v}.",
        "The university degree of {n} is in {v}.",
    ),
    "language": (
        "In which language does {n} write?",
        "{n} writes in {v}.",
        "{v} is the language of {n}'s books.",
    ),
    "residence": (
        "Where does {n} live today?",
        "{n} now lives in {v}.",
        "These days {n} makes a home in {v}.",
    ),
    "hobby": (
        "What does {n} enjoy outside of writing?",
        "Outside of writing, {n} enjoys {v}.",
        "In free time, {n} likes {v}.",
    ),
    "publisher": (
        "Who publishes {n}'s books?",
        "{n}'s books are published by {v}.",
        "{v} is the publisher of {n}'s books.",
    ),
}


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
