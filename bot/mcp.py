"""MCP servers from settings: `[mcp.servers.NAME]` into the agent layer's specs, with each server's share of
the `[tools.NAME]` tables (those named `<server>__<tool>`)."""

from __future__ import annotations

from agent.mcp.spec import SEPARATOR, McpServerSpec
from agent.tools.registry import ToolOverride
from bot.config import Settings


def server_specs(settings: Settings) -> list[McpServerSpec]:
    """The enabled servers, in settings order."""
    tables = settings.tools.tables()
    specs = []
    for name, server in settings.mcp.servers.items():
        if not server.enabled:
            continue
        prefix = name + SEPARATOR
        specs.append(
            McpServerSpec(
                name=name,
                command=server.command,
                args=tuple(server.args),
                env={key: value.get_secret_value() for key, value in server.env.items()},
                cwd=str(server.cwd) if server.cwd else None,
                url=server.url,
                headers={key: value.get_secret_value() for key, value in server.headers.items()},
                include=tuple(server.include),
                exclude=tuple(server.exclude),
                approval=server.approval,
                timeout_s=server.timeout_s,
                connect_timeout_s=server.connect_timeout_s,
                required=server.required,
                overrides={
                    tool: ToolOverride(enabled=table.enabled, timeout_s=table.timeout_s, approval=table.approval)
                    for tool, table in tables.items()
                    if tool.startswith(prefix)
                },
            )
        )
    return specs


def is_mcp_tool(settings: Settings, tool: str) -> bool:
    """Whether `[tools.NAME]` names a tool of a configured MCP server (known only once the server answers)."""
    server, separator, _ = tool.partition(SEPARATOR)
    return bool(separator) and server in settings.mcp.servers
