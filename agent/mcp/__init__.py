"""Tools from Model Context Protocol servers, behind the same runner and approvals as every other tool.

`spec` says what a server is, `client` owns one server's connection, `tools` turns its tools into registry
tools, `servers` runs them all. The `mcp` SDK is imported only where a connection is made.
"""

from agent.mcp.client import McpConnection, McpUnavailable
from agent.mcp.servers import McpServers
from agent.mcp.spec import SEPARATOR, McpServerSpec, ServerCounters, ServerState, ServerStatus

__all__ = [
    "SEPARATOR",
    "McpConnection",
    "McpServerSpec",
    "McpServers",
    "McpUnavailable",
    "ServerCounters",
    "ServerState",
    "ServerStatus",
]
