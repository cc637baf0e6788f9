"""The clip explorer: move β, ε_low, ε_high, Ĩ and the sign of A and watch the trust region move.

    c = 1 + β · (2σ(Ĩ) − 1)        [lo, hi] = [1 − c·ε_low, 1 + c·ε_high]
    objective(s) = min( s·A, clip(s, lo, hi)·A )

Left the fixed band (c = 1, GRPO / IGPO), right the adaptive one; the green band is [lo, hi], red
shading marks the ratios where the objective is flat, i.e. the token's gradient is zero. The
"ratio" buttons load the ε presets of a turn-level ratio (3e-3 / 4e-3) or a token-level one
(0.2 / 0.28). ``load_record(record)`` adds rollout / turn menus that set Ĩ and the sign of A from a
real step and draw that turn's token ratios on the curves. All curves are computed by the package's
clipping and loss functions (see :mod:`a2tgpo_lab.viz.clip_figures`).
"""
from __future__ import annotations

import html
import math
from contextlib import contextmanager
from typing import Optional

import numpy as np

from ..config import RATIO_LEVELS, A2TGPOConfig
from .clip_figures import clip_surrogate_figure
from .live import figure_widget, sync_figure
from .static import StaticFallback
from .style import check_record


def epsilon_preset(ratio_level: str) -> tuple[float, float]:
    """(ε_low, ε_high) that A2TGPOConfig picks for ``ratio_level`` ("turn" or "token")."""
    if ratio_level not in RATIO_LEVELS:
        raise ValueError(f"ratio_level={ratio_level!r}; choose one of {list(RATIO_LEVELS)}.")
    cfg = A2TGPOConfig(ratio_level=ratio_level)
    return cfg.epsilon, cfg.epsilon_high


def most_adaptive_turn(record) -> tuple[int, int]:
    """(rollout, turn) of the trained turn whose clip factor is furthest from 1; (0, 1) if none differs."""
    factor = np.asarray(record.clip_factor, dtype=float)
    trained = np.isfinite(np.asarray(record.advantages, dtype=float)) & np.isfinite(factor)
    distance = np.where(trained, np.abs(factor - 1.0), -1.0)
    if distance.max(initial=-1.0) <= 0:
        return 0, 1
    i, j = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return int(i), int(j) + 1


class ClipExplorer(StaticFallback):
    """Interactive clip region and clipped surrogate, fixed vs adaptive (see the module docstring)."""

    title = "clip explorer"

    def __init__(self, ig_norm: float = 1.0, advantage_sign: float = 1.0, beta: float = 0.3,
                 ratio_level: str = "turn", record=None):
        import ipywidgets as widgets

        eps_low, eps_high = epsilon_preset(ratio_level)
        wide = widgets.Layout(width="360px")
        style = {"description_width": "60px"}
        self.ratio_level = widgets.ToggleButtons(options=list(RATIO_LEVELS), value=ratio_level, description="ratio",
                                                 style=style)
        self.sign = widgets.ToggleButtons(options=[("A > 0", 1.0), ("A < 0", -1.0)],
                                          value=1.0 if advantage_sign >= 0 else -1.0, description="advantage",
                                          style=style)
        self.beta = widgets.FloatSlider(value=beta, min=0.0, max=0.9, step=0.01, description="β", layout=wide,
                                        style=style, continuous_update=False)
        self.ig_norm = widgets.FloatSlider(value=ig_norm, min=-4.0, max=4.0, step=0.05, description="Ĩ",
                                           layout=wide, style=style, continuous_update=False)
        self.eps_low = widgets.FloatLogSlider(value=eps_low, base=10, min=-4, max=-0.1, step=0.01,
                                              description="ε_low", readout_format=".2e", layout=wide, style=style,
                                              continuous_update=False)
        self.eps_high = widgets.FloatLogSlider(value=eps_high, base=10, min=-4, max=0.3, step=0.01,
                                               description="ε_high", readout_format=".2e", layout=wide, style=style,
                                               continuous_update=False)
        self.rollout = widgets.Dropdown(description="rollout", options=[], layout=widgets.Layout(width="360px"),
                                        style=style)
        self.turn = widgets.Dropdown(description="turn", options=[], layout=widgets.Layout(width="360px"),
                                     style=style)
        self.readout = widgets.HTML()
        # The rollout / turn menus only mean something with a record: shown by load_record.
        self.record_menus = widgets.HBox([self.rollout, self.turn], layout=widgets.Layout(display="none"))
        self.record = None
        self._hold_depth = 0
        self.figure = figure_widget(self.current_figure())
        self.widget = widgets.VBox([
            widgets.HBox([self.ratio_level, self.sign]), widgets.HBox([self.beta, self.ig_norm]),
            widgets.HBox([self.eps_low, self.eps_high]), self.record_menus,
            self.readout, self.figure])
        for control in (self.sign, self.beta, self.ig_norm, self.eps_low, self.eps_high):
            control.observe(self.update, names="value")
        self.ratio_level.observe(self._on_ratio_level, names="value")
        self.rollout.observe(self._on_rollout, names="value")
        self.turn.observe(self._on_turn, names="value")
        if record is not None:
            self.load_record(record)
        else:
            self.update()

    # ------------------------------------------------------------------ drawing
    @contextmanager
    def _hold(self):
        """Set several controls (their observers may nest holds), then draw once."""
        self._hold_depth += 1
        try:
            yield
        finally:
            self._hold_depth -= 1
        self.update()

    def _turn_ratios(self) -> Optional[np.ndarray]:
        """The loaded record's token ratios of the selected (rollout, turn), if any."""
        if self.record is None or self.rollout.value is None or self.turn.value is None:
            return None
        i, k = self.rollout.value, self.turn.value
        in_turn = (np.asarray(self.record.turn_ids[i]) == k) & np.asarray(self.record.loss_mask[i], dtype=bool)
        ratios = np.asarray(self.record.ratio[i], dtype=float)[in_turn]
        ratios = ratios[np.isfinite(ratios) & (ratios > 0)]
        return ratios if ratios.size else None

    def current_figure(self):
        """The figure for the current control values (a plain go.Figure)."""
        return clip_surrogate_figure(ig_norm=self.ig_norm.value, advantage=self.sign.value, beta=self.beta.value,
                                     eps_low=self.eps_low.value, eps_high=self.eps_high.value,
                                     ratios=self._turn_ratios())

    def update(self, *_) -> None:
        """Redraw the figure and the readout from the controls."""
        if self._hold_depth:
            return
        fig = self.current_figure()
        sync_figure(self.figure, fig)
        meta = fig.layout.meta
        low, high = meta["adaptive_bounds"]
        flat = f"s &gt; {high:.5g}" if self.sign.value > 0 else f"s &lt; {low:.5g}"
        lines = [f"c = <b>{meta['clip_factor']:.4f}</b> · adaptive band [{low:.5g}, {high:.5g}] · gradient is zero "
                 f"for {flat}"]
        if self.record is not None and self.turn.value is not None:
            lines.append(self._record_line())
        elif self.record is None:  # the rollout / turn menus stay hidden until there is a step to pick from
            lines.append("<i>explorer.load_record(trainer.records[-1]) puts a real step here: pick a rollout "
                         "and turn, and see its token ratios against the band</i>")
        self.readout.value = "<br>".join(lines)

    def _record_line(self) -> str:
        record, i, k = self.record, self.rollout.value, self.turn.value
        j, tool = k - 1, k <= int(record.num_tool_turns[i])
        advantage = float(record.advantages[i, j])
        ratios = self._turn_ratios()
        ratio_text = f"{ratios.size} token ratios in [{ratios.min():.5f}, {ratios.max():.5f}]" if ratios is not None \
            else "no token ratios"
        kind = f"tool turn, IG {float(record.ig[i, j]):+.4f}" if tool else "terminal turn"
        zero = " (A = 0: no gradient at all)" if advantage == 0 else ""
        return (f"record step {record.step}, rollout {i}, turn {k} ({html.escape(kind)}): Ĩ = "
                f"{self._record_ig_norm(i, k):+.3f}, A = {advantage:+.3f}{zero}, stored c = "
                f"{float(record.clip_factor[i, j]):.4f}; {ratio_text}")

    # ------------------------------------------------------------------ controls
    def _on_ratio_level(self, change) -> None:
        with self._hold():
            self.eps_low.value, self.eps_high.value = epsilon_preset(change["new"])

    def load_record(self, record) -> None:
        """Take β, ε and the ratio level from ``record.config`` and offer its rollouts and turns; open on
        the turn whose clip factor is furthest from 1 (where adaptive and fixed clipping differ most)."""
        check_record(record, "ClipExplorer.load_record")
        cfg = record.config or {}
        with self._hold():
            self.record = record
            if cfg.get("ratio_level") in RATIO_LEVELS:
                self.ratio_level.value = cfg["ratio_level"]
            self.beta.value = float(cfg.get("clip_beta", self.beta.value))
            self.eps_low.value = float(cfg.get("epsilon", self.eps_low.value))
            self.eps_high.value = float(cfg.get("epsilon_high", self.eps_high.value))
            self.rollout.options = [(f"{i}: prompt {int(record.prompt_index[i])}, reward "
                                     f"{float(record.outcome_reward[i]):+.0f}", i)
                                    for i in range(len(record.questions))]
            self.record_menus.layout.display = "flex"
            rollout, turn = most_adaptive_turn(record)
            self.rollout.value = rollout
            self._show_rollout(rollout, turn)   # the value may not have changed, then no change event fires

    def _on_rollout(self, change) -> None:
        if self.record is not None and change["new"] is not None:
            self._show_rollout(change["new"])

    def _show_rollout(self, i: int, turn: Optional[int] = None) -> None:
        record = self.record
        turns = [k for k in range(1, record.advantages.shape[1] + 1) if math.isfinite(record.advantages[i, k - 1])]
        options = [(f"{k}: " + ("search" if k <= int(record.num_tool_turns[i]) else record.end_reason[i])
                    + f", c = {float(record.clip_factor[i, k - 1]):.3f}", k) for k in turns]
        chosen = turn if turn in turns else (turns[0] if turns else None)
        with self._hold():
            self.turn.options = options
            self.turn.value = chosen
            if chosen is not None:
                self._show_turn(chosen)   # no change event when the value stays the same

    def _record_ig_norm(self, i: int, k: int) -> float:
        """Ĩ behind turn k's clip factor: its normalized IG, or for the terminal turn 0 (c = 1), or õ when
        the record's config used ``answer_turn_clip="outcome"``."""
        record = self.record
        if k <= int(record.num_tool_turns[i]):
            value = float(record.ig_norm[i, k - 1])
            return value if math.isfinite(value) else 0.0
        if (record.config or {}).get("answer_turn_clip") == "outcome":
            return float(record.outcome_norm[i])
        return 0.0

    def _on_turn(self, change) -> None:
        if self.record is not None and change["new"] is not None:
            self._show_turn(change["new"])

    def _show_turn(self, k: int) -> None:
        i = self.rollout.value
        advantage = float(self.record.advantages[i, k - 1])
        with self._hold():
            self.ig_norm.value = self._record_ig_norm(i, k)
            self.sign.value = 1.0 if advantage >= 0 else -1.0

    def figures(self) -> dict:
        return {"clipped surrogate": self.current_figure()}
