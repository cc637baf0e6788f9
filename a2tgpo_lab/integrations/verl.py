"""A²TGPO as a verl plug-in (verl 0.9.1): estimators, the turn-level loss, and the IG probe.

Importing this module registers, in verl's own registries,

- advantage estimators ``a2tgpo`` and ``igpo`` (``algorithm.adv_estimator=a2tgpo``), and
- the policy loss ``a2tgpo`` (``actor_rollout_ref.actor.policy_loss.loss_mode=a2tgpo``),

all computed by this package's functions (:mod:`a2tgpo_lab.integrations.core`). Load it in every verl
process with ``actor_rollout_ref.model.external_lib=a2tgpo_lab.integrations.verl`` or the environment
variable ``VERL_USE_EXTERNAL_MODULES=a2tgpo_lab.integrations.verl`` (see examples/verl/).

Data layout (as the released A²TGPO code writes it)
---------------------------------------------------
``token_level_rewards`` holds the outcome at the last response token and the IG of tool turn k in
turn k's span (``write_ig_to_token_rewards`` puts it at the turn's last model token). Turns are the
runs of ones of ``response_mask`` (verl masks tool observations out of it), or the explicit
``turn_ids`` / ``num_tool_turns`` keyword arguments when a trainer passes them; they are never read off
the reward values.

Knobs: ``algorithm.a2tgpo`` is a mapping of :class:`~a2tgpo_lab.config.A2TGPOConfig` fields, with
``preset`` (default: the estimator's name) — e.g. ``+algorithm.a2tgpo.preset=a2tgpo_code``.

Per-token clip bounds
---------------------
verl's loss hook sees neither turn ids nor clip bounds. A²TGPO trains no critic, so the estimator's
second output — verl's ``returns``, read only by a critic's value loss — carries each token's clip
factor c. :func:`install_turn_clip_passthrough` swaps verl's actor loss ``ppo_loss`` for
:func:`ppo_loss_with_turn_clip`, which hands ``returns`` (and ``turn_ids`` when the batch has them) to
the registered loss through a context variable; without it the loss uses c = 1 (fixed clip).
Importing this module installs it, so ``external_lib`` is all a run needs.
"""
from __future__ import annotations

import contextvars
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from verl.trainer.ppo.core_algos import register_adv_est, register_policy_loss

from ..advantages import broadcast_to_tokens
from ..clipping import clip_bounds
from ..config import A2TGPOConfig, preset
from ..info_gain import information_gain
from ..loss import aggregation_units, policy_loss
from .core import per_turn_from_token_rewards, turn_credit, turn_ids_from_mask

__all__ = ["a2tgpo_config", "a2tgpo_advantage", "igpo_advantage", "a2tgpo_policy_loss", "turn_clip_context",
           "ppo_loss_with_turn_clip", "install_turn_clip_passthrough", "prompt_index_from_uid", "ProbeBatch",
           "build_probe_batch", "ig_from_probe_log_probs", "compute_turn_ig"]


def _get(config: Any, key: str, default: Any = None) -> Any:
    if config is None:
        return default
    if hasattr(config, "get"):
        return config.get(key, default)
    return getattr(config, key, default)


def a2tgpo_config(config: Any, estimator: str) -> A2TGPOConfig:
    """The package config from verl's ``algorithm`` config: the mapping ``algorithm.a2tgpo`` (fields of
    A2TGPOConfig plus ``preset``, default ``estimator``) on top of that preset."""
    values = dict(_get(config, "a2tgpo", None) or {})
    name = values.pop("preset", estimator)
    return preset(name, **values)


def prompt_index_from_uid(index: Any, batch: int) -> torch.Tensor:
    """verl's ``uid`` array (one id per prompt, repeated over its n rollouts) → prompt_index [B] long."""
    if index is None:
        raise ValueError("The A²TGPO estimators need verl's `index` (the uid of each rollout's prompt) to form "
                         "groups; it is passed when `uid` is in the batch's non_tensor_batch.")
    ids = np.asarray(index)
    if ids.shape != (batch,):
        raise ValueError(f"index has shape {ids.shape}; it must hold one prompt uid per row ({batch}).")
    _, inverse = np.unique(ids.astype(str), return_inverse=True)
    return torch.as_tensor(inverse, dtype=torch.long)


def _estimate(estimator: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, config: Any,
              index: Any, turn_ids: Optional[torch.Tensor], num_tool_turns: Optional[torch.Tensor]):
    cfg = a2tgpo_config(config, estimator)
    if cfg.advantage_estimator != estimator:
        raise ValueError(f"algorithm.a2tgpo.preset={cfg.preset_name!r} is a {cfg.advantage_estimator!r} preset; "
                         f"the verl estimator {estimator!r} needs one of its own.")
    mask = response_mask.bool()
    turn_ids = turn_ids_from_mask(mask) if turn_ids is None else turn_ids.long().to(mask.device)
    ig, outcome, turns = per_turn_from_token_rewards(token_level_rewards, turn_ids, num_tool_turns)
    prompt_index = prompt_index_from_uid(index, mask.shape[0])
    credit = turn_credit(cfg, ig.cpu(), outcome.cpu(), prompt_index, turns.cpu(), turn_ids, mask)
    advantages = credit.token_advantages.to(token_level_rewards.dtype)
    factor = broadcast_to_tokens(credit.clip_factor.to(mask.device), turn_ids, mask)
    return advantages, factor.to(token_level_rewards.dtype)


@register_adv_est("a2tgpo")
def a2tgpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, config: Any = None,
                     index: Any = None, turn_ids: Optional[torch.Tensor] = None,
                     num_tool_turns: Optional[torch.Tensor] = None, **unused) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``a2tgpo``: the package's A²TGPO advantages (§3-§4) at every model token.

    Args: [B, L] ``token_level_rewards`` and ``response_mask`` (module docstring layout), ``config``
    (verl's algorithm config), ``index`` (uid per row); optional ``turn_ids`` [B, L] / ``num_tool_turns``
    [B] override the turns read from the mask.

    Returns: (advantages [B, L], per-token clip factor c [B, L] in verl's ``returns`` slot).
    """
    return _estimate("a2tgpo", token_level_rewards, response_mask, config, index, turn_ids, num_tool_turns)


@register_adv_est("igpo")
def igpo_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, config: Any = None,
                   index: Any = None, turn_ids: Optional[torch.Tensor] = None,
                   num_tool_turns: Optional[torch.Tensor] = None, **unused) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``igpo``: the package's IGPO advantages; same arguments as :func:`a2tgpo_advantage`
    (its clip factor is 1 everywhere)."""
    return _estimate("igpo", token_level_rewards, response_mask, config, index, turn_ids, num_tool_turns)


# ----------------------------------------------------------------------------- loss

_TURN_CLIP = contextvars.ContextVar("a2tgpo_turn_clip", default=None)


@contextmanager
def turn_clip_context(clip_factor: Optional[torch.Tensor] = None, turn_ids: Optional[torch.Tensor] = None):
    """Within the block, the ``a2tgpo`` loss uses these per-token clip factors c [B, L] and turn ids [B, L]
    (either may be None: c = 1, turns from the response mask)."""
    token = _TURN_CLIP.set({"clip_factor": clip_factor, "turn_ids": turn_ids})
    try:
        yield
    finally:
        _TURN_CLIP.reset(token)


@register_policy_loss("a2tgpo")
def a2tgpo_policy_loss(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                       response_mask: torch.Tensor, loss_agg_mode: str = "seq-mean-token-mean", config: Any = None,
                       rollout_is_weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict]:
    """verl policy loss ``a2tgpo``: the package's :func:`~a2tgpo_lab.loss.policy_loss` with the turn-level
    ratio and bounds [1 − c·ε_low, 1 + c·ε_high], ε from the actor's ``clip_ratio_low`` / ``clip_ratio_high``.

    The package aggregates over the micro-batch; the result is rescaled to verl's global normaliser
    (``config.global_batch_info``: dp_size, batch_num_tokens, global_batch_size) so that the sum over
    micro-batches and data-parallel ranks equals the loss of the whole mini-batch, as verl's own losses do.
    """
    if rollout_is_weights is not None:
        raise NotImplementedError("The a2tgpo loss does not apply rollout importance weights; turn "
                                  "algorithm.rollout_correction off (its default).")
    mask = response_mask.bool()
    extras = _TURN_CLIP.get() or {}
    turn_ids = extras.get("turn_ids")
    turn_ids = turn_ids_from_mask(mask) if turn_ids is None else turn_ids.long().to(mask.device)
    factor = extras.get("clip_factor")
    factor = torch.ones_like(log_prob) if factor is None else factor.to(log_prob)
    eps_low = _get(config, "clip_ratio_low", None) or _get(config, "clip_ratio", 3e-3)
    eps_high = _get(config, "clip_ratio_high", None) or eps_low
    low, high = clip_bounds(torch.where(mask, factor, torch.ones_like(factor)), eps_low, eps_high)
    loss, out = policy_loss(log_prob, old_log_prob, advantages, turn_ids, mask, low, high, ratio_level="turn",
                            loss_agg_mode=loss_agg_mode)
    loss = loss * _global_scale(mask, loss_agg_mode, dict(_get(config, "global_batch_info", None) or {}))
    with torch.no_grad():
        n = mask.sum().clamp(min=1)
        ppo_kl = ((old_log_prob - log_prob) * mask).sum() / n
    metrics = {"actor/pg_clipfrac": out.metrics["clip_ratio/region_mean"],
               "actor/pg_clipfrac_lower": out.metrics["clip_ratio/low_mean"],
               "actor/ppo_kl": float(ppo_kl), "actor/turn_ratio_mean": out.metrics["ratio/mean"]}
    return loss, metrics


def _global_scale(mask: torch.Tensor, mode: str, info: dict) -> float:
    """local units / global units × dp_size, the factor from the package's micro-batch mean to verl's
    ``agg_loss`` normalisation (1 when verl supplies no global counts and runs on one rank)."""
    dp_size = int(info.get("dp_size") or 1)
    total = info.get("batch_num_tokens") if mode == "token-mean" else info.get("global_batch_size")
    if total is None:
        if dp_size > 1:
            raise ValueError(f"loss_agg_mode={mode!r} on {dp_size} ranks needs verl's global batch counts "
                             "(config.global_batch_info).")
        return 1.0
    return aggregation_units(mask, mode) / float(total) * dp_size


def ppo_loss_with_turn_clip(config: Any, model_output: Any, data: Any, dp_group: Any = None,
                            ppo_loss: Optional[Callable] = None):
    """verl's actor loss ``ppo_loss`` with the batch's per-token clip factors (``returns``) and, when present,
    ``turn_ids`` handed to the ``a2tgpo`` loss. Other loss modes are unaffected."""
    if ppo_loss is None:
        from verl.workers.utils.losses import ppo_loss as verl_ppo_loss

        ppo_loss = getattr(verl_ppo_loss, "__wrapped__", verl_ppo_loss)
    keys = [key for key in ("returns", "turn_ids") if key in data.keys()]
    padded = data.select(*keys).to_padded_tensor() if keys else {}
    factor = padded["returns"] if "returns" in keys else None
    turn_ids = padded["turn_ids"] if "turn_ids" in keys else None
    with turn_clip_context(factor, turn_ids):
        return ppo_loss(config, model_output, data, dp_group=dp_group)


def install_turn_clip_passthrough() -> None:
    """Make verl's actor workers use :func:`ppo_loss_with_turn_clip` (idempotent).

    The actor worker builds its loss from the name ``ppo_loss`` in ``verl.workers.engine_workers`` when it
    sets up its model, after ``external_lib`` is imported: both that name (if the module is loaded) and the
    one in ``verl.workers.utils.losses`` (which a later import of engine_workers copies) are replaced.
    """
    import functools
    import sys

    import verl.workers.utils.losses as losses

    original = getattr(losses.ppo_loss, "__wrapped__", losses.ppo_loss)

    @functools.wraps(original)
    def wrapped(config, model_output, data, dp_group=None):
        return ppo_loss_with_turn_clip(config, model_output, data, dp_group, ppo_loss=original)

    losses.ppo_loss = wrapped
    engine_workers = sys.modules.get("verl.workers.engine_workers")
    if engine_workers is not None:
        engine_workers.ppo_loss = wrapped


# ----------------------------------------------------------------------------- IG probe

@dataclass
class ProbeBatch:
    """The probe rows of a verl batch: one row per (rollout i, context t = 0 .. K_i), laid out as a verl
    generation batch so that the actor's ``compute_log_prob`` scores it.

    prompts [N, P'] left-padded (the context after turn t); responses [N, R'] right-padded (probe prefix +
    gold answer); input_ids, attention_mask, position_ids [N, P' + R']; row, turn [N]: the (i, t) of each
    probe row; gold_start, gold_len [N]: where its gold tokens sit in ``responses``; num_tool_turns [B];
    batch_size: B.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    prompts: torch.Tensor
    responses: torch.Tensor
    row: torch.Tensor
    turn: torch.Tensor
    gold_start: torch.Tensor
    gold_len: torch.Tensor
    num_tool_turns: torch.Tensor
    batch_size: int

    def tensors(self) -> dict[str, torch.Tensor]:
        """The fields of a verl ``DataProto.batch`` (pass to ``DataProto.from_dict``)."""
        return {k: getattr(self, k) for k in ("input_ids", "attention_mask", "position_ids", "prompts", "responses")}


def build_probe_batch(prompts: torch.Tensor, responses: torch.Tensor, attention_mask: torch.Tensor,
                      response_mask: torch.Tensor, probes: list, pad_token_id: int,
                      num_tool_turns: Optional[torch.Tensor] = None,
                      turn_ids: Optional[torch.Tensor] = None) -> ProbeBatch:
    """Probe rows from verl's batch fields (§1): context c_t = prompt + response up to turn t + 1's first
    model token (t = 0: the prompt alone; the last tool turn without a following turn: the whole response),
    then ``probe.prefix_ids + probe.gold_ids`` of the row's :class:`~a2tgpo_lab.chat.ProbeSuffix`.

    prompts [B, P] (left-padded), responses [B, R], attention_mask [B, P + R], response_mask [B, R];
    probes: one ProbeSuffix per row (``a2tgpo_lab.chat.probe_suffix(tokenizer, gold)``).
    """
    batch, prompt_width = prompts.shape
    mask = response_mask.bool()
    turn_ids = turn_ids_from_mask(mask) if turn_ids is None else turn_ids.long()
    n_turns = turn_ids.max(dim=1).values
    turns = n_turns - 1 if num_tool_turns is None else num_tool_turns.long()
    if len(probes) != batch:
        raise ValueError(f"probes has {len(probes)} entries; build_probe_batch needs one per row ({batch}).")
    response_valid = attention_mask[:, prompt_width:].sum(dim=1)
    contexts, tails, rows, steps, gold_start, gold_len = [], [], [], [], [], []
    for i in range(batch):
        prompt = prompts[i][attention_mask[i, :prompt_width].bool()]
        starts = [int((turn_ids[i] == k).nonzero()[0]) for k in range(1, int(n_turns[i]) + 1)]
        tail = list(probes[i].prefix_ids) + list(probes[i].gold_ids)
        for t in range(int(turns[i]) + 1):
            end = starts[t] if t < len(starts) else int(response_valid[i])
            contexts.append(torch.cat([prompt, responses[i, :end]]))
            tails.append(torch.tensor(tail, dtype=prompts.dtype))
            rows.append(i), steps.append(t)
            gold_start.append(len(probes[i].prefix_ids)), gold_len.append(len(probes[i].gold_ids))
    width_p, width_r = max(len(c) for c in contexts), max(len(t) for t in tails)
    n = len(contexts)
    new_prompts = torch.full((n, width_p), pad_token_id, dtype=prompts.dtype)
    new_responses = torch.full((n, width_r), pad_token_id, dtype=prompts.dtype)
    attn = torch.zeros(n, width_p + width_r, dtype=attention_mask.dtype)
    for j, (context, tail) in enumerate(zip(contexts, tails)):
        new_prompts[j, width_p - len(context):] = context
        new_responses[j, :len(tail)] = tail
        attn[j, width_p - len(context): width_p + len(tail)] = 1
    position_ids = (attn.long().cumsum(dim=1) - 1).clamp(min=0)
    return ProbeBatch(input_ids=torch.cat([new_prompts, new_responses], dim=1), attention_mask=attn,
                      position_ids=position_ids, prompts=new_prompts, responses=new_responses,
                      row=torch.tensor(rows), turn=torch.tensor(steps), gold_start=torch.tensor(gold_start),
                      gold_len=torch.tensor(gold_len), num_tool_turns=turns.cpu(), batch_size=batch)


def ig_from_probe_log_probs(log_probs: torch.Tensor, probe: ProbeBatch, mode: str = "prob",
                            width: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """IG [B, T] from the log-probs of the probe responses ([N, R], position j scores ``responses[:, j]``,
    as verl's ``old_log_probs``): ℓ_t = mean over the gold tokens, then :func:`~a2tgpo_lab.info_gain.
    information_gain`. Returns (ig, p, dropped count) as that function does."""
    turns = probe.num_tool_turns
    width = int(turns.max()) if width is None else int(width)
    ell = torch.full((probe.batch_size, width + 1), float("nan"), dtype=torch.float32)
    for j in range(log_probs.shape[0]):
        start, length = int(probe.gold_start[j]), int(probe.gold_len[j])
        ell[int(probe.row[j]), int(probe.turn[j])] = log_probs[j, start: start + length].float().mean()
    return information_gain(ell, turns, mode=mode)


def compute_turn_ig(data: Any, log_prob_fn: Callable[[Any], Any], probes: list, pad_token_id: int,
                    cfg: Optional[A2TGPOConfig] = None,
                    num_tool_turns: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-turn IG of a verl ``DataProto`` and its token-reward layout, from one log-prob pass.

    data: a DataProto with ``prompts``, ``responses``, ``attention_mask``, ``response_mask`` and
    ``token_level_scores`` (the outcome at the last response token). log_prob_fn: ``DataProto -> DataProto``
    with ``batch["old_log_probs"]`` (e.g. the actor worker group's ``compute_log_prob``; the probe batch may
    need padding to its world size). num_tool_turns: optional [B], as for the estimator.

    Returns (ig [B, T], token rewards = ``token_level_scores`` with IG added at each tool turn's last model
    token), ready for the ``a2tgpo`` estimator.
    """
    from verl import DataProto

    from .core import write_ig_to_token_rewards

    cfg = cfg or preset("a2tgpo")
    fields = data.batch
    response_mask = fields["response_mask"].bool()
    probe = build_probe_batch(fields["prompts"], fields["responses"], fields["attention_mask"], response_mask,
                              probes, pad_token_id, num_tool_turns=num_tool_turns)
    scored = log_prob_fn(DataProto.from_dict(tensors=probe.tensors(), meta_info={"temperature": cfg.temperature}))
    ig, _, _ = ig_from_probe_log_probs(scored.batch["old_log_probs"], probe, mode=cfg.ig_mode)
    return ig, write_ig_to_token_rewards(fields["token_level_scores"], ig, turn_ids_from_mask(response_mask))


install_turn_clip_passthrough()
