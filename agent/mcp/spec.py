"""One MCP server as the agent layer sees it: how to reach it, which of its tools to offer, and how it is doing.

Plain data, free of the settings model: `bot/` builds a spec from `[mcp.servers.NAME]`, where the defaults live.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from agent.tools.registry import Policy, ToolOverride

# `<server>__<tool>`: the registry name of an MCP tool, so two servers' `search` never collide.
SEPARATOR = "__"


@dataclass(frozen=True)
class McpServerSpec:
    """A stdio server (`command`) or a streamable HTTP server (`url`); exactly one of the two is set."""

    name: str
    command: str | None
    args: tuple[str, ...]
    # The child's whole environment on top of a few harmless variables (PATH, HOME, ...): never Parley's own.
    env: Mapping[str, str]
    cwd: str | None
    url: str | None
    headers: Mapping[str, str]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    approval: Policy | None
    timeout_s: float
    connect_timeout_s: float
    # A server whose state decides /readyz; others are reported there but never make the service unready.
    required: bool
    # `[tools.<server>__<tool>]` tables, by registry name.
    overrides: Mapping[str, ToolOverride] = field(default_factory=dict)

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command else "http"

    def offers(self, tool: str) -> bool:
        """Whether the server's tool `tool` is offered to the model: on the allowlist (if any), not excluded.
        Shell-style patterns (`get_*`) are accepted in both lists."""
        if self.include and not any(fnmatch.fnmatchcase(tool, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(tool, p) for p in self.exclude)


class ServerState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ServerStatus:
    """What `parley tools`, `parley mcp check` and /readyz show about a server."""

    name: str
    transport: str
    state: ServerState
    # Why the last attempt failed or the connection dropped: one line, safe to show an operator.
    error: str = ""
    tools: int = 0
    protocol: str = ""
    since: float = 0.0
    retry_at: float | None = None
    required: bool = False

    @property
    def ok(self) -> bool:
        return self.state is ServerState.CONNECTED

    def describe(self) -> str:
        """`connected (5 tools, protocol 2025-11-25)` or `failed: command not found: tracker-mcp`."""
        if self.state is ServerState.CONNECTED:
            return f"connected ({self.tools} tools, protocol {self.protocol})"
        return f"{self.state.value}: {self.error}" if self.error else self.state.value


@dataclass
class ServerCounters:
    """Running totals for the metrics collector, which reads them at scrape time."""

    connects: int = 0
    connect_failures: int = 0
    drops: int = 0
    calls: int = 0
    call_failures: int = 0
    tool_list_refreshes: int = 0
