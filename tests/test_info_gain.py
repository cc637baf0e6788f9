"""Information gain from probe scores (ALGORITHM.md §1), checked against §9 by hand."""
from __future__ import annotations

import math

import pytest
import torch

from a2tgpo_lab.info_gain import information_gain, search_context_ends

NAN = math.nan


def test_worked_example_prob_mode(worked_example):
    ig, p, dropped = information_gain(worked_example.probe_logprob_mean, worked_example.num_tool_turns)
    expected = torch.tensor([[0.20, 0.40, NAN, NAN], [0.05, NAN, NAN, NAN], [0.10, 0.05, 0.35, NAN]])
    torch.testing.assert_close(ig, expected, equal_nan=True, atol=1e-6, rtol=0)
    torch.testing.assert_close(p, worked_example.p, equal_nan=True, atol=1e-6, rtol=0)
    assert dropped == 0


def test_logprob_mode_is_the_difference_of_log_probabilities(worked_example):
    ig, _, _ = information_gain(worked_example.probe_logprob_mean, worked_example.num_tool_turns, mode="logprob")
    assert ig[0, 0].item() == pytest.approx(math.log(0.30 / 0.10), abs=1e-5)
    assert ig[0, 1].item() == pytest.approx(math.log(0.70 / 0.30), abs=1e-5)
    assert ig[2, 2].item() == pytest.approx(math.log(0.60 / 0.25), abs=1e-5)
    assert torch.isnan(ig[1, 1:]).all()


def test_without_query_baseline_turn_1_has_no_ig(worked_example):
    ig, _, dropped = information_gain(worked_example.probe_logprob_mean, worked_example.num_tool_turns,
                                      mode="logprob", first_turn="none")
    assert torch.isnan(ig[:, 0]).all() and dropped == 0            # not a dropped term: there is none
    assert ig[0, 1].item() == pytest.approx(math.log(0.70 / 0.30), abs=1e-5)
    assert ig[2, 2].item() == pytest.approx(math.log(0.60 / 0.25), abs=1e-5)
    with pytest.raises(ValueError, match="first_turn"):
        information_gain(worked_example.probe_logprob_mean, worked_example.num_tool_turns, first_turn="first")


def test_columns_past_the_last_tool_turn_are_ignored():
    # Garbage after K_i must not leak into IG or p.
    scores = torch.tensor([[-1.0, -0.5, 3.0], [-2.0, 7.0, 9.0]])
    ig, p, dropped = information_gain(scores, torch.tensor([1, 0]))
    assert ig[0, 0].item() == pytest.approx(math.exp(-0.5) - math.exp(-1.0))
    assert torch.isnan(ig[0, 1]) and torch.isnan(ig[1]).all()
    assert torch.isnan(p[0, 2]) and torch.isnan(p[1, 1:]).all() and dropped == 0


def test_nonfinite_probe_terms_are_dropped_and_counted():
    # rollout 0: probe after turn 1 is NaN -> IG_1 and IG_2 both undefined; rollout 1: a −inf probe
    # (p = 0) is a valid probability difference but not a valid log difference.
    scores = torch.tensor([[-1.0, NAN, -0.2], [-1.0, -math.inf, -0.5]])
    turns = torch.tensor([2, 2])
    ig, _, dropped = information_gain(scores, turns, mode="prob")
    assert dropped == 2 and torch.isnan(ig[0]).all()
    assert ig[1, 0].item() == pytest.approx(-math.exp(-1.0)) and ig[1, 1].item() == pytest.approx(math.exp(-0.5))
    ig, _, dropped = information_gain(scores, turns, mode="logprob")
    assert dropped == 4 and torch.isnan(ig).all()


def test_no_tool_turns_gives_no_ig():
    ig, p, dropped = information_gain(torch.tensor([[-0.3, NAN, NAN]]), torch.tensor([0]))
    assert torch.isnan(ig).all() and p[0, 0].item() == pytest.approx(math.exp(-0.3)) and dropped == 0


@pytest.mark.parametrize("scores, turns, match", [
    (torch.zeros(2, 3), torch.tensor([1, 3]), r"num_tool_turns\[1\]=3"),
    (torch.zeros(2, 3), torch.tensor([1, 2, 0]), "num_tool_turns must be"),
    (torch.zeros(3), torch.tensor([1]), r"\[B, T\+1\]"),
])
def test_bad_input_names_the_field(scores, turns, match):
    with pytest.raises(ValueError, match=match):
        information_gain(scores, turns)


def test_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        information_gain(torch.zeros(1, 2), torch.tensor([1]), mode="ratio")


def test_search_context_ends_cut_only_the_last_process_turn_before_its_observation():
    # row 0: prompt [0, 3), turn 1 [3, 5), obs [5, 7), turn 2 [7, 9), obs [9, 11), answer turn 3 [11, 12)
    turn_ids = torch.tensor([[0, 0, 0, 1, 1, 0, 0, 2, 2, 0, 0, 3],
                             [0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0]])
    context_ends = torch.tensor([[3, 7, 11, -1], [2, -1, -1, -1]])
    ends = search_context_ends(context_ends, turn_ids, torch.tensor([2, 0]))
    assert ends.tolist() == [[3, 7, 9, -1], [2, -1, -1, -1]]
    assert context_ends.tolist() == [[3, 7, 11, -1], [2, -1, -1, -1]]      # the input is left alone
