"""Per-token log-probabilities (and entropies) of a sequence under a causal LM.

For a sequence x and sampling temperature τ, with z_l = logits(x_≤l) / τ (a vector over the vocabulary):

    log π(x_l | x_<l) = z_{l-1}[x_l] − logsumexp(z_{l-1})          l ≥ 1, and 0 at l = 0
    H_l               = logsumexp(z_{l-1}) − Σ_v softmax(z_{l-1})_v · z_{l-1}[v]

The output is aligned with the input: position l scores ``input_ids[:, l]``. Computing
``z[x] − logsumexp(z)`` gives the same number as ``log_softmax(z).gather(x)`` without holding a
second [B, L, V] tensor, and ``chunk`` bounds the logits alive at once to chunk × L × V, which is what
dominates memory for a real vocabulary (150k entries). The rollout's old log-probs, the trainer's
forward and the IG probe all go through here, so π_old and π_θ are computed the same way.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

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
                   position_ids: Optional[torch.Tensor] = None) -> TokenLogprobs:
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

    Returns:
        ``TokenLogprobs(logprobs [B, L] float32, entropy [B, L] float32 or None)``. Position 0, padding
        and a row's first real token hold 0; position l scores ``input_ids[:, l]`` given ``input_ids[:, :l]``.
    """
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape:
        raise ValueError(f"token_logprobs: input_ids {tuple(input_ids.shape)} and attention_mask "
                         f"{tuple(attention_mask.shape)} must both be [B, L].")
    if temperature <= 0:
        raise ValueError(f"token_logprobs: temperature={temperature!r} must be > 0.")
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)
    batch = input_ids.shape[0]
    step = batch if chunk is None else max(1, int(chunk))
    logprob_parts, entropy_parts = [], []
    for start in range(0, batch, step):
        rows = slice(start, start + step)
        logits = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                       position_ids=position_ids[rows], use_cache=False).logits
        # logits[:, l] predicts token l + 1, so position 0 has no score
        scored = logprobs_from_logits(logits[:, :-1], input_ids[rows, 1:], temperature, return_entropy)
        del logits
        logprob_parts.append(scored.logprobs)
        entropy_parts.append(scored.entropy)
    real = attention_mask[:, 1:].bool() & attention_mask[:, :-1].bool()  # token and its predictor both real
    zero_column = torch.zeros(batch, 1, device=input_ids.device)
    logprobs = torch.cat([zero_column, torch.cat(logprob_parts).masked_fill(~real, 0.0)], dim=1)
    entropy = None
    if return_entropy:
        entropy = torch.cat([zero_column, torch.cat(entropy_parts).masked_fill(~real, 0.0)], dim=1)
    return TokenLogprobs(logprobs, entropy)
