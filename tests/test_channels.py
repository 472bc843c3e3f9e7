"""Channel settings: resolution (thread, channel, workspace, global; chat over the file), the allowlist enforced
by the runner, per-channel model and instructions in the request the model receives, per-channel rate limits,
and `parley channel` on the command line."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dspy.lm15 import ServerError
from typer.testing import CliRunner

from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo, request_text
from agent.messages import IncomingMessage
from agent.profile import ChannelProfile
from agent.runtime import Agent, AgentOptions, Resilience
from agent.storage import Storage
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from agent.tools.registry import tool
from bot.answering import answer
from bot.app import build_app
from bot.channels import ChannelConfig, InvalidSetting, scope_chain
from bot.cli import app as cli_app
from bot.config import Settings, SettingsError, load_settings
from bot.dispatcher import Dispatcher, DispatchOptions
from tests.conftest import final, step
from tests.fakes.openai_server import FakeOpenAI
from tests.fakes.platform import RecordingPlatform

THREAD = "1700000000.0001"


def slack(
    text: str = "hello", *, channel: str = "C2", thread: str = "", user: str = "U1", event: str = ""
) -> IncomingMessage:
    return IncomingMessage(
        platform="slack",
        workspace="T1",
        channel=channel,
        thread=thread,
        user=user,
        text=text,
        event_id=event or f"{channel}-{thread}-{text}",
    )


# Resolution ---------------------------------------------------------------------------------------------------


def test_a_scope_names_its_wider_scopes_and_nonsense_is_refused() -> None:
    assert scope_chain(f"slack:T1/C2/{THREAD}") == [f"slack:T1/C2/{THREAD}", "slack:T1/C2", "slack:T1"]
    assert scope_chain("discord:G1/C2") == ["discord:G1/C2", "discord:G1"]
    assert scope_chain("team") == ["team"]
    for bad in ("slack:", "slack:T1/C2/x/y", "team/a/b", "has space", "irc:T1"):
        with pytest.raises(InvalidSetting):
            scope_chain(bad)


async def test_settings_resolve_thread_then_channel_then_workspace_then_global_and_chat_beats_the_file(
    storage: Storage,
) -> None:
    settings = Settings(
        models={"fast": {"model": "openai/fast"}, "smart": {"model": "openai/smart"}},
        agent={"mode": "react"},
        dispatch={"rate_limit": "10/minute"},
        budgets={"user_daily": "1000 tokens"},
        channels={
            "slack:T1": {"instructions": "workspace", "mode": "vote", "model": "fast", "user_daily": "500 tokens"},
            "slack:T1/C2": {"instructions": "channel", "tools": ["calculator"], "rate_limit": "3/minute"},
            f"slack:T1/C2/{THREAD}": {"instructions": "thread"},
        },
    )
    channels = ChannelConfig(settings, storage, tool_names=lambda: ["calculator", "current_time"])

    in_thread = await channels.resolve(slack(thread=THREAD))
    assert in_thread.profile == ChannelProfile("thread", "fast", frozenset({"calculator"}), "vote")
    assert (in_thread.rate_limit, in_thread.channel_rate) == ("3/minute", True)
    assert str(in_thread.budgets.user_daily) == "500 tokens"

    in_channel = await channels.resolve(slack())
    assert in_channel.profile.instructions == "channel"
    elsewhere = await channels.resolve(slack(channel="C9"))
    assert (elsewhere.profile.instructions, elsewhere.profile.tools, elsewhere.rate_limit) == (
        "workspace",
        None,
        "10/minute",
    )
    assert not elsewhere.channel_rate
    other_workspace = await channels.resolve(IncomingMessage("slack", "C2", "U1", "hi", workspace="T7"))
    assert other_workspace.profile == ChannelProfile(mode="react")
    assert str(other_workspace.budgets.user_daily) == "1,000 tokens"

    # A value set from chat wins over the file's at its scope, and still loses to a narrower scope's.
    assert await channels.set("slack:T1/C2", "instructions", "chat channel", "slack:U9") is None
    assert await channels.set("slack:T1/C2", "model", "smart", "slack:U9") is None
    assert (await channels.resolve(slack())).profile.instructions == "chat channel"
    assert (await channels.resolve(slack(thread=THREAD))).profile == ChannelProfile(
        "thread", "smart", frozenset({"calculator"}), "vote"
    )
    shown = {row.key: (row.value, row.source) for row in await channels.show(f"slack:T1/C2/{THREAD}")}
    assert shown["instructions"] == ("thread", f'[channels."slack:T1/C2/{THREAD}"]')
    assert shown["model"] == ("smart", "set at slack:T1/C2")
    assert shown["mode"] == ("vote", '[channels."slack:T1"]')
    assert shown["channel_daily"] == ("off", "[budgets] channel_daily")

    assert await channels.reset("slack:T1/C2", "instructions", "slack:U9") == "chat channel"
    assert (await channels.resolve(slack())).profile.instructions == "channel"


async def test_a_discord_thread_is_a_thread_of_its_parent_channel_and_a_dm_follows_the_global_settings(
    storage: Storage,
) -> None:
    settings = Settings(
        budgets={"user_daily": "900 tokens"},
        channels={
            "discord:G1": {"user_monthly": "5000 tokens"},
            "discord:G1/C2": {"tools": ["calculator"], "rate_limit": "3/minute", "user_daily": "100 tokens"},
        },
    )
    channels = ChannelConfig(settings, storage)
    await channels.set("discord:G1/C2/TH9", "instructions", "in the thread", "discord:U9")

    def discord(channel: str, *, parent: str = "", workspace: str = "G1") -> IncomingMessage:
        return IncomingMessage("discord", channel, "U1", "hi", workspace=workspace, parent=parent)

    thread = await channels.resolve(discord("TH9", parent="C2"))
    assert thread.profile == ChannelProfile("in the thread", None, frozenset({"calculator"}), "react")
    assert (thread.rate_limit, thread.channel_rate) == ("3/minute", True)
    # The person's daily budget is the channel's own (it counts their use of the channel); the monthly one the
    # server's (it counts their use anywhere).
    assert (str(thread.budgets.user_daily), thread.budgets.in_channel) == ("100 tokens", frozenset({"user_daily"}))
    assert str(thread.budgets.user_monthly) == "5,000 tokens"
    # Its memory is the thread's own; its settings and usage are the parent's.
    conversation = discord("TH9", parent="C2").conversation
    assert (conversation.channel, conversation.settings_channel) == ("discord:G1/TH9", "discord:G1/C2")

    dm = await channels.resolve(discord("D5", workspace=""))
    assert (dm.profile, dm.channel_rate) == (ChannelProfile(mode="react"), False)
    assert (str(dm.budgets.user_daily), dm.budgets.in_channel) == ("900 tokens", frozenset())


async def test_a_stored_value_that_no_longer_parses_is_ignored_with_a_warning(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(models={"gone": {"model": "openai/gone"}}, channels={"slack:T1": {"mode": "decompose"}})
    channels = ChannelConfig(settings, storage)
    await channels.set("slack:T1/C2", "model", "gone", "cli:ops")
    await storage.channel_settings.set("slack:T1/C2", "mode", "chaos", actor="cli:ops", now=1.0)
    channels.settings = Settings(channels={"slack:T1": {"mode": "decompose"}})  # [models.gone] was removed
    with caplog.at_level(logging.WARNING, logger="parley.channels"):
        resolved = await channels.resolve(slack())
        await channels.resolve(slack())
    assert (resolved.profile.model, resolved.profile.mode) == (None, "decompose")
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings  # once per bad value, not per message
    assert any("'chaos'" in w for w in warnings) and any("'gone'" in w for w in warnings)


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("colour", "blue", "no channel setting 'colour'"),
        ("model", "huge", "no model named 'huge'"),
        ("tools", "calculator, rm_rf", "no tool named 'rm_rf'"),
        ("mode", "chaos", "not a mode"),
        ("rate_limit", "lots", "not a rate"),
        ("user_daily", "fifty", "not a budget"),
    ],
)
async def test_setting_an_unknown_key_or_a_bad_value_is_refused_with_a_clear_sentence(
    storage: Storage, key: str, value: str, says: str
) -> None:
    channels = ChannelConfig(
        Settings(models={"fast": {"model": "openai/fast"}}), storage, tool_names=lambda: ["calculator"]
    )
    with pytest.raises(InvalidSetting, match=says) as refused:
        await channels.set("slack:T1/C2", key, value, "slack:U1")
    assert "\n" not in refused.value.message
    assert await storage.channel_settings.history() == []


def test_a_channel_model_that_names_no_named_model_stops_start_up_with_one_line() -> None:
    Path("parley.toml").write_text('[models.fast]\nmodel = "openai/fast"\n\n[channels."slack:T1/C2"]\nmodel = "fsat"\n')
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert '[channels."slack:T1/C2"] model' in str(err.value) and "'fsat'" in str(err.value)
    assert "\n" not in str(err.value)
    Path("parley.toml").write_text('[budgets]\nstep_down = "cheap"\n')
    with pytest.raises(SettingsError, match=r"\[budgets\] step_down: 'cheap' names no \[models.cheap\]"):
        load_settings()


# The allowlist, enforced ----------------------------------------------------------------------------------------

ran: list[str] = []


@tool
def launch_codes(target: str) -> str:
    """Launch something (a tool no channel should reach by accident)."""
    ran.append(target)
    return "launched"


async def test_a_tool_outside_the_allowlist_is_never_offered_and_a_call_of_it_is_a_call_of_no_tool(
    storage: Storage,
) -> None:
    ran.clear()
    engine = ScriptedEngine([step("launch_codes", target="moon"), step("finish"), final("done")])
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS, launch_codes), storage.executions)
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=3))
    profile = ChannelProfile(tools=frozenset({"calculator", "current_time"}))
    try:
        reply = await answer(agent, storage, slack("launch please"), profile=profile)
    finally:
        runner.close()
    first = request_text(engine.requests[0])
    assert "launch_codes" not in first and "recall_facts" not in first
    assert "calculator" in first and "current_time" in first
    assert ran == []
    assert reply.steps[0].outcome == "unknown_tool"
    assert reply.steps[0].observation == (
        "Error: there is no tool named 'launch_codes'. Available: calculator, current_time, finish."
    )
    [execution] = await storage.executions.recent()
    assert (execution.tool, execution.outcome) == ("launch_codes", "unknown_tool")
    # The default profile still offers every tool: the restriction is the channel's, not the agent's.
    assert "launch_codes" in agent.tool_names


async def test_profiles_get_their_own_built_agent_once_and_the_default_keeps_its_own(storage: Storage) -> None:
    engine = ScriptedEngine(responder=echo)
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=2))
    pirate = ChannelProfile(instructions="Talk like a pirate.", tools=frozenset({"calculator"}))
    try:
        for profile in (pirate, ChannelProfile(), pirate):
            await agent.respond(slack("hi"), profile=profile)
    finally:
        runner.close()
    prompts = [request_text(r) for r in engine.requests]
    assert "Talk like a pirate." in prompts[0] and "Talk like a pirate." not in prompts[2]
    # The pirate's agent was built once and is the one every later pirate message gets; the default keeps its own.
    built = agent._module(pirate, seeing=False, constrained=False)
    assert agent._module(pirate, seeing=False, constrained=False) is built and len(agent._modules) == 1
    assert agent._module(ChannelProfile(), seeing=False, constrained=False) is agent.mode


async def test_a_named_model_has_its_own_breaker_and_the_fallback_model_after_it(storage: Storage) -> None:
    main, smart = ScriptedEngine(responder=echo), ScriptedEngine([ServerError("down", provider="scripted")])
    backup = ScriptedEngine(responder=echo)
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
    default = scripted_model(main)
    models = {"smart": scripted_model(smart), "main": default}
    agent = Agent(
        storage, default, runner, AgentOptions(max_iters=2), Resilience(fallback=scripted_model(backup)), models=models
    )
    try:
        reply = await agent.respond(slack("hi"), profile=ChannelProfile(model="smart"))
    finally:
        runner.close()
    assert reply.reply.text == "re: hi" and len(smart.requests) == 1 and len(backup.requests) == 2
    assert main.requests == []
    smart_breaker = agent.named_paths["smart"][0][1]
    assert smart_breaker.metrics.failures == 1 and agent.paths[0][1].metrics.failures == 0
    assert agent.named_paths["smart"][1] == agent.paths[1]  # the one fallback, its one breaker
    assert agent.named_paths["main"] == agent.paths and len(agent.all_paths) == 3


# Per-channel model and instructions, on the real HTTP path ---------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def system_of(body: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in body["messages"] if m["role"] == "system")


async def test_per_channel_model_instructions_and_tools_reach_the_request_the_model_receives(
    fake: FakeOpenAI, tmp_path: Path
) -> None:
    settings = Settings(
        db={"path": tmp_path / "parley.db"},
        lm={"model": "openai/main", "api_base": fake.url, "api_key": "sk-test"},
        models={"smart": {"model": "openai/smart", "temperature": 0.0}, "same": {"model": "openai/main"}},
        channels={
            "slack:T1/C2": {"model": "smart", "instructions": "Answer like a pirate.", "tools": ["current_time"]}
        },
    )
    async with build_app(settings) as parley:
        assert parley.agent.named_paths["same"][0] == parley.agent.paths[0]  # one handle, one breaker
        for message in (slack("what is 2+3?"), slack("what is 2+3?", channel="C3")):
            resolved = await parley.channels.resolve(message)
            reply = await answer(parley.agent, parley.storage, message, profile=resolved.profile)
            assert reply.status == "answered", reply
    pirate = [r for r in fake.requests if "Answer like a pirate." in system_of(r)]
    plain = [r for r in fake.requests if "Answer like a pirate." not in system_of(r)]
    assert pirate and plain
    assert {r["model"] for r in pirate} == {"smart"} and {r["model"] for r in plain} == {"main"}
    assert {r["temperature"] for r in pirate} == {0.0}
    assert all("calculator" not in system_of(r) for r in pirate)
    assert any("calculator" in system_of(r) for r in plain)


async def test_a_refused_tools_value_lists_only_the_tools_that_are_enabled(tmp_path: Path) -> None:
    model = {"model": "openai/main", "api_base": "http://127.0.0.1:9", "api_key": "sk-test"}
    async with build_app(Settings(db={"path": tmp_path / "parley.db"}, lm=model)) as parley:
        with pytest.raises(InvalidSetting) as refused:
            await parley.channels.set("slack:T1/C2", "tools", "calculator, nope", "slack:U1")
    listed = refused.value.message.split("; tools: ", 1)[1].split(", ")
    # weather and web_search exist but are off here (no provider is configured): not offered as choices.
    assert "calculator" in listed and "remember_fact" in listed
    assert "weather" not in listed and "web_search" not in listed


# Rate limits per channel ------------------------------------------------------------------------------------------


async def test_a_channel_rate_limit_replaces_the_global_one_and_counts_per_user_and_channel(storage: Storage) -> None:
    settings = Settings(channels={"slack:T1/C2": {"rate_limit": "1/minute"}, "slack:T1/C3": {"rate_limit": "off"}})
    channels = ChannelConfig(settings, storage)
    platform = RecordingPlatform("slack")
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS))
    agent = Agent(storage, scripted_model(ScriptedEngine(responder=echo)), runner, AgentOptions(max_iters=2))
    options = DispatchOptions(rate_limit="2/minute")
    try:
        async with Dispatcher(storage, agent, [platform], options, channels=channels) as dispatcher:
            for i in range(3):
                for channel in ("C2", "C3", "C4"):
                    await dispatcher.submit(slack(f"q{i}", channel=channel))
            await dispatcher.join()
    finally:
        runner.close()
    texts = platform.by_conversation()
    assert ["faster than" in t for t in texts["C2"]] == [False, True, True]
    assert "at most 1 messages per minute in this channel" in texts["C2"][1]
    assert not any("faster than" in t for t in texts["C3"])  # off here, whatever the global rate says
    # C4 has no rate of its own: the global 2/minute applies, counting only messages of channels without one.
    assert ["faster than" in t for t in texts["C4"]] == [False, False, True]


# `parley channel` --------------------------------------------------------------------------------------------------

cli = CliRunner()


def test_parley_channel_set_refuses_a_bad_value_in_one_line_and_history_shows_who_when_old_and_new(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("USER", "ops")
    monkeypatch.setenv("LOGNAME", "ops")
    Path("parley.toml").write_text('[models.fast]\nmodel = "openai/fast"\n')

    bad = cli.invoke(cli_app, ["channel", "set", "slack:T1/C2", "mode", "chaos"])
    assert bad.exit_code == 2
    assert bad.output.strip().count("\n") == 0 and "mode: 'chaos' is not a mode" in bad.output
    assert cli.invoke(cli_app, ["channel", "set", "slack:T1/C2", "model", "huge"]).exit_code == 2

    assert cli.invoke(cli_app, ["channel", "set", "slack:T1/C2", "model", "fast"]).exit_code == 0
    changed = cli.invoke(cli_app, ["channel", "set", "slack:T1/C2", "user_daily", "50000 tokens"])
    assert changed.exit_code == 0 and "50,000 tokens" in changed.output
    again = cli.invoke(cli_app, ["channel", "set", "slack:T1/C2", "user_daily", "$2.50"])
    assert "$2.50 (was 50,000 tokens)" in again.output
    assert cli.invoke(cli_app, ["channel", "reset", "slack:T1/C2", "model"]).exit_code == 0

    shown = cli.invoke(cli_app, ["channel", "show", "slack:T1/C2/17.1", "--json"])
    rows = {row["key"]: row for row in json.loads(shown.output)}
    assert rows["user_daily"] == {"key": "user_daily", "value": "$2.50", "source": "set at slack:T1/C2"}
    assert rows["model"]["value"] == "default"

    history = cli.invoke(cli_app, ["channel", "history", "slack:T1/C2"])
    lines = history.output.strip().splitlines()
    assert len(lines) == 4, lines
    assert all(" UTC  cli:ops  slack:T1/C2  " in line for line in lines)
    assert lines[0].endswith("model: (unset) -> fast")
    assert lines[2].endswith("user_daily: 50,000 tokens -> $2.50")
    assert lines[3].endswith("model: fast -> (unset)")
