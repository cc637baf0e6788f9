# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · Information gain: how much closer did this search bring the answer?
#
# **What you'll learn**
#
# - the *probe*: after every turn, teacher-force "I have enough information to answer. ⟨answer⟩" and read
#   off how likely the model finds the **gold** answer;
# - $p_t$ over the turns of real rollouts of the bundled model, and the information gain (IG) of each search;
# - probability difference (the default) vs log-probability difference;
# - why IG needs the gold answer, and what that means for when it can be used.
#
# *Run time on a 2-core CPU without a GPU, measured as the CPU time of the notebook's kernel on one thread
# (about the wall time on an idle machine; how: `notebooks/README.md`): default setting 21 s, smoke setting 14
# s.*

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one

# %%
PROMPTS, GENERATIONS = (4, 4) if SMOKE else (12, 8)   # 2- and 3-hop questions × rollouts per question

# %%
import inspect

import numpy as np
import torch
from IPython.display import HTML, Markdown, display

import a2tgpo_lab as lab
from a2tgpo_lab import viz
from a2tgpo_lab.viz import show


def show_source(function):
    """Display the source of a library function, so the code sits next to its equation."""
    display(Markdown(f"```python\n{inspect.getsource(function)}```"))


# %% [markdown]
# ## 1. The equation
#
# Rollout $i$ is a dialogue: assistant turn 1, tool result, turn 2, result, …, and an answer turn. Let
# $c_t$ be the chat-rendered context after turn $t$ and its observation ($c_0$ is the question alone),
# $a = (a_1, \dots, a_m)$ the tokens of the gold answer, and $s$ the fixed probe suffix. With the policy
# that sampled the rollouts, $\pi_\text{old}$ (no gradient, logits divided by the sampling temperature):
#
# $$\ell_t = \frac{1}{m}\sum_{j=1}^{m} \log \pi_\text{old}\left(a_j \mid c_t,\, s,\, a_{<j}\right), \qquad p_t = e^{\ell_t}, \qquad t = 0, \dots, K_i$$
#
# and tool turn $k$ earns how much it moved that number:
#
# $$\mathrm{IG}_{i,k} = p_k - p_{k-1}, \qquad k = 1, \dots, K_i \quad (\text{the answer turn earns no IG}).$$
#
# $p_t$ is a geometric mean of per-token probabilities, so it is comparable across answers of different lengths.

# %% [markdown]
# ## 2. The probe on real rollouts of the bundled model

# %%
import tempfile

cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                 output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb01_"))
model, tokenizer = lab.load_model_and_tokenizer(cfg)
tool = lab.bundled_search_tool(topk=cfg.retrieval_topk)
questions = [q for q in lab.load_split("train") if q.qtype in ("chain2", "chain3")][:PROMPTS]
traj = lab.generate_rollouts(model, tokenizer, questions, tool, cfg, generator=torch.Generator().manual_seed(0))
probe_logprob_mean, probe_text = lab.score_probes(model, tokenizer, traj, cfg)
print(f"{traj.batch_size} rollouts; probe scores ℓ: {tuple(probe_logprob_mean.shape)} = [B, T+1]")
print("the probe suffix (rollout 0's gold answer):", probe_text)

# %% [markdown]
# Here is exactly what the model reads when the probe is scored after turn $t$ of one rollout: the
# context up to the end of observation $t$ (the chat template's markers included), then the suffix. Only
# the gold answer's tokens are scored. The line *"I have enough information to answer ."* is the same
# line the bundled model's demonstrations put before every answer, so the probe is in-distribution.

# %%
searched = [b for b in range(GENERATIONS) if traj.num_tool_turns[b] >= 1]
i = searched[0] if searched else 0           # a rollout of prompt 0 (its gold is the one in probe_text)
t = min(1, int(traj.num_tool_turns[i]))
context = tokenizer.decode(traj.input_ids[i, : traj.context_ends[i, t]].tolist(), skip_special_tokens=False)
print(f"rollout {i}, context after turn {t}:\n{context}\n--- probe suffix ---\n{probe_text}")

# %% [markdown]
# The fast scorer above encodes each rollout once and scores all its probes side by side (a KV cache and a
# block attention mask); `lab.score_probes_naive` runs one forward pass per (rollout, turn) and is the
# reference it is tested against. They agree:

# %%
naive, _ = lab.score_probes_naive(model, tokenizer, traj, cfg)
both = torch.isfinite(naive)
print("largest |fast − naive| over", int(both.sum()), "probes:",
      float((probe_logprob_mean[both] - naive[both]).abs().max()))

# %% [markdown]
# IG from the probe scores is plain arithmetic:

# %%
show_source(lab.information_gain)

# %%
ig, p, dropped = lab.information_gain(probe_logprob_mean, traj.num_tool_turns)
print(f"IG terms dropped as NaN/inf: {dropped}")
print(f"{'rollout':>7}  {'t':>2}  {'query of turn t':38s} {'p_t':>8} {'IG_t':>9}")
for b in range(min(traj.batch_size, 2 * GENERATIONS)):
    for t in range(int(traj.num_tool_turns[b]) + 1):
        query = "(question only)" if t == 0 else traj.actions[b][t - 1].content
        gain = "" if t == 0 else f"{float(ig[b, t - 1]):+9.4f}"
        print(f"{b:7d}  {t:2d}  {query[:38]:38s} {float(p[b, t]):8.4f} {gain}")
    print(f"{'':11s}final answer: {traj.final_answer[b]!r} (gold {traj.answers[b][0]!r}), reward {float(traj.outcome_reward[b]):+.0f}")

# %% [markdown]
# Read the table with the world in mind. Before any search the model barely knows what *kind* of answer
# is wanted, so $p_0$ is tiny. A search can raise $p$ in two ways: by telling the model the answer's type
# (a country, a city: the probability spreads over a few dozen candidates) or by retrieving the answer
# itself, which the model can copy into its answer ($p$ jumps towards 1 when it does). A search for the
# wrong entity can *lower* $p$: a negative IG, a per-turn penalty where an outcome reward could only blame
# the whole rollout. Split by whether the turn's observation contains the gold answer:

# %%
with_answer, without_answer = [], []
for b in range(traj.batch_size):
    for k in range(1, int(traj.num_tool_turns[b]) + 1):
        found = traj.answers[b][0] in traj.observations[b][k - 1].split()
        (with_answer if found else without_answer).append(float(ig[b, k - 1]))
for label, gains in (("observation contains the gold answer", with_answer), ("it does not", without_answer)):
    summary = f"mean IG {np.mean(gains):+.4f}, largest {np.max(gains):+.4f}" if gains else "none in this batch"
    print(f"{label:38s} {len(gains):3d} turns: {summary}")

# %% [markdown]
# ## 3. The same numbers inside a training step
#
# The trainer computes the same ℓ in every step — by default while sampling (`generate_rollouts(...,
# probe=True)` feeds the probe after each context that sits in the sampler's cache, then crops it off;
# equal to `score_probes` up to float rounding) — then `information_gain`, and stores `p` and `ig` in the
# step's record. One step on these questions:

# %%
trainer = lab.A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer, train_examples=questions, tool=tool)
record = trainer.step()
show(viz.ig_per_rollout_figure(record, "p"))

# %%
show(viz.ig_per_rollout_figure(record, "ig"))

# %% [markdown]
# Colour is the prompt, ● a correct final answer, ✕ a wrong or missing one. Rollouts of the same prompt
# that issue the same queries get identical values (the probe is deterministic), which is why some
# lines lie on top of each other (they are slightly offset); notebook 02 shows what that does to the
# normalization.
#
# **Play with it**: pick a rollout and read its turns with $p_t$ and IG side by side.

# %%
import html

import ipywidgets as widgets


def transcript(i: int) -> str:
    """Rollout i's turns with p_t and IG_t, as an HTML table."""
    rows = [f"<tr><td>0</td><td><i>question</i>: {html.escape(record.questions[i])}</td><td></td>"
            f"<td>{record.p[i, 0]:.4f}</td><td></td></tr>"]
    for k, text in enumerate(record.turn_texts[i], start=1):
        tool_turn = k <= record.num_tool_turns[i]
        seen = html.escape(record.observations[i][k - 1][:160]) if tool_turn else ""
        p_k = f"{record.p[i, k]:.4f}" if tool_turn else ""
        gain = f"{record.ig[i, k - 1]:+.4f}" if tool_turn else "(answer turn: no IG)"
        rows.append(f"<tr><td>{k}</td><td><code>{html.escape(text)}</code></td><td style='font-size:11px'>{seen}</td>"
                    f"<td>{p_k}</td><td>{gain}</td></tr>")
    head = "<tr><th>t</th><th>assistant turn</th><th>observation</th><th>p_t</th><th>IG_t</th></tr>"
    return (f"<p>gold <b>{html.escape(record.answers[i][0])}</b>, reward {record.outcome_reward[i]:+.0f}, "
            f"{record.end_reason[i]}</p><table>{head}{''.join(rows)}</table>")


deepest = int(np.argmax(record.num_tool_turns))
picker = widgets.Dropdown(options=[(f"{b}: prompt {record.prompt_index[b]}, {record.num_tool_turns[b]} searches, "
                                    f"reward {record.outcome_reward[b]:+.0f}", b) for b in range(record.batch_size)],
                          value=deepest, description="rollout", layout=widgets.Layout(width="460px"))
table = widgets.HTML(transcript(deepest))
picker.observe(lambda change: setattr(table, "value", transcript(change["new"])), names="value")
display(widgets.VBox([picker, table]))

# %% [markdown]
# The same table without widgets (it stays in a saved notebook), for the rollout with the most searches:

# %%
display(HTML(transcript(deepest)))

# %% [markdown]
# ## 4. Probability difference or log-probability difference?
#
# The knob `ig_mode="logprob"` uses $\ell_k - \ell_{k-1}$ instead. The two rank turns differently:
# moving $p$ from 0.001 to 0.01 is a log-gain of 2.3 but a probability gain of only 0.009, while
# moving it from 0.5 to 0.99 is a log-gain of 0.68 and a probability gain of 0.49. The probability
# difference (the default, as in IGPO) rewards the turn that made the answer *likely*; the log
# difference also rewards progress among unlikely answers, and can be very negative when a turn
# makes the gold answer nearly impossible. Every tool turn of the step, both ways:

# %%
import plotly.graph_objects as go

turns = torch.as_tensor(record.num_tool_turns)
ig_prob, _, _ = lab.information_gain(torch.as_tensor(np.log(record.p)), turns, mode="prob")
ig_log, _, _ = lab.information_gain(torch.as_tensor(np.log(record.p)), turns, mode="logprob")
rows, cols = np.nonzero(np.isfinite(ig_prob.numpy()))
figure = go.Figure(go.Scatter(
    x=ig_prob.numpy()[rows, cols], y=ig_log.numpy()[rows, cols], mode="markers",
    marker=dict(size=9, color=cols + 1, colorscale="Viridis", colorbar=dict(title="turn k")),
    customdata=np.stack([rows, cols + 1], axis=1),
    hovertemplate="rollout %{customdata[0]}, turn %{customdata[1]}<br>p diff %{x:.4f}<br>log-p diff %{y:.3f}<extra></extra>"))
figure.update_layout(template="plotly_white", height=380, xaxis_title="IG, probability difference (default)",
                     yaxis_title="IG, log-probability difference", title=f"the two IG modes on step {record.step}")
show(figure)

# %% [markdown]
# What to look for: first searches that only reveal the answer's type move $p$ from about $10^{-4}$ to
# about $0.1$, a large log-gain (several nats) but a small probability gain; a search that retrieves the
# answer and lifts $p$ to near 1 has the largest probability gain, yet often a smaller log-gain than the
# type information. Searches that make the gold answer nearly impossible sit far below zero in log
# mode only. Which ordering you want is the choice the `ig_mode` knob makes.

# %% [markdown]
# ## 5. Why IG needs the gold answer
#
# The probe scores the *gold* answer. Score the same rollouts against a decoy (another question's
# answer): IG is not "the model became more confident", it is "the model became more confident **in the
# gold answer**". Two consequences:
#
# - IG exists only where the gold answer is known: it is a *training* signal for questions with
#   answers, never something an agent can compute at test time;
# - with several gold aliases the probe uses the first (`answers[0]`), while the outcome reward takes
#   the best match over all of them.

# %%
import dataclasses

batch = traj.batch_size
decoys = [traj.answers[(b + GENERATIONS) % batch] for b in range(batch)]   # the next prompt's answer
decoy_logprob, _ = lab.score_probes(model, tokenizer, dataclasses.replace(traj, answers=decoys), cfg)
_, p_decoy, _ = lab.information_gain(decoy_logprob, traj.num_tool_turns)
last = traj.num_tool_turns.long()[:, None]
p_gold_end, p_decoy_end = p.gather(1, last)[:, 0], p_decoy.gather(1, last)[:, 0]
found = torch.tensor([any(traj.answers[b][0] in seen.split() for seen in traj.observations[b]) for b in range(batch)])
print(f"{'rollouts':44s} {'n':>3s} {'p(gold) at the end':>19s} {'p(decoy) at the end':>20s}")
for label, rows in (("whose searches retrieved the gold answer", found), ("whose searches did not", ~found)):
    if rows.any():
        print(f"{label:44s} {int(rows.sum()):3d} {float(p_gold_end[rows].mean()):19.4f} {float(p_decoy_end[rows].mean()):20.4f}")

# %% [markdown]
# Where the searches never reached the answer, gold and decoy can end up about equally likely: the
# model only learned what kind of answer to give, and IG then rewards the type information, equally for
# any answer of that type. Where the answer was retrieved, the gold answer pulls ahead of the decoy (by
# how much depends on how well the model copies from its context). IG measures progress towards *the*
# answer only to the extent that the policy can use what it read.

# %% [markdown]
# **Takeaways.** $p_t$ is one teacher-forced forward pass per turn (shared through the KV cache); IG is
# its change per search; it is dense (every search gets a number) and specific (a search for the wrong
# entity is punished where it happened). Raw IG values live on different scales at different depths
# and are often identical across rollouts, which is what the normalization of notebook 02 must handle.
