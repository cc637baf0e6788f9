"""Adaptive turn-level clipping (ALGORITHM.md §5, Eq. 11): a wider trust region for turns that gained information.

    c_{i,t} = 1 + β · (2·σ(Î_{i,t}) − 1)   ∈ (1 − β, 1 + β)      process turns t = 1 .. T_i − 1
    c_{i,T_i} = 1                                               answer turn (released code; knob: use R̂_i)
    clip region of turn t's tokens: [1 − c·ε_low, 1 + c·ε_high]

The clip only acts once the ratio leaves 1, i.e. from the second optimizer step over the same
rollouts on (several mini-batches or iterations per rollout batch).

2σ(x) − 1 = tanh(x / 2), which is how it is computed (one op, symmetric around Î = 0). c is a
constant of the loss: it never carries a gradient. In floating point c reaches the bound 1 ± β only
for extreme Î (|Î| ≳ 15 in float32), far beyond what a z-score of G rollouts can take (≤ √(G − 1)).
Fixed clipping (GRPO, IGPO, the ``a2tgpo_fixed_clip`` ablation) is c = 1 everywhere.
"""
from __future__ import annotations

from typing import Optional

import torch

from .config import ANSWER_TURN_CLIPS, A2TGPOConfig


def adaptive_clip_factor(ig_norm: torch.Tensor, beta: float, num_tool_turns: torch.Tensor,
                         outcome_norm: Optional[torch.Tensor] = None, answer_turn: str = "one") -> torch.Tensor:
    """The clip factor c of every turn (equation in the module docstring).

    Args:
        ig_norm: [B, T] float, Î of process turn j + 1 in column j (NaN where none).
        beta: β in [0, 1).
        num_tool_turns: [B] int, K_i in [0, T].
        outcome_norm: [B] float R̂, needed when ``answer_turn="outcome"``.
        answer_turn: ``"one"`` (c = 1 on the terminal turn) or ``"outcome"`` (c from R̂_i, as if the
            outcome were that turn's normalized IG).

    Returns:
        c: [B, T], detached. Process turns whose Î was dropped (NaN) get c = 1; the terminal turn K_i + 1
        gets the ``answer_turn`` value (when K_i + 1 ≤ T); NaN past it.
    """
    if answer_turn not in ANSWER_TURN_CLIPS:
        raise ValueError(f"answer_turn={answer_turn!r} is not valid; choose one of {list(ANSWER_TURN_CLIPS)}.")
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta={beta!r} must be in [0, 1) so that c stays positive.")
    if answer_turn == "outcome" and outcome_norm is None:
        raise ValueError("answer_turn='outcome' needs outcome_norm (the normalized outcomes R̂, shape [B]).")
    ig_norm = ig_norm.detach()
    batch, width = ig_norm.shape
    turns = num_tool_turns.long().to(ig_norm.device)
    if turns.shape != (batch,) or ((turns < 0) | (turns > width)).any():
        raise ValueError(f"num_tool_turns must be [B] = [{batch}] with values in [0, T={width}].")

    def factor(x: torch.Tensor) -> torch.Tensor:
        return 1.0 + beta * torch.tanh(x / 2)                      # = 1 + β(2σ(x) − 1)

    column = torch.arange(width, device=ig_norm.device)[None, :]
    tool_turn, terminal = column < turns[:, None], column == turns[:, None]
    c = torch.where(tool_turn, factor(torch.nan_to_num(ig_norm, nan=0.0)), float("nan"))
    if answer_turn == "outcome":
        terminal_c = factor(outcome_norm.detach().to(c)[:, None]).expand_as(c)
    else:
        terminal_c = torch.ones_like(c)
    return torch.where(terminal, terminal_c, c)


def turn_clip_factors(cfg: A2TGPOConfig, ig_norm: torch.Tensor, outcome_norm: torch.Tensor,
                      num_tool_turns: torch.Tensor) -> torch.Tensor:
    """The clip factor c [B, T] a run with ``cfg`` trains with (the one entry point for trainers).

    ``adaptive_clip=False`` (fixed clip): c = 1 on every turn up to the terminal one, NaN past it.
    Otherwise :func:`adaptive_clip_factor` with ``clip_beta`` and ``answer_turn_clip``. With
    ``ig_first_turn="none"`` turn 1 has no Î and takes turn 2's c, as it takes turn 2's advantage
    (:func:`~a2tgpo_lab.advantages.share_first_turn`).

    ig_norm: [B, T] (``AdvantageResult.ig_norm``); outcome_norm: [B]; num_tool_turns: [B].
    """
    from .advantages import share_first_turn

    beta = cfg.clip_beta if cfg.adaptive_clip else 0.0
    c = adaptive_clip_factor(ig_norm, beta, num_tool_turns, outcome_norm=outcome_norm,
                             answer_turn=cfg.answer_turn_clip if cfg.adaptive_clip else "one")
    return share_first_turn(c, num_tool_turns) if cfg.ig_first_turn == "none" else c


def clip_bounds(clip_factor: torch.Tensor, eps_low: float, eps_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The ratio bounds of each turn: (1 − c·ε_low, 1 + c·ε_high), same shape as ``clip_factor``."""
    if not 0.0 < eps_low < 1.0 or eps_high <= 0.0:
        raise ValueError(f"eps_low={eps_low!r} must be in (0, 1) and eps_high={eps_high!r} > 0.")
    clip_factor = clip_factor.detach()
    return 1.0 - clip_factor * eps_low, 1.0 + clip_factor * eps_high
