"""The IG probe (ALGORITHM.md §1): how likely is the gold answer if the agent had to answer after turn t?

For rollout i and t = 0 .. K_i, with c_t = the context after turn t (``input_ids[i, :context_ends[i, t]]``,
which ends with the assistant header) and the probe suffix s = ``PROBE_PREFIX <answer>`` (chat.py):

    ℓ_t = (1/|a|) Σ_j log π_old(a_j | c_t, s, a_<j)        a = the first gold alias's tokens

under π_old (no grad, eval mode, logits / sampling temperature). IG itself (p_t = exp ℓ_t,
IG_k = p_k − p_{k−1}) is computed from ℓ in info_gain.py.

Two scorers return the same [B, T+1] matrix (NaN past K_i):

- :func:`score_probes_naive`, the reference: one forward pass per (rollout, t) over c_t + s + a.
  Cost Σ_t |c_t|, quadratic in the number of turns, since every pass re-reads the shared history.
- :func:`score_probes`, the fast one, reuses the shared prefix through the KV cache. The contexts
  of one rollout are nested prefixes of its longest one, c_0 ⊂ c_1 ⊂ … ⊂ c_K, so

      pass 1: encode c_K once into the KV cache (all rollouts of the batch together, right-padded);
      pass 2: feed all K+1 probes at once, side by side in slots after the cache, with a 4-D mask:
              probe t sees cache columns < |c_t| and its own earlier tokens, nothing else;
              its tokens get position ids |c_t|, |c_t| + 1, … as if it followed c_t directly.

  Identical probes are scored once: the G rollouts of a prompt share c_0 (the prompt) and often
  their first turns, so a probe is keyed by its tokens (context + gold) and run in the row of any
  rollout whose tokens start with that context, rows balanced so none holds many more slots than
  the rest (pass 2 pads every row to the fullest one).

  Cost ≈ one pass over the rollout plus (K+1)·|s + a| probe tokens. Logits are only computed at the
  positions that predict gold tokens. Pass 1 is skipped when the rollout kept its KV cache
  (``generate_rollouts(keep_kv=True)`` → ``traj.kv_prefix``): the contexts were already encoded
  while sampling, so the probe costs only its (K+1)·|s + a| tokens. The custom mask needs the ``sdpa`` or ``eager`` attention
  implementation (the default ones); the agreement test against the naive scorer is the check that
  transformers honours it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from .chat import ProbeSuffix, probe_suffix, prompt_options
from .config import A2TGPOConfig
from .logprobs import logprobs_from_logits, token_logprobs
from .records import Trajectory

_MASKABLE_ATTENTION = ("sdpa", "eager")


def probe_suffixes(tokenizer, traj: Trajectory, cfg: A2TGPOConfig) -> list[ProbeSuffix]:
    """The probe suffix of every rollout, for its first gold alias (one rendering per distinct alias)."""
    by_gold: dict[str, ProbeSuffix] = {}
    suffixes = []
    for b, aliases in enumerate(traj.answers):
        if not aliases:
            raise ValueError(f"Trajectory.answers[{b}] is empty; every rollout needs a gold answer for the IG probe.")
        gold = aliases[0]
        if gold not in by_gold:
            by_gold[gold] = probe_suffix(tokenizer, gold, **prompt_options(cfg))
        suffixes.append(by_gold[gold])
    return suffixes


def _check(traj: Trajectory) -> None:
    turns = traj.num_tool_turns
    if (turns < 0).any() or (turns > traj.max_turns).any():
        raise ValueError(f"Trajectory.num_tool_turns must lie in [0, T={traj.max_turns}]; got {turns.tolist()}.")
    ends, lengths = traj.context_ends, traj.attention_mask.sum(dim=1)
    for b in range(traj.batch_size):
        row = ends[b, : int(turns[b]) + 1]
        if (row <= 0).any() or (row.diff() <= 0).any() or row[-1] > lengths[b]:
            raise ValueError(f"Trajectory.context_ends[{b}] = {ends[b].tolist()} must be increasing, positive and "
                             f"within the rollout's {int(lengths[b])} tokens for t = 0..K = {int(turns[b])}.")


def score_probes_naive(model, tokenizer, traj: Trajectory, cfg: A2TGPOConfig) -> tuple[torch.Tensor, str]:
    """Reference scorer: one forward pass per (rollout, t). Returns (ℓ [B, T+1] float32, probe text of rollout 0)."""
    _check(traj)
    suffixes = probe_suffixes(tokenizer, traj, cfg)
    device = next(model.parameters()).device
    scores = torch.full((traj.batch_size, traj.max_turns + 1), float("nan"))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for b, suffix in enumerate(suffixes):
                probe = torch.tensor(suffix.prefix_ids + suffix.gold_ids, dtype=torch.long)
                for t in range(int(traj.num_tool_turns[b]) + 1):
                    context = traj.input_ids[b, : int(traj.context_ends[b, t])].cpu()
                    ids = torch.cat([context, probe])[None].to(device)
                    logprobs = token_logprobs(model, ids, torch.ones_like(ids), temperature=cfg.temperature).logprobs
                    scores[b, t] = logprobs[0, -len(suffix.gold_ids):].mean().item()
    finally:
        model.train(was_training)
    return scores, suffixes[0].text


def score_probes(model, tokenizer, traj: Trajectory, cfg: A2TGPOConfig,
                 batch_size: Optional[int] = None, reuse_cache: bool = True) -> tuple[torch.Tensor, str]:
    """Fast scorer (KV-cache prefix reuse, see the module docstring); same output as :func:`score_probes_naive`.

    Args:
        batch_size: rollouts per pass (default: all of them).
        reuse_cache: read the contexts from ``traj.kv_prefix`` when the rollout kept it (skips pass 1).

    Returns:
        ``(probe_logprob_mean [B, T+1] float32 on the CPU, probe text of rollout 0)``; column t
        holds ℓ_t, NaN for t > K_i.
    """
    _check(traj)
    implementation = model.config._attn_implementation
    if implementation not in _MASKABLE_ATTENTION:
        raise ValueError(f"score_probes needs a custom 4-D attention mask, which attn_implementation="
                         f"{implementation!r} does not take; load the model with attn_implementation='sdpa' "
                         "(or use score_probes_naive).")
    suffixes = probe_suffixes(tokenizer, traj, cfg)
    probes = _distinct_probes(traj, suffixes)
    hosts = _assign_hosts(probes)
    step = len(hosts) if batch_size is None else max(1, int(batch_size))
    scores = torch.full((traj.batch_size, traj.max_turns + 1), float("nan"))
    prefix = traj.kv_prefix if reuse_cache else None
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            host_rows = sorted(hosts)
            for start in range(0, len(host_rows), step):
                chunk = host_rows[start: start + step]
                values = _score_hosted(model, traj, chunk, [hosts[row] for row in chunk], cfg.temperature, prefix)
                for probe, value in zip((probe for row in chunk for probe in hosts[row]), values):
                    for b, t in probe.members:
                        scores[b, t] = value
    finally:
        model.train(was_training)
    return scores, suffixes[0].text


@dataclass
class _Probe:
    """One distinct probe: a context c_t (its first ``context_len`` tokens) followed by a suffix + gold."""

    context_len: int
    tokens: list[int]                   # probe suffix then gold answer
    gold_len: int
    members: list[tuple[int, int]]      # every (rollout, t) whose ℓ_t this is
    hosts: list[int]                    # rollouts whose tokens start with the context


def _distinct_probes(traj: Trajectory, suffixes: list[ProbeSuffix]) -> list[_Probe]:
    """Every (rollout, t) probe, identical ones merged.

    Rollouts of one prompt share c_0 (the prompt), and often their first turns too, so many probes are
    the same tokens: each is scored once (a fifth to a half of them on the bundled task)."""
    by_key: dict[tuple, _Probe] = {}
    ids = traj.input_ids.cpu()
    for b, suffix in enumerate(suffixes):
        row = ids[b].tolist()
        for t in range(int(traj.num_tool_turns[b]) + 1):
            end = int(traj.context_ends[b, t])
            key = (tuple(row[:end]), tuple(suffix.gold_ids))
            if key not in by_key:
                by_key[key] = _Probe(end, suffix.prefix_ids + suffix.gold_ids, len(suffix.gold_ids), [], [])
            probe = by_key[key]
            probe.members.append((b, t))
            if b not in probe.hosts:
                probe.hosts.append(b)
    return list(by_key.values())


def _assign_hosts(probes: list[_Probe]) -> dict[int, list[_Probe]]:
    """Put each probe in the row of one rollout that contains its context, spreading them evenly.

    Pass 2 pads every row to its most loaded row's probe count, so greedy balancing (probes with the
    fewest possible hosts first, each to its least loaded host) keeps that count near the mean."""
    hosted: dict[int, list[_Probe]] = {}
    for probe in sorted(probes, key=lambda p: len(p.hosts)):
        host = min(probe.hosts, key=lambda b: (len(hosted.get(b, ())), b))
        hosted.setdefault(host, []).append(probe)
    return hosted


def _score_hosted(model, traj: Trajectory, rows: list[int], assigned: list[list[_Probe]], temperature: float,
                  prefix=None) -> list[float]:
    """ℓ of every probe in ``assigned[i]`` (hosted by rollout ``rows[i]``), in that order."""
    device = next(model.parameters()).device
    n = len(rows)
    slots = max(len(a) for a in assigned)                                     # S probe slots per row
    prefix_len = len(assigned[0][0].tokens) - assigned[0][0].gold_len         # the shared "... <answer>" part
    slot_width = max(len(p.tokens) for a in assigned for p in a)             # W tokens per probe slot
    gold_max = slot_width - prefix_len

    # ---- pass 1: each row's longest hosted context into the KV cache (right-padded), or the rollout's
    longest = torch.tensor([max(p.context_len for p in a) for a in assigned])  # [N]
    context_len = int(longest.max())
    if prefix is not None:
        cache = prefix.cache(rows, longest)
    else:
        context_ids = traj.input_ids[rows, :context_len].cpu()
        context_mask = (torch.arange(context_len)[None, :] < longest[:, None]).long()
        cache = model(input_ids=context_ids.to(device), attention_mask=context_mask.to(device), use_cache=True,
                      logits_to_keep=1).cache
    context_len = cache.get_seq_length()

    # ---- pass 2: S probe slots of W tokens per row
    # Per slot token: its offset in the slot, whether it is a real probe token, and which context it follows.
    offset = torch.arange(slot_width).repeat(slots)                           # [S·W]
    slot_of = torch.arange(slots).repeat_interleave(slot_width)               # [S·W]
    probe_ids = torch.zeros(n, slots * slot_width, dtype=torch.long)
    real = torch.zeros(n, slots * slot_width, dtype=torch.bool)
    follows = torch.zeros(n, slots * slot_width, dtype=torch.long)            # |c_t| of the slot's context
    gold_len = torch.ones(n, slots, dtype=torch.long)
    for i, probes in enumerate(assigned):
        for s, probe in enumerate(probes):
            cols = slice(s * slot_width, s * slot_width + len(probe.tokens))
            probe_ids[i, cols] = torch.tensor(probe.tokens)
            real[i, cols] = True
            follows[i, cols] = probe.context_len
            gold_len[i, s] = probe.gold_len
    positions = follows + offset[None, :]

    # visible[i, q, k]: cache key k < |c_t| of the query's slot; probe key in the same slot at an
    # offset ≤ the query's; every query sees itself (padding queries see only themselves).
    cache_keys = torch.arange(context_len)
    sees_cache = cache_keys[None, None, :] < follows[:, :, None]                              # [N, Q, C]
    same_slot = slot_of[:, None] == slot_of[None, :]
    causal = offset[None, :] <= offset[:, None]
    sees_probe = (same_slot & causal)[None] & real[:, None, :] & real[:, :, None]             # [N, Q, Q]
    sees_probe = sees_probe | torch.eye(slots * slot_width, dtype=torch.bool)[None]
    visible = torch.cat([sees_cache, sees_probe], dim=2)                                      # [N, Q, C + Q]
    mask = _attention_mask_for(model, visible[:, None])                                      # [N, 1, Q, C + Q]

    # logits only where a gold token is predicted: slot s, offset prefix_len − 1 + j
    j = torch.arange(gold_max)
    keep = (torch.arange(slots)[:, None] * slot_width + prefix_len - 1 + j[None, :]).reshape(-1)  # [S·G]
    logits = model(input_ids=probe_ids.to(device), attention_mask=mask.to(device), position_ids=positions.to(device),
                   cache=cache, use_cache=True, logits_to_keep=keep[None, :].expand(n, -1).to(device)).logits
    targets = probe_ids[:, keep + 1].to(device)                                               # [N, S·G]
    logprobs = logprobs_from_logits(logits, targets, temperature).logprobs.cpu().view(n, slots, gold_max)
    scored = j[None, None, :] < gold_len[:, :, None]                                          # [N, S, G]
    mean = torch.where(scored, logprobs, 0.0).sum(dim=2) / gold_len                           # [N, S]
    return [float(mean[i, s]) for i, probes in enumerate(assigned) for s in range(len(probes))]


def _attention_mask_for(model, visible: torch.Tensor) -> torch.Tensor:
    """A 4-D mask in the form the attention implementation applies as is: boolean (True = attend) for
    ``sdpa``; additive float (0 or the float32 minimum) for ``eager``, which adds it to the scores."""
    if model.config._attn_implementation == "sdpa":
        return visible
    return torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
