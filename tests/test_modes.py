"""Decompose and vote modes with the scripted engine, and the agent pool's concurrency limit."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from dspy.lm15 import Request

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import request_text
from agent.messages import IncomingMessage
from agent.modes import normalise
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner, tool
from tests.conftest import final, reply_to, step


def msg(text: str, channel: str = "team") -> IncomingMessage:
    return IncomingMessage(platform="console", channel=channel, user="alice", text=text)


def make_agent(storage: Storage, runner: ToolRunner, engine: ScriptedEngine, **options: object) -> Agent:
    return Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=4, **options))  # type: ignore[arg-type]


async def test_decompose_answers_each_part_and_synthesises(storage: Storage, runner: ToolRunner) -> None:
    engine = ScriptedEngine(
        [
            {"sub_questions": ["what is 12*7?", "what is that plus 1?"]},
            step("calculator", expression="12*7"),
            step("finish"),
            final("84"),
            step("calculator", expression="84+1"),
            step("finish"),
            final("85"),
            {"reasoning": "12*7 is 84, plus one is 85.", "answer": "85"},
        ]
    )
    agent = make_agent(storage, runner, engine, mode="decompose")
    reply = await reply_to(agent, msg("what is 12*7, plus 1?"))
    assert (reply.status, reply.text) == ("answered", "85")
    assert "Found so far:\n1. what is 12*7? -> 84" in request_text(engine.requests[4])  # part 2 saw part 1
    synthesis = request_text(engine.requests[-1])
    assert "1. what is 12*7? -> 84" in synthesis and "2. what is that plus 1? -> 85" in synthesis
    [chain] = [c async for c in storage.chains.since(0)]
    assert chain["mode"] == "decompose" and chain["model_calls"] == 8
    parts = [(s["kind"], s["part"]) for s in chain["steps"]]
    assert parts[0] == ("thought", "")  # the plan
    assert ("action", "1. what is 12*7?") in parts and ("action", "2. what is that plus 1?") in parts
    assert parts[-1] == ("conclusion", "")
    assert [s["observation"] for s in chain["steps"] if s["kind"] == "action"] == ["84", "85"]


async def test_decompose_keeps_a_simple_question_whole(storage: Storage, runner: ToolRunner) -> None:
    engine = ScriptedEngine([{"sub_questions": ["what time is it?"]}, step("finish"), final("Noon.")])
    agent = make_agent(storage, runner, engine, mode="decompose")
    reply = await reply_to(agent, msg("what time is it?"))
    assert reply.text == "Noon." and len(engine.requests) == 3


def voter_engine(answers: dict[float, str]) -> ScriptedEngine:
    """Each voter answers by its sampling temperature, whatever order the concurrent calls arrive in."""

    def respond(request: Request) -> dict[str, object]:
        if "next_thought" in request_text(request):
            return step("finish")
        return final(answers[round(request.config.temperature or 0.0, 1)])

    return ScriptedEngine(responder=respond)


async def test_vote_answers_with_the_majority(storage: Storage, runner: ToolRunner) -> None:
    engine = voter_engine({0.2: "Paris.", 0.6: "paris", 1.0: "Lyon"})
    agent = make_agent(storage, runner, engine, mode="vote", voters=3, vote_threshold=0.6)
    reply = await reply_to(agent, msg("capital of France?"))
    assert (reply.status, reply.text) == ("answered", "Paris.")
    assert len(engine.requests) == 6  # three voters, two calls each
    [chain] = [c async for c in storage.chains.since(0)]
    assert {s["part"] for s in chain["steps"] if s["part"]} == {"voter 1", "voter 2", "voter 3"}
    assert "2/3: paris" in chain["steps"][-1]["thought"]


async def test_vote_without_consensus_says_so(storage: Storage, runner: ToolRunner) -> None:
    engine = voter_engine({0.2: "1", 0.6: "2", 1.0: "3"})
    agent = make_agent(storage, runner, engine, mode="vote", voters=3, vote_threshold=0.5)
    reply = await reply_to(agent, msg("pick a number"))
    assert "couldn't reach a consensus" in reply.text
    assert all(n in reply.text for n in ("1", "2", "3"))


async def test_vote_threshold_is_respected(storage: Storage, runner: ToolRunner) -> None:
    engine = voter_engine({0.2: "yes", 0.6: "yes", 1.0: "no"})
    agent = make_agent(storage, runner, engine, mode="vote", voters=3, vote_threshold=0.75)
    assert "consensus" in (await reply_to(agent, msg("ok?"))).text


def test_answers_that_differ_in_case_and_punctuation_are_one_vote() -> None:
    assert normalise(" Paris. ") == normalise("paris") == normalise("PARIS!")
    assert normalise("Paris") != normalise("Lyon")


@pytest.fixture
def gauge_runner(storage: Storage) -> Iterator[tuple[ToolRunner, list[int]]]:
    running = [0]
    peak = [0]

    @tool(timeout_s=5)
    async def busy(name: str) -> str:
        """Work for a while."""
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await asyncio.sleep(0.1)
        running[0] -= 1
        return "ok"

    built = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS, busy), storage.executions)
    yield built, peak
    built.close()


@pytest.mark.parametrize("limit", [1, 3])
async def test_the_agent_pool_limits_concurrent_conversations(
    storage: Storage, gauge_runner: tuple[ToolRunner, list[int]], limit: int
) -> None:
    runner, peak = gauge_runner

    def respond(request: Request) -> dict[str, object]:
        text = request_text(request)
        if "next_thought" not in text:
            return final("done")
        return step("finish") if "observation_0" in text else step("busy", name="x")

    agent = make_agent(storage, runner, ScriptedEngine(responder=respond), concurrency=limit)
    replies = await asyncio.gather(*(reply_to(agent, msg("work", channel=f"c{i}")) for i in range(6)))
    assert all(r.status == "answered" for r in replies)
    assert peak[0] == limit
