"""Multi-turn rollouts: sample every rollout of a step together, call the tool between turns, return a Trajectory.

One rollout is a dialogue (protocol.py): assistant turn, observation, assistant turn, ..., answer.
All B = P·G rollouts (P examples × G generations; rollout p·G + g answers example p) advance in
lockstep, one turn at a time:

    for turn k = 1 .. max_turns:
        sample tokens for every rollout still running until each emits end-of-turn or hits a cap
        parse each turn: answer / malformed → the rollout ends;  search → tool(query) → observation
        feed every observation (different lengths, one padded chunk) into the KV cache

The KV cache is kept across turns, so a turn costs the new tokens only, not the whole history.
Rows of the batch advance by different amounts, so the cache holds *holes*: pad tokens with
attention mask 0 where a row had nothing to feed (its observation was shorter, or its turn had
ended). Holes are invisible to attention; explicit ``position_ids`` count only a row's real tokens,
so every real token sits at the position it has in the row's compact sequence. Rollouts that have
ended are dropped from the cache at turn boundaries.

Rollouts whose histories are token for token the same share one cache row (``share_identical_histories``):
a prompt's G rollouts start as one row, and a row is copied only when its rollouts draw different
tokens, so a decode step computes each distinct history once. The draws themselves are made per
rollout, in rollout order, exactly as without the sharing.

The returned :class:`~a2tgpo_lab.records.Trajectory` is the compact form (holes removed, right
padding) with its masks and ``old_logprobs``, log π_old of every generated token at the sampling
temperature (the full distribution, before top-p), in one of two ways (``cfg.old_logprobs``):

- ``"sampler"``: read off the logits the sampler already has, log softmax(z / τ)[token], at no extra
  cost. In float32 this equals a fresh forward over the finished batch to ~1e-6 (the decode ran the
  same model in eval mode; only the order of floating-point sums differs).
- ``"recompute"``: one more no-grad forward over exactly the finished tensors, the same computation
  the trainer's forward does. With bf16/fp16 weights the incremental decode rounds differently from
  a full forward, so this is the choice for a bf16 GPU run.

With ``probe=True`` the IG probe (probe.py) is scored while sampling: each context c_t is in the
cache exactly when turn t + 1 is about to start (the prompt, then each observation with the next
assistant header), so the probe suffix and gold answer ride in the forward that feeds c_t, after it,
their log-probs are read, and they are cropped off the cache again. The probe then costs (K + 1)·|s + a|
tokens per rollout, no pass over the contexts and no forward call of its own (``traj.probe_logprob_mean``).

With ``keep_kv=True`` the cache rows of ended rollouts are kept instead of dropped, compacted
(holes removed) into a :class:`KVPrefix`: a probe scored afterwards reads its contexts from it
instead of encoding them again (probe.py).

Rules (``A2TGPOConfig``): ``max_new_tokens_per_turn`` caps one turn, ``max_completion_length`` caps
everything after the prompt (observations included), ``max_turns`` caps the turns — a search in the
last allowed turn is not executed (end reason ``"max_turns"``, penalised like a malformed turn);
observations are cut to ``max_observation_tokens`` tokens. A search whose observation would not fit
in the completion budget is not executed either (``"max_tokens"``). A malformed turn ends the
rollout with the format penalty; it is never an exception.

``reencode=True`` rebuilds the cache from the whole history at every turn instead (what calling
``model.generate`` once per turn does); it exists for the benchmark and for the test that both
modes give identical greedy rollouts.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Optional, Sequence

import torch
import torch.nn.functional as F

from .chat import ObservationTemplate, encode, observation_template, probe_suffix, prompt_ids, prompt_options
from .config import A2TGPOConfig
from .envs.qa import QAExample
from .logprobs import logprobs_from_logits, token_budget_batches, token_logprobs
from .protocol import Action, get_protocol
from .records import Trajectory

# Logits alive at once in the old-logprob forward: rows × length × vocab ≤ this (1 GiB of float32).
_LOGITS_BUDGET = 2**28


@dataclass(frozen=True)
class _ProbeTokens:
    """One rollout's IG probe after a context: ``tokens`` = probe suffix then gold answer, whose last
    ``gold_len`` tokens are scored."""

    tokens: tuple[int, ...]
    gold_len: int


@dataclass
class _Rollout:
    """One rollout's compact token sequence and what happened in it, built up turn by turn."""

    example: QAExample
    prompt_index: int
    ids: list[int]
    turn_of_token: list[int]                  # 0 = prompt / observation, k = generated in turn k
    logprobs: list[float]                     # log π_old(token) at the sampler, 0 for prompt / observation
    context_ends: list[int]                   # after the prompt, then after each observation
    turn_texts: list[str] = field(default_factory=list)
    actions: list[Action] = field(default_factory=list)
    observations: list[str] = field(default_factory=list)
    final_answer: Optional[str] = None
    end_reason: Optional[str] = None

    @property
    def done(self) -> bool:
        return self.end_reason is not None

    @property
    def completion_length(self) -> int:
        return len(self.ids) - self.context_ends[0]


class _CachedBatch:
    """Token histories living in a KV cache that may contain holes, one cache row per distinct history.

    Rollouts whose histories are token for token the same share one cache row: the G rollouts of a
    prompt start as one row and stay one while they sample the same tokens, so each history is fed,
    and probed, once. :meth:`regroup` splits a row, copying it, when its rollouts' next chunks differ
    (and merges rows whose histories became the same, when the sharing is off while decoding).

    State: the cache, ``mask`` [N, S] (1 where the cache column is a real token of that row),
    ``next_position`` [N] (real tokens so far = position of the row's next token) and ``groups``
    (the rollouts each cache row holds).
    """

    def __init__(self, model, pad_id: int, device: torch.device, keep_kv: bool = False, temperature: float = 1.0,
                 timer: Callable[[str], ContextManager] = lambda phase: contextlib.nullcontext()):
        self.model, self.pad_id, self.device = model, pad_id, device
        self.temperature, self.timer = temperature, timer  # the probe's τ, and the clock its passes run under
        self.cache = None
        self.mask = None
        self.next_position = None
        self.groups: list[tuple[int, ...]] = []
        # with keep_kv: (rollouts, their real-token counts, per-layer keys, per-layer values) of each retired group
        self.retired: Optional[list[tuple[list[int], torch.Tensor, list[torch.Tensor], list[torch.Tensor]]]] = (
            [] if keep_kv else None)
        # (groups, per-layer (keys, values), mask, next positions) of each set of parked rows
        self.parked: list[tuple[list[tuple[int, ...]], list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor,
                                torch.Tensor]] = []

    @property
    def rollouts(self) -> list[int]:
        """Every rollout in the cache, row by row."""
        return [i for group in self.groups for i in group]

    def row_of(self, rollouts: Sequence[int]) -> torch.Tensor:
        """The cache row holding each of ``rollouts`` (to read a row's logits or score for a rollout)."""
        where = {i: row for row, group in enumerate(self.groups) for i in group}
        return torch.tensor([where[i] for i in rollouts], dtype=torch.long, device=self.device)

    def start(self, chunks: dict[int, list[int]],
              probes: Optional[dict[int, "_ProbeTokens"]] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Empty the cache, then feed rollout i its (non-empty) ``chunks[i]``, identical chunks (with
        identical probes) once; return the next-token logits and, given ``probes``, the probe scores
        of each cache row (:meth:`feed`)."""
        keys = {i: (tuple(chunk), probes[i] if probes else None) for i, chunk in chunks.items()}
        distinct: dict = {}
        for i, key in keys.items():
            distinct.setdefault(key, []).append(i)
        self.groups = [tuple(group) for group in distinct.values()]
        self.cache = _new_cache(self.model)
        self.mask = torch.zeros(len(self.groups), 0, dtype=torch.long, device=self.device)
        self.next_position = torch.zeros(len(self.groups), dtype=torch.long, device=self.device)
        return self.feed([chunks[group[0]] for group in self.groups],
                         [probes[group[0]] for group in self.groups] if probes else None)

    def regroup(self, keys: dict[int, object]) -> None:
        """Make the cache rows hold exactly the rollouts with equal ``keys[i]``, in the order the keys
        first appear. Equal keys must mean equal histories (the key names the history, or the cache
        row and what will be appended to it); a key shared by several rows takes the first one's."""
        order: dict = {}
        for row, group in enumerate(self.groups):
            for i in group:
                order.setdefault(keys[i], (row, []))[1].append(i)
        groups = [tuple(members) for _, members in order.values()]
        if groups != self.groups:
            self._take(torch.tensor([row for row, _ in order.values()], dtype=torch.long, device=self.device))
            self.groups = groups

    def keep(self, rollouts: Sequence[int]) -> None:
        """Drop every rollout not in ``rollouts``, and the cache rows left empty (ended rollouts cost
        nothing more). With ``keep_kv`` the dropped rollouts are first retired: their keys / values,
        holes removed."""
        kept = set(rollouts)
        dropped = [i for i in self.rollouts if i not in kept]
        if not dropped:
            return
        if self.retired is not None:
            self.retire(dropped)
        groups = [tuple(i for i in group if i in kept) for group in self.groups]
        rows = [row for row, group in enumerate(groups) if group]
        self._take(torch.tensor(rows, dtype=torch.long, device=self.device))
        self.groups = [groups[row] for row in rows]

    def _take(self, index: torch.Tensor) -> None:
        """Cache rows ``index`` (in that order, repeats allowed) become the batch: keys, values, mask and
        positions (the caller keeps ``groups`` in step)."""
        self.cache.batch_select_indices(index)
        self.mask, self.next_position = self.mask[index], self.next_position[index]

    def park(self, rows: Sequence[int]) -> torch.Tensor:
        """Set cache rows ``rows`` aside until :meth:`unpark`: their rollouts have finished the turn, and
        a decode step would still spend a row of its batch on each. Returns the rows that remain (to
        select their logits). The parked keys, values, mask and positions wait unchanged in ``parked``."""
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.parked.append(([self.groups[row] for row in rows],
                            [(layer.keys[index], layer.values[index]) for layer in self.cache.layers],
                            self.mask[index], self.next_position[index]))
        parked = set(rows)
        remaining = [row for row in range(len(self.groups)) if row not in parked]
        self.groups = [self.groups[row] for row in remaining]
        remaining = torch.tensor(remaining, dtype=torch.long, device=self.device)
        self._take(remaining)
        return remaining

    def unpark(self) -> None:
        """Bring the parked rows back, after the others: the columns the others added meanwhile are holes
        in them (mask 0), which attention skips, so their next tokens see exactly their own history."""
        if not self.parked:
            return
        width = self.mask.shape[1]
        for layer_index, layer in enumerate(self.cache.layers):
            keys = [layer.keys] + [F.pad(kv[layer_index][0], (0, 0, 0, width - mask.shape[1]))
                                   for _, kv, mask, _ in self.parked]
            values = [layer.values] + [F.pad(kv[layer_index][1], (0, 0, 0, width - mask.shape[1]))
                                       for _, kv, mask, _ in self.parked]
            layer.keys, layer.values = torch.cat(keys), torch.cat(values)
        self.mask = torch.cat([self.mask] + [F.pad(mask, (0, width - mask.shape[1])) for _, _, mask, _ in self.parked])
        self.next_position = torch.cat([self.next_position] + [positions for *_, positions in self.parked])
        self.groups = self.groups + [group for groups, *_ in self.parked for group in groups]
        self.parked = []

    def retire(self, rollouts: list[int]) -> None:
        """Keep the cache of ``rollouts`` with the holes removed: each one's real columns moved to the
        front (a stable sort of the columns by "is a hole" keeps their order), as [n, H, C, D] per layer."""
        if not rollouts:
            return
        index = self.row_of(rollouts)
        mask = self.mask[index]
        counts = mask.sum(dim=1)
        width = int(counts.max())
        columns = torch.sort(1 - mask, dim=1, stable=True).indices[:, :width]         # [n, C] real columns first
        keys, values = [], []
        for layer in self.cache.layers:
            gather = columns[:, None, :, None].expand(-1, layer.keys.shape[1], -1, layer.keys.shape[3])
            keys.append(layer.keys[index].gather(2, gather))
            values.append(layer.values[index].gather(2, gather))
        self.retired.append((list(rollouts), counts, keys, values))

    def _right_padded(self, chunks: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``chunks`` as one right-padded [N, M] block of ids (M ≥ 1) and its 0/1 mask of real tokens."""
        width = max(1, max(len(chunk) for chunk in chunks))
        ids = torch.tensor([list(chunk) + [self.pad_id] * (width - len(chunk)) for chunk in chunks], dtype=torch.long)
        real = torch.tensor([[1] * len(chunk) + [0] * (width - len(chunk)) for chunk in chunks], dtype=torch.long)
        return ids, real

    def feed(self, chunks: list[list[int]],
             probes: Optional[list["_ProbeTokens"]] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Append ``chunks[i]`` (possibly empty) to cache row i; return next-token logits [N, V] and,
        given ``probes``, ℓ of each row's IG probe read right after its chunk ([N] float32 on the CPU):

            ℓ = (1/|a|) Σ_j log softmax(z_j / τ)[a_j]     z_j: logits predicting gold token a_j

        The chunks are right-padded into one [N, M] block; padding gets attention mask 0 (a hole)
        and every real token the position ``next_position + offset``. Row i's logits come from its
        last real token of the chunk (undefined for an empty chunk, and not used).

        The probe tokens (suffix s, then gold a) ride in the same forward as a second right-padded
        block after the chunks, at the positions that follow each row's chunk: attention sees the
        row's context through the cache and its chunk, the chunk's padding being a hole. Logits are
        projected only at the chunk's last token and where a gold token is predicted, and the probe
        block is cropped off the cache afterwards, so the rollout continues as if it was never there.
        A row holds every rollout with its history, so identical histories are scored once and get
        exactly the same score: a batched forward need not round every row alike, and a turn group of
        identical searches must have exactly zero IG spread, not rounding noise that the z-score would
        blow up.
        """
        ids, real = self._right_padded(chunks)
        ids, real = ids.to(self.device), real.to(self.device)
        width = ids.shape[1]
        positions = self.next_position[:, None] + torch.arange(width, device=self.device)[None, :]
        last_real = (real.sum(dim=1) - 1).clamp(min=0)                         # [N]
        mask = torch.cat([self.mask, real], dim=1)                             # [N, S + M]
        if not probes:  # a decode step: the one logit per row, by index
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=self.cache,
                             use_cache=True, logits_to_keep=last_real[:, None])
            self._advance(out.cache, mask, real)
            return out.logits[:, 0, :], None
        with self.timer("ig_forward"):
            probe_ids, probe_real = (t.to(self.device) for t in self._right_padded([list(p.tokens) for p in probes]))
            predicts_gold = torch.zeros(probe_ids.shape, dtype=torch.bool)
            for i, p in enumerate(probes):
                predicts_gold[i, len(p.tokens) - p.gold_len - 1: len(p.tokens) - 1] = True
            predicts_gold = predicts_gold.to(self.device)
            targets = torch.cat([probe_ids[:, 1:], probe_ids[:, :1]], dim=1)[predicts_gold]
            probe_positions = positions[:, :1] + real.sum(dim=1, keepdim=True) + torch.arange(
                probe_ids.shape[1], device=self.device)[None, :]
            keep = torch.cat([torch.nn.functional.one_hot(last_real, width).bool(), predicts_gold], dim=1)
            # kept logits are row-major: row i's chunk logit, then its gold_len probe logits
            gold_len = torch.tensor([p.gold_len for p in probes])
            next_at = torch.cumsum(gold_len + 1, dim=0) - gold_len - 1
        out = self.model(input_ids=torch.cat([ids, probe_ids], dim=1),
                         attention_mask=torch.cat([mask, probe_real], dim=1),
                         position_ids=torch.cat([positions, probe_positions], dim=1),
                         cache=self.cache, use_cache=True, logits_to_keep=keep)
        with self.timer("ig_forward"):
            out.cache.crop(-probe_ids.shape[1])                                # the context is back as it was
            is_probe = torch.ones(len(out.logits), dtype=torch.bool)
            is_probe[next_at] = False
            scored = logprobs_from_logits(out.logits[is_probe.to(self.device)], targets, self.temperature).logprobs
            rows = torch.repeat_interleave(torch.arange(len(probes)), gold_len)
            scores = torch.zeros(len(probes)).index_add_(0, rows, scored.float().cpu()) / gold_len
        self._advance(out.cache, mask, real)
        return out.logits[next_at.to(self.device)], scores

    def _advance(self, cache, mask: torch.Tensor, real: torch.Tensor) -> None:
        """The chunk (``real`` [N, M], its columns appended to ``mask``) is now in ``cache``."""
        self.cache, self.mask = cache, mask
        self.next_position = self.next_position + real.sum(dim=1)


@dataclass
class KVPrefix:
    """The rollouts' KV cache with the holes removed: row b's first ``lengths[b]`` tokens, right-padded.

    ``keys[l]`` / ``values[l]`` are layer l's [B, H, C, D] tensors; column j of row b holds the token at
    position j of the rollout's compact sequence (every token but its last, which was never fed).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: torch.Tensor

    def cache(self, rows: list[int], needed: torch.Tensor):
        """A fresh ``DynamicCache`` of rollouts ``rows`` holding (at least) their first ``needed[i]`` tokens."""
        from transformers import DynamicCache

        short = (self.lengths[rows] < needed).nonzero().flatten().tolist()
        if short:
            raise ValueError(f"KVPrefix: rollout {rows[short[0]]} has {int(self.lengths[rows[short[0]]])} cached "
                             f"tokens, fewer than the {int(needed[short[0]])} asked for; was it made for this "
                             "trajectory?")
        width = int(needed.max())
        if rows == list(range(len(self.lengths))):  # every row, in order: views, no copy
            return DynamicCache([(k[:, :, :width], v[:, :, :width]) for k, v in zip(self.keys, self.values)])
        index = torch.tensor(rows, device=self.keys[0].device)
        return DynamicCache([(k[index, :, :width], v[index, :, :width]) for k, v in zip(self.keys, self.values)])


def _kv_prefix(retired, batch: int) -> KVPrefix:
    """Stack the retired groups into right-padded [B, H, C, D] tensors per layer, rows in rollout order."""
    lengths = torch.zeros(batch, dtype=torch.long)
    for rows, counts, _, _ in retired:
        lengths[rows] = counts.cpu()
    width = int(lengths.max())
    keys, values = [], []
    for layer in range(len(retired[0][2])):
        for part, out in ((2, keys), (3, values)):
            first = retired[0][part][layer]
            stacked = first.new_zeros(batch, first.shape[1], width, first.shape[3])
            for group in retired:
                tensor = group[part][layer]
                stacked[torch.tensor(group[0], device=tensor.device), :, : tensor.shape[2]] = tensor
            out.append(stacked)
    return KVPrefix(keys, values, lengths)


def _supports_kv_prefix(cache) -> bool:
    """Only full-attention layers hold every past token (a sliding-window layer keeps the last few)."""
    from transformers.cache_utils import DynamicLayer

    return all(type(layer) in (DynamicLayer, _growing_layer_class()) for layer in cache.layers)


def _new_cache(model):
    """An empty cache for ``model``'s layers, its full-attention layers growing in place (:func:`_growing_layer_class`)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    growing = _growing_layer_class()
    cache.layers = [growing() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@functools.cache
def _growing_layer_class():
    """A full-attention cache layer that appends into spare room instead of concatenating.

    A decode step adds one token per row, and transformers' ``DynamicLayer`` copies the whole cache to
    add it (``torch.cat``): O(S) per token. Here keys / values are views of a larger buffer; a step
    writes only its own columns, and a full buffer is replaced by one twice the size. Anything that
    swaps the tensors for others (selecting rows) makes the next step start a new buffer; a crop
    leaves a shorter view of the same buffer, whose stale columns the next step overwrites.
    (A class made on first use, so that importing this module does not import transformers.)"""
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        buffers: Optional[tuple[torch.Tensor, torch.Tensor]] = None

        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            used, new = self.get_seq_length(), key_states.shape[-2]
            if not self._fits(used + new, key_states):
                shape = list(key_states.shape)
                shape[-2] = max(2 * (used + new), 64)
                self.buffers = (key_states.new_empty(shape), value_states.new_empty(shape))
                if used:
                    self.buffers[0][:, :, :used] = self.keys
                    self.buffers[1][:, :, :used] = self.values
            self.buffers[0][:, :, used: used + new] = key_states
            self.buffers[1][:, :, used: used + new] = value_states
            self.keys, self.values = self.buffers[0][:, :, : used + new], self.buffers[1][:, :, : used + new]
            return self.keys, self.values

        def _fits(self, length: int, key_states: torch.Tensor) -> bool:
            """Whether the current tensors are the start of the buffer and it has room for ``length`` columns."""
            if self.buffers is None or self.buffers[0].shape[-2] < length:
                return False
            keys = self.buffers[0]
            if self.get_seq_length() == 0:
                return keys.shape[0] == key_states.shape[0]
            return (self.keys.data_ptr() == keys.data_ptr() and self.keys.stride() == keys.stride()
                    and self.keys.shape[0] == keys.shape[0])

    return GrowingLayer


def sample_next_tokens(logits: torch.Tensor, temperature: float, top_p: float, greedy: bool,
                       generator: Optional[torch.Generator]) -> torch.Tensor:
    """Next token per row from logits [N, V]: argmax if greedy, else nucleus sampling at ``temperature``.

    Nucleus (top-p): keep the smallest set of most likely tokens whose probability sums to ≥ top_p
    (the most likely token always), renormalize, sample.
    """
    if greedy:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        sorted_probs = sorted_probs.masked_fill(mass_before >= top_p, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    if generator is not None and probs.device != generator.device:
        return draw_tokens(probs.to(generator.device), generator).to(logits.device)
    return draw_tokens(probs, generator)


def draw_tokens(probs: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row of ``probs`` [N, V] (unnormalised), exactly as ``torch.multinomial(probs, 1)``
    draws it, for the same generator state:

        token = argmax_v  p_v / E_v,    E_v = −log(1 − U_v) ~ Exp(1),  U_v uniform in float64

    (the exponential race: the smallest E_v / p_v wins with probability p_v / Σ p). On the CPU torch
    makes the V exponentials of a row one at a time, which was 6% of a quickstart step; here the same
    uniforms go through the same formula as one vectorised op, giving the same tokens and leaving the
    generator in the same state (``test_rollout.py::test_draw_tokens_equals_torch_multinomial``), about
    twice as fast. Other devices use ``torch.multinomial`` itself."""
    if probs.device.type != "cpu":
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    if not (torch.isfinite(probs).all() and (probs >= 0).all() and (probs.sum(dim=-1) > 0).all()):
        raise ValueError("draw_tokens: every row of probs must be finite, non-negative and not all zero "
                         "(the model's logits hold NaN or inf?).")
    uniform = torch.rand(probs.shape, dtype=torch.float64, generator=generator)
    exponential = torch.log1p(uniform.neg_()).neg_().to(probs.dtype)
    return (probs / exponential).argmax(dim=-1)


def stop_token_ids(model, tokenizer, template: ObservationTemplate) -> set[int]:
    """Tokens that end an assistant turn: the tokenizer's EOS, the model's generation EOS ids, and the
    template's end-of-turn token when it is a special token."""
    stops = {tokenizer.eos_token_id}
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops.update(configured if isinstance(configured, (list, tuple)) else [configured])
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if template.close_ids and template.close_ids[0] in special:
        stops.add(template.close_ids[0])
    stops.discard(None)
    if not stops:
        raise ValueError("The tokenizer has no EOS token and the model's generation_config names none, so an "
                         "assistant turn could never end; set tokenizer.eos_token to the end-of-turn token.")
    return stops


def generate_rollouts(model, tokenizer, examples: Sequence[QAExample], tool: Callable[[str], str],
                      cfg: A2TGPOConfig, num_generations: Optional[int] = None, greedy: bool = False,
                      generator: Optional[torch.Generator] = None, progress: bool = False,
                      reencode: bool = False, old_logprobs: Optional[str] = None,
                      keep_kv: bool = False, probe: bool = False,
                      timer: Optional[Callable[[str], ContextManager]] = None) -> Trajectory:
    """Sample ``num_generations`` multi-turn rollouts per example (see the module docstring).

    Args:
        model, tokenizer: a causal LM and its tokenizer (with a chat template and a pad or EOS token).
        examples: P questions; rollouts p·G .. p·G + G − 1 answer example p (``prompt_index`` p).
        tool: ``query -> observation text`` (e.g. :class:`~a2tgpo_lab.envs.search.SearchTool`).
        cfg: turn / token caps, temperature, top_p, observation role, system prompt, reward settings.
        num_generations: G (default ``cfg.num_generations``).
        greedy: argmax decoding (evaluation); otherwise sampling at ``cfg.temperature`` / ``cfg.top_p``.
        generator: seeds the sampling (same generator state + same model → same rollouts).
        progress: show a tqdm bar over turns.
        reencode: rebuild the KV cache from the whole history each turn (benchmark / reference only).
        old_logprobs: ``"sampler"``, ``"recompute"`` (module docstring) or ``"none"`` (zeros: greedy
            evaluation never reads them); default ``cfg.old_logprobs``.
        keep_kv: also return the compacted KV cache as ``traj.kv_prefix`` (for the IG probe); it
            stays None for a model whose cache does not hold every past token.
        probe: score the IG probe of every context c_t while sampling (module docstring) into
            ``traj.probe_logprob_mean`` [B, T+1] (ℓ_t of the first gold alias, NaN past K_i); it stays
            None for a model whose cache does not hold every past token.
        timer: ``timer("ig_forward")`` is entered around the probe's own work (the trainer's phase timer):
            building its tokens, scoring them, cropping them off. Its tokens' share of the forward they
            ride in is counted as sampling.

    Returns:
        A right-padded :class:`Trajectory` of B = P·G rollouts, its tensors on the CPU.
    """
    if not examples:
        raise ValueError("generate_rollouts got no examples; pass a non-empty list of QAExample.")
    old_logprobs = cfg.old_logprobs if old_logprobs is None else old_logprobs
    if old_logprobs not in ("sampler", "recompute", "none"):
        raise ValueError(f"generate_rollouts: old_logprobs={old_logprobs!r}; choose 'sampler', 'recompute' or 'none'.")
    group = cfg.num_generations if num_generations is None else num_generations
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"generate_rollouts: num_generations={group!r} must be a positive integer.")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("The tokenizer has neither a pad nor an EOS token; set tokenizer.pad_token.")
    template = observation_template(tokenizer, cfg.observation_role, **prompt_options(cfg))
    stops = stop_token_ids(model, tokenizer, template)
    device = next(model.parameters()).device

    rollouts, probes, probe_text = [], [], ""
    for p, example in enumerate(examples):
        prompt = prompt_ids(tokenizer, example.question, observation_role=cfg.observation_role, **prompt_options(cfg))
        rollouts += [_Rollout(example, p, list(prompt), [0] * len(prompt), [0.0] * len(prompt), [len(prompt)])
                     for _ in range(group)]
        if probe:
            suffix = probe_suffix(tokenizer, example.answers[0], **prompt_options(cfg))
            probe_text = probe_text or suffix.text
            probes += [_ProbeTokens(tuple(suffix.prefix_ids + suffix.gold_ids), len(suffix.gold_ids))] * group

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            kv_prefix, probe_scores = _run_turns(model, tokenizer, rollouts, tool, cfg, template, stops, pad_id,
                                                 device, greedy, generator, progress, reencode,
                                                 old_logprobs == "sampler", keep_kv, probes or None,
                                                 timer or (lambda phase: contextlib.nullcontext()))
            traj = _to_trajectory(rollouts, cfg, pad_id)
            traj.kv_prefix = kv_prefix
            if probe_scores is not None:
                traj.probe_logprob_mean, traj.probe_text = probe_scores, probe_text
            if old_logprobs == "recompute":
                traj.old_logprobs = recompute_old_logprobs(model, traj, cfg)
            return traj
    finally:
        model.train(was_training)


def _run_turns(model, tokenizer, rollouts: list[_Rollout], tool, cfg: A2TGPOConfig, template: ObservationTemplate,
               stops: set[int], pad_id: int, device, greedy: bool, generator, progress: bool, reencode: bool,
               sampler_logprobs: bool, keep_kv: bool, probes: Optional[list[_ProbeTokens]],
               timer: Callable[[str], ContextManager]) -> tuple[Optional[KVPrefix], Optional[torch.Tensor]]:
    """Advance every rollout turn by turn until all have ended (fills the rollouts in place); return the
    compacted cache when ``keep_kv`` and the probe scores [B, T+1] when ``probes`` (each when the model's
    cache supports it: every past token kept, so it can be cropped and compacted)."""
    full_attention = _supports_kv_prefix(_new_cache(model))
    if not full_attention:
        # a sliding-window cache can be neither cropped back nor compacted: the caller probes afterwards
        keep_kv, probes = False, None
    batch = _CachedBatch(model, pad_id, device, keep_kv=keep_kv, temperature=cfg.temperature, timer=timer)
    # rows that finished their turn leave the decode batch (a sliding-window cache could not re-join them)
    can_park = cfg.park_finished_rows is not None and full_attention
    live = list(range(len(rollouts)))
    logits, scores = batch.start({i: rollouts[i].ids for i in live}, {i: probes[i] for i in live} if probes else None)
    probe_scores = torch.full((len(rollouts), cfg.max_turns + 1), float("nan")) if probes else None
    if probes:
        probe_scores[live, 0] = scores[batch.row_of(live).cpu()]
    turns = range(1, cfg.max_turns + 1)
    if progress:
        from tqdm.auto import tqdm

        turns = tqdm(turns, desc="rollout turns", leave=False)
    for turn in turns:
        # ---- sample this turn's tokens; `pending` holds sampled tokens not yet in the cache
        generating = {i: True for i in live}
        pending = {i: [] for i in live}
        turn_start = {i: len(rollouts[i].ids) for i in live}
        hit_length_cap = set()
        while True:
            # one draw per rollout, in rollout order, however the cache rows are shared
            active = sorted(i for i in batch.rollouts if generating[i])
            chosen = logits[batch.row_of(active)]
            sampled = sample_next_tokens(chosen, cfg.temperature, cfg.top_p, greedy, generator)
            # log π_old(token) of the full distribution at temperature τ, as a fresh forward would score it
            scores = (logprobs_from_logits(chosen, sampled, cfg.temperature).logprobs.tolist() if sampler_logprobs
                      else [0.0] * len(active))
            for i, token, score in zip(active, sampled.tolist(), scores):
                rollout = rollouts[i]
                rollout.ids.append(token)
                rollout.turn_of_token.append(turn)
                rollout.logprobs.append(score)
                pending[i] = [token]
                if rollout.completion_length >= cfg.max_completion_length:
                    hit_length_cap.add(i)
                turn_length = len(rollout.ids) - turn_start[i]
                if token in stops or turn_length >= cfg.max_new_tokens_per_turn or i in hit_length_cap:
                    generating[i] = False
            if not any(generating.values()):
                break
            # a row's rollouts that drew the same token still share one history; the others get a copy
            batch.regroup({i: (row, tuple(pending[i])) if cfg.share_identical_histories else i
                           for row, group in enumerate(batch.groups) for i in group})
            logits, _ = batch.feed([pending[group[0]] for group in batch.groups])
            pending = {i: [] for i in pending}
            done_with_turn = [row for row, group in enumerate(batch.groups) if not generating[group[0]]]
            if can_park and done_with_turn and len(done_with_turn) >= cfg.park_finished_rows * len(batch.groups):
                logits = logits[batch.park(done_with_turn)]
        batch.unpark()

        # ---- act on each finished turn
        for i in live:
            rollout = rollouts[i]
            generated = rollout.ids[turn_start[i]:]
            text = tokenizer.decode(generated, skip_special_tokens=True).strip()
            action = get_protocol(cfg.protocol).parse_action(text, rollout.turn_texts)
            rollout.turn_texts.append(text)
            rollout.actions.append(action)
            if action.kind == "answer":
                rollout.final_answer, rollout.end_reason = action.content, "answer"
            elif i in hit_length_cap:
                rollout.end_reason = "max_tokens"
            elif action.kind == "malformed":
                rollout.end_reason = "malformed"
            elif turn == cfg.max_turns:
                rollout.end_reason = "max_turns"  # the search is not executed
            else:
                between = _observe(tool, action.content, tokenizer, template, cfg, generated[-1], rollout)
                if between is None:
                    rollout.end_reason = "max_tokens"
                else:
                    pending[i] = pending[i] + between
        live = [i for i in live if not rollouts[i].done]
        if progress:
            turns.set_postfix(running=len(live))
        if not live:
            break
        # ---- feed the observations (and each turn's last token) to start the next turn; the cache then
        # ends with c_turn (the observation and the next assistant header), where the probe is read
        batch.keep(live)
        if reencode:
            logits, scores = batch.start({i: rollouts[i].ids for i in live},
                                         {i: probes[i] for i in live} if probes else None)
        else:
            # one row per distinct history, the observation included: rows whose searches found different
            # observations split, and rows decoded apart (share_identical_histories=False) that searched
            # alike join again, so each observation and its probe are fed once
            batch.regroup({i: (tuple(rollouts[i].ids), probes[i] if probes else None) for i in batch.rollouts})
            logits, scores = batch.feed([pending[group[0]] for group in batch.groups],
                                        [probes[group[0]] for group in batch.groups] if probes else None)
        if probes:
            probe_scores[live, turn] = scores[batch.row_of(live).cpu()]
    if batch.retired is None:
        return None, probe_scores
    batch.retire(batch.rollouts)
    return _kv_prefix(batch.retired, len(rollouts)), probe_scores


def _observe(tool, query: str, tokenizer, template: ObservationTemplate, cfg: A2TGPOConfig, last_token: int,
             rollout: _Rollout) -> Optional[list[int]]:
    """Run the search and append its observation to ``rollout``; return the appended ids.

    Returns None (nothing appended) when the observation plus one more token would exceed
    ``max_completion_length``: that search is not executed.
    """
    text = tool(query)
    if not isinstance(text, str):
        raise TypeError(f"The tool returned {type(text).__name__} for query {query!r}; it must return the "
                        "observation text (a string, e.g. protocol.format_observation(passages)).")
    protocol = get_protocol(cfg.protocol)
    text = protocol.observation(text)  # the protocol's own result tags
    body = protocol.truncate_observation(text, cfg.max_observation_tokens, lambda part: encode(tokenizer, part))
    closed = bool(template.close_ids) and last_token == template.close_ids[0]
    between = template.between_turns(body, turn_closed=closed)
    if rollout.completion_length + len(between) + 1 > cfg.max_completion_length:
        return None
    rollout.ids += between
    rollout.turn_of_token += [0] * len(between)
    rollout.logprobs += [0.0] * len(between)
    rollout.context_ends.append(len(rollout.ids))
    rollout.observations.append(tokenizer.decode(body, skip_special_tokens=False))
    return between


def _to_trajectory(rollouts: list[_Rollout], cfg: A2TGPOConfig, pad_id: int) -> Trajectory:
    """Right-pad the compact rollouts into tensors (with the sampler's log-probs), score outcomes."""
    from .rewards import outcome_reward

    batch, length, width = len(rollouts), max(len(r.ids) for r in rollouts), cfg.max_turns + 1
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    turn_ids = torch.zeros((batch, length), dtype=torch.long)
    old = torch.zeros((batch, length))
    context_ends = torch.full((batch, width), -1, dtype=torch.long)
    for b, rollout in enumerate(rollouts):
        n = len(rollout.ids)
        input_ids[b, :n] = torch.tensor(rollout.ids)
        attention_mask[b, :n] = 1
        turn_ids[b, :n] = torch.tensor(rollout.turn_of_token)
        old[b, :n] = torch.tensor(rollout.logprobs)
        context_ends[b, : len(rollout.context_ends)] = torch.tensor(rollout.context_ends)
    loss_mask = turn_ids > 0
    num_tool_turns = torch.tensor([len(r.context_ends) - 1 for r in rollouts], dtype=torch.long)
    has_answer_turn = (turn_ids == num_tool_turns[:, None] + 1).any(dim=1)
    return Trajectory(
        input_ids=input_ids, attention_mask=attention_mask, loss_mask=loss_mask, turn_ids=turn_ids,
        old_logprobs=old, context_ends=context_ends,
        prompt_index=torch.tensor([r.prompt_index for r in rollouts], dtype=torch.long),
        num_tool_turns=num_tool_turns, has_answer_turn=has_answer_turn,
        outcome_reward=torch.tensor([outcome_reward(r.final_answer, r.example.answers, r.end_reason != "answer",
                                                    cfg.reward_fn, cfg.format_penalty) for r in rollouts]),
        questions=[r.example.question for r in rollouts],
        answers=[list(r.example.answers) for r in rollouts], turn_texts=[r.turn_texts for r in rollouts],
        actions=[r.actions for r in rollouts], observations=[r.observations for r in rollouts],
        final_answer=[r.final_answer for r in rollouts], end_reason=[r.end_reason for r in rollouts],
        example_ids=[r.example.id for r in rollouts])


def recompute_old_logprobs(model, traj: Trajectory, cfg: A2TGPOConfig) -> torch.Tensor:
    """log π_old [B, L] of the generated tokens (0 elsewhere) by a no-grad, eval-mode forward over the
    finished batch (``old_logprobs="recompute"``), in length buckets of ``cfg.micro_batch_tokens``."""
    device = next(model.parameters()).device
    lengths = traj.attention_mask.sum(dim=1)
    score_mask = traj.loss_mask if cfg.scored_logits_only else None
    if cfg.micro_batch_tokens is None:
        vocab = model.get_output_embeddings().weight.shape[0]
        step = max(1, _LOGITS_BUDGET // (traj.input_ids.shape[1] * vocab))
        buckets = list(torch.arange(traj.batch_size).split(step))
    else:
        buckets = token_budget_batches(lengths, cfg.micro_batch_tokens,
                                       traj.prompt_index if cfg.share_prompt_prefix else None)
    old = torch.zeros(traj.input_ids.shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for rows in buckets:
                width = int(lengths[rows].max())
                scored = token_logprobs(
                    model, traj.input_ids[rows, :width].to(device), traj.attention_mask[rows, :width].to(device),
                    temperature=cfg.temperature, shared_prefix=shared_prompt(traj, rows, cfg),
                    bucket_cost=cfg.bucket_cost_tokens, identical_rows_once=cfg.share_identical_rollouts,
                    score_mask=None if score_mask is None else score_mask[rows, :width].to(device)).logprobs
                old[rows, :width] = scored.cpu()
    finally:
        model.train(was_training)
    return old.masked_fill(~traj.loss_mask.cpu(), 0.0)


def shared_prompt(traj: Trajectory, rows: torch.Tensor, cfg: A2TGPOConfig) -> Optional[tuple[torch.Tensor, torch.Tensor]]:
    """``token_logprobs``' ``shared_prefix`` for ``rows`` of ``traj`` when ``cfg.share_prompt_prefix``: the
    rollouts of one prompt share all of it but its last token (whose logits score the first generated
    token, so it goes with the rest). None with gradient checkpointing, which re-runs layers that would
    then write the cache twice."""
    if not cfg.share_prompt_prefix or cfg.gradient_checkpointing:
        return None
    return traj.context_ends[rows, 0] - 1, traj.prompt_index[rows]
