"""Shared look and small input helpers of the views: one colour per turn, one per prompt, clip colours.

Colours are fixed here so the same turn has the same colour in every figure, the inspector and the
dashboard.
"""
from __future__ import annotations

import numbers
from typing import Any, Iterable

TURN_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
PROMPT_COLORS = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#ff9da6", "#9d755d",
                 "#bab0ac", "#eeca3b")
CONTEXT_COLOR = "#9e9e9e"          # prompt / observation tokens (not trained)
CLIP_LOW_COLOR = "#2166ac"         # ratio fell below 1 − c·ε_low with A < 0
CLIP_HIGH_COLOR = "#b2182b"        # ratio rose above 1 + c·ε_high with A > 0
BAND_COLOR = "rgba(44, 160, 44, 0.15)"
DEAD_GRADIENT_COLOR = "rgba(214, 39, 40, 0.12)"
TEMPLATE = "plotly_white"


def turn_color(turn: int) -> str:
    """The colour of assistant turn ``turn`` (1-based); turn 0 (context) is grey."""
    return CONTEXT_COLOR if turn <= 0 else TURN_COLORS[(turn - 1) % len(TURN_COLORS)]


def prompt_color(prompt: int) -> str:
    return PROMPT_COLORS[int(prompt) % len(PROMPT_COLORS)]


def with_alpha(hex_color: str, alpha: float) -> str:
    """``#rrggbb`` → ``rgba(r, g, b, alpha)``."""
    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r}, {g}, {b}, {alpha})"


def check_record(record: Any, view: str) -> None:
    """Fail early, naming the view, when ``record`` is not a StepRecord-like object."""
    needed = ("ig", "ig_norm", "advantages", "clip_low", "clip_high", "prompt_index", "num_tool_turns", "tokens")
    missing = [name for name in needed if not hasattr(record, name)]
    if missing:
        raise TypeError(f"{view} needs a StepRecord (a2tgpo_lab.records.StepRecord, e.g. trainer.records[-1] or "
                        f"a2tgpo_lab.viz.sample_step_record()); got {type(record).__name__} without {missing}.")


def check_rollout(record: Any, rollout: int, view: str) -> int:
    """``rollout`` as an int in range, or a ValueError naming the valid range."""
    batch = len(record.questions)
    if not isinstance(rollout, numbers.Integral) or isinstance(rollout, bool) or not 0 <= rollout < batch:
        raise ValueError(f"{view}: rollout={rollout!r} is not a rollout of this record; choose 0..{batch - 1}.")
    return int(rollout)


def as_history(items: Iterable[Any]) -> list[dict]:
    """Metric rows from a metrics history (list of dicts, e.g. ``trainer.history``) or a list of StepRecords."""
    rows = []
    for position, item in enumerate(items):
        if isinstance(item, dict):
            rows.append(item)
        elif isinstance(getattr(item, "metrics", None), dict):
            rows.append(item.metrics)
        else:
            raise TypeError(f"history[{position}] is a {type(item).__name__}; pass metric dicts (trainer.history) "
                            "or StepRecords (trainer.records).")
    return rows


def step_of(row: dict, position: int) -> float:
    """The x value of a metrics row: its ``step`` if logged, else its position."""
    step = row.get("step")
    return float(step) if step is not None else float(position)
