"""A small programmable HTTP server on 127.0.0.1 for tests of anything that makes HTTP requests.

It runs in the test's own event loop (`async with FakeHTTPServer() as server:`), records every request it
receives, and answers each path with the responses registered for it, in order; the last one repeats. So
`server.on("/x", status(503), json_body({...}))` answers 503 once, then the JSON for every later request.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

Responder = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


def json_body(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Responder:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(text=json.dumps(payload), status=status, content_type="application/json", headers=headers)

    return respond


def text(body: str, content_type: str = "text/plain", status: int = 200, charset: str = "utf-8") -> Responder:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body, status=status, content_type=content_type, charset=charset)

    return respond


def raw(body: bytes, content_type: str = "application/octet-stream", status: int = 200) -> Responder:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, status=status, content_type=content_type)

    return respond


def status(code: int, body: str = "", headers: dict[str, str] | None = None) -> Responder:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(text=body or f"status {code}", status=code, headers=headers)

    return respond


def redirect(location: str, code: int = 302) -> Responder:
    async def respond(request: web.Request) -> web.StreamResponse:
        return web.Response(status=code, headers={"Location": location})

    return respond


def slow(delay_s: float, then: Responder | None = None) -> Responder:
    """Wait `delay_s` before answering (with `then`, or a short text)."""

    async def respond(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(delay_s)
        return await (then or text("finally"))(request)

    return respond


def huge(size: int, content_type: str = "text/plain", chunk: int = 65_536, fill: bytes = b"x") -> Responder:
    """A streamed body of `size` bytes; stops quietly when the client hangs up early."""

    async def respond(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        sent = 0
        try:
            while sent < size:
                part = fill * min(chunk, size - sent)
                await response.write(part[: size - sent])
                sent += len(part)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass
        return response

    return respond


@dataclass
class FakeHTTPServer:
    """Serve registered responders on 127.0.0.1 on a free port; unknown paths answer 404."""

    host: str = "127.0.0.1"
    requests: list[Received] = field(default_factory=list)
    _routes: dict[str, list[Responder]] = field(default_factory=dict)
    _runner: web.AppRunner | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def netloc(self) -> str:
        """`host:port`, the form an allowlist entry takes."""
        return f"{self.host}:{self.port}"

    def on(self, path: str, *responders: Responder) -> None:
        """Answer `path` with `responders` in turn; the last one keeps answering."""
        if not responders:
            raise ValueError("give at least one responder")
        self._routes[path] = list(responders)

    def hits(self, path: str | None = None) -> int:
        return sum(1 for r in self.requests if path is None or r.path == path)

    async def start(self) -> FakeHTTPServer:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # Handlers of clients that hung up are cancelled, and shutdown does not wait for slow ones.
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeHTTPServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            Received(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=dict(request.headers),
                body=await request.read(),
            )
        )
        responders = self._routes.get(request.path)
        if not responders:
            return web.Response(status=404, text="not found")
        responder = responders.pop(0) if len(responders) > 1 else responders[0]
        return await responder(request)
