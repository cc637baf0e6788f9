"""Data parallelism for the package's own trainer: several processes, one global batch.

Launch the same script on N processes with ``accelerate launch --multi_gpu --num_processes N script.py``
(on a machine without GPUs too: accelerate then starts N CPU processes joined by gloo) or
``torchrun --nproc_per_node N script.py``. Each step, every process

1. takes a contiguous shard of the step's prompts — whole prompt groups, so the per-prompt and
   per-(prompt, turn) statistics of §3 stay local and equal those of one process on the whole batch;
2. generates those prompts' rollouts (its own sampling seed) and scores their IG probes;
3. weights its loss by its share of the global aggregation units (model tokens for ``token-mean``,
   rollouts for the ``seq-mean-*`` modes), and sums the gradients of all processes before the
   optimizer step, so every process takes exactly the step one process would take on the union:

       ∇L = Σ_r (units_r / Σ_r' units_r') ∇L_r          (L_r: process r's mean loss)

4. averages its step metrics with the others; only the main process writes logs and checkpoints.

One process (no launcher) is the world of size 1 and every call below is a no-op.
"""
from __future__ import annotations

import contextlib
import os
from typing import Sequence, TypeVar

import torch

from .trainer import A2TGPOTrainer

T = TypeVar("T")


class DataParallel:
    """The process group of a data-parallel run (world size 1 without a launcher).

    A launcher (``accelerate launch --multi_gpu``, ``torchrun``) sets ``WORLD_SIZE`` / ``RANK`` and the
    rendezvous address; the process group is then initialised from them (gloo on CPU, nccl on GPUs).
    """

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        if self.world_size > 1 and not torch.distributed.is_initialized():
            torch.distributed.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")

    @property
    def is_main(self) -> bool:
        """Whether this process writes logs and checkpoints."""
        return self.rank == 0

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's contiguous share of ``items`` (the step's prompts), the same size on every process."""
        if len(items) % self.world_size:
            raise ValueError(f"{len(items)} prompts per step cannot be split evenly over {self.world_size} processes: "
                             "make num_prompts_per_step a multiple of the number of processes.")
        size = len(items) // self.world_size
        return list(items[self.rank * size: (self.rank + 1) * size])

    def seed(self, base: int) -> int:
        """A sampling seed of its own for every process (``base`` on the main process)."""
        return base + 1_000_033 * self.rank

    def global_sum(self, value: float) -> float:
        """Σ over processes of ``value`` (e.g. the aggregation units of a mini-batch)."""
        if self.world_size == 1:
            return value
        total = torch.tensor([float(value)], dtype=torch.float64)
        torch.distributed.all_reduce(total)
        return float(total)

    def all_reduce_gradients(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        """grad ← Σ over processes of grad, for every parameter (a missing grad counts as 0)."""
        if self.world_size == 1:
            return
        for param in parameters:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            torch.distributed.all_reduce(param.grad)

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Every metric averaged over processes (NaN-aware: a process without the value is left out)."""
        if self.world_size == 1:
            return metrics
        # The processes may log different keys (per-turn metrics exist only where a shard has that turn).
        key_lists = [None] * self.world_size
        torch.distributed.all_gather_object(key_lists, sorted(metrics))
        keys = sorted(set().union(*key_lists))
        values = torch.tensor([float(metrics.get(k, float("nan"))) for k in keys], dtype=torch.float64)
        finite = torch.isfinite(values)
        stacked = torch.stack([torch.where(finite, values, torch.zeros_like(values)), finite.double()])
        torch.distributed.all_reduce(stacked)
        means = stacked[0] / stacked[1]
        means[stacked[1] == 0] = float("nan")
        return dict(zip(keys, means.tolist()))

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()



class DataParallelTrainer(A2TGPOTrainer):
    """An :class:`~a2tgpo_lab.trainer.A2TGPOTrainer` that trains data-parallel over the launched processes
    (same arguments; module docstring). It overrides the trainer's data-parallel hooks and keeps the
    non-main processes out of ``output_dir``; with one process it trains exactly as the plain trainer.

    Every process must take the same decisions: a step that one process stops early on (a collapse
    check on its own shard) leaves the others waiting in the next gradient sum.
    """

    def __init__(self, cfg, *args, **kwargs):
        self.parallel = DataParallel()
        resume = cfg.resume_from_checkpoint
        super().__init__(cfg.replace(resume_from_checkpoint=None), *args, **kwargs)
        self.cfg = cfg
        if not self.parallel.is_main:
            self._lock = contextlib.nullcontext()   # only the main process locks and writes output_dir
            self._progress_bar = False              # and only it draws the progress bar
        if resume:
            self.load_checkpoint(resume)

    def batch_examples(self, step: int):
        return self.parallel.shard(super().batch_examples(step))

    def _rollout_seed(self, seed: int) -> int:
        return self.parallel.seed(seed)

    def _global_units(self, units: int) -> float:
        return self.parallel.global_sum(units)

    def _sync_gradients(self, params: list) -> None:
        self.parallel.all_reduce_gradients(params)

    def _claim_output_dir(self) -> None:
        if self.parallel.is_main:
            super()._claim_output_dir()

    def _log(self, record) -> None:
        record.metrics = self.parallel.mean_metrics(record.metrics)
        if self.parallel.is_main:
            super()._log(record)
        else:
            self.records.append(record)
            del self.records[:-self.keep_records]
            self.history.append(record.metrics)

    def evaluate(self, *args, **kwargs) -> dict:
        return super().evaluate(*args, **kwargs) if self.parallel.is_main else {}

    def save(self):
        path = super().save() if self.parallel.is_main else None
        self.parallel.barrier()     # no process runs ahead of a checkpoint being written
        return path
