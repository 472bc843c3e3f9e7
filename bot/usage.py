"""Usage reports shared by `parley usage`, the chat's usage command and the metrics summary: how a report's
start is written and how a cost reads. Imports nothing heavy (no DSPy), so the CLI stays quick."""

from __future__ import annotations

import re
from datetime import UTC, datetime

SPAN = re.compile(r"(\d+)\s*([mhdw])")
SPAN_SECONDS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_since(text: str, now: float) -> float:
    """The start of a report: a span back from `now` (`30m`, `24h`, `7d`, `2w`), or an ISO date or time (UTC
    unless it says otherwise). ValueError with the accepted forms for anything else."""
    if span := SPAN.fullmatch(text.strip().lower()):
        try:
            start = now - int(span[1]) * SPAN_SECONDS[span[2]]
            datetime.fromtimestamp(start, UTC)  # a report prints its start: it must be a date
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{text!r} reaches back further than any date") from None
        return start
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is neither a span (30m, 24h, 7d, 2w) nor an ISO date (2026-11-01)") from None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def usd(cost: float | None) -> str:
    """A cost for people: cents for a dollar or more, four decimals below (a model call costs fractions of a
    cent), "unknown" when no answer had a known price (never shown as $0, which would read as free)."""
    if cost is None:
        return "unknown"
    if cost == 0:
        return "$0"
    return f"${cost:,.2f}" if cost >= 1 else f"${cost:.4f}"
