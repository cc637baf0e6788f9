"""The synthetic sample record and the pure figure builders: figure data checked against the record."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from a2tgpo_lab.config import preset
from a2tgpo_lab.viz import figures as F
from a2tgpo_lab.viz.sample import sample_run, sample_step_record
from a2tgpo_lab.viz.static import figure_html, show


@pytest.fixture(scope="module")
def record():
    return sample_step_record(seed=0)


@pytest.fixture(scope="module")
def run():
    return sample_run(n_steps=8, seed=1, eval_every=3, n_prompts=2, group_size=4)


def nan_equal(a, b) -> bool:
    return np.allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True, rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- the sample record


def test_sample_is_deterministic_and_consistent(record):
    again = sample_step_record(seed=0)
    assert nan_equal(again.advantages, record.advantages) and again.tokens == record.tokens
    assert not nan_equal(sample_step_record(seed=1).p, record.p)
    B, T = len(record.questions), record.max_turns
    assert (B, T) == (24, 4) and record.p.shape == (B, T + 1)
    for i in range(B):
        k = int(record.num_tool_turns[i])
        # IG is the difference of consecutive probe probabilities, NaN past the last tool turn.
        assert nan_equal(record.ig[i, :k], np.diff(record.p[i, :k + 1]))
        assert np.isnan(record.ig[i, k:]).all()
        # One advantage per turn up to the terminal turn K_i + 1.
        assert np.isfinite(record.advantages[i, :k + 1]).all() and np.isnan(record.advantages[i, k + 1:]).all()
        lengths = {len(record.tokens[i]), *(len(a) for a in (record.input_ids[i], record.loss_mask[i],
                                                              record.turn_ids[i], record.ratio[i], record.clipped[i],
                                                              record.token_advantage[i]))}
        assert len(lengths) == 1
        assert len(record.tool_calls[i]) == len(record.turn_texts[i])     # the query, or None, per turn
        mask = record.loss_mask[i]
        assert (record.turn_ids[i][mask] >= 1).all() and (record.turn_ids[i][~mask] == 0).all()
        assert np.isnan(record.ratio[i][~mask]).all() and np.isfinite(record.ratio[i][mask]).all()


def test_sample_shows_constant_and_small_groups(record):
    # Prompt 0's rollouts all issue the same first query: bit-identical IG, so its turn-1 group is constant.
    first = record.prompt_index == 0
    assert np.ptp(record.ig[first, 0]) == 0 and (record.ig_norm[first, 0] == 0).all()
    assert record.zero_std_group_frac > 0
    # Deep turns are reached by few rollouts.
    sizes_by_turn = [record.group_size[:, j][record.group_size[:, j] > 0].mean() for j in range(2)]
    assert sizes_by_turn[0] > sizes_by_turn[1]
    assert set(record.end_reason) >= {"answer"} and len(set(record.end_reason)) >= 2


def test_sample_clip_flags_follow_the_loss_rule(record):
    """+1 only where A > 0 and s > hi, −1 only where A < 0 and s < lo (and at least one of each here)."""
    seen = set()
    for i in range(len(record.questions)):
        mask, turns, flags = record.loss_mask[i], record.turn_ids[i], record.clipped[i]
        s, adv = record.ratio[i], record.token_advantage[i]
        low, high = record.clip_low[i, turns - 1], record.clip_high[i, turns - 1]
        expected = np.where(mask & (adv > 0) & (s > high), 1, np.where(mask & (adv < 0) & (s < low), -1, 0))
        assert (flags == expected).all()
        seen |= set(flags.tolist())
    assert seen == {-1, 0, 1}


@pytest.mark.parametrize("name", ["igpo", "grpo", "a2tgpo_fixed_clip"])
def test_sample_follows_the_preset(name):
    record = sample_step_record(seed=2, n_prompts=2, group_size=3, cfg=preset(name))
    assert record.estimator == name
    if name == "grpo":
        assert np.isnan(record.ig_norm).all()
    if name != "a2tgpo":
        assert np.allclose(record.clip_factor[np.isfinite(record.clip_factor)], 1.0)


def test_sample_rejects_bad_arguments():
    with pytest.raises(ValueError, match="group_size"):
        sample_step_record(group_size=1)
    with pytest.raises(ValueError, match="max_turns"):
        sample_step_record(max_turns=1)
    with pytest.raises(ValueError, match="skill"):
        sample_step_record(skill=2.0)


def test_sample_run_improves_and_logs_eval(run):
    assert [r.step for r in run] == list(range(8))
    assert [("eval/em" in r.metrics) for r in run] == [False, False, True, False, False, True, False, False]


# ----------------------------------------------------------------------------- IG figures


def test_ig_per_rollout_traces_equal_the_record(record):
    fig = F.ig_per_rollout_figure(record)
    with_turns = [i for i in range(len(record.questions)) if record.num_tool_turns[i] > 0]
    assert sorted(t.meta["rollout"] for t in fig.data) == with_turns
    for trace in fig.data:
        i = trace.meta["rollout"]
        k = int(record.num_tool_turns[i])
        assert nan_equal(trace.y, record.ig[i, :k])
        assert np.allclose(np.round(trace.x), np.arange(1, k + 1))
    probe = F.ig_per_rollout_figure(record, value="p")
    for trace in probe.data:
        i = trace.meta["rollout"]
        assert nan_equal(trace.y, record.p[i, :int(record.num_tool_turns[i]) + 1])
    with pytest.raises(ValueError, match="value"):
        F.ig_per_rollout_figure(record, value="advantages")


def test_group_heatmap_z_is_the_record_grouped_by_prompt(record):
    fig = F.group_heatmap_figure(record)
    raw, normalized = [t for t in fig.data if t.type == "heatmap"]
    order = np.argsort(record.prompt_index, kind="stable")
    width = int(record.num_tool_turns.max())
    assert nan_equal(raw.z, record.ig[order, :width])
    assert nan_equal(normalized.z, record.ig_norm[order, :width])
    assert list(normalized.y) == [f"q{record.prompt_index[i]} · r{i}" for i in order]
    sizes = record.group_size[order, :width]
    assert [[c for c in row] for row in normalized.text] == [[f"n={n}" if n else "" for n in row] for row in sizes]
    small = next(t for t in fig.data if (t.name or "").startswith("group too small"))
    expected_small = {(labels, k + 1) for (r, k) in zip(*np.nonzero((sizes > 0) & (sizes < 2)))
                      for labels in [normalized.y[r]]}
    assert {(y, round(x - 0.3)) for x, y in zip(small.x, small.y)} == expected_small
    constant = next(t for t in fig.data if (t.name or "").startswith("constant group"))
    prompt0_turn1 = {(normalized.y[r], 1) for r in range(len(order)) if record.prompt_index[order[r]] == 0}
    assert prompt0_turn1 <= {(y, round(x - 0.3)) for x, y in zip(constant.x, constant.y)}
    # One separator line per prompt boundary, on each of the two panels.
    assert len(fig.layout.shapes) == 2 * (len(set(record.prompt_index)) - 1)


def test_group_normalization_figure(record):
    members = np.nonzero((record.prompt_index == 1) & np.isfinite(record.ig[:, 0]))[0]
    fig = F.group_normalization_figure(record, prompt=1, turn=1)
    before, after = fig.data
    assert nan_equal(before.y, record.ig[members, 0]) and nan_equal(after.y, record.ig_norm[members, 0])
    assert f"n = {members.size}" in fig.layout.title.text
    assert np.isclose(np.mean(after.y), 0, atol=1e-9) and np.isclose(np.std(after.y), 1, atol=1e-4)
    assert "constant" in F.group_normalization_figure(record, prompt=0, turn=1).layout.title.text
    with pytest.raises(ValueError, match="groups present"):
        F.group_normalization_figure(record, prompt=0, turn=4)


def test_pooled_vs_turn_group(record):
    fig = F.pooled_vs_turn_group_figure(record, prompt=2)
    rows = np.nonzero(record.prompt_index == 2)[0]
    panels = {"x": [], "x2": [], "x3": []}
    for trace in fig.data:
        if (trace.name or "").startswith("turn"):
            panels[trace.xaxis].append((trace, int(round(np.mean(trace.x)))))

    def panel_values(axis):
        out = np.full((rows.size, record.max_turns), np.nan)
        for trace, k in panels[axis]:
            for i, y in zip(trace.customdata, trace.y):
                out[list(rows).index(i), k - 1] = y
        return out

    assert nan_equal(panel_values("x"), record.ig[rows])
    assert nan_equal(panel_values("x3"), record.ig_norm[rows])
    pooled = panel_values("x2")
    finite = pooled[np.isfinite(pooled)]
    # The pooled z-score is over every turn of the prompt: mean 0, std 1 across all of them.
    assert np.isclose(finite.mean(), 0, atol=1e-9) and np.isclose(finite.std(), 1, atol=1e-4)
    with pytest.raises(ValueError, match="prompt=9"):
        F.pooled_vs_turn_group_figure(record, prompt=9)


# ----------------------------------------------------------------------------- advantages


def worked_example_record():
    """ALGORITHM.md §8 after normalization: Ĩ, õ and K of its three rollouts (T = 4)."""
    nan = math.nan
    return SimpleNamespace(
        ig=np.zeros((3, 4)), ig_norm=np.array([[1.3363, 1.0, nan, nan], [-1.0690, nan, nan, nan],
                                               [-0.2673, -1.0, 0.0, nan]]),
        outcome_norm=np.array([0.7071, -1.4142, 0.7071]), num_tool_turns=np.array([2, 1, 3]),
        advantages=None, clip_low=None, clip_high=None, prompt_index=np.zeros(3, int), tokens=[[]] * 3,
        config={"advantage_estimator": "a2tgpo", "gamma": 1.0}, step=0)


def test_advantages_by_rescale_matches_the_worked_example():
    variants = F.advantages_by_rescale(worked_example_record())
    scaled, unscaled = variants["÷ √n"], variants["no rescale"]
    assert np.allclose(scaled[0, :3], [2.3591, 1.7071, 0.7071], atol=1e-3)       # ALGORITHM.md §9
    assert np.allclose(scaled[1, :2], [-2.4832, -1.4142], atol=1e-3)
    assert np.allclose(scaled[2], [-0.0245, 0.0, 0.7071, 0.7071], atol=1e-3)
    assert np.allclose(unscaled[0, :3], [3.0434, 1.7071, 0.7071], atol=1e-3)


def test_advantage_depth_figure_matches_the_record(record):
    fig = F.advantage_depth_figure(record)
    by_variant = {t.meta["variant"]: t for t in fig.data}
    for label, stored in (("÷ √n", record.advantages), ("no rescale", record.advantages_unscaled)):
        trace = by_variant[label]
        rows, cols = np.nonzero(np.isfinite(stored))
        assert np.allclose(trace.y, stored[rows, cols]) and list(trace.x) == list(cols + 1)
    igpo = sample_step_record(seed=3, n_prompts=2, group_size=4, cfg=preset("igpo"))
    unscaled = {t.meta["variant"]: t for t in F.advantage_depth_figure(igpo).data}["no rescale"]
    assert np.allclose(unscaled.y, igpo.advantages[np.isfinite(igpo.advantages)])
    assert "no rescale" in F.advantage_depth_figure(igpo).layout.title.text


# ----------------------------------------------------------------------------- clipping


def test_clip_range_bars_span_the_record_bounds(record):
    bar = F.clip_range_figure(record).data[0]
    finite = np.isfinite(record.clip_low)
    assert np.allclose(bar.base, record.clip_low[finite])
    assert np.allclose(np.asarray(bar.base) + np.asarray(bar.y), record.clip_high[finite])
    assert np.allclose(bar.marker.color, record.clip_factor[finite])


def test_ratio_figure_marks_exactly_the_clipped_tokens(record):
    fig = F.ratio_figure(record)
    for flag in (1, -1):
        trace = next(t for t in fig.data if (t.meta or {}).get("clipped") == flag)
        shown = {tuple(int(v) for v in row) for row in trace.customdata}
        expected = {(i, int(l)) for i in range(len(record.questions)) for l in np.nonzero(record.clipped[i] == flag)[0]}
        assert shown == expected and expected
    ratios = next(t for t in fig.data if t.name == "ratio s")
    assert np.allclose(ratios.y, np.concatenate([r[m] for r, m in zip(record.ratio, record.loss_mask)]))
    one = F.ratio_figure(record, rollout=5)
    assert np.allclose(next(t for t in one.data if t.name == "ratio s").y, record.ratio[5][record.loss_mask[5]])
    with pytest.raises(ValueError, match="rollout=99"):
        F.ratio_figure(record, rollout=99)


def test_clip_fraction_figure(run):
    from_records = F.clip_fraction_figure(run)
    from_history = F.clip_fraction_figure([r.metrics for r in run])
    assert [t.meta["metric"] for t in from_records.data] == [t.meta["metric"] for t in from_history.data]
    for trace in from_records.data:
        key = trace.meta["metric"]
        assert list(trace.y) == [r.metrics[key] for r in run if key in r.metrics]
    assert "turn/1/clip_frac" in [t.meta["metric"] for t in from_records.data]
    assert F.clip_fraction_figure([]).layout.annotations[0].text == "no clip metrics logged yet"


def test_surrogate_curve_is_the_clipped_objective():
    s = np.linspace(0.9, 1.1, 41)
    low, high = 0.97, 1.04
    for advantage in (1.5, -0.7):
        objective, gradient, clipped = F.surrogate_curve(s, advantage, low, high)
        assert np.allclose(objective, np.minimum(s * advantage, np.clip(s, low, high) * advantage))
        flat = (s > high) if advantage > 0 else (s < low)
        assert np.allclose(gradient[flat], 0) and np.allclose(gradient[~flat], s[~flat] * advantage)
        assert (clipped != 0).tolist() == flat.tolist()
    with pytest.raises(ValueError, match="positive"):
        F.surrogate_curve([1.0, -1.0], 1.0, low, high)


def test_clip_surrogate_figure_bounds_and_dead_zone():
    ig_norm, beta, eps_low, eps_high = 1.3, 0.3, 3e-3, 4e-3
    fig = F.clip_surrogate_figure(ig_norm, 1.0, beta, eps_low, eps_high, ratios=[0.999, 1.006])
    c = 1 + beta * (2 / (1 + math.exp(-ig_norm)) - 1)
    assert np.isclose(fig.layout.meta["clip_factor"], c)
    assert np.allclose(fig.layout.meta["adaptive_bounds"], (1 - c * eps_low, 1 + c * eps_high))
    assert np.allclose(fig.layout.meta["fixed_bounds"], (1 - eps_low, 1 + eps_high))
    points = [t for t in fig.data if (t.meta or {}).get("curve") == "ratios"]
    assert len(points) == 2 and np.allclose(points[1].y, [0.999, 1 + c * eps_high])
    red = [s for s in fig.layout.shapes if s.fillcolor and s.fillcolor.startswith("rgba(214")]
    assert red and all(s.x0 >= 1 for s in red)          # A > 0: the gradient vanishes above the band
    negative = F.clip_surrogate_figure(ig_norm, -1.0, beta, eps_low, eps_high)
    red = [s for s in negative.layout.shapes if s.fillcolor and s.fillcolor.startswith("rgba(214")]
    assert red and all(s.x1 <= 1 for s in red)          # A < 0: below it
    with pytest.raises(ValueError, match="advantage=0"):
        F.clip_surrogate_figure(0.0, 0.0)


# ----------------------------------------------------------------------------- training curves and static output


def test_training_curves_follow_the_history(run):
    history = [r.metrics for r in run]
    fig = F.training_curves_figure(history)
    by_metric = {t.meta["metric"]: t for t in fig.data}
    assert list(by_metric["reward"].y) == [row["reward"] for row in history]
    assert list(by_metric["eval/em"].x) == [row["step"] for row in history if "eval/em" in row]
    empty = F.training_curves_figure([])
    assert not empty.data and sum(a.text.endswith(": not logged yet") for a in empty.layout.annotations) == 6
    with pytest.raises(TypeError, match=r"history\[1\]"):
        F.training_curves_figure([{"reward": 1.0}, 3.0])


def test_bad_record_is_named():
    with pytest.raises(TypeError, match="group_heatmap_figure needs a StepRecord"):
        F.group_heatmap_figure({"ig": []})


def test_static_output_without_a_frontend(tmp_path, record):
    fig = F.clip_range_figure(record)
    assert "plotly" in figure_html(fig) and "<div" in figure_html(fig)
    path = show(fig, path=tmp_path / "fig.html")
    assert path.read_text().startswith("<!DOCTYPE html>") and "clip band" in path.read_text()
    with pytest.raises(TypeError, match="plotly Figure"):
        show(42, path=tmp_path / "x.html")


@pytest.mark.parametrize("name", ["grpo", "igpo", "a2tgpo_pooled", "a2tgpo_no_rescale"])
def test_every_view_draws_records_of_every_preset(name):
    """GRPO records have no IG at all, IGPO ones pooled groups: no view may break on them."""
    import plotly.graph_objects as go

    from a2tgpo_lab.viz.inspector import rollout_html

    record = sample_step_record(seed=5, n_prompts=2, group_size=4, cfg=preset(name))
    builders = (F.ig_per_rollout_figure, F.group_heatmap_figure, F.advantage_depth_figure, F.clip_range_figure,
                F.ratio_figure, F.pooled_vs_turn_group_figure)
    for build in builders:
        assert isinstance(build(record), go.Figure)
    assert "rollout 0" in rollout_html(record, 0)
    title = F.group_heatmap_figure(record).layout.annotations[1].text
    assert ("pooled" in title) == (name in ("igpo", "a2tgpo_pooled"))


def test_importing_the_views_stays_light():
    """``import a2tgpo_lab.viz`` must not pull in plotly or ipywidgets (they load on first use)."""
    import subprocess
    import sys

    code = "import sys, a2tgpo_lab.viz; print('plotly' in sys.modules, 'ipywidgets' in sys.modules)"
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=repo)
    assert out.stdout.split() == ["False", "False"]


# ----------------------------------------------------------------------------- the paper's figures


def test_credit_flow_recomputes_both_estimators_on_the_same_batch(record):
    import torch

    from a2tgpo_lab.advantages import compute_advantages

    fig = F.credit_flow_figure(record)
    by_panel = {(t.meta["panel"], t.meta.get("method")): t for t in fig.data}
    for name in ("igpo", "a2tgpo"):
        expected = compute_advantages(preset(name), torch.as_tensor(record.ig), torch.as_tensor(record.outcome_reward),
                                      torch.as_tensor(record.prompt_index), torch.as_tensor(record.num_tool_turns))
        trace = by_panel[("advantage", name)]
        columns = [expected.advantages[:, k - 1].numpy() for k in trace.customdata]
        assert np.allclose(trace.y, [np.nanmean(c) for c in columns])
        assert np.allclose(trace.error_y.array, [np.nanstd(c) for c in columns])
    igpo, a2 = by_panel[("advantage", "igpo")], by_panel[("advantage", "a2tgpo")]
    deltas = {a.x: a.text for a in fig.layout.annotations if a.text.startswith("ΔĀ")}
    first = list(a2.customdata).index(1)
    assert deltas[1] == f"ΔĀₜ={a2.y[first] - igpo.y[list(igpo.customdata).index(1)]:+.2f}"
    raw = by_panel[("ig", None)]
    assert np.isclose(raw.y[0], np.nanmean(record.ig[:, 0]))
    grpo = record.__class__(**{**record.__dict__, "ig": np.full_like(record.ig, np.nan)})
    with pytest.raises(ValueError, match="no IG"):
        F.credit_flow_figure(grpo)


def rows_with(**series):
    """Metric rows 0..n-1 holding the given series."""
    n = len(next(iter(series.values())))
    return [{"step": float(i), **{key.replace("__", "/"): values[i] for key, values in series.items()}}
            for i in range(n)]


def test_advantage_range_and_response_length_draw_min_mean_max():
    history = rows_with(advantages__min=[-2.0, -1.5], advantages__mean=[0.0, 0.1], advantages__max=[2.0, 1.0],
                        completions__min_length=[5, 6], completions__mean_length=[9.5, 10],
                        completions__max_length=[20, 18])
    adv = {t.meta["metric"]: list(t.y) for t in F.advantage_range_figure({"a": history, "b": history}).data}
    assert adv == {"advantages/min": [-2.0, -1.5], "advantages/max": [2.0, 1.0], "advantages/mean": [0.0, 0.1]}
    assert len(F.advantage_range_figure({"a": history, "b": history}).data) == 6       # three per run
    lengths = {t.meta["metric"]: list(t.y) for t in F.response_length_figure(history).data}
    assert lengths["completions/max_length"] == [20, 18] and lengths["completions/min_length"] == [5, 6]


def test_step_time_splits_by_phase_and_falls_back_to_whole_steps():
    split = rows_with(time__generation=[1.0, 2.0], time__ig_forward=[0.5, 0.5], time__old_logprob=[0.0, 0.0],
                      time__actor_update=[3.0, 2.5], time__other=[0.1, 0.2], time__step_s=[4.6, 5.2])
    fig = F.step_time_figure(split)
    assert fig.layout.barmode == "stack"
    assert [t.meta["metric"] for t in fig.data] == ["time/generation", "time/ig_forward", "time/old_logprob",
                                                    "time/actor_update", "time/other"]
    assert np.allclose(np.sum([t.y for t in fig.data], axis=0), [4.6, 5.2])
    whole = F.step_time_figure(rows_with(time__step_s=[4.0, 5.0]))
    assert [t.meta["metric"] for t in whole.data] == ["time/step_s"] and "no phase split" in whole.layout.title.text
    with pytest.raises(ValueError, match="one run"):
        F.step_time_figure({"a": split, "b": split})


def test_entropy_prefers_the_exact_entropy_and_learning_curve_keeps_every_eval():
    exact = rows_with(entropy=[2.0, 1.8], entropy__sampled_nll=[2.1, 1.9])
    sampled = rows_with(entropy__sampled_nll=[3.0, float("nan"), 2.5])
    fig = F.entropy_figure({"exact": exact, "sampled": sampled})
    assert [(t.name, t.meta["metric"], list(t.y)) for t in fig.data] == [
        ("exact", "entropy", [2.0, 1.8]), ("sampled", "entropy/sampled_nll", [3.0, 2.5])]
    history = rows_with(reward=[0.1] * 6)
    for step, em in ((0, 0.2), (2, 0.4), (4, 0.5), (5, 0.55)):
        history[step]["eval/em"] = em
    curve = F.learning_curve_figure(history).data[0]
    assert list(curve.x) == [0, 2, 4, 5] and list(curve.y) == [0.2, 0.4, 0.5, 0.55]


def write_run(path: Path, beta: float, final_em: float) -> Path:
    import json

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"clip_beta": beta}))
    (path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "reward": 0.5}) + "\n" for s in range(3)))
    (path / "eval.jsonl").write_text(json.dumps({"step": 1, "eval/em": 0.1}) + "\n"
                                     + json.dumps({"step": 3, "eval/em": final_em}) + "\n")
    return path


def test_beta_sweep_reads_run_dirs_and_averages_seeds(tmp_path):
    dirs = [write_run(tmp_path / f"b{beta}_s{seed}", beta, em)
            for beta, seed, em in ((0.1, 0, 0.3), (0.1, 1, 0.5), (0.3, 0, 0.6))]
    from a2tgpo_lab.viz.runs import load_run

    rows = load_run(dirs[0])
    assert [r.get("eval/em") for r in rows] == [None, None, None, 0.1, 0.3]
    fig = F.beta_sweep_figure(dirs)
    mean = next(t for t in fig.data if t.name == "mean over runs")
    assert list(mean.x) == [0.1, 0.3] and np.allclose(mean.y, [0.4, 0.6])
    same = F.beta_sweep_figure({0.1: [load_run(dirs[0]), load_run(dirs[1])], 0.3: load_run(dirs[2])})
    assert np.allclose(next(t for t in same.data if t.name == "mean over runs").y, [0.4, 0.6])
    with pytest.raises(ValueError, match="clip_beta"):
        F.beta_sweep_figure([load_run(dirs[0])])          # a history alone does not say its β
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        load_run(tmp_path)


def test_tool_calls_histogram_shares(run):
    fig = F.tool_calls_histogram_figure({"first": run[0], "last": run[-3:]})
    first, last = fig.data
    assert np.isclose(sum(first.y), 1.0) and np.isclose(sum(last.y), 1.0)
    counts = np.bincount(run[0].num_tool_turns, minlength=len(first.x))
    assert np.allclose(first.y, counts / counts.sum())
    assert "n=" + str(3 * len(run[-1].questions)) in last.name


def test_ig_misleads_finds_turns_whose_ig_points_against_the_outcome(record):
    found = F.ig_misleads(record)
    for item in found:
        i, j = item["rollout"], item["turn"] - 1
        correct = record.outcome_reward[i] > 0
        assert (record.ig[i, j] < 0) if correct else (record.ig[i, j] > 0)
        assert item["kind"] == ("correct rollout, IG < 0" if correct else "wrong rollout, IG > 0")
    expected = sum(int(((record.outcome_reward[i] > 0) & (record.ig[i, :k] < 0)).sum()
                       + ((record.outcome_reward[i] <= 0) & (record.ig[i, :k] > 0)).sum())
                   for i, k in enumerate(record.num_tool_turns))
    assert len(found) == expected > 0
    ringed = F.ig_misleads_figure(record).data[-1]
    assert ringed.meta["misleading"] == len(found) and ringed.text[0] == f"r{found[0]['rollout']}·t{found[0]['turn']}"


def test_training_curves_axes_are_legible():
    history = rows_with(reward=[0.1, 0.2], clip_ratio__region_mean=[0.0, 0.0])
    fig = F.training_curves_figure(history)
    assert fig.layout.yaxis4.range == (0, 0.05)              # an all-zero share is not drawn on ±1
    assert all(fig.layout[f"legend{'' if n == 1 else n}"].yanchor == "bottom" for n in range(1, 7))  # above panels
    assert "_{" not in F.ig_per_rollout_figure(sample_step_record(seed=1)).layout.yaxis.title.text
