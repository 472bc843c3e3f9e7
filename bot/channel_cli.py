"""`parley channel show|set|reset|history`: channel settings from the command line, as `/parley channel` in chat.

Mounted on `parley` by `bot/cli.py`. A change is audited like one made in chat, by `cli:<login name>`. Setting
`tools` checks the names against the configured tools, MCP servers' included (they are connected to list them).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import typer

from bot.command import fail, run_async, settings_or_exit

if TYPE_CHECKING:
    from bot.channels import ChannelConfig
    from bot.config import Settings

channel_app = typer.Typer(
    help="Channel settings: instructions, model, tools, mode, rate limit and budgets per workspace, channel or thread.",
    no_args_is_help=True,
)

ScopeArg = Annotated[
    str,
    typer.Argument(
        help="A workspace (slack:T1), a channel (slack:T1/C2, or a console channel name) or a thread "
        "(slack:T1/C2/THREAD)."
    ),
]
KeyArg = Annotated[str, typer.Argument(help="The setting (see `parley channel show`).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


def _actor() -> str:
    import getpass

    return f"cli:{getpass.getuser()}"


@asynccontextmanager
async def _channels(settings: Settings, *, with_tools: bool = False) -> AsyncIterator[ChannelConfig]:
    """The channel settings of the configured database; `with_tools` connects the MCP servers to know their tools.
    A setting the block refuses (an unknown scope or key, a bad value) ends the command with its one line."""
    from contextlib import AsyncExitStack

    from agent.mcp import McpServers
    from bot.channels import ChannelConfig, InvalidSetting
    from bot.database import open_db
    from bot.mcp import server_specs
    from bot.tools import build_registry

    async with AsyncExitStack() as stack:
        names: list[str] = []
        enabled: list[str] = []
        if with_tools:
            registry = build_registry(settings)
            await stack.enter_async_context(McpServers(server_specs(settings), registry))
            names = [spec.name for spec in registry]
            enabled = [spec.name for spec in registry.enabled()]
        storage = await stack.enter_async_context(open_db(settings))
        try:
            yield ChannelConfig(settings, storage, tool_names=lambda: names, enabled_tool_names=lambda: enabled)
        except InvalidSetting as exc:
            raise fail(exc.message, 2) from None


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@channel_app.command("show")
@run_async
async def show(scope: ScopeArg, as_json: JsonOpt = False) -> None:
    """Every setting's value in a scope, and where it comes from (set in chat, the file, or the defaults)."""
    async with _channels(settings_or_exit()) as channels:
        shown = await channels.show(scope)
    if as_json:
        typer.echo(json.dumps([row._asdict() for row in shown], indent=2))
        return
    width = max(len(row.key) for row in shown)
    for row in shown:
        value = row.value if row.value else "(none)"
        typer.echo(f"{row.key:<{width}}  {value}  ({row.source})")


@channel_app.command("set")
@run_async
async def set_(scope: ScopeArg, key: KeyArg, value: Annotated[str, typer.Argument(help="The new value.")]) -> None:
    """Set a value at a scope; it wins over the file's at that scope and applies to the next message."""
    settings = settings_or_exit()
    async with _channels(settings, with_tools=key.strip().lower() == "tools") as channels:
        old = await channels.set(scope, key, value, _actor())
        new = next(row.value for row in await channels.show(scope) if row.key == key.strip().lower())
    typer.echo(f"{key} at {scope}: {new}" + (f" (was {old})" if old is not None else ""))


@channel_app.command("reset")
@run_async
async def reset(scope: ScopeArg, key: KeyArg) -> None:
    """Remove a value set at a scope: the file's, or a wider scope's, applies again."""
    async with _channels(settings_or_exit()) as channels:
        old = await channels.reset(scope, key, _actor())
    if old is None:
        typer.echo(f"{key} was not set at {scope}; nothing changed.")
    else:
        typer.echo(f"{key} at {scope} reset (was {old}).")


@channel_app.command("history")
@run_async
async def history(
    scope: Annotated[str | None, typer.Argument(help="Only this scope (default: every scope).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every change of channel settings, oldest first: when, who, the scope and key, the old and new value."""
    from dataclasses import asdict

    async with _channels(settings_or_exit()) as channels:
        changes = await channels.history(scope)
    if as_json:
        typer.echo(json.dumps([asdict(change) for change in changes], indent=2))
        return
    for change in changes:
        old = "(unset)" if change.old is None else change.old
        new = "(unset)" if change.new is None else change.new
        typer.echo(f"{_when(change.at)}  {change.actor}  {change.scope}  {change.key}: {old} -> {new}")
    if not changes:
        typer.echo("No channel settings were changed" + (f" at {scope}." if scope else "."))
