"""The embedded model: the real GGUF file through llama.cpp, answering through the constrained ReAct step."""

from __future__ import annotations

import os

import pytest
from dspy.lm15 import Config, Message, Request

from agent import compact
from agent.engines import ModelConfig, build_model
from agent.engines.local import LocalEngine, gguf_path
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions, Answer
from agent.storage import Storage
from agent.tools import ToolRunner
from tests.conftest import reply_to

pytestmark = pytest.mark.slow


def test_gguf_file_ships_with_the_package() -> None:
    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert "site-packages" in str(path)


async def test_local_model_answers_through_constrained_steps(storage: Storage, runner: ToolRunner) -> None:
    agent = Agent(storage, build_model(ModelConfig(timeout_s=120)), runner, AgentOptions(max_iters=3))
    reply = await reply_to(agent, IncomingMessage(platform="console", channel="t", user="u", text="What is 2+2?"))
    assert reply.status in ("answered", "unanswered"), reply.text
    assert reply.text.strip()
    assert reply.steps, "the model took at least one constrained ReAct step"
    allowed = {*agent.tool_names, "finish"}
    assert all(
        s.tool in allowed for s in reply.steps if s.kind in ("action", "thought")
    )  # the schema's enum held: no invented tool names
    for s in reply.steps:
        if s.tool == "calculator":
            assert set(s.args) == {"expression"}


def request(prompt: compact.CompactPrompt, trajectory: str) -> Request:
    """The request the adapter would send for this prompt (system message, worked examples, the question)."""
    inputs = {"context": "(nothing remembered yet)", "question": "what is 12*7?", "trajectory": trajectory}
    system, *turns = prompt.messages(inputs)
    messages = tuple(
        Message.user(t["content"]) if t["role"] == "user" else Message.assistant(t["content"]) for t in turns
    )
    return Request(model="local", system=system["content"], messages=messages, config=Config(max_tokens=8))


def steps(*observations: tuple[str, str, str]) -> str:
    """A trajectory as ReAct formats it."""
    return "\n\n".join(
        f"[[ ## thought_{i} ## ]]\n\n\n[[ ## tool_name_{i} ## ]]\n{tool}\n\n[[ ## tool_args_{i} ## ]]\n{args}\n\n"
        f"[[ ## observation_{i} ## ]]\n{observation}"
        for i, (tool, args, observation) in enumerate(observations)
    )


def test_engine_uses_every_core_for_generation_and_prompts() -> None:
    assert LocalEngine().threads == len(os.sched_getaffinity(0))


def test_a_second_call_processes_only_its_new_tokens() -> None:
    engine = LocalEngine(temperature=0.0)
    system = compact.system_text(Answer.__doc__ or "")
    step, answer = compact.CompactPrompt(system, compact.STEP_TASK), compact.CompactPrompt(system, compact.ANSWER_TASK)
    calculator = ("calculator", '{"expression": "12*7"}', "84")

    engine.complete(request(step, ""))
    first = engine.stats.last_prompt_tokens
    assert engine.stats.last_processed_tokens >= first - 1  # a cold start processes the whole prompt

    # The next step of the same answer: the same prompt plus one step of trajectory.
    engine.complete(request(step, steps(calculator)))
    second = engine.stats.last_prompt_tokens
    # Processed: the new step, plus the task line and the chat template's end that it displaced (~15 tokens).
    assert 0 < engine.stats.last_processed_tokens <= second - first + 20, engine.stats
    assert engine.stats.last_processed_tokens < second / 8

    # The extract step shares that prefix too: the two signatures no longer evict each other.
    engine.complete(request(answer, steps(calculator, ("finish", "{}", "Completed."))))
    assert engine.stats.last_processed_tokens <= engine.stats.last_prompt_tokens - second + 20, engine.stats
    assert engine.stats.last_processed_tokens < engine.stats.last_prompt_tokens / 8


async def test_local_model_answers_arithmetic_from_the_calculator(storage: Storage, runner: ToolRunner) -> None:
    agent = Agent(storage, build_model(ModelConfig(timeout_s=120)), runner, AgentOptions(max_iters=4))
    reply = await reply_to(agent, IncomingMessage(platform="console", channel="t", user="u", text="what is 12*7?"))
    assert "84" in reply.text, reply.steps
    assert any(s.tool == "calculator" and s.observation == "84" for s in reply.steps)
