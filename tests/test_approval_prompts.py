"""Approval prompts: where each was posted is stored with its request, every settlement (and a restart) takes
its buttons off, and the arguments are shown in full, literally, folded with a marker when long. The Slack and
Discord prompts are checked on what the fake servers received."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest

from adapters.approval_text import show_call
from adapters.discord import DiscordAdapter, DiscordConfig
from adapters.slack import SlackAdapter, SlackConfig
from agent.approvals import (
    ApprovalBroker,
    ApprovalPolicy,
    ApprovalRequest,
    ApprovalState,
    Decision,
    PromptLocation,
    args_hash,
)
from agent.messages import Conversation
from agent.runtime import Agent
from agent.storage import Storage
from agent.tools import ToolRegistry
from agent.tools.context import ToolContext
from agent.tools.registry import ToolSpec, tool
from agent.tools.runner import ToolCall, ToolRefused
from bot.dispatcher import Dispatcher, DispatchOptions
from tests.fakes.discord import FakeDiscord
from tests.fakes.platform import RecordingPlatform
from tests.fakes.slack import FakeSlack
from tests.slack_world import World

# Everything a value can do to a prompt: ping, disguise a link, break the layout, be too long to show.
ARGS = {
    "ping": "<!channel> @everyone <@&9100>",
    "link": "<https://a|b> [click](https://evil.example)",
    "script": "first line\nsecond line",
    "payload": "z" * 5000,
}
DANGEROUS = ("<!channel>", "<https://a|b>", "@everyone", "<@&9100>", "[click](https://evil.example)")
DISCORD_CHANNEL = "4000"


def request_for(
    platform: str, channel: str, *, thread: str = "", args: dict[str, Any] | None = None
) -> ApprovalRequest:
    args = ARGS if args is None else args
    now = time.time()
    return ApprovalRequest(
        id=f"req-{platform}-{len(args)}",
        tool="deploy",
        args=args,
        args_hash=args_hash("deploy", args),
        level="approve",
        platform=platform,
        channel=channel,
        thread=thread,
        requester="6000" if platform == "discord" else "U1",
        created_at=now,
        expires_at=now + 60,
    )


def full_call(request: ApprovalRequest) -> dict[str, Any]:
    return {"tool": request.tool, "arguments": request.args, "args_hash": request.args_hash}


# The broker stores each prompt's location and updates it on every settlement ---------------------------------


@tool(name="deploy", approval="approve")
def deploy(service: str) -> str:
    """Deploy a service."""
    return f"deployed {service}"


@pytest.fixture
def spec() -> ToolSpec:
    found = ToolRegistry.of(deploy).get("deploy")
    assert found is not None
    return found


def asking(storage: Storage, user: str = "alice") -> ToolCall:
    context = ToolContext(storage, Conversation("test:ops"), user, run_id="run-1", platform="test")
    return ToolCall("deploy", {"service": "api"}, context)


def broker_on(storage: Storage, platform: RecordingPlatform, expiry_s: float = 5.0) -> ApprovalBroker:
    broker = ApprovalBroker(storage.approvals, ApprovalPolicy(approvers={"test": ["boss"]}, expiry_s=expiry_s))
    broker.ports[platform.name] = platform
    return broker


async def until_asked(platform: RecordingPlatform) -> ApprovalRequest:
    for _ in range(500):
        if platform.approval_requests:
            return platform.approval_requests[-1]
        await asyncio.sleep(0.01)
    raise AssertionError("no approval request was shown")


@pytest.mark.parametrize("ending", ["approve", "deny", "expire", "cancel"])
async def test_each_settlement_updates_the_prompt_where_it_was_posted(
    storage: Storage, spec: ToolSpec, ending: str
) -> None:
    platform = RecordingPlatform("test")
    broker = broker_on(storage, platform, expiry_s=0.3 if ending == "expire" else 5.0)
    asked = asyncio.create_task(broker.check(asking(storage), spec))
    request = await until_asked(platform)
    stored = await broker.store.get(request.id)
    assert stored is not None and stored.prompt == PromptLocation("test", "test:ops", "prompt-1")
    if ending in ("approve", "deny"):
        await broker.decide(Decision(request.id, "test", "boss", ending == "approve", request.args_hash))
    elif ending == "cancel":  # the answer is given up (a shutdown)
        asked.cancel()
    results = await asyncio.gather(asked, return_exceptions=True)
    if ending == "approve":
        assert results == [None]
    [settled] = platform.settled
    expected = {"approve": "approved", "deny": "denied", "expire": "expired", "cancel": "expired"}[ending]
    assert settled.state.value == expected and settled.prompt == PromptLocation("test", "test:ops", "prompt-1")
    assert await broker.store.open_prompts() == []


async def test_a_decision_landing_before_the_location_is_stored_still_updates_the_prompt(
    storage: Storage, spec: ToolSpec
) -> None:
    class Hasty(RecordingPlatform):
        """Someone decides while the prompt is still being posted (the console decides inside the call)."""

        async def request_approval(self, request: ApprovalRequest) -> PromptLocation:
            location = await super().request_approval(request)
            await broker.decide(Decision(request.id, "test", "boss", True, request.args_hash))
            return location

    platform = Hasty("test")
    broker = broker_on(storage, platform)
    await broker.check(asking(storage), spec)
    [settled] = platform.settled
    assert settled.state is ApprovalState.APPROVED and settled.prompt is not None
    assert await broker.store.open_prompts() == []


async def test_a_prompt_whose_update_failed_is_updated_at_the_next_start(storage: Storage, spec: ToolSpec) -> None:
    platform = RecordingPlatform("test")
    platform.fail_settle = 1
    broker = broker_on(storage, platform)
    asked = asyncio.create_task(broker.check(asking(storage), spec))
    request = await until_asked(platform)
    await broker.decide(Decision(request.id, "test", "boss", False, request.args_hash))
    with pytest.raises(ToolRefused):
        await asked
    assert platform.settled == [] and [r.id for r in await broker.store.open_prompts()] == [request.id]

    later = RecordingPlatform("test")  # the next process
    assert await broker_on(storage, later).expire_pending() == []
    assert [(s.id, s.state, s.prompt) for s in later.settled] == [
        (request.id, ApprovalState.DENIED, PromptLocation("test", "test:ops", "prompt-1"))
    ]
    assert await broker.store.open_prompts() == []


async def test_a_restart_expires_a_pending_request_and_updates_the_prompt_an_earlier_process_posted(
    storage: Storage, agent: Agent
) -> None:
    request = replace(request_for("test", "test:ops"), id="from-before")
    approvals = storage.approvals
    await approvals.create(request)
    await approvals.shown(request.id, PromptLocation("test", "C-old", "old-prompt"))  # then the process died

    platform = RecordingPlatform("test")
    broker = ApprovalBroker(storage.approvals, ApprovalPolicy())
    async with Dispatcher(storage, agent, [platform], DispatchOptions(rate_limit=None), broker):
        pass
    [settled] = platform.settled
    assert (settled.id, settled.state, settled.reason) == (request.id, ApprovalState.EXPIRED, "restart")
    assert settled.prompt == PromptLocation("test", "C-old", "old-prompt")
    assert await approvals.open_prompts() == []


# The arguments, folded once for every platform ------------------------------------------------------------------------


def test_a_long_value_is_folded_with_its_length_and_nothing_is_cut_silently() -> None:
    shown = show_call({"short": "ok", "long": "y" * 1234})
    short, long = shown.arguments
    assert (short.value, short.folded) == ('"ok"', False)
    assert long.folded and long.length == 1234 and long.value == '"' + "y" * 299
    assert shown.folded


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("a\u202eb", '"a\\u202eb"'),  # a right-to-left override would reverse what follows
        ("zero\u200bwidth", '"zero\\u200bwidth"'),
        ("tab\tand\nnewline", '"tab\\tand\\nnewline"'),
        ("nbsp\u00a0", '"nbsp\\u00a0"'),
        ("tag\U000e0041", '"tag\\udb40\\udc41"'),  # an invisible tag character, as JSON spells it
        ("````", '"``\\u0060`"'),  # no code fence inside a value
        ("héllo ✓", '"héllo ✓"'),  # visible text stays as it is
    ],
)
def test_characters_that_do_not_show_are_written_as_escapes(value: str, shown: str) -> None:
    [argument] = show_call({"v": value}).arguments
    assert argument.value == shown and json.loads(argument.value) == value


def test_a_cut_never_splits_an_escape() -> None:
    [argument] = show_call({"v": "\u202e" * 100}, value_chars=10).arguments
    assert argument.value == '"' + "\\u202e" and argument.folded


# Slack ----------------------------------------------------------------------------------------------------------------


def sections(blocks: list[dict[str, Any]]) -> list[str]:
    return [b["text"]["text"] for b in blocks if b["type"] == "section"]


async def test_the_slack_prompt_shows_every_argument_literally_and_folds_the_long_one(world: World) -> None:
    request = request_for("slack", "slack:T1/C1", thread="1701.5")
    location = await world.adapter.request_approval(request)

    [prompt] = [p for p in world.fake.posted() if p.get("blocks")]
    blocks = prompt["blocks"]
    assert location == PromptLocation("slack", "C1", world.fake.calls_to("chat.postMessage")[-1].response["ts"])
    assert prompt["thread_ts"] == "1701.5" and prompt["text"] == "Approval needed to run deploy"
    shown = sections(blocks)
    assert shown[1:5] == [
        '`ping`\n```"&lt;!channel&gt; @everyone &lt;@&amp;9100&gt;"```',
        '`link`\n```"&lt;https://a|b&gt; [click](https://evil.example)"```',
        '`script`\n```"first line\\nsecond line"```',  # the newline as `\n`: the layout holds
        '`payload`\n```"' + "z" * 299 + "```\n_… [folded: 5,000 characters; full arguments in the file above]_",
    ]
    assert all(b["text"]["verbatim"] for b in blocks if b["type"] == "section")  # no automatic links or mentions
    everything = json.dumps(prompt)
    assert "<!channel>" not in everything and "<https://a|b>" not in everything and "<@&9100>" not in everything

    # The full arguments: a file in the same thread, posted before the prompt.
    [attached] = world.fake.shared_files()
    assert (attached["name"], attached["channel"], attached["thread_ts"]) == ("deploy-arguments.json", "C1", "1701.5")
    assert float(attached["ts"]) < float(location.message)
    assert json.loads(attached["content"]) == full_call(request)


async def test_a_slack_prompt_says_so_when_the_full_arguments_could_not_be_attached(world: World) -> None:
    world.fake.fail_next("files.getUploadURLExternal", "missing_scope")
    await world.adapter.request_approval(request_for("slack", "slack:T1/C1"))
    [prompt] = [p for p in world.fake.posted() if p.get("blocks")]
    assert "_… [folded: 5,000 characters; the full arguments could not be attached]_" in sections(prompt["blocks"])[4]


async def test_a_slack_prompt_with_nothing_folded_has_no_file(world: World) -> None:
    await world.adapter.request_approval(request_for("slack", "slack:T1/C1", args={"service": "api"}))
    [prompt] = [p for p in world.fake.posted() if p.get("blocks")]
    assert sections(prompt["blocks"])[1] == '`service`\n```"api"```'
    assert world.fake.shared_files() == [] and "folded" not in json.dumps(prompt)


@pytest.mark.parametrize(
    ("action", "outcome"),
    [
        ("parley_approve", ":white_check_mark: approved by slack:UBOSS"),
        ("parley_deny", ":no_entry: denied by slack:UBOSS"),
        (None, ":hourglass: expired (no decision in time)"),
    ],
)
async def test_every_settlement_takes_the_buttons_off_the_slack_prompt(
    world: World, action: str | None, outcome: str
) -> None:
    await world.mention("deploy api", ts="1701.1", event_id="EvDeploy")
    await world.fake.wait_for(lambda: [p for p in world.fake.posted() if p.get("blocks")], what="prompt")
    posted = next(c for c in world.fake.calls_to("chat.postMessage") if c.params.get("blocks"))
    ts = str(posted.response["ts"] if posted.response else "")
    if action is not None:
        value = next(b for b in posted.params["blocks"] if b["type"] == "actions")["elements"][0]["value"]
        await world.click("UBOSS", action, value, ts)
    await world.dispatcher.join()
    [shown] = [m for m in world.fake.messages("C1") if m["ts"] == ts]
    assert [b["type"] for b in shown["blocks"]] == ["section"] and outcome in shown["text"]
    assert await world.storage.approvals.open_prompts() == []


async def test_a_restart_takes_the_buttons_off_a_slack_prompt_left_by_an_earlier_process(
    storage: Storage, fake: FakeSlack, agent: Agent
) -> None:
    config = SlackConfig(bot_token="xoxb-test", signing_secret="s", api_url=fake.api_url, stream=False)
    request = request_for("slack", "slack:T1/C1", thread="1701.9", args={"service": "api"})
    earlier = SlackAdapter(config)
    approvals = storage.approvals
    await approvals.create(request)
    location = await earlier.request_approval(request)
    await approvals.shown(request.id, location)
    await earlier.close()  # the process dies with the request pending
    [before] = [m for m in fake.messages("C1") if m["ts"] == location.message]
    assert "actions" in [b["type"] for b in before["blocks"]]

    adapter = SlackAdapter(config)
    broker = ApprovalBroker(approvals, ApprovalPolicy())
    async with Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None), broker):
        pass
    await adapter.close()
    [after] = [m for m in fake.messages("C1") if m["ts"] == location.message]
    assert [b["type"] for b in after["blocks"]] == ["section"]
    assert ":hourglass: expired (restart)" in after["text"]


# Discord --------------------------------------------------------------------------------------------------------------


@pytest.fixture
def discord_fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(channel_ids=(DISCORD_CHANNEL,)) as running:
        yield running


def discord_adapter(fake: FakeDiscord, storage: Storage) -> DiscordAdapter:
    config = DiscordConfig(
        token=fake.token, api_url=fake.api_url, gateway_url=fake.gateway_url, ready_timeout_s=0.05, stream=False
    )
    return DiscordAdapter(config)


@pytest.fixture
async def discord(discord_fake: FakeDiscord, storage: Storage) -> AsyncIterator[DiscordAdapter]:
    adapter = discord_adapter(discord_fake, storage)
    await adapter.login()  # REST only: prompts and their updates need no gateway
    yield adapter
    await adapter.close()


def discord_request(fake: FakeDiscord, args: dict[str, Any] | None = None) -> ApprovalRequest:
    return request_for("discord", f"discord:{fake.guild_id}/{DISCORD_CHANNEL}", args=args)


async def test_the_discord_prompt_shows_every_argument_literally_and_attaches_the_full_ones(
    discord: DiscordAdapter, discord_fake: FakeDiscord
) -> None:
    request = discord_request(discord_fake)
    location = await discord.request_approval(request)

    [sent] = discord_fake.requests_to("POST /channels/{id}/messages")
    body = sent.json
    content = body["content"]
    assert location == PromptLocation("discord", DISCORD_CHANNEL, sent.response["id"])
    assert len(content) <= 2000 and body["allowed_mentions"]["parse"] == []
    parts = content.split("```")
    code, prose = parts[1::2], parts[0::2]
    for text in DANGEROUS:  # shown, inside code blocks only: no ping, no link, no markdown
        assert any(text in block for block in code) and not any(text in line for line in prose), text
    assert '\n"first line\\nsecond line"\n' in code
    assert '\n"' + "z" * 299 + "\n" in code
    assert "*… [folded: 5,000 characters; full arguments in the attached file]*" in content
    assert json.loads(body["_uploads"]["deploy-arguments.json"]) == full_call(request)
    message = discord_fake.message(location.message)
    assert message is not None and [a["filename"] for a in message["attachments"]] == ["deploy-arguments.json"]


async def test_a_discord_prompt_with_many_long_arguments_still_fits_one_message(
    discord: DiscordAdapter, discord_fake: FakeDiscord
) -> None:
    many = {f"argument_{i}": f"<@&{i}> " + "w" * 400 for i in range(30)}
    await discord.request_approval(discord_request(discord_fake, many))
    [sent] = discord_fake.requests_to("POST /channels/{id}/messages")
    content = sent.json["content"]
    assert len(content) <= 2000 and "more arguments not listed; full arguments in the attached file]*" in content
    assert json.loads(sent.json["_uploads"]["deploy-arguments.json"])["arguments"] == many


async def test_a_settled_discord_prompt_loses_its_buttons_and_keeps_its_file(
    discord: DiscordAdapter, discord_fake: FakeDiscord
) -> None:
    request = discord_request(discord_fake)
    location = await discord.request_approval(request)
    denied = replace(request, state=ApprovalState.DENIED, decided_by="discord:7000", prompt=location)
    await discord.approval_settled(denied)
    [edit] = discord_fake.edits
    assert edit.message_id == location.message and edit.json["components"] == []
    assert edit.json["content"] == "`deploy` asked by <@6000>: denied by discord:7000."
    message = discord_fake.message(location.message)
    assert message is not None and message["components"] == [] and len(message["attachments"]) == 1


async def test_a_restart_takes_the_buttons_off_a_discord_prompt_left_by_an_earlier_process(
    storage: Storage, discord_fake: FakeDiscord, agent: Agent
) -> None:
    request = discord_request(discord_fake, {"service": "api"})
    approvals = storage.approvals
    await approvals.create(request)
    earlier = discord_adapter(discord_fake, storage)
    await earlier.login()
    location = await earlier.request_approval(request)
    await approvals.shown(request.id, location)
    await earlier.close()  # the process dies with the request pending
    prompt = discord_fake.message(location.message)
    assert prompt is not None and prompt["components"]

    adapter = discord_adapter(discord_fake, storage)
    await adapter.login()  # as `parley run` does before the dispatcher starts
    broker = ApprovalBroker(approvals, ApprovalPolicy())
    async with Dispatcher(storage, agent, [adapter], DispatchOptions(rate_limit=None), broker):
        pass
    await adapter.close()
    [edit] = discord_fake.edits
    assert edit.message_id == location.message and edit.json["components"] == []
    assert "expired (restart)" in edit.json["content"]
