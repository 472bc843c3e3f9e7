"""The chat commands (bot/commands.py) as people use them on each platform: Slack through signed requests to the
real adapter against the fake Slack, Discord through the fake Discord's interactions with the real discord.py,
the console through its stdin and stdout. One test per command, over the three; each platform's world is built
once for the module (one storage, one dispatcher), and each test uses channels of its own."""

from __future__ import annotations

import html
import io
import itertools
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import pytest
import pytest_asyncio

from adapters.console import ConsoleAdapter
from adapters.discord import DiscordAdapter, DiscordConfig
from adapters.slack import SlackAdapter, SlackConfig
from agent.approvals import ApprovalBroker, ApprovalPolicy
from agent.commands import COMMANDS, ConfirmClick
from agent.engines import ScriptedEngine, scripted_model
from agent.engines.scripted import echo
from agent.ports import Handlers
from agent.runtime import Agent, AgentOptions
from agent.storage import Storage, open_storage
from agent.storage.models import UsageRecord
from agent.tools import BUILTIN_TOOLS, ToolRegistry, ToolRunner
from bot.channels import ChannelConfig
from bot.commands import HANDLERS, NO_SCOPE, ChatCommands
from bot.config import ENV_ALIASES, Settings
from bot.dispatcher import Dispatcher, DispatchOptions
from bot.http import build_http_app, serve
from tests.fakes.discord import Callback, FakeDiscord
from tests.fakes.slack import FakeSlack, block_actions_body, slack_headers, slash_command_body

pytestmark = pytest.mark.asyncio(loop_scope="module")

SECRET = "commands-signing-secret"
# Discord's 4050 has approvers of its own (its threads too): 6002, who holds no approver role.
POLICY = ApprovalPolicy(
    approvers={"slack": ["UBOSS"]},
    approver_roles={"discord": ["9100"]},
    channel_approvers={"discord:3000/4050": ["6002"]},
)
# Each test's channel on every platform: its own memory, settings and usage.
TESTS = ("ask", "stop", "facts", "forget", "tools", "help", "usage", "channel")
ROOM = {name: i + 1 for i, name in enumerate(TESTS)}


@dataclass
class Shared:
    """What every platform's world shares: one database, the tools, the agent and the settings."""

    storage: Storage
    registry: ToolRegistry
    agent: Agent
    broker: ApprovalBroker
    channels: ChannelConfig

    def commands(self, dispatcher: Dispatcher) -> ChatCommands:
        return ChatCommands(
            self.storage, self.registry, dispatcher.submit, POLICY, channels=self.channels, stop=dispatcher.stop_mine
        )


class Platform(Protocol):
    """A platform as a person uses it: type a command in a room, see what they see."""

    name: str
    member: str  # someone who may not change settings
    approver: str
    newcomer: str  # someone who has not asked anything yet

    def key(self, room: int) -> str:
        """The room's memory key."""
        ...

    async def run(self, line: str, *, room: int, user: str, confirm: bool = False) -> list[str]:
        """Every text the person sees, in order. A confirmation shows as `[label]` (a button) or `[y/N]`; with
        `confirm` it is clicked (answered yes) by the same person in the same room and its answer follows."""
        ...


@dataclass
class SlackSide:
    fake: FakeSlack
    url: str
    name: str = "slack"
    member: str = "U1"
    approver: str = "UBOSS"
    newcomer: str = "U2"
    _n: Iterator[int] = field(default_factory=itertools.count)

    def key(self, room: int) -> str:
        return f"slack:T1/C{room}"

    async def _post(self, body: bytes) -> str:
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url, data=body, headers=slack_headers(SECRET, body)) as answer,
        ):
            assert answer.status == 200
            return await answer.text()

    async def run(self, line: str, *, room: int, user: str, confirm: bool = False) -> list[str]:
        name = f"r{next(self._n)}"
        body = slash_command_body(
            "/parley",
            line,
            user_id=user,
            channel_id=f"C{room}",
            response_url=self.fake.response_url(name),
            trigger_id=name,
        )
        ack = json.loads(await self._post(body))
        blocks = ack.get("blocks") or []
        seen = [blocks[0]["text"]["text"] if blocks else ack["text"]]
        buttons = [element for block in blocks if block["type"] == "actions" for element in block["elements"]]
        seen += [f"[{button['text']['text']}]" for button in buttons]
        if line.startswith("ask "):
            answers = await self.fake.wait_for(lambda: self.fake.responses.get(name), what="the answer")
            seen.append(answers[0]["text"])
        if confirm and buttons:
            action = {"action_id": buttons[0]["action_id"], "value": buttons[0]["value"]}
            click = block_actions_body(
                [action],
                user_id=user,
                channel_id=f"C{room}",
                message_ts="1.0",
                response_url=self.fake.response_url(name),
            )
            await self._post(click)
            [replaced] = await self.fake.wait_for(lambda: self.fake.responses.get(name), what="the confirmation")
            assert replaced["replace_original"] is True
            seen.append(replaced["text"])
        return [html.unescape(text) for text in seen]  # as Slack shows the mrkdwn


@dataclass
class DiscordSide:
    fake: FakeDiscord
    name: str = "discord"
    member: str = "6000"
    approver: str = "8000"  # by a role listed in [approvals] roles
    newcomer: str = "6001"

    def key(self, room: int) -> str:
        return f"discord:{self.fake.guild_id}/{4000 + room}"

    async def _callback(self, interaction: dict[str, Any]) -> Callback:
        def answered() -> list[Callback]:
            return [c for c in self.fake.interaction_callbacks if c.interaction_id == interaction["id"]]

        found: list[Callback] = await self.fake.wait_for(answered, what="the interaction's response")
        [callback] = found
        return callback

    async def run(self, line: str, *, room: int, user: str, confirm: bool = False) -> list[str]:
        name, _, rest = line.partition(" ")
        options: dict[str, str] = {}
        if name == "ask":
            options = {"question": rest}
        elif name == "usage" and rest:
            options = {"whose": rest}
        elif name == "channel":
            action, _, more = rest.partition(" ")
            key, _, value = more.partition(" ")
            options = {k: v for k, v in {"action": action, "key": key, "value": value}.items() if v}
        channel = str(4000 + room)
        interaction = self.fake.interaction_create_command(name, options, user_id=user, channel_id=channel)
        callback = await self._callback(interaction)
        assert callback.type == 5, "every command is deferred at once: Discord allows 3 s for the first response"
        # `/ask`'s placeholder and answer are for everyone; every other reply is seen only by the caller.
        assert bool(int((callback.data or {}).get("flags") or 0) & 64) == (name != "ask")
        token = interaction["token"]
        followups = await self.fake.wait_for(
            lambda: [f for f in self.fake.followups if f.token == token], what="the follow-up"
        )
        data = followups[0].json
        if name == "ask":
            return [data["content"]]
        buttons = [item for row in data.get("components") or [] for item in row["components"]]
        seen = [data["content"], *(f"[{button['label']}]" for button in buttons)]
        if confirm and buttons:
            click = self.fake.interaction_create_component(buttons[0]["custom_id"], user_id=user, channel_id=channel)
            answer = await self._callback(click)
            assert answer.type == 7  # the prompt is replaced, its button gone
            seen.append((answer.data or {})["content"])
        return seen


@dataclass
class ConsoleSide:
    shared: Shared
    name: str = "console"
    member: str = "me"  # the person at the terminal is the operator: an approver
    approver: str = "me"
    newcomer: str = "you"

    def key(self, room: int) -> str:
        return f"room{room}"

    async def run(self, line: str, *, room: int, user: str, confirm: bool = False) -> list[str]:
        return await self.chat(f"/{line}\n" + ("y\n" if confirm else ""), room=room, user=user)

    async def chat(self, lines: str, *, room: int, user: str) -> list[str]:
        """`lines` piped into a console chat: what it printed."""
        out = io.StringIO()
        console = ConsoleAdapter(channel=self.key(room), user=user, stdin=io.StringIO(lines), stdout=out)
        shared = self.shared
        options = DispatchOptions(rate_limit=None)
        async with Dispatcher(shared.storage, shared.agent, [console], options, shared.broker) as dispatcher:
            await console.run(Handlers(dispatcher.submit, dispatcher.decide, shared.commands(dispatcher)))
        return [line.rstrip() for line in out.getvalue().splitlines()]


@dataclass
class Worlds:
    shared: Shared
    platforms: dict[str, Platform]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def worlds(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Worlds]:
    home = tmp_path_factory.mktemp("commands")
    with pytest.MonkeyPatch.context() as env:
        for name in [n for n in os.environ if n.startswith("PARLEY_") or n in ENV_ALIASES]:
            env.delenv(name)
        env.chdir(home)
        settings = Settings()
    storage = await open_storage(path=Path(home) / "parley.db")
    registry = ToolRegistry.of(*BUILTIN_TOOLS)
    broker = ApprovalBroker(storage.approvals, POLICY)
    runner = ToolRunner(registry, storage.executions, gate=broker)
    agent = Agent(storage, scripted_model(ScriptedEngine(responder=echo)), runner, AgentOptions(max_iters=2))
    channels = ChannelConfig(settings, storage, tool_names=lambda: [spec.name for spec in registry])
    shared = Shared(storage, registry, agent, broker, channels)

    with FakeSlack() as fake_slack, FakeDiscord(channel_ids=tuple(str(4000 + n) for n in ROOM.values())) as fake:
        fake.member_roles["8000"] = ["9100"]
        slack = SlackAdapter(
            SlackConfig(bot_token="xoxb-test", signing_secret=SECRET, api_url=fake_slack.api_url, stream=False)
        )
        discord = DiscordAdapter(
            DiscordConfig(
                token=fake.token, api_url=fake.api_url, gateway_url=fake.gateway_url, ready_timeout_s=0.05, stream=False
            )
        )
        dispatcher = Dispatcher(storage, agent, [slack, discord], DispatchOptions(rate_limit=None), broker)
        handlers = Handlers(dispatcher.submit, dispatcher.decide, shared.commands(dispatcher))
        slack.connect(handlers)
        discord.connect(handlers)

        async def ready() -> dict[str, object]:
            return {"database": True}

        http = await serve(build_http_app(slack=slack, readiness=ready), "127.0.0.1", 0)
        try:
            async with dispatcher:
                await slack.start()
                await discord.start()
                url = f"http://127.0.0.1:{http.addresses[0][1]}/slack/events"
                yield Worlds(
                    shared,
                    {"slack": SlackSide(fake_slack, url), "discord": DiscordSide(fake), "console": ConsoleSide(shared)},
                )
                await dispatcher.join()
        finally:
            await slack.close()
            await discord.close()
            await http.cleanup()
            runner.close()
            await storage.close()


@pytest.fixture(params=["slack", "discord", "console"])
def platform(request: pytest.FixtureRequest, worlds: Worlds) -> Platform:
    return worlds.platforms[request.param]


@pytest.fixture
def storage(worlds: Worlds) -> Storage:
    return worlds.shared.storage


async def test_ask_stores_the_question_and_its_answer_follows(platform: Platform) -> None:
    seen = await platform.run("ask what is the plan?", room=ROOM["ask"], user=platform.member)
    assert seen[-1] == "re: what is the plan?"
    # Discord shows its own "thinking" placeholder until the answer replaces it.
    assert platform.name == "discord" or seen[0] == "Thinking about: what is the plan?"


async def test_stop_with_no_answer_under_way_says_so(platform: Platform) -> None:
    """The answer it would stop (a streamed one, or one waiting for an approval) is shown in tests/test_streaming."""
    seen = await platform.run("stop", room=ROOM["stop"], user=platform.member)
    assert seen == ["No answer to you is under way in this channel."]


async def test_facts_lists_what_the_channel_remembers(platform: Platform, storage: Storage) -> None:
    room = ROOM["facts"]
    assert await platform.run("facts", room=room, user=platform.member) == ["Nothing remembered in this channel yet."]
    await storage.facts.add(platform.key(room), "standup", "the standup is at 9:30")
    listed = "\n".join(await platform.run("facts", room=room, user=platform.member))
    assert "standup" in listed and "the standup is at 9:30" in listed


async def test_forget_asks_first_and_erases_only_once_confirmed(platform: Platform, storage: Storage) -> None:
    room, key = ROOM["forget"], platform.key(ROOM["forget"])
    await storage.facts.add(key, "retro", "the retro is on friday")
    question = "Forget everything this channel remembers? Its facts and conversation history are erased for good."
    declined = await platform.run("forget", room=room, user=platform.member)
    if platform.name == "console":  # asked on the console, and no yes came: nothing happens
        assert declined == [f"{question} [y/N]", "Cancelled: nothing changed."]
    else:
        assert declined == [question, "[Yes, forget]"]
    assert [f.key for f in await storage.facts.of_channel(key)] == ["retro"]  # nothing erased without a yes

    confirmed = await platform.run("forget", room=room, user=platform.member, confirm=True)
    assert confirmed[-1] == "Forgotten: 1 facts and 0 turns."
    assert await storage.facts.of_channel(key) == []


async def test_tools_lists_only_the_tools_the_channel_may_use(platform: Platform, worlds: Worlds) -> None:
    room = ROOM["tools"]
    everything = "\n".join(await platform.run("tools", room=room, user=platform.member))
    assert "`calculator` (allow)" in everything and "`current_time` (allow)" in everything
    await worlds.shared.channels.set(platform.key(room), "tools", "calculator", actor="test")
    allowed = "\n".join(await platform.run("tools", room=room, user=platform.member))
    assert "`calculator` (allow)" in allowed and "current_time" not in allowed


async def test_help_lists_every_command_as_it_is_typed_there(platform: Platform) -> None:
    shown = await platform.run("help", room=ROOM["help"], user=platform.member)
    text = "\n".join(shown)
    prefix = "/parley " if platform.name == "slack" else "/"
    for name, info in COMMANDS.items():
        assert f"`{prefix}{name} {info.args}".strip() + "`" in text, name
    if platform.name != "discord":  # Discord offers only the commands it registered
        assert await platform.run("dance", room=ROOM["help"], user=platform.member) == shown


async def test_usage_shows_tokens_cost_and_the_budget_left(platform: Platform, worlds: Worlds) -> None:
    room, key, user = ROOM["usage"], platform.key(ROOM["usage"]), platform.newcomer
    elsewhere = platform.key(ROOM["usage"] + 40)
    for who, where, tokens in ((user, key, (1000, 500)), ("someone-else", key, (300, 200)), (user, elsewhere, (0, 9))):
        usage = UsageRecord(time.time(), platform.name, where, f"{platform.name}:{who}", "m", 2, *tokens, cost=0.0123)
        await worlds.shared.storage.usage.record(usage)
    await worlds.shared.channels.set(key, "user_daily", "10000 tokens", actor="test")

    mine = "\n".join(await platform.run("usage", room=room, user=user))
    assert "Today: 1,509 tokens in 2 answers, $0.0246" in mine and "This month: 1,509 tokens" in mine
    # A person's budget set for this channel counts their use of this channel only.
    assert "Daily budget in this channel: 8,500 tokens left of 10,000 tokens (resets in" in mine
    channel = "\n".join(await platform.run("usage channel", room=room, user=user))
    assert "This channel" in channel and "Today: 2,000 tokens in 2 answers, $0.0246" in channel


async def test_channel_settings_are_shown_and_changed_by_approvers_only(platform: Platform, worlds: Worlds) -> None:
    room, key = ROOM["channel"], platform.key(ROOM["channel"])
    settings = worlds.shared.storage.channel_settings
    if platform.member != platform.approver:
        refused = await platform.run("channel set instructions Talk like a pirate.", room=room, user=platform.member)
        assert refused == ["Only an approver of this channel can see or change its settings."]
        assert await settings.values([key]) == {}

    done = await platform.run("channel set instructions Talk like a pirate.", room=room, user=platform.approver)
    assert done[0].startswith(f"Set `instructions` at {key} (it was not set here).")
    assert await settings.values([key]) == {key: {"instructions": "Talk like a pirate."}}
    [change] = await settings.history(key)
    assert (change.new, change.actor) == ("Talk like a pirate.", f"{platform.name}:{platform.approver}")

    shown = "\n".join(await platform.run("channel show", room=room, user=platform.approver))
    assert "Talk like a pirate." in shown and f"set at {key}" in shown
    bad = await platform.run("channel set mode sideways", room=room, user=platform.approver)
    assert bad == ["mode: 'sideways' is not a mode: use react, decompose, vote"]
    [reset, *_] = await platform.run("channel reset instructions", room=room, user=platform.approver)
    assert reset.startswith("Reset `instructions`") and await settings.values([key]) == {}


async def test_every_command_people_are_offered_has_a_handler() -> None:
    assert list(HANDLERS) == list(COMMANDS)


async def test_a_piped_console_command_sees_what_the_lines_before_it_did(worlds: Worlds) -> None:
    console = worlds.platforms["console"]
    assert isinstance(console, ConsoleSide)
    printed = await console.chat("remember that the demo is at noon\n/facts\n", room=ROOM["facts"] + 50, user="me")
    assert printed[-1] == "- **demo**: the demo is at noon"


async def test_a_confirmation_clicked_in_another_channel_erases_nothing(worlds: Worlds) -> None:
    shared = worlds.shared
    await shared.storage.facts.add("slack:T1/C90", "keep", "this stays")
    commands = ChatCommands(shared.storage, shared.registry, _refuse, POLICY)
    # The button of C90's prompt, clicked in C91 (a copied payload, a forwarded message).
    click = ConfirmClick("slack", "C91", "U1", "forget", "slack:T1/C90", workspace="T1")
    reply = await commands.confirm(click)
    assert reply.text == "That button belongs to another channel: nothing was forgotten."
    assert [f.key for f in await shared.storage.facts.of_channel("slack:T1/C90")] == ["keep"]


async def _refuse(message: object) -> bool:
    raise AssertionError("nothing is submitted")


async def test_a_discord_command_in_a_thread_follows_the_parent_channel_and_a_dm_has_no_settings(
    worlds: Worlds,
) -> None:
    discord = worlds.platforms["discord"]
    assert isinstance(discord, DiscordSide)
    fake, parent = discord.fake, f"discord:{discord.fake.guild_id}/4050"
    fake.thread_parents["4950"] = "4050"  # a thread of 4050 (room 50), itself room 950
    await worlds.shared.channels.set(parent, "tools", "calculator", actor="test")

    tools = "\n".join(await discord.run("tools", room=950, user=discord.member))
    assert "`calculator`" in tools and "current_time" not in tools
    # 4050's own approver may change its threads' settings; the thread's are its own scope under 4050.
    assert await discord.run("channel set mode vote", room=950, user=discord.member) == [
        "Only an approver of this channel can see or change its settings."
    ]
    [done] = await discord.run("channel set mode vote", room=950, user="6002")
    assert done.startswith(f"Set `mode` at {parent}/4950 (it was not set here).")
    shown = "\n".join(await discord.run("channel show", room=950, user="6002"))
    assert f"- `tools`: calculator _(set at {parent})_" in shown

    interaction = fake.interaction_create_command("channel", {"action": "show"}, user_id="8000", dm=True)
    followups = await fake.wait_for(lambda: [f for f in fake.followups if f.token == interaction["token"]])
    assert followups[0].json["content"] == NO_SCOPE
