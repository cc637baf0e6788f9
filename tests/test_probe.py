"""The IG probe scorers: the fast KV-cache scorer equals the naive one-pass-per-turn reference."""
from __future__ import annotations

import pytest
import torch
from test_rollout import EXAMPLES, SEARCH_OR_ANSWER, fact_tool, force_next_tokens, make_model, make_tokenizer, \
    small_config

from a2tgpo_lab.chat import encode, probe_suffix
from a2tgpo_lab.protocol import PROBE_PREFIX
from a2tgpo_lab.probe import score_probes, score_probes_naive
from a2tgpo_lab.rollout import generate_rollouts


@pytest.fixture(scope="module")
def setup():
    """Sampled rollouts with 0 to 3 tool turns, and the (unforced) random model that scores them."""
    tokenizer = make_tokenizer()
    model = make_model(tokenizer, init_std=0.1)
    handle = force_next_tokens(model, tokenizer, SEARCH_OR_ANSWER)
    cfg = small_config(num_generations=4, max_turns=4)
    try:
        traj = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(4),
                                 keep_kv=True)
    finally:
        handle.remove()
    return model, tokenizer, traj, cfg


def test_rollouts_cover_several_depths(setup):
    _, _, traj, _ = setup
    depths = set(traj.num_tool_turns.tolist())
    assert 0 in depths and len(depths) >= 3
    assert len({len(a[0].split()) for a in traj.answers}) == 2  # one- and two-token gold answers


@pytest.mark.parametrize("reuse_cache", [True, False])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_fast_scorer_equals_naive(setup, attention, reuse_cache):
    """With the rollout's KV cache (pass 1 skipped) or encoding the contexts itself, the fast scorer gives
    the naive scorer's numbers."""
    model, tokenizer, traj, cfg = setup
    assert traj.kv_prefix is not None
    model.set_attn_implementation(attention)
    try:
        fast, fast_text = score_probes(model, tokenizer, traj, cfg, reuse_cache=reuse_cache)
        naive, naive_text = score_probes_naive(model, tokenizer, traj, cfg)
    finally:
        model.set_attn_implementation("sdpa")
    assert fast.shape == naive.shape == (traj.batch_size, cfg.max_turns + 1)
    assert fast_text == naive_text
    for b in range(traj.batch_size):
        K = int(traj.num_tool_turns[b])
        assert torch.isfinite(fast[b, : K + 1]).all() and torch.isnan(fast[b, K + 1:]).all()
        assert torch.isnan(naive[b, K + 1:]).all()
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-4, equal_nan=True)
    # the probes really differ between turns, so agreement is not trivial
    assert (fast[:, 1].nan_to_num() - fast[:, 0]).abs().max() > 1e-3


def test_fast_scorer_in_row_chunks_gives_the_same(setup):
    model, tokenizer, traj, cfg = setup
    whole, _ = score_probes(model, tokenizer, traj, cfg, reuse_cache=False)
    chunked, _ = score_probes(model, tokenizer, traj, cfg, batch_size=5)
    torch.testing.assert_close(whole, chunked, rtol=0, atol=1e-5, equal_nan=True)


def test_a_cache_of_another_trajectory_is_a_clear_error(setup):
    model, tokenizer, traj, cfg = setup
    shorter = traj.kv_prefix.lengths.clone()
    shorter[0] = 1
    traj.kv_prefix.lengths, saved = shorter, traj.kv_prefix.lengths
    try:
        with pytest.raises(ValueError, match="cached tokens"):
            score_probes(model, tokenizer, traj, cfg)
    finally:
        traj.kv_prefix.lengths = saved


def test_naive_scorer_scores_only_the_gold_tokens(setup):
    """ℓ_t by hand for one rollout: log-softmax of the logits / τ at the gold positions, averaged."""
    model, tokenizer, traj, cfg = setup
    b = int((traj.num_tool_turns == 2).nonzero()[0])
    gold = traj.answers[b][0]
    naive, _ = score_probes_naive(model, tokenizer, traj, cfg)
    prefix = encode(tokenizer, f"{PROBE_PREFIX} <answer>")
    gold_ids = encode(tokenizer, gold)
    for t in range(3):
        context = traj.input_ids[b, : int(traj.context_ends[b, t])].tolist()
        ids = torch.tensor([context + prefix + gold_ids])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0] / cfg.temperature
        logprobs = torch.log_softmax(logits, dim=-1)
        start = len(context) + len(prefix)
        expected = sum(logprobs[start + j - 1, g].item() for j, g in enumerate(gold_ids)) / len(gold_ids)
        assert naive[b, t].item() == pytest.approx(expected, abs=1e-5)


def test_temperature_changes_the_scores_of_both(setup):
    model, tokenizer, traj, cfg = setup
    hot = cfg.replace(temperature=2.0)
    fast, _ = score_probes(model, tokenizer, traj, hot)
    naive, _ = score_probes_naive(model, tokenizer, traj, hot)
    torch.testing.assert_close(fast, naive, rtol=0, atol=1e-4, equal_nan=True)
    base, _ = score_probes(model, tokenizer, traj, cfg)
    assert not torch.allclose(fast.nan_to_num(), base.nan_to_num())


def test_probe_suffix_matches_the_answer_turn(setup):
    _, tokenizer, _, _ = setup
    suffix = probe_suffix(tokenizer, "Kestrel Bay")
    assert suffix.prefix_ids == encode(tokenizer, f"{PROBE_PREFIX} <answer>")
    assert suffix.gold_ids == encode(tokenizer, "Kestrel Bay")
    assert suffix.suffix_ids == encode(tokenizer, "</answer><|im_end|>")
    assert suffix.text.startswith(PROBE_PREFIX) and "<answer> Kestrel Bay </answer>" in suffix.text


def test_eval_mode_is_used_and_restored(setup):
    model, tokenizer, traj, cfg = setup
    model.train()
    try:
        fast, _ = score_probes(model, tokenizer, traj, cfg)
        assert model.training
    finally:
        model.eval()
    reference, _ = score_probes(model, tokenizer, traj, cfg)
    torch.testing.assert_close(fast, reference, equal_nan=True)


def test_inconsistent_context_ends_are_a_clear_error(setup):
    model, tokenizer, traj, cfg = setup
    b = int((traj.num_tool_turns >= 1).nonzero()[0])
    broken = traj.to("cpu")
    broken.context_ends = traj.context_ends.clone()
    broken.context_ends[b, 1] = -1
    with pytest.raises(ValueError, match=rf"context_ends\[{b}\]"):
        score_probes(model, tokenizer, broken, cfg)


def test_only_the_first_gold_alias_is_scored(setup):
    model, tokenizer, traj, cfg = setup
    base, _ = score_probes(model, tokenizer, traj, cfg)
    other_second = traj.to("cpu")
    other_second.answers = [[aliases[0], "Brevik"] for aliases in traj.answers]
    other_first = traj.to("cpu")
    other_first.answers = [["Brevik", aliases[0]] for aliases in traj.answers]
    torch.testing.assert_close(score_probes(model, tokenizer, other_second, cfg)[0], base, equal_nan=True)
    assert not torch.allclose(score_probes(model, tokenizer, other_first, cfg)[0].nan_to_num(), base.nan_to_num())


def test_identical_probes_are_scored_once_and_spread_over_rows(setup):
    from a2tgpo_lab.probe import _assign_hosts, _distinct_probes, probe_suffixes

    model, tokenizer, traj, cfg = setup
    probes = _distinct_probes(traj, probe_suffixes(tokenizer, traj, cfg))
    members = [m for p in probes for m in p.members]
    assert sorted(members) == sorted((b, t) for b in range(traj.batch_size)
                                     for t in range(int(traj.num_tool_turns[b]) + 1))
    # the rollouts of one prompt share its t = 0 probe
    assert len(probes) <= len(members) - (traj.batch_size - len(set(traj.prompt_index.tolist())))
    for probe in probes:
        for b, t in probe.members:
            assert int(traj.context_ends[b, t]) == probe.context_len
            assert torch.equal(traj.input_ids[b, :probe.context_len], traj.input_ids[probe.hosts[0], :probe.context_len])
    hosted = _assign_hosts(probes)
    assert sum(len(v) for v in hosted.values()) == len(probes)
    assert all(b in p.hosts for b, ps in hosted.items() for p in ps)
    assert max(len(v) for v in hosted.values()) <= -(-len(probes) // traj.batch_size) + 1


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_probe_while_sampling_equals_naive_and_leaves_the_rollouts_alone(setup, attention, monkeypatch):
    """Scored inside the rollout, the probe gives the naive scorer's numbers, and the rollouts are token for
    token the ones sampled without it: its tokens ride in the forward that feeds each context and are
    cropped off the sampler's cache again, once per context (the prompt, then every turn's observation)."""
    from transformers import DynamicCache

    model, tokenizer, traj, cfg = setup
    crops = []
    crop = DynamicCache.crop
    monkeypatch.setattr(DynamicCache, "crop", lambda self, n: (crops.append(n), crop(self, n))[1])
    handle = force_next_tokens(model, tokenizer, SEARCH_OR_ANSWER)  # as the rollouts were sampled
    model.set_attn_implementation(attention)
    try:
        probed = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(4),
                                   probe=True)
        naive, naive_text = score_probes_naive(model, tokenizer, traj, cfg)
    finally:
        handle.remove()
        model.set_attn_implementation("sdpa")
    assert torch.equal(probed.input_ids, traj.input_ids) and torch.equal(probed.context_ends, traj.context_ends)
    torch.testing.assert_close(probed.old_logprobs, traj.old_logprobs, rtol=0, atol=1e-5)
    assert probed.probe_text == naive_text
    torch.testing.assert_close(probed.probe_logprob_mean, naive, rtol=0, atol=1e-4, equal_nan=True)
    # one probe block cropped per context: the prompt and each turn that a rollout still running reached
    assert len(crops) == 1 + int(traj.num_tool_turns.max()) and all(n < 0 for n in crops)
    assert (naive[:, 1].nan_to_num() - naive[:, 0]).abs().max() > 1e-3  # the turns' probes really differ


def test_identical_histories_are_fed_once(monkeypatch):
    """Greedy rollouts of one prompt are one history: each observation (and its probe) is fed once for
    them and the cache row copied, with the probe scores still the naive scorer's."""
    tokenizer = make_tokenizer()
    model = make_model(tokenizer, init_std=0.1)
    cfg = small_config(num_generations=3, max_turns=3)
    shapes = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward",
                        lambda self, **kw: (shapes.append(tuple(kw["input_ids"].shape)), forward(self, **kw))[1])
    handle = force_next_tokens(model, tokenizer, SEARCH_OR_ANSWER)
    try:
        traj = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, greedy=True, probe=True)
        fed = list(shapes)
        naive, _ = score_probes_naive(model, tokenizer, traj, cfg)
    finally:
        handle.remove()
    assert (traj.num_tool_turns >= 1).any(), "some rollouts must go on after an observation"
    # every forward that feeds more than one token per row (the prompts, then each turn's observations)
    # holds one row per distinct history: at most one per question, not G
    wide = [rows for rows, width in fed if width > 1]
    assert len(wide) >= 2 and max(wide) <= len(EXAMPLES)
    torch.testing.assert_close(traj.probe_logprob_mean, naive, rtol=0, atol=1e-4, equal_nan=True)
