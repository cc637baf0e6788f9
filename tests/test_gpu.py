"""One GPU: a mid-size random Qwen3 in 4-bit NF4 + LoRA runs two A²TGPO trainer steps.

Skipped only when there is no CUDA GPU; a broken import of the trainer fails, it does not skip.
Run with ``python -m pytest -q -s tests/test_gpu.py`` to see the peak GPU memory it prints.
"""
from __future__ import annotations

import pytest
import torch

from a2tgpo_lab import preset
from a2tgpo_lab.envs import QAExample
from a2tgpo_lab.models import load_model_and_tokenizer, trainable_parameters_summary
from a2tgpo_lab.protocol import format_observation
from a2tgpo_lab.tiny import build_tiny_qwen, build_word_tokenizer
from a2tgpo_lab.trainer import A2TGPOTrainer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FACTS = {"Velmora": "Velmora was founded by Tarsk .", "Tarsk": "Tarsk was born in Oslund .",
         "Quillan": "Quillan was founded by Brevik .", "Brevik": "Brevik was born in Kestrel ."}
EXAMPLES = [QAExample("q0", "who founded Velmora ?", ("Tarsk",), hops=1),
            QAExample("q1", "where was the founder of Quillan born ?", ("Kestrel",), hops=2)]


def search(query: str) -> str:
    """A two-passage tool over FACTS: the passages whose entity the query names, then the rest."""
    hits = sorted(FACTS, key=lambda entity: entity not in query.split())
    return format_observation([FACTS[entity] for entity in hits[:2]])


def test_two_4bit_lora_steps_on_gpu(tmp_path):
    tokenizer = build_word_tokenizer(list(FACTS.values()) + [e.question for e in EXAMPLES])
    build_tiny_qwen(tokenizer, hidden_size=1024, num_layers=8, num_heads=16, intermediate_size=2816).save_pretrained(
        tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    cfg = preset("a2tgpo", model_name_or_path=str(tmp_path / "model"), use_peft=True, lora_r=8, load_in_4bit=True,
                 bf16=True, gradient_checkpointing=True, device="cuda", beta=0.01, entropy_coeff=0.01,
                 num_prompts_per_step=2, num_generations=4, max_turns=3, max_new_tokens_per_turn=16, max_steps=2,
                 eval_steps=100, save_steps=100, output_dir=str(tmp_path / "run"))
    model, tokenizer = load_model_and_tokenizer(cfg)
    print("\n" + trainable_parameters_summary(model))
    lora_before = [p.detach().clone() for p in model.parameters() if p.requires_grad]

    torch.cuda.reset_peak_memory_stats()
    trainer = A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer, train_examples=EXAMPLES,
                            eval_examples=EXAMPLES, tool=search)
    records = [trainer.step() for _ in range(2)]
    peak_mib = torch.cuda.max_memory_allocated() / 2**20

    print(f"peak GPU memory over two steps: {peak_mib:.0f} MiB on {torch.cuda.get_device_name()}")
    assert peak_mib > 0
    assert all(torch.isfinite(torch.tensor(r.metrics["loss"])) for r in records)
    # the entropy bonus guarantees a gradient even when every rollout of a random model earns the same reward
    lora_after = [p for p in model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(lora_before, lora_after)), "two steps must move the adapters"
    assert next(model.parameters()).is_cuda
