"""The guide: the steps and answers the embedded model is not trusted with, decided by rule."""

from __future__ import annotations

import pytest

from agent.guide import (
    DONT_KNOW,
    FINISH,
    decide_answer,
    decide_step,
    expression,
    first_step,
    unknown_private,
)
from agent.tools.builtins import current_time
from agent.tools.registry import ToolError
from agent.tools.timezones import zone_in

TOOLS = frozenset({"calculator", "current_time", "remember_fact", "recall_facts", FINISH})
LAST_TURN = "Recent conversation:\nuser: what is 7*8?\nassistant: 7*8 = 56"


@pytest.mark.parametrize(
    ("question", "expr"),
    [
        ("what is 12*7?", "12*7"),
        ("What's 15 + 27?", "15 + 27"),
        ("what is 100 divided by 4?", "100 / 4"),
        ("what is the square root of 144?", "sqrt(144)"),
        ("what is 2 to the power of 10?", "2 ** 10"),
        ("what is 25% of 80?", "(25/100*80)"),
        ("what is 9 minus 13?", "9 - 13"),
        ("calculate 3.5 times 4", "3.5 * 4"),
        ("and what is that plus 10?", "56 + 10"),  # "that" is the previous answer's number
    ],
)
def test_arithmetic_is_read_off_the_question(question: str, expr: str) -> None:
    assert expression(question, LAST_TURN) == expr
    assert first_step(question, LAST_TURN, TOOLS) is not None


@pytest.mark.parametrize(
    "question",
    [
        "hello, who are you?",
        "what is the capital of France?",
        "when is the standup at 9:30?",
        "what is 42?",  # nothing to compute
        "what is 2+2 and why?",  # more than arithmetic: the model's
        "and what is that plus 10?",  # no earlier answer to refer to
        "what is 1/0?",  # the calculator would refuse it
    ],
)
def test_other_questions_are_not_arithmetic(question: str) -> None:
    assert expression(question) is None


@pytest.mark.parametrize(
    ("question", "zone"),
    [
        ("what time is it in Tokyo?", "Asia/Tokyo"),
        ("what's the time in new york", "America/New_York"),
        ("what time is it in London?", "Europe/London"),
        ("what is the time in UTC?", "UTC"),
        ("what day of the week is it today?", "UTC"),  # no place: UTC, the tool's default
    ],
)
def test_the_time_somewhere_goes_to_the_clock_of_that_place(question: str, zone: str) -> None:
    step = first_step(question, "", TOOLS)
    assert step is not None and (step.tool, step.args) == ("current_time", {"timezone": zone})
    assert zone_in("istanbul") == "Asia/Istanbul"  # two zones share the place: the shorter name wins


@pytest.mark.parametrize("question", ["what should I do today?", "time to go", "what is the capital of France today?"])
def test_mentioning_a_day_is_not_asking_the_time(question: str) -> None:
    assert first_step(question, "", TOOLS) is None


def test_disabled_tools_are_never_chosen() -> None:
    assert first_step("what is 12*7?", "", {FINISH}) is None
    assert first_step("what time is it in Tokyo?", "", {"calculator"}) is None


def trajectory(tool: str, args: str, observation: str) -> str:
    return "\n\n".join(
        [
            "[[ ## thought_0 ## ]]\n",
            f"[[ ## tool_name_0 ## ]]\n{tool}",
            f"[[ ## tool_args_0 ## ]]\n{args}",
            f"[[ ## observation_0 ## ]]\n{observation}",
        ]
    )


def step_for(question: str, steps: str = "") -> tuple[str, object]:
    decided = decide_step({"question": question, "context": "", "trajectory": steps}, TOOLS)
    return decided["next_tool_name"], decided["next_tool_args"]


def test_one_tool_call_then_finish() -> None:
    assert step_for("what is 12*7?") == ("calculator", {"expression": "12*7"})
    assert step_for("what is 12*7?", trajectory("calculator", '{"expression": "12*7"}', "84")) == (FINISH, {})
    # Anything not plainly arithmetic or the time goes straight to the answer: no tool the model might misuse.
    assert step_for("thanks for your help!") == (FINISH, {})


@pytest.mark.parametrize(
    ("tool", "args", "observation", "answer"),
    [
        ("calculator", '{"expression": "9 - 13"}', "-4", "9 - 13 = -4"),
        (
            "current_time",
            '{"timezone": "Asia/Tokyo"}',
            "Wednesday 2026-12-02 01:40:12 JST (UTC+0900)",
            "It's 01:40 on Wednesday 2026-12-02 in Asia/Tokyo (JST).",
        ),
        ("current_time", '{"timezone": "UTC"}', "Tuesday 2026-12-01 16:40:12 UTC (UTC+0000)", None),
    ],
)
def test_tool_results_are_stated_by_template(tool: str, args: str, observation: str, answer: str | None) -> None:
    decided = decide_answer({"question": "q", "context": "", "trajectory": trajectory(tool, args, observation)})
    assert decided is not None
    assert decided["answer"] == (answer or "It's 16:40 on Tuesday 2026-12-01 in UTC.")


def test_a_failed_tool_call_leaves_the_answer_to_the_model() -> None:
    failed = trajectory("calculator", '{"expression": "1/0"}', "Error: division by zero")
    assert decide_answer({"question": "what is 1/0?", "context": "", "trajectory": failed}) is None


def test_private_questions_nothing_remembered_mentions_get_i_dont_know() -> None:
    assert unknown_private("who is the CEO of our company?", "(nothing remembered yet)")
    assert unknown_private("what is the name of my dog?", "Recent conversation:\nuser: what is my dog called?")
    assert not unknown_private("what is the name of my dog?", "Recent conversation:\nuser: my dog is Rex")
    assert not unknown_private("when is our standup?", "Known facts:\n- standup: the standup is at 9:30")
    assert not unknown_private("what is the capital of France?", "")
    decided = decide_answer({"question": "who is our CEO?", "context": "", "trajectory": ""})
    assert decided == {"reasoning": "", "answer": DONT_KNOW}


@pytest.mark.parametrize(("place", "zone"), [("Tokyo", "JST"), ("new york", "E"), ("Europe/Paris", "CE"), ("", "UTC")])
async def test_the_clock_takes_a_city_as_well_as_a_zone(place: str, zone: str) -> None:
    """A real model often passes the city it was asked about: the tool maps it to the city's zone."""
    assert zone in await current_time(place)


async def test_the_clock_refuses_a_place_it_cannot_find() -> None:
    with pytest.raises(ToolError, match="unknown timezone"):
        await current_time("Atlantis")
