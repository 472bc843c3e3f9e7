"""The Discord adapter end to end: the real discord.py against a fake Discord (REST and gateway) on 127.0.0.1,
the real dispatcher, inbox, approvals and agent on a scripted model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dspy.lm15 import Request

from adapters.discord import DiscordAdapter, DiscordConfig, DiscordUnavailable
from agent.approvals import ApprovalBroker, ApprovalPolicy
from agent.commands import COMMANDS, NO_COMMANDS
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo, request_text
from agent.ports import Handlers
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage
from agent.storage.models import UsageRecord
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from agent.tools.registry import tool
from bot.app import approver_check
from bot.budgets import BudgetGuard
from bot.channels import ChannelConfig
from bot.config import Settings
from bot.dispatcher import Dispatcher, DispatchOptions
from tests.fakes.discord import FakeDiscord

CHANNEL = "4000"
POLICY = ApprovalPolicy(approvers={"discord": ["7000"]}, approver_roles={"discord": ["9100"]}, expiry_s=5)
LONG = "\n\n".join(f"Paragraph {i}: " + "words " * 60 for i in range(8)) + "\n\n```python\n" + "x = 1\n" * 200 + "```"


def model(request: Request) -> dict[str, Any]:
    text = request_text(request)
    question = text.rsplit("[[ ## question ## ]]", 1)[1].split("\n\n", 1)[0].strip()
    observed = "[[ ## tool_name_0 ## ]]\ndeploy" in text
    if "next_tool_name" in text:
        if question.startswith("deploy ") and not observed:
            return {"next_thought": "deploy", "next_tool_name": "deploy", "next_tool_args": {"service": question[7:]}}
        return {"next_thought": "done", "next_tool_name": "finish", "next_tool_args": {}}
    if observed:
        return {"reasoning": "tool", "answer": "deploy finished"}
    if question == "long please":
        return {"reasoning": "long", "answer": LONG}
    return echo(request)


@dataclass
class World:
    fake: FakeDiscord
    adapter: DiscordAdapter
    dispatcher: Dispatcher
    engine: ScriptedEngine
    deployed: list[str]

    async def answered(self, count: int) -> list[dict[str, Any]]:
        await self.fake.wait_for(lambda: len(self.fake.messages(CHANNEL)) >= count, what=f"{count} messages")
        await self.dispatcher.join()
        return self.fake.messages(CHANNEL)


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    with FakeDiscord(channel_ids=(CHANNEL,)) as running:
        yield running


def build(
    storage: Storage,
    fake: FakeDiscord,
    deployed: list[str],
    *,
    policy: ApprovalPolicy = POLICY,
    channels: ChannelConfig | None = None,
    budgets: BudgetGuard | None = None,
    engine: ScriptedEngine | None = None,
    **options: Any,
) -> tuple[DiscordAdapter, Dispatcher, ScriptedEngine]:
    @tool(name="deploy", approval="approve")
    def deploy(service: str) -> str:
        """Deploy a service."""
        deployed.append(service)
        return f"deployed {service}"

    broker = ApprovalBroker(storage.approvals, policy)
    runner = ToolRunner(ToolRegistry.of(*BUILTIN_TOOLS, deploy), gate=broker)
    engine = engine or ScriptedEngine(responder=model)
    agent = Agent(storage, scripted_model(engine), runner, AgentOptions(max_iters=3))
    config = DiscordConfig(
        token=fake.token,
        api_url=fake.api_url,
        gateway_url=fake.gateway_url,
        ready_timeout_s=0.05,
        **{"stream": False, **options},
    )
    adapter = DiscordAdapter(config)
    dispatcher = Dispatcher(
        storage, agent, [adapter], DispatchOptions(rate_limit=None), broker, channels=channels, budgets=budgets
    )
    adapter.connect(Handlers(dispatcher.submit, dispatcher.decide))
    return adapter, dispatcher, engine


@pytest.fixture
async def world(storage: Storage, fake: FakeDiscord) -> AsyncIterator[World]:
    deployed: list[str] = []
    adapter, dispatcher, engine = build(storage, fake, deployed)
    async with dispatcher:
        await adapter.start()
        yield World(fake, adapter, dispatcher, engine, deployed)
        await adapter.close()


async def test_a_mention_is_answered_as_a_reply_that_pings_nobody(world: World) -> None:
    sent = world.fake.message_create("<@2000> hello there", mentions_bot=True)
    [reply] = await world.answered(1)
    assert reply["content"] == "re: hello there"
    assert reply["message_reference"]["message_id"] == sent["id"]
    [post] = world.fake.requests_to("POST /channels/{id}/messages")
    assert post.json["allowed_mentions"] == {"parse": []}
    assert world.fake.typing_in(CHANNEL) >= 1


async def test_a_dm_is_answered_in_the_dm(world: World) -> None:
    world.fake.dm_message_create("hi in private")
    await world.fake.wait_for(lambda: world.fake.messages(world.fake.dm_channel_id), what="dm reply")
    await world.dispatcher.join()
    [reply] = world.fake.messages(world.fake.dm_channel_id)
    assert reply["content"] == "re: hi in private"


async def test_messages_without_a_mention_and_from_bots_are_ignored(world: World) -> None:
    world.fake.message_create("just chatting")
    world.fake.message_create("<@2000> beep", mentions_bot=True, author_bot=True)
    world.fake.message_create("!ask what is up?")
    [reply] = await world.answered(1)
    assert reply["content"] == "re: what is up?"  # the prefix command, nothing else
    await asyncio.sleep(0.1)
    assert len(world.fake.messages(CHANNEL)) == 1


async def test_a_long_reply_is_split_in_order_with_balanced_fences(world: World) -> None:
    world.fake.message_create("<@2000> long please", mentions_bot=True)
    await world.fake.wait_for(lambda: world.engine.requests, what="the model")
    await world.dispatcher.join()
    chunks = [m["content"] for m in world.fake.messages(CHANNEL)]
    assert len(chunks) >= 3 and all(len(c) <= 2000 for c in chunks)
    assert all(c.count("```") % 2 == 0 for c in chunks)
    assert chunks[0].startswith("Paragraph 0:") and "Paragraph 7:" in "".join(chunks)
    assert "".join(chunks).count("x = 1") == 200


async def test_a_replayed_message_create_is_answered_once(world: World) -> None:
    sent = world.fake.message_create("<@2000> once only", mentions_bot=True, message_id="9100")
    world.fake.send_dispatch("MESSAGE_CREATE", sent)
    await world.answered(1)
    await asyncio.sleep(0.1)
    assert [m["content"] for m in world.fake.messages(CHANNEL)] == ["re: once only"]


async def test_a_rate_limited_post_is_retried(world: World) -> None:
    world.fake.fail_next("POST /channels/{id}/messages", 429)
    world.fake.message_create("<@2000> patience", mentions_bot=True)
    [reply] = await world.answered(1)
    assert reply["content"] == "re: patience"
    assert len(world.fake.requests_to("POST /channels/{id}/messages")) == 2


async def test_approval_buttons_by_approver_non_approver_and_twice(world: World) -> None:
    world.fake.message_create("<@2000> deploy api", mentions_bot=True, author_id="6000")
    prompt = (
        await world.fake.wait_for(
            lambda: [m for m in world.fake.messages(CHANNEL) if m.get("components")], what="prompt"
        )
    )[0]
    approve = prompt["components"][0]["components"][0]["custom_id"]
    assert approve.startswith("parley:approve:")

    world.fake.interaction_create_component(approve, user_id="6000", message_id=prompt["id"])  # the requester
    await world.fake.wait_for_followups(1)
    assert "You cannot do that: you are not an approver" in world.fake.followups[0].json["content"]
    # A double click: both reach Parley before the buttons are removed; the first wins.
    world.fake.interaction_create_component(approve, user_id="7000", message_id=prompt["id"])
    world.fake.interaction_create_component(approve, user_id="7000", message_id=prompt["id"])
    await world.fake.wait_for(lambda: world.deployed, what="the deploy")
    await world.fake.wait_for_followups(2)
    assert "already approved by discord:7000" in world.fake.followups[1].json["content"]
    await world.answered(2)
    assert world.deployed == ["api"]
    assert any("approved by discord:7000" in (e.json.get("content") or "") for e in world.fake.edits)


async def test_a_button_pressed_after_a_restart_is_still_handled(storage: Storage, fake: FakeDiscord) -> None:
    deployed: list[str] = []
    adapter, dispatcher, _ = build(storage, fake, deployed)
    async with dispatcher:
        await adapter.start()
        fake.message_create("<@2000> deploy web", mentions_bot=True, author_id="6000")
        prompt = (await fake.wait_for(lambda: [m for m in fake.messages(CHANNEL) if m.get("components")]))[0]
        await adapter.close()
    custom_id = prompt["components"][0]["components"][0]["custom_id"]

    adapter, dispatcher, _ = build(storage, fake, deployed)  # a new process on the same database
    async with dispatcher:
        await adapter.start()
        fake.interaction_create_component(custom_id, user_id="7000", message_id=prompt["id"])
        await fake.wait_for_followups(1)
        await adapter.close()
    # The click reached the new process (a dynamic item, no state in storage); the request had expired on restart.
    assert "already expired" in fake.followups[0].json["content"]
    assert deployed == []


async def test_reconnect_resumes_and_messages_still_flow(world: World) -> None:
    world.fake.send_reconnect()
    await world.fake.wait_for_resumes(1)
    world.fake.message_create("<@2000> still there?", mentions_bot=True)
    [reply] = await world.answered(1)
    assert reply["content"] == "re: still there?"


async def test_a_refused_message_content_intent_is_one_clear_error(storage: Storage) -> None:
    with FakeDiscord(channel_ids=(CHANNEL,), intents_allowed=False) as strict:
        adapter, _, _ = build(storage, strict, [])
        with pytest.raises(DiscordUnavailable, match="message content intent"):
            await adapter.start()
        await adapter.close()


async def test_commands_are_synced_only_when_they_change(storage: Storage, fake: FakeDiscord, tmp_path: Path) -> None:
    state = tmp_path / "discord-commands.sha256"

    async def start_and_stop(**options: Any) -> None:
        adapter, dispatcher, _ = build(storage, fake, [], command_state=state, **options)
        async with dispatcher:
            await adapter.start()
            await adapter.close()

    await start_and_stop()
    await start_and_stop()  # a restart with the same commands does not sync again
    assert [s.guild_id for s in fake.command_syncs] == [None]
    await start_and_stop(command_guild=int(fake.guild_id))  # the development guild is a change
    assert [s.guild_id for s in fake.command_syncs] == [None, fake.guild_id]
    assert {c["name"] for c in fake.command_syncs[-1].commands} == set(COMMANDS)


async def test_a_member_with_an_approver_role_can_approve(storage: Storage, fake: FakeDiscord) -> None:
    fake.member_roles["8000"] = ["9100"]  # an "ops" role listed in [approvals] roles
    fake.member_roles["8001"] = ["9200"]  # some other role
    deployed: list[str] = []
    adapter, dispatcher, _ = build(storage, fake, deployed)
    async with dispatcher:
        await adapter.start()
        fake.message_create("<@2000> deploy cache", mentions_bot=True, author_id="6000")
        prompt = (await fake.wait_for(lambda: [m for m in fake.messages(CHANNEL) if m.get("components")]))[0]
        approve = prompt["components"][0]["components"][0]["custom_id"]
        fake.interaction_create_component(approve, user_id="8001", message_id=prompt["id"])
        await fake.wait_for_followups(1)
        fake.interaction_create_component(approve, user_id="8000", message_id=prompt["id"])
        await fake.wait_for(lambda: deployed, what="the deploy")
        await dispatcher.join()
        await adapter.close()
    assert "not an approver" in fake.followups[0].json["content"]
    assert deployed == ["cache"]


async def test_after_an_invalid_session_it_identifies_again_and_keeps_answering(world: World) -> None:
    world.fake.send_invalid_session(resumable=False)
    await world.fake.wait_for_identifies(2, timeout_s=20)  # discord.py waits 5 s before identifying again
    await world.fake.wait_for(lambda: world.fake.ready_count >= 2, timeout_s=20, what="a second READY")
    world.fake.message_create("<@2000> new session?", mentions_bot=True)
    [reply] = await world.answered(1)
    assert reply["content"] == "re: new session?"


async def test_a_reply_left_undelivered_goes_out_at_start_before_the_gateway_opens(
    storage: Storage, fake: FakeDiscord
) -> None:
    from agent.messages import IncomingMessage, Reply

    inbox = storage.inbox
    message = IncomingMessage(
        platform="discord",
        workspace=fake.guild_id,
        channel=CHANNEL,
        user="6000",
        text="q",
        message_id="8100",
        event_id="8100",
        mentioned=True,
    )
    entry = await inbox.accept(message)
    assert entry is not None
    await inbox.answer(entry.id, Reply("the answer from before the crash"))
    adapter, dispatcher, engine = build(storage, fake, [])
    await adapter.login()  # what `parley run` does before starting the dispatcher
    async with dispatcher:
        await dispatcher.join()
    await adapter.close()
    assert [m["content"] for m in fake.messages(CHANNEL)] == ["the answer from before the crash"]
    assert fake.identifies == 0 and engine.requests == []


# Threads ------------------------------------------------------------------------------------------------------


async def test_a_thread_follows_its_parent_channels_tools_and_rate_but_keeps_a_memory_of_its_own(
    storage: Storage, fake: FakeDiscord
) -> None:
    fake.thread_parents["4100"] = CHANNEL  # known from the start (GUILD_CREATE lists it)
    parent = f"discord:{fake.guild_id}/{CHANNEL}"
    settings = Settings(channels={parent: {"tools": ["calculator"], "rate_limit": "2/minute"}})
    adapter, dispatcher, engine = build(storage, fake, [], channels=ChannelConfig(settings, storage))
    async with dispatcher:
        await adapter.start()
        fake.thread_parents["4200"] = CHANNEL  # opened since: discord.py has not seen it
        for n, (thread, text) in enumerate((("4100", "first"), ("4200", "second"), ("4100", "third")), 1):
            fake.message_create(f"<@2000> {text}", mentions_bot=True, channel_id=thread)
            await fake.wait_for(lambda n=n: len(fake.messages("4100") + fake.messages("4200")) >= n, what=text)
            await dispatcher.join()
        await adapter.close()
    first, third = (m["content"] for m in fake.messages("4100"))
    assert first == "re: first" and [m["content"] for m in fake.messages("4200")] == ["re: second"]
    # The parent's rate counts the person's messages in all its threads: the third is one too many.
    assert "at most 2 messages per minute in this channel" in third
    assert "current_time" not in request_text(engine.requests[0]) and "calculator" in request_text(engine.requests[0])
    assert [t.text for t in await storage.turns.of_channel(f"discord:{fake.guild_id}/4100")] == ["first", "re: first"]


async def test_a_confirmation_clicked_where_no_commands_are_connected_is_answered(
    world: World, fake: FakeDiscord
) -> None:
    """A click is always answered (else Discord shows "This interaction failed"), even by an adapter that was
    connected without the command set."""
    click = fake.interaction_create_component(f"parley:confirm:forget:discord:{fake.guild_id}/{CHANNEL}")
    [callback] = await fake.wait_for(
        lambda: [c for c in fake.interaction_callbacks if c.interaction_id == click["id"]], what="the answer"
    )
    assert (callback.data or {}).get("content") == NO_COMMANDS


async def test_a_prompt_in_a_thread_is_decided_by_its_parent_channels_approvers(
    storage: Storage, fake: FakeDiscord
) -> None:
    fake.thread_parents["4100"] = CHANNEL
    parent = f"discord:{fake.guild_id}/{CHANNEL}"
    policy = ApprovalPolicy(approvers={"discord": ["7000"]}, channel_approvers={parent: ["7001"]})
    deployed: list[str] = []
    adapter, dispatcher, _ = build(storage, fake, deployed, policy=policy)
    async with dispatcher:
        await adapter.start()
        fake.message_create("<@2000> deploy api", mentions_bot=True, channel_id="4100")
        prompt = (await fake.wait_for(lambda: [m for m in fake.messages("4100") if m.get("components")]))[0]
        approve = prompt["components"][0]["components"][0]["custom_id"]
        fake.interaction_create_component(approve, user_id="7000", message_id=prompt["id"], channel_id="4100")
        await fake.wait_for_followups(1)
        fake.interaction_create_component(approve, user_id="7001", message_id=prompt["id"], channel_id="4100")
        await fake.wait_for(lambda: deployed, what="the deploy")
        await dispatcher.join()
        await adapter.close()
    # The parent channel's list decides in its threads, as it does in the channel itself.
    assert "not an approver" in fake.followups[0].json["content"]
    assert deployed == ["api"]


async def test_always_in_a_thread_allows_the_tool_in_its_parent_channel_and_all_its_threads(
    storage: Storage, fake: FakeDiscord
) -> None:
    """A thread follows its parent channel's approvers; "Always in this channel" clicked there is granted for the
    parent channel, so the channel and its other threads run the tool without asking again."""
    fake.thread_parents.update({"4100": CHANNEL, "4200": CHANNEL})
    parent = f"discord:{fake.guild_id}/{CHANNEL}"
    policy = ApprovalPolicy(approvers={"discord": ["7000"]})
    deployed: list[str] = []
    adapter, dispatcher, _ = build(storage, fake, deployed, policy=policy)
    async with dispatcher:
        await adapter.start()
        fake.message_create("<@2000> deploy api", mentions_bot=True, channel_id="4100")
        prompt = (await fake.wait_for(lambda: [m for m in fake.messages("4100") if m.get("components")]))[0]
        always = prompt["components"][0]["components"][2]
        assert always["label"] == "Always in this channel"
        fake.interaction_create_component(
            always["custom_id"], user_id="7000", message_id=prompt["id"], channel_id="4100"
        )
        await fake.wait_for(lambda: deployed, what="the first deploy")
        fake.message_create("<@2000> deploy web", mentions_bot=True, channel_id="4200")
        fake.message_create("<@2000> deploy db", mentions_bot=True)
        await fake.wait_for(lambda: len(deployed) == 3, what="two more deploys, asked of no one")
        await dispatcher.join()
        await adapter.close()
    assert sorted(deployed) == ["api", "db", "web"]
    assert [(g.tool, g.channel) for g in await storage.approvals.grants()] == [("deploy", parent)]
    assert not [m for m in fake.messages("4200") + fake.messages(CHANNEL) if m.get("components")]


async def test_a_member_with_an_approver_role_is_exempt_from_budgets_when_approvers_are(
    storage: Storage, fake: FakeDiscord
) -> None:
    fake.member_roles["8000"] = ["9100"]  # an approver by role
    settings = Settings(budgets={"user_daily": "10 tokens", "exempt_approvers": True})
    for user in ("8000", "6000"):  # both are over their budget already
        await storage.usage.record(UsageRecord(time.time(), "discord", "x", f"discord:{user}", "m", 1, 50, 50))
    budgets = BudgetGuard(storage.usage, is_approver=approver_check(POLICY))
    adapter, dispatcher, _ = build(storage, fake, [], channels=ChannelConfig(settings, storage), budgets=budgets)
    async with dispatcher:
        await adapter.start()
        fake.message_create("<@2000> from the approver", mentions_bot=True, author_id="8000")
        fake.message_create("<@2000> from a member", mentions_bot=True, author_id="6000")
        await fake.wait_for(lambda: len(fake.messages(CHANNEL)) >= 2, what="two replies")
        await dispatcher.join()
        await adapter.close()
    replies = sorted(m["content"] for m in fake.messages(CHANNEL))
    assert replies[0].startswith("You've used your daily budget of 10 tokens")
    assert replies[1] == "re: from the approver"
