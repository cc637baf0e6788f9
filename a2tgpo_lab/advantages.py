"""Per-turn advantages (ALGORITHM.md §3-§4): normalize the rewards, then accumulate them per turn.

Read top to bottom:

1. ``normalize_outcomes``    õ_i: the outcome z-scored over the G rollouts of the same prompt (GRPO).
2. ``turn_group_normalize``  Ĩ_{i,k}: IG z-scored inside its (prompt, turn index) group (A²TGPO).
   ``pooled_normalize``      Ĩ_{i,k}: IG z-scored over every turn of the prompt's rollouts (IGPO).
3. ``accumulate``            A_{i,t} = Σ_{k=t}^{K_i+1} γ^{k−t} r̃_{i,k} / √(K_i + 2 − t), with
                             r̃ = (Ĩ_{i,1}, …, Ĩ_{i,K_i}, õ_i).
4. ``compute_advantages``    the estimator named by ``cfg.advantage_estimator``, from the registry
                             ``ADVANTAGE_ESTIMATORS`` (grpo / igpo / a2tgpo; add yours with
                             ``@register_advantage_estimator("name")``).
5. ``broadcast_to_tokens``   every model token of turn k receives its turn's value.

Per-turn tensors are [B, T] with column j = turn j + 1 and NaN past a rollout's last turn
(see :mod:`a2tgpo_lab.records`). All functions are pure: tensors in, tensors out, no model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .config import RESCALES, A2TGPOConfig

# ----------------------------------------------------------------------------- input checks


def _check_batch(prompt_index: torch.Tensor, name: str = "prompt_index") -> int:
    if prompt_index.dim() != 1:
        raise ValueError(f"{name} must be a 1-D [B] tensor; got shape {tuple(prompt_index.shape)}.")
    if prompt_index.numel() == 0:
        raise ValueError("The batch is empty (B = 0): advantages need at least one rollout per prompt.")
    if prompt_index.dtype.is_floating_point or (prompt_index < 0).any():
        raise ValueError(f"{name} must hold non-negative integers (which prompt each rollout answers).")
    return prompt_index.shape[0]


def _check_per_turn(values: torch.Tensor, batch: int, name: str) -> None:
    if values.dim() != 2 or values.shape[0] != batch:
        raise ValueError(f"{name} must be [B, T] = [{batch}, T]; got shape {tuple(values.shape)}.")


# ----------------------------------------------------------------------------- group z-score


def _group_zscore(values: torch.Tensor, group: torch.Tensor, min_group_size: int, std_floor: float,
                  center_only: bool, eps: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """z = (x − mean_g) / (std_g + eps) inside each group g, population std.

    values, group: [N] (group ≥ 0 marks a member, −1 an entry outside every group).
    A group smaller than ``min_group_size``, or *constant* (all members bit-identical, or std ≤
    ``std_floor``), gives exactly 0. Constancy is tested on the values themselves, not on a computed
    std, because the float mean of identical numbers need not equal them.
    With ``center_only`` the result is x − mean_g (still 0 for small or constant groups).

    Returns (z [N], NaN outside groups; size [N], the member's group size, 0 outside groups;
    the fraction of groups with ≥ max(2, min_group_size) members that were constant).
    """
    z = torch.full_like(values, float("nan"))
    size = torch.zeros_like(group)
    member = group >= 0
    if not member.any():
        return z, size, 0.0
    x = values[member].double()                    # float64: tiny IG differences must survive
    ids, slot, counts = torch.unique(group[member], return_inverse=True, return_counts=True)
    per_group = dict(size=(ids.numel(),), dtype=torch.float64, device=values.device)
    count = counts.double()
    mean = torch.zeros(**per_group).index_add_(0, slot, x) / count
    deviation = x - mean[slot]
    std = (torch.zeros(**per_group).index_add_(0, slot, deviation ** 2) / count).sqrt()
    high = torch.full(fill_value=-math.inf, **per_group).scatter_reduce_(0, slot, x, "amax")
    low = torch.full(fill_value=math.inf, **per_group).scatter_reduce_(0, slot, x, "amin")
    constant = (high == low) | (std <= std_floor)
    eligible = counts >= max(2, min_group_size)
    active = eligible & ~constant                  # groups whose members get a non-zero z
    scaled = deviation if center_only else deviation / (std[slot] + eps)
    z[member] = torch.where(active[slot], scaled, torch.zeros_like(scaled)).to(values.dtype)
    size[member] = counts[slot].to(group.dtype)
    n_eligible = int(eligible.sum())
    zero_std_frac = float((eligible & constant).sum()) / n_eligible if n_eligible else 0.0
    return z, size, zero_std_frac


def normalize_outcomes(outcome: torch.Tensor, prompt_index: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """õ_i = (r_i − mean_q) / (std_q + eps) over the rollouts of the same prompt q (population std).

    outcome: [B] float; prompt_index: [B] int. Returns õ: [B]; a prompt with one rollout, or whose
    rollouts all got the same reward, gives õ = 0 (it carries no learning signal).
    """
    batch = _check_batch(prompt_index)
    if outcome.shape != (batch,):
        raise ValueError(f"outcome must be [B] = [{batch}]; got shape {tuple(outcome.shape)}.")
    bad = (~torch.isfinite(outcome)).nonzero()
    if len(bad):
        raise ValueError(f"outcome[{int(bad[0])}] = {float(outcome[bad[0]])} is not finite; every rollout needs "
                         "a finite outcome reward (the format penalty for malformed ones).")
    values = outcome if outcome.dtype.is_floating_point else outcome.float()
    normalized, _, _ = _group_zscore(values, prompt_index.long().to(values.device), min_group_size=2, std_floor=0.0,
                                     center_only=False, eps=eps)
    return normalized


def turn_group_normalize(ig: torch.Tensor, prompt_index: torch.Tensor, min_group_size: int = 2,
                         std_floor: float = 0.0, center_only: bool = False,
                         eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Ĩ_{i,k} = (IG_{i,k} − mean_{q,k}) / (std_{q,k} + eps), group = (prompt q, turn index k).

    The group of (q, k) holds the finite IG values of all rollouts of q that have a tool turn k;
    its id is ``prompt_index * T + (k − 1)``.

    Args:
        ig: [B, T] float, NaN where rollout i has no tool turn k (or its IG was dropped).
        prompt_index: [B] int.
        min_group_size: groups with fewer members give Ĩ = 0 (default 2: only singletons).
        std_floor: a group whose std (IG units) is ≤ this counts as constant and gives Ĩ = 0
            (default 0: only exactly-equal values). Stops pure noise (0.016499 vs 0.016498) from
            being blown up to ±1.
        center_only: Ĩ = IG − mean, no division by the std.
        eps: the ε of the denominator.

    Returns:
        ig_norm [B, T] (NaN where ig is NaN), group_id [B, T] (−1 where none), group_size [B, T]
        (0 where none), zero_std_group_frac: share of groups with ≥ max(2, min_group_size) members
        that were constant (their rollouts fall back to the outcome term alone).
    """
    batch = _check_batch(prompt_index)
    _check_per_turn(ig, batch, "ig")
    width = ig.shape[1]
    turn_column = torch.arange(width, device=ig.device)
    group_id = prompt_index.long().to(ig.device)[:, None] * width + turn_column[None, :]
    group_id = torch.where(torch.isfinite(ig), group_id, torch.full_like(group_id, -1))
    z, size, zero_std_frac = _group_zscore(ig.flatten(), group_id.flatten(), min_group_size, std_floor,
                                           center_only, eps)
    return z.view_as(ig), group_id, size.view_as(ig), zero_std_frac


def pooled_normalize(ig: torch.Tensor, prompt_index: torch.Tensor, min_group_size: int = 2,
                     std_floor: float = 0.0, center_only: bool = False,
                     eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """IGPO's normalization: Ĩ_{i,k} = (IG_{i,k} − mean_q) / (std_q + eps), one group per prompt q
    pooling the IG of every tool turn of every rollout of q.

    Pooling mixes turn depths whose IG lives on different scales, so Ĩ then says more about a
    turn's depth than about its quality (compare :func:`turn_group_normalize`).
    Same arguments and returns as :func:`turn_group_normalize`; the group id is ``prompt_index``.
    """
    batch = _check_batch(prompt_index)
    _check_per_turn(ig, batch, "ig")
    group_id = prompt_index.long().to(ig.device)[:, None].expand_as(ig)
    group_id = torch.where(torch.isfinite(ig), group_id, torch.full_like(group_id, -1))
    z, size, zero_std_frac = _group_zscore(ig.flatten(), group_id.flatten(), min_group_size, std_floor,
                                           center_only, eps)
    return z.view_as(ig), group_id, size.view_as(ig), zero_std_frac


# ----------------------------------------------------------------------------- accumulation


def reward_terms(ig_norm: torch.Tensor, outcome_norm: torch.Tensor, num_tool_turns: torch.Tensor) -> torch.Tensor:
    """r̃_i = (Ĩ_{i,1}, …, Ĩ_{i,K_i}, õ_i, NaN, …): the terms ``accumulate`` sums.

    ig_norm: [B, T]; outcome_norm: [B]; num_tool_turns: [B] with 0 ≤ K_i ≤ T.
    Returns [B, T+1]: one extra column so the terminal term õ_i has a place even when K_i = T.
    A dropped (NaN) IG inside 1..K_i stays NaN here; ``accumulate`` counts it as 0.
    """
    batch, width = ig_norm.shape
    turns = num_tool_turns.long().to(ig_norm.device)
    if ((turns < 0) | (turns > width)).any():
        row = int(((turns < 0) | (turns > width)).nonzero()[0])
        raise ValueError(f"num_tool_turns[{row}]={int(turns[row])} must be in [0, T={width}].")
    column = torch.arange(width + 1, device=ig_norm.device)[None, :]
    nan_column = torch.full((batch, 1), float("nan"), dtype=ig_norm.dtype, device=ig_norm.device)
    terms = torch.cat([ig_norm, nan_column], dim=1)
    terms = torch.where(column < turns[:, None], terms, float("nan"))
    return torch.where(column == turns[:, None], outcome_norm.to(terms.dtype)[:, None], terms)


def accumulate(terms: torch.Tensor, num_tool_turns: torch.Tensor, gamma: float = 1.0,
               rescale: str = "sqrt_n") -> tuple[torch.Tensor, torch.Tensor]:
    """A_{i,t} = ( Σ_{k=t}^{K_i+1} γ^{k−t} r̃_{i,k} ) / D_{i,t}, for t = 1 .. K_i + 1.

    D_{i,t} = √n with n = K_i + 2 − t, the number of summed terms (``"sqrt_n"``, default);
            = √(Σ_{j=0}^{n−1} γ^{2j}), the std of a γ-weighted sum of n unit-variance independent
              terms (``"exact_gamma"``; the same as √n when γ = 1);
            = 1 (``"none"``, IGPO).
    Dividing by D keeps every turn's advantage on the unit scale of its terms, whether 1 or 5 terms
    remain after it; without it early turns of long rollouts get the largest advantages.

    Args:
        terms: [B, W] float, r̃ in columns 0 .. K_i (the terminal term õ in column K_i), anything
            past it (ignored). A NaN term inside 0 .. K_i − 1 is a dropped IG and counts as 0.
        num_tool_turns: [B] int, K_i, with K_i < W.
        gamma: discount γ in (0, 1].
        rescale: ``"sqrt_n"``, ``"exact_gamma"`` or ``"none"``.

    Returns:
        (advantages [B, W], unscaled [B, W]): A_{i,t} in column t − 1, and the same sums before the
        division; NaN past column K_i. The terminal column exists even when the rollout produced no
        answer tokens: its value then trains nothing but still flows into the earlier turns' sums.
    """
    if rescale not in RESCALES:
        raise ValueError(f"rescale={rescale!r} is not valid; choose one of {list(RESCALES)}.")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma={gamma!r} must be in (0, 1].")
    batch, width = terms.shape
    turns = num_tool_turns.long().to(terms.device)
    if turns.shape != (batch,):
        raise ValueError(f"num_tool_turns must be [B] = [{batch}]; got shape {tuple(turns.shape)}.")
    out_of_range = (turns < 0) | (turns >= width)
    if out_of_range.any():
        row = int(out_of_range.nonzero()[0])
        raise ValueError(f"num_tool_turns[{row}]={int(turns[row])} leaves no column for the terminal term: "
                         f"it must be in [0, W-1={width - 1}] (terms has W={width} columns).")
    column = torch.arange(width, device=terms.device)[None, :]
    inside = column <= turns[:, None]                                # [B, W]: t ≤ K_i + 1
    r = torch.where(inside & torch.isfinite(terms), terms, torch.zeros_like(terms))

    # Right-to-left: S_t = r̃_t + γ S_{t+1}  (zeros past the terminal term end every sum there).
    sums = torch.zeros_like(r)
    running = torch.zeros(batch, dtype=r.dtype, device=r.device)
    for t in reversed(range(width)):
        running = r[:, t] + gamma * running
        sums[:, t] = running

    n_terms = (turns[:, None] + 1 - column).clamp(min=1).to(r.dtype)  # K_i + 2 − t in 1-based t
    if rescale == "sqrt_n":
        divisor = n_terms.sqrt()
    elif rescale == "exact_gamma":
        # Σ_{j<n} γ^{2j} = (1 − γ^{2n}) / (1 − γ²), and n itself when γ = 1.
        divisor = n_terms.sqrt() if gamma == 1.0 else ((1 - gamma ** (2 * n_terms)) / (1 - gamma ** 2)).sqrt()
    else:
        divisor = torch.ones_like(n_terms)
    nan = torch.tensor(float("nan"), dtype=r.dtype, device=r.device)
    return torch.where(inside, sums / divisor, nan), torch.where(inside, sums, nan)


# ----------------------------------------------------------------------------- estimators


@dataclass
class AdvantageResult:
    """What an advantage estimator computed for a batch (the fields of the StepRecord of §3-§4).

    ig_norm [B, T]      Ĩ (NaN where no tool turn; all NaN for GRPO).
    group_id [B, T]     normalization group of each IG entry (−1 where none).
    group_size [B, T]   its number of members (0 where none).
    outcome_norm [B]    õ.
    advantages [B, T]   A_{i,t} as trained, NaN past the terminal turn.
    advantages_unscaled [B, T]  the discounted sums before the rescale.
    zero_std_group_frac share of (size ≥ 2) IG groups that were constant.
    """

    ig_norm: torch.Tensor
    group_id: torch.Tensor
    group_size: torch.Tensor
    outcome_norm: torch.Tensor
    advantages: torch.Tensor
    advantages_unscaled: torch.Tensor
    zero_std_group_frac: float


Estimator = Callable[[A2TGPOConfig, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], AdvantageResult]
ADVANTAGE_ESTIMATORS: dict[str, Estimator] = {}


def register_advantage_estimator(name: str) -> Callable[[Estimator], Estimator]:
    """Decorator: make ``fn(cfg, ig, outcome, prompt_index, num_tool_turns) -> AdvantageResult``
    available as ``cfg.advantage_estimator = name``."""
    def add(fn: Estimator) -> Estimator:
        ADVANTAGE_ESTIMATORS[name] = fn
        return fn
    return add


def _discounted(cfg: A2TGPOConfig, ig: torch.Tensor, outcome: torch.Tensor, prompt_index: torch.Tensor,
                num_tool_turns: torch.Tensor, normalization: str, rescale: str) -> AdvantageResult:
    """Normalize IG (``normalization``) and the outcome, then accumulate with ``rescale``."""
    normalize = turn_group_normalize if normalization == "turn_group" else pooled_normalize
    ig_norm, group_id, group_size, zero_std_frac = normalize(
        ig, prompt_index, min_group_size=cfg.min_group_size, std_floor=cfg.group_std_floor,
        center_only=cfg.ig_center_only, eps=cfg.std_eps)
    outcome_norm = normalize_outcomes(outcome, prompt_index, eps=cfg.std_eps)
    terms = reward_terms(ig_norm, outcome_norm, num_tool_turns)
    advantages, unscaled = accumulate(terms, num_tool_turns, gamma=cfg.gamma, rescale=rescale)
    # The extra column T is turn T + 1, which no rollout can reach: it has no tokens to train.
    return AdvantageResult(ig_norm, group_id, group_size, outcome_norm, advantages[:, :-1], unscaled[:, :-1],
                           zero_std_frac)


@register_advantage_estimator("a2tgpo")
def a2tgpo_advantages(cfg, ig, outcome, prompt_index, num_tool_turns) -> AdvantageResult:
    """A²TGPO: per-(prompt, turn) groups and A = discounted sum / √n, or the ablation chosen by
    ``cfg.normalization`` and ``cfg.rescale`` (presets ``a2tgpo_pooled``, ``a2tgpo_no_rescale``)."""
    return _discounted(cfg, ig, outcome, prompt_index, num_tool_turns, cfg.normalization, cfg.rescale)


@register_advantage_estimator("igpo")
def igpo_advantages(cfg, ig, outcome, prompt_index, num_tool_turns) -> AdvantageResult:
    """IGPO as published: pooled z-score over all turns of the prompt, discounted sum, no rescale.
    It ignores ``cfg.normalization`` / ``cfg.rescale``; mixes of the two methods are a2tgpo ablations."""
    return _discounted(cfg, ig, outcome, prompt_index, num_tool_turns, "pooled", "none")


@register_advantage_estimator("grpo")
def grpo_advantages(cfg, ig, outcome, prompt_index, num_tool_turns) -> AdvantageResult:
    """GRPO: A_{i,t} = õ_i for every turn t = 1 .. K_i + 1 (the IG input is ignored)."""
    outcome_norm = normalize_outcomes(outcome, prompt_index, eps=cfg.std_eps)
    batch, width = ig.shape
    column = torch.arange(width, device=ig.device)[None, :]
    inside = column <= num_tool_turns.long().to(ig.device)[:, None]
    advantages = torch.where(inside, outcome_norm.to(ig.dtype)[:, None], float("nan"))
    no_group = torch.full((batch, width), -1, dtype=torch.long, device=ig.device)
    return AdvantageResult(ig_norm=torch.full_like(ig, float("nan")), group_id=no_group,
                           group_size=torch.zeros_like(no_group), outcome_norm=outcome_norm, advantages=advantages,
                           advantages_unscaled=advantages.clone(), zero_std_group_frac=0.0)


def compute_advantages(cfg: A2TGPOConfig, ig: torch.Tensor, outcome: torch.Tensor, prompt_index: torch.Tensor,
                       num_tool_turns: torch.Tensor) -> AdvantageResult:
    """Per-turn advantages of a batch with the estimator ``cfg.advantage_estimator``.

    Args:
        cfg: the run config (estimator name and the §3-§4 knobs).
        ig: [B, T] float, raw IG of tool turn j + 1 in column j, NaN past K_i (or where dropped).
        outcome: [B] float, the outcome reward r_i.
        prompt_index: [B] int, the prompt (group) of each rollout.
        num_tool_turns: [B] int, K_i in [0, T].
    """
    if cfg.advantage_estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"A2TGPOConfig.advantage_estimator={cfg.advantage_estimator!r} has no registered "
                         f"estimator; choose one of {sorted(ADVANTAGE_ESTIMATORS)}.")
    batch = _check_batch(prompt_index)
    _check_per_turn(ig, batch, "ig")
    width = ig.shape[1]
    if num_tool_turns.shape != (batch,):
        raise ValueError(f"num_tool_turns must be [B] = [{batch}]; got shape {tuple(num_tool_turns.shape)}.")
    turns = num_tool_turns.long().to(ig.device)
    if ((turns < 0) | (turns > width)).any():
        row = int(((turns < 0) | (turns > width)).nonzero()[0])
        raise ValueError(f"num_tool_turns[{row}]={int(turns[row])} must be in [0, T={width}].")
    past_last_tool_turn = torch.arange(width, device=ig.device)[None, :] >= turns[:, None]
    stray = (past_last_tool_turn & torch.isfinite(ig)).nonzero()
    if len(stray):
        row, col = (int(v) for v in stray[0])
        raise ValueError(f"ig[{row}, {col}] (turn {col + 1}) is finite but rollout {row} has only "
                         f"{int(turns[row])} tool turns: IG must be NaN past num_tool_turns.")
    return ADVANTAGE_ESTIMATORS[cfg.advantage_estimator](cfg, ig, outcome.to(ig.device),
                                                         prompt_index.to(ig.device), turns)


# ----------------------------------------------------------------------------- tokens


def broadcast_to_tokens(per_turn: torch.Tensor, turn_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """value[b, l] = per_turn[b, turn_ids[b, l] − 1] at model tokens (loss_mask), 0 elsewhere.

    per_turn: [B, T]; turn_ids: [B, L] long; loss_mask: [B, L] bool. Returns [B, L] of per_turn's dtype.
    A model token whose turn has no value (turn id 0 or > T, or a NaN entry) is a bug upstream and
    raises ValueError naming the row.
    """
    batch, width = per_turn.shape
    if turn_ids.shape != loss_mask.shape or turn_ids.shape[0] != batch:
        raise ValueError(f"turn_ids {tuple(turn_ids.shape)} and loss_mask {tuple(loss_mask.shape)} must both be "
                         f"[B, L] with B = {batch} (per_turn is {tuple(per_turn.shape)}).")
    mask = loss_mask.bool()
    bad_turn = mask & ((turn_ids < 1) | (turn_ids > width))
    if bad_turn.any():
        row, pos = (int(v) for v in bad_turn.nonzero()[0])
        raise ValueError(f"loss_mask[{row}, {pos}] is a model token but turn_ids[{row}, {pos}]="
                         f"{int(turn_ids[row, pos])} is not a turn in 1..{width}.")
    index = (turn_ids.long() - 1).clamp(0, width - 1)
    values = per_turn.gather(1, index)
    missing = mask & ~torch.isfinite(values)
    if missing.any():
        row, pos = (int(v) for v in missing.nonzero()[0])
        raise ValueError(f"Row {row}: turn {int(turn_ids[row, pos])} has model tokens but its per-turn value is "
                         f"{float(values[row, pos])}; every trained turn needs a finite value.")
    return torch.where(mask, values, torch.zeros_like(values))
