"""Figures of the information-gain signal and its normalization (ALGORITHM.md §1 and §3).

    IG_{i,k} = p_k − p_{k−1}                                    (raw, per tool turn)
    Ĩ_{i,k} = (IG_{i,k} − mean_{q,k}) / (std_{q,k} + ε)         (A²TGPO: group = (prompt q, turn k))
    Ĩ_{i,k} = (IG_{i,k} − mean_q) / (std_q + ε)                 (IGPO: every turn of q pooled)

Each builder is pure: a :class:`~a2tgpo_lab.records.StepRecord` in, a ``plotly.graph_objects.Figure``
out. Where a figure needs a normalization the record did not store (e.g. the pooled one for an A²TGPO
record), it calls the package's own functions in :mod:`a2tgpo_lab.advantages` with the record's knobs.
"""
from __future__ import annotations

import numpy as np

from .style import PROMPT_COLORS, TEMPLATE, check_record, prompt_color, turn_color

VALUES = {"ig": "raw IG = pₖ − pₖ₋₁", "ig_norm": "normalized IG Ĩ", "p": "probe p(gold) after turn t"}


def _rows_by_prompt(record) -> np.ndarray:
    """Rollout indices ordered by prompt (stable, so rollouts keep their order inside a prompt)."""
    return np.argsort(np.asarray(record.prompt_index), kind="stable")


def _turn_columns(record) -> int:
    """How many turn columns hold any IG: the deepest tool turn reached (at least 1)."""
    return max(1, int(np.max(record.num_tool_turns, initial=0)))


def _knobs(record) -> dict:
    """The record's §3 normalization knobs (defaults of A2TGPOConfig where the record has none)."""
    cfg = record.config or {}
    return dict(min_group_size=int(cfg.get("min_group_size", 2)), std_floor=float(cfg.get("group_std_floor", 0.0)),
                center_only=bool(cfg.get("ig_center_only", False)), eps=float(cfg.get("std_eps", 1e-6)))


def record_is_pooled(record) -> bool:
    """Whether the record's Ĩ was pooled over turns (IGPO, or the ``a2tgpo_pooled`` ablation)."""
    cfg = record.config or {}
    return cfg.get("advantage_estimator") == "igpo" or cfg.get("normalization") == "pooled"


def normalize_ig(record, how: str) -> np.ndarray:
    """Ĩ [B, T] of the record's raw IG under ``how`` = ``"turn_group"`` or ``"pooled"``, computed by
    :func:`a2tgpo_lab.advantages.turn_group_normalize` / :func:`~a2tgpo_lab.advantages.pooled_normalize`."""
    import torch

    from ..advantages import pooled_normalize, turn_group_normalize

    if how not in ("turn_group", "pooled"):
        raise ValueError(f"how={how!r} is not a normalization; choose 'turn_group' or 'pooled'.")
    normalize = turn_group_normalize if how == "turn_group" else pooled_normalize
    ig_norm, _, _, _ = normalize(torch.as_tensor(np.asarray(record.ig, dtype=float)),
                                 torch.as_tensor(np.asarray(record.prompt_index, dtype=np.int64)), **_knobs(record))
    return ig_norm.numpy()


def ig_per_rollout_figure(record, value: str = "ig"):
    """One line per rollout over its turns: raw IG (default), normalized IG, or the probe p.

    x = turn index k (for ``value="p"``: t = 0 .. K_i, t = 0 being the question alone), slightly
    offset per rollout so identical rollouts stay visible; colour = prompt (a legend click hides the
    prompt's rollouts); marker ● = positive outcome, ✕ = not. Each trace's ``meta`` holds its rollout.
    With more prompts than colours (a big batch) the lines are thin and translucent, with no legend
    (hover names the rollout), and the black line is the mean over all rollouts per turn.
    """
    import plotly.graph_objects as go

    check_record(record, "ig_per_rollout_figure")
    if value not in VALUES:
        raise ValueError(f"ig_per_rollout_figure: value={value!r}; choose one of {list(VALUES)}.")
    series = np.asarray(getattr(record, value), dtype=float)
    traces = []
    rank_in_prompt: dict[int, int] = {}
    group_size = max(1, int(np.bincount(np.asarray(record.prompt_index)).max()))
    crowded = len(set(np.asarray(record.prompt_index).tolist())) > len(PROMPT_COLORS)
    for i in _rows_by_prompt(record):
        q, k_i = int(record.prompt_index[i]), int(record.num_tool_turns[i])
        turns = np.arange(0, k_i + 1) if value == "p" else np.arange(1, k_i + 1)
        if turns.size == 0:
            continue
        y = series[i, turns] if value == "p" else series[i, turns - 1]
        rank = rank_in_prompt[q] = rank_in_prompt.get(q, -1) + 1
        offset = 0.25 * (rank / max(1, group_size - 1) - 0.5)
        queries = [record.tool_calls[i][k - 1] if 1 <= k <= len(record.tool_calls[i]) else "(question only)"
                   for k in turns]
        traces.append(go.Scatter(
            x=turns + offset, y=y, mode="lines+markers", name=f"prompt {q}", legendgroup=f"q{q}",
            showlegend=rank == 0 and not crowded, meta={"rollout": int(i)}, opacity=0.45 if crowded else 1.0,
            line=dict(color=prompt_color(q), width=1 if crowded else 1.5),
            marker=dict(symbol="circle" if record.outcome_reward[i] > 0 else "x", size=8),
            customdata=np.stack([np.full(turns.size, i), turns, np.array(queries, dtype=object)], axis=1),
            hovertemplate="rollout %{customdata[0]} · turn %{customdata[1]}<br>%{customdata[2]}<br>"
                          + value + " = %{y:.4g}<extra></extra>"))
    fig = go.Figure(data=traces)
    if crowded:
        columns = [(t, series[:, t] if value == "p" else series[:, t - 1])
                   for t in range(0 if value == "p" else 1, series.shape[1] + (0 if value == "p" else 1))]
        means = [(t, float(np.nanmean(c))) for t, c in columns if np.isfinite(c).any()]
        fig.add_trace(go.Scatter(x=[t for t, _ in means], y=[m for _, m in means], mode="lines+markers",
                                 name="mean over rollouts", line=dict(color="black", width=3)))
    if value != "p":
        fig.add_hline(y=0, line=dict(color="black", width=1, dash="dot"))
    fig.update_layout(template=TEMPLATE, height=380, title=f"{VALUES[value]} per rollout (step {record.step})",
                      xaxis=dict(title="turn t" if value == "p" else "tool turn k", dtick=1),
                      yaxis_title=VALUES[value])
    return fig


def _group_flags(record, order: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(too_small, constant) [len(order), width]: IG entries whose group gives Ĩ = 0 for that reason."""
    knobs = _knobs(record)
    sizes = np.asarray(record.group_size)[order, :width]
    too_small = (sizes > 0) & (sizes < max(2, knobs["min_group_size"]))
    ig, ids = np.asarray(record.ig, dtype=float), np.asarray(record.group_id)
    constant = np.zeros_like(too_small)
    for gid in np.unique(ids[ids >= 0]):
        members = ids == gid
        values = ig[members][np.isfinite(ig[members])]
        if values.size >= 2 and (np.ptp(values) == 0 or values.std() <= knobs["std_floor"]):
            constant |= members[order, :width]
    return too_small, constant & ~too_small


def group_heatmap_figure(record):
    """Raw IG next to normalized IG Ĩ, one row per rollout (rows grouped by prompt), one column per turn.

    Each cell is annotated with its group size n; groups too small to normalize (a deep turn reached
    by one rollout) are marked ✕ and constant groups (std 0 or under ``group_std_floor``) ○ — both
    give Ĩ = 0, so those turns fall back to the outcome term. Lines separate the prompts.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_record(record, "group_heatmap_figure")
    order, width = _rows_by_prompt(record), _turn_columns(record)
    prompts = np.asarray(record.prompt_index)[order]
    labels = [f"q{int(record.prompt_index[i])} · r{int(i)}" for i in order]
    turns = list(range(1, width + 1))
    sizes = np.asarray(record.group_size)[order, :width]
    too_small, constant = _group_flags(record, order, width)
    text = np.where(sizes > 0, np.char.add("n=", sizes.astype(str)), "")
    pooled = record_is_pooled(record)
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.1, subplot_titles=(
        "raw IG", "Ĩ, pooled over the prompt's turns (IGPO)" if pooled else "Ĩ, per (prompt, turn) group"))
    for col, (z, bar_x) in enumerate(((np.asarray(record.ig, dtype=float)[order, :width], 0.44),
                                      (np.asarray(record.ig_norm, dtype=float)[order, :width], 1.0)), start=1):
        fig.add_trace(go.Heatmap(z=z, x=turns, y=labels, text=text, texttemplate="%{text}", colorscale="RdBu",
                                 zmid=0, colorbar=dict(x=bar_x, len=0.9, thickness=12), xgap=1, ygap=1,
                                 hovertemplate="%{y} · turn %{x}<br>value %{z:.4g}<br>%{text}<extra></extra>"),
                      row=1, col=col)
    for flags, symbol, name in ((too_small, "x-thin-open", "group too small → Ĩ = 0"),
                                (constant, "circle-open", "constant group (std 0) → Ĩ = 0")):
        rows, cols = np.nonzero(flags)
        fig.add_trace(go.Scatter(x=np.array(turns)[cols] + 0.3, y=np.array(labels)[rows], mode="markers",
                                 name=name, marker=dict(symbol=symbol, size=10, color="black", line_width=2),
                                 hoverinfo="skip"), row=1, col=2)
    fig.update_layout(shapes=[dict(type="line", xref=f"{x} domain", yref=y, x0=0, x1=1, y0=b + 0.5, y1=b + 0.5,
                                   line=dict(color="black", width=2))
                              for b in np.nonzero(np.diff(prompts))[0] for x, y in (("x", "y"), ("x2", "y2"))])
    fig.update_yaxes(autorange="reversed", type="category")
    fig.update_xaxes(title_text="tool turn k", dtick=1)
    fig.update_layout(template=TEMPLATE, height=max(320, 20 * len(labels) + 140),
                      title=f"IG groups (step {record.step}): cells annotated with group size n",
                      legend=dict(orientation="h", y=-0.12))
    return fig


def _check_group(record, prompt: int, turn: int, view: str) -> np.ndarray:
    """Rollout indices of group (prompt, turn) with a finite IG, or a ValueError listing the groups."""
    ig = np.asarray(record.ig, dtype=float)
    prompts = np.asarray(record.prompt_index)
    if not 1 <= turn <= ig.shape[1]:
        raise ValueError(f"{view}: turn={turn!r} must be a tool turn in 1..{ig.shape[1]}.")
    members = np.nonzero((prompts == prompt) & np.isfinite(ig[:, turn - 1]))[0]
    if members.size == 0:
        present = sorted({(int(prompts[i]), k + 1) for i, k in zip(*np.nonzero(np.isfinite(ig)))})
        raise ValueError(f"{view}: no rollout of prompt {prompt} has an IG at tool turn {turn}; "
                         f"(prompt, turn) groups present: {present}.")
    return members


def group_normalization_figure(record, prompt: int, turn: int):
    """One (prompt, turn) group before and after normalization.

    Left: its raw IG values with the group mean (line) and ±1 population std (band). Right: Ĩ from
    :func:`a2tgpo_lab.advantages.turn_group_normalize` with the record's knobs (0 and ±1 marked). The
    title says whether the group was z-scored, only centred, or set to 0 (too small / constant).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_record(record, "group_normalization_figure")
    members = _check_group(record, prompt, turn, "group_normalization_figure")
    knobs = _knobs(record)
    before = np.asarray(record.ig, dtype=float)[members, turn - 1]
    after = normalize_ig(record, "turn_group")[members, turn - 1]
    mean, std = float(before.mean()), float(before.std())
    if members.size < max(2, knobs["min_group_size"]):
        verdict = f"n < {max(2, knobs['min_group_size'])}: too small → Ĩ = 0"
    elif np.ptp(before) == 0 or std <= knobs["std_floor"]:
        verdict = "constant group → Ĩ = 0 (outcome term only)"
    else:
        verdict = "centred: Ĩ = IG − mean" if knobs["center_only"] else "z-scored: Ĩ = (IG − mean) / (std + ε)"
    labels = [f"r{int(i)}" for i in members]
    fig = make_subplots(rows=1, cols=2, subplot_titles=("before: raw IG", "after: Ĩ"), horizontal_spacing=0.12)
    for col, values in ((1, before), (2, after)):
        fig.add_trace(go.Scatter(x=labels, y=values, mode="markers+text", text=[f"{v:.4g}" for v in values],
                                 textposition="middle right", marker=dict(size=12, color=turn_color(turn)),
                                 showlegend=False, hovertemplate="%{x}: %{y:.6g}<extra></extra>"), row=1, col=col)
    fig.add_hrect(y0=mean - std, y1=mean + std, fillcolor="rgba(0,0,0,0.08)", line_width=0, row=1, col=1)
    fig.add_hline(y=mean, line=dict(color="black", dash="dash"), annotation_text=f"mean {mean:.4g} ± std {std:.3g}",
                  row=1, col=1)
    fig.add_hrect(y0=-1, y1=1, fillcolor="rgba(0,0,0,0.08)", line_width=0, row=1, col=2)
    fig.add_hline(y=0, line=dict(color="black", dash="dash"), row=1, col=2)
    fig.update_xaxes(title_text="rollout", type="category")
    fig.update_layout(template=TEMPLATE, height=360,
                      title=f"prompt {prompt}, turn {turn}: n = {members.size} — {verdict}")
    return fig


def pooled_vs_turn_group_figure(record, prompt: int = 0):
    """One prompt's IG, pooled (IGPO) vs per-(prompt, turn) (A²TGPO) normalization, side by side.

    x = tool turn k (rollouts offset), colour = turn, dashed line = the mean per turn. When deeper
    turns gain more information (the 2nd hop of a 2-hop question), pooling makes Ĩ mostly a function
    of depth — negative at turn 1, positive at turn 2 — while per-turn groups compare each turn only
    with the same turn of the other rollouts.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    check_record(record, "pooled_vs_turn_group_figure")
    rows = np.nonzero(np.asarray(record.prompt_index) == prompt)[0]
    if rows.size == 0:
        raise ValueError(f"pooled_vs_turn_group_figure: prompt={prompt!r} is not in the record; choose one of "
                         f"{sorted(set(int(q) for q in record.prompt_index))}.")
    panels = (("raw IG", np.asarray(record.ig, dtype=float)), ("pooled z-score (IGPO)", normalize_ig(record, "pooled")),
              ("per (prompt, turn) z-score (A²TGPO)", normalize_ig(record, "turn_group")))
    fig = make_subplots(rows=1, cols=3, subplot_titles=[title for title, _ in panels], horizontal_spacing=0.07)
    width = _turn_columns(record)
    for col, (_, values) in enumerate(panels, start=1):
        for k in range(1, width + 1):
            y = values[rows, k - 1]
            present = np.isfinite(y)
            if not present.any():
                continue
            offsets = np.linspace(-0.2, 0.2, rows.size)[present]
            fig.add_trace(go.Scatter(
                x=k + offsets, y=y[present], mode="markers", name=f"turn {k}", legendgroup=f"turn {k}",
                showlegend=col == 1, marker=dict(size=9, color=turn_color(k)), customdata=rows[present],
                hovertemplate="rollout %{customdata} · turn " + str(k) + "<br>%{y:.4g}<extra></extra>"),
                row=1, col=col)
        means = [np.nanmean(values[rows, k - 1]) if np.isfinite(values[rows, k - 1]).any() else None
                 for k in range(1, width + 1)]
        fig.add_trace(go.Scatter(x=list(range(1, width + 1)), y=means, mode="lines", name="mean per turn",
                                 legendgroup="mean", showlegend=col == 1, line=dict(color="black", dash="dash")),
                      row=1, col=col)
    fig.update_xaxes(title_text="tool turn k", dtick=1)
    fig.update_layout(template=TEMPLATE, height=380, title=f"prompt {prompt}: pooled vs per-turn-index normalization")
    return fig
