"""Load question files in the Search-R1 / FlashRAG layout into :class:`QAExample` lists.

One row per question, as JSON lines (``.jsonl``), a JSON list (``.json``) or parquet (``.parquet``)::

    {"id": "train_0", "question": "who wrote ... ?", "golden_answers": ["Jane Austen", "Austen"]}

- ``question``: required, a non-empty string.
- gold answers: ``golden_answers`` (FlashRAG, Search-R1), else ``answers`` or ``answer``, else
  Search-R1's processed ``reward_model.ground_truth.target``; a list or a single string (numbers
  are read as text). The first alias is the one the IG probe scores.
- ``id``: optional; when absent, the row index from 0 (for JSON lines, the line index).
- ``hops``, ``qtype``, ``meta`` (or ``metadata``): optional, kept when present (the bundled world
  writes them); ``meta`` also records the source file and row.

A malformed row raises ``ValueError`` naming the file, the row (1-based) and the field.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from .qa import QAExample

ANSWER_FIELDS = ("golden_answers", "answers", "answer")
SUFFIXES = (".jsonl", ".json", ".parquet")


def load_questions(path: str | Path) -> list[QAExample]:
    """Read a question file (``.jsonl``, ``.json`` list or ``.parquet``) into QAExamples, in file order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"Question file {path} does not exist.")
    if path.suffix not in SUFFIXES:
        raise ValueError(f"Question file {path}: unsupported suffix {path.suffix!r}; use one of {list(SUFFIXES)}.")
    examples = [_example(path, row_number, row) for row_number, row in _rows(path)]
    if not examples:
        raise ValueError(f"Question file {path} holds no questions.")
    return examples


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row) pairs; for JSON lines the row number is the line number."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        yield from enumerate(pq.read_table(path).to_pylist(), start=1)
    elif path.suffix == ".json":
        rows = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rows, list):
            raise ValueError(f"Question file {path}: a .json question file must hold a list of row objects.")
        yield from enumerate(rows, start=1)
    else:
        with open(path, encoding="utf-8") as handle:
            for line_number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    yield line_number, json.loads(line)
                except json.JSONDecodeError as error:
                    raise ValueError(f"Question file {path}, row {line_number}: not valid JSON ({error.msg}); "
                                     "each line must be one JSON object.") from None


def _example(path: Path, row_number: int, row: Any) -> QAExample:
    where = f"Question file {path}, row {row_number}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with 'question' and 'golden_answers', got "
                         f"{type(row).__name__}.")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"{where}: field 'question' must be a non-empty string (got {question!r}).")
    field_name, answers = _answers(row)
    if field_name is None:
        raise ValueError(f"{where}: no gold answers; add a 'golden_answers' field (a list of strings).")
    answers = [answers] if isinstance(answers, (str, int, float)) else answers
    if not isinstance(answers, (list, tuple)) or not answers:
        raise ValueError(f"{where}: field '{field_name}' must be a string or a non-empty list of strings.")
    aliases = []
    for alias in answers:
        if isinstance(alias, (int, float)) and not isinstance(alias, bool):
            alias = str(alias)
        if not isinstance(alias, str) or not alias.strip():
            raise ValueError(f"{where}: field '{field_name}' holds {alias!r}; every gold answer must be a "
                             "non-empty string.")
        aliases.append(alias)
    hops = row.get("hops", 0)
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 0:
        raise ValueError(f"{where}: field 'hops' must be an integer >= 0 (got {hops!r}); drop it if unknown.")
    qtype = row.get("qtype", "external")
    if not isinstance(qtype, str):
        raise ValueError(f"{where}: field 'qtype' must be a string (got {qtype!r}).")
    meta = row.get("meta", row.get("metadata")) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: field 'meta' must be an object (got {type(meta).__name__}).")
    example_id = row.get("id")
    example_id = str(row_number - 1) if example_id is None else str(example_id)
    return QAExample(example_id, question, tuple(aliases), hops=hops, qtype=qtype,
                     meta={**meta, "source": str(path), "row": row_number})


def _answers(row: dict) -> tuple[str | None, Any]:
    """(name of the field the gold answers came from, its value), or (None, None)."""
    for name in ANSWER_FIELDS:
        if row.get(name) is not None:
            return name, row[name]
    reward_model = row.get("reward_model")
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if isinstance(truth, dict) and truth.get("target") is not None:
        return "reward_model.ground_truth.target", truth["target"]
    return None, None
