"""Built-in tool hooks: a log line and Prometheus metrics for every call. Hooks are the runner's public API."""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from agent.tools.registry import ToolSpec
from agent.tools.runner import ToolCall, ToolResult

log = logging.getLogger("parley.tools")


class LoggingHook:
    """One line per call: tool, outcome, duration. Argument names only; values may be private."""

    async def before(self, call: ToolCall, spec: ToolSpec) -> None:
        log.debug("tool %s starting (args: %s)", spec.name, ", ".join(call.args))

    async def after(self, call: ToolCall, result: ToolResult) -> None:
        level = logging.INFO if result.ok else logging.WARNING
        log.log(level, "tool %s %s in %.1f ms", call.tool, result.outcome, result.duration_ms)


class MetricsHook:
    """Counts calls by tool and outcome and observes durations. No user or channel ids as labels."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.calls = Counter(
            "parley_tool_calls", "Tool calls by tool and outcome.", ["tool", "outcome"], registry=registry
        )
        self.duration = Histogram(
            "parley_tool_call_seconds",
            "Tool call duration.",
            ["tool"],
            buckets=(0.005, 0.025, 0.1, 0.25, 1, 2.5, 10, 30),
            registry=registry,
        )

    async def before(self, call: ToolCall, spec: ToolSpec) -> None:
        return None

    async def after(self, call: ToolCall, result: ToolResult) -> None:
        # A name the model made up is not a tool: one label for all of them keeps the series bounded.
        tool = "unknown" if result.outcome == "unknown_tool" else call.tool
        self.calls.labels(tool, result.outcome).inc()
        self.duration.labels(tool).observe(result.duration_ms / 1000)
