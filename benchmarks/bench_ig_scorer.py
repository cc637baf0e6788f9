"""IG probe scoring: the fast KV-cache scorer vs the naive one-pass-per-turn reference, side by side.

    python benchmarks/bench_ig_scorer.py                 # 2 threads, 32 rollouts, 2 / 4 / 8 tool turns

Each rollout has exactly K tool turns (a prompt, then K × (turn + observation), then an answer turn)
made of random tokens: the scorers' cost depends on the lengths, not on what the tokens say. As in
a real step, the G rollouts of a group share their prompt (so they share the t = 0 probe). The
scorers run on the same batch in the same process, alternately; the script prints the median time
of each, the ratios, and the largest difference between their scores. "fast" encodes the contexts
itself (pass 1); "fast, rollout cache" reads them from the KV cache the rollout kept
(``generate_rollouts(keep_kv=True)``, what the trainer does), built here by one forward pass that is
not timed, since sampling had to encode those tokens anyway.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from a2tgpo_lab.config import A2TGPOConfig
from a2tgpo_lab.probe import score_probes, score_probes_naive
from a2tgpo_lab.records import Trajectory
from a2tgpo_lab.rollout import KVPrefix
from a2tgpo_lab.tiny import build_tiny_qwen, build_word_tokenizer

WORDS = [f"w{i}" for i in range(400)]


def synthetic_trajectory(tokenizer, batch: int, tool_turns: int, prompt_len: int, turn_len: int,
                         observation_len: int, seed: int, group: int = 8) -> Trajectory:
    """B rollouts of exactly ``tool_turns`` tool turns, with context_ends / turn_ids laid out as rollout.py
    does; rollouts ``p·group .. p·group + group − 1`` share their prompt."""
    generator = torch.Generator().manual_seed(seed)
    first_word = tokenizer.convert_tokens_to_ids(WORDS[0])
    turn_ids, ends = [0] * prompt_len, [prompt_len]
    for k in range(1, tool_turns + 1):
        turn_ids += [k] * turn_len + [0] * observation_len
        ends.append(ends[-1] + turn_len + observation_len)
    turn_ids += [tool_turns + 1] * turn_len
    length = len(turn_ids)
    input_ids = torch.randint(first_word, first_word + len(WORDS), (batch, length), generator=generator)
    input_ids[:, :prompt_len] = input_ids[torch.arange(batch) // group * group, :prompt_len]
    turn_tensor = torch.tensor(turn_ids).repeat(batch, 1)
    context_ends = torch.full((batch, tool_turns + 2), -1)
    context_ends[:, : tool_turns + 1] = torch.tensor(ends)
    return Trajectory(
        input_ids=input_ids, attention_mask=torch.ones(batch, length, dtype=torch.long),
        loss_mask=turn_tensor > 0, turn_ids=turn_tensor, old_logprobs=torch.zeros(batch, length),
        context_ends=context_ends, prompt_index=torch.arange(batch) // group,
        num_tool_turns=torch.full((batch,), tool_turns), has_answer_turn=torch.ones(batch, dtype=torch.bool),
        outcome_reward=torch.zeros(batch), questions=["q"] * batch, answers=[[f"{WORDS[1]} {WORDS[2]}"]] * batch,
        turn_texts=[[]] * batch, actions=[[]] * batch, observations=[[]] * batch, final_answer=[None] * batch,
        end_reason=["answer"] * batch)


def rollout_cache(model, traj: Trajectory) -> KVPrefix:
    """The KV cache a rollout with ``keep_kv=True`` would have kept: every token but each row's last."""
    lengths = traj.attention_mask.sum(dim=1) - 1
    with torch.no_grad():
        cache = model(input_ids=traj.input_ids[:, :-1], use_cache=True, logits_to_keep=1).cache
    return KVPrefix([layer.keys for layer in cache.layers], [layer.values for layer in cache.layers], lengths)


def alternately(functions, repeats: int):
    """Median seconds of each function, run in turn (so load changes hit all alike), and their last results."""
    times = [[] for _ in functions]
    results = [None] * len(functions)
    for _ in range(repeats):
        for index, fn in enumerate(functions):
            start = time.perf_counter()
            results[index] = fn()
            times[index].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times], results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="rollouts per batch")
    parser.add_argument("--turns", type=int, nargs="+", default=[2, 4, 8], help="tool turns per rollout")
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--prompt_len", type=int, default=60)
    parser.add_argument("--turn_len", type=int, default=8)
    parser.add_argument("--observation_len", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--group", type=int, default=8, help="rollouts per prompt (they share the prompt)")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    tokenizer = build_word_tokenizer([" ".join(WORDS)])
    model = build_tiny_qwen(tokenizer, hidden_size=args.hidden, num_layers=args.layers,
                            intermediate_size=3 * args.hidden).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"model: Qwen3 hidden {args.hidden}, {args.layers} layers ({params / 1e6:.2f}M parameters), float32; "
          f"{torch.get_num_threads()} threads; {args.batch} rollouts; turn {args.turn_len} + observation "
          f"{args.observation_len} tokens; median of {args.repeats}, alternating")
    print(f"{'tool turns':>10} {'tokens/rollout':>14} {'naive s':>9} {'fast s':>9} {'speed-up':>9} "
          f"{'fast, rollout cache s':>22} {'speed-up':>9} {'max |diff|':>11}")
    for turns in args.turns:
        cfg = A2TGPOConfig(max_turns=turns + 1)
        traj = synthetic_trajectory(tokenizer, args.batch, turns, args.prompt_len, args.turn_len,
                                    args.observation_len, seed=turns, group=args.group)
        cached = Trajectory(**{**traj.__dict__, "kv_prefix": rollout_cache(model, traj)})
        score_probes(model, tokenizer, traj, cfg)  # warm-up
        (naive_s, fast_s, cached_s), ((naive, _), (fast, _), (reused, _)) = alternately(
            [lambda: score_probes_naive(model, tokenizer, traj, cfg), lambda: score_probes(model, tokenizer, traj, cfg),
             lambda: score_probes(model, tokenizer, cached, cfg)], args.repeats)
        diff = max((fast - naive).nan_to_num().abs().max().item(), (reused - naive).nan_to_num().abs().max().item())
        print(f"{turns:>10} {traj.input_ids.shape[1]:>14} {naive_s:>9.3f} {fast_s:>9.3f} {naive_s / fast_s:>8.1f}x "
              f"{cached_s:>22.3f} {naive_s / cached_s:>8.1f}x {diff:>11.2e}")


if __name__ == "__main__":
    main()
