"""The storage seam: one protocol per aggregate and the `Storage` facade that holds them.

Every engine implements all of these with the same behaviour; `tests/test_storage_contract.py` runs one
suite against each. Methods take and return the values of `agent.storage.models` (and the message and
approval models they carry); no connection, cursor or row type crosses this boundary. Time-sensitive writes
take `now` from the caller, so a caller's clock (a test's, the broker's) decides, not the database's.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Collection, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from agent.approvals.models import ApprovalRequest, ApprovalState, PromptLocation
from agent.attachments.models import AttachmentRecord
from agent.messages import Conversation, IncomingMessage, Reply, Step
from agent.storage.leadership import Leadership
from agent.storage.models import (
    AuditEntry,
    ChainRecord,
    ChainStats,
    Claim,
    Execution,
    Fact,
    Grant,
    InboxEntry,
    PrunePolicy,
    Replica,
    RunRecord,
    SettingChange,
    StorageStatus,
    ToolStats,
    Turn,
    UsageRecord,
    UsageTotal,
    WindowCounts,
)


class Turns(Protocol):
    """Conversation turns, kept to the newest `max_turns` of each channel."""

    async def add(
        self, conv: Conversation, role: str, text: str, *, user_id: str = "", chain_id: int | None = None
    ) -> None: ...

    async def recent(self, conv: Conversation, limit: int = 10) -> list[Turn]:
        """The last `limit` turns of the conversation (its thread, or the channel's top level), oldest first."""
        ...

    async def of_channel(self, channel: str, limit: int = 100) -> list[Turn]:
        """The last `limit` turns of the whole channel, every thread included, oldest first."""
        ...


class Notes(Protocol):
    """Working memory: small key/value notes per conversation."""

    async def set(self, conv: Conversation, key: str, value: str) -> None: ...

    async def of(self, conv: Conversation) -> dict[str, str]: ...


class Facts(Protocol):
    """Facts per channel, found by full-text relevance."""

    async def add(self, channel: str, key: str, value: str, *, confidence: float = 1.0) -> None:
        """Upsert: a known key gets the new value and confidence, and counts as one more access."""
        ...

    async def get(self, channel: str, key: str) -> Fact | None:
        """One fact by key; reading it touches its last access and access count."""
        ...

    async def of_channel(self, channel: str) -> list[Fact]:
        """Every fact of the channel, by key."""
        ...

    async def relevant(self, channel: str, query: str, k: int = 5, *, touch: bool = False) -> list[Fact]:
        """The top-k facts of the channel for `query` (a key match weighs more than a value match)."""
        ...

    async def prune(self, max_age_days: float, *, now: float) -> int:
        """Delete facts untouched for `max_age_days`, except those accessed more than 10 times."""
        ...


class Chains(Protocol):
    """Reasoning chains and their steps (written by `Storage.record_exchange`)."""

    async def steps(self, chain_id: int) -> list[Step]: ...

    async def attachments(self, chain_id: int) -> list[AttachmentRecord]:
        """The files of a chain (shared with its question, posted with its reply), in the order recorded."""
        ...

    async def count(self, started_at: float = 0.0, channel: str | None = None) -> int: ...

    def since(
        self,
        started_at: float,
        *,
        channel: str | None = None,
        batch: int = 500,
        after_id: int = 0,
        ended_before: float | None = None,
    ) -> AsyncIterator[dict[str, Any]]:
        """Every chain started at or after `started_at` (of one channel, or all) with an id above `after_id`,
        and (given `ended_before`) whose answer ended before then, oldest first, each a JSON-ready dict with its
        steps."""
        ...

    async def stats(self, started_at: float = 0.0, channel: str | None = None) -> ChainStats: ...


class Inbox(Protocol):
    """The durable inbox: every incoming message, its state and its reply. Each method is one transaction."""

    async def accept(self, message: IncomingMessage) -> InboxEntry | None:
        """Store a new message; None when this platform event is already in the inbox (a redelivery)."""
        ...

    async def start(self, entry_id: int, *, claim: Claim | None = None) -> int:
        """Mark the message as being answered and count the attempt; returns the attempts so far (1 the first
        time, whichever replica made the earlier ones).

        Each write of an answering replica carries its `claim` of the conversation; a claim no longer held
        raises ClaimLost and writes nothing (here and in `answer`, `fail`, `delivered`, `streaming`,
        `record_exchange`)."""
        ...

    async def answer(
        self, entry_id: int, reply: Reply, *, error: str | None = None, claim: Claim | None = None
    ) -> None:
        """Store the reply and mark the message answered (`error` says what went wrong for an apology)."""
        ...

    async def fail(self, entry_id: int, error_id: str, error: str, *, claim: Claim | None = None) -> None:
        """The reply could not be delivered: given up for good."""
        ...

    async def delivered(self, entry_id: int, *, claim: Claim | None = None) -> None:
        """The platform took the reply: a restart must not send it again."""
        ...

    async def streaming(self, entry_id: int, ref: str, *, claim: Claim | None = None) -> None:
        """The reply is being streamed into the platform message `ref` (its ts or id; "" clears it): a restart
        finishes or replaces that message instead of posting a second answer."""
        ...

    async def unfinished_of(self, conversation: str) -> list[InboxEntry]:
        """One conversation's messages (by `conversation_key`) still to answer or deliver, in arrival order."""
        ...

    async def unfinished(self, platforms: Iterable[str]) -> list[InboxEntry]:
        """Messages of these platforms still to answer or whose reply is still to deliver, in arrival order."""
        ...

    async def get(self, entry_id: int) -> InboxEntry | None: ...

    async def recent(self, limit: int = 100) -> list[InboxEntry]:
        """The newest `limit` messages, whatever their state, oldest first."""
        ...


class Executions(Protocol):
    """Every tool call the runner makes, for audit and per-tool statistics."""

    async def record(self, execution: Execution) -> None: ...

    async def for_run(self, run_id: str) -> list[Execution]: ...

    async def recent(self, limit: int = 50) -> list[Execution]:
        """The newest `limit` executions, oldest first."""
        ...

    async def stats(self) -> dict[str, ToolStats]:
        """Calls, successes, failures, mean and nearest-rank p95 duration per tool, over the whole table."""
        ...


class Approvals(Protocol):
    """Approval requests, decisions (compare-and-set), "allow always" grants, and the append-only audit."""

    async def create(self, request: ApprovalRequest, *, owner: str = "") -> None:
        """Store a new pending request and audit it, in one transaction. `owner` is the replica whose run waits
        for it (kept where several replicas share the database)."""
        ...

    async def shown(self, request_id: str, prompt: PromptLocation) -> None:
        """Record where the request's prompt was posted (whatever its state by now)."""
        ...

    async def prompt_closed(self, request_id: str, *, now: float) -> None:
        """The prompt now shows the request's outcome and has no buttons left."""
        ...

    async def open_prompts(self) -> list[ApprovalRequest]:
        """Settled requests whose prompt still shows buttons."""
        ...

    async def get(self, request_id: str) -> ApprovalRequest | None: ...

    async def settle(
        self, request: ApprovalRequest, state: ApprovalState, *, actor: str, now: float, reason: str = ""
    ) -> ApprovalRequest | None:
        """Compare-and-set: move a pending request, unexpired at `now` (expiry aside), to `state`. None when it
        was no longer pending; the attempt is audited either way."""
        ...

    async def refuse(self, request_id: str, *, actor: str, reason: str, request: ApprovalRequest | None) -> None:
        """Audit a decision that was not allowed to count."""
        ...

    async def note(self, action: str, outcome: str, *, request: ApprovalRequest | None = None, **fields: str) -> None:
        """Audit an event that is not a request or a decision (`fields`: request_id, actor, detail, tool, channel)."""
        ...

    async def expire_pending(
        self, reason: str, *, now: float, keep_owners: Collection[str] = ()
    ) -> list[ApprovalRequest]:
        """Mark every pending request expired, except those of the replicas in `keep_owners` (live ones, whose
        runs still wait); return them as expired."""
        ...

    def watch(self, settled: Callable[[str], None]) -> AbstractAsyncContextManager[None]:
        """While the block runs, call `settled(request_id)` when any replica settles a request, and
        `settled("")` after a gap in which a notice may have been missed (re-read every waiting request)."""
        ...

    async def grant(
        self, tool: str, channel: str, granted_by: str, *, now: float, request: ApprovalRequest | None = None
    ) -> None: ...

    async def revoke(self, tool: str, channel: str, actor: str) -> bool: ...

    async def granted(self, tool: str, channel: str) -> Grant | None: ...

    async def grants(self) -> list[Grant]: ...

    async def pending(self) -> list[ApprovalRequest]: ...

    async def audit(self, since: float = 0.0) -> list[AuditEntry]:
        """Audit rows at or after `since`, in the order they were written."""
        ...


class Jobs(Protocol):
    """Scheduled job runs (one per job and slot) and each job's own marks."""

    async def interrupt_running(self, *, now: float, keep_owners: Collection[str] = ()) -> int:
        """Mark runs left `running` by a process that is gone (not in `keep_owners`) as interrupted."""
        ...

    async def claim(self, job: str, slot: str, *, started_at: float, owner: str = "") -> bool:
        """Start the run of `job` for `slot`; False when that slot has run (or is running) already."""
        ...

    async def finish(
        self, job: str, slot: str, state: str, *, finished_at: float, detail: str = "", error_id: str | None = None
    ) -> None: ...

    async def last_ok(self, job: str) -> float | None:
        """The start of the newest successful scheduled (not manual) run of `job`."""
        ...

    async def last_runs(self) -> dict[str, RunRecord]:
        """The newest run of each job."""
        ...

    async def runs(self, job: str) -> list[RunRecord]:
        """Every recorded run of `job`, oldest first."""
        ...

    async def mark(self, job: str, key: str) -> str | None: ...

    async def set_mark(self, job: str, key: str, value: str) -> None: ...


class Replicas(Protocol):
    """The processes sharing the database, by heartbeat."""

    async def beat(self, replica: Replica, *, now: float) -> None:
        """Register the replica or refresh its heartbeat."""
        ...

    async def live(self, *, now: float, ttl_s: float) -> list[Replica]:
        """Replicas whose heartbeat is younger than `ttl_s`, oldest first."""
        ...

    async def leave(self, replica_id: str) -> None:
        """A replica shutting down cleanly: what it held is free at once."""
        ...

    async def ask_stop(self, request: str) -> None:
        """Tell every replica that a person asked to stop an answer (`request` is the dispatcher's, passed on as
        it is): the one running the answer stops it. Best effort, like the button: a replica that was not
        listening at that moment does not hear it, and the person can ask again."""
        ...

    def watch_stops(self, heard: Callable[[str], None]) -> AbstractAsyncContextManager[None]:
        """While the block runs, call `heard(request)` for every stop a replica asks (this one too)."""
        ...


class Claims(Protocol):
    """Which replica answers which conversation (see `Claim`)."""

    # Whether other processes take in messages and hold claims on the same database (replicas on PostgreSQL);
    # False where this process is the only one (SQLite), so nothing reaches a conversation but through it.
    shared: bool

    async def take(self, conversation: str, owner: str, *, ttl_s: float, now: float) -> Claim | None:
        """The conversation's claim for `owner`: a new one (next epoch) when it is free or expired, the same one
        extended when `owner` holds it; None while another owner's claim is valid."""
        ...

    async def renew(self, owner: str, *, ttl_s: float, now: float) -> set[str]:
        """Extend every claim `owner` still holds; returns their conversations (the others were lost)."""
        ...

    async def release(self, claim: Claim) -> None:
        """Give the conversation up (if this claim still holds it)."""
        ...

    async def waiting(self, platforms: Iterable[str], *, now: float, limit: int = 100) -> list[str]:
        """Conversations with unfinished messages of these platforms that no valid claim holds, oldest first."""
        ...


class Limits(Protocol):
    """Counters shared by every replica, for rate limits."""

    async def hit(self, key: str, *, window_s: float, now: float) -> int:
        """Count one hit of `key` in its fixed window (aligned to multiples of `window_s`); returns the hits in
        that window so far, this one included."""
        ...


class Stats(Protocol):
    """Read-only aggregates across tables."""

    async def window(self, since: float, until: float) -> WindowCounts:
        """Messages received in [since, until) and what was done for them."""
        ...


class ChannelSettings(Protocol):
    """Settings stored per scope (a thread, channel or workspace key, e.g. `slack:T1/C2`), each change audited
    in the same transaction. Values are kept as the text they were set with; the bot layer validates them."""

    async def values(self, scopes: Sequence[str]) -> dict[str, dict[str, str]]:
        """The stored values of each scope asked for that has any: {scope: {key: value}}."""
        ...

    async def set(self, scope: str, key: str, value: str, *, actor: str, now: float) -> str | None:
        """Store a value and audit the change; returns the value it replaced (None: none was set)."""
        ...

    async def reset(self, scope: str, key: str, *, actor: str, now: float) -> str | None:
        """Remove a value (audited when there was one); returns it, or None when none was set."""
        ...

    async def history(self, scope: str | None = None, since: float = 0.0) -> list[SettingChange]:
        """The audit of changes, oldest first: of one scope, or of every scope."""
        ...


class Usage(Protocol):
    """Model usage per answer (written by `Storage.record_exchange` with the chain), summed for budgets and
    reports."""

    async def record(self, usage: UsageRecord) -> None: ...

    async def spent(self, *, since: float, user: str | None = None, channel: str | None = None) -> UsageTotal:
        """Usage since `since` of one user (`platform:id`), one channel (memory key), or both at once."""
        ...

    async def totals(self, *, since: float, by: str, until: float | None = None, limit: int = 50) -> list[UsageTotal]:
        """Usage since `since` grouped `by` "user", "channel" or "model", most tokens first."""
        ...


class Storage(Protocol):
    """Every repository of one database, and the operations that span several in one transaction."""

    engine: str
    turns: Turns
    notes: Notes
    facts: Facts
    chains: Chains
    inbox: Inbox
    executions: Executions
    approvals: Approvals
    jobs: Jobs
    stats: Stats
    replicas: Replicas
    claims: Claims
    limits: Limits
    leadership: Leadership
    channel_settings: ChannelSettings
    usage: Usage

    @property
    def location(self) -> str:
        """Where the data is, fit for a log line: a file path, or a URL with its password masked."""
        ...

    async def record_exchange(
        self,
        conv: Conversation,
        chain: ChainRecord | None,
        reply: Reply,
        *,
        inbox_id: int | None = None,
        error: str | None = None,
        claim: Claim | None = None,
    ) -> Reply:
        """Store an answered message in one transaction: the chain and its steps, the user's and the assistant's
        turns, the answer's usage row (when the chain made model calls), and the inbox row's reply and `answered`
        state. With no chain (a message the agent refused outright) only the inbox row is written. Returns the
        reply with its chain id. Under a `claim` no longer held, raises ClaimLost and writes nothing."""
        ...

    async def prune(self, policy: PrunePolicy) -> dict[str, int]:
        """Delete what is older than its cutoff, in one transaction; returns rows deleted per kind."""
        ...

    async def forget(self, channel: str) -> dict[str, int]:
        """Delete everything remembered about a channel: turns, facts, notes, chains and tool executions.

        Its usage rows and channel settings stay: usage is the bill (budgets and reports count it), and the
        settings are how the channel is configured, not what was said in it."""
        ...

    async def export_channel(self, channel: str) -> dict[str, Any]:
        """A channel's memory as JSON-ready data, for backup or moving it elsewhere."""
        ...

    async def import_channel(self, data: dict[str, Any], channel: str | None = None) -> None:
        """Load an export into `channel` (default: the exported one) in one transaction; facts upsert, turns
        append. Raises ValueError for an export of another version."""
        ...

    async def ping(self, *, now: float) -> None:
        """A write round trip (for `/readyz`): raises StoreError when the database cannot take writes."""
        ...

    async def status(self) -> StorageStatus: ...

    async def close(self) -> None:
        """Close every connection; closing twice is harmless."""
        ...
