"""The dispatcher: every incoming message goes through it, from every adapter.

It stores the message in the inbox before the adapter acknowledges the platform (a redelivery is dropped),
answers the messages of one conversation one at a time in arrival order while different conversations run
side by side under one global limit, applies the per-user rate limit, delivers the reply through the
message's platform with retries, and on start re-answers or re-delivers whatever an earlier process left.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from types import TracebackType

import limits
import stamina
from limits.aio.storage import MemoryStorage
from limits.aio.strategies import MovingWindowRateLimiter
from structlog.contextvars import bound_contextvars

from agent.approvals import ApprovalBroker, Verdict
from agent.messages import APOLOGY, IncomingMessage, Reply, new_error_id
from agent.parking import Lease, held
from agent.ports import ChatPlatform, DeliveryError, NotAccepting, ProvidesContext
from agent.storage.base import Storage
from agent.storage.errors import TransientStoreError
from agent.storage.models import InboxEntry, conversation_key
from bot.answering import Responder, answer
from bot.metrics import INBOX_DEPTH, observe_delivery
from bot.observe import run_context

log = logging.getLogger("parley.dispatcher")

GAVE_UP = (
    "Sorry, I couldn't answer this message after {attempts} attempts (error id {error_id}). "
    "Please try asking differently."
)


class DispatcherClosed(NotAccepting):
    """The dispatcher is not taking messages (not started, or shutting down): do not acknowledge the platform."""


@dataclass(frozen=True)
class DispatchOptions:
    concurrency: int = 8
    # e.g. "10/minute" (the `limits` notation); None turns the per-user limit off.
    rate_limit: str | None = "10/minute"
    grace_s: float = 10.0
    # A message whose answering was cut short this many times (a crash each time) is given up with an apology.
    max_attempts: int = 3
    delivery_attempts: int = 5
    delivery_timeout_s: float = 60.0


def _retry_delivery(exc: Exception) -> bool | float:
    """stamina's hook: retry transient delivery failures, at least as late as the platform asked."""
    if isinstance(exc, DeliveryError) and exc.transient:
        return exc.retry_after if exc.retry_after is not None else True
    return False


class RateLimit:
    """Per-user quota over a moving window, counted per platform and user."""

    def __init__(self, rule: str) -> None:
        self.item = limits.parse(rule)
        self.limiter = MovingWindowRateLimiter(MemoryStorage())

    @property
    def description(self) -> str:
        per = str(self.item).split(" per ", 1)[1].removeprefix("1 ")
        return f"{self.item.amount} messages per {per}"

    async def wait_s(self, message: IncomingMessage) -> int | None:
        """None when the message is within the quota (and counts it), else seconds until a slot frees up."""
        if await self.limiter.hit(self.item, message.platform, message.user):
            return None
        stats = await self.limiter.get_window_stats(self.item, message.platform, message.user)
        return max(1, math.ceil(stats.reset_time - time.time()))


class Dispatcher:
    """Use as `async with Dispatcher(...) as dispatcher:`; adapters call `submit` before acknowledging."""

    def __init__(
        self,
        storage: Storage,
        responder: Responder,
        platforms: Iterable[ChatPlatform],
        options: DispatchOptions = DispatchOptions(),
        approvals: ApprovalBroker | None = None,
    ) -> None:
        self.storage = storage
        self.inbox = storage.inbox
        self.responder = responder
        self.platforms = {platform.name: platform for platform in platforms}
        self.options = options
        self.approvals = approvals
        if approvals is not None:
            # Approval requests are shown where the conversation is.
            approvals.ports.update(self.platforms)
        self.rate_limit = RateLimit(options.rate_limit) if options.rate_limit else None
        self._queues: dict[str, deque[InboxEntry]] = {}
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        # One slot per message being answered; a message waiting for a person's approval gives its slot back
        # (agent/parking.py), so pending approvals cannot stall other conversations.
        self._slots = asyncio.Semaphore(options.concurrency)
        self._feeder: asyncio.Task[None] | None = None
        # Each conversation's current turn and its hold on a slot (not held: waiting for one, or parked).
        self._turns: dict[asyncio.Task[None], Lease] = {}
        self._accepting = False
        self._stopping = False
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Queue what an earlier process left unfinished, in arrival order, then start taking messages.

        Approval requests left pending are expired first: their messages are answered again and ask again.
        """
        if self.approvals is not None:
            await self.approvals.expire_pending("restart")
        resumable = [name for name, platform in self.platforms.items() if platform.resumable]
        left = await self.inbox.unfinished(resumable)
        for entry in left:
            if entry.reply is None and entry.attempts >= self.options.max_attempts:
                entry = await self._give_up(entry)
            self._enqueue(entry)
        if left:
            log.warning("recovering %d unfinished messages from the inbox", len(left))
        self._feeder = asyncio.create_task(self._feed(), name="dispatch-feeder")
        self._accepting = True

    async def submit(self, message: IncomingMessage) -> bool:
        """Store the message and queue it; False for a redelivery of a message already in the inbox.

        Returns once the message is durable: the adapter acknowledges the platform after this.
        Raises DispatcherClosed while the dispatcher is not taking messages.
        """
        if not self._accepting:
            raise DispatcherClosed("not taking messages")
        if message.platform not in self.platforms:
            raise ValueError(f"no platform {message.platform!r} to reply through; known: {', '.join(self.platforms)}")
        entry = await self.inbox.accept(message)
        if entry is None:
            log.info("dropped a redelivery of %s event %s", message.platform, message.event_id or message.message_id)
            return False
        if self._accepting:
            self._enqueue(entry)
        return True

    async def decide(
        self,
        request_id: str,
        *,
        platform: str,
        user: str,
        approve: bool,
        args_hash: str,
        always: bool = False,
        roles: Sequence[str] = (),
    ) -> Verdict:
        """A person's approval decision, from the adapter that showed the request."""
        if self.approvals is None:
            return Verdict(False, "approvals are not handled here")
        return await self.approvals.decide(
            request_id, platform=platform, user=user, approve=approve, args_hash=args_hash, always=always, roles=roles
        )

    async def join(self) -> None:
        """Wait until every queued message is answered and delivered."""
        await self._idle.wait()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking messages; give running ones `grace_s` to finish; leave the rest in the inbox.

        Turns without a slot (waiting for one, or parked on an approval that a person may take minutes to
        decide) are stopped at once: their messages stay in the inbox and are answered again after a restart.
        """
        self._accepting = False
        self._stopping = True
        grace = self.options.grace_s if grace_s is None else grace_s
        if self._feeder is not None:
            self._feeder.cancel()
        running = [turn for turn, lease in self._turns.items() if lease.held]
        for turn, lease in self._turns.items():
            if not lease.held:
                turn.cancel()
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            if late:
                log.warning("%d messages still running after %.1f s; they stay in the inbox", len(late), grace)
            for turn in late:
                turn.cancel()
        await asyncio.gather(*self._turns, *([self._feeder] if self._feeder else []), return_exceptions=True)
        self._feeder = None
        # What is still queued stays in the inbox for the next start, not in this process.
        INBOX_DEPTH.dec(self._pending)

    def _enqueue(self, entry: InboxEntry) -> None:
        key = conversation_key(entry.message)
        queue = self._queues.get(key)
        self._pending += 1
        INBOX_DEPTH.inc()
        self._idle.clear()
        if queue is None:
            self._queues[key] = deque([entry])
            self._ready.put_nowait(key)
        else:
            queue.append(entry)

    async def _feed(self) -> None:
        """Start a turn for each conversation that has work; turns take a slot before they answer."""
        while True:
            key = await self._ready.get()
            lease = Lease(self._slots)
            turn = asyncio.create_task(self._turn(key, lease), name=f"dispatch:{key}")
            self._turns[turn] = lease
            turn.add_done_callback(self._turns.pop)

    async def _turn(self, key: str, lease: Lease) -> None:
        """Answer the conversation's oldest message in a slot, then put the conversation back if it has more.
        Until then its later messages wait: one conversation is answered in order, parked or not."""
        queue = self._queues[key]
        entry = queue.popleft()
        try:
            async with held(lease):
                await self._handle_or_apologise(entry)
        finally:
            if queue:
                self._ready.put_nowait(key)
            else:
                del self._queues[key]
            self._pending -= 1
            INBOX_DEPTH.dec()
            if self._pending == 0:
                self._idle.set()

    async def _handle_or_apologise(self, entry: InboxEntry) -> None:
        """Handle the message, retrying while the database fails; if it keeps failing, tell the user and move
        on (the row stays in the inbox, so the next start answers it), so the conversation is not stuck.

        Every log line and error report of the message carries its platform and conversation."""
        with run_context(platform=entry.message.platform, conversation=conversation_key(entry.message)):
            await self._handle_with_retries(entry)

    async def _handle_with_retries(self, entry: InboxEntry) -> None:
        try:
            async for attempt in stamina.retry_context(
                on=TransientStoreError, attempts=3, timeout=30.0, wait_initial=0.5, wait_max=5.0
            ):
                with attempt:
                    await self._handle(entry)
        except Exception as exc:
            error_id = new_error_id()
            with bound_contextvars(error_id=error_id):
                log.error("message %d could not be handled (error id %s): %s", entry.id, error_id, exc)
            observe_delivery(entry.message, "error")
            apology = Reply(APOLOGY.format(error_id=error_id), status="error", error_id=error_id)
            try:
                await self.platforms[entry.message.platform].deliver(
                    entry.message, apology, f"{entry.delivery_key}-error"
                )
            except Exception as failed:
                log.error("the apology for message %d was not delivered either: %s", entry.id, type(failed).__name__)

    async def _handle(self, entry: InboxEntry) -> None:
        reply = entry.reply if entry.reply is not None else await self._answer(entry)
        platform = self.platforms[entry.message.platform]
        try:
            await self._deliver(platform, entry, reply)
        except Exception as exc:
            error_id = new_error_id()
            with bound_contextvars(error_id=error_id):
                log.error(
                    "could not deliver the reply to %s message %d (error id %s): %s",
                    platform.name,
                    entry.id,
                    error_id,
                    exc if isinstance(exc, DeliveryError) else type(exc).__name__,
                )
            await self.inbox.fail(entry.id, error_id, f"delivery failed: {type(exc).__name__}")
            observe_delivery(entry.message, "undelivered")
            return
        await self.inbox.delivered(entry.id)
        observe_delivery(entry.message, reply.status)

    async def _answer(self, entry: InboxEntry) -> Reply:
        """The reply to a message, stored in the inbox (with the exchange, when the agent answered)."""
        await self.inbox.start(entry.id)
        # A message answered before (cut short by a crash) already counted against its sender.
        if self.rate_limit is not None and entry.attempts == 0:
            wait_s = await self.rate_limit.wait_s(entry.message)
            if wait_s is not None:
                reply = Reply(
                    f"You're sending messages faster than I can take them (at most "
                    f"{self.rate_limit.description}). Please try again in {wait_s} s.",
                    status="limited",
                )
                await self.inbox.answer(entry.id, reply)
                return reply

        message = await self._with_context(entry.message)
        try:
            return await answer(self.responder, self.storage, message, inbox_id=entry.id)
        except Exception as exc:
            error_id = new_error_id()
            with bound_contextvars(error_id=error_id):
                log.exception("answering message %d failed (error id %s): %s", entry.id, error_id, type(exc).__name__)
            reply = Reply(APOLOGY.format(error_id=error_id), status="error", error_id=error_id)
            await self.inbox.answer(entry.id, reply, error=type(exc).__name__)
            return reply

    async def _with_context(self, message: IncomingMessage) -> IncomingMessage:
        """The message with what its platform knows around it (a thread's earlier messages), if it knows any."""
        platform = self.platforms[message.platform]
        if not isinstance(platform, ProvidesContext):
            return message
        try:
            context = await platform.thread_context(message)
        except Exception as exc:  # context is a nicety: answer without it
            log.warning("no thread context for %s message %s: %s", message.platform, message.message_id, exc)
            return message
        return replace(message, context=context) if context else message

    async def _give_up(self, entry: InboxEntry) -> InboxEntry:
        """A message that was being answered each time the process died: stop trying, apologise once."""
        error_id = new_error_id()
        with bound_contextvars(error_id=error_id):
            log.error(
                "giving up on message %d after %d interrupted attempts (error id %s)",
                entry.id,
                entry.attempts,
                error_id,
            )
        reply = Reply(GAVE_UP.format(attempts=entry.attempts, error_id=error_id), status="error", error_id=error_id)
        await self.inbox.answer(entry.id, reply, error=f"gave up after {entry.attempts} interrupted attempts")
        return InboxEntry(entry.id, entry.message, entry.state, entry.attempts, reply)

    async def _deliver(self, platform: ChatPlatform, entry: InboxEntry, reply: Reply) -> None:
        retrying = stamina.retry_context(
            on=_retry_delivery,
            attempts=self.options.delivery_attempts,
            timeout=self.options.delivery_timeout_s,
            wait_initial=0.2,
            wait_max=10.0,
            wait_jitter=1.0,
        )
        async for attempt in retrying:
            with attempt:
                await platform.deliver(entry.message, reply, entry.delivery_key)
