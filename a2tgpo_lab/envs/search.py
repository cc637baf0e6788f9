"""The agent's tool: BM25 search over a corpus of ``{"id", "contents"}`` documents (the ``bm25s`` library).

For a query q and document d (Lucene's BM25, as ``bm25s`` computes it)::

    score(q, d) = Σ_{w ∈ q} IDF(w) · tf(w, d) · (k1 + 1) / (tf(w, d) + k1 · (1 − b + b · |d| / avgdl))
    IDF(w)      = log(1 + (N − df(w) + 0.5) / (df(w) + 0.5))

Words are lowercased, English stopwords dropped, and one-letter words ignored (``bm25s``'s default
tokenizer). The top ``k`` documents with a positive score come back, best first; equal scores are
ordered by corpus position, so results never depend on how a sort breaks ties. A query with no
corpus word returns nothing.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from ..errors import DataError, MissingFileError
from ..protocol import format_observation
from .jsonl import jsonl_rows


@dataclass(frozen=True)
class Passage:
    """One retrieved document and its BM25 score."""

    id: str
    contents: str
    score: float


class SearchTool:
    """BM25 retrieval returning the top ``topk`` passages; calling it gives the observation text.

    Args:
        corpus: documents, each a mapping with ``id`` (string or number) and ``contents`` (text).
        topk: passages per search (``A2TGPOConfig.retrieval_topk``).
        max_passage_words: each passage is cut to this many words in the observation, so one long
            document cannot fill the context.
        k1, b: BM25 parameters.
        stopwords: ``bm25s`` stopword list name (``"en"``) or a list of words, or ``None``.
        stemmer: optional stemmer for ``bm25s`` (e.g. a PyStemmer ``Stemmer``); none by default.
        source: how errors name the corpus (the file path when loaded with :meth:`from_jsonl`).
    """

    def __init__(self, corpus: Sequence[Mapping[str, Any]], topk: int = 2, max_passage_words: int = 40,
                 k1: float = 1.5, b: float = 0.75, stopwords: Any = "en", stemmer: Optional[Callable] = None,
                 source: str = "corpus"):
        import bm25s
        from bm25s.tokenization import Tokenizer

        if not isinstance(topk, int) or topk < 1:
            raise ValueError(f"SearchTool: topk={topk!r} must be a positive integer.")
        if not isinstance(max_passage_words, int) or max_passage_words < 1:
            raise ValueError(f"SearchTool: max_passage_words={max_passage_words!r} must be a positive integer.")
        self.ids, self.contents = _checked_documents(list(enumerate(corpus, start=1)), source)
        self.topk, self.max_passage_words = topk, max_passage_words
        self._tokenizer = Tokenizer(stopwords=stopwords, stemmer=stemmer)
        tokens = self._tokenizer.tokenize(self.contents, show_progress=False)
        self._bm25 = bm25s.BM25(k1=k1, b=b)
        self._bm25.index(tokens, show_progress=False)

    @classmethod
    def from_jsonl(cls, path: str | Path, **kwargs: Any) -> "SearchTool":
        """Build from a JSON-lines corpus file, one ``{"id": ..., "contents": ...}`` object per line."""
        path = Path(path)
        if not path.exists():
            raise MissingFileError(f"Corpus file {path} does not exist.")
        rows = list(jsonl_rows(path, "Corpus file", 'object like {"id": "d1", "contents": "..."}'))
        # Validate here, where the file's line numbers are known; the rows are then clean.
        ids, contents = _checked_documents(rows, f"Corpus file {path}")
        documents = [{"id": i, "contents": c} for i, c in zip(ids, contents)]
        return cls(documents, source=f"Corpus file {path}", **kwargs)

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, k: Optional[int] = None) -> list[Passage]:
        """The ``k`` (default ``topk``) best passages with a positive score, best first, ties by corpus order."""
        import numpy as np

        if not isinstance(query, str):
            raise TypeError(f"SearchTool.search: query must be a string, got {type(query).__name__}.")
        k = self.topk if k is None else k
        query_ids = self._tokenizer.tokenize([query], update_vocab=False, show_progress=False)[0]
        scores = self._bm25.get_scores(list(query_ids))  # [N] float32
        k = min(k, len(scores))
        # The k-th best score, then every document at least that good, sorted by (−score, position).
        threshold = np.partition(scores, len(scores) - k)[len(scores) - k]
        candidates = np.flatnonzero((scores >= threshold) & (scores > 0))
        best = candidates[np.lexsort((candidates, -scores[candidates]))][:k]
        return [Passage(self.ids[i], self.contents[i], float(scores[i])) for i in best]

    def __call__(self, query: str) -> str:
        """The observation text: the top passages, each cut to ``max_passage_words`` words, in information tags."""
        return format_observation([self.truncate(p.contents) for p in self.search(query)])

    def truncate(self, text: str) -> str:
        """``text`` cut to its first ``max_passage_words`` words."""
        return " ".join(text.split()[: self.max_passage_words])


def _checked_documents(numbered: list[tuple[int, Any]], source: str) -> tuple[list[str], list[str]]:
    """Validate (row number, row) pairs; returns (ids, contents). Errors name the source, row and field."""
    if not numbered:
        raise DataError(f"{source}: the corpus is empty; give at least one {{'id', 'contents'}} document.")
    ids, contents, seen = [], [], {}
    for row_number, row in numbered:
        where = f"{source}, row {row_number}"
        if not isinstance(row, Mapping):
            raise DataError(f"{where}: expected an object with 'id' and 'contents', got {type(row).__name__}.")
        doc_id, text = row.get("id"), row.get("contents")
        if doc_id is None or isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or str(doc_id) == "":
            raise DataError(f"{where}: field 'id' must be a non-empty string or integer (got {doc_id!r}).")
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: field 'contents' must be a non-empty string (got {text!r}); FlashRAG-style "
                             "corpora keep the title and text together in 'contents'.")
        doc_id = str(doc_id)
        if doc_id in seen:
            raise DataError(f"{where}: field 'id' repeats {doc_id!r} from row {seen[doc_id]}; ids must be unique.")
        seen[doc_id] = row_number
        ids.append(doc_id)
        contents.append(" ".join(text.split()))
    return ids, contents


@functools.lru_cache(maxsize=8)
def bundled_search_tool(topk: int = 2, max_passage_words: int = 40) -> SearchTool:
    """The search tool over the bundled world's corpus (built once per setting, then shared)."""
    from .world import bundled_corpus_path

    return SearchTool.from_jsonl(bundled_corpus_path(), topk=topk, max_passage_words=max_passage_words)
