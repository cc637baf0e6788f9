"""The agent's world: questions with gold answers, a corpus, and the search tool over it."""
from .qa import QAExample

__all__ = ["QAExample"]
