# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 06 · Compare and ablate: GRPO vs IGPO vs A²TGPO, on the same budget
#
# **What you'll learn**
#
# - the presets, and what each of the three A²TGPO changes is;
# - how to run them on the same budget (same model, data, seeds, steps and evaluation questions);
# - how to read the result honestly: small runs are noisy, an exact match on a few hundred questions
#   has a standard error of a few points, and seeds disagree.

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one

# %%
PRESETS = ["grpo", "igpo", "a2tgpo", "a2tgpo_pooled", "a2tgpo_no_rescale", "a2tgpo_fixed_clip"]
STEPS = 1 if SMOKE else 20
SEEDS = [0] if SMOKE else [0, 1]
PROMPTS, GENERATIONS = (2, 4) if SMOKE else (8, 8)
EVAL_PROMPTS = 8 if SMOKE else 300

# %%
import numpy as np
from IPython.display import display

import a2tgpo_lab as lab
from a2tgpo_lab import viz
from a2tgpo_lab.viz import show

# %% [markdown]
# ## 1. The presets
#
# | preset | IG | normalization | accumulation | clip |
# |---|---|---|---|---|
# | `grpo` | — | outcome z-score per prompt | outcome broadcast to all turns | fixed |
# | `igpo` | yes | pooled over all turns of the prompt | discounted sum, no rescale | fixed |
# | `a2tgpo` | yes | per (prompt, turn index) | discounted sum / √n | adaptive |
# | `a2tgpo_pooled` | yes | **pooled** | discounted sum / √n | adaptive |
# | `a2tgpo_no_rescale` | yes | per (prompt, turn index) | **no rescale** | adaptive |
# | `a2tgpo_fixed_clip` | yes | per (prompt, turn index) | discounted sum / √n | **fixed** |
#
# Each ablation switches one A²TGPO change off. A preset is only a set of config fields:

# %%
for name in PRESETS:
    print(f"{name:18s} {lab.PRESETS[name]}")

# %% [markdown]
# ## 2. Same budget for everyone
#
# Every run starts from the same bundled model, sees the same training questions in the same order
# (a function of the seed), takes `STEPS` steps of `PROMPTS × GENERATIONS` rollouts, and is evaluated
# greedily on the same dev questions. The untrained model's score is measured once: it is the same for
# all presets.

# %%
import tempfile

tool = lab.bundled_search_tool()
train_questions, dev_questions = lab.load_split("train"), lab.load_split("dev")[:EVAL_PROMPTS]
model, tokenizer = lab.load_model_and_tokenizer(lab.preset("a2tgpo"))
base_em = lab.evaluate_agent(model, tokenizer, dev_questions, tool, lab.preset("a2tgpo"))["eval/em"]
print(f"untrained model: dev EM {base_em:.3f} on {len(dev_questions)} questions")

results, histories = [], {}
for name in PRESETS:
    for seed in SEEDS:
        cfg = lab.preset(name, seed=seed, max_steps=STEPS, num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                         eval_steps=10_000, save_steps=10_000, output_dir=tempfile.mkdtemp(prefix=f"a2tgpo_{name}_"))
        trainer = lab.A2TGPOTrainer(cfg, train_examples=train_questions, eval_examples=dev_questions, tool=tool)
        trainer.train()
        em = trainer.evaluate()["eval/em"]
        step_seconds = [row["time/step_s"] for row in trainer.history if "time/step_s" in row]
        results.append(dict(preset=name, seed=seed, em=em, seconds_per_step=float(np.median(step_seconds))))
        histories[(name, seed)] = list(trainer.history)

# %% [markdown]
# ## 3. The table, and how to read it

# %%
grpo_speed = np.mean([r["seconds_per_step"] for r in results if r["preset"] == "grpo"])   # median step time per run
se = np.sqrt(base_em * (1 - base_em) / len(dev_questions))
print(f"untrained EM {base_em:.3f}; standard error of one EM on {len(dev_questions)} questions ≈ {se:.3f}\n")
print(f"{'preset':18s} {'EM per seed':>24s} {'mean Δ vs untrained':>20s} {'step time vs grpo':>18s}")
summary = {}
for name in PRESETS:
    rows = [r for r in results if r["preset"] == name]
    ems = np.array([r["em"] for r in rows])
    summary[name] = ems
    per_seed = " ".join(f"{em:.3f}" for em in ems)
    speed = np.mean([r["seconds_per_step"] for r in rows]) / grpo_speed
    print(f"{name:18s} {per_seed:>24s} {ems.mean() - base_em:+20.3f} {speed:17.2f}×")

# %% [markdown]
# Before concluding anything:
#
# - **Noise of the measurement.** An exact match on $n$ questions is a proportion; its standard error is
#   $\sqrt{p(1-p)/n}$, about 0.03 at $p = 0.4$, $n = 300$. Two presets whose means differ by less than about
#   twice that are not distinguished by this run.
# - **Noise of training.** Different seeds see different questions and sample different rollouts; the
#   spread between seeds of the same preset is the yardstick for differences between presets. With 2 seeds
#   it is a rough one: use 3-5.
# - **Budget.** Equal steps is not equal compute: every estimator but GRPO pays for the IG probe (the last
#   column). Compare at equal wall-clock time too when that is what matters to you.
# - **Small models, short runs.** The bundled model and 20 steps show the mechanics, not the paper's
#   numbers. The smoke setting (1 step, 8 questions) only checks that the code runs: nothing can be read
#   from it.
#
# Every seed's EM (dots), their mean (bar), and the untrained score with its ±2 standard errors (band):

# %%
import plotly.graph_objects as go

figure = go.Figure()
figure.add_hrect(y0=base_em - 2 * se, y1=base_em + 2 * se, fillcolor="rgba(0,0,0,0.08)", line_width=0)
figure.add_hline(y=base_em, line=dict(color="black", dash="dash"), annotation_text="untrained ± 2 SE")
figure.add_trace(go.Bar(x=PRESETS, y=[summary[n].mean() for n in PRESETS], name="mean over seeds", opacity=0.6))
for seed in SEEDS:
    figure.add_trace(go.Scatter(x=PRESETS, y=[r["em"] for n in PRESETS for r in results if r["preset"] == n and r["seed"] == seed],
                                mode="markers", marker=dict(size=10), name=f"seed {seed}"))
figure.update_layout(template="plotly_white", height=380, yaxis_title="greedy dev exact match",
                     title=f"after {STEPS} steps of {PROMPTS}×{GENERATIONS} rollouts")
show(figure)

# %% [markdown]
# **Play with it**: any logged metric over training, averaged over seeds, one line per preset (e.g.
# `reward`, `num_turns/mean`, `search_calls/mean`, `ig/zero_std_group_frac`, `clip_ratio/region_mean`).

# %%
import ipywidgets as widgets


def curves(metric):
    """One line per preset: `metric` at each training step, averaged over the seeds."""
    figure = go.Figure()
    for name in PRESETS:
        per_seed = [[row.get(metric, np.nan) for row in histories[(name, seed)] if "time/step_s" in row] for seed in SEEDS]
        figure.add_trace(go.Scatter(x=list(range(STEPS)), y=np.nanmean(np.array(per_seed, dtype=float), axis=0),
                                    mode="lines+markers", name=name))
    figure.update_layout(template="plotly_white", height=360, xaxis_title="step", yaxis_title=metric,
                         title=f"{metric}, mean over {len(SEEDS)} seed(s)")
    return figure


metrics = sorted(k for k in histories[(PRESETS[0], SEEDS[0])][-1] if not k.startswith(("turn/", "eval/")))
chooser = widgets.Dropdown(options=metrics, value="reward", description="metric")
chosen = go.FigureWidget(curves("reward"))
chooser.observe(lambda change: viz.sync_figure(chosen, curves(change["new"])), names="value")
display(widgets.VBox([chooser, chosen]))

# %% [markdown]
# The reward curves without widgets (they stay in a saved notebook):

# %%
show(curves("reward"))

# %% [markdown]
# ## 4. Larger comparisons
#
# `benchmarks/compare_estimators.py` runs the same comparison from a terminal with more seeds and prints
# the table (EM before → after per seed, mean gain, step time relative to GRPO):
#
# ```bash
# python benchmarks/compare_estimators.py --presets grpo igpo a2tgpo a2tgpo_pooled a2tgpo_no_rescale a2tgpo_fixed_clip --seeds 0 1 2
# ```
