"""The dispatcher: every incoming message goes through it, from every adapter.

It stores the message in the inbox before the adapter acknowledges the platform (a redelivery is dropped),
answers the messages of one conversation one at a time in arrival order while different conversations run
side by side under one global limit, applies the per-user rate limit, delivers the reply through the
message's platform with retries, and picks up whatever a process that is gone left unfinished.

Several replicas can share one PostgreSQL database: a replica answers a conversation only while it holds the
conversation's claim (agent/storage `Claims`), renewed by its heartbeat; each write it makes for the
conversation carries the claim, so once the claim has passed to another replica (this one stalled or died)
those writes fail with ClaimLost and the new holder goes on from the inbox. On SQLite the one process holds
every claim.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from types import TracebackType

import limits
import stamina
from structlog.contextvars import bound_contextvars

from agent.approvals import ApprovalBroker, Decision, Verdict
from agent.chains import AnswerMeter
from agent.messages import APOLOGY, IncomingMessage, Reply, new_error_id
from agent.options import AgentOptions
from agent.parking import Lease, held
from agent.ports import (
    ChatPlatform,
    ChecksDelivery,
    DeliveryError,
    NotAccepting,
    ProvidesContext,
    SharesFiles,
)
from agent.storage.base import Limits, Storage
from agent.storage.errors import ClaimLost, StoreError, TransientStoreError
from agent.storage.models import Claim, InboxEntry, Replica, conversation_key
from bot.answering import Responder, record
from bot.budgets import BudgetGuard
from bot.channels import ChannelResolver, Resolved
from bot.config import DispatchSettings
from bot.metrics import INBOX_DEPTH, observe_claim, observe_delivery
from bot.observe import run_context
from bot.stops import StopRequest, Stops
from bot.streaming import STOPPED, UNDELIVERED, Streaming, streamed

log = logging.getLogger("parley.dispatcher")

GAVE_UP = (
    "Sorry, I couldn't answer this message after {attempts} attempts (error id {error_id}). "
    "Please try asking differently."
)


class DispatcherClosed(NotAccepting):
    """The dispatcher is not taking messages (not started, or shutting down): do not acknowledge the platform."""


# `[dispatch]`'s defaults: the options below take theirs from there (and the global limit from the agent's pool).
_SETTINGS = DispatchSettings()


@dataclass(frozen=True)
class DispatchOptions:
    concurrency: int = AgentOptions.concurrency
    # e.g. "10/minute" (the `limits` notation); None turns the per-user limit off.
    rate_limit: str | None = _SETTINGS.rate_limit
    grace_s: float = _SETTINGS.shutdown_grace_s
    # A message whose answering was cut short this many times (a crash each time) is given up with an apology.
    max_attempts: int = _SETTINGS.max_attempts
    delivery_attempts: int = _SETTINGS.delivery_attempts
    delivery_timeout_s: float = 60.0
    # A replica's claim on a conversation lasts this long unless its heartbeat renews it (every third of it):
    # how soon another replica takes over the conversations of one that died.
    claim_ttl_s: float = _SETTINGS.claim_ttl_s
    # How often to look for conversations nobody answers (another replica died, or its claim lapsed).
    poll_s: float = _SETTINGS.poll_s


def _retry_delivery(exc: Exception) -> bool | float:
    """stamina's hook: retry transient delivery failures, at least as late as the platform asked."""
    if isinstance(exc, DeliveryError) and exc.transient:
        return exc.retry_after if exc.retry_after is not None else True
    return False


class RateLimit:
    """Per-user quota over fixed windows, counted in the storage, so every replica counts the same messages."""

    def __init__(self, rule: str, counters: Limits) -> None:
        self.item = limits.parse(rule)
        self.window_s = float(self.item.get_expiry())
        self.counters = counters

    @property
    def description(self) -> str:
        per = str(self.item).split(" per ", 1)[1].removeprefix("1 ")
        return f"{self.item.amount} messages per {per}"

    async def wait_s(self, message: IncomingMessage, channel: str = "") -> int | None:
        """None when the message is within the quota (and counts it), else seconds until the window ends. With
        `channel` (a channel's own rate) the sender's messages are counted in that channel only."""
        now = time.time()
        key = f"{message.platform}:{message.user}" + (f"@{channel}" if channel else "")
        hits = await self.counters.hit(key, window_s=self.window_s, now=now)
        if hits <= self.item.amount:
            return None
        return max(1, math.ceil(now - now % self.window_s + self.window_s - now))


def new_replica() -> Replica:
    """This process among the replicas: its id is the host, the pid, and a random part (a pid is reused across
    restarts, and a container's host name too)."""
    host, pid = socket.gethostname(), os.getpid()
    return Replica(f"{host}-{pid}-{uuid.uuid4().hex[:6]}", host, pid, time.time())


class Dispatcher:
    """Use as `async with Dispatcher(...) as dispatcher:`; adapters call `submit` before acknowledging."""

    def __init__(
        self,
        storage: Storage,
        responder: Responder,
        platforms: Iterable[ChatPlatform],
        options: DispatchOptions = DispatchOptions(),
        approvals: ApprovalBroker | None = None,
        replica: Replica | None = None,
        channels: ChannelResolver | None = None,
        budgets: BudgetGuard | None = None,
    ) -> None:
        self.storage = storage
        self.inbox = storage.inbox
        self.responder = responder
        self.platforms = {platform.name: platform for platform in platforms}
        self.options = options
        self.approvals = approvals
        self.replica = replica or new_replica()
        if approvals is not None:
            # Approval requests are shown where the conversation is, and belong to this replica.
            approvals.ports.update(self.platforms)
            approvals.owner = self.replica.id
        self.rate_limit = RateLimit(options.rate_limit, storage.limits) if options.rate_limit else None
        # Channel settings resolve each message's profile, rate and budgets; without them every channel is alike.
        self.channels = channels
        self.budgets = budgets
        self._channel_rates: dict[str, RateLimit] = {}
        # Each conversation this replica answers: its messages still to answer here, its claim, and its task.
        self._queues: dict[str, deque[InboxEntry]] = {}
        self._claims: dict[str, Claim] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        # One slot per message being answered; a message waiting for a person's approval gives its slot back
        # (agent/parking.py), so pending approvals cannot stall other conversations. The lease is the current
        # message's hold on a slot (not held: waiting for one, or parked).
        self._slots = asyncio.Semaphore(options.concurrency)
        self._leases: dict[str, Lease] = {}
        # Messages of platforms that cannot resume (the console) are answered only by the process that took
        # them in: a later session must not reply to an earlier one.
        self._local: set[int] = set()
        self._failed: set[int] = set()
        # The agent's runs under way here, which a person may stop.
        self._stops = Stops(self.platforms)
        # Conversations whose claim passed to another replica while their task ran: it is cancelled, and its
        # stream let go without a word (the new holder writes into the same message).
        self._lost: set[str] = set()
        self._poke = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._watching: contextlib.AsyncExitStack | None = None
        self._accepting = False
        self._stopping = False
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def held(self) -> list[str]:
        """The conversations this replica holds claims on now."""
        return list(self._claims)

    @property
    def _resumable(self) -> list[str]:
        return [name for name, platform in self.platforms.items() if platform.resumable]

    async def __aenter__(self) -> Dispatcher:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Join the replicas, pick up what a process that is gone left unfinished, then start taking messages.

        Approval requests that gone processes left pending are expired first: their messages are answered again
        and ask again. A live replica's requests still wait for their decisions."""
        now = time.time()
        await self.storage.replicas.beat(self.replica, now=now)
        self._watching = contextlib.AsyncExitStack()
        self._stopping = False
        try:
            # What other replicas do that concerns runs here: a person's Stop, an approval decided.
            await self._watching.enter_async_context(self.storage.replicas.watch_stops(self._stops.heard))
            if self.approvals is not None:
                live = await self.storage.replicas.live(now=now, ttl_s=self.options.claim_ttl_s)
                await self.approvals.expire_pending("restart", keep_owners=[r.id for r in live])
                settled = self.approvals.settled_elsewhere
                await self._watching.enter_async_context(self.storage.approvals.watch(settled))
            await self._look_for_work()
        except BaseException:  # not started: the listener opened above must not outlive this
            if self._watching is not None:
                await self._watching.aclose()
                self._watching = None
            raise
        self._background = [
            asyncio.create_task(self._heartbeat(), name="dispatch-heartbeat"),
            asyncio.create_task(self._claimer(), name="dispatch-claimer"),
        ]
        self._accepting = True

    async def submit(self, message: IncomingMessage) -> bool:
        """Store the message and queue it; False for a redelivery of a message already in the inbox.

        Returns once the message is durable: the adapter acknowledges the platform after this.
        Raises DispatcherClosed while the dispatcher is not taking messages.
        """
        if not self._accepting:
            raise DispatcherClosed("not taking messages")
        platform = self.platforms.get(message.platform)
        if platform is None:
            raise ValueError(f"no platform {message.platform!r} to reply through; known: {', '.join(self.platforms)}")
        entry = await self.inbox.accept(message)
        if entry is None:
            log.info("dropped a redelivery of %s event %s", message.platform, message.event_id or message.message_id)
            return False
        if not platform.resumable:
            self._local.add(entry.id)
        if self._accepting:
            self._enqueue(entry)
        return True

    async def decide(self, decision: Decision) -> Verdict:
        """A person's approval decision, from the adapter that showed the request (on whichever replica)."""
        if self.approvals is None:
            return Verdict(False, "approvals are not handled here")
        return await self.approvals.decide(decision)

    async def stop_answer(self, platform: str, where: str) -> bool:
        """A person stopped the answer streamed at `where` (Slack's Stop): its run is cancelled and the reply
        says it was stopped. True when the answer was under way here (else the replica writing it stops it)."""
        return await self._stop_run(StopRequest(platform, where=where)) is True

    async def stop_mine(self, platform: str, channel: str, user: str) -> bool | None:
        """The `stop` command: every answer of `user` under way in `channel` (its memory key) is stopped, here and
        (when replicas share the database) on the others. True: one was stopped here; False: none is under way
        (this process is the only one); None: the other replicas were told, and one running such an answer stops
        it."""
        return await self._stop_run(StopRequest(platform, channel=channel, user=user))

    async def _stop_run(self, request: StopRequest) -> bool | None:
        """Stop what `request` names here; pass it on to the other replicas unless it named one stream and that
        stream was here (a person's answers in other threads of a channel may run anywhere). See `stop_mine`."""
        stopped = self._stops.stop(request)
        if (stopped and request.where) or not self.storage.claims.shared:
            return stopped
        try:
            await self.storage.replicas.ask_stop(request.encoded())
        except StoreError as exc:
            log.warning("could not pass a stop on to the other replicas: %s", exc)
            return stopped
        return True if stopped else None

    async def join(self) -> None:
        """Wait until every message queued here is answered and delivered."""
        await self._idle.wait()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking messages; give running ones `grace_s` to finish; leave the rest in the inbox.

        Conversations without a slot (waiting for one, or parked on an approval that a person may take minutes
        to decide) are stopped at once: their messages stay in the inbox and are answered again later, here
        after a restart or by another replica. Leaving frees this replica's claims at once."""
        self._accepting = False
        self._stopping = True
        grace = self.options.grace_s if grace_s is None else grace_s
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._background = []
        running = []
        for key, task in self._tasks.items():
            lease = self._leases.get(key)
            if lease is not None and lease.held:
                running.append(task)
            else:
                task.cancel()
        if running:
            _, late = await asyncio.wait(running, timeout=grace)
            if late:
                log.warning("%d messages still running after %.1f s; they stay in the inbox", len(late), grace)
            for task in late:
                task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        if self._watching is not None:
            await self._watching.aclose()
            self._watching = None
        with contextlib.suppress(StoreError):
            await self.storage.replicas.leave(self.replica.id)
        # What is still queued stays in the inbox for the next start, not in this process.
        INBOX_DEPTH.dec(self._pending)
        self._pending = 0
        self._idle.set()

    # Which conversations this replica answers -------------------------------------------------------------

    def _enqueue(self, entry: InboxEntry) -> None:
        key = conversation_key(entry.message)
        self._pending += 1
        INBOX_DEPTH.inc()
        self._idle.clear()
        self._queues.setdefault(key, deque()).append(entry)
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(self._conversation(key), name=f"dispatch:{key}")

    def _dequeued(self, count: int = 1) -> None:
        self._pending -= count
        INBOX_DEPTH.dec(count)

    async def _look_for_work(self) -> None:
        """Start on conversations with unfinished messages that nobody answers: left by a process that is gone,
        or taken in by another replica that let its claim go."""
        now = time.time()
        for key in await self.storage.claims.waiting(self._resumable, now=now):
            if key in self._tasks:
                continue
            entries = [e for e in await self.inbox.unfinished_of(key) if self._ours(e)]
            if entries:
                log.warning("picking up %d unfinished messages of %s", len(entries), key)
            for entry in entries:
                self._enqueue(entry)

    def _ours(self, entry: InboxEntry) -> bool:
        """A message this process should answer: of a platform it serves (that resumes, or taken in here), and
        not one it already failed to handle (left in the inbox for the next start, not retried in a loop)."""
        platform = self.platforms.get(entry.message.platform)
        if platform is None or entry.id in self._failed:
            return False
        return platform.resumable or entry.id in self._local

    async def _claimer(self) -> None:
        """Look for orphaned conversations every `poll_s` (or when poked)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self.options.poll_s)
            self._poke.clear()
            try:
                await self._look_for_work()
            except StoreError as exc:
                log.warning("could not look for unanswered conversations: %s", exc)

    async def _heartbeat(self) -> None:
        """Keep this replica live and its claims held; stop the conversations whose claims were lost."""
        while True:
            await asyncio.sleep(self.options.claim_ttl_s / 3)
            now = time.time()
            try:
                await self.storage.replicas.beat(self.replica, now=now)
                kept = await self.storage.claims.renew(self.replica.id, ttl_s=self.options.claim_ttl_s, now=now)
            except StoreError as exc:
                log.warning("heartbeat failed: %s", exc)
                continue
            for key in set(self._claims) - kept:
                log.warning("lost the claim of %s; another replica answers it now", key)
                observe_claim("lost")
                task = self._tasks.get(key)
                if task is not None:
                    self._lost.add(key)
                    task.cancel()

    async def _conversation(self, key: str) -> None:
        """Answer one conversation's messages in order while holding its claim, then let the claim go.

        The inbox is read before each message and before letting go: a message another replica took in meanwhile
        is answered here, in arrival order, not after later ones queued here nor left for the next poll."""
        claim: Claim | None = None
        queue = self._queues[key]
        done: set[int] = set()
        try:
            claim = await self.storage.claims.take(
                key, self.replica.id, ttl_s=self.options.claim_ttl_s, now=time.time()
            )
            if claim is None:  # another replica answers this conversation; what we queued is in its inbox
                observe_claim("busy")
                return
            observe_claim("taken")
            self._claims[key] = claim
            first = True
            while not self._stopping:  # stopping: the message in hand is finished, the rest wait in the inbox
                # An earlier message of this conversation may be in the inbox only (taken in while the last holder
                # was letting go, or at any time by another replica) and goes first: the inbox is read on taking
                # the claim, before each message when replicas share the database, and before letting go.
                if first or not queue or self.storage.claims.shared:
                    await self._catch_up(key, done)
                first = False
                if not queue:
                    return
                entry = queue.popleft()
                try:
                    if entry.id in done:  # queued twice: taken in here while also read from the inbox
                        continue
                    done.add(entry.id)
                    lease = self._leases[key] = Lease(self._slots)
                    await self._handle_or_apologise(entry, claim, lease)
                finally:
                    self._dequeued()
                    self._local.discard(entry.id)
        except ClaimLost as lost:
            log.warning("stopped answering %s: %s", key, lost)
        except StoreError as exc:
            log.error("could not answer %s now: %s; its messages stay in the inbox", key, exc)
        finally:
            if self._claims.pop(key, None) is not None and claim is not None:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self.storage.claims.release(claim))
            left = self._queues.pop(key, deque())
            self._tasks.pop(key, None)
            self._lost.discard(key)
            self._leases.pop(key, None)
            if left:  # taken in while this task was finishing: the claimer starts on it again
                self._dequeued(len(left))
                self._poke.set()
            if not self._tasks:
                self._idle.set()

    async def _catch_up(self, key: str, done: set[int]) -> None:
        """Make the queue the conversation's unfinished inbox messages not handled here yet, as the inbox has them
        now, in arrival (inbox id) order: messages taken in elsewhere join it, and a queued message that another
        replica finished meanwhile (it held the claim first) leaves it, so it is not answered twice."""
        queue = self._queues[key]
        # Queued before the read: in the inbox already, so one the read does not return is finished. One queued
        # while the read ran may be newer than it, and stays.
        before = {e.id for e in queue}
        found = {e.id: e for e in await self.inbox.unfinished_of(key) if self._ours(e)}
        queued = {e.id for e in queue}
        for entry_id, entry in found.items():
            if entry_id not in done and entry_id not in queued:
                self._enqueue_more(key, entry)
        held = [e.id for e in queue]
        mine = {e.id: e for e in queue}
        keep = {i for i in held if i not in done and (i in found or i not in before)}
        current = sorted((found.get(i, mine[i]) for i in keep), key=lambda e: e.id)
        if len(held) > len(current):  # finished elsewhere, handled here already, or queued twice
            self._dequeued(len(held) - len(current))
            self._local.difference_update(set(held) - {e.id for e in current})
        queue.clear()
        queue.extend(current)

    def _enqueue_more(self, key: str, entry: InboxEntry) -> None:
        """A message found in the inbox for the conversation this task answers."""
        self._pending += 1
        INBOX_DEPTH.inc()
        self._queues[key].append(entry)

    async def _handle_or_apologise(self, entry: InboxEntry, claim: Claim, lease: Lease) -> None:
        """Handle the message, retrying while the database fails; if it keeps failing, tell the user and move
        on (the row stays in the inbox, so the next start answers it), so the conversation is not stuck.

        Every log line and error report of the message carries its platform and conversation."""
        with run_context(platform=entry.message.platform, conversation=conversation_key(entry.message)):
            await self._handle_with_retries(entry, claim, lease)

    async def _handle_with_retries(self, entry: InboxEntry, claim: Claim, lease: Lease) -> None:
        """Handle the message under one of the global slots (`lease`), its stream open over every attempt."""
        platform = self.platforms[entry.message.platform]

        async def streams_into(ref: str) -> None:
            await self.inbox.streaming(entry.id, ref, claim=claim)

        key = claim.conversation
        try:
            # One stream over every attempt: a database failure interrupts an attempt, and the next goes on in the
            # message the first streamed into (which may show the whole answer already), not in a second one.
            async with streamed(platform, entry, streams_into, lost=lambda: key in self._lost) as streaming:
                if self._slots.locked() and entry.reply is None and not entry.stream:
                    # Every slot is taken: the message waits in line, and its stream shows meanwhile that it is
                    # on its way (the first sign of progress does not wait for a slot).
                    await streaming.open()
                async with held(lease):
                    async for attempt in stamina.retry_context(
                        on=TransientStoreError, attempts=3, timeout=30.0, wait_initial=0.5, wait_max=5.0
                    ):
                        with attempt:
                            if attempt.num > 1:
                                entry = await self._again(entry, streaming)
                            await self._handle(entry, claim, streaming)
        except ClaimLost:
            raise  # another replica answers the conversation now; it owes the user the reply
        except Exception as exc:
            self._failed.add(entry.id)
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

    async def _again(self, entry: InboxEntry, streaming: Streaming) -> InboxEntry:
        """The message handled again after the database failed: what the failed attempt got to record (its reply,
        the message it streamed into, its delivery) is read again. Its attempts stay as they were: they count the
        runs a crash cut short, which this is not."""
        streaming.again()
        fresh = await self.inbox.get(entry.id)
        if fresh is None:
            return entry
        return replace(entry, reply=fresh.reply, stream=fresh.stream, delivered_at=fresh.delivered_at)

    async def _handle(self, entry: InboxEntry, claim: Claim, streaming: Streaming) -> None:
        platform = self.platforms[entry.message.platform]
        if entry.delivered_at is not None:  # by an attempt whose failure came after
            return
        if entry.reply is not None and await self._posted_before(platform, entry, entry.reply):
            await self.inbox.delivered(entry.id, claim=claim)
            return
        if entry.reply is None and entry.attempts >= self.options.max_attempts:
            entry = await self._give_up(entry, claim)
        reply = entry.reply if entry.reply is not None else await self._answer(entry, claim, streaming)
        await self._still_ours(claim)
        try:
            await self._deliver(platform, entry, reply, streaming)
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
            # No reply follows: a stream still open says so, not that one does.
            await streaming.end(UNDELIVERED.format(error_id=error_id))
            await self.inbox.fail(entry.id, error_id, f"delivery failed: {type(exc).__name__}", claim=claim)
            observe_delivery(entry.message, "undelivered")
            return
        await self.inbox.delivered(entry.id, claim=claim)
        observe_delivery(entry.message, reply.status)

    async def _answer(self, entry: InboxEntry, claim: Claim, streaming: Streaming) -> Reply:
        """The reply to a message, stored in the inbox (with the exchange, when the agent answered). A message
        that is answered (not refused by a limit) is streamed on platforms that stream: the stream opens first."""
        attempts = await self.inbox.start(entry.id, claim=claim)
        resolved = await self.channels.resolve(entry.message) if self.channels is not None else Resolved()
        # A message answered before (cut short by a crash, or by a replica that lost it) already counted against
        # its sender: the count is the database's, not what this replica read earlier.
        refused = await self._rate_limited(entry.message, resolved) if attempts == 1 else None
        # Budgets are checked before any model call: over one, the reply says so (or a cheaper model answers).
        profile = resolved.profile
        if refused is None and self.budgets is not None:
            checked = await self.budgets.check(entry.message, resolved.budgets, profile)
            refused, profile = (checked, profile) if isinstance(checked, Reply) else (None, checked)
        if refused is not None:
            await self.inbox.answer(entry.id, refused, claim=claim)
            return refused

        await streaming.open()
        message = await self._with_context(entry.message)
        meter, started = AnswerMeter(), time.time()
        try:
            # Only the agent's run can be stopped, not the write after it: a cancelled write may commit all the
            # same, and a reply that says "stopped" must not replace an answer recorded with its turns.
            run = self.responder.respond(message, profile=profile, progress=streaming.progress, meter=meter)
            exchange = await self._stops.run(entry, run)
            if exchange is None:
                log.info("message %d was stopped by its sender", entry.id)
                exchange = self.responder.stopped(message, STOPPED, meter, started)
            return await record(self.storage, message, exchange, inbox_id=entry.id, claim=claim)
        except (ClaimLost, TransientStoreError):
            raise  # another replica answers now; or the database failed for a moment, and the message is retried
        except Exception as exc:
            error_id = new_error_id()
            with bound_contextvars(error_id=error_id):
                log.exception("answering message %d failed (error id %s): %s", entry.id, error_id, type(exc).__name__)
            reply = Reply(APOLOGY.format(error_id=error_id), status="error", error_id=error_id)
            await self.inbox.answer(entry.id, reply, error=type(exc).__name__, claim=claim)
            return reply

    async def _rate_limited(self, message: IncomingMessage, resolved: Resolved) -> Reply | None:
        """The reply refusing a message over its sender's rate, or None (the message is counted). A channel's own
        rate replaces the global one there, counted per sender and channel."""
        rate, where = self.rate_limit, ""
        if resolved.channel_rate:
            rule = resolved.rate_limit
            rate = self._channel_rates.get(rule) if rule else None
            if rule and rate is None:
                rate = self._channel_rates[rule] = RateLimit(rule, self.storage.limits)
            where = message.conversation.settings_channel  # a thread-channel counts in its parent
        if rate is None:
            return None
        wait_s = await rate.wait_s(message, where)
        if wait_s is None:
            return None
        return Reply(
            f"You're sending messages faster than I can take them (at most {rate.description}"
            f"{' in this channel' if where else ''}). Please try again in {wait_s} s.",
            status="limited",
        )

    async def _still_ours(self, claim: Claim) -> None:
        """Just before posting (the one step no fence guards), extend the claim; ClaimLost when another replica
        took the conversation meanwhile, since it posts the reply now."""
        held = await self.storage.claims.take(
            claim.conversation, claim.owner, ttl_s=self.options.claim_ttl_s, now=time.time()
        )
        if held is None or held.epoch != claim.epoch:
            raise ClaimLost(f"the claim of {claim.conversation} passed to another replica before its reply was posted")

    async def _posted_before(self, platform: ChatPlatform, entry: InboxEntry, reply: Reply) -> bool:
        """Whether a stored reply is on the platform already (posted by a process that died before recording
        it): then it is only recorded, not posted twice."""
        if not isinstance(platform, ChecksDelivery):
            return False
        try:
            posted = await platform.already_delivered(entry.message, reply, entry.delivery_key)
        except Exception as exc:  # unsure: deliver (a duplicate is better than a lost reply)
            log.warning("could not check whether message %d was answered already: %s", entry.id, type(exc).__name__)
            return False
        if posted:
            log.info("the reply to message %d was posted before; recorded as delivered", entry.id)
        return posted

    async def _with_context(self, message: IncomingMessage) -> IncomingMessage:
        """The message with what its platform knows around it (a thread's earlier messages, the files it may
        read, bound to their fetchers), if it knows any."""
        platform = self.platforms[message.platform]
        if isinstance(platform, SharesFiles):
            try:
                message = replace(message, attachments=await platform.attachments(message))
            except Exception as exc:  # the agent names every file it could not fetch in its reply
                log.warning("no files for %s message %s: %s", message.platform, message.message_id, exc)
        if not isinstance(platform, ProvidesContext):
            return message
        try:
            context = await platform.thread_context(message)
        except Exception as exc:  # context is a nicety: answer without it
            log.warning("no thread context for %s message %s: %s", message.platform, message.message_id, exc)
            return message
        return replace(message, context=context) if context else message

    async def _give_up(self, entry: InboxEntry, claim: Claim) -> InboxEntry:
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
        await self.inbox.answer(
            entry.id, reply, error=f"gave up after {entry.attempts} interrupted attempts", claim=claim
        )
        return replace(entry, reply=reply)

    async def _deliver(self, platform: ChatPlatform, entry: InboxEntry, reply: Reply, streaming: Streaming) -> None:
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
                # A stream that shows part of the reply and failed on the rest (a file, the overflow) is asked
                # again and sends only the rest; one that could not carry the reply leaves it to the usual way.
                if not await streaming.deliver(reply):
                    await platform.deliver(entry.message, reply, entry.delivery_key)
