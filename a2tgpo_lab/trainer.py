"""The training loop, readable top to bottom: rollout → IG → advantages → clip ranges → PPO update → record.

One call of :meth:`A2TGPOTrainer.step` is one RL step::

    examples   = the next num_prompts_per_step questions (a seeded permutation per epoch)
    traj       = generate_rollouts(policy, examples × G)             # π_old samples, multi-turn, tool calls
    p, IG      = probe the gold answer after every tool turn         # §1 (skipped by GRPO)
    A, c, bounds = turn_credit(cfg, IG, outcome, ...)                # §3-§5: estimator by name, clip per turn
    for iteration, mini-batch:  loss = policy_loss(...); step       # §6
    record     = StepRecord(...)                                     # what every view, log and test reads

Everything the step computed goes into one :class:`~a2tgpo_lab.records.StepRecord`; callbacks receive it,
the JSONL log gets its metrics, and the dashboard draws it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from .checkpoint import rng_state
from .config import A2TGPOConfig, ConfigError
from .envs import QAExample
from .errors import CheckpointError, DataError, RunDirError, TrainingCollapsed
from .interrupts import Preempted, deferred_interrupts, sigterm_as_interrupt
from .metrics import sampled_entropy, step_metrics
from .trackers import tracker_callbacks
from .records import StepRecord, Trajectory


class A2TGPOTrainer:
    """Trains a causal LM agent with A²TGPO (or GRPO / IGPO / an ablation, by config).

    Args:
        cfg: the run's :class:`A2TGPOConfig` (``preset("a2tgpo")`` etc.).
        model, tokenizer: an already loaded policy; by default loaded from ``cfg.model_name_or_path``
            with the config's LoRA / 4-bit settings.
        train_examples, eval_examples: questions; by default the bundled task's ``train`` split and
            ``cfg.eval_split``, or ``cfg.dataset`` when it is a file.
        tool: ``query -> observation text``; by default BM25 search over ``cfg.corpus``.
        callbacks: objects with any of ``on_train_begin(trainer)``, ``on_step_end(trainer, record)``,
            ``on_evaluate(trainer, metrics)``, ``on_pause(trainer)``, ``on_resume(trainer)``,
            ``on_train_end(trainer)``.
        keep_records: how many recent StepRecords to keep in ``trainer.records`` (for views).
        overwrite_output_dir: start this run in an ``output_dir`` that holds another run, deleting that
            run's checkpoints and logs (default False: refuse, naming the other run).
        allow_config_change: resume even though the config differs from the checkpoint's in more than
            :data:`RESUMABLE_CHANGES` (default False: refuse, listing the differences).
    """

    def __init__(self, cfg: A2TGPOConfig, model=None, tokenizer=None,
                 train_examples: Optional[Sequence[QAExample]] = None,
                 eval_examples: Optional[Sequence[QAExample]] = None,
                 tool: Optional[Callable[[str], str]] = None, callbacks: Sequence[Any] = (),
                 keep_records: int = 50, overwrite_output_dir: bool = False, allow_config_change: bool = False):
        from .models import is_peft_model, load_model_and_tokenizer
        from .rundir import OutputDirLock, new_run_id

        self.cfg = cfg
        torch.manual_seed(cfg.seed)
        if model is None or tokenizer is None:
            model, tokenizer = load_model_and_tokenizer(cfg)
        self.model, self.tokenizer = model, tokenizer
        # The KL reference π_ref (ALGORITHM.md §6): under LoRA the same model with adapters disabled (free); for a
        # full fine-tune a frozen copy of the starting weights, made before any checkpoint is loaded (it doubles
        # the model's memory: fine for small models, use LoRA for large ones).
        self.reference_model = _frozen_copy(model) if cfg.beta > 0 and not is_peft_model(model) else None
        self.device = next(model.parameters()).device
        self.train_examples, self.eval_examples = _resolve_examples(cfg, train_examples, eval_examples)
        _check_positions(cfg, model)
        self.train_examples = _within_prompt_budget(self.train_examples, tokenizer, cfg, "training")
        self.eval_examples = _within_prompt_budget(self.eval_examples, tokenizer, cfg, "evaluation")
        self.tool = tool if tool is not None else _resolve_tool(cfg)
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ConfigError("The model has no trainable parameters: use use_peft=True (LoRA) for a frozen or "
                             "4-bit base model, or pass a model whose parameters require grad.")
        self.optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_lambda(cfg))
        self.callbacks = list(callbacks) + tracker_callbacks(cfg)   # cfg.report_to: tensorboard, trackio, wandb
        self.keep_records = keep_records
        self.records: list[StepRecord] = []
        self.history: list[dict[str, float]] = []
        self.global_step = 0
        self.nonfinite_loss_steps = 0
        self.output_dir = Path(cfg.output_dir)
        self.run_id = new_run_id()            # replaced by the checkpoint's on resume
        self.resumed_from: Optional[Path] = None
        self.interrupted: Optional[str] = None  # "SIGINT" / "SIGTERM" when train() was interrupted
        self.overwrite_output_dir, self.allow_config_change = overwrite_output_dir, allow_config_change
        self._lock = OutputDirLock(self.output_dir)
        self._claimed = False
        self._logging = False                 # inside train(): a step's commit includes its log lines
        self._rng_at_step_start = None        # RNG states before the step in progress (what a save stores)
        self._bad_steps = 0                   # consecutive steps with nothing to learn from (collapse_patience)
        self._stop = threading.Event()
        self._running = threading.Event()
        self._running.set()
        if cfg.resume_from_checkpoint:
            self.load_checkpoint(cfg.resume_from_checkpoint)

    # ------------------------------------------------------------------ control (thread-safe)
    def add_callback(self, callback: Any) -> None:
        self.callbacks.append(callback)

    def pause(self) -> None:
        """Finish the current step, then wait until :meth:`resume` (or :meth:`stop`)."""
        self._running.clear()

    def resume(self) -> None:
        """Continue after :meth:`pause`."""
        self._running.set()

    def stop(self) -> None:
        """Finish the current step, save a checkpoint, and leave :meth:`train`."""
        self._stop.set()
        self._running.set()

    @property
    def paused(self) -> bool:
        return not self._running.is_set()

    def _wait_if_paused(self) -> None:
        """Between steps: while paused, wait for :meth:`resume` / :meth:`stop`, telling the callbacks
        (``on_pause(trainer)`` once the trainer is really waiting, ``on_resume(trainer)`` after)."""
        if self._running.is_set():
            return
        self._emit("on_pause")
        self._running.wait()
        self._emit("on_resume")

    _progress_bar = True  # train()'s tqdm bar; off in the background (it would print into whichever cell runs)

    def train_in_background(self, progress: bool = False) -> threading.Thread:
        """Run :meth:`train` in a thread so a notebook kernel stays free for the dashboard's buttons.

        ``progress``: show train()'s progress bar too (default off: from a thread it lands in whichever
        cell happens to run; the dashboard shows the progress)."""
        self._progress_bar = progress
        thread = threading.Thread(target=self.train, name="a2tgpo-train", daemon=True)
        thread.start()
        return thread

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            handler = getattr(callback, event, None)
            if handler is not None:
                handler(self, *args)

    # ------------------------------------------------------------------ data
    def batch_examples(self, step: int) -> list[QAExample]:
        """The prompts of ``step``: consecutive slices of a permutation seeded by (seed, epoch).

        A pure function of the step, so a resumed run sees exactly the batches it would have seen."""
        n = len(self.train_examples)
        per_step = self.cfg.num_prompts_per_step
        out = []
        for position in range(step * per_step, (step + 1) * per_step):
            epoch, offset = divmod(position, n)
            order = np.random.default_rng([self.cfg.seed, epoch]).permutation(n)
            out.append(self.train_examples[order[offset]])
        return out

    # ------------------------------------------------------------------ one RL step
    def step(self) -> StepRecord:
        """Run one RL step (see the module docstring) and return its record."""
        from .credit import turn_credit
        from .info_gain import information_gain, search_context_ends
        from .probe import score_probes
        from .rollout import generate_rollouts, recompute_old_logprobs

        cfg, model, step = self.cfg, self.model, self.global_step
        started, phases = time.perf_counter(), _PhaseTimer()
        self._rng_at_step_start = rng_state()  # an interrupt before this step commits saves these states
        examples = self.batch_examples(step)
        generator = torch.Generator(device="cpu").manual_seed(self._rollout_seed(cfg.seed * 1_000_003 + step))

        probe_now = cfg.uses_ig and cfg.probe_while_sampling and cfg.ig_last_context == "observation"
        model.eval()
        with torch.no_grad():
            with phases("generation"):  # a probe scored while sampling counts as ig_forward (nested phase)
                traj = generate_rollouts(model, self.tokenizer, examples, self.tool, cfg, generator=generator,
                                         old_logprobs="sampler" if cfg.old_logprobs == "sampler" else "none",
                                         keep_kv=cfg.uses_ig and cfg.probe_reuse_cache and not probe_now,
                                         probe=probe_now, timer=phases)
            if cfg.old_logprobs == "recompute":
                with phases("old_logprob"):
                    traj.old_logprobs = recompute_old_logprobs(model, traj, cfg)
            traj = traj.to(self.device)
            B, T = traj.batch_size, traj.max_turns
            if cfg.uses_ig:
                with phases("ig_forward"):
                    if traj.probe_logprob_mean is not None:
                        probe_logprob_mean, probe_text = traj.probe_logprob_mean.cpu(), traj.probe_text
                    else:
                        probed = traj if cfg.ig_last_context == "observation" else dataclasses.replace(
                            traj, context_ends=search_context_ends(traj.context_ends, traj.turn_ids,
                                                                   traj.num_tool_turns))
                        probe_logprob_mean, probe_text = score_probes(model, self.tokenizer, probed, cfg,
                                                                      reuse_cache=cfg.probe_reuse_cache)
                    ig, p, nonfinite = information_gain(probe_logprob_mean, traj.num_tool_turns, mode=cfg.ig_mode,
                                                        first_turn=cfg.ig_first_turn)
                traj.kv_prefix = None  # the cache served the probe; free it before the update
            else:
                probe_text, nonfinite = "", 0
                ig = torch.full((B, T), float("nan"))
                p = torch.full((B, T + 1), float("nan"))

        credit = turn_credit(cfg, ig.cpu(), traj.outcome_reward.cpu(), traj.prompt_index.cpu(),
                             traj.num_tool_turns.cpu(), traj.turn_ids, traj.loss_mask)
        adv, clip_factor, clip_low, clip_high = credit.advantages, credit.clip_factor, credit.clip_low, credit.clip_high
        token_adv, token_low, token_high = credit.token_advantages, credit.token_clip_low, credit.token_clip_high

        # The update, the step counter and the step's log lines are one unit: Ctrl-C / SIGTERM wait until all
        # are done, so a checkpoint never holds updated weights under the old step number.
        with deferred_interrupts():
            with phases("actor_update"):
                update = self._ppo_update(traj, token_adv, token_low, token_high)
            self._check_weights_finite(step)
            record = self._make_record(step, traj, examples, p, ig, nonfinite, adv, clip_factor, clip_low,
                                       clip_high, token_adv, update, probe_text, time.perf_counter() - started)
            record.metrics.update(phases.metrics())
            record.elapsed_s = record.metrics["time/step_s"]
            self.global_step += 1
            self._rng_at_step_start = None
            if self._logging:
                self._log(record)
        return record

    def _ppo_update(self, traj: Trajectory, token_adv, token_low, token_high) -> dict:
        """``num_iterations`` passes of ``num_mini_batches`` optimizer steps, each accumulated over
        micro-batches (:meth:`_micro_batches`). Returns the last pass's per-token ratio / clip flags and
        the mean loss-side metrics."""
        from .logprobs import token_logprobs
        from .loss import aggregation_units, policy_loss
        from .rollout import shared_prompt

        cfg, model = self.cfg, self.model
        B = traj.batch_size
        ratio = torch.full(traj.input_ids.shape, float("nan"))
        clipped = torch.zeros(traj.input_ids.shape, dtype=torch.int8)
        collected: list[dict] = []
        order_rng = torch.Generator().manual_seed(self.cfg.seed * 7_919 + self.global_step)
        _train_with_dropout_off(model)
        for _ in range(cfg.num_iterations):
            order = torch.randperm(B, generator=order_rng)
            for mini in order.chunk(cfg.num_mini_batches):
                self.optimizer.zero_grad(set_to_none=True)
                parts = []  # (metrics, share of the mini-batch's loss units, model tokens) per micro-batch
                mini_units = self._global_units(aggregation_units(traj.loss_mask[mini.to(self.device)],
                                                                  cfg.loss_agg_mode))
                for micro in self._micro_batches(traj, mini):
                    rows = micro.to(self.device)
                    # columns past the micro-batch's longest rollout are padding in every row: leave them out
                    width = int(traj.attention_mask[rows].sum(dim=1).max())
                    ids, attn = traj.input_ids[rows, :width], traj.attention_mask[rows, :width]
                    loss_mask = traj.loss_mask[rows, :width]
                    scored = loss_mask if cfg.scored_logits_only else None
                    shared = shared_prompt(traj, rows, cfg)
                    want_entropy = cfg.entropy_coeff > 0
                    logprobs, entropy = token_logprobs(model, ids, attn, temperature=cfg.temperature,
                                                       return_entropy=want_entropy, score_mask=scored,
                                                       shared_prefix=shared, bucket_cost=cfg.bucket_cost_tokens,
                                                       identical_rows_once=cfg.share_identical_rollouts)
                    ref = self._reference_logprobs(ids, attn, scored, shared) if cfg.beta > 0 else None
                    loss, out = policy_loss(
                        logprobs, traj.old_logprobs[rows, :width], token_adv[rows, :width],
                        traj.turn_ids[rows, :width], loss_mask, token_low[rows, :width], token_high[rows, :width],
                        ratio_level=cfg.ratio_level, dual_clip=cfg.dual_clip, loss_agg_mode=cfg.loss_agg_mode,
                        ref_logprobs=ref, beta=cfg.beta, kl_estimator=cfg.kl_estimator, entropy=entropy,
                        entropy_coeff=cfg.entropy_coeff)
                    # The loss is a mean over this micro-batch's units (tokens or rollouts); weighting it by
                    # its share of the mini-batch's units makes the summed gradient the mini-batch's own.
                    units = aggregation_units(traj.loss_mask[rows], cfg.loss_agg_mode)
                    scaled = loss * (units / max(mini_units, 1))
                    if not torch.isfinite(scaled):
                        # A NaN/inf loss is counted and its micro-batch skipped, never trained on.
                        self.nonfinite_loss_steps += 1
                        continue
                    scaled.backward()
                    parts.append(({"loss": loss.item()} | out.metrics, units / max(mini_units, 1),
                                  int(loss_mask.sum())))
                    ratio[micro, :width] = out.ratio.detach().float().cpu()
                    clipped[micro, :width] = out.clipped.cpu()
                params = [p for p in model.parameters() if p.requires_grad]
                self._sync_gradients(params)
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                if torch.isfinite(grad_norm) and parts:
                    self.optimizer.step()
                else:
                    self.nonfinite_loss_steps += 1
                collected.append(_mini_batch_metrics(parts) | {"grad_norm": float(grad_norm)})
        self.scheduler.step()
        metrics: dict[str, float] = {}
        for key in {k for m in collected for k in m}:
            values = [m[key] for m in collected if key in m and m[key] is not None]
            finite = [v for v in values if math.isfinite(v)]
            metrics[key] = float(np.mean(finite)) if finite else float("nan")
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        metrics["train/nonfinite_skipped"] = float(self.nonfinite_loss_steps)
        return {"ratio": ratio, "clipped": clipped, "metrics": metrics}

    # Data-parallel hooks (a2tgpo_lab.distributed.DataParallelTrainer overrides them; one process: identity).
    def _rollout_seed(self, seed: int) -> int:
        """The sampling seed of this process's rollouts."""
        return seed

    def _global_units(self, units: int) -> int:
        """The aggregation units of the whole mini-batch (over all processes)."""
        return units

    def _sync_gradients(self, params: list) -> None:
        """Sum the gradients of all processes before the optimizer step."""

    def _micro_batches(self, traj: Trajectory, mini: torch.Tensor) -> list[torch.Tensor]:
        """The mini-batch's rows split for gradient accumulation: by length into micro-batches of at most
        ``micro_batch_tokens`` padded tokens, or (None) into ``gradient_accumulation_steps`` equal chunks."""
        from .logprobs import token_budget_batches

        if self.cfg.micro_batch_tokens is None:
            return list(mini.chunk(self.cfg.gradient_accumulation_steps))
        rows = mini.to(self.device)
        groups = traj.prompt_index[rows] if self.cfg.share_prompt_prefix else None  # keep shared prompts together
        parts = token_budget_batches(traj.attention_mask[rows].sum(dim=1), self.cfg.micro_batch_tokens, groups)
        return [mini[part] for part in parts]

    def _reference_logprobs(self, ids: torch.Tensor, attn: torch.Tensor, score_mask: Optional[torch.Tensor] = None,
                            shared_prefix=None) -> torch.Tensor:
        """log π_ref of every token (no gradient): the frozen copy, or the policy with its adapters disabled."""
        from .logprobs import token_logprobs
        from .models import disabled_adapters

        how = dict(temperature=self.cfg.temperature, score_mask=score_mask, shared_prefix=shared_prefix,
                   bucket_cost=self.cfg.bucket_cost_tokens, identical_rows_once=self.cfg.share_identical_rollouts)
        with torch.no_grad():
            if self.reference_model is not None:
                return token_logprobs(self.reference_model, ids, attn, **how).logprobs
            with disabled_adapters(self.model):
                return token_logprobs(self.model, ids, attn, **how).logprobs

    def _make_record(self, step, traj, examples, p, ig, nonfinite, adv, clip_factor, clip_low, clip_high,
                     token_adv, update, probe_text, elapsed) -> StepRecord:
        def np_(x):
            return x.detach().float().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)

        lengths = traj.attention_mask.sum(dim=1).tolist()
        ids = traj.input_ids.cpu()
        cut = lambda t: [np_(t[b, :n]) for b, n in enumerate(lengths)]  # noqa: E731 (row-wise unpadding)
        record = StepRecord(
            step=step, estimator=self.cfg.preset_name or self.cfg.advantage_estimator, config=self.cfg.to_dict(),
            questions=list(traj.questions), answers=[list(a) for a in traj.answers],
            turn_texts=traj.turn_texts,
            tool_calls=[[a.content if a.kind == "search" else None for a in acts] for acts in traj.actions],
            observations=traj.observations, final_answer=traj.final_answer, end_reason=traj.end_reason,
            prompt_index=np_(traj.prompt_index).astype(int), num_tool_turns=np_(traj.num_tool_turns).astype(int),
            has_answer_turn=np_(traj.has_answer_turn).astype(bool), outcome_reward=np_(traj.outcome_reward),
            p=np_(p), ig=np_(ig), ig_norm=np_(adv.ig_norm), group_id=np_(adv.group_id).astype(int),
            group_size=np_(adv.group_size).astype(int), outcome_norm=np_(adv.outcome_norm),
            advantages=np_(adv.advantages), advantages_unscaled=np_(adv.advantages_unscaled),
            clip_factor=np_(clip_factor), clip_low=np_(clip_low), clip_high=np_(clip_high),
            input_ids=[x.astype(int) for x in cut(ids)], loss_mask=[x.astype(bool) for x in cut(traj.loss_mask)],
            turn_ids=[x.astype(int) for x in cut(traj.turn_ids)], token_advantage=cut(token_adv),
            ratio=cut(update["ratio"]), clipped=[x.astype(np.int8) for x in cut(update["clipped"])],
            tokens=[self.tokenizer.convert_ids_to_tokens(ids[b, :n].tolist()) for b, n in enumerate(lengths)],
            metrics={}, probe_text=probe_text, ig_nonfinite_count=int(nonfinite),
            zero_std_group_frac=float(adv.zero_std_group_frac), elapsed_s=elapsed,
        )
        record.metrics = {"step": float(step), **step_metrics(record), **update["metrics"],
                          **sampled_entropy(traj.old_logprobs.float().cpu(), traj.loss_mask.cpu()),
                          "time/step_s": elapsed}
        return record

    # ------------------------------------------------------------------ the loop
    def train(self) -> dict[str, float]:
        """Train until ``cfg.max_steps`` (or :meth:`stop`, Ctrl-C or SIGTERM); return the final metrics.

        Checkpoints every ``save_steps`` and at the end. Ctrl-C (or a notebook's interrupt button) and
        SIGTERM (a scheduler preempting the job) finish by saving the last complete step: a step is applied,
        counted and logged whole or not at all (:mod:`a2tgpo_lab.interrupts`), so a resumed run equals an
        uninterrupted one. ``output_dir`` is locked while training: a second process is refused."""
        from tqdm.auto import tqdm

        cfg = self.cfg
        with self._lock, sigterm_as_interrupt():
            self._claim_output_dir()
            self._stop.clear()
            self.interrupted = None
            self._emit("on_train_begin")
            bar = tqdm(total=cfg.max_steps, initial=self.global_step,
                       desc=f"train {cfg.preset_name or ''}".strip(), dynamic_ncols=True,
                       disable=not self._progress_bar)
            self._logging = True
            saved_step = None
            try:
                while self.global_step < cfg.max_steps and not self._stop.is_set():
                    self._wait_if_paused()
                    if self._stop.is_set():
                        break
                    record = self.step()  # logs the step as part of committing it
                    self._emit("on_step_end", record)
                    bar.update(1)
                    bar.set_postfix(reward=f"{record.metrics['reward']:.2f}",
                                    turns=f"{record.metrics['num_turns/mean']:.1f}",
                                    **({"em": f"{self.last_eval_em:.2f}"} if self.last_eval_em is not None else {}))
                    self._check_progress(record)
                    if self.global_step % cfg.eval_steps == 0 and self.global_step < cfg.max_steps:
                        self.evaluate()
                    if self.global_step % cfg.save_steps == 0:
                        self.save()
                        saved_step = self.global_step
            except KeyboardInterrupt as stop:
                self.interrupted = "SIGTERM" if isinstance(stop, Preempted) else "SIGINT"
                bar.write(f"Interrupted ({self.interrupted}): saving step {self.global_step} to {self.output_dir} "
                          "(resume with resume_from_checkpoint='latest').")
            finally:
                self._logging = False
                bar.close()
            if saved_step != self.global_step:  # a second Ctrl-C here leaves no half-written checkpoint
                self.save()
        self._emit("on_train_end")
        return self.history[-1] if self.history else {}

    def _check_weights_finite(self, step: int) -> None:
        """Stop before counting a step whose update made a weight NaN/inf: nothing of it is saved or logged."""
        from .checkpoint import latest_checkpoint

        for name, param in self.model.named_parameters():
            if param.requires_grad and not torch.isfinite(param).all():
                last = latest_checkpoint(self.output_dir, self.run_id)
                raise TrainingCollapsed(
                    f"Training collapsed at step {step}: the update made weight {name} NaN/inf "
                    f"(learning_rate={self.cfg.learning_rate}, max_grad_norm={self.cfg.max_grad_norm}). Nothing of "
                    f"this step was saved; the last checkpoint is {last or 'none'}. Lower learning_rate, then "
                    "resume from it with allow_config_change (--allow_config_change) or start again.")

    def _check_progress(self, record: StepRecord) -> None:
        """Count steps with nothing to learn from (no rollout answered, or every loss non-finite); after
        ``collapse_patience`` of them in a row, save and stop with an error saying why."""
        no_answer = all(reason != "answer" for reason in record.end_reason)
        no_loss = not math.isfinite(record.metrics.get("loss", 0.0))
        self._bad_steps = self._bad_steps + 1 if (no_answer or no_loss) else 0
        patience = self.cfg.collapse_patience
        if patience and self._bad_steps >= patience:
            saved = self.save()
            why = "every loss was NaN/inf" if no_loss else "no rollout produced an <answer> (all penalised)"
            raise TrainingCollapsed(
                f"Training stopped at step {self.global_step}: for {patience} steps in a row {why}, so there is "
                f"nothing to learn from. Saved {saved}. Check learning_rate={self.cfg.learning_rate} and that the "
                "model follows the tool protocol (warm-start it, or use an instruct model); collapse_patience=0 "
                "disables this check.")

    @property
    def last_eval_em(self) -> Optional[float]:
        for row in reversed(self.history):
            if "eval/em" in row:
                return row["eval/em"]
        return None

    def _log(self, record: StepRecord) -> None:
        """Keep ``record`` and append its lines to metrics.jsonl and completions.jsonl (part of the step's commit)."""
        from .rundir import append_jsonl

        self.records.append(record)
        del self.records[:-self.keep_records]
        self.history.append(record.metrics)
        append_jsonl(self.output_dir / "metrics.jsonl", [_finite(record.metrics)])
        append_jsonl(self.output_dir / "completions.jsonl", [{
            "step": record.step, "prompt_index": int(record.prompt_index[i]), "question": record.questions[i],
            "gold": record.answers[i], "turns": record.turn_texts[i], "final_answer": record.final_answer[i],
            "reward": float(record.outcome_reward[i]), "end_reason": record.end_reason[i],
            "ig": [None if not math.isfinite(v) else v for v in record.ig[i].tolist()],
            "advantages": [None if not math.isfinite(v) else v for v in record.advantages[i].tolist()],
        } for i in range(record.batch_size)])

    def evaluate(self, examples: Optional[Sequence[QAExample]] = None, progress: bool = False) -> dict[str, float]:
        """Greedy evaluation on ``examples`` (default: the first ``eval_num_prompts`` eval questions)."""
        from .evaluation import evaluate_agent

        examples = list(examples if examples is not None else self.eval_examples[: self.cfg.eval_num_prompts])
        metrics = evaluate_agent(self.model, self.tokenizer, examples, self.tool, self.cfg, progress=progress)
        metrics["step"] = float(self.global_step)
        if self.history and self.history[-1].get("step") == float(self.global_step - 1):
            # joins the row of the step it follows, keeping that row's step (it is also the record's metrics)
            self.history[-1].update({key: value for key, value in metrics.items() if key != "step"})
        else:
            self.history.append(dict(metrics))
        from .rundir import append_jsonl

        with self._lock:
            self._claim_output_dir()
            append_jsonl(self.output_dir / "eval.jsonl", [_finite(metrics)])
        self._emit("on_evaluate", metrics)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Write ``checkpoint-<global_step>`` (atomically; keeps this run's two newest)."""
        from .checkpoint import save_checkpoint

        with self._lock:
            self._claim_output_dir()
            return save_checkpoint(self.output_dir, self.global_step, self.model, self.optimizer, self.scheduler,
                                   self.cfg.to_dict(), self.history, run_id=self.run_id, rng=self._rng_at_step_start)

    def load_checkpoint(self, checkpoint: str | Path = "latest") -> int:
        """Restore the run from ``checkpoint`` (a ``checkpoint-<step>`` dir, or ``"latest"`` in output_dir).

        ``"latest"`` tries this directory's run's checkpoints newest first and falls back, with a warning
        naming the file, past any that is corrupted. A checkpoint whose config differs from ``cfg`` beyond
        :data:`RESUMABLE_CHANGES` is refused unless ``allow_config_change``."""
        from .checkpoint import list_checkpoints, load_checkpoint
        from .rundir import read_run_info

        with self._lock:  # never read while another process writes (and prunes) the directory
            if str(checkpoint) == "latest":
                info = read_run_info(self.output_dir)
                candidates = list_checkpoints(self.output_dir, info["run_id"] if info else None)[::-1]
                if not candidates:
                    raise CheckpointError(f"No checkpoint-<step> directory in {self.output_dir} to resume from; "
                                          "train first, or set resume_from_checkpoint to a checkpoint path.")
            else:
                candidates = [Path(checkpoint)]
            failures = []
            for path in candidates:
                try:
                    self._check_config_matches(path)  # a different config is an error, not a reason to fall back
                    self.global_step, self.history, run_id = load_checkpoint(path, self.model, self.optimizer,
                                                                             self.scheduler)
                    break
                except CheckpointError as err:
                    failures.append(str(err))
                    if path != candidates[-1]:
                        warnings.warn(f"{err} Falling back to the previous checkpoint.", stacklevel=2)
            else:
                raise CheckpointError(" ".join(failures) if len(failures) == 1 else
                                      "No checkpoint could be loaded: " + " | ".join(failures))
        self.run_id = run_id or self.run_id
        self.resumed_from = path
        self._rng_at_step_start = None
        return self.global_step

    def _check_config_matches(self, checkpoint: Path) -> None:
        from .checkpoint import read_checkpoint_config

        saved, current = read_checkpoint_config(checkpoint), self.cfg.to_dict()
        changed = {name: (saved[name], value) for name, value in current.items()
                   if name in saved and name not in RESUMABLE_CHANGES and saved[name] != value}
        if changed and not self.allow_config_change:
            listed = ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in sorted(changed.items()))
            raise ConfigError(f"{checkpoint} was trained with another config: {listed}. Resume with the run's own "
                              "settings (the CLI reads them from the checkpoint when you pass no --preset / --config), "
                              "or pass allow_config_change=True (--allow_config_change) to resume anyway.")

    def claim_output_dir(self) -> None:
        """Take ``output_dir`` for this run now rather than at the first write (train, evaluate, save do it
        then): a directory holding another run is refused before any time is spent."""
        with self._lock:
            self._claim_output_dir()

    def _claim_output_dir(self) -> None:
        """Before this trainer first writes to ``output_dir`` (the lock is held): refuse a directory holding
        another run unless ``overwrite_output_dir``; record this run in run.json and config.json; remove
        temporary checkpoint directories left by a kill; cut the logs back to the step being resumed."""
        from .rundir import RUN_FILE, clear_run, holds_a_run, read_run_info, rewrite_jsonl

        if self._claimed:
            return
        info = read_run_info(self.output_dir)
        if (info or {}).get("run_id") != self.run_id and holds_a_run(self.output_dir):
            if not self.overwrite_output_dir:
                other = (f"run {info['run_id']} (preset {info.get('preset')}, seed {info.get('seed')})" if info
                         else "files of an earlier run")
                raise RunDirError(f"{self.output_dir} already holds {other}. Continue it with "
                                  "resume_from_checkpoint='latest' (--resume_from_checkpoint latest), replace it "
                                  "with overwrite_output_dir=True (--overwrite_output_dir; deletes its checkpoints "
                                  "and logs), or choose another output_dir.")
            clear_run(self.output_dir)
        for leftover in [*self.output_dir.glob("checkpoint-*.tmp"), *self.output_dir.glob("checkpoint-*.old")]:
            shutil.rmtree(leftover, ignore_errors=True)
        run = {"run_id": self.run_id, "preset": self.cfg.preset_name, "seed": self.cfg.seed}
        (self.output_dir / RUN_FILE).write_text(json.dumps(run, indent=2))
        (self.output_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=2, default=str))
        step = self.global_step
        rewrite_jsonl(self.output_dir / "metrics.jsonl", lambda row: (row.get("step") or 0) < step)
        rewrite_jsonl(self.output_dir / "completions.jsonl", lambda row: (row.get("step") or 0) < step)
        rewrite_jsonl(self.output_dir / "eval.jsonl", lambda row: (row.get("step") or 0) <= step)
        self._claimed = True


# Settings a resumed run may change without allow_config_change: how long to train, how often to evaluate
# and save, where to write, on which device. Everything else would silently change the experiment.
RESUMABLE_CHANGES = frozenset({"max_steps", "resume_from_checkpoint", "output_dir", "eval_steps", "eval_num_prompts",
                               "eval_split", "save_steps", "logging_steps", "device", "collapse_patience",
                               "preset_name"})


def _check_positions(cfg: A2TGPOConfig, model) -> None:
    """Warn when a rollout may run past the model's position embeddings (prompt + completion budgets)."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(limit, int) and cfg.max_prompt_length + cfg.max_completion_length > limit:
        warnings.warn(f"A2TGPOConfig.max_prompt_length + max_completion_length = {cfg.max_prompt_length} + "
                      f"{cfg.max_completion_length} exceeds the model's {limit} positions (max_position_embeddings): "
                      "a long rollout would run past what the model knows; lower one of them.", stacklevel=3)


def _within_prompt_budget(examples: list[QAExample], tokenizer, cfg: A2TGPOConfig, which: str) -> list[QAExample]:
    """``examples`` without the questions whose prompt exceeds ``max_prompt_length`` tokens (warning names them)."""
    from .chat import prompt_ids, prompt_options

    if not examples:
        return examples
    template = len(prompt_ids(tokenizer, "", observation_role=cfg.observation_role, **prompt_options(cfg)))
    lengths = [template + len(ids) for ids in
               tokenizer([ex.question for ex in examples], add_special_tokens=False)["input_ids"]]
    kept = [ex for ex, n in zip(examples, lengths) if n <= cfg.max_prompt_length]
    if len(kept) < len(examples):
        first, n = next((ex, n) for ex, n in zip(examples, lengths) if n > cfg.max_prompt_length)
        where = (f"{first.meta['source']} row {first.meta['row']}" if "row" in first.meta else f"id {first.id}")
        message = (f"{len(examples) - len(kept)} of {len(examples)} {which} questions are longer than "
                   f"max_prompt_length={cfg.max_prompt_length} tokens (first: {where}, {n} tokens)")
        if not kept:
            raise ConfigError(f"{message}: none is left. Raise max_prompt_length or shorten the questions.")
        warnings.warn(f"{message}; they are left out. Raise max_prompt_length to keep them.", stacklevel=3)
    return kept


def _mini_batch_metrics(parts: list[tuple[dict, float, int]]) -> dict[str, float]:
    """One mini-batch's loss-side metrics from those of its micro-batches ``(metrics, share, tokens)``,
    so that they do not depend on how its rows were split to save memory: the losses (``loss``,
    ``pg_loss``, ``kl``, ``entropy``) weighted by each micro-batch's share of the loss's units, as its
    gradient is; token shares (``clip_ratio/*``) and ``ratio/mean`` weighted by model tokens;
    ``ratio/min`` / ``ratio/max`` the extremes. A micro-batch skipped as non-finite is left out."""
    out: dict[str, float] = {}
    for key in {k for metrics, _, _ in parts for k in metrics}:
        rows = [(metrics[key], share, tokens) for metrics, share, tokens in parts
                if key in metrics and metrics[key] is not None and math.isfinite(metrics[key])]
        if not rows:
            out[key] = float("nan")
        elif key == "ratio/min":
            out[key] = min(value for value, _, _ in rows)
        elif key == "ratio/max":
            out[key] = max(value for value, _, _ in rows)
        elif key.startswith(("clip_ratio/", "ratio/")):
            out[key] = sum(value * tokens for value, _, tokens in rows) / max(sum(t for _, _, t in rows), 1)
        else:
            out[key] = sum(value * share for value, share, _ in rows) / max(sum(s for _, s, _ in rows), 1e-12)
    return out


class _PhaseTimer:
    """Seconds spent in each named phase of a step: ``with phases("generation"): ...``.

    ``metrics(total)`` gives ``time/<phase>`` for the phases of the paper's step-time split (0 for a
    phase that did not run, e.g. the IG forward of GRPO), ``time/other`` = the rest of the step
    (advantages, clipping, the record) and ``time/step_s`` = the total."""

    PHASES = ("generation", "ig_forward", "old_logprob", "actor_update")
    clock = staticmethod(time.perf_counter)  # wall time; benchmarks/bench_step.py swaps in CPU time

    def __init__(self):
        self.seconds = dict.fromkeys(self.PHASES, 0.0)
        self.started = self.clock()
        self._nested: list[float] = []  # per open phase: seconds spent in phases opened inside it

    @contextlib.contextmanager
    def __call__(self, phase: str):
        """Time ``phase``; a phase opened inside another (the probe inside generation) counts for
        itself only, not for the outer one too."""
        started = self.clock()
        self._nested.append(0.0)
        try:
            yield
        finally:
            elapsed = self.clock() - started
            self.seconds[phase] += elapsed - self._nested.pop()
            if self._nested:
                self._nested[-1] += elapsed

    def metrics(self) -> dict[str, float]:
        total = self.clock() - self.started
        out = {f"time/{phase}": seconds for phase, seconds in self.seconds.items()}
        out["time/other"] = max(0.0, total - sum(self.seconds.values()))
        out["time/step_s"] = total
        return out


def _train_with_dropout_off(model) -> None:
    """Every module in eval mode (dropout off, LoRA dropout included), except the layers that run gradient
    checkpointing, which only acts in train mode.

    The rollout computes log π_old with dropout off; the PPO forward must compute log π_θ the same way, or the
    ratio of the first pass is dropout noise instead of 1 (with LoRA dropout 0.05 the turn log-ratio reached
    0.13, forty times the turn-level clip band).
    """
    model.eval()
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False):
            module.train()


def _frozen_copy(model):
    """A copy of ``model`` that never trains: the KL reference of a full fine-tune."""
    import copy

    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def _finite(metrics: dict) -> dict:
    """JSON has no NaN: write null instead."""
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in metrics.items()}


def _lr_lambda(cfg: A2TGPOConfig) -> Callable[[int], float]:
    warmup = int(cfg.warmup_ratio * cfg.max_steps)
    total = max(1, cfg.max_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if cfg.lr_scheduler_type == "linear":
            return 1.0 - progress
        if cfg.lr_scheduler_type == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _resolve_examples(cfg: A2TGPOConfig, train, evaluation) -> tuple[list[QAExample], list[QAExample]]:
    from .envs.loaders import load_questions

    if train is None or evaluation is None:
        if cfg.dataset == "bundled":
            from .envs.world import load_split

            train = train if train is not None else load_split("train")
            if evaluation is None:
                evaluation = load_questions(cfg.eval_dataset) if cfg.eval_dataset else load_split(cfg.eval_split)
        else:
            loaded = load_questions(cfg.dataset)
            cut = 0 if cfg.eval_dataset else max(1, len(loaded) // 10)  # hold out 10% unless an eval file is given
            train = train if train is not None else loaded[cut:]
            if evaluation is None:
                evaluation = load_questions(cfg.eval_dataset) if cfg.eval_dataset else loaded[:cut]
    if not train:
        raise DataError("No training questions: pass train_examples or point cfg.dataset at a question file.")
    return list(train), list(evaluation)


def _resolve_tool(cfg: A2TGPOConfig) -> Callable[[str], str]:
    from .envs.search import SearchTool, bundled_search_tool

    if cfg.corpus == "bundled":
        return bundled_search_tool(topk=cfg.retrieval_topk)
    return SearchTool.from_jsonl(cfg.corpus, topk=cfg.retrieval_topk)
