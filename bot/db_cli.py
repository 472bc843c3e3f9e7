"""`parley db`: migrate the configured database, show its state, copy a SQLite file into PostgreSQL.

Mounted on `parley` by `bot/cli.py`. Like the rest of the CLI it imports only typer at module level: asyncio,
rich, the settings and the database drivers load inside the commands, so `parley --help` stays instant.

Exit codes as for every command (`bot/command.py`): 0 done; 2 the database cannot be used as asked (a bad URL, a
refused password, a copy target that holds data or has another schema) and trying again will not help; 1 the
server could not be reached, which a deploy pipeline may retry, or the database is unusable (corrupted, newer).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bot.command import fail, run_async, settings_or_exit

if TYPE_CHECKING:
    from agent.storage.models import StorageStatus
    from bot.config import Settings

db_app = typer.Typer(
    help="The database: migrate it, show its state, copy a SQLite file into PostgreSQL.", no_args_is_help=True
)


def _require_sqlite_file(settings: Settings, path: Path) -> None:
    """Opening a missing SQLite path would create an empty database: say it is missing instead."""
    if settings.db.url is None and str(path) != ":memory:" and not path.exists():
        raise fail(f"no SQLite database at {path} (`parley db migrate` or the first start creates it)", 2)


def _describe(status: StorageStatus) -> None:
    from agent.storage import mask_url

    location = status.location if status.engine == "sqlite" else mask_url(status.location)
    typer.echo(f"engine    {status.engine}")
    typer.echo(f"location  {location}")
    behind = "" if status.schema_version == status.latest_version else "; run `parley db migrate`"
    typer.echo(f"schema    version {status.schema_version} of {status.latest_version}{behind}")


def _counts_table(rows: dict[str, int], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in rows.items():
        table.add_row(name, f"{count:,}")
    table.add_row("total", f"{sum(rows.values()):,}", style="bold", end_section=True)
    Console(soft_wrap=True).print(table)


@db_app.command("migrate")
@run_async
async def migrate() -> None:
    """Bring the configured database's schema up to the latest version and exit (a deploy step before start)."""
    from bot.database import open_db

    async with open_db(settings_or_exit(), migrate=True) as storage:
        _describe(await storage.status())


@db_app.command("status")
@run_async
async def status(as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False) -> None:
    """Engine, location, schema version and rows per table of the configured database, without migrating it."""
    from bot.database import open_db

    settings = settings_or_exit()
    _require_sqlite_file(settings, settings.db.path)
    async with open_db(settings, migrate=False) as storage:
        found = await storage.status()
        # Live replicas by heartbeat (PostgreSQL; a SQLite file has at most the one process that holds it).
        now = time.time()
        live = []
        if found.schema_version == found.latest_version:  # an older schema has no replicas table yet
            live = await storage.replicas.live(now=now, ttl_s=settings.dispatch.claim_ttl_s)
    if as_json:
        typer.echo(json.dumps({**asdict(found), "replicas": [asdict(r) for r in live]}, indent=2))
        return
    _describe(found)
    for replica in live:
        typer.echo(f"replica   {replica.id} (pid {replica.pid}, heartbeat {now - replica.heartbeat_at:.1f} s ago)")
    _counts_table(found.rows, "rows per table")


@db_app.command("copy")
@run_async
async def copy(
    to: Annotated[str, typer.Option("--to", help="The empty PostgreSQL database: postgresql://user:pw@host/db.")],
    source: Annotated[
        Path | None, typer.Option("--from", help="The SQLite file to copy (default: the configured [db] path).")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, help="Rows per insert.")] = 1000,
) -> None:
    """Copy the SQLite database into an empty PostgreSQL database, then check every table's row count.

    Stop Parley first. The SQLite file is migrated to the current schema if it is older; the PostgreSQL
    database gets the schema. Afterwards set PARLEY_DB__URL to the URL and start Parley."""
    from agent.storage import mask_url

    settings = settings_or_exit()
    path = source or settings.db.path
    if not path.exists():
        raise fail(f"no SQLite database at {path}", 2)
    copied = await _copy(settings, path, to, batch)
    typer.echo(f"Copied {sum(copied.values()):,} rows from {path} to {mask_url(to)}; every table's count matches.")
    _counts_table(copied, "rows copied")
    typer.echo("Next: set PARLEY_DB__URL (or [db] url) to that database and start Parley.")


async def _copy(settings: Settings, path: Path, url: str, batch: int) -> dict[str, int]:
    """Open both ends, copy with a progress bar per table (on stderr, so stdout stays the result), close both.

    The target opens first: a mistyped URL or a refused password fails before the SQLite file is touched."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

    from agent.storage import StoreError, open_storage
    from agent.storage.copy import copy_database

    target = await open_storage(url=url, max_turns=settings.memory.max_turns, pool_size=2)
    try:
        source = await open_storage(
            path=path, busy_timeout_ms=settings.db.busy_timeout_ms, max_turns=settings.memory.max_turns
        )
        try:
            from agent.storage.postgres.storage import PostgresStorage
            from agent.storage.sqlite.storage import SqliteStorage

            if not isinstance(source, SqliteStorage) or not isinstance(target, PostgresStorage):
                raise StoreError("copy goes from a SQLite file to a PostgreSQL database")
            totals = (await source.status()).rows
            # Transient, and shown from the first row on: a refused copy prints its one line and nothing else,
            # and a finished one leaves only the table of verified counts.
            columns = (TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
            bar = Progress(*columns, console=Console(stderr=True), transient=True)
            tasks: dict[str, TaskID] = {
                table: bar.add_task(table, total=total, start=False) for table, total in totals.items()
            }

            def advance(table: str, rows: int) -> None:
                if not bar.live.is_started:
                    bar.start()
                bar.start_task(tasks[table])
                bar.update(tasks[table], completed=rows, total=max(rows, totals[table]))

            try:
                return await copy_database(source, target, batch=batch, progress=advance)
            finally:
                bar.stop()
        finally:
            await source.close()
    finally:
        await target.close()
