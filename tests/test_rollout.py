"""The multi-turn rollout engine on tiny random Qwen3 models (no hub, no scripted model).

A random model almost never writes a valid tag, so searches are made to happen with a test-only
logits processor (:func:`force_next_tokens`, a forward hook on the model): after a given token it
adds a large bias to a set of allowed next tokens, e.g. after the assistant header only
``<search>`` or ``<answer>``, after ``<search>`` only query words. Which token of the allowed set
comes out is still the random transformer's choice, which depends on the whole context through
attention — so the KV-cache continuation is really exercised, and a cache bug changes the rollouts.
"""
from __future__ import annotations

import pytest
import torch

from a2tgpo_lab.chat import encode, observation_ids, observation_template, probe_suffix, prompt_ids
from a2tgpo_lab.config import A2TGPOConfig
from a2tgpo_lab.envs.qa import QAExample
from a2tgpo_lab.logprobs import token_logprobs
from a2tgpo_lab.protocol import SYSTEM_PROMPT, format_answer, format_observation, get_protocol
from a2tgpo_lab.rewards import outcome_reward
from a2tgpo_lab.rollout import draw_tokens, generate_rollouts, sample_next_tokens, stop_token_ids
from a2tgpo_lab.tiny import IM_END, build_tiny_qwen, build_word_tokenizer

QUERY_WORDS = ["Velmora", "Quillan", "Tarsk", "Brevik"]
ANSWER_WORDS = ["Oslund", "Kestrel", "Marrow"]
# Observations of different lengths per query word, so rows feed chunks of different lengths.
FACTS = {
    "Velmora": ["Velmora was founded by Tarsk ."],
    "Quillan": ["Quillan was founded by Brevik .", "Brevik works at Quillan and visited Oslund often ."],
    "Tarsk": ["Tarsk was born in Oslund .", "Tarsk visited Kestrel .", "Marrow is far from Kestrel ."],
    "Brevik": ["Brevik was born in Kestrel ."],
}
EXAMPLES = [
    QAExample("q0", "where was the founder of Velmora born ?", ("Oslund",)),
    QAExample("q1", "where was the founder of Quillan born ?", ("Kestrel", "Kestrel Bay")),
    QAExample("q2", "who founded Velmora ?", ("Marrow Kestrel",)),
    QAExample("q3", "where was Tarsk born ?", ("Oslund",)),
]

# After the assistant header: search or answer; then one word; then the closing tag and end of turn.
SEARCH_OR_ANSWER = {
    "assistant": ["<search>", "<answer>"],
    "<search>": QUERY_WORDS, **{w: ["</search>"] for w in QUERY_WORDS}, "</search>": [IM_END],
    "<answer>": ANSWER_WORDS, **{w: ["</answer>"] for w in ANSWER_WORDS}, "</answer>": [IM_END],
}
ALWAYS_SEARCH = {**SEARCH_OR_ANSWER, "assistant": ["<search>"]}


def fact_tool(query: str) -> str:
    """A dict-based search tool: the facts of every known word of the query."""
    passages = [fact for word in query.split() for fact in FACTS.get(word, [])]
    return format_observation(passages or ["no result"])


def make_tokenizer():
    texts = [e.question for e in EXAMPLES] + [f for facts in FACTS.values() for f in facts] + ["no result Bay"]
    return build_word_tokenizer(texts)


def make_model(tokenizer, seed=0, init_std=0.3):
    """A 2-layer hidden-32 Qwen3 with weights large enough that its choices depend on the context."""
    model = build_tiny_qwen(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:
                param.copy_(torch.randn(param.shape, generator=generator) * init_std)
    return model.eval()


def force_next_tokens(model, tokenizer, rules: dict[str, list[str]], strength: float = 1e4):
    """Test-only logits processor: after token ``prev`` add ``strength`` to the logits of ``rules[prev]``.

    A forward hook, so it applies to every forward (sampling, old log-probs, probes) alike. Returns
    the hook handle (``.remove()`` to switch it off).
    """
    vocab = model.config.vocab_size
    bias = torch.zeros(vocab, vocab)
    for prev, allowed in rules.items():
        ids = tokenizer.convert_tokens_to_ids(allowed)
        bias[tokenizer.convert_tokens_to_ids(prev), ids] = strength

    def add_bias(module, args, kwargs, output):
        input_ids, keep = kwargs["input_ids"], kwargs.get("logits_to_keep", 0)
        if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
            last = input_ids[keep]                                  # logits [N, V] of the kept positions
        elif isinstance(keep, torch.Tensor):
            last = torch.take_along_dim(input_ids, keep.expand(input_ids.shape[0], -1), dim=1)
        else:
            last = input_ids[:, -keep:] if keep else input_ids
        output.logits = output.logits + bias[last]
        return output

    return model.register_forward_hook(add_bias, with_kwargs=True)


def small_config(**overrides):
    values = dict(num_generations=3, max_turns=4, max_new_tokens_per_turn=10, max_completion_length=300,
                  max_observation_tokens=64)
    values.update(overrides)
    return A2TGPOConfig(**values)


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


@pytest.fixture
def forced(model, tokenizer):
    handle = force_next_tokens(model, tokenizer, SEARCH_OR_ANSWER)
    yield model
    handle.remove()


def check_structure(traj, tokenizer, cfg, examples, tool=fact_tool):
    """Every invariant of a Trajectory that holds whatever the model generated."""
    template = observation_template(tokenizer, cfg.observation_role, cfg.system_prompt)
    B, T = traj.batch_size, cfg.max_turns
    assert traj.context_ends.shape == (B, T + 1)
    assert traj.prompt_index.tolist() == [b // cfg.num_generations for b in range(B)]
    for b in range(B):
        example = examples[int(traj.prompt_index[b])]
        n = int(traj.attention_mask[b].sum())
        ids, turns, mask = traj.input_ids[b], traj.turn_ids[b], traj.loss_mask[b]
        # real tokens first, then padding that is masked everywhere
        assert traj.attention_mask[b, :n].all() and not traj.attention_mask[b, n:].any()
        assert (ids[n:] == tokenizer.pad_token_id).all() and not mask[n:].any() and (turns[n:] == 0).all()
        # the prompt is the rendered chat template, never trained
        prompt = prompt_ids(tokenizer, example.question, cfg.system_prompt)
        assert ids[: len(prompt)].tolist() == prompt and int(traj.context_ends[b, 0]) == len(prompt)
        assert not mask[: len(prompt)].any()
        # loss_mask is exactly "generated by the model"
        assert torch.equal(mask, turns > 0)
        # each turn is one contiguous block, turns in order 1, 2, ...
        k_turns = len(traj.turn_texts[b])
        assert sorted(set(turns.tolist()) - {0}) == list(range(1, k_turns + 1))
        for k in range(1, k_turns + 1):
            where = (turns == k).nonzero().flatten()
            assert where.numel() >= 1 and (where.diff() == 1).all()
            assert len(where) <= cfg.max_new_tokens_per_turn
        assert n - len(prompt) <= cfg.max_completion_length
        # K tool turns, each followed by the tool's (truncated) observation; context t ends right after it
        K = int(traj.num_tool_turns[b])
        assert (traj.context_ends[b, K + 1:] == -1).all()
        assert [a.kind for a in traj.actions[b][:K]] == ["search"] * K
        assert len(traj.observations[b]) == K
        for k in range(1, K + 1):
            end = int(traj.context_ends[b, k])
            turn_end = int((turns == k).nonzero().max()) + 1
            protocol = get_protocol(cfg.protocol)
            body = protocol.truncate_observation(protocol.observation(tool(traj.actions[b][k - 1].content)),
                                                 cfg.max_observation_tokens, lambda part: encode(tokenizer, part))
            closed = ids[turn_end - 1].item() == template.close_ids[0]
            between = template.between_turns(body, turn_closed=closed)
            assert ids[turn_end:end].tolist() == between
            assert not mask[turn_end:end].any()
            assert turns[end].item() == k + 1, "the next turn starts right after the observation"
        # the last turn is terminal and explains the end reason
        assert bool(traj.has_answer_turn[b]) == (k_turns == K + 1)
        last = traj.actions[b][-1]
        reason = traj.end_reason[b]
        assert reason in ("answer", "malformed", "max_turns", "max_tokens")
        assert (reason == "answer") == (last.kind == "answer")
        if reason == "max_turns":
            assert last.kind == "search" and k_turns == T
        if reason == "malformed":
            assert last.kind == "malformed"
        assert traj.final_answer[b] == (last.content if reason == "answer" else None)
        expected = outcome_reward(traj.final_answer[b], example.answers, reason != "answer", cfg.reward_fn,
                                  cfg.format_penalty)
        assert traj.outcome_reward[b].item() == pytest.approx(expected)


def test_forced_search_rollouts_have_consistent_structure(forced, tokenizer):
    cfg = small_config()
    traj = generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(0))
    assert traj.batch_size == len(EXAMPLES) * cfg.num_generations
    check_structure(traj, tokenizer, cfg, EXAMPLES)
    # the forced grammar gives searches, answers and several depths in one batch
    assert set(traj.end_reason) >= {"answer"}
    assert len(set(traj.num_tool_turns.tolist())) >= 3
    assert set(traj.outcome_reward.tolist()) >= {0.0, 1.0}


def test_old_logprobs_equal_a_fresh_forward(forced, tokenizer):
    cfg = small_config(temperature=0.7)
    traj = generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fresh = token_logprobs(forced, traj.input_ids, traj.attention_mask, temperature=0.7).logprobs
    torch.testing.assert_close(traj.old_logprobs, fresh * traj.loss_mask, rtol=0, atol=1e-5)
    assert (traj.old_logprobs[~traj.loss_mask] == 0).all()
    assert (traj.old_logprobs[traj.loss_mask] <= 0).all() and (traj.old_logprobs[traj.loss_mask] < 0).any()


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampler_logprobs_equal_the_recomputed_forward(forced, tokenizer, top_p):
    """old_logprobs="sampler" (read off the decode's logits) equals "recompute" (a fresh forward) in float32,
    at a temperature ≠ 1 and with nucleus sampling (π_old is the full distribution at τ, not the nucleus)."""
    cfg = small_config(temperature=0.7, top_p=top_p)
    runs = {mode: generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, old_logprobs=mode,
                                    generator=torch.Generator().manual_seed(2)) for mode in ("sampler", "recompute")}
    sampler, recompute = runs["sampler"], runs["recompute"]
    assert torch.equal(sampler.input_ids, recompute.input_ids)
    assert (recompute.old_logprobs[recompute.loss_mask] < -1e-3).any(), "some sampled tokens were not certain"
    torch.testing.assert_close(sampler.old_logprobs, recompute.old_logprobs, rtol=0, atol=1e-5)


def test_evaluation_rollouts_skip_old_logprobs(forced, tokenizer):
    cfg = small_config()
    with_scores = generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, greedy=True, old_logprobs="recompute")
    without = generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, greedy=True, old_logprobs="none")
    assert torch.equal(with_scores.input_ids, without.input_ids)
    assert (without.old_logprobs == 0).all() and (with_scores.old_logprobs != 0).any()
    with pytest.raises(ValueError, match="old_logprobs"):
        generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, old_logprobs="cached")


@pytest.mark.parametrize("reencode", [False, True])
def test_kept_kv_cache_equals_a_fresh_encoding(forced, tokenizer, reencode):
    """keep_kv: row b's cache, holes removed, holds the keys / values a fresh forward over its tokens gives."""
    cfg = small_config()
    traj = generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, keep_kv=True, reencode=reencode,
                             generator=torch.Generator().manual_seed(3))
    prefix = traj.kv_prefix
    lengths = traj.attention_mask.sum(dim=1)
    assert torch.equal(prefix.lengths, lengths - 1), "every token but the last was fed to the cache"
    assert len(set(lengths.tolist())) > 2 and len(set(traj.num_tool_turns.tolist())) >= 2
    for b in range(traj.batch_size):
        n = int(prefix.lengths[b])
        with torch.no_grad():
            fresh = forced(input_ids=traj.input_ids[b: b + 1, :n], use_cache=True).cache
        for layer, kept_k, kept_v in zip(fresh.layers, prefix.keys, prefix.values):
            torch.testing.assert_close(kept_k[b, :, :n], layer.keys[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(kept_v[b, :, :n], layer.values[0], rtol=0, atol=1e-5)
    assert generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg).kv_prefix is None


def test_kv_continuation_equals_reencoding_under_greedy(model, tokenizer):
    """Multi-turn: observations of different lengths create holes; rows end at different turns."""
    handle = force_next_tokens(model, tokenizer, SEARCH_OR_ANSWER)
    try:
        cfg = small_config(max_turns=5)
        kv = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, num_generations=1, greedy=True)
        again = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, num_generations=1, greedy=True,
                                  reencode=True)
    finally:
        handle.remove()
    assert torch.equal(kv.input_ids, again.input_ids)
    assert torch.equal(kv.turn_ids, again.turn_ids) and torch.equal(kv.context_ends, again.context_ends)
    assert kv.end_reason == again.end_reason
    # the choices really depend on the context: rollouts differ and go to different depths
    assert len({tuple(row.tolist()) for row in kv.turn_ids}) > 2
    assert len(set(kv.num_tool_turns.tolist())) >= 2
    torch.testing.assert_close(kv.old_logprobs, again.old_logprobs)


def test_kv_continuation_equals_reencoding_on_long_free_text(model, tokenizer):
    """Random text that ends a turn after the word "enough": rows stop at different steps inside a turn."""
    handle = force_next_tokens(model, tokenizer, {"enough": [IM_END]})
    try:
        cfg = small_config(num_generations=2, max_new_tokens_per_turn=40, max_turns=2)
        kv = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, greedy=True)
        again = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, greedy=True, reencode=True)
    finally:
        handle.remove()
    assert torch.equal(kv.input_ids, again.input_ids)
    assert len(set(kv.loss_mask.sum(dim=1).tolist())) >= 3


# Always a search, of one to many words: rows end each turn at a different step, and go on to the next.
LONG_OR_SHORT_SEARCH = {**ALWAYS_SEARCH, **{w: QUERY_WORDS + ["</search>"] for w in QUERY_WORDS}}


def assert_same_rollouts(mine, theirs):
    """Two runs sampled the same rollouts: tokens, ends, old log-probs, probe scores and kept cache."""
    assert torch.equal(mine.input_ids, theirs.input_ids) and torch.equal(mine.context_ends, theirs.context_ends)
    assert mine.end_reason == theirs.end_reason
    torch.testing.assert_close(mine.old_logprobs, theirs.old_logprobs, rtol=0, atol=1e-5)
    torch.testing.assert_close(mine.probe_logprob_mean, theirs.probe_logprob_mean, rtol=0, atol=1e-5,
                               equal_nan=True)
    assert torch.equal(mine.kv_prefix.lengths, theirs.kv_prefix.lengths)
    real = torch.arange(theirs.kv_prefix.keys[0].shape[2])[None, :] < theirs.kv_prefix.lengths[:, None]  # [B, C]
    for a, b in zip(mine.kv_prefix.keys + mine.kv_prefix.values, theirs.kv_prefix.keys + theirs.kv_prefix.values):
        torch.testing.assert_close(a.transpose(1, 2)[real], b.transpose(1, 2)[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("seed", [7, 8])
def test_parked_rows_rejoin_with_the_same_rollouts(model, tokenizer, monkeypatch, seed):
    """Rows that finished their turn leave the decode batch and re-join it when the observations are fed:
    the same tokens, old log-probs, probe scores and kept cache as when every row rides along."""
    from a2tgpo_lab.rollout import _CachedBatch

    parked = []
    park = _CachedBatch.park
    monkeypatch.setattr(_CachedBatch, "park", lambda self, rows: (parked.append(len(rows)), park(self, rows))[1])
    handle = force_next_tokens(model, tokenizer, LONG_OR_SHORT_SEARCH)
    runs = {}
    try:
        for fraction in (None, 0.25):
            cfg = small_config(num_generations=4, max_turns=3, park_finished_rows=fraction)
            runs[fraction] = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg,
                                               generator=torch.Generator().manual_seed(seed), probe=True, keep_kv=True)
            assert bool(parked) == (fraction is not None)
    finally:
        handle.remove()
    plain = runs[None]
    assert_same_rollouts(runs[0.25], plain)
    # what makes parking matter: rows parked in several turns, and going on after the observations
    assert len(parked) >= 3 and (plain.num_tool_turns == 2).any()


@pytest.mark.parametrize("seed", [7, 8])
def test_shared_histories_split_into_the_same_rollouts(model, tokenizer, monkeypatch, seed):
    """Rollouts with the same history share one cache row while decoding, copied when their draws differ:
    the same tokens, old log-probs, probe scores and kept cache as one row per rollout, in fewer rows."""
    fed = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward",
                        lambda self, **kw: (fed.append(tuple(kw["input_ids"].shape)), forward(self, **kw))[1])
    handle = force_next_tokens(model, tokenizer, LONG_OR_SHORT_SEARCH)
    runs, decoded_rows = {}, {}
    try:
        for share in (False, True):
            fed.clear()
            cfg = small_config(num_generations=4, max_turns=3, share_identical_histories=share)
            runs[share] = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg,
                                            generator=torch.Generator().manual_seed(seed), probe=True, keep_kv=True)
            decoded_rows[share] = sum(rows for rows, width in fed if width == 1)
    finally:
        handle.remove()
    apart = runs[False]
    assert_same_rollouts(runs[True], apart)
    # what makes the sharing matter: a prompt's rollouts that part ways, and fewer rows decoded
    per_prompt = apart.input_ids.view(len(EXAMPLES), 4, -1)
    assert any(len({tuple(row.tolist()) for row in group}) > 1 for group in per_prompt)
    assert decoded_rows[True] < decoded_rows[False]


def test_sampling_is_seeded(forced, tokenizer):
    cfg = small_config()
    first = generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(5))
    second = generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(5))
    other = generate_rollouts(forced, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(6))
    assert torch.equal(first.input_ids, second.input_ids)
    assert first.input_ids.shape != other.input_ids.shape or not torch.equal(first.input_ids, other.input_ids)


def test_search_in_the_last_turn_is_not_executed(model, tokenizer):
    handle = force_next_tokens(model, tokenizer, ALWAYS_SEARCH)
    try:
        cfg = small_config(max_turns=3, format_penalty=-2.0)
        traj = generate_rollouts(model, tokenizer, EXAMPLES[:2], fact_tool, cfg,
                                 generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    check_structure(traj, tokenizer, cfg, EXAMPLES[:2])
    assert traj.end_reason == ["max_turns"] * traj.batch_size
    assert (traj.num_tool_turns == 2).all() and traj.has_answer_turn.all()
    assert all(len(obs) == 2 for obs in traj.observations)
    assert (traj.outcome_reward == -2.0).all()
    # nothing follows the unexecuted search: the row ends with the third turn's tokens
    lengths = traj.attention_mask.sum(dim=1)
    assert all(traj.turn_ids[b, lengths[b] - 1] == 3 for b in range(traj.batch_size))


def test_malformed_turn_is_penalised_not_raised(model, tokenizer):
    # "Oslund </answer>" without an opening tag: unbalanced, hence malformed
    handle = force_next_tokens(model, tokenizer, {**SEARCH_OR_ANSWER, "assistant": ["Oslund"]})
    try:
        cfg = small_config(format_penalty=-1.5)
        traj = generate_rollouts(model, tokenizer, EXAMPLES[:2], fact_tool, cfg,
                                 generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    check_structure(traj, tokenizer, cfg, EXAMPLES[:2])
    assert traj.end_reason == ["malformed"] * traj.batch_size
    assert all(acts[0].kind == "malformed" and len(acts) == 1 for acts in traj.actions)
    assert (traj.outcome_reward == -1.5).all() and (traj.num_tool_turns == 0).all()


def test_completion_budget_ends_rollouts(model, tokenizer):
    handle = force_next_tokens(model, tokenizer, ALWAYS_SEARCH)
    try:
        cfg = small_config(max_turns=6, max_completion_length=40, max_observation_tokens=8)
        traj = generate_rollouts(model, tokenizer, EXAMPLES, fact_tool, cfg, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    check_structure(traj, tokenizer, cfg, EXAMPLES)
    assert set(traj.end_reason) == {"max_tokens"}
    # observations were cut to 8 tokens
    for b in range(traj.batch_size):
        for obs in traj.observations[b]:
            assert len(encode(tokenizer, obs)) <= 8
    first_observations = [(row[0], acts[0].content) for row, acts in zip(traj.observations, traj.actions) if row]
    assert any(len(encode(tokenizer, obs)) < len(encode(tokenizer, fact_tool(query)))
               for obs, query in first_observations)


def test_turn_cap_without_end_of_turn_inserts_the_closing_token(model, tokenizer):
    """A search turn cut by max_new_tokens_per_turn before EOS: the template's close is inserted, untrained."""
    handle = force_next_tokens(model, tokenizer, ALWAYS_SEARCH)  # "<search> W </search>" is 3 tokens
    try:
        cfg = small_config(max_turns=2, max_new_tokens_per_turn=3, num_generations=2)
        traj = generate_rollouts(model, tokenizer, EXAMPLES[:1], fact_tool, cfg, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    check_structure(traj, tokenizer, cfg, EXAMPLES[:1])
    end_of_turn = tokenizer.convert_tokens_to_ids(IM_END)
    for b in range(traj.batch_size):
        first_turn = (traj.turn_ids[b] == 1).nonzero().flatten()
        assert len(first_turn) == 3 and traj.input_ids[b, first_turn[-1]] != end_of_turn
        after = first_turn[-1] + 1
        assert traj.input_ids[b, after] == end_of_turn and not traj.loss_mask[b, after]


def test_on_the_bundled_search_tool():
    from a2tgpo_lab.envs.search import bundled_search_tool
    from a2tgpo_lab.envs.world import bundled_corpus_path, load_split
    import json

    tool = bundled_search_tool(topk=2)
    examples = load_split("train")[:3]
    corpus = [json.loads(line)["contents"] for line in bundled_corpus_path().read_text().splitlines()]
    tokenizer = build_word_tokenizer(corpus + [e.question for e in examples])
    model = make_model(tokenizer)
    entities = sorted({q.split()[0] for e in examples for q in e.meta["queries"]})
    rules = {"assistant": ["<search>"], "<search>": entities, **{e: ["</search>"] for e in entities},
             "</search>": [IM_END]}
    handle = force_next_tokens(model, tokenizer, rules)
    try:
        cfg = small_config(num_generations=2, max_turns=3, max_observation_tokens=24)
        traj = generate_rollouts(model, tokenizer, examples, tool, cfg, generator=torch.Generator().manual_seed(0))
    finally:
        handle.remove()
    check_structure(traj, tokenizer, cfg, examples, tool=tool)
    assert (traj.num_tool_turns == 2).all()
    assert all("<information>" in obs for row in traj.observations for obs in row)


def test_nucleus_sampling_keeps_the_smallest_likely_set():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().repeat(4000, 1)
    generator = torch.Generator().manual_seed(0)
    for top_p, support in ((1.0, {0, 1, 2, 3}), (0.7, {0, 1}), (0.85, {0, 1, 2}), (0.5, {0})):
        drawn = sample_next_tokens(logits, 1.0, top_p, greedy=False, generator=generator)
        assert set(drawn.tolist()) == support, top_p
    kept = sample_next_tokens(logits, 1.0, 0.7, greedy=False, generator=generator).float().mean().item()
    assert kept == pytest.approx(0.3 / 0.8, abs=0.03)  # renormalized: P(token 1) = 0.3 / (0.5 + 0.3)
    assert sample_next_tokens(logits[:2], 1.0, 1.0, greedy=True, generator=None).tolist() == [0, 0]


@pytest.mark.parametrize("rows, vocab, sharpness", [(64, 2150, 3.0), (5, 97, 0.5), (1, 40000, 8.0)])
def test_draw_tokens_equals_torch_multinomial(rows, vocab, sharpness):
    """The vectorised exponential race draws what torch.multinomial draws, from the same generator state,
    and leaves the generator where torch.multinomial does: the sampled rollouts do not change."""
    probs = torch.softmax(torch.randn(rows, vocab, generator=torch.Generator().manual_seed(1)) * sharpness, dim=-1)
    probs[:, ::7] = 0.0  # tokens top-p removed: never drawn
    theirs, mine = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
    for _ in range(3):
        expected = torch.multinomial(probs, 1, generator=theirs).squeeze(-1)
        drawn = draw_tokens(probs, mine)
        assert torch.equal(drawn, expected)
        assert (drawn % 7 != 0).all()
    assert torch.equal(mine.get_state(), theirs.get_state())


def test_draw_tokens_rejects_broken_probabilities():
    with pytest.raises(ValueError, match="NaN or inf"):
        draw_tokens(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(ValueError, match="not all zero"):
        draw_tokens(torch.zeros(2, 3))


def test_missing_chat_template_is_a_clear_error(model, tokenizer):
    bare = make_tokenizer()
    bare.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        generate_rollouts(model, bare, EXAMPLES[:1], fact_tool, small_config())


def test_tool_must_return_text(model, tokenizer):
    handle = force_next_tokens(model, tokenizer, ALWAYS_SEARCH)
    try:
        with pytest.raises(TypeError, match="must return the observation text"):
            generate_rollouts(model, tokenizer, EXAMPLES[:1], lambda query: None, small_config())
    finally:
        handle.remove()


# ---------------------------------------------------------------- chat templates (chat.py)
# Two templates written in the style of real chat models: Qwen3 (an empty think block only in the
# last assistant message; a generation prompt of just the header) and Llama 3 (header ids, BOS in the
# text, trimmed content, an end-of-turn token that is not the EOS of the tokenizer).
QWEN3_STYLE = (
    "{%- for m in messages -%}"
    "{%- if m.role == 'assistant' and loop.last -%}"
    "{{ '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' + m.content + '<|im_end|>\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
LLAMA3_STYLE = (
    "{{ '<|begin_of_text|>' }}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'tool' -%}{{ raise_exception('no tool role here') }}{%- endif -%}"
    "{{ '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + (m.content | trim) + '<|eot_id|>' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif -%}"
)
MARKERS = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<think>", "</think>"]


def templated_tokenizer(template):
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(MARKERS, special_tokens=True)
    tokenizer.chat_template = template
    return tokenizer


@pytest.mark.parametrize("template", [None, QWEN3_STYLE, LLAMA3_STYLE], ids=["chatml", "qwen3", "llama3"])
@pytest.mark.parametrize("closed", [True, False])
def test_appended_pieces_equal_the_rendered_dialogue(template, closed):
    """prompt + turn + between-turns ids + turn ... == the template's rendering of the whole dialogue."""
    tokenizer = templated_tokenizer(template) if template else make_tokenizer()
    template_ids = observation_template(tokenizer, "user")
    turns = ["<search> Tarsk </search>", "<search> Brevik </search>"]
    observations = [fact_tool("Tarsk"), fact_tool("Brevik")]
    ids = prompt_ids(tokenizer, EXAMPLES[0].question)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": EXAMPLES[0].question}]
    for turn, observation in zip(turns, observations):
        ids += encode(tokenizer, turn)
        if closed:  # generation stopped at the end-of-turn token, which the model emitted itself
            ids += template_ids.close_ids[:1]
        ids += template_ids.between_turns(encode(tokenizer, observation), turn_closed=closed)
        messages += [{"role": "assistant", "content": turn}, {"role": "user", "content": observation}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ids == encode(tokenizer, rendered)
    # the id a turn ends with is the one generation stops at
    assert template_ids.close_ids[0] in stop_token_ids(make_model(tokenizer), tokenizer, template_ids)
    assert observation_ids(tokenizer, observations[0], turn_closed=closed) == template_ids.between_turns(
        encode(tokenizer, observations[0]), turn_closed=closed)


@pytest.mark.parametrize("template", [QWEN3_STYLE, LLAMA3_STYLE], ids=["qwen3", "llama3"])
def test_probe_suffix_follows_the_template(template):
    tokenizer = templated_tokenizer(template)
    suffix = probe_suffix(tokenizer, "Kestrel Bay")
    head = [{"role": "user", "content": "q"}]
    answered = tokenizer.apply_chat_template(head + [{"role": "assistant", "content": format_answer("Kestrel Bay")}],
                                             tokenize=False)
    header = tokenizer.apply_chat_template(head, tokenize=False, add_generation_prompt=True)
    assert suffix.prefix_ids + suffix.gold_ids + suffix.suffix_ids == encode(tokenizer, answered[len(header):])
    assert suffix.gold_ids == encode(tokenizer, "Kestrel Bay")
    if template == QWEN3_STYLE:
        assert suffix.prefix_ids[0] == tokenizer.convert_tokens_to_ids("<think>")


def test_observation_ids_truncate_only_the_observation():
    tokenizer = make_tokenizer()
    pieces = observation_template(tokenizer, "user")
    body = encode(tokenizer, fact_tool("Tarsk"))
    cut = observation_ids(tokenizer, fact_tool("Tarsk"), max_tokens=5)
    assert cut == pieces.between_turns(body[:5], turn_closed=True)
    assert observation_ids(tokenizer, fact_tool("Tarsk"), turn_closed=False)[:1] == pieces.close_ids[:1]


def test_unsupported_observation_role_is_a_clear_error():
    with pytest.raises(ValueError, match="observation_role='user'"):
        observation_template(templated_tokenizer(LLAMA3_STYLE), "tool")
    chatml = observation_template(make_tokenizer(), "tool")
    assert chatml.header_ids[-1] == make_tokenizer().convert_tokens_to_ids("tool")


def test_growing_cache_layer_acts_like_concatenation():
    """The sampler's cache layer writes into spare room instead of concatenating; through appends, a crop,
    a row selection and a regrowth it holds exactly what concatenation would, and it really reuses its buffer."""
    from a2tgpo_lab.rollout import _growing_layer_class

    generator = torch.Generator().manual_seed(0)
    layer, expected_keys, expected_values = _growing_layer_class()(), None, None

    def append(n):
        nonlocal expected_keys, expected_values
        keys, values = (torch.randn(3, 2, n, 4, generator=generator) for _ in range(2))
        expected_keys = keys if expected_keys is None else torch.cat([expected_keys, keys], dim=-2)
        expected_values = values if expected_values is None else torch.cat([expected_values, values], dim=-2)
        out = layer.update(keys, values)
        assert torch.equal(out[0], expected_keys) and torch.equal(out[1], expected_values)

    append(5)
    buffer = layer.buffers[0].data_ptr()
    for _ in range(20):                       # one token at a time: written in place until the buffer is full
        append(1)
    assert layer.buffers[0].data_ptr() == buffer, "appends that fit must not reallocate"
    append(2)
    layer.crop(-4)                            # a probe's tokens taken off again: the next write overwrites them
    expected_keys, expected_values = expected_keys[:, :, :-4], expected_values[:, :, :-4]
    append(3)
    grown = layer.buffers[0].data_ptr()
    assert grown == layer.keys.data_ptr()
    rows = torch.tensor([2, 0])
    layer.batch_select_indices(rows)          # ended rollouts dropped: a new buffer from the next write on
    expected_keys, expected_values = expected_keys[rows], expected_values[rows]
    keys, values = (torch.randn(2, 2, 1, 4, generator=generator) for _ in range(2))
    out = layer.update(keys, values)
    assert torch.equal(out[0], torch.cat([expected_keys, keys], dim=-2))
    assert torch.equal(out[1], torch.cat([expected_values, values], dim=-2))
    assert layer.buffers[0].data_ptr() not in (buffer, grown)


def test_a_sliding_window_cache_is_neither_kept_nor_probed_while_sampling():
    """A sliding-window layer drops old tokens, so its cache can be neither compacted for the probe nor
    cropped back after one: the rollout runs as usual and leaves both to the caller (a probe pass after it)."""
    from transformers import Qwen3ForCausalLM

    tokenizer = make_tokenizer()
    full = make_model(tokenizer, init_std=0.1)
    config = full.config.to_dict() | dict(use_sliding_window=True, sliding_window=8, max_window_layers=0,
                                           layer_types=["sliding_attention"] * full.config.num_hidden_layers)
    windowed = Qwen3ForCausalLM(type(full.config)(**config)).eval()
    windowed.load_state_dict(full.state_dict())
    handle = force_next_tokens(windowed, tokenizer, SEARCH_OR_ANSWER)
    try:
        traj = generate_rollouts(windowed, tokenizer, EXAMPLES, fact_tool, small_config(num_generations=2),
                                 generator=torch.Generator().manual_seed(4), probe=True, keep_kv=True)
    finally:
        handle.remove()
    assert int(traj.context_ends.max()) > 8, "the rollouts must outgrow the window"
    assert (traj.num_tool_turns >= 2).any()
    assert traj.kv_prefix is None and traj.probe_logprob_mean is None
