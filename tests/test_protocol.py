"""The two tag protocols: parsing turns, the paper's format rule (Eq. 14-15), observations, prompts."""
from __future__ import annotations

import pytest

from a2tgpo_lab.chat import prompt_messages
from a2tgpo_lab.protocol import PaperProtocol, Protocol, get_protocol, last_boxed, parse_action
from a2tgpo_lab.rewards import outcome_reward

PAPER = get_protocol("paper")
THINK = "<think> I should look it up. </think>"


def test_protocols_by_name():
    assert isinstance(get_protocol(None), Protocol) and get_protocol("search_r1").name == "search_r1"
    assert isinstance(PAPER, PaperProtocol) and get_protocol(PAPER) is PAPER
    with pytest.raises(ValueError, match="search_r1"):
        get_protocol("react")


@pytest.mark.parametrize("turn, earlier, expected", [
    (f"{THINK} <search> capital of peru </search>", (), ("search", "capital of peru")),
    ("<search> capital of peru </search>", (), ("search", "capital of peru")),  # think is a rollout-level rule
    (r"<think> Found it. </think> <answer> The final answer is \boxed{Lima} </answer>", (), ("answer", "Lima")),
    (r"<answer> \boxed{ Lima } </answer>", (f"{THINK} <search> peru </search>",), ("answer", "Lima")),
    (r"<answer> \boxed{Lima} </answer>", ("<search> peru </search>",),
     ("malformed", "no <think> block in the rollout (format rule)")),
    ("<think> done </think> <answer> Lima </answer>", (), ("malformed", "answer without \\boxed{}")),
    (r"<think> done </think> <answer> \boxed{} </answer>", (), ("malformed", "empty \\boxed{}")),
    (r"<think> a <answer> \boxed{Lima} </answer>", (), ("malformed", "unbalanced <think> tags")),
    (f"{THINK} <search> q </search> <result> made up </result>", (),
     ("malformed", "the turn writes its own <result> (results come from the tool)")),
    (f"{THINK} <search> q </search> <answer> \\boxed{{x}} </answer>", (),
     ("malformed", "more than one action in one turn")),
    (THINK, (), ("malformed", "no <search> or <answer> tag")),
])
def test_paper_protocol_turns(turn, earlier, expected):
    action = PAPER.parse_action(turn, earlier)
    assert (action.kind, action.content) == expected


def test_last_boxed_takes_the_last_and_keeps_nested_braces():
    assert last_boxed(r"\boxed{a} then \boxed{x^{2} + {y}}") == "x^{2} + {y}"
    assert last_boxed(r"\boxed{unclosed") is None and last_boxed("no box") is None


def test_default_protocol_is_unchanged_and_ignores_think_and_boxed():
    assert parse_action("<search> q </search>") == Protocol().parse_action("<search> q </search>", ("x",))
    assert parse_action(r"<answer> \boxed{Lima} </answer>").content == r"\boxed{Lima}"


def test_paper_format_rule_sets_the_reward():
    """Eq. 15: r = EM when the rollout is well-formed (Eq. 14), the format penalty otherwise."""
    def reward(turns, golds=("Lima",)):
        action = PAPER.parse_action(turns[-1], turns[:-1])
        return outcome_reward(action.content if action.kind == "answer" else None, golds,
                              malformed=action.kind != "answer", format_penalty=-1.0)

    search = f"{THINK} <search> capital of peru </search>"
    assert reward([search, r"<answer> The final answer is \boxed{Lima} </answer>"]) == 1.0
    assert reward([search, r"<answer> \boxed{Cusco} </answer>"]) == 0.0
    assert reward(["<search> capital of peru </search>", r"<answer> \boxed{Lima} </answer>"]) == -1.0
    assert reward([search, "<answer> Lima </answer>"]) == -1.0


def test_formatted_turns_parse_back():
    for protocol in (get_protocol("search_r1"), PAPER):
        assert protocol.parse_action(protocol.format_search("peru capital")) == get_protocol(None).parse_action(
            "<search> peru capital </search>")
        answer = protocol.parse_action(protocol.format_answer("Lima"))
        assert (answer.kind, answer.content) == ("answer", "Lima")
    assert PAPER.format_answer("Lima").startswith("<think> I have enough information to answer. </think>")


def test_paper_observations_use_result_tags():
    tool_output = get_protocol(None).format_observation(["Lima is the capital of Peru ."])
    assert tool_output.startswith("<information>")
    assert PAPER.observation(tool_output) == "<result> Doc 1 : Lima is the capital of Peru . </result>"
    assert PAPER.observation("<result> kept </result>") == "<result> kept </result>"
    assert PAPER.observation("plain text") == "<result> plain text </result>"
    assert get_protocol(None).observation(tool_output) == tool_output


def test_prompts_follow_the_protocol_and_few_shot():
    plain = prompt_messages("q?", protocol="paper")
    assert plain[0] == {"role": "system", "content": PAPER.system_prompt} and plain[-1]["content"] == "q?"
    assert "\\boxed{" in PAPER.system_prompt and "<result>" in PAPER.system_prompt
    shots = prompt_messages("q?", protocol="paper", few_shot=True, observation_role="tool")
    assert [m["role"] for m in shots] == ["system"] + ["user", "assistant", "tool", "assistant"] * 2 + ["user"]
    for i in (2, 6):  # the worked examples obey the protocol they demonstrate
        assert PAPER.parse_action(shots[i]["content"]).kind == "search"
        assert shots[i + 1]["content"].startswith("<result>")
        assert PAPER.parse_action(shots[i + 2]["content"], [shots[i]["content"]]).kind == "answer"
    assert prompt_messages("q?", system_prompt="", few_shot=False) == [{"role": "user", "content": "q?"}]
