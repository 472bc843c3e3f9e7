"""A person stopping an answer under way: Slack's Stop on a streamed reply, or the `stop` command.

Each agent run a person may stop runs in a task of its own (`Stops.run`), so stopping it cancels the run and
nothing else: not the conversation's task, not the write of an answer that is already being recorded. Whichever
replica hears the request and does not run the answer passes it on to the others (`Replicas.ask_stop`); the one
that runs it stops it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from agent.messages import IncomingMessage
from agent.ports import ChatPlatform, Stoppable
from agent.runtime import Exchange
from agent.storage.models import InboxEntry

log = logging.getLogger("parley.dispatcher")


@dataclass(frozen=True)
class StopRequest:
    """What to stop: the answer streamed at `where` (the platform's own words for the message), or every answer
    of `user` in the channel `channel` (its memory key) under way."""

    platform: str
    where: str = ""
    channel: str = ""
    user: str = ""

    def encoded(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def decoded(cls, text: str) -> StopRequest | None:
        """A request as another replica passed it on; None for anything else (it is logged and ignored)."""
        try:
            fields = json.loads(text)
            request = cls(**fields)
        except (ValueError, TypeError):
            log.warning("ignored a stop request that could not be read")
            return None
        return request if all(isinstance(v, str) for v in asdict(request).values()) else None


@dataclass
class _Run:
    task: asyncio.Task[Exchange | Exception]
    message: IncomingMessage


class Stops:
    """The agent runs under way in this process, by (platform, delivery key), and the ones a person stopped."""

    def __init__(self, platforms: Mapping[str, ChatPlatform]) -> None:
        self.platforms = platforms
        self._runs: dict[tuple[str, str], _Run] = {}
        self._stopped: set[tuple[str, str]] = set()

    async def run(self, entry: InboxEntry, work: Coroutine[Any, Any, Exchange]) -> Exchange | None:
        """Run the agent in a task of its own: its exchange, or None when a person stopped it. A cancellation from
        outside (shutdown, a lost claim) still propagates."""
        key = (entry.message.platform, entry.delivery_key)

        async def kept() -> Exchange | Exception:
            # A failure comes back as a value and is raised here, in the conversation's task, where it is
            # handled and reported (with its error id): an exception escaping a task is reported on its own.
            try:
                return await work
            except Exception as exc:
                return exc

        task = asyncio.create_task(kept(), name=f"answer:{entry.id}")
        self._runs[key] = _Run(task, entry.message)
        try:
            result = await task
            if isinstance(result, Exception):
                raise result
            return result
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if key not in self._stopped or (current is not None and current.cancelling()):
                raise
            return None
        finally:
            self._runs.pop(key, None)
            self._stopped.discard(key)

    def stop(self, request: StopRequest) -> bool:
        """Cancel the runs the request names that are under way here; False when there are none."""
        stopped = False
        for key in self._keys(request):
            run = self._runs.get(key)
            if run is None or run.task.done():
                continue
            self._stopped.add(key)
            run.task.cancel()
            stopped = True
        return stopped

    def heard(self, text: str) -> None:
        """A request a replica passed on (`Replicas.watch_stops`): stopped here if its answer runs here."""
        request = StopRequest.decoded(text)
        if request is not None:
            self.stop(request)

    def _keys(self, request: StopRequest) -> list[tuple[str, str]]:
        if request.where:
            chat = self.platforms.get(request.platform)
            key = chat.stopped(request.where) if isinstance(chat, Stoppable) else None
            return [] if key is None else [(request.platform, key)]
        return [
            key
            for key, run in self._runs.items()
            if key[0] == request.platform
            and run.message.user == request.user
            and run.message.conversation.channel == request.channel
        ]
