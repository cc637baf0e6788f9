"""The package's own trainer, data parallel: every process rolls out its share of the step's prompts.

    accelerate launch --multi_gpu --num_processes 2 examples/distributed/train_data_parallel.py
    torchrun --nproc_per_node 2 examples/distributed/train_data_parallel.py

(`--multi_gpu` also works on a machine without GPUs: the processes then join with gloo.) Without a
launcher it trains on one process, exactly as `a2tgpo-lab train`.
"""
import argparse

from a2tgpo_lab.config import preset
from a2tgpo_lab.distributed import DataParallelTrainer

parser = argparse.ArgumentParser()
parser.add_argument("--preset", default="a2tgpo")
parser.add_argument("--max_steps", type=int, default=40)
parser.add_argument("--output_dir", default="runs/a2tgpo_dp")
cli = parser.parse_args()

trainer = DataParallelTrainer(preset(cli.preset, max_steps=cli.max_steps, output_dir=cli.output_dir))
metrics = trainer.train()
if trainer.parallel.is_main:
    print({k: round(v, 4) for k, v in metrics.items() if k in ("reward", "eval/em", "loss")})
