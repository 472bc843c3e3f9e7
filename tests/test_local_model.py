"""The embedded model: the real GGUF file through llama.cpp, answering through the constrained ReAct step."""

from __future__ import annotations

import pytest

from agent.engines import ModelConfig, build_model
from agent.engines.local import gguf_path
from agent.memory import Memory
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions
from agent.tools import ToolRunner

pytestmark = pytest.mark.slow


def test_gguf_file_ships_with_the_package() -> None:
    path = gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000
    assert "site-packages" in str(path)


async def test_local_model_answers_through_constrained_steps(memory: Memory, runner: ToolRunner) -> None:
    agent = Agent(memory, build_model(ModelConfig(timeout_s=120)), runner, AgentOptions(max_iters=3))
    reply = await agent.respond(IncomingMessage(platform="console", channel="t", user="u", text="What is 2+2?"))
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
