"""The Discord adapter: a discord.py client whose messages go through the dispatcher like every platform's.

Mentions in guild channels and DMs become `IncomingMessage`s (the message id is the event key, so a gateway
replay is answered once); replies go to the message they answer, split to Discord's 2,000 characters with code
fences balanced, and never ping anyone. A message or command in a thread carries the thread's parent channel, so
the parent's settings, budgets and approvers apply in it. Slash commands are deferred at once and answered by
follow-up.
Approval buttons are dynamic items: their custom id carries the request, so they work after a restart.

Bad input from the gateway cannot deafen the bot: events and commands are checked at the edge
(adapters/discord_edge.py), and if discord.py's connection task ends anyway, `_connect` opens a new connection;
readiness reports the connection as down until it is back.

Several replicas on one database: with `leadership`, only the elected replica holds the gateway
(adapters/discord_leader.py); the others deliver replies, posts and approval prompts over REST and report
ready as followers. With `shard_count` the client is discord.py's `AutoShardedClient` running this replica's
`shard_ids`, and there is no election.

Base URL overrides (tests, proxies) are scoped: discord.py keeps its REST base and gateway URL as class
attributes, so they are replaced once by proxies that read a context variable, set by the adapter in the
context it is built in. Another discord.py client elsewhere in the process still reaches Discord.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import io
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any, Literal

import aiohttp
import discord
import yarl
from discord import app_commands
from pydantic import ValidationError

from adapters.approval_text import arguments_filename, fit, full_arguments
from adapters.discord_edge import (
    DiscordAttachment,
    DiscordMessage,
    ParleyTree,
    RepliedTo,
    SlashCommand,
    guard_parsers,
)
from adapters.discord_leader import GATEWAY, Seat, close_gateway
from adapters.discord_prompt import prompt_text, settled_text
from adapters.discord_stream import (
    DISCORD_LIMIT,
    INTERACTION,
    UNREACHABLE,
    DiscordStream,
    DiscordStreams,
    files_nonce,
    files_of,
)
from adapters.edge import QuietLog, describe, problems
from adapters.files import download, same_origin
from adapters.options import DEFAULT_API, DEFAULT_GATEWAY
from adapters.options import DiscordConfig as DiscordConfig  # where callers have always found it
from adapters.text import split_message
from agent.approvals import ApprovalRequest, Decision, PromptLocation
from agent.attachments.models import Attachment
from agent.commands import COMMANDS, NO_COMMANDS, UNREADABLE, CommandCall, CommandReply, ConfirmClick
from agent.messages import IncomingMessage, Reply, channel_key
from agent.ports import DeliveryError, Handlers, PlatformUnavailable, StreamMoved
from agent.storage.leadership import Leadership

log = logging.getLogger("parley.discord")

# Where Discord serves attachments (signed URLs: no token is sent).
CDN_HOSTS = frozenset({"cdn.discordapp.com", "media.discordapp.net"})
# custom_id: parley:<action>:<request id>:<first 40 hex digits of the arguments' hash> (at most 100 characters)
APPROVAL_ID = r"parley:(?P<action>approve|deny|always):(?P<request>[\w-]+):(?P<hash>[0-9a-f]{32,64})"
# custom_id: parley:confirm:<the confirmation's action>:<its value, e.g. a channel key> (at most 100 characters)
CONFIRM_ID = r"parley:confirm:(?P<action>[a-z_]{1,20}):(?P<value>\S{1,70})"
# The typing indicator stops after this even when no reply comes through this process: with several replicas
# another one may answer, and the indicator would otherwise come back every few seconds for good.
TYPING_MAX_S = 120.0
# Channels discord.py did not know (asked over REST for their parent), remembered: most recent kept.
PARENTS_KEPT = 1024

_api_base: contextvars.ContextVar[str] = contextvars.ContextVar("parley_discord_api", default=DEFAULT_API)
_gateway: contextvars.ContextVar[str] = contextvars.ContextVar("parley_discord_gateway", default=DEFAULT_GATEWAY)


class DiscordUnavailable(PlatformUnavailable):
    """Discord cannot be used with these settings: the message says why, in one line."""


class _ApiBase:
    """Stands in for `discord.http.Route.BASE`: `BASE + path` uses the base of the current context."""

    def __add__(self, path: str) -> str:
        return _api_base.get() + path

    def __str__(self) -> str:
        return _api_base.get()


class _Gateway:
    """Stands in for `DiscordWebSocket.DEFAULT_GATEWAY`: a yarl URL taken from the current context."""

    def __getattr__(self, name: str) -> Any:
        return getattr(yarl.URL(_gateway.get()), name)

    def __str__(self) -> str:
        return _gateway.get()


# Voice is not used: no warning about its optional libraries at every start.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False


def _install_url_proxies() -> None:
    if not isinstance(discord.http.Route.BASE, _ApiBase):
        discord.http.Route.BASE = _ApiBase()  # type: ignore[assignment]
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = _Gateway()  # type: ignore[assignment]


class ParleyClient(discord.Client):
    """The discord.py client, knowing its adapter (dynamic items reach it through `interaction.client`)."""

    def __init__(self, adapter: DiscordAdapter, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(
            intents=intents,
            allowed_mentions=discord.AllowedMentions.none(),
            guild_ready_timeout=adapter.config.ready_timeout_s,
            **options,
        )
        self.adapter = adapter
        guard_parsers(self._connection.parsers, adapter.quiet)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(ApprovalButton, ConfirmButton)

    async def on_ready(self) -> None:
        # Fires again after every new session (INVALID_SESSION): nothing here may run twice in a harmful way.
        log.info("connected to Discord as %s", self.user)
        self.adapter.gateway_changed(up=True)
        self.adapter.ready.set()

    async def on_resumed(self) -> None:
        self.adapter.gateway_changed(up=True)

    async def on_disconnect(self) -> None:
        # discord.py reconnects by itself from here (RESUME or a new session); readiness says so meanwhile.
        self.adapter.gateway_changed(up=False)

    async def on_message(self, message: discord.Message) -> None:
        await self.adapter.receive(message)


class ParleyShardedClient(ParleyClient, discord.AutoShardedClient):
    """The same client on some of the bot's shards: discord.py opens one session per shard and reconnects each
    by itself."""


class ApprovalButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=APPROVAL_ID):
    """Approve / Deny / Always: all the state is in the custom id and SQLite, so a restart loses nothing."""

    def __init__(self, action: str, request_id: str, shown_hash: str) -> None:
        label, style = {
            "approve": ("Approve", discord.ButtonStyle.success),
            "deny": ("Deny", discord.ButtonStyle.danger),
            "always": ("Always in this channel", discord.ButtonStyle.secondary),
        }[action]
        super().__init__(
            discord.ui.Button(label=label, style=style, custom_id=f"parley:{action}:{request_id}:{shown_hash}")
        )
        self.action, self.request_id, self.shown_hash = action, request_id, shown_hash

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ApprovalButton:
        return cls(match["action"], match["request"], match["hash"])

    async def callback(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        if not isinstance(client, ParleyClient) or client.adapter.handlers is None:
            return
        await interaction.response.defer(ephemeral=True, thinking=False)
        guild = str(interaction.guild_id or "")
        parent = thread_parent(interaction.channel)
        decision = Decision(
            self.request_id,
            "discord",
            str(interaction.user.id),
            approve=self.action != "deny",
            args_hash=self.shown_hash,
            always=self.action == "always",
            roles=roles_of(interaction),
            channel=channel_key("discord", guild, str(interaction.channel_id or "")),
            parent=channel_key("discord", guild, parent) if parent else "",
        )
        verdict = await client.adapter.handlers.decide(decision)
        if not verdict.accepted:
            await interaction.followup.send(verdict.refusal, ephemeral=True)


class ConfirmButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=CONFIRM_ID):
    """A command's confirmation (forget): the action and its value are in the custom id, so a click after a
    restart still counts. The answer replaces the prompt, without the button."""

    def __init__(self, action: str, value: str, label: str = "Confirm") -> None:
        super().__init__(
            discord.ui.Button(
                label=label, style=discord.ButtonStyle.danger, custom_id=f"parley:confirm:{action}:{value}"
            )
        )
        self.action, self.value = action, value

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> ConfirmButton:
        return cls(match["action"], match["value"])

    async def callback(self, interaction: discord.Interaction) -> None:
        client = interaction.client
        handlers = client.adapter.handlers if isinstance(client, ParleyClient) else None
        commands = handlers.commands if handlers is not None else None
        if commands is None:  # a click must always be answered, or Discord says the interaction failed
            await interaction.response.send_message(NO_COMMANDS, ephemeral=True)
            return
        click = ConfirmClick(
            platform="discord",
            workspace=str(interaction.guild_id or ""),
            channel=str(interaction.channel_id or ""),
            user=str(interaction.user.id),
            action=self.action,
            value=self.value,
            roles=roles_of(interaction),
        )
        reply = await commands.confirm(click)
        await interaction.response.edit_message(
            content=fitted(reply.text), view=None, allowed_mentions=discord.AllowedMentions.none()
        )


class DiscordAdapter:
    """One Discord bot. Build it inside the running service (it scopes the base URLs to that context), then
    `connect(handlers)` and `await start()`."""

    name = "discord"
    resumable = True

    def __init__(self, config: DiscordConfig, *, leadership: Leadership | None = None) -> None:
        _install_url_proxies()
        _api_base.set(config.api_url.rstrip("/"))
        _gateway.set(config.gateway_url)
        self.config = config
        self.handlers: Handlers | None = None
        self.ready = asyncio.Event()
        # Bad input from the gateway is warned about once a minute per kind, whatever its rate.
        self.quiet = QuietLog(log)
        # Each sharded replica owns its shards; an unsharded one holds the gateway only while it leads.
        self.leadership = leadership if config.shard_count is None else None
        self.seat = Seat()
        self.client = (
            ParleyClient(self)
            if config.shard_count is None
            else ParleyShardedClient(
                self,
                shard_count=config.shard_count,
                shard_ids=list(config.shard_ids) if config.shard_ids is not None else None,
            )
        )
        self.tree = ParleyTree(self.client, warn=self.quiet)
        self._register_commands()
        self._typing: dict[str, asyncio.Task[None]] = {}
        # Channel id -> its parent's id ("" for a channel that is no thread), for channels discord.py did not know.
        self._parents: OrderedDict[int, str] = OrderedDict()
        self.streams = DiscordStreams(self.client, self._typing_done)
        # Downloads of shared files: opened with the first one, in the running loop.
        self._files: aiohttp.ClientSession | None = None
        self._runner: asyncio.Task[None] | None = None
        self._logged_in = False
        self._gateway_up = False  # from READY or RESUMED until a disconnect
        self._failures = 0  # connection tasks ended by an error, in a row
        self._stopping = asyncio.Event()
        self._started = False  # start() has returned: a gateway that fails for good from now on is logged
        self._holding = False  # in a term as the gateway's elected holder

    def connect(self, handlers: Handlers) -> None:
        self.handlers = handlers

    async def login(self) -> None:
        """Log in over REST (a refused token is one clear line): enough to deliver replies, before any event
        can arrive, so the dispatcher can re-deliver what an earlier process left before the gateway opens."""
        if self._logged_in:
            return
        try:
            await self.client.login(self.config.token)
        except discord.LoginFailure:
            raise DiscordUnavailable("Discord refused the bot token") from None
        except (discord.HTTPException, OSError) as exc:
            raise DiscordUnavailable(f"Discord cannot be reached at {self.config.api_url} ({exc})") from None
        self._logged_in = True

    async def start(self) -> None:
        """Log in if needed and connect the gateway (a refused privileged intent is one clear line). With
        leadership, the gateway is held whenever this replica leads; a follower returns at once."""
        await self.login()
        if self.leadership is None:
            self._runner = asyncio.create_task(self._connect())
            await self._until(self.ready)
        else:
            self._runner = asyncio.create_task(self.leadership.hold(GATEWAY, self._term, self.seat.changed))
            await self._until(self.ready, self.seat.following)
        self._started = True
        if self.config.command_state is not None:
            synced = await self.sync_commands(force=False)
            if synced:
                log.warning("synced Discord slash commands: %s", ", ".join(synced))

    async def _until(self, *events: asyncio.Event) -> None:
        """Wait for one of the events, or for the connection task to end (raising what it raised)."""
        assert self._runner is not None
        waits = [asyncio.create_task(event.wait()) for event in events]
        try:
            done, _ = await asyncio.wait({self._runner, *waits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if self._runner in done:
            self._runner.result()

    async def _term(self) -> None:
        """A term as the gateway's holder: connected until closed. Cancelled when leadership is lost, it closes
        the socket before the election can pass on, so two replicas never hold the gateway together."""
        self._holding = True
        try:
            await self._connect()
        finally:
            self._holding = self._gateway_up = False
            await close_gateway(self.client)

    async def is_connected(self) -> bool:
        """The gateway session is up: False from a lost connection until READY or RESUMED, whether discord.py
        is reconnecting by itself or `_connect` is opening a new connection after its task ended. A follower is
        connected when it is logged in: REST is all it needs. Sharded, every shard's socket must be open."""
        running = self._runner is not None and not self._runner.done()
        if not running or self.client.is_closed():
            return False
        if self.seat.follows:
            return self._logged_in
        if isinstance(self.client, discord.AutoShardedClient):
            shards = self.client.shards.values()
            return self.ready.is_set() and bool(shards) and not any(shard.is_closed() for shard in shards)
        return self._gateway_up

    def gateway_status(self) -> dict[str, object]:
        """Which part of the gateway this replica holds, for `/readyz` (nothing when it is alone with it)."""
        if isinstance(self.client, discord.AutoShardedClient):
            count = self.config.shard_count
            shards = list(self.config.shard_ids) if self.config.shard_ids is not None else list(range(count or 0))
            return {"gateway": "shards", "shards": shards, "shard_count": count}
        return self.seat.status() if self.leadership is not None else {}

    def gateway_changed(self, *, up: bool) -> None:
        """The client's connection events: readiness follows them, and a session that came up ends a run of
        failures (the next one waits the shortest delay again). discord.py announces READY up to
        `ready_timeout_s` late, so an announcement after a lost term is ignored."""
        self._gateway_up = up and (self.leadership is None or self._holding)
        if up:
            self._failures = 0

    async def _connect(self) -> None:
        """Hold the gateway connection until `close()`.

        discord.py reconnects by itself after network errors and the close codes it can handle. Any other
        exception ends its `connect()`, and the bot would hear nothing more: the connection is then opened again
        (a new session), after a delay that doubles with each failure in a row. Close codes that mean the
        settings are wrong end it for good: an error at start, a logged error after."""
        while not self._stopping.is_set():
            try:
                await self.client.connect(reconnect=True)
            except discord.PrivilegedIntentsRequired:
                self._gave_up(
                    "Discord refused the message content intent: enable it for the bot in the developer portal"
                )
                return
            except Exception as exc:
                self._gateway_up = False
                if self._stopping.is_set():
                    return
                if self.client.is_closed():  # discord.py closed it: a revoked token, invalid intents or shards
                    self._gave_up(f"Discord closed the gateway for good ({describe(exc)})")
                    return
                await self._reconnect_after(exc)
            else:
                return

    def _gave_up(self, reason: str) -> None:
        self._gateway_up = False
        if not self.ready.is_set() and not self._started:
            raise DiscordUnavailable(reason) from None
        log.error("the Discord gateway is closed until Parley restarts: %s", reason)

    async def _reconnect_after(self, exc: Exception) -> None:
        delay = min(self.config.reconnect_max_s, self.config.reconnect_delay_s * 2**self._failures)
        self._failures += 1
        log.error(
            "the Discord gateway connection ended (%s); opening a new one in %.1f s",
            describe(exc),
            delay,
            exc_info=exc if self._failures == 1 else None,  # one traceback per run of failures
        )
        # discord.py leaves the socket open when an error escapes `connect()`, its heartbeat thread still
        # beating: close it, or Discord would hold two sessions of this bot.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.ws.close(code=4000), timeout=5)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    def commands_fingerprint(self) -> str:
        """What the command set looks like to Discord (and where it is synced): a change means a sync."""
        shape = [command.to_dict(self.tree) for command in self.tree.get_commands()]
        payload = json.dumps({"guild": self.config.command_guild, "commands": shape}, sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()

    async def sync_commands(self, *, force: bool = True) -> list[str]:
        """Register the slash commands with Discord (globally, or in the development guild). Without `force`
        only when the set changed since the last sync, so a restart does not hit Discord's sync limit."""
        fingerprint = self.commands_fingerprint()
        state = self.config.command_state
        if not force and state is not None and state.is_file() and state.read_text().strip() == fingerprint:
            return []
        guild = discord.Object(self.config.command_guild) if self.config.command_guild else None
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        synced = await self.tree.sync(guild=guild)
        if state is not None:
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_text(fingerprint + "\n")
        return [command.name for command in synced]

    async def close(self) -> None:
        self._stopping.set()
        for task in self._typing.values():
            task.cancel()
        if self.leadership is not None and self._runner is not None:
            # A follower campaigns until cancelled; a leader's term closes its socket and steps down.
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        await self.client.close()
        if self._files is not None:
            await self._files.close()
        if self._runner is not None:
            await asyncio.gather(self._runner, return_exceptions=True)

    # Messages in ---------------------------------------------------------------------------------------

    async def receive(self, message: discord.Message) -> None:
        """A message as discord.py parsed it: read through `DiscordMessage` (checked, text repaired) or dropped
        with a quiet warning; answered when it is a DM, mentions the bot or is a prefix command."""
        me = self.client.user
        if me is None:
            return
        try:
            seen = DiscordMessage.model_validate(message)
        except ValidationError as exc:
            self.quiet.warning("message", "dropped a Discord message that does not validate (%s)", problems(exc))
            return
        if seen.author.bot or seen.author.id == me.id:
            return
        is_dm = seen.guild_id is None
        mentioned = seen.mentions_user(me.id)
        text = seen.content
        if not (is_dm or mentioned):
            prefix = self.config.prefix
            if not prefix or not text.startswith(f"{prefix}ask "):
                return
            text = text[len(prefix) + 4 :]
        text = re.sub(rf"<@!?{me.id}>", "", text).strip()
        parent = str(seen.channel.parent_id or "")
        if not parent and not is_dm and isinstance(message.channel, discord.PartialMessageable):
            parent = await self._parent_of(seen.channel.id)
        incoming = IncomingMessage(
            platform=self.name,
            workspace=str(seen.guild_id or ""),
            channel=str(seen.channel.id),
            user=str(seen.author.id),
            text=text,
            message_id=str(seen.id),
            event_id=str(seen.id),
            mentioned=mentioned,
            is_dm=is_dm,
            attachments=attachments_of(seen.attachments, "message") + self._replied_files(message),
            parent=parent,
            roles=tuple(str(role.id) for role in seen.author.roles),
        )
        if self.handlers is not None and await self.handlers.submit(incoming):
            self._typing[incoming.message_id] = asyncio.create_task(self._type(message.channel))

    async def _parent_of(self, channel_id: int) -> str:
        """The parent of a channel discord.py does not know (its thread was never announced to this session),
        asked over REST once: without it a thread would escape its channel's settings. "" when it is no thread,
        or when Discord cannot say (then the thread is on its own, and a warning says so)."""
        known = self._parents.get(channel_id)
        if known is not None:
            self._parents.move_to_end(channel_id)
            return known
        try:
            channel = await self.client.fetch_channel(channel_id)
        except (discord.HTTPException, discord.InvalidData, *UNREACHABLE) as exc:
            self.quiet.warning("parent", "could not ask Discord which channel %s belongs to (%s)", channel_id, exc)
            return ""
        parent = thread_parent(channel)
        self._parents[channel_id] = parent
        while len(self._parents) > PARENTS_KEPT:
            self._parents.popitem(last=False)
        return parent

    def _replied_files(self, message: discord.Message) -> tuple[Attachment, ...]:
        """The files of the message this one replies to, when the gateway sent it along."""
        resolved = message.reference.resolved if message.reference is not None else None
        if not isinstance(resolved, discord.Message):
            return ()
        try:
            return attachments_of(RepliedTo.model_validate(resolved).attachments, "thread")
        except ValidationError as exc:
            self.quiet.warning("reference", "ignored the files of a replied-to message (%s)", problems(exc))
            return ()

    async def attachments(self, message: IncomingMessage) -> tuple[Attachment, ...]:
        """The message's files and those of the message it replies to, each bound to a download from Discord's
        CDN (its URLs are signed; no token is sent)."""
        return tuple(a.bound(partial(self._fetch, a.url)) for a in message.attachments)

    async def _fetch(self, url: str, max_bytes: int) -> bytes:
        if self._files is None or self._files.closed:
            self._files = aiohttp.ClientSession()
        return await download(self._files, url, max_bytes, platform="Discord", allowed=self._on_cdn)

    def _on_cdn(self, url: yarl.URL) -> bool:
        """Discord's CDN over HTTPS, or the configured API's own origin when it is not Discord's (a test
        server, a proxy that serves the files too)."""
        if url.scheme == "https" and url.host in CDN_HOSTS:
            return True
        api = yarl.URL(self.config.api_url)
        return api.host not in ("discord.com", "discordapp.com") and same_origin(url, api)

    async def _type(self, channel: Any) -> None:
        """The typing indicator, renewed until the reply lands (the task is cancelled then)."""
        try:
            async with asyncio.timeout(TYPING_MAX_S), channel.typing():
                await asyncio.Event().wait()
        except TimeoutError:
            return
        except discord.HTTPException as exc:
            log.info("typing indicator failed: %s", exc)

    def _register_commands(self) -> None:
        """The slash commands, in the command list's order: each hands its options to the command set as one
        `CommandCall`. Those with options have their own callback here; the rest share `_without_options`."""

        @app_commands.describe(question="What to ask")
        async def ask(interaction: discord.Interaction, question: str) -> None:
            await self._command(interaction, "ask", question)

        @app_commands.describe(whose="Yours (me) or this channel's")
        async def usage(interaction: discord.Interaction, whose: Literal["me", "channel"] = "me") -> None:
            await self._command(interaction, "usage", whose)

        @app_commands.describe(action="show, set or reset", key="The setting", value="Its new value (set)")
        async def channel(
            interaction: discord.Interaction,
            action: Literal["show", "set", "reset"],
            key: str = "",
            value: str = "",
        ) -> None:
            await self._command(interaction, "channel", action, key, value)

        with_options: dict[str, Callable[..., Coroutine[Any, Any, None]]] = {
            "ask": ask,
            "usage": usage,
            "channel": channel,
        }
        for name in COMMANDS:
            callback = with_options.get(name) or self._without_options(name)
            self.tree.command(name=name, description=described(name))(callback)

    def _without_options(self, name: str) -> Callable[[discord.Interaction], Coroutine[Any, Any, None]]:
        """The callback of the slash command `name`, which takes no options."""

        async def run(interaction: discord.Interaction) -> None:
            await self._command(interaction, name)

        return run

    async def _command(self, interaction: discord.Interaction, name: str, *options: str) -> None:
        """Run a command and show its reply to the caller. Every command is deferred at once (Discord allows 3 s
        for the first response, and a slow database can take longer over `/usage` or `/channel`) and answered
        by follow-up: `/ask` publicly, its answer arriving through the interaction's webhook; the others seen only
        by the caller, as every reply of theirs is."""
        try:
            seen = SlashCommand.model_validate({"interaction": interaction, "text": " ".join(filter(None, options))})
        except ValidationError as exc:
            self.quiet.warning(
                f"command:{name}", "refused a Discord /%s that does not validate (%s)", name, problems(exc)
            )
            await interaction.response.send_message(UNREADABLE, ephemeral=True)
            return
        commands = self.handlers.commands if self.handlers is not None else None
        if commands is None:
            await interaction.response.send_message(NO_COMMANDS, ephemeral=True)
            return
        command = seen.interaction
        asking = name == "ask"
        await interaction.response.defer(ephemeral=not asking, thinking=True)
        parent = command.channel.parent_id if command.channel is not None else None
        call = CommandCall(
            platform=self.name,
            workspace=str(command.guild_id or ""),
            channel=str(command.channel_id or ""),
            user=str(command.user.id),
            name=name,
            text=seen.text,
            roles=roles_of(interaction),
            reply_url=f"{INTERACTION}{command.application_id}:{command.token}" if asking else "",
            event_id=f"interaction-{command.id}",
            is_dm=command.guild_id is None,
            parent=str(parent or ""),
        )
        reply = await commands.run(call)
        if asking:
            if not reply.answer_follows:  # nothing was asked (no question): say why in place of the placeholder
                await interaction.followup.send(fitted(reply.text), allowed_mentions=discord.AllowedMentions.none())
            return
        # In place of the "thinking" placeholder, seen only by the caller as the deferral said.
        await interaction.followup.send(**_rendered(reply))

    # Replies out ---------------------------------------------------------------------------------------

    async def open_stream(
        self, message: IncomingMessage, key: str, *, resume: str = "", moved: StreamMoved | None = None
    ) -> DiscordStream | None:
        """Show the reply to `message` while it is produced (adapters/discord_stream.py), when the settings allow."""
        if not self.config.stream:
            return None
        return self.streams.open(message, key, resume=resume, moved=moved)

    def _typing_done(self, message: IncomingMessage) -> None:
        typing = self._typing.pop(message.message_id, None)
        if typing is not None:
            typing.cancel()

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        self._typing_done(message)
        chunks = split_message(reply.text, DISCORD_LIMIT) or ["(no answer)"]
        none = discord.AllowedMentions.none()
        try:
            if message.reply_url.startswith(INTERACTION):
                webhook = self.streams.webhook(message)
                for chunk in chunks:
                    await webhook.send(chunk, allowed_mentions=none)
                if reply.files:
                    await webhook.send(files=files_of(reply), allowed_mentions=none)
                return
            channel = await self._channel(int(message.channel))
            reference = discord.MessageReference(
                message_id=int(message.message_id), channel_id=int(message.channel), fail_if_not_exists=False
            )
            for i, chunk in enumerate(chunks):
                # A nonce Discord enforces makes a repeated post (after a crash) return the first one.
                nonce = f"{key}-{i}"[-25:]
                await channel.send(chunk, reference=reference if i == 0 else None, allowed_mentions=none, nonce=nonce)
            if reply.files:
                # The reply's files in one message after its text, under a nonce of their own.
                await channel.send(files=files_of(reply), allowed_mentions=none, nonce=files_nonce(key))
        except discord.Forbidden as exc:
            raise DeliveryError(f"Discord refused the reply ({exc.status})", transient=False) from None
        except discord.NotFound as exc:
            raise DeliveryError(f"the channel or message is gone ({exc.status})", transient=False) from None
        except discord.HTTPException as exc:
            raise DeliveryError(
                f"Discord answered {exc.status}", transient=exc.status >= 500 or exc.status == 429
            ) from None
        except UNREACHABLE as exc:
            raise DeliveryError(f"Discord could not be reached ({type(exc).__name__})") from None

    async def post(self, channel: str, text: str) -> None:
        """Post to a channel (its memory key, `discord:guild/channel`, or its id): for scheduled reports."""
        channel_id = int(channel.rpartition("/")[2] if channel.startswith("discord:") else channel)
        target = await self._channel(channel_id)
        for chunk in split_message(text, DISCORD_LIMIT) or ["(empty)"]:
            await target.send(chunk, allowed_mentions=discord.AllowedMentions.none())

    async def request_approval(self, request: ApprovalRequest) -> PromptLocation:
        """Post the prompt (adapters/discord_prompt.py), as much of every argument as fits in one message; when
        a value is folded, the complete arguments are attached to it as a JSON file."""
        channel_id = int(request.channel.rpartition("/")[2])
        channel = await self._channel(channel_id)
        view = discord.ui.View(timeout=None)
        for action in ("approve", "deny", "always"):
            view.add_item(ApprovalButton(action, request.id, request.args_hash[:40]))
        text, shown = fit(request.args, lambda listed: prompt_text(request, listed), DISCORD_LIMIT)
        attached: dict[str, Any] = {}
        if shown.folded:
            full = io.BytesIO(full_arguments(request).encode())
            attached["file"] = discord.File(full, filename=arguments_filename(request))
        sent = await channel.send(text, view=view, allowed_mentions=discord.AllowedMentions.none(), **attached)
        return PromptLocation(self.name, str(channel_id), str(sent.id))

    async def approval_settled(self, request: ApprovalRequest) -> None:
        """Edit the prompt, wherever and by whichever process it was posted, to its outcome: no buttons. Only
        REST is used (no channel lookup), so it works at start-up before the gateway is open."""
        prompt = request.prompt
        if prompt is None or prompt.platform != self.name:
            return
        channel = self.client.get_partial_messageable(int(prompt.channel))
        message = channel.get_partial_message(int(prompt.message))
        try:
            await message.edit(
                content=settled_text(request), view=None, allowed_mentions=discord.AllowedMentions.none()
            )
        except discord.NotFound:
            log.info("approval request %s: its prompt is gone", request.id)

    async def _channel(self, channel_id: int) -> Any:
        return self.client.get_channel(channel_id) or await self.client.fetch_channel(channel_id)


def attachments_of(files: list[DiscordAttachment], origin: str) -> tuple[Attachment, ...]:
    """discord.py's attachments (validated) as the agent's, not yet bound."""
    return tuple(
        Attachment(
            name=f.filename,
            media_type=f.content_type or "application/octet-stream",
            size=f.size,
            url=f.url,
            origin=origin,
        )
        for f in files
    )


def described(name: str) -> str:
    """A slash command's description: its help line, capitalised as Discord shows it (at most 100 characters)."""
    text = COMMANDS[name].help
    return (text[:1].upper() + text[1:])[:100]


def thread_parent(channel: object) -> str:
    """The id of the channel a thread belongs to; "" for a channel that is no thread."""
    return str(channel.parent_id) if isinstance(channel, discord.Thread) else ""


def roles_of(interaction: discord.Interaction) -> tuple[str, ...]:
    """The role ids of the member who interacted (none in a DM): approvers may be named by role."""
    return tuple(str(role.id) for role in getattr(interaction.user, "roles", []))


def fitted(text: str) -> str:
    """Text cut to one Discord message (the first chunk of a longer one)."""
    return (split_message(text, DISCORD_LIMIT) or ["(nothing to show)"])[0]


def _rendered(reply: CommandReply) -> dict[str, Any]:
    """A command's reply as the interaction response's fields: seen only by the caller, a confirmation as a
    button that outlives a restart, nobody pinged."""
    fields: dict[str, Any] = {
        "content": fitted(reply.text),
        "ephemeral": True,
        "allowed_mentions": discord.AllowedMentions.none(),
    }
    if reply.confirm is not None:
        view = discord.ui.View(timeout=None)
        view.add_item(ConfirmButton(reply.confirm.action, reply.confirm.value, reply.confirm.label))
        fields["view"] = view
    return fields
