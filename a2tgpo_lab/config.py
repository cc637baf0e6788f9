"""All hyper-parameters of a run in one dataclass, plus the named presets.

Field names follow TRL's ``GRPOConfig`` where a field with the same meaning exists
(``num_generations``, ``temperature``, ``epsilon``, ``epsilon_high``, ``beta``, ``loss_type``-like
``loss_agg_mode``, ``num_iterations``, ``max_completion_length``, ``learning_rate`` ...).

Every reconstruction choice of ``shared/ALGORITHM.md`` marked "(default)" is a knob here; the
docstring of each knob says which value is the faithful default and what the alternative does.

Presets (``preset("a2tgpo")`` etc.) switch the three A²TGPO changes on and off:

======================  ====  =====================  ==================  ========
preset                  IG    normalization          accumulation        clip
======================  ====  =====================  ==================  ========
grpo                    no    outcome z-score        outcome broadcast   fixed
igpo                    yes   pooled over turns      discounted, no √n   fixed
a2tgpo                  yes   per (prompt, turn)     discounted / √n     adaptive
a2tgpo_pooled           yes   pooled over turns      discounted / √n     adaptive
a2tgpo_no_rescale       yes   per (prompt, turn)     discounted, no √n   adaptive
a2tgpo_fixed_clip       yes   per (prompt, turn)     discounted / √n     fixed
======================  ====  =====================  ==================  ========
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

ADVANTAGE_ESTIMATORS = ("grpo", "igpo", "a2tgpo")
NORMALIZATIONS = ("turn_group", "pooled")
RESCALES = ("sqrt_n", "exact_gamma", "none")
IG_MODES = ("prob", "logprob")
RATIO_LEVELS = ("turn", "token")
LOSS_AGG_MODES = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum")
KL_ESTIMATORS = ("k3", "low_var_kl")
REWARD_FNS = ("em", "f1")
ANSWER_TURN_CLIPS = ("one", "outcome")

# Default clip widths per ratio granularity (ALGORITHM.md §6): a turn-level ratio is an average
# of per-token log-ratios, so it moves far less than a single token's ratio and needs a far
# narrower band.
_EPSILONS = {"turn": (3e-3, 4e-3), "token": (0.2, 0.28)}


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and what to do."""


@dataclass
class A2TGPOConfig:
    """Hyper-parameters of one A²TGPO / IGPO / GRPO run.

    Algorithm (ALGORITHM.md §1-§6)
    -------------------------------
    advantage_estimator: ``"grpo"`` (outcome only), ``"igpo"`` or ``"a2tgpo"``; the a2tgpo knobs
        below (``normalization``, ``rescale``, ``adaptive_clip``) turn it into its ablations.
    ig_mode: ``"prob"`` (default): IG_k = p_k − p_{k−1}; ``"logprob"``: difference of the mean
        gold-token log-probabilities.
    normalization: ``"turn_group"`` (default, A²TGPO): z-score IG inside each (prompt, turn-index)
        group; ``"pooled"`` (IGPO): one z-score over all turns of the prompt's rollouts.
    min_group_size: groups smaller than this give normalized IG 0 (default 2: singletons only).
    group_std_floor: a group whose population std of IG is ≤ this (IG units) counts as constant and
        gives 0 (default 0.0 = faithful; raise it, e.g. 1e-3, to stop pure noise being blown up to
        O(1) advantages).
    ig_center_only: subtract the group mean but do not divide by the std (default False).
    std_eps: ε in (x − mean) / (std + ε) (default 1e-6).
    gamma: discount γ of the accumulation (default 1.0).
    rescale: ``"sqrt_n"`` (default): divide the discounted sum by √(number of summed terms);
        ``"exact_gamma"``: divide by √(Σ_j γ^{2j}) (equal to √n when γ = 1); ``"none"`` (IGPO).
    adaptive_clip: scale each turn's clip range by c = 1 + β(2σ(Ĩ) − 1) (default True).
    clip_beta: β of the adaptive clip factor (default 0.3).
    answer_turn_clip: clip factor of the answer turn: ``"one"`` (default, c = 1) or
        ``"outcome"`` (c from the normalized outcome õ).
    ratio_level: ``"turn"`` (default): one importance ratio per turn, the mean of its tokens'
        log-ratios (GSPO-style); ``"token"``: the classic per-token PPO ratio.
    epsilon, epsilon_high: clip widths ε_low, ε_high. ``None`` picks the ratio level's default:
        3e-3 / 4e-3 for turn-level, 0.2 / 0.28 for token-level.
    dual_clip: lower bound ``c`` of dual-clip PPO for negative advantages (default None = off;
        3.0 is the usual value).
    loss_agg_mode: ``"seq-mean-token-mean"`` (default), ``"token-mean"`` or ``"seq-mean-token-sum"``.
    beta: KL coefficient to the reference policy (TRL's name; default 0.0 = no KL, and then no
        reference forward pass is run). The reference is the base model with adapters disabled.
    kl_estimator: ``"k3"`` (default) or ``"low_var_kl"`` (k3 clamped to [-10, 10]).
    entropy_coeff: entropy bonus coefficient (default 0.0).

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
    temperature, top_p: sampling; the IG probe divides logits by the same temperature.
    retrieval_topk: passages per search (default 2).
    max_observation_tokens: observations are truncated to this many tokens (default 64).
    observation_role: chat role used to insert observations (default ``"user"``: every chat
        template has it; ``"tool"`` where the template supports it).
    system_prompt: ``None`` uses the protocol's default system prompt; ``""`` uses none.

    Training
    --------
    model_name_or_path: Hugging Face id or local directory (default: the bundled tiny model).
    dataset: ``"bundled"`` or a path to a Search-R1/FlashRAG-style jsonl/parquet question file.
    corpus: ``"bundled"`` or a path to a jsonl corpus with ``id`` / ``contents``.
    num_prompts_per_step: prompts per step; the step's batch is this × ``num_generations``.
    max_steps, learning_rate, lr_scheduler_type, warmup_ratio, weight_decay, max_grad_norm. The
        defaults (40 steps, lr 3e-4, full fine-tune) are the quickstart's, tuned on the bundled tiny
        model: 1e-3 made it forget 1-hop answers within 30 steps; 3e-4 learned the second hop.
    num_iterations: PPO epochs over each step's rollouts (TRL's μ; default 1).
    num_mini_batches: optimizer steps per iteration (default 1).
    gradient_accumulation_steps: micro-batches per optimizer step (memory only; default 1).
    use_peft, lora_r, lora_alpha, lora_dropout, lora_target_modules: LoRA via peft.
    load_in_4bit: NF4 weights via bitsandbytes (bf16 compute on GPU, fp32 on CPU).
    gradient_checkpointing, bf16, device ("auto", "cpu", "cuda").
    eval_steps, eval_num_prompts, eval_split: periodic greedy evaluation on dev.
    save_steps, output_dir, resume_from_checkpoint, logging_steps, seed.
    """

    # --- algorithm ---------------------------------------------------------------------------
    advantage_estimator: str = "a2tgpo"
    ig_mode: str = "prob"
    normalization: str = "turn_group"
    min_group_size: int = 2
    group_std_floor: float = 0.0
    ig_center_only: bool = False
    std_eps: float = 1e-6
    gamma: float = 1.0
    rescale: str = "sqrt_n"
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
    # --- reward ------------------------------------------------------------------------------
    reward_fn: str = "em"
    format_penalty: float = -1.0
    # --- rollout -----------------------------------------------------------------------------
    num_generations: int = 8
    max_turns: int = 4
    max_new_tokens_per_turn: int = 32
    max_completion_length: int = 384
    temperature: float = 1.0
    top_p: float = 1.0
    retrieval_topk: int = 2
    max_observation_tokens: int = 64
    observation_role: str = "user"
    system_prompt: Optional[str] = None
    # --- training ----------------------------------------------------------------------------
    model_name_or_path: str = "bundled"
    dataset: str = "bundled"
    corpus: str = "bundled"
    num_prompts_per_step: int = 8
    max_steps: int = 40
    learning_rate: float = 3e-4
    lr_scheduler_type: str = "constant"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    num_iterations: int = 1
    num_mini_batches: int = 1
    gradient_accumulation_steps: int = 1
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
    output_dir: str = "runs/a2tgpo"
    resume_from_checkpoint: Optional[str] = None
    logging_steps: int = 1
    seed: int = 0
    preset_name: Optional[str] = field(default=None, metadata={"help": "set by preset()"})

    def __post_init__(self) -> None:
        default_low, default_high = _EPSILONS.get(self.ratio_level, (None, None))
        if self.epsilon is None:
            self.epsilon = default_low
        if self.epsilon_high is None:
            self.epsilon_high = self.epsilon if default_high is None else max(default_high, self.epsilon)
        self.validate()

    # -- validation -------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first bad field and the allowed values."""
        choices = {
            "advantage_estimator": ADVANTAGE_ESTIMATORS,
            "normalization": NORMALIZATIONS,
            "rescale": RESCALES,
            "ig_mode": IG_MODES,
            "ratio_level": RATIO_LEVELS,
            "loss_agg_mode": LOSS_AGG_MODES,
            "kl_estimator": KL_ESTIMATORS,
            "reward_fn": REWARD_FNS,
            "answer_turn_clip": ANSWER_TURN_CLIPS,
            "observation_role": ("user", "tool"),
            "device": ("auto", "cpu", "cuda"),
            "lr_scheduler_type": ("constant", "linear", "cosine"),
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"A2TGPOConfig.{name}={value!r} is not valid; choose one of {list(allowed)}.")
        positive_ints = ("num_generations", "max_turns", "max_new_tokens_per_turn", "max_completion_length",
                         "retrieval_topk", "max_observation_tokens", "num_prompts_per_step", "num_iterations",
                         "num_mini_batches", "gradient_accumulation_steps", "lora_r", "eval_num_prompts",
                         "save_steps", "eval_steps", "logging_steps")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"A2TGPOConfig.{name}={value!r} must be a positive integer.")
        if not isinstance(self.max_steps, int) or self.max_steps < 0:
            raise ConfigError(f"A2TGPOConfig.max_steps={self.max_steps!r} must be an integer >= 0.")
        if self.min_group_size < 1:
            raise ConfigError(f"A2TGPOConfig.min_group_size={self.min_group_size!r} must be >= 1.")
        nonneg = ("group_std_floor", "std_eps", "clip_beta", "beta", "entropy_coeff", "weight_decay",
                  "max_grad_norm", "warmup_ratio")
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
        if self.load_in_4bit and not self.use_peft:
            raise ConfigError("A2TGPOConfig.load_in_4bit=True needs use_peft=True: 4-bit weights are frozen, "
                              "so only LoRA adapters can be trained.")

    # -- helpers ----------------------------------------------------------------------------
    @property
    def uses_ig(self) -> bool:
        """Whether this estimator needs the information-gain probe (every estimator but GRPO)."""
        return self.advantage_estimator != "grpo"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "A2TGPOConfig":
        """A copy with ``changes`` applied (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"Unknown A2TGPOConfig field(s) {sorted(unknown)}; see help(A2TGPOConfig).")
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


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a YAML (``.yaml``/``.yml``) or JSON config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"Config file {path} does not exist.")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of field names to values.")
    return values


PRESETS: dict[str, dict[str, Any]] = {
    "grpo": dict(advantage_estimator="grpo", adaptive_clip=False),
    "igpo": dict(advantage_estimator="igpo", normalization="pooled", rescale="none", adaptive_clip=False),
    "a2tgpo": dict(advantage_estimator="a2tgpo", normalization="turn_group", rescale="sqrt_n", adaptive_clip=True),
    "a2tgpo_pooled": dict(advantage_estimator="a2tgpo", normalization="pooled", rescale="sqrt_n", adaptive_clip=True),
    "a2tgpo_no_rescale": dict(advantage_estimator="a2tgpo", normalization="turn_group", rescale="none",
                              adaptive_clip=True),
    "a2tgpo_fixed_clip": dict(advantage_estimator="a2tgpo", normalization="turn_group", rescale="sqrt_n",
                              adaptive_clip=False),
}


def preset(name: str, **overrides: Any) -> A2TGPOConfig:
    """The config of a named preset (see the module table), with ``overrides`` applied."""
    if name not in PRESETS:
        raise ConfigError(f"Unknown preset {name!r}; choose one of {sorted(PRESETS)}.")
    values = {**PRESETS[name], **overrides, "preset_name": name}
    return A2TGPOConfig.from_dict(values)
