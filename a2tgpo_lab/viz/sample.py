"""A synthetic but realistic :class:`~a2tgpo_lab.records.StepRecord`, for views, notebooks and tests
when no training has run. Nothing here comes from a model: the numbers are invented.

What is invented, and what is computed
--------------------------------------
Invented: a small 2-hop world ("where was the founder of C born ?"), a scripted agent that searches
"C founded", then "P born", sometimes guesses early, sometimes follows a wrong person, sometimes runs
into the turn cap or writes a malformed turn; the probe probability p_t of the gold answer after
each turn (low before the founder is known, a little higher after, high once the birthplace is
found, very low after a search for the wrong person); the policy's old and new token log-probs.

Computed with the package's own algorithm functions, exactly as the trainer does: IG from p
(``info_gain.information_gain``), Ĩ, õ and the advantages (``advantages.compute_advantages``), clip
factors and bounds (``clipping``), per-token advantages (``advantages.broadcast_to_tokens``), and
the ratios and clipped-token flags (``loss.policy_loss``); the metrics come from ``metrics.step_metrics``.

p_t is a deterministic function of (question, queries so far), so rollouts that issue the same
queries get bit-identical IG, and some (prompt, turn) groups have std 0, as in real runs.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..config import A2TGPOConfig, preset
from ..protocol import PROBE_PREFIX, SYSTEM_PROMPT, format_answer, format_observation, format_search
from ..records import StepRecord
from ..tiny import IM_END, IM_START

COMPANIES = ("Velmora", "Quenrik", "Brastow", "Olvane", "Denzari", "Kalphor", "Wystan", "Ombrel", "Trevane",
             "Salquin", "Porvath", "Ixley")
PEOPLE = ("Tarsk", "Mirelle", "Hobran", "Ysolde", "Garrick", "Pellam", "Ondine", "Varek", "Lusk", "Cadeyrn",
          "Brisa", "Feodor")
CITIES = ("Oslund", "Parvek", "Thessaly", "Norwick", "Caldera", "Umbrin", "Ravost", "Elmsgate", "Quorra",
          "Dunmere")
N_CITIES_IN_WORLD = 60   # p(gold) with no information ≈ 1 / number of cities


@dataclass
class _Rollout:
    """One scripted rollout: its assistant turns, observations, and the probe probabilities."""

    turn_texts: list[str] = field(default_factory=list)
    tool_calls: list[Optional[str]] = field(default_factory=list)     # the query, or None, per turn
    observations: list[str] = field(default_factory=list)
    p: list[float] = field(default_factory=list)
    final_answer: Optional[str] = None
    end_reason: str = "answer"


def _jitter(*key: object) -> float:
    """A deterministic number in [0, 1) from ``key``: equal queries give bit-identical p."""
    return zlib.crc32(repr(key).encode()) / 2 ** 32


def _probe_p(question: str, queries: tuple[str, ...], knows: str) -> float:
    """p(gold | context) for a knowledge state: nothing, the founder, the birthplace, or a wrong lead."""
    u = _jitter(question, queries)
    if knows == "birthplace":
        return 0.55 + 0.4 * u
    if knows == "founder":
        return 0.03 + 0.05 * u
    if knows == "wrong":
        return 0.002 + 0.006 * u
    return (1.0 + 0.3 * u) / N_CITIES_IN_WORLD


def _simulate(rng: np.random.Generator, company: str, founder: str, city: str, max_turns: int, skill: float,
              same_first_query: bool) -> _Rollout:
    """Script one 2-hop rollout; ``skill`` in [0, 1] is how often the agent takes the right next step."""
    question = f"where was the founder of {company} born ?"
    out = _Rollout(p=[_probe_p(question, (), "nothing")])
    knows, queries = "nothing", ()
    for turn in range(1, max_turns + 1):
        if rng.random() < 0.015:                                 # a broken turn ends the rollout
            out.turn_texts.append(f"<search> {company} founded")
            out.tool_calls.append(None)
            out.end_reason = "malformed"
            return out
        gives_up = knows == "wrong" and rng.random() < 0.4
        if knows == "birthplace" or gives_up or (knows == "founder" and rng.random() > skill + 0.2):
            guess = city if knows == "birthplace" and rng.random() < 0.95 else str(rng.choice(CITIES))
            out.turn_texts.append(format_answer(guess))
            out.tool_calls.append(None)
            out.final_answer = guess
            return out
        if knows == "nothing":
            careful = same_first_query or rng.random() < 0.5 + skill / 2
            query = f"{company} founded" if careful else f"{company} founder born"
            other = founder if careful else str(rng.choice(PEOPLE))
            facts = [f"{company} was founded by {founder} .", f"{other} works at {company} ."]
            knows = "founder" if careful or other == founder else "wrong"
        else:                                                    # knows the founder, or followed a wrong lead
            right = rng.random() < (skill + 0.3 if knows == "founder" else skill)
            person = founder if right else str(rng.choice([p for p in PEOPLE if p != founder]))
            query = f"{person} born"
            born_in = city if right else str(rng.choice(CITIES))
            facts = [f"{person} was born in {born_in} .", f"{person} visited {rng.choice(CITIES)} ."]
            knows = "birthplace" if right else "wrong"
        out.turn_texts.append(format_search(query))
        out.tool_calls.append(query)
        if turn == max_turns:                                    # a search in the last allowed turn is not run
            out.end_reason = "max_turns"
            return out
        queries = queries + (query,)
        out.observations.append(format_observation(facts))
        out.p.append(_probe_p(question, queries, knows))
        if rng.random() < 0.02:                                  # ran out of tokens before the next turn
            out.end_reason = "max_tokens"
            return out
    return out


def _tokens(question: str, rollout: _Rollout) -> tuple[list[str], list[bool], list[int]]:
    """The ChatML token stream of a rollout, with the loss mask and turn id of every token.

    Model tokens are an assistant turn's text and its closing ``<|im_end|>``; the role headers, the
    system prompt, the question and the observations are context (turn id 0, not trained).
    """
    tokens: list[str] = []
    mask: list[bool] = []
    turn: list[int] = []

    def add(words: list[str], model_turn: int = 0) -> None:
        tokens.extend(words)
        mask.extend([model_turn > 0] * len(words))
        turn.extend([model_turn] * len(words))

    add([IM_START, "system", *SYSTEM_PROMPT.split(), IM_END, IM_START, "user", *question.split(), IM_END])
    for k, text in enumerate(rollout.turn_texts, start=1):
        add([IM_START, "assistant"])
        add([*text.split(), IM_END], model_turn=k)
        if k <= len(rollout.observations):
            add([IM_START, "user", *rollout.observations[k - 1].split(), IM_END])
    return tokens, mask, turn


def _pad(rows: list[list], fill) -> np.ndarray:
    width = max(len(r) for r in rows)
    return np.array([list(r) + [fill] * (width - len(r)) for r in rows])


def sample_step_record(seed: int = 0, n_prompts: int = 4, group_size: int = 6, max_turns: int = 4,
                       cfg: Optional[A2TGPOConfig] = None, skill: float = 0.5, step: int = 0) -> StepRecord:
    """A synthetic :class:`StepRecord` of ``n_prompts`` × ``group_size`` scripted rollouts (see module doc).

    Args:
        seed: everything is a deterministic function of the arguments.
        n_prompts, group_size: the batch is B = n_prompts × group_size rollouts, prompt by prompt.
        max_turns: T, assistant turns allowed per rollout, the answer turn included (≥ 2).
        cfg: the algorithm settings to compute Ĩ, A and the clip ranges with (default: the
            ``a2tgpo`` preset); its group size and turn cap are overridden by the arguments.
        skill: 0..1, how often the scripted agent takes the right next step.
        step: the record's step number.

    The first prompt's rollouts all issue the same first query, so its turn-1 group is constant
    (std 0) and its rollouts fall back to the outcome term there.
    """
    import torch

    from ..advantages import broadcast_to_tokens, compute_advantages
    from ..clipping import clip_bounds, turn_clip_factors
    from ..info_gain import information_gain
    from ..loss import policy_loss
    from ..metrics import step_metrics

    if n_prompts < 1 or group_size < 2:
        raise ValueError(f"sample_step_record needs n_prompts >= 1 (got {n_prompts}) and group_size >= 2 "
                         f"(got {group_size}): advantages are relative to a group of rollouts.")
    if max_turns < 2:
        raise ValueError(f"sample_step_record needs max_turns >= 2 (got {max_turns}): one search and an answer.")
    if not 0.0 <= skill <= 1.0:
        raise ValueError(f"sample_step_record skill={skill!r} must be in [0, 1].")
    base = cfg if cfg is not None else preset("a2tgpo")
    cfg = base.replace(num_generations=group_size, max_turns=max_turns, num_prompts_per_step=n_prompts)
    rng = np.random.default_rng(seed)

    questions, answers, rollouts, prompt_index = [], [], [], []
    for q in range(n_prompts):
        company = COMPANIES[(seed + q) % len(COMPANIES)]
        founder, city = PEOPLE[(3 * seed + q) % len(PEOPLE)], CITIES[(5 * seed + q) % len(CITIES)]
        for _ in range(group_size):
            rollouts.append(_simulate(rng, company, founder, city, max_turns, skill, same_first_query=q == 0))
            questions.append(f"where was the founder of {company} born ?")
            answers.append([city])
            prompt_index.append(q)
    B, T = len(rollouts), max_turns
    num_tool_turns = np.array([len(r.observations) for r in rollouts])
    outcome = np.array([(1.0 if r.final_answer == a[0] else 0.0) if r.end_reason == "answer" else cfg.format_penalty
                        for r, a in zip(rollouts, answers)])

    # §1: IG from the probe log-probabilities, as the trainer computes it.
    logp = torch.full((B, T + 1), float("nan"), dtype=torch.float64)
    for b, r in enumerate(rollouts):
        logp[b, :len(r.p)] = torch.log(torch.tensor(r.p, dtype=torch.float64))
    turns_t = torch.tensor(num_tool_turns)
    prompt_t = torch.tensor(prompt_index)
    if cfg.uses_ig:
        ig, p, nonfinite = information_gain(logp, turns_t, mode=cfg.ig_mode, first_turn=cfg.ig_first_turn)
    else:
        ig, p, nonfinite = torch.full((B, T), float("nan"), dtype=torch.float64), logp.exp(), 0
    # §3-§5: advantages and clip ranges.
    adv = compute_advantages(cfg, ig, torch.tensor(outcome), prompt_t, turns_t)
    clip_factor = turn_clip_factors(cfg, adv.ig_norm, adv.outcome_norm, turns_t)
    clip_low, clip_high = clip_bounds(clip_factor, cfg.epsilon, cfg.epsilon_high)

    # Tokens, and a policy that moved a little since sampling: each turn drifts by about one ε.
    streams = [_tokens(q, r) for q, r in zip(questions, rollouts)]
    vocabulary: dict[str, int] = {}
    ids = [[vocabulary.setdefault(t, len(vocabulary)) for t in toks] for toks, _, _ in streams]
    lengths = [len(t) for t in ids]
    mask_t = torch.tensor(_pad([m for _, m, _ in streams], False))
    turn_t = torch.tensor(_pad([t for _, _, t in streams], 0))
    old_logprobs = torch.where(mask_t, -torch.rand(mask_t.shape, generator=torch.Generator().manual_seed(seed),
                                                   dtype=torch.float64) * 3.0, 0.0)
    per_turn_drift = torch.tensor(rng.normal(0.0, cfg.epsilon, (B, T + 1)))
    token_noise = torch.tensor(rng.normal(0.0, cfg.epsilon if cfg.ratio_level == "turn" else 0.1, mask_t.shape))
    drift = per_turn_drift.gather(1, turn_t) + token_noise
    logprobs = torch.where(mask_t, old_logprobs + drift, 0.0)
    token_adv = broadcast_to_tokens(adv.advantages, turn_t, mask_t)
    token_low = broadcast_to_tokens(clip_low, turn_t, mask_t)
    token_high = broadcast_to_tokens(clip_high, turn_t, mask_t)
    _, loss_out = policy_loss(logprobs, old_logprobs, token_adv, turn_t, mask_t, token_low, token_high,
                              ratio_level=cfg.ratio_level, dual_clip=cfg.dual_clip, loss_agg_mode=cfg.loss_agg_mode)

    def rows(tensor: torch.Tensor, dtype) -> list[np.ndarray]:
        return [tensor[b, :n].numpy().astype(dtype) for b, n in enumerate(lengths)]

    def numpy(tensor: torch.Tensor) -> np.ndarray:
        return tensor.detach().numpy().astype(float)

    record = StepRecord(
        step=step, estimator=cfg.preset_name or cfg.advantage_estimator, config=cfg.to_dict(),
        questions=questions, answers=answers, turn_texts=[r.turn_texts for r in rollouts],
        tool_calls=[r.tool_calls for r in rollouts], observations=[r.observations for r in rollouts],
        final_answer=[r.final_answer for r in rollouts], end_reason=[r.end_reason for r in rollouts],
        prompt_index=np.array(prompt_index), num_tool_turns=num_tool_turns,
        has_answer_turn=np.array([len(r.turn_texts) > len(r.observations) for r in rollouts]),
        outcome_reward=outcome, p=numpy(p), ig=numpy(ig), ig_norm=numpy(adv.ig_norm),
        group_id=adv.group_id.numpy().astype(int), group_size=adv.group_size.numpy().astype(int),
        outcome_norm=numpy(adv.outcome_norm), advantages=numpy(adv.advantages),
        advantages_unscaled=numpy(adv.advantages_unscaled), clip_factor=numpy(clip_factor),
        clip_low=numpy(clip_low), clip_high=numpy(clip_high),
        input_ids=[np.array(i) for i in ids], loss_mask=rows(mask_t, bool), turn_ids=rows(turn_t, int),
        token_advantage=rows(token_adv, float), ratio=rows(loss_out.ratio, float),
        clipped=rows(loss_out.clipped, np.int8), tokens=[toks for toks, _, _ in streams], metrics={},
        probe_text=" ".join([IM_START, "assistant", PROBE_PREFIX, format_answer(answers[0][0], False), IM_END]),
        ig_nonfinite_count=int(nonfinite), zero_std_group_frac=float(adv.zero_std_group_frac),
    )
    record.metrics = {"step": float(step), **step_metrics(record), **loss_out.metrics}
    return record


def sample_run(n_steps: int = 20, seed: int = 0, eval_every: int = 5, **record_kwargs) -> list[StepRecord]:
    """Synthetic records of a run whose scripted agent improves: ``skill`` ramps from 0.2 to 0.9.

    Every ``eval_every`` steps the record's metrics also get ``eval/em``: the answer accuracy of the
    scripted agent at that skill on 40 fresh questions (a stand-in for a greedy dev evaluation).
    ``record_kwargs`` go to :func:`sample_step_record`.
    """
    if n_steps < 1:
        raise ValueError(f"sample_run n_steps={n_steps!r} must be >= 1.")
    records = []
    for step in range(n_steps):
        skill = 0.2 + 0.7 * step / max(1, n_steps - 1)
        record = sample_step_record(seed=seed * 1000 + step, skill=skill, step=step, **record_kwargs)
        if eval_every and step % eval_every == eval_every - 1:
            rng = np.random.default_rng([seed, step])
            hits = [_simulate(rng, COMPANIES[i % len(COMPANIES)], PEOPLE[i % len(PEOPLE)], CITIES[i % len(CITIES)],
                              record.max_turns, skill, same_first_query=False).final_answer == CITIES[i % len(CITIES)]
                    for i in range(40)]
            record.metrics["eval/em"] = float(np.mean(hits))
        records.append(record)
    return records
