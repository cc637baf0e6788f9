"""One question of a multi-turn QA task."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class QAExample:
    """A question with its gold answers.

    answers: gold aliases, best first. The IG probe scores the first alias; the outcome reward takes
        the best match over all of them (ALGORITHM.md §1-§2).
    hops: searches a careful agent needs (1-3 for the bundled task; 0 when unknown, e.g. user data).
    qtype: question family (``"founder"``, ``"birthplace"``, ``"chain2"``, ``"multi_part"`` ... or
        ``"external"`` for loaded data).
    meta: anything else (the entity chain, the source file and row ...).
    data_source: the benchmark a loaded question comes from (``"hotpotqa"``, ``"nq"`` ...; verl-style
        rows carry it); evaluation reports EM per data source, like the columns of the paper's
        Table 1. Empty for the bundled task.
    """

    id: str
    question: str
    answers: tuple[str, ...]
    hops: int = 0
    qtype: str = "external"
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    data_source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"QAExample {self.id!r}: field 'question' must be a non-empty string.")
        answers = (self.answers,) if isinstance(self.answers, str) else tuple(self.answers)
        if not answers or not all(isinstance(a, str) and a.strip() for a in answers):
            raise ValueError(f"QAExample {self.id!r}: field 'answers' must be a non-empty list of non-empty strings.")
        object.__setattr__(self, "answers", answers)
        if not isinstance(self.data_source, str):
            raise ValueError(f"QAExample {self.id!r}: field 'data_source' must be a string (got {self.data_source!r}).")
