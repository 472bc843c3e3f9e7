"""The lifecycle every fake server shares: an aiohttp app on 127.0.0.1, served from its own thread and event
loop, so the code under test (on the test's loop, or in another process) talks to it over real sockets."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Self

from aiohttp import web


class BackgroundServer:
    """Use as a context manager. Subclasses build their app in `_app` and may close their own connections in
    `_before_stop`; `_run` runs a coroutine on the server's loop from the test's thread."""

    thread_name = "fake-server"

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=self.thread_name, daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._run(self._stop())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def _run(self, coro: Any, timeout: float = 10) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _app(self) -> web.Application:
        raise NotImplementedError

    async def _before_stop(self) -> None:
        """Close what the runner does not know about (websockets, pending tasks)."""

    async def _start(self) -> None:
        # Handlers of clients that hung up are cancelled, and shutdown does not wait long for them.
        self._runner = web.AppRunner(self._app(), handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def _stop(self) -> None:
        await self._before_stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
