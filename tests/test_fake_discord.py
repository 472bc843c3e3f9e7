"""The fake Discord against the real discord.py client: REST, gateway, interactions, reconnects, intents."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
import yarl
from discord import app_commands

from tests.fakes.discord import FakeDiscord, Fault

pytestmark = pytest.mark.timeout(30)

INTENTS = discord.Intents.default() | discord.Intents(message_content=True)


class Bot(discord.Client):
    """A real discord.py client; it records what reaches it. `before_identify_hook` is a no-op: discord.py sleeps
    5 s before every IDENTIFY but the first (client.py `before_identify_hook`)."""

    def __init__(self, **options: Any) -> None:
        options.setdefault("intents", INTENTS)
        # on_ready waits this long after the last GUILD_CREATE (state.py `_delay_ready`; default 2 s).
        options.setdefault("guild_ready_timeout", 0.05)
        super().__init__(**options)
        self.tree = app_commands.CommandTree(self)
        self.readies = 0
        self.ready_event = asyncio.Event()
        self.messages: list[discord.Message] = []
        self.message_event = asyncio.Event()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        return None

    async def on_ready(self) -> None:
        self.readies += 1
        self.ready_event.set()

    async def on_message(self, message: discord.Message) -> None:
        self.messages.append(message)
        self.message_event.set()


@pytest.fixture
def fake() -> Iterator[FakeDiscord]:
    old_base = discord.http.Route.BASE
    old_gateway = discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    with FakeDiscord(heartbeat_interval_ms=500) as server:
        # What the adapter does: the REST base and the gateway are class attributes.
        discord.http.Route.BASE = server.api_url
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(server.gateway_url)
        try:
            yield server
        finally:
            discord.http.Route.BASE = old_base
            discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old_gateway


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord, bot: Bot) -> AsyncIterator[Bot]:
    task = asyncio.create_task(bot.start(fake.token))
    try:
        async with asyncio.timeout(5):
            await asyncio.wait({task, asyncio.create_task(bot.ready_event.wait())}, return_when="FIRST_COMPLETED")
        if task.done():
            task.result()  # raise what start() raised
        assert bot.ready_event.is_set()
        yield bot
    finally:
        await bot.close()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 5)


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[Bot]:
    async with running(fake, Bot()) as client:
        yield client


async def next_message(bot: Bot) -> discord.Message:
    await asyncio.wait_for(bot.message_event.wait(), 5)
    bot.message_event.clear()
    return bot.messages[-1]


async def test_connects_and_ready(fake: FakeDiscord, bot: Bot) -> None:
    assert bot.user is not None and bot.user.id == 2000
    assert bot.application_id == 1000
    guild = bot.get_guild(3000)
    assert guild is not None and guild.get_channel(4000) is not None
    assert fake.identifies == 1 and fake.ready_count == 1
    first = fake.identify_payloads[0]
    assert first["token"] == "fake-bot-token" and first["intents"] == INTENTS.value
    assert [f["t"] for f in fake.sent[:2]] == ["READY", "GUILD_CREATE"]
    auth = {r.authorization for r in fake.requests}
    assert auth == {"Bot fake-bot-token"}
    await fake.wait_for(lambda: fake.heartbeats >= 1, what="heartbeat")


async def test_message_create_reaches_on_message_and_reply(fake: FakeDiscord, bot: Bot) -> None:
    sent = fake.message_create("hello there", mentions_bot=True)
    message = await next_message(bot)
    assert message.id == int(sent["id"])
    assert message.content == "<@2000> hello there"
    assert message.author.id == 6000 and not message.author.bot
    assert isinstance(message.author, discord.Member)
    assert message.channel.id == 4000 and message.guild is not None and message.guild.id == 3000
    assert bot.user in message.mentions

    reply = await message.reply("hi", allowed_mentions=discord.AllowedMentions.none())
    assert reply.author.id == 2000 and reply.content == "hi" and reply.channel.id == 4000
    [created] = fake.messages("4000")
    assert created["id"] == str(reply.id)
    assert created["message_reference"]["message_id"] == sent["id"]
    [request] = fake.requests_to("POST /channels/{id}/messages")
    assert request.json["allowed_mentions"] == {"parse": []}
    assert request.json["message_reference"]["message_id"] == int(sent["id"])  # discord.py sends an int

    edited = await reply.edit(content="hi again")
    assert edited.content == "hi again"
    assert fake.messages("4000")[0]["content"] == "hi again"


async def test_dm_message(fake: FakeDiscord, bot: Bot) -> None:
    fake.dm_message_create("psst")
    message = await next_message(bot)
    assert message.guild is None and isinstance(message.channel, discord.DMChannel)
    assert message.channel.id == 5000 and message.content == "psst"
    await message.channel.send("hello in private")
    assert fake.messages("5000")[0]["content"] == "hello in private"


async def test_typing(fake: FakeDiscord, bot: Bot) -> None:
    channel = bot.get_channel(4000)
    assert isinstance(channel, discord.TextChannel)
    async with channel.typing():
        pass
    assert fake.typing_in("4000") == 1


async def test_rate_limit_is_retried(fake: FakeDiscord, bot: Bot) -> None:
    channel = bot.get_channel(4000)
    assert isinstance(channel, discord.TextChannel)
    fake.fail_next("POST /channels/{channel_id}/messages", 429)
    message = await channel.send("after a 429")
    statuses = [r.status for r in fake.requests_to("POST /channels/{id}/messages")]
    assert statuses == [429, 200]
    assert [m["id"] for m in fake.messages("4000")] == [str(message.id)]


async def test_errors_surface(fake: FakeDiscord, bot: Bot) -> None:
    channel = bot.get_channel(4000)
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as too_long:
        await channel.send("x" * 2001)
    assert too_long.value.status == 400 and too_long.value.code == 50035
    fake.fail_next("POST /channels/4000/messages", Fault.error(403, "Missing Permissions", 50013))
    with pytest.raises(discord.Forbidden):
        await channel.send("no")
    with pytest.raises(discord.NotFound):
        await bot.http.send_message(9999, params=discord.http.handle_message_parameters(content="x"))


async def test_enforce_nonce_returns_the_earlier_message(fake: FakeDiscord, bot: Bot) -> None:
    payload = {"content": "once", "nonce": "abc", "enforce_nonce": True}
    first = await bot.http.request(discord.http.Route("POST", "/channels/4000/messages"), json=payload)
    second = await bot.http.request(discord.http.Route("POST", "/channels/4000/messages"), json=payload)
    assert first["id"] == second["id"]
    assert len(fake.messages("4000")) == 1


async def test_slash_command_defer_and_followup(fake: FakeDiscord, bot: Bot) -> None:
    seen: list[tuple[str, int, int]] = []

    @bot.tree.command(name="ask", description="Ask the bot")
    async def ask(interaction: discord.Interaction, question: str) -> None:
        seen.append((question, interaction.user.id, interaction.channel_id or 0))
        await interaction.response.defer()
        await interaction.followup.send("done", allowed_mentions=discord.AllowedMentions.none())

    synced = await bot.tree.sync()
    assert [c.name for c in synced] == ["ask"]
    [sync] = fake.command_syncs
    assert sync.guild_id is None and sync.commands[0]["name"] == "ask"

    payload = fake.interaction_create_command("ask", {"question": "why?"}, user_id="6000", channel_id="4000")
    [callback] = await fake.wait_for_callbacks(1)
    [followup] = await fake.wait_for_followups(1)
    assert seen == [("why?", 6000, 4000)]
    assert callback.type == 5 and callback.interaction_id == payload["id"]
    assert "Authorization" not in callback.headers
    assert followup.json["content"] == "done" and followup.interaction_id == payload["id"]
    assert "Authorization" not in followup.headers
    assert payload["data"]["id"] == str(synced[0].id)


async def test_guild_sync_and_edit_original(fake: FakeDiscord, bot: Bot) -> None:
    guild = discord.Object(id=3000)

    @bot.tree.command(name="ping", description="Ping", guild=guild)
    async def ping(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("thinking...")
        await interaction.edit_original_response(content="pong")

    await bot.tree.sync(guild=guild)
    assert fake.command_syncs[-1].guild_id == "3000"
    assert [c["name"] for c in fake.commands("3000")] == ["ping"]
    payload = fake.interaction_create_command("ping")
    assert payload["data"]["guild_id"] == "3000"
    await fake.wait_for(lambda: fake.original_edits, what="edit of the original response")
    assert fake.interaction_callbacks[0].type == 4
    assert fake.interaction_callbacks[0].data["content"] == "thinking..."
    assert fake.original_edits == [(payload["id"], fake.original_edits[0][1])]
    assert fake.original_edits[0][1]["content"] == "pong"


class Approval(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)
        self.clicks: list[int] = []

    @discord.ui.button(label="Approve", custom_id="approve:42", style=discord.ButtonStyle.success)
    async def approve(self, interaction: discord.Interaction, button: discord.ui.Button[Approval]) -> None:
        self.clicks.append(interaction.user.id)
        await interaction.response.defer()


async def test_component_reaches_persistent_view(fake: FakeDiscord, bot: Bot) -> None:
    view = Approval()
    bot.add_view(view)  # persistent: timeout=None and every item has a custom_id
    # A button on a message this process never sent (e.g. before a restart) reaches the persistent view.
    fake.interaction_create_component("approve:42", user_id="6001", channel_id="4000")
    [callback] = await fake.wait_for_callbacks(1)
    assert view.clicks == [6001]
    assert callback.type == 6  # a component's defer() is DEFERRED_UPDATE_MESSAGE

    # A view sent with a message is bound to that message id, and wins over the persistent one for it.
    channel = bot.get_channel(4000)
    assert isinstance(channel, discord.TextChannel)
    bound = Approval()
    sent = await channel.send("approve?", view=bound)
    stored = fake.messages("4000")[0]
    assert stored["components"][0]["components"][0]["custom_id"] == "approve:42"
    fake.interaction_create_component("approve:42", user_id="6002", message_id=str(sent.id), channel_id="4000")
    await fake.wait_for_callbacks(2)
    assert bound.clicks == [6002] and view.clicks == [6001]


async def test_reconnect_resumes_and_events_flow(fake: FakeDiscord, bot: Bot) -> None:
    fake.send_reconnect()
    fake.message_create("sent while reconnecting")  # replayed on RESUME
    await fake.wait_for_resumes(1)
    message = await next_message(bot)
    assert message.content == "sent while reconnecting"
    assert fake.resumes == 1 and fake.identifies == 1
    assert fake.requests_to("GET /gateway") == []  # a plain Client never asks for the gateway URL
    [(_, first, query), (_, second, _)] = fake.connection_log
    assert (first, second) == ("/gateway", "/resume")  # it resumes at READY's resume_gateway_url
    assert query == {"v": "10", "encoding": "json", "compress": "zlib-stream"}

    fake.message_create("after resume")
    assert (await next_message(bot)).content == "after resume"
    assert bot.readies == 1


async def test_invalid_session_identifies_again(fake: FakeDiscord, bot: Bot) -> None:
    bot.ready_event.clear()
    fake.send_invalid_session(resumable=False)
    await fake.wait_for_identifies(2)
    await asyncio.wait_for(bot.ready_event.wait(), 5)
    assert bot.readies == 2 and fake.resumes == 0
    fake.message_create("new session")
    assert (await next_message(bot)).content == "new session"


async def test_resumable_invalid_session_resumes(fake: FakeDiscord, bot: Bot) -> None:
    fake.send_invalid_session(resumable=True)
    await fake.wait_for_resumes(1)
    assert fake.identifies == 1


async def test_closed_socket_resumes(fake: FakeDiscord, bot: Bot) -> None:
    assert fake.close_all(4000) == 1
    await fake.wait_for_resumes(1, timeout_s=5)
    fake.message_create("still here")
    assert (await next_message(bot)).content == "still here"


async def test_disallowed_intents(fake: FakeDiscord) -> None:
    fake.intents_allowed = False
    client = Bot()
    try:
        with pytest.raises(discord.errors.PrivilegedIntentsRequired):
            await asyncio.wait_for(client.start(fake.token), 5)
    finally:
        await client.close()
    [(_, code)] = await fake.wait_for_disconnects(1)
    assert code == 4014 and fake.identifies == 0
    assert fake.identify_payloads[0]["intents"] & discord.Intents(message_content=True).value


async def test_server_error_is_retried(fake: FakeDiscord, bot: Bot) -> None:
    # discord.py sleeps 1 + 2 * tries seconds after a 500/502/504/524: this test takes a second.
    fake.fail_next("POST /channels/{id}/messages", 500)
    channel = bot.get_channel(4000)
    assert isinstance(channel, discord.TextChannel)
    await channel.send("after a 500")
    assert [r.status for r in fake.requests_to("POST /channels/{id}/messages")] == [500, 200]


async def test_events_before_connect_are_delivered_after_ready(fake: FakeDiscord) -> None:
    fake.message_create("early")
    async with running(fake, Bot()) as client:
        assert (await next_message(client)).content == "early"


async def test_bad_token_fails_login(fake: FakeDiscord) -> None:
    client = Bot()
    try:
        with pytest.raises(discord.LoginFailure):
            await client.login("wrong")
    finally:
        await client.close()


def test_patch_discord_py_restores_class_attributes() -> None:
    before = (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
    with FakeDiscord() as server, server.patch_discord_py():
        assert server.api_url == discord.http.Route.BASE
        assert yarl.URL(server.gateway_url) == discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
    assert before == (discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY)
