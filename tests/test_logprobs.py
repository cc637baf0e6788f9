"""Per-token log-probs and entropies: aligned, padding-proof, chunking-proof, temperature-aware."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from a2tgpo_lab.logprobs import (length_buckets, logprobs_from_logits, positions_from_mask, token_budget_batches,
                                 token_logprobs)
from a2tgpo_lab.tiny import build_tiny_qwen, build_word_tokenizer


@pytest.fixture(scope="module")
def model():
    tokenizer = build_word_tokenizer(["alpha beta gamma delta epsilon zeta eta theta iota kappa"])
    model = build_tiny_qwen(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 2:
                param.normal_(0, 0.2)
    return model.eval()


def sequences(vocab: int, lengths=(7, 4, 9), seed=0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(5, vocab, (n,), generator=generator) for n in lengths]


def by_hand(model, ids: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(x_l | x_<l) and the entropy at l, for one unpadded sequence, straight from log_softmax."""
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids[None]).logits[0] / temperature, dim=-1)
    scores = torch.zeros(len(ids))
    entropy = torch.zeros(len(ids))
    for l in range(1, len(ids)):
        scores[l] = logprobs[l - 1, ids[l]]
        entropy[l] = -(logprobs[l - 1].exp() * logprobs[l - 1]).sum()
    return scores, entropy


def pad(rows: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for b, row in enumerate(rows):
        cols = slice(0, len(row)) if side == "right" else slice(length - len(row), length)
        ids[b, cols], mask[b, cols] = row, 1
    return ids, mask


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("temperature", [1.0, 0.6])
def test_padded_batch_equals_each_sequence_alone(model, side, temperature):
    rows = sequences(model.config.vocab_size)
    ids, mask = pad(rows, side)
    with torch.no_grad():
        out = token_logprobs(model, ids, mask, temperature=temperature, return_entropy=True)
    for b, row in enumerate(rows):
        expected, expected_entropy = by_hand(model, row, temperature)
        real = mask[b].bool()
        torch.testing.assert_close(out.logprobs[b, real], expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(out.entropy[b, real], expected_entropy, rtol=0, atol=1e-5)
        assert (out.logprobs[b, ~real] == 0).all() and (out.entropy[b, ~real] == 0).all()


def test_chunked_rows_give_the_same_values(model):
    ids, mask = pad(sequences(model.config.vocab_size, lengths=(5, 8, 3, 6, 7)), "right")
    with torch.no_grad():
        whole = token_logprobs(model, ids, mask)
        chunked = token_logprobs(model, ids, mask, chunk=2)
    torch.testing.assert_close(whole.logprobs, chunked.logprobs)
    assert whole.entropy is None


def test_gradient_flows_to_the_weights(model):
    ids, mask = pad(sequences(model.config.vocab_size), "right")
    logprobs, _ = token_logprobs(model, ids, mask, chunk=1)
    logprobs.sum().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    model.zero_grad(set_to_none=True)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(2, 40), st.floats(0.2, 3.0), st.integers(0, 10_000))
def test_logprobs_from_logits_matches_log_softmax(rows, vocab, temperature, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, 3, vocab, generator=generator) * 4
    targets = torch.randint(0, vocab, (rows, 3), generator=generator)
    out = logprobs_from_logits(logits, targets, temperature, return_entropy=True)
    reference = torch.log_softmax(logits / temperature, dim=-1)
    torch.testing.assert_close(out.logprobs, reference.gather(-1, targets[..., None])[..., 0], rtol=0, atol=1e-5)
    torch.testing.assert_close(out.entropy, -(reference.exp() * reference).sum(-1), rtol=0, atol=1e-5)
    assert (out.entropy >= -1e-6).all() and (out.entropy <= torch.log(torch.tensor(float(vocab))) + 1e-5).all()


def test_positions_skip_padding_and_holes():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 0, 0, 1, 1]])
    assert positions_from_mask(mask).tolist() == [[0, 0, 0, 1, 2], [0, 0, 0, 1, 2]]


def test_bad_shapes_and_temperature_are_clear_errors(model):
    ids = torch.zeros(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="attention_mask"):
        token_logprobs(model, ids, torch.ones(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(model, ids, torch.ones(2, 5), temperature=0.0)


@pytest.mark.parametrize("entropy", [False, True])
def test_scoring_only_masked_tokens_gives_their_full_scores(model, entropy):
    """score_mask: the lm_head runs only where the masked tokens are predicted; their values are unchanged."""
    ids, mask = pad(sequences(model.config.vocab_size, lengths=(7, 4, 9)), "right")
    chosen = torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.5
    with torch.no_grad():
        full = token_logprobs(model, ids, mask, temperature=0.8, return_entropy=entropy)
        part = token_logprobs(model, ids, mask, temperature=0.8, return_entropy=entropy, score_mask=chosen)
    kept = chosen & mask.bool()
    kept[:, 0] = False
    torch.testing.assert_close(part.logprobs[kept], full.logprobs[kept], rtol=0, atol=1e-5)
    assert (part.logprobs[~kept] == 0).all() and (full.logprobs[kept] != 0).all()
    if entropy:
        torch.testing.assert_close(part.entropy[kept], full.entropy[kept], rtol=0, atol=1e-5)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 50), min_size=1, max_size=30), st.integers(1, 200), st.booleans())
def test_token_budget_batches_cover_every_row_within_the_budget(lengths, budget, grouped):
    groups = torch.arange(len(lengths)) // 4 if grouped else None
    lengths = torch.tensor(lengths)
    batches = token_budget_batches(lengths, budget, groups)
    rows = torch.cat(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) == 1 or len(batch) * int(lengths[batch].max()) <= budget
    if not grouped:  # sorted by length: no batch holds a row longer than one of an earlier batch
        tops = [int(lengths[b].max()) for b in batches]
        assert tops == sorted(tops, reverse=True)
    else:  # a group that fits the budget is never split
        for group in groups.unique():
            rows_of = (groups == group).nonzero().flatten()
            if len(rows_of) * int(lengths[rows_of].max()) <= budget:
                assert sum(bool(set(rows_of.tolist()) & set(b.tolist())) for b in batches) == 1


def grouped_rows(vocab: int, seed=0, head: int = 0):
    """Two groups of rows sharing a prefix (4 and 6 tokens, both starting with the same ``head`` tokens, as
    prompts start with one system prompt), different continuations, right-padded."""
    generator = torch.Generator().manual_seed(seed)
    common = torch.randint(5, vocab, (head,), generator=generator)
    prefixes = [torch.cat([common, torch.randint(5, vocab, (n - head,), generator=generator)]) for n in (4, 6)]
    rows, lengths, groups = [], [], []
    for group, extra in ((0, 3), (0, 5), (1, 2), (0, 4), (1, 6)):
        tail = torch.randint(5, vocab, (extra,), generator=generator)
        rows.append(torch.cat([prefixes[group], tail]))
        lengths.append(len(prefixes[group]))
        groups.append(group)
    ids, mask = pad(rows, "right")
    return ids, mask, torch.tensor(lengths), torch.tensor(groups)


@pytest.mark.parametrize("bucket_cost", [None, 0, 2])
@pytest.mark.parametrize("head", [0, 3])
@pytest.mark.parametrize("scored_only", [True, False])
def test_shared_prefix_gives_the_same_logprobs_and_gradient(model, scored_only, head, bucket_cost, monkeypatch):
    """Encoding each group's prefix once (its KV copied to the group's rows), and a head all groups share
    once more, changes neither the scores of the tokens after it nor the gradient; nor does running the
    rows after the prefix in length buckets (whose outputs go back to row order)."""
    ids, mask, lengths, groups = grouped_rows(model.config.vocab_size, head=head)
    passes = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, **kw: (passes.append(kw["input_ids"].shape), forward(self, **kw))[1])
    after = (torch.arange(ids.shape[1])[None, :] > lengths[:, None]) & mask.bool()  # predicted after the prefix
    score = after if scored_only else None
    results = {}
    for name, shared in (("plain", None), ("shared", (lengths, groups))):
        model.zero_grad(set_to_none=True)
        out = token_logprobs(model, ids, mask, temperature=0.7, return_entropy=True, score_mask=score,
                             shared_prefix=shared, bucket_cost=bucket_cost)
        (out.logprobs * after).sum().backward()
        results[name] = (out, torch.cat([p.grad.flatten() for p in model.parameters()]))
    model.zero_grad(set_to_none=True)
    (plain, plain_grad), (shared, shared_grad) = results["plain"], results["shared"]
    torch.testing.assert_close(shared.logprobs[after], plain.logprobs[after], rtol=0, atol=1e-5)
    torch.testing.assert_close(shared.entropy[after], plain.entropy[after], rtol=0, atol=1e-5)
    assert (shared.logprobs[~after] == 0).all()
    torch.testing.assert_close(shared_grad, plain_grad, rtol=1e-4, atol=1e-5)
    assert plain_grad.abs().max() > 1e-3
    # plain: one pass; shared: [pass 0 over the head (1 row),] pass 1 (one row per group), pass 2 (every row,
    # or one pass per length bucket: the rows' tokens after the prefix number 3, 5, 2, 4, 6)
    rest = mask.sum(dim=1) - lengths
    buckets = [[(len(rows), int(rest[rows].max())) for rows in length_buckets(rest.tolist(), bucket_cost)]
               if bucket_cost is not None else [(5, int(rest.max()))]][0]
    assert passes[1:] == ([(1, head)] if head else []) + [(2, 6 - head)] + buckets
    assert len(buckets) == {None: 1, 0: 5, 2: 2}[bucket_cost]  # cost 2: rows {4, 1} then {3, 0, 2}


@pytest.mark.parametrize("shared", [False, True])
def test_identical_rows_are_computed_once_with_the_same_logprobs_and_gradient(model, shared, monkeypatch):
    """Rows equal in every input are forwarded once and their results copied; the copies' gradients add up,
    so scores and gradient are those of computing every row."""
    ids, mask, lengths, groups = grouped_rows(model.config.vocab_size, head=3)
    twice = torch.tensor([0, 1, 0, 2, 3, 1, 4, 0])          # rows 0 and 1 repeated: 5 distinct of 8
    ids, mask, lengths, groups = ids[twice], mask[twice], lengths[twice], groups[twice]
    after = (torch.arange(ids.shape[1])[None, :] > lengths[:, None]) & mask.bool()
    weights = torch.randn(after.shape, generator=torch.Generator().manual_seed(0))  # each copy its own weight
    rows_seen = []
    forward = type(model).forward
    monkeypatch.setattr(type(model), "forward", lambda self, **kw: (rows_seen.append(kw["input_ids"].shape[0]), forward(self, **kw))[1])
    results = {}
    for once in (False, True):
        rows_seen.clear()
        model.zero_grad(set_to_none=True)
        out = token_logprobs(model, ids, mask, temperature=0.7, return_entropy=True, score_mask=after,
                             shared_prefix=(lengths, groups) if shared else None, identical_rows_once=once)
        (out.logprobs * after * weights).sum().backward()
        results[once] = (out, torch.cat([p.grad.flatten() for p in model.parameters()]), max(rows_seen))
    model.zero_grad(set_to_none=True)
    (every, every_grad, every_rows), (once, once_grad, once_rows) = results[False], results[True]
    torch.testing.assert_close(once.logprobs, every.logprobs, rtol=0, atol=1e-5)
    torch.testing.assert_close(once.entropy, every.entropy, rtol=0, atol=1e-5)
    torch.testing.assert_close(once_grad, every_grad, rtol=1e-4, atol=1e-5)
    assert every_rows == 8 and once_rows == 5


def test_length_buckets_minimise_padding_plus_a_cost_per_pass():
    """Hand-computed: lengths 10, 9, 2, 1 (rows 0-3, given in the order 9, 1, 10, 2).
    cost 0: no padding, a bucket per row (36 tokens, +0). cost 5: {10, 9} {2, 1}: 20 + 4 + 2·5 = 34,
    against one bucket 40 + 5 = 45, or {10} {9} {2, 1}: 10 + 9 + 4 + 15 = 38. cost 50: one bucket."""
    lengths = [9, 1, 10, 2]
    assert length_buckets(lengths, 0) == [[2], [0], [3], [1]]
    assert length_buckets(lengths, 5) == [[2, 0], [3, 1]]
    assert length_buckets(lengths, 50) == [[2, 0, 3, 1]]
    assert length_buckets([], 5) == []
    for cost in (0, 3, 7, 100):  # every row exactly once
        assert sorted(row for bucket in length_buckets(lengths * 3, cost) for row in bucket) == list(range(12))


def test_shared_prefix_that_differs_is_a_clear_error(model):
    ids, mask, lengths, groups = grouped_rows(model.config.vocab_size)
    with pytest.raises(ValueError, match="shared_prefix"):
        token_logprobs(model, ids, mask, shared_prefix=(lengths, torch.zeros_like(groups)))
