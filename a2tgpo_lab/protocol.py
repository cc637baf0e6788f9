"""The agent's text protocol: how a turn calls the search tool, how it answers, how results come back.

We use Search-R1-style tags rather than a model family's native tool-call JSON, because the tags work
with every chat model (the bundled tiny one included) and a parse failure is easy to see:

    assistant:  <search> founder of Velmora </search>
    user:       <information> Doc 1 : Velmora was founded by Tarsk . Doc 2 : ... </information>
    assistant:  <search> Tarsk born </search>
    user:       <information> ... </information>
    assistant:  I have enough information to answer . <answer> Oslund </answer>

One assistant turn holds exactly one action. Anything else (no tag, unbalanced tags, both tags, an
empty query) is ``malformed``: the rollout ends there and the turn is penalised with the format
penalty; it is never an exception.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal, Sequence

SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
TAGS = (SEARCH_OPEN, SEARCH_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, INFO_OPEN, INFO_CLOSE)

SYSTEM_PROMPT = (
    "Answer the question . To look something up write <search> query </search> and read the "
    "<information> that comes back . When you know the answer write <answer> answer </answer> ."
)

# The teacher-forced line the IG probe puts before the gold answer (ALGORITHM.md §1). The bundled
# tiny model's demonstrations use the same line before every answer, so the probe is in-distribution.
PROBE_PREFIX = "I have enough information to answer ."

# Separator between the parts of a multi-part answer ("Tarsk ; Oslund").
ANSWER_PART_SEPARATOR = ";"

ActionKind = Literal["search", "answer", "malformed"]


@dataclass(frozen=True)
class Action:
    """What one assistant turn asked for. ``content`` is the query, the answer, or why it is malformed."""

    kind: ActionKind
    content: str


_SEARCH_RE = re.compile(re.escape(SEARCH_OPEN) + r"(.*?)" + re.escape(SEARCH_CLOSE), re.S)
_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.S)


def parse_action(turn_text: str) -> Action:
    """Parse one assistant turn into a search, an answer, or a malformed action (never raises)."""
    counts = {tag: turn_text.count(tag) for tag in (SEARCH_OPEN, SEARCH_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)}
    n_search, n_answer = counts[SEARCH_OPEN], counts[ANSWER_OPEN]
    if counts[SEARCH_OPEN] != counts[SEARCH_CLOSE] or counts[ANSWER_OPEN] != counts[ANSWER_CLOSE]:
        return Action("malformed", "unbalanced tags")
    if n_search + n_answer == 0:
        return Action("malformed", "no <search> or <answer> tag")
    if n_search + n_answer > 1:
        return Action("malformed", "more than one action in one turn")
    regex = _SEARCH_RE if n_search else _ANSWER_RE
    match = regex.search(turn_text)
    if match is None:
        return Action("malformed", "closing tag before opening tag")
    content = " ".join(match.group(1).split())
    if not content:
        return Action("malformed", "empty " + ("query" if n_search else "answer"))
    return Action("search" if n_search else "answer", content)


def format_observation(passages: Sequence[str]) -> str:
    """The text of a tool observation: the retrieved passages, numbered, inside information tags."""
    body = " ".join(f"Doc {i} : {p}" for i, p in enumerate(passages, start=1))
    return f"{INFO_OPEN} {body} {INFO_CLOSE}"


def format_search(query: str) -> str:
    """An assistant turn that searches for ``query`` (used by demonstrations and tests)."""
    return f"{SEARCH_OPEN} {query} {SEARCH_CLOSE}"


def format_answer(answer: str, with_probe_prefix: bool = True) -> str:
    """An assistant turn that answers; the probe prefix line is what the IG probe teacher-forces."""
    prefix = PROBE_PREFIX + " " if with_probe_prefix else ""
    return f"{prefix}{ANSWER_OPEN} {answer} {ANSWER_CLOSE}"


def protocol_words() -> list[str]:
    """Every word of the protocol text, so a word-level tokenizer can cover it."""
    text = " ".join([SYSTEM_PROMPT, PROBE_PREFIX, format_observation(["x"]), "Doc 1 2 3 4 5 6 7 8 9 10",
                     ANSWER_PART_SEPARATOR])
    return sorted(set(text.split()) - set(TAGS) - {"x"})
