"""The agent's text protocol: how a turn calls the search tool, how it answers, how results come back.

Two protocols, chosen by ``A2TGPOConfig.protocol``; both are tags inside plain chat messages rather
than a model family's native tool-call JSON, so they work with every chat template.

``"search_r1"`` (default; the bundled tiny model is trained on it), Search-R1-style tags::

    assistant:  <search> founder of Velmora </search>
    user:       <information> Doc 1 : Velmora was founded by Tarsk . Doc 2 : ... </information>
    assistant:  <search> Tarsk born </search>
    user:       <information> ... </information>
    assistant:  I have enough information to answer . <answer> Oslund </answer>

``"paper"``, the schema of the paper's App. B.2 (Fig. 6): reasoning in ``<think>``, tool results in
``<result>``, the answer's exact span in ``\\boxed{}``::

    assistant:  <think> I need the founder first. </think> <search> founder of Velmora </search>
    user:       <result> Doc 1 : Velmora was founded by Tarsk . </result>
    assistant:  <think> I have enough information to answer. </think> <answer> \\boxed{Tarsk} </answer>

and its format rule (Eq. 14-15): a rollout is well-formed only if it holds a ``<think> … </think>``
block and its ``<answer>`` holds a ``\\boxed{…}``; otherwise its reward is the format penalty. Here the
rule is checked turn by turn: the answer turn is malformed when neither it nor an earlier turn has a
think block, or when its answer has no ``\\boxed{}``.

One assistant turn holds exactly one action. Anything else (no tag, unbalanced tags, both tags, an
empty query; in the paper protocol also a turn that writes its own ``<result>``) is ``malformed``: the
rollout ends there and the turn is penalised with the format penalty; it is never an exception.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal, Sequence, Union

SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
RESULT_OPEN, RESULT_CLOSE = "<result>", "</result>"
BOXED = "\\boxed{"
TAGS = (SEARCH_OPEN, SEARCH_CLOSE, ANSWER_OPEN, ANSWER_CLOSE, INFO_OPEN, INFO_CLOSE)

SYSTEM_PROMPT = (
    "Answer the question . To look something up write <search> query </search> and read the "
    "<information> that comes back . When you know the answer write <answer> answer </answer> ."
)

# The teacher-forced line the IG probe puts before the gold answer (ALGORITHM.md §1). The bundled
# tiny model's demonstrations use the same line before every answer, so the probe is in-distribution.
PROBE_PREFIX = "I have enough information to answer ."

# Separator between the parts of a multi-part answer ("Tarsk ; Oslund").
ANSWER_PART_SEPARATOR = ";"

ActionKind = Literal["search", "answer", "malformed"]


@dataclass(frozen=True)
class Action:
    """What one assistant turn asked for. ``content`` is the query, the answer, or why it is malformed."""

    kind: ActionKind
    content: str


_SEARCH_RE = re.compile(re.escape(SEARCH_OPEN) + r"(.*?)" + re.escape(SEARCH_CLOSE), re.S)
_ANSWER_RE = re.compile(re.escape(ANSWER_OPEN) + r"(.*?)" + re.escape(ANSWER_CLOSE), re.S)
_THINK_RE = re.compile(re.escape(THINK_OPEN) + r".*?" + re.escape(THINK_CLOSE), re.S)


def _one_action(turn_text: str) -> Action:
    """The single ``<search>`` or ``<answer>`` of a turn, its content whitespace-collapsed."""
    counts = {tag: turn_text.count(tag) for tag in (SEARCH_OPEN, SEARCH_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)}
    n_search, n_answer = counts[SEARCH_OPEN], counts[ANSWER_OPEN]
    if counts[SEARCH_OPEN] != counts[SEARCH_CLOSE] or counts[ANSWER_OPEN] != counts[ANSWER_CLOSE]:
        return Action("malformed", "unbalanced tags")
    if n_search + n_answer == 0:
        return Action("malformed", "no <search> or <answer> tag")
    if n_search + n_answer > 1:
        return Action("malformed", "more than one action in one turn")
    match = (_SEARCH_RE if n_search else _ANSWER_RE).search(turn_text)
    if match is None:
        return Action("malformed", "closing tag before opening tag")
    content = " ".join(match.group(1).split())
    if not content:
        return Action("malformed", "empty " + ("query" if n_search else "answer"))
    return Action("search" if n_search else "answer", content)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}`` in ``text`` (nested braces allowed), or None."""
    start = text.rfind(BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(BOXED)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None


class Protocol:
    """The Search-R1-style protocol (``"search_r1"``); :class:`PaperProtocol` changes what differs.

    Attributes: ``name``; ``system_prompt`` (the default instruction); ``probe_prefix`` (the
    teacher-forced line before the gold answer in the IG probe, also written by :meth:`format_answer`);
    ``observation_open`` / ``observation_close`` (the tags around a tool result).
    """

    name = "search_r1"
    system_prompt = SYSTEM_PROMPT
    probe_prefix = PROBE_PREFIX
    observation_open, observation_close = INFO_OPEN, INFO_CLOSE

    def parse_action(self, turn_text: str, earlier_turns: Sequence[str] = ()) -> Action:
        """Parse one assistant turn into a search, an answer, or a malformed action (never raises).

        ``earlier_turns``: the rollout's previous assistant turns (the paper's format rule looks at them).
        """
        return _one_action(turn_text)

    def format_observation(self, passages: Sequence[str]) -> str:
        """The text of a tool observation: the retrieved passages, numbered, inside the observation tags."""
        body = " ".join(f"Doc {i} : {p}" for i, p in enumerate(passages, start=1))
        return f"{self.observation_open} {body} {self.observation_close}"

    def observation(self, tool_output: str) -> str:
        """The observation text for a tool's output; tools written for the default protocol return
        ``<information> … </information>``, which another protocol re-tags with its own tags."""
        return tool_output

    def truncate_observation(self, observation: str, max_tokens: int, encode: Callable[[str], list[int]]) -> list[int]:
        """The token ids of ``observation``, at most ``max_tokens`` of them, ending with its closing tag.

        A long result loses the end of its body, never the closing tag: without it the model would see a
        result that never ends. ``encode``: text → token ids (no special tokens)."""
        ids = encode(observation)
        text = observation.rstrip()
        if len(ids) <= max_tokens or not text.endswith(self.observation_close):
            return ids[:max_tokens]
        tail = encode(" " + self.observation_close)
        head = encode(text[: -len(self.observation_close)].rstrip())
        return (head[: max(0, max_tokens - len(tail))] + tail)[:max_tokens]

    def format_search(self, query: str) -> str:
        """An assistant turn that searches for ``query`` (demonstrations and tests)."""
        return f"{SEARCH_OPEN} {query} {SEARCH_CLOSE}"

    def format_answer(self, answer: str, with_probe_prefix: bool = True) -> str:
        """An assistant turn that answers; the probe prefix line is what the IG probe teacher-forces."""
        prefix = self.probe_prefix + " " if with_probe_prefix else ""
        return f"{prefix}{ANSWER_OPEN} {answer} {ANSWER_CLOSE}"

    def demonstration(self, observation_role: str = "user") -> list[dict]:
        """Two worked example dialogues (question, search, result, answer) as chat messages, for few-shot
        prompting (``A2TGPOConfig.few_shot``). About real-world facts, so they cannot leak a task's
        answer. Two, because SmolLM2-135M-Instruct searched first in 4 of 12 samples with one example
        and in 12 of 12 with two (temperature 1)."""
        examples = [("In which city is the Colosseum?", "Colosseum",
                     ["The Colosseum is an ancient amphitheatre in the centre of Rome , Italy ."], "Rome"),
                    ("where was Marie Curie born ?", "Marie Curie born",
                     ["Marie Curie was born in Warsaw .", "Marie Curie won two Nobel prizes ."], "Warsaw")]
        messages = []
        for question, query, passages, answer in examples:
            messages += [{"role": "user", "content": question},
                         {"role": "assistant", "content": self.format_search(query)},
                         {"role": observation_role, "content": self.format_observation(passages)},
                         {"role": "assistant", "content": self.format_answer(answer)}]
        return messages


class PaperProtocol(Protocol):
    """The paper's schema (App. B.2): ``<think>``, ``<search>``, ``<result>``, ``<answer> … \\boxed{a} </answer>``.

    Turn rules on top of the default ones: balanced ``<think>`` tags; no ``<result>`` written by the
    model (results come from the tool); an answer must hold ``\\boxed{…}`` and its content is the
    answer; the answer turn needs a think block in itself or an earlier turn (Eq. 14).
    """

    name = "paper"
    system_prompt = (
        "You answer questions step by step and can search Wikipedia. Before every action, reason inside "
        "<think> </think>. To look something up, write <search> query </search>; the passages found come "
        "back inside <result> </result>. Search as many times as you need. When you know the answer, "
        "write <answer> The final answer is \\boxed{answer} </answer>, with only the short, exact answer "
        "inside \\boxed{}."
    )
    probe_prefix = "I have enough information to answer."
    observation_open, observation_close = RESULT_OPEN, RESULT_CLOSE

    def parse_action(self, turn_text: str, earlier_turns: Sequence[str] = ()) -> Action:
        if RESULT_OPEN in turn_text or RESULT_CLOSE in turn_text:
            return Action("malformed", "the turn writes its own <result> (results come from the tool)")
        if turn_text.count(THINK_OPEN) != turn_text.count(THINK_CLOSE):
            return Action("malformed", "unbalanced <think> tags")
        action = _one_action(turn_text)
        if action.kind != "answer":
            return action
        boxed = last_boxed(action.content)
        if boxed is None:
            return Action("malformed", "answer without \\boxed{}")
        answer = " ".join(boxed.split())
        if not answer:
            return Action("malformed", "empty \\boxed{}")
        if not any(_THINK_RE.search(text) for text in (*earlier_turns, turn_text)):
            return Action("malformed", "no <think> block in the rollout (format rule)")
        return Action("answer", answer)

    def observation(self, tool_output: str) -> str:
        body = tool_output.strip()
        if body.startswith(RESULT_OPEN) and body.endswith(RESULT_CLOSE):
            return body
        if body.startswith(INFO_OPEN) and body.endswith(INFO_CLOSE):
            body = body[len(INFO_OPEN):-len(INFO_CLOSE)].strip()
        return f"{RESULT_OPEN} {body} {RESULT_CLOSE}"

    def format_search(self, query: str, thought: str = "I need to look this up.") -> str:
        return f"{THINK_OPEN} {thought} {THINK_CLOSE} {SEARCH_OPEN} {query} {SEARCH_CLOSE}"

    def format_answer(self, answer: str, with_probe_prefix: bool = True) -> str:
        thought = f"{THINK_OPEN} {self.probe_prefix} {THINK_CLOSE} " if with_probe_prefix else ""
        return f"{thought}{ANSWER_OPEN} {BOXED}{answer}}} {ANSWER_CLOSE}"


PROTOCOLS: dict[str, Protocol] = {"search_r1": Protocol(), "paper": PaperProtocol()}


def get_protocol(protocol: Union[str, Protocol, None] = None) -> Protocol:
    """The protocol named ``protocol`` (``None`` → the default ``"search_r1"``); an instance passes through."""
    if isinstance(protocol, Protocol):
        return protocol
    name = "search_r1" if protocol is None else protocol
    if name not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not known; choose one of {sorted(PROTOCOLS)}.")
    return PROTOCOLS[name]


# The default protocol's functions, for code written before protocols were selectable.
_DEFAULT = PROTOCOLS["search_r1"]


def parse_action(turn_text: str) -> Action:
    """Parse one assistant turn of the default protocol (see :meth:`Protocol.parse_action`)."""
    return _DEFAULT.parse_action(turn_text)


def format_observation(passages: Sequence[str]) -> str:
    """The default protocol's observation: numbered passages inside information tags."""
    return _DEFAULT.format_observation(passages)


def format_search(query: str) -> str:
    """A default-protocol assistant turn that searches for ``query``."""
    return _DEFAULT.format_search(query)


def format_answer(answer: str, with_probe_prefix: bool = True) -> str:
    """A default-protocol assistant turn that answers (with the probe prefix line by default)."""
    return _DEFAULT.format_answer(answer, with_probe_prefix)


def protocol_words() -> list[str]:
    """Every word of the default protocol's text, so a word-level tokenizer can cover it."""
    text = " ".join([SYSTEM_PROMPT, PROBE_PREFIX, format_observation(["x"]), "Doc 1 2 3 4 5 6 7 8 9 10",
                     ANSWER_PART_SEPARATOR])
    return sorted(set(text.split()) - set(TAGS) - {"x"})
