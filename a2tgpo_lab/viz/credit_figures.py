"""Per-turn credit of one step, as the paper draws it, and where the IG signal misleads.

- :func:`credit_flow_figure` (Fig. 4): raw IG → normalized IG → advantage per turn, IGPO next to
  A²TGPO on the same batch. Both sides are recomputed from the record's raw IG with the package's
  own estimators (:func:`a2tgpo_lab.advantages.compute_advantages`), so the comparison holds for a
  record of any IG estimator::

      IGPO:    r̂ = z-score of (IG_1..K, outcome) per prompt;   A_t = Σ_{k≥t} γ^{k−t} r̂_k
      A²TGPO:  Ĩ = z-score per (prompt, turn k);  A_t = α Σ_{k≥t} γ^{k−t} Ĩ_k / √(K+1−t+1) + õ

  Markers are the per-turn means, bars the per-turn spread (±1 std over rollouts), and the last
  panel writes ΔĀ_t = Ā_t(A²TGPO) − Ā_t(IGPO) above each turn.
- :func:`tool_calls_histogram_figure` (Fig. 10): how many tool calls the rollouts made.
- :func:`ig_misleads` / :func:`ig_misleads_figure`: tool turns whose IG disagrees with the outcome —
  a correct rollout's search with IG < 0 (its band narrows, its advantage drops), or a wrong
  rollout's search with IG > 0. IG measures how much *more likely the gold answer became*, which is
  not the same as *the search was needed*: a first search often raises p(gold) by teaching the
  answer's type, and a necessary second hop can lower it.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .style import TEMPLATE, check_record, turn_color

# The §3-§4 knobs a record's config passes on to the recomputed estimators.
_SHARED_KNOBS = ("gamma", "std_eps", "var_eps", "min_group_size", "group_std_floor", "ig_center_only")
METHODS = (("igpo", "IGPO", "#ff7f0e"), ("a2tgpo", "A²TGPO", "#1f77b4"))


def recomputed_advantages(record, preset_name: str):
    """``AdvantageResult`` of the record's raw IG and outcomes under the preset ``preset_name``, with the
    record's normalization knobs (γ, ε, group sizes)."""
    import torch

    from ..advantages import compute_advantages
    from ..config import preset

    check_record(record, "recomputed_advantages")
    ig = np.asarray(record.ig, dtype=float)
    if not np.isfinite(ig).any():
        raise ValueError(f"step {record.step} ({record.estimator}) has no IG (a GRPO record, or no rollout searched): "
                         "IG-based advantages cannot be recomputed from it.")
    knobs = {key: value for key, value in (record.config or {}).items() if key in _SHARED_KNOBS}
    cfg = preset(preset_name, **knobs)
    return compute_advantages(cfg, torch.as_tensor(ig), torch.as_tensor(np.asarray(record.outcome_reward, dtype=float)),
                              torch.as_tensor(np.asarray(record.prompt_index, dtype=np.int64)),
                              torch.as_tensor(np.asarray(record.num_tool_turns, dtype=np.int64)))


def _per_turn(values: np.ndarray, width: int) -> tuple[list, list, list]:
    """(turns, mean, std) over the rollouts of each turn column that has any finite value."""
    turns, means, stds = [], [], []
    for j in range(min(width, values.shape[1])):
        column = values[:, j][np.isfinite(values[:, j])]
        if column.size:
            turns.append(j + 1)
            means.append(float(column.mean()))
            stds.append(float(column.std()))
    return turns, means, stds


def credit_flow_figure(record):
    """Fig. 4 of the paper on this step (see the module docstring)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_record(record, "credit_flow_figure")
    results = {name: recomputed_advantages(record, name) for name, _, _ in METHODS}
    ig = np.asarray(record.ig, dtype=float)
    width = int(np.max(record.num_tool_turns, initial=0)) + 1          # tool turns + the answer turn
    fig = make_subplots(rows=1, cols=3, horizontal_spacing=0.08, subplot_titles=(
        "1. raw IG = pₖ − pₖ₋₁", "2. normalized IG", "3. advantage Aₜ"))
    turns, mean, std = _per_turn(ig, width)
    fig.add_trace(go.Scatter(x=turns, y=mean, error_y=dict(type="data", array=std), mode="markers+lines",
                             name="raw IG (shared)", line=dict(color="gray"), meta={"panel": "ig"}), row=1, col=1)
    means_by_method = {}
    for n, (name, label, color) in enumerate(METHODS):
        offset = (n - 0.5) * 0.16
        for col, values in ((2, results[name].ig_norm.numpy()), (3, results[name].advantages.numpy())):
            turns, mean, std = _per_turn(values, width)
            fig.add_trace(go.Scatter(
                x=[t + offset for t in turns], y=mean, error_y=dict(type="data", array=std), mode="markers",
                marker=dict(size=10, color=color), name=label, legendgroup=label, showlegend=col == 2,
                meta={"panel": "ig_norm" if col == 2 else "advantage", "method": name},
                customdata=turns, hovertemplate=label + " · turn %{customdata}: mean %{y:.3f}<extra></extra>"),
                row=1, col=col)
            if col == 3:
                means_by_method[name] = dict(zip(turns, mean))
    for turn in sorted(set(means_by_method["igpo"]) & set(means_by_method["a2tgpo"])):
        delta = means_by_method["a2tgpo"][turn] - means_by_method["igpo"][turn]
        fig.add_annotation(x=turn, y=0.99, xref="x3", yref="y3 domain", text=f"ΔĀₜ={delta:+.2f}", showarrow=False,
                           font=dict(size=11), yanchor="top", bgcolor="rgba(255,255,255,0.8)")
    for col in (1, 2, 3):
        fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"), row=1, col=col)
    fig.update_xaxes(title_text="turn k", dtick=1)
    fig.update_layout(template=TEMPLATE, height=430, margin=dict(t=80, b=90),
                      title=f"credit per turn, IGPO vs A²TGPO on the same batch (step {record.step}; markers: mean "
                            "over rollouts, bars: ±1 std; ΔĀₜ = A²TGPO − IGPO)",
                      legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="center", x=0.5))
    return fig


def _tool_calls(records: Any) -> dict[str, np.ndarray]:
    """``{name: tool calls per rollout}`` from one record, a list of records, or a dict name -> record(s)."""
    if isinstance(records, dict):
        groups = records
    else:
        groups = {"rollouts": records}
    out = {}
    for name, group in groups.items():
        group = group if isinstance(group, (list, tuple)) else [group]
        for record in group:
            check_record(record, "tool_calls_histogram_figure")
        out[str(name)] = np.concatenate([np.asarray(r.num_tool_turns, dtype=int) for r in group]) if group \
            else np.zeros(0, dtype=int)
    return out


def tool_calls_histogram_figure(records: Any):
    """Fig. 10: the share of rollouts by number of tool calls, for one record, a list of records
    (pooled), or a dict ``name -> record(s)`` (one bar colour per name, e.g. first vs last steps)."""
    import plotly.graph_objects as go

    calls = _tool_calls(records)
    top = max([int(c.max()) for c in calls.values() if c.size] + [0])
    fig = go.Figure()
    for n, (name, counts) in enumerate(calls.items()):
        share = np.bincount(counts, minlength=top + 1) / max(1, counts.size)
        fig.add_trace(go.Bar(x=list(range(top + 1)), y=share, name=f"{name} (n={counts.size})",
                             marker_color=turn_color(n + 1), meta={"group": name},
                             hovertemplate="%{x} tool calls: %{y:.1%}<extra></extra>"))
    fig.update_layout(template=TEMPLATE, height=340, barmode="group", title="tool calls per rollout",
                      xaxis=dict(title="tool calls in the rollout", dtick=1), yaxis=dict(title="share of rollouts",
                                                                                     tickformat=".0%"),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1))
    return fig


def ig_misleads(record) -> list[dict]:
    """Tool turns whose IG points against the outcome, most extreme first (largest |Ĩ|).

    Each item: ``rollout``, ``prompt``, ``turn``, ``kind`` ("correct rollout, IG < 0" or "wrong rollout,
    IG > 0"), ``query``, ``ig``, ``ig_norm``, ``clip_factor`` (< 1: a narrower band), ``advantage``,
    ``reward``, ``answer`` and ``gold``."""
    check_record(record, "ig_misleads")
    found = []
    for i in range(len(record.questions)):
        reward = float(record.outcome_reward[i])
        for j in range(int(record.num_tool_turns[i])):
            value = float(record.ig[i, j])
            if not math.isfinite(value) or value == 0 or (reward > 0) == (value > 0):
                continue
            found.append(dict(
                rollout=i, prompt=int(record.prompt_index[i]), turn=j + 1,
                kind="correct rollout, IG < 0" if reward > 0 else "wrong rollout, IG > 0",
                query=record.tool_calls[i][j] if j < len(record.tool_calls[i]) else None, ig=value,
                ig_norm=float(record.ig_norm[i, j]), clip_factor=float(record.clip_factor[i, j]),
                advantage=float(record.advantages[i, j]), reward=reward, answer=record.final_answer[i],
                gold=list(record.answers[i])))
    return sorted(found, key=lambda item: -abs(item["ig_norm"]) if math.isfinite(item["ig_norm"]) else 0.0)


def ig_misleads_figure(record):
    """Every tool turn of the step as (raw IG, clip factor c), ● correct rollouts and ✕ wrong ones; the
    turns :func:`ig_misleads` lists are ringed red and labelled "r<rollout>·t<turn>"."""
    import plotly.graph_objects as go

    check_record(record, "ig_misleads_figure")
    fig = go.Figure()
    ig, factor = np.asarray(record.ig, dtype=float), np.asarray(record.clip_factor, dtype=float)
    for correct, symbol, name in ((True, "circle", "correct rollout"), (False, "x", "wrong rollout")):
        rows, cols = np.nonzero(np.isfinite(ig) & ((np.asarray(record.outcome_reward) > 0) == correct)[:, None])
        fig.add_trace(go.Scatter(
            x=ig[rows, cols], y=factor[rows, cols], mode="markers", name=name, meta={"correct": correct},
            marker=dict(symbol=symbol, size=9, color=[turn_color(c + 1) for c in cols]),
            customdata=np.stack([rows, cols + 1], axis=1) if rows.size else None,
            hovertemplate="rollout %{customdata[0]} · turn %{customdata[1]}<br>IG %{x:.4f} · c %{y:.3f}"
                          "<extra></extra>"))
    misleading = ig_misleads(record)
    fig.add_trace(go.Scatter(
        x=[m["ig"] for m in misleading], y=[m["clip_factor"] for m in misleading], mode="markers+text",
        name="IG points against the outcome", meta={"misleading": len(misleading)},
        text=[f"r{m['rollout']}·t{m['turn']}" for m in misleading], textposition="top center",
        marker=dict(size=16, color="rgba(0,0,0,0)", line=dict(color="#d62728", width=2))))
    fig.add_vline(x=0, line=dict(color="black", width=1, dash="dot"))
    fig.add_hline(y=1, line=dict(color="gray", width=1, dash="dot"))
    fig.update_layout(template=TEMPLATE, height=380, xaxis_title="raw IG of the tool turn",
                      yaxis_title="clip factor c (band width × c)",
                      title=f"where IG misleads (step {record.step}): {len(misleading)} tool turns point against "
                            "the outcome; colour = turn",
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1), margin=dict(t=90))
    return fig
