"""A²TGPO in TRL (trl 1.16): a ``GRPOTrainer`` subclass with multi-turn tool rollouts and per-turn credit.

TRL's ``GRPOTrainer`` gives one advantage per sequence. :class:`A2TGPOGRPOTrainer` keeps TRL's loop
(accelerate, DeepSpeed/FSDP, logging, checkpoints, PEFT) and replaces the two methods that decide
what a token is trained with:

``_generate_and_score_completions``
    rollouts with this package's multi-turn engine (tool calls, observations, the outcome reward),
    turn ids derived from the tool mask (model tokens 1, observation tokens 0), IG from the probe
    scorer, then the [B, T] advantages and clip bounds of :func:`~a2tgpo_lab.integrations.core.turn_credit`
    broadcast to the completion tokens;
``_compute_loss``
    :func:`~a2tgpo_lab.loss.policy_loss` with the turn-level ratio and each token's own bounds.

The dataset has one row per question: ``prompt`` (the question), ``answers`` (gold aliases, list of str)
and ``id`` (:func:`qa_dataset` builds it). Rollouts of a question must stay on one process, so that its
group statistics are local: ``per_device_train_batch_size × steps_per_generation`` must be a multiple of
``num_generations``.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from trl import GRPOConfig, GRPOTrainer

from ..config import A2TGPOConfig, preset
from ..envs import QAExample
from ..loss import policy_loss
from .core import turn_credit, turn_ids_from_mask

__all__ = ["A2TGPOGRPOTrainer", "qa_dataset"]


def qa_dataset(examples: Sequence[QAExample]):
    """A ``datasets.Dataset`` with the columns the trainer reads: ``prompt``, ``answers``, ``id``."""
    from datasets import Dataset

    return Dataset.from_list([{"prompt": e.question, "answers": list(e.answers), "id": e.id} for e in examples])


def _pad(rows: list[torch.Tensor], value, left: bool = False) -> torch.Tensor:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        if left:
            out[i, width - len(row):] = row
        else:
            out[i, :len(row)] = row
    return out


def _outcome_from_rollouts(*args, **kwargs):
    """TRL insists on a reward source at construction; this trainer's outcome reward is computed by the
    rollout engine (§2), so TRL's reward path is never taken — reaching it is a bug."""
    raise RuntimeError("A2TGPOGRPOTrainer scores outcomes in its rollout engine; TRL's reward functions are unused.")


class A2TGPOGRPOTrainer(GRPOTrainer):
    """``GRPOTrainer`` with A²TGPO's per-turn advantages and adaptive turn-level clipping.

    Args:
        model, args, train_dataset, processing_class, callbacks, peft_config: as for ``GRPOTrainer``
            (``reward_funcs`` is not taken: the rollout engine scores the outcome, §2).
        a2tgpo_config: the algorithm and rollout settings (default ``preset("a2tgpo")``); its
            ``num_generations`` and ``temperature`` are taken from ``args``.
        tool: ``query -> observation text`` (default: BM25 search over the bundled corpus).
    """

    def __init__(self, model, args: GRPOConfig, train_dataset, processing_class,
                 a2tgpo_config: Optional[A2TGPOConfig] = None, tool: Optional[Callable[[str], str]] = None,
                 **kwargs):
        cfg = a2tgpo_config or preset("a2tgpo")
        if cfg.beta > 0:
            raise ValueError("A2TGPOGRPOTrainer has no KL term: set a2tgpo_config.beta=0 (A²TGPO trains without KL).")
        super().__init__(model=model, reward_funcs=[_outcome_from_rollouts], args=args, train_dataset=train_dataset,
                         processing_class=processing_class, **kwargs)
        self.a2tgpo = cfg.replace(num_generations=self.num_generations, temperature=args.temperature)
        if tool is None:
            from ..envs.search import bundled_search_tool

            tool = bundled_search_tool(topk=cfg.retrieval_topk)
        self.tool = tool

    # ------------------------------------------------------------------ rollouts and credit
    def _examples(self, inputs: list[dict]) -> list[QAExample]:
        """The distinct questions of the local batch, each repeated ``num_generations`` times in a row."""
        G = self.num_generations
        if len(inputs) % G:
            raise ValueError(f"The local batch has {len(inputs)} rows, not whole groups of num_generations={G}: make "
                             "per_device_train_batch_size × steps_per_generation a multiple of num_generations.")
        examples = []
        for start in range(0, len(inputs), G):
            group = inputs[start: start + G]
            if any(row["id"] != group[0]["id"] for row in group):
                raise ValueError(f"Rows {start}..{start + G - 1} of the local batch are not one question's "
                                 f"{G} rollouts; each process must hold whole groups.")
            row = group[0]
            examples.append(QAExample(id=str(row["id"]), question=row["prompt"], answers=tuple(row["answers"])))
        return examples

    def _generate_and_score_completions(self, inputs: list[dict]) -> dict:
        from ..info_gain import information_gain
        from ..probe import score_probes
        from ..rollout import generate_rollouts

        cfg, device = self.a2tgpo, self.accelerator.device
        model = self.accelerator.unwrap_model(self.model)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                seed = self.args.seed * 1_000_003 + self.state.global_step * self.accelerator.num_processes
                generator = torch.Generator().manual_seed(seed + self.accelerator.process_index)
                traj = generate_rollouts(model, self.processing_class, self._examples(inputs), self.tool, cfg,
                                         generator=generator)
                traj = traj.to(device)
                if cfg.uses_ig:
                    ell, _ = score_probes(model, self.processing_class, traj, cfg)
                    ig, _, _ = information_gain(ell, traj.num_tool_turns, mode=cfg.ig_mode,
                                                first_turn=cfg.ig_first_turn)
                else:
                    ig = torch.full((traj.batch_size, traj.max_turns), float("nan"))
        finally:
            model.train(was_training)

        # Split each rollout into TRL's left-padded prompt and right-padded completion.
        starts = traj.context_ends[:, 0].tolist()
        ends = traj.attention_mask.sum(dim=1).tolist()
        pad = self.processing_class.pad_token_id
        rows = range(traj.batch_size)
        prompt_ids = _pad([traj.input_ids[b, :starts[b]] for b in rows], pad, left=True)
        prompt_mask = _pad([torch.ones(starts[b], dtype=torch.long) for b in rows], 0, left=True)
        completion_ids = _pad([traj.input_ids[b, starts[b]:ends[b]] for b in rows], pad)
        completion_mask = _pad([torch.ones(ends[b] - starts[b], dtype=torch.long) for b in rows], 0)
        tool_mask = _pad([traj.loss_mask[b, starts[b]:ends[b]].long() for b in rows], 0)
        old_logps = _pad([traj.old_logprobs[b, starts[b]:ends[b]].float() for b in rows], 0.0)
        turn_ids = turn_ids_from_mask(tool_mask)

        credit = turn_credit(cfg, ig.cpu(), traj.outcome_reward.cpu(), traj.prompt_index.cpu(),
                             traj.num_tool_turns.cpu(), turn_ids, tool_mask.bool())
        mode = "train" if self.model.training else "eval"
        metrics = {"reward": traj.outcome_reward.float().mean(), "tool_calls/mean": traj.num_tool_turns.float().mean(),
                   "ig/mean": torch.nanmean(ig.float())}
        for name, value in metrics.items():
            self._metrics[mode][name].append(self.accelerator.gather(value.to(device)).nanmean().item())
        batch = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids,
                 "completion_mask": completion_mask, "tool_mask": tool_mask, "turn_ids": turn_ids,
                 "old_per_token_logps": old_logps, "advantages": credit.token_advantages,
                 "token_clip_low": credit.token_clip_low, "token_clip_high": credit.token_clip_high}
        return {name: value.to(device) for name, value in batch.items()}

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs: dict) -> torch.Tensor:
        cfg = self.a2tgpo
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, _, _ = self._get_per_token_logps_and_entropies(model, input_ids, attention_mask,
                                                              inputs["completion_ids"].size(1))
        mask = (inputs["completion_mask"] * inputs["tool_mask"]).bool()
        loss, out = policy_loss(logps, inputs["old_per_token_logps"], inputs["advantages"], inputs["turn_ids"], mask,
                                inputs["token_clip_low"], inputs["token_clip_high"], ratio_level=cfg.ratio_level,
                                dual_clip=cfg.dual_clip, loss_agg_mode=cfg.loss_agg_mode)
        mode = "train" if self.model.training else "eval"
        for name in ("clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean"):
            value = torch.tensor(out.metrics[name], device=logps.device)
            self._metrics[mode][name].append(self.accelerator.gather(value).mean().item())
        # TRL turns off the Trainer's own loss scaling: divide by the accumulation steps as GRPOTrainer does.
        return loss / (self.current_gradient_accumulation_steps if mode == "train" else 1.0)
