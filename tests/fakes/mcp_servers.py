"""Real MCP servers written with the `mcp` SDK, for the tests: one tool set, served over stdio (as a child process:
`python -m tests.fakes.mcp_servers`) or over streamable HTTP on 127.0.0.1 (`McpHttpServer`, in a thread).

Tools: `search` (read-only), `write_note` (destructive: appends to the notes file, the side effect tests look
for), `sleep` (read-only, hangs), `whoami` (read-only: pid and environment names), `fail` (an error result),
`add_tool` (adds a tool and says the list changed), `echo_ok` (no hints at all). With `--legacy` (stdio), it
speaks only the 2025-era protocol, as most servers in use do.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any, Self

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.stdio import stdio_server
from mcp.shared.message import SessionMessage
from mcp.types import METHOD_NOT_FOUND, ErrorData, JSONRPCError, JSONRPCRequest, ToolAnnotations

READ_ONLY = ToolAnnotations(read_only_hint=True)
DESTRUCTIVE = ToolAnnotations(read_only_hint=False, destructive_hint=True)
NOTES_ENV = "NOTES_FILE"
PID_ENV = "PID_FILE"


def build_server(name: str, notes: Path) -> MCPServer:
    server = MCPServer(name, log_level="WARNING")

    @server.tool(annotations=READ_ONLY)
    def search(query: str, limit: int = 3) -> str:
        """Search the notes for a query."""
        return f"{limit} results for {query!r} from {name}"

    @server.tool(annotations=DESTRUCTIVE)
    def write_note(text: str) -> str:
        """Write a note to the shared notes file."""
        with notes.open("a") as fh:
            fh.write(f"{name}: {text}\n")
        return f"saved {text!r}"

    @server.tool(annotations=READ_ONLY)
    async def sleep(seconds: float) -> str:
        """Wait, then answer."""
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(annotations=READ_ONLY)
    def whoami() -> dict[str, Any]:
        """The server's process id and the names of its environment variables."""
        return {"pid": os.getpid(), "env": sorted(os.environ)}

    @server.tool(annotations=READ_ONLY)
    def fail(reason: str) -> str:
        """Fail with the given reason."""
        raise ToolError(f"cannot do that: {reason}")

    @server.tool(annotations=READ_ONLY)
    async def add_tool(tool: str, ctx: Context) -> str:
        """Add a tool that answers its own name, and tell the client the list changed."""

        def added() -> str:
            return f"{tool} answered"

        server.add_tool(added, name=tool, description=f"The added {tool} tool.", annotations=READ_ONLY)
        await ctx.notify_tools_changed()  # 2026-era clients, on their listen stream
        await ctx.session.send_tool_list_changed()  # earlier clients
        return f"added {tool}"

    @server.tool()
    def echo_ok(text: str) -> str:
        """Echo the text (this tool says nothing about its effects)."""
        return text

    return server


class McpHttpServer:
    """The same server over streamable HTTP on 127.0.0.1, served by uvicorn on its own thread and loop."""

    def __init__(self, notes: Path, name: str = "docs") -> None:
        import uvicorn

        app = build_server(name, notes).streamable_http_app()
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_graceful_shutdown=1)
        )
        self._thread = threading.Thread(target=self._server.run, name="mcp-http", daemon=True)

    @property
    def url(self) -> str:
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/mcp"

    def __enter__(self) -> Self:
        self._thread.start()
        for _ in range(500):
            if self._server.started:
                return self
            threading.Event().wait(0.01)
        raise RuntimeError("the MCP HTTP server did not start")

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(10)


REPO = Path(__file__).resolve().parents[2]


class DiscoveryRefused:
    """The stdin stream of a 2025-era server: the client's `server/discover` probe is answered "method not
    found" before the SDK's server sees it (which would serve the 2026 protocol), so the client falls back to
    the initialize handshake, and list changes go out as plain notifications, with no listen stream."""

    def __init__(self, read: Any, write: Any) -> None:
        self._read = read
        self._write = write

    @property
    def last_context(self) -> Any:
        return getattr(self._read, "last_context", None)

    async def receive(self) -> Any:
        while True:
            item = await self._read.receive()
            message = getattr(item, "message", None)
            if not (isinstance(message, JSONRPCRequest) and message.method == "server/discover"):
                return item
            error = ErrorData(code=METHOD_NOT_FOUND, message="Method not found")
            await self._write.send(SessionMessage(JSONRPCError(jsonrpc="2.0", id=message.id, error=error)))

    def __aiter__(self) -> DiscoveryRefused:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def aclose(self) -> None:
        await self._read.aclose()

    async def __aenter__(self) -> DiscoveryRefused:
        await self._read.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> Any:
        return await self._read.__aexit__(*exc)


async def serve_legacy(server: MCPServer) -> None:
    lowlevel = server._lowlevel_server
    async with stdio_server() as (read, write):
        await lowlevel.run(DiscoveryRefused(read, write), write, lowlevel.create_initialization_options())


def stdio_command(name: str = "notes", *, legacy: bool = False) -> tuple[str, list[str]]:
    """The command line that runs the stdio server under the test's Python; run it in `REPO`. (Not as a script:
    this folder's platform.py would shadow the standard library's for the child.)"""
    return sys.executable, ["-m", "tests.fakes.mcp_servers", name, *(["--legacy"] if legacy else [])]


if __name__ == "__main__":
    # A test that stops Parley from outside finds the child by the pid it leaves here.
    if os.environ.get(PID_ENV):
        Path(os.environ[PID_ENV]).write_text(str(os.getpid()))
    served = build_server(sys.argv[1], Path(os.environ[NOTES_ENV]))
    if "--legacy" in sys.argv:
        anyio.run(serve_legacy, served)
    else:
        served.run()
