"""The bundled world: an invented knowledge base, a corpus of short documents, and multi-hop questions.

Everything is generated from one seed, so ``scripts/build_world.py`` rebuilds ``data/world/``
byte for byte. Names are invented one-word entities ("Velmora", "Tarsk") so the word-level tokenizer
of the tiny model gives one token per entity and nothing can be answered from English knowledge.

Knowledge base (each fact is one corpus document)::

    company C  --founded_by-->  person P      "C was founded by P ."
    person P   --born_in---->   city X        "P was born in X ."
    city X     --in_country-->  country K     "X is a city in the country K ."

Distractor documents mention an entity without the asked fact, so a careless query retrieves the
wrong person or place: "C competes with C2 .", "P2 works at C .", "P visited Y .",
"X is far from K2 .".

A careful agent searches "C founded", "P born", "X country" (the entity plus the relation word of
the fact document); BM25 then ranks the fact first and a distractor second.

Question types (``QAExample.qtype``, ``hops`` = searches a careful agent needs)::

    founder     1  who founded C ?
    birthplace  1  where was P born ?
    chain2      2  where was the founder of C born ?
    chain3      3  in which country was the founder of C born ?
    multi_part  2  who founded A and who founded B ?                 gold "PA ; PB" (either order)
    comparison  2  were P and Q born in the same city ?               gold "yes" / "no"
    namesake    2  where was the founder of C born ?                  (a person also named C exists)

A namesake question reads exactly like a chain2 question, but the world also holds a person who
shares the company's name and was born elsewhere ("C was born in Y ."). The lazy one-search query
"C born" (``meta["trap_query"]``) retrieves that fact and suggests the wrong city Y; the careful
path "C founded", "P born" finds the founder's city. So the first search can be good or bad on its
own, and a bad first search can still be recovered by searching again: per-turn credit has
something to separate that the outcome alone does not. Namesakes reuse company names, so they add
no word to the vocabulary.

Comparison questions are balanced yes / no in every split (a constant answer scores 0.5).

Splits are disjoint by the entities asked about: every person founds exactly one company, the
(company, founder) pairs are dealt out to sft / train / dev / test, and a split's questions only
ask about its own pairs. Cities and countries (few) are shared by all splits.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..protocol import ANSWER_PART_SEPARATOR, protocol_words
from .qa import QAExample

QTYPES = ("founder", "birthplace", "chain2", "chain3", "multi_part", "comparison", "namesake")
SPLITS = ("sft", "train", "dev", "test")
# Share of the (company, founder) pairs each split asks about.
SPLIT_FRACTIONS = {"sft": 0.3, "train": 0.5, "dev": 0.1, "test": 0.1}
# Questions per type in the small evaluation splits (None = one question per pair and type).
EVAL_QUESTIONS_PER_TYPE = {"dev": 50, "test": 50}
# Share of each split's companies that have a namesake person (asked as ``namesake`` questions; the
# other companies are asked as ``chain2``).
NAMESAKE_FRACTION = 0.5

# The search query a careful agent writes for each relation: the subject plus the relation word
# that the fact document contains, so BM25 ranks the fact first.
QUERY_TEMPLATES = {"founded_by": "{} founded", "born_in": "{} born", "in_country": "{} country"}

FACT_TEMPLATES = {
    "founded_by": "{} was founded by {} .",
    "born_in": "{} was born in {} .",
    "in_country": "{} is a city in the country {} .",
}
DISTRACTOR_TEMPLATES = {
    "competes_with": "{} competes with {} .",
    "works_at": "{} works at {} .",
    "visited": "{} visited {} .",
    "far_from": "{} is far from {} .",
}
QUESTION_TEMPLATES = {
    "founder": "who founded {} ?",
    "birthplace": "where was {} born ?",
    "chain2": "where was the founder of {} born ?",
    "chain3": "in which country was the founder of {} born ?",
    "multi_part": "who founded {} and who founded {} ?",
    "comparison": "were {} and {} born in the same city ?",
    "namesake": "where was the founder of {} born ?",
}

# Pronounceable syllables for invented names; repeated entries are drawn more often.
_ONSETS = ("b", "d", "f", "g", "h", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "b", "d", "k", "l", "m",
           "r", "s", "t", "v", "br", "dr", "gr", "kr", "st", "tr", "sk", "th")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "y")
_INNER_CODAS = ("l", "r", "n", "s")
_FINAL_CODAS = ("n", "r", "l", "s", "k", "nd", "rn", "sk", "x", "th", "m", "sh")
_COUNTRY_ENDINGS = ("land", "ia", "mar", "esh", "ovia")
# Names the syllable rules happen to form that are English words (found by checking the default
# seed's draws against a dictionary); they are skipped. Another seed may need more entries: the
# test suite checks the names against /usr/share/dict/words where that file exists.
_ENGLISH_WORDS = frozenset({"bodes", "brogan", "dyson", "grader", "hanger", "label", "lyman", "motes", "refer",
                            "ropes", "staves", "totes", "tunas"})


@dataclass
class World:
    """The generated knowledge base, corpus and question splits.

    founder: company → person; birthplace: person → city; country_of: city → country.
    namesake_birthplace: company name → birth city of the person who shares that name (never the
    city of the company's founder).
    documents: the corpus, ``{"id", "contents"}`` dicts in corpus order.
    fact_doc: ``"subject|relation"`` → id of the document stating that fact.
    namesake_doc: company name → id of the birth document of the person who shares that name.
    split_companies: split name → the companies whose (company, founder) pair it asks about.
    questions: split name → its questions.
    """

    seed: int
    countries: list[str]
    cities: list[str]
    people: list[str]
    companies: list[str]
    founder: dict[str, str]
    birthplace: dict[str, str]
    country_of: dict[str, str]
    documents: list[dict]
    fact_doc: dict[str, str]
    split_companies: dict[str, list[str]]
    namesake_birthplace: dict[str, str] = field(default_factory=dict)
    namesake_doc: dict[str, str] = field(default_factory=dict)
    questions: dict[str, list[QAExample]] = field(default_factory=dict)

    def knowledge_base(self) -> dict:
        """The KB as plain JSON-able data (what ``world.json`` holds)."""
        return {"seed": self.seed, "countries": self.countries, "cities": self.cities, "people": self.people,
                "companies": self.companies, "founder": self.founder, "birthplace": self.birthplace,
                "country_of": self.country_of, "namesake_birthplace": self.namesake_birthplace,
                "fact_doc": self.fact_doc, "namesake_doc": self.namesake_doc, "split_companies": self.split_companies}


class _NameMaker:
    """Draws unique invented one-word names (capitalized, letters only, never an English word)."""

    def __init__(self, rng: random.Random, reserved: set[str]):
        self.rng = rng
        self.used = {word.lower() for word in reserved} | set(_ENGLISH_WORDS)

    def _syllables(self, count: int) -> str:
        """``count`` consonant-vowel syllables, with an occasional closing consonant between them."""
        word = ""
        for index in range(count):
            word += self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS)
            if index < count - 1 and self.rng.random() < 0.3:
                word += self.rng.choice(_INNER_CODAS)
        return word

    def draw(self, ending: Optional[str] = None) -> str:
        while True:
            if ending is not None:
                word = self._syllables(self.rng.choice((1, 2))) + ending
            else:
                count = self.rng.choice((2, 2, 3))
                word = self._syllables(count)
                if count == 2 or self.rng.random() < 0.3:
                    word += self.rng.choice(_FINAL_CODAS)
            if 4 <= len(word) <= 9 and word not in self.used:
                self.used.add(word)
                return word.capitalize()


def _reserved_words() -> set[str]:
    """Words no entity name may equal: the fixed texts (templates, protocol) and the search stopwords
    (a name the search tool drops could never be found)."""
    from bm25s.tokenization import STOPWORDS_EN

    texts = [*FACT_TEMPLATES.values(), *DISTRACTOR_TEMPLATES.values(), *QUESTION_TEMPLATES.values(),
             *QUERY_TEMPLATES.values(), "yes no"]
    words = {word for text in texts for word in text.replace("{}", " ").split()}
    return words | set(protocol_words()) | set(STOPWORDS_EN)


def _other(rng: random.Random, choices: list[str], exclude: str) -> str:
    """A random element of ``choices`` different from ``exclude``."""
    while True:
        pick = rng.choice(choices)
        if pick != exclude:
            return pick


def generate_world(seed: int = 0, n_companies: int = 1000, n_people: int = 1000, n_cities: int = 60,
                   n_countries: int = 12) -> World:
    """Generate the knowledge base, the corpus and the question splits from ``seed`` (deterministic).

    Needs ``n_people >= n_companies`` (every company has its own founder), ``n_cities >= n_countries
    >= 2`` and ``n_companies >= 20`` (each split needs pairs to ask about).
    """
    if n_people < n_companies:
        raise ValueError(f"generate_world: n_people={n_people} must be >= n_companies={n_companies} "
                         "(every company has its own founder).")
    if n_countries < 2 or n_cities < n_countries:
        raise ValueError(f"generate_world: need n_cities={n_cities} >= n_countries={n_countries} >= 2 "
                         "(every country has a city; distractors need a second country).")
    if n_companies < 20:
        raise ValueError(f"generate_world: n_companies={n_companies} must be >= 20 so every split has pairs.")
    rng = random.Random(seed)
    names = _NameMaker(rng, _reserved_words())
    countries = [names.draw(ending=rng.choice(_COUNTRY_ENDINGS)) for _ in range(n_countries)]
    cities = [names.draw() for _ in range(n_cities)]
    people = [names.draw() for _ in range(n_people)]
    companies = [names.draw() for _ in range(n_companies)]

    # Every country gets at least one city: deal the cities round-robin over the countries.
    country_of = {city: countries[i % n_countries] for i, city in enumerate(rng.sample(cities, n_cities))}
    birthplace = {person: rng.choice(cities) for person in people}
    founder = dict(zip(companies, rng.sample(people, n_companies)))

    split_companies = _deal_splits(rng, companies)
    namesake_birthplace = _namesakes(rng, split_companies, founder, birthplace, cities)
    documents, fact_doc = _corpus(rng, founder, birthplace, country_of, people, companies, cities, countries,
                                  namesake_birthplace)
    namesake_doc = {key.split("|")[0]: fact_doc.pop(key) for key in sorted(fact_doc) if key.endswith(_NAMESAKE_KEY)}
    world = World(seed, countries, cities, people, companies, founder, birthplace, country_of, documents,
                  fact_doc, split_companies, namesake_birthplace, namesake_doc)
    world.questions = {split: _questions(world, split, rng) for split in SPLITS}
    return world


_NAMESAKE_KEY = "namesake_born_in"


def _namesakes(rng, split_companies, founder, birthplace, cities) -> dict[str, str]:
    """``NAMESAKE_FRACTION`` of every split's companies get a namesake person, born away from the founder."""
    chosen = {}
    for companies in split_companies.values():
        for company in sorted(rng.sample(companies, round(NAMESAKE_FRACTION * len(companies)))):
            chosen[company] = _other(rng, cities, birthplace[founder[company]])
    return dict(sorted(chosen.items()))


def _corpus(rng, founder, birthplace, country_of, people, companies, cities, countries, namesake_birthplace):
    """One document per fact plus distractors, shuffled; returns (documents, fact_doc).

    A namesake's birth fact is a document like any other, keyed ``"C|namesake_born_in"`` here (the
    person shares the company's key ``C``); ``generate_world`` moves those keys to ``namesake_doc``."""
    facts = ([("founded_by", c, p) for c, p in founder.items()] + [("born_in", p, x) for p, x in birthplace.items()]
             + [("in_country", x, k) for x, k in country_of.items()])
    distractors = (
        [("competes_with", c, _other(rng, companies, c)) for c in companies]
        + [("works_at", _other(rng, people, founder[c]), c) for c in companies]
        + [("visited", p, _other(rng, cities, birthplace[p])) for p in people]
        + [("far_from", x, _other(rng, countries, k)) for x, k in country_of.items()])
    rows = [(FACT_TEMPLATES[rel].format(s, o), f"{s}|{rel}") for rel, s, o in facts]
    rows += [(FACT_TEMPLATES["born_in"].format(c, x), f"{c}|{_NAMESAKE_KEY}") for c, x in namesake_birthplace.items()]
    rows += [(DISTRACTOR_TEMPLATES[rel].format(s, o), None) for rel, s, o in distractors]
    rng.shuffle(rows)
    documents, fact_doc = [], {}
    for index, (contents, fact_key) in enumerate(rows):
        doc_id = f"d{index:05d}"
        documents.append({"id": doc_id, "contents": contents})
        if fact_key is not None:
            fact_doc[fact_key] = doc_id
    return documents, fact_doc


def _deal_splits(rng: random.Random, companies: list[str]) -> dict[str, list[str]]:
    """Deal the companies (each with its own founder) to the splits by ``SPLIT_FRACTIONS``."""
    order = rng.sample(companies, len(companies))
    dealt, start = {}, 0
    for split in SPLITS:
        size = round(SPLIT_FRACTIONS[split] * len(companies)) if split != SPLITS[-1] else len(order) - start
        dealt[split] = sorted(order[start:start + size])
        start += size
    return dealt


def _questions(world: World, split: str, rng: random.Random) -> list[QAExample]:
    """The split's questions: one per (company or pair, type), sampled down for dev/test, shuffled."""
    companies = world.split_companies[split]
    people = [world.founder[c] for c in companies]
    partners = rng.sample(companies, len(companies))
    plain = [c for c in companies if c not in world.namesake_birthplace]
    namesakes = [c for c in companies if c in world.namesake_birthplace]
    per_type = {
        "founder": [_ask(world, "founder", [c], [(c, "founded_by")]) for c in companies],
        "birthplace": [_ask(world, "birthplace", [p], [(p, "born_in")]) for p in people],
        "chain2": [_ask(world, "chain2", [c], [(c, "founded_by"), "born_in"]) for c in plain],
        "chain3": [_ask(world, "chain3", [c], [(c, "founded_by"), "born_in", "in_country"]) for c in companies],
        "multi_part": [_ask(world, "multi_part", [a, b], [(a, "founded_by"), (b, "founded_by")])
                       for a, b in zip(companies, partners) if a != b],
        "comparison": _comparisons(world, people, rng),
        "namesake": [_ask(world, "namesake", [c], [(c, "founded_by"), "born_in"]) for c in namesakes],
    }
    limit = EVAL_QUESTIONS_PER_TYPE.get(split)
    questions = []
    for qtype in QTYPES:
        pool = per_type[qtype]
        if limit and qtype == "comparison":
            questions += _balanced_sample(pool, limit, rng)
        else:
            questions += rng.sample(pool, min(limit, len(pool))) if limit else pool
    rng.shuffle(questions)
    return [QAExample(f"{split}-{i:05d}", q.question, q.answers, q.hops, q.qtype, q.meta)
            for i, q in enumerate(questions)]


def _balanced_sample(pool: list[QAExample], limit: int, rng: random.Random) -> list[QAExample]:
    """``limit`` comparisons, half "yes" and half "no" (as near as the pool allows)."""
    yes = [q for q in pool if q.answers[0] == "yes"]
    no = [q for q in pool if q.answers[0] != "yes"]
    n_yes = min(len(yes), limit // 2)
    n_no = min(len(no), limit - n_yes)
    return rng.sample(yes, n_yes) + rng.sample(no, n_no)


def _comparisons(world: World, people: list[str], rng: random.Random) -> list[QAExample]:
    """'were P and Q born in the same city ?' with yes and no alternating where a same-city partner exists."""
    by_city: dict[str, list[str]] = {}
    for person in people:
        by_city.setdefault(world.birthplace[person], []).append(person)
    questions = []
    for index, person in enumerate(people):
        same_city = [q for q in by_city[world.birthplace[person]] if q != person]
        if index % 2 == 0 and same_city:
            other = rng.choice(same_city)
        else:
            other = rng.choice([q for q in people if world.birthplace[q] != world.birthplace[person]])
        questions.append(_ask(world, "comparison", [person, other], [(person, "born_in"), (other, "born_in")]))
    return questions


_RELATION_OF = {"founded_by": "founder", "born_in": "birthplace", "in_country": "country_of"}


def _ask(world: World, qtype: str, asked: list[str], steps: list) -> QAExample:
    """Build a question: ``steps`` are (subject, relation) lookups; a bare relation continues the chain.

    meta: ``asked`` (entities named in the question), ``steps`` ([subject, relation, object] per
    lookup, in the order a careful agent makes them), ``queries`` (the careful agent's searches),
    ``facts`` (ids of the fact documents those searches must find); a namesake question adds
    ``trap_query`` (the lazy search), ``trap_fact`` (the namesake's birth document it retrieves) and
    ``trap_answer`` (the wrong city that document suggests).
    """
    triples = []
    for step in steps:
        subject, relation = step if isinstance(step, tuple) else (triples[-1][2], step)
        obj = getattr(world, _RELATION_OF[relation])[subject]
        triples.append([subject, relation, obj])
    question = QUESTION_TEMPLATES[qtype].format(*asked)
    if qtype == "multi_part":
        first, second = triples[0][2], triples[1][2]
        sep = f" {ANSWER_PART_SEPARATOR} "
        answers = (first + sep + second, second + sep + first)
    elif qtype == "comparison":
        answers = ("yes" if triples[0][2] == triples[1][2] else "no",)
    else:
        answers = (triples[-1][2],)
    meta = {"asked": asked, "steps": triples,
            "queries": [QUERY_TEMPLATES[rel].format(subject) for subject, rel, _ in triples],
            "facts": [world.fact_doc[f"{subject}|{rel}"] for subject, rel, _ in triples]}
    if qtype == "namesake":
        company = asked[0]
        meta.update(trap_query=QUERY_TEMPLATES["born_in"].format(company),
                    trap_fact=world.namesake_doc[company],
                    trap_answer=world.namesake_birthplace[company])
    return QAExample("", question, answers, hops=len(triples), qtype=qtype, meta=meta)


# --- files -------------------------------------------------------------------------------------


def write_world(world: World, directory: str | Path) -> list[Path]:
    """Write ``corpus.jsonl``, one ``{split}.jsonl`` per split (Search-R1/FlashRAG layout) and ``world.json``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    written = [_write_jsonl(directory / "corpus.jsonl", world.documents)]
    for split, questions in world.questions.items():
        rows = [{"id": q.id, "question": q.question, "golden_answers": list(q.answers), "hops": q.hops,
                 "qtype": q.qtype, "meta": q.meta} for q in questions]
        written.append(_write_jsonl(directory / f"{split}.jsonl", rows))
    kb_path = directory / "world.json"
    kb_path.write_text(json.dumps(world.knowledge_base(), indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return written + [kb_path]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def bundled_data_dir() -> Path:
    """The repository's ``data/`` folder (override with the ``A2TGPO_LAB_DATA`` environment variable)."""
    override = os.environ.get("A2TGPO_LAB_DATA")
    return Path(override) if override else Path(__file__).resolve().parents[2] / "data"


def bundled_world_dir() -> Path:
    path = bundled_data_dir() / "world"
    if not (path / "corpus.jsonl").exists():
        raise FileNotFoundError(f"The bundled world is missing at {path}. Install the package from a clone of the "
                                "repository (pip install -e .), set A2TGPO_LAB_DATA to its data/ folder, or "
                                "rebuild it with `python scripts/build_world.py`.")
    return path


def bundled_corpus_path() -> Path:
    """Path of the bundled corpus (``{"id", "contents"}`` per line, the layout of a user corpus)."""
    return bundled_world_dir() / "corpus.jsonl"


def load_split(name: str) -> list[QAExample]:
    """The bundled questions of split ``name`` (``"sft"``, ``"train"``, ``"dev"`` or ``"test"``)."""
    from .loaders import load_questions

    if name not in SPLITS:
        raise ValueError(f"load_split: unknown split {name!r}; choose one of {list(SPLITS)}.")
    return load_questions(bundled_world_dir() / f"{name}.jsonl")
