"""Scalar metrics of one step, computed from its :class:`~a2tgpo_lab.records.StepRecord`.

Names follow TRL's GRPO trainer where one exists (``reward``, ``reward_std``, ``frac_reward_zero_std``,
``completions/mean_length``, ``clip_ratio/...``) and add the per-turn view A²TGPO is about:
``turn/{k}/ig_mean``, ``turn/{k}/ig_norm_mean``, ``turn/{k}/adv_mean``, ``turn/{k}/adv_std``,
``turn/{k}/group_size_mean``, ``turn/{k}/clip_range_mean``, ``turn/{k}/clip_frac``.
"""
from __future__ import annotations

import warnings

import numpy as np

from .records import StepRecord


def _finite_reduce(x, reduce) -> float:
    """``reduce`` over the finite entries of ``x``; NaN when there are none."""
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(reduce(x)) if x.size else float("nan")


def _nanmean(x) -> float:
    return _finite_reduce(x, np.mean)


def _nanstd(x) -> float:
    return _finite_reduce(x, np.std)


def _nanmin(x) -> float:
    return _finite_reduce(x, np.min)


def _nanmax(x) -> float:
    return _finite_reduce(x, np.max)


def sampled_entropy(old_logprobs, loss_mask) -> dict[str, float]:
    """``entropy/sampled_nll``: −mean log π_old of the sampled model tokens, in nats per token.

    Each token was drawn from π_old, so E[−log π_old(a)] is the policy's entropy at that position: this
    is a free Monte-Carlo estimate of the mean entropy (the exact one needs a softmax over the whole
    vocabulary; the loss logs it as ``entropy`` when ``entropy_coeff > 0``)."""
    chosen = np.asarray(old_logprobs, dtype=float)[np.asarray(loss_mask, dtype=bool)]
    chosen = chosen[np.isfinite(chosen)]
    return {"entropy/sampled_nll": float(-chosen.mean()) if chosen.size else float("nan")}


def reward_metrics(outcome_reward: np.ndarray, prompt_index: np.ndarray) -> dict[str, float]:
    """``reward`` (mean), ``reward_std`` (mean over prompts of the within-prompt std, as TRL) and
    ``frac_reward_zero_std`` (prompts whose G rewards are all equal: they teach GRPO nothing)."""
    stds = [outcome_reward[prompt_index == p].std() for p in np.unique(prompt_index)]
    return {"reward": float(outcome_reward.mean()), "reward_std": float(np.mean(stds)),
            "frac_reward_zero_std": float(np.mean([s == 0 for s in stds]))}


def turn_metrics(record: StepRecord) -> dict[str, float]:
    """Per-turn-index means of IG, normalized IG, advantages, group sizes, clip ranges and clip fractions."""
    out: dict[str, float] = {}
    clip_width = record.clip_high - record.clip_low
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for j in range(record.max_turns):
            k = j + 1
            adv = record.advantages[:, j]
            if not np.isfinite(adv).any():
                continue
            out[f"turn/{k}/adv_mean"] = _nanmean(adv)
            out[f"turn/{k}/adv_std"] = _nanstd(adv)
            out[f"turn/{k}/clip_range_mean"] = _nanmean(clip_width[:, j])
            if np.isfinite(record.ig[:, j]).any():
                out[f"turn/{k}/ig_mean"] = _nanmean(record.ig[:, j])
                out[f"turn/{k}/ig_norm_mean"] = _nanmean(record.ig_norm[:, j])
                sizes = record.group_size[:, j]
                out[f"turn/{k}/group_size_mean"] = float(sizes[sizes > 0].mean()) if (sizes > 0).any() else 0.0
            flags = [c[t == k] for c, t, m in zip(record.clipped, record.turn_ids, record.loss_mask)]
            flags = np.concatenate(flags) if flags else np.zeros(0)
            if flags.size:
                out[f"turn/{k}/clip_frac"] = float((flags != 0).mean())
    out["clip_range/turn_mean"] = _nanmean(clip_width)
    return out


def step_metrics(record: StepRecord) -> dict[str, float]:
    """All rollout-side metrics of a step (the loss-side ones are merged in by the trainer)."""
    lengths = [int(m.sum()) for m in record.loss_mask]
    turns = [len(t) for t in record.turn_texts]
    out = reward_metrics(record.outcome_reward, record.prompt_index)
    out.update({
        "completions/mean_length": float(np.mean(lengths)),
        "completions/min_length": float(np.min(lengths)),
        "completions/max_length": float(np.max(lengths)),
        "num_turns/mean": float(np.mean(turns)),
        "num_turns/max": float(np.max(turns)),
        "search_calls/mean": float(record.num_tool_turns.mean()),
        "answer_rate": float(np.mean([r == "answer" for r in record.end_reason])),
        "format_error_rate": float(np.mean([r != "answer" for r in record.end_reason])),
        "ig/mean": _nanmean(record.ig),
        "ig/std": _nanstd(record.ig),
        "ig/nonfinite_count": float(record.ig_nonfinite_count),
        "ig/zero_std_group_frac": float(record.zero_std_group_frac),
        "advantages/mean": _nanmean(record.advantages),
        "advantages/std": _nanstd(record.advantages),
        "advantages/min": _nanmin(record.advantages),
        "advantages/max": _nanmax(record.advantages),
    })
    out.update(turn_metrics(record))
    return out


def clip_fraction_summary(history: list[dict]) -> str:
    """Lines for the end of a run: the share of model tokens clipped, overall and per turn, averaged over
    the steps of ``history`` (rows of metrics, as ``trainer.history``), and the range of the ratio."""
    steps = [row for row in history if "clip_ratio/region_mean" in row]
    if not steps:
        return "clip fraction: no training step recorded."
    turns = sorted({int(key.split("/")[1]) for row in steps for key in row
                    if key.startswith("turn/") and key.endswith("/clip_frac")})
    parts = [f"all turns {_nanmean([row['clip_ratio/region_mean'] for row in steps]):.3f}"]
    parts += [f"turn {k} {_nanmean([row.get(f'turn/{k}/clip_frac', np.nan) for row in steps]):.3f}" for k in turns]
    low = np.nanmin([row.get("ratio/min", np.nan) for row in steps])
    high = np.nanmax([row.get("ratio/max", np.nan) for row in steps])
    lines = [f"clip fraction (share of model tokens clipped, mean over {len(steps)} steps): " + " | ".join(parts),
             f"importance ratio extremes (per-mini-batch min / max averaged per step): [{low:.4f}, {high:.4f}]"]
    if high == low == 1.0:
        lines.append("no token can be clipped while the ratio is exactly 1: take several optimizer steps per rollout "
                     "batch (num_mini_batches > 1 or num_iterations > 1).")
    return "\n".join(lines)
