"""The TRL integration: a GRPOTrainer subclass trains the bundled tiny model with per-turn advantages."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl", reason="trl is an optional extra (pip install 'a2tgpo_lab[trl]')")
pytest.importorskip("datasets")


def test_two_trl_steps_train_with_per_turn_advantages(tmp_path):
    from trl import GRPOConfig

    from a2tgpo_lab.config import preset
    from a2tgpo_lab.envs.world import load_split
    from a2tgpo_lab.integrations.trl import A2TGPOGRPOTrainer, qa_dataset
    from a2tgpo_lab.models import load_model_and_tokenizer

    torch.manual_seed(0)
    cfg = preset("a2tgpo", num_generations=4, temperature=1.5)
    model, tokenizer = load_model_and_tokenizer(cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    # namesake questions: the warm-started model searches, reads, often searches again, and its first searches
    # differ (careful or lazy), so turn groups have IG spread (identical searches would all get Î = 0)
    examples = [e for e in load_split("train") if e.qtype == "namesake"][:8]
    # T = 1.5 and 4 prompts a batch: enough spread in the first searches that some turn group has IG spread
    args = GRPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], max_steps=2, learning_rate=1e-3,
                      per_device_train_batch_size=16, num_generations=4, num_iterations=2, logging_steps=1,
                      save_strategy="no", temperature=1.5, seed=0)
    trainer = A2TGPOGRPOTrainer(model=model, args=args, train_dataset=qa_dataset(examples),
                                processing_class=tokenizer, a2tgpo_config=cfg)
    seen = []
    original = trainer._generate_and_score_completions

    def recording(inputs):
        batch = original(inputs)
        seen.append({k: v.detach().cpu() for k, v in batch.items()})
        return batch

    trainer._generate_and_score_completions = recording
    trainer.train()

    assert trainer.state.global_step == 2
    assert seen, "no rollouts were generated"
    # one rollout batch serves both steps (num_iterations = 2), so the second step's ratio leaves 1
    batch = seen[0]
    mask = batch["completion_mask"].bool() & batch["tool_mask"].bool()
    multi_turn = [b for b in range(mask.shape[0]) if int(batch["turn_ids"][b].max()) >= 2]
    assert multi_turn, "no rollout took a tool turn"
    differs = [b for b in multi_turn
               if len({round(v, 6) for v in batch["advantages"][b][mask[b]].tolist()}) > 1]
    assert differs, "per-token advantages are constant within every multi-turn rollout"
    # tokens of one turn share the advantage; observation tokens carry none
    b = differs[0]
    for k in range(1, int(batch["turn_ids"][b].max()) + 1):
        assert len(set(batch["advantages"][b][batch["turn_ids"][b] == k].tolist())) == 1
    assert (batch["advantages"][~mask] == 0).all()
    # the adaptive clip bounds differ between turns too
    assert len(set(batch["token_clip_high"][mask].tolist())) > 1

    changed = any(not torch.equal(before[name], p.detach()) for name, p in model.named_parameters())
    assert changed, "the weights did not change"
    logged = [row for row in trainer.state.log_history if "clip_ratio/region_mean" in row]
    assert logged and all(0.0 <= row["clip_ratio/region_mean"] <= 1.0 for row in logged)
