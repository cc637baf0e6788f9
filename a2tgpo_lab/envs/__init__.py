"""The agent's world: questions with gold answers, a corpus, and the search tool over it.

Only :class:`QAExample` is imported eagerly; the rest load on first use (``bm25s`` and the bundled
files are not needed by ``import a2tgpo_lab``).
"""
from .qa import QAExample

_LAZY = {
    "SearchTool": "search", "Passage": "search", "bundled_search_tool": "search",
    "load_questions": "loaders",
    "World": "world", "generate_world": "world", "write_world": "world", "load_split": "world",
    "bundled_corpus_path": "world", "bundled_data_dir": "world", "QTYPES": "world", "SPLITS": "world",
}

__all__ = ["QAExample", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
