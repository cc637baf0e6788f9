"""The verl plug-in: verl's own registries return this package's estimators and loss, equal to the
package's functions on the same batch; the clip-factor passthrough and the IG probe for verl batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is an optional extra (pip install --no-deps verl)")
pytest.importorskip("PIL", reason="verl's actor loss module needs pillow")
from omegaconf import OmegaConf  # noqa: E402
from verl.trainer.ppo.core_algos import get_adv_estimator_fn, get_policy_loss_fn  # noqa: E402

from a2tgpo_lab.advantages import broadcast_to_tokens, compute_advantages  # noqa: E402
from a2tgpo_lab.clipping import clip_bounds, turn_clip_factors  # noqa: E402
from a2tgpo_lab.config import preset  # noqa: E402
from a2tgpo_lab.integrations import verl as plugin  # noqa: E402
from a2tgpo_lab.integrations.core import write_ig_to_token_rewards  # noqa: E402
from a2tgpo_lab.loss import policy_loss  # noqa: E402

# Two prompts × three rollouts: (model-token run lengths, observation gap after each tool turn).
ROWS = [(3, 2, 4), (2, 5), (4, 1, 1, 3), (2, 2, 2), (6,), (1, 3, 2)]
GAP, LENGTH = 3, 32


def make_batch(seed: int = 0, ig_at_observation_end: bool = False):
    """Token rewards in the released layout, with the per-turn values they were written from."""
    g = torch.Generator().manual_seed(seed)
    B = len(ROWS)
    mask = torch.zeros(B, LENGTH, dtype=torch.bool)
    turn_ids = torch.zeros(B, LENGTH, dtype=torch.long)
    T = max(len(r) for r in ROWS)
    ig = torch.full((B, T), float("nan"))
    K = torch.tensor([len(r) - 1 for r in ROWS])
    rewards = torch.zeros(B, LENGTH)
    for b, runs in enumerate(ROWS):
        pos = 0
        for k, run in enumerate(runs, start=1):
            mask[b, pos: pos + run] = True
            turn_ids[b, pos: pos + run] = k
            pos += run
            if k < len(runs):
                # a turn whose IG is exactly 0 (row 2, turn 2) stays a turn of its own
                ig[b, k - 1] = 0.0 if (b, k) == (2, 2) else torch.rand(1, generator=g).item() - 0.3
                if ig_at_observation_end:                      # the released code: last observation token
                    rewards[b, pos + GAP - 1] += ig[b, k - 1]
                pos += GAP
        rewards[b, pos - 1] += float(b % 2)                   # outcome at the last model token
    if not ig_at_observation_end:
        rewards = write_ig_to_token_rewards(rewards, ig, turn_ids)
    outcome = torch.tensor([float(b % 2) for b in range(B)])
    uid = np.array(["q0"] * 3 + ["q1"] * 3, dtype=object)
    return dict(rewards=rewards, mask=mask, turn_ids=turn_ids, ig=ig, K=K, outcome=outcome, uid=uid,
                prompt_index=torch.tensor([0, 0, 0, 1, 1, 1]))


def test_verl_registries_return_the_plugin():
    assert get_adv_estimator_fn("a2tgpo") is plugin.a2tgpo_advantage
    assert get_adv_estimator_fn("igpo") is plugin.igpo_advantage
    assert get_policy_loss_fn("a2tgpo") is plugin.a2tgpo_policy_loss


@pytest.mark.parametrize("estimator", ["a2tgpo", "igpo"])
@pytest.mark.parametrize("ig_at_observation_end", [False, True])
def test_estimator_through_verl_equals_the_package(estimator, ig_at_observation_end):
    batch = make_batch(ig_at_observation_end=ig_at_observation_end)
    config = OmegaConf.create({"gamma": 1.0, "a2tgpo": {"clip_beta": 0.3}})
    advantages, clip_factor = get_adv_estimator_fn(estimator)(
        token_level_rewards=batch["rewards"], response_mask=batch["mask"].float(), config=config, index=batch["uid"])

    cfg = preset(estimator, clip_beta=0.3)
    expected = compute_advantages(cfg, batch["ig"], batch["outcome"], batch["prompt_index"], batch["K"])
    token_adv = broadcast_to_tokens(expected.advantages, batch["turn_ids"], batch["mask"])
    torch.testing.assert_close(advantages, token_adv, rtol=0, atol=1e-5)
    factor = turn_clip_factors(cfg, expected.ig_norm, expected.outcome_norm, batch["K"])
    torch.testing.assert_close(clip_factor, broadcast_to_tokens(factor, batch["turn_ids"], batch["mask"]),
                               rtol=0, atol=1e-6)
    # per-turn credit really differs between the turns of a rollout
    row = batch["mask"][0]
    assert len(set(advantages[0, row].tolist())) > 1
    if estimator == "a2tgpo":
        assert len(set(clip_factor[0, row].tolist())) > 1


def test_explicit_turn_ids_override_the_mask():
    batch = make_batch()
    merged_mask = batch["mask"].clone()
    merged_mask[0, 3:5] = True          # fill the gap between turns 1 and 2 of row 0: one run of the mask
    turn_ids = batch["turn_ids"].clone()
    turn_ids[0, 3:5] = 1
    config = OmegaConf.create({"a2tgpo": {}})
    fn = get_adv_estimator_fn("a2tgpo")
    explicit, _ = fn(batch["rewards"], merged_mask, config=config, index=batch["uid"], turn_ids=turn_ids)
    from_mask, _ = fn(batch["rewards"], batch["mask"], config=config, index=batch["uid"])
    keep = batch["mask"]
    torch.testing.assert_close(explicit[keep], from_mask[keep])


def test_reward_outside_every_tool_turn_is_a_clear_error():
    batch = make_batch()
    batch["rewards"][4, 1] = 0.5        # row 4 has a single (terminal) turn: no tool turn to credit
    with pytest.raises(ValueError, match=r"token_rewards\[4, 1\]"):
        get_adv_estimator_fn("a2tgpo")(batch["rewards"], batch["mask"], config=None, index=batch["uid"])


def _loss_inputs(seed: int = 1):
    batch = make_batch()
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(batch["mask"].shape, generator=g) * 3
    new = (old + 0.02 * torch.randn(old.shape, generator=g)).requires_grad_(True)
    advantages, factor = plugin.a2tgpo_advantage(batch["rewards"], batch["mask"], index=batch["uid"])
    return batch, old, new, advantages, factor


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean"])
def test_policy_loss_through_verl_equals_the_package(mode):
    batch, old, new, advantages, factor = _loss_inputs()
    config = OmegaConf.create({"clip_ratio_low": 3e-3, "clip_ratio_high": 4e-3, "global_batch_info": {}})
    with plugin.turn_clip_context(factor):
        loss, metrics = get_policy_loss_fn("a2tgpo")(old_log_prob=old, log_prob=new, advantages=advantages,
                                                     response_mask=batch["mask"].float(), loss_agg_mode=mode,
                                                     config=config, rollout_is_weights=None)
    (grad,) = torch.autograd.grad(loss, new)
    low, high = clip_bounds(torch.where(batch["mask"], factor, torch.ones_like(factor)), 3e-3, 4e-3)
    reference = new.detach().clone().requires_grad_(True)
    expected, out = policy_loss(reference, old, advantages, batch["turn_ids"], batch["mask"], low, high,
                                ratio_level="turn", loss_agg_mode=mode)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, reference.grad)
    assert metrics["actor/pg_clipfrac"] == out.metrics["clip_ratio/region_mean"] > 0   # clipping happened

    # without the clip factors the bounds are fixed (c = 1): a different loss on this batch
    fixed, _ = get_policy_loss_fn("a2tgpo")(old, new, advantages, batch["mask"], mode, config, None)
    assert not torch.isclose(fixed, loss)


@pytest.mark.parametrize("mode", ["seq-mean-token-mean", "token-mean"])
def test_loss_shards_sum_to_the_global_loss(mode):
    """verl sums the losses of micro-batches / ranks, each normalised by the global count."""
    batch, old, new, advantages, factor = _loss_inputs()
    fn = get_policy_loss_fn("a2tgpo")
    mask = batch["mask"]
    whole_config = OmegaConf.create({"clip_ratio_low": 3e-3, "clip_ratio_high": 4e-3, "global_batch_info": {}})
    with plugin.turn_clip_context(factor):
        whole, _ = fn(old, new, advantages, mask, mode, whole_config, None)
    info = {"dp_size": 2, "batch_num_tokens": int(mask.sum()), "global_batch_size": mask.shape[0]}
    config = OmegaConf.create({"clip_ratio_low": 3e-3, "clip_ratio_high": 4e-3, "global_batch_info": info})
    parts = []
    for rows in (slice(0, 2), slice(2, 6)):
        with plugin.turn_clip_context(factor[rows]):
            part, _ = fn(old[rows], new[rows], advantages[rows], mask[rows], mode, config, None)
        parts.append(part / 2)          # the data-parallel all-reduce averages over dp_size ranks
    torch.testing.assert_close(sum(parts), whole)


def test_verl_ppo_loss_with_passthrough_uses_the_batch_clip_factors():
    """verl's own actor loss `ppo_loss`, wrapped, hands `returns` (= c) to the a2tgpo loss."""
    from tensordict import TensorDict

    from verl.utils import tensordict_utils as tu

    batch, old, new, advantages, factor = _loss_inputs()
    B, L = batch["mask"].shape
    prompt_len = 4
    prompts = torch.nested.as_nested_tensor([torch.ones(prompt_len, dtype=torch.long)] * B, layout=torch.jagged)
    responses = torch.nested.as_nested_tensor([torch.ones(L, dtype=torch.long)] * B, layout=torch.jagged)
    # the model's flat log-probs: position p scores token p + 1, so response token j sits at prompt_len + j − 1
    flat = torch.zeros(B, prompt_len + L)
    flat[:, prompt_len - 1: prompt_len - 1 + L] = new.detach()
    flat = flat.reshape(-1).requires_grad_(True)

    def nested(x):
        return torch.nested.as_nested_tensor(list(x), layout=torch.jagged)

    data = TensorDict({"prompts": prompts, "responses": responses, "response_mask": nested(batch["mask"].long()),
                       "old_log_probs": nested(old), "advantages": nested(advantages), "returns": nested(factor)},
                      batch_size=[B])
    tu.assign_non_tensor(data, dp_size=1, batch_num_tokens=None, global_batch_size=None)
    config = OmegaConf.create({"clip_ratio_low": 3e-3, "clip_ratio_high": 4e-3, "global_batch_info": {},
                               "loss_scale_factor": None, "loss_agg_mode": "seq-mean-token-mean",
                               "policy_loss": {"loss_mode": "a2tgpo"}, "entropy_coeff": 0.0, "use_kl_loss": False})
    plugin.install_turn_clip_passthrough()
    import verl.workers.utils.losses as losses

    loss, _ = losses.ppo_loss(config, {"log_probs": flat}, data)
    with plugin.turn_clip_context(factor):
        expected, _ = plugin.a2tgpo_policy_loss(old, new.detach(), advantages, batch["mask"],
                                                "seq-mean-token-mean", config)
    torch.testing.assert_close(loss, expected)
    plugin.install_turn_clip_passthrough()               # idempotent: still one wrapper deep
    assert losses.ppo_loss.__wrapped__.__module__ == "verl.workers.utils.losses"


def test_probe_batch_gives_the_package_ig():
    """IG from verl-layout probe rows scored by a log-prob pass equals the package's probe scorer."""
    from test_rollout import EXAMPLES, SEARCH_OR_ANSWER, fact_tool, force_next_tokens, make_model, \
        make_tokenizer, small_config

    from a2tgpo_lab.info_gain import information_gain
    from a2tgpo_lab.logprobs import token_logprobs
    from a2tgpo_lab.probe import probe_suffixes, score_probes
    from a2tgpo_lab.rollout import generate_rollouts

    tokenizer = make_tokenizer()
    model = make_model(tokenizer, init_std=0.1)
    cfg = small_config(num_generations=4, max_turns=4)
    handle = force_next_tokens(model, tokenizer, SEARCH_OR_ANSWER)
    try:
        traj = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(4))
    finally:
        handle.remove()
    assert len(set(traj.num_tool_turns.tolist())) >= 3

    # the rollouts in verl's layout: left-padded prompts, right-padded responses
    prompt_lens = traj.context_ends[:, 0]
    P = int(prompt_lens.max())
    lengths = traj.attention_mask.sum(dim=1)
    R = int((lengths - prompt_lens).max())
    pad = tokenizer.pad_token_id
    prompts = torch.full((traj.batch_size, P), pad)
    responses = torch.full((traj.batch_size, R), pad)
    attention = torch.zeros(traj.batch_size, P + R, dtype=torch.long)
    response_mask = torch.zeros(traj.batch_size, R, dtype=torch.long)
    for b in range(traj.batch_size):
        p, n = int(prompt_lens[b]), int(lengths[b])
        prompts[b, P - p:] = traj.input_ids[b, :p]
        responses[b, : n - p] = traj.input_ids[b, p:n]
        attention[b, P - p: P + n - p] = 1
        response_mask[b, : n - p] = traj.loss_mask[b, p:n].long()
        assert torch.equal(plugin.turn_ids_from_mask(response_mask[b: b + 1])[0, : n - p], traj.turn_ids[b, p:n])

    probe = plugin.build_probe_batch(prompts, responses, attention, response_mask,
                                     probe_suffixes(tokenizer, traj, cfg), pad, num_tool_turns=traj.num_tool_turns)
    scored = token_logprobs(model.eval(), probe.input_ids, probe.attention_mask, temperature=cfg.temperature).logprobs
    ig, _, _ = plugin.ig_from_probe_log_probs(scored[:, probe.prompts.shape[1]:], probe, width=traj.max_turns)

    expected_ell, _ = score_probes(model, tokenizer, traj, cfg)
    expected, _, _ = information_gain(expected_ell, traj.num_tool_turns)
    torch.testing.assert_close(ig, expected, rtol=0, atol=1e-5, equal_nan=True)
    assert torch.isfinite(ig).sum() >= 4

    # the same through a DataProto and a log-prob function, as a verl trainer calls it
    from verl import DataProto

    def log_prob_fn(probe_data):
        batch = probe_data.batch
        logprobs = token_logprobs(model, batch["input_ids"], batch["attention_mask"], temperature=cfg.temperature)
        return DataProto.from_dict({"old_log_probs": logprobs.logprobs[:, batch["prompts"].shape[1]:]})

    scores = torch.zeros(traj.batch_size, R)
    data = DataProto.from_dict({"prompts": prompts, "responses": responses, "attention_mask": attention,
                                "response_mask": response_mask, "token_level_scores": scores})
    ig_verl, rewards = plugin.compute_turn_ig(data, log_prob_fn, probe_suffixes(tokenizer, traj, cfg), pad, cfg=cfg,
                                              num_tool_turns=traj.num_tool_turns)
    K = int(traj.num_tool_turns.max())
    torch.testing.assert_close(ig_verl, expected[:, :K], rtol=0, atol=1e-5, equal_nan=True)
    # written into the token rewards, the IG reads back as the estimator sees it
    read_back, _, _ = plugin.per_turn_from_token_rewards(rewards, plugin.turn_ids_from_mask(response_mask),
                                                         traj.num_tool_turns, width=K)
    torch.testing.assert_close(read_back, expected[:, :K], rtol=0, atol=1e-6, equal_nan=True)
