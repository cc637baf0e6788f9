"""Information gain, the per-turn intrinsic reward (ALGORITHM.md §1), from already-scored probes.

After every tool turn t a probe teacher-forces the gold answer a and averages its token log-probs:

    ℓ_t = (1/|a|) Σ_j log π_old(a_j | context after turn t, probe, a_<j)      t = 0 (question alone) .. K_i
    π̄_t = exp(ℓ_t)                (Eq. 2: the length-normalized probability of the gold answer)

and process turn t (1 ≤ t ≤ K_i = T_i − 1) earns how much it moved that number (Eq. 3):

    IG_t = π̄_t − π̄_{t−1}          (default, ``mode="prob"``, the paper)
    IG_t = ℓ_t − ℓ_{t−1}          (``mode="logprob"``, the released code)

π̄_0 is the query-only baseline (``first_turn="query"``, the paper); with ``first_turn="none"`` (the
released code) there is none and turn 1 has no IG (it then shares turn 2's advantage, see
``advantages.share_first_turn``). The answer turn T_i earns no IG. Scoring the probes (running the
model) lives elsewhere; this module is the arithmetic, so it can be checked by hand.
"""
from __future__ import annotations

import torch

from .config import IG_FIRST_TURNS, IG_MODES


def information_gain(probe_logprob_mean: torch.Tensor, num_tool_turns: torch.Tensor, mode: str = "prob",
                     first_turn: str = "query") -> tuple[torch.Tensor, torch.Tensor, int]:
    """IG of every tool turn from the probe scores (equations in the module docstring).

    Args:
        probe_logprob_mean: [B, T+1] float, ℓ_t in column t (t = 0 is the question alone). Columns
            past K_i are ignored (they may hold anything, typically NaN).
        num_tool_turns: [B] int, K_i; 0 ≤ K_i ≤ T.
        mode: ``"prob"`` or ``"logprob"``.
        first_turn: ``"query"`` (column 0 is the query-only baseline) or ``"none"`` (turn 1 gets no IG:
            NaN, not counted as dropped).

    Returns:
        ig: [B, T] float, column j = IG of tool turn j + 1; NaN past K_i and where the term was dropped.
        p: [B, T+1] float, p_t = exp(ℓ_t); NaN past K_i.
        nonfinite_count: how many IG terms (k ≤ K_i) came out NaN/inf and were dropped (set to NaN)
            instead of crashing the step; a probe whose ℓ is −inf (p = 0) is a legitimate value in
            ``"prob"`` mode, but its log-difference is not.
    """
    if mode not in IG_MODES:
        raise ValueError(f"mode={mode!r} is not valid; choose one of {list(IG_MODES)}.")
    if first_turn not in IG_FIRST_TURNS:
        raise ValueError(f"first_turn={first_turn!r} is not valid; choose one of {list(IG_FIRST_TURNS)}.")
    if probe_logprob_mean.dim() != 2 or probe_logprob_mean.shape[1] < 2:
        raise ValueError(f"probe_logprob_mean must be [B, T+1] with T >= 1; got shape "
                         f"{tuple(probe_logprob_mean.shape)}.")
    batch, width = probe_logprob_mean.shape
    if num_tool_turns.shape != (batch,):
        raise ValueError(f"num_tool_turns must be [B] = [{batch}]; got shape {tuple(num_tool_turns.shape)}.")
    turns = num_tool_turns.to(probe_logprob_mean.device).long()
    bad = ((turns < 0) | (turns > width - 1)).nonzero()
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"num_tool_turns[{row}]={int(turns[row])} must be in [0, T={width - 1}] "
                         "(probe_logprob_mean has T+1 columns).")

    column = torch.arange(width, device=probe_logprob_mean.device)
    scored = column[None, :] <= turns[:, None]                      # [B, T+1]: t ≤ K_i
    nan = torch.tensor(float("nan"), dtype=probe_logprob_mean.dtype, device=probe_logprob_mean.device)
    logprob = torch.where(scored, probe_logprob_mean, nan)
    p = torch.exp(logprob)

    signal = p if mode == "prob" else logprob
    ig = signal[:, 1:] - signal[:, :-1]                              # [B, T]: column j = turn j+1
    is_tool_turn = scored[:, 1:].clone()
    if first_turn == "none":
        is_tool_turn[:, 0] = False
    dropped = is_tool_turn & ~torch.isfinite(ig)
    ig = torch.where(is_tool_turn & ~dropped, ig, nan)
    return ig, p, int(dropped.sum())


def search_context_ends(context_ends: torch.Tensor, turn_ids: torch.Tensor,
                        num_tool_turns: torch.Tensor) -> torch.Tensor:
    """The probe contexts of the released code (``ig_last_context="search"``): as ``context_ends``, but the
    last process turn K_i's context ends right after that turn's own tokens (its search's closing tag),
    before its observation. Every other context still includes its turn's observation.

    context_ends: [B, T+1] long, c_t's end for t = 0 .. K_i; turn_ids: [B, L]; num_tool_turns: [B].
    Returns a new [B, T+1] tensor; rows with K_i = 0 are unchanged.
    """
    turns = num_tool_turns.long().to(turn_ids.device)
    position = torch.arange(1, turn_ids.shape[1] + 1, device=turn_ids.device)[None, :]
    last_turn_end = torch.where(turn_ids == turns[:, None], position, 0).amax(dim=1)          # [B]
    ends = context_ends.clone()
    rows = (turns >= 1).nonzero().flatten()
    ends[rows, turns[rows]] = last_turn_end[rows].to(ends.dtype)
    return ends
