"""The approval broker: the tool runner's gate. Approval is enforced here, in code, never in the prompt.

For a call whose policy is `confirm` or `approve` it stores a request bound to the exact tool and arguments,
asks the conversation's platform to show it, and waits (the conversation waits with it; others go on) until
a permitted person decides or the request expires. Decisions come back through `decide`, which checks the
request id, its state and expiry, the arguments' hash and the person, and settles it by compare-and-set.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import Counter
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Protocol

from agent.approvals.models import (
    ApprovalPolicy,
    ApprovalRequest,
    ApprovalState,
    Decision,
    PromptLocation,
    Verdict,
    args_hash,
)
from agent.events import ApprovalWaiting, emit
from agent.parking import parked
from agent.resilience import deadline_left, deadline_paused
from agent.tools.registry import ToolSpec
from agent.tools.runner import RunStopped, ToolCall, ToolRefused, cannot_ask, denied_by_policy

if TYPE_CHECKING:  # the storage seam imports the approval models, so only the type checker imports it here
    from agent.storage.base import Approvals

log = logging.getLogger("parley.approvals")
MIN_SHOWN_HASH = 32
NO_DECISION = "no decision in time"
TOO_MANY_WAITING = (
    "You already have {count} requests waiting for an approval. Please wait until they are decided, then ask again."
)
# Old prompts updated at start-up: a few at a time (each is one platform call, inside its rate limits), and
# start-up waits at most this long for them.
CLOSE_PROMPTS_AT_ONCE = 4
CLOSE_PROMPTS_S = 10.0


class ApprovalPort(Protocol):
    """How a platform shows approval requests (the dispatcher registers each adapter as one)."""

    async def request_approval(self, request: ApprovalRequest) -> PromptLocation | None:
        """Show the request (tool, arguments, who asked, expiry) with a way to decide; return once shown, with
        where it was shown (stored with the request), or None when the prompt lives only in this process."""
        ...

    async def approval_settled(self, request: ApprovalRequest) -> None:
        """The request was decided or expired: update its prompt at `request.prompt` (posted by this process
        or an earlier one; None for a prompt that lives only in this process) to the outcome, without buttons."""
        ...


def _refusal(request: ApprovalRequest) -> str:
    """The observation the model gets when the call does not run: what happened, and to go on without it."""
    if request.state is ApprovalState.DENIED:
        why = f"{request.decided_by} denied it"
    elif request.reason == "restart":
        why = "the request was cancelled by a restart"
    else:
        why = f"nobody approved it within the time allowed ({request.reason or NO_DECISION})"
    return f"{request.tool} was not run because {why}; answer without it, or say what you would need"


class ApprovalBroker:
    def __init__(
        self,
        store: Approvals,
        policy: ApprovalPolicy,
        *,
        clock: Callable[[], float] = time.time,
        observe: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.clock = clock
        # Told each outcome: requested, approved, denied, expired, always (a grant used), policy_denied.
        self.observe = observe
        # Platform name -> where its requests are shown; the dispatcher fills it in.
        self.ports: dict[str, ApprovalPort] = {}
        # This replica's id, stored with its requests so a restart of another replica leaves them alone; the
        # dispatcher sets it.
        self.owner = ""
        self._rereads: set[asyncio.Task[None]] = set()
        self._waiting: dict[str, asyncio.Future[ApprovalRequest]] = {}
        # (platform, user) -> how many of their answers wait for a decision in this process.
        self._waiting_by: Counter[tuple[str, str]] = Counter()

    async def check(self, call: ToolCall, spec: ToolSpec) -> None:
        """The runner's gate: return to let the call run, raise ToolRefused with the reason otherwise."""
        if spec.approval == "allow":
            return
        ctx = call.context
        channel = ctx.conversation.channel if ctx else ""
        if spec.approval == "deny":
            await self.store.note("policy_denied", "denied", tool=spec.name, channel=channel, actor="policy")
            self._count("policy_denied")
            raise denied_by_policy(spec)
        if ctx is None:
            raise cannot_ask(spec)
        # "Always" is granted for a channel and its threads: a Discord thread (a channel of its own) looks in its
        # parent channel, and in itself for a grant made before grants went to the parent.
        scope = ctx.conversation.settings_channel
        if await self.store.granted(spec.name, scope) or (
            scope != channel and await self.store.granted(spec.name, channel)
        ):
            await self.store.note("allowed_always", "approved", tool=spec.name, channel=channel, actor="grant")
            self._count("always")
            return
        left = deadline_left()
        if left is not None and left <= 0:
            raise ToolRefused(f"there is no time left to ask for approval of {spec.name}; answer without it")
        port = self.ports.get(ctx.platform)
        if port is None:
            await self.store.note("no_prompt", "denied", tool=spec.name, channel=channel, actor="parley")
            raise cannot_ask(spec)
        asker = (ctx.platform, ctx.user)
        if self._waiting_by[asker] >= self.policy.max_waiting_per_user:
            await self.store.note("too_many_waiting", "denied", tool=spec.name, channel=channel, actor="policy")
            raise RunStopped(TOO_MANY_WAITING.format(count=self._waiting_by[asker]))
        now = self.clock()
        request = ApprovalRequest(
            id=secrets.token_urlsafe(16),
            tool=spec.name,
            args=call.args,
            args_hash=args_hash(spec.name, call.args),
            level=spec.approval,
            platform=ctx.platform,
            channel=channel,
            thread=ctx.conversation.thread,
            requester=ctx.user,
            created_at=now,
            expires_at=now + self.policy.expiry_s,
            run_id=ctx.run_id,
        )
        self._waiting_by[asker] += 1
        # The answer's stream (when it has one) shows the wait, and goes on after the decision.
        emit(ctx.progress, ApprovalWaiting(call.step, spec.name, request.id))
        try:
            settled = await self._ask(port, request)
        finally:
            self._waiting_by[asker] -= 1
            if not self._waiting_by[asker]:
                del self._waiting_by[asker]
        if settled.state is not ApprovalState.APPROVED:
            raise ToolRefused(_refusal(settled))

    async def _ask(self, port: ApprovalPort, request: ApprovalRequest) -> ApprovalRequest:
        """Store the request, show it, and wait for its decision or expiry (the answer's deadline paused).

        If the wait is cancelled (shutdown, the answer given up), the request is expired and the prompt
        updated, so a late click cannot approve a call that will never run.
        """
        await self.store.create(request, owner=self.owner)
        self._count("requested")
        waiting: asyncio.Future[ApprovalRequest] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = waiting
        try:
            with deadline_paused():
                try:
                    await self._show(port, request)
                except Exception as exc:
                    log.error("approval request %s could not be shown: %s", request.id, type(exc).__name__)
                    return await self._expire(request, "the request could not be shown")
                try:
                    # Parked: the run gives its slots back while a person decides (agent/parking.py).
                    async with parked(), asyncio.timeout(max(request.expires_at - self.clock(), 0.0)):
                        settled = await asyncio.shield(waiting)
                except TimeoutError:
                    settled = await self._expire(request, NO_DECISION)
        except asyncio.CancelledError:
            await asyncio.shield(self._abandon(port, request))
            raise
        finally:
            self._waiting.pop(request.id, None)
        await self._settled(port, settled)
        return settled

    def _count(self, outcome: str) -> None:
        if self.observe is not None:
            self.observe(outcome)

    async def _abandon(self, port: ApprovalPort, request: ApprovalRequest) -> None:
        settled = await self._expire(request, "cancelled")
        await self._settled(port, settled)

    async def _show(self, port: ApprovalPort, request: ApprovalRequest) -> None:
        """Show the request and store where: whichever process settles it can then update that prompt."""
        prompt = await port.request_approval(request)
        if prompt is not None:
            await self.store.shown(request.id, prompt)

    async def _settled(self, port: ApprovalPort, request: ApprovalRequest) -> None:
        self._count(request.state.value)
        await self._close_prompt(port, request)

    async def _close_prompt(self, port: ApprovalPort, request: ApprovalRequest) -> None:
        """Update the request's prompt to its outcome; a failure leaves it open in the store for the next start."""
        if request.prompt is None:  # settled before its prompt's location was stored (a decision that quick)
            request = await self.store.get(request.id) or request
        try:
            await port.approval_settled(request)
        except Exception as exc:
            log.warning("approval request %s: the prompt could not be updated: %s", request.id, type(exc).__name__)
            return
        if request.prompt is not None:
            await self.store.prompt_closed(request.id, now=self.clock())

    async def _expire(self, request: ApprovalRequest, reason: str) -> ApprovalRequest:
        settled = await self.store.settle(
            request, ApprovalState.EXPIRED, actor="parley", now=self.clock(), reason=reason
        )
        if settled is None:  # a decision landed at the last moment: it stands
            settled = await self.store.get(request.id)
        assert settled is not None
        return settled

    async def decide(self, decision: Decision) -> Verdict:
        """A person's decision. Refused (and audited) unless the request exists, is pending and unexpired,
        carries the arguments that were shown, and the person may decide it; the first valid one wins."""
        actor = decision.actor
        request = await self.store.get(decision.request_id)
        why_not = await self._why_not(request, decision)
        if why_not is not None:
            await self.store.refuse(decision.request_id, actor=actor, reason=why_not, request=request)
            return Verdict(False, why_not)
        assert request is not None
        state = ApprovalState.APPROVED if decision.approve else ApprovalState.DENIED
        settled = await self.store.settle(request, state, actor=actor, now=self.clock())
        if settled is None:
            current = await self.store.get(decision.request_id)
            return Verdict(False, _already(current), current.state if current else None)
        waiting = self._waiting.get(decision.request_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(settled)
        if decision.always and decision.approve:
            # A click in a thread grants the tool in the thread's parent channel (and so in all its threads).
            scope = _parent(decision, request) or request.channel
            await self.store.grant(request.tool, scope, actor, now=self.clock(), request=request)
        return Verdict(True, f"{state.value} by {actor}", state)

    async def _why_not(self, request: ApprovalRequest | None, decision: Decision) -> str | None:
        if request is None:
            return "there is no such approval request"
        if request.state is not ApprovalState.PENDING:
            return _already(request)
        if self.clock() >= request.expires_at:
            await self._expire(request, NO_DECISION)
            return "this request has expired"
        # The fingerprint shown with the request: all of it, or (where a button id is short, as on Discord)
        # at least its first 32 hex digits.
        shown_hash = decision.args_hash
        if len(shown_hash) < MIN_SHOWN_HASH or not secrets.compare_digest(
            shown_hash, request.args_hash[: len(shown_hash)]
        ):
            return "the arguments differ from the ones in the request"
        platform, user, roles = decision.platform, decision.user, decision.roles
        # A thread's prompt is decided by its parent channel's approvers.
        parent = _parent(decision, request)
        why_not = self.policy.may_decide(request, platform, user, roles, parent=parent)
        if (
            why_not is None
            and decision.always
            and not self.policy.is_approver(platform, request.channel, user, roles, parent=parent)
        ):
            why_not = "only an approver can allow a tool always"
        return why_not

    def settled_elsewhere(self, request_id: str) -> None:
        """A notice that a request was settled, maybe by another replica (a click can reach any of them): the
        run waiting for it here re-reads it. "" means notices may have been missed: every waiting run re-reads."""
        for waiting_id in [request_id] if request_id else list(self._waiting):
            if waiting_id in self._waiting:
                task = asyncio.get_running_loop().create_task(self._reread(waiting_id))
                self._rereads.add(task)
                task.add_done_callback(self._rereads.discard)

    async def _reread(self, request_id: str) -> None:
        try:
            request = await self.store.get(request_id)
        except Exception as exc:  # the next notice, or the request's expiry, settles the wait
            log.warning("approval request %s could not be re-read: %s", request_id, type(exc).__name__)
            return
        waiting = self._waiting.get(request_id)
        if request is not None and request.state is not ApprovalState.PENDING and waiting and not waiting.done():
            waiting.set_result(request)

    async def expire_pending(self, reason: str = "restart", keep_owners: Collection[str] = ()) -> list[ApprovalRequest]:
        """On start-up, once the ports are registered: requests of a process that is gone can get no answer
        (their messages will ask again), so they expire, and their prompts lose their buttons like any other
        prompt still open for a settled request; live replicas' requests (`keep_owners`) still wait. Returns the
        requests it expired."""
        expired = await self.store.expire_pending(reason, now=self.clock(), keep_owners=keep_owners)
        if expired:
            log.warning("expired %d approval requests left pending by an earlier process", len(expired))
        await self.close_open_prompts()
        return expired

    async def close_open_prompts(self) -> None:
        """Update every prompt still showing buttons for a settled request (its process died before it could,
        or the platform refused the update), a few at a time and for at most CLOSE_PROMPTS_S: start-up does not
        wait long on a platform that is down, and whatever is left stays open in the store for the next start."""
        limit = asyncio.Semaphore(CLOSE_PROMPTS_AT_ONCE)

        async def close(port: ApprovalPort, request: ApprovalRequest) -> None:
            async with limit:
                await self._close_prompt(port, request)

        updates = []
        for request in await self.store.open_prompts():
            port = self.ports.get(request.prompt.platform) if request.prompt else None
            if port is not None:
                updates.append(close(port, request))
        try:
            async with asyncio.timeout(CLOSE_PROMPTS_S):
                await asyncio.gather(*updates)
        except TimeoutError:
            log.warning(
                "gave up updating old approval prompts after %.0f s; the next start tries again", CLOSE_PROMPTS_S
            )


def _parent(decision: Decision, request: ApprovalRequest) -> str:
    """The parent channel of the thread a click came from; it counts only for a click in the request's own
    channel (a thread's prompt), else ""."""
    return decision.parent if decision.channel == request.channel else ""


def _already(request: ApprovalRequest | None) -> str:
    if request is None:
        return "there is no such approval request"
    by = f" by {request.decided_by}" if request.decided_by and request.state is not ApprovalState.EXPIRED else ""
    return f"this request was already {request.state.value}{by}"
