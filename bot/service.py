"""Running Parley as a service: the configured platforms, the dispatcher and the HTTP server, until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from adapters.discord import DiscordAdapter, DiscordConfig
from adapters.slack import SlackAdapter, SlackConfig
from agent.ports import ChatPlatform, Poster, ReportsConnection, SharesGateway
from bot.app import App, build_app, dispatch_options
from bot.commands import chat_handlers
from bot.config import Settings, secret_values
from bot.dispatcher import Dispatcher
from bot.http import build_http_app, serve
from bot.jobs import scheduled_jobs
from bot.observe import error_reports
from bot.scheduler import Scheduler

log = logging.getLogger("parley.service")


def slack_config(settings: Settings) -> SlackConfig:
    s = settings.slack
    assert s.bot_token is not None
    return SlackConfig(
        bot_token=s.bot_token.get_secret_value(),
        signing_secret=s.signing_secret.get_secret_value() if s.signing_secret else "",
        app_token=s.app_token.get_secret_value() if s.app_token else None,
        api_url=s.api_url,
        command=s.command,
        progress_reaction=s.progress_reaction,
        progress_after_s=s.progress_after_s,
        answer_edits=s.answer_edits,
        assistant_status=s.assistant_status,
        stream=s.stream,
    )


def discord_config(settings: Settings) -> DiscordConfig:
    d = settings.discord
    assert d.token is not None
    return DiscordConfig(
        token=d.token.get_secret_value(),
        api_url=d.api_url,
        gateway_url=d.gateway_url,
        prefix=d.prefix or None,
        command_guild=d.command_guild,
        command_state=settings.db.path.parent / "discord-commands.sha256",
        shard_count=d.shard_count,
        shard_ids=tuple(d.shard_ids) if d.shard_ids is not None else None,
        stream=d.stream,
    )


async def readiness(
    parley: App,
    platforms: Sequence[ChatPlatform] = (),
    scheduler: Scheduler | None = None,
    dispatcher: Dispatcher | None = None,
) -> dict[str, object]:
    """What /readyz reports: the database takes writes, each platform is connected, the scheduler runs (when
    this process has one), each model's breaker is not open, and each MCP server's state. An MCP server that is
    down makes the service unready only when it is `required`: the bot answers without its tools meanwhile."""
    checks: dict[str, object] = {}
    try:
        # A write to the main database, not a read: a full disk or a read-only file fails here.
        await parley.storage.ping(now=time.time())
        checks["database"] = True
    except Exception as exc:
        checks["database"] = {"ok": False, "error": type(exc).__name__}
    # Which replica answered, and how many conversations it holds: with several behind one address, the way to
    # tell them apart.
    held = dispatcher.held if dispatcher is not None else []
    checks["replica"] = {"ok": True, "id": parley.replica.id, "conversations": len(held)}
    for platform in platforms:
        if isinstance(platform, ReportsConnection):
            try:
                connected = await platform.is_connected()
            except Exception:
                connected = False
            state: dict[str, object] = {"ok": connected, "connected": connected}
            if isinstance(platform, SharesGateway):
                state.update(platform.gateway_status())  # a follower is ready: it only does not hold the gateway
            checks[f"platform:{platform.name}"] = state
    if parley.settings.scheduler.enabled:
        running = scheduler is not None and scheduler.running
        checks["scheduler"] = {"ok": running, "running": running}
    for model, breaker in parley.agent.all_paths:
        checks[f"model:{model.name}"] = {"ok": breaker.state.value != "open", "breaker": breaker.state.value}
    for server in parley.mcp.statuses():
        check: dict[str, object] = {"ok": server.ok or not server.required, "state": server.state.value}
        check.update({"tools": server.tools} if server.ok else {"error": server.error})
        checks[f"mcp:{server.name}"] = check
    return checks


@asynccontextmanager
async def posting_platforms(parley: App) -> AsyncIterator[dict[str, Poster]]:
    """The configured platforms, ready to post but not listening (for `parley jobs run`), and the console."""
    from adapters.console import ConsoleAdapter

    settings = parley.settings
    posters: dict[str, Poster] = {"console": ConsoleAdapter()}
    slack = discord_bot = None
    try:
        if settings.slack.bot_token:
            slack = SlackAdapter(slack_config(settings))
            posters["slack"] = slack
        if settings.discord.token:
            discord_bot = DiscordAdapter(discord_config(settings))
            posters["discord"] = discord_bot
            await discord_bot.login()
        yield posters
    finally:
        if slack is not None:
            await slack.close()
        if discord_bot is not None:
            await discord_bot.close()


async def serve_platforms(settings: Settings) -> None:
    """Start every configured platform behind one dispatcher, the scheduler and the HTTP server; stop cleanly
    when cancelled."""
    async with error_reports(settings.sentry, secret_values(settings)), build_app(settings) as parley:
        platforms: list[ChatPlatform] = []
        slack: SlackAdapter | None = None
        if settings.slack.bot_token:
            slack = SlackAdapter(slack_config(settings))
            platforms.append(slack)
        discord_bot: DiscordAdapter | None = None
        if settings.discord.token:
            discord_bot = DiscordAdapter(discord_config(settings), leadership=parley.storage.leadership)
            platforms.append(discord_bot)
        dispatcher = Dispatcher(
            parley.storage,
            parley.agent,
            platforms,
            dispatch_options(settings),
            parley.approvals,
            parley.replica,
            channels=parley.channels,
            budgets=parley.budgets,
        )
        # One name for this replica wherever it shows: its claims, and who leads in /readyz and pg_stat_activity.
        parley.storage.leadership.identity = dispatcher.replica.id
        socket_mode = slack is not None and settings.slack.app_token is not None
        scheduler: Scheduler | None = None
        http_app = build_http_app(
            slack=None if socket_mode else slack, readiness=lambda: readiness(parley, platforms, scheduler, dispatcher)
        )
        if discord_bot is not None:
            # Replies left undelivered by an earlier process go out when the dispatcher starts: log in first.
            try:
                await discord_bot.login()
            except BaseException:
                await discord_bot.close()
                raise
        try:
            async with dispatcher:
                runner = None
                handlers = chat_handlers(parley, dispatcher)
                try:
                    if slack is not None:
                        slack.connect(handlers)
                        await slack.start()
                    if discord_bot is not None:
                        discord_bot.connect(handlers)
                        await discord_bot.start()
                    async with scheduled_jobs(parley, {p.name: p for p in platforms if isinstance(p, Poster)}) as jobs:
                        scheduler = jobs
                        runner = await serve(http_app, settings.http.host, settings.http.port)
                        log.warning(
                            "Parley is serving %s on http://%s:%d",
                            ", ".join(settings.platforms),
                            settings.http.host,
                            settings.http.port,
                        )
                        await asyncio.Event().wait()
                finally:
                    if runner is not None:
                        await runner.cleanup()
        finally:
            # Only once the dispatcher stopped: answers that finish in its grace period still stream and post
            # through the platforms (closed first, Slack's streams would end "interrupted" under them).
            if slack is not None:
                await slack.close()
            if discord_bot is not None:
                await discord_bot.close()
