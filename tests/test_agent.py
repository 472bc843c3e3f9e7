"""The agent with a scripted engine: trajectories, memory in the prompt, bad input and failing models."""

from __future__ import annotations

import json

import pytest
from dspy.lm15 import ServerError

from agent.engines import ScriptedEngine
from agent.engines.scripted import request_text
from agent.messages import IncomingMessage
from agent.profile import ChannelProfile
from agent.runtime import Agent, fact_from_statement
from agent.storage import Storage
from bot.answering import answer
from tests.conftest import final, reply_to, step


def msg(text: str, channel: str = "team", user: str = "alice") -> IncomingMessage:
    return IncomingMessage(platform="console", channel=channel, user=user, text=text)


async def test_calculator_question_has_the_tool_call_and_right_answer(
    agent: Agent, engine: ScriptedEngine, storage: Storage
) -> None:
    engine.add(step("calculator", expression="12*7"), step("finish"), final("12*7 is 84."))
    reply = await reply_to(agent, msg("what is 12*7?"))
    assert reply.status == "answered"
    assert reply.text == "12*7 is 84."
    assert reply.steps[0].tool == "calculator"
    assert reply.steps[0].args == {"expression": "12*7"}
    assert reply.steps[0].observation == "84"  # computed by the real tool, not scripted
    assert "84" in request_text(engine.requests[-1])  # the observation reached the extract step
    assert reply.chain_id is not None
    stored = await storage.chains.steps(reply.chain_id)
    assert [(s.kind, s.tool) for s in stored] == [("action", "calculator"), ("thought", "finish"), ("conclusion", "")]
    assert stored[0].outcome == "ok" and stored[0].tool_ms is not None and stored[0].model_ms is not None
    assert stored[-1].observation == "12*7 is 84."
    assert [t.role for t in await storage.turns.of_channel("team")] == ["user", "assistant"]


async def test_remembered_fact_is_in_the_next_prompt(agent: Agent, engine: ScriptedEngine) -> None:
    engine.add(step("remember_fact", key="deploy day", value="Thursday"), step("finish"), final("Noted."))
    first = await reply_to(agent, msg("please note deploys happen on Thursday"))
    assert first.steps[0].observation == "Remembered deploy day: Thursday"

    engine.add(step("finish"), final("Thursday."))
    await reply_to(agent, msg("which day is the deploy?"))
    prompt = request_text(engine.requests[-2])
    assert "deploy day: Thursday" in prompt


async def test_explicit_remember_is_stored_without_the_model(
    agent: Agent, engine: ScriptedEngine, storage: Storage
) -> None:
    reply = await reply_to(agent, msg("remember that the standup is at 9:30"))
    assert engine.requests == []
    assert reply.steps[0].tool == "remember_fact"
    assert [(f.key, f.value) for f in await storage.facts.of_channel("team")] == [("standup", "the standup is at 9:30")]
    engine.add(step("finish"), final("At 9:30."))
    await reply_to(agent, msg("when is the standup?"))
    assert "standup: the standup is at 9:30" in request_text(engine.requests[0])


async def test_remember_that_is_left_to_the_model_where_the_channel_may_not_remember(
    agent: Agent, engine: ScriptedEngine, storage: Storage
) -> None:
    engine.add(step("finish"), final("I can't keep notes in this channel."))
    calculator_only = ChannelProfile(tools=frozenset({"calculator"}))
    reply = await answer(agent, storage, msg("remember that the standup is at 9:30"), profile=calculator_only)
    assert reply.text == "I can't keep notes in this channel." and len(engine.requests) == 2
    assert await storage.facts.of_channel("team") == []


def test_fact_keys_from_statements() -> None:
    assert fact_from_statement("the standup is at 9:30") == ("standup", "the standup is at 9:30")
    assert fact_from_statement("Our deploys are on Thursdays") == ("deploys", "Our deploys are on Thursdays")
    assert fact_from_statement("bring snacks on friday") == ("bring snacks on friday", "bring snacks on friday")


async def test_facts_of_another_channel_never_reach_the_prompt(agent: Agent, engine: ScriptedEngine) -> None:
    await reply_to(agent, msg("remember that the launch code is 1234", channel="ops"))
    engine.add(step("recall_facts", query="launch code"), step("finish"), final("I don't know."))
    reply = await reply_to(agent, msg("what is the launch code?", channel="team"))
    assert reply.steps[0].observation == "No remembered facts match."
    assert all("1234" not in request_text(r) for r in engine.requests)


async def test_tool_that_raises_becomes_an_observation(agent: Agent, engine: ScriptedEngine) -> None:
    engine.add(step("calculator", expression="1/0"), step("finish"), final("Division by zero is undefined."))
    reply = await reply_to(agent, msg("what is 1/0?"))
    assert reply.status == "answered"
    assert reply.steps[0].observation == "Error: division by zero"
    assert "Traceback" not in request_text(engine.requests[1])


async def test_garbage_steps_still_end_in_an_answer(agent: Agent, engine: ScriptedEngine) -> None:
    engine.add("this is not json", "{not json either", step("finish"), final("Here is my answer."))
    reply = await reply_to(agent, msg("hello?"))
    assert reply.status == "answered"
    assert reply.text == "Here is my answer."
    assert [s.kind for s in reply.steps] == ["observation", "observation", "thought", "conclusion"]
    assert "not valid JSON" in reply.steps[0].observation


async def test_run_without_an_answer_says_so_plainly_and_the_conversation_goes_on(
    agent: Agent, engine: ScriptedEngine, storage: Storage
) -> None:
    engine.add(step("finish"), "complete garbage", "more garbage", "and more")
    reply = await reply_to(agent, msg("hello?"))
    assert reply.status == "unanswered"
    assert "couldn't work out an answer" in reply.text
    assert "Traceback" not in reply.text and "AdapterParseError" not in reply.text
    chains = [c async for c in storage.chains.since(0)]
    assert chains[-1]["status"] == "unanswered"

    engine.script.clear()
    engine.add(step("finish"), final("Hi again."))
    assert (await reply_to(agent, msg("hello again"))).text == "Hi again."


async def test_provider_error_gets_the_fallback_reply_with_an_error_id(
    agent: Agent, engine: ScriptedEngine, storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    engine.add(ServerError("upstream exploded with key sk-123", provider="scripted"))
    reply = await reply_to(agent, msg("hi"))
    assert reply.status == "fallback" and reply.error_id
    assert reply.text.startswith("Sorry, I can't answer right now.") and reply.error_id in reply.text
    assert "sk-123" not in reply.text and "exploded" not in reply.text
    assert reply.error_id in caplog.text  # the same id is in the logs
    chains = [c async for c in storage.chains.since(0)]
    assert chains[-1]["status"] == "fallback" and chains[-1]["error_id"] == reply.error_id
    assert chains[-1]["model"] == "fallback_reply"


async def test_empty_and_oversized_messages_are_rejected_without_a_model_call(
    agent: Agent, engine: ScriptedEngine, storage: Storage
) -> None:
    for text in ("", "   \n\t "):
        reply = await reply_to(agent, msg(text))
        assert reply.status == "rejected" and "empty" in reply.text
    reply = await reply_to(agent, msg("x" * 501))
    assert reply.status == "rejected" and "501" in reply.text and "500" in reply.text
    assert engine.requests == []
    assert await storage.turns.of_channel("team") == []


async def test_json_reply_carries_the_trajectory(agent: Agent, engine: ScriptedEngine) -> None:
    engine.add(step("current_time", timezone="UTC"), step("finish"), final("It is late."))
    data = (await reply_to(agent, msg("what time is it?"))).as_dict()
    json.dumps(data)
    assert data["trajectory"][0]["tool"] == "current_time"  # type: ignore[index]
    assert "UTC" in data["trajectory"][0]["observation"]  # type: ignore[index]
