"""Live plots: a ``FigureOutput`` for views redrawn from a background thread, and updating a
``plotly.graph_objects.FigureWidget`` in place for views driven by their own controls.

``FigureOutput`` (the dashboard's plots) holds the whole latest figure as plotly's JSON in an
``ipywidgets.Output``: every redraw replaces it, so nothing depends on earlier messages having
arrived. A FigureWidget instead sends *edits*, and the browser drops the edits that arrive before
the widget's model exists there (the first seconds after it is created, longer on a busy machine):
a plot that missed its first traces stays empty for good. Each FigureWidget also carries plotly's
~5 MB browser bundle. So FigureWidgets suit views created and displayed once, then changed by a
user (the clip explorer), and ``FigureOutput`` suits a view fed by training.

For FigureWidgets, :func:`sync_figure`:

The views build every figure with the pure builders, then copy it into a FigureWidget that was
created once. Three things make that reliable in a browser, also from a background thread:

- **Plain JSON only.** Jupyter's message serializer refuses NaN and ±inf ("Out of range float values
  are not JSON compliant") and the whole message is dropped, so a figure with one NaN never arrives.
  :func:`json_safe` turns every non-finite float into ``None`` (a gap in plotly) and every array
  into a list before anything is sent.
- **No drift between kernel and browser.** The widget talks to the browser in edits (add traces,
  restyle, relayout). When the traces line up (same number and types) their properties are
  replaced inside one ``batch_update()`` — one message, no flicker, zoom kept when the layout sets
  ``uirevision``; otherwise all traces are deleted and re-added. But the browser applies an edit
  only once the widget's JavaScript (plotly's ~5 MB bundle) has loaded: edits sent before that are
  lost, and a plot drawn later would start from the state the widget had when it was created —
  empty, for good. So every sync also sends the whole current state (``_widget_data`` /
  ``_widget_layout``, what plotly itself sends when a FigureWidget is displayed): a plot drawn at any
  time starts from the latest figure, and later edits apply on top of it.
- **The output's full width.** The widget measures its width once, when first drawn, often while it
  is still detached or in a hidden tab (then plotly falls back to 700 px). Every sync ends with an
  ``autosize`` relayout, so the plot refits the width it has now.
"""
from __future__ import annotations

import copy
import math
import numbers

_KEEP = ("type", "uid", "template")


def json_safe(value):
    """``value`` with numpy arrays and scalars made into lists and Python numbers, and every NaN / ±inf
    made ``None``: what Jupyter's JSON messages can carry (plotly draws ``None`` as a gap)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):      # numpy array or scalar
        return json_safe(value.tolist())
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value) if math.isfinite(value) else None
    return value


def _replacement(current: dict, new: dict) -> dict:
    """``new`` plus ``None`` for every top-level property only ``current`` sets (None resets it)."""
    stale = {key: None for key in current if key not in new and key not in _KEEP}
    return {**stale, **{key: value for key, value in new.items() if key not in _KEEP}}


def figure_widget(fig=None, **layout):
    """A new FigureWidget showing ``fig`` (or nothing) from its first message on (the state a widget is
    created with always reaches the browser, edits may not: see the module docstring), JSON-safe, and
    filling the output's width."""
    import plotly.graph_objects as go

    from .style import TEMPLATE

    state = json_safe(fig.to_plotly_json()) if fig is not None else {"data": [], "layout": {"template": TEMPLATE}}
    state["layout"].pop("width", None)
    state["layout"].update(autosize=True, **layout)
    widget = go.FigureWidget(state)
    # The browser reports each new view of the widget (_view_count); refit the width once it is drawn.
    widget.observe(lambda change: _refit_width(widget) if (change["new"] or 0) > (change["old"] or 0) else None,
                   names="_view_count")
    return widget


def _refit_width(widget) -> None:
    """Make plotly measure the width the plot has now (an edit is sent only on change: None, then True)."""
    widget.layout.autosize = None
    widget.layout.autosize = True


def sync_figure(widget, fig) -> None:
    """Make ``widget`` (a FigureWidget) show ``fig`` (a go.Figure), changing it in place."""
    traces = [json_safe(trace.to_plotly_json()) for trace in fig.data]
    same_traces = len(widget.data) == len(traces) and all(
        old.type == new.get("type", "scatter") for old, new in zip(widget.data, traces))
    if not same_traces:
        widget.data = []
        if traces:
            widget.add_traces(traces)
    layout = json_safe(fig.layout.to_plotly_json())
    layout.pop("width", None)                 # the output's width, never a fixed one
    layout["autosize"] = True
    with widget.batch_update():
        if same_traces:
            for old, new in zip(widget.data, traces):
                old.update(_replacement(old.to_plotly_json(), new), overwrite=True)
        widget.layout.update(_replacement(widget.layout.to_plotly_json(), layout), overwrite=True)
    _refit_width(widget)                      # see the module docstring
    # The whole state, for a plot drawn after the edits were sent (see the module docstring).
    widget._widget_data = copy.deepcopy(widget._data)
    widget._widget_layout = copy.deepcopy(widget._layout_obj._props)


class FigureOutput:
    """A plot area showing the latest figure whole: ``show(fig)`` from any thread (see the module docstring).

    ``figure`` is the go.Figure shown; ``widget`` the ipywidgets.Output to place in a layout."""

    def __init__(self):
        import ipywidgets as widgets

        self.widget = widgets.Output(layout=widgets.Layout(width="100%"))
        self.figure = None

    def show(self, fig) -> None:
        """Replace the plot by ``fig`` (its width: the output's; NaN drawn as gaps)."""
        from .static import PLOTLY_MIME

        data = json_safe(fig.to_plotly_json())
        data["layout"].pop("width", None)
        data["layout"]["autosize"] = True
        data["config"] = {"responsive": True}
        title = fig.layout.title.text or "figure"
        self.figure = fig
        # Setting the output list is one state message, safe from a background thread (no display()
        # capture, which routes by the running cell).
        self.widget.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": {PLOTLY_MIME: data, "text/plain": f"<plotly figure: {title}>"}},)
