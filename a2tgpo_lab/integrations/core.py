"""Token-level entry points shared by every engine adapter (framework-free: tensors in, tensors out).

Engines hand over per-token tensors; the package's estimator works per turn. This module is the
bridge, in three small steps:

1. ``turn_ids_from_mask``           turn ids from a model-token mask: each maximal run of model tokens
                                    is one assistant turn (observations and chat-template tokens between
                                    turns are outside the mask), numbered 1, 2, … per row.
2. ``per_turn_from_token_rewards``  per-turn IG and the outcome from token rewards laid out as the
                                    released A²TGPO code writes them: IG of turn k somewhere in turn k's
                                    span (its last model token, or the end of its observation), the
                                    outcome at the last model token (or after it).
3. ``turn_credit``                  §3-§5 of one batch (``a2tgpo_lab.credit``, the same call the
                                    package's trainer makes): what every model token is trained with.

Turn boundaries come from explicit turn ids or from the model-token mask, never from where a reward
is non-zero: a turn whose IG is exactly 0 stays its own turn.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..credit import TurnCredit, turn_credit  # noqa: F401  (re-exported: the adapters' entry point)


def turn_ids_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """turn_ids[b, l] = k if token l is in the k-th run of ones of ``mask[b]``, else 0.

    mask: [B, L] bool/int, 1 at model-generated tokens. Returns [B, L] long.
    """
    if mask.dim() != 2:
        raise ValueError(f"mask must be [B, L]; got shape {tuple(mask.shape)}.")
    model = mask.bool()
    previous = torch.zeros_like(model)
    previous[:, 1:] = model[:, :-1]
    starts = model & ~previous
    return torch.where(model, starts.long().cumsum(dim=1), torch.zeros_like(model, dtype=torch.long))


def per_turn_from_token_rewards(token_rewards: torch.Tensor, turn_ids: torch.Tensor,
                                num_tool_turns: Optional[torch.Tensor] = None,
                                width: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-turn IG [B, T], outcome [B] and K [B] from rewards written at token positions.

    With p_i the row's last model token and span(k) the positions from turn k's first model token up
    to (not including) turn k + 1's first one:

        outcome_i = Σ_{l ≥ p_i} r_{i,l}                     (verl writes it at the last valid token)
        IG_{i,k}  = Σ_{l ∈ span(k), l < p_i} r_{i,l}        for tool turns k = 1 .. K_i

    K_i = ``num_tool_turns`` when given, else (number of turns) − 1: the last turn is the terminal
    turn (the answer, or the malformed / capped turn that ended the rollout). A reward inside the
    terminal turn before p_i, or before the first model token, has no turn to go to and raises.
    IG travels as a number in a token slot, so an IG dropped upstream (NaN) must be written as 0 here
    and then counts as a group member with value 0.

    Args:
        token_rewards: [B, L] float. turn_ids: [B, L] long (0 = not a model token).
        num_tool_turns: optional [B] int, K_i; must be (number of turns) − 1 or (number of turns).
        width: T, the number of turn columns (default: the most turns in the batch).

    Returns:
        (ig [B, T] NaN past K_i, outcome [B], num_tool_turns [B] long).
    """
    if token_rewards.shape != turn_ids.shape or token_rewards.dim() != 2:
        raise ValueError(f"token_rewards {tuple(token_rewards.shape)} and turn_ids {tuple(turn_ids.shape)} must "
                         "both be [B, L].")
    batch, length = turn_ids.shape
    turn_ids = turn_ids.long()
    n_turns = turn_ids.max(dim=1).values
    empty = (n_turns == 0).nonzero()
    if len(empty):
        raise ValueError(f"Row {int(empty[0])} has no model token (its turn_ids / response mask are all 0): "
                         "there is no turn to credit; drop empty responses before computing advantages.")
    if num_tool_turns is None:
        turns = n_turns - 1
    else:
        turns = num_tool_turns.long().to(turn_ids.device)
        bad = ((turns != n_turns) & (turns != n_turns - 1)).nonzero()
        if len(bad):
            row = int(bad[0])
            raise ValueError(f"num_tool_turns[{row}]={int(turns[row])} but row {row} has {int(n_turns[row])} turns: "
                             "K must be the number of turns or one less (the terminal turn).")
    width = int(n_turns.max()) if width is None else int(width)
    if (turns > width).any():
        raise ValueError(f"width={width} is smaller than the largest num_tool_turns {int(turns.max())}.")

    position = torch.arange(length, device=turn_ids.device)[None, :].expand(batch, -1)
    last_model = torch.where(turn_ids > 0, position, torch.full_like(position, -1)).max(dim=1).values
    segment = turn_ids.cummax(dim=1).values                       # turn of the latest model token so far
    rewards = token_rewards.double()
    at_outcome = position >= last_model[:, None]
    outcome = torch.where(at_outcome, rewards, torch.zeros_like(rewards)).sum(dim=1)

    before_outcome = ~at_outcome
    orphan = before_outcome & (rewards != 0) & ((segment == 0) | (segment > turns[:, None]))
    if orphan.any():
        row, pos = (int(v) for v in orphan.nonzero()[0])
        raise ValueError(f"token_rewards[{row}, {pos}] = {float(rewards[row, pos])} lies in no tool turn (before the "
                         "first model token, or inside the terminal turn before its last token): write IG in its "
                         "tool turn's span and the outcome at the last model token.")
    slot = torch.where(before_outcome & (segment >= 1) & (segment <= turns[:, None]), segment - 1,
                       torch.full_like(segment, width))           # column `width` collects nothing useful
    ig = torch.zeros(batch, width + 1, dtype=torch.float64, device=turn_ids.device)
    ig.scatter_add_(1, slot, torch.where(slot < width, rewards, torch.zeros_like(rewards)))
    ig = ig[:, :width]
    column = torch.arange(width, device=turn_ids.device)[None, :]
    ig = torch.where(column < turns[:, None], ig, torch.full_like(ig, float("nan")))
    dtype = token_rewards.dtype if token_rewards.dtype.is_floating_point else torch.float32
    return ig.to(dtype), outcome.to(dtype), turns


def write_ig_to_token_rewards(token_rewards: torch.Tensor, ig: torch.Tensor, turn_ids: torch.Tensor) -> torch.Tensor:
    """The inverse layout: add IG of tool turn k at turn k's last model token (a new tensor).

    token_rewards: [B, L] (typically the outcome at the last token); ig: [B, T], NaN = no tool turn
    (written as nothing, so it reads back as 0); turn_ids: [B, L].
    """
    batch, length = turn_ids.shape
    out = token_rewards.clone()
    position = torch.arange(length, device=turn_ids.device)
    for k in range(1, ig.shape[1] + 1):
        in_turn = turn_ids == k
        has = in_turn.any(dim=1) & torch.isfinite(ig[:, k - 1])
        last = torch.where(in_turn, position[None, :], torch.full_like(turn_ids, -1)).max(dim=1).values
        rows = has.nonzero().flatten()
        out[rows, last[rows]] += ig[rows, k - 1].to(out.dtype)
    return out
