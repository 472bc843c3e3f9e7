"""LISTEN on a dedicated connection: how a replica hears what another replica did (an approval decided).

A notice can be missed while the connection is down, so after every (re)connection the listener is told ""
(a gap): whoever waits re-reads what it waits for. The connection is opened from the URL, never from the pool
and never through a transaction-pooling proxy, which would drop LISTEN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]

log = logging.getLogger("parley.storage")

# How often the listener checks its connection is alive, and waits before connecting again.
CHECK_S = 1.0
RETRY_S = 1.0


@asynccontextmanager
async def listening(url: str, location: str, channel: str, notice: Callable[[str], None]) -> AsyncIterator[None]:
    """Call `notice(payload)` for every NOTIFY on `channel` while the block runs (and `notice("")` after each
    (re)connection)."""
    task = asyncio.create_task(_listen(url, location, channel, notice), name=f"listen:{channel}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _listen(url: str, location: str, channel: str, notice: Callable[[str], None]) -> None:
    def received(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
        notice(payload)

    while True:
        try:
            conn = await asyncpg.connect(url, timeout=5)
            try:
                await conn.add_listener(channel, received)
                notice("")
                while True:
                    await asyncio.sleep(CHECK_S)
                    await conn.execute("SELECT 1")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(conn.close(), 2)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("listening for %s on %s failed (%s); connecting again", channel, location, type(exc).__name__)
            await asyncio.sleep(RETRY_S)
