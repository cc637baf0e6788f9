"""The outcome reward (ALGORITHM.md §2): did the final answer match a gold alias?

    r_i = format_penalty                     if the rollout is malformed or gave no answer
        = max over aliases g of EM(a_i, g)   (default, 1 or 0)
        = max over aliases g of F1(a_i, g)   (knob ``reward_fn="f1"``, IGPO's training reward)

Answers are compared after SQuAD-style normalization: lowercase, punctuation removed, the articles
"a" / "an" / "the" removed, whitespace collapsed.

Multi-part answers ("Tarsk ; Oslund", parts joined by ``protocol.ANSWER_PART_SEPARATOR``) are
compared part by part *as a set*: the string is split on the separator first, each part is
normalized, empty parts are dropped, and the parts are sorted. So "Oslund ; Tarsk" matches
"Tarsk ; Oslund", while "Tarsk Oslund" (no separator) does not. A gold alias that contains the
separator character for another reason would be split too; the bundled task never does that.
"""
from __future__ import annotations

import re
import string
from collections import Counter
from typing import Optional, Sequence

from .config import REWARD_FNS
from .protocol import ANSWER_PART_SEPARATOR

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, drop punctuation and the articles a/an/the, collapse whitespace.

    ``normalize_answer("The  Velmora, Inc.") == "velmora inc"``. The part separator ";" is
    punctuation and disappears here; use :func:`answer_parts` to compare multi-part answers.
    """
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_parts(text: str) -> tuple[str, ...]:
    """The normalized, non-empty parts of an answer, sorted (order-insensitive comparison).

    ``answer_parts("Oslund ; the Tarsk") == ("oslund", "tarsk")``; a one-part answer gives a 1-tuple.
    """
    parts = (normalize_answer(part) for part in text.split(ANSWER_PART_SEPARATOR))
    return tuple(sorted(part for part in parts if part))


def _check_golds(golds: Sequence[str]) -> list[str]:
    golds = [golds] if isinstance(golds, str) else list(golds)
    if not golds or not all(isinstance(g, str) for g in golds):
        raise ValueError(f"golds={golds!r} must be a non-empty list of gold answer strings (aliases).")
    return golds


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 if the prediction's parts equal some alias's parts after normalization, else 0.0."""
    predicted = answer_parts(prediction)
    return float(any(predicted == answer_parts(gold) for gold in _check_golds(golds)))


def _token_f1(prediction: str, gold: str) -> float:
    """F1 = 2·P·R / (P + R) over the normalized words, counted with multiplicity.

    Counting with multiplicity (a bag, as in SQuAD) equals the word-set F1 when no word repeats, and
    stops a policy from gaining recall by repeating a word. Two answers that normalize to nothing
    score 1 if both are empty, else 0.
    """
    predicted, expected = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not predicted or not expected:
        return float(predicted == expected)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, golds: Sequence[str]) -> float:
    """Best word-level F1 of the prediction over the gold aliases (part order does not matter)."""
    return max(_token_f1(prediction, gold) for gold in _check_golds(golds))


def outcome_reward(final_answer: Optional[str], golds: Sequence[str], malformed: bool, reward_fn: str = "em",
                   format_penalty: float = -1.0) -> float:
    """The outcome reward r_i of one rollout (see the module docstring for the equation).

    Args:
        final_answer: the parsed answer text, or None if the rollout never answered.
        golds: gold aliases; the best one counts.
        malformed: the rollout ended on a malformed turn (unbalanced tags, no action, a search past
            the turn cap): it gets ``format_penalty`` whatever it answered.
        reward_fn: ``"em"`` (1/0) or ``"f1"`` (in [0, 1]).
        format_penalty: reward of a malformed or unanswered rollout (default −1; IGPO used −2).
    """
    if reward_fn not in REWARD_FNS:
        raise ValueError(f"reward_fn={reward_fn!r} is not valid; choose one of {list(REWARD_FNS)}.")
    golds = _check_golds(golds)
    if malformed or final_answer is None:
        return float(format_penalty)
    score = exact_match if reward_fn == "em" else f1_score
    return score(final_answer, golds)
