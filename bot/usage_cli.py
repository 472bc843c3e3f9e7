"""`parley usage`: who used how much of the models, from the usage rows every answer writes.

Mounted on `parley` by `bot/cli.py`. Like the rest of the CLI it imports only typer at module level: rich, the
settings and the database load inside the command, so `parley --help` stays instant (and DSPy never loads).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated

import typer

from bot.command import fail, run_async, settings_or_exit
from bot.usage import parse_since, usd

if TYPE_CHECKING:
    from agent.storage.models import UsageTotal

DEFAULT_SINCE = "30d"


class By(StrEnum):
    """What the rows of the report are: the groups `Usage.totals` knows."""

    USER = "user"
    CHANNEL = "channel"
    MODEL = "model"


def _row(total: UsageTotal) -> dict[str, object]:
    return {**asdict(total), "tokens": total.tokens}


def _print_table(groups: list[UsageTotal], total: UsageTotal, by: By, since: float) -> None:
    from rich.console import Console
    from rich.table import Table

    start = datetime.fromtimestamp(since, UTC).strftime("%Y-%m-%d %H:%M UTC")
    table = Table(title=f"Model usage since {start}, by {by.value}", title_justify="left")
    table.add_column(by.value, overflow="fold")  # a model id or channel key is read whole, never cut
    for name in ("answers", "calls", "tokens in", "tokens out", "tokens"):
        table.add_column(name, justify="right")
    table.add_column("cost (USD)", justify="right")
    for t in groups:
        numbers = (t.answers, t.calls, t.input_tokens, t.output_tokens, t.tokens)
        table.add_row(t.key, *(f"{n:,}" for n in numbers), usd(t.cost), end_section=t is groups[-1])
    numbers = (total.answers, total.calls, total.input_tokens, total.output_tokens, total.tokens)
    table.add_row("total", *(f"{n:,}" for n in numbers), usd(total.cost), style="bold")
    Console(soft_wrap=True).print(table)


@run_async
async def usage(
    since: Annotated[
        str, typer.Option(help="From when: a span back from now (24h, 7d, 2w) or an ISO date (2026-11-01).")
    ] = DEFAULT_SINCE,
    by: Annotated[By, typer.Option(help="One row per user, channel or model.")] = By.USER,
    limit: Annotated[int, typer.Option(min=1, help="Most rows shown (the heaviest first); the total counts all.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print as JSON.")] = False,
) -> None:
    """Model calls, tokens and cost (where the model's price is known) per user, channel or model, heaviest
    first, with the total."""
    try:
        start = parse_since(since, time.time())
    except ValueError as exc:
        raise fail(f"--since {exc}", 2) from None
    from bot.database import open_db

    async with open_db(settings_or_exit()) as storage:
        groups = await storage.usage.totals(since=start, by=by.value, limit=limit)
        total = await storage.usage.spent(since=start)
    if as_json:
        report = {"since": start, "by": by.value, "groups": [_row(t) for t in groups], "total": _row(total)}
        typer.echo(json.dumps(report, indent=2))
        return
    _print_table(groups, total, by, start)
