"""The dispatcher's side of streamed replies (the `Streams` port): one message's stream, opened before it is
answered, shown the agent's events, and ended exactly once.

The inbox keeps the platform reference of the message a stream writes into (`Inbox.streaming`): a process that
picks the message up again (after a crash, or from a replica that lost it) takes that message over, so the person
sees one answer, not a half-streamed one and then a second full one. The reply itself is recorded once, as for
any message; the stream only shows it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from agent.events import Event
from agent.messages import Reply
from agent.ports import ChatPlatform, ReplyStream, Streams
from agent.storage.errors import ClaimLost
from agent.storage.models import InboxEntry

log = logging.getLogger("parley.dispatcher")

# What a person is told when they stopped an answer (the inbox records it as the reply, status `stopped`).
STOPPED = "Stopped at your request."
# The note a stream ends with when its answer is cut short: by a shutdown (the answer is given after the
# restart, into the same message), or by a failure (the apology follows).
INTERRUPTED = "Interrupted; the answer follows when I'm back."
FAILED = "Something went wrong here; see the reply below."


class Streaming:
    """One message's stream as the dispatcher drives it. `progress` is the agent's callback; `deliver` ends the
    stream with the reply (False: deliver it the usual way); leaving `streamed()` ends it with a note if it is
    still open, whatever happened."""

    def __init__(self, platform: ChatPlatform, entry: InboxEntry, record: Callable[[str], Awaitable[None]]) -> None:
        self.platform = platform if isinstance(platform, Streams) else None
        self.entry = entry
        self.record = record
        self.stream: ReplyStream | None = None
        self._opened = False
        self._ended = False

    async def open(self) -> None:
        """Open the stream (once), or take over the one an earlier process left. A platform that fails to open
        it leaves the message to the usual delivery."""
        if self._opened or self.platform is None:
            return
        self._opened = True
        message, key = self.entry.message, self.entry.delivery_key
        try:
            self.stream = await self.platform.open_stream(message, key, resume=self.entry.stream, moved=self._moved)
        except Exception as exc:
            log.warning("no stream for message %d: %s", self.entry.id, type(exc).__name__, exc_info=True)

    async def _moved(self, ref: str) -> None:
        if ref != self.entry.stream:
            await self.record(ref)

    def progress(self, event: Event) -> None:
        """The agent's `Progress`: each event goes to the stream while it is open."""
        if self.stream is not None and not self._ended:
            self.stream.show(event)

    async def deliver(self, reply: Reply) -> bool:
        """End the stream with the reply; False when there is none to end (or it could not carry the reply).

        A stored reply whose message an earlier process streamed into is finished there: the stream is taken
        over just for that."""
        if not self._opened and self.entry.stream:
            await self.open()
        if self.stream is None or self._ended:
            return False
        self._ended = True
        return await self.stream.finish(reply)

    async def end(self, note: str) -> None:
        """End a stream that is still open with what it shows and `note`."""
        if self.stream is not None and not self._ended:
            self._ended = True
            await self.stream.abort(note)


@asynccontextmanager
async def streamed(
    platform: ChatPlatform, entry: InboxEntry, record: Callable[[str], Awaitable[None]]
) -> AsyncIterator[Streaming]:
    """A message's stream for the block: never left open, however the block ends (a cancelled answer leaves a
    note that it follows, a failed one that the apology does)."""
    streaming = Streaming(platform, entry, record)
    try:
        yield streaming
    except BaseException as exc:
        # Cut short (shutdown, or the conversation passed to another replica): the answer follows into the same
        # message. Failed: the apology follows.
        cut_short = not isinstance(exc, Exception) or isinstance(exc, ClaimLost)
        await streaming.end(INTERRUPTED if cut_short else FAILED)
        raise
    else:
        await streaming.end(FAILED)
