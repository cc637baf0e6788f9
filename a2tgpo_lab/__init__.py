"""a2tgpo_lab: learn, debug and try A²TGPO (per-turn credit assignment for tool-using LLM agents).

Heavy modules (models, trainer, views) are imported lazily, so ``import a2tgpo_lab`` stays fast.
"""
from .config import A2TGPOConfig, ConfigError, PRESETS, preset
from .records import StepRecord, Trajectory

__version__ = "0.1.0"

__all__ = ["A2TGPOConfig", "ConfigError", "PRESETS", "preset", "StepRecord", "Trajectory", "__version__"]
