"""Views of A²TGPO training: pure plotly figure builders, ipywidgets views and the live dashboard.

    from a2tgpo_lab.viz import Dashboard, ClipExplorer, RolloutInspector, sample_step_record, show

- figure builders (``a2tgpo_lab.viz.figures``): StepRecord or metrics history in, go.Figure out;
- ``ClipExplorer``: the clip region and clipped surrogate under β, ε, Ĩ and the sign of A;
- ``RolloutInspector`` / ``rollout_html``: one rollout token by token (turns, loss mask, advantages,
  clipped tokens, IG per turn, the probe);
- ``Dashboard``: live view of a trainer (callbacks, throttled redraws, step slider, pause / stop), or
  ``Dashboard.from_records`` offline;
- ``show``: display any figure or view statically (no widget frontend needed);
- the paper's figures of your own run: ``credit_flow_figure`` (Fig. 4), ``advantage_range_figure`` (Fig. 5),
  ``step_time_figure`` (Fig. 7), ``response_length_figure`` (Fig. 8), ``tool_calls_histogram_figure``
  (Fig. 10), ``entropy_figure`` (Fig. 3), ``beta_sweep_figure`` (Fig. 9), ``learning_curve_figure``;
  ``ig_misleads`` / ``ig_misleads_figure``: where IG points against the outcome; ``load_run(dir)``;
- ``sync_figure`` / ``figure_widget``: a ``FigureWidget`` redrawn in place from freshly built figures,
  safe for Jupyter's messages (for your own widgets);
- ``sample_step_record`` / ``sample_run``: synthetic records for trying the views without training.

Names are imported on first use, so ``import a2tgpo_lab.viz`` loads neither plotly nor ipywidgets.
"""
from __future__ import annotations

import importlib

_WHERE = {
    "Dashboard": "dashboard", "ClipExplorer": "clip_explorer", "RolloutInspector": "inspector",
    "rollout_html": "inspector", "show": "static", "figure_html": "static", "sample_step_record": "sample",
    "sample_run": "sample", "ig_per_rollout_figure": "figures", "group_heatmap_figure": "figures",
    "group_normalization_figure": "figures", "pooled_vs_turn_group_figure": "figures",
    "advantage_depth_figure": "figures", "clip_range_figure": "figures", "ratio_figure": "figures",
    "clip_fraction_figure": "figures", "clip_surrogate_figure": "figures", "training_curves_figure": "figures",
    "sync_figure": "live", "figure_widget": "live", "json_safe": "live",
    "credit_flow_figure": "figures", "tool_calls_histogram_figure": "figures", "ig_misleads": "figures",
    "ig_misleads_figure": "figures", "learning_curve_figure": "figures", "entropy_figure": "figures",
    "advantage_range_figure": "figures", "step_time_figure": "figures", "response_length_figure": "figures",
    "beta_sweep_figure": "figures", "load_run": "runs",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'a2tgpo_lab.viz' has no attribute {name!r}; available: {__all__}")
    value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
