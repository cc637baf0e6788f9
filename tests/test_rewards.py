"""Outcome reward (ALGORITHM.md §2): normalization, EM, F1, multi-part answers, format penalty."""
from __future__ import annotations

import pytest

from a2tgpo_lab.rewards import answer_parts, exact_match, f1_score, normalize_answer, outcome_reward


@pytest.mark.parametrize("raw, expected", [
    ("The Velmora", "velmora"),
    ("  An   apple, a day!  ", "apple day"),
    ("Oslund.", "oslund"),
    ("theater", "theater"),            # articles only as whole words
    ("", ""),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw) == expected


def test_exact_match_takes_the_best_alias():
    assert exact_match("the Oslund", ["Nowhere", "Oslund"]) == 1.0
    assert exact_match("Oslund", ["Nowhere"]) == 0.0
    assert exact_match("Oslund", "oslund") == 1.0      # a single gold string is accepted


def test_multi_part_answers_compare_as_a_set_of_parts():
    assert answer_parts("Oslund ; the Tarsk") == ("oslund", "tarsk")
    assert exact_match("Oslund ; Tarsk", ["Tarsk ; Oslund"]) == 1.0
    assert exact_match("Tarsk Oslund", ["Tarsk ; Oslund"]) == 0.0     # the separator matters for EM
    assert exact_match("Tarsk", ["Tarsk ; Oslund"]) == 0.0
    assert exact_match("Tarsk ; Oslund ;", ["Tarsk ; Oslund"]) == 1.0  # an empty part is ignored


def test_f1_by_hand():
    # pred {velmora, was, founded}, gold {velmora}: P = 1/3, R = 1 -> F1 = 2·(1/3)/(4/3) = 0.5
    assert f1_score("Velmora was founded", ["Velmora"]) == pytest.approx(0.5)
    # pred {tarsk, oslund} vs gold {tarsk, oslund, ria}: P = 1, R = 2/3 -> 0.8; best alias wins
    assert f1_score("Tarsk ; Oslund", ["nope", "Tarsk ; Oslund ; Ria"]) == pytest.approx(0.8)
    assert f1_score("Oslund Oslund", ["Oslund"]) == pytest.approx(2 * 0.5 * 1 / 1.5)  # repeats do not help
    assert f1_score("nothing", ["Oslund"]) == 0.0
    assert f1_score("the", ["a"]) == 1.0               # both normalize to nothing


@pytest.mark.parametrize("final, malformed, fn, expected", [
    ("Oslund", False, "em", 1.0),
    ("Tarsk", False, "em", 0.0),
    ("Oslund", True, "em", -1.0),       # malformed wins over a right answer
    (None, False, "em", -1.0),
    ("Oslund city", False, "f1", pytest.approx(2 / 3)),
])
def test_outcome_reward(final, malformed, fn, expected):
    assert outcome_reward(final, ["Oslund"], malformed, reward_fn=fn) == expected


def test_outcome_reward_format_penalty_and_bad_input():
    assert outcome_reward(None, ["x"], False, format_penalty=-2.0) == -2.0
    with pytest.raises(ValueError, match="reward_fn"):
        outcome_reward("x", ["x"], False, reward_fn="bleu")
    with pytest.raises(ValueError, match="golds"):
        outcome_reward("x", [], False)
