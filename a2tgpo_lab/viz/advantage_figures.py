"""Accumulated advantage against turn depth, with and without the √n rescale (ALGORITHM.md §4).

    A_{i,t} = ( Σ_{k=t}^{K_i+1} γ^{k−t} r̃_{i,k} ) / √(K_i + 2 − t)        r̃ = (Ĩ_{i,1..K_i}, õ_i)

Without the division an early turn of a long rollout sums many unit-scale terms, so its advantage
spreads wider than a late turn's just because of its depth; dividing by √(number of summed terms)
puts every depth on the same scale. Both variants are computed from the record's Ĩ and õ by the
package's :func:`a2tgpo_lab.advantages.reward_terms` and :func:`~a2tgpo_lab.advantages.accumulate`.
"""
from __future__ import annotations

import numpy as np

from .style import TEMPLATE, check_record


def advantages_by_rescale(record) -> dict[str, np.ndarray]:
    """{"÷ √n": A [B, T], "no rescale": A [B, T]} for the record's Ĩ, õ, K and γ.

    A GRPO record has no per-turn terms (its advantage is õ broadcast to every turn, never rescaled),
    so both entries are its stored advantages.
    """
    import torch

    from ..advantages import accumulate, reward_terms

    check_record(record, "advantages_by_rescale")
    cfg = record.config or {}
    if cfg.get("advantage_estimator") == "grpo":
        stored = np.asarray(record.advantages, dtype=float)
        return {"÷ √n": stored, "no rescale": stored}
    turns = torch.as_tensor(np.asarray(record.num_tool_turns, dtype=np.int64))
    terms = reward_terms(torch.as_tensor(np.asarray(record.ig_norm, dtype=float)),
                         torch.as_tensor(np.asarray(record.outcome_norm, dtype=float)), turns)
    gamma = float(cfg.get("gamma", 1.0))
    out = {}
    for label, rescale in (("÷ √n", "sqrt_n"), ("no rescale", "none")):
        advantages, _ = accumulate(terms, turns, gamma=gamma, rescale=rescale)
        out[label] = advantages[:, :-1].numpy()   # the extra column is turn T + 1, which no rollout reaches
    return out


def advantage_depth_figure(record):
    """Box + points of A_{i,t} per turn depth t, "÷ √n" next to "no rescale"; the std of each box is
    printed above it. Each trace's ``meta`` names its variant."""
    import plotly.graph_objects as go

    variants = advantages_by_rescale(record)
    colors = {"÷ √n": "#1f77b4", "no rescale": "#ff7f0e"}
    fig = go.Figure()
    for label, values in variants.items():
        rows, cols = np.nonzero(np.isfinite(values))
        fig.add_trace(go.Box(x=cols + 1, y=values[rows, cols], name=label, meta={"variant": label},
                             boxpoints="all", jitter=0.4, pointpos=0, marker=dict(size=5, color=colors[label]),
                             customdata=rows, hovertemplate="rollout %{customdata} · turn %{x}<br>A = %{y:.3f}"
                                                            "<extra>" + label + "</extra>"))
        for t in np.unique(cols):
            spread = float(values[rows[cols == t], t].std())
            fig.add_annotation(x=t + 1 + (-0.2 if label == "÷ √n" else 0.2), y=1.0, yref="paper", showarrow=False,
                               text=f"σ={spread:.2f}", font=dict(size=10, color=colors[label]))
    cfg = record.config or {}
    unscaled = cfg.get("advantage_estimator") in ("igpo", "grpo") or cfg.get("rescale") == "none"
    trained = "no rescale" if unscaled else "÷ √n"
    fig.update_layout(template=TEMPLATE, boxmode="group", height=380, xaxis=dict(title="turn depth t", dtick=1),
                      yaxis_title="advantage A_{i,t}",
                      title=f"advantage vs depth (step {record.step}; this run trains with: {trained})")
    return fig
