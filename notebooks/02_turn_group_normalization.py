# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Turn-group normalization: compare each turn with the same turn of the other rollouts
#
# **What you'll learn**
#
# - the z-score of IG inside each (prompt, turn index) group (A²TGPO, Eq. 6–7) vs one z-score over every
#   turn of the prompt (pooled), and IGPO's joint z-score of IG and outcome together (Eq. 4), on the worked
#   example and on a real batch;
# - why pooling turns a normalized IG into a statement about *depth* rather than *quality*: the position
#   bias of the paper's Prop. 1, measured as the per-turn mean drift ΔĀ_t;
# - deep turns reached by few rollouts: group sizes, and `min_group_size`;
# - groups of identical queries (std 0: the turn falls back to the outcome term);
# - groups that differ only by noise (0.016499 vs 0.016498) and the knobs `group_std_floor`,
#   `ig_center_only`, `min_group_size`, and the variance guard `var_eps`.
#
# *Run time on a 2-core CPU without a GPU, measured as the CPU time of the notebook's kernel on one thread
# (about the wall time on an idle machine; how: `notebooks/README.md`): default setting 14 s, smoke setting 13
# s.*

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one

# %%
PROMPTS, GENERATIONS = (4, 6) if SMOKE else (8, 8)   # 2- and 3-hop questions × rollouts per question

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
# ## 1. The equation
#
# For prompt $q$ and process turn $t$, the group $G_{q,t}$ holds the IG of every rollout of $q$ that has a
# process turn $t$. With its mean $\mu_{q,t}$ and population variance $v_{q,t}$ (Eq. 6–7):
#
# $$\hat I_{i,t} = \frac{\mathrm{ig}_{i,t} - \mu_{q,t}}{\sqrt{v_{q,t} + \varepsilon_\text{var}} + 10^{-6}}, \qquad \hat I_{i,t} = 0 \text{ when } |G_{q,t}| < \texttt{min\_group\_size} \text{ or the group is constant.}$$
#
# The paper's Eq. 7 has no guard: `var_eps` $= \varepsilon_\text{var} = 0$ by default; the authors' released
# code adds $10^{-8}$ (preset `a2tgpo_code`, section 6 below). The outcome rewards are z-scored over the $G$
# rollouts of the prompt (GRPO style): $\hat R_i$.
#
# Two other ways to normalize, for comparison:
#
# - **pooled** (the ablation `a2tgpo_pooled`): one group per prompt with the IG of *all* turns of all its
#   rollouts. `turn_group_normalize` and `pooled_normalize` differ in one line, the group id:
#   `prompt_index * T + turn column` vs `prompt_index`;
# - **IGPO's joint z-score** (Eq. 4, preset `igpo`): one mean and one standard deviation over the prompt's IG
#   rewards *and* its outcome rewards together, so the outcome (0 or 1) and the IG (a few hundredths) share one
#   scale. IGPO then sums the normalized rewards with the outcome inside the sum (notebook 03).
#
# The z-score itself, shared by all of them, then the group choices:

# %%
from a2tgpo_lab import advantages as advantages_module

show_source(advantages_module.group_zscore)

# %%
show_source(lab.turn_group_normalize)

# %%
show_source(lab.pooled_normalize)

# %%
show_source(lab.joint_normalize)

# %% [markdown]
# ## 2. The worked example (ALGORITHM.md §9)
#
# One prompt, three rollouts with IG $[0.20, 0.40]$, $[0.05]$, $[0.10, 0.05, 0.35]$. Turn 1's group is
# $\{0.20, 0.05, 0.10\}$, turn 2's is $\{0.40, 0.05\}$, turn 3's is a singleton.

# %%
nan = float("nan")
ig_example = torch.tensor([[0.20, 0.40, nan], [0.05, nan, nan], [0.10, 0.05, 0.35]])
one_prompt = torch.tensor([0, 0, 0])
by_turn, group_id, group_size, _ = lab.turn_group_normalize(ig_example, one_prompt)
pooled, _, _, _ = lab.pooled_normalize(ig_example, one_prompt)
print("group id [B, T]:\n", group_id.numpy())
print("group size [B, T]:\n", group_size.numpy())
print("Î per (prompt, turn) (expected ≈ [1.3363, 1, –], [−1.0690], [−0.2673, −1, 0]):\n", by_turn.numpy().round(4))
print("Î pooled over all turns of the prompt (the ablation a2tgpo_pooled):\n", pooled.numpy().round(4))
outcomes, searches = torch.tensor([1.0, 0.0, 1.0]), torch.tensor([2, 1, 3])
print("R̂ (outcomes 1, 0, 1; expected ≈ 0.7071, −1.4142, 0.7071):",
      lab.normalize_outcomes(outcomes, one_prompt).numpy().round(4))
ig_joint, outcome_joint, _, _, _ = lab.joint_normalize(ig_example, outcomes, one_prompt)
print("IGPO joint z-score, IG part:\n", ig_joint.numpy().round(4))
print("IGPO joint z-score, outcome part:", outcome_joint.numpy().round(4))
igpo = lab.discounted_returns(lab.reward_terms(ig_joint, outcome_joint, searches), searches)
print("IGPO advantages, outcome inside the sum (expected rollout 1 ≈ [1.4847, 1.8897, 1.7547], "
      "rollout 2 ≈ [−1.7547, −0.9448]):\n", igpo.numpy().round(4))

# %% [markdown]
# Pooled, rollout 3's last search (IG 0.35, the best search of the batch) and its second (IG 0.05) are
# compared with each other and with turn 1s; per turn, the 0.35 stands alone (a singleton: $\hat I = 0$,
# it cannot be judged) and the 0.05 at turn 2 is judged only against the 0.40 at the same depth.
# In IGPO's joint z-score the two outcomes of 1 pull the mean of the nine rewards up to 0.35 and dominate
# their spread, so five of the six searches come out negative, useful or not: there a search's normalized
# reward says little about the search, and the outcome, summed into every turn, decides the advantage's sign.
#
# ## 3. A real batch
#
# One training step of the bundled model on 2- and 3-hop questions (`trainer.step()` returns its record):

# %%
import tempfile

questions = [q for q in lab.load_split("train") if q.qtype in ("chain2", "chain3")]
cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                 output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb02_"))
trainer = lab.A2TGPOTrainer(cfg, train_examples=questions)
record = trainer.step()
ig, prompts = torch.as_tensor(record.ig), torch.as_tensor(record.prompt_index)
per_turn, _, _, _ = lab.turn_group_normalize(ig, prompts)
pooled, _, _, _ = lab.pooled_normalize(ig, prompts)
print(f"{'turn k':>6} {'IG values':>9} {'mean raw IG':>12} {'median raw IG':>14} {'pooled Î > 0':>13} "
      f"{'per-turn Î > 0':>15}")
for k in range(1, record.max_turns + 1):
    present = np.isfinite(record.ig[:, k - 1])
    if present.any():
        raw = record.ig[present, k - 1]
        print(f"{k:6d} {present.sum():9d} {raw.mean():12.4f} {np.median(raw):14.4f} "
              f"{float((pooled[present, k - 1] > 0).float().mean()):13.0%} "
              f"{float((per_turn[present, k - 1] > 0).float().mean()):15.0%}")

# %% [markdown]
# The IG of different depths lives on different scales: the first search of this tiny model mostly
# reveals the answer's *type* (a small, steady gain, positive almost every time), a later one either
# retrieves the answer itself (a large jump), adds nothing, or even lowers the probability of the gold
# answer (a negative IG; notebook 04, section 5, looks at such turns). Pooling ranks every turn against
# the turns of *all* depths of its prompt, so the share of positive $\hat I$ differs by depth (the
# `pooled Î > 0` column), whatever each search did:
# the normalized IG says as much about a turn's depth as about its quality. Per (prompt, turn) every depth
# is centred on its own mean, and a turn's $\hat I$ only says how it compares with the same turn of its
# siblings.
#
# ### The position bias, measured (the paper's Prop. 1 and Fig. 4)
#
# Pooled, a turn of average quality *for its depth* ($\mathrm{ig} = \mu_t$) scores $(\mu_t - \bar\mu)/\sigma_\text{pool}$,
# not 0, whenever its depth's mean $\mu_t$ differs from the pooled mean $\bar\mu$. Average the normalized IG
# over all rollouts at each turn $t$ ($\bar A_t$) and take the spread between the largest and the smallest
# of those means, $\Delta\bar A_t$ (our reading of the annotation in the paper's Fig. 4, which reports 1.03
# pooled vs 0.00 per turn on its Qwen3-4B batch). Per (prompt, turn) it is 0 by construction: every group is
# centred, and singletons are 0.

# %%
present = np.isfinite(record.ig)
turns_present = [t for t in range(record.ig.shape[1]) if present[:, t].any()]
for label, values in (("raw IG", record.ig), ("pooled Î", pooled.numpy()), ("per-turn Î", per_turn.numpy())):
    means = np.array([values[present[:, t], t].mean() for t in turns_present])
    shown = " ".join(f"{mean:+.3f}" for mean in means.round(3) + 0.0)     # + 0.0 turns −0.000 into 0.000
    print(f"{label:11s} per-turn mean Ā_t: {shown:24s} ΔĀ_t = max − min = {means.max() - means.min():.2f}")

# %% [markdown]
# The paper's Fig. 4 for this batch: per turn, raw IG → normalized IG → advantage, IGPO (joint z-score, sum
# without rescale) above, A²TGPO (per-turn groups, $\alpha D/\sqrt n + \hat R$) below, with $\Delta\bar A_t$
# and the per-turn spread:

# %%
show(viz.credit_flow_figure(record))

# %% [markdown]
# Side by side for the prompt with the most multi-search rollouts:

# %%
deep = {int(q): int(((record.prompt_index == q) & (record.num_tool_turns >= 2)).sum())
        for q in np.unique(record.prompt_index)}
prompt = max(deep, key=deep.get)
print(f"prompt {prompt}: {deep[prompt]} of its rollouts searched at least twice")
show(viz.pooled_vs_turn_group_figure(record, prompt=prompt))

# %% [markdown]
# ## 4. Group sizes: deep turns are reached by few rollouts
#
# Rollouts stop searching at different depths, so the group of turn 3 may hold two rollouts, or one.
# A singleton gives $\hat I = 0$ (there is nothing to compare with); `min_group_size` raises that
# threshold. Each cell of the heatmap is annotated with its group size; ✕ marks groups too small to
# normalize, ○ constant ones.

# %%
from collections import Counter

show(viz.group_heatmap_figure(record))
for k in range(1, record.max_turns + 1):
    ids = record.group_id[:, k - 1]
    sizes = Counter(Counter(ids[ids >= 0].tolist()).values())
    if sizes:
        print(f"turn {k}: groups by size {dict(sorted(sizes.items()))}  (size: how many groups)")


# %% [markdown]
# ## 5. Identical queries: a group with zero spread
#
# The probe is deterministic, so two rollouts of the same prompt that issue the same query at turn 1 (and
# get the same observation) have bit-identical IG. A group where every member did the same has no
# spread: $\hat I = 0$ for all of them (counted in `record.zero_std_group_frac`), and their advantage at
# that turn is the outcome $\hat R_i$ plus the rescaled IG credit of their *later* turns only (notebook 03).
# The identical searches then earn no IG credit at all, good or bad; how often it happens depends on how
# varied the policy's queries are (the share is printed below, and logged as `ig/zero_std_group_frac`).

# %%
def constant_groups(record):
    """(prompt, turn, member rollouts) of every IG group with at least 2 members and zero spread."""
    found = []
    for gid in np.unique(record.group_id[record.group_id >= 0]):
        rows, cols = np.nonzero(record.group_id == gid)
        if rows.size >= 2 and np.ptp(record.ig[rows, cols]) == 0:
            found.append((int(record.prompt_index[rows[0]]), int(cols[0]) + 1, rows))
    return found


print(f"zero-std share of IG groups in this step: {record.zero_std_group_frac:.2f}")
constant = constant_groups(record)
source = record
if not constant:
    print("no constant group in this (small) batch: using the synthetic sample record, whose prompt 0 "
          "has one by construction")
    source = viz.sample_step_record()
    constant = constant_groups(source)
prompt, turn, members = constant[0]
for r in members:
    print(f"rollout {r:2d}, turn {turn}: query {source.tool_calls[r][turn - 1]!r:32} IG {source.ig[r, turn - 1]:+.6f} "
          f"Î {source.ig_norm[r, turn - 1]:+.1f}  R̂ {source.outcome_norm[r]:+.3f}  Â {source.advantages[r, turn - 1]:+.3f}")
show(viz.group_normalization_figure(source, prompt=prompt, turn=turn))

# %% [markdown]
# ## 6. Groups that differ only by noise
#
# The opposite trap: a group whose IG values differ in the fifth or sixth decimal (equally useless searches
# whose observations differ by one word) is stretched by the z-score to $O(1)$ advantages with opposite
# signs. The $10^{-6}$ added to the denominator damps it only while the spread is below about
# $10^{-6}$ (0.016499 vs 0.016498 gives ±0.33; a spread of $10^{-5}$ already gives ±0.9). Four knobs:
#
# - `var_eps` (IG units squared): the variance guard $\sqrt{v + \varepsilon_\text{var}}$. 0 by default (the
#   paper's Eq. 7); the released code uses $10^{-8}$, i.e. spreads below $10^{-4}$ are damped. That suits its
#   log-probability IG (values of 0.01–0.1), but a guard must match the IG's units: with probability IG on a
#   real model (values near $10^{-6}$) a $10^{-8}$ guard erases the whole signal;
#
# - `group_std_floor` (IG units): a group with $\sigma \le$ floor counts as constant ($\hat I = 0$). Default
#   0 (faithful to the paper); $10^{-3}$ removes noise-level groups while keeping real differences;
# - `ig_center_only`: $\hat I = \mathrm{IG} - \mu$ without dividing by $\sigma$: tiny differences stay tiny
#   (but then $\hat I$ is on IG's scale, no longer unit-variance);
# - `min_group_size`: groups smaller than this give 0.

# %%
same_prompt = torch.zeros(4, dtype=torch.long)
for values in ([0.016499, 0.016498, 0.016499, 0.016498], [0.01650, 0.01648, 0.01650, 0.01648]):
    noisy = torch.tensor(values)[:, None]          # [B = 4, T = 1]: one prompt, one turn
    print(f"IG {values}: std {noisy.std(unbiased=False):.1e}")
    for label, knobs in [("faithful (floor 0)", {}), ("var_eps=1e-8", dict(var_eps=1e-8)),
                         ("group_std_floor=1e-3", dict(std_floor=1e-3)),
                         ("ig_center_only=True", dict(center_only=True)), ("min_group_size=5", dict(min_group_size=5))]:
        z, _, _, _ = lab.turn_group_normalize(noisy, same_prompt, **knobs)
        print(f"  {label:22s} Î = {np.array2string(z.squeeze(1).numpy(), precision=3)}")

spreads = []
for gid in np.unique(record.group_id[record.group_id >= 0]):
    rows, cols = np.nonzero(record.group_id == gid)
    if rows.size >= 2:
        spreads.append(record.ig[rows, cols].std())
spreads = np.array(spreads)
print(f"\nthis step: {spreads.size} IG groups of size ≥ 2; std exactly 0: {(spreads == 0).sum()}; "
      f"0 < std ≤ 1e-3 (noise-level, blown up by the faithful z-score): {((spreads > 0) & (spreads <= 1e-3)).sum()}")

# %% [markdown]
# **Play with it**: renormalize this step's IG with other knobs and watch which groups switch to 0.

# %%
import dataclasses

import ipywidgets as widgets


def renormalized(record, normalization, var_eps, std_floor, center_only, min_group_size):
    """The record with Î, group ids and sizes recomputed by the library under other knobs."""
    normalize = lab.turn_group_normalize if normalization == "turn_group" else lab.pooled_normalize
    ig_norm, group_id, group_size, zero_frac = normalize(
        torch.as_tensor(record.ig), torch.as_tensor(record.prompt_index), min_group_size=min_group_size,
        std_floor=std_floor, center_only=center_only, var_eps=var_eps)
    config = {**record.config, "normalization": normalization, "var_eps": var_eps, "group_std_floor": std_floor,
              "ig_center_only": center_only, "min_group_size": min_group_size}
    return dataclasses.replace(record, ig_norm=ig_norm.numpy(), group_id=group_id.numpy(),
                               group_size=group_size.numpy(), zero_std_group_frac=zero_frac, config=config)


controls = dict(
    normalization=widgets.ToggleButtons(options=["turn_group", "pooled"], description="groups"),
    var_eps=widgets.SelectionSlider(options=[0.0, 1e-10, 1e-8, 1e-6, 1e-4], value=0.0, description="var_eps"),
    std_floor=widgets.SelectionSlider(options=[0.0, 1e-6, 1e-4, 1e-3, 1e-2, 5e-2], value=0.0, description="std floor"),
    center_only=widgets.Checkbox(value=False, description="centre only"),
    min_group_size=widgets.IntSlider(value=2, min=1, max=GENERATIONS, description="min size"))
readout = widgets.HTML(f"constant groups (size ≥ max(2, min size)): {record.zero_std_group_frac:.2f}")
heatmap = viz.figure_widget(viz.group_heatmap_figure(record))


def redraw(*_):
    changed = renormalized(record, **{name: control.value for name, control in controls.items()})
    readout.value = f"constant groups (size ≥ max(2, min size)): {changed.zero_std_group_frac:.2f}"
    viz.sync_figure(heatmap, viz.group_heatmap_figure(changed))


for control in controls.values():
    control.observe(redraw, names="value")
display(widgets.VBox([widgets.HBox(list(controls.values())[:3]), widgets.HBox(list(controls.values())[3:]),
                      readout, heatmap]))

# %% [markdown]
# **Takeaways.** Normalizing per (prompt, turn index) compares like with like; pooling compares a first
# search with a last one. Small and constant groups give 0, which silently hands those turns to the
# outcome term: watch `ig/zero_std_group_frac` and the group sizes. Noise-level spreads are the
# z-score's blind spot; `group_std_floor` and `var_eps` (in the IG's own units) are the knobs.
