"""A²TGPO through TRL's GRPOTrainer on the bundled tiny model and task (CPU, about a minute).

    python examples/trl/train_tiny.py --max_steps 10
    accelerate launch --multi_gpu --num_processes 2 examples/trl/train_tiny.py   # data parallel

Each process holds whole question groups: per_device_train_batch_size (8) is a multiple of
num_generations (4).
"""
import argparse

import torch
from trl import GRPOConfig

from a2tgpo_lab.config import preset
from a2tgpo_lab.envs.world import load_split
from a2tgpo_lab.integrations.trl import A2TGPOGRPOTrainer, qa_dataset
from a2tgpo_lab.models import load_model_and_tokenizer

parser = argparse.ArgumentParser()
parser.add_argument("--max_steps", type=int, default=10)
parser.add_argument("--output_dir", default="runs/trl_a2tgpo")
cli = parser.parse_args()

cfg = preset("a2tgpo", num_generations=4)
model, tokenizer = load_model_and_tokenizer(cfg)
args = GRPOConfig(output_dir=cli.output_dir, max_steps=cli.max_steps, learning_rate=3e-4, num_generations=4,
                  per_device_train_batch_size=8, num_iterations=4, logging_steps=1, report_to=[],
                  use_cpu=not torch.cuda.is_available())
trainer = A2TGPOGRPOTrainer(model=model, args=args, train_dataset=qa_dataset(load_split("train")),
                            processing_class=tokenizer, a2tgpo_config=cfg)
trainer.train()
