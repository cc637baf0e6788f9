"""The bundled world: deterministic, answerable from its corpus, with distractors and disjoint splits."""
from __future__ import annotations

import filecmp
import importlib.util
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from a2tgpo_lab.envs.world import (QTYPES, SPLITS, bundled_world_dir, generate_world, load_split,
                                   write_world)
from a2tgpo_lab.protocol import ANSWER_PART_SEPARATOR

REPO = Path(__file__).resolve().parents[1]
DICTIONARY = Path("/usr/share/dict/words")


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


@pytest.fixture(scope="module")
def splits():
    return {split: load_split(split) for split in SPLITS}


def _run_build_script(argv):
    spec = importlib.util.spec_from_file_location("build_world", REPO / "scripts" / "build_world.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(argv)


def test_build_script_rewrites_the_shipped_files_byte_for_byte(tmp_path):
    _run_build_script(["--out", str(tmp_path)])
    shipped = sorted(p.name for p in bundled_world_dir().iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert filecmp.cmp(tmp_path / name, bundled_world_dir() / name, shallow=False), name


def test_same_seed_same_world_other_seed_other_world(tmp_path):
    write_world(generate_world(5, n_companies=40, n_people=50), tmp_path / "a")
    write_world(generate_world(5, n_companies=40, n_people=50), tmp_path / "b")
    write_world(generate_world(6, n_companies=40, n_people=50), tmp_path / "c")
    for name in ("corpus.jsonl", "train.jsonl", "world.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_entity_names_are_unique_invented_single_words(world):
    from a2tgpo_lab.tiny import build_word_tokenizer

    names = world.countries + world.cities + world.people + world.companies
    assert len({n.lower() for n in names}) == len(names) == 12 + 60 + 1000 + 1000
    assert all(re.fullmatch(r"[A-Z][a-z]{3,8}", n) for n in names)
    template_words = {w.lower() for d in world.documents for w in d["contents"].split() if not w[0].isupper()}
    assert not template_words & {n.lower() for n in names}
    tokenizer = build_word_tokenizer([d["contents"] for d in world.documents])
    assert all(len(tokenizer(n, add_special_tokens=False)["input_ids"]) == 1 for n in names)
    if DICTIONARY.exists():
        english = {line.strip().lower() for line in DICTIONARY.open(encoding="utf-8", errors="ignore")}
        assert sorted(n for n in names if n.lower() in english) == []


_FACT_PATTERNS = {
    "founded_by": re.compile(r"^(\w+) was founded by (\w+) \.$"),
    "born_in": re.compile(r"^(\w+) was born in (\w+) \.$"),
    "in_country": re.compile(r"^(\w+) is a city in the country (\w+) \.$"),
}
_QUESTION_PATTERNS = {
    "founder": r"who founded (\w+) \?", "birthplace": r"where was (\w+) born \?",
    "chain2": r"where was the founder of (\w+) born \?",
    "chain3": r"in which country was the founder of (\w+) born \?",
    "multi_part": r"who founded (\w+) and who founded (\w+) \?",
    "comparison": r"were (\w+) and (\w+) born in the same city \?",
    "namesake": r"where was the founder of (\w+) born \?",
}


def _facts_from_corpus(path: Path) -> dict[str, dict[str, str]]:
    """relation → {subject: object}, read from the corpus text alone (not from the generator's KB).

    A name may be both a company and a (namesake) person, so each subject has at most one fact per relation."""
    facts = {relation: {} for relation in _FACT_PATTERNS}
    for line in path.read_text(encoding="utf-8").splitlines():
        contents = json.loads(line)["contents"]
        for relation, pattern in _FACT_PATTERNS.items():
            match = pattern.match(contents)
            if match:
                assert match.group(1) not in facts[relation], f"two {relation} facts for {match.group(1)}"
                facts[relation][match.group(1)] = match.group(2)
    return facts


def test_every_question_is_answered_by_following_its_chain_in_the_corpus(splits):
    facts = _facts_from_corpus(bundled_world_dir() / "corpus.jsonl")
    founder, born, country = facts["founded_by"], facts["born_in"], facts["in_country"]
    solve = {
        "founder": lambda c: founder[c], "birthplace": lambda p: born[p],
        "chain2": lambda c: born[founder[c]], "chain3": lambda c: country[born[founder[c]]],
        "multi_part": lambda a, b: f"{founder[a]} {ANSWER_PART_SEPARATOR} {founder[b]}",
        "comparison": lambda p, q: "yes" if born[p] == born[q] else "no",
        "namesake": lambda c: born[founder[c]],
    }
    for split, questions in splits.items():
        for q in questions:
            asked = re.fullmatch(_QUESTION_PATTERNS[q.qtype], q.question).groups()
            assert q.answers[0] == solve[q.qtype](*asked), (split, q)
            assert q.hops == len(q.meta["queries"]) == len(q.meta["facts"])


def test_multi_part_golds_list_both_orders_and_comparisons_mix_yes_and_no(splits):
    for questions in splits.values():
        for q in questions:
            if q.qtype == "multi_part":
                first, second = q.answers[0].split(f" {ANSWER_PART_SEPARATOR} ")
                assert q.answers == (q.answers[0], f"{second} {ANSWER_PART_SEPARATOR} {first}")
        verdicts = Counter(q.answers[0] for q in questions if q.qtype == "comparison")
        assert set(verdicts) == {"yes", "no"} and min(verdicts.values()) >= 0.45 * sum(verdicts.values())
    for split in ("dev", "test"):  # a constant answer must score exactly chance on the evaluation splits
        verdicts = Counter(q.answers[0] for q in splits[split] if q.qtype == "comparison")
        assert verdicts["yes"] == verdicts["no"], (split, verdicts)


def test_namesake_questions_look_like_chains_but_the_lazy_search_finds_a_wrong_city(splits):
    from a2tgpo_lab.envs.search import bundled_search_tool

    facts = _facts_from_corpus(bundled_world_dir() / "corpus.jsonl")
    tool = bundled_search_tool(topk=2)
    namesakes = [q for q in splits["dev"] if q.qtype == "namesake"]
    assert len(namesakes) == 50
    chain_form = {re.sub(r"\w+ born", "C born", q.question.replace(q.meta["asked"][0], "C"))
                  for q in splits["dev"] if q.qtype in ("chain2", "namesake")}
    assert len(chain_form) == 1, "namesake and chain2 questions must read alike"
    for q in namesakes:
        company = q.meta["asked"][0]
        trap_city = facts["born_in"][company]  # the namesake person's birth fact
        assert trap_city == q.meta["trap_answer"] != q.answers[0]
        assert q.meta["trap_query"] == f"{company} born"
        assert f"{company} was born in {trap_city}" in tool(q.meta["trap_query"]).split("Doc 2")[0]
    chain2 = {q.meta["asked"][0] for split in splits.values() for q in split if q.qtype == "chain2"}
    assert not chain2 & set(facts["born_in"]), "a plain chain2 company must have no namesake"


def test_distractors_mention_entities_without_their_fact(world):
    text = [d["contents"] for d in world.documents]
    for company, person in list(world.founder.items())[:100]:
        mentions = [t for t in text if company in t.split()]
        wrong_people = {w for t in mentions for w in t.split() if w in world.birthplace} - {person}
        assert wrong_people, f"no document puts another person next to {company}"
    for person, city in list(world.birthplace.items())[:100]:
        wrong_cities = {w for t in text if person in t.split() for w in t.split() if w in world.country_of} - {city}
        assert wrong_cities, f"no document puts another city next to {person}"
    fact_ids = set(world.fact_doc.values())
    assert len(fact_ids) == len(world.companies) + len(world.people) + len(world.cities)
    assert not fact_ids & set(world.namesake_doc.values())
    assert len(world.documents) - len(fact_ids) >= 2 * len(world.companies) + len(world.people)


def test_splits_are_disjoint_by_the_entities_they_ask_about(splits):
    def entities(questions):  # asked entities and the founders their chains pass through
        return {e for q in questions for step in q.meta["steps"] for e in step[:1] + step[2:]
                if step[1] == "founded_by"} | {e for q in questions for e in q.meta["asked"]}

    asked = {split: entities(questions) for split, questions in splits.items()}
    for a in SPLITS:
        for b in SPLITS:
            if a < b:
                assert not asked[a] & asked[b], (a, b)


def test_split_files_have_the_search_r1_layout_and_sizes(splits):
    for split in SPLITS:
        first = json.loads((bundled_world_dir() / f"{split}.jsonl").open().readline())
        assert list(first) == ["id", "question", "golden_answers", "hops", "qtype", "meta"]
    assert len(splits["train"]) >= 2000 and 100 <= len(splits["dev"]) <= 1000 and len(splits["sft"]) >= 1000
    for split, questions in splits.items():
        assert len({q.id for q in questions}) == len(questions)
        assert set(Counter(q.qtype for q in questions)) == set(QTYPES), split
    assert Counter(q.qtype for q in splits["dev"][:60]).most_common(1)[0][1] < 30, "dev is not shuffled"
    total = sum(p.stat().st_size for p in bundled_world_dir().iterdir())
    assert total < 5 * 2**20


@pytest.mark.parametrize("kwargs, field", [(dict(n_companies=50, n_people=40), "n_people"),
                                           (dict(n_cities=5, n_countries=8), "n_cities"),
                                           (dict(n_companies=10, n_people=10), "n_companies")])
def test_bad_sizes_name_the_argument(kwargs, field):
    with pytest.raises(ValueError, match=field):
        generate_world(0, **kwargs)


def test_load_split_rejects_unknown_names():
    with pytest.raises(ValueError, match="validation"):
        load_split("validation")
