"""The live training dashboard: attach it to a trainer, train in the background, watch each step.

    dash = Dashboard(trainer)          # registers itself with trainer.add_callback(dash)
    dash                               # show it (last expression of a cell)
    trainer.train_in_background()      # the kernel stays free: the buttons and the slider work

Works with any trainer-like object that has ``add_callback(cb)``; it uses ``pause()``, ``resume()``,
``stop()`` (for the buttons), ``history`` (the metrics rows of the training curves) and ``records``
(kept StepRecords, imported when attaching mid-run) when present. Callbacks it answers:
``on_train_begin``, ``on_step_end(trainer, record)``, ``on_evaluate``, ``on_pause``, ``on_resume``,
``on_train_end``. The status line says what the trainer is really doing: "pausing after the current
step …" after a click, "paused after step N" once it waits, "finished step N / N" or "stopped after
step N" at the end.

In a notebook, ``train_in_background()`` must be the last thing the kernel runs while training: a
button click reaches the kernel only when no cell is running (a cell that waits for training, e.g.
``thread.join()``, holds the click until training ends). What needs the whole run goes into
:meth:`Dashboard.when_finished`. Or train in the foreground with ``trainer.train()``: the dashboard
still draws live (from its own thread), and Kernel → Interrupt saves and stops.

How it keeps out of training's way: ``on_step_end`` runs on the training thread and only appends
the record to a list (under a lock held for that append) and marks the view dirty. A separate
refresher thread redraws at most once every ``update_interval`` seconds, building each figure with
the pure builders and showing it whole in a :class:`~a2tgpo_lab.viz.live.FigureOutput` (one message
each; nothing depends on an earlier message having arrived). Only the selected tab is drawn; the
others are drawn when opened. A redraw is Python work that competes
with training for the interpreter, so the refresher also waits ``last redraw time / max_busy``
between redraws (at most ``MAX_GAP_S``): it takes about ``max_busy`` of the time at most
(``benchmarks/bench_dashboard_overhead.py`` measures it). ``Dashboard.from_records(records)`` shows
saved records offline, with no trainer and no thread.
"""
from __future__ import annotations

import html
import math
import threading
import time
from typing import Any, Callable, Optional, Sequence

from .advantage_figures import advantage_depth_figure
from .clip_figures import clip_fraction_figure, clip_range_figure, ratio_figure
from .credit_figures import credit_flow_figure, ig_misleads_figure, tool_calls_histogram_figure
from .ig_figures import group_heatmap_figure, ig_per_rollout_figure
from .inspector import RolloutInspector, rollout_html
from .live import FigureOutput, json_safe
from .run_figures import (advantage_range_figure, entropy_figure, learning_curve_figure, response_length_figure,
                          step_time_figure)
from .static import PLOTLY_MIME, StaticFallback, figure_html
from .style import TEMPLATE
from .training_figures import training_curves_figure

# Tabs of the selected step's views: name → pure builder (record → figure).
RECORD_VIEWS: dict[str, Callable] = {
    "IG per rollout": ig_per_rollout_figure,
    "IG groups": group_heatmap_figure,
    "credit flow (Fig. 4)": credit_flow_figure,
    "where IG misleads": ig_misleads_figure,
    "advantage vs depth": advantage_depth_figure,
    "clip bands": clip_range_figure,
    "ratios": ratio_figure,
    "tool calls (Fig. 10)": tool_calls_histogram_figure,
}
ROLLOUTS_TAB = "rollouts"
MAX_GAP_S = 5.0        # the adaptive throttle never waits longer than this between redraws
# Tabs over the whole run: name → pure builder (metrics history → figure).
HISTORY_VIEWS: dict[str, Callable] = {
    "training curves": training_curves_figure,
    "learning curve": learning_curve_figure,
    "clip fraction per turn": clip_fraction_figure,
    "entropy (Fig. 3)": entropy_figure,
    "advantage range (Fig. 5)": advantage_range_figure,
    "step time (Fig. 7)": step_time_figure,
    "response length (Fig. 8)": response_length_figure,
}


def _drawn_or_reason(build: Callable, source: Any):
    """``build(source)``, or a figure saying why this view cannot be drawn from it (e.g. the IG views of a
    GRPO record), so one view's limits never blank the dashboard."""
    import plotly.graph_objects as go

    try:
        return build(source)
    except ValueError as reason:
        fig = go.Figure()
        fig.add_annotation(text=html.escape(str(reason)), showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                           font=dict(color="gray"))
        fig.update_layout(template=TEMPLATE, height=200, xaxis_visible=False, yaxis_visible=False)
        return fig


class Dashboard(StaticFallback):
    """Live view of a training run (see the module docstring).

    Args:
        trainer: a trainer-like object to attach to now (or later with :meth:`attach`).
        update_interval: seconds between redraws at most (the throttle).
        max_busy: the largest share of time redraws may take (stretches the interval when drawing is slow).
        max_records: how many recent StepRecords the step slider can go back over.
        background: run the refresher thread while training (off for offline use and tests, which
            call :meth:`maybe_refresh` / :meth:`refresh` themselves).
        clock: the time source of the throttle (``time.monotonic``; tests pass a fake clock).
    """

    title = "A²TGPO training dashboard"

    def __init__(self, trainer: Any = None, update_interval: float = 0.5, max_records: int = 100,
                 background: bool = True, clock: Callable[[], float] = time.monotonic, max_busy: float = 0.1):
        import ipywidgets as widgets

        if update_interval < 0 or max_records < 1 or not 0 < max_busy <= 1:
            raise ValueError(f"Dashboard: update_interval={update_interval!r} must be >= 0, max_records="
                             f"{max_records!r} >= 1 and max_busy={max_busy!r} in (0, 1].")
        self.trainer: Any = None
        self.update_interval = update_interval
        self.max_busy = max_busy
        self._last_draw_seconds = 0.0
        self.max_records = max_records
        self.background = background
        self._clock = clock
        self.records: list = []
        self._records_lock = threading.Lock()      # held only for an append / a snapshot
        self._draw_lock = threading.RLock()        # one redraw at a time (refresher thread vs kernel)
        self._dirty = False
        self._last_draw = -math.inf
        self.draw_count = 0
        self._state = "waiting for training to start"
        self._error = ""
        self._selected_step: Optional[int] = None
        self._drawn: Optional[tuple[str, int]] = None   # (record tab, id() of the record) the record area shows
        self._refresher: Optional[threading.Thread] = None
        self._stop_refresher = threading.Event()
        self._moving_slider = False
        self._when_finished: list[Callable] = []

        full = widgets.Layout(width="100%")
        self.status = widgets.HTML(layout=full)
        self.status.add_class("a2tgpo-status")
        self.pause_button = widgets.Button(description="pause", icon="pause", disabled=True)
        self.resume_button = widgets.Button(description="resume", icon="play", disabled=True)
        self.stop_button = widgets.Button(description="stop", icon="stop", button_style="danger", disabled=True)
        self.step_slider = widgets.IntSlider(value=0, min=0, max=0, description="step record", readout=False,
                                             continuous_update=False, layout=widgets.Layout(width="420px"))
        self.step_label = widgets.Label("no step yet")
        self.follow = widgets.Checkbox(value=True, description="follow latest", indent=False)
        # One plot per area, the tabs choose what it draws (see viz.live.FigureOutput: whole figures, so a
        # redraw from the refresher thread never depends on an earlier message having reached the browser).
        self.history_plot = FigureOutput()
        self.record_plot = FigureOutput()
        self.inspector = RolloutInspector()
        self.inspector.widget.layout.display = "none"
        self.history_tabs = widgets.Tab(children=[widgets.Box() for _ in HISTORY_VIEWS], titles=list(HISTORY_VIEWS),
                                        layout=full)
        self.record_tabs = widgets.Tab(children=[widgets.Box() for _ in [*RECORD_VIEWS, ROLLOUTS_TAB]],
                                       titles=[*RECORD_VIEWS, ROLLOUTS_TAB], layout=full)
        self.results = widgets.Output(layout=full)  # what when_finished callbacks show
        self.controls = widgets.HBox([self.pause_button, self.resume_button, self.stop_button],
                                     layout=widgets.Layout(display="none"))   # shown once a trainer is attached
        self.widget = widgets.VBox([
            self.controls, self.status, self.history_tabs, self.history_plot.widget,
            widgets.HBox([self.step_slider, self.step_label, self.follow]), self.record_tabs, self.record_plot.widget,
            self.inspector.widget, self.results], layout=full)
        self.pause_button.on_click(lambda _: self._control("pause", "pausing after the current step …"))
        self.resume_button.on_click(lambda _: self._control("resume", "running"))
        self.stop_button.on_click(lambda _: self._control("stop", "stopping after the current step …"))
        self.step_slider.observe(self._on_slider, names="value")
        self.follow.observe(self._on_follow, names="value")
        self.record_tabs.observe(lambda _: self._draw_selected(), names="selected_index")
        self.history_tabs.observe(lambda _: self._draw_history(), names="selected_index")
        self._update_status()
        if trainer is not None:
            self.attach(trainer)

    @classmethod
    def from_records(cls, records: Sequence, **kwargs) -> "Dashboard":
        """An offline dashboard over saved StepRecords (e.g. ``trainer.records`` or ``sample_run()``)."""
        records = list(records)
        if not records:
            raise ValueError("Dashboard.from_records needs at least one StepRecord (e.g. trainer.records, or "
                             "a2tgpo_lab.viz.sample_run() for synthetic ones).")
        dashboard = cls(background=False, **kwargs)
        dashboard.records = records[-dashboard.max_records:]
        dashboard._state = f"offline: {len(records)} records"
        dashboard.refresh()
        return dashboard

    # ------------------------------------------------------------------ trainer side (any thread)
    def attach(self, trainer: Any) -> None:
        """Register with ``trainer.add_callback`` and take over its kept records, if any."""
        if not callable(getattr(trainer, "add_callback", None)):
            raise TypeError(f"Dashboard.attach: {type(trainer).__name__} has no add_callback(callback) method; "
                            "pass an A2TGPOTrainer or an object with the same callback API.")
        trainer.add_callback(self)
        self.trainer = trainer
        self.controls.layout.display = "flex"
        self._enable_buttons(True)
        kept = list(getattr(trainer, "records", None) or [])
        if kept:
            with self._records_lock:
                self.records = kept[-self.max_records:]
            self.refresh()

    def when_finished(self, show: Callable[[Any], Any]) -> None:
        """When training ends, call ``show(trainer)`` and display what it returns (a figure, HTML text, or a
        list of them) below the dashboard. For a notebook run with Run All: the cell that starts
        ``train_in_background()`` returns at once, so results that need the whole run go here instead of
        in later cells (a later cell that waits for training would hold the kernel, and the buttons with it)."""
        self._when_finished.append(show)

    def _enable_buttons(self, enabled: bool) -> None:
        for button, method in ((self.pause_button, "pause"), (self.resume_button, "resume"),
                               (self.stop_button, "stop")):
            button.disabled = not (enabled and callable(getattr(self.trainer, method, None)))

    def on_train_begin(self, trainer: Any) -> None:
        self._state = "running"
        self._dirty = True
        self._enable_buttons(True)
        if self.background and (self._refresher is None or not self._refresher.is_alive()):
            self._stop_refresher.clear()
            self._refresher = threading.Thread(target=self._refresh_loop, name="a2tgpo-dashboard", daemon=True)
            self._refresher.start()

    def on_step_end(self, trainer: Any, record: Any) -> None:
        """Store the record and return: drawing happens on the refresher thread (or :meth:`refresh`)."""
        with self._records_lock:
            self.records.append(record)
            if len(self.records) > self.max_records:
                del self.records[0]
        self._dirty = True

    def on_evaluate(self, trainer: Any, metrics: dict) -> None:
        """The eval metrics arrive through trainer.history; an evaluation after training (or before it)
        has no refresher to draw it, so it is drawn at once (the status then shows the final EM)."""
        self._dirty = True
        if self._refresher is None or not self._refresher.is_alive():
            self.refresh()

    def on_pause(self, trainer: Any) -> None:
        """The trainer finished its step and now waits: say so at once."""
        self._state = f"paused after step {self._steps_done()}"
        self._update_status()

    def on_resume(self, trainer: Any) -> None:
        self._state = "stopping after the current step …" if self._state.startswith("stopping") else "running"
        self._update_status()

    def on_train_end(self, trainer: Any) -> None:
        self._stop_refresher.set()
        done, total = self._steps_done(), self._max_steps()
        interrupted = getattr(trainer, "interrupted", None)
        if interrupted:
            self._state = f"interrupted ({interrupted}) after step {done}; saved"
        elif total is not None and done >= total:
            self._state = f"finished step {done} / {total}"
        else:
            self._state = f"stopped after step {done}" + (f" / {total}" if total else "")
        self._enable_buttons(False)
        self.refresh()
        self._show_results(trainer)

    def _show_results(self, trainer: Any) -> None:
        """Display the when_finished results (Output.outputs is set directly: safe from any thread)."""
        outputs = []
        for show in self._when_finished:
            try:
                shown = show(trainer)
            except Exception as error:              # a results bug must not hide the finished run
                shown = f"<pre>when_finished: {html.escape(f'{type(error).__name__}: {error}')}</pre>"
            for item in shown if isinstance(shown, (list, tuple)) else [shown]:
                if isinstance(item, str):
                    outputs.append({"output_type": "display_data", "data": {"text/html": item}, "metadata": {}})
                elif item is not None:
                    outputs.append({"output_type": "display_data", "metadata": {}, "data": {
                        PLOTLY_MIME: json_safe(item.to_plotly_json()), "text/html": figure_html(item)}})
        if outputs:
            self.results.outputs = tuple(outputs)

    def _refresh_loop(self) -> None:
        while not self._stop_refresher.wait(max(self.update_interval, 0.05) / 2):
            try:
                self.maybe_refresh()
            except Exception as error:             # a drawing bug must never stop training
                self._error = f"{type(error).__name__}: {error}"

    # ------------------------------------------------------------------ drawing (kernel or refresher thread)
    def history(self) -> list[dict]:
        """The metrics rows: ``trainer.history`` when attached, else the stored records' metrics."""
        source = getattr(self.trainer, "history", None)
        if source is not None:
            return list(source)
        with self._records_lock:
            return [record.metrics for record in self.records]

    def maybe_refresh(self) -> bool:
        """Redraw if something changed and the throttle allows it: ``update_interval`` (or the last
        redraw's duration / ``max_busy``, if longer, up to ``MAX_GAP_S``) has passed since the last
        redraw began."""
        gap = max(self.update_interval, min(self._last_draw_seconds / self.max_busy, MAX_GAP_S))
        if self._dirty and self._clock() - self._last_draw >= gap:
            self.refresh()
            return True
        return False

    def refresh(self) -> None:
        """Redraw now: the visible history tab, the step slider, the visible tab of the selected step, the
        status line."""
        with self._draw_lock:
            self._dirty = False
            self._last_draw = self._clock()
            self.draw_count += 1
            self._draw_history()
            with self._records_lock:
                count = len(self.records)
                steps = [record.step for record in self.records]
            if count:
                self._moving_slider = True
                try:
                    self.step_slider.max = count - 1
                    if self.follow.value or self._selected_step not in steps:
                        self.step_slider.value = count - 1
                    else:
                        self.step_slider.value = steps.index(self._selected_step)
                finally:
                    self._moving_slider = False
                self._draw_selected()
            self._update_status()
            self._last_draw_seconds = self._clock() - self._last_draw

    def _draw_history(self) -> None:
        """Draw the selected history tab."""
        with self._draw_lock:
            name = list(HISTORY_VIEWS)[self.history_tabs.selected_index or 0]
            self.history_plot.show(_drawn_or_reason(HISTORY_VIEWS[name], self.history()))

    def selected_record(self) -> Any:
        """The StepRecord the step slider points at (None before the first step)."""
        with self._records_lock:
            if not self.records:
                return None
            return self.records[min(self.step_slider.value, len(self.records) - 1)]

    def selected_record_view(self) -> str:
        """The name of the selected record tab."""
        return [*RECORD_VIEWS, ROLLOUTS_TAB][self.record_tabs.selected_index or 0]

    def _draw_selected(self) -> None:
        """Draw the selected record tab for the selected record, unless it already shows it."""
        record = self.selected_record()
        if record is None:
            return
        with self._draw_lock:
            self._selected_step = record.step
            name = self.selected_record_view()
            self.step_label.value = (f"step {record.step}  ({self.step_slider.value + 1} of "
                                     f"{self.step_slider.max + 1} kept)")
            if self._drawn == (name, id(record)):
                return
            rollouts = name == ROLLOUTS_TAB
            self.inspector.widget.layout.display = "flex" if rollouts else "none"
            self.record_plot.widget.layout.display = "none" if rollouts else "flex"
            if rollouts:
                self.inspector.load_record(record)
            else:
                self.record_plot.show(_drawn_or_reason(RECORD_VIEWS[name], record))
            self._drawn = (name, id(record))

    def _on_slider(self, change) -> None:
        if self._moving_slider:
            return
        self.follow.value = change["new"] == self.step_slider.max
        self._draw_selected()

    def _on_follow(self, change) -> None:
        if change["new"] and not self._moving_slider:
            self.step_slider.value = self.step_slider.max

    # ------------------------------------------------------------------ buttons and status
    def _control(self, method: str, state: str) -> None:
        getattr(self.trainer, method)()
        if method != "resume" or not self._state.startswith("stopping"):
            self._state = state
        self._update_status()

    def _steps_done(self) -> int:
        """Completed steps: the trainer's counter, else one past the latest record's (0-based) step."""
        done = getattr(self.trainer, "global_step", None)
        if isinstance(done, int):
            return done
        with self._records_lock:
            return self.records[-1].step + 1 if self.records else 0

    def _max_steps(self) -> Optional[int]:
        return getattr(getattr(self.trainer, "cfg", None), "max_steps", None)

    def _update_status(self) -> None:
        parts = [f"<b>{html.escape(self._state)}</b>"]
        history = self.history()
        with self._records_lock:
            latest = self.records[-1] if self.records else None
            kept = len(self.records)
        if latest is not None:
            total = self._max_steps()
            parts.append(f"step {self._steps_done()}" + (f" / {total}" if total else ""))
            metrics = latest.metrics
            for key, label in (("reward", "reward"), ("num_turns/mean", "turns"),
                               ("clip_ratio/region_mean", "clipped")):
                if metrics.get(key) is not None:
                    parts.append(f"{label} {metrics[key]:.3f}")
            if latest.elapsed_s:
                parts.append(f"{latest.elapsed_s:.2f} s/step")
        evals = [row for row in history if row.get("eval/em") is not None]
        if evals:
            step = evals[-1].get("step")
            parts.append(f"eval/em {evals[-1]['eval/em']:.3f}"
                         + (f" (at step {int(step)})" if step is not None else ""))
        parts.append(f"{kept} records kept · redrawn {self.draw_count}×")
        if self._error:
            parts.append(f"<span style='color:#b2182b'>view error: {html.escape(self._error)}</span>")
        self.status.value = " · ".join(parts)

    # ------------------------------------------------------------------ static fallback
    def figures(self) -> dict:
        history = self.history()
        figures = {name: _drawn_or_reason(build, history) for name, build in HISTORY_VIEWS.items()}
        record = self.selected_record()
        if record is not None:
            figures.update({f"{name} (step {record.step})": _drawn_or_reason(build, record)
                            for name, build in RECORD_VIEWS.items()})
        return figures

    def extra_html(self) -> str:
        record = self.selected_record()
        if record is None:
            return f"<div>{self.status.value}</div>"
        shown = self.inspector.rollout.value
        rollout = shown if shown is not None and shown < len(record.questions) else 0
        return f"<div>{self.status.value}</div>{rollout_html(record, rollout)}"

