# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · Variance rescaling: each turn's IG credit on one scale, the outcome added at full weight
#
# **What you'll learn**
#
# - the advantage of the paper's Eq. 8–9: the discounted sum $D$ of a turn's normalized IG and the later
#   turns', divided by $\sqrt n$, scaled by $\alpha$, plus the normalized outcome $\hat R$;
# - why the sum's spread grows with the number of terms, and how dividing by $\sqrt n$ fixes it;
# - advantage spread vs turn depth with and without $\sqrt n$, on a real batch;
# - the discount γ and the exact-γ variant of the divisor;
# - what the per-turn-index groups cannot tell the policy: whether to take another turn.
#
# *Run time on a 2-core CPU without a GPU, measured as the CPU time of the notebook's kernel on one thread
# (about the wall time on an idle machine; how: `notebooks/README.md`): default setting 14 s, smoke setting 13
# s.*

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one

# %%
PROMPTS, GENERATIONS = (4, 6) if SMOKE else (8, 8)
SIMULATED = 2_000 if SMOKE else 20_000     # random rollouts for the variance check

# %%
import inspect

import numpy as np
import torch
from IPython.display import Markdown, display

import a2tgpo_lab as lab
from a2tgpo_lab import viz
from a2tgpo_lab.viz import show


def show_source(function):
    """Display the source of a library function, so the code sits next to its equation."""
    display(Markdown(f"```python\n{inspect.getsource(function)}```"))


# %% [markdown]
# ## 1. The equations
#
# Rollout $i$ has $T_i$ turns: process turns $t = 1, \dots, T_i - 1$ (a search and its observation) and the
# answer turn $T_i$. Each process turn has a normalized IG $\hat I_{i,t}$ (notebook 02); the rollout has one
# normalized outcome $\hat R_i$ (its exact match, z-scored over the $G$ rollouts of its prompt). Eq. 8 sums a
# turn's IG credit and every later turn's:
#
# $$D_{i,t} = \sum_{k=t}^{T_i-1} \gamma^{k-t}\, \hat I_{i,k}, \qquad n_{i,t} = T_i - t \;\text{ (the number of IG terms summed)},$$
#
# and Eq. 9 rescales it and adds the outcome **outside** the sum, at full weight:
#
# $$\hat A_{i,t} = \alpha\, \frac{D_{i,t}}{\sqrt{n_{i,t}}} + \hat R_i \quad (1 \le t \le T_i - 1), \qquad \hat A_{i,T_i} = \hat R_i .$$
#
# Every model token of turn $t$ receives $\hat A_{i,t}$. The paper uses $\gamma = 1$ and $\alpha = 1$; the
# authors' released script uses $\alpha = 0.3$ (`ig_alpha`, preset `a2tgpo_code`, notebook 06).
#
# Why divide: each $\hat I$ is a z-score, roughly unit variance. A sum of $n$ independent unit-variance terms
# has standard deviation $\sqrt n$, so without the division (IGPO, and the ablation `a2tgpo_no_rescale`) the
# first turn of a 4-search rollout carries IG credit twice as wide as its last search, purely because of its
# position, and the gradient pushes hardest on early turns of long rollouts. Why add $\hat R$ outside: the
# outcome is what the task rewards; inside the rescaled sum it would be shrunk by $\sqrt{n+1}$ on exactly
# those early turns.

# %%
show_source(lab.accumulate)

# %%
show_source(lab.add_outcome)

# %% [markdown]
# ## 2. The worked example (ALGORITHM.md §9)
#
# One prompt, three rollouts with IG $[0.20, 0.40]$, $[0.05]$, $[0.10, 0.05, 0.35]$ and outcomes 1, 0, 1, so
# $T = 3, 2, 4$ turns (2, 1, 3 searches).

# %%
nan = float("nan")
ig_example = torch.tensor([[0.20, 0.40, nan, nan], [0.05, nan, nan, nan], [0.10, 0.05, 0.35, nan]])  # a column per turn
one_prompt, searches = torch.tensor([0, 0, 0]), torch.tensor([2, 1, 3])     # T_i − 1 process turns
ig_norm, _, _, _ = lab.turn_group_normalize(ig_example, one_prompt)
outcome_norm = lab.normalize_outcomes(torch.tensor([1.0, 0.0, 1.0]), one_prompt)
rescaled, summed = lab.accumulate(ig_norm, searches, gamma=1.0, rescale="sqrt_n")
print("Î per process turn:\n", ig_norm.numpy().round(4))
print("D (this turn's Î and every later one's):\n", summed.numpy().round(4))
print("D / √n:\n", rescaled.numpy().round(4))
print("R̂:", outcome_norm.numpy().round(4))
for alpha, expected in ((1.0, "[2.3591, 1.7071, 0.7071], [−2.4832, −1.4142], [−0.0245, 0.0, 0.7071, 0.7071]"),
                        (0.3, "rollout 1 ≈ [1.2027, 1.0071, 0.7071]")):
    advantages = lab.add_outcome(rescaled, outcome_norm, searches, alpha=alpha)
    print(f"\nÂ with α = {alpha} (expected {expected}); the last column of each rollout is its answer turn:\n",
          advantages.numpy().round(4))

# %% [markdown]
# Rollout 3 is correct ($\hat R = +0.71$) but its second search gained less than rollout 1's second search
# ($\hat I = -1$), so its first two turns get about 0: the IG credit pulls them down, the outcome up. Its
# answer turn and its last search (a singleton group: $\hat I = 0$) get the outcome alone.
#
# Had the outcome been put *inside* the rescaled sum, $(D_{i,t} + \hat R_i)/\sqrt{n_{i,t}+1}$ (a tempting
# misreading of the paper), a correct rollout's early turns would carry only a fraction of its outcome:

# %%
n = (searches[:, None] - torch.arange(4)[None, :]).clamp(min=0).float()      # n_{i,t} = T_i − t, 0 at the answer turn
in_rollout = torch.arange(4)[None, :] <= searches[:, None]
inside = torch.where(in_rollout, (torch.nan_to_num(summed) + outcome_norm[:, None]) / (n + 1).sqrt(), nan)
print("outcome weight per turn with the outcome inside the sum, 1/√(n+1):\n",
      torch.where(in_rollout, 1 / (n + 1).sqrt(), nan).numpy().round(3))
print("Â with the outcome inside (not the paper's form):\n", inside.numpy().round(4))

# %% [markdown]
# ## 3. The variance argument, checked
#
# Random unit-normal $\hat I$ for rollouts with 4 searches, accumulated by the library with each divisor;
# the standard deviation of the IG part $D_{i,t}/\text{divisor}$ at each search:

# %%
import plotly.graph_objects as go

RESCALES = ("none", "sqrt_n", "exact_gamma")
generator = torch.Generator().manual_seed(0)
random_ig = torch.randn(SIMULATED, 4, generator=generator, dtype=torch.float64)
four_searches = torch.full((SIMULATED,), 4)


def spread_figure(gamma):
    figure = go.Figure()
    for rescale in RESCALES:
        ig_part, _ = lab.accumulate(random_ig, four_searches, gamma=gamma, rescale=rescale)
        figure.add_trace(go.Scatter(x=list(range(1, 5)), y=ig_part.std(dim=0).numpy(), mode="lines+markers",
                                    name=rescale))
    figure.update_layout(template="plotly_white", height=340, yaxis=dict(title="std of the IG part", rangemode="tozero"),
                         xaxis=dict(title="search t (of 4; the answer turn has no IG part)", dtick=1),
                         title=f"unit-variance Î, 4 searches, γ = {gamma}", legend=dict(title="rescale"))
    return figure


show(spread_figure(1.0))

# %% [markdown]
# With $\sqrt n$ every search's IG part has unit spread. The full advantage adds $\hat R_i$, the same at
# every turn of the rollout, so $\hat A$ has a spread of about $\sqrt{\alpha^2 + 1}$ at every process turn
# and 1 at the answer turn.
#
# ## 4. A real batch
#
# Real IG terms are not independent (a rollout's IG at consecutive turns is correlated, constant groups give
# zeros), so √n is an approximation (the paper's App. D.3 bounds the error by the correlation), but the depth
# effect is plain. One training step of the bundled model, and $\hat A_{i,t}$ per depth both ways ($\sigma$ of
# each box printed above it):

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
simulated, real = viz.figure_widget(spread_figure(gamma.value)), viz.figure_widget(depth_figure(gamma.value))


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
# ## 6. What the per-turn groups cannot tell the policy: whether to take another turn
#
# The policy chooses how many turns to take: answer now, or search again. Turn-group normalization judges a
# search only against the searches *at the same depth* of the sibling rollouts that also got there. Two
# consequences, stated plainly because the paper does not discuss them:
#
# 1. **The decision to search again earns no IG credit of its own.** Every depth's group is centred, so the
#    IG part of a continuing rollout is measured against other continuing rollouts, never against the
#    rollouts that answered instead. A second search that gained as much as its peers' gets $\hat I = 0$
#    however much it gained; one that gained a little less gets $\hat I < 0$ and *lowers* the advantage of all
#    its earlier turns below that of a sibling that stopped (whose sum has fewer terms). Whether to continue is
#    judged by the outcome term alone. The groups are also a selection made by the policy (who reached depth
#    $t$), so the centring changes what is optimized: this is not an unbiased gradient of any fixed return.
# 2. **An extra turn carries the outcome term again.** $\hat R_i$ is added to every turn, so a rollout with
#    more turns puts its outcome on more tokens. Under the paper's aggregation (`seq-mean-token-mean`) each
#    rollout's tokens are averaged, so the outcome weighs the same per rollout; under `token-mean` (the
#    released code) a longer rollout's outcome weighs more, in proportion to its model tokens.
#
# The first point on a hand-made prompt: four correct rollouts; every search gains 0.2, except that rollout 4's
# second search gains 0.1 (it still helped).

# %%
ig_choice = torch.tensor([[0.2, nan, nan], [0.2, nan, nan], [0.2, 0.3, nan], [0.2, 0.1, nan]])
searches_choice = torch.tensor([1, 1, 2, 2])
four = torch.zeros(4, dtype=torch.long)
ig_hat, _, _, _ = lab.turn_group_normalize(ig_choice, four)
ig_part, _ = lab.accumulate(ig_hat, searches_choice)
advantages = lab.add_outcome(ig_part, lab.normalize_outcomes(torch.ones(4), four), searches_choice)
for i in range(4):
    print(f"rollout {i + 1}: raw IG {ig_choice[i].numpy()}  Î {ig_hat[i].numpy().round(3)}  Â {advantages[i].numpy().round(3)}")

# %% [markdown]
# Rollout 4's extra search raised the gold answer's probability, yet its first turn gets $\hat A = -0.71$ while
# rollouts 1–2, which stopped, get 0. Raw IG would have credited it (+0.1); the per-depth centring does not.
#
# On the real batch: per number of searches, the rollouts' outcome, their model tokens, and the share of the
# loss's weight their tokens get under the two aggregations:

# %%
model_tokens = np.array([np.asarray(mask, dtype=bool).sum() for mask in record.loss_mask])
print(f"{'searches':>8} {'rollouts':>8} {'mean R̂':>8} {'tokens':>7} {'weight, seq-mean-token-mean':>28} {'weight, token-mean':>19}")
for k in np.unique(record.num_tool_turns):
    rows = record.num_tool_turns == k
    print(f"{k:8d} {rows.sum():8d} {record.outcome_norm[rows].mean():+8.3f} {model_tokens[rows].mean():7.1f} "
          f"{rows.sum() / record.batch_size:28.1%} {model_tokens[rows].sum() / model_tokens.sum():19.1%}")

# %% [markdown]
# What you can watch for in a run: `num_turns/mean` and `search_calls/mean` over training (does the policy
# learn to stop early or to search more?), and the exact match per question type (does it search as often as
# the question needs?). The package implements the paper's estimator as written and does not correct this.
#
# **Takeaways.** $\hat A_{i,t} = \alpha D_{i,t}/\sqrt{n_{i,t}} + \hat R_i$: the IG credit of a turn and the turns
# after it, on the unit scale whatever its depth, plus the outcome at full weight. With $\gamma = 1$ (the
# default) √n is exact for independent terms; with $\gamma < 1$ use `rescale="exact_gamma"`. The ablation
# `a2tgpo_no_rescale` (notebook 06) switches only the √n off. The IG credit ranks turns among same-depth
# peers; whether to take another turn at all is left to the outcome.
