"""Slack replies streamed while they are produced: chat.startStream, chat.appendStream, chat.stopStream.

The stream opens in the question's thread before the agent starts (the first sign of progress), each tool step
shows as a task card (`task_update` chunks, updated in place by their id), the answer as markdown text, and the
stream stops with the rest of the answer and the delivery key in its metadata (what `already_delivered` finds).
In a channel a stream is shown to one person: the recipient's user and team ids go with `chat.startStream`.

What Slack does that this handles (slack-sdk 3.47; docs.slack.dev, Slack's changelog of October 2025):
- appends are Tier 4 (100+ a minute), start and stop Tier 2 (20+ a minute), per workspace: events are buffered
  and sent at most once per `append_interval_s` per stream, under one budget for every stream; when starting
  would go over its budget the reply is posted whole, as without streaming;
- a stream expires about five minutes after it starts (appends then fail with `message_not_in_streaming_state`):
  one older than `max_age_s` is ended ("continued below") and the rest streams into a new message;
- `markdown_text` takes 12,000 characters per call, and a stream holds at most `max_chars` here: the rest of a
  longer answer is posted after it as ordinary messages;
- any other failure mid-way ends the stream with what it shows and a note, and the reply is posted the usual way;
  slack-sdk raises its own errors for Slack's answers, but a connection that fails or times out surfaces as
  aiohttp's or asyncio's own (`UNREACHABLE`), after its retry handlers gave up;
- the person's Stop arrives as a `message_stream_stopped` event (channel and the stream's ts): the answer's run is
  cancelled through the dispatcher's `stop`. Slack does not document the event's fields; those read here are
  named in `StreamStopped`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import BaseModel, ConfigDict, ValidationError
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.web.async_client import AsyncWebClient

from adapters.flusher import Flusher
from adapters.text import MIN_LIMIT, safe_markdown, split_message, to_mrkdwn
from agent.events import AnswerText, ApprovalWaiting, Event, StepFinished, StepStarted
from agent.messages import IncomingMessage, Reply
from agent.ports import DeliveryError, Stop, StreamMoved

log = logging.getLogger("parley.slack")

# Slack's answer to an append or stop once a stream no longer streams: it expired, or the person stopped it.
NOT_STREAMING = "message_not_in_streaming_state"
STOP_EVENT = "message_stream_stopped"
CONTINUED = "(continued below)"
WAITING = "waiting for a person's approval"
BROKEN = "(live updates stopped; the answer follows below)"
STATUS_ICON = {"in_progress": "\u23f3", "pending": "\u270b", "complete": "\u2705", "error": "\u274c"}
# What a call to Slack fails with when Slack cannot be reached: slack-sdk's own errors, and the aiohttp and timeout
# errors its retry handlers pass on as they are.
UNREACHABLE = (SlackClientError, aiohttp.ClientError, TimeoutError)
# The end of a piece of answer text that could still become a mention with what follows (`<` before `!here>`,
# `@chan` before `nel`): held back until more text comes, so escaping each piece escapes what the whole needs.
_OPEN_END = re.compile(r"(?:<|(?<!\w)@\w{0,8})$")


@dataclass(frozen=True)
class StreamLimits:
    """How hard the streams of one workspace may use Slack's methods (each method's tier), and their sizes."""

    # Markdown one streamed message holds; the rest of a longer answer is posted after it. Below Slack's 12,000
    # so the same text, with its task cards as lines, fits one markdown block when the message is updated whole.
    max_chars: int = 11_000
    # At most one append per stream this often: events in between are sent together (a step's start and end
    # become one task update). The workspace's budget below still bounds all streams together.
    append_interval_s: float = 0.5
    # chat.appendStream is Tier 4 (100+ a minute), chat.startStream Tier 2 (20+ a minute), per workspace.
    appends_per_minute: int = 100
    starts_per_minute: int = 20
    # Streams expire about five minutes after they start: a new message before then.
    max_age_s: float = 240.0
    # Ending a stream on shutdown or after a failure waits this long for Slack at most (its client retries and
    # times out after 30 s per call): a shutdown is not held up by a Slack that does not answer.
    end_timeout_s: float = 5.0


class StreamStopped(BaseModel):
    """The person's Stop on a streamed message, as read at the edge: where, and the stream's ts."""

    model_config = ConfigDict(extra="ignore")

    channel: str = ""
    channel_id: str = ""
    ts: str = ""
    message_ts: str = ""

    @property
    def where(self) -> tuple[str, str]:
        return self.channel or self.channel_id, self.ts or self.message_ts


class Pacer:
    """A token bucket: at most `per_minute` calls of a method, in bursts of up to ten seconds' worth."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = max(per_minute, 1) / 60.0
        self.capacity = max(1.0, per_minute / 6)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()

    def try_take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    async def take(self) -> None:
        """Wait for a token: as long as the rate says the next one takes."""
        while True:
            if self.try_take():
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


def last_key(key: str, reply: Reply) -> str:
    """The metadata key of a reply's last message, posted whole or streamed: `already_delivered` looks for it."""
    return f"{key}:{len(split_message(to_mrkdwn(reply.text)) or ['']) - 1}"


def metadata(key: str) -> dict[str, Any]:
    return {"event_type": "parley_reply", "event_payload": {"key": key}}


def settled(text: str) -> tuple[str, str]:
    """`text` split into what can be escaped and sent now and the end that must wait for the text after it."""
    match = _OPEN_END.search(text)
    return (text, "") if match is None else (text[: match.start()], text[match.start() :])


def coalesce(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chunks to send in one call: each task card once (its latest state, where it first appeared), markdown
    joined in order."""
    out: list[dict[str, Any]] = []
    cards: dict[str, int] = {}
    for chunk in chunks:
        if chunk["type"] == "task_update":
            if chunk["id"] in cards:
                out[cards[chunk["id"]]] = chunk
            else:
                cards[chunk["id"]] = len(out)
                out.append(chunk)
        elif out and out[-1]["type"] == "markdown_text":
            out[-1] = {"type": "markdown_text", "text": out[-1]["text"] + chunk["text"]}
        else:
            out.append(chunk)
    return out


def card(event: Event, cards: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The task card an event changes (None for answer text), built on the card's earlier state."""
    if isinstance(event, AnswerText):
        return None
    task_id = f"step-{event.index}"
    shown = dict(cards.get(task_id) or {"type": "task_update", "id": task_id, "title": event.tool})
    if isinstance(event, StepStarted):
        # The arguments and the thought are the model's words, as the answer is: they must not ping either.
        shown["title"] = safe_markdown(event.call)
        shown["status"] = "in_progress"
        if event.thought:
            shown["details"] = safe_markdown(event.thought)
    elif isinstance(event, ApprovalWaiting):
        shown["status"] = "pending"
        shown["details"] = WAITING
    elif isinstance(event, StepFinished):
        shown["status"] = "complete" if event.outcome == "ok" else "error"
        if shown.get("details") == WAITING:  # decided: the outcome says how
            del shown["details"]
        # How it ended, never what the tool returned: that was for the model, not for everyone in the channel.
        if event.outcome != "ok":
            shown["output"] = event.outcome
    cards[task_id] = shown
    return shown


def render(cards: list[dict[str, Any]], text: str, note: str = "") -> str:
    """A stream's content as one markdown text, for a message updated whole (its stream expired or stopped)."""
    lines = [f"{STATUS_ICON.get(c.get('status', ''), '')} {c['title']}".strip() for c in cards]
    parts = ["\n".join(lines), text.strip(), f"_{note}_" if note else ""]
    return "\n\n".join(part for part in parts if part) or "(no answer)"


def pieces(text: str, room: int) -> tuple[str, list[str]]:
    """What of `text` fits in the `room` left in a stream, and the rest as mrkdwn messages to post after it."""
    if len(text) <= room:
        return text, []
    parts = split_message(text, room) if room >= MIN_LIMIT else ["", text]
    first, rest = parts[0], parts[1:]
    return first, [chunk for part in rest for chunk in split_message(to_mrkdwn(part))]


class SlackStream:
    """One reply streamed into a message, or several when it rolls over (expiry) or overflows (length).

    `state`: `live` (streaming), `unknown` (taken over from a process that died: tried on first use), `frozen`
    (the message no longer streams: it is updated whole at the end), `broken` (ended with a note: the reply is
    posted the usual way), `posting` (the message shows its part of the reply; parts of a long reply that did not
    fit are still to post), `ended`."""

    def __init__(
        self, owner: SlackStreams, message: IncomingMessage, key: str, ts: str, *, state: str, moved: StreamMoved | None
    ) -> None:
        self.owner = owner
        self.client: AsyncWebClient = owner.client
        self.limits = owner.limits
        self.message = message
        self.key = key
        self.ts = ts
        self.state = state
        self.moved = moved
        self.started = time.monotonic()
        self.cards: dict[str, dict[str, Any]] = {}
        self.text = ""  # markdown streamed so far, over every message of this reply
        self.here = ""  # of it, what the current message holds
        self.held = ""  # answer text not sent yet: it could become a mention with what follows (`settled`)
        # Answer text did not fit the message: none after it is streamed either (the reply posts the rest).
        self.full = False
        self.pending: list[dict[str, Any]] = []
        self.stopped = False  # the person pressed Stop
        # Taken over from a process that died: what the message shows is not known here, so it is replaced whole.
        self.resumed = state == "unknown"
        # The parts of a long reply still to post after the stream, with their metadata keys.
        self._rest: list[tuple[str, str]] = []
        self._last = time.monotonic()
        self._flusher = Flusher(self._flush, f"slack-stream:{key}")
        self._lock = asyncio.Lock()

    @property
    def ref(self) -> str:
        return self.ts

    def show(self, event: Event) -> None:
        if self.state not in ("live", "unknown"):
            return
        chunk = card(event, self.cards)
        if chunk is None and isinstance(event, AnswerText):
            ready, self.held = settled(self.held + event.text)
            if ready:
                chunk = {"type": "markdown_text", "text": safe_markdown(ready)}
        if chunk is None:
            return
        self.pending.append(chunk)
        self._flusher.start()

    async def _flush(self) -> None:
        """Send what is pending, no more often than the interval and the workspace's budget allow."""
        try:
            while self.pending and self.state in ("live", "unknown"):
                wait = self.limits.append_interval_s - (time.monotonic() - self._last)
                if wait > 0:
                    await asyncio.sleep(wait)
                await self.owner.appends.take()
                async with self._lock:
                    if self.state not in ("live", "unknown") or not self.pending:
                        return
                    chunks, self.pending = coalesce(self.pending), []
                    await self._append(chunks)
        except Exception as exc:  # a task of its own: what escapes here would only be logged when it is collected
            await self._break(type(exc).__name__)

    async def _append(self, chunks: list[dict[str, Any]]) -> None:
        if self.state == "live" and time.monotonic() - self.started > self.limits.max_age_s:
            await self._roll_over()
        # Text that would overflow this message waits for `finish`, which posts what does not fit; so does all
        # text after it, or the message would show the answer with a gap.
        room = self.limits.max_chars - len(self.here)
        fitting = []
        for chunk in chunks:
            if chunk["type"] == "markdown_text":
                self.full = self.full or len(chunk["text"]) > room
                if self.full:
                    continue
                room -= len(chunk["text"])
            fitting.append(chunk)
        chunks = fitting
        if self.state not in ("live", "unknown") or not chunks:
            return
        try:
            await self._call(self.client.chat_appendStream(channel=self.message.channel, ts=self.ts, chunks=chunks))
        except SlackApiError as exc:
            error = str(exc.response.get("error", ""))
            if error == NOT_STREAMING and (self.state == "unknown" or self.stopped):
                self.state = "frozen"
            elif error == NOT_STREAMING:
                await self._roll_over(expired=True)
                self.pending = chunks + self.pending
            elif error == "ratelimited":  # the client's own retries were not enough: try again later
                self.pending = chunks + self.pending
                self._last = time.monotonic() + self.limits.append_interval_s
            else:
                await self._break(error)
            return
        except UNREACHABLE as exc:
            await self._break(type(exc).__name__)
            return
        self.state = "live"
        self._shown(chunks)

    def _shown(self, chunks: list[dict[str, Any]]) -> None:
        text = "".join(c["text"] for c in chunks if c["type"] == "markdown_text")
        self.text += text
        self.here += text

    async def _call(self, call: Coroutine[Any, Any, Any]) -> Any:
        self._last = time.monotonic()
        return await call

    async def _end_message(
        self, note: str, *, extra: list[dict[str, Any]] | None = None, update: bool = True, key: str | None = None
    ) -> None:
        """End the current message with what it shows and `note`: stopped if it still streams, else (`update`)
        updated whole. Best effort: a message that cannot be reached keeps what it showed."""
        chunks = [*(extra or []), *([{"type": "markdown_text", "text": f"\n\n_{note}_"}] if note else [])]
        try:
            await self._call(
                self.client.chat_stopStream(
                    channel=self.message.channel,
                    ts=self.ts,
                    chunks=chunks or None,
                    metadata=metadata(key) if key else None,
                )
            )
            return
        except SlackApiError as exc:
            if exc.response.get("error") != NOT_STREAMING:
                log.warning("a Slack stream could not be stopped: %s", exc.response.get("error"))
                return
        except UNREACHABLE as exc:
            log.warning("a Slack stream could not be stopped: %s", type(exc).__name__)
            return
        if update:
            await self._update(render(list(self.cards.values()), self.here, note), key)

    async def _update(self, markdown: str, key: str | None = None) -> bool:
        """Replace the message's content (it no longer streams); False (logged) when Slack did not take it."""
        try:
            await self._call(
                self.client.chat_update(
                    channel=self.message.channel,
                    ts=self.ts,
                    text=to_mrkdwn(markdown)[:3000],
                    blocks=[{"type": "markdown", "text": markdown}],
                    metadata=metadata(key) if key else None,
                )
            )
        except UNREACHABLE as exc:
            log.warning("a streamed Slack message could not be updated: %s", exc)
            return False
        return True

    async def _roll_over(self, *, expired: bool = False) -> None:
        """End this message ("continued below") and go on in a new stream, before or after it expired; with no
        budget left to start one, the stream breaks and the reply is posted the usual way."""
        if expired:
            await self._update(render(list(self.cards.values()), self.here, CONTINUED))
        else:
            await self._end_message(CONTINUED)
        self.owner.forget(self)
        if not self.owner.starts.try_take():
            self.state = "broken"
            return
        try:
            answer = await self._call(self.client.chat_startStream(**self.owner.start_params(self.message)))
        except UNREACHABLE as exc:
            log.warning("a Slack stream could not go on in a new message: %s", exc)
            self.state = "broken"
            return
        self.ts, self.here, self.started, self.state = str(answer["ts"]), "", time.monotonic(), "live"
        self.owner.register(self)
        self.pending = [*self.cards.values(), *self.pending]
        if self.moved is not None:
            try:
                await self.moved(self.ts)
            except Exception as exc:
                log.warning("the new stream of %s was not recorded: %s", self.key, type(exc).__name__)

    async def _break(self, reason: str) -> None:
        log.warning("a Slack stream failed mid-way (%s); the reply is posted the usual way", reason)
        self.state = "broken"
        await self._end_message(BROKEN)

    async def _quiet(self) -> list[dict[str, Any]]:
        """Stop the flusher; the task cards still to send (text still to send is part of what `finish` sends)."""
        await self._flusher.stop()
        cards = [c for c in coalesce(self.pending) if c["type"] == "task_update"]
        self.pending = []
        return cards

    def _done(self) -> None:
        self.state = "ended"
        self.owner.forget(self)

    async def finish(self, reply: Reply) -> bool:
        async with self._lock:  # held, the flusher is not in the middle of a call: stopping it loses nothing
            cards = await self._quiet()
            try:
                carried = await self._finish(reply, cards)
            except DeliveryError:
                # Part of the reply is still to send (its files, or the parts of a long one after the stream): the
                # stream stays as it is, and `finish` again sends only that. Its task cards go with the end.
                self.pending = cards
                raise
            self._done()
            return carried

    async def _finish(self, reply: Reply, cards: list[dict[str, Any]]) -> bool:
        if self.state == "posting":
            return await self._post_rest()
        if self.state not in ("live", "unknown", "frozen"):
            return False  # broken, or ended already (a shutdown): the reply goes the usual way
        final = safe_markdown(reply.text) or "(no answer)"
        continues = final.startswith(self.text) and not self.resumed
        first, rest = pieces(final[len(self.text) :] if continues else final, self.limits.max_chars - len(self.here))
        last = last_key(self.key, reply)
        # Files first (as when posted whole): once the text ends the stream, they are there.
        await self.owner.post_files(self.message, reply)
        key = None if rest else last
        self._rest = [(piece, last if i == len(rest) - 1 else f"{self.key}:more{i}") for i, piece in enumerate(rest)]
        if self.state in ("live", "unknown"):
            tail = [{"type": "markdown_text", "text": first}] if first and continues else []
            # The message shows all of this reply it can hold already: only its end is missing.
            whole = continues and not first
            try:
                await self._call(
                    self.client.chat_stopStream(
                        channel=self.message.channel,
                        ts=self.ts,
                        chunks=[*cards, *tail] or None,
                        metadata=metadata(key) if key and continues else None,
                    )
                )
            except SlackApiError as exc:
                error = str(exc.response.get("error", ""))
                if error != NOT_STREAMING:
                    return await self._not_stopped(error, whole=whole, cards=cards, key=key)
                self.state = "frozen"
            except UNREACHABLE as exc:
                return await self._not_stopped(type(exc).__name__, whole=whole, cards=cards, key=key)
            else:
                self.here += first if continues else ""
                self.state = "posting" if continues else "frozen"
        if self.state == "frozen":
            # The message no longer streams (it expired, was stopped, or a dead process left it): updated whole.
            shown = self.here + first if continues else first
            if not await self._update(render(list(self.cards.values()), shown), key):
                self.state = "broken"  # it keeps what it showed; the reply is posted the usual way
                return False
        return await self._post_rest()

    async def _not_stopped(self, reason: str, *, whole: bool, cards: list[dict[str, Any]], key: str | None) -> bool:
        """chat.stopStream failed with the reply in hand. A message that shows all of the reply it can hold
        counts as delivered (posting the reply again would show it twice): it is ended once more without a note,
        best effort. Otherwise it is ended with a note and the reply is posted the usual way."""
        log.warning("a Slack stream could not be stopped with its reply: %s", reason)
        if whole:
            await self._end_message("", extra=cards, key=key)
            return await self._post_rest()
        await self._break(reason)
        return False

    async def _post_rest(self) -> bool:
        """Post the parts of a long reply that the stream did not hold, each once: a failure leaves those not
        posted for the next `finish` (a transient DeliveryError), never the whole reply for the usual way."""
        self.state = "posting"
        while self._rest:
            piece, key = self._rest[0]
            try:
                await self._call(
                    self.client.chat_postMessage(
                        channel=self.message.channel, thread_ts=self.message.thread, text=piece, metadata=metadata(key)
                    )
                )
            except SlackApiError as exc:
                error = exc.response.get("error")
                raise DeliveryError(f"Slack refused the rest of a streamed reply: {error}") from None
            except UNREACHABLE as exc:
                raise DeliveryError(f"Slack could not be reached: {type(exc).__name__}") from None
            del self._rest[0]
        return True

    async def abort(self, note: str) -> None:
        try:
            # Within `end_timeout_s`: an append under way is cut short (the message ends with what it shows).
            async with asyncio.timeout(self.limits.end_timeout_s):
                await self._flusher.stop()
                async with self._lock:
                    cards = await self._quiet()
                    if self.state == "live":
                        # Stopped with the note, never updated whole: what this process shows may be older than
                        # what the message shows now.
                        await self._end_message(note, extra=cards, update=False)
                    elif self.state == "unknown":  # a dead process's message: left for whoever answers it next
                        with contextlib.suppress(SlackApiError):
                            await self._call(self.client.chat_stopStream(channel=self.message.channel, ts=self.ts))
        except Exception as exc:  # never raises: the caller is already unwinding
            log.warning("a Slack stream could not be ended: %s", type(exc).__name__)
        finally:
            self.pending = []
            self._done()

    async def release(self) -> None:
        await self._flusher.stop()
        self.pending = []
        self._done()


class SlackStreams:
    """The streams of one Slack adapter: opened per reply, found again by the person's Stop, ended at shutdown."""

    def __init__(
        self,
        client: AsyncWebClient,
        post_files: Callable[[IncomingMessage, Reply], Awaitable[None]],
        limits: StreamLimits | None = None,
    ) -> None:
        self.client = client
        # Posts a reply's files into its thread (raising DeliveryError), before the stream ends with its text.
        self.post_files = post_files
        self.limits = limits or StreamLimits()
        # Told where a person stopped a stream (the dispatcher's `stop_answer`): whichever replica writes it stops.
        self.stop: Stop | None = None
        self._open: dict[tuple[str, str], SlackStream] = {}

    @property
    def limits(self) -> StreamLimits:
        return self._limits

    @limits.setter
    def limits(self, limits: StreamLimits) -> None:
        """New limits, with budgets that start full."""
        self._limits = limits
        self.appends = Pacer(limits.appends_per_minute)
        self.starts = Pacer(limits.starts_per_minute)

    def start_params(self, message: IncomingMessage) -> dict[str, Any]:
        """chat.startStream's arguments: in the question's thread; in a channel, shown to the person who asked."""
        params: dict[str, Any] = {
            "channel": message.channel,
            "thread_ts": message.thread,
            "task_display_mode": "timeline",
        }
        if not message.is_dm:
            params.update(recipient_user_id=message.user, recipient_team_id=message.workspace)
        return params

    async def open(
        self, message: IncomingMessage, key: str, *, resume: str = "", moved: StreamMoved | None = None
    ) -> SlackStream | None:
        """A stream for the reply to `message`, or None: no thread to stream in (a top-level DM), a reply that
        goes to a slash command's response URL, over the start budget, or Slack refused."""
        if not message.thread or message.reply_url:
            return None
        if resume:
            stream = SlackStream(self, message, key, resume, state="unknown", moved=moved)
            self.register(stream)
            return stream
        if not self.starts.try_take():
            log.info("over the budget for chat.startStream: the reply to %s is posted whole", message.message_id)
            return None
        try:
            answer = await self.client.chat_startStream(**self.start_params(message))
        except SlackApiError as exc:
            log.info("Slack refused to stream a reply (%s): it is posted whole", exc.response.get("error"))
            return None
        except UNREACHABLE as exc:
            log.info("no stream for a reply (%s): it is posted whole", type(exc).__name__)
            return None
        stream = SlackStream(self, message, key, str(answer["ts"]), state="live", moved=moved)
        self.register(stream)
        if moved is not None:
            try:
                await moved(stream.ts)
            except Exception as exc:  # the answer still streams; only a restart would not find the message
                log.warning("the stream of %s was not recorded: %s", key, type(exc).__name__)
        return stream

    def register(self, stream: SlackStream) -> None:
        self._open[(stream.message.channel, stream.ts)] = stream

    def forget(self, stream: SlackStream) -> None:
        if self._open.get((stream.message.channel, stream.ts)) is stream:
            del self._open[(stream.message.channel, stream.ts)]

    async def on_stopped(self, event: dict[str, Any]) -> None:
        """Bolt's listener for the person's Stop: handed on as "CHANNEL TS", the stream's place; the replica that
        writes the stream (this one or another) marks it stopped (`stopped`) and cancels its answer."""
        try:
            where = StreamStopped.model_validate(event).where
        except ValidationError:
            log.info("dropped a %s event of an unexpected shape", STOP_EVENT)
            return
        if self.stop is not None:
            await self.stop("slack", " ".join(where))

    def stopped(self, where: str) -> str | None:
        """`where` is "CHANNEL TS": the stream, if this process writes it, is marked stopped (Slack ended it, so
        it is updated, never appended to, from now on); returns its reply's key."""
        channel, _, ts = where.partition(" ")
        stream = self._open.get((channel, ts))
        if stream is None:
            return None
        stream.stopped = True
        return stream.key

    async def close(self) -> None:
        """End every stream still open ("interrupted"): a restart answers their messages into them. The service
        closes the adapter after the dispatcher stopped, so only streams left over from a cancelled answer remain;
        each end waits `end_timeout_s` at most."""
        streams = list(self._open.values())
        await asyncio.gather(*(s.abort("Interrupted; the answer follows when I'm back.") for s in streams))
