"""What every model token of a batch is trained with: §3-§5 in one call.

``turn_credit`` chains the package's functions — ``compute_advantages`` (the estimator named by the
config) → ``turn_clip_factors`` (c per turn) → ``clip_bounds`` → ``broadcast_to_tokens`` — so the
trainer and every engine adapter (verl, TRL) train on exactly the same per-turn credit.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .advantages import AdvantageResult, broadcast_to_tokens, compute_advantages
from .clipping import clip_bounds, turn_clip_factors
from .config import A2TGPOConfig


@dataclass
class TurnCredit:
    """What one batch is trained with (§3-§5), per turn and per token.

    advantages: the estimator's :class:`~a2tgpo_lab.advantages.AdvantageResult` (per turn, [B, T]).
    clip_factor, clip_low, clip_high: [B, T] c and the ratio bounds 1 − c·ε_low, 1 + c·ε_high.
    token_advantages, token_clip_low, token_clip_high: [B, L], the turn's value at each model token, 0
    elsewhere.
    """

    advantages: AdvantageResult
    clip_factor: torch.Tensor
    clip_low: torch.Tensor
    clip_high: torch.Tensor
    token_advantages: torch.Tensor
    token_clip_low: torch.Tensor
    token_clip_high: torch.Tensor


def turn_credit(cfg: A2TGPOConfig, ig: torch.Tensor, outcome: torch.Tensor, prompt_index: torch.Tensor,
                num_tool_turns: torch.Tensor, turn_ids: torch.Tensor, loss_mask: torch.Tensor) -> TurnCredit:
    """Advantages and clip bounds of a batch, per turn and broadcast to its model tokens.

    ig [B, T] (NaN past K_i), outcome [B], prompt_index [B] (the group of each rollout), num_tool_turns
    [B], turn_ids [B, L], loss_mask [B, L]. Every model token's turn must have a column in T.
    """
    adv = compute_advantages(cfg, ig, outcome, prompt_index, num_tool_turns)
    factor = turn_clip_factors(cfg, adv.ig_norm, adv.outcome_norm, num_tool_turns)
    low, high = clip_bounds(factor, cfg.epsilon, cfg.epsilon_high)
    device = turn_ids.device
    return TurnCredit(
        advantages=adv, clip_factor=factor, clip_low=low, clip_high=high,
        token_advantages=broadcast_to_tokens(adv.advantages.to(device), turn_ids, loss_mask),
        token_clip_low=broadcast_to_tokens(low.to(device), turn_ids, loss_mask),
        token_clip_high=broadcast_to_tokens(high.to(device), turn_ids, loss_mask))
