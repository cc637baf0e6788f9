"""The paper's figures over training, drawn from your own runs (runs as in :mod:`a2tgpo_lab.viz.runs`).

- :func:`learning_curve_figure`  greedy dev exact match at every periodic evaluation (``eval/em``);
- :func:`entropy_figure`         Fig. 3: policy entropy over training (``entropy`` when the loss computed
  it, else ``entropy/sampled_nll`` = −mean log π_old of the sampled tokens, its Monte-Carlo estimate);
- :func:`advantage_range_figure` Fig. 5: min / mean / max of the per-turn advantages of each step;
- :func:`step_time_figure`       Fig. 7: one step's wall time split into its phases;
- :func:`response_length_figure` Fig. 8: model tokens per rollout, min / mean / max;
- :func:`beta_sweep_figure`      Fig. 9: final exact match against the clip strength β.

Each is pure: runs in, ``go.Figure`` out; a metric a run never logged is said so on the figure.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

from .runs import as_runs, run_config
from .style import TEMPLATE, TURN_COLORS, step_of, with_alpha

STEP_PHASES = (("time/generation", "generation"), ("time/ig_forward", "IG forward (probe)"),
               ("time/old_logprob", "old log-probs"), ("time/actor_update", "actor update"), ("time/other", "other"))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the rows that logged ``key`` with a finite value."""
    points = [(step_of(row, n), float(row[key])) for n, row in enumerate(rows) if _finite(row.get(key))]
    return [x for x, _ in points], [y for _, y in points]


def _color(n: int) -> str:
    return TURN_COLORS[n % len(TURN_COLORS)]


def _empty_note(fig, text: str):
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(color="gray"))
    return fig


def _layout(fig, title: str, y_title: str, height: int = 360, x_title: str = "step"):
    fig.update_layout(template=TEMPLATE, height=height, title=title, xaxis_title=x_title, yaxis_title=y_title,
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1),
                      margin=dict(t=90))
    return fig


def learning_curve_figure(runs: Any, metric: str = "eval/em"):
    """``metric`` (default greedy dev exact match) at every periodic evaluation, one line per run."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for n, (name, rows) in enumerate(as_runs(runs).items()):
        steps, values = _series(rows, metric)
        if steps:
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=name, meta={"metric": metric},
                                     line=dict(color=_color(n))))
    if not fig.data:
        _empty_note(fig, f"no {metric} logged yet: evaluations run every eval_steps steps")
    return _layout(fig, f"learning curve: {metric} at each periodic evaluation", metric)


def entropy_figure(runs: Any):
    """Fig. 3: the policy's entropy over training, one line per run (see the module docstring)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    used = set()
    for n, (name, rows) in enumerate(as_runs(runs).items()):
        key = "entropy" if _series(rows, "entropy")[0] else "entropy/sampled_nll"
        steps, values = _series(rows, key)
        if steps:
            used.add(key)
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=name, meta={"metric": key},
                                     line=dict(color=_color(n))))
    if not fig.data:
        _empty_note(fig, "no entropy logged (entropy or entropy/sampled_nll)")
    y_title = " / ".join(sorted(used)) or "entropy"
    return _layout(fig, "policy entropy over training (nats per model token)", y_title)


def advantage_range_figure(runs: Any):
    """Fig. 5: each step's advantage mean (line) between its min and max (band), one colour per run."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for n, (name, rows) in enumerate(as_runs(runs).items()):
        color = _color(n)
        low_steps, low = _series(rows, "advantages/min")
        high_steps, high = _series(rows, "advantages/max")
        if low_steps and low_steps == high_steps:
            fig.add_trace(go.Scatter(x=low_steps, y=low, mode="lines", line=dict(width=0), showlegend=False,
                                     hoverinfo="skip", legendgroup=name, meta={"metric": "advantages/min"}))
            fig.add_trace(go.Scatter(x=high_steps, y=high, mode="lines", line=dict(width=0), fill="tonexty",
                                     fillcolor=with_alpha(color, 0.2), name=f"{name}: min–max", legendgroup=name,
                                     meta={"metric": "advantages/max"}))
        steps, mean = _series(rows, "advantages/mean")
        if steps:
            fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines", name=f"{name}: mean", legendgroup=name,
                                     line=dict(color=color), meta={"metric": "advantages/mean"}))
    if not fig.data:
        _empty_note(fig, "no advantages/min, /max or /mean logged")
    return _layout(fig, "advantage range over training (per-turn advantages of each step)", "advantage A")


def step_time_figure(history: Any):
    """Fig. 7: each step's seconds stacked by phase (generation, IG forward, old log-probs, actor update,
    other); a run that logged only ``time/step_s`` is drawn as one bar per step, and the title says so."""
    import plotly.graph_objects as go

    runs = as_runs(history)
    if len(runs) != 1:
        raise ValueError(f"step_time_figure draws one run; got {len(runs)} ({list(runs)}): pass one of them.")
    rows = next(iter(runs.values()))
    fig = go.Figure()
    for n, (key, label) in enumerate(STEP_PHASES):
        steps, seconds = _series(rows, key)
        if steps:
            fig.add_trace(go.Bar(x=steps, y=seconds, name=label, marker_color=_color(n), meta={"metric": key}))
    title = "seconds per step, by phase"
    if not fig.data:
        steps, seconds = _series(rows, "time/step_s")
        if steps:
            fig.add_trace(go.Bar(x=steps, y=seconds, name="whole step", marker_color="gray",
                                 meta={"metric": "time/step_s"}))
            title += " (this run logged no phase split: whole steps only)"
        else:
            _empty_note(fig, "no step times logged")
    fig.update_layout(barmode="stack", bargap=0.1)
    return _layout(fig, title, "seconds")


def response_length_figure(runs: Any):
    """Fig. 8: model tokens per rollout over training: mean (line) between min and max (band), per run."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for n, (name, rows) in enumerate(as_runs(runs).items()):
        color = _color(n)
        low_steps, low = _series(rows, "completions/min_length")
        high_steps, high = _series(rows, "completions/max_length")
        if low_steps and low_steps == high_steps:
            fig.add_trace(go.Scatter(x=low_steps, y=low, mode="lines", line=dict(color=color, width=1, dash="dot"),
                                     name=f"{name}: min", legendgroup=name, meta={"metric": "completions/min_length"}))
            fig.add_trace(go.Scatter(x=high_steps, y=high, mode="lines", line=dict(color=color, width=1, dash="dot"),
                                     fill="tonexty", fillcolor=with_alpha(color, 0.15), name=f"{name}: max",
                                     legendgroup=name, meta={"metric": "completions/max_length"}))
        steps, mean = _series(rows, "completions/mean_length")
        if steps:
            fig.add_trace(go.Scatter(x=steps, y=mean, mode="lines", line=dict(color=color, width=2),
                                     name=f"{name}: mean", legendgroup=name,
                                     meta={"metric": "completions/mean_length"}))
    if not fig.data:
        _empty_note(fig, "no completions/*_length logged")
    return _layout(fig, "response length: model tokens per rollout (min, mean, max)", "tokens")


def _final(rows: list[dict], metric: str) -> Optional[float]:
    values = _series(rows, metric)[1]
    return values[-1] if values else None


def beta_sweep_figure(runs: Any, metric: str = "eval/em", betas: Optional[Sequence[float]] = None):
    """Fig. 9: each run's final ``metric`` (its last evaluation) against its clip strength β.

    ``runs``: run directories (β read from each ``config.json``'s ``clip_beta``), or a dict ``β -> run``
    (or ``β -> [runs]``, e.g. several seeds), or any runs with ``betas`` giving their β in order. Seeds
    of one β are drawn as points, their mean as the line.
    """
    import plotly.graph_objects as go

    pairs: list[tuple[float, str, Any]] = []
    if isinstance(runs, dict) and betas is None:
        for beta, group in runs.items():
            group = group if isinstance(group, (list, tuple)) and group and not isinstance(group[0], dict) \
                and not hasattr(group[0], "metrics") else [group]
            pairs += [(float(beta), f"β={beta} #{n}", run) for n, run in enumerate(group)]
    else:
        items = list(runs.items()) if isinstance(runs, dict) else [(Path(r).name if isinstance(r, (str, Path)) else
                                                                    f"run {n}", r) for n, r in enumerate(runs)]
        if betas is not None and len(betas) != len(items):
            raise ValueError(f"beta_sweep_figure: {len(betas)} betas for {len(items)} runs; give one β per run.")
        for n, (name, run) in enumerate(items):
            if betas is not None:
                beta = betas[n]
            elif isinstance(run, (str, Path)):
                beta = run_config(run).get("clip_beta")
            else:
                beta = None
            if beta is None:
                raise ValueError(f"beta_sweep_figure: run {name!r} has no clip_beta (no config.json); pass a dict "
                                 "β -> run or betas=[...].")
            pairs.append((float(beta), str(name), run))
    finals: dict[float, list[tuple[str, float]]] = {}
    for beta, name, run in pairs:
        value = _final(next(iter(as_runs({name: run}).values())), metric)
        if value is not None:
            finals.setdefault(beta, []).append((name, value))
    fig = go.Figure()
    if finals:
        points = [(beta, name, value) for beta, group in sorted(finals.items()) for name, value in group]
        fig.add_trace(go.Scatter(x=[p[0] for p in points], y=[p[2] for p in points], mode="markers", name="run",
                                 text=[p[1] for p in points], marker=dict(size=9, color="#1f77b4", opacity=0.6),
                                 hovertemplate="%{text}: β=%{x}, " + metric + " %{y:.3f}<extra></extra>"))
        means = [(beta, sum(v for _, v in group) / len(group)) for beta, group in sorted(finals.items())]
        fig.add_trace(go.Scatter(x=[b for b, _ in means], y=[m for _, m in means], mode="lines+markers",
                                 name="mean over runs", line=dict(color="black"), meta={"metric": metric}))
    else:
        _empty_note(fig, f"no run logged {metric}")
    return _layout(fig, f"clip strength β sweep: final {metric}", f"final {metric}", x_title="clip strength β")
