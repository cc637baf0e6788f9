"""a2tgpo_lab: learn, debug and try A²TGPO (per-turn credit assignment for tool-using LLM agents).

The public API is re-exported here. Everything but the config and the record dataclasses is imported
on first use, so ``import a2tgpo_lab`` stays fast (no transformers, peft or plotly at import time).

    import a2tgpo_lab as lab
    cfg = lab.preset("a2tgpo", max_steps=20)
    trainer = lab.A2TGPOTrainer(cfg)
    trainer.train()
"""
from .config import PRESETS, A2TGPOConfig, ConfigError, preset
from .records import StepRecord, Trajectory

__version__ = "0.1.0"

_LAZY = {
    # the algorithm (ALGORITHM.md §1-§6)
    "information_gain": "info_gain",
    "normalize_outcomes": "advantages", "turn_group_normalize": "advantages", "pooled_normalize": "advantages",
    "group_zscore": "advantages", "joint_normalize": "advantages", "add_outcome": "advantages", "discounted_returns": "advantages",
    "share_first_turn": "advantages",
    "reward_terms": "advantages", "accumulate": "advantages", "compute_advantages": "advantages",
    "broadcast_to_tokens": "advantages", "ADVANTAGE_ESTIMATORS": "advantages",
    "register_advantage_estimator": "advantages", "AdvantageResult": "advantages",
    "adaptive_clip_factor": "clipping", "clip_bounds": "clipping", "turn_clip_factors": "clipping",
    "turn_credit": "credit", "TurnCredit": "credit",
    "policy_loss": "loss", "aggregate": "loss", "aggregation_units": "loss",
    "exact_match": "rewards", "f1_score": "rewards", "outcome_reward": "rewards", "normalize_answer": "rewards",
    # the world, rollouts and the probe
    "QAExample": "envs", "load_split": "envs", "bundled_search_tool": "envs", "SearchTool": "envs",
    "load_questions": "envs", "generate_world": "envs",
    "generate_rollouts": "rollout", "score_probes": "probe", "score_probes_naive": "probe",
    "token_logprobs": "logprobs",
    # models and training
    "load_model_and_tokenizer": "models", "disabled_adapters": "models",
    "trainable_parameters_summary": "models",
    "build_word_tokenizer": "tiny", "build_tiny_qwen": "tiny",
    "A2TGPOTrainer": "trainer", "evaluate_agent": "evaluation", "step_metrics": "metrics",
}

__all__ = ["A2TGPOConfig", "ConfigError", "PRESETS", "preset", "StepRecord", "Trajectory", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
