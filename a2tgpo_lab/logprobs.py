"""Per-token log-probabilities (and entropies) of a sequence under a causal LM.

For a sequence x and sampling temperature τ, with z_l = logits(x_≤l) / τ (a vector over the vocabulary):

    log π(x_l | x_<l) = z_{l-1}[x_l] − logsumexp(z_{l-1})          l ≥ 1, and 0 at l = 0
    H_l               = logsumexp(z_{l-1}) − Σ_v softmax(z_{l-1})_v · z_{l-1}[v]

The output is aligned with the input: position l scores ``input_ids[:, l]``. Computing
``z[x] − logsumexp(z)`` gives the same number as ``log_softmax(z).gather(x)`` without holding a
second [B, L, V] tensor, and ``chunk`` bounds the logits alive at once to chunk × L × V, which is what
dominates memory for a real vocabulary (150k entries). The rollout's old log-probs, the trainer's
forward and the IG probe all go through here, so π_old and π_θ are computed the same way.

Only some tokens are ever read (the loss reads the model's own tokens, ~12% of a multi-turn batch;
the rest are prompt, observations and padding), so ``score_mask`` names them and the vocabulary
projection (lm_head) and the log-softmax run only at their predictor positions: the transformer
body still reads every token, but the [positions, V] work shrinks to the scored ones. The values are
the same as scoring everything and reading those positions.
"""
from __future__ import annotations

import copy
from typing import NamedTuple, Optional, Sequence

import torch


class TokenLogprobs(NamedTuple):
    """``logprobs`` [B, L] and ``entropy`` [B, L] (None unless asked for); unpacks as a pair."""

    logprobs: torch.Tensor
    entropy: Optional[torch.Tensor]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """position_ids [B, L] = (number of real tokens up to and including l) − 1, clamped at 0.

    With holes or padding anywhere in a row, every real token still gets the position it would have
    in the row's compact (hole-free) sequence, which is what makes a padded batch and a single
    sequence give the same logits.
    """
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def logprobs_from_logits(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                         return_entropy: bool = False) -> TokenLogprobs:
    """log π(target | ·) and optionally the entropy at each position, from logits [..., V] and targets [...]."""
    scaled = logits.float() / temperature
    log_normalizer = torch.logsumexp(scaled, dim=-1)
    logprobs = scaled.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - log_normalizer
    entropy = None
    if return_entropy:
        entropy = log_normalizer - (torch.softmax(scaled, dim=-1) * scaled).sum(dim=-1)
    return TokenLogprobs(logprobs, entropy)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float = 1.0,
                   chunk: Optional[int] = None, return_entropy: bool = False,
                   position_ids: Optional[torch.Tensor] = None,
                   score_mask: Optional[torch.Tensor] = None,
                   shared_prefix: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
                   bucket_cost: Optional[int] = None, identical_rows_once: bool = False) -> TokenLogprobs:
    """Log-probability of every token given its prefix, aligned with ``input_ids`` (equations above).

    Args:
        model: a causal LM (``transformers`` model or a peft wrapper); called as is, so the caller
            chooses ``torch.no_grad()`` and train/eval mode.
        input_ids: [B, L] long.
        attention_mask: [B, L], 1 for real tokens, 0 for padding on the left or right. (A hole inside
            a row is not supported: the token after it would be scored from the hole's logits.)
        temperature: τ, the logits are divided by it (the sampling temperature).
        chunk: rows per forward pass (None = all B at once); bounds the [chunk, L, V] logits.
        return_entropy: also return the entropy of each predictive distribution.
        position_ids: [B, L]; default :func:`positions_from_mask`.
        score_mask: [B, L] bool, the tokens to score (e.g. the loss mask); logits are then computed
            only at the positions that predict them (module docstring). None scores every real token
            from logits computed at every position.
        shared_prefix: ``(lengths [B], groups [B])``: rows of one group begin with the same
            ``lengths[b]`` tokens (the G rollouts of a prompt share the prompt), so that prefix is
            encoded once per group (:func:`_shared_prefix_forward`); only tokens predicted from after
            the prefix are scored (position l > lengths[b]: pass lengths one short of the shared part).
        bucket_cost: with ``shared_prefix``, run the rows' tokens after the prefix in length buckets
            (:func:`length_buckets`), one forward each, where one more forward is worth this many
            padded tokens; None = one forward padded to the longest row.
        identical_rows_once: rows that are the same in every input (a prompt's rollouts that sampled
            the same tokens) are computed once and their results copied; under autograd the copies'
            gradients add up, so it is the same as computing every row.

    Returns:
        ``TokenLogprobs(logprobs [B, L] float32, entropy [B, L] float32 or None)``. Position 0, padding,
        a row's first real token and tokens outside ``score_mask`` hold 0; position l scores
        ``input_ids[:, l]`` given ``input_ids[:, :l]``.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"token_logprobs: input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must both be [B, L].")
    if score_mask is not None and score_mask.shape != input_ids.shape:
        raise ValueError(f"token_logprobs: score_mask {tuple(score_mask.shape)} must match input_ids "
                         f"{tuple(input_ids.shape)}.")
    if temperature <= 0:
        raise ValueError(f"token_logprobs: temperature={temperature!r} must be > 0.")
    if identical_rows_once:
        inputs = [input_ids, attention_mask] + [t for t in (position_ids, score_mask) if t is not None]
        inputs += [t[:, None] for t in shared_prefix or ()]
        every_input = torch.cat([t.to(input_ids.device).long() for t in inputs], dim=1)   # [B, ·] per row
        firsts, copy_of = distinct_rows([tuple(row) for row in every_input.tolist()])
        if len(firsts) < len(input_ids):
            index, copies = torch.tensor(firsts, device=input_ids.device), copy_of.to(input_ids.device)

            def pick(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
                return None if t is None else t[index.to(t.device)]

            once = token_logprobs(model, input_ids[index], attention_mask[index], temperature, chunk, return_entropy,
                                  pick(position_ids), pick(score_mask),
                                  None if shared_prefix is None else tuple(pick(t) for t in shared_prefix),
                                  bucket_cost)
            return TokenLogprobs(once.logprobs[copies], None if once.entropy is None else once.entropy[copies])
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)
    real = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # token and its predictor both real
    if score_mask is not None:
        real = real & score_mask[:, 1:].bool()
    # predicts[b, l]: position l's logits are needed because they score token l + 1
    predicts = torch.cat([real, torch.zeros_like(real[:, :1])], dim=1)
    next_ids = torch.cat([input_ids[:, 1:], input_ids[:, :1]], dim=1)   # the last column is never read
    if shared_prefix is not None:
        lengths, groups = shared_prefix
        predicts &= torch.arange(predicts.shape[1], device=predicts.device)[None, :] >= lengths[:, None]
        logits = _shared_prefix_forward(model, input_ids, attention_mask, lengths, groups, predicts,
                                        every_position=score_mask is None, bucket_cost=bucket_cost)
        scored = logprobs_from_logits(logits, next_ids[predicts], temperature, return_entropy)
        return TokenLogprobs(_scatter_shifted(scored.logprobs, predicts),
                             _scatter_shifted(scored.entropy, predicts) if return_entropy else None)
    batch = input_ids.shape[0]
    step = batch if chunk is None else max(1, int(chunk))
    logprobs = torch.zeros(input_ids.shape, device=input_ids.device)
    entropy = torch.zeros(input_ids.shape, device=input_ids.device) if return_entropy else None
    for start in range(0, batch, step):
        rows = slice(start, start + step)
        keep = predicts[rows]
        if not keep.any():
            continue
        # a boolean logits_to_keep makes the model project only those hidden states: logits [N, V];
        # without a score_mask every position is projected, as a plain forward does
        logits = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                       position_ids=position_ids[rows], use_cache=False,
                       logits_to_keep=keep if score_mask is not None else 0).logits
        logits = logits if score_mask is not None else logits[keep]
        scored = logprobs_from_logits(logits, next_ids[rows][keep], temperature, return_entropy)
        del logits
        logprobs[rows] = _scatter_shifted(scored.logprobs, keep)
        if return_entropy:
            entropy[rows] = _scatter_shifted(scored.entropy, keep)
    return TokenLogprobs(logprobs, entropy)


def distinct_rows(keys) -> tuple[list[int], torch.Tensor]:
    """Equal keys share one computation: the index of each distinct key's first row, and for every row
    which distinct key it has (``copy_of`` [N], to spread the shared results back over the rows)."""
    slot: dict = {}
    firsts, copy_of = [], []
    for row, key in enumerate(keys):
        if key not in slot:
            slot[key] = len(firsts)
            firsts.append(row)
        copy_of.append(slot[key])
    return firsts, torch.tensor(copy_of, dtype=torch.long)


def length_buckets(lengths: Sequence[int], pass_cost: float) -> list[list[int]]:
    """Rows split into buckets, each run as one forward padded to its longest row: the split that
    minimises the padded tokens plus ``pass_cost`` tokens' worth of work per forward,

        cost = Σ_buckets ( |bucket| · max_{b ∈ bucket} lengths[b]  +  pass_cost )

    found exactly by dynamic programming over the rows sorted by length, longest first (an optimal
    bucket is always a run of that order: a short row in a long bucket pads as much wherever it sits).
    Returns each bucket's row indices, longest rows first; together they cover every row once.
    """
    order = sorted(range(len(lengths)), key=lambda row: -lengths[row])   # stable: ties keep row order
    best = [0.0] + [float("inf")] * len(order)    # best[j]: cost of the first j rows of `order`
    start = [0] * (len(order) + 1)                # where the last bucket of that split begins
    for j in range(1, len(order) + 1):
        for i in range(j):                         # the last bucket is order[i:j], padded to order[i]
            cost = best[i] + (j - i) * lengths[order[i]] + pass_cost
            if cost < best[j]:
                best[j], start[j] = cost, i
    buckets, j = [], len(order)
    while j > 0:
        buckets.append(order[start[j]:j])
        j = start[j]
    return buckets[::-1]


def _select_rows(cache, index: torch.Tensor):
    """A cache holding rows ``index`` of ``cache``, which is left as it was (selecting rebinds each
    layer's tensors, so shallow copies of the layers are enough; autograd sums the copies' gradients)."""
    selected = copy.copy(cache)
    selected.layers = [copy.copy(layer) for layer in cache.layers]
    selected.batch_select_indices(index)
    return selected


def _shared_prefix_forward(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, lengths: torch.Tensor,
                           groups: torch.Tensor, predicts: torch.Tensor, every_position: bool,
                           bucket_cost: Optional[int] = None) -> torch.Tensor:
    """Logits [N, V] at the True positions of ``predicts`` (row-major), encoding each group's prefix once.

    pass 0: the head every group's prefix shares (the system prompt), once, its KV copied to each group;
    pass 1: the rest of the prefix of one row per group, right-padded to the longest, into the KV cache;
    copy:   each row takes its group's cache row (under autograd the copies sum the rows' gradients
            back into the one prefix, so the gradient is the same as encoding it in every row);
    pass 2: every row's remaining tokens after the cache, at positions ``lengths[b]``, ``lengths[b] + 1`` …;
            the prefix padding is a hole that attention masks out. With ``bucket_cost`` the rows go
            in length buckets (:func:`length_buckets`), so a short rollout is not padded to the longest.
    Exact up to floating-point rounding; ``predicts`` must not select positions inside the prefix.
    With ``every_position`` the lm_head runs at every position of pass 2 and the needed ones are read.
    """
    device = input_ids.device
    lengths, groups = lengths.to(device), groups.to(device)
    leaders, copy_of = distinct_rows(groups.tolist())
    leaders, copy_of = torch.tensor(leaders, device=device), copy_of.to(device)    # one row per group
    width = int(lengths.max())
    columns = torch.arange(width, device=device)
    in_prefix = columns[None, :] < lengths[:, None]                                 # [B, P]
    if width < 1 or not torch.equal(torch.where(in_prefix, input_ids[:, :width], -1),
                                    torch.where(in_prefix[leaders], input_ids[leaders, :width], -1)[copy_of]):
        raise ValueError("token_logprobs: shared_prefix names rows of one group whose first `lengths` tokens "
                         "differ (or an empty prefix); pass the groups of rows that really share a prefix.")
    prefix_mask = in_prefix[leaders].long()
    # the head shared by every group: columns before the first where the leaders' prefixes differ
    leader_ids = input_ids[leaders, :width]
    differs = ((leader_ids != leader_ids[:1]) | (prefix_mask == 0)).any(dim=0)
    head = int(differs.nonzero()[0]) if differs.any() else width
    head = min(head, int(lengths[leaders].min()) - 1)  # pass 1 keeps ≥ 1 token per group
    cache = None
    if head > 0 and len(leaders) > 1:
        cache = model(input_ids=leader_ids[:1, :head], use_cache=True, logits_to_keep=1).cache
        cache.batch_select_indices(torch.zeros(len(leaders), dtype=torch.long, device=device))
    else:
        head = 0
    cache = model(input_ids=leader_ids[:, head:], attention_mask=prefix_mask,
                  position_ids=positions_from_mask(prefix_mask)[:, head:], cache=cache, use_cache=True,
                  logits_to_keep=1).cache

    rest_lengths = attention_mask.sum(dim=1) - lengths                            # [B] tokens after the prefix
    buckets = (length_buckets(rest_lengths.tolist(), bucket_cost) if bucket_cost is not None
               else [list(range(len(input_ids)))])
    pieces = []
    for bucket in buckets:
        rows = torch.tensor(bucket, device=device)
        rest = int(rest_lengths[rows].max())
        offsets = torch.arange(rest, device=device)
        take = (lengths[rows, None] + offsets[None, :]).clamp(max=input_ids.shape[1] - 1)  # [b, R] source columns
        rest_mask = (offsets[None, :] < rest_lengths[rows, None]).long()
        keep = torch.gather(predicts[rows], 1, take) & rest_mask.bool()
        logits = model(input_ids=torch.gather(input_ids[rows], 1, take),
                       attention_mask=torch.cat([prefix_mask[copy_of[rows]], rest_mask], dim=1),
                       position_ids=lengths[rows, None] + offsets[None, :],
                       cache=_select_rows(cache, copy_of[rows]), use_cache=True,
                       logits_to_keep=0 if every_position else keep).logits
        pieces.append(logits[keep] if every_position else logits)
    if len(buckets) == 1 and buckets[0] == sorted(buckets[0]):
        return pieces[0]
    # back to row-major order: the rows' scored positions, bucket by bucket, then sorted by row
    counts = predicts.sum(dim=1)
    first = torch.cumsum(counts, dim=0) - counts                                     # row b's first output
    source = torch.cat([first[b] + torch.arange(int(counts[b]), device=device) for bucket in buckets for b in bucket])
    return torch.cat(pieces)[torch.argsort(source)]


def _scatter_shifted(values: torch.Tensor, predicts: torch.Tensor) -> torch.Tensor:
    """Place ``values`` [N] (one per True of ``predicts`` [B, L]) at the token each one scores: l + 1."""
    out = torch.zeros(predicts.shape, dtype=values.dtype, device=values.device).masked_scatter(predicts, values)
    return torch.cat([torch.zeros_like(out[:, :1]), out[:, :-1]], dim=1)


def token_budget_batches(lengths: torch.Tensor, max_tokens: int,
                         groups: Optional[torch.Tensor] = None) -> list[torch.Tensor]:
    """Split rows into batches of at most ``max_tokens`` padded tokens each (rows × longest row).

    Rows are sorted by length first, so each batch pads only to its own longest row instead of the
    whole batch's (length bucketing); a row longer than the budget is a batch of its own. With
    ``groups`` [B] (e.g. the prompt of each rollout) the rows of a group stay in one batch whenever
    the group fits the budget, groups ordered by their longest row: a shared prompt is then encoded
    once per group, not once per batch it was split over. Returns the row indices of each batch;
    together they cover every row exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"token_budget_batches: max_tokens={max_tokens!r} must be >= 1.")
    lengths = lengths.cpu().clamp(min=1)
    order = torch.argsort(lengths, descending=True, stable=True).tolist()
    if groups is None:
        units = [[row] for row in order]
    else:
        members: dict[int, list[int]] = {}
        for row in order:                                    # longest group first, its rows longest first
            members.setdefault(int(groups[row]), []).append(row)
        units = []
        for rows in members.values():                        # a group over the budget is cut into pieces
            fit = max(1, max_tokens // int(lengths[rows[0]]))
            units += [rows[i: i + fit] for i in range(0, len(rows), fit)]
    batches, current, width = [], [], 0
    for unit in units:
        wider = max(width, int(lengths[unit[0]]))
        if current and (len(current) + len(unit)) * wider > max_tokens:
            batches.append(torch.tensor(current))
            current, wider = [], int(lengths[unit[0]])
        current += unit
        width = wider
    if current:
        batches.append(torch.tensor(current))
    return batches
