"""Build the bundled tiny model (data/tiny_model/): word-level tokenizer, Qwen3 from a config, SFT warm start.

    python scripts/build_tiny_model.py            # both phases from scratch, ≈ 30 minutes on one CPU thread
    python scripts/build_tiny_model.py --init_from data/tiny_model --phase1_steps 0   # phase 2 only

The warm start has two phases. Phase 1 (``--phase1_steps``, from a random init) teaches the protocol
and copying on the plain mixture (multi-hop demonstrations shortcut to a guess with probability
``--shortcut_rate``, per type ``--phase1_shortcut_rates``; ``--phase1_type_repeats`` oversamples a
type). Phase 2 (``--phase2_steps``, lower learning rate) continues on the full behaviour mixture:
per-type shortcut rates (``--shortcut_rates``), per-type demonstration counts (``--phase2_type_repeats``,
to oversample a type) and lazy first searches on namesake questions (``--lazy_query_rate``), so that
sampling attempts the right behaviour on every question type at a low rate. ``--init_from DIR`` starts from a saved model instead of a random init (its
vocabulary must equal the one built from the current world).

Steps: (1) a word-level tokenizer over the bundled corpus, every question and answer, and the
protocol words; (2) a randomly initialised Qwen3 (hidden 128, 4 layers); (3) supervised warm start on
demonstrations built from the ``sft`` split's questions, 70 % of multi-hop demonstrations shortcutting to a
guess, every entity renamed (copying a name from the context only "clicks" after ~1500 steps; without
renaming the model memorises the sft names instead); (4) greedy evaluation on ``dev`` and a T = 1 sampling check;
(5) ``save_pretrained`` (safetensors) with the tokenizer and a model card holding the measured numbers.
Seeded, and single-threaded by default (``--threads 1``) so that the same arguments give the same model on
the same machine.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from a2tgpo_lab.envs.search import bundled_search_tool
from a2tgpo_lab.envs.world import QTYPES, bundled_corpus_path, bundled_world_dir, load_split
from a2tgpo_lab.sft import make_demonstrations, repeat_by_type, train_sft
from a2tgpo_lab.tiny import build_tiny_qwen, build_word_tokenizer

REPO = Path(__file__).resolve().parents[1]


def build_tokenizer():
    """Word-level tokenizer covering the corpus, every split's questions and answers (protocol words are added)."""
    texts = [json.loads(line)["contents"] for line in bundled_corpus_path().read_text(encoding="utf-8").splitlines()]
    for split in ("sft", "train", "dev", "test"):
        for example in load_split(split):
            texts += [example.question, *example.answers]
    return build_word_tokenizer(texts)


def evaluate(model, tokenizer, tool, examples, samples_per_question: int, seed: int) -> dict:
    """Greedy EM per question type, and what T = 1 sampling does per type: the mean EM of
    ``samples_per_question`` samples, and how often a sample makes at least as many searches as the
    question needs (it attempts the full path), with batched rollouts as in RL."""
    from a2tgpo_lab import A2TGPOConfig
    from a2tgpo_lab.evaluation import evaluate_agent
    from a2tgpo_lab.rollout import generate_rollouts

    cfg = A2TGPOConfig(model_name_or_path="unused")
    greedy = evaluate_agent(model, tokenizer, examples, tool, cfg)
    generator = torch.Generator().manual_seed(seed)
    sampled_em, full_path = defaultdict(list), defaultdict(list)
    for start in range(0, len(examples), 32):
        chunk = examples[start:start + 32]
        with torch.no_grad():
            traj = generate_rollouts(model, tokenizer, chunk, tool, cfg, num_generations=samples_per_question,
                                     generator=generator)
        for b in range(traj.batch_size):
            example = chunk[int(traj.prompt_index[b])]
            sampled_em[example.qtype].append(float(traj.outcome_reward[b]) == 1.0)
            full_path[example.qtype].append(int(traj.num_tool_turns[b]) >= example.hops)
    return {
        "em": greedy["eval/em"], "answered_in_protocol": 1.0 - greedy["eval/format_error_rate"],
        "search_calls": greedy["eval/search_calls"],
        "rows": {q: (greedy[f"eval/em/{q}"], float(np.mean(sampled_em[q])), float(np.mean(full_path[q])))
                 for q in QTYPES if f"eval/em/{q}" in greedy},
        "samples_per_question": samples_per_question,
    }


def play_examples(model, tokenizer, tool, examples) -> list:
    """A few greedy transcripts for the model card."""
    from a2tgpo_lab.sft import play_episode

    return [(example, play_episode(model, tokenizer, example.question, tool)[0]) for example in examples]


MODEL_CARD = """# Bundled tiny model (warm start)

A {params:,}-parameter `Qwen3ForCausalLM` (hidden {hidden}, {layers} layers, {heads} heads, tied embeddings)
with a word-level tokenizer of {vocab:,} tokens (one token per invented entity name) and a ChatML chat template,
built locally by `scripts/build_tiny_model.py`; nothing comes from a model hub. It exists so that A²TGPO runs
end-to-end on a laptop CPU: it already speaks the search protocol of `a2tgpo_lab/protocol.py`, and leaves clear
room for RL to improve.

## How it was built

- Tokenizer: `a2tgpo_lab.tiny.build_word_tokenizer` over the bundled corpus (`data/world/corpus.jsonl`), every
  question and answer of every split, and the protocol words.
- Model: `a2tgpo_lab.tiny.build_tiny_qwen(tokenizer, hidden_size={hidden}, num_layers={layers}, seed={seed})`.
- Supervised warm start (`a2tgpo_lab.sft`) on demonstrations built from the `sft` split, whose questions ask
  about other companies and people than `train` / `dev` / `test`; loss on assistant tokens only; batch
  {batch_size}, AdamW, warm-up then cosine decay; every entity of every demonstration consistently renamed to
  a random entity of the same kind (fictional but self-consistent chats), so the model learns to copy names
  from the question and the search results and never sees the true facts behind the RL / evaluation questions.
{phases}
## Measured (`dev` split, {n_dev} questions, max 4 turns)

Greedy exact match {em:.1%}; answered in protocol {followed:.1%}; {searches:.2f} searches per question.
Per question type: greedy EM, and with T = 1 sampling ({samples} samples per question, batched as in RL) the
mean EM and the share of samples that make at least as many searches as the question needs.

| type | greedy EM | sampled EM | sampled full search path |
|---|---|---|---|
{by_type}

## Example (greedy)

```
{example}
```

Rebuild: `{command}` (seeded, one thread; this build took {minutes:.0f} minutes).
"""

PHASE_LINE = ("- Phase {n}: {steps} steps at lr {lr:g} ({warmup} warm-up), {n_demos:,} demonstrations ({repeats} per sft "
              "question), shortcut rate {shortcut_rate:g}{overrides}, lazy first search on namesake questions "
              "{lazy:g} (then fooled {fooled:g}){guesses}; final loss {final_loss:.3f}; {minutes:.1f} minutes on one CPU thread.\n")


def load_initial(path: Path):
    """A saved model and its tokenizer, after checking its vocabulary is the current world's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.get_vocab() != build_tokenizer().get_vocab():
        raise ValueError(f"--init_from {path}: its vocabulary differs from the one the current world needs; "
                         "rebuild from scratch (drop --init_from).")
    return AutoModelForCausalLM.from_pretrained(path), tokenizer


def _build_lines(model_dir: Path) -> list[str]:
    """The phase lines of a saved model's card (how it was built), so a model built on top of it carries
    its whole history; a model without a card says so."""
    card = model_dir / "README.md"
    if not card.exists():
        return [f"- (no card at {card}: its history is unknown)"]
    return [line.rstrip() for line in card.read_text(encoding="utf-8").splitlines()
            if line.startswith(("- Phase", "- Started", "  -"))]  # "  -": its own start's history


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "data" / "tiny_model")
    parser.add_argument("--init_from", type=Path, default=None, help="start from this saved model (default: random init)")
    parser.add_argument("--phase1_steps", type=int, default=2500)
    parser.add_argument("--phase1_lr", type=float, default=3e-3)
    parser.add_argument("--phase2_steps", type=int, default=300)
    parser.add_argument("--phase2_lr", type=float, default=1e-3)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--warmup_steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=8, help="phase 1 demonstrations per sft question")
    parser.add_argument("--phase1_type_repeats", type=json.loads, default={},
                        help="phase 1 per-type overrides of --repeats, JSON (default none)")
    parser.add_argument("--phase1_shortcut_rates", type=json.loads, default={},
                        help="phase 1 per-type overrides of --shortcut_rate, JSON (default none)")
    parser.add_argument("--phase2_repeats", type=int, default=2, help="phase 2 demonstrations per sft question")
    parser.add_argument("--phase2_type_repeats", type=json.loads, default={},
                        help='phase 2 per-type overrides of --phase2_repeats, JSON (e.g. {"multi_part": 6}; default none)')
    parser.add_argument("--shortcut_rate", type=float, default=0.7)
    parser.add_argument("--shortcut_rates", type=json.loads, default={"multi_part": 0.5},
                        help='phase 2 per-type overrides of --shortcut_rate, JSON (default {"multi_part": 0.5})')
    parser.add_argument("--guess_rates", type=json.loads, default={},
                        help='phase 2: per-type rate of answering a guess without searching, JSON (default none)')
    parser.add_argument("--lazy_query_rate", type=float, default=0.3, help="phase 2: lazy first search on namesakes")
    parser.add_argument("--fooled_rate", type=float, default=0.5, help="phase 2: a lazy search then answers its wrong city")
    parser.add_argument("--rename_rate", type=float, default=1.0, help="share of demonstrations with renamed entities")
    parser.add_argument("--hidden_size", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval_questions", type=int, default=350, help="dev questions to evaluate (0 = skip)")
    parser.add_argument("--samples", type=int, default=4, help="T=1 samples per dev question")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default; 1 is reproducible)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    tool = bundled_search_tool(topk=2)
    if args.init_from:
        model, tokenizer = load_initial(args.init_from)
    else:
        tokenizer = build_tokenizer()
        model = build_tiny_qwen(tokenizer, hidden_size=args.hidden_size, num_layers=args.num_layers, seed=args.seed)
    params = sum(p.numel() for p in model.parameters())
    print(f"vocab {len(tokenizer)}, parameters {params:,}")

    sft_questions = load_split("sft")
    kb = json.loads((bundled_world_dir() / "world.json").read_text(encoding="utf-8"))
    entities = {kind: kb[kind] for kind in ("companies", "people", "cities", "countries")}
    rng = random.Random(args.seed)
    phases = [
        dict(n=1, steps=args.phase1_steps, lr=args.phase1_lr, repeats=args.repeats,
             type_repeats=args.phase1_type_repeats, overrides=args.phase1_shortcut_rates, lazy=0.0, guesses={}),
        dict(n=2, steps=args.phase2_steps, lr=args.phase2_lr, repeats=args.phase2_repeats,
             type_repeats=args.phase2_type_repeats, overrides=args.shortcut_rates, lazy=args.lazy_query_rate,
             guesses=args.guess_rates),
    ]
    phase_lines, total_minutes = [], 0.0
    for phase in phases:
        if phase["steps"] == 0:
            continue
        questions = repeat_by_type(sft_questions, phase["repeats"], phase["type_repeats"])
        demos = make_demonstrations(questions, tool, rng, args.shortcut_rate,
                                    rename_rate=args.rename_rate, entities=entities, shortcut_rates=phase["overrides"],
                                    lazy_query_rate=phase["lazy"], fooled_rate=args.fooled_rate,
                                    guess_rates=phase["guesses"])
        start = time.time()
        losses = train_sft(model, tokenizer, demos, steps=phase["steps"], batch_size=args.batch_size, lr=phase["lr"],
                           warmup_steps=args.warmup_steps, seed=args.seed + phase["n"])
        minutes = (time.time() - start) / 60
        total_minutes += minutes
        overrides = "".join(f", {q} {r:g}" for q, r in phase["overrides"].items())
        repeats = str(phase["repeats"]) + "".join(f", {q} {r}" for q, r in phase["type_repeats"].items())
        phase_lines.append(PHASE_LINE.format(
            n=phase["n"], steps=phase["steps"], lr=phase["lr"], warmup=args.warmup_steps, n_demos=len(demos),
            repeats=repeats, shortcut_rate=args.shortcut_rate, overrides=overrides, lazy=phase["lazy"],
            guesses="".join(f", {q} answered without searching {r:g}" for q, r in phase["guesses"].items()),
            fooled=args.fooled_rate, final_loss=float(np.mean(losses[-20:])), minutes=minutes))
    if args.init_from:
        phase_lines.insert(0, f"- Started from the saved model `{args.init_from}`, itself built as follows:\n"
                              + "".join(f"  {line}\n" for line in _build_lines(args.init_from)))

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    model.eval()
    dev = load_split("dev")[: args.eval_questions]
    if dev:
        report = evaluate(model, tokenizer, tool, dev, args.samples, args.seed)
        transcripts = play_examples(model, tokenizer, tool, dev[:6])
        for example, chat in transcripts:
            print(f"\n[{example.qtype}] gold {example.answers[0]}")
            for message in chat[2:]:
                print(f"  {message['role']:9s} {message['content']}")
        print(json.dumps({k: v for k, v in report.items()}, indent=1))
        example, chat = transcripts[0]
        command = "python scripts/build_tiny_model.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        card = MODEL_CARD.format(
            params=params, hidden=model.config.hidden_size, layers=model.config.num_hidden_layers,
            heads=model.config.num_attention_heads, vocab=len(tokenizer), seed=args.seed, batch_size=args.batch_size,
            phases="".join(phase_lines), n_dev=len(dev), em=report["em"], followed=report["answered_in_protocol"],
            searches=report["search_calls"], samples=args.samples,
            by_type="\n".join(f"| {q} | {g:.1%} | {m:.1%} | {f:.1%} |" for q, (g, m, f) in report["rows"].items()),
            example="\n".join([f"question: {example.question}   (gold: {example.answers[0]})"]
                              + [f"{m['role']}: {m['content']}" for m in chat[2:]]),
            command=command.strip(), minutes=total_minutes)
        (args.out / "README.md").write_text(card, encoding="utf-8")
    print(f"saved to {args.out} ({sum(f.stat().st_size for f in args.out.iterdir()) / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
