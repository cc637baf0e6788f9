# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 07 · Debugging an agentic RL run
#
# **What you'll learn**
#
# - the rollout inspector: one trajectory token by token, as the loss saw it;
# - how six common failure modes look in the metrics and the views, and what to do about each:
#
# | symptom | where it shows | usual cause | fix |
# |---|---|---|---|
# | no learning signal on many prompts | `frac_reward_zero_std`, `ig/zero_std_group_frac` | every rollout of a prompt got the same reward / did the same | more generations, T = 1 sampling, questions of the right difficulty; IG still gives signal |
# | tool output trained as if the model wrote it | inspector: observation tokens coloured as model tokens | a `loss_mask` / `turn_ids` bug | train only tokens with `turn_ids > 0`; check with the inspector |
# | loss spikes, policy collapses | `ratio/max`, `clip_ratio/*` | too large a step, stale ratios | lower LR, fewer `num_iterations`, `dual_clip`, turn-level ratio |
# | `ig/nonfinite_count` > 0 | the metric | a NaN/−inf probe score | dropped and counted, never trained on; check dtype and the gold answer |
# | the model never answers | `answer_rate`, `format_error_rate`, all rewards equal | no warm start, wrong chat template or stop token | SFT first; check `tokenizer.chat_template`, the EOS token |
# | turns cut in the middle | `end_reason` = `malformed` (unbalanced tags) | `max_new_tokens_per_turn` too small | raise it (real models need 256 or more) |
#
# *Run time on a 2-core CPU without a GPU, measured as the CPU time of the notebook's kernel on one thread
# (about the wall time on an idle machine; how: `notebooks/README.md`): default setting 11 s, smoke setting 9
# s.*

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one

# %%
PROMPTS, GENERATIONS = (4, 4) if SMOKE else (8, 8)

# %%
import inspect

import numpy as np
import torch
from IPython.display import HTML, Markdown, display

import a2tgpo_lab as lab
from a2tgpo_lab import viz


def show_source(function):
    """Display the source of a library function, so the code sits next to its equation."""
    display(Markdown(f"```python\n{inspect.getsource(function)}```"))


# %%
import dataclasses
import tempfile
from collections import Counter

tool = lab.bundled_search_tool()
questions = lab.load_split("train")
cfg = lab.preset("a2tgpo", num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                 output_dir=tempfile.mkdtemp(prefix="a2tgpo_nb07_"))
trainer = lab.A2TGPOTrainer(cfg, train_examples=questions, tool=tool)
record = trainer.step()
print(f"step {record.step}: end reasons {dict(Counter(record.end_reason))}")

# %% [markdown]
# ## 1. The rollout inspector
#
# Model tokens (the only ones trained, `loss_mask`) are coloured by their assistant turn; prompt and
# observation tokens are grey. Switch *colour by* to `advantage` to see what each token was pushed
# towards; underlined tokens were clipped. The table lists IG, Î, A and c per turn; hover a token for its
# position, turn, advantage and ratio.

# %%
deepest = int(np.argmax(record.num_tool_turns))
display(viz.RolloutInspector(record, rollout=deepest))

# %% [markdown]
# ## 2. Zero-std groups: prompts that teach nothing
#
# When all $G$ rollouts of a prompt get the same reward, $\tilde o_i = 0$ for all of them: GRPO has no
# signal there at all. A²TGPO still has one wherever the rollouts' IG differed at some turn.

# %%
flat = [int(q) for q in np.unique(record.prompt_index) if np.ptp(record.outcome_reward[record.prompt_index == q]) == 0]
print(f"frac_reward_zero_std = {record.metrics['frac_reward_zero_std']:.2f}; prompts with one reward for all: {flat}")
as_tensor = lambda x: torch.as_tensor(np.asarray(x))
grpo = lab.compute_advantages(lab.preset("grpo"), as_tensor(record.ig), as_tensor(record.outcome_reward),
                              as_tensor(record.prompt_index), as_tensor(record.num_tool_turns))
for q in flat:
    rows = np.nonzero(record.prompt_index == q)[0]
    grpo_signal = np.nanmax(np.abs(grpo.advantages.numpy()[rows]))
    a2tgpo_signal = np.nanmax(np.abs(record.advantages[rows]))
    print(f"prompt {q}: reward {record.outcome_reward[rows[0]]:+.0f} for all; largest |A|: GRPO {grpo_signal:.3f}, "
          f"A²TGPO {a2tgpo_signal:.3f}")
print(f"IG groups with zero spread: {record.zero_std_group_frac:.2f} (notebook 02)")

# %% [markdown]
# ## 3. Mask errors: a tool response leaking into the loss
#
# Only tokens the model generated may be trained. The classic bug marks *everything after the prompt* as
# trainable, observations included: the model is then taught to write the search results itself, i.e. to
# hallucinate them. Two variants, built here on purpose from a real rollout:
#
# Per-turn values reach the tokens through one function; every model token must belong to a turn:

# %%
show_source(lab.broadcast_to_tokens)

# %% [markdown]
# **(a) the loss mask covers observations, turn ids do not.** `broadcast_to_tokens` refuses: a trained
# token must belong to an assistant turn.

# %%
i = deepest
per_turn = torch.as_tensor(record.advantages[i:i + 1])
turn_ids = np.asarray(record.turn_ids[i])
first_model_token = int(np.argmax(record.loss_mask[i]))
everything_after_prompt = np.arange(turn_ids.size) >= first_model_token
try:
    lab.broadcast_to_tokens(per_turn, torch.as_tensor(turn_ids)[None], torch.as_tensor(everything_after_prompt)[None])
except ValueError as error:
    print("ValueError:", error)

# %% [markdown]
# **(b) observations are also labelled with the turn before them.** Now nothing complains: every
# observation token silently receives its turn's advantage. The inspector shows it at once (the
# `<information>` text is coloured like model tokens), and a one-line invariant catches it: no trained
# token may sit inside an `<information> … </information>` span.

# %%
carried_turn_ids = np.where(everything_after_prompt, np.maximum.accumulate(turn_ids), 0)
leaked_advantage = lab.broadcast_to_tokens(per_turn, torch.as_tensor(carried_turn_ids)[None],
                                           torch.as_tensor(everything_after_prompt)[None])[0]


def with_rollout(record, i, **fields):
    """A copy of the record whose rollout i has other per-token arrays."""
    changed = {}
    for name, value in fields.items():
        rows = list(getattr(record, name))
        rows[i] = value
        changed[name] = rows
    return dataclasses.replace(record, **changed)


def trained_observation_tokens(record, i):
    """Positions of trained tokens inside an <information> … </information> span (must be none).

    A span is closed by </information> and opened by the last <information> before it (the system
    prompt also mentions the tag, without closing it)."""
    leaked, opened = [], None
    for position, token in enumerate(record.tokens[i]):
        if token == "<information>":
            opened = position
        elif token == "</information>" and opened is not None:
            leaked += [p for p in range(opened, position + 1) if record.loss_mask[i][p]]
            opened = None
    return leaked


broken = with_rollout(record, i, loss_mask=everything_after_prompt, turn_ids=carried_turn_ids,
                      token_advantage=leaked_advantage.numpy())
print(f"trained observation tokens: correct record {len(trained_observation_tokens(record, i))}, "
      f"broken one {len(trained_observation_tokens(broken, i))}")
display(HTML(viz.rollout_html(broken, i)))

# %% [markdown]
# ## 4. Ratio blow-ups
#
# PPO's clip bounds the ratio only in the direction the advantage pushes. For $A < 0$ a token whose
# probability *rose* a lot (ratio 20) stays on the unclipped branch, and its loss and gradient grow with
# the ratio. Three ways to hold it, on one toy turn of 4 tokens where one token became $e^3 \approx 20$
# times more likely:

# %%
old_logprobs = torch.full((1, 4), -1.0)
logprobs = old_logprobs.clone()
logprobs[0, 2] += 3.0
logprobs.requires_grad_(True)
one_turn, all_model = torch.ones(1, 4, dtype=torch.long), torch.ones(1, 4, dtype=torch.bool)
advantage = torch.full((1, 4), -1.0)
settings = [("token ratio, ε 0.2", dict(ratio_level="token"), (0.2, 0.2)),
            ("token ratio + dual clip 3", dict(ratio_level="token", dual_clip=3.0), (0.2, 0.2)),
            ("turn ratio, ε 3e-3/4e-3", dict(ratio_level="turn"), (3e-3, 4e-3))]
for label, knobs, (eps_low, eps_high) in settings:
    loss, out = lab.policy_loss(logprobs, old_logprobs, advantage, one_turn, all_model,
                                torch.full((1, 4), 1 - eps_low), torch.full((1, 4), 1 + eps_high), **knobs)
    grad, = torch.autograd.grad(loss, logprobs)
    print(f"{label:27s} ratios {np.round(out.ratio[0].numpy(), 2)}  clipped {out.clipped[0].tolist()}  "
          f"loss {float(loss.detach()):6.3f}  |grad| {grad.abs().max():.3f}")
print(f"\nthis run's step: ratio/max {record.metrics['ratio/max']:.4f}, clip_ratio/region_mean "
      f"{record.metrics['clip_ratio/region_mean']:.4f}")

# %% [markdown]
# The turn-level ratio averages the turn's log-ratios (a whole turn moves together and a single token
# cannot dominate), dual clip caps the loss of negative-advantage tokens at $c_\text{dual}\,|A|$. In a
# real run watch `ratio/max` and `clip_ratio/*` in the dashboard; a sudden jump means the update was too
# large (lower the learning rate or `num_iterations`, keep `max_grad_norm`).
#
# ## 5. NaN information gain: counted and dropped
#
# A probe score can come out NaN or −∞ (an overflow in half precision, an answer that tokenizes
# strangely). Such IG terms are dropped, counted in `ig/nonfinite_count`, and treated as 0 in the
# accumulation; the step never crashes. In the probability mode $p = 0$ is a legitimate value, but its
# log-difference is not:

# %%
nan = float("nan")
probe_scores = torch.tensor([[-4.0, nan, -0.5, -0.1, nan],            # ℓ_t, t = 0..3 (column 4: past K)
                             [-4.0, -2.0, float("-inf"), -3.0, nan]])
three_searches = torch.tensor([3, 3])                                  # K = 3 searches, then the answer turn
for mode in ("prob", "logprob"):
    ig, _, dropped = lab.information_gain(probe_scores, three_searches, mode=mode)
    print(f"{mode:8s} dropped {dropped}, IG [B, T]:\n{np.array2string(ig.numpy(), precision=4)}")
ig, _, _ = lab.information_gain(probe_scores, three_searches)
result = lab.compute_advantages(lab.preset("a2tgpo"), ig, torch.tensor([1.0, 0.0]), torch.tensor([0, 0]), three_searches)
print(f"Î:\n{np.array2string(result.ig_norm.numpy(), precision=3)}")
print(f"A (finite: the dropped terms count as 0):\n{np.array2string(result.advantages.numpy(), precision=3)}")
print(f"this run's step: ig/nonfinite_count = {record.metrics['ig/nonfinite_count']:.0f}")

# %% [markdown]
# ## 6. A model that never answers
#
# RL cannot start from a policy that never produces a parsable answer: every rollout gets the format
# penalty, all rewards in a group are equal, and every advantage is 0. Here is an untrained model (random
# weights, same tokenizer) in the same trainer:

# %%
untrained = lab.build_tiny_qwen(trainer.tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
cold = lab.A2TGPOTrainer(cfg, model=untrained, tokenizer=trainer.tokenizer, train_examples=questions, tool=tool).step()
print("end reasons:", dict(Counter(cold.end_reason)))
for key in ("answer_rate", "format_error_rate", "reward", "frac_reward_zero_std", "advantages/std"):
    print(f"  {key:20s} {cold.metrics[key]:.3f}")
print("a turn it wrote:", cold.turn_texts[0][0][:120])

# %% [markdown]
# The fix is a supervised warm start on demonstrations of the protocol (`scripts/build_tiny_model.py` does
# it for the bundled model); for a real chat model, check that the chat template renders the protocol and
# that the end-of-turn token is the EOS the rollout stops on.
#
# A related failure: turns cut in the middle because the per-turn token cap is too small. They end
# as `malformed` (an unclosed tag), so they look like a format problem of the model. Same model, same
# questions, `max_new_tokens_per_turn=3`:

# %%
capped = lab.generate_rollouts(trainer.model, trainer.tokenizer, questions[:PROMPTS], tool,
                               cfg.replace(max_new_tokens_per_turn=3), num_generations=2)
print("end reasons:", dict(Counter(capped.end_reason)))
print("why:", dict(Counter(actions[-1].content for actions in capped.actions if actions[-1].kind == "malformed")))
print("a cut turn:", capped.turn_texts[0][-1])
