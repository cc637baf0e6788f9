"""Question-file loaders: Search-R1 / FlashRAG jsonl, json and parquet; clear errors for bad rows."""
from __future__ import annotations

import json

import pytest

from a2tgpo_lab.envs.loaders import load_questions
from a2tgpo_lab.envs.world import load_split


def write_jsonl(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_flashrag_jsonl_with_aliases_and_optional_fields(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [
        {"id": "nq_1", "question": "who wrote emma ?", "golden_answers": ["Jane Austen", "Austen"]},
        "",
        {"question": "capital of peru ?", "golden_answers": "Lima", "metadata": {"source": "x", "level": 2}},
        {"question": "two plus two ?", "answer": 4},
        {"question": "which year ?", "answers": [1815, "eighteen fifteen"], "hops": 2, "qtype": "bridge"},
    ])
    examples = load_questions(path)
    assert [e.id for e in examples] == ["nq_1", "2", "3", "4"]
    assert [e.answers for e in examples] == [("Jane Austen", "Austen"), ("Lima",), ("4",),
                                             ("1815", "eighteen fifteen")]
    assert (examples[3].hops, examples[3].qtype, examples[0].qtype) == (2, "bridge", "external")
    assert examples[1].meta["level"] == 2 and examples[1].meta["source"] == str(path)
    assert examples[1].meta["row"] == 3


def test_parquet_and_json_list(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"id": "a", "question": "q one ?", "golden_answers": ["x", "y"]},
            {"id": "b", "question": "q two ?", "golden_answers": ["z"]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    (tmp_path / "q.json").write_text(json.dumps(rows))
    for name in ("q.parquet", "q.json"):
        examples = load_questions(tmp_path / name)
        assert [(e.id, e.question, e.answers) for e in examples] == [("a", "q one ?", ("x", "y")),
                                                                     ("b", "q two ?", ("z",))]


def test_search_r1_processed_rows_read_the_reward_model_target(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "who ?", "reward_model": {
        "style": "rule", "ground_truth": {"target": ["Ada", "Ada Lovelace"]}}}])
    assert load_questions(path)[0].answers == ("Ada", "Ada Lovelace")


@pytest.mark.parametrize("row, message", [
    ({"golden_answers": ["x"]}, r"row 2: field 'question'"),
    ({"question": "  ", "golden_answers": ["x"]}, r"row 2: field 'question'"),
    ({"question": "q ?"}, r"row 2: no gold answers; add a 'golden_answers'"),
    ({"question": "q ?", "golden_answers": []}, r"row 2: field 'golden_answers' must be"),
    ({"question": "q ?", "answers": ["ok", None]}, r"row 2: field 'answers' holds None"),
    ({"question": "q ?", "answer": "x", "hops": "two"}, r"row 2: field 'hops'"),
    ({"question": "q ?", "answer": "x", "meta": [1]}, r"row 2: field 'meta'"),
    ('{"question": "q ?",', r"row 2: not valid JSON"),
    ('["q ?", "x"]', r"row 2: expected a JSON object"),
])
def test_malformed_rows_name_file_row_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"question": "fine ?", "golden_answers": ["x"]}, row])
    with pytest.raises(ValueError, match=message) as error:
        load_questions(path)
    assert str(path) in str(error.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_questions(tmp_path / "nope.jsonl")
    (tmp_path / "q.csv").write_text("question,answer\n")
    with pytest.raises(ValueError, match="unsupported suffix '.csv'"):
        load_questions(tmp_path / "q.csv")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no questions"):
        load_questions(tmp_path / "empty.jsonl")
    (tmp_path / "obj.json").write_text("{}")
    with pytest.raises(ValueError, match="must hold a list"):
        load_questions(tmp_path / "obj.json")


def test_bundled_splits_keep_hops_qtype_and_meta():
    dev = load_split("dev")
    assert all(e.id.startswith("dev-") and 1 <= e.hops <= 3 and e.qtype != "external" for e in dev)
    assert all(len(e.meta["queries"]) == e.hops for e in dev)
