"""The two records everything else reads: a batch of rollouts, and what one training step did with it.

Turn numbering, used everywhere in the package
-----------------------------------------------
A rollout i has tool-call turns k = 1..K_i and (normally) a terminal turn K_i + 1: the answer, or a
malformed turn, or a search past the turn cap. Per-turn tensors are laid out ``[B, T]`` with column
``j`` holding turn ``j + 1``, where ``T = max_turns``; entries past a rollout's last turn are NaN
(floats) or -1 (ints). Per-token ``turn_ids`` are 0 for prompt / observation / padding tokens and k
for the tokens the model generated in assistant turn k, so the value of turn k for a token is
``per_turn[b, turn_ids[b, l] - 1]``. Turn boundaries always come from ``turn_ids``, never from where a
reward happens to be non-zero.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:  # torch is imported lazily so `import a2tgpo_lab` stays fast
    import torch

END_REASONS = ("answer", "malformed", "max_turns", "max_tokens")


@dataclass
class Trajectory:
    """A batch of B multi-turn rollouts, right-padded to length L.

    Tensors
    -------
    input_ids        [B, L] long   prompt, assistant turns, observations, then padding.
    attention_mask   [B, L] long   1 for real tokens (prompt, turns, observations), 0 for padding.
    loss_mask        [B, L] bool   True only for tokens the model generated (the trained tokens).
    turn_ids         [B, L] long   0 = prompt/observation/pad, k = assistant turn k (1-based).
    old_logprobs     [B, L] float  log π_old(token | prefix) at model tokens, 0 elsewhere; position l
                                   scores ``input_ids[:, l]`` (already shifted).
    context_ends     [B, T+1] long ``context_ends[b, t]`` = length of "the context after turn t":
                                   t = 0 is the prompt alone, t = k ends after observation k. -1 past K_i.
    prompt_index     [B] long      which prompt of the step the rollout answers (its group).
    num_tool_turns   [B] long      K_i, executed tool calls (each followed by an observation).
    has_answer_turn  [B] bool      whether turn K_i + 1 exists (it has tokens).
    outcome_reward   [B] float     §2: 1/0 (EM) or F1, or the format penalty.

    Python lists, one entry per rollout
    -----------------------------------
    questions, answers (gold aliases; IG uses the first), turn_texts (decoded text of each assistant
    turn), actions (``protocol.Action`` of each turn), observations (text after each tool turn),
    final_answer (None if none was parsed), end_reason (one of ``END_REASONS``), example_ids.

    kv_prefix: the rollout's KV cache with holes removed (``rollout.KVPrefix``) when asked for with
    ``keep_kv=True``, so the IG probe need not encode the contexts again; None otherwise.
    probe_logprob_mean [B, T+1] float: the IG probe's ℓ_t, scored while sampling when asked for with
    ``probe=True`` (NaN past K_i); None otherwise. probe_text: that probe's suffix for rollout 0.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    turn_ids: torch.Tensor
    old_logprobs: torch.Tensor
    context_ends: torch.Tensor
    prompt_index: torch.Tensor
    num_tool_turns: torch.Tensor
    has_answer_turn: torch.Tensor
    outcome_reward: torch.Tensor
    questions: list[str]
    answers: list[list[str]]
    turn_texts: list[list[str]]
    actions: list[list[Any]]
    observations: list[list[str]]
    final_answer: list[Optional[str]]
    end_reason: list[str]
    example_ids: list[str] = field(default_factory=list)
    kv_prefix: Optional[Any] = None
    probe_logprob_mean: Optional[torch.Tensor] = None
    probe_text: str = ""

    @property
    def batch_size(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_turns(self) -> int:
        return int(self.context_ends.shape[1]) - 1

    def to(self, device) -> "Trajectory":
        """Move every tensor to ``device`` (lists are shared)."""
        import torch

        moved = {name: (value.to(device) if isinstance(value, torch.Tensor) else value)
                 for name, value in self.__dict__.items()}
        return Trajectory(**moved)


@dataclass
class StepRecord:
    """Everything one training step computed, as plain numpy arrays and lists (device-free, picklable).

    Every figure is a pure function of a ``StepRecord``; the trainer's JSONL log is its ``metrics``;
    tests read it. Shapes: B rollouts, T = max_turns turn columns (column j = turn j + 1), L tokens.

    Identity
        step (int), estimator (str: preset or estimator name), config (dict), elapsed_s (float).
    Rollouts (lists of length B)
        questions, answers, turn_texts, tool_calls (query or None per turn), observations,
        final_answer, end_reason, prompt_index [B], num_tool_turns [B], has_answer_turn [B],
        outcome_reward [B].
    Information gain (§1)
        probe_text: the probe suffix of rollout 0, with the gold answer (for the inspector).
        p [B, T+1]: probe probability after turn t (t = 0 is the question alone), NaN past K_i.
        ig [B, T]: raw IG of each tool turn, NaN where no tool turn (or the probe was NaN/inf).
        ig_nonfinite_count: how many IG terms were dropped as NaN/inf.
    Normalization (§3)
        ig_norm [B, T]: normalized IG Î (0 for singleton / constant groups; IGPO: the jointly normalized
            IG), NaN where no tool turn.
        group_id [B, T] (prompt_index * T + k - 1; -1 where none), group_size [B, T] (0 where none).
        outcome_norm [B]: R̂, the outcome z-scored over the rollouts of the same prompt.
        zero_std_group_frac: share of IG groups (size ≥ 2) treated as constant.
    Accumulation (§4)
        advantages [B, T]: Â_{i,t} per turn as trained (α·D/√n + R̂ on process turns, R̂ on the answer
            turn), NaN past the terminal turn; advantages_unscaled [B, T]: the same without the √n.
    Clipping (§5, §6)
        clip_factor [B, T]: c_{i,k} (1 for the fixed-clip estimators); clip_low / clip_high [B, T]:
            the ratio bounds 1 − c·ε_low and 1 + c·ε_high.
    Tokens (lists of length B, each a 1-D array over that rollout's L_i real tokens)
        input_ids, loss_mask, turn_ids, token_advantage, ratio (last PPO iteration's importance ratio
        at model tokens, NaN elsewhere), clipped (int8: 0 not clipped, -1 clipped low, +1 clipped
        high), tokens (decoded token strings).
    Metrics
        metrics: dict of scalars with TRL's names where they exist (``reward``, ``reward_std``,
            ``frac_reward_zero_std``, ``clip_ratio/region_mean``, ``clip_ratio/low_mean``,
            ``clip_ratio/high_mean``, ``completions/mean_length``, ``loss``, ``grad_norm``,
            ``learning_rate``) plus per-turn ones (``turn/{k}/ig_mean``, ``turn/{k}/adv_mean``,
            ``turn/{k}/clip_frac``, ``turn/{k}/clip_range_mean``, ``turn/{k}/group_size_mean``,
            ``clip_range/turn_mean``, ``num_turns/mean``) and eval ones (``eval/em`` ...).
    """

    step: int
    estimator: str
    config: dict
    questions: list[str]
    answers: list[list[str]]
    turn_texts: list[list[str]]
    tool_calls: list[list[Optional[str]]]
    observations: list[list[str]]
    final_answer: list[Optional[str]]
    end_reason: list[str]
    prompt_index: np.ndarray
    num_tool_turns: np.ndarray
    has_answer_turn: np.ndarray
    outcome_reward: np.ndarray
    p: np.ndarray
    ig: np.ndarray
    ig_norm: np.ndarray
    group_id: np.ndarray
    group_size: np.ndarray
    outcome_norm: np.ndarray
    advantages: np.ndarray
    advantages_unscaled: np.ndarray
    clip_factor: np.ndarray
    clip_low: np.ndarray
    clip_high: np.ndarray
    input_ids: list[np.ndarray]
    loss_mask: list[np.ndarray]
    turn_ids: list[np.ndarray]
    token_advantage: list[np.ndarray]
    ratio: list[np.ndarray]
    clipped: list[np.ndarray]
    tokens: list[list[str]]
    metrics: dict[str, float]
    probe_text: str = ""
    ig_nonfinite_count: int = 0
    zero_std_group_frac: float = 0.0
    elapsed_s: float = 0.0

    @property
    def batch_size(self) -> int:
        return len(self.questions)

    @property
    def max_turns(self) -> int:
        return int(self.ig.shape[1])
