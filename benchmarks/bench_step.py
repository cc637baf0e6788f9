"""One training step, phase by phase: where the time goes, what each optimization saves, peak memory.

    python benchmarks/bench_step.py                       # quickstart step, 1 and 2 threads, 3 repeats
    python benchmarks/bench_step.py --rss                 # + peak RSS of a short quickstart run per setting
    python benchmarks/bench_step.py --scaling             # + step time against G, turns and model size
    python benchmarks/bench_step.py --ratio_only --repeats 7 --threads 1   # A²TGPO / GRPO with less noise
    python benchmarks/bench_step.py --update_only --repeats 9 --threads 1  # the update knobs, generation left out

**Split.** Each row is one configuration of the quickstart's step (the bundled tiny model, 8 prompts × 8
rollouts) timed by the trainer's own per-phase metrics: ``time/generation``, ``time/ig_forward`` (the IG
probe), ``time/old_logprob`` (the π_old forward), ``time/actor_update`` (the PPO update) and
``time/other`` — the split of the paper's Fig. 7 — measured here in CPU seconds of this process (the
trainer logs wall seconds), with each step's wall time beside it.

**Equal work.** Every measured step starts from the same weights, optimizer state and step index, so
every configuration samples exactly the same rollouts and trains on them; only how it computes differs.
GRPO runs with ``controlled=True`` (the A²TGPO loss, no KL reference pass), so the A²TGPO / GRPO ratio
is the cost of the IG probe alone, as in the paper's Fig. 7.

**Toggles.** ``all on`` is the default config; ``all off`` switches every optimization off (recomputed
π_old, the probe encoding its contexts itself, logits at every position, one micro-batch padded to
the longest rollout, every rollout encoding its own prompt, no length buckets, every rollout decoding
until its turn's longest row ends, each rollout decoding in its own cache row, identical rollouts each
forwarded); each ``− knob`` row turns one optimization off. (Exact changes without a knob are on in every
row, the baseline included: identical prompts encoded once when sampling starts, each observation fed
once per distinct history, the cache growing in place.) ``− probe reuses cache`` does the all-on work:
that knob acts only when the probe runs after the rollout, as it does in ``all off``.
Configurations run alternately, repeat after repeat, so a change of machine load hits all of them
alike; the table shows medians.

**Memory** (``--rss``): each setting runs ``a2tgpo-lab train`` (evaluation, a few steps, evaluation) in a
fresh process and reports that process's peak resident set size.

**Scaling** (``--scaling``): a random Qwen3 over the bundled vocabulary whose turns are forced to
``<search> ENTITY RELATION </search>`` (bench_rollout_kv.py), so every rollout takes exactly the asked
number of turns; step time with everything on and off, against G, turns and model size.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from a2tgpo_lab import preset
from a2tgpo_lab.trainer import A2TGPOTrainer

PHASES = ("generation", "ig_forward", "old_logprob", "actor_update", "other")
# Every optimization off: the step as computed before them.
KNOBS = {  # one optimization, and the value that switches it off
    "sampler logprobs": ("old_logprobs", "recompute"),
    "probe while sampling": ("probe_while_sampling", False),
    "probe reuses cache": ("probe_reuse_cache", False),
    "scored logits only": ("scored_logits_only", False),
    "token-budget micro-batches": ("micro_batch_tokens", None),
    "shared prompt prefix": ("share_prompt_prefix", False),
    "length buckets": ("bucket_cost_tokens", None),
    "shared histories": ("share_identical_histories", False),
    "parked rows": ("park_finished_rows", None),
    "identical rollouts once": ("share_identical_rollouts", False),
}
ALL_OFF = dict(KNOBS.values())


def load_world():
    from a2tgpo_lab.envs.search import bundled_search_tool
    from a2tgpo_lab.envs.world import load_split

    return load_split("train"), load_split("dev"), bundled_search_tool(topk=2)


def settings(estimators: list[str]) -> dict[str, tuple[str, dict]]:
    """Name -> (preset, overrides) of every configuration the split table compares."""
    out = {}
    for name in estimators:  # every preset with the A2TGPO loss, so they differ only in the IG probe
        out[f"{name} all on"] = (name, dict(controlled=True))
        out[f"{name} all off"] = (name, dict(controlled=True, **ALL_OFF))
    for label, (field, off) in KNOBS.items():
        out[f"{estimators[0]} − {label}"] = (estimators[0], {"controlled": True, field: off})
    return out


class EqualWorkStep:
    """Runs step ``step_index`` of a configuration from one fixed starting model, every time."""

    def __init__(self, model, tokenizer, world, step_index: int = 0):
        self.model, self.tokenizer, self.world, self.step_index = model, tokenizer, world, step_index

    def trainer(self, cfg) -> A2TGPOTrainer:
        """A trainer of ``cfg`` on a fresh copy of the starting model, about to run step ``step_index``."""
        train, dev, tool = self.world
        trainer = A2TGPOTrainer(cfg, model=copy.deepcopy(self.model), tokenizer=self.tokenizer,
                                train_examples=train, eval_examples=dev, tool=tool)
        trainer.global_step = self.step_index
        return trainer

    def __call__(self, cfg) -> dict[str, float]:
        trainer = self.trainer(cfg)
        started = time.perf_counter()
        record = trainer.step()
        wall = time.perf_counter() - started
        return ({phase: record.metrics[f"time/{phase}"] for phase in PHASES}
                | {"step": record.metrics["time/step_s"], "wall": wall})


def alternate(run, configs: dict, repeats: int) -> dict[str, dict[str, float]]:
    """Median of each timing over ``repeats`` rounds; each round runs every config once, in turn."""
    samples = {name: [] for name in configs}
    run(next(iter(configs.values())))  # warm-up: the first step in a process pays one-off costs
    for round_ in range(repeats):
        for name, cfg in configs.items():
            samples[name].append(run(cfg))
        print(f"  round {round_ + 1}/{repeats} done, load average {load()}", file=sys.stderr, flush=True)
    return {name: {key: statistics.median(s[key] for s in rows) for key in rows[0]} for name, rows in samples.items()}


def print_split(medians: dict[str, dict[str, float]], baseline: str) -> None:
    print("CPU seconds per phase (this process), then the step's CPU and wall seconds, speed-ups vs " + baseline)
    print(f"{'configuration':<34}" + "".join(f"{p:>13}" for p in PHASES)
          + f"{'step CPU s':>11}{'speed-up':>9}{'wall s':>9}{'speed-up':>9}")
    for name, row in medians.items():
        print(f"{name:<34}" + "".join(f"{row[p]:>13.3f}" for p in PHASES)
              + f"{row['step']:>11.3f}{medians[baseline]['step'] / row['step']:>8.2f}x"
              + f"{row['wall']:>9.3f}{medians[baseline]['wall'] / row['wall']:>8.2f}x")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def split_benchmark(args, model, tokenizer, world) -> None:
    estimators = ["a2tgpo", "grpo"]
    base = dict(output_dir=tempfile.mkdtemp(prefix="bench_step_"), **json.loads(args.overrides))
    configs = {name: preset(p, **base, **over) for name, (p, over) in settings(estimators).items()
               if not args.ratio_only or name.endswith(("all on", "all off"))}
    run = EqualWorkStep(model, tokenizer, world, args.step_index)
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n## {threads} thread(s); load average before {load()}")
        medians = alternate(run, configs, args.repeats)
        print_split(medians, "a2tgpo all off")
        for clock in ("step", "wall"):
            on, off = medians["a2tgpo all on"][clock], medians["a2tgpo all off"][clock]
            name = "CPU" if clock == "step" else "wall"
            print(f"[{name}] step speed-up, all on vs all off: a2tgpo {off / on:.2f}x, "
                  f"grpo {medians['grpo all off'][clock] / medians['grpo all on'][clock]:.2f}x;   "
                  f"A2TGPO step / GRPO step: all on {on / medians['grpo all on'][clock]:.3f}, "
                  f"all off {off / medians['grpo all off'][clock]:.3f}")
        print(f"load average after {load()}")


# The knobs that change the PPO update's work (the others act before it).
UPDATE_KNOBS = ("scored logits only", "token-budget micro-batches", "shared prompt prefix", "length buckets",
                "identical rollouts once")


def update_benchmark(args, model, tokenizer, world) -> None:
    """The actor update alone, each update knob off in turn, over one fixed trajectory (step
    ``step_index``'s rollouts of an all-on A²TGPO step): generation's run-to-run spread stays out of it."""
    base = dict(output_dir=tempfile.mkdtemp(prefix="bench_update_"), controlled=True, **json.loads(args.overrides))
    configs = {"all on": preset("a2tgpo", **base)}
    configs |= {f"− {label}": preset("a2tgpo", **base, **{KNOBS[label][0]: KNOBS[label][1]}) for label in UPDATE_KNOBS}
    configs["all off"] = preset("a2tgpo", **base, **ALL_OFF)

    step = EqualWorkStep(model, tokenizer, world, args.step_index)
    captured = {}
    capture = step.trainer(configs["all on"])
    update = capture._ppo_update

    def capture_then_update(*inputs):
        captured["inputs"] = inputs
        return update(*inputs)

    capture._ppo_update = capture_then_update
    capture.step()

    def run(cfg) -> dict[str, float]:
        trainer = step.trainer(cfg)
        started = time.process_time()
        trainer._ppo_update(*captured["inputs"])
        return {"update": time.process_time() - started}

    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\n## actor update of one fixed step-{args.step_index} trajectory, {threads} thread(s); "
              f"load average before {load()}")
        medians = alternate(run, configs, args.repeats)
        off = medians["all off"]["update"]
        print(f"{'configuration':<34}{'update CPU s':>13}{'vs all off':>11}")
        for name, row in medians.items():
            print(f"{name:<34}{row['update']:>13.3f}{off / row['update']:>10.2f}x")
        print(f"load average after {load()}")


def rss_benchmark(args) -> None:
    """Peak RSS of `a2tgpo-lab train` (eval, steps, eval) per setting, each in a fresh process."""
    print(f"\n## peak RSS of `a2tgpo-lab train --max_steps {args.rss_steps} --eval_num_prompts 64` "
          "(a fresh process per setting)")
    for name, overrides in (("all on", {}), ("all off", ALL_OFF)):
        with tempfile.TemporaryDirectory() as tmp:
            config = Path(tmp) / "config.yaml"
            config.write_text(json.dumps({"preset": "a2tgpo", **overrides, **json.loads(args.overrides)}))
            before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "a2tgpo_lab", "train", "--config", str(config), "--max_steps",
                            str(args.rss_steps), "--eval_num_prompts", "64", "--output_dir", f"{tmp}/run"],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            # ru_maxrss of children is the largest child so far: only a new maximum is this child's own
            shown = f"{peak / 2**20:.2f} GB" if peak > before else f"<= {before / 2**20:.2f} GB"
            print(f"{name:<10} peak RSS {shown}   ({time.perf_counter() - started:.0f} s)")


def scaling_benchmark(args, tokenizer, world) -> None:
    """Step time (all on / all off) against G, turns and model size, on forced-search random models."""
    from bench_rollout_kv import force_search_turns

    from a2tgpo_lab.tiny import build_tiny_qwen

    train, dev, tool = world
    entities = sorted({query.split()[0] for e in train[:200] for query in e.meta["queries"]})
    entities = [e for e in entities if tokenizer.convert_tokens_to_ids(e) != tokenizer.unk_token_id]
    torch.set_num_threads(args.threads[0])
    cases = [("G", g, dict(num_generations=g), (128, 4)) for g in (4, 8, 16)]
    cases += [("turns", t, dict(max_turns=t), (128, 4)) for t in (2, 4, 6)]
    cases += [("model", shape, {}, shape) for shape in ((64, 2), (128, 4), (256, 6), (512, 8))]
    print(f"\n## scaling ({torch.get_num_threads()} thread(s), {args.scaling_prompts} prompts, default G 8 and "
          f"4 turns, median of {args.repeats}); load average before {load()}")
    print("CPU seconds of one step")
    print(f"{'vary':<6}{'value':>12}{'params':>9}{'all on s':>10}{'all off s':>11}{'speed-up':>10}"
          f"{'gen share':>11}{'A2TGPO/GRPO':>13}")
    for vary, value, overrides, (hidden, layers) in cases:
        model = build_tiny_qwen(tokenizer, hidden_size=hidden, num_layers=layers, num_heads=4,
                                intermediate_size=3 * hidden)
        force_search_turns(model, tokenizer, entities)
        base = dict(output_dir=tempfile.mkdtemp(prefix="bench_step_"), num_prompts_per_step=args.scaling_prompts,
                    max_completion_length=512, controlled=True, **overrides)
        configs = {"on": preset("a2tgpo", **base), "off": preset("a2tgpo", **base, **ALL_OFF),
                   "grpo": preset("grpo", **base)}
        medians = alternate(EqualWorkStep(model, tokenizer, (train, dev, tool)), configs, args.repeats)
        on, off = medians["on"], medians["off"]
        params = sum(p.numel() for p in model.parameters())
        label = f"{hidden}x{layers}" if vary == "model" else str(value)
        print(f"{vary:<6}{label:>12}{params / 1e6:>8.2f}M{on['step']:>10.3f}{off['step']:>11.3f}"
              f"{off['step'] / on['step']:>9.2f}x{on['generation'] / on['step']:>11.2f}"
              f"{on['step'] / medians['grpo']['step']:>13.3f}")
    print(f"load average after {load()}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--step_index", type=int, default=0, help="which step's prompts to run")
    parser.add_argument("--overrides", default="{}", help="JSON of config fields applied to every setting")
    parser.add_argument("--no_split", action="store_true", help="skip the per-phase split table")
    parser.add_argument("--ratio_only", action="store_true",
                        help="split table of the four all-on / all-off rows only (more repeats for the same time)")
    parser.add_argument("--update_only", action="store_true",
                        help="instead of the split: the actor update alone over one fixed trajectory, per update knob")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS per setting")
    parser.add_argument("--rss_steps", type=int, default=3)
    parser.add_argument("--scaling", action="store_true", help="also measure scaling in G, turns, model size")
    parser.add_argument("--scaling_prompts", type=int, default=4)
    args = parser.parse_args(argv)

    from a2tgpo_lab import trainer as trainer_module
    from a2tgpo_lab.models import load_model_and_tokenizer

    # The phase split in CPU time of this process: on a machine shared with other jobs, wall time mostly
    # measures how long the others kept the cores; CPU time measures the work (wall is printed too).
    trainer_module._PhaseTimer.clock = staticmethod(time.process_time)

    print(f"torch {torch.__version__}; {os.cpu_count()} CPUs; float32")
    world = load_world()
    model, tokenizer = load_model_and_tokenizer(preset("a2tgpo"))
    if args.update_only:
        update_benchmark(args, model, tokenizer, world)
    elif not args.no_split:
        split_benchmark(args, model, tokenizer, world)
    if args.rss:
        rss_benchmark(args)
    if args.scaling:
        scaling_benchmark(args, tokenizer, world)


if __name__ == "__main__":
    main()
