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

from agent.events import AnswerText, Event
from agent.messages import Reply
from agent.ports import ChatPlatform, ReplyStream, Streams
from agent.storage.errors import ClaimLost
from agent.storage.models import InboxEntry

log = logging.getLogger("parley.dispatcher")

# What a person is told when they stopped an answer (the inbox records it as the reply, status `stopped`).
STOPPED = "Stopped at your request."
# The notes a stream ends with when its answer is cut short. A shutdown: the answer is given after the restart,
# into the same message. A failure: the apology follows. A reply that could not be delivered: nothing follows,
# so the note says so, with the error id the logs carry.
INTERRUPTED = "Interrupted; the answer follows when I'm back."
FAILED = "Something went wrong here; see the reply below."
UNDELIVERED = "Something went wrong: the answer could not be delivered (error id {error_id})."
UNFINISHED = "This answer stopped here."


class Streaming:
    """One message's stream as the dispatcher drives it, over every attempt at the message. `progress` is the
    agent's callback; `deliver` ends the stream with the reply (False: deliver it the usual way); leaving
    `streamed()` ends it with a note if it is still open, whatever happened."""

    def __init__(self, platform: ChatPlatform, entry: InboxEntry, record: Callable[[str], Awaitable[None]]) -> None:
        self.platform = platform if isinstance(platform, Streams) else None
        self.entry = entry
        self.record = record
        self.stream: ReplyStream | None = None
        self._opened = False
        self._ended = False
        # What the stream's `finish` said, once it said it: a later attempt at delivering gets the same answer.
        self._carried: bool | None = None
        # Answer text went to the stream; on a later attempt the agent's text is not streamed again (the reply
        # ends the stream with it, once).
        self._text_shown = False
        self._mute_text = False

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

    def again(self) -> None:
        """The message is handled again in this process (the database failed): the stream goes on in the same
        message, without the answer text an earlier attempt streamed."""
        self._mute_text = self._text_shown

    def progress(self, event: Event) -> None:
        """The agent's `Progress`: each event goes to the stream while it is open."""
        if self.stream is None or self._ended:
            return
        if isinstance(event, AnswerText):
            if self._mute_text:
                return
            self._text_shown = True
        self.stream.show(event)

    async def deliver(self, reply: Reply) -> bool:
        """End the stream with the reply; False when there is none to end (or it could not carry the reply).
        DeliveryError when part of it shows and the rest did not go: calling again sends only the rest.

        A stored reply whose message an earlier process streamed into is finished there: the stream is taken
        over just for that."""
        if self._carried is not None:
            return self._carried
        if not self._opened and self.entry.stream:
            await self.open()
        if self.stream is None or self._ended:
            return False
        carried = await self.stream.finish(reply)
        self._carried, self._ended = carried, True
        return carried

    async def end(self, note: str) -> None:
        """End a stream that is still open with what it shows and `note`."""
        if self.stream is not None and not self._ended:
            self._ended = True
            await self.stream.abort(note)

    async def release(self) -> None:
        """Let the stream go without touching its message: another replica answers the message now, into it."""
        if self.stream is not None and not self._ended:
            self._ended = True
            await self.stream.release()


@asynccontextmanager
async def streamed(
    platform: ChatPlatform,
    entry: InboxEntry,
    record: Callable[[str], Awaitable[None]],
    *,
    lost: Callable[[], bool] = lambda: False,
) -> AsyncIterator[Streaming]:
    """A message's stream for the block: never left open by this process, however the block ends. `lost` says
    whether the conversation passed to another replica (its task is then cancelled)."""
    streaming = Streaming(platform, entry, record)
    try:
        yield streaming
    except BaseException as exc:
        if isinstance(exc, ClaimLost) or lost():
            # The new holder answers into the same message: what this replica would write (a note, its older
            # text) could overwrite what the new holder shows.
            await streaming.release()
        else:
            # Cancelled (a shutdown): the answer follows after the restart, into the same message. Failed: the
            # apology follows.
            await streaming.end(INTERRUPTED if not isinstance(exc, Exception) else FAILED)
        raise
    else:
        await streaming.end(UNFINISHED)
