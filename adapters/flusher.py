"""The one background task at a time that sends what a streamed reply has pending (Slack appends, Discord edits).

A stream queues what changes and starts its flusher, which paces the platform calls; ending the stream stops the
flusher and waits for it, so a final call never races an append or an edit still under way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any


class Flusher:
    """Runs `flush` in a task named `name` when asked to and it is not running already."""

    def __init__(self, flush: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
        self.flush = flush
        self.name = name
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Flush what is pending, unless the running flush will send it anyway."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.flush(), name=self.name)

    async def stop(self) -> None:
        """Cancel the flush and wait until it is done. Only the flush's own cancellation ends here: the caller's
        (a shutdown) goes on."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])
