#!/usr/bin/env bash
# A²TGPO on verl 0.9.1 with this package as a plug-in (see README.md beside this file).
# Documented, not run by the package's tests: it needs GPUs, a model and a multi-turn search tool.
# Settings follow the paper's run: 64 prompts × 16 rollouts, PPO mini-batch 8 prompts (8 optimizer
# steps per rollout batch, so the turn-level clip acts), ε 3e-3 / 4e-3, β 0.3, no KL.
set -euo pipefail

MODEL=${MODEL:-Qwen/Qwen3-4B}
TRAIN=${TRAIN:-$HOME/data/search_r1/train.parquet}
VAL=${VAL:-$HOME/data/search_r1/test.parquet}
TOOLS=${TOOLS:?set TOOLS to your verl multi-turn tool config (actor_rollout_ref.rollout.multi_turn.tool_config_path)}

# Every verl process (driver and Ray workers) imports the plug-in, which registers the estimators and
# the loss and routes the per-token clip factors to the loss.
export VERL_USE_EXTERNAL_MODULES=a2tgpo_lab.integrations.verl

python3 -m verl.trainer.main_ppo \
  algorithm.adv_estimator=a2tgpo \
  +algorithm.a2tgpo.preset=a2tgpo \
  +algorithm.a2tgpo.clip_beta=0.3 \
  algorithm.use_kl_in_reward=False \
  data.train_files="$TRAIN" data.val_files="$VAL" \
  data.train_batch_size=64 data.max_prompt_length=2000 data.max_response_length=6192 \
  actor_rollout_ref.model.path="$MODEL" \
  actor_rollout_ref.model.external_lib=a2tgpo_lab.integrations.verl \
  actor_rollout_ref.actor.policy_loss.loss_mode=a2tgpo \
  actor_rollout_ref.actor.clip_ratio_low=3e-3 \
  actor_rollout_ref.actor.clip_ratio_high=4e-3 \
  actor_rollout_ref.actor.loss_agg_mode=seq-mean-token-mean \
  actor_rollout_ref.actor.use_kl_loss=False \
  actor_rollout_ref.actor.entropy_coeff=0 \
  actor_rollout_ref.actor.ppo_mini_batch_size=8 \
  actor_rollout_ref.actor.optim.lr=1e-6 \
  actor_rollout_ref.rollout.name=vllm \
  actor_rollout_ref.rollout.n=16 \
  actor_rollout_ref.rollout.multi_turn.enable=True \
  actor_rollout_ref.rollout.multi_turn.tool_config_path="$TOOLS" \
  trainer.use_v1=True \
  trainer.n_gpus_per_node=8 trainer.nnodes=1 \
  trainer.total_epochs=5 trainer.save_freq=60 trainer.test_freq=20 \
  trainer.project_name=a2tgpo trainer.experiment_name=a2tgpo_qwen3_4b \
  "$@"
