"""Normalization, accumulation and the estimator registry (ALGORITHM.md §3, §4, §7, §9)."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from a2tgpo_lab import preset
from a2tgpo_lab.advantages import (ADVANTAGE_ESTIMATORS, AdvantageResult, accumulate, add_outcome,
                                   broadcast_to_tokens, compute_advantages, discounted_returns, joint_normalize,
                                   normalize_outcomes, pooled_normalize, register_advantage_estimator, reward_terms,
                                   share_first_turn, turn_group_normalize)
from a2tgpo_lab.info_gain import information_gain

NAN = math.nan
SQ = math.sqrt


def close(actual, expected, atol=1e-4):
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), equal_nan=True,
                               atol=atol, rtol=0)


def worked_advantages(worked_example, name, **overrides) -> AdvantageResult:
    ig, _, _ = information_gain(worked_example.probe_logprob_mean, worked_example.num_tool_turns)
    return compute_advantages(preset(name, **overrides), ig, worked_example.outcome, worked_example.prompt_index,
                              worked_example.num_tool_turns)


# ----------------------------------------------------------------------------- §9 worked example


def test_worked_example_a2tgpo(worked_example):
    result = worked_advantages(worked_example, "a2tgpo")
    close(result.ig_norm, [[1.3363, 1.0, NAN, NAN], [-1.0690, NAN, NAN, NAN], [-0.2673, -1.0, 0.0, NAN]])
    close(result.outcome_norm, [0.7071, -1.4142, 0.7071])
    # Â_t = D_t/√n_t + R̂ on process turns, R̂ on the answer turn (ALGORITHM.md §9)
    close(result.advantages, [[2.3591, 1.7071, 0.7071, NAN],
                              [-2.4832, -1.4142, NAN, NAN],
                              [-0.0245, 0.0000, 0.7071, 0.7071]], atol=1e-3)
    # by hand: rollout 1, turn 1 sums Î = 1.3363 and 1.0 over n = 2 terms
    close(result.advantages[0, 0], (1.3363 + 1.0) / SQ(2) + 0.7071)
    # without the √n rescale: α·D + R̂
    close(result.advantages_unscaled[0, :3], [1.3363 + 1.0 + 0.7071, 1.0 + 0.7071, 0.7071])
    assert result.group_size.tolist() == [[3, 2, 0, 0], [3, 0, 0, 0], [3, 2, 1, 0]]
    assert result.group_id.tolist() == [[0, 1, -1, -1], [0, -1, -1, -1], [0, 1, 2, -1]]
    assert result.zero_std_group_frac == 0.0


def test_worked_example_a2tgpo_alpha_0_3(worked_example):
    result = worked_advantages(worked_example, "a2tgpo", ig_alpha=0.3)
    close(result.advantages[0, :3], [1.2027, 1.0071, 0.7071], atol=1e-3)
    close(result.advantages[2], [0.3 * (-1.2673) / SQ(3) + 0.7071, 0.3 * (-1.0) / SQ(2) + 0.7071, 0.7071, 0.7071])


def test_worked_example_var_eps_guard_barely_moves_it(worked_example):
    plain = worked_advantages(worked_example, "a2tgpo").advantages
    guarded = worked_advantages(worked_example, "a2tgpo", var_eps=1e-8).advantages
    close(guarded, plain, atol=1e-4)
    assert not torch.equal(guarded, plain)


def test_var_eps_erases_prob_scale_ig():
    # IG near 1e-6 (prob IG of a long answer): a 1e-8 variance guard dwarfs the spread (v ~ 1e-12).
    ig = torch.tensor([[1e-6], [3e-6]], dtype=torch.float64)
    plain, _, _, _ = turn_group_normalize(ig, torch.tensor([0, 0]), eps=0.0)
    guarded, _, _, _ = turn_group_normalize(ig, torch.tensor([0, 0]), eps=0.0, var_eps=1e-8)
    close(plain, [[-1.0], [1.0]])
    spread = SQ(1e-12 + 1e-8)                                   # √(v + var_eps), v = (1e-6)²
    close(guarded, [[-1e-6 / spread], [1e-6 / spread]], atol=1e-9)
    assert guarded.abs().max() < 0.011                           # the ±1 signal is down to ±0.01


def test_worked_example_igpo_joint(worked_example):
    result = worked_advantages(worked_example, "igpo")
    close(result.advantages[:2, :3], [[1.4847, 1.8897, 1.7547], [-1.7547, -0.9448, NAN]], atol=1e-3)
    # by hand: the 9 rewards of the prompt (6 IG + 3 outcomes) share one mean and population std
    rewards = torch.tensor([0.20, 0.40, 1.0, 0.05, 0.0, 0.10, 0.05, 0.35, 1.0], dtype=torch.float64)
    z = (rewards - rewards.mean()) / rewards.std(unbiased=False)
    close(result.advantages[0, :3], [z[0] + z[1] + z[2], z[1] + z[2], z[2]])
    close(result.outcome_norm, [z[2], z[4], z[8]])
    assert result.group_size[torch.isfinite(result.ig_norm)].unique().tolist() == [9]


def test_worked_example_igpo_separate(worked_example):
    result = worked_advantages(worked_example, "igpo", igpo_norm="separate")
    # IG pooled over the 6 IG values, outcome z-scored on its own, outcome the last term of the sum
    close(result.advantages[0, :3], [2.2581, 2.1985, 0.7071])
    assert result.group_size[result.group_size > 0].unique().tolist() == [6]
    assert (result.group_id[torch.isfinite(result.ig_norm)] == 0).all()


def test_joint_and_separate_igpo_differ_where_the_outcome_sets_the_scale():
    # Two rollouts, one tool call each. IG differs by 0.1; outcomes differ by 1. Separately, IG is z-scored
    # to ±1 on its own; jointly the outcome's spread sets the std and the IG terms shrink to near-equal.
    ig = torch.tensor([[0.1, NAN], [0.0, NAN]], dtype=torch.float64)
    outcome = torch.tensor([1.0, 0.0], dtype=torch.float64)
    args = (ig, outcome, torch.tensor([0, 0]), torch.tensor([1, 1]))
    joint = compute_advantages(preset("igpo"), *args)
    separate = compute_advantages(preset("igpo", igpo_norm="separate"), *args)
    close(separate.advantages, [[1.0 + 1.0, 1.0], [-1.0 - 1.0, -1.0]])
    rewards = torch.tensor([0.1, 1.0, 0.0, 0.0], dtype=torch.float64)      # IG 1, R 1, IG 2, R 2
    z = (rewards - rewards.mean()) / rewards.std(unbiased=False)
    close(joint.advantages, [[z[0] + z[1], z[1]], [z[2] + z[3], z[3]]])
    assert (joint.advantages - separate.advantages).abs().nansum() > 1.0


def test_worked_example_grpo_broadcasts_the_outcome(worked_example):
    result = worked_advantages(worked_example, "grpo")
    close(result.advantages, [[0.7071, 0.7071, 0.7071, NAN], [-1.4142, -1.4142, NAN, NAN], [0.7071] * 4])
    assert torch.isnan(result.ig_norm).all() and (result.group_id == -1).all()


def test_ablation_and_ladder_presets(worked_example):
    # a2tgpo_no_rescale and igpo_tg: turn groups, α·D + R̂ (no √n)
    for name in ("a2tgpo_no_rescale", "igpo_tg"):
        close(worked_advantages(worked_example, name).advantages[0, :3], [1.3363 + 1.0 + 0.7071, 1.7071, 0.7071])
    # igpo_tg_rescale and a2tgpo_fixed_clip compute a2tgpo's advantage (they differ from it in the clip only)
    full = worked_advantages(worked_example, "a2tgpo").advantages
    for name in ("igpo_tg_rescale", "a2tgpo_fixed_clip"):
        close(worked_advantages(worked_example, name).advantages, full)
    # a2tgpo_pooled: IG pooled over the prompt's 6 values, then D/√n + R̂
    pooled = torch.tensor([0.20, 0.40, 0.05, 0.10, 0.05, 0.35], dtype=torch.float64)
    z = (pooled - pooled.mean()) / pooled.std(unbiased=False)
    close(worked_advantages(worked_example, "a2tgpo_pooled").advantages[0, :3],
          [(z[0] + z[1]) / SQ(2) + 0.7071, z[1] + 0.7071, 0.7071])


def test_first_turn_without_query_baseline_shares_turn_2(worked_example):
    ig, _, _ = information_gain(worked_example.probe_logprob_mean, worked_example.num_tool_turns,
                                first_turn="none")
    assert torch.isnan(ig[:, 0]).all()
    result = compute_advantages(preset("a2tgpo", ig_first_turn="none"), ig, worked_example.outcome,
                                worked_example.prompt_index, worked_example.num_tool_turns)
    # turn-2 group {0.40, 0.05} → ±1; turn 3 singleton → 0; rollout 2 has no IG at all
    close(result.advantages, [[1.7071, 1.7071, 0.7071, NAN],
                              [-1.4142, -1.4142, NAN, NAN],
                              [-0.7071 + 0.7071, -0.7071 + 0.7071, 0.7071, 0.7071]])


# ----------------------------------------------------------------------------- normalization edge cases


def test_outcome_normalization_groups_by_prompt():
    outcome = torch.tensor([1.0, 0.0, 1.0, 1.0, -1.0])
    prompt = torch.tensor([0, 0, 1, 1, 2])
    # prompt 0: ±1; prompt 1: constant -> 0; prompt 2: singleton -> 0
    close(normalize_outcomes(outcome, prompt), [1.0, -1.0, 0.0, 0.0, 0.0])


def test_groups_never_mix_prompts():
    ig = torch.tensor([[0.1], [0.3], [5.0], [7.0]])
    ig_norm, group_id, size, _ = turn_group_normalize(ig, torch.tensor([0, 0, 1, 1]))
    close(ig_norm, [[-1.0], [1.0], [-1.0], [1.0]])
    assert group_id.flatten().tolist() == [0, 0, 1, 1] and size.flatten().tolist() == [2, 2, 2, 2]


def test_constant_group_gives_exact_zero_and_is_counted():
    # In float64, (0.1 + 0.1 + 0.1) / 3 != 0.1: a computed std of this group is ~1e-17, not 0.
    ig = torch.tensor([[0.1, 0.3], [0.1, 0.2], [0.1, NAN]], dtype=torch.float64)
    ig_norm, _, _, zero_frac = turn_group_normalize(ig, torch.zeros(3, dtype=torch.long))
    assert (ig_norm[:, 0] == 0).all()
    close(ig_norm[:2, 1], [1.0, -1.0])
    assert zero_frac == pytest.approx(1 / 2)   # turn 1 constant, turn 2 not


def test_std_floor_silences_noise():
    ig = torch.tensor([[0.016499], [0.016498]], dtype=torch.float64)
    noisy, _, _, zero_frac = turn_group_normalize(ig, torch.tensor([0, 0]))
    assert noisy.abs().min() > 0.3 and zero_frac == 0.0        # noise blown up to O(1)
    floored, _, _, zero_frac = turn_group_normalize(ig, torch.tensor([0, 0]), std_floor=1e-3)
    assert (floored == 0).all() and zero_frac == 1.0


def test_center_only():
    ig = torch.tensor([[0.20], [0.05], [0.10]])
    centered, _, _, _ = turn_group_normalize(ig, torch.zeros(3, dtype=torch.long), center_only=True)
    close(centered, [[0.20 - 0.35 / 3], [0.05 - 0.35 / 3], [0.10 - 0.35 / 3]], atol=1e-6)


def test_min_group_size(worked_example):
    result = worked_advantages(worked_example, "a2tgpo", min_group_size=3)
    close(result.ig_norm[:, 0], [1.3363, -1.0690, -0.2673])   # size 3: kept
    close(result.ig_norm[[0, 2], 1], [0.0, 0.0])               # size 2: too small
    assert result.group_size[0, 1] == 2                         # sizes still reported


def test_pooled_normalize_uses_one_group_per_prompt():
    ig = torch.tensor([[0.0, 2.0], [1.0, NAN], [9.0, NAN]])
    ig_norm, group_id, size, _ = pooled_normalize(ig, torch.tensor([0, 0, 1]))
    close(ig_norm[0], [-SQ(1.5), SQ(1.5)], atol=1e-5)          # {0, 2, 1}: mean 1, std √(2/3)
    close(ig_norm[1, :1], [0.0])
    close(ig_norm[2, :1], [0.0])                                 # singleton pool
    assert group_id.tolist() == [[0, 0], [0, -1], [1, -1]] and size.tolist() == [[3, 3], [3, 0], [1, 0]]


# ----------------------------------------------------------------------------- accumulation by hand


def test_accumulate_with_discount_by_hand():
    ig_norm = torch.tensor([[1.0, 2.0, 3.0, NAN]], dtype=torch.float64)
    turns = torch.tensor([3])
    sums = [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3.0]
    rescaled, plain = accumulate(ig_norm, turns, gamma=0.5, rescale="none")
    close(rescaled, [sums + [NAN]])
    close(plain, [sums + [NAN]])
    rescaled, _ = accumulate(ig_norm, turns, gamma=0.5, rescale="sqrt_n")
    close(rescaled, [[sums[0] / SQ(3), sums[1] / SQ(2), sums[2], NAN]])
    rescaled, _ = accumulate(ig_norm, turns, gamma=0.5, rescale="exact_gamma")
    close(rescaled, [[sums[0] / SQ(1 + 0.25 + 0.0625), sums[1] / SQ(1.25), sums[2], NAN]])


def test_add_outcome_by_hand():
    ig_part = torch.tensor([[0.5, -1.0, NAN], [NAN, NAN, NAN]])
    advantages = add_outcome(ig_part, torch.tensor([2.0, -1.0]), torch.tensor([2, 0]), alpha=0.5)
    close(advantages, [[0.25 + 2.0, -0.5 + 2.0, 2.0], [-1.0, NAN, NAN]])


def test_no_tool_turns_gives_the_outcome_alone():
    result = compute_advantages(preset("a2tgpo"), torch.full((2, 3), NAN), torch.tensor([1.0, 0.0]),
                                torch.tensor([0, 0]), torch.tensor([0, 0]))
    close(result.advantages, [[1.0, NAN, NAN], [-1.0, NAN, NAN]])


def test_all_turns_tool_calls_still_get_the_outcome():
    # Rollout 0 used all T = 2 turns for tool calls (no answer turn column): its outcome still counts.
    ig = torch.tensor([[0.1, 0.2], [NAN, NAN]])
    result = compute_advantages(preset("a2tgpo"), ig, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]),
                                torch.tensor([2, 0]))
    close(result.advantages, [[1.0, 1.0], [-1.0, NAN]])        # singleton IG groups → Î = 0


def test_dropped_ig_counts_as_zero_but_keeps_its_place():
    ig = torch.tensor([[NAN, 0.3], [0.4, 0.1]])
    result = compute_advantages(preset("a2tgpo"), ig, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]),
                                torch.tensor([2, 2]))
    assert torch.isnan(result.ig_norm[0, 0]) and result.group_id[0, 0] == -1
    # row 0: IG terms (dropped → 0, Î = +1) over n = 2, 1, plus R̂ = +1
    close(result.advantages[0], [1.0 / SQ(2) + 1.0, 1.0 + 1.0])


def test_reward_terms_and_discounted_returns():
    terms = reward_terms(torch.tensor([[0.5, 9.0], [9.0, 9.0]]), torch.tensor([1.0, -1.0]), torch.tensor([1, 0]))
    close(terms, [[0.5, 1.0, NAN], [-1.0, NAN, NAN]])
    close(discounted_returns(terms, torch.tensor([1, 0]), gamma=0.5), [[0.5 + 0.5, 1.0, NAN], [-1.0, NAN, NAN]])


def test_share_first_turn():
    per_turn = torch.tensor([[9.0, 2.0, 3.0], [7.0, NAN, NAN]])
    close(share_first_turn(per_turn, torch.tensor([1, 0])), [[2.0, 2.0, 3.0], [7.0, NAN, NAN]])


# ----------------------------------------------------------------------------- properties

@st.composite
def ig_batches(draw):
    """A random batch: up to 3 prompts × up to 5 rollouts, T ≤ 4, IG on a 0.05 grid in [-1, 1]."""
    n_prompts, group = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    width = draw(st.integers(1, 4))
    batch = n_prompts * group
    turns = draw(st.lists(st.integers(0, width), min_size=batch, max_size=batch))
    grid = draw(st.lists(st.integers(-20, 20), min_size=batch * width, max_size=batch * width))
    ig = torch.tensor(grid, dtype=torch.float64).view(batch, width) / 20
    ig[torch.arange(width)[None, :] >= torch.tensor(turns)[:, None]] = NAN
    outcome = torch.tensor(draw(st.lists(st.sampled_from([1.0, 0.0, -1.0]), min_size=batch, max_size=batch)),
                           dtype=torch.float64)
    prompt = torch.arange(n_prompts).repeat_interleave(group)
    return ig, outcome, prompt, torch.tensor(turns)


@settings(max_examples=60, deadline=None)
@given(ig_batches(), st.sampled_from(["turn_group", "pooled"]))
def test_normalized_groups_have_zero_mean_and_unit_std(batch, normalization):
    ig, _, prompt, _ = batch
    normalize = turn_group_normalize if normalization == "turn_group" else pooled_normalize
    ig_norm, group_id, size, _ = normalize(ig, prompt)
    for g in group_id[group_id >= 0].unique():
        members = group_id == g
        raw, z = ig[members], ig_norm[members]
        assert (size[members] == members.sum()).all()
        if members.sum() >= 2 and raw.max() > raw.min():
            assert z.mean().item() == pytest.approx(0.0, abs=1e-9)
            assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
        else:
            assert (z == 0).all()


@settings(max_examples=60, deadline=None)
@given(ig_batches(), st.floats(0.1, 10.0), st.floats(-1.0, 1.0))
def test_turn_group_advantages_ignore_positive_affine_rescaling_of_ig(batch, scale, shift):
    ig, outcome, prompt, turns = batch
    cfg = preset("a2tgpo", std_eps=1e-12)
    before = compute_advantages(cfg, ig, outcome, prompt, turns)
    after = compute_advantages(cfg, scale * ig + shift, outcome, prompt, turns)
    torch.testing.assert_close(after.advantages, before.advantages, equal_nan=True, atol=1e-6, rtol=0)


@settings(max_examples=40, deadline=None)
@given(ig_batches(), st.floats(0.1, 0.99))
def test_exact_gamma_equals_sqrt_n_only_when_gamma_is_one(batch, gamma):
    ig, _, prompt, turns = batch
    ig_norm = turn_group_normalize(ig, prompt)[0]
    sqrt_n, _ = accumulate(ig_norm, turns, gamma=1.0, rescale="sqrt_n")
    exact, _ = accumulate(ig_norm, turns, gamma=1.0, rescale="exact_gamma")
    torch.testing.assert_close(exact, sqrt_n, equal_nan=True)
    _, sums = accumulate(ig_norm, turns, gamma=gamma, rescale="none")
    sqrt_n, _ = accumulate(ig_norm, turns, gamma=gamma, rescale="sqrt_n")
    exact, _ = accumulate(ig_norm, turns, gamma=gamma, rescale="exact_gamma")
    several_terms = (torch.arange(ig.shape[1])[None, :] < turns[:, None] - 1) & (sums.abs() > 1e-9)
    assert (exact[several_terms] != sqrt_n[several_terms]).all()
    # γ < 1 shrinks the divisor, so |exact| > |sqrt_n| wherever more than one term was summed
    assert (exact[several_terms].abs() > sqrt_n[several_terms].abs()).all()


@settings(max_examples=40, deadline=None)
@given(ig_batches(), st.floats(0.1, 1.0), st.floats(0.0, 2.0))
def test_a2tgpo_matches_a_plain_double_loop(batch, gamma, alpha):
    ig, outcome, prompt, turns = batch
    cfg = preset("a2tgpo", gamma=gamma, ig_alpha=alpha)
    result = compute_advantages(cfg, ig, outcome, prompt, turns)
    i_hat, r_hat = result.ig_norm, result.outcome_norm
    for i, k in enumerate(turns.tolist()):
        values = [0.0 if math.isnan(v) else v for v in i_hat[i, :k].tolist()]
        for t in range(k):                                   # process turns: α·D/√n + R̂
            d = sum(gamma ** (j - t) * values[j] for j in range(t, k))
            assert result.advantages[i, t].item() == pytest.approx(alpha * d / SQ(k - t) + r_hat[i].item(), abs=1e-9)
        if k < ig.shape[1]:                                  # answer turn: R̂
            assert result.advantages[i, k].item() == pytest.approx(r_hat[i].item(), abs=1e-12)


@settings(max_examples=40, deadline=None)
@given(ig_batches(), st.floats(0.1, 1.0))
def test_igpo_returns_match_a_plain_double_loop(batch, gamma):
    ig, outcome, prompt, turns = batch
    terms = reward_terms(ig, outcome, turns)
    sums = discounted_returns(terms, turns, gamma=gamma)
    for i, k in enumerate(turns.tolist()):
        values = [0.0 if math.isnan(v) else v for v in terms[i, :k + 1].tolist()]
        for t in range(k + 1):
            expected = sum(gamma ** (j - t) * values[j] for j in range(t, k + 1))
            assert sums[i, t].item() == pytest.approx(expected, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(ig_batches())
def test_joint_normalization_has_zero_mean_and_unit_std_per_prompt(batch):
    ig, outcome, prompt, _ = batch
    ig_hat, outcome_hat, _, _, _ = joint_normalize(ig, outcome, prompt)
    for q in prompt.unique():
        rows = prompt == q
        raw = torch.cat([ig[rows][torch.isfinite(ig[rows])], outcome[rows]])
        z = torch.cat([ig_hat[rows][torch.isfinite(ig_hat[rows])], outcome_hat[rows]])
        if raw.max() > raw.min():
            assert z.mean().item() == pytest.approx(0.0, abs=1e-9)
            assert z.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-3)
        else:
            assert (z == 0).all()


# ----------------------------------------------------------------------------- registry, tokens, bad input


def test_registering_an_estimator():
    @register_advantage_estimator("doubled_grpo")
    def doubled_grpo(cfg, ig, outcome, prompt_index, num_tool_turns):
        base = ADVANTAGE_ESTIMATORS["grpo"](cfg, ig, outcome, prompt_index, num_tool_turns)
        base.advantages = 2 * base.advantages
        return base

    try:
        cfg = preset("grpo")
        cfg.advantage_estimator = "doubled_grpo"   # (config validation knows only the built-in names)
        result = compute_advantages(cfg, torch.full((2, 2), NAN), torch.tensor([1.0, 0.0]), torch.tensor([0, 0]),
                                    torch.tensor([1, 0]))
        close(result.advantages, [[2.0, 2.0], [-2.0, NAN]])
    finally:
        ADVANTAGE_ESTIMATORS.pop("doubled_grpo")
    cfg.advantage_estimator = "doubled_grpo"
    with pytest.raises(ValueError, match="advantage_estimator='doubled_grpo'"):
        compute_advantages(cfg, torch.full((1, 1), NAN), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0]))


def test_broadcast_to_tokens():
    per_turn = torch.tensor([[0.5, -1.0], [2.0, NAN]])
    turn_ids = torch.tensor([[0, 1, 1, 0, 2, 0], [0, 1, 0, 0, 0, 0]])
    mask = turn_ids > 0
    out = broadcast_to_tokens(per_turn, turn_ids, mask)
    assert out.tolist() == [[0.0, 0.5, 0.5, 0.0, -1.0, 0.0], [0.0, 2.0, 0.0, 0.0, 0.0, 0.0]]
    with pytest.raises(ValueError, match=r"loss_mask\[0, 0\]"):
        broadcast_to_tokens(per_turn, turn_ids, torch.ones_like(mask))
    with pytest.raises(ValueError, match="Row 1: turn 2"):
        broadcast_to_tokens(per_turn, torch.tensor([[1], [2]]), torch.tensor([[True], [True]]))


@pytest.mark.parametrize("ig, outcome, prompt, turns, match", [
    (torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long),
     "empty"),
    (torch.tensor([[0.1, 0.2]]), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([1]), r"ig\[0, 1\]"),
    (torch.tensor([[NAN]]), torch.tensor([NAN]), torch.tensor([0]), torch.tensor([0]), r"outcome\[0\]"),
    (torch.tensor([[NAN]]), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([2]), r"num_tool_turns\[0\]"),
    (torch.tensor([[NAN]]), torch.tensor([1.0]), torch.tensor([-1]), torch.tensor([0]), "prompt_index"),
    (torch.tensor([NAN]), torch.tensor([1.0]), torch.tensor([0]), torch.tensor([0]), "ig must be"),
])
def test_bad_input_names_the_field(ig, outcome, prompt, turns, match):
    with pytest.raises(ValueError, match=match):
        compute_advantages(preset("a2tgpo"), ig, outcome, prompt, turns)


def test_accumulate_rejects_more_turns_than_columns():
    with pytest.raises(ValueError, match=r"num_tool_turns\[0\]=3"):
        accumulate(torch.zeros(1, 2), torch.tensor([3]))
