"""Robust ReAct: trajectory formatting, context overflow, invented tools, slow tools, cancellation, chains."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import dspy
import pytest
from dspy.lm15 import ContextLengthError, InvalidRequestError, Request
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_text
from agent.messages import IncomingMessage
from agent.react import RobustReAct
from agent.runtime import Agent, AgentOptions, Answer
from agent.storage import Storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner, tool
from tests.conftest import final, reply_to, step


@tool(timeout_s=2)
async def slow_report(name: str) -> str:
    """Fetch a report that takes a long time."""
    await asyncio.sleep(30)
    return "never"


@pytest.fixture
def slow_runner(storage: Storage) -> Iterator[ToolRunner]:
    built = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS, slow_report), storage.executions)
    yield built
    built.close()


def msg(text: str, channel: str = "team") -> IncomingMessage:
    return IncomingMessage(platform="console", channel=channel, user="alice", text=text)


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)


PLAIN_REACT = RobustReAct(Answer, [], ToolRunner(ToolRegistry()), max_iters=3)
ARGS = st.dictionaries(st.text(max_size=8), values, max_size=3)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.text(max_size=40), st.text(max_size=12), ARGS, st.text(max_size=60)), max_size=4))
def test_trajectory_text_is_exactly_what_dspy_would_produce(steps: list[tuple[str, str, Any, str]]) -> None:
    react = PLAIN_REACT
    trajectory: dict[str, Any] = {}
    for i, (thought, name, args, observation) in enumerate(steps):
        trajectory.update(
            {f"thought_{i}": thought, f"tool_name_{i}": name, f"tool_args_{i}": args, f"observation_{i}": observation}
        )
    with dspy.context(adapter=dspy.JSONAdapter()):
        assert react._format_trajectory(trajectory) == dspy.ReAct._format_trajectory(react, trajectory)


@pytest.mark.parametrize(
    "error",
    [
        ContextLengthError("prompt too long", provider="scripted"),
        InvalidRequestError("This model's maximum context length is 2048 tokens", provider="scripted"),
    ],
    ids=["context-length-error", "invalid-request-with-context-message"],
)
async def test_context_overflow_drops_the_oldest_step_and_goes_on(
    agent: Agent, engine: ScriptedEngine, error: Exception
) -> None:
    engine.add(
        step("calculator", expression="1+1"),
        step("calculator", expression="2+2"),
        error,  # the third step call carries two earlier steps: too much for this model's window
        step("finish"),
        final("4"),
    )
    reply = await reply_to(agent, msg("add things"))
    assert reply.status == "answered" and reply.text == "4"
    assert "tool_args_0" in request_text(engine.requests[2])
    retried = request_text(engine.requests[3])
    assert "tool_args_0" not in retried and "observation_1" in retried  # the oldest step was dropped


async def test_an_invented_tool_reaches_the_runner_and_is_recorded(
    agent: Agent, engine: ScriptedEngine, storage: Storage
) -> None:
    engine.add(step("launch_rockets", count=3), step("finish"), final("I can't launch rockets."))
    reply = await reply_to(agent, msg("launch the rockets"))
    assert reply.status == "answered"
    assert reply.steps[0].outcome == "unknown_tool"
    assert "no tool named 'launch_rockets'" in reply.steps[0].observation
    assert "no tool named" in request_text(engine.requests[1])  # the model was told
    [execution] = await storage.executions.recent()
    assert (execution.tool, execution.outcome, execution.args) == ("launch_rockets", "unknown_tool", {"count": 3})


async def test_a_hanging_tool_does_not_hold_up_another_conversation(storage: Storage, slow_runner: ToolRunner) -> None:
    def respond(request: Request) -> dict[str, object]:
        text = request_text(request)
        waiting = "slow_report" in text.split("[[ ## question ## ]]")[-1]
        if "next_thought" not in text.split("[[ ## question ## ]]")[0] or "observation_0" in text:
            return step("finish") if "next_thought" in text else final("done")
        return step("slow_report", name="q3") if waiting else step("finish")

    engine = ScriptedEngine(responder=respond)
    agent = Agent(storage, scripted_model(engine), slow_runner, AgentOptions(max_iters=3))
    slow = asyncio.create_task(reply_to(agent, msg("run slow_report please", channel="ops")))
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    quick = await reply_to(agent, msg("hello", channel="team"))
    quick_took = time.perf_counter() - started
    assert not slow.done(), "the slow conversation is still waiting for its tool"
    assert quick.status == "answered" and quick_took < 1.5
    slow_reply = await slow
    assert slow_reply.steps[0].outcome == "timeout"


async def test_cancellation_stops_the_run_and_records_no_answer(storage: Storage, slow_runner: ToolRunner) -> None:
    engine = ScriptedEngine([step("slow_report", name="q3")])
    agent = Agent(storage, scripted_model(engine), slow_runner, AgentOptions(max_iters=3))
    task = asyncio.create_task(reply_to(agent, msg("slow please")))
    await asyncio.sleep(0.2)
    task.cancel()
    started = time.perf_counter()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.perf_counter() - started < 0.5
    assert await storage.turns.of_channel("team") == []  # nothing half-answered: the message can be retried
    assert [e.outcome for e in await storage.executions.recent()] == ["cancelled"]


async def test_chain_records_kinds_timings_and_token_usage(
    agent: Agent, engine: ScriptedEngine, storage: Storage
) -> None:
    engine.add(step("calculator", expression="6*7"), step("finish"), final("42"))
    reply = await reply_to(agent, msg("what is 6*7?"))
    [chain] = [c async for c in storage.chains.since(0)]
    assert chain["model_calls"] == 3  # one tool call then finish cost N + 2 calls
    assert chain["input_tokens"] > 0 and chain["output_tokens"] > 0
    assert chain["mode"] == "react" and chain["run_id"]
    kinds = [s["kind"] for s in chain["steps"]]
    assert kinds == ["action", "thought", "conclusion"]
    action = chain["steps"][0]
    assert action["tool_ms"] is not None and action["model_ms"] is not None and action["input_tokens"] > 0
    assert reply.steps[0].outcome == "ok"
    executions = await storage.executions.for_run(chain["run_id"])
    assert [e.tool for e in executions] == ["calculator"]
