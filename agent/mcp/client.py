"""One MCP server's connection, owned by Parley from start to stop.

The `mcp` SDK's `Client` is an `async with` block whose task group must be entered and left by one task, so each
server gets a supervisor task that holds the block open, and tool calls from any conversation go through the
client it holds. The supervisor connects with a timeout, keeps the tool list (refreshed when the server says it
changed), notices a dropped connection (a stdio child that exited, a lost subscription, a failed call, an
unanswered ping), reconnects with backoff, and on `stop` leaves the block, which is what stops a stdio child:
the SDK closes its stdin, waits, then kills its process group.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from typing import TYPE_CHECKING, Any, TextIO

import anyio

from agent.mcp.spec import McpServerSpec, ServerCounters, ServerState, ServerStatus

if TYPE_CHECKING:
    from mcp import Client
    from mcp.client import IncomingMessage
    from mcp.types import CallToolResult, Tool

log = logging.getLogger("parley.mcp")

# Reconnection: the first attempt after a connection that had been working is immediate (a restarted child is
# usually back within a second); then 1, 2, 4 ... s up to a minute, with jitter so replicas do not stampede a
# remote server. A connection that stayed up this long counts as working again and resets the schedule.
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0
HEALTHY_AFTER_S = 30.0
# A call to a failed server fails at once but brings the next attempt forward, at most this often.
NUDGE_AFTER_S = 2.0
# An idle HTTP connection shows no sign of its server dying until it is used: ping it this often.
PING_EVERY_S = 30.0
# Pages of tools/list read at most: a server whose cursor never ends cannot hold a connection attempt forever.
MAX_TOOL_PAGES = 50
# Leaving the client block stops a stdio child within ~4 s (stdin closed, 2 s, SIGTERM, 2 s, SIGKILL).
STOP_WAIT_S = 10.0
CLIENT_NAME = "parley"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(CLIENT_NAME)
    except PackageNotFoundError:
        return "unknown"


class McpUnavailable(Exception):
    """The server cannot take the call now; the message is safe to show the model (no paths, no reasons)."""


ToolsListener = Callable[["McpConnection", Sequence["Tool"]], None]


def describe_failure(exc: BaseException, spec: McpServerSpec) -> str:
    """One line an operator can act on, from whatever the SDK, the OS or the HTTP client raised."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, TimeoutError):
        return f"no answer within {spec.connect_timeout_s:g} s"
    if isinstance(exc, FileNotFoundError) and spec.cwd and not os.path.isdir(spec.cwd):
        return f"working directory not found: {spec.cwd}"
    if isinstance(exc, FileNotFoundError) and spec.command:
        return f"command not found: {spec.command}"
    if isinstance(exc, PermissionError) and spec.command:
        return f"command not executable: {spec.command}"
    text = " ".join(str(exc).split())[:200]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@functools.cache
def _devnull() -> TextIO:
    """One handle for the life of the process: children started at any time may be given it."""
    return open(os.devnull, "w")


def _child_stderr() -> TextIO:
    """Where a stdio child's stderr goes: ours, when ours is a real file (a test runner's capture is not)."""
    for stream in (sys.stderr, sys.__stderr__):
        try:
            if stream is not None:
                stream.fileno()
                return stream
        except (AttributeError, OSError, ValueError):
            continue
    return _devnull()


class _EndWatchingStream:
    """The transport's read stream, telling the connection when it ends: that is how an exited stdio child
    shows, and the SDK itself only fails the calls that come after it."""

    def __init__(self, inner: Any, on_end: Callable[[str], None]) -> None:
        self._inner = inner
        self._on_end = on_end

    @property
    def last_context(self) -> Any:
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> Any:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self._on_end("the server closed the connection")
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _EndWatchingStream:
        return self

    async def __anext__(self) -> Any:
        try:
            return await self._inner.__anext__()
        except StopAsyncIteration:
            self._on_end("the server closed the connection")
            raise

    async def __aenter__(self) -> _EndWatchingStream:
        await self._inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        result: bool | None = await self._inner.__aexit__(*exc)
        return result


@asynccontextmanager
async def _watched(transport: Any, on_end: Callable[[str], None]) -> AsyncIterator[tuple[Any, Any]]:
    async with transport as (read, write):
        yield _EndWatchingStream(read, on_end), write


class McpConnection:
    """The connection to one server. `start` it, `call` its tools from any task, `stop` it once."""

    def __init__(self, spec: McpServerSpec, on_tools: ToolsListener | None = None) -> None:
        self.spec = spec
        self.counters = ServerCounters()
        self._on_tools = on_tools
        self._tools: tuple[Tool, ...] = ()
        self._client: Client | None = None
        self._state = ServerState.CONNECTING
        self._error = ""
        self._protocol = ""
        self._since = time.time()
        self._retry_at: float | None = None
        self._connected_at = 0.0
        self._last_attempt = 0.0
        self._settled = asyncio.Event()  # set while the state is anything but CONNECTING
        self._lost = asyncio.Event()
        self._lost_reason = ""
        self._reported = ""
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._refresh = asyncio.Event()
        self._scope: anyio.CancelScope | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The server's tools as last listed (all of them: the include and exclude lists apply later)."""
        return self._tools

    @property
    def status(self) -> ServerStatus:
        return ServerStatus(
            name=self.name,
            transport=self.spec.transport,
            state=self._state,
            error=self._error,
            tools=len(self._tools),
            protocol=self._protocol,
            since=self._since,
            retry_at=self._retry_at,
            required=self.spec.required,
        )

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name=f"mcp:{self.name}")

    async def settled(self) -> ServerStatus:
        """Wait until the current attempt to connect has succeeded or failed."""
        await self._settled.wait()
        return self.status

    async def call(self, tool: str, arguments: dict[str, Any]) -> CallToolResult:
        """Call one of the server's tools. Waits for a connection being made; fails at once on a server that
        is down. Raises McpUnavailable when the call cannot be made or the connection drops during it, and the
        SDK's MCPError when the server answers with a protocol error. No timeout here: the runner owns it."""
        from mcp import MCPError
        from mcp.types import CONNECTION_CLOSED

        client = await self._ready_client()
        self.counters.calls += 1
        ok = False
        try:
            result = await client.call_tool(tool, arguments)
            ok = not result.is_error
            return result
        except MCPError as exc:
            if exc.code != CONNECTION_CLOSED:
                raise
            self._lose("the connection closed during a call")
            raise McpUnavailable(
                f"the MCP server {self.name!r} disconnected during the call and is reconnecting; "
                "try again, or answer without it"
            ) from None
        finally:
            if not ok:
                self.counters.call_failures += 1

    async def stop(self) -> None:
        """Leave the client block (a stdio child is stopped there) and end the supervisor; idempotent."""
        self._stopping.set()
        self._wake.set()
        if self._scope is not None:
            self._scope.cancel()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
            if not done:
                log.warning("MCP server %s did not stop within %g s; cancelling it", self.name, STOP_WAIT_S)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            elif not task.cancelled() and task.exception() is not None:
                log.error("the connection to MCP server %s failed", self.name, exc_info=task.exception())
        self._set_state(ServerState.STOPPED, "")

    # The supervisor -------------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            self._last_attempt = time.monotonic()
            self._connected_at = 0.0
            try:
                # The deadline bounds the connection attempt; `_serve_once` lifts it once connected. A scope
                # around the whole block, not `fail_after` around entering it: anyio wants scopes left in the
                # order they were entered, and the client's task group outlives the attempt.
                with anyio.CancelScope(deadline=anyio.current_time() + self.spec.connect_timeout_s) as scope:
                    self._scope = scope
                    await self._serve_once(scope)
                if scope.cancelled_caught and not self._connected_at:
                    reason = f"no answer within {self.spec.connect_timeout_s:g} s"
                else:
                    reason = self._lost_reason or "the connection ended"
            except Exception as exc:
                reason = describe_failure(exc, self.spec)
            finally:
                self._scope = None
            if self._stopping.is_set():
                break
            was_up = self._connected_at > 0
            if was_up:
                self.counters.drops += 1
                if time.monotonic() - self._connected_at >= HEALTHY_AFTER_S:
                    attempt = 0
                log.warning("MCP server %s disconnected (%s); reconnecting", self.name, reason)
            else:
                self.counters.connect_failures += 1
                self._report_failure(reason)
            delay = 0.0 if was_up and attempt == 0 else min(RETRY_MAX_S, RETRY_BASE_S * 2**attempt)
            attempt += 1
            if delay > 0:
                await self._back_off(delay * random.uniform(0.5, 1.0), reason)
            else:
                self._set_state(ServerState.CONNECTING, f"reconnecting after: {reason}")

    def _report_failure(self, reason: str) -> None:
        """The first failure, and each new reason, is one warning naming the server; retries that fail the
        same way are not repeated at that level."""
        if reason != self._reported:
            if self.counters.connects:
                log.warning("MCP server %s is unavailable: %s; retrying", self.name, reason)
            else:
                log.warning(
                    "MCP server %s is unavailable: %s; its tools are left out until it connects", self.name, reason
                )
            self._reported = reason
        else:
            log.debug("MCP server %s is still unavailable: %s", self.name, reason)

    async def _back_off(self, delay: float, reason: str) -> None:
        """Wait before the next attempt. The server stays `failed` through it and the attempts after it, until
        one succeeds: calls meanwhile fail at once rather than wait on a server that keeps failing."""
        self._retry_at = time.time() + delay
        self._set_state(ServerState.FAILED, reason)
        self._wake.clear()
        with suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), delay)
        self._retry_at = None

    async def _serve_once(self, scope: anyio.CancelScope) -> None:
        """Connect, list the tools, then hold the connection until it is lost or Parley stops."""
        from mcp import Client
        from mcp.types import Implementation

        self._lost.clear()
        self._lost_reason = ""
        async with AsyncExitStack() as stack:
            client = Client(
                await self._transport(stack),
                message_handler=self._on_message,
                client_info=Implementation(name=CLIENT_NAME, version=_version()),
                # The tool list is cached here, refreshed on the server's word; the SDK's cache would be a second.
                cache=None,
            )
            await stack.enter_async_context(client)
            tools = await self._list_tools(client)
            scope.deadline = math.inf
            self._connected(client, tools)
            try:
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(self._keep_alive, client)
                    tasks.start_soon(self._refresh_tools, client)
                    if self._can_listen(client):
                        tasks.start_soon(self._listen, client)
                    await self._lost.wait()
                    tasks.cancel_scope.cancel()
            finally:
                self._client = None
                if self._state is ServerState.CONNECTED and not self._stopping.is_set():
                    self._set_state(ServerState.CONNECTING, "reconnecting")

    async def _transport(self, stack: AsyncExitStack) -> Any:
        spec = self.spec
        if spec.command:
            from mcp import StdioServerParameters, stdio_client

            params = StdioServerParameters(command=spec.command, args=list(spec.args), env=dict(spec.env), cwd=spec.cwd)
            return _watched(stdio_client(params, errlog=_child_stderr()), self._lose)
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        assert spec.url is not None
        # The SDK's own defaults (30 s to connect, 300 s to read a held stream), plus the configured headers.
        http = await stack.enter_async_context(
            httpx2.AsyncClient(headers=dict(spec.headers), timeout=httpx2.Timeout(30.0, read=300.0))
        )
        return _watched(streamable_http_client(spec.url, http_client=http), self._lose)

    @staticmethod
    async def _list_tools(client: Client) -> tuple[Tool, ...]:
        tools: list[Tool] = []
        cursor: str | None = None
        for _ in range(MAX_TOOL_PAGES):
            page = await client.list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        return tuple(tools)

    def _connected(self, client: Client, tools: tuple[Tool, ...]) -> None:
        self._client = client
        self._tools = tools
        self._protocol = client.protocol_version
        self._connected_at = time.monotonic()
        self._reported = ""
        self.counters.connects += 1
        self._set_state(ServerState.CONNECTED, "")
        log.info("MCP server %s connected: %d tools (protocol %s)", self.name, len(tools), self._protocol)
        self._tools_changed()

    def _tools_changed(self) -> None:
        if self._on_tools is None:
            return
        try:
            self._on_tools(self, self._tools)
        except Exception:
            log.exception("the tools of MCP server %s could not be registered", self.name)

    def _lose(self, reason: str) -> None:
        """The connection is gone: calls from now on wait for the reconnection the supervisor starts."""
        if not self._lost.is_set():
            self._lost_reason = reason
            self._lost.set()
        if self._state is ServerState.CONNECTED and not self._stopping.is_set():
            self._set_state(ServerState.CONNECTING, f"reconnecting after: {reason}")

    async def _on_message(self, message: IncomingMessage) -> None:
        """Server notifications: a changed tool list is refetched (on 2026 connections the listen stream's
        events arrive here too). Anything else is the server's business."""
        from mcp.types import ToolListChangedNotification

        if isinstance(message, ToolListChangedNotification):
            self._refresh.set()
        elif isinstance(message, Exception):
            log.debug("MCP server %s: transport reported %s", self.name, type(message).__name__)

    async def _refresh_tools(self, client: Client) -> None:
        while True:
            await self._refresh.wait()
            self._refresh.clear()
            try:
                with anyio.fail_after(self.spec.connect_timeout_s):
                    tools = await self._list_tools(client)
            except Exception as exc:
                log.warning("MCP server %s: the changed tool list could not be read: %s", self.name, exc)
                continue
            self._tools = tools
            self.counters.tool_list_refreshes += 1
            log.info("MCP server %s: tool list changed, now %d tools", self.name, len(tools))
            self._tools_changed()

    @staticmethod
    def _can_listen(client: Client) -> bool:
        """2026-era servers send list changes only on a `subscriptions/listen` stream the client opens."""
        from mcp_types.version import MODERN_PROTOCOL_VERSIONS

        tools = client.server_capabilities.tools
        return client.protocol_version in MODERN_PROTOCOL_VERSIONS and bool(tools and tools.list_changed)

    async def _listen(self, client: Client) -> None:
        """Hold the change stream open. Its events reach `_on_message` as well, which refetches; a stream the
        server ends cleanly is opened again (and the list refetched, as events may have been missed), a stream
        that breaks is the connection breaking."""
        from mcp.client.subscriptions import SubscriptionLost

        while True:
            try:
                async with client.listen(tools_list_changed=True) as subscription:
                    async for _ in subscription:
                        pass
            except SubscriptionLost:
                self._lose("the change stream broke")
                return
            except Exception as exc:
                log.info("MCP server %s: no change stream (%s); its tool list is read once", self.name, exc)
                return
            await anyio.sleep(RETRY_BASE_S)
            self._refresh.set()

    async def _keep_alive(self, client: Client) -> None:
        while True:
            await anyio.sleep(PING_EVERY_S)
            try:
                with anyio.fail_after(self.spec.connect_timeout_s):
                    await client.send_ping()
            except Exception as exc:
                self._lose(f"no answer to a ping ({describe_failure(exc, self.spec)})")
                return

    async def _ready_client(self) -> Client:
        if self._state is ServerState.CONNECTING:
            await self._settled.wait()
        if self._state is ServerState.CONNECTED and self._client is not None:
            return self._client
        if self._state is ServerState.FAILED and time.monotonic() - self._last_attempt >= NUDGE_AFTER_S:
            self._wake.set()
        raise McpUnavailable(
            f"the MCP server {self.name!r} is unavailable right now (Parley keeps reconnecting); "
            "answer without its tools"
        )

    def _set_state(self, state: ServerState, error: str) -> None:
        if state is not self._state:
            self._since = time.time()
        self._state = state
        self._error = error
        if state is ServerState.CONNECTING:
            self._settled.clear()
        else:
            self._settled.set()
