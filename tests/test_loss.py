"""The clipped policy loss (ALGORITHM.md §6): ratios, clipping, gradients, aggregation, KL, entropy."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from a2tgpo_lab.loss import aggregate, aggregation_units, importance_ratio, kl_penalty, policy_loss

E = math.e


def run_loss(log_ratio, advantages, mask=None, turn_ids=None, low=0.8, high=1.28, **kwargs):
    """policy_loss on rows given as log π_θ − log π_old (old = −1 everywhere), returning grads too."""
    log_ratio = torch.as_tensor(log_ratio, dtype=torch.float64)
    old = torch.full_like(log_ratio, -1.0)
    logprobs = (old + log_ratio).requires_grad_(True)
    mask = torch.ones_like(log_ratio, dtype=torch.bool) if mask is None else torch.as_tensor(mask)
    turn_ids = torch.where(mask, 1, 0) if turn_ids is None else torch.as_tensor(turn_ids)
    advantages = torch.as_tensor(advantages, dtype=torch.float64)
    loss, out = policy_loss(logprobs, old, advantages, turn_ids, mask, torch.full_like(old, low),
                            torch.full_like(old, high), **kwargs)
    loss.backward()
    return loss, out, logprobs.grad


# ----------------------------------------------------------------------------- aggregation


def test_aggregation_modes_by_hand():
    values = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0], [9.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=torch.bool)   # row 2 has no tokens
    assert aggregate(values, mask, "token-mean").item() == pytest.approx(7 / 3)
    assert aggregate(values, mask, "seq-mean-token-mean").item() == pytest.approx((1.5 + 4) / 2)
    assert aggregate(values, mask, "seq-mean-token-sum").item() == pytest.approx((3 + 4) / 2)
    with pytest.raises(ValueError, match="loss_agg_mode"):
        aggregate(values, mask, "mean")


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2 ** 31 - 1), st.sampled_from(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]),
       st.integers(1, 4))
def test_unit_weighted_parts_give_the_aggregate_of_the_whole(seed, mode, parts):
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    mask = torch.rand(6, 5, generator=generator) < 0.6
    whole_units = aggregation_units(mask, mode)
    pieces = sum(aggregate(values[rows], mask[rows], mode) * aggregation_units(mask[rows], mode) / max(whole_units, 1)
                 for rows in torch.arange(6).chunk(parts))
    assert float(pieces) == pytest.approx(float(aggregate(values, mask, mode)), abs=1e-12)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_all_masked_batch_gives_zero_not_nan(mode):
    values = torch.tensor([[float("nan"), 1.0]], requires_grad=True)
    total = aggregate(values, torch.zeros(1, 2, dtype=torch.bool), mode)
    total.backward()
    assert total.item() == 0.0 and (values.grad == 0).all()


def test_all_masked_row_does_not_poison_the_loss():
    loss, _, grad = run_loss([[0.1, 0.2], [0.0, 0.0]], [[1.0, 1.0], [0.0, 0.0]],
                             mask=[[True, True], [False, False]], ratio_level="token")
    assert torch.isfinite(loss) and torch.isfinite(grad).all() and (grad[1] == 0).all()
    assert loss.item() == pytest.approx(-(math.exp(0.1) + math.exp(0.2)) / 2)


# ----------------------------------------------------------------------------- ratios


def test_turn_level_ratio_value_and_gradient_by_hand():
    # turn 1: log-ratios 0.1, 0.3 (mean 0.2); an observation token; turn 2: −0.4; padding.
    log_ratio = torch.tensor([[0.1, 0.3, 5.0, -0.4, 7.0]], dtype=torch.float64)
    turn_ids = torch.tensor([[1, 1, 0, 2, 0]])
    mask = turn_ids > 0
    logprobs = (log_ratio - 1).requires_grad_(True)
    ratio = importance_ratio(logprobs, torch.full_like(log_ratio, -1.0), turn_ids, mask, "turn")
    expected = [math.exp(0.2), math.exp(0.2), 1.0, math.exp(-0.4), 1.0]
    torch.testing.assert_close(ratio.detach(), torch.tensor([expected], dtype=torch.float64))
    ratio.sum().backward()
    # ∂s_t/∂log π_θ(t) = s_turn for the token itself only (the turn value is a stop-gradient)
    torch.testing.assert_close(logprobs.grad, torch.tensor([[E ** 0.2, E ** 0.2, 0, E ** -0.4, 0]],
                                                           dtype=torch.float64))


def test_token_level_ratio():
    log_ratio = torch.tensor([[0.1, -0.3]], dtype=torch.float64)
    ratio = importance_ratio(log_ratio - 2, torch.full_like(log_ratio, -2.0), torch.ones(1, 2, dtype=torch.long),
                             torch.ones(1, 2, dtype=torch.bool), "token")
    torch.testing.assert_close(ratio, log_ratio.exp())


# ----------------------------------------------------------------------------- clipping


def test_token_level_clipping_by_hand():
    # bounds [0.8, 1.28]; tokens: (A=+1, s=e^.5) high-clipped, (A=−1, s=e^−.5) low-clipped,
    # (A=+1, s=e^−.5) and (A=−1, s=e^.5) unclipped.
    log_ratio = [[0.5, -0.5, -0.5, 0.5]]
    advantages = [[1.0, -1.0, 1.0, -1.0]]
    loss, out, grad = run_loss(log_ratio, advantages, ratio_level="token", loss_agg_mode="token-mean")
    token_loss = [-1.28, 0.8, -math.exp(-0.5), math.exp(0.5)]
    torch.testing.assert_close(out.token_loss, torch.tensor([token_loss], dtype=torch.float64))
    assert loss.item() == pytest.approx(sum(token_loss) / 4)
    assert out.clipped.tolist() == [[1, -1, 0, 0]] and out.clipped.dtype == torch.int8
    # clipped tokens: zero gradient; unclipped: −A·s/4 (token-mean over 4 tokens)
    torch.testing.assert_close(grad, torch.tensor([[0.0, 0.0, -math.exp(-0.5) / 4, math.exp(0.5) / 4]],
                                                  dtype=torch.float64))
    assert out.metrics["clip_ratio/high_mean"] == 0.25 and out.metrics["clip_ratio/low_mean"] == 0.25
    assert out.metrics["clip_ratio/region_mean"] == 0.5
    assert out.metrics["ratio/max"] == pytest.approx(math.exp(0.5))
    assert out.metrics["ratio/min"] == pytest.approx(math.exp(-0.5))


def test_turn_level_clipping_clips_whole_turns():
    # turn 1 mean log-ratio 0.002 → s = e^.002 > 1.0015 (clipped high for A > 0); turn 2 mean 0 (not clipped)
    log_ratio = [[0.001, 0.003, 0.0, 0.01, -0.01]]
    turn_ids = [[1, 1, 0, 2, 2]]
    mask = [[True, True, False, True, True]]
    _, out, grad = run_loss(log_ratio, [[1.0, 1.0, 0.0, 1.0, 1.0]], mask=mask, turn_ids=turn_ids,
                            low=1 - 1e-3, high=1 + 1.5e-3)
    assert out.clipped.tolist() == [[1, 1, 0, 0, 0]]
    assert (grad[0, :3] == 0).all() and (grad[0, 3:] != 0).all()
    assert math.isnan(out.ratio[0, 2]) and out.ratio[0, 0] == out.ratio[0, 1]


def test_dual_clip_caps_the_loss_of_negative_advantages():
    _, plain, _ = run_loss([[2.0]], [[-1.0]], ratio_level="token")
    assert plain.token_loss.item() == pytest.approx(math.exp(2.0)) and plain.clipped.item() == 0
    loss, out, grad = run_loss([[2.0]], [[-1.0]], ratio_level="token", dual_clip=3.0)
    assert loss.item() == pytest.approx(3.0) and out.clipped.item() == 1 and grad.item() == 0
    assert out.metrics["clip_ratio/dual_mean"] == 1.0
    _, below, grad = run_loss([[0.5]], [[-1.0]], ratio_level="token", dual_clip=3.0)   # s = 1.65 < 3: untouched
    assert below.token_loss.item() == pytest.approx(math.exp(0.5)) and grad.item() != 0


@st.composite
def loss_batches(draw):
    """Random rows of 1-3 turns separated by observation tokens, random advantages and masks."""
    rows = draw(st.integers(1, 4))
    length = draw(st.integers(2, 10))
    turn_ids = torch.tensor(draw(st.lists(st.lists(st.integers(0, 3), min_size=length, max_size=length),
                                          min_size=rows, max_size=rows)))
    log_ratio = torch.tensor(draw(st.lists(st.lists(st.floats(-0.6, 0.6), min_size=length, max_size=length),
                                           min_size=rows, max_size=rows)), dtype=torch.float64)
    turn_adv = torch.tensor(draw(st.lists(st.lists(st.floats(-2, 2).filter(lambda a: abs(a) > 1e-3), min_size=4,
                                                   max_size=4), min_size=rows, max_size=rows)), dtype=torch.float64)
    return log_ratio, turn_adv.gather(1, turn_ids), turn_ids


@settings(max_examples=60, deadline=None)
@given(loss_batches(), st.sampled_from(["turn", "token"]),
       st.sampled_from(["seq-mean-token-mean", "token-mean", "seq-mean-token-sum"]))
def test_gradient_is_zero_exactly_where_masked_or_clipped(batch, ratio_level, mode):
    log_ratio, advantages, turn_ids = batch
    mask = turn_ids > 0
    log_ratio = torch.where(mask, log_ratio, torch.full_like(log_ratio, 80.0))   # junk off the mask
    loss, out, grad = run_loss(log_ratio, advantages, mask=mask, turn_ids=turn_ids, low=0.85, high=1.2,
                               ratio_level=ratio_level, loss_agg_mode=mode)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert (grad[~mask] == 0).all() and (out.clipped[~mask] == 0).all()
    clipped = out.clipped != 0
    assert (grad[clipped] == 0).all()
    assert (grad[mask & ~clipped] != 0).all()
    # the clipped side is the one the advantage pushes towards
    assert (advantages[out.clipped == 1] > 0).all() and (advantages[out.clipped == -1] < 0).all()
    assert (out.ratio[clipped & (advantages > 0)] > 1.2).all() and (out.ratio[clipped & (advantages < 0)] < 0.85).all()


def test_half_precision_logprobs_keep_the_narrow_turn_level_band():
    # In bf16 the bound 1.003 would round to 1.0 and a ratio of 1.002 would count as clipped.
    logprobs = torch.tensor([[-1.0]], dtype=torch.bfloat16, requires_grad=True)
    old = torch.tensor([[-1.002]])
    _, out = policy_loss(logprobs, old, torch.ones(1, 1), torch.ones(1, 1, dtype=torch.long),
                         torch.ones(1, 1, dtype=torch.bool), torch.full((1, 1), 0.997), torch.full((1, 1), 1.003))
    assert out.ratio.item() == pytest.approx(math.exp(0.002), abs=1e-6) and out.clipped.item() == 0


# ----------------------------------------------------------------------------- KL and entropy


def test_kl_estimators_by_hand():
    logprobs, ref = torch.tensor([-1.0, -1.0]), torch.tensor([-1.5, 29.0])
    k3 = kl_penalty(logprobs, ref, "k3")
    assert k3[0].item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)
    low_var = kl_penalty(logprobs, ref, "low_var_kl")
    assert low_var[0].item() == pytest.approx(k3[0].item()) and low_var[1].item() == 10.0


def test_kl_and_entropy_terms_enter_the_loss():
    log_ratio = torch.zeros(1, 2, dtype=torch.float64)
    old = torch.full_like(log_ratio, -1.0)
    mask, turns = torch.ones(1, 2, dtype=torch.bool), torch.ones(1, 2, dtype=torch.long)
    bounds = torch.full_like(old, 0.8), torch.full_like(old, 1.2)
    ref = torch.tensor([[-1.5, -0.5]], dtype=torch.float64)
    entropy = torch.tensor([[0.4, 0.6]], dtype=torch.float64)
    kl_by_hand = ((math.exp(-0.5) + 0.5 - 1) + (math.exp(0.5) - 0.5 - 1)) / 2
    loss, out = policy_loss(old.clone(), old, torch.ones_like(old), turns, mask, *bounds, ref_logprobs=ref,
                            beta=0.1, entropy=entropy, entropy_coeff=0.01)
    assert out.metrics["kl"] == pytest.approx(kl_by_hand) and out.metrics["entropy"] == pytest.approx(0.5)
    assert loss.item() == pytest.approx(-1.0 + 0.1 * kl_by_hand - 0.01 * 0.5)
    assert out.metrics["pg_loss"] == pytest.approx(-1.0)


# ----------------------------------------------------------------------------- bad input


def _args(**changes):
    args = dict(logprobs=torch.zeros(1, 3), old_logprobs=torch.zeros(1, 3), token_advantages=torch.zeros(1, 3),
                turn_ids=torch.tensor([[1, 1, 0]]), loss_mask=torch.tensor([[True, True, False]]),
                token_clip_low=torch.full((1, 3), 0.8), token_clip_high=torch.full((1, 3), 1.2))
    args.update(changes)
    return args


@pytest.mark.parametrize("changes, match", [
    (dict(token_advantages=torch.zeros(1, 2)), "token_advantages has shape"),
    (dict(turn_ids=torch.tensor([[1, 0, 0]])), r"loss_mask\[0, 1\] is a model token with turn_ids 0"),
    (dict(token_advantages=torch.tensor([[0.0, float("nan"), 0.0]])), r"token_advantages\[0, 1\]"),
    (dict(beta=0.1), "ref_logprobs"),
    (dict(entropy_coeff=0.1), "entropy"),
    (dict(dual_clip=0.5), "dual_clip"),
    (dict(ratio_level="sequence"), "ratio_level"),
    (dict(kl_estimator="k1", ref_logprobs=torch.zeros(1, 3), beta=0.1), "kl_estimator"),
])
def test_bad_input_names_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        policy_loss(**_args(**changes))
