# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · One GPU: a real Hugging Face model with LoRA and 4-bit weights
#
# **What you'll learn**
#
# - what changes between the bundled tiny model and a real chat model (the config fields, and why);
# - where the memory of an A²TGPO step goes, and an estimate for your model before you start;
# - loading with LoRA and 4-bit NF4 weights, and the reference policy that costs no memory
#   (the same model with its adapters switched off);
# - a short run with its step time and peak memory, and what to expect on a GPU.
#
# In the smoke setting, and on a machine without a GPU, this notebook runs the same code on the bundled
# tiny model **on the CPU** (bitsandbytes' 4-bit weights work there, saving memory but not time). On a GPU
# with `SMOKE = False` it trains `MODEL_ID`.
#
# *Run time on a 2-core CPU without a GPU, measured as the CPU time of the notebook's kernel on one thread
# (about the wall time on an idle machine; how: `notebooks/README.md`): CPU fallback of the default setting 26
# s, smoke setting 17 s.*

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one
MODEL_ID = "Qwen/Qwen3-1.7B"   # a Hub id, or a local directory with config.json, weights and a chat template

# %%
import torch

ON_GPU = torch.cuda.is_available()
MODEL = MODEL_ID if ON_GPU and not SMOKE else "bundled"
STEPS = 2 if SMOKE else (10 if ON_GPU else 4)     # CPU: ~3 s of compute per step of 64 rollouts (measured)
PROMPTS, GENERATIONS = (2, 4) if SMOKE else (8, 8)
print(f"GPU: {torch.cuda.get_device_name() if ON_GPU else 'none'}; training {MODEL!r} for {STEPS} steps")

# %%
import inspect

import numpy as np
from IPython.display import Markdown, display

import a2tgpo_lab as lab
from a2tgpo_lab import viz
from a2tgpo_lab.viz import show


def show_source(function):
    """Display the source of a library function, so the code sits next to its equation."""
    display(Markdown(f"```python\n{inspect.getsource(function)}```"))


# %% [markdown]
# ## 1. What to change for a real model
#
# | field | tiny-model default | real model (start here) | why |
# |---|---|---|---|
# | `use_peft` | `False` | `True` | adapters train in MB; the frozen base doubles as the reference policy |
# | `load_in_4bit` | `False` | `True` from ~7 B or on a 16-24 GB card | NF4 base weights, ¼ of bf16's memory for the linear layers |
# | `bf16` | `False` | `True` (Ampere or newer) | half the memory of float32 for weights and activations |
# | `gradient_checkpointing` | `False` | `True` | recompute activations in the backward pass: less memory, one extra forward |
# | `learning_rate` | 3e-4 | 1e-5 … 5e-5 | the default is for a 1 M-parameter model |
# | `max_new_tokens_per_turn` | 32 | 256 - 512 | real models think aloud before a `<search>` |
# | `max_completion_length` | 384 | 2048 - 4096 | everything after the prompt, observations included |
# | `max_observation_tokens` | 64 | 256 - 512 | BPE passages are many more tokens than words |
# | `gradient_accumulation_steps` | 1 | 4 - 16 | the micro-batch of the update sets the activation memory |
#
# The estimator, normalization, clipping and the turn-level $\varepsilon$ carry over unchanged.
# `docs/gpu.md` has the full guide (install, data files, resume, evaluation of a checkpoint).

# %%
import tempfile

real_model = MODEL != "bundled"
real_settings = dict(learning_rate=2e-5, max_new_tokens_per_turn=256, max_completion_length=2048,
                     max_observation_tokens=512, gradient_accumulation_steps=8) if real_model else {}
cfg = lab.preset("a2tgpo", model_name_or_path=MODEL, use_peft=True, lora_r=16, lora_alpha=32, load_in_4bit=True,
                 bf16=ON_GPU, gradient_checkpointing=ON_GPU, max_steps=STEPS, num_prompts_per_step=PROMPTS,
                 num_generations=GENERATIONS, eval_steps=10_000, save_steps=10_000,
                 output_dir=tempfile.mkdtemp(prefix="a2tgpo_gpu_"), **real_settings)
model, tokenizer = lab.load_model_and_tokenizer(cfg)
print(lab.trainable_parameters_summary(model))

# %% [markdown]
# ## 2. Where the memory goes
#
# For $N$ = prompts × generations rollouts of up to $L$ tokens:
#
# 1. **weights**: 2 bytes per parameter in bf16; ½ byte per linear weight in NF4 (the embedding stays
#    unquantized, and is up-cast to float32 for training);
# 2. **rollout KV cache** (no grad): $N \cdot L \cdot 2 \cdot \text{layers} \cdot \text{kv heads} \cdot \text{head dim} \cdot 2$ bytes;
# 3. **the update's logits**: $(N / \text{micro-batches}) \cdot L \cdot \text{vocab} \cdot 4$ bytes, and their gradient: usually
#    the peak, cut by `gradient_accumulation_steps`;
# 4. **LoRA and AdamW state**: ≈ 16 bytes per trainable parameter, tens of MB.
#
# The estimate for the loaded model and this config:

# %%
config = (model.get_base_model() if hasattr(model, "get_base_model") else model).config
head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
kv_bytes_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 2
rollouts = cfg.num_prompts_per_step * cfg.num_generations
length = cfg.max_completion_length + 128              # + the prompt, roughly
micro_batch = max(1, rollouts // (cfg.num_mini_batches * cfg.gradient_accumulation_steps))
gib = 2 ** 30
print(f"{config.model_type}: {config.num_hidden_layers} layers, vocab {config.vocab_size:,}")
print(f"rollout KV cache:  {rollouts} × {length} tokens × {kv_bytes_per_token / 1024:.1f} KiB = "
      f"{rollouts * length * kv_bytes_per_token / gib:.3f} GiB")
print(f"update logits:     {micro_batch} × {length} tokens × vocab × 4 B = "
      f"{micro_batch * length * config.vocab_size * 4 / gib:.3f} GiB (× ~2 with their gradient)")

# %% [markdown]
# ## 3. The reference policy is the same model with its adapters off
#
# LoRA's update starts at zero, so before training the policy and the reference agree exactly; after
# training the policy has moved and the reference has not. `lab.disabled_adapters(model)` is the
# switch (a KL term, `beta > 0`, uses it: one extra no-grad forward pass, no second copy of the model).

# %%
show_source(lab.disabled_adapters)

# %%
device = next(model.parameters()).device
batch = tokenizer([q.question for q in lab.load_split("dev")[:4]], return_tensors="pt", padding=True).to(device)


def policy_and_reference():
    with torch.no_grad():
        policy = lab.token_logprobs(model, batch["input_ids"], batch["attention_mask"]).logprobs
        with lab.disabled_adapters(model):
            reference = lab.token_logprobs(model, batch["input_ids"], batch["attention_mask"]).logprobs
    return policy, reference


policy, reference_before = policy_and_reference()
print(f"before training: max |log π_θ − log π_ref| = {float((policy - reference_before).abs().max()):.2e}")

# %% [markdown]
# ## 4. A short run: step time and peak memory

# %%
import resource
import time

if ON_GPU:
    torch.cuda.reset_peak_memory_stats()
trainer = lab.A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer)
started = time.perf_counter()
trainer.train()
elapsed = time.perf_counter() - started
step_times = [row["time/step_s"] for row in trainer.history if "time/step_s" in row]
print(f"{len(step_times)} steps in {elapsed:.1f} s; mean step {np.mean(step_times):.2f} s")
if ON_GPU:
    print(f"peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
else:
    print(f"peak resident memory of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
policy, reference = policy_and_reference()
print(f"after training: max |log π_θ − log π_ref| = {float((policy - reference).abs().max()):.2e}; "
      f"the reference moved by {float((reference - reference_before).abs().max()):.2e}")

# %%
show(viz.training_curves_figure(trainer.history))

# %% [markdown]
# ## 5. What to expect on a GPU
#
# - **Speed.** Generation dominates: every turn is a batched decode over all rollouts, then the probe
#   costs about one more forward pass over each rollout, then the update is one forward + backward per
#   micro-batch (two forwards with gradient checkpointing). On a CPU, 4-bit saves memory, not time (the
#   bitsandbytes CPU path dequantizes every weight on the fly): with the bundled model, a step of 64
#   rollouts in 4-bit with LoRA took 3.2 s of CPU time on one thread (3.6 s in float32 without LoRA).
# - **Memory.** The peak is about weights + max(rollout KV cache, one micro-batch's logits and their
#   gradient). For Qwen3-1.7B in 4-bit with 64 rollouts × 2048 tokens, docs/gpu.md estimates ≈ 14 GiB of
#   KV cache and ≈ 9 GiB of logits per micro-batch of 8: comfortable on an 80 GB card, tight on 24 GB
#   (raise `gradient_accumulation_steps`, shorten `max_completion_length`). For models up to ~3 B on a
#   large GPU, bf16 + LoRA without 4-bit is often faster: the float32 embedding is a big share of a small
#   model's memory and every 4-bit matmul pays for dequantization.
# - **Learning.** Start from an instruction-tuned model that follows the search protocol in a few-shot
#   prompt, check `answer_rate` in the first steps (notebook 07), and use a learning rate around 2e-5.
# - **Saving.** A checkpoint's `policy/` directory holds only the LoRA adapter and names its base model, so
#   it is itself a `model_name_or_path` for `a2tgpo-lab eval`.
#
# The same run from a terminal:
#
# ```bash
# a2tgpo-lab train --preset a2tgpo --model_name_or_path Qwen/Qwen3-1.7B --use_peft --load_in_4bit --bf16 \\
#   --gradient_checkpointing --learning_rate 2e-5 --max_new_tokens_per_turn 256 --max_completion_length 2048 \\
#   --max_observation_tokens 512 --gradient_accumulation_steps 8 --max_steps 200
# ```
