"""The metrics summary: what Parley did in a time window, read from the database (and the breakers' recent
state changes), and the short text the summary job posts."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from agent.resilience import CircuitBreaker
from agent.storage.base import Storage
from agent.storage.models import UsageTotal
from bot.usage import usd

# Reply statuses (agent/messages.py) that count as a failure to answer.
FAILED = ("error",)
# The heaviest users and channels the summary names, by tokens.
TOP = 3


@dataclass(frozen=True)
class ToolUse:
    calls: int
    failed: int


@dataclass(frozen=True)
class Summary:
    since: float
    until: float
    handled: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    undelivered: int = 0
    p50_s: float | None = None
    p95_s: float | None = None
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tools: dict[str, ToolUse] = field(default_factory=dict)
    approvals: dict[str, int] = field(default_factory=dict)
    breaker_changes: dict[str, int] = field(default_factory=dict)
    top_users: tuple[UsageTotal, ...] = ()
    top_channels: tuple[UsageTotal, ...] = ()

    @property
    def answered(self) -> int:
        return self.by_status.get("answered", 0)

    @property
    def failed(self) -> int:
        return sum(self.by_status.get(s, 0) for s in FAILED) + self.undelivered

    @property
    def fallback(self) -> int:
        return self.by_status.get("fallback", 0)


def percentile(values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of `values` (sorted or not); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


async def summarise(storage: Storage, since: float, until: float, breakers: Iterable[CircuitBreaker] = ()) -> Summary:
    """Messages received in [since, until) and what was done for them, with the breakers' state changes."""
    counts = await storage.stats.window(since, until)
    changes: Counter[str] = Counter()
    for breaker in breakers:
        for t in breaker.metrics.transitions:
            if since <= t.at < until:
                changes[f"{breaker.name} {t.old.value}→{t.new.value}"] += 1
    return Summary(
        since=since,
        until=until,
        handled=sum(counts.by_status.values()) + counts.undelivered,
        by_status=counts.by_status,
        undelivered=counts.undelivered,
        p50_s=percentile(counts.latencies_s, 50),
        p95_s=percentile(counts.latencies_s, 95),
        model_calls=counts.model_calls,
        input_tokens=counts.input_tokens,
        output_tokens=counts.output_tokens,
        tools={tool: ToolUse(calls, failed) for tool, (calls, failed) in counts.tools.items()},
        approvals={"requested": sum(counts.approvals.values()), **counts.approvals},
        breaker_changes=dict(sorted(changes.items())),
        top_users=tuple(await storage.usage.totals(since=since, until=until, by="user", limit=TOP)),
        top_channels=tuple(await storage.usage.totals(since=since, until=until, by="channel", limit=TOP)),
    )


def _time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} s"


def _heaviest(totals: Iterable[UsageTotal]) -> str:
    """`key N tokens ($cost)` for each, the cost left out where it is unknown."""
    parts = [f"{t.key} {t.tokens:,} tokens" + (f" ({usd(t.cost)})" if t.cost is not None else "") for t in totals]
    return ", ".join(parts) or "none"


def render(s: Summary) -> str:
    """The post: one line per subject, Markdown (the adapters turn it into the platform's markup)."""
    others = {k: v for k, v in s.by_status.items() if k not in ("answered", "fallback", *FAILED)}
    other_text = "".join(f", {v} {k}" for k, v in sorted(others.items()))
    tools = ", ".join(f"{name} {use.calls} ({use.failed} failed)" for name, use in s.tools.items()) or "none"
    a = s.approvals
    changes = ", ".join(f"{k} ×{v}" for k, v in s.breaker_changes.items()) or "none"
    return "\n".join(
        (
            f"**Parley summary** {_time(s.since)} to {_time(s.until)}",
            f"- Messages: {s.handled} handled, {s.answered} answered, {s.failed} failed, "
            f"{s.fallback} fallback replies{other_text}",
            f"- Latency: p50 {_seconds(s.p50_s)}, p95 {_seconds(s.p95_s)}",
            f"- Model: {s.model_calls} calls, {s.input_tokens} tokens in, {s.output_tokens} out",
            f"- Top users: {_heaviest(s.top_users)}",
            f"- Top channels: {_heaviest(s.top_channels)}",
            f"- Tools: {tools}",
            f"- Approvals: {a.get('requested', 0)} requested, {a.get('approved', 0)} granted, "
            f"{a.get('denied', 0)} denied, {a.get('expired', 0)} expired",
            f"- Breaker changes: {changes}",
        )
    )
