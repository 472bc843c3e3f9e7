"""The `parley` command line.

Heavy imports (dspy, the model, and the settings: pydantic models are built at import) happen inside the
commands, so `parley --help` stays instant. asyncio too: it alone is ~60 ms of the start-up.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from bot.channel_cli import channel_app
from bot.command import fail, run_async, settings_or_exit
from bot.db_cli import db_app
from bot.usage_cli import usage

if TYPE_CHECKING:
    from bot.config import Settings

app = typer.Typer(
    name="parley",
    help="Parley: a chat bot with a ReAct agent and per-channel memory, for Slack, Discord and the terminal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: typer's rich help imports rich's markdown and console (~100 ms of every `--help`).
    rich_markup_mode=None,
)
memory_app = typer.Typer(help="Inspect or erase what a channel remembers.", no_args_is_help=True)
chains_app = typer.Typer(help="Reasoning chains: the steps behind each answer.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
app.add_typer(chains_app, name="chains")
discord_app = typer.Typer(help="Discord: register the slash commands.", no_args_is_help=True)
app.add_typer(discord_app, name="discord")
jobs_app = typer.Typer(help="Scheduled jobs: when they run, how they went; run one now.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")
approvals_app = typer.Typer(help="Tool approvals: grants, pending requests, the audit.", no_args_is_help=True)
app.add_typer(approvals_app, name="approvals")
mcp_app = typer.Typer(help="MCP servers: connect to each and list its tools.", no_args_is_help=True)
app.add_typer(mcp_app, name="mcp")
app.add_typer(db_app, name="db")
app.add_typer(channel_app, name="channel")
app.command("usage")(usage)

ChannelOpt = Annotated[str, typer.Option("--channel", "-c", help="Channel (memory key) to use.")]
AttachOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--attach",
        "-a",
        help="A file to share with the question (repeat for more); see [attachments] for the limits.",
        exists=True,
        dir_okay=False,
        readable=True,
    ),
]


async def _console(
    settings: Settings, channel: str, *, scheduled: bool = False, attach: list[Path] | None = None
) -> None:
    """Chat in the terminal; `scheduled` also runs the jobs (`parley run`), their posts printed here."""
    from contextlib import AsyncExitStack

    from adapters.console import ConsoleAdapter
    from bot.app import build_app, dispatch_options
    from bot.commands import chat_handlers
    from bot.config import secret_values
    from bot.dispatcher import Dispatcher
    from bot.jobs import scheduled_jobs
    from bot.observe import error_reports

    async with error_reports(settings.sentry, secret_values(settings)), build_app(settings) as parley:
        console = ConsoleAdapter(
            channel=channel,
            auto_approve=settings.approvals.console_auto_approve,
            attach=attach or (),
            files_dir=settings.attachments.files_dir,
        )
        options = dispatch_options(settings, rate_limited=False)
        async with (
            AsyncExitStack() as stack,
            Dispatcher(
                parley.storage,
                parley.agent,
                [console],
                options,
                parley.approvals,
                parley.replica,
                channels=parley.channels,
                budgets=parley.budgets,
            ) as dispatcher,
        ):
            if scheduled:
                await stack.enter_async_context(scheduled_jobs(parley, {console.name: console}))
            await console.run(chat_handlers(parley, dispatcher))


@app.command()
@run_async
async def run() -> None:
    """Start every configured platform; with none configured, chat in the terminal."""
    settings = settings_or_exit()
    if settings.platforms:
        from bot.service import serve_platforms

        await serve_platforms(settings)
        return
    await _console(settings, "general", scheduled=True)


@app.command()
@run_async
async def chat(channel: ChannelOpt = "general", attach: AttachOpt = None) -> None:
    """Chat in the terminal. With piped stdin, prints one answer per input line. Files given with --attach go
    with every message of the session."""
    await _console(settings_or_exit(), channel, attach=attach)


@app.command()
@run_async
async def ask(
    question: Annotated[str, typer.Argument(help="The question to ask.")],
    channel: ChannelOpt = "general",
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer and its trajectory as JSON.")] = False,
    attach: AttachOpt = None,
) -> None:
    """Ask one question and print the answer; files the answer posts are written to [attachments] files_dir."""
    from adapters.console import local_attachments, write_files
    from agent.messages import IncomingMessage, Reply
    from bot.answering import answer
    from bot.app import build_app

    settings = settings_or_exit()
    async with build_app(settings) as parley:
        message = IncomingMessage(
            platform="console",
            channel=channel,
            user="cli",
            text=question,
            is_dm=True,
            attachments=local_attachments(attach or ()),
        )
        # The channel's settings apply as in chat (`--channel slack:T1/C2` answers as that channel would).
        resolved = await parley.channels.resolve(message)
        checked = await parley.budgets.check(message, resolved.budgets, resolved.profile)
        if isinstance(checked, Reply):
            reply = checked
        else:
            reply = await answer(parley.agent, parley.storage, message, profile=checked)
    written = write_files(reply, settings.attachments.files_dir)
    if as_json:
        data = reply.as_dict()
        data["files"] = [
            {"name": f.name, "media_type": f.media_type, "size": len(f.content), "path": str(path)}
            for f, path in zip(reply.files, written, strict=True)
        ]
        typer.echo(json.dumps(data, ensure_ascii=False, indent=2))
    else:
        typer.echo(reply.text)
        for path in written:
            typer.echo(f"(file written to {path})")
    if reply.status == "error":
        raise typer.Exit(1)


@app.command("config")
def show_config() -> None:
    """Print the effective settings (env, file, defaults) with secrets masked."""
    from bot.config import masked

    typer.echo(json.dumps(masked(settings_or_exit()), indent=2))


@app.command()
@run_async
async def tools(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """List every tool: whether the model can call it, its policy, its argument schema and its statistics.
    MCP tools also show their server and its state: each configured server is connected to, to list them."""
    from agent.mcp import McpServers
    from bot.database import open_db
    from bot.mcp import server_specs
    from bot.tools import build_registry, unconfigured_reason

    settings = settings_or_exit()
    registry = build_registry(settings)
    async with McpServers(server_specs(settings), registry) as servers:
        servers_now = {status.name: status for status in servers.statuses()}
    async with open_db(settings) as storage:
        stats = await storage.executions.stats()
    rows: list[dict[str, Any]] = []
    for spec in registry:
        s = stats.get(spec.name)
        server = servers_now.get(spec.server)
        rows.append(
            {
                "name": spec.name,
                "server": spec.server or None,
                "server_state": server.describe() if server else None,
                "enabled": spec.enabled,
                "why_disabled": None if spec.enabled else unconfigured_reason(settings, spec.name),
                "description": spec.description,
                "returns": spec.returns,
                "examples": list(spec.examples),
                "approval": spec.approval,
                "timeout_s": spec.timeout_s,
                "parameters": spec.parameters,
                "stats": s.__dict__ if s else None,
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        state = "enabled" if row["enabled"] else f"disabled ({row['why_disabled']})"
        if row["server"]:
            state += f"; MCP server {row['server']} {row['server_state']}"
        args = ", ".join(row["parameters"].get("properties", {}))
        typer.echo(f"{row['name']}({args})  [{state}; approval {row['approval']}; timeout {row['timeout_s']:g} s]")
        typer.echo(f"    {str(row['description']).splitlines()[0]}")
        typer.echo(f"    schema: {json.dumps(row['parameters'].get('properties', {}))}")
        s = stats.get(str(row["name"]))
        if s:
            typer.echo(
                f"    calls {s.calls}, ok {s.successes}, failed {s.failures}, "
                f"mean {s.mean_ms:.1f} ms, p95 {s.p95_ms:.1f} ms"
            )
    for status in servers_now.values():
        if not status.ok:
            typer.echo(f"MCP server {status.name} ({status.transport}): {status.describe()}; its tools are left out")


@app.command()
@run_async
async def doctor() -> None:
    """Check settings, the database and its migrations, and that the model answers."""
    import asyncio

    from agent.engines import build_model
    from bot.app import model_config
    from bot.database import open_db

    settings = settings_or_exit()
    results: list[tuple[str, bool, str]] = [("settings", True, "valid")]
    try:
        async with open_db(settings) as storage:
            status = await storage.status()
        results.append(
            (
                "database",
                status.schema_version == status.latest_version,
                f"{status.engine} {status.location}, schema {status.schema_version}",
            )
        )
    except Exception as exc:
        results.append(("database", False, str(exc)))
    try:
        handle = build_model(model_config(settings))
        out = await asyncio.wait_for(handle.lm.acall("Reply with the single word OK."), settings.lm.timeout_s)
        results.append(("model", bool(out), f"{handle.name} answered {str(out[0])[:40]!r}"))
    except Exception as exc:
        results.append(("model", False, f"{settings.lm.model}: {type(exc).__name__}: {str(exc)[:200]}"))
    for name, ok, detail in results:
        typer.echo(f"{'ok  ' if ok else 'FAIL'} {name:9} {detail}")
    if not all(ok for _, ok, _ in results):
        raise typer.Exit(1)


@memory_app.command("facts")
@run_async
async def memory_facts(channel: ChannelOpt, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the facts remembered in a channel."""
    from bot.database import open_db

    async with open_db(settings_or_exit()) as storage:
        facts = await storage.facts.of_channel(channel)
    if as_json:
        typer.echo(json.dumps([f.__dict__ for f in facts], indent=2))
        return
    for f in facts:
        typer.echo(f"{f.key}: {f.value}  (accessed {f.access_count}x, last {_when(f.last_access)})")
    if not facts:
        typer.echo(f"No facts remembered in {channel}.")


@memory_app.command("turns")
@run_async
async def memory_turns(
    channel: ChannelOpt, limit: Annotated[int, typer.Option(help="How many recent turns.")] = 20
) -> None:
    """Show the recent conversation turns of a channel."""
    from bot.database import open_db

    async with open_db(settings_or_exit()) as storage:
        turns = await storage.turns.of_channel(channel, limit)
    for t in turns:
        typer.echo(f"[{_when(t.created_at)}] {t.role}{' ' + t.user_id if t.user_id else ''}: {t.text}")
    if not turns:
        typer.echo(f"No turns in {channel}.")


@memory_app.command("forget")
@run_async
async def memory_forget(
    channel: ChannelOpt, yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask.")] = False
) -> None:
    """Erase everything a channel remembers: turns, facts, notes and reasoning chains."""
    from bot.database import open_db

    settings = settings_or_exit()
    if not yes and not typer.confirm(f"Erase all memory of {channel}?"):
        raise typer.Exit(1)
    async with open_db(settings) as storage:
        counts = await storage.forget(channel)
    typer.echo(f"Forgot {channel}: " + ", ".join(f"{n} {table}" for table, n in counts.items()))


@memory_app.command("export")
@run_async
async def memory_export(channel: ChannelOpt, out: Annotated[Path, typer.Option("--out", "-o")]) -> None:
    """Write a channel's memory to a JSON file."""
    from bot.database import open_db

    async with open_db(settings_or_exit()) as storage:
        data = await storage.export_channel(channel)
    out.write_text(json.dumps(data, ensure_ascii=False, indent=2))
    typer.echo(f"Exported {len(data['facts'])} facts and {len(data['turns'])} turns of {channel} to {out}")


@memory_app.command("import")
@run_async
async def memory_import(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False)],
    channel: Annotated[str | None, typer.Option("--channel", "-c", help="Target channel.")] = None,
) -> None:
    """Load a channel's memory from a JSON export."""
    from bot.database import open_db

    try:
        data = json.loads(file.read_text())
        async with open_db(settings_or_exit()) as storage:
            await storage.import_channel(data, channel)
    except (ValueError, KeyError, TypeError) as exc:
        raise fail(f"{file} is not a valid memory export: {exc}") from None
    typer.echo(f"Imported {file} into {channel or data['channel']}")


def _since(since: str | None) -> float:
    if not since:
        return 0.0
    try:
        parsed = datetime.fromisoformat(since)
    except ValueError:
        raise fail(f"--since {since!r} is not an ISO date or time") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


SinceOpt = Annotated[str | None, typer.Option(help="Only chains started at or after this ISO time.")]
ChainChannelOpt = Annotated[str | None, typer.Option("--channel", "-c", help="Only this channel.")]


@chains_app.command("export")
@run_async
async def chains_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="JSON Lines file to write.")],
    since: SinceOpt = None,
    channel: ChainChannelOpt = None,
) -> None:
    """Export reasoning chains (question, answer, every step) as JSON Lines, with secrets redacted."""
    from rich.progress import Progress

    from agent.redact import Redactor
    from bot.config import secret_values
    from bot.database import open_db

    settings = settings_or_exit()
    start = _since(since)
    redactor = Redactor(secret_values(settings))
    count = 0
    async with open_db(settings) as storage:
        total = await storage.chains.count(start, channel)
        with out.open("w") as fh, Progress(transient=True) as progress:
            task = progress.add_task("Exporting chains", total=total)
            async for chain in storage.chains.since(start, channel=channel):
                fh.write(json.dumps(redactor.data(chain), ensure_ascii=False) + "\n")
                count += 1
                progress.advance(task)
    typer.echo(f"Exported {count} chains to {out}")


@chains_app.command("stats")
@run_async
async def chains_stats(
    since: SinceOpt = None,
    channel: ChainChannelOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Counts, mean steps and duration, model calls and tokens, and tool usage of reasoning chains."""
    from bot.database import open_db

    async with open_db(settings_or_exit()) as storage:
        stats = await storage.chains.stats(_since(since), channel)
    if as_json:
        typer.echo(json.dumps(stats.__dict__, indent=2))
        return
    statuses = ", ".join(f"{n} {status}" for status, n in stats.by_status.items()) or "none"
    typer.echo(f"chains        {stats.chains} ({statuses})")
    typer.echo(f"mean steps    {stats.mean_steps:.2f}")
    typer.echo(f"mean duration {stats.mean_duration_ms:.0f} ms")
    typer.echo(f"model calls   {stats.model_calls} ({stats.input_tokens} tokens in, {stats.output_tokens} out)")
    tools_used = ", ".join(f"{tool} {n}" for tool, n in stats.tool_usage.items()) or "none"
    typer.echo(f"tool usage    {tools_used}")


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


JsonOpt = Annotated[bool, typer.Option("--json", help="Print as JSON.")]


@approvals_app.command("list")
@run_async
async def approvals_list(as_json: JsonOpt = False) -> None:
    """Allow-always grants (tool and channel) and requests waiting for a decision."""
    from bot.database import open_db

    async with open_db(settings_or_exit()) as storage:
        approvals = storage.approvals
        grants, pending = await approvals.grants(), await approvals.pending()
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "grants": [g.__dict__ for g in grants],
                    # asdict: a request holds a dataclass of its own (where its prompt was posted).
                    "pending": [{**asdict(p), "state": p.state.value} for p in pending],
                },
                indent=2,
            )
        )
        return
    typer.echo(f"Allowed always ({len(grants)}):")
    for g in grants:
        typer.echo(f"  {g.tool} in {g.channel}, granted by {g.granted_by} at {_when(g.granted_at)}")
    typer.echo(f"Waiting for a decision ({len(pending)}):")
    for p in pending:
        typer.echo(f"  {p.describe_call()} asked by {p.requester} in {p.channel}, expires {_when(p.expires_at)}")


@approvals_app.command("revoke")
@run_async
async def approvals_revoke(
    tool: Annotated[str, typer.Option(help="The tool whose allow-always grant to remove.")],
    channel: Annotated[str, typer.Option("--channel", "-c", help="The channel (memory key) of the grant.")],
) -> None:
    """Remove an allow-always grant: the tool asks for approval in that channel again."""
    import getpass

    from bot.database import open_db

    async with open_db(settings_or_exit()) as storage:
        revoked = await storage.approvals.revoke(tool, channel, actor=f"cli:{getpass.getuser()}")
    if not revoked:
        raise fail(f"no allow-always grant for {tool} in {channel}")
    typer.echo(f"Revoked: {tool} asks for approval in {channel} again.")


@approvals_app.command("audit")
@run_async
async def approvals_audit(
    since: Annotated[str | None, typer.Option(help="Only entries at or after this ISO time.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every approval request, decision (refused ones too), grant and revocation, oldest first."""
    from bot.database import open_db

    async with open_db(settings_or_exit()) as storage:
        entries = await storage.approvals.audit(_since(since))
    if as_json:
        typer.echo(json.dumps([e.__dict__ for e in entries], indent=2))
        return
    for e in entries:
        what = f"{e.tool} in {e.channel}" if e.channel else e.tool
        detail = f" ({e.detail})" if e.detail else ""
        typer.echo(f"{_when(e.at)}  {e.action:<16} {e.outcome:<9} {e.actor:<20} {what}  {e.request_id}{detail}")


@discord_app.command("sync")
@run_async
async def discord_sync(
    guild: Annotated[int | None, typer.Option(help="Sync to this guild only (instant; for development).")] = None,
) -> None:
    """Register the slash commands with Discord now (`parley run` syncs only when they changed)."""
    from dataclasses import replace

    from adapters.discord import DiscordAdapter
    from bot.service import discord_config

    settings = settings_or_exit()
    if not settings.discord.token:
        raise fail("set PARLEY_DISCORD__TOKEN (or DISCORD_BOT_TOKEN) first", 2)
    config = discord_config(settings)
    if guild is not None:
        config = replace(config, command_guild=guild)
    adapter = DiscordAdapter(config)
    try:
        await adapter.login()
        synced = await adapter.sync_commands()
    finally:
        await adapter.close()
    typer.echo(f"Synced {', '.join(synced)}" + (f" to guild {guild}" if guild else " globally"))


@jobs_app.command("list")
@run_async
async def jobs_list(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Every scheduled job: its cron line, next run, and its last run's outcome."""
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from bot.database import open_db
    from bot.jobs import job_table
    from bot.scheduler import next_fire

    settings = settings_or_exit()
    zone = settings.scheduler.timezone
    async with open_db(settings) as storage:
        last = await storage.jobs.last_runs()
    now = datetime.now(ZoneInfo(zone))
    rows = []
    for name, cron, description in job_table(settings):
        fire = next_fire(cron, zone, now)
        run = last.get(name)
        rows.append(
            {
                "name": name,
                "cron": cron,
                "description": description,
                "next_run": fire.isoformat() if fire else None,
                "last_run": _when(run.started_at) if run else None,
                "outcome": run.state if run else None,
                "detail": (run.detail + (f" (error id {run.error_id})" if run.error_id else "")) if run else "",
            }
        )
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not settings.scheduler.enabled:
        typer.echo("The scheduler is off here (PARLEY_SCHEDULER__ENABLED=false); another process runs the jobs.")
    for row in rows:
        last_text = f"last {row['last_run']} {row['outcome']}: {row['detail']}" if row["last_run"] else "never run"
        typer.echo(f"{row['name']:<18} {row['cron']:<18} next {row['next_run']}  {last_text}")
        typer.echo(f"    {row['description']}")


@jobs_app.command("run")
@run_async
async def jobs_run(name: Annotated[str, typer.Argument(help="The job to run (see `parley jobs list`).")]) -> None:
    """Run one job now, once (as its own slot: the scheduled runs are not affected)."""
    from bot.app import build_app
    from bot.config import secret_values
    from bot.jobs import build_jobs, job_deps, job_table
    from bot.metrics import observe_job
    from bot.observe import error_reports
    from bot.scheduler import Scheduler
    from bot.service import posting_platforms

    settings = settings_or_exit()
    names = [row[0] for row in job_table(settings)]
    if name not in names:
        raise fail(f"no job {name!r}; jobs: {', '.join(names)}", 2)
    async with (
        error_reports(settings.sentry, secret_values(settings)),
        build_app(settings) as parley,
        posting_platforms(parley) as posters,
    ):
        jobs = build_jobs(settings, job_deps(parley, posters))
        scheduler = Scheduler(parley.storage.jobs, jobs, timezone=settings.scheduler.timezone, observe=observe_job)
        outcome = await scheduler.run(name)
    if outcome.state != "ok":
        raise fail(f"job {name} failed (error id {outcome.error_id}): {outcome.detail}")
    typer.echo(f"{name}: {outcome.detail}")


@mcp_app.command("check")
@run_async
async def mcp_check(as_json: JsonOpt = False) -> None:
    """Connect to each configured MCP server and print its tools (with their policy) or why it failed."""
    from agent.mcp import McpServers
    from agent.tools.registry import ToolRegistry
    from bot.mcp import server_specs

    settings = settings_or_exit()
    specs = server_specs(settings)
    if not specs:
        typer.echo("No MCP servers are configured (add [mcp.servers.NAME] to parley.toml).")
        return
    async with McpServers(specs, ToolRegistry()) as servers:
        report = [
            (
                status,
                servers.tools(status.name),
                # Listed by the server, not offered to the model (include/exclude).
                sorted({t.name for t in servers.connections[status.name].tools} - set(servers.offered(status.name))),
            )
            for status in servers.statuses()
        ]
    if as_json:
        rows = [
            {
                "server": status.name,
                "transport": status.transport,
                "ok": status.ok,
                "state": status.state.value,
                "error": status.error or None,
                "protocol": status.protocol or None,
                "tools": [
                    {"name": t.name, "approval": t.approval, "timeout_s": t.timeout_s, "enabled": t.enabled}
                    for t in offered
                ],
                "left_out": left_out,
            }
            for status, offered, left_out in report
        ]
        typer.echo(json.dumps(rows, indent=2))
    for status, offered, left_out in [] if as_json else report:
        if not status.ok:
            typer.echo(f"FAIL {status.name} ({status.transport}): {status.error}")
            continue
        typer.echo(f"ok   {status.name} ({status.transport}, protocol {status.protocol}): {len(offered)} tools")
        for t in offered:
            hidden = "" if t.enabled else "; disabled in settings"
            typer.echo(f"     {t.name}  [approval {t.approval}; timeout {t.timeout_s:g} s{hidden}]")
        if left_out:
            typer.echo(f"     left out by include/exclude: {', '.join(left_out)}")
    if not all(status.ok for status, _, _ in report):
        raise typer.Exit(1)


def main() -> None:
    app(prog_name="parley")


if __name__ == "__main__":
    main()
