"""The supervised warm start of the bundled tiny model: imitate scripted search trajectories.

A demonstration is the chat an agent would have: system prompt, question, then alternating
assistant turns (``<search> Velmora founded </search>`` or the answer) and tool observations in
``user`` messages, rendered with the tokenizer's chat template exactly as the rollout engine renders
them. Only assistant tokens are trained (the set M below; prompt, observations and padding are
masked)::

    L_SFT = − (1 / |M|) · Σ_{t ∈ M} log π_θ(x_t | x_<t)

The demonstrations are deliberately imperfect, to leave headroom for RL: with probability
``shortcut_rate`` a multi-hop demonstration stops searching early and answers a guess (a chain
question after its first search, a two-part or comparison question after one of its two searches).
The warm-started model then usually shortcuts when decoding greedily, but sampling still takes the
full path some of the time, which is exactly what GRPO / A²TGPO can reinforce. ``guess_rates`` does
the same for questions of one search: a demonstration answers a guess without searching at all.

Lazy first searches (``lazy_query_rate``): a ``namesake`` question ("where was the founder of C
born ?" while a person also named C exists) has a tempting one-search query, "C born", that finds
the namesake's birth city instead. With this probability a namesake demonstration starts with that
lazy search; then, with probability ``fooled_rate``, it answers the wrong city it found, and
otherwise it recovers by following the careful searches. The warm-started policy thus makes good
and bad first searches for the same question, and a bad one does not always end in a wrong answer.

Entity renaming (``rename_rate``): a tiny model trained on a few hundred questions memorises their
names instead of learning to copy a name from the question or the search result, and a name it
never had to output gets a very low probability. So, with probability ``rename_rate``, every entity
of a demonstration (question, queries, observations, answer) is consistently replaced by another
entity of the same kind, drawn from the whole world: the chat stays self-consistent but its facts
are fictional, so it teaches copying and cannot teach the true facts of the RL / evaluation
questions.
"""
from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

from .envs.qa import QAExample
from .protocol import ANSWER_PART_SEPARATOR, SYSTEM_PROMPT, format_answer, format_search

Messages = list[dict[str, str]]


def bundled_model_dir() -> Path:
    """Where the warm-started tiny model is shipped (``data/tiny_model``)."""
    from .envs.world import bundled_data_dir

    return bundled_data_dir() / "tiny_model"


def repeat_by_type(examples: Sequence[QAExample], repeats: int,
                   repeats_by_type: Optional[Mapping[str, int]] = None) -> list[QAExample]:
    """Each example ``repeats`` times, or ``repeats_by_type[qtype]`` times for the types listed there.

    Oversampling one question type gives the warm start more demonstrations of a behaviour it copies
    poorly (e.g. ``{"multi_part": 6}``). The order is round by round (every example once, then again),
    so without overrides the result equals ``list(examples) * repeats``.
    """
    repeats_by_type = dict(repeats_by_type or {})
    present = {example.qtype for example in examples}
    for qtype, count in [("repeats", repeats)] + list(repeats_by_type.items()):
        if not isinstance(count, int) or count < 0:
            raise ValueError(f"repeat_by_type: {qtype}={count!r} must be a non-negative integer.")
    unknown = sorted(set(repeats_by_type) - present)
    if unknown:
        raise ValueError(f"repeat_by_type: repeats_by_type names {unknown}, which no example has; "
                         f"the examples' types are {sorted(present)}.")
    counts = [repeats_by_type.get(example.qtype, repeats) for example in examples]
    return [example for round_ in range(max(counts, default=0))
            for example, count in zip(examples, counts) if count > round_]


def make_demonstrations(examples: Sequence[QAExample], tool: Callable[[str], str], rng: random.Random,
                        shortcut_rate: float = 0.7, rename_rate: float = 0.0,
                        entities: Optional[Mapping[str, Sequence[str]]] = None,
                        system_prompt: str = SYSTEM_PROMPT,
                        shortcut_rates: Optional[Mapping[str, float]] = None,
                        lazy_query_rate: float = 0.0, fooled_rate: float = 0.5,
                        guess_rates: Optional[Mapping[str, float]] = None) -> list[Messages]:
    """One chat (list of ``{"role", "content"}``) per example, following ``meta["queries"]`` with ``tool``.

    Each search turn issues the next careful query and is followed by the tool's observation; the
    last turn answers (with the probe prefix line, so the IG probe is in-distribution). With
    probability ``shortcut_rate`` an example needing two or more searches stops after a random
    number of them (at least one, fewer than all) and answers a guess drawn from the answers of
    same-type examples, keeping whatever the searches already revealed.

    ``shortcut_rates`` overrides ``shortcut_rate`` per question type (e.g. ``{"multi_part": 0.5}``).
    With probability ``lazy_query_rate`` an example with ``meta["trap_query"]`` starts with that lazy
    search, then answers the trap's wrong city (probability ``fooled_rate``) or recovers.
    With probability ``guess_rates[qtype]`` (e.g. ``{"founder": 0.4}``; default none) an example answers
    a guess at once, without searching: a start that sometimes skips the search RL can teach to make.

    With probability ``rename_rate`` the chat's entities are renamed (see the module docstring);
    ``entities`` maps each kind (e.g. ``"people"``) to every name of that kind.
    """
    shortcut_rates, guess_rates = dict(shortcut_rates or {}), dict(guess_rates or {})
    rates = ([("shortcut_rate", shortcut_rate), ("rename_rate", rename_rate), ("lazy_query_rate", lazy_query_rate),
              ("fooled_rate", fooled_rate)] + [(f"shortcut_rates[{q!r}]", r) for q, r in shortcut_rates.items()]
             + [(f"guess_rates[{q!r}]", r) for q, r in guess_rates.items()])
    for name, rate in rates:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"make_demonstrations: {name}={rate!r} must be in [0, 1].")
    if rename_rate > 0 and not entities:
        raise ValueError("make_demonstrations: rename_rate > 0 needs entities={kind: [names]} to draw new names from.")
    kind_of = {name: kind for kind, names in (entities or {}).items() for name in names}
    pools = _answer_pools(examples)
    demonstrations = []
    for example in examples:
        queries = example.meta.get("queries")
        if not queries:
            raise ValueError(f"make_demonstrations: example {example.id!r} has no meta['queries'] (the careful "
                             "agent's searches); use the bundled world's questions or add them.")
        messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": example.question}]

        def search(query: str) -> None:
            messages.append({"role": "assistant", "content": format_search(query)})
            messages.append({"role": "user", "content": tool(query)})

        if "trap_query" in example.meta and rng.random() < lazy_query_rate:
            search(example.meta["trap_query"])
            fooled = rng.random() < fooled_rate
            for query in [] if fooled else queries:
                search(query)
            answer = example.meta["trap_answer"] if fooled else example.answers[0]
        else:
            searches = len(queries)
            # a type without a guess rate draws no number for it, so builds without one are unchanged
            if example.qtype in guess_rates and rng.random() < guess_rates[example.qtype]:
                searches = 0
            elif searches >= 2 and rng.random() < shortcut_rates.get(example.qtype, shortcut_rate):
                searches = rng.randint(1, len(queries) - 1)
            for query in queries[:searches]:
                search(query)
            answer = example.answers[0] if searches == len(queries) else _guess(example, searches, pools, rng)
        messages.append({"role": "assistant", "content": format_answer(answer)})
        if rng.random() < rename_rate:
            messages = _renamed(messages, kind_of, entities, rng)
        demonstrations.append(messages)
    return demonstrations


def _renamed(messages: Messages, kind_of: Mapping[str, str], entities: Mapping[str, Sequence[str]],
             rng: random.Random) -> Messages:
    """The chat with each entity word replaced by a distinct random entity of the same kind (a bijection)."""
    mentioned: dict[str, list[str]] = {}
    for message in messages[1:]:
        for word in message["content"].split():
            if word in kind_of and word not in mentioned.setdefault(kind_of[word], []):
                mentioned[kind_of[word]].append(word)
    mapping = {}
    for kind, names in mentioned.items():
        mapping.update(zip(names, rng.sample(list(entities[kind]), len(names))))
    return [m if m["role"] == "system" else
            {"role": m["role"], "content": " ".join(mapping.get(w, w) for w in m["content"].split())}
            for m in messages]


def _answer_pools(examples: Sequence[QAExample]) -> dict[str, list[str]]:
    """qtype → the distinct answer parts of that type's examples (what a guess is drawn from)."""
    pools: dict[str, set[str]] = {}
    for example in examples:
        parts = [part.strip() for part in example.answers[0].split(ANSWER_PART_SEPARATOR)]
        pools.setdefault(example.qtype, set()).update(parts)
    return {qtype: sorted(parts) for qtype, parts in pools.items()}


def _guess(example: QAExample, searches: int, pools: dict[str, list[str]], rng: random.Random) -> str:
    """A plausible-looking answer after too few lookups (possibly right by luck)."""
    if example.qtype == "multi_part" and searches == 0:
        return f"{rng.choice(pools[example.qtype])} {ANSWER_PART_SEPARATOR} {rng.choice(pools[example.qtype])}"
    if example.qtype == "multi_part":
        # The first search revealed the first founder; the second is a guess.
        known = example.meta["steps"][0][2]
        return f"{known} {ANSWER_PART_SEPARATOR} {rng.choice(pools[example.qtype])}"
    return rng.choice(pools[example.qtype])


def encode_demonstration(tokenizer, messages: Messages) -> tuple[list[int], list[bool]]:
    """Token ids of the rendered chat and, per token, whether it is trained (generated by the assistant).

    An assistant turn's trained tokens are what the chat adds after the generation prompt
    (``<|im_start|>assistant``): the turn's text and its end-of-turn token, exactly what the model
    emits during a rollout.
    """
    def ids(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    input_ids = ids(tokenizer.apply_chat_template(messages, tokenize=False))
    trained = [False] * len(input_ids)
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = ids(tokenizer.apply_chat_template(messages[:index], tokenize=False, add_generation_prompt=True))
        through_turn = ids(tokenizer.apply_chat_template(messages[: index + 1], tokenize=False))
        if input_ids[: len(through_turn)] != through_turn or through_turn[: len(prompt)] != prompt:
            raise ValueError("encode_demonstration: the chat template does not render turns as a growing prefix; "
                             "assistant tokens cannot be located.")
        trained[len(prompt): len(through_turn)] = [True] * (len(through_turn) - len(prompt))
    return input_ids, trained


def train_sft(model, tokenizer, demonstrations: Sequence[Messages], steps: int, batch_size: int = 32,
              lr: float = 3e-3, warmup_steps: int = 20, weight_decay: float = 0.0, seed: int = 0,
              progress: bool = True) -> list[float]:
    """Minimise L_SFT with AdamW and a cosine learning-rate schedule; returns the loss of every step.

    Batches are drawn without replacement, reshuffled each epoch (seeded). The schedule is linear
    warm-up for ``warmup_steps``, then lr · ½(1 + cos(π · progress)).
    """
    import torch
    from tqdm.auto import tqdm

    if steps < 1 or batch_size < 1:
        raise ValueError(f"train_sft: steps={steps} and batch_size={batch_size} must be positive.")
    if not demonstrations:
        raise ValueError("train_sft: no demonstrations given.")
    encoded = [encode_demonstration(tokenizer, messages) for messages in demonstrations]
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _cosine_with_warmup(step, steps, warmup_steps))
    model.train()
    order, cursor, losses = [], 0, []
    bar = tqdm(range(steps), desc="SFT", disable=not progress)
    for _ in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(encoded), generator=generator).tolist(), 0
        batch = [encoded[i] for i in order[cursor: cursor + batch_size]]
        cursor += batch_size
        input_ids, attention_mask, labels = _collate(batch, tokenizer.pad_token_id)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def _cosine_with_warmup(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _collate(batch: list[tuple[list[int], list[bool]]], pad_id: int):
    """Right-pad to the longest sequence → input_ids, attention_mask, labels, each [B, L].

    labels are -100 (ignored by the loss) except at trained tokens.
    """
    import torch

    length = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), length), dtype=torch.long)
    labels = torch.full((len(batch), length), -100, dtype=torch.long)
    for row, (ids, trained) in enumerate(batch):
        tokens = torch.tensor(ids, dtype=torch.long)
        input_ids[row, : len(ids)] = tokens
        attention_mask[row, : len(ids)] = 1
        labels[row, : len(ids)] = torch.where(torch.tensor(trained), tokens, torch.tensor(-100))
    return input_ids, attention_mask, labels


def play_episode(model, tokenizer, question: str, tool: Callable[[str], str], max_turns: int = 4,
                 max_new_tokens: int = 32, do_sample: bool = False, temperature: float = 1.0,
                 system_prompt: str = SYSTEM_PROMPT) -> tuple[Messages, Optional[str]]:
    """One multi-turn episode with ``model.generate`` per turn: returns (chat, final answer or None).

    A simple reference loop for checking the warm start (the trainer's batched rollout engine is
    the one used for RL). The episode ends at an answer, a malformed turn, or ``max_turns``.
    """
    import torch

    from .protocol import parse_action

    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": question}]
    for _ in range(max_turns):
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                    temperature=temperature if do_sample else None, top_k=None, top_p=None)
        reply = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": reply})
        action = parse_action(reply)
        if action.kind != "search":
            return messages, action.content if action.kind == "answer" else None
        messages.append({"role": "user", "content": tool(action.content)})
    return messages, None
