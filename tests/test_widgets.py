"""Widget views driven through their traitlets (no browser): clip explorer, rollout inspector, dashboard."""
from __future__ import annotations

import html
import json
import re
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from a2tgpo_lab.viz.clip_explorer import ClipExplorer, epsilon_preset
from a2tgpo_lab.viz.dashboard import HISTORY_VIEWS, RECORD_VIEWS, Dashboard
from a2tgpo_lab.viz.static import PLOTLY_MIME
from a2tgpo_lab.viz.inspector import RolloutInspector, rollout_html
from a2tgpo_lab.viz.sample import sample_run, sample_step_record


@pytest.fixture(scope="module")
def record():
    return sample_step_record(seed=0)


@pytest.fixture(scope="module")
def run():
    return sample_run(n_steps=6, seed=2, eval_every=2, n_prompts=2, group_size=4)


def curve(fig, panel: str, name: str = "objective"):
    return next(t for t in fig.data if (t.meta or {}).get("panel") == panel and t.meta.get("curve") == name)


# ----------------------------------------------------------------------------- clip explorer


def dead_zone_start(fig, panel: str) -> float:
    """The smallest ratio where the panel's gradient curve is zero (A > 0: the top of the band)."""
    gradient = curve(fig, panel, "gradient")
    return float(np.array(gradient.x)[np.array(gradient.y) == 0].min())


def test_clip_explorer_sliders_redraw_the_figure():
    explorer = ClipExplorer(ig_norm=0.0)
    readout = explorer.readout.value
    assert explorer.figure.layout.meta["clip_factor"] == pytest.approx(1.0)
    assert dead_zone_start(explorer.figure, "adaptive") == pytest.approx(1.004, abs=1e-4)

    explorer.ig_norm.value = 2.0
    c = explorer.figure.layout.meta["clip_factor"]
    assert c == pytest.approx(1 + 0.3 * np.tanh(1.0))
    assert explorer.readout.value != readout and f"{c:.4f}" in explorer.readout.value
    assert dead_zone_start(explorer.figure, "adaptive") == pytest.approx(1 + c * 0.004, abs=1e-4)
    assert dead_zone_start(explorer.figure, "fixed") == pytest.approx(1.004, abs=1e-4)   # ignores Ĩ

    explorer.beta.value = 0.0
    assert explorer.figure.layout.meta["clip_factor"] == pytest.approx(1.0)


def test_clip_explorer_sign_moves_the_dead_zone():
    explorer = ClipExplorer(ig_norm=0.0, advantage_sign=1.0)
    gradient = curve(explorer.figure, "adaptive", "gradient")
    x, g = np.array(gradient.x), np.array(gradient.y)
    assert (g[x > 1.01] == 0).all() and (g[x < 0.99] != 0).all()
    explorer.sign.value = -1.0
    gradient = curve(explorer.figure, "adaptive", "gradient")
    x, g = np.array(gradient.x), np.array(gradient.y)
    assert (g[x < 0.99] == 0).all() and (g[x > 1.01] != 0).all()


def test_clip_explorer_ratio_presets():
    explorer = ClipExplorer()
    assert (explorer.eps_low.value, explorer.eps_high.value) == pytest.approx(epsilon_preset("turn"))
    explorer.ratio_level.value = "token"
    assert (explorer.eps_low.value, explorer.eps_high.value) == pytest.approx((0.2, 0.2))   # published GRPO / IGPO
    low, high = explorer.figure.layout.meta["fixed_bounds"]
    assert (low, high) == pytest.approx((0.8, 1.2))
    with pytest.raises(ValueError, match="ratio_level"):
        epsilon_preset("sequence")


def test_clip_explorer_loads_a_record(record):
    explorer = ClipExplorer()
    assert "load_record" in explorer.readout.value and explorer.record_menus.layout.display == "none"
    explorer.load_record(record)
    assert "load_record" not in explorer.readout.value and explorer.record_menus.layout.display == "flex"
    assert explorer.beta.value == pytest.approx(record.config["clip_beta"])
    assert explorer.eps_low.value == pytest.approx(record.config["epsilon"])
    assert [value for _, value in explorer.rollout.options] == list(range(len(record.questions)))
    i = int(np.nonzero(record.num_tool_turns >= 2)[0][1])
    explorer.rollout.value = i
    assert [k for _, k in explorer.turn.options] == list(range(1, int(record.num_tool_turns[i]) + 2))
    explorer.turn.value = 2
    assert explorer.ig_norm.value == pytest.approx(record.ig_norm[i, 1], abs=1e-9)
    assert explorer.sign.value == (1.0 if record.advantages[i, 1] >= 0 else -1.0)
    ratios = curve(explorer.figure, "adaptive", "ratios")
    in_turn = (record.turn_ids[i] == 2) & record.loss_mask[i]
    assert np.allclose(ratios.x, record.ratio[i][in_turn])
    assert f"rollout {i}, turn 2" in explorer.readout.value
    # The terminal turn has c = 1 (answer_turn_clip="one"), i.e. Ĩ = 0 in the explorer.
    explorer.turn.value = int(record.num_tool_turns[i]) + 1
    assert explorer.ig_norm.value == 0.0
    assert "clipped surrogate" in explorer.figures() and "<div" in explorer.to_html()


# ----------------------------------------------------------------------------- rollout inspector


def test_rollout_html_shows_every_token_mask_and_clip(record):
    i = next(i for i in range(len(record.questions)) if (record.clipped[i] != 0).any())
    page = rollout_html(record, i)
    chips = re.findall(r"<span title='([^']*)' style='([^']*)'>([^<]*)</span>", page)
    assert len(chips) == len(record.tokens[i])
    assert [html.unescape(text) for _, _, text in chips] == [str(t) for t in record.tokens[i]]
    trained = [("background" in style) for _, style, _ in chips]
    assert trained == record.loss_mask[i].tolist()
    high = ["clipped high" in tip for tip, _, _ in chips]
    low = ["clipped low" in tip for tip, _, _ in chips]
    assert high == (record.clipped[i] > 0).tolist() and low == (record.clipped[i] < 0).tolist()
    # One badge per assistant turn, with the IG of each tool turn.
    assert page.count("terminal turn") == int(record.has_answer_turn[i])
    for k in range(1, int(record.num_tool_turns[i]) + 1):
        assert f"IG {record.ig[i, k - 1]:+.4f}" in page
    assert html.escape(record.probe_text) in page
    assert "&lt;search&gt;" in page and "<search>" not in page
    by_advantage = rollout_html(record, i, color_by="advantage")
    assert by_advantage != page and "A &lt; 0" in by_advantage
    with pytest.raises(ValueError, match="color_by"):
        rollout_html(record, i, color_by="ratio")
    with pytest.raises(ValueError, match="rollout=24"):
        rollout_html(record, 24)


def test_rollout_inspector_selector(record):
    inspector = RolloutInspector(record)
    assert inspector.view.value == rollout_html(record, 0)
    inspector.rollout.value = 5
    assert inspector.view.value == rollout_html(record, 5)
    inspector.color_by.value = "advantage"
    assert inspector.view.value == rollout_html(record, 5, "advantage")
    smaller = sample_step_record(seed=4, n_prompts=1, group_size=3)
    inspector.load_record(smaller)               # rollout 5 does not exist there: back to 0
    assert inspector.rollout.value == 0 and inspector.view.value == rollout_html(smaller, 0, "advantage")
    assert inspector._repr_html_() == inspector.view.value


# ----------------------------------------------------------------------------- dashboard


class FakeClock:
    """Time that moves only when told to; ``per_call`` makes every reading advance it (a slow redraw)."""

    def __init__(self):
        self.now, self.per_call = 100.0, 0.0

    def __call__(self) -> float:
        self.now += self.per_call
        return self.now


class FakeTrainer:
    """The trainer API the dashboard relies on, with no model: callbacks, controls, history, records."""

    def __init__(self, records):
        self.pending = list(records)
        self.callbacks, self.calls = [], []
        self.history, self.records = [], []
        self.cfg = SimpleNamespace(max_steps=len(records))

    def add_callback(self, callback):
        self.callbacks.append(callback)

    def pause(self):
        self.calls.append("pause")

    def resume(self):
        self.calls.append("resume")

    def stop(self):
        self.calls.append("stop")

    def emit(self, event, *args):
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)

    def step(self):
        record = self.pending.pop(0)
        self.records.append(record)
        self.history.append(record.metrics)
        self.emit("on_step_end", record)
        return record

    def train(self):
        self.emit("on_train_begin")
        while self.pending:
            self.step()
        self.emit("on_train_end")

    def train_in_background(self):
        thread = threading.Thread(target=self.train)
        thread.start()
        return thread


def ig_trace_rollouts(fig, record):
    """(rollout, y) pairs of an IG-per-rollout figure, to compare with the record."""
    return {t.meta["rollout"]: list(t.y) for t in fig.data} == {
        i: list(record.ig[i, :int(record.num_tool_turns[i])]) for i in range(len(record.questions))
        if record.num_tool_turns[i] > 0}


def test_dashboard_stores_records_and_redraws_throttled(run):
    clock = FakeClock()
    trainer = FakeTrainer(run)
    dash = Dashboard(trainer, update_interval=0.5, background=False, clock=clock)
    assert trainer.callbacks == [dash] and not dash.pause_button.disabled
    trainer.emit("on_train_begin")
    assert dash.maybe_refresh() and dash.draw_count == 1     # first redraw: nothing drawn before
    for _ in range(3):
        trainer.step()
    assert len(dash.records) == 3 and dash.draw_count == 1   # the callback stores, it does not draw
    clock.now += 0.2
    assert not dash.maybe_refresh() and dash.draw_count == 1  # throttled
    clock.now += 0.4
    assert dash.maybe_refresh() and dash.draw_count == 2
    assert not dash.maybe_refresh()                           # nothing new: no redraw
    assert dash.step_slider.max == 2 and dash.step_slider.value == 2
    assert ig_trace_rollouts(dash.record_plot.figure, run[2])
    reward = next(t for t in dash.history_plot.figure.data if t.meta["metric"] == "reward")
    assert list(reward.y) == [r.metrics["reward"] for r in run[:3]]
    assert "step 3 / 6" in dash.status.value                 # steps done (records are numbered from 0)
    dash.history_tabs.selected_index = list(HISTORY_VIEWS).index("clip fraction per turn")
    clip = dash.history_plot.figure
    assert [list(t.y) for t in clip.data if t.meta["metric"] == "clip_ratio/region_mean"] == [
        [r.metrics["clip_ratio/region_mean"] for r in run[:3]]]
    shown = dash.history_plot.widget.outputs[0]["data"][PLOTLY_MIME]     # what the browser receives: JSON
    json.dumps(shown, allow_nan=False)


def test_dashboard_throttle_stretches_after_a_slow_redraw(run):
    clock = FakeClock()
    trainer = FakeTrainer(run)
    dash = Dashboard(trainer, update_interval=0.5, max_busy=0.1, background=False, clock=clock)
    trainer.step()
    clock.per_call = 0.3                     # this redraw takes 0.3 s ...
    dash.refresh()
    clock.per_call = 0.0
    trainer.step()
    clock.now += 1.0
    assert not dash.maybe_refresh()          # ... so the next one waits 0.3 / 0.1 = 3 s, not 0.5 s
    clock.now += 2.0
    assert dash.maybe_refresh() and dash.draw_count == 2
    with pytest.raises(ValueError, match="max_busy"):
        Dashboard(max_busy=0.0)


def test_dashboard_step_selector_and_lazy_tabs(run):
    trainer = FakeTrainer(run)
    dash = Dashboard(trainer, background=False)
    for _ in range(4):
        trainer.step()
    dash.refresh()
    dash.step_slider.value = 1
    assert not dash.follow.value and ig_trace_rollouts(dash.record_plot.figure, run[1])
    assert dash.step_label.value.startswith("step 1")
    dash.record_tabs.selected_index = list(RECORD_VIEWS).index("IG groups")
    heatmap = dash.record_plot.figure
    z = [t for t in heatmap.data if t.type == "heatmap"][1].z
    order = np.argsort(run[1].prompt_index, kind="stable")
    width = int(run[1].num_tool_turns.max())
    assert np.allclose(np.array(z, dtype=float), run[1].ig_norm[order, :width], equal_nan=True)
    dash.record_tabs.selected_index = len(RECORD_VIEWS)  # the rollouts tab loads the inspector
    assert dash.inspector.record is run[1] and dash.record_plot.widget.layout.display == "none"
    # A new step does not move a slider the user moved back ...
    trainer.step()
    dash.refresh()
    assert dash.step_slider.value == 1 and dash.step_slider.max == 4
    # ... until "follow latest" is ticked again.
    dash.follow.value = True
    assert dash.step_slider.value == 4 and dash.inspector.record is run[4]


def test_dashboard_buttons_call_the_trainer(run):
    trainer = FakeTrainer(run)
    dash = Dashboard(trainer, background=False)
    dash.pause_button.click()
    assert trainer.calls == ["pause"] and "pausing after the current step" in dash.status.value
    trainer.emit("on_pause")                  # the trainer finished its step and waits
    assert "paused after step" in dash.status.value
    dash.resume_button.click()
    trainer.emit("on_resume")
    assert "running" in dash.status.value
    dash.stop_button.click()
    assert trainer.calls == ["pause", "resume", "stop"] and "stopping" in dash.status.value
    trainer.step()
    trainer.emit("on_train_end")              # stopped early: "stopped", not "finished"; buttons off
    assert "stopped after step 1 / 6" in dash.status.value and dash.stop_button.disabled
    trainer.interrupted = "SIGINT"
    trainer.emit("on_train_end")
    assert "interrupted (SIGINT) after step 1" in dash.status.value


def test_dashboard_keeps_at_most_max_records(run):
    trainer = FakeTrainer(run)
    dash = Dashboard(trainer, max_records=2, background=False)
    trainer.train()
    assert [r.step for r in dash.records] == [4, 5]
    assert dash.step_slider.max == 1 and "finished" in dash.status.value


def test_dashboard_with_a_background_trainer(run):
    """Training runs on another thread with the refresher thread on; the end of training draws the last step."""
    trainer = FakeTrainer(run)
    dash = Dashboard(trainer, update_interval=0.0, background=True)
    trainer.train_in_background().join()
    assert dash._refresher is not None
    dash._refresher.join()
    assert dash._error == "" and ig_trace_rollouts(dash.record_plot.figure, run[-1])
    em = next(t for t in dash.history_plot.figure.data if t.meta["metric"] == "eval/em")
    assert list(em.y) == [r.metrics["eval/em"] for r in run if "eval/em" in r.metrics]


def test_dashboard_attach_imports_kept_records(run):
    trainer = FakeTrainer(run)
    for _ in range(3):
        trainer.step()
    dash = Dashboard(background=False)
    assert dash.pause_button.disabled
    dash.attach(trainer)
    assert [r.step for r in dash.records] == [0, 1, 2] and dash.step_slider.max == 2
    with pytest.raises(TypeError, match="add_callback"):
        dash.attach(object())


def test_dashboard_from_records_and_static_html(run):
    dash = Dashboard.from_records(run)
    assert dash.trainer is None and dash.step_slider.max == len(run) - 1
    figures = dash.figures()
    assert {"training curves", "clip fraction per turn"} <= set(figures)
    assert f"IG groups (step {run[-1].step})" in figures
    page = dash.to_html()
    assert page.count("plotly-graph-div") == len(figures) and "offline" in page
    bundle = dash._repr_mimebundle_()             # the live widget plus a static copy for saved notebooks
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"].count("plotly-graph-div") == len(figures)
    with pytest.raises(ValueError, match="at least one StepRecord"):
        Dashboard.from_records([])


def test_show_writes_any_view_as_static_html(tmp_path, record):
    from a2tgpo_lab.viz.static import show

    page = show(RolloutInspector(record, rollout=3), path=tmp_path / "inspector.html").read_text()
    assert "rollout 3" in page and page.count("<span title=") == len(record.tokens[3])
    explorer_page = show(ClipExplorer(), path=tmp_path / "explorer.html").read_text()
    assert explorer_page.count("plotly-graph-div") == 1 and "cdn.plot.ly" in explorer_page


def test_show_in_ipython_sends_plotly_json_with_an_html_fallback(record):
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    from a2tgpo_lab.viz.clip_figures import clip_range_figure
    from a2tgpo_lab.viz.static import PLOTLY_MIME, show

    InteractiveShell.instance()
    try:
        with capture_output() as captured:
            assert show(clip_range_figure(record)) is None
            show(RolloutInspector(record))
    finally:
        InteractiveShell.clear_instance()
    figure_output, inspector_output = captured.outputs
    assert figure_output.data[PLOTLY_MIME]["data"][0]["type"] == "bar"
    assert "plotly-graph-div" in figure_output.data["text/html"]
    assert "rollout 0" in inspector_output.data["text/html"]


def test_dashboard_on_the_real_trainer(tmp_path):
    """The duck-typed contract against A2TGPOTrainer itself (a random 2-layer model, 2 steps + an eval)."""
    from a2tgpo_lab import preset
    from a2tgpo_lab.envs.search import bundled_search_tool
    from a2tgpo_lab.envs.world import load_split
    from a2tgpo_lab.tiny import build_tiny_qwen, build_word_tokenizer
    from a2tgpo_lab.trainer import A2TGPOTrainer
    from a2tgpo_lab.viz.dashboard import RECORD_VIEWS

    train, dev = load_split("train")[:8], load_split("dev")[:2]
    tokenizer = build_word_tokenizer([e.question + " " + " ".join(e.answers) for e in train + dev])
    model = build_tiny_qwen(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    cfg = preset("a2tgpo", max_steps=2, num_prompts_per_step=2, num_generations=2, max_turns=2, eval_steps=1,
                 eval_num_prompts=2, save_steps=100, max_new_tokens_per_turn=6, output_dir=str(tmp_path), seed=0)
    trainer = A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer, train_examples=train, eval_examples=dev,
                            tool=bundled_search_tool(topk=1))
    dash = Dashboard(trainer, update_interval=0.0)
    trainer.train_in_background().join()
    assert dash._error == "" and [r.step for r in dash.records] == [0, 1] and "finished" in dash.status.value
    assert ig_trace_rollouts(dash.record_plot.figure, trainer.records[-1])
    assert "finished step 2 / 2" in dash.status.value and dash.pause_button.disabled
    em = next(t for t in dash.history_plot.figure.data if t.meta["metric"] == "eval/em")
    assert len(em.y) == 1                                  # the evaluation after step 0, merged into the history
    for index, name in enumerate([*RECORD_VIEWS, "rollouts"]):
        dash.record_tabs.selected_index = index            # every tab draws a real record
    assert dash.inspector.record is trainer.records[-1] and dash._error == ""


def test_json_safe_payloads_have_no_nan_and_sync_rebuilds_changed_traces():
    import plotly.graph_objects as go

    from a2tgpo_lab.viz.live import FigureOutput, figure_widget, json_safe, sync_figure

    assert json_safe({"y": np.array([1.0, np.nan]), "z": np.array([[np.inf, 2]]), "n": np.int64(3)}) == {
        "y": [1.0, None], "z": [[None, 2]], "n": 3}
    widget = figure_widget()
    sync_figure(widget, go.Figure(go.Heatmap(z=[[np.nan, 1.0]])))
    sync_figure(widget, go.Figure([go.Scatter(y=[np.nan, 2.0], name="a"), go.Bar(y=[1.0])], layout=dict(width=500)))
    assert [t.type for t in widget.data] == ["scatter", "bar"] and list(widget.data[0].y) == [None, 2.0]
    json.dumps(widget._widget_data, allow_nan=False)           # the whole state a late plot starts from
    assert widget._widget_data[0]["y"] == [None, 2.0] and widget.layout.width is None
    output = FigureOutput()
    output.show(go.Figure(go.Scatter(y=[np.nan, 1.0])))
    json.dumps(output.widget.outputs[0]["data"][PLOTLY_MIME], allow_nan=False)


def test_when_finished_shows_results_below_the_dashboard(run):
    import plotly.graph_objects as go

    trainer = FakeTrainer(run)
    dash = Dashboard(trainer, background=False)
    dash.when_finished(lambda t: [go.Figure(go.Scatter(y=[len(t.records)])), "<b>done</b>"])
    trainer.train()
    figure, text = dash.results.outputs
    assert figure["data"][PLOTLY_MIME]["data"][0]["y"] == [len(run)] and text["data"]["text/html"] == "<b>done</b>"


def test_clip_explorer_opens_where_adaptive_and_fixed_differ(record):
    from a2tgpo_lab.viz.clip_explorer import most_adaptive_turn

    explorer = ClipExplorer(record=record)
    i, k = explorer.rollout.value, explorer.turn.value
    assert (i, k) == most_adaptive_turn(record)
    trained = np.isfinite(record.advantages)
    assert abs(record.clip_factor[i, k - 1] - 1) == np.abs(np.where(trained, record.clip_factor, 1) - 1).max() > 0
    assert ClipExplorer().record_menus.layout.display == "none"        # no empty menus without a record


def test_inspector_probe_line_uses_the_viewed_rollouts_gold(record):
    from a2tgpo_lab.viz.inspector import probe_text_for

    other = next(i for i in range(len(record.questions)) if record.answers[i][0] != record.answers[0][0])
    text = probe_text_for(record, other)
    assert text.endswith(record.probe_text[record.probe_text.rfind(record.answers[0][0]) + len(record.answers[0][0]):])
    assert record.answers[other][0] in text and record.answers[0][0] not in text
    assert html.escape(text) in rollout_html(record, other)


def test_real_trainer_pauses_between_steps_and_says_so(tmp_path):
    """pause() takes effect after the current step; on_pause fires once the trainer waits; resume finishes."""
    from a2tgpo_lab import preset
    from a2tgpo_lab.envs.search import bundled_search_tool
    from a2tgpo_lab.envs.world import load_split
    from a2tgpo_lab.tiny import build_tiny_qwen, build_word_tokenizer
    from a2tgpo_lab.trainer import A2TGPOTrainer

    train = load_split("train")[:4]
    tokenizer = build_word_tokenizer([e.question + " " + " ".join(e.answers) for e in train])
    model = build_tiny_qwen(tokenizer, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    cfg = preset("a2tgpo", max_steps=3, num_prompts_per_step=1, num_generations=2, max_turns=2, eval_steps=100,
                 save_steps=100, max_new_tokens_per_turn=6, output_dir=str(tmp_path), seed=0)
    trainer = A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer, train_examples=train, eval_examples=train[:1],
                            tool=bundled_search_tool(topk=1))
    waiting = threading.Event()

    class PauseAfterFirstStep:
        def on_step_end(self, trainer, record):
            if record.step == 0:
                trainer.pause()

        def on_pause(self, trainer):
            waiting.set()

    trainer.add_callback(PauseAfterFirstStep())
    dash = Dashboard(trainer, background=False)
    thread = trainer.train_in_background()
    assert waiting.wait(timeout=120)
    assert trainer.paused and trainer.global_step == 1 and "paused after step 1" in dash.status.value
    dash.resume_button.click()
    thread.join(timeout=120)
    assert not thread.is_alive() and trainer.global_step == 3 and "finished step 3 / 3" in dash.status.value


def test_an_evaluation_after_training_reaches_the_status(run):
    trainer = FakeTrainer(run)
    dash = Dashboard(trainer, update_interval=0.0, background=True)
    trainer.train()
    dash._refresher.join()
    trainer.history[-1]["eval/em"] = 0.875          # what trainer.evaluate() merges into the last row
    trainer.emit("on_evaluate", {"eval/em": 0.875})
    assert f"finished step {len(run)} / {len(run)}" in dash.status.value
    assert f"eval/em 0.875 (at step {run[-1].step})" in dash.status.value
