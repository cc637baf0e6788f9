"""Updating a ``plotly.graph_objects.FigureWidget`` in place from a freshly built (pure) figure.

The views build every figure with the pure builders, then copy it into a FigureWidget that was
created once: when the traces line up (same number and types) their properties are replaced inside
one ``batch_update()`` — a single message to the browser, no flicker, zoom kept when the layout sets
``uirevision`` — otherwise the traces are swapped. The layout template is set once, at creation,
because it is large and never changes.
"""
from __future__ import annotations

_KEEP = ("type", "uid", "template")


def _replacement(current: dict, new: dict) -> dict:
    """``new`` plus ``None`` for every top-level property only ``current`` sets (None resets it)."""
    stale = {key: None for key in current if key not in new and key not in _KEEP}
    return {**stale, **{key: value for key, value in new.items() if key not in _KEEP}}


def sync_figure(widget, fig) -> None:
    """Make ``widget`` (a FigureWidget) show ``fig`` (a go.Figure), changing it in place."""
    same_traces = len(widget.data) == len(fig.data) and all(
        old.type == new.type for old, new in zip(widget.data, fig.data))
    if not same_traces:
        widget.data = []
        widget.add_traces(list(fig.data))
    with widget.batch_update():
        if same_traces:
            for old, new in zip(widget.data, fig.data):
                old.update(_replacement(old.to_plotly_json(), new.to_plotly_json()), overwrite=True)
        layout = fig.layout.to_plotly_json()
        widget.layout.update(_replacement(widget.layout.to_plotly_json(), layout), overwrite=True)
