"""Multi-turn rollouts: KV-cache continuation vs re-encoding the whole history every turn, side by side.

    python benchmarks/bench_rollout_kv.py               # 2 threads, 8 prompts × 4 rollouts, 1..6 turns

The model is a random tiny Qwen3 (the bundled model's size) over the bundled world's vocabulary,
searching the bundled corpus with BM25. So that every rollout takes exactly n turns, a logits
processor (a forward hook) restricts each turn to ``<search> ENTITY RELATION </search>`` and the
turn cap is n: n − 1 searches are executed, the n-th is the unexecuted last-turn search. The
tokens inside that grammar are still the transformer's choices. Both modes run the same batch
with the same seed and must produce the same rollouts; the script prints the median time of each
and the ratio. Times are end to end (sampling, tool calls, π_old log-probs, which both modes read off
the sampler's logits: ``old_logprobs="sampler"``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from a2tgpo_lab.config import A2TGPOConfig
from a2tgpo_lab.envs.search import bundled_search_tool
from a2tgpo_lab.envs.world import bundled_corpus_path, load_split
from a2tgpo_lab.rollout import generate_rollouts
from a2tgpo_lab.tiny import IM_END, build_tiny_qwen, build_word_tokenizer


def force_search_turns(model, tokenizer, entities: list[str], strength: float = 1e4):
    """Hook: after the assistant header only ``<search>``, then an entity, a relation word, ``</search>``, EOS."""
    rules = {"assistant": ["<search>"], "<search>": entities, **{e: ["founded", "born"] for e in entities},
             "founded": ["</search>"], "born": ["</search>"], "</search>": [IM_END]}
    bias = torch.zeros(model.config.vocab_size, model.config.vocab_size)
    for prev, allowed in rules.items():
        bias[tokenizer.convert_tokens_to_ids(prev), tokenizer.convert_tokens_to_ids(allowed)] = strength

    def add_bias(module, args, kwargs, output):
        input_ids, keep = kwargs["input_ids"], kwargs.get("logits_to_keep", 0)
        if isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
            last = input_ids[keep]                                  # logits [N, V] of the kept positions
        elif isinstance(keep, torch.Tensor):
            last = torch.take_along_dim(input_ids, keep.expand(input_ids.shape[0], -1), dim=1)
        else:
            last = input_ids[:, -keep:] if keep else input_ids
        output.logits = output.logits + bias[last]
        return output

    return model.register_forward_hook(add_bias, with_kwargs=True)


def side_by_side(first, second, repeats: int):
    """Median seconds of ``first()`` and ``second()`` run alternately (so load changes hit both alike),
    and the results of their last runs."""
    times = ([], [])
    results = [None, None]
    for _ in range(repeats):
        for index, fn in enumerate((first, second)):
            start = time.perf_counter()
            results[index] = fn()
            times[index].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1]), results[0], results[1]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--turns", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    examples = load_split("train")[: args.prompts]
    corpus = [json.loads(line)["contents"] for line in bundled_corpus_path().read_text(encoding="utf-8").splitlines()]
    tokenizer = build_word_tokenizer(corpus + [e.question for e in examples])
    model = build_tiny_qwen(tokenizer, hidden_size=args.hidden, num_layers=args.layers,
                            intermediate_size=3 * args.hidden).eval()
    entities = sorted({query.split()[0] for e in examples for query in e.meta["queries"]})
    force_search_turns(model, tokenizer, entities)
    tool = bundled_search_tool(topk=2)
    params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen3 hidden {args.hidden}, {args.layers} layers ({params / 1e6:.2f}M parameters, vocab "
          f"{len(tokenizer)}), float32; {torch.get_num_threads()} threads; {args.prompts} prompts × "
          f"{args.generations} rollouts; median of {args.repeats}, alternating")
    print(f"{'turns':>5} {'tokens/rollout':>14} {'re-encode s':>11} {'KV s':>7} {'speed-up':>9} {'identical':>9}")
    for turns in args.turns:
        cfg = A2TGPOConfig(num_generations=args.generations, max_turns=turns, max_completion_length=1024)

        def run(reencode: bool):
            generator = torch.Generator().manual_seed(turns)
            return generate_rollouts(model, tokenizer, examples, tool, cfg, generator=generator, reencode=reencode)

        run(False)  # warm-up
        reencode_s, kv_s, slow, fast = side_by_side(lambda: run(True), lambda: run(False), args.repeats)
        assert all(len(t) == turns for t in fast.turn_texts), "every rollout should take exactly `turns` turns"
        same = torch.equal(slow.input_ids, fast.input_ids)
        tokens = fast.attention_mask.sum(dim=1).float().mean().item()
        print(f"{turns:>5} {tokens:>14.0f} {reencode_s:>11.3f} {kv_s:>7.3f} {reencode_s / kv_s:>8.2f}x {str(same):>9}")


if __name__ == "__main__":
    main()
