"""Built-in tools that need no configuration. Names, arguments and docstrings are what the model sees;
they are part of the contract."""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from agent.tools.calculator import evaluate, format_number
from agent.tools.context import current
from agent.tools.registry import ToolError, tool
from agent.tools.timezones import zone_in

MAX_FACT_CHARS = 1000


@tool(returns="the result as a number", examples=("12*7", "sqrt(2)/2", "2^10"), timeout_s=5)
async def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression (+ - * / // % **, sqrt, abs, round, min, max, log, exp, pi, e)."""
    # Arithmetic is bounded but still CPU work: keep it off the event loop.
    return format_number(await asyncio.to_thread(evaluate, expression))


@tool(returns="weekday, date and time", examples=("UTC", "Europe/Paris"), timeout_s=5)
async def current_time(timezone: str = "UTC") -> str:
    """Return the current date, weekday and time in an IANA timezone such as "Europe/Paris" or "UTC", or in a
    city such as "Tokyo"."""
    name = timezone.strip() or "UTC"
    try:
        zone = ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        # Models often name the city ("Tokyo", "New York") rather than its zone.
        place = zone_in(name)
        if place is None:
            raise ToolError(f"unknown timezone {timezone!r}; use an IANA name like 'Europe/Paris' or 'UTC'") from None
        zone = ZoneInfo(place)
    now = datetime.now(zone)
    return now.strftime("%A %Y-%m-%d %H:%M:%S %Z (UTC%z)")


@tool(returns="a confirmation", examples=('key "standup time", value "9:30"',))
async def remember_fact(key: str, value: str) -> str:
    """Remember a fact about this channel for later, e.g. key "standup time", value "9:30"."""
    key, value = key.strip(), value.strip()
    if not key or not value:
        raise ToolError("both key and value are needed")
    if len(key) + len(value) > MAX_FACT_CHARS:
        raise ToolError(f"a fact is limited to {MAX_FACT_CHARS} characters")
    ctx = current()
    await ctx.storage.facts.add(ctx.conversation.channel, key, value)
    return f"Remembered {key}: {value}"


@tool(returns="matching facts, one per line", examples=("standup",))
async def recall_facts(query: str) -> str:
    """Look up facts remembered in this channel that match the words of the query."""
    ctx = current()
    facts = await ctx.storage.facts.relevant(ctx.conversation.channel, query, 5, touch=True)
    if not facts:
        return "No remembered facts match."
    return "\n".join(f"{f.key}: {f.value}" for f in facts)


BUILTIN_TOOLS = (calculator, current_time, remember_fact, recall_facts)
