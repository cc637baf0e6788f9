"""The trainer on the bundled tiny model: steps learn something, records are consistent, resume is exact."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from a2tgpo_lab import preset
from a2tgpo_lab.trainer import A2TGPOTrainer


def small_config(tmp_path, name="a2tgpo", **overrides):
    values = dict(max_steps=4, num_prompts_per_step=3, num_generations=4, max_turns=3, eval_steps=100,
                  eval_num_prompts=8, save_steps=2, learning_rate=1e-3, output_dir=str(tmp_path / name), seed=3,
                  num_mini_batches=2)
    values.update(overrides)
    return preset(name, **values)


def flat_params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters() if p.requires_grad])


@pytest.fixture(scope="module")
def bundled_world():
    from a2tgpo_lab.envs.search import bundled_search_tool
    from a2tgpo_lab.envs.world import load_split

    return load_split("train")[:60], load_split("dev")[:8], bundled_search_tool(topk=2)


def make_trainer(cfg, world):
    train, dev, tool = world
    return A2TGPOTrainer(cfg, train_examples=train, eval_examples=dev, tool=tool)


def test_step_record_is_consistent(tmp_path, bundled_world):
    trainer = make_trainer(small_config(tmp_path), bundled_world)
    before = flat_params(trainer.model).clone()
    record = trainer.step()
    B, T = record.batch_size, record.max_turns
    assert B == 12 and T == 3
    assert record.p.shape == (B, T + 1) and record.ig.shape == (B, T) and record.advantages.shape == (B, T)
    for i in range(B):
        K = record.num_tool_turns[i]
        assert np.isfinite(record.ig[i, :K]).all() or record.ig_nonfinite_count > 0
        assert np.isnan(record.ig[i, K:]).all()
        # token advantages are exactly the per-turn advantage of the token's turn, on model tokens only
        mask, turns, adv = record.loss_mask[i], record.turn_ids[i], record.token_advantage[i]
        assert (adv[~mask] == 0).all()
        for k in np.unique(turns[mask]):
            np.testing.assert_allclose(adv[turns == k], record.advantages[i, k - 1], rtol=1e-5)
        # observation / prompt tokens are never trained
        assert not mask[turns == 0].any()
    assert record.metrics["reward"] == pytest.approx(record.outcome_reward.mean())
    assert np.isfinite(record.metrics["loss"])
    assert not torch.equal(before, flat_params(trainer.model)), "one step must change the weights"


def test_resume_equals_uninterrupted(tmp_path, bundled_world):
    full = make_trainer(small_config(tmp_path, output_dir=str(tmp_path / "full")), bundled_world)
    full.train()

    first = make_trainer(small_config(tmp_path, output_dir=str(tmp_path / "split"), max_steps=2), bundled_world)
    first.train()
    resumed = make_trainer(small_config(tmp_path, output_dir=str(tmp_path / "split"),
                                        resume_from_checkpoint="latest"), bundled_world)
    assert resumed.global_step == 2
    resumed.train()

    assert resumed.global_step == full.global_step == 4
    rewards_full = [h["reward"] for h in full.history]
    rewards_resumed = [h["reward"] for h in resumed.history]
    assert rewards_full == rewards_resumed
    torch.testing.assert_close(flat_params(full.model), flat_params(resumed.model), rtol=0, atol=1e-6)
    # the log of the split run holds all four steps once
    logged = [json.loads(line)["step"] for line in open(tmp_path / "split" / "metrics.jsonl")]
    assert logged == [0.0, 1.0, 2.0, 3.0]


def test_stop_and_callbacks(tmp_path, bundled_world):
    seen = []

    class StopAfterTwo:
        def on_step_end(self, trainer, record):
            seen.append(record.step)
            if len(seen) == 2:
                trainer.stop()

    trainer = make_trainer(small_config(tmp_path, max_steps=10), bundled_world)
    trainer.add_callback(StopAfterTwo())
    trainer.train()
    assert seen == [0, 1] and trainer.global_step == 2
    assert (tmp_path / "a2tgpo" / "checkpoint-2").is_dir()


@pytest.mark.parametrize("name", ["grpo", "igpo", "a2tgpo_pooled", "a2tgpo_no_rescale", "a2tgpo_fixed_clip"])
def test_every_preset_runs_a_step(tmp_path, bundled_world, name):
    trainer = make_trainer(small_config(tmp_path, name=name), bundled_world)
    record = trainer.step()
    assert np.isfinite(record.metrics["loss"])
    if name == "grpo":
        assert np.isnan(record.ig).all()
        # GRPO broadcasts the normalized outcome to every turn
        for i in range(record.batch_size):
            n = len(record.turn_texts[i])
            np.testing.assert_allclose(record.advantages[i, :n], record.outcome_norm[i], rtol=1e-5)
    if "fixed_clip" in name or name in ("grpo", "igpo"):
        assert np.all(record.clip_factor[np.isfinite(record.clip_factor)] == 1.0)


def test_evaluate_reports_by_hops(tmp_path, bundled_world):
    trainer = make_trainer(small_config(tmp_path), bundled_world)
    metrics = trainer.evaluate()
    assert 0.0 <= metrics["eval/em"] <= 1.0
    assert any(k.startswith("eval/em/hops_") for k in metrics)
    assert metrics["eval/n"] == 8
