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
# - training in a background thread so the notebook stays responsive, even under Run All;
# - callbacks (here: one that pauses the run at a given step), and where the logs and checkpoints go.
#
# *Run time on a 2-core CPU without a GPU, measured as the CPU time of the notebook's kernel on one thread
# (about the wall time on an idle machine; how: `notebooks/README.md`): default setting about 1 minute
# (estimated: 40 steps at 1.2 s of CPU each, four 200-question evaluations, checkpoints), smoke setting 14 s.*

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
from IPython.display import HTML, Markdown, display

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
# `trainer.train_in_background()` runs `trainer.train()` in a thread and returns at once, so this notebook's
# kernel stays free: the dashboard's buttons and slider answer while training runs. Widget clicks reach the
# kernel only while no cell is running, so the cell that starts the run is the last one that runs during
# training: nothing after it waits for the run. What needs the finished run goes to
# `dashboard.when_finished(report)`: `report(trainer)` is called when training ends, and what it returns
# (figures, HTML) appears below the dashboard. The dashboard never slows the loop down: its per-step callback
# only appends the record; a separate thread redraws at most every `update_interval` seconds, and only the
# visible tab.
#
# A callback is any object with some of `on_train_begin(trainer)`, `on_step_end(trainer, record)`,
# `on_evaluate(trainer, metrics)`, `on_pause(trainer)`, `on_resume(trainer)`, `on_train_end(trainer)`. This
# one pauses the run after a given step, the way you would press **pause** to look at something:

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

# %% [markdown]
# What the finished run reports, below the dashboard: the exact match during training, the training curves,
# the clip fraction per turn, the files the run wrote, and a resumed trainer (section 4).

# %%
import html
from pathlib import Path


def report(trainer):
    """Figures and text for the finished run (called by the dashboard when training ends)."""
    evals = [(int(row["step"]), round(row["eval/em"], 3)) for row in trainer.history if "eval/em" in row]
    files = sorted(path.name for path in Path(output_dir).iterdir())
    resumed = lab.A2TGPOTrainer(cfg.replace(max_steps=STEPS + 1, resume_from_checkpoint="latest"))
    text = [f"finished {trainer.global_step} steps",
            f"greedy dev exact match during training (step, EM): {evals}",
            f"{output_dir} holds: {', '.join(files)}",
            f"a new trainer with resume_from_checkpoint='latest' starts at step {resumed.global_step} "
            f"with {len(resumed.history)} history rows"]
    return ["<pre>" + html.escape("\n".join(text)) + "</pre>",
            viz.training_curves_figure(trainer.history), viz.clip_fraction_figure(trainer.history)]


dashboard = viz.Dashboard(trainer, update_interval=1.0)
dashboard.when_finished(report)
display(dashboard)
thread = trainer.train_in_background()

# %% [markdown]
# ## 3. Paused: inspect the run while it waits
#
# After step `PAUSE_AFTER_STEP` the callback pauses the run: the dashboard's status line says *paused after
# step …*. `pause()` lets the running step finish, with its evaluation and checkpoint when one is due, and
# holds the loop before the next step. While it waits, look around: move the step slider (untick *follow
# latest*), open the *rollouts* tab, or run a cell of your own, e.g.
#
# ```python
# record = trainer.records[-1]
# print({key: round(record.metrics[key], 4) for key in ("reward", "num_turns/mean", "ig/mean", "clip_ratio/region_mean")})
# display(viz.RolloutInspector(record, rollout=int(np.argmax(record.num_tool_turns))))
# ```
#
# Records and history are safe to read at any time, paused or not. Then press **resume** (or run
# `trainer.resume()`). **stop** finishes the current step, saves a checkpoint and leaves `train()`; Kernel →
# Interrupt does the same.
#
# ## 4. After the run: figures, logs, checkpoints
#
# When the run ends, the report appears below the dashboard. Everything the dashboard showed is in the
# records; `viz.Dashboard.from_records(trainer.records)` rebuilds it offline, e.g. from records you pickled. On
# disk, `output_dir` holds `metrics.jsonl` (one line of metrics per step), `completions.jsonl` (every rollout
# with its IG and advantages), `eval.jsonl`, `config.json` and `checkpoint-<step>/` directories.
#
# To continue a run later, point a new trainer at the same `output_dir` with
# `resume_from_checkpoint="latest"` and a larger `max_steps`: model, optimizer, scheduler, random state and
# history are restored, and the continued run sees exactly the batches the uninterrupted one would have
# seen. The report's last line did just that.
#
# CI runs this notebook in the smoke setting, where nobody is there to press **resume**: the next cell does
# what a person would (waits for the pause, looks at the paused run, resumes, waits for the end) and shows the
# report in the notebook. With `SMOKE = False` it does nothing, so the kernel stays free for the buttons.

# %%
if SMOKE:
    pauser.reached.wait(timeout=600)
    record = trainer.records[-1]
    print(f"paused: {trainer.paused} after step {record.step}; reward {record.metrics['reward']:.3f}")
    display(viz.RolloutInspector(record, rollout=int(np.argmax(record.num_tool_turns))))
    trainer.resume()
    thread.join()
    shown = str(dashboard.results.outputs)      # what the dashboard displayed when the run ended
    assert shown != "()" and "when_finished:" not in shown, f"the report failed in the dashboard: {shown[:300]}"
    for part in report(trainer):
        display(HTML(part)) if isinstance(part, str) else show(part)
