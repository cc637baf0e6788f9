"""Compare estimators on the bundled task with the same budget, over several seeds, side by side.

For each (preset, seed): load the bundled tiny model, measure greedy dev EM, train ``--steps`` steps,
measure dev EM again. Prints one table: EM before → after per seed, the mean gain, and the mean step
time relative to GRPO on the same machine in the same run (the cost of the IG probe).

    python benchmarks/compare_estimators.py                          # a2tgpo vs grpo vs igpo, 3 seeds
    python benchmarks/compare_estimators.py --presets a2tgpo --seeds 0 1 2   # the quickstart check
    python benchmarks/compare_estimators.py --presets grpo igpo a2tgpo a2tgpo_pooled a2tgpo_no_rescale a2tgpo_fixed_clip
"""
from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np
import torch


def run_one(name: str, seed: int, steps: int, eval_n: int, overrides: dict) -> dict:
    from a2tgpo_lab import A2TGPOTrainer, preset

    with tempfile.TemporaryDirectory() as out:
        cfg = preset(name, max_steps=steps, seed=seed, output_dir=out, eval_steps=10_000, save_steps=10_000,
                     eval_num_prompts=eval_n, **overrides)
        trainer = A2TGPOTrainer(cfg)
        before = trainer.evaluate()["eval/em"]
        started = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - started
        after = trainer.evaluate()["eval/em"]
    step_times = [h["time/step_s"] for h in trainer.history if "time/step_s" in h]
    return {"preset": name, "seed": seed, "em_before": before, "em_after": after, "train_s": train_s,
            "step_s": float(np.mean(step_times))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["grpo", "igpo", "a2tgpo"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="default: the config's max_steps")
    parser.add_argument("--eval_n", type=int, default=300, help="dev questions per evaluation")
    parser.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="config overrides (JSON values)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    overrides = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    from a2tgpo_lab import A2TGPOConfig

    steps = args.steps or A2TGPOConfig().max_steps
    torch.set_num_threads(torch.get_num_threads())
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"cuda={torch.cuda.is_available()}; {steps} steps; dev n={args.eval_n}")
    rows = []
    for name in args.presets:
        for seed in args.seeds:
            row = run_one(name, seed, steps, args.eval_n, overrides)
            rows.append(row)
            print(f"  {name:<20} seed {seed}: EM {row['em_before']:.3f} -> {row['em_after']:.3f}  "
                  f"({row['step_s']:.2f} s/step)", flush=True)

    print(f"\n{'preset':<20}{'EM before':>11}{'EM after':>10}{'gain':>8}{'± sd':>7}{'s/step':>8}{'vs grpo':>9}")
    base = [r["step_s"] for r in rows if r["preset"] == "grpo"]
    for name in args.presets:
        mine = [r for r in rows if r["preset"] == name]
        gains = np.array([r["em_after"] - r["em_before"] for r in mine])
        step_s = np.mean([r["step_s"] for r in mine])
        ratio = f"{step_s / np.mean(base):.2f}x" if base else "-"
        print(f"{name:<20}{np.mean([r['em_before'] for r in mine]):>11.3f}{np.mean([r['em_after'] for r in mine]):>10.3f}"
              f"{gains.mean():>+8.3f}{gains.std():>7.3f}{step_s:>8.2f}{ratio:>9}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
