"""MCP servers in the application: `[mcp.servers.NAME]` settings and their secrets, `parley tools` and
`parley mcp check` against the real test servers, /readyz and /metrics per server, and `parley run` stopped by
SIGTERM leaving no child process behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from typer.testing import CliRunner

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from bot.app import build_app
from bot.cli import app
from bot.config import Settings, SettingsError, load_settings, secret_values
from bot.service import readiness
from bot.tools import build_registry
from tests.fakes.mcp_servers import NOTES_ENV, PID_ENV, REPO, McpHttpServer, stdio_command
from tests.fakes.openai_server import FakeOpenAI, react_brain

pytestmark = pytest.mark.slow
cli = CliRunner()


def notes_server(notes: Path, **extra: Any) -> dict[str, Any]:
    command, args = stdio_command()
    return {"command": command, "args": args, "cwd": str(REPO), "env": {NOTES_ENV: str(notes)}, **extra}


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[McpHttpServer]:
    with McpHttpServer(tmp_path / "notes.txt") as running:
        yield running


@pytest.fixture
def configured(tmp_path: Path, http_server: McpHttpServer, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A parley.toml naming both test servers, as a fresh clone would have it."""
    command, args = stdio_command()
    config = tmp_path / "parley.toml"
    config.write_text(
        f"""
[mcp.servers.notes]
command = {json.dumps(command)}
args = {json.dumps(args)}
cwd = {json.dumps(str(REPO))}
env = {{ {NOTES_ENV} = {json.dumps(str(tmp_path / "notes.txt"))}, NOTES_TOKEN = "tok-very-secret" }}
exclude = ["add_tool"]

[mcp.servers.docs]
url = "{http_server.url}"
headers = {{ Authorization = "Bearer header-very-secret" }}
approval = "confirm"
timeout_s = 5

[tools.docs__search]
approval = "allow"
"""
    )
    monkeypatch.setenv("PARLEY_CONFIG", str(config))
    return config


# Settings ---------------------------------------------------------------------------------------------------


def test_mcp_secrets_are_masked_in_parley_config_and_known_to_the_redactor(configured: Path) -> None:
    result = cli.invoke(app, ["config"])
    assert result.exit_code == 0, result.output
    assert "tok-very-secret" not in result.output and "header-very-secret" not in result.output
    servers = json.loads(result.output)["mcp"]["servers"]
    assert servers["notes"]["env"]["NOTES_TOKEN"] == "**********"
    assert servers["docs"]["headers"] == {"Authorization": "**********"}
    assert {"tok-very-secret", "Bearer header-very-secret"} <= set(secret_values(load_settings()))


@pytest.mark.parametrize(
    ("servers", "error"),
    [
        ({"x": {"command": "a", "url": "http://b"}}, "set either command"),
        ({"x": {}}, "set either command"),
        ({"x": {"url": "http://b", "env": {"A": "1"}}}, "args, env and cwd are for stdio servers"),
        ({"a__b": {"command": "a"}}, "a server name is letters"),
    ],
)
def test_a_server_table_that_cannot_work_stops_start_up_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, servers: dict[str, Any], error: str
) -> None:
    monkeypatch.setenv("PARLEY_MCP__SERVERS", json.dumps(servers))
    with pytest.raises(SettingsError, match=r"invalid setting PARLEY_MCP__SERVERS") as raised:
        load_settings()
    assert error in str(raised.value)


def test_a_tools_table_for_an_mcp_tool_is_no_typo_but_one_for_no_server_still_is() -> None:
    servers = {"tracker": {"command": "tracker-mcp"}}
    tables = {"tracker__search": {"approval": "allow"}}
    build_registry(Settings(mcp={"servers": servers}, tools=tables))
    with pytest.raises(Exception, match="settings name tool 'nothing__search'"):
        build_registry(Settings(mcp={"servers": servers}, tools={"nothing__search": {"approval": "allow"}}))


# Commands -------------------------------------------------------------------------------------------------------


def test_parley_tools_lists_both_servers_tools_with_their_server_policy_and_state(configured: Path) -> None:
    result = cli.invoke(app, ["tools", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["calculator"]["server"] is None
    notes, docs = rows["notes__write_note"], rows["docs__search"]
    assert (notes["server"], notes["approval"], notes["enabled"]) == ("notes", "approve", True)
    assert notes["server_state"] == "connected (7 tools, protocol 2026-07-28)"
    assert notes["parameters"]["required"] == ["text"]
    assert (docs["server"], docs["approval"], docs["timeout_s"]) == ("docs", "allow", 5.0)
    assert rows["docs__write_note"]["approval"] == "confirm"
    assert "notes__add_tool" not in rows and "docs__add_tool" in rows

    text = cli.invoke(app, ["tools"]).output
    assert "notes__search(query, limit)  [enabled; MCP server notes connected (7 tools" in text


def test_parley_tools_says_which_server_failed_and_why(configured: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PARLEY_MCP__SERVERS__TRACKER__COMMAND", "no-such-tracker-mcp")
    monkeypatch.setenv("PARLEY_MCP__SERVERS__TRACKER__CONNECT_TIMEOUT_S", "5")
    result = cli.invoke(app, ["tools"])
    assert result.exit_code == 0, result.output
    assert (
        "MCP server tracker (stdio): failed: command not found: no-such-tracker-mcp; its tools are left out"
        in result.output
    )
    assert "docs__search" in result.output


def test_parley_mcp_check_prints_each_servers_tools_or_why_it_failed(
    configured: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = cli.invoke(app, ["mcp", "check"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "ok   notes (stdio, protocol 2026-07-28): 6 tools"
    assert "     notes__write_note  [approval approve; timeout 30 s]" in lines
    assert "     left out by include/exclude: add_tool" in lines
    assert "ok   docs (http, protocol 2026-07-28): 7 tools" in lines
    assert "     docs__search  [approval allow; timeout 5 s]" in lines

    monkeypatch.setenv("PARLEY_MCP__SERVERS__TRACKER__URL", "http://127.0.0.1:9/mcp")
    failed = cli.invoke(app, ["mcp", "check", "--json"])
    assert failed.exit_code == 1
    report = {row["server"]: row for row in json.loads(failed.stdout)}
    assert report["notes"]["ok"] and len(report["docs"]["tools"]) == 7
    assert not report["tracker"]["ok"] and report["tracker"]["state"] == "failed"
    assert "ConnectError" in report["tracker"]["error"]


def test_parley_mcp_check_with_no_servers_says_how_to_add_one() -> None:
    result = cli.invoke(app, ["mcp", "check"])
    assert result.exit_code == 0
    assert "No MCP servers are configured" in result.output


# Readiness and metrics ------------------------------------------------------------------------------------------


async def test_readyz_and_metrics_report_each_server_and_only_a_required_one_makes_it_unready(
    tmp_path: Path,
) -> None:
    servers = {
        "notes": notes_server(tmp_path / "notes.txt"),
        "optional": {"command": "no-such-mcp", "connect_timeout_s": 5},
        "vital": {"command": "no-such-mcp-either", "required": True, "connect_timeout_s": 5},
    }
    settings = Settings(db={"path": tmp_path / "parley.db"}, mcp={"servers": servers})
    async with build_app(settings, model=scripted_model(ScriptedEngine(responder=echo))) as parley:
        checks = await readiness(parley)
        metrics = generate_latest(REGISTRY).decode()
        assert "notes__search" in parley.agent.tool_names
    assert checks["mcp:notes"] == {"ok": True, "state": "connected", "tools": 7}
    assert checks["mcp:optional"] == {"ok": True, "state": "failed", "error": "command not found: no-such-mcp"}
    assert checks["mcp:vital"] == {"ok": False, "state": "failed", "error": "command not found: no-such-mcp-either"}
    assert 'parley_mcp_server_up{server="notes"} 1.0' in metrics
    assert 'parley_mcp_server_up{server="vital"} 0.0' in metrics
    assert 'parley_mcp_server_tools{server="notes"} 7.0' in metrics
    assert 'parley_mcp_connects_total{server="notes"} 1.0' in metrics
    assert re.search(r'parley_mcp_connect_failures_total\{server="vital"\} [1-9]', metrics), metrics


# SIGTERM ----------------------------------------------------------------------------------------------------


def searches_notes(system: str, user: str) -> dict[str, Any]:
    """A model that searches the notes first, then answers with what it found."""
    if "next_tool_name" in system and "[[ ## observation_0 ## ]]" not in user:
        return {"next_thought": "look it up", "next_tool_name": "notes__search", "next_tool_args": {"query": "q"}}
    return react_brain(system, user)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_stops_parley_run_and_leaves_no_mcp_child_process(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    server = notes_server(tmp_path / "notes.txt")
    server["env"][PID_ENV] = str(pid_file)
    with FakeOpenAI(searches_notes) as model:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PARLEY_", "SLACK_", "DISCORD_"))}
        env.update(
            PARLEY_DB__PATH=str(tmp_path / "parley.db"),
            PARLEY_LM__MODEL="openai/fake-model",
            PARLEY_LM__API_BASE=model.url,
            PARLEY_LM__API_KEY="sk-test",
            PARLEY_MCP__SERVERS=json.dumps({"notes": server}),
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "run"],
            env=env,
            cwd=tmp_path,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write("what do the notes say?\n")
        proc.stdin.flush()  # stdin stays open: `parley run` keeps serving
        answer = proc.stdout.readline()
        child = int(pid_file.read_text())
        assert alive(child)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert answer.strip() == "3 results for 'q' from notes", err
    assert proc.returncode == 143, err
    deadline = time.monotonic() + 5
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)
    assert "Traceback" not in err
