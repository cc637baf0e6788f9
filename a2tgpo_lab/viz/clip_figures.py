"""Figures of adaptive turn-level clipping and the clipped surrogate (ALGORITHM.md §5-§6).

    c_{i,k} = 1 + β · (2σ(Ĩ_{i,k}) − 1)                  clip factor, c ∈ (1 − β, 1 + β)
    [lo, hi] = [1 − c·ε_low, 1 + c·ε_high]                the turn's ratio band
    objective = min( s·A, clip(s, lo, hi)·A )             per token (the loss is its negative)

Where the clipped branch is the smaller one (A > 0 and s > hi, or A < 0 and s < lo) the objective is
flat in s: the token's gradient vanishes. Every number here comes from the package's own
:func:`a2tgpo_lab.clipping.adaptive_clip_factor`, :func:`~a2tgpo_lab.clipping.clip_bounds` and
:func:`a2tgpo_lab.loss.policy_loss`; nothing is re-derived.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from .style import (BAND_COLOR, CLIP_HIGH_COLOR, CLIP_LOW_COLOR, DEAD_GRADIENT_COLOR, TEMPLATE, TURN_COLORS,
                    as_history, check_record, check_rollout, step_of, turn_color)


# ----------------------------------------------------------------------------- the math, from the library


def clip_factor_for(ig_norm: float, beta: float) -> float:
    """c of one tool turn with normalized IG ``ig_norm``, by :func:`a2tgpo_lab.clipping.adaptive_clip_factor`."""
    import torch

    from ..clipping import adaptive_clip_factor

    c = adaptive_clip_factor(torch.tensor([[float(ig_norm)]], dtype=torch.float64), beta, torch.tensor([1]))
    return float(c[0, 0])


def bounds_for(clip_factor: float, eps_low: float, eps_high: float) -> tuple[float, float]:
    """(lo, hi) = (1 − c·ε_low, 1 + c·ε_high), by :func:`a2tgpo_lab.clipping.clip_bounds`."""
    import torch

    from ..clipping import clip_bounds

    low, high = clip_bounds(torch.tensor([float(clip_factor)], dtype=torch.float64), eps_low, eps_high)
    return float(low[0]), float(high[0])


def surrogate_curve(ratios: Sequence[float], advantage: float, low: float,
                    high: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The clipped objective of one token at each ratio s, by running :func:`a2tgpo_lab.loss.policy_loss`.

    Each s is a token of its own (token-level ratio s = π_θ/π_old with log π_old = 0), so one call
    evaluates the whole curve. Returns arrays [N]:
        objective  min(s·A, clip(s, lo, hi)·A)  (= −token loss)
        gradient   ∂objective/∂log π_θ: s·A where the unclipped branch is active, 0 where clipped
        clipped    the loss's flags: +1 clipped high, −1 clipped low, 0 not clipped
    """
    import torch

    from ..loss import policy_loss

    s = np.asarray(ratios, dtype=float)
    if s.ndim != 1 or s.size == 0 or (s <= 0).any() or not np.isfinite(s).all():
        raise ValueError("surrogate_curve: ratios must be a non-empty 1-D sequence of finite positive numbers.")
    logprobs = torch.tensor(np.log(s), dtype=torch.float64)[None].requires_grad_(True)
    ones = torch.ones_like(logprobs, dtype=torch.float64).detach()
    loss, out = policy_loss(logprobs, torch.zeros_like(ones), advantage * ones, ones.long(), ones.bool(),
                            low * ones, high * ones, ratio_level="token", loss_agg_mode="seq-mean-token-sum")
    loss.backward()            # the sum over tokens, so each token's gradient is its own
    return -out.token_loss[0].numpy(), -logprobs.grad[0].numpy(), out.clipped[0].numpy()


def _segments(flags: np.ndarray, x: np.ndarray) -> list[tuple[float, float]]:
    """[(x_start, x_end)] of the runs where ``flags`` is True, each widened to the neighbouring grid
    points (the clip bounds are grid points, and at a bound itself the two branches tie)."""
    runs, start, last = [], None, len(flags) - 1
    for j, flag in enumerate(flags):
        if flag and start is None:
            start = j
        if start is not None and (not flag or j == last):
            end = j if flag else j - 1
            runs.append((float(x[max(start - 1, 0)]), float(x[min(end + 1, last)])))
            start = None
    return runs


def clip_surrogate_figure(ig_norm: float = 0.0, advantage: float = 1.0, beta: float = 0.3, eps_low: float = 3e-3,
                          eps_high: float = 4e-3, ratios: Optional[Sequence[float]] = None,
                          half_width: Optional[float] = None):
    """Fixed (c = 1) vs adaptive (c from Ĩ and β) clipping of one turn, side by side.

    Top row: the objective min(s·A, clip(s)·A) (solid) and the unclipped s·A (dotted) against the
    ratio s, with the band [lo, hi] shaded green. Bottom row: ∂objective/∂log π, with the region where
    it vanishes shaded red. ``ratios`` (e.g. a turn's token ratios from a record) are drawn as points.
    ``layout.meta`` holds the numbers (c, bounds) for readouts and tests.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if advantage == 0:
        raise ValueError("clip_surrogate_figure: advantage=0 makes the objective flat; use a non-zero A (its sign "
                         "decides which side is clipped).")
    panels = {"fixed": 1.0, "adaptive": clip_factor_for(ig_norm, beta)}
    bounds = {name: bounds_for(c, eps_low, eps_high) for name, c in panels.items()}
    points = np.asarray(ratios if ratios is not None else [], dtype=float)
    reach = max(eps_low, eps_high) * (1 + beta) * 2.5 if half_width is None else half_width
    if points.size:
        reach = max(reach, float(np.abs(points - 1).max()) * 1.1)
    edges = [b for pair in bounds.values() for b in pair]
    grid = np.union1d(np.linspace(max(1e-6, 1 - reach), 1 + reach, 401), edges)
    fig = make_subplots(rows=2, cols=2, shared_xaxes=True, vertical_spacing=0.08, horizontal_spacing=0.08,
                        row_heights=[0.65, 0.35], subplot_titles=(
                            "fixed clip: c = 1", f"adaptive clip: c = {panels['adaptive']:.4f}  (Ĩ = {ig_norm:+.2f})",
                            "", ""))
    for col, (name, c) in enumerate(panels.items(), start=1):
        low, high = bounds[name]
        objective, gradient, _ = surrogate_curve(grid, advantage, low, high)
        for row in (1, 2):
            fig.add_vrect(x0=low, x1=high, fillcolor=BAND_COLOR, line_width=0, row=row, col=col,
                          exclude_empty_subplots=False)
            for x0, x1 in _segments(gradient == 0, grid):
                fig.add_vrect(x0=x0, x1=x1, fillcolor=DEAD_GRADIENT_COLOR, line_width=0, row=row, col=col,
                              exclude_empty_subplots=False)
        fig.add_trace(go.Scatter(x=grid, y=grid * advantage, mode="lines", name="s·A (unclipped)",
                                 line=dict(color="gray", dash="dot"), showlegend=col == 1), row=1, col=col)
        fig.add_trace(go.Scatter(x=grid, y=objective, mode="lines", name="min(s·A, clip(s)·A)",
                                 line=dict(color="#1f77b4", width=3), showlegend=col == 1,
                                 meta={"panel": name, "curve": "objective"}), row=1, col=col)
        fig.add_trace(go.Scatter(x=grid, y=gradient, mode="lines", name="∂objective/∂log π",
                                 line=dict(color="#9467bd", width=2), showlegend=col == 1,
                                 meta={"panel": name, "curve": "gradient"}), row=2, col=col)
        if points.size:
            point_objective, _, flags = surrogate_curve(points, advantage, low, high)
            colors = np.where(flags > 0, CLIP_HIGH_COLOR, np.where(flags < 0, CLIP_LOW_COLOR, "black"))
            fig.add_trace(go.Scatter(x=points, y=point_objective, mode="markers", name="token ratios",
                                     marker=dict(size=9, color=colors, line=dict(color="white", width=1)),
                                     showlegend=col == 1, meta={"panel": name, "curve": "ratios"}), row=1, col=col)
    fixed, adaptive = bounds["fixed"], bounds["adaptive"]
    readout = (f"A {'> 0' if advantage > 0 else '< 0'} · fixed band [{fixed[0]:.5g}, {fixed[1]:.5g}] · adaptive band "
               f"[{adaptive[0]:.5g}, {adaptive[1]:.5g}] (width × {panels['adaptive']:.3f}) · red: gradient = 0")
    fig.update_xaxes(title_text="importance ratio s", row=2)
    fig.update_yaxes(title_text="objective", row=1, col=1)
    fig.update_yaxes(title_text="gradient", row=2, col=1)
    fig.update_layout(template=TEMPLATE, height=460, title=dict(text=readout, font=dict(size=13)),
                      legend=dict(orientation="h", y=-0.15),
                      meta={"clip_factor": panels["adaptive"], "fixed_bounds": fixed, "adaptive_bounds": adaptive})
    return fig


# ----------------------------------------------------------------------------- figures of a step record


def clip_range_figure(record):
    """The ratio band [clip_low, clip_high] of every (rollout, turn): one floating bar each, coloured by
    the clip factor c, next to the fixed band [1 − ε_low, 1 + ε_high] (dashed)."""
    import plotly.graph_objects as go

    check_record(record, "clip_range_figure")
    low, high = np.asarray(record.clip_low, dtype=float), np.asarray(record.clip_high, dtype=float)
    factor = np.asarray(record.clip_factor, dtype=float)
    rows, cols = np.nonzero(np.isfinite(low) & np.isfinite(high))
    batch = len(record.questions)
    offsets = (rows / max(1, batch - 1) - 0.5) * 0.7
    fig = go.Figure(go.Bar(
        x=cols + 1 + offsets, base=low[rows, cols], y=high[rows, cols] - low[rows, cols], width=0.7 / max(1, batch),
        marker=dict(color=factor[rows, cols], colorscale="RdYlGn", cmid=1.0, colorbar=dict(title="c")),
        customdata=np.stack([rows, factor[rows, cols], low[rows, cols], high[rows, cols]], axis=1), name="band",
        hovertemplate="rollout %{customdata[0]} · turn %{x:.0f}<br>c = %{customdata[1]:.4f}<br>"
                      "[%{customdata[2]:.5f}, %{customdata[3]:.5f}]<extra></extra>"))
    cfg = record.config or {}
    if "epsilon" in cfg and "epsilon_high" in cfg:
        for bound in (1 - cfg["epsilon"], 1 + cfg["epsilon_high"]):
            fig.add_hline(y=bound, line=dict(color="black", dash="dash", width=1))
    fig.add_hline(y=1.0, line=dict(color="gray", width=1))
    fig.update_layout(template=TEMPLATE, height=360, xaxis=dict(title="turn k", dtick=1), yaxis_title="ratio bounds",
                      title=f"clip band per (rollout, turn) (step {record.step}); dashed: fixed band")
    return fig


def ratio_figure(record, rollout: Optional[int] = None):
    """Importance ratios of the model tokens against their turn's clip band.

    x = model tokens one after another (all rollouts, or only ``rollout``); the green band is each
    token's [lo, hi]; dots are coloured by turn; ▲ red = clipped high, ▼ blue = clipped low (the
    record's ``clipped`` flags). The clipped traces' ``customdata`` rows are (rollout, token position).
    """
    import plotly.graph_objects as go

    check_record(record, "ratio_figure")
    chosen = range(len(record.questions)) if rollout is None else [check_rollout(record, rollout, "ratio_figure")]
    rows = []
    for i in chosen:
        positions = np.nonzero(np.asarray(record.loss_mask[i], dtype=bool))[0]
        turns = np.asarray(record.turn_ids[i])[positions]
        rows.append(dict(rollout=np.full(positions.size, i), position=positions, turn=turns,
                         ratio=np.asarray(record.ratio[i], dtype=float)[positions],
                         clipped=np.asarray(record.clipped[i])[positions],
                         low=np.asarray(record.clip_low, dtype=float)[i, turns - 1],
                         high=np.asarray(record.clip_high, dtype=float)[i, turns - 1],
                         token=np.array(record.tokens[i], dtype=object)[positions]))
    data = {key: np.concatenate([r[key] for r in rows]) if rows else np.zeros(0) for key in
            ("rollout", "position", "turn", "ratio", "clipped", "low", "high", "token")}
    x = np.arange(data["ratio"].size)
    ids = np.stack([data["rollout"], data["position"]], axis=1) if x.size else np.zeros((0, 2))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=x, y=data["low"], mode="lines", line=dict(shape="hvh", width=0), showlegend=False,
                             hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=data["high"], mode="lines", line=dict(shape="hvh", width=0), fill="tonexty",
                             fillcolor=BAND_COLOR, name="clip band [lo, hi]", hoverinfo="skip"))
    fig.add_trace(go.Scatter(
        x=x, y=data["ratio"], mode="markers", name="ratio s",
        marker=dict(size=5, color=[turn_color(int(t)) for t in data["turn"]]),
        customdata=np.column_stack([ids, data["turn"], data["token"]]) if x.size else None,
        hovertemplate="rollout %{customdata[0]} · token %{customdata[1]} · turn %{customdata[2]}<br>"
                      "'%{customdata[3]}' s = %{y:.5f}<extra></extra>"))
    for flag, symbol, color, name in ((1, "triangle-up", CLIP_HIGH_COLOR, "clipped high"),
                                      (-1, "triangle-down", CLIP_LOW_COLOR, "clipped low")):
        hit = data["clipped"] == flag
        fig.add_trace(go.Scatter(x=x[hit], y=data["ratio"][hit], mode="markers", name=name, customdata=ids[hit],
                                 meta={"clipped": flag}, marker=dict(symbol=symbol, size=10, color=color),
                                 hovertemplate="rollout %{customdata[0]} · token %{customdata[1]}<extra>" + name
                                               + "</extra>"))
    if rollout is None and x.size:                # one separator between consecutive rollouts
        fig.update_layout(shapes=[dict(type="line", xref="x", yref="paper", x0=b + 0.5, x1=b + 0.5, y0=0, y1=1,
                                       line=dict(color="lightgray", width=1))
                                  for b in np.nonzero(np.diff(data["rollout"]))[0]])
    which = "all rollouts" if rollout is None else f"rollout {rollout}"
    fig.update_layout(template=TEMPLATE, height=360, xaxis_title=f"model token ({which})", yaxis_title="ratio s",
                      title=f"importance ratios vs clip band (step {record.step}): a ratio outside the band is "
                            "clipped only if it moved the way A pushes it")
    return fig


def clip_fraction_figure(history: Iterable):
    """Clip fraction per turn index over training, from a metrics history (``turn/{k}/clip_frac``)
    or a list of StepRecords; the overall ``clip_ratio/region_mean`` is the dashed black line."""
    import plotly.graph_objects as go

    rows = as_history(history)
    fig = go.Figure()
    turns = sorted({int(key.split("/")[1]) for row in rows for key in row
                    if key.startswith("turn/") and key.endswith("/clip_frac")})
    for name, key, line in ([(f"turn {k}", f"turn/{k}/clip_frac", dict(color=TURN_COLORS[(k - 1) % len(TURN_COLORS)]))
                             for k in turns]
                            + [("all tokens", "clip_ratio/region_mean", dict(color="black", dash="dash"))]):
        points = [(step_of(row, n), row[key]) for n, row in enumerate(rows) if row.get(key) is not None]
        if points:
            fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[1] for p in points], mode="lines+markers",
                                     name=name, line=line, meta={"metric": key}))
    if not fig.data:
        fig.add_annotation(text="no clip metrics logged yet", showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    peak = max([0.0] + [abs(y) for trace in fig.data for y in trace.y if y is not None])
    fig.update_layout(template=TEMPLATE, height=340, xaxis_title="step", yaxis_title="clipped share of model tokens",
                      title="clip fraction per turn index"
                      + (" (no token clipped yet)" if fig.data and peak == 0 else ""),
                      yaxis_range=[0, max(0.05, 1.1 * peak)],
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1))
    return fig
