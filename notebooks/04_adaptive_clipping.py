# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Adaptive turn-level clipping: a wider trust region where the turn gained information
#
# **What you'll learn**
#
# - the clip factor $c = 1 + \beta\,(2\sigma(\hat I) - 1)$ and the per-turn clip band it scales;
# - the turn-level importance ratio (one ratio per turn, GSPO-style) and its narrow $\varepsilon$;
# - why clipping only acts with several optimizer steps per rollout batch, shown on a real batch;
# - the clip explorer: move β, ε, Î and the sign of A and watch the band and the gradient;
# - fixed vs adaptive clipping on the same real step, and which tokens got clipped.
# - when IG misleads on real rollouts: the first search's IG, and correct later hops with a negative IG.
#
# *Run time on a 2-core CPU without a GPU, measured as the CPU time of the notebook's kernel on one thread
# (about the wall time on an idle machine; how: `notebooks/README.md`): default setting 28 s, smoke setting 16
# s.*

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one

# %%
PROMPTS, GENERATIONS = (4, 4) if SMOKE else (8, 8)

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
# Each process turn $t$ of rollout $i$ gets a clip factor from its normalized IG (notebook 02, Eq. 11); the
# answer turn gets $c = 1$ (as in the authors' released code):
#
# $$c_{i,t} = 1 + \beta\left(2\,\sigma(\hat I_{i,t}) - 1\right) \in (1 - \beta,\; 1 + \beta), \qquad \beta = 0.3,$$
#
# and the PPO clip band of turn $t$'s tokens becomes $[\,1 - c_{i,t}\,\varepsilon_\text{low},\; 1 + c_{i,t}\,\varepsilon_\text{high}\,]$.
# $c$ is a constant of the loss: no gradient flows through it. Per token, with ratio $s$ and turn advantage
# $\hat A$ (Eq. 12):
#
# $$\mathcal L = -\min\left(s \hat A,\; \operatorname{clip}(s,\, 1 - c\,\varepsilon_\text{low},\, 1 + c\,\varepsilon_\text{high})\, \hat A\right).$$
#
# The ratio is **turn-level** (Eq. 10): $s_{i,t} = \exp\big(\text{mean over turn } t\text{'s tokens of } \log \pi_\theta - \log \pi_\text{old}\big)$,
# shared by every token of the turn (the gradient still flows per token), so a whole turn is clipped or not.
# Such an average moves far less than a single token's ratio, hence the narrow $\varepsilon_\text{low} = 3\cdot10^{-3}$,
# $\varepsilon_\text{high} = 4\cdot10^{-3}$. The published GRPO and IGPO use the token-level ratio with
# $\varepsilon = 0.2$ (presets `grpo`, `igpo`).
#
# A turn that raised the probability of the gold answer more than its siblings ($\hat I > 0$) may move
# further before its gradient is cut; a turn that lowered it is held closer to the old policy.

# %%
show_source(lab.adaptive_clip_factor)

# %%
show_source(lab.clip_bounds)

# %% [markdown]
# What the trainer calls: the factors of every turn of the batch, adaptive or fixed, with the answer turn at 1:

# %%
show_source(lab.turn_clip_factors)

# %% [markdown]
# On the worked example of ALGORITHM.md §9: rollout 1 (Î = 1.3363 and 1 at its two searches, then its answer
# turn) and rollout 3 (Î = −0.2673, −1 and 0, then its answer turn):

# %%
nan = float("nan")
example = torch.tensor([[1.3363, 1.0, nan, nan], [-0.2673, -1.0, 0.0, nan]])
c = lab.adaptive_clip_factor(example, beta=0.3, num_tool_turns=torch.tensor([2, 3]))
low, high = lab.clip_bounds(c, eps_low=3e-3, eps_high=4e-3)
print("c (expected ≈ [1.1751, 1.1386, 1.0], [0.9601, 0.8614, 1.0, 1.0]):\n", c.numpy().round(4))
print("rollout 1's bands:", [(round(float(a), 5), round(float(b), 5)) for a, b in zip(low[0, :3], high[0, :3])])

# %% [markdown]
# ## 2. The clip explorer
#
# Left the fixed band ($c = 1$, GRPO and IGPO), right the adaptive one. Red shading marks ratios where the
# objective is flat, i.e. the token gets no gradient: above the band for $A > 0$, below it for $A < 0$.

# %%
display(viz.ClipExplorer(ig_norm=1.0, beta=0.3))

# %% [markdown]
# ## 3. When does clipping act at all?
#
# In the first pass over a batch $\pi_\theta = \pi_\text{old}$, so every ratio is exactly 1 and no band
# matters. Clipping acts only when the rollouts are reused after an update: `num_mini_batches > 1` (later
# mini-batches see a policy already moved by the earlier ones' optimizer steps) or `num_iterations > 1` (PPO
# epochs). The paper takes 8 optimizer steps per rollout batch (64 prompts, PPO mini-batch 8). With a single
# optimizer step per batch the adaptive clip, one of A²TGPO's three ideas, does nothing at all.
#
# The same real batch, updated once with one optimizer step and once with the defaults'
# `num_mini_batches` steps (both trainers sample the same rollouts: same model, same seed):

# %%
import tempfile

questions = [q for q in lab.load_split("train") if q.qtype in ("chain2", "chain3")]
tool = lab.bundled_search_tool()
defaults = lab.preset("a2tgpo")
print(f"{'optimizer steps per batch':26s} {'ratio min':>10s} {'ratio max':>10s} {'tokens clipped':>15s}")
for mini_batches in (1, defaults.num_mini_batches):
    cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS, seed=0,
                     num_mini_batches=mini_batches, num_iterations=1,
                     output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb04_steps_"))
    metrics = lab.A2TGPOTrainer(cfg, train_examples=questions, tool=tool).step().metrics
    print(f"{mini_batches:26d} {metrics['ratio/min']:10.5f} {metrics['ratio/max']:10.5f} "
          f"{metrics['clip_ratio/region_mean']:15.2%}")

# %% [markdown]
# With one optimizer step the ratio is exactly 1 everywhere and nothing is clipped, whatever β is. Watch
# `ratio/min`, `ratio/max` and `clip_ratio/region_mean` in a run: if they are 1, 1 and 0, the clip bands
# are not part of the method you are running.
#
# ## 4. Fixed vs adaptive on the same real step
#
# Two trainers from the same bundled model with the same seed sample the same rollouts, score the same
# IG and compute the same advantages; they differ only in the clip bands. Here each takes one optimizer step
# over the whole batch, twice (`num_mini_batches=1`, `num_iterations=2`): the first pass is identical in both
# runs (nothing is clipped at $s = 1$), so both second passes see the same ratios, and any difference in what
# is clipped comes from the bands alone. (With several mini-batches the two runs would part ways after the
# first optimizer step, and later ratios would differ for two reasons at once.) The learning rate is
# 3e-5, the order used for real models: one update then moves a turn's ratio by about the width of the
# band (with this tiny model's default 3e-4 most turns overshoot both bands and both clip the same way).

# %%
records = {}
for name in ("a2tgpo", "a2tgpo_fixed_clip"):
    cfg = lab.preset(name, num_prompts_per_step=PROMPTS, num_generations=GENERATIONS, num_mini_batches=1,
                     num_iterations=2, learning_rate=3e-5, seed=0,
                     output_dir=tempfile.mkdtemp(prefix=f"a2tgpo_nb04_{name}_"))
    records[name] = lab.A2TGPOTrainer(cfg, train_examples=questions, tool=tool).step()
adaptive, fixed = records["a2tgpo"], records["a2tgpo_fixed_clip"]
same_rollouts = all(np.array_equal(a, b) for a, b in zip(adaptive.input_ids, fixed.input_ids))
same_ratios = all(np.allclose(a, b, equal_nan=True) for a, b in zip(adaptive.ratio, fixed.ratio))
print(f"same rollouts: {same_rollouts}; same second-pass ratios: {same_ratios}")
print(f"{'':24s} {'fixed':>8s} {'adaptive':>9s}")
for key in ("clip_ratio/region_mean", "clip_ratio/low_mean", "clip_ratio/high_mean", "ratio/min", "ratio/max"):
    print(f"{key:24s} {fixed.metrics[key]:8.4f} {adaptive.metrics[key]:9.4f}")

# %% [markdown]
# The adaptive bands of every (rollout, turn), coloured by $c$; the dashed lines are the fixed band:

# %%
show(viz.clip_range_figure(adaptive))

# %% [markdown]
# Each model token's ratio against its turn's band (turn-level ratios: all tokens of a turn share one value):

# %%
show(viz.ratio_figure(adaptive))

# %% [markdown]
# ### Where the two bands decide differently
#
# Every tool turn of the step as a point: its $\hat I$ (x) and its turn ratio (y). The dashed lines are
# the fixed band, the solid curves the adaptive one, $1 \pm c(\hat I)\,\varepsilon$. A turn with $A > 0$ (▲) is
# clipped when it is above the upper line, a turn with $A < 0$ (▼) when it is below the lower one; red and
# blue mark the turns the adaptive band clipped. The two methods disagree exactly for points between a
# dashed line and its curve: right of 0 the adaptive band is wider (a turn that gained information keeps
# its gradient longer), left of 0 narrower. Answer turns ($c = 1$) are left out.

# %%
import plotly.graph_objects as go


def turn_decisions(record):
    """{(rollout, turn): (turn ratio, clip flag)} for every turn with model tokens."""
    decisions = {}
    for i in range(record.batch_size):
        model_tokens = np.asarray(record.loss_mask[i], dtype=bool)
        for k in np.unique(record.turn_ids[i][model_tokens]):
            in_turn = model_tokens & (record.turn_ids[i] == k)
            decisions[(i, int(k))] = (float(np.nanmean(record.ratio[i][in_turn])), int(record.clipped[i][in_turn][0]))
    return decisions


fixed_turns, adaptive_turns = turn_decisions(fixed), turn_decisions(adaptive)
tool_turns = [(i, k) for (i, k) in adaptive_turns if k <= adaptive.num_tool_turns[i]]
cfg = adaptive.config
grid = torch.linspace(-3, 3, 121)[:, None]
c_grid = lab.adaptive_clip_factor(grid, cfg["clip_beta"], torch.ones(121, dtype=torch.long))[:, 0]
low_grid, high_grid = lab.clip_bounds(c_grid, cfg["epsilon"], cfg["epsilon_high"])
figure = go.Figure()
for bound in (1 - cfg["epsilon"], 1 + cfg["epsilon_high"]):
    figure.add_hline(y=bound, line=dict(color="gray", dash="dash"))
for curve, name in ((low_grid, "adaptive lower bound"), (high_grid, "adaptive upper bound")):
    figure.add_trace(go.Scatter(x=grid[:, 0], y=curve, mode="lines", name=name, line=dict(color="green")))
colors = {0: "lightgray", 1: "#d62728", -1: "#1f77b4"}
for sign, symbol in ((1, "triangle-up"), (-1, "triangle-down")):
    chosen = [(i, k) for (i, k) in tool_turns if np.sign(adaptive.advantages[i, k - 1]) == sign]
    figure.add_trace(go.Scatter(
        x=[adaptive.ig_norm[i, k - 1] for i, k in chosen], y=[adaptive_turns[(i, k)][0] for i, k in chosen],
        mode="markers", name=f"A {'>' if sign > 0 else '<'} 0",
        marker=dict(symbol=symbol, size=11, color=[colors[adaptive_turns[t][1]] for t in chosen],
                    line=dict(width=[3 if adaptive_turns[t][1] != fixed_turns[t][1] else 0.5 for t in chosen], color="black")),
        customdata=[[i, k] for i, k in chosen], hovertemplate="rollout %{customdata[0]}, turn %{customdata[1]}<br>Î %{x:.3f}, ratio %{y:.5f}<extra></extra>"))
spread = 4 * max(cfg["epsilon"], cfg["epsilon_high"])
figure.update_layout(template="plotly_white", height=420, xaxis_title="normalized IG Î of the turn",
                     yaxis=dict(title="turn ratio s", range=[1 - spread, 1 + spread]),
                     title="tool turns of the step: thick outline = fixed and adaptive decide differently")
show(figure)

names = {0: "kept", 1: "clipped high", -1: "clipped low"}
print(f"turns clipped: fixed {sum(f != 0 for _, f in fixed_turns.values())}, "
      f"adaptive {sum(f != 0 for _, f in adaptive_turns.values())}, of {len(adaptive_turns)} turns")
print(f"{'rollout':>7} {'turn':>4} {'Î':>7} {'c':>7} {'A':>7} {'ratio':>8}   {'fixed':12s} {'adaptive':12s} text")
for (i, k), (ratio, flag) in adaptive_turns.items():
    if flag != fixed_turns[(i, k)][1]:
        print(f"{i:7d} {k:4d} {adaptive.ig_norm[i, k - 1]:+7.3f} {adaptive.clip_factor[i, k - 1]:7.4f} "
              f"{adaptive.advantages[i, k - 1]:+7.3f} {ratio:8.5f}   {names[fixed_turns[(i, k)][1]]:12s} {names[flag]:12s} "
              f"{adaptive.turn_texts[i][k - 1][:40]}")

# %% [markdown]
# The band changes one turn's fate only near its edge, so in any single step few decisions differ; the
# effect accumulates over many steps and iterations, and it is systematic: informative turns are cut
# later, uninformative ones earlier.
#
# Load the real step into the explorer to see one turn's token ratios on the curves (pick a rollout and
# a turn; Î, the sign of A, β and ε come from the record):

# %%
display(viz.ClipExplorer(record=adaptive))

# %% [markdown]
# And one rollout token by token, clipped tokens underlined (red: clipped high, blue: clipped low):

# %%
clipped_rollouts = [i for i in range(adaptive.batch_size) if np.any(adaptive.clipped[i] != 0)]
display(viz.RolloutInspector(adaptive, rollout=clipped_rollouts[0] if clipped_rollouts else 0))

# %% [markdown]
# ## 5. When IG misleads, on real rollouts
#
# The clip factor trusts the normalized IG, and IG measures one thing: how much a turn moved the probe's
# probability of the gold answer. That is not the same as "the turn was needed", and on real rollouts of the
# bundled model it shows in two ways.
#
# **The first search earns IG from learning the answer's type.** Before any search the model does not know
# whether a city or a person is wanted, so $\bar\pi_0$ is tiny; any first observation tells it, and
# $\bar\pi$ of the gold answer rises with every answer of that type, even when the observation says nothing
# about this question's answer:

# %%
def first_observation_has_gold(record, i):
    observations = record.observations[i]
    return bool(observations) and any(gold.lower() in observations[0].lower() for gold in record.answers[i])


searched = np.isfinite(adaptive.ig[:, 0])
without_answer = np.array([searched[i] and not first_observation_has_gold(adaptive, i) for i in range(adaptive.batch_size)])
ig_first = adaptive.ig[without_answer, 0]
print(f"first searches whose observation does not contain the gold answer: {without_answer.sum()} of {searched.sum()}")
print(f"  their IG: positive for {np.mean(ig_first > 0):.0%}, mean {np.mean(ig_first):+.4f}, median {np.median(ig_first):+.4f}")

# %% [markdown]
# **A correct, necessary later hop can get a negative IG**, and with it $\hat I < 0$, a clip factor below 1
# (a *narrower* band for the turn that found the answer) and an advantage below the outcome term: after the
# first hop the model spreads probability over answers of the right type, and an observation that points
# elsewhere first, or simply re-ranks the candidates, can lower $\bar\pi$ of the gold one. The other way
# round, a wrong rollout's search can earn a positive IG. `viz.ig_misleads(record)` lists the process turns
# whose IG points against the rollout's outcome, largest $|\hat I|$ first:

# %%
misled = viz.ig_misleads(adaptive)
print(f"{len(misled)} of {int(np.isfinite(adaptive.ig).sum())} process turns have an IG that points against the outcome")
print(f"{'kind':26s} {'rollout':>7s} {'turn':>4s} {'query':24s} {'IG':>8s} {'Î':>7s} {'c':>6s} {'Â':>7s} answer / gold")
for row in misled[:8]:
    print(f"{row['kind']:26s} {row['rollout']:7d} {row['turn']:4d} {str(row['query'])[:24]:24s} {row['ig']:+8.4f} "
          f"{row['ig_norm']:+7.3f} {row['clip_factor']:6.3f} {row['advantage']:+7.3f} {row['answer']} / {row['gold'][0]}")
show(viz.ig_misleads_figure(adaptive))

# %% [markdown]
# How to read this honestly: the outcome term $\hat R$ is added to every turn at full weight, so a correct
# rollout usually keeps a positive advantage even where its IG misled, but not always (a large negative
# $\hat I$ can outweigh it), and its band is narrower on exactly that turn. IG is a useful hint where the
# probe's probability tracks progress (a hop that retrieves the answer makes it jump); it misleads where the
# answer's *type* is the news, where candidates of the right type compete, and for answers the probe
# scores badly (notebook 01). Watch `viz.ig_misleads` on your own batches before trusting per-turn credit.

# %% [markdown]
# **Takeaways.** The adaptive band is a per-turn trust region: $c \in (1-\beta, 1+\beta)$, monotone in
# $\hat I$, never a gradient path (it is a constant of the loss). With turn-level ratios, whole turns are
# clipped together and $\varepsilon$ must be small. Watch `clip_ratio/*` and `turn/{k}/clip_frac` in the
# dashboard; notebook 07 shows what a ratio blow-up looks like.
