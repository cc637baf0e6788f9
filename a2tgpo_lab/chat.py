"""Token ids of the multi-turn dialogue, cut out of the tokenizer's own chat template.

The rollout engine never re-renders the whole dialogue: it appends token ids turn by turn. The
pieces it appends must therefore be exactly what the chat template would have produced, for the
bundled ChatML model and for real Qwen / Llama templates alike. Every piece is found the same way:
render a conversation that holds unique placeholder words where the variable text goes, locate the
placeholders in the rendered string, and keep the text around them. Nothing about a particular
template (``<|im_start|>``, ``<|eot_id|>``, Qwen3's empty ``<think>`` block ...) is hard-coded.

Three pieces exist:

- the prompt: system prompt + question, ending with the generation prompt (the assistant header);
- the observation: what goes between one assistant turn's text and the next assistant turn's
  first token: the template's end of the assistant turn (``close_ids``, e.g. ``<|im_end|>`` and a
  newline), the observation message with its header and footer, and the next assistant header.
  A turn that stopped at the end-of-turn token already holds that token, so it is not repeated;
- the probe: the assistant's answer turn as the template renders it after the assistant header,
  with the gold answer cut out, so the IG probe looks exactly like the model's own answers.

Texts are rendered with ``tokenize=False`` and encoded with ``add_special_tokens=False`` (the
template already writes any BOS), so in transformers 5 no ``BatchEncoding`` is involved.

Every function takes the rollout's prompt settings as keywords: ``system_prompt`` (None = the
protocol's), ``protocol`` (a name or :class:`~a2tgpo_lab.protocol.Protocol`; None = the default) and
``few_shot`` (the protocol's worked example dialogue before the question). :func:`prompt_options`
reads all three from a config.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from .protocol import Protocol, get_protocol

ProtocolLike = Union[str, Protocol, None]

# Plain words (no markup a template could escape or strip) that no real text contains.
_TURN_PLACEHOLDER = "ZQXASSISTANTTURNZQX"
_OBSERVATION_PLACEHOLDER = "ZQXOBSERVATIONZQX"
_GOLD_PLACEHOLDER = "ZQXGOLDANSWERZQX"
_QUESTION_PLACEHOLDER = "ZQXQUESTIONZQX"


def require_chat_template(tokenizer) -> None:
    """Raise a ValueError that says what to do when ``tokenizer`` has no chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            "The tokenizer has no chat template, which the multi-turn protocol needs to render turns. Use a "
            "chat/-Instruct model, or set tokenizer.chat_template (a2tgpo_lab.tiny.CHATML_TEMPLATE is a ChatML "
            "template) before generating rollouts.")


def render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The chat template applied to ``messages``, as text."""
    require_chat_template(tokenizer)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with no special tokens added (templates write their own)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_options(cfg) -> dict:
    """The prompt keywords of the functions below, from an ``A2TGPOConfig``."""
    return dict(system_prompt=cfg.system_prompt, protocol=cfg.protocol, few_shot=cfg.few_shot)


def prompt_messages(question: str, system_prompt: Optional[str] = None, protocol: ProtocolLike = None,
                    few_shot: bool = False, observation_role: str = "user") -> list[dict]:
    """``[system, (worked example,) user]`` messages.

    ``system_prompt=None`` uses the protocol's, ``""`` omits the system message; ``few_shot`` puts
    the protocol's example dialogue (its observation in ``observation_role``) before the question.
    """
    chosen = get_protocol(protocol)
    system = chosen.system_prompt if system_prompt is None else system_prompt
    head = [{"role": "system", "content": system}] if system else []
    example = chosen.demonstration(observation_role) if few_shot else []
    return head + example + [{"role": "user", "content": question}]


def prompt_ids(tokenizer, question: str, system_prompt: Optional[str] = None, protocol: ProtocolLike = None,
               few_shot: bool = False, observation_role: str = "user") -> list[int]:
    """The rendered prompt (system, question, assistant header) as token ids."""
    messages = prompt_messages(question, system_prompt, protocol, few_shot, observation_role)
    return encode(tokenizer, render(tokenizer, messages, add_generation_prompt=True))


def _split_once(text: str, placeholder: str, what: str) -> tuple[str, str]:
    """(text before, text after) the single occurrence of ``placeholder``."""
    if text.count(placeholder) != 1:
        raise ValueError(f"The chat template does not render the {what} verbatim exactly once, so the turn "
                         "boundaries cannot be derived from it; use a template that copies message content as is.")
    before, after = text.split(placeholder)
    return before, after


@dataclass(frozen=True)
class ObservationTemplate:
    """The token ids around an observation, derived once from the chat template.

    ``close_ids + header_ids + encode(observation) + footer_ids`` is what follows an assistant turn's
    text: the end of the assistant turn, the observation message, and the next assistant header.
    """

    close_ids: list[int]
    header_ids: list[int]
    footer_ids: list[int]

    def between_turns(self, observation_ids: list[int], turn_closed: bool) -> list[int]:
        """Ids that go between an assistant turn and the next one.

        ``turn_closed``: the turn's last generated token is already the template's end-of-turn token
        (generation stopped at EOS), so ``close_ids[0]`` is not inserted a second time.
        """
        close = self.close_ids[1:] if turn_closed else self.close_ids
        return close + self.header_ids + list(observation_ids) + self.footer_ids


def observation_template(tokenizer, role: str = "user", system_prompt: Optional[str] = None,
                         protocol: ProtocolLike = None, few_shot: bool = False) -> ObservationTemplate:
    """Derive the observation pieces by rendering the dialogue with and without the observation.

    ``A`` = prompt + assistant turn (no generation prompt) and ``B`` = prompt + assistant turn +
    observation message + generation prompt, with placeholder words for the turn and the
    observation. In ``A`` the text after the turn's placeholder is the template's end of an
    assistant turn (``close``); in ``B`` the text after the turn's placeholder is ``close`` +
    observation header, the observation's placeholder, then the footer and next assistant header.
    The difference is taken on the text after the turn's placeholder, not on whole renderings,
    because templates may render the last assistant message differently from earlier ones (Qwen3
    adds an empty think block only to the last one).
    """
    require_chat_template(tokenizer)
    head = prompt_messages(_QUESTION_PLACEHOLDER, system_prompt, protocol, few_shot, role)
    turn = {"role": "assistant", "content": _TURN_PLACEHOLDER}
    observation = {"role": role, "content": _OBSERVATION_PLACEHOLDER}
    try:
        with_observation = render(tokenizer, head + [turn, observation], add_generation_prompt=True)
    except Exception as error:  # templates raise their own errors (e.g. an unknown role)
        raise ValueError(f"The chat template cannot render an observation with role {role!r} ({error}); "
                         "set A2TGPOConfig.observation_role='user'.") from error
    _, after_turn = _split_once(render(tokenizer, head + [turn], add_generation_prompt=False),
                                _TURN_PLACEHOLDER, "assistant turn")
    _, between = _split_once(with_observation, _TURN_PLACEHOLDER, "assistant turn")
    header, footer = _split_once(between, _OBSERVATION_PLACEHOLDER, "observation")
    close = after_turn if header.startswith(after_turn) else ""
    # A template whose last assistant message ends differently from a middle one (rare) leaves
    # close empty: the whole separator then counts as observation header, which is still exact.
    return ObservationTemplate(close_ids=encode(tokenizer, close),
                               header_ids=encode(tokenizer, header[len(close):]),
                               footer_ids=encode(tokenizer, footer))


def observation_ids(tokenizer, text: str, role: str = "user", turn_closed: bool = True,
                    max_tokens: Optional[int] = None, system_prompt: Optional[str] = None,
                    protocol: ProtocolLike = None, few_shot: bool = False) -> list[int]:
    """The token ids between an assistant turn and the next assistant turn for observation ``text``.

    The observation's own tokens are cut to ``max_tokens``; the template's tokens around it are
    kept whole. See :func:`observation_template` for how the ids are derived.
    """
    template = observation_template(tokenizer, role, system_prompt, protocol, few_shot)
    body = encode(tokenizer, text)
    return template.between_turns(body if max_tokens is None else body[:max_tokens], turn_closed)


@dataclass(frozen=True)
class ProbeSuffix:
    """The teacher-forced answer turn of the IG probe, in three pieces of token ids.

    The probe after context c is ``c + prefix_ids + gold_ids + suffix_ids``; only ``gold_ids`` are
    scored. ``text`` is the whole suffix, decoded, for display.
    """

    prefix_ids: list[int]
    gold_ids: list[int]
    suffix_ids: list[int]
    text: str


def probe_suffix(tokenizer, gold: str, system_prompt: Optional[str] = None, protocol: ProtocolLike = None,
                 few_shot: bool = False) -> ProbeSuffix:
    """The probe suffix for ``gold``: the protocol's answer turn for it + end of turn
    (``PROBE_PREFIX <answer> gold </answer>``; paper: ``<think> … </think> <answer> \\boxed{gold} </answer>``).

    It is the template's rendering of an assistant answer turn after the generation prompt (the
    context already ends with the assistant header), so it matches how the model answers,
    including anything a template puts before the content (Qwen3's empty think block). The
    whitespace before the gold placeholder is kept with the gold tokens, as a BPE tokenizer
    encodes a word with its leading space.
    """
    if not isinstance(gold, str) or not gold.strip():
        raise ValueError(f"probe_suffix: gold={gold!r} must be a non-empty answer string.")
    head = prompt_messages(_QUESTION_PLACEHOLDER, system_prompt, protocol, few_shot)
    content = get_protocol(protocol).format_answer(_GOLD_PLACEHOLDER)
    header = render(tokenizer, head, add_generation_prompt=True)
    answered = render(tokenizer, head + [{"role": "assistant", "content": content}], add_generation_prompt=False)
    if not answered.startswith(header):
        raise ValueError("The chat template renders an assistant message differently from its generation prompt, "
                         "so the IG probe cannot be appended to a rollout's context.")
    before, after = _split_once(answered[len(header):], _GOLD_PLACEHOLDER, "probe answer")
    stripped = before.rstrip()
    gold_text = before[len(stripped):] + gold
    gold_ids = encode(tokenizer, gold_text)
    if not gold_ids:
        raise ValueError(f"probe_suffix: the gold answer {gold!r} encodes to no tokens.")
    return ProbeSuffix(prefix_ids=encode(tokenizer, stripped), gold_ids=gold_ids,
                       suffix_ids=encode(tokenizer, after), text=stripped + gold_text + after)
