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


# ----------------------------------------------------------------------------- verl-style rows (the paper's stack)
SPLIT = "<|answer_split|>"


def verl_row(question, truth, source="hotpotqa", index=0, system=None):
    prompt = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    return {"data_source": source, "prompt": prompt, "ability": "fact-reasoning",
            "reward_model": {"ground_truth": truth, "style": "rule"}, "extra_info": {"index": index, "split": "test"}}


VERL_ROWS = [
    verl_row("who wrote emma?", f"Jane Austen{SPLIT}Austen", "nq", 10),
    verl_row("capital of peru?", ["Lima", "Lima, Peru"], "triviaqa", 11, system="You are helpful."),
    verl_row("which river is longer?", {"target": ["Nile"]}, "2wikimultihopqa", 12),
    verl_row("Answer the question. Search with <search> q </search> and answer with <answer> a </answer>. "
             "Question: who painted the mona lisa?", "Leonardo da Vinci", "bamboogle", 13),
]
EXPECTED = [("10", "who wrote emma?", ("Jane Austen", "Austen"), "nq"),
            ("11", "capital of peru?", ("Lima", "Lima, Peru"), "triviaqa"),
            ("12", "which river is longer?", ("Nile",), "2wikimultihopqa"),
            ("13", "who painted the mona lisa?", ("Leonardo da Vinci",), "bamboogle")]


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_verl_rows_every_ground_truth_variant(tmp_path, suffix):
    """A parquet table needs one type per column, so each ground-truth variant gets its own file there."""
    for n, (row, expected) in enumerate(zip(VERL_ROWS, EXPECTED)):
        path = tmp_path / f"q{n}{suffix}"
        write_jsonl(path, [row]) if suffix == ".jsonl" else write_parquet(path, [row])
        [example] = load_questions(path)
        assert (example.id, example.question, example.answers, example.data_source) == expected
        assert example.meta["ability"] == "fact-reasoning" and example.meta["extra_info"]["split"] == "test"
        assert example.meta["prompt"][-1]["role"] == "user"


def test_verl_parquet_of_several_benchmarks(tmp_path):
    sources = ["hotpotqa", "2wikimultihopqa", "musique", "bamboogle", "nq", "triviaqa", "popqa"]
    rows = [verl_row(f"question {i} from {s}?", f"answer {i}{SPLIT}alias {i}", s, i) for i, s in enumerate(sources)]
    examples = load_questions(write_parquet(tmp_path / "test.parquet", rows))
    assert [e.data_source for e in examples] == sources
    assert examples[2].answers == ("answer 2", "alias 2") and examples[2].question == "question 2 from musique?"


def test_question_field_wins_over_the_templated_prompt(tmp_path):
    """Search-R1's processed rows keep the raw question next to the templated prompt."""
    row = {**verl_row("Answer ... <answer> x </answer>. Question: q?", ["x"]), "question": "raw question?"}
    assert load_questions(write_jsonl(tmp_path / "q.jsonl", [row]))[0].question == "raw question?"
    row = verl_row("Answer ... Question: q?", ["x"])
    row["extra_info"]["question"] = "from extra info?"
    assert load_questions(write_jsonl(tmp_path / "q.jsonl", [row]))[0].question == "from extra info?"
    plain = verl_row("Question: is this kept whole? (no protocol instruction before it)", ["yes"])
    assert load_questions(write_jsonl(tmp_path / "q.jsonl", [plain]))[0].question.startswith("Question: is this")


@pytest.mark.parametrize("row, message", [
    ({**verl_row("q?", ["x"]), "prompt": "q?"}, r"row 2: field 'prompt' must be a list"),
    ({**verl_row("q?", ["x"]), "prompt": [{"role": "system", "content": "s"}]}, r"row 2: field 'prompt' has no "
                                                                                 r"message with role 'user'"),
    ({**verl_row("q?", ["x"]), "prompt": [{"role": "user", "content": ""}]}, r"row 2: field 'prompt' ends with"),
    (verl_row("q?", f"x{SPLIT}"), r"row 2: field 'reward_model.ground_truth' holds ''"),
    (verl_row("q?", {"target": []}), r"row 2: field 'reward_model.ground_truth.target' must be"),
    (verl_row("q?", {"other": ["x"]}), r"row 2: no gold answers"),
    (verl_row("q?", [None]), r"row 2: field 'reward_model.ground_truth' holds None"),
    ({**verl_row("q?", ["x"]), "data_source": 3}, r"row 2: field 'data_source' must be a string"),
])
def test_malformed_verl_rows_name_file_row_and_field(tmp_path, row, message):
    path = write_jsonl(tmp_path / "bad.jsonl", [verl_row("fine?", ["x"]), row])
    with pytest.raises(ValueError, match=message) as error:
        load_questions(path)
    assert str(path) in str(error.value)


def test_undecodable_files_name_file_and_row(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(b'{"question": "fine ?", "answer": "x"}\n{"question": "caf\xe9 ?", "answer": "x"}\n')
    with pytest.raises(ValueError, match=r"latin1.jsonl, row 2: not UTF-8"):
        load_questions(path)
    path = tmp_path / "latin1.json"
    path.write_bytes(b'[{"question": "caf\xe9 ?", "answer": "x"}]')
    with pytest.raises(ValueError, match=r"latin1.json: not UTF-8"):
        load_questions(path)
    path = tmp_path / "broken.json"
    path.write_text('[{"question": "q ?", "answer": "x"},\n {"question": }]')
    with pytest.raises(ValueError, match=r"broken.json, line 2: not valid JSON"):
        load_questions(path)
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(ValueError, match=r"broken.parquet: not a readable parquet file"):
        load_questions(path)


def test_evaluation_reports_em_per_data_source():
    from a2tgpo_lab.evaluation import summarize_eval

    rows = [{"hops": 0, "qtype": "external", "data_source": source, "em": em, "f1": em, "turns": 2, "searches": 1,
             "format_error": 0.0} for source, em in [("nq", 1.0), ("nq", 0.0), ("hotpotqa", 1.0), ("", 0.0)]]
    metrics = summarize_eval(rows)
    assert metrics["eval/em/source_nq"] == 0.5 and metrics["eval/em/source_hotpotqa"] == 1.0
    assert metrics["eval/em"] == 0.5 and not any(key.endswith("source_") for key in metrics)


def test_eval_dataset_is_evaluated_whole_and_dataset_trains_whole(tmp_path):
    from a2tgpo_lab import A2TGPOConfig
    from a2tgpo_lab.trainer import _resolve_examples

    train = write_parquet(tmp_path / "train.parquet", [verl_row(f"t{i}?", ["x"], "nq", i) for i in range(20)])
    test = write_parquet(tmp_path / "test.parquet", [verl_row(f"e{i}?", ["y"], "popqa", i) for i in range(5)])
    held_out = _resolve_examples(A2TGPOConfig(dataset=str(train)), None, None)
    assert [len(part) for part in held_out] == [18, 2]
    training, evaluation = _resolve_examples(A2TGPOConfig(dataset=str(train), eval_dataset=str(test)), None, None)
    assert len(training) == 20 and [e.question for e in evaluation] == [f"e{i}?" for i in range(5)]
    assert {e.data_source for e in evaluation} == {"popqa"}
