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


def _nanmean(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def _nanstd(x) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.std()) if x.size else float("nan")


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
    })
    out.update(turn_metrics(record))
    return out
