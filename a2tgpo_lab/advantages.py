"""Per-turn advantages (ALGORITHM.md §3-§4, §7): normalize the rewards, then accumulate them per turn.

Rollout i of prompt q has T_i turns: process turns t = 1 .. K_i (K_i = T_i − 1 tool calls, each with an
IG) and the answer (terminal) turn T_i. Read top to bottom:

1. ``normalize_outcomes``    R̂_i: the outcome z-scored over the G rollouts of the same prompt.
2. ``turn_group_normalize``  Î_{i,t}: IG z-scored inside its (prompt, turn index) group (Eq. 6-7).
   ``pooled_normalize``      Î_{i,t}: IG z-scored over every turn of the prompt's rollouts (ablation).
   ``joint_normalize``       IGPO (Eq. 4): IG and outcome z-scored together, one group per prompt.
   Every z-score is ``group_zscore``: (x − μ) / (√(v + var_eps) + eps), population variance v.
3. ``accumulate``            D_{i,t} = Σ_{k=t}^{T_i−1} γ^{k−t} Î_{i,k} and D_{i,t} / √n_{i,t}, n = T_i − t
                             (Eq. 8).
4. ``add_outcome``           Â_{i,t} = α·D_{i,t}/√n_{i,t} + R̂_i on process turns, Â_{i,T_i} = R̂_i (Eq. 9).
   ``reward_terms`` + ``discounted_returns``: IGPO's Ã_{i,t} = Σ_{k=t}^{T_i} γ^{k−t} r̂_{i,k}, the
                             outcome r̂_{i,T_i} inside the sum, no rescale (Eq. 5).
5. ``compute_advantages``    the estimator named by ``cfg.advantage_estimator``, from the registry
                             ``ADVANTAGE_ESTIMATORS`` (grpo / igpo / a2tgpo; add yours with
                             ``@register_advantage_estimator("name")``).
6. ``broadcast_to_tokens``   every model token of turn t receives its turn's value.

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


def group_zscore(values: torch.Tensor, group: torch.Tensor, min_group_size: int = 2, std_floor: float = 0.0,
                 center_only: bool = False, eps: float = 1e-6,
                 var_eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, float]:
    """z = (x − μ_g) / (√(v_g + var_eps) + eps) inside each group g, population variance v_g.

    values, group: [N] (group ≥ 0 marks a member, −1 an entry outside every group).
    A group smaller than ``min_group_size``, or *constant* (all members bit-identical, or std ≤
    ``std_floor``), gives exactly 0. Constancy is tested on the values themselves, not on a computed
    std, because the float mean of identical numbers need not equal them.
    With ``center_only`` the result is x − μ_g (still 0 for small or constant groups).

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
    variance = torch.zeros(**per_group).index_add_(0, slot, deviation ** 2) / count
    high = torch.full(fill_value=-math.inf, **per_group).scatter_reduce_(0, slot, x, "amax")
    low = torch.full(fill_value=math.inf, **per_group).scatter_reduce_(0, slot, x, "amin")
    constant = (high == low) | (variance.sqrt() <= std_floor)
    eligible = counts >= max(2, min_group_size)
    active = eligible & ~constant                  # groups whose members get a non-zero z
    scaled = deviation if center_only else deviation / ((variance + var_eps).sqrt()[slot] + eps)
    z[member] = torch.where(active[slot], scaled, torch.zeros_like(scaled)).to(values.dtype)
    size[member] = counts[slot].to(group.dtype)
    n_eligible = int(eligible.sum())
    zero_std_frac = float((eligible & constant).sum()) / n_eligible if n_eligible else 0.0
    return z, size, zero_std_frac


def _check_outcome(outcome: torch.Tensor, batch: int) -> torch.Tensor:
    if outcome.shape != (batch,):
        raise ValueError(f"outcome must be [B] = [{batch}]; got shape {tuple(outcome.shape)}.")
    bad = (~torch.isfinite(outcome)).nonzero()
    if len(bad):
        raise ValueError(f"outcome[{int(bad[0])}] = {float(outcome[bad[0]])} is not finite; every rollout needs "
                         "a finite outcome reward (the format penalty for malformed ones).")
    return outcome if outcome.dtype.is_floating_point else outcome.float()


def normalize_outcomes(outcome: torch.Tensor, prompt_index: torch.Tensor, eps: float = 1e-6,
                       var_eps: float = 0.0) -> torch.Tensor:
    """R̂_i = (r_i − μ_q) / (√(v_q + var_eps) + eps) over the rollouts of the same prompt q.

    outcome: [B] float; prompt_index: [B] int. Returns R̂: [B]; a prompt with one rollout, or whose
    rollouts all got the same reward, gives R̂ = 0 (it carries no learning signal).
    """
    batch = _check_batch(prompt_index)
    values = _check_outcome(outcome, batch)
    normalized, _, _ = group_zscore(values, prompt_index.long().to(values.device), min_group_size=2, std_floor=0.0,
                                     center_only=False, eps=eps, var_eps=var_eps)
    return normalized


def turn_group_normalize(ig: torch.Tensor, prompt_index: torch.Tensor, min_group_size: int = 2,
                         std_floor: float = 0.0, center_only: bool = False, eps: float = 1e-6,
                         var_eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Î_{i,t} = (IG_{i,t} − μ_{q,t}) / (√(v_{q,t} + var_eps) + eps), group G_{q,t} = (prompt q, turn t).

    The group of (q, t) holds the finite IG values of all rollouts of q that have process turn t;
    its id is ``prompt_index * T + (t − 1)``.

    Args:
        ig: [B, T] float, NaN where rollout i has no process turn t (or its IG was dropped).
        prompt_index: [B] int.
        min_group_size: groups with fewer members give Î = 0 (default 2: only singletons).
        std_floor: a group whose std (IG units) is ≤ this counts as constant and gives Î = 0
            (default 0: only exactly-equal values). Stops pure noise (0.016499 vs 0.016498) from
            being blown up to ±1.
        center_only: Î = IG − μ, no division by the std.
        eps: the ε added to the denominator.
        var_eps: the variance guard inside the square root (squared IG units; default 0).

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
    z, size, zero_std_frac = group_zscore(ig.flatten(), group_id.flatten(), min_group_size, std_floor,
                                           center_only, eps, var_eps)
    return z.view_as(ig), group_id, size.view_as(ig), zero_std_frac


def pooled_normalize(ig: torch.Tensor, prompt_index: torch.Tensor, min_group_size: int = 2,
                     std_floor: float = 0.0, center_only: bool = False, eps: float = 1e-6,
                     var_eps: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Î_{i,t} = (IG_{i,t} − μ_q) / (√(v_q + var_eps) + eps), one group per prompt q pooling the IG
    of every process turn of every rollout of q.

    Pooling mixes turn depths whose IG lives on different scales, so Î then says more about a
    turn's depth than about its quality (App. D.1; compare :func:`turn_group_normalize`).
    Same arguments and returns as :func:`turn_group_normalize`; the group id is ``prompt_index``.
    """
    batch = _check_batch(prompt_index)
    _check_per_turn(ig, batch, "ig")
    group_id = prompt_index.long().to(ig.device)[:, None].expand_as(ig)
    group_id = torch.where(torch.isfinite(ig), group_id, torch.full_like(group_id, -1))
    z, size, zero_std_frac = group_zscore(ig.flatten(), group_id.flatten(), min_group_size, std_floor,
                                           center_only, eps, var_eps)
    return z.view_as(ig), group_id, size.view_as(ig), zero_std_frac


def joint_normalize(ig: torch.Tensor, outcome: torch.Tensor, prompt_index: torch.Tensor, min_group_size: int = 2,
                    std_floor: float = 0.0, center_only: bool = False, eps: float = 1e-6, var_eps: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """IGPO's normalization as the A²TGPO paper states it (Eq. 4): the rewards of prompt q,
    r_{i,t} = IG_{i,t} for process turns and r_{i,T_i} = R(τ_i), form ONE group, z-scored together:

        r̂ = (r − μ_q) / (√(v_q + var_eps) + eps),   μ_q, v_q over all IG values and outcomes of q.

    Outcomes (±1 scale) and IG (often 1e-3 scale) share one mean and std, so the outcome usually
    dominates the std and the IG terms shrink towards a common, position-independent offset.

    Args:
        ig: [B, T] float, NaN where there is no process turn (or the IG was dropped);
        outcome: [B]; prompt_index: [B]; the other knobs as in :func:`turn_group_normalize`.

    Returns:
        (ig_hat [B, T] NaN where ig is NaN, outcome_hat [B], group_id [B, T], group_size [B, T]
        (the number of members of the prompt's joint group), zero_std_group_frac).
    """
    batch = _check_batch(prompt_index)
    _check_per_turn(ig, batch, "ig")
    values = _check_outcome(outcome.to(ig.device), batch).to(ig.dtype)
    prompt = prompt_index.long().to(ig.device)
    ig_group = torch.where(torch.isfinite(ig), prompt[:, None].expand_as(ig), torch.full_like(ig, -1, dtype=torch.long))
    z, size, zero_std_frac = group_zscore(torch.cat([ig.flatten(), values]), torch.cat([ig_group.flatten(), prompt]),
                                           min_group_size, std_floor, center_only, eps, var_eps)
    n_ig = ig.numel()
    return z[:n_ig].view_as(ig), z[n_ig:], ig_group, size[:n_ig].view_as(ig), zero_std_frac


# ----------------------------------------------------------------------------- accumulation


def _turn_counts(num_tool_turns: torch.Tensor, batch: int, width: int, device) -> torch.Tensor:
    turns = num_tool_turns.long().to(device)
    if turns.shape != (batch,):
        raise ValueError(f"num_tool_turns must be [B] = [{batch}]; got shape {tuple(turns.shape)}.")
    bad = ((turns < 0) | (turns > width)).nonzero()
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"num_tool_turns[{row}]={int(turns[row])} must be in [0, {width}].")
    return turns


def _reverse_discounted_sum(values: torch.Tensor, gamma: float) -> torch.Tensor:
    """S_t = v_t + γ·S_{t+1} along the last axis, right to left (values already 0 where nothing counts)."""
    sums = torch.zeros_like(values)
    running = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        running = values[:, t] + gamma * running
        sums[:, t] = running
    return sums


def accumulate(ig_norm: torch.Tensor, num_tool_turns: torch.Tensor, gamma: float = 1.0,
               rescale: str = "sqrt_n") -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 8: the discounted sum of normalized IG from process turn t to the last one, and its rescale:

        D_{i,t} = Σ_{k=t}^{T_i−1} γ^{k−t} Î_{i,k},   n_{i,t} = T_i − t  (the number of IG terms summed)
        D_{i,t} / √n_{i,t}                    (``"sqrt_n"``, default)
        D_{i,t} / √(Σ_{j<n} γ^{2j})           (``"exact_gamma"``: the std of a γ-weighted sum of n
                                               unit-variance independent terms; = √n when γ = 1)
        D_{i,t}                               (``"none"``)

    Dividing by √n keeps every turn's IG part on the unit scale of one Î, whether 1 or 5 terms
    remain after it; without it the early turns of long rollouts get the largest advantages.
    The outcome is not part of this sum: :func:`add_outcome` adds it at full weight.

    Args:
        ig_norm: [B, T] float, Î of process turn j + 1 in column j. A NaN inside 1..K_i (a dropped
            IG, or turn 1 without a query baseline) counts as 0 and keeps its place in n.
        num_tool_turns: [B] int, K_i = T_i − 1 in [0, T].
        gamma: discount γ in (0, 1].
        rescale: ``"sqrt_n"``, ``"exact_gamma"`` or ``"none"``.

    Returns:
        (rescaled [B, T], sums [B, T]): D/√n and D at process turns (column < K_i), NaN elsewhere.
    """
    if rescale not in RESCALES:
        raise ValueError(f"rescale={rescale!r} is not valid; choose one of {list(RESCALES)}.")
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma={gamma!r} must be in (0, 1].")
    batch, width = ig_norm.shape
    turns = _turn_counts(num_tool_turns, batch, width, ig_norm.device)
    column = torch.arange(width, device=ig_norm.device)[None, :]
    process = column < turns[:, None]
    sums = _reverse_discounted_sum(torch.where(process & torch.isfinite(ig_norm), ig_norm, 0.0), gamma)
    n_terms = (turns[:, None] - column).clamp(min=1).to(sums.dtype)    # T_i − t in 1-based t
    if rescale == "sqrt_n":
        divisor = n_terms.sqrt()
    elif rescale == "exact_gamma":
        # Σ_{j<n} γ^{2j} = (1 − γ^{2n}) / (1 − γ²), and n itself when γ = 1.
        divisor = n_terms.sqrt() if gamma == 1.0 else ((1 - gamma ** (2 * n_terms)) / (1 - gamma ** 2)).sqrt()
    else:
        divisor = torch.ones_like(n_terms)
    return torch.where(process, sums / divisor, float("nan")), torch.where(process, sums, float("nan"))


def add_outcome(ig_part: torch.Tensor, outcome_norm: torch.Tensor, num_tool_turns: torch.Tensor,
                alpha: float = 1.0) -> torch.Tensor:
    """Eq. 9: Â_{i,t} = α·ig_part_{i,t} + R̂_i for process turns t ≤ K_i, Â_{i,K_i+1} = R̂_i for the
    answer (terminal) turn, NaN past it. ``ig_part`` is :func:`accumulate`'s D/√n; the outcome is added
    at full weight to every turn, outside the rescaled sum.

    Every turn carries R̂ in full, so when the policy chooses how many turns to take, an extra turn is one
    more turn trained on the outcome: per-turn-index groups plus this sum are not an unbiased per-turn
    credit in that case (ALGORITHM.md §10), whatever the IG part does.

    ig_part: [B, T]; outcome_norm: [B]; num_tool_turns: [B]. Returns [B, T] (a terminal turn K_i + 1 > T
    has no column; its outcome still reaches the earlier turns).
    """
    batch, width = ig_part.shape
    turns = _turn_counts(num_tool_turns, batch, width, ig_part.device)
    column = torch.arange(width, device=ig_part.device)[None, :]
    outcome = outcome_norm.to(ig_part)[:, None].expand_as(ig_part)
    advantages = torch.where(column < turns[:, None], alpha * ig_part + outcome, float("nan"))
    return torch.where(column == turns[:, None], outcome, advantages)


def reward_terms(ig_hat: torch.Tensor, outcome_hat: torch.Tensor, num_tool_turns: torch.Tensor) -> torch.Tensor:
    """IGPO's normalized reward sequence r̂_i = (r̂_{i,1}, …, r̂_{i,K_i}, r̂_{i,T_i}, NaN, …).

    ig_hat: [B, T]; outcome_hat: [B]; num_tool_turns: [B] with 0 ≤ K_i ≤ T.
    Returns [B, T+1]: one extra column so the terminal term has a place even when K_i = T.
    A dropped (NaN) IG inside 1..K_i stays NaN here; :func:`discounted_returns` counts it as 0.
    """
    batch, width = ig_hat.shape
    turns = _turn_counts(num_tool_turns, batch, width, ig_hat.device)
    column = torch.arange(width + 1, device=ig_hat.device)[None, :]
    nan_column = torch.full((batch, 1), float("nan"), dtype=ig_hat.dtype, device=ig_hat.device)
    terms = torch.cat([ig_hat, nan_column], dim=1)
    terms = torch.where(column < turns[:, None], terms, float("nan"))
    return torch.where(column == turns[:, None], outcome_hat.to(terms.dtype)[:, None], terms)


def discounted_returns(terms: torch.Tensor, num_tool_turns: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """IGPO's Eq. 5: Ã_{i,t} = Σ_{k=t}^{T_i} γ^{k−t} r̂_{i,k}, the outcome term r̂_{i,T_i} inside the
    sum, no rescale.

    terms: [B, W] (:func:`reward_terms`), the terminal term in column K_i < W; a NaN before it counts
    as 0. Returns [B, W], NaN past column K_i.
    """
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"gamma={gamma!r} must be in (0, 1].")
    batch, width = terms.shape
    turns = _turn_counts(num_tool_turns, batch, width - 1, terms.device)
    column = torch.arange(width, device=terms.device)[None, :]
    inside = column <= turns[:, None]
    sums = _reverse_discounted_sum(torch.where(inside & torch.isfinite(terms), terms, 0.0), gamma)
    return torch.where(inside, sums, float("nan"))


def share_first_turn(per_turn: torch.Tensor, num_tool_turns: torch.Tensor) -> torch.Tensor:
    """Turn 1 takes turn 2's value in rollouts with a tool call (``ig_first_turn="none"``).

    Without a query-only baseline the first tool call has no IG; the released code finds turn
    boundaries from where IG rewards sit, so the first call's tokens fall into turn 2's span and share
    its advantage and clip factor. (Turn ids stay explicit here: only the values are shared.)
    """
    if per_turn.shape[1] < 2:
        return per_turn
    turns = num_tool_turns.long().to(per_turn.device)
    shared = per_turn.clone()
    take = (turns >= 1) & torch.isfinite(per_turn[:, 1])
    shared[:, 0] = torch.where(take, per_turn[:, 1], per_turn[:, 0])
    return shared


# ----------------------------------------------------------------------------- estimators


@dataclass
class AdvantageResult:
    """What an advantage estimator computed for a batch (the fields of the StepRecord).

    ig_norm [B, T]      Î (IGPO: the jointly normalized IG r̂; NaN where no IG; all NaN for GRPO).
    group_id [B, T]     normalization group of each IG entry (−1 where none).
    group_size [B, T]   its number of members (0 where none).
    outcome_norm [B]    R̂ (IGPO joint: the outcome's r̂).
    advantages [B, T]   Â_{i,t} as trained, NaN past the terminal turn.
    advantages_unscaled [B, T]  the same without the √n rescale (α·D + R̂; = advantages for GRPO / IGPO).
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


def _z_knobs(cfg: A2TGPOConfig) -> dict:
    return dict(min_group_size=cfg.min_group_size, std_floor=cfg.group_std_floor, center_only=cfg.ig_center_only,
                eps=cfg.std_eps, var_eps=cfg.var_eps)


def _first_turn(cfg: A2TGPOConfig, per_turn: torch.Tensor, num_tool_turns: torch.Tensor) -> torch.Tensor:
    return share_first_turn(per_turn, num_tool_turns) if cfg.ig_first_turn == "none" else per_turn


@register_advantage_estimator("a2tgpo")
def a2tgpo_advantages(cfg, ig, outcome, prompt_index, num_tool_turns) -> AdvantageResult:
    """A²TGPO (Eq. 6-9): Î per (prompt, turn) group, Â = α·D/√n + R̂ on process turns, R̂ on the answer
    turn; ``cfg.normalization`` / ``cfg.rescale`` give the ablations and the Table 2 rungs."""
    normalize = turn_group_normalize if cfg.normalization == "turn_group" else pooled_normalize
    ig_norm, group_id, group_size, zero_std_frac = normalize(ig, prompt_index, **_z_knobs(cfg))
    outcome_norm = normalize_outcomes(outcome, prompt_index, eps=cfg.std_eps, var_eps=cfg.var_eps)
    rescaled, sums = accumulate(ig_norm, num_tool_turns, gamma=cfg.gamma, rescale=cfg.rescale)
    advantages = add_outcome(rescaled, outcome_norm, num_tool_turns, alpha=cfg.ig_alpha)
    unscaled = add_outcome(sums, outcome_norm, num_tool_turns, alpha=cfg.ig_alpha)
    return AdvantageResult(ig_norm, group_id, group_size, outcome_norm, _first_turn(cfg, advantages, num_tool_turns),
                           _first_turn(cfg, unscaled, num_tool_turns), zero_std_frac)


@register_advantage_estimator("igpo")
def igpo_advantages(cfg, ig, outcome, prompt_index, num_tool_turns) -> AdvantageResult:
    """IGPO (Eq. 4-5): rewards (IG per process turn, outcome last) z-scored per prompt, jointly
    (``igpo_norm="joint"``) or IG pooled and outcome separately (``"separate"``), then the plain
    discounted sum with the outcome inside. Ignores ``normalization`` / ``rescale`` / ``ig_alpha``."""
    if cfg.igpo_norm == "joint":
        ig_hat, outcome_hat, group_id, group_size, zero_std_frac = joint_normalize(ig, outcome, prompt_index,
                                                                                  **_z_knobs(cfg))
    else:
        ig_hat, group_id, group_size, zero_std_frac = pooled_normalize(ig, prompt_index, **_z_knobs(cfg))
        outcome_hat = normalize_outcomes(outcome, prompt_index, eps=cfg.std_eps, var_eps=cfg.var_eps)
    returns = discounted_returns(reward_terms(ig_hat, outcome_hat, num_tool_turns), num_tool_turns, gamma=cfg.gamma)
    # The extra column T is turn T + 1, which no rollout can reach: it has no tokens to train.
    advantages = _first_turn(cfg, returns[:, :-1], num_tool_turns)
    return AdvantageResult(ig_hat, group_id, group_size, outcome_hat, advantages, advantages.clone(), zero_std_frac)


@register_advantage_estimator("grpo")
def grpo_advantages(cfg, ig, outcome, prompt_index, num_tool_turns) -> AdvantageResult:
    """GRPO: Â_{i,t} = R̂_i for every turn t = 1 .. T_i (the IG input is ignored)."""
    outcome_norm = normalize_outcomes(outcome, prompt_index, eps=cfg.std_eps, var_eps=cfg.var_eps)
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
        ig: [B, T] float, raw IG of process turn j + 1 in column j, NaN past K_i (or where dropped).
        outcome: [B] float, the outcome reward r_i.
        prompt_index: [B] int, the prompt (group) of each rollout.
        num_tool_turns: [B] int, K_i = T_i − 1 in [0, T].
    """
    if cfg.advantage_estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(f"A2TGPOConfig.advantage_estimator={cfg.advantage_estimator!r} has no registered "
                         f"estimator; choose one of {sorted(ADVANTAGE_ESTIMATORS)}.")
    batch = _check_batch(prompt_index)
    _check_per_turn(ig, batch, "ig")
    width = ig.shape[1]
    turns = _turn_counts(num_tool_turns, batch, width, ig.device)
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
