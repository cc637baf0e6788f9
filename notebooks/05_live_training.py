# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 05 · Live training: an A²TGPO run you can watch, pause, inspect and resume
#
# **What you'll learn**
#
# - the training loop, readable top to bottom in one method;
# - the live dashboard: training curves, per-step views (IG, groups, advantages, clip bands, ratios,
#   rollouts), a step slider to go back, and pause / resume / stop buttons;
# - training in a background thread so the notebook stays responsive;
# - callbacks (here: one that pauses the run at a given step), and where the logs and checkpoints go.

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one

# %%
STEPS = 4 if SMOKE else 40
PROMPTS, GENERATIONS = (4, 4) if SMOKE else (8, 8)
EVAL_EVERY, EVAL_PROMPTS = (2, 16) if SMOKE else (10, 200)
PAUSE_AFTER_STEP = 1 if SMOKE else 5          # the callback below pauses the run after this step

# %%
import inspect

import numpy as np
from IPython.display import Markdown, display

import a2tgpo_lab as lab
from a2tgpo_lab import viz
from a2tgpo_lab.viz import show


def show_source(function):
    """Display the source of a library function, so the code sits next to its equation."""
    display(Markdown(f"```python\n{inspect.getsource(function)}```"))


# %% [markdown]
# ## 1. One step of the loop
#
# Rollout → probe → IG → advantages → clip bands → PPO update → record. This is the whole step:

# %%
show_source(lab.A2TGPOTrainer.step)

# %% [markdown]
# ## 2. Start a run in the background
#
# `trainer.train_in_background()` runs `trainer.train()` in a thread and returns it, so this notebook's
# kernel stays free: the dashboard's buttons and slider answer while training runs. The dashboard
# never slows the loop down: its per-step callback only appends the record; a separate thread redraws at
# most every `update_interval` seconds, and only the visible tab.
#
# A callback is any object with some of `on_train_begin(trainer)`, `on_step_end(trainer, record)`,
# `on_evaluate(trainer, metrics)`, `on_train_end(trainer)`. This one pauses the run after a given step,
# the way you would press the pause button to look at something:

# %%
import tempfile
import threading


class PauseAfter:
    """Pause the trainer when step `step` has finished, and tell the notebook."""

    def __init__(self, step: int):
        self.step, self.reached = step, threading.Event()

    def on_step_end(self, trainer, record):
        if record.step == self.step:
            trainer.pause()           # takes effect before the next step starts
            self.reached.set()


output_dir = tempfile.mkdtemp(prefix="a2tgpo_live_")
cfg = lab.preset("a2tgpo", max_steps=STEPS, num_prompts_per_step=PROMPTS, num_generations=GENERATIONS,
                 eval_steps=EVAL_EVERY, eval_num_prompts=EVAL_PROMPTS, save_steps=EVAL_EVERY, output_dir=output_dir)
pauser = PauseAfter(PAUSE_AFTER_STEP)
trainer = lab.A2TGPOTrainer(cfg, callbacks=[pauser])
dashboard = viz.Dashboard(trainer, update_interval=1.0)
display(dashboard)

# %%
thread = trainer.train_in_background()

# %% [markdown]
# ## 3. Paused: inspect the run while it waits
#
# The next cell waits until the callback has paused the run (in JupyterLab you could equally press
# **pause** on the dashboard). `pause()` lets the running step finish, with its evaluation and checkpoint
# when one is due, and holds the loop before the next step; records and history are safe to read at any
# time, paused or not.

# %%
while not pauser.reached.wait(timeout=1.0):
    if not thread.is_alive():
        raise RuntimeError("training ended before the pause step; see the error printed above")
print(f"paused: {trainer.paused}; steps done: {len(trainer.records)}")
record = trainer.records[-1]
for key in ("reward", "num_turns/mean", "ig/mean", "ig/zero_std_group_frac", "clip_ratio/region_mean"):
    print(f"  {key:26s} {record.metrics[key]:.4f}")
display(viz.RolloutInspector(record, rollout=int(np.argmax(record.num_tool_turns))))

# %% [markdown]
# While paused you can look at any kept step with the dashboard's slider (untick *follow latest*), open
# the *rollouts* tab, or build any figure from `trainer.records`. Then resume:

# %%
trainer.resume()

# %% [markdown]
# The next cell blocks until training ends. The dashboard keeps refreshing meanwhile, but the buttons
# need a free kernel: in JupyterLab, skip this cell if you want to press them (or press **stop**, which
# finishes the current step, saves a checkpoint and leaves `train()`).

# %%
thread.join()
print(f"finished {trainer.global_step} steps")
evals = [(row["step"], row["eval/em"]) for row in trainer.history if "eval/em" in row]
print("greedy dev exact match during training (step, EM):", [(int(s), round(em, 3)) for s, em in evals])

# %% [markdown]
# ## 4. After the run: static figures, logs, checkpoints

# %%
show(viz.training_curves_figure(trainer.history))

# %%
show(viz.clip_fraction_figure(trainer.history))

# %% [markdown]
# Everything the dashboard showed is in the records; `viz.Dashboard.from_records(trainer.records)` rebuilds
# it offline, e.g. from records you pickled. On disk, `output_dir` holds `metrics.jsonl` (one line of
# metrics per step), `completions.jsonl` (every rollout with its IG and advantages), `eval.jsonl`,
# `config.json` and `checkpoint-<step>/` directories.

# %%
from pathlib import Path

for path in sorted(Path(output_dir).iterdir()):
    print(path.name)

# %% [markdown]
# To continue a run later, point a new trainer at the same `output_dir` with
# `resume_from_checkpoint="latest"` and a larger `max_steps`: model, optimizer, scheduler, random state
# and history are restored, and the continued run sees exactly the batches the uninterrupted one would
# have seen.

# %%
resumed = lab.A2TGPOTrainer(cfg.replace(max_steps=STEPS + 1, resume_from_checkpoint="latest"))
print(f"resumed at step {resumed.global_step} with {len(resumed.history)} history rows")
