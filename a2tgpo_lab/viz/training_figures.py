"""Training curves from a metrics history (``trainer.history``: one dict per step, TRL-style names).

A panel whose metrics were never logged (e.g. ``eval/em`` before the first evaluation) says so
instead of disappearing, so the layout stays the same while a run fills it in.
"""
from __future__ import annotations

import math
from typing import Iterable

from .style import TEMPLATE, as_history, step_of

# (panel title, [(metric key, legend name)])
PANELS = (
    ("reward", [("reward", "reward (train)"), ("reward_std", "reward std in group")]),
    ("eval exact match", [("eval/em", "eval/em")]),
    ("turns per rollout", [("num_turns/mean", "turns"), ("search_calls/mean", "searches")]),
    ("clip fraction", [("clip_ratio/region_mean", "all"), ("clip_ratio/low_mean", "low"),
                       ("clip_ratio/high_mean", "high")]),
    ("information gain", [("ig/mean", "IG mean"), ("ig/std", "IG std"),
                          ("ig/zero_std_group_frac", "constant-group share")]),
    ("loss", [("loss", "loss"), ("pg_loss", "policy loss")]),
)


def training_curves_figure(history: Iterable, columns: int = 3):
    """A grid of training curves; ``history`` is a list of metric dicts or of StepRecords.

    Each panel's legend sits above it, its title first ("reward: ● reward (train) ● …"), so no legend
    covers a curve. Each trace's ``meta`` names its metric key; x is the row's ``step`` (its position
    if absent). Shares (clip fractions) keep a [0, 1]-based axis even when all zero.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    rows = as_history(history)
    n_rows = -(-len(PANELS) // columns)
    fig = make_subplots(rows=n_rows, cols=columns, vertical_spacing=0.2, horizontal_spacing=0.07)
    palette = ("#1f77b4", "#ff7f0e", "#2ca02c")
    legends = {}
    for n, (title, metrics) in enumerate(PANELS):
        row, col = divmod(n, columns)
        axis = "" if n == 0 else str(n + 1)
        legend = "legend" if n == 0 else f"legend{n + 1}"       # one legend per panel, above it
        peak = 0.0
        drawn = False
        for (key, name), color in zip(metrics, palette):
            points = [(step_of(r, p), r[key]) for p, r in enumerate(rows)
                      if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
            if not points:
                continue
            drawn = True
            peak = max([peak] + [abs(y) for _, y in points])
            fig.add_trace(go.Scatter(x=[x for x, _ in points], y=[y for _, y in points], name=name, legend=legend,
                                     mode="lines+markers" if len(points) < 30 else "lines", meta={"metric": key},
                                     line=dict(color=color), marker=dict(size=4)), row=row + 1, col=col + 1)
        x_domain, y_domain = fig.layout[f"xaxis{axis}"].domain, fig.layout[f"yaxis{axis}"].domain
        if not drawn:
            fig.add_annotation(text=f"{title}: not logged yet", showarrow=False, font=dict(color="gray"),
                               xref="paper", yref="paper", x=sum(x_domain) / 2, y=sum(y_domain) / 2)
        if title == "clip fraction":
            fig.update_yaxes(range=[0, max(0.05, 1.1 * peak)], row=row + 1, col=col + 1)
        legends[legend] = dict(x=x_domain[0], y=y_domain[1] + 0.01, xanchor="left", yanchor="bottom",
                               orientation="h", title=dict(text=f"<b>{title}</b>"), font=dict(size=11),
                               bgcolor="rgba(255,255,255,0)")
    fig.update_xaxes(title_text="step", row=n_rows)
    fig.update_layout(template=TEMPLATE, height=300 * n_rows + 80, title="training curves", margin=dict(t=110, b=40),
                      **legends)
    return fig
