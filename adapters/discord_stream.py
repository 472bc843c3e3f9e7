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
import contextlib
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import discord

from adapters.text import split_message
from agent.events import AnswerText, ApprovalWaiting, Event, StepFinished, StepStarted
from agent.messages import IncomingMessage, Reply
from agent.ports import StreamMoved

log = logging.getLogger("parley.discord")

DISCORD_LIMIT = 2000
INTERACTION = "discord-interaction:"
ORIGINAL = "@original"
ICONS = {"running": "\u23f3", "waiting": "\u270b", "ok": "\u2705", "failed": "\u274c"}
BROKEN = "(live updates stopped; the answer follows below)"


@dataclass(frozen=True)
class EditLimits:
    """How often one reply's message may change."""

    edit_interval_s: float = 1.0


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

    `state`: `live`, `broken` (an edit failed for good: the reply is delivered the usual way), `ended`."""

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
        self.text = ""
        self.calls = 0
        self._dirty = False
        self._next = 0.0  # no edit before this (monotonic)
        self._flusher: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def ref(self) -> str:
        return self.ids[0] if self.ids else ""

    def show(self, event: Event) -> None:
        if self.state != "live":
            return
        if isinstance(event, StepStarted):
            shown = f"{event.tool}({event.arguments})" if event.arguments else event.tool
            self.steps[event.index] = ("running", shown)
        elif isinstance(event, ApprovalWaiting):
            self.steps[event.index] = ("waiting", f"{event.tool} (waiting for approval)")
        elif isinstance(event, StepFinished):
            self.steps[event.index] = ("ok" if event.outcome == "ok" else "failed", event.tool)
        elif isinstance(event, AnswerText):
            self.text += event.text
        self._dirty = True
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=f"discord-stream:{self.key}")

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
        while self._dirty and self.state == "live":
            wait = self._next - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            async with self._lock:
                if self.state != "live":
                    return
                self._dirty = False
                await self._sync(self._contents(), live=True)

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
        except OSError as exc:
            log.warning("a streamed Discord reply failed (%s); it is delivered the usual way", type(exc).__name__)
            self.state = "broken"
            return False
        finally:
            self._next = max(self._next, time.monotonic() + self.owner.limits.edit_interval_s)
        return True

    async def _edit(self, i: int, content: str) -> None:
        self.calls += 1
        none = discord.AllowedMentions.none()
        if self.interaction:
            webhook = self.owner.webhook(self.message)
            # discord.py types the id as an int; the route takes `@original` as it is.
            await webhook.edit_message(self.ids[i], content=content, allowed_mentions=none)  # type: ignore[call-overload]
            return
        channel = self.owner.client.get_partial_messageable(int(self.message.channel))
        await channel.get_partial_message(int(self.ids[i])).edit(content=content, allowed_mentions=none)

    async def _post(self, i: int, content: str) -> None:
        self.calls += 1
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

    async def _quiet(self) -> None:
        if self._flusher is not None and not self._flusher.done():
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    async def finish(self, reply: Reply) -> bool:
        async with self._lock:  # held, the flusher is not in the middle of a call: stopping it loses nothing
            await self._quiet()
            try:
                if self.state != "live":
                    return False
                if not self.ids:
                    return False  # nothing was shown yet: the reply is posted whole, as without streaming
                self.text = reply.text
                # The last edit keeps the pace too: at most one change per interval, the final one included.
                await asyncio.sleep(max(0.0, self._next - time.monotonic()))
                if not await self._sync(self._contents() or ["(no answer)"], live=False):
                    return False
                if reply.files:
                    await self._files(reply)
                return True
            except (discord.HTTPException, OSError) as exc:
                log.warning("the files of a streamed Discord reply were not posted: %s", exc)
                return False
            finally:
                self.state = "ended"
                self.owner.typing_done(self.message)

    async def _files(self, reply: Reply) -> None:
        files = [discord.File(io.BytesIO(f.content), filename=f.name) for f in reply.files]
        none = discord.AllowedMentions.none()
        self.calls += 1
        if self.interaction:
            await self.owner.webhook(self.message).send(files=files, allowed_mentions=none)
            return
        channel = self.owner.client.get_partial_messageable(int(self.message.channel))
        await channel.send(files=files, allowed_mentions=none, nonce=f"{self.key}-files"[-25:])

    async def abort(self, note: str) -> None:
        async with self._lock:
            await self._quiet()
            try:
                if self.state == "live" and self.ids:
                    await self._sync(self._contents(note), live=False)
            except Exception as exc:  # never raises: the caller is already unwinding
                log.warning("a streamed Discord reply could not be ended: %s", type(exc).__name__)
            finally:
                self.state = "ended"
                self.owner.typing_done(self.message)


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


def _retry_after(exc: discord.HTTPException) -> float:
    """How long Discord asked to wait, when a 429 reached us (discord.py retries most of them itself)."""
    try:
        return float(exc.response.headers.get("Retry-After", 1.0))
    except (AttributeError, TypeError, ValueError):
        return 1.0
