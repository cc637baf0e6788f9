"""Adaptive clip factors and bounds (ALGORITHM.md §5, §9)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from a2tgpo_lab import preset
from a2tgpo_lab.advantages import compute_advantages
from a2tgpo_lab.clipping import adaptive_clip_factor, clip_bounds, turn_clip_factors
from a2tgpo_lab.info_gain import information_gain

NAN = math.nan


def by_hand(x: float, beta: float = 0.3) -> float:
    return 1 + beta * (2 / (1 + math.exp(-x)) - 1)


def test_worked_example_clip_factors(worked_example):
    ig, _, _ = information_gain(worked_example.probe_logprob_mean, worked_example.num_tool_turns)
    adv = compute_advantages(preset("a2tgpo"), ig, worked_example.outcome, worked_example.prompt_index,
                             worked_example.num_tool_turns)
    c = adaptive_clip_factor(adv.ig_norm, 0.3, worked_example.num_tool_turns)
    expected = torch.tensor([[1.1751, 1.1386, 1.0, NAN],
                             [by_hand(-1.0690), 1.0, NAN, NAN],
                             [0.9601, 0.8614, 1.0, 1.0]])   # singleton turn 3: Î = 0 → 1; answer turn: 1
    torch.testing.assert_close(c, expected, equal_nan=True, atol=1e-4, rtol=0)
    assert c[2, 0].item() == pytest.approx(by_hand(-0.2673), abs=1e-4)
    # the trainer's entry point gives the same factors for a2tgpo, and c = 1 on every turn for a fixed clip
    torch.testing.assert_close(turn_clip_factors(preset("a2tgpo"), adv.ig_norm, adv.outcome_norm,
                                                 worked_example.num_tool_turns), c, equal_nan=True)
    fixed = turn_clip_factors(preset("a2tgpo_fixed_clip"), adv.ig_norm, adv.outcome_norm,
                              worked_example.num_tool_turns)
    torch.testing.assert_close(fixed, torch.where(torch.isnan(expected), NAN, 1.0), equal_nan=True)


def test_first_turn_without_query_baseline_takes_turn_2s_factor(worked_example):
    ig, _, _ = information_gain(worked_example.probe_logprob_mean, worked_example.num_tool_turns, first_turn="none")
    cfg = preset("a2tgpo", ig_first_turn="none")
    adv = compute_advantages(cfg, ig, worked_example.outcome, worked_example.prompt_index,
                             worked_example.num_tool_turns)
    c = turn_clip_factors(cfg, adv.ig_norm, adv.outcome_norm, worked_example.num_tool_turns)
    # turn 2 group {0.40, 0.05} → Î = ±1; rollout 2 (one tool call) shares its answer turn's c = 1
    torch.testing.assert_close(c, torch.tensor([[by_hand(1.0), by_hand(1.0), 1.0, NAN],
                                                [1.0, 1.0, NAN, NAN],
                                                [by_hand(-1.0), by_hand(-1.0), 1.0, 1.0]]), equal_nan=True)


def test_answer_turn_from_outcome_and_dropped_ig():
    ig_norm = torch.tensor([[NAN, 2.0, NAN]])       # turn 1's IG was dropped
    c = adaptive_clip_factor(ig_norm, 0.2, torch.tensor([2]), outcome_norm=torch.tensor([-1.5]),
                             answer_turn="outcome")
    torch.testing.assert_close(c, torch.tensor([[1.0, by_hand(2.0, 0.2), by_hand(-1.5, 0.2)]]))


def test_clip_bounds_by_hand():
    low, high = clip_bounds(torch.tensor([[1.2, 1.0, NAN]]), 3e-3, 4e-3)
    torch.testing.assert_close(low, torch.tensor([[1 - 1.2 * 3e-3, 1 - 3e-3, NAN]]), equal_nan=True)
    torch.testing.assert_close(high, torch.tensor([[1 + 1.2 * 4e-3, 1 + 4e-3, NAN]]), equal_nan=True)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-12.0, 12.0), min_size=1, max_size=8), st.floats(0.01, 0.99))
def test_factor_strictly_inside_the_band_and_monotone(values, beta):
    ig_norm = torch.tensor([values], dtype=torch.float64)
    c = adaptive_clip_factor(ig_norm, beta, torch.tensor([len(values)]))[0]
    assert ((c > 1 - beta) & (c < 1 + beta)).all()
    order = ig_norm[0].argsort()
    assert (c[order].diff() >= 0).all()                         # more information → wider range
    low, high = clip_bounds(c, 0.2, 0.28)
    assert ((high - low)[order].diff() >= 0).all()


def test_clip_factor_carries_no_gradient():
    ig_norm = torch.tensor([[0.5, -0.3]], requires_grad=True)
    c = adaptive_clip_factor(ig_norm, 0.3, torch.tensor([2]))
    low, high = clip_bounds(c, 0.2, 0.28)
    assert not c.requires_grad and not low.requires_grad and not high.requires_grad


@pytest.mark.parametrize("kwargs, match", [
    (dict(beta=1.0), "beta"),
    (dict(beta=0.3, answer_turn="outcome"), "outcome_norm"),
    (dict(beta=0.3, answer_turn="half"), "answer_turn"),
    (dict(beta=0.3, num_tool_turns=torch.tensor([5])), "num_tool_turns"),
])
def test_bad_input(kwargs, match):
    kwargs.setdefault("num_tool_turns", torch.tensor([1]))
    with pytest.raises(ValueError, match=match):
        adaptive_clip_factor(torch.zeros(1, 2), **kwargs)
