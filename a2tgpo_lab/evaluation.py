"""Greedy evaluation of an agent on held-out questions: EM, F1, turns, searches, format errors, by hop count."""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import torch

from .config import A2TGPOConfig
from .envs import QAExample


def evaluate_agent(model, tokenizer, examples: Sequence[QAExample], tool: Callable[[str], str], cfg: A2TGPOConfig,
                   batch_size: int = 64, progress: bool = False, prefix: str = "eval/") -> dict[str, float]:
    """One greedy rollout per question; returns ``{prefix}em``, ``f1``, ``num_turns``, ``search_calls``,
    ``format_error_rate``, ``answer_rate`` and the same EM per hop count (``{prefix}em/hops_2`` ...), per
    question type (``{prefix}em/{qtype}``) and per data source (``{prefix}em/source_hotpotqa`` ..., the
    columns of the paper's Table 1; only for examples that have a ``data_source``)."""
    from .rewards import exact_match, f1_score
    from .rollout import generate_rollouts

    if not examples:
        raise ValueError("evaluate_agent got no examples; pass a non-empty list of QAExample.")
    rows: list[dict] = []
    was_training = model.training
    model.eval()
    batches = range(0, len(examples), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="eval", leave=False)
    try:
        for start in batches:
            chunk = list(examples[start:start + batch_size])
            with torch.no_grad():
                # greedy evaluation never reads π_old: no log-probs at all
                traj = generate_rollouts(model, tokenizer, chunk, tool, cfg, num_generations=1, greedy=True,
                                         old_logprobs="none")
            for i, example in enumerate(chunk):
                answer = traj.final_answer[i]
                rows.append({
                    "hops": example.hops, "qtype": example.qtype, "data_source": example.data_source,
                    "em": exact_match(answer, example.answers) if answer is not None else 0.0,
                    "f1": f1_score(answer, example.answers) if answer is not None else 0.0,
                    "turns": len(traj.turn_texts[i]),
                    "searches": int(traj.num_tool_turns[i]),
                    "format_error": float(traj.end_reason[i] != "answer"),
                })
    finally:
        model.train(was_training)
    return summarize_eval(rows, prefix)


def summarize_eval(rows: Sequence[dict], prefix: str = "eval/") -> dict[str, float]:
    """Means over evaluation rows (keys em, f1, turns, searches, format_error, hops, qtype, optional data_source)."""
    def mean(key, subset=rows):
        return float(np.mean([r[key] for r in subset]))

    out = {f"{prefix}em": mean("em"), f"{prefix}f1": mean("f1"), f"{prefix}num_turns": mean("turns"),
           f"{prefix}search_calls": mean("searches"), f"{prefix}format_error_rate": mean("format_error"),
           f"{prefix}n": float(len(rows))}
    for key, label in (("hops", "hops_{}"), ("qtype", "{}"), ("data_source", "source_{}")):
        groups: dict = defaultdict(list)
        for r in rows:
            if r.get(key, "") != "":  # rows without a data source (the bundled task) get no per-source key
                groups[r[key]].append(r)
        for value, subset in sorted(groups.items(), key=lambda kv: str(kv[0])):
            out[f"{prefix}em/{label.format(value)}"] = mean("em", subset)
    return out
