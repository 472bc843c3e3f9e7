"""`parley tools`, `parley chains export|stats` in process (typer's runner), on a real database file."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent.engines import ScriptedEngine, scripted_model
from agent.messages import IncomingMessage
from agent.runtime import Agent, AgentOptions
from agent.storage import open_storage
from agent.storage.models import Execution
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.cli import app
from tests.conftest import final, reply_to, step

cli = CliRunner()


def tools_json(*args: str) -> dict[str, dict[str, object]]:
    result = cli.invoke(app, ["tools", "--json", *args])
    assert result.exit_code == 0, result.output
    return {row["name"]: row for row in json.loads(result.output)}


def test_tools_lists_every_tool_with_schema_policy_and_why_it_is_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = tools_json()
    assert list(rows) == [
        "calculator",
        "current_time",
        "remember_fact",
        "recall_facts",
        "read_file",
        "list_dir",
        "sql_query",
        "http_get",
        "web_search",
        "weather",
    ]
    assert rows["calculator"]["enabled"] and rows["calculator"]["parameters"]["required"] == ["expression"]  # type: ignore[index]
    assert rows["read_file"]["why_disabled"] == "set tools.read_file.root"
    assert (rows["http_get"]["approval"], rows["http_get"]["enabled"]) == ("approve", False)
    assert rows["weather"]["why_disabled"] == "set tools.weather.api_key"

    monkeypatch.setenv("PARLEY_TOOLS__READ_FILE__ROOT", ".")
    monkeypatch.setenv("PARLEY_TOOLS__CALCULATOR__ENABLED", "false")
    monkeypatch.setenv("PARLEY_TOOLS__CURRENT_TIME__TIMEOUT_S", "2.5")
    rows = tools_json()
    assert rows["read_file"]["enabled"] is True
    assert rows["calculator"]["why_disabled"] == "disabled in settings"
    assert rows["current_time"]["timeout_s"] == 2.5


def test_tools_shows_statistics_from_the_execution_table(tmp_path: Path) -> None:
    async def record() -> None:
        storage = await open_storage(path=Path("data/parley.db"))
        for ms, outcome in ((10.0, "ok"), (30.0, "ok"), (50.0, "timeout")):
            await storage.executions.record(Execution("calculator", {}, outcome, "", ms, time.time()))
        await storage.close()

    asyncio.run(record())
    stats = tools_json()["calculator"]["stats"]
    assert stats == {"tool": "calculator", "calls": 3, "successes": 2, "failures": 1, "mean_ms": 30.0, "p95_ms": 50.0}
    text = cli.invoke(app, ["tools"]).output
    assert "calls 3, ok 2, failed 1, mean 30.0 ms, p95 50.0 ms" in text


def test_a_settings_table_for_a_missing_tool_stops_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_TOOLS__CALCULATR__ENABLED", "false")
    result = cli.invoke(app, ["tools"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        "parley: settings name tool 'calculatr', which does not exist (known: calculator, current_time, "
        "http_get, list_dir, read_file, recall_facts, remember_fact, sql_query, weather, web_search)"
    ]


PLUGIN = '''
from agent.tools import tool

@tool(timeout_s=3, approval="confirm")
def ticket_status(ticket: str) -> str:
    """Look up the status of a ticket such as OPS-12."""
    return f"{ticket}: open"

def helper() -> None:
    """Not a tool: no decorator."""
'''


def test_plugin_modules_add_tools_and_duplicates_stop_start_up(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "team_tools.py").write_text(PLUGIN)
    (tmp_path / "clashing_tools.py").write_text(PLUGIN.replace("def ticket_status", "def calculator"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PARLEY_AGENT__TOOL_MODULES", '["team_tools"]')
    rows = tools_json()
    assert rows["ticket_status"]["approval"] == "confirm" and "helper" not in rows
    monkeypatch.setenv("PARLEY_AGENT__TOOL_MODULES", '["team_tools", "clashing_tools"]')
    result = cli.invoke(app, ["tools"])
    assert result.exit_code == 2 and "two tools are named 'calculator'" in result.output
    monkeypatch.setenv("PARLEY_AGENT__TOOL_MODULES", '["no_such_module"]')
    result = cli.invoke(app, ["tools"])
    assert result.exit_code == 2 and "'no_such_module' cannot be imported" in result.output


SLACK_TOKEN = "xoxb-1234567890-abcdefghij"
API_KEY = "my-very-secret-provider-key"


def seed_chains(db: Path) -> None:
    async def run() -> None:
        storage = await open_storage(path=db)
        runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS), storage.executions)
        engine = ScriptedEngine(
            [
                step("calculator", expression="12*7"),
                step("finish"),
                final("84"),
                step("remember_fact", key="provider key", value=API_KEY),
                step("finish"),
                final("Stored."),
                step("finish"),
                final("Hello."),
            ]
        )
        agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=3))
        for channel, text in (("team", "what is 12*7?"), ("team", f"store {SLACK_TOKEN} safely"), ("ops", "hi")):
            await reply_to(agent, IncomingMessage(platform="console", channel=channel, user="u", text=text))
        runner.close()
        await storage.close()

    asyncio.run(run())


def test_chains_export_redacts_secrets_and_filters(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seed_chains(Path("data/parley.db"))
    monkeypatch.setenv("PARLEY_LM__API_KEY", API_KEY)
    out = tmp_path / "chains.jsonl"
    result = cli.invoke(app, ["chains", "export", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "Exported 3 chains" in result.output
    text = out.read_text()
    assert SLACK_TOKEN not in text and API_KEY not in text and "[redacted]" in text
    chains = [json.loads(line) for line in text.splitlines()]
    assert [c["question"] for c in chains] == ["what is 12*7?", "store [redacted] safely", "hi"]
    assert chains[0]["steps"][0]["tool"] == "calculator" and chains[0]["steps"][0]["observation"] == "84"

    result = cli.invoke(app, ["chains", "export", "--out", str(out), "--channel", "ops"])
    assert "Exported 1 chains" in result.output
    result = cli.invoke(app, ["chains", "export", "--out", str(out), "--since", "2999-01-01"])
    assert "Exported 0 chains" in result.output
    result = cli.invoke(app, ["chains", "export", "--out", str(out), "--since", "yesterday"])
    assert result.exit_code == 1 and "not an ISO date" in result.output


def test_chains_stats(tmp_path: Path) -> None:
    seed_chains(Path("data/parley.db"))
    result = cli.invoke(app, ["chains", "stats", "--json"])
    stats = json.loads(result.output)
    assert stats["chains"] == 3 and stats["by_status"] == {"answered": 3}
    assert stats["model_calls"] == 8
    assert stats["tool_usage"] == {"calculator": 1, "remember_fact": 1}
    assert stats["mean_steps"] == pytest.approx(5 / 3)  # action+thought, action+thought, thought
    text = cli.invoke(app, ["chains", "stats", "--channel", "ops"]).output
    assert "chains        1 (1 answered)" in text and "tool usage    none" in text


def test_approvals_list_revoke_and_audit() -> None:
    from agent.approvals import ApprovalRequest, PromptLocation

    async def seed() -> None:
        storage = await open_storage(path=Path("data/parley.db"))
        approvals = storage.approvals
        now = time.time()
        await approvals.grant("http_get", "slack:T1/C1", "slack:boss", now=now)
        await approvals.create(
            ApprovalRequest(
                "req-1",
                "sql_query",
                {"query": "select 1"},
                "h",
                "approve",
                "slack",
                "slack:T1/C1",
                "",
                "alice",
                now,
                now + 300,
            )
        )
        await approvals.shown("req-1", PromptLocation("slack", "C1", "1700000000.000100"))
        await storage.close()

    asyncio.run(seed())
    listed = cli.invoke(app, ["approvals", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    data = json.loads(listed.output)
    assert [(g["tool"], g["channel"]) for g in data["grants"]] == [("http_get", "slack:T1/C1")]
    assert [(p["id"], p["tool"], p["requester"]) for p in data["pending"]] == [("req-1", "sql_query", "alice")]
    assert data["pending"][0]["prompt"] == {"platform": "slack", "channel": "C1", "message": "1700000000.000100"}

    revoked = cli.invoke(app, ["approvals", "revoke", "--tool", "http_get", "--channel", "slack:T1/C1"])
    assert revoked.exit_code == 0 and "asks for approval in slack:T1/C1 again" in revoked.output
    again = cli.invoke(app, ["approvals", "revoke", "--tool", "http_get", "--channel", "slack:T1/C1"])
    assert again.exit_code == 1 and "no allow-always grant" in again.output
    assert json.loads(cli.invoke(app, ["approvals", "list", "--json"]).output)["grants"] == []

    audit = json.loads(cli.invoke(app, ["approvals", "audit", "--json"]).output)
    assert [(a["action"], a["outcome"]) for a in audit] == [
        ("granted_always", "granted"),
        ("requested", "pending"),
        ("revoked", "revoked"),
        ("revoked", "not_found"),
    ]
    future = cli.invoke(app, ["approvals", "audit", "--since", "2999-01-01"])
    assert future.exit_code == 0 and future.output == ""
    text = cli.invoke(app, ["approvals", "audit"]).output
    assert "requested" in text and "slack:alice" in text
