"""The shipped tiny model loads like any Hugging Face chat model and acts in the protocol; the SFT pieces work."""
from __future__ import annotations

import random

import pytest
import torch

from a2tgpo_lab.envs.search import bundled_search_tool
from a2tgpo_lab.envs.world import load_split
from a2tgpo_lab.protocol import SYSTEM_PROMPT, format_answer, format_search, parse_action
from a2tgpo_lab.sft import (bundled_model_dir, encode_demonstration, make_demonstrations, play_episode,
                            repeat_by_type, train_sft)


@pytest.fixture(scope="module")
def shipped():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(bundled_model_dir())
    model = AutoModelForCausalLM.from_pretrained(bundled_model_dir())
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def tool():
    return bundled_search_tool(topk=2)


def test_shipped_files_are_small_safetensors(shipped):
    files = {p.name: p.stat().st_size for p in bundled_model_dir().iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files and "README.md" in files
    assert sum(files.values()) < 10 * 2**20
    model, _ = shipped
    assert model.config.model_type == "qwen3"


def test_chat_template_renders_and_every_world_word_is_in_the_vocabulary(shipped, tool):
    _, tokenizer = shipped
    question = load_split("dev")[0]
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question.question},
                {"role": "assistant", "content": format_search(question.meta["queries"][0])},
                {"role": "user", "content": tool(question.meta["queries"][0])}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system") and text.endswith("<|im_start|>assistant\n")
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    for example in load_split("test")[:50]:
        assert tokenizer.unk_token_id not in tokenizer(example.question + " " + example.answers[0])["input_ids"]


def test_greedy_turn_on_a_dev_question_is_a_parsable_action(shipped, tool):
    model, tokenizer = shipped
    for example in load_split("dev")[:3]:
        chat, answer = play_episode(model, tokenizer, example.question, tool, max_turns=1)
        action = parse_action(chat[2]["content"])
        assert action.kind in ("search", "answer"), chat[2]["content"]


def test_demonstrations_follow_the_queries_and_shortcut_only_multi_hop(tool):
    examples = load_split("sft")[:60]
    full = make_demonstrations(examples, tool, random.Random(0), shortcut_rate=0.0)
    for example, chat in zip(examples, full):
        searches = [m["content"] for m in chat if m["role"] == "assistant"][:-1]
        assert searches == [format_search(q) for q in example.meta["queries"]]
        assert chat[-1]["content"] == format_answer(example.answers[0])
        assert [m["content"] for m in chat[3::2]] == [tool(q) for q in example.meta["queries"]]
    hurried = make_demonstrations(examples, tool, random.Random(0), shortcut_rate=1.0)
    for example, chat in zip(examples, hurried):
        searches = sum(m["role"] == "assistant" for m in chat) - 1
        assert searches == example.hops if example.hops == 1 else 1 <= searches < example.hops
    with pytest.raises(ValueError, match="shortcut_rate"):
        make_demonstrations(examples, tool, random.Random(0), shortcut_rate=1.5)


def test_shortcut_rates_override_per_question_type(tool):
    examples = [e for e in load_split("sft")[:200] if e.hops >= 2]
    chats = make_demonstrations(examples, tool, random.Random(0), shortcut_rate=1.0,
                                shortcut_rates={"multi_part": 0.0})
    for example, chat in zip(examples, chats):
        searches = sum(m["role"] == "assistant" for m in chat) - 1
        assert (searches == example.hops) == (example.qtype == "multi_part"), example.qtype
    with pytest.raises(ValueError, match="multi_part"):
        make_demonstrations(examples, tool, random.Random(0), shortcut_rates={"multi_part": 2.0})


def test_guess_rates_answer_without_searching_only_for_the_listed_types(tool):
    examples = load_split("sft")[:200]
    chats = make_demonstrations(examples, tool, random.Random(0), shortcut_rate=0.0,
                                guess_rates={"founder": 1.0, "multi_part": 1.0})
    for example, chat in zip(examples, chats):
        searches = sum(m["role"] == "assistant" for m in chat) - 1
        guessed = example.qtype in ("founder", "multi_part")
        assert searches == (0 if guessed else example.hops), example.qtype
        if example.qtype == "multi_part":  # both names guessed: nothing was looked up
            assert chat[-1]["content"].count(";") == 1
    with pytest.raises(ValueError, match="guess_rates"):
        make_demonstrations(examples, tool, random.Random(0), guess_rates={"founder": -0.1})


def test_lazy_first_searches_are_fooled_or_recover_on_namesake_questions(tool):
    examples = [e for e in load_split("sft") if e.qtype == "namesake"][:40]
    chats = make_demonstrations(examples, tool, random.Random(0), lazy_query_rate=1.0, fooled_rate=0.5)
    outcomes = []
    for example, chat in zip(examples, chats):
        searches = [m["content"] for m in chat if m["role"] == "assistant"][:-1]
        assert searches[0] == format_search(example.meta["trap_query"])
        fooled = len(searches) == 1
        assert searches[1:] == ([] if fooled else [format_search(q) for q in example.meta["queries"]])
        gold = example.meta["trap_answer"] if fooled else example.answers[0]
        assert chat[-1]["content"] == format_answer(gold)
        outcomes.append(fooled)
    assert 0 < sum(outcomes) < len(outcomes)  # both branches occur
    plain = make_demonstrations(examples, tool, random.Random(0), shortcut_rate=0.0, lazy_query_rate=0.0)
    assert all(chat[2]["content"] == format_search(e.meta["queries"][0]) for e, chat in zip(examples, plain))


def test_repeat_by_type_oversamples_only_the_listed_types():
    from collections import Counter

    examples = load_split("sft")[:60]
    assert repeat_by_type(examples, 2) == list(examples) * 2
    repeated = repeat_by_type(examples, 2, {"multi_part": 5, "founder": 0})
    per_example = Counter(e.id for e in repeated)
    for example in examples:
        expected = {"multi_part": 5, "founder": 0}.get(example.qtype, 2)
        assert per_example.get(example.id, 0) == expected, example.qtype
    with pytest.raises(ValueError, match="no_such_type"):
        repeat_by_type(examples, 2, {"no_such_type": 3})
    with pytest.raises(ValueError, match="multi_part"):
        repeat_by_type(examples, 2, {"multi_part": -1})


def test_renamed_demonstrations_stay_self_consistent(tool):
    from a2tgpo_lab.envs.world import generate_world

    world = generate_world(0)
    entities = {"companies": world.companies, "people": world.people, "cities": world.cities,
                "countries": world.countries}
    examples = [e for e in load_split("sft")[:40] if e.qtype in ("founder", "birthplace", "chain2", "chain3")]
    plain = make_demonstrations(examples, tool, random.Random(0), shortcut_rate=0.0)
    renamed = make_demonstrations(examples, tool, random.Random(0), shortcut_rate=0.0, rename_rate=1.0,
                                  entities=entities)
    for before, after in zip(plain, renamed):
        assert before[0] == after[0] and len(before) == len(after)
        assert before[1]["content"] != after[1]["content"]
        # Same template words; the answer is still the object of the last observation's first document.
        for old, new in zip(before[1:], after[1:]):
            assert [w for w in old["content"].split() if w[0].islower()] == \
                   [w for w in new["content"].split() if w[0].islower()]
        last_fact = after[-2]["content"].split(" . ")[0].split()[-1]
        assert after[-1]["content"] == format_answer(last_fact)
    with pytest.raises(ValueError, match="entities"):
        make_demonstrations(examples, tool, random.Random(0), rename_rate=0.5)


def test_only_assistant_turns_are_trained(shipped, tool):
    _, tokenizer = shipped
    chat = make_demonstrations(load_split("sft")[:1], tool, random.Random(0), shortcut_rate=0.0)[0]
    ids, trained = encode_demonstration(tokenizer, chat)
    assert len(ids) == len(trained)
    expected = " ".join(m["content"] + " <|im_end|>" for m in chat if m["role"] == "assistant")
    assert tokenizer.decode([i for i, t in zip(ids, trained) if t]) == expected


def test_train_sft_lowers_the_loss_of_a_small_model(tool):
    from a2tgpo_lab.tiny import build_tiny_qwen, build_word_tokenizer

    demos = make_demonstrations(load_split("sft")[:4], tool, random.Random(0), shortcut_rate=0.0)
    tokenizer = build_word_tokenizer([m["content"] for chat in demos for m in chat])
    model = build_tiny_qwen(tokenizer, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64)
    losses = train_sft(model, tokenizer, demos, steps=25, batch_size=4, lr=1e-2, warmup_steps=2, progress=False)
    assert len(losses) == 25 and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
