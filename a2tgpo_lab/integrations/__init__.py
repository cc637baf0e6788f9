"""A²TGPO inside other training engines, from this package's own functions.

- :mod:`.core`  framework-free, token-level entry points every adapter shares: turn ids from a mask,
  per-turn rewards from token rewards, and the per-turn → per-token credit of one batch.
- :mod:`.verl`  advantage estimators ``a2tgpo`` / ``igpo`` and the policy loss ``a2tgpo_turn`` registered
  in verl's registries, plus the IG probe for verl batches (extra ``verl``).
- :mod:`.trl`   a TRL ``GRPOTrainer`` subclass with multi-turn tool rollouts and per-turn advantages
  (extra ``trl``).

Only :mod:`.core` is imported here: the engine adapters import their engine.
"""
from .core import TurnCredit, per_turn_from_token_rewards, turn_credit, turn_ids_from_mask

__all__ = ["TurnCredit", "per_turn_from_token_rewards", "turn_credit", "turn_ids_from_mask"]
