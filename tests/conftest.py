"""Shared fixtures: an isolated environment, a real SQLite store on a temporary file, scripted agents."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agent.engines import ScriptedEngine, scripted_model
from agent.memory import Memory
from agent.runtime import Agent, AgentOptions
from agent.store import Store
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from agent.tools.executions import ExecutionLog
from bot.config import ENV_ALIASES

# The Slack world (a fake Slack, the real adapter, dispatcher and agent) for every test that asks for `world`.
from tests.slack_world import concurrency, delay, fake, options, world  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's PARLEY_* variables, tokens or parley.toml."""
    for name in list(os.environ):
        if name.startswith("PARLEY_") or name in ENV_ALIASES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    opened = await Store.open(tmp_path / "parley.db")
    yield opened
    await opened.close()


@pytest.fixture
def memory(store: Store) -> Memory:
    return Memory(store, max_turns=100)


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def runner(store: Store) -> Iterator[ToolRunner]:
    """The built-in tools behind a real runner that records into the test database."""
    built = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS), ExecutionLog(store))
    yield built
    built.close()


@pytest.fixture
def agent(memory: Memory, engine: ScriptedEngine, runner: ToolRunner) -> Agent:
    return Agent(memory, scripted_model(engine), runner, AgentOptions(max_iters=4, max_message_chars=500))


def step(tool: str, **args: object) -> dict[str, object]:
    """A scripted ReAct step calling `tool`."""
    return {"next_thought": f"use {tool}", "next_tool_name": tool, "next_tool_args": args}


def final(answer: str) -> dict[str, str]:
    """A scripted extract step."""
    return {"reasoning": "done", "answer": answer}


class Clock:
    """A monotonic clock a test moves by hand (`clock.now += 30`)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
