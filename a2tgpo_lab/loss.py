"""The clipped policy loss with a turn-level importance ratio (ALGORITHM.md §6).

For a model token t of turn k in rollout i, with turn advantage A = A_{i,k} and clip bounds
[lo, hi] = [1 − c·ε_low, 1 + c·ε_high] of that turn:

    loss_t = −min( s_t·A, clip(s_t, lo, hi)·A )                  (PPO clipped surrogate)

Importance ratio s_t, ``ratio_level``:
    "turn" (default, GSPO's sequence-level idea applied per turn):
        log s_turn = (1/|k|) Σ_{u ∈ turn k} (log π_θ(u) − log π_old(u))
        s_t = exp( sg[log s_turn] + log π_θ(t) − sg[log π_θ(t)] )
      Its value is the turn's (geometric-mean) ratio, so a whole turn is clipped or not; its gradient
      is s_turn · ∇log π_θ(t) for each token.
    "token": s_t = π_θ(t) / π_old(t), the classic PPO ratio.
Dual clip (optional, c_dual > 1): for A < 0 the loss is also capped at −c_dual·A, so a huge ratio
on a bad token cannot produce an unbounded step.

Optional terms (default off): + β · KL(π_θ ‖ π_ref) per token, − entropy_coeff · H per token.
Per-token terms are reduced by :func:`aggregate` (``loss_agg_mode``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .config import KL_ESTIMATORS, LOSS_AGG_MODES, RATIO_LEVELS

# exp() of a log-ratio beyond this overflows nothing and is far outside any clip range anyway.
_MAX_LOG_RATIO = 20.0


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "seq-mean-token-mean") -> torch.Tensor:
    """Reduce per-token values [B, L] over the tokens where ``mask`` [B, L] is True to a scalar.

    "seq-mean-token-mean" (default): mean over each rollout's tokens, then mean over rollouts, so
        every rollout weighs the same whatever its length.
    "token-mean": mean over all tokens of the batch, so long rollouts weigh more.
    "seq-mean-token-sum": sum over each rollout's tokens, then mean over rollouts.
    Rollouts without any masked-in token are left out of the mean over rollouts; a batch with none
    gives 0 (still connected to the graph), never NaN. Values at masked-out positions are ignored,
    even NaN ones.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={mode!r} is not valid; choose one of {list(LOSS_AGG_MODES)}.")
    mask = mask.bool()
    kept = torch.where(mask, values, torch.zeros_like(values))
    if mode == "token-mean":
        return kept.sum() / mask.sum().clamp(min=1)
    tokens_per_row = mask.sum(dim=-1)
    per_row = kept.sum(dim=-1)
    if mode == "seq-mean-token-mean":
        per_row = per_row / tokens_per_row.clamp(min=1)
    return per_row.sum() / (tokens_per_row > 0).sum().clamp(min=1)


def aggregation_units(mask: torch.Tensor, mode: str = "seq-mean-token-mean") -> int:
    """The denominator of :func:`aggregate` for ``mask``: model tokens (``"token-mean"``) or rollouts
    with at least one model token (the ``seq-mean-*`` modes).

    Gradient accumulation over micro-batches of one mini-batch gives exactly the mini-batch's gradient
    when each micro-batch's loss is weighted by units(micro) / units(mini-batch): the mean of a union
    is the unit-weighted mean of the parts.
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"loss_agg_mode={mode!r} is not valid; choose one of {list(LOSS_AGG_MODES)}.")
    mask = mask.bool()
    return int(mask.sum()) if mode == "token-mean" else int(mask.any(dim=-1).sum())


def turn_mean(values: torch.Tensor, turn_ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """For each token, the mean of ``values`` over the masked-in tokens of its (rollout, turn).

    values, turn_ids, mask: [B, L]. Returns [B, L] (0 at masked-out tokens).
    """
    mask = mask.bool()
    turn_ids = torch.where(mask, turn_ids.long(), torch.zeros_like(turn_ids, dtype=torch.long))
    n_slots = int(turn_ids.max()) + 1 if turn_ids.numel() else 1
    shape = (values.shape[0], n_slots)
    sums = values.new_zeros(shape).scatter_add_(1, turn_ids, torch.where(mask, values, torch.zeros_like(values)))
    counts = values.new_zeros(shape).scatter_add_(1, turn_ids, mask.to(values.dtype))
    means = sums / counts.clamp(min=1)
    return torch.where(mask, means.gather(1, turn_ids), torch.zeros_like(values))


def importance_ratio(logprobs: torch.Tensor, old_logprobs: torch.Tensor, turn_ids: torch.Tensor,
                     loss_mask: torch.Tensor, ratio_level: str = "turn") -> torch.Tensor:
    """s_t at every token [B, L] (equations in the module docstring); 1 at masked-out tokens.

    Only ``logprobs`` carries a gradient. Log-ratios are clamped to ±20 before exp so a diverged
    policy gives a huge but finite ratio (which clipping then stops).
    """
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level={ratio_level!r} is not valid; choose one of {list(RATIO_LEVELS)}.")
    mask = loss_mask.bool()
    # Masked-out positions are zeroed *before* exp, so they get an exactly-zero gradient, not 0·inf.
    log_ratio = torch.where(mask, logprobs - old_logprobs.detach(), torch.zeros_like(logprobs))
    log_ratio = log_ratio.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
    if ratio_level == "token":
        return torch.exp(log_ratio)
    log_turn_ratio = turn_mean(log_ratio.detach(), turn_ids, mask)
    live_logprobs = torch.where(mask, logprobs, torch.zeros_like(logprobs))
    return torch.exp(log_turn_ratio + live_logprobs - live_logprobs.detach())


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from samples of π_θ, d = log π_ref − log π_θ:

    "k3": e^d − d − 1 (unbiased, always ≥ 0); "low_var_kl": k3 with d clamped to ±20 and the result
    clamped to [−10, 10], which bounds the gradient of rare tokens far from the reference.
    """
    if estimator not in KL_ESTIMATORS:
        raise ValueError(f"kl_estimator={estimator!r} is not valid; choose one of {list(KL_ESTIMATORS)}.")
    d = ref_logprobs.detach() - logprobs
    if estimator == "low_var_kl":
        d = d.clamp(-_MAX_LOG_RATIO, _MAX_LOG_RATIO)
        return (torch.exp(d) - d - 1).clamp(-10.0, 10.0)
    return torch.exp(d) - d - 1


@dataclass
class LossOutput:
    """Per-token diagnostics of one :func:`policy_loss` call (all detached).

    ratio [B, L]: s_t at model tokens, NaN elsewhere.
    clipped [B, L] int8: +1 where the upper bound made the clipped branch the active one (A > 0 and
        s > hi: zero gradient), −1 for the lower bound (A < 0 and s < lo), +1 also where dual clip
        capped the loss (A < 0 and s > c_dual); 0 elsewhere (and at non-model tokens).
    token_loss [B, L]: the surrogate loss per token, 0 at non-model tokens.
    metrics: scalar floats with TRL names where they exist: ``pg_loss``, ``clip_ratio/low_mean``,
        ``clip_ratio/high_mean``, ``clip_ratio/region_mean`` (shares of model tokens; the region counts
        every token with a non-zero flag, dual-capped ones included), ``ratio/mean``,
        ``ratio/min``, ``ratio/max``, and ``clip_ratio/dual_mean``, ``kl``, ``entropy`` when those
        terms are on. Per-turn clip shares are computed from ``clipped`` by ``metrics.turn_metrics``.
    """

    ratio: torch.Tensor
    clipped: torch.Tensor
    token_loss: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def _check_inputs(tensors: dict[str, torch.Tensor], turn_ids, loss_mask, ratio_level) -> None:
    shape = loss_mask.shape
    for name, tensor in tensors.items():
        if tensor is not None and tensor.shape != shape:
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}; every per-token input must be [B, L] = "
                             f"{tuple(shape)} like loss_mask.")
    mask = loss_mask.bool()
    if ratio_level == "turn":
        orphan = (mask & (turn_ids < 1)).nonzero()
        if len(orphan):
            row, pos = (int(v) for v in orphan[0])
            raise ValueError(f"loss_mask[{row}, {pos}] is a model token with turn_ids 0: the turn-level ratio "
                             "needs the turn of every trained token (turn_ids >= 1).")
    for name in ("token_advantages", "token_clip_low", "token_clip_high"):
        bad = (mask & ~torch.isfinite(tensors[name])).nonzero()
        if len(bad):
            row, pos = (int(v) for v in bad[0])
            raise ValueError(f"{name}[{row}, {pos}] is not finite at a model token; broadcast the per-turn values "
                             "with advantages.broadcast_to_tokens.")


def policy_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, token_advantages: torch.Tensor,
                turn_ids: torch.Tensor, loss_mask: torch.Tensor, token_clip_low: torch.Tensor,
                token_clip_high: torch.Tensor, ratio_level: str = "turn", dual_clip: Optional[float] = None,
                loss_agg_mode: str = "seq-mean-token-mean", ref_logprobs: Optional[torch.Tensor] = None,
                beta: float = 0.0, kl_estimator: str = "k3", entropy: Optional[torch.Tensor] = None,
                entropy_coeff: float = 0.0) -> tuple[torch.Tensor, LossOutput]:
    """The §6 loss of a batch (equations in the module docstring).

    Args (all per-token tensors [B, L]; position l scores token l):
        logprobs: log π_θ, with gradient.
        old_logprobs: log π_old of the sampling policy (no gradient).
        token_advantages: A of each token's turn (``broadcast_to_tokens``).
        turn_ids: long, k for tokens of assistant turn k, 0 elsewhere.
        loss_mask: bool, True at model tokens (the only ones trained).
        token_clip_low, token_clip_high: the ratio bounds 1 − c·ε_low and 1 + c·ε_high of the token's turn.
        ratio_level: ``"turn"`` or ``"token"``.
        dual_clip: c_dual > 1, or None for no dual clip.
        loss_agg_mode: see :func:`aggregate`.
        ref_logprobs, beta, kl_estimator: the KL term, on when beta > 0 (then ref_logprobs is required).
        entropy, entropy_coeff: per-token entropy; a bonus −entropy_coeff·H when entropy_coeff > 0.

    Returns:
        (loss, LossOutput): the scalar to backpropagate, and the per-token diagnostics and metrics.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip={dual_clip!r} must be > 1 (usually 3.0) or None.")
    if beta > 0 and ref_logprobs is None:
        raise ValueError(f"beta={beta} > 0 needs ref_logprobs (log-probs of the reference policy).")
    if entropy_coeff > 0 and entropy is None:
        raise ValueError(f"entropy_coeff={entropy_coeff} > 0 needs the per-token entropy.")
    _check_inputs(dict(logprobs=logprobs, old_logprobs=old_logprobs, token_advantages=token_advantages,
                       turn_ids=turn_ids, token_clip_low=token_clip_low, token_clip_high=token_clip_high,
                       ref_logprobs=ref_logprobs, entropy=entropy), turn_ids, loss_mask, ratio_level)
    if logprobs.dtype in (torch.float16, torch.bfloat16):
        # A turn-level clip band of ±3e-3 is narrower than bf16's spacing near 1 (7.8e-3).
        logprobs, old_logprobs = logprobs.float(), old_logprobs.float()
    mask = loss_mask.bool()
    zeros, ones = torch.zeros_like(logprobs), torch.ones_like(logprobs)
    advantage = torch.where(mask, token_advantages.detach().to(logprobs.dtype), zeros)
    low = torch.where(mask, token_clip_low.detach().to(logprobs.dtype), ones)
    high = torch.where(mask, token_clip_high.detach().to(logprobs.dtype), ones)

    ratio = importance_ratio(logprobs, old_logprobs, turn_ids, mask, ratio_level)
    unclipped_loss = -advantage * ratio
    clipped_loss = -advantage * torch.clamp(ratio, low, high)
    token_loss = torch.maximum(unclipped_loss, clipped_loss)          # = −min(s·A, clip(s)·A)
    with torch.no_grad():
        s = ratio.detach()
        clipped_high = mask & (advantage > 0) & (s > high)
        clipped_low = mask & (advantage < 0) & (s < low)
        dual_capped = torch.zeros_like(mask)
    if dual_clip is not None:
        capped = -advantage * dual_clip
        with torch.no_grad():
            dual_capped = mask & (advantage < 0) & (token_loss.detach() > capped)
        token_loss = torch.where(advantage < 0, torch.minimum(token_loss, capped), token_loss)

    pg_loss = aggregate(token_loss, mask, loss_agg_mode)
    loss = pg_loss
    metrics: dict[str, float] = {"pg_loss": float(pg_loss.detach())}
    if ref_logprobs is not None:
        kl = aggregate(kl_penalty(logprobs, ref_logprobs, kl_estimator), mask, loss_agg_mode)
        metrics["kl"] = float(kl.detach())
        if beta > 0:
            loss = loss + beta * kl
    if entropy is not None:
        mean_entropy = aggregate(entropy, mask, loss_agg_mode)
        metrics["entropy"] = float(mean_entropy.detach())
        if entropy_coeff > 0:
            loss = loss - entropy_coeff * mean_entropy

    with torch.no_grad():
        n_tokens = max(int(mask.sum()), 1)
        model_ratios = s[mask]
        metrics.update({
            "clip_ratio/low_mean": float(clipped_low.sum()) / n_tokens,
            "clip_ratio/high_mean": float(clipped_high.sum()) / n_tokens,
            "clip_ratio/region_mean": float((clipped_low | clipped_high | dual_capped).sum()) / n_tokens,
            "ratio/mean": float(model_ratios.mean()) if model_ratios.numel() else float("nan"),
            "ratio/min": float(model_ratios.min()) if model_ratios.numel() else float("nan"),
            "ratio/max": float(model_ratios.max()) if model_ratios.numel() else float("nan"),
        })
        if dual_clip is not None:
            metrics["clip_ratio/dual_mean"] = float(dual_capped.sum()) / n_tokens
        flags = clipped_high.to(torch.int8) - clipped_low.to(torch.int8) + dual_capped.to(torch.int8)
        output = LossOutput(ratio=torch.where(mask, s, torch.full_like(s, float("nan"))), clipped=flags,
                            token_loss=torch.where(mask, token_loss.detach(), torch.zeros_like(s)), metrics=metrics)
    return loss, output
