"""Discord replies shown while they are produced: one message edited as the answer grows.

Discord has no streaming API; bots edit a message. Until the answer arrives the message is a compact status
line of the tool steps (`✅ calculator · ⏳ web_search(query=...)`), replaced by the answer; an answer longer
than 2,000 characters goes on in further messages. Nothing is posted before there is something to show: a
quick answer without tool steps is one message, as without streaming (the typing indicator is the sign of
progress until then). A slash command's deferred response ("thinking...") is edited the same way.

Edits are paced: at most one per `edit_interval_s` per reply. discord.py waits out a 429 by itself (it reads
`retry_after` and retries); one that still surfaces pushes the next edit back by as long. Posts carry nonces
Discord enforces (`<key>-s<i>`), so a restarted process that posts the same part again gets the first one
back; it edits the message the inbox recorded (`resume`) instead of starting another.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import discord

from adapters.flusher import Flusher
from adapters.text import split_message
from agent.events import AnswerText, ApprovalWaiting, Event, StepFinished, StepStarted
from agent.messages import IncomingMessage, Reply
from agent.ports import DeliveryError, StreamMoved

log = logging.getLogger("parley.discord")

DISCORD_LIMIT = 2000
INTERACTION = "discord-interaction:"
ORIGINAL = "@original"
ICONS = {"running": "\u23f3", "waiting": "\u270b", "ok": "\u2705", "failed": "\u274c"}
BROKEN = "(live updates stopped; the answer follows below)"
# What a call to Discord fails with when Discord cannot be reached (a timeout is an OSError).
UNREACHABLE = (OSError, aiohttp.ClientError)


@dataclass(frozen=True)
class EditLimits:
    """How often one reply's message may change."""

    edit_interval_s: float = 1.0
    # Ending a reply on shutdown or after a failure waits this long for Discord at most (discord.py waits out
    # 429s by itself): a shutdown is not held up by a Discord that does not answer.
    end_timeout_s: float = 5.0


def status_line(steps: dict[int, tuple[str, str]]) -> str:
    """The tool steps so far as one line: each step's state and tool, the running one with its arguments."""
    parts = [f"{ICONS[state]} {shown}" for state, shown in steps.values()]
    line = " \u00b7 ".join(parts)
    while len(line) > DISCORD_LIMIT - 10 and len(parts) > 1:  # the oldest steps give way
        parts = parts[1:]
        line = "\u2026 \u00b7 " + " \u00b7 ".join(parts)
    return line[:DISCORD_LIMIT]


class DiscordStream:
    """One reply's messages: the first posted (or taken over) when there is something to show, edited as the
    status and the answer change, more posted when the answer outgrows 2,000 characters.

    `state`: `live`, `broken` (an edit failed for good: the reply is delivered the usual way), `shown` (the reply's
    text shows; its files are still to post), `ended`."""

    def __init__(
        self,
        owner: DiscordStreams,
        message: IncomingMessage,
        key: str,
        *,
        resume: str = "",
        moved: StreamMoved | None = None,
    ) -> None:
        self.owner = owner
        self.message = message
        self.key = key
        self.moved = moved
        self.state = "live"
        self.interaction = message.reply_url.startswith(INTERACTION)
        # The ids of this reply's messages in order, and what each shows (None: unknown, taken over).
        self.ids: list[str] = [resume] if resume else ([ORIGINAL] if self.interaction else [])
        self.shown: list[str | None] = [None] * len(self.ids)
        self.steps: dict[int, tuple[str, str]] = {}
        self.calls_shown: dict[int, str] = {}  # each step's call as its status shows it: tool and arguments
        self.text = ""
        self._dirty = False
        self._next = 0.0  # no edit before this (monotonic)
        self._flusher = Flusher(self._flush, f"discord-stream:{key}")
        self._lock = asyncio.Lock()

    @property
    def ref(self) -> str:
        return self.ids[0] if self.ids else ""

    def show(self, event: Event) -> None:
        if self.state != "live":
            return
        if isinstance(event, StepStarted):
            self.calls_shown[event.index] = event.call
            self.steps[event.index] = ("running", self.calls_shown[event.index])
        elif isinstance(event, ApprovalWaiting):
            self.steps[event.index] = ("waiting", f"{event.tool} (waiting for approval)")
        elif isinstance(event, StepFinished):
            # The call and how it ended, never what the tool returned: that was for the model only.
            call = self.calls_shown.get(event.index, event.tool)
            ok = event.outcome == "ok"
            self.steps[event.index] = ("ok", call) if ok else ("failed", f"{call} ({event.outcome})")
        elif isinstance(event, AnswerText):
            self.text += event.text
        self._dirty = True
        self._flusher.start()

    def _contents(self, note: str = "") -> list[str]:
        """What the reply's messages show now: the answer split at 2,000 characters, else the status line."""
        if self.text.strip():
            parts = split_message(self.text, DISCORD_LIMIT)
        else:
            parts = [status_line(self.steps)] if self.steps else []
        if note and parts:
            tail = f"{parts[-1]}\n\n*{note}*"
            parts[-1:] = split_message(tail, DISCORD_LIMIT) if len(tail) > DISCORD_LIMIT else [tail]
        return parts

    async def _flush(self) -> None:
        try:
            while self._dirty and self.state == "live":
                wait = self._next - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                async with self._lock:
                    if self.state != "live":
                        return
                    self._dirty = False
                    await self._sync(self._contents(), live=True)
        except Exception as exc:  # a task of its own: what escapes here would only be logged when it is collected
            log.warning("a streamed Discord reply failed (%s); it is delivered the usual way", type(exc).__name__)
            self.state = "broken"

    async def _sync(self, contents: list[str], *, live: bool) -> bool:
        """Make the reply's messages show `contents`: edit those that differ, post the ones missing. False when
        Discord refused for good (the stream is then broken); a 429 that reached here waits its turn (live)."""
        index = 0
        try:
            for index, content in enumerate(contents):
                if index < len(self.ids):
                    if self.shown[index] != content:
                        await self._edit(index, content)
                    self.shown[index] = content
                else:
                    await self._post(index, content)
        except discord.HTTPException as exc:
            if exc.status == 429 and live:
                self._dirty = True
                self._next = time.monotonic() + max(_retry_after(exc), self.owner.limits.edit_interval_s)
                return True
            if isinstance(exc, discord.NotFound) and not live and index == 0:
                # The message a dead process streamed into is gone: the reply is posted the usual way.
                return False
            log.warning("a streamed Discord reply failed (%s); it is delivered the usual way", exc.status)
            self.state = "broken"
            return False
        except UNREACHABLE as exc:
            log.warning("a streamed Discord reply failed (%s); it is delivered the usual way", type(exc).__name__)
            self.state = "broken"
            return False
        finally:
            self._next = max(self._next, time.monotonic() + self.owner.limits.edit_interval_s)
        return True

    async def _edit(self, i: int, content: str) -> None:
        none = discord.AllowedMentions.none()
        if self.interaction:
            webhook = self.owner.webhook(self.message)
            # discord.py types the id as an int; the route takes `@original` as it is.
            await webhook.edit_message(self.ids[i], content=content, allowed_mentions=none)  # type: ignore[call-overload]
            return
        channel = self.owner.client.get_partial_messageable(int(self.message.channel))
        await channel.get_partial_message(int(self.ids[i])).edit(content=content, allowed_mentions=none)

    async def _post(self, i: int, content: str) -> None:
        none = discord.AllowedMentions.none()
        if self.interaction:
            sent: Any = await self.owner.webhook(self.message).send(content, allowed_mentions=none, wait=True)
        else:
            channel = self.owner.client.get_partial_messageable(int(self.message.channel))
            reference = None
            if i == 0 and self.message.message_id:
                reference = discord.MessageReference(
                    message_id=int(self.message.message_id),
                    channel_id=int(self.message.channel),
                    fail_if_not_exists=False,
                )
            nonce = f"{self.key}-s{i}"[-25:]
            sent = await channel.send(content, reference=reference, allowed_mentions=none, nonce=nonce)  # type: ignore[arg-type]
        self.ids.append(str(sent.id))
        self.shown.append(content)
        if i == 0:
            self.owner.typing_done(self.message)
            if self.moved is not None:
                try:
                    await self.moved(self.ids[0])
                except Exception as exc:  # the reply still shows; only a restart would not find it
                    log.warning("the streamed message of %s was not recorded: %s", self.key, type(exc).__name__)

    def _done(self) -> None:
        self.state = "ended"
        self.owner.typing_done(self.message)

    async def finish(self, reply: Reply) -> bool:
        async with self._lock:  # held, the flusher is not in the middle of a call: stopping it loses nothing
            await self._flusher.stop()
            if self.state == "shown":  # the text is there; only its files did not go
                await self._send_files(reply)
                self._done()
                return True
            if self.state != "live" or not self.ids:
                # Broken, ended, or nothing shown yet: the reply is posted whole, as without streaming.
                self._done()
                return False
            self.text = reply.text
            # The last edit keeps the pace too: at most one change per interval, the final one included.
            await asyncio.sleep(max(0.0, self._next - time.monotonic()))
            if not await self._sync(self._contents() or ["(no answer)"], live=False):
                self._done()
                return False
            self.state = "shown"
            if reply.files:
                await self._send_files(reply)
            self._done()
            return True

    async def _send_files(self, reply: Reply) -> None:
        """The reply's files, after its text: a failure is a DeliveryError, and `finish` again sends only them
        (the text shows already; posting it again would show it twice)."""
        try:
            await self._files(reply)
        except discord.HTTPException as exc:
            transient = exc.status >= 500 or exc.status == 429
            raise DeliveryError(f"Discord did not take the reply's files ({exc.status})", transient=transient) from None
        except UNREACHABLE as exc:
            raise DeliveryError(f"Discord could not be reached ({type(exc).__name__})") from None

    async def _files(self, reply: Reply) -> None:
        none = discord.AllowedMentions.none()
        if self.interaction:
            await self.owner.webhook(self.message).send(files=files_of(reply), allowed_mentions=none)
            return
        channel = self.owner.client.get_partial_messageable(int(self.message.channel))
        await channel.send(files=files_of(reply), allowed_mentions=none, nonce=files_nonce(self.key))

    async def abort(self, note: str) -> None:
        try:
            # Within `end_timeout_s`: an edit under way is cut short (the message ends with what it shows).
            async with asyncio.timeout(self.owner.limits.end_timeout_s):
                await self._flusher.stop()
                async with self._lock:
                    if self.state in ("live", "shown") and self.ids:
                        await self._sync(self._contents(note), live=False)
        except Exception as exc:  # never raises: the caller is already unwinding
            log.warning("a streamed Discord reply could not be ended: %s", type(exc).__name__)
        finally:
            self._done()

    async def release(self) -> None:
        await self._flusher.stop()
        self._done()


class DiscordStreams:
    """The streams of one Discord adapter."""

    def __init__(
        self, client: discord.Client, typing_done: Callable[[IncomingMessage], None], limits: EditLimits | None = None
    ) -> None:
        self.client = client
        # Stops the typing indicator of a message: its reply shows now.
        self.typing_done = typing_done
        self.limits = limits or EditLimits()

    def webhook(self, message: IncomingMessage) -> discord.Webhook:
        """The interaction's webhook (its token is valid 15 minutes): the deferred response and follow-ups."""
        app_id, _, token = message.reply_url.removeprefix(INTERACTION).partition(":")
        return discord.Webhook.partial(int(app_id), token, client=self.client)

    def open(
        self, message: IncomingMessage, key: str, *, resume: str = "", moved: StreamMoved | None = None
    ) -> DiscordStream:
        return DiscordStream(self, message, key, resume=resume, moved=moved)


def files_of(reply: Reply) -> list[discord.File]:
    """A reply's files as discord.py uploads them."""
    return [discord.File(io.BytesIO(f.content), filename=f.name) for f in reply.files]


def files_nonce(key: str) -> str:
    """The nonce of a reply's files message: Discord enforces it, so a second try after a lost answer (a crash, a
    timeout) gets the first message back instead of posting the files twice."""
    return f"{key}-files"[-25:]


def _retry_after(exc: discord.HTTPException) -> float:
    """How long Discord asked to wait, when a 429 reached us (discord.py retries most of them itself)."""
    try:
        return float(exc.response.headers.get("Retry-After", 1.0))
    except (AttributeError, TypeError, ValueError):
        return 1.0
