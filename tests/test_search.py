"""BM25 search: the exact-fact query finds the fact, ties are deterministic, bad corpora give clear errors."""
from __future__ import annotations

import json
import re

import pytest

from a2tgpo_lab.envs.search import Passage, SearchTool, bundled_search_tool
from a2tgpo_lab.envs.world import QUERY_TEMPLATES, generate_world, load_split
from a2tgpo_lab.protocol import ANSWER_PART_SEPARATOR, format_observation


@pytest.fixture(scope="module")
def world():
    return generate_world(0)


@pytest.fixture(scope="module")
def tool():
    return bundled_search_tool(topk=2)


def test_exact_fact_query_ranks_the_fact_first_for_every_fact(world, tool):
    contents = {d["id"]: d["contents"] for d in world.documents}
    for key, doc_id in world.fact_doc.items():
        subject, relation = key.split("|")
        hits = tool.search(QUERY_TEMPLATES[relation].format(subject))
        assert [h.id for h in hits][:1] == [doc_id], (key, hits)
        assert hits[0].contents == contents[doc_id] and hits[0].score > hits[1].score > 0


def _first_doc_object(observation: str) -> str:
    """The last word before the final '.' of Doc 1 in an observation (the fact's object)."""
    doc1 = re.search(r"Doc 1 : (.*?) \.", observation).group(1)
    return doc1.split()[-1]


def test_an_agent_reading_only_observations_answers_every_dev_question(tool):
    for q in load_split("dev"):
        relations = [relation for _, relation, _ in q.meta["steps"]]
        if q.qtype in ("multi_part", "comparison"):  # two independent lookups, one per asked entity
            found = [_first_doc_object(tool(QUERY_TEMPLATES[r].format(e))) for r, e in zip(relations, q.meta["asked"])]
        else:  # a chain: each query names what the previous observation revealed
            found = [q.meta["asked"][0]]
            for relation in relations:
                found.append(_first_doc_object(tool(QUERY_TEMPLATES[relation].format(found[-1]))))
            found = found[1:]
        if q.qtype == "multi_part":
            answer = f" {ANSWER_PART_SEPARATOR} ".join(found)
        elif q.qtype == "comparison":
            answer = "yes" if found[0] == found[1] else "no"
        else:
            answer = found[-1]
        assert answer == q.answers[0], q


def test_careless_query_returns_distractors(world, tool):
    company = world.companies[0]
    hits = tool.search(company)
    assert len(hits) == 2 and any(h.id != world.fact_doc[f"{company}|founded_by"] for h in hits)
    wrong = [h for h in hits if world.founder[company] not in h.contents.split()]
    assert wrong, "a bare entity query should surface documents without the asked fact"


def test_ties_are_broken_by_corpus_position():
    docs = [{"id": name, "contents": "alpha beta"} for name in ("c", "a", "b")] + [{"id": "z", "contents": "gamma"}]
    assert [p.id for p in SearchTool(docs, topk=3).search("alpha")] == ["c", "a", "b"]
    assert [p.id for p in SearchTool(docs[::-1], topk=3).search("alpha")] == ["b", "a", "c"]
    tool = SearchTool(docs, topk=2)
    assert [p.id for p in tool.search("alpha")] == ["c", "a"]
    assert [p.id for p in tool.search("alpha gamma", k=4)] == ["z", "c", "a", "b"]


def test_call_formats_the_observation_and_truncates_passages():
    long_text = " ".join(f"w{i}" for i in range(100))
    tool = SearchTool([{"id": 1, "contents": long_text}, {"id": 2, "contents": "short w3 text"}], topk=2,
                      max_passage_words=5)
    hits = tool.search("w3")
    assert all(isinstance(h, Passage) for h in hits) and [h.id for h in hits] == ["2", "1"]
    assert tool("w3") == format_observation(["short w3 text", "w0 w1 w2 w3 w4"])
    assert tool.search("unknownword") == [] and tool("unknownword") == format_observation([])


def test_from_jsonl_reads_a_user_corpus(tmp_path):
    path = tmp_path / "corpus.jsonl"
    rows = [{"id": "d1", "contents": "\"Ada\"\nAda wrote programs ."}, {"id": 7, "contents": "Bob cooks ."}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    tool = SearchTool.from_jsonl(path, topk=1)
    assert len(tool) == 2 and tool.search("programs")[0].id == "d1" and tool.search("cooks")[0].id == "7"


@pytest.mark.parametrize("lines, message", [
    (['{"id": "a", "contents": "x y"}', '{"id": "b"}'], r"row 2: field 'contents'"),
    (['{"id": "a", "contents": "x y"}', '', '{"contents": "z"}'], r"row 3: field 'id'"),
    (['{"id": "a", "contents": "x y"}', '{"id": "a", "contents": "z"}'], r"row 2: field 'id' repeats 'a' from row 1"),
    (['{"id": "a", "contents": "x y"', ], r"row 1: not valid JSON"),
    (['["a", "x y"]'], r"row 1: expected an object"),
    ([''], r"corpus is empty"),
])
def test_malformed_corpus_rows_name_file_row_and_field(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message) as error:
        SearchTool.from_jsonl(path)
    assert str(path) in str(error.value)


def test_bad_arguments_are_reported():
    docs = [{"id": "a", "contents": "x y"}]
    with pytest.raises(ValueError, match="topk"):
        SearchTool(docs, topk=0)
    with pytest.raises(ValueError, match="max_passage_words"):
        SearchTool(docs, max_passage_words=0)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        SearchTool.from_jsonl("missing.jsonl")
