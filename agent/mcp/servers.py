"""Every configured MCP server: connected together at start-up, their tools kept in the registry, stopped together.

Start-up waits for each server's first attempt (they run at once, each bounded by its connect timeout), so the
agent starts with every tool that is there to be had; a server that failed keeps being retried in the
background, and its tools join the registry when it connects.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Self

from agent.mcp.client import McpConnection
from agent.mcp.spec import McpServerSpec, ServerStatus
from agent.mcp.tools import tool_specs
from agent.tools.registry import ToolRegistry, ToolSpec

if TYPE_CHECKING:
    from mcp.types import Tool

log = logging.getLogger("parley.mcp")


class McpServers:
    """Use as `async with McpServers(specs, registry) as servers:`; leaving the block stops every server."""

    def __init__(self, specs: Sequence[McpServerSpec], registry: ToolRegistry | None = None) -> None:
        self.registry = registry
        self.connections = {spec.name: McpConnection(spec, self._register) for spec in specs}
        self._specs: dict[str, list[ToolSpec]] = {}
        self._offered: dict[str, list[str]] = {}

    async def start(self) -> None:
        for connection in self.connections.values():
            connection.start()
        await asyncio.gather(*(c.settled() for c in self.connections.values()))

    async def stop(self) -> None:
        await asyncio.gather(*(c.stop() for c in self.connections.values()))

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def statuses(self) -> list[ServerStatus]:
        return [c.status for c in self.connections.values()]

    def tools(self, server: str) -> list[ToolSpec]:
        """The server's tools as registered (offered, named, with their policy), from its last tool list."""
        return list(self._specs.get(server, ()))

    def offered(self, server: str) -> list[str]:
        """The server's own names of the tools it offers (those `tools` returns)."""
        return list(self._offered.get(server, ()))

    def _register(self, connection: McpConnection, tools: Sequence[Tool]) -> None:
        specs = tool_specs(connection, tools)
        self._specs[connection.name] = specs
        self._offered[connection.name] = [t.name for t in tools if connection.spec.offers(t.name)]
        if self.registry is None:
            return
        for name in self.registry.replace_server(connection.name, specs):
            log.warning("MCP server %s: tool %s left out, another tool has that name", connection.name, name)
