"""The rollout inspector: one trajectory token by token, as the loss saw it.

Every token is a coloured chip: the colour of its assistant turn for model tokens (the ones the loss
trains, ``loss_mask``), grey text for prompt / observation tokens; or, with ``color_by="advantage"``,
red-to-blue by the advantage each model token received. A red underline marks a token clipped high
(A > 0 and s > 1 + c·ε_high), a blue one a token clipped low (A < 0 and s < 1 − c·ε_low): those
tokens got no gradient. A badge after each assistant turn shows its IG, Ĩ, A and clip factor, and
a table lists the same per turn. Hovering a chip shows its position, turn, advantage and ratio.

``rollout_html(record, i)`` is the pure function (a string of HTML, inline styles only, so it
survives notebook sanitizers); :class:`RolloutInspector` adds a rollout selector around it.
"""
from __future__ import annotations

import html
import math

import numpy as np

from .static import StaticFallback
from .style import CLIP_HIGH_COLOR, CLIP_LOW_COLOR, check_record, check_rollout, turn_color, with_alpha

COLOR_MODES = ("turn", "advantage")
_CHIP = "display:inline-block;margin:1px 1px;padding:0 3px;border-radius:3px;font-family:monospace;font-size:12px;"


def _fmt(value, digits: int = 3) -> str:
    value = float(value)
    return "–" if not math.isfinite(value) else f"{value:+.{digits}f}"


def _display_token(token: str) -> str:
    """Readable text of a token: byte-level BPE marks a leading space with 'Ġ' and a newline with 'Ċ'."""
    return token.replace("Ġ", "␣").replace("Ċ", "↵") if token else "∅"


def _advantage_color(value: float, scale: float) -> str:
    """Diverging background: red for A < 0, blue for A > 0, stronger with |A| / scale."""
    strength = min(1.0, abs(value) / scale) if scale > 0 else 0.0
    return with_alpha("#2166ac" if value >= 0 else "#b2182b", 0.15 + 0.6 * strength)


def _turn_table(record, i: int) -> str:
    """One row per turn: action, probe p, IG, Ĩ, group size, A, c, band and clipped-token counts."""
    k_tool = int(record.num_tool_turns[i])
    header = ("<tr>" + "".join(f"<th style='padding:2px 8px;text-align:left'>{h}</th>" for h in (
        "turn", "action", "p after", "IG", "Ĩ", "group n", "A", "c", "clip band", "clipped low/high/tokens")) + "</tr>")
    rows = []
    turn_ids, mask, flags = (np.asarray(x) for x in (record.turn_ids[i], record.loss_mask[i], record.clipped[i]))
    for k, text in enumerate(record.turn_texts[i], start=1):
        j = k - 1
        in_turn = (turn_ids == k) & mask.astype(bool)
        tool = k <= k_tool
        query = record.tool_calls[i][j] if j < len(record.tool_calls[i]) else None
        if tool:
            action = f"search: {query}"
        else:
            action = {"answer": f"answer: {record.final_answer[i]}", "malformed": "malformed turn",
                      "max_turns": f"search past the turn cap, not run: {query}"}.get(record.end_reason[i],
                                                                                     record.end_reason[i])
        cells = [f"<b style='color:{turn_color(k)}'>{k}</b>", html.escape(action),
                 f"{float(record.p[i, k]):.3f}" if tool and math.isfinite(record.p[i, k]) else "–",
                 _fmt(record.ig[i, j], 4) if tool else "–", _fmt(record.ig_norm[i, j]) if tool else "–",
                 str(int(record.group_size[i, j])) if tool else "–",
                 _fmt(record.advantages[i, j]) if j < record.advantages.shape[1] else "–",
                 f"{float(record.clip_factor[i, j]):.3f}" if j < record.clip_factor.shape[1] else "–",
                 (f"[{float(record.clip_low[i, j]):.5f}, {float(record.clip_high[i, j]):.5f}]"
                  if j < record.clip_low.shape[1] else "–"),
                 f"{int((flags[in_turn] < 0).sum())} / {int((flags[in_turn] > 0).sum())} / {int(in_turn.sum())}"]
        rows.append("<tr>" + "".join(f"<td style='padding:2px 8px'>{c}</td>" for c in cells) + "</tr>")
    return f"<table style='border-collapse:collapse;font-size:12px;margin:6px 0'>{header}{''.join(rows)}</table>"


def _legend(record, i: int, color_by: str) -> str:
    chips = []
    if color_by == "turn":
        turns = sorted({int(t) for t in np.asarray(record.turn_ids[i]) if t > 0})
        chips += [f"<span style='{_CHIP}background:{with_alpha(turn_color(k), 0.35)}'>turn {k}</span>" for k in turns]
    else:
        chips += [f"<span style='{_CHIP}background:{_advantage_color(-1, 1)}'>A &lt; 0</span>",
                  f"<span style='{_CHIP}background:{_advantage_color(1, 1)}'>A &gt; 0</span>"]
    chips += [f"<span style='{_CHIP}color:#777'>context (not trained)</span>",
              f"<span style='{_CHIP}border-bottom:3px solid {CLIP_HIGH_COLOR}'>clipped high</span>",
              f"<span style='{_CHIP}border-bottom:3px solid {CLIP_LOW_COLOR}'>clipped low</span>"]
    return "<div style='margin:4px 0'>" + "".join(chips) + "</div>"


def _badge(record, i: int, k: int) -> str:
    j, tool = k - 1, k <= int(record.num_tool_turns[i])
    parts = [f"IG {_fmt(record.ig[i, j], 4)}", f"Ĩ {_fmt(record.ig_norm[i, j], 2)}"] if tool else ["terminal turn"]
    if j < record.advantages.shape[1]:
        parts += [f"A {_fmt(record.advantages[i, j], 2)}", f"c {float(record.clip_factor[i, j]):.3f}"]
    return (f"<span style='{_CHIP}background:#fff;border:1px solid {turn_color(k)};color:{turn_color(k)}'>"
            + " · ".join(parts) + "</span>")


def probe_text_for(record, i: int) -> str:
    """The probe suffix as rollout ``i`` is scored: the record keeps rollout 0's (with its gold answer), and
    the suffix differs between rollouts only in the gold answer at its end."""
    text = record.probe_text or ""
    first, gold = record.answers[0][0] if record.answers[0] else "", record.answers[i][0] if record.answers[i] else ""
    cut = text.rfind(first) if first else -1
    return text if cut < 0 or first == gold else text[:cut] + gold + text[cut + len(first):]


def rollout_html(record, i: int, color_by: str = "turn") -> str:
    """HTML of rollout ``i`` of ``record``: a summary line, the per-turn table, the probe, the tokens."""
    check_record(record, "rollout_html")
    i = check_rollout(record, i, "rollout_html")
    if color_by not in COLOR_MODES:
        raise ValueError(f"rollout_html: color_by={color_by!r}; choose one of {list(COLOR_MODES)}.")
    tokens = record.tokens[i]
    mask = np.asarray(record.loss_mask[i], dtype=bool)
    turn_ids, flags = np.asarray(record.turn_ids[i]), np.asarray(record.clipped[i])
    advantage, ratio = np.asarray(record.token_advantage[i], dtype=float), np.asarray(record.ratio[i], dtype=float)
    if not len(tokens) == mask.size == turn_ids.size == flags.size == advantage.size == ratio.size:
        raise ValueError(f"rollout_html: rollout {i}'s token arrays differ in length (tokens {len(tokens)}, loss_mask "
                         f"{mask.size}, turn_ids {turn_ids.size}, clipped {flags.size}, token_advantage "
                         f"{advantage.size}, ratio {ratio.size}); they must all cover the same L_i tokens.")
    scale = float(np.abs(advantage[mask]).max()) if mask.any() else 1.0
    last_of_turn = {int(k): int(np.nonzero(turn_ids == k)[0][-1]) for k in np.unique(turn_ids[mask])}
    chips = []
    for pos, token in enumerate(tokens):
        if token == "<|im_start|>" and pos:
            chips.append("<br>")
        k = int(turn_ids[pos])
        tip = f"pos {pos} · turn {k} · " + (f"trained · A {_fmt(advantage[pos])} · s {ratio[pos]:.5f}"
                                             if mask[pos] else "context, not trained")
        style = _CHIP
        if mask[pos]:
            fill = with_alpha(turn_color(k), 0.35) if color_by == "turn" else _advantage_color(advantage[pos], scale)
            style += f"background:{fill};"
        else:
            style += "color:#777;"
        if flags[pos]:
            color = CLIP_HIGH_COLOR if flags[pos] > 0 else CLIP_LOW_COLOR
            style += f"border-bottom:3px solid {color};"
            tip += " · clipped " + ("high" if flags[pos] > 0 else "low")
        chips.append(f"<span title='{html.escape(tip, quote=True)}' style='{style}'>"
                     f"{html.escape(_display_token(str(token)))}</span>")
        if mask[pos] and last_of_turn.get(k) == pos:
            chips.append(_badge(record, i, k))
    reward = float(record.outcome_reward[i])
    summary = (f"<b>rollout {i}</b> · prompt {int(record.prompt_index[i])} · {html.escape(record.questions[i])} · "
               f"gold <b>{html.escape(' | '.join(record.answers[i]))}</b> · answer "
               f"<b>{html.escape(str(record.final_answer[i]))}</b> · reward {reward:+.2f} · õ "
               f"{_fmt(record.outcome_norm[i], 2)} · {int(record.num_tool_turns[i])} searches · ended: "
               f"{html.escape(record.end_reason[i])}")
    probe = (f"<div style='font-size:12px;color:#555'>IG probe suffix (teacher-forced after every turn, scoring "
             f"this rollout's gold): <code>{html.escape(probe_text_for(record, i) or '(none: no IG in this run)')}"
             "</code></div>")
    return (f"<div class='a2tgpo-rollout' style='font-size:13px;line-height:1.9'>{summary}{_turn_table(record, i)}"
            f"{probe}{_legend(record, i, color_by)}<div>{''.join(chips)}</div></div>")


class RolloutInspector(StaticFallback):
    """A rollout selector and colour mode around :func:`rollout_html`; ``load_record`` switches records."""

    title = ""

    def __init__(self, record=None, rollout: int = 0, color_by: str = "turn"):
        import ipywidgets as widgets

        self.record = None
        self._loading = False
        self.rollout = widgets.Dropdown(description="rollout", options=[], layout=widgets.Layout(width="420px"))
        self.color_by = widgets.ToggleButtons(options=list(COLOR_MODES), value=color_by, description="colour by")
        self.view = widgets.HTML()
        self.widget = widgets.VBox([widgets.HBox([self.rollout, self.color_by]), self.view])
        self.rollout.observe(self._render, names="value")
        self.color_by.observe(self._render, names="value")
        if record is not None:
            self.load_record(record, rollout)

    def load_record(self, record, rollout: int | None = None) -> None:
        """Show ``record``; keeps the selected rollout when it exists there."""
        check_record(record, "RolloutInspector.load_record")
        keep = self.rollout.value if rollout is None else check_rollout(record, rollout, "RolloutInspector")
        self.record = record
        options = [(f"{i}: prompt {int(record.prompt_index[i])}, {int(record.num_tool_turns[i])} searches, "
                    f"reward {float(record.outcome_reward[i]):+.0f}, {record.end_reason[i]}", i)
                   for i in range(len(record.questions))]
        self._loading = True                     # draw once, after both options and value are set
        try:
            self.rollout.options = options
            self.rollout.value = keep if keep is not None and keep < len(options) else 0
        finally:
            self._loading = False
        self._render()

    def _render(self, *_):
        if self.record is not None and self.rollout.value is not None and not self._loading:
            self.view.value = rollout_html(self.record, self.rollout.value, self.color_by.value)

    def figures(self) -> dict:
        return {}

    def extra_html(self) -> str:
        return self.view.value
