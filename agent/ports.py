"""The port every chat platform implements: how the dispatcher hands a reply back to where the message came from.

Adapters implement it; nothing in `agent/` or `bot/` knows which platform it talks to. The same port shows
approval prompts; optional protocols add channel posts, connection state and thread context.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agent.approvals import ApprovalRequest, Decision, PromptLocation, Verdict
from agent.attachments.models import Attachment
from agent.commands import Commands
from agent.events import Event
from agent.messages import IncomingMessage, Reply

# Hands a message to the dispatcher; returns once it is stored (False for a redelivery). The adapter
# acknowledges the platform after this, and not at all if it raises.
Submit = Callable[[IncomingMessage], Awaitable[bool]]


# Hands a person's approval decision back to the dispatcher, unchanged from the click; the verdict says whether it
# settled the request, or why not.
Decide = Callable[[Decision], Awaitable[Verdict]]


# Stops the answer a person asked to stop (Slack's Stop button on a streamed reply): the platform, and where the
# stream shows, in the platform's own words (what its `Stoppable.stopped` reads). Whichever replica writes that
# stream stops its answer. True when the answer was under way in this process.
Stop = Callable[[str, str], Awaitable[bool]]


@dataclass(frozen=True)
class Handlers:
    """What an adapter hands its platform's events to: messages, approval decisions, chat commands, stops."""

    submit: Submit
    decide: Decide
    commands: Commands | None = None
    stop: Stop | None = None


class NotAccepting(Exception):
    """The dispatcher is not taking messages (starting or shutting down): the adapter must not acknowledge the
    platform, which then redelivers the message (Slack retries, a gateway replays)."""


class PlatformUnavailable(Exception):
    """A chat platform cannot be used with these settings (a refused token, a refused intent): one line, why."""


class DeliveryError(Exception):
    """The platform did not take the reply. `transient` failures (a 5xx, a 429, a dropped connection) are
    retried with backoff, waiting at least `retry_after` seconds when the platform said so."""

    def __init__(self, reason: str, *, transient: bool = True, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.transient = transient
        self.retry_after = retry_after


@runtime_checkable
class Poster(Protocol):
    """A platform that can post to a channel on its own, not as a reply: scheduled reports and summaries.
    `channel` is the channel's memory key (`slack:T/C`, `discord:G/C`) or the platform's own channel id."""

    async def post(self, channel: str, text: str) -> None: ...


@runtime_checkable
class ReportsConnection(Protocol):
    """A platform with a live connection to watch (a websocket, a login): readiness reports it."""

    async def is_connected(self) -> bool: ...


@runtime_checkable
class SharesGateway(Protocol):
    """A platform whose event connection one replica holds for all the replicas, or splits with them by shard
    (Discord's gateway): readiness says which part this replica holds, e.g. `{"gateway": "follower", "leader":
    "host-b:7"}`."""

    def gateway_status(self) -> dict[str, object]: ...


@runtime_checkable
class ChecksDelivery(Protocol):
    """A platform that can tell whether a reply was posted already: a process that died (or lost its claim)
    between posting a reply and recording it leaves a stored reply the next one would post twice. Optional:
    the dispatcher asks only platforms that have it, and only before delivering a stored reply again."""

    async def already_delivered(self, message: IncomingMessage, reply: Reply, key: str) -> bool:
        """True when the reply posted under `key` is there in full; False when not, or when unsure."""
        ...


@runtime_checkable
class ProvidesContext(Protocol):
    """A platform that can tell the agent what was said around a message that Parley did not see (the earlier
    messages of a thread, by other people). Optional: the dispatcher asks only platforms that have it."""

    async def thread_context(self, message: IncomingMessage) -> str:
        """Text to put before the conversation's memory, or "" (also when it cannot be fetched)."""
        ...


@runtime_checkable
class SharesFiles(Protocol):
    """A platform whose messages carry files. Its adapter builds each `Attachment` as a description; here it
    binds each to a fetcher that uses the platform's auth and downloads only from the platform's own file hosts.

    The dispatcher asks before a message is answered, also for a message an earlier process stored: fetchers
    are never stored, so this is where they come from. `deliver` posts the reply's files (`Reply.files`)."""

    async def attachments(self, message: IncomingMessage) -> tuple[Attachment, ...]:
        """The message's own files, then those of earlier messages around it (a thread's, the message it
        replies to), newest first, each bound. Raises only for what no file of the message can survive."""
        ...


# Told the platform reference of the message a stream now writes into (its first, or the next one after a
# rollover), so a restarted process finishes that message instead of posting a second answer.
StreamMoved = Callable[[str], Awaitable[None]]


class ReplyStream(Protocol):
    """One answer shown while it is produced (a Slack stream, an edited Discord message). The dispatcher opens it
    before answering, shows the agent's events, and ends it exactly once: `finish` or `abort`."""

    @property
    def ref(self) -> str:
        """The platform's reference of the message written into now ("" before there is one)."""
        ...

    def show(self, event: Event) -> None:
        """Queue an event to show (a tool step, an approval wait, answer text); returns at once, never raises.
        A stream that broke meanwhile ignores it."""
        ...

    async def finish(self, reply: Reply) -> bool:
        """End the stream with the whole reply (split over further messages when longer than one allows), and
        the reply's files. False when the stream could not carry it (it broke, and was ended with what it had and
        a note; or it was ended already): the caller then delivers the reply the usual way. DeliveryError when
        part of the reply is shown and the rest (files, the overflow) did not go: calling `finish` again with the
        same reply sends only what is missing, never the shown text twice."""
        ...

    async def abort(self, note: str) -> None:
        """End the stream with what it shows and a short note (shutdown, a failure): never raises, and gives up
        on the platform after a few seconds."""
        ...

    async def release(self) -> None:
        """Stop writing, without a platform call: another process answers the message now and writes into it."""
        ...


@runtime_checkable
class Stoppable(Protocol):
    """A platform whose people can stop an answer while it streams."""

    def stopped(self, where: str) -> str | None:
        """A person stopped the stream shown at `where`: when this process writes it, it is marked stopped and
        the reply's delivery key is returned (its answer is then cancelled); None otherwise."""
        ...


@runtime_checkable
class Streams(Protocol):
    """A platform that shows answers as they are produced. Optional: the dispatcher asks only platforms that have
    it; any other delivers each reply whole."""

    async def open_stream(
        self, message: IncomingMessage, key: str, *, resume: str = "", moved: StreamMoved | None = None
    ) -> ReplyStream | None:
        """Start showing the answer to `message` (the first visible sign, as soon as it can), or take over the
        message `resume` that an earlier process streamed into. `key` is the reply's delivery key; `moved` is
        told each message the stream writes into. None when this message is not streamed (streaming off, a
        reply that goes elsewhere, the platform refused): the reply is then delivered the usual way."""
        ...


class ChatPlatform(Protocol):
    """One chat platform as the dispatcher sees it."""

    @property
    def name(self) -> str:
        """The `platform` of the messages it produces (`console`, `slack`, `discord`)."""
        ...

    @property
    def resumable(self) -> bool:
        """Whether a reply can still reach a message received by an earlier process (false for a terminal)."""
        ...

    async def deliver(self, message: IncomingMessage, reply: Reply, key: str) -> None:
        """Post `reply` to `message`'s conversation, or raise DeliveryError.

        `key` is the same for every attempt to deliver this reply, also across restarts: a platform that
        supports idempotent posts (Discord's enforced nonce, for instance) must use it, so a reply whose
        delivery was interrupted by a crash is not shown twice.
        """
        ...

    async def request_approval(self, request: ApprovalRequest) -> PromptLocation | None:
        """Show an approval request in its conversation (tool, every argument, who asked, expiry) with a way to
        approve or deny; return once shown, with where (stored with the request), or None when the prompt lives
        only in this process (a terminal's). The decision comes back through the dispatcher's `decide`."""
        ...

    async def approval_settled(self, request: ApprovalRequest) -> None:
        """The request was decided or expired: update its prompt to show the outcome and no buttons. The prompt
        is at `request.prompt`, which an earlier process may have posted (None: this process's own prompt)."""
        ...
