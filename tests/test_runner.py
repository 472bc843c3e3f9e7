"""The tool registry and the one runner every call goes through: metadata, validation, timeouts, output caps,
hooks, the approval gate, the execution table and its statistics."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import pytest
from prometheus_client import CollectorRegistry
from pydantic import Field

from agent.approvals import ApprovalBroker, ApprovalPolicy
from agent.messages import Conversation
from agent.storage import Storage
from agent.storage.base import Executions
from agent.storage.models import Execution
from agent.tools import BUILTIN_TOOLS
from agent.tools.context import ToolContext, current
from agent.tools.files import file_tools
from agent.tools.hooks import MetricsHook
from agent.tools.registry import ToolError, ToolOverride, ToolRegistry, ToolRegistryError, spec_of, tool
from agent.tools.runner import ToolCall, ToolRefused, ToolResult, ToolRunner
from agent.tools.sql import sql_tool
from agent.tools.web import http_get_tool
from tests.fakes.platform import RecordingPlatform


@tool(returns="the sum", examples=("add(a=1, b=2)",), timeout_s=3)
def add(a: int, b: Annotated[int, Field(description="the second number")] = 1) -> int:
    """Add two whole numbers."""
    return a + b


@tool(timeout_s=0.3)
async def hang(seconds: float = 60) -> str:
    """Wait for a long time."""
    await asyncio.sleep(seconds)
    return "done"


@tool(timeout_s=0.3)
def hang_in_thread(seconds: float = 2) -> str:
    """Block a thread for a long time."""
    time.sleep(seconds)
    return "done"


@tool
def huge() -> str:
    """Return ten megabytes."""
    return "x" * 10_000_000


@tool
def leaky() -> str:
    """Fail with internals in the message."""
    raise RuntimeError("connect to postgres://admin:hunter2@db failed")


@tool
def polite_failure() -> str:
    """Fail with a message meant for the model."""
    raise ToolError("the report is not ready yet")


@tool
def who_asks() -> str:
    """Say which channel asked (sync, so it runs on a worker thread)."""
    return f"{current().conversation.channel} on {threading.current_thread().name}"


@tool
async def who_asks_async() -> str:
    """Say which channel asked (async)."""
    await asyncio.sleep(0)
    return current().conversation.channel


@tool(approval="approve")
def risky() -> str:
    """Something that needs a person's approval."""
    raise AssertionError("must never run without approval")


@tool(approval="deny")
def forbidden() -> str:
    """Something nobody may run."""
    raise AssertionError("must never run")


TEST_TOOLS = (add, hang, hang_in_thread, huge, leaky, polite_failure, who_asks, who_asks_async, risky, forbidden)


@pytest.fixture
async def log(storage: Storage) -> Executions:
    return storage.executions


@pytest.fixture
async def tools(log: Executions) -> AsyncIterator[ToolRunner]:
    runner = ToolRunner(ToolRegistry.of(*TEST_TOOLS), log, max_output_chars=1000)
    yield runner
    runner.close()


def context(storage: Storage, channel: str = "team") -> ToolContext:
    return ToolContext(storage, Conversation(channel), "alice", run_id="run-1")


# Registry ----------------------------------------------------------------------------------------------


def test_metadata_and_schema_come_from_the_function() -> None:
    spec = spec_of(add)
    assert (spec.name, spec.description, spec.returns, spec.timeout_s) == (
        "add",
        "Add two whole numbers.",
        "the sum",
        3,
    )
    assert spec.examples == ("add(a=1, b=2)",) and spec.approval == "allow" and spec.enabled
    assert not spec.is_async and spec_of(hang).is_async
    assert spec.parameters["required"] == ["a"]
    assert spec.args == {
        "a": {"type": "integer"},
        "b": {"type": "integer", "default": 1, "description": "the second number"},
    }
    assert spec.parameters["additionalProperties"] is False


def test_every_builtin_has_a_schema_the_model_can_read() -> None:
    for fn in BUILTIN_TOOLS:
        spec = spec_of(fn)
        assert spec.description and spec.returns and spec.examples
        assert all(schema.get("type") == "string" for schema in spec.args.values())


def test_registry_refuses_duplicates_reserved_names_and_untyped_tools() -> None:
    registry = ToolRegistry.of(add)

    def plus(a: int) -> int:
        """Another adder."""
        return a

    with pytest.raises(ToolRegistryError, match="two tools are named 'add'"):
        registry.register(tool(name="add")(plus))

    def finish() -> str:
        """Done."""
        return ""

    with pytest.raises(ToolRegistryError, match="reserved"):
        registry.register(finish)

    def untyped(x) -> str:  # type: ignore[no-untyped-def]
        """No hint."""
        return str(x)

    with pytest.raises(ToolRegistryError, match="type hint"):
        tool(untyped)

    def undocumented(x: int) -> str:
        return str(x)

    with pytest.raises(ToolRegistryError, match="docstring"):
        tool(undocumented)


def test_settings_overrides_apply_and_unknown_names_are_errors() -> None:
    registry = ToolRegistry.of(add, hang)
    registry.configure({"add": ToolOverride(enabled=False), "hang": ToolOverride(timeout_s=9, approval="deny")})
    assert [s.name for s in registry.enabled()] == ["hang"]
    hang_spec = registry.get("hang")
    assert hang_spec is not None and (hang_spec.timeout_s, hang_spec.approval) == (9, "deny")
    with pytest.raises(ToolRegistryError, match="'nope', which does not exist"):
        registry.configure({"nope": ToolOverride(enabled=False)})


# Runner ------------------------------------------------------------------------------------------------


async def test_a_good_call_runs_and_is_recorded(tools: ToolRunner, log: Executions, storage: Storage) -> None:
    result = await tools.run("add", {"a": 2, "b": 40}, context(storage))
    assert (result.observation, result.outcome) == ("42", "ok")
    [row] = await log.for_run("run-1")
    assert (row.tool, row.args, row.outcome, row.observation) == ("add", {"a": 2, "b": 40}, "ok", "42")
    assert (row.channel, row.user_id) == ("team", "alice") and row.duration_ms >= 0


@pytest.mark.parametrize(
    ("name", "args", "outcome", "says"),
    [
        ("launch_rockets", {}, "unknown_tool", "there is no tool named 'launch_rockets'. Available: add"),
        ("add", {"a": "many"}, "invalid_args", "invalid arguments for add: a: Input should be a valid integer"),
        ("add", {"b": 1}, "invalid_args", "missing argument 'a'"),
        ("add", {"a": 1, "c": 2}, "invalid_args", "unexpected argument 'c'"),
        ("add", ["a", 1], "invalid_args", "must be a JSON object"),
        ("leaky", {}, "error", "leaky failed (RuntimeError)"),
        ("polite_failure", {}, "error", "Error: the report is not ready yet"),
        ("risky", {}, "denied", "needs a person's approval"),
        ("forbidden", {}, "denied", "disabled by policy"),
    ],
)
async def test_bad_calls_become_short_observations_and_records(
    tools: ToolRunner, log: Executions, storage: Storage, name: str, args: object, outcome: str, says: str
) -> None:
    result = await tools.run(name, args, context(storage))
    assert result.outcome == outcome
    assert says in result.observation
    assert len(result.observation) < 300 and "Traceback" not in result.observation
    assert "hunter2" not in result.observation
    [row] = await log.for_run("run-1")
    assert (row.tool, row.outcome) == (name, outcome)


async def test_disabled_tools_are_unknown_to_the_runner(log: Executions) -> None:
    registry = ToolRegistry.of(add)
    registry.configure({"add": ToolOverride(enabled=False)})
    runner = ToolRunner(registry, log)
    assert (await runner.run("add", {"a": 1})).outcome == "unknown_tool"
    runner.close()


async def _ticks_while(coro: object, interval: float = 0.01) -> tuple[ToolResult, int]:
    """Run `coro` while counting how often the event loop gets to run another task."""
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            await asyncio.sleep(interval)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        result = await coro  # type: ignore[misc]
    finally:
        done.set()
        await task
    return result, ticks


@pytest.mark.parametrize("name", ["hang", "hang_in_thread"])
async def test_a_hanging_tool_times_out_without_blocking_the_loop(
    tools: ToolRunner, log: Executions, name: str
) -> None:
    result, ticks = await _ticks_while(tools.run(name, {}))
    assert result.outcome == "timeout"
    assert "did not finish within 0.3 s" in result.observation
    assert ticks >= 10  # the loop kept serving other work for the whole 0.3 s
    assert [e.outcome for e in await log.recent()] == ["timeout"]


async def test_output_is_capped_before_the_model_sees_it(tools: ToolRunner, log: Executions) -> None:
    result = await tools.run("huge", {})
    assert result.outcome == "ok" and result.truncated
    assert len(result.observation) < 1100
    assert "showing 1,000 of 10,000,000 characters" in result.observation
    [row] = await log.recent()
    assert row.truncated and len(row.observation) <= 2000


async def test_sync_tools_run_on_a_worker_thread_with_the_conversation(tools: ToolRunner, storage: Storage) -> None:
    result = await tools.run("who_asks", {}, context(storage, "ops"))
    assert result.observation.startswith("ops on parley-tool")
    assert (await tools.run("who_asks_async", {}, context(storage, "dev"))).observation == "dev"


async def test_cancellation_stops_the_call_and_is_recorded(tools: ToolRunner, log: Executions) -> None:
    task = asyncio.create_task(tools.run("hang", {"seconds": 0.2}))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [e.outcome for e in await log.recent()] == ["cancelled"]


class Recorder:
    def __init__(self, refuse: str | None = None) -> None:
        self.refuse = refuse
        self.before_calls: list[str] = []
        self.after_calls: list[tuple[str, str]] = []

    async def before(self, call: ToolCall, spec: object) -> None:
        self.before_calls.append(call.tool)
        if self.refuse == call.tool:
            raise ToolRefused("the hook said no")

    async def after(self, call: ToolCall, result: ToolResult) -> None:
        self.after_calls.append((call.tool, result.outcome))


class Broken:
    async def before(self, call: ToolCall, spec: object) -> None:
        return None

    async def after(self, call: ToolCall, result: ToolResult) -> None:
        raise RuntimeError("hook bug")


async def test_hooks_see_calls_and_a_pre_hook_can_refuse(log: Executions) -> None:
    hook = Recorder(refuse="huge")
    runner = ToolRunner(ToolRegistry.of(add, huge), log, hooks=[hook, Broken()])
    assert (await runner.run("add", {"a": 1})).observation == "2"
    refused = await runner.run("huge", {})
    assert refused.outcome == "denied" and "the hook said no" in refused.observation
    assert (await runner.run("nope", {})).outcome == "unknown_tool"
    assert hook.before_calls == ["add", "huge"]
    assert hook.after_calls == [("add", "ok"), ("huge", "denied"), ("nope", "unknown_tool")]
    runner.close()


async def test_metrics_hook_counts_by_tool_and_outcome(log: Executions) -> None:
    registry = CollectorRegistry()
    runner = ToolRunner(ToolRegistry.of(add), log, hooks=[MetricsHook(registry)])
    await runner.run("add", {"a": 1})
    await runner.run("add", {"a": "x"})
    assert registry.get_sample_value("parley_tool_calls_total", {"tool": "add", "outcome": "ok"}) == 1
    assert registry.get_sample_value("parley_tool_calls_total", {"tool": "add", "outcome": "invalid_args"}) == 1
    assert registry.get_sample_value("parley_tool_call_seconds_count", {"tool": "add"}) == 2
    # Names the model makes up share one label, so they cannot grow the series without bound.
    for made_up in ("fly", "teleport"):
        await runner.run(made_up, {})
    assert registry.get_sample_value("parley_tool_calls_total", {"tool": "unknown", "outcome": "unknown_tool"}) == 2
    assert registry.get_sample_value("parley_tool_calls_total", {"tool": "fly", "outcome": "unknown_tool"}) is None
    runner.close()


async def test_statistics_per_tool(log: Executions) -> None:
    for i in range(1, 21):
        outcome = "error" if i % 5 == 0 else "ok"
        await log.record(Execution("calc", {}, outcome, "", float(i), time.time()))
    await log.record(Execution("time", {}, "timeout", "", 300.0, time.time()))
    stats = await log.stats()
    calc = stats["calc"]
    assert (calc.calls, calc.successes, calc.failures) == (20, 16, 4)
    assert calc.mean_ms == pytest.approx(10.5)
    assert calc.p95_ms == 19.0  # nearest rank: the 19th of 20 sorted durations
    assert (stats["time"].calls, stats["time"].failures, stats["time"].p95_ms) == (1, 1, 300.0)


# Arguments the tool would refuse are refused before anyone is asked -----------------------------------------


CHECKED_CALLS = {
    "http_get off the allowlist": ("http_get", {"url": "https://evil.test/steal"}, "evil.test is not on the list"),
    "http_get to a plain http URL": ("http_get", {"url": "http://example.com/"}, "only https URLs are allowed"),
    "read_file outside the root": ("read_file", {"path": "../../etc/passwd"}, "'..' is not allowed"),
    "sql_query that writes": ("sql_query", {"query": "DELETE FROM notes"}, "not authorized"),
    "sql_query of two statements": ("sql_query", {"query": "SELECT 1; SELECT 2"}, "one SQL statement"),
}


@pytest.mark.parametrize(("name", "args", "reason"), CHECKED_CALLS.values(), ids=CHECKED_CALLS.keys())
async def test_a_call_the_tool_would_refuse_is_refused_without_an_approval_request(
    storage: Storage, tmp_path: Path, name: str, args: dict[str, str], reason: str
) -> None:
    database = tmp_path / "notes.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE notes (body TEXT)")
    (tmp_path / "shared").mkdir()
    tools = (http_get_tool(["example.com"]), *file_tools(tmp_path / "shared"), sql_tool(database))
    broker = ApprovalBroker(storage.approvals, ApprovalPolicy())
    platform = RecordingPlatform("slack")
    broker.ports["slack"] = platform
    runner = ToolRunner(ToolRegistry.of(*tools), gate=broker)
    context = ToolContext(storage, Conversation("slack:T/C"), "U1", "run-1", "slack")
    try:
        result = await runner.run(name, args, context)
    finally:
        runner.close()
    assert result.outcome == "error" and result.observation.startswith("Error: "), result
    assert reason in result.observation
    assert platform.approval_requests == [] and await storage.approvals.pending() == []
