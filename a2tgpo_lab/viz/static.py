"""Static rendering: every view also works where no widget frontend runs (saved notebooks, nbconvert,
CI, a plain Python script).

- :func:`show` displays a figure (or a view) as a static output: plotly's JSON (drawn by JupyterLab's
  plotly extension) with an HTML fallback for other frontends; outside IPython it writes an HTML file.
- :class:`StaticFallback` is mixed into the widget views: displaying one sends the live widget *and*
  a static HTML copy in the same output. Frontends without a live kernel that fall back to HTML
  (nbconvert, VS Code, notebook viewers) then show the figures. JupyterLab itself always picks the
  widget and, once the kernel is gone, says "model not found": for an output that survives there,
  display ``show(view)`` (or ``show(fig)``) instead of the live view.
"""
from __future__ import annotations

import html
import tempfile
from pathlib import Path
from typing import Any, Optional

PLOTLY_MIME = "application/vnd.plotly.v1+json"


def _in_ipython() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    return get_ipython() is not None


def _as_figure(fig):
    """A plain go.Figure from a go.Figure or FigureWidget (widgets carry widget state we do not want)."""
    import plotly.graph_objects as go

    if not isinstance(fig, go.Figure | go.FigureWidget):
        raise TypeError(f"expected a plotly Figure or FigureWidget; got {type(fig).__name__}.")
    return go.Figure(fig) if isinstance(fig, go.FigureWidget) else fig


def figure_html(fig, include_plotlyjs: Any = "cdn") -> str:
    """An HTML fragment (a div + script) drawing ``fig``; plotly.js from the CDN unless told otherwise
    (``True`` inlines it, ~4 MB; ``False`` assumes the page already has it)."""
    return _as_figure(fig).to_html(full_html=False, include_plotlyjs=include_plotlyjs)


def figures_html(figures: dict, title: str = "") -> str:
    """Several figures as one HTML fragment, each under its name; plotly.js loaded once."""
    parts = [f"<h3>{html.escape(title)}</h3>"] if title else []
    for n, (name, fig) in enumerate(figures.items()):
        parts.append(f"<h4>{html.escape(name)}</h4>")
        parts.append(figure_html(fig, include_plotlyjs="cdn" if n == 0 else False))
    return "\n".join(parts)


def _parts(view) -> list:
    """What ``view`` shows, in order: HTML strings and plain figures."""
    if hasattr(view, "to_plotly_json"):
        return [_as_figure(view)]
    if hasattr(view, "figures") and hasattr(view, "extra_html"):
        extra = view.extra_html()
        return ([extra] if extra else []) + list(view.figures().values())
    raise TypeError(f"show() takes a plotly Figure / FigureWidget or a view (Dashboard, ClipExplorer, "
                    f"RolloutInspector); got {type(view).__name__}.")


def show(view, path: Optional[str | Path] = None) -> Optional[Path]:
    """Display ``view`` — a plotly figure, or a view — as static output, without needing widgets.

    In IPython/Jupyter each figure goes out as plotly's JSON (drawn offline by JupyterLab's plotly
    extension, kept when the notebook is saved) with an HTML fallback for other frontends; a view's
    other HTML (e.g. the inspector's tokens) as HTML. Elsewhere, or when ``path`` is given, one
    standalone HTML file is written and its path returned.
    """
    parts = _parts(view)
    if path is None and _in_ipython():
        from IPython.display import HTML, display

        from .live import json_safe   # Jupyter's messages refuse NaN: a figure with one would not arrive

        for part in parts:
            if isinstance(part, str):
                display(HTML(part))
            else:
                display({PLOTLY_MIME: json_safe(part.to_plotly_json()), "text/html": figure_html(part)}, raw=True)
        return None
    body = "\n".join(part if isinstance(part, str) else figure_html(part, "cdn" if n == 0 else False)
                     for n, part in enumerate(parts))
    target = Path(path) if path is not None else Path(tempfile.mkstemp(prefix="a2tgpo_view_", suffix=".html")[1])
    target.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{body}</body></html>")
    return target


class StaticFallback:
    """Mixin of the widget views. A view defines ``widget`` (its ipywidgets root) and ``figures()``
    (its current figures, by name); this gives it ``to_html()`` and a display that carries the live
    widget plus the static HTML copy."""

    title = ""

    def figures(self) -> dict:
        raise NotImplementedError

    def extra_html(self) -> str:
        """HTML placed before the figures (e.g. the inspector's token view)."""
        return ""

    def to_html(self) -> str:
        return self.extra_html() + figures_html(self.figures(), self.title)

    def _repr_html_(self) -> str:
        return self.to_html()

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        bundle = self.widget._repr_mimebundle_(include=include, exclude=exclude) or {}
        return {**bundle, "text/html": self.to_html()}
