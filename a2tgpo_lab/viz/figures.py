"""Every pure figure builder in one import: ``from a2tgpo_lab.viz.figures import *``.

Each takes a StepRecord (or a metrics history) and returns a ``plotly.graph_objects.Figure``; none
holds widget state, so the same figure works live, in a saved notebook and in a test.
"""
from .advantage_figures import advantage_depth_figure, advantages_by_rescale
from .clip_figures import (bounds_for, clip_factor_for, clip_fraction_figure, clip_range_figure, clip_surrogate_figure,
                           ratio_figure, surrogate_curve)
from .ig_figures import (group_heatmap_figure, group_normalization_figure, ig_per_rollout_figure, normalize_ig,
                         pooled_vs_turn_group_figure)
from .credit_figures import (credit_flow_figure, ig_misleads, ig_misleads_figure, recomputed_advantages,
                             tool_calls_histogram_figure)
from .run_figures import (advantage_range_figure, beta_sweep_figure, entropy_figure, learning_curve_figure,
                          response_length_figure, step_time_figure)
from .training_figures import training_curves_figure

__all__ = [
    "advantage_depth_figure", "advantages_by_rescale", "bounds_for", "clip_factor_for", "clip_fraction_figure",
    "clip_range_figure", "clip_surrogate_figure", "ratio_figure", "surrogate_curve", "group_heatmap_figure",
    "group_normalization_figure", "ig_per_rollout_figure", "normalize_ig", "pooled_vs_turn_group_figure",
    "training_curves_figure", "credit_flow_figure", "ig_misleads", "ig_misleads_figure", "recomputed_advantages",
    "tool_calls_histogram_figure", "advantage_range_figure", "beta_sweep_figure", "entropy_figure",
    "learning_curve_figure", "response_length_figure", "step_time_figure",
]
