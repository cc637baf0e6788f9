"""Accumulated advantage against turn depth, with and without the √n rescale (ALGORITHM.md §4).

    Â_{i,t} = α · Σ_{k=t}^{T_i−1} γ^{k−t} Î_{i,k} / √(T_i − t) + R̂_i      process turns (Eq. 9)

Without the division an early turn of a long rollout sums many unit-scale terms, so its advantage
spreads wider than a late turn's just because of its depth; dividing by √(number of summed terms)
puts every depth on the same scale. Both variants are computed from the record's Î and R̂ by the
package's :func:`a2tgpo_lab.advantages.accumulate` and :func:`~a2tgpo_lab.advantages.add_outcome`.
"""
from __future__ import annotations

import numpy as np

from .style import TEMPLATE, check_record


def advantages_by_rescale(record) -> dict[str, np.ndarray]:
    """{"÷ √n": A [B, T], "no rescale": A [B, T]} for the record's Î, R̂, K, α and γ.

    GRPO and IGPO records have no rescaled sum (GRPO broadcasts R̂, IGPO sums its joint rewards
    without a divisor), so both entries are their stored advantages.
    """
    import torch

    from ..advantages import accumulate, add_outcome, share_first_turn

    check_record(record, "advantages_by_rescale")
    cfg = record.config or {}
    if cfg.get("advantage_estimator") in ("grpo", "igpo"):
        stored = np.asarray(record.advantages, dtype=float)
        return {"÷ √n": stored, "no rescale": stored}
    turns = torch.as_tensor(np.asarray(record.num_tool_turns, dtype=np.int64))
    ig_norm = torch.as_tensor(np.asarray(record.ig_norm, dtype=float))
    outcome_norm = torch.as_tensor(np.asarray(record.outcome_norm, dtype=float))
    gamma, alpha = float(cfg.get("gamma", 1.0)), float(cfg.get("ig_alpha", 1.0))
    out = {}
    for label, rescale in (("÷ √n", "sqrt_n"), ("no rescale", "none")):
        ig_part, _ = accumulate(ig_norm, turns, gamma=gamma, rescale=rescale)
        advantages = add_outcome(ig_part, outcome_norm, turns, alpha=alpha)
        if cfg.get("ig_first_turn") == "none":
            advantages = share_first_turn(advantages, turns)
        out[label] = advantages.numpy()
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
