"""The loop guard: a looping or scaffolding answer never reaches a person as it is."""

from __future__ import annotations

import pytest

from agent.engines import ScriptedEngine, scripted_model
from agent.loop_guard import collapse_repeats, guard_answer, strip_scaffolding
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage
from agent.tools import ToolRunner
from tests.conftest import final, reply_to, step


@pytest.mark.parametrize(
    ("looping", "first"),
    [
        ("The standup is at 9:30. The standup is at 9:30. The standup is at 9:30.", "The standup is at 9:30."),
        ("84 84 84 84 84", "84"),
        # Cut off by the token limit in the middle of a copy: the partial copy goes too.
        ("The standup is at 9:30. The standup is at 9:30. The standup", "The standup is at 9:30."),
        # A loop after a good start keeps the start.
        ("12*7 is 84. The answer is 84. The answer is 84. The answer is 84.", "12*7 is 84. The answer is 84."),
    ],
)
def test_a_repeated_phrase_is_cut_to_its_first_occurrence(looping: str, first: str) -> None:
    assert guard_answer(looping) == first


@pytest.mark.parametrize(
    "fine",
    [
        "Hello! I'm Parley, an assistant for this team.",
        "very very good",  # emphasis: a short phrase needs three copies to count as a loop
        "1000000",
        "ha ha hat",
        "The answer: 84",
        "I don't know.",
    ],
)
def test_ordinary_answers_pass_unchanged(fine: str) -> None:
    assert guard_answer(fine) == fine


def test_a_loop_with_nothing_useful_left_becomes_the_tool_result() -> None:
    looping = "The answer is: The answer is: The answer is: The answer is: The answer"
    assert collapse_repeats(looping) == "The answer is:"
    assert guard_answer(looping, ["Completed.", "84"]) == "84"


def test_errors_and_refusals_are_not_results_to_fall_back_on() -> None:
    observations = ["Error: cannot parse '12 times 7' as arithmetic", "Not run: denied", "Completed."]
    assert guard_answer("The answer is: The answer is: The answer is:", observations) == ""


@pytest.mark.parametrize(
    ("leaky", "clean"),
    [
        ('{"answer": "84"}', "84"),
        ('{"reasoning": "", "answer": "Paris"}', "Paris"),
        ("[[ ## answer ## ]]\n84", "84"),
        ("answer: It is 9:30.", "It is 9:30."),
    ],
)
def test_json_and_field_names_do_not_leak_into_the_answer(leaky: str, clean: str) -> None:
    assert strip_scaffolding(leaky) == clean
    assert guard_answer(leaky) == clean


def ask(text: str) -> IncomingMessage:
    return IncomingMessage(platform="console", channel="c", user="u", text=text)


async def test_the_agent_answers_the_calculators_result_instead_of_a_loop(storage: Storage, runner: ToolRunner) -> None:
    # The run: the calculator returned 84, then the extract step looped until max_tokens.
    engine = ScriptedEngine(
        [
            step("calculator", expression="12*7"),
            step("finish"),
            final("The answer is: " * 40 + "The answer"),
        ]
    )
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=4))
    reply = await reply_to(agent, ask("what is 12*7?"))
    assert reply.status == "answered"
    assert reply.text == "84"
    assert reply.steps[-1].observation == "84"  # the recorded conclusion is what the person saw


async def test_a_loop_without_any_result_gets_the_honest_reply(storage: Storage, runner: ToolRunner) -> None:
    engine = ScriptedEngine([step("finish"), final("The answer is: " * 40)])
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=4))
    reply = await reply_to(agent, ask("hello, who are you?"))
    assert reply.status == "unanswered"
    assert reply.text.startswith("I couldn't work out an answer")
