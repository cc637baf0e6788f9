"""Load question files into :class:`QAExample` lists: FlashRAG / Search-R1 rows and verl-style RL rows.

One row per question, as JSON lines (``.jsonl``), a JSON list (``.json``) or parquet (``.parquet``),
in either of two layouts (or a mix of them).

FlashRAG / Search-R1 question files::

    {"id": "train_0", "question": "who wrote ... ?", "golden_answers": ["Jane Austen", "Austen"]}

verl-style rows, what the paper's training stack (a verl fork, like Search-R1's processed data) reads::

    {"data_source": "hotpotqa",
     "prompt": [{"role": "user", "content": "<question>"}],
     "ability": "multihop-qa",
     "reward_model": {"style": "rule", "ground_truth": ...},
     "extra_info": {"index": 0, "split": "test"}}

The question:
    ``question`` if the row has it, else ``extra_info.question``, else the content of the last
    ``user`` message of ``prompt``. A prompt built from an instruction template ("Answer the given
    question ... <answer> ... Question: <question>") is cut after its last ``Question:`` when the text
    before it mentions a protocol tag: the instruction belongs to the protocol (``A2TGPOConfig.protocol``
    writes its own), the question is what follows. The full prompt is kept in ``meta["prompt"]``.

The gold answers (the first alias is the one the IG probe scores; the reward takes the best one):
    ``golden_answers`` (FlashRAG, Search-R1), else ``answers`` or ``answer``, else
    ``reward_model.ground_truth``, which may be a list of strings, ``{"target": [...]}`` (Search-R1),
    or one string holding several aliases joined by a separator (``answer_separator``, default
    ``<|answer_split|>``). A single string or number is one alias; numbers are read as text.

Other fields:
    ``data_source`` (optional string) is kept in ``QAExample.data_source``: evaluation reports EM per
    data source. ``id``: optional; else ``extra_info.index``; else the row index from 0 (for JSON lines,
    the line index). ``hops``, ``qtype``, ``meta`` (or ``metadata``): optional, kept when present (the
    bundled world writes them); ``meta`` also records the source file and row, and for verl rows
    ``ability``, ``extra_info`` and ``prompt``.

A malformed row raises :class:`~a2tgpo_lab.errors.DataError` (a ``ValueError``) naming the file, the row
(1-based; the line for JSON lines) and the field; so does a file that is not UTF-8 or not valid JSON.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

from ..errors import DataError, MissingFileError
from .jsonl import jsonl_rows
from .qa import QAExample

ANSWER_FIELDS = ("golden_answers", "answers", "answer")
ANSWER_SPLIT = "<|answer_split|>"
SUFFIXES = (".jsonl", ".json", ".parquet")
QUESTION_MARKER = "Question:"
_PROTOCOL_TAGS = ("<answer>", "<search>", "<think>", "<tool_call>")


def load_questions(path: str | Path, answer_separator: str = ANSWER_SPLIT) -> list[QAExample]:
    """Read a question file (``.jsonl``, ``.json`` list or ``.parquet``) into QAExamples, in file order.

    ``answer_separator``: what joins several aliases inside one ``ground_truth`` string.
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"Question file {path} does not exist.")
    if path.suffix not in SUFFIXES:
        raise DataError(f"Question file {path}: unsupported suffix {path.suffix!r}; use one of {list(SUFFIXES)}.")
    examples = [_example(path, row_number, row, answer_separator) for row_number, row in _rows(path)]
    if not examples:
        raise DataError(f"Question file {path} holds no questions.")
    return examples


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """(1-based row number, row) pairs; for JSON lines the row number is the line number."""
    if path.suffix == ".parquet":
        yield from enumerate(_parquet_rows(path), start=1)
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as error:
            raise DataError(f"Question file {path}: not UTF-8 text (byte {error.start}); save it as UTF-8.") from None
        except json.JSONDecodeError as error:
            raise DataError(f"Question file {path}, line {error.lineno}: not valid JSON ({error.msg}).") from None
        if not isinstance(rows, list):
            raise DataError(f"Question file {path}: a .json question file must hold a list of row objects.")
        yield from enumerate(rows, start=1)
    else:
        yield from jsonl_rows(path, "Question file", "JSON object")


def _parquet_rows(path: Path) -> list[dict]:
    try:
        import pyarrow.parquet as pq
    except ImportError as error:
        raise DataError(f"Question file {path}: reading parquet needs pyarrow (`pip install a2tgpo_lab[data]`).") \
            from error
    try:
        return pq.read_table(path).to_pylist()
    except Exception as error:  # pyarrow raises its own ArrowInvalid / OSError kinds for a damaged file
        raise DataError(f"Question file {path}: not a readable parquet file ({error}).") from None


def _example(path: Path, row_number: int, row: Any, separator: str) -> QAExample:
    where = f"Question file {path}, row {row_number}"
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object with 'question' and 'golden_answers' (or verl's "
                        f"'prompt' and 'reward_model'), got {type(row).__name__}.")
    question, meta = _question(row, where)
    field_name, answers = _answers(row, separator)
    if field_name is None:
        raise DataError(f"{where}: no gold answers; add a 'golden_answers' field (a list of strings) or "
                        "'reward_model': {'ground_truth': ...}.")
    answers = [answers] if isinstance(answers, (str, int, float)) else answers
    if not isinstance(answers, (list, tuple)) or not answers:
        raise DataError(f"{where}: field '{field_name}' must be a string or a non-empty list of strings.")
    aliases = []
    for alias in answers:
        if isinstance(alias, (int, float)) and not isinstance(alias, bool):
            alias = str(alias)
        if not isinstance(alias, str) or not alias.strip():
            raise DataError(f"{where}: field '{field_name}' holds {alias!r}; every gold answer must be a "
                            "non-empty string.")
        aliases.append(alias.strip())
    hops = row.get("hops", 0)
    if not isinstance(hops, int) or isinstance(hops, bool) or hops < 0:
        raise DataError(f"{where}: field 'hops' must be an integer >= 0 (got {hops!r}); drop it if unknown.")
    qtype = row.get("qtype", "external")
    if not isinstance(qtype, str):
        raise DataError(f"{where}: field 'qtype' must be a string (got {qtype!r}).")
    data_source = row.get("data_source") or ""
    if not isinstance(data_source, str):
        raise DataError(f"{where}: field 'data_source' must be a string (got {data_source!r}).")
    given_meta = row.get("meta", row.get("metadata")) or {}
    if not isinstance(given_meta, dict):
        raise DataError(f"{where}: field 'meta' must be an object (got {type(given_meta).__name__}).")
    extra = row.get("extra_info") if isinstance(row.get("extra_info"), dict) else {}
    example_id = row.get("id", extra.get("index"))
    example_id = str(row_number - 1) if example_id is None else str(example_id)
    for name in ("ability", "extra_info"):
        if row.get(name) is not None:
            meta[name] = row[name]
    return QAExample(example_id, question, tuple(aliases), hops=hops, qtype=qtype, data_source=data_source,
                     meta={**given_meta, **meta, "source": str(path), "row": row_number})


def _question(row: dict, where: str) -> tuple[str, dict]:
    """(the question, meta entries): from ``question``, ``extra_info.question`` or the prompt's last user message."""
    extra = row.get("extra_info")
    for name, value in (("question", row.get("question")),
                        ("extra_info.question", extra.get("question") if isinstance(extra, dict) else None)):
        if value is not None:
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: field '{name}' must be a non-empty string (got {value!r}).")
            return value.strip(), {}
    prompt = row.get("prompt")
    if prompt is None:
        raise DataError(f"{where}: field 'question' must be a non-empty string (got None); verl-style rows "
                        "give it as 'prompt': [{'role': 'user', 'content': ...}].")
    if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
        raise DataError(f"{where}: field 'prompt' must be a list of {{'role', 'content'}} messages "
                        f"(got {type(prompt).__name__}).")
    users = [m.get("content") for m in prompt if m.get("role") == "user"]
    if not users:
        raise DataError(f"{where}: field 'prompt' has no message with role 'user' to take the question from.")
    content = users[-1]
    if not isinstance(content, str) or not content.strip():
        raise DataError(f"{where}: field 'prompt' ends with a user message whose 'content' is not a non-empty "
                        f"string (got {content!r}).")
    return strip_instruction(content), {"prompt": prompt}


def strip_instruction(content: str) -> str:
    """The question inside a templated user message: the text after the last ``Question:`` when the
    text before it is a protocol instruction (mentions a tag such as ``<answer>``); else all of it."""
    instruction, marker, question = content.rpartition(QUESTION_MARKER)
    if marker and question.strip() and any(tag in instruction for tag in _PROTOCOL_TAGS):
        return question.strip()
    return content.strip()


def _answers(row: dict, separator: str) -> tuple[str | None, Any]:
    """(name of the field the gold answers came from, its value), or (None, None)."""
    for name in ANSWER_FIELDS:
        if row.get(name) is not None:
            return name, _split(row[name], separator)
    reward_model = row.get("reward_model")
    truth = reward_model.get("ground_truth") if isinstance(reward_model, dict) else None
    if isinstance(truth, dict):
        if truth.get("target") is None:
            return None, None
        return "reward_model.ground_truth.target", _split(truth["target"], separator)
    if truth is not None:
        return "reward_model.ground_truth", _split(truth, separator)
    return None, None


def _split(value: Any, separator: str) -> Any:
    """A string of aliases joined by ``separator`` becomes a list; anything else is returned as is."""
    if isinstance(value, str) and separator and separator in value:
        return value.split(separator)
    return value
