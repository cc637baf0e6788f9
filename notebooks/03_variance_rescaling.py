# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Variance rescaling: the same scale for every turn, however many terms follow it
#
# **What you'll learn**
#
# - how a turn's advantage sums the normalized rewards of that turn and every later one;
# - why that sum's spread grows with the number of terms, and how dividing by √n fixes it;
# - advantage spread vs turn depth with and without √n, on a real batch;
# - the discount γ and the exact-γ variant of the divisor.

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one

# %%
PROMPTS, GENERATIONS = (4, 6) if SMOKE else (8, 8)
SIMULATED = 2_000 if SMOKE else 20_000     # random rollouts for the variance check

# %%
import inspect

import torch
from IPython.display import Markdown, display

import a2tgpo_lab as lab
from a2tgpo_lab import viz
from a2tgpo_lab.viz import show


def show_source(function):
    """Display the source of a library function, so the code sits next to its equation."""
    display(Markdown(f"```python\n{inspect.getsource(function)}```"))


# %% [markdown]
# ## 1. The equation
#
# Rollout $i$'s reward terms are its normalized IG per tool turn followed by its normalized outcome:
# $\tilde r_i = (\tilde I_{i,1}, \dots, \tilde I_{i,K_i}, \tilde o_i)$. Turn $t$ gets
#
# $$A_{i,t} = \frac{\sum_{k=t}^{K_i+1} \gamma^{k-t}\, \tilde r_{i,k}}{\sqrt{K_i + 2 - t}}, \qquad t = 1, \dots, K_i + 1,$$
#
# the discounted sum of the terms from $t$ on, divided by the square root of how many terms were summed
# (default $\gamma = 1$). Every model token of turn $t$ receives $A_{i,t}$.
#
# Why divide: each $\tilde r$ is a z-score, roughly unit variance. A sum of $n$ independent unit-variance
# terms has standard deviation $\sqrt n$, so without the division (IGPO) the first turn of a 4-search
# rollout carries advantages about $\sqrt 5 \approx 2.2$ times wider than its answer turn, purely because
# of its position. The gradient then pushes hardest on early turns of long rollouts.

# %%
show_source(lab.reward_terms)

# %%
show_source(lab.accumulate)

# %% [markdown]
# ## 2. The worked example (ALGORITHM.md §8)

# %%
nan = float("nan")
ig_example = torch.tensor([[0.20, 0.40, nan], [0.05, nan, nan], [0.10, 0.05, 0.35]])
one_prompt, tool_turns = torch.tensor([0, 0, 0]), torch.tensor([2, 1, 3])
ig_norm, _, _, _ = lab.turn_group_normalize(ig_example, one_prompt)
outcome_norm = lab.normalize_outcomes(torch.tensor([1.0, 0.0, 1.0]), one_prompt)
terms = lab.reward_terms(ig_norm, outcome_norm, tool_turns)
rescaled, summed = lab.accumulate(terms, tool_turns, gamma=1.0, rescale="sqrt_n")
print("terms r̃ [B, T+1]:\n", terms.numpy().round(4))
print("discounted sums (IGPO's advantages):\n", summed.numpy().round(4))
print("÷ √n (A²TGPO; expected ≈ [1.7571, 1.2071, 0.7071], [−1.7559, −1.4142], [−0.2801, −0.1691, 0.5, 0.7071]):\n",
      rescaled.numpy().round(4))

# %% [markdown]
# ## 3. The variance argument, checked
#
# Random unit-normal terms for rollouts with 4 tool turns (5 terms each), accumulated by the library
# with each divisor; the standard deviation of $A_{i,t}$ at each turn:

# %%
import plotly.graph_objects as go

RESCALES = ("none", "sqrt_n", "exact_gamma")
generator = torch.Generator().manual_seed(0)
random_terms = torch.randn(SIMULATED, 5, generator=generator, dtype=torch.float64)
four_turns = torch.full((SIMULATED,), 4)


def spread_figure(gamma):
    figure = go.Figure()
    for rescale in RESCALES:
        advantages, _ = lab.accumulate(random_terms, four_turns, gamma=gamma, rescale=rescale)
        figure.add_trace(go.Scatter(x=list(range(1, 6)), y=advantages.std(dim=0).numpy(), mode="lines+markers",
                                    name=rescale))
    figure.update_layout(template="plotly_white", height=340, yaxis=dict(title="std of A_{i,t}", rangemode="tozero"),
                         xaxis=dict(title="turn t (5 = the answer turn)", dtick=1),
                         title=f"unit-variance terms, K = 4, γ = {gamma}")
    return figure


show(spread_figure(1.0))

# %% [markdown]
# ## 4. A real batch
#
# Real terms are not independent (a rollout's IG at consecutive turns is correlated, constant groups give
# zeros), so the √n correction is an approximation, but the depth effect is plain. One training step
# of the bundled model, and $A_{i,t}$ per depth both ways ($\sigma$ of each box printed above it):

# %%
import tempfile

questions = [q for q in lab.load_split("train") if q.qtype in ("chain2", "chain3")]
cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                 output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb03_"))
record = lab.A2TGPOTrainer(cfg, train_examples=questions).step()
show(viz.advantage_depth_figure(record))

# %% [markdown]
# ## 5. The discount γ and the exact-γ divisor
#
# With $\gamma < 1$ later terms count less, and the standard deviation of $\sum_{j<n} \gamma^j x_j$ is
# $\sqrt{\sum_{j<n} \gamma^{2j}}$, smaller than $\sqrt n$. So √n over-shrinks long sums when $\gamma < 1$.
# `rescale="exact_gamma"` divides by the exact value (the same as √n at $\gamma = 1$); `rescale="none"` is
# IGPO. **Play with it**: move γ and watch the three divisors on random terms (top) and the real batch
# (bottom, √n vs none at that γ).

# %%
import dataclasses

import ipywidgets as widgets

def depth_figure(gamma):
    return viz.advantage_depth_figure(dataclasses.replace(record, config={**record.config, "gamma": gamma}))


gamma = widgets.FloatSlider(value=0.9, min=0.5, max=1.0, step=0.05, description="γ", continuous_update=False)
simulated, real = go.FigureWidget(spread_figure(gamma.value)), go.FigureWidget(depth_figure(gamma.value))


def redraw(change):
    viz.sync_figure(simulated, spread_figure(change["new"]))
    viz.sync_figure(real, depth_figure(change["new"]))


gamma.observe(redraw, names="value")
display(widgets.VBox([gamma, simulated, real]))

# %% [markdown]
# The same comparison at γ = 0.9 without widgets (it stays in a saved notebook):

# %%
show(spread_figure(0.9))

# %% [markdown]
# **Takeaways.** Without rescaling, an early turn's advantage is wide because many terms follow it; with
# √n every turn lives on the unit scale of its terms. With $\gamma = 1$ (the default) √n is exact for
# independent terms; with $\gamma < 1$ use `rescale="exact_gamma"`. The ablation `a2tgpo_no_rescale`
# (notebook 06) switches only this off.
