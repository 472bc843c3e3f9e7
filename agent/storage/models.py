"""What the storage seam exchanges: plain frozen values, the same whichever engine holds them.

Nothing here knows about SQL or connections; the engines (`agent/storage/sqlite`, `agent/storage/postgres`)
turn rows into these and back.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum

from agent.attachments.models import AttachmentRecord
from agent.messages import IncomingMessage, Reply, Step

# Memory exports carry this version; an import refuses any other.
EXPORT_VERSION = 1
# Facts accessed more often than this survive the age-based prune.
KEEP_ACCESSED_MORE_THAN = 10
# What is kept of a tool observation in the table; the model may have seen more (up to the output cap).
STORED_OBSERVATION_CHARS = 2000


# Memory ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Turn:
    role: str
    text: str
    user_id: str
    created_at: float
    thread: str = ""


@dataclass(frozen=True)
class Fact:
    key: str
    value: str
    confidence: float
    access_count: int
    created_at: float
    updated_at: float
    last_access: float


@dataclass(frozen=True)
class ChainRecord:
    """A reasoning chain as it is stored: the question, the answer and every step between."""

    question: str
    answer: str
    status: str
    model: str
    started_at: float
    duration_ms: float
    steps: tuple[Step, ...] = ()
    user_id: str = ""
    error_id: str | None = None
    run_id: str = ""
    mode: str = "react"
    model_calls: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    # The files shared with the question and posted with the reply: names, types, sizes and hashes only.
    attachments: tuple[AttachmentRecord, ...] = ()
    # Where the question came from (the user id is the platform's), and what the model calls cost in USD
    # where the model's price is known: `record_exchange` writes the answer's usage row from these.
    platform: str = ""
    cost: float | None = None


@dataclass(frozen=True)
class ChainStats:
    """Aggregates over reasoning chains, for `parley chains stats`."""

    chains: int
    by_status: dict[str, int]
    mean_steps: float
    mean_duration_ms: float
    model_calls: int
    input_tokens: int
    output_tokens: int
    tool_usage: dict[str, int]


# Inbox -----------------------------------------------------------------------------------------------------


class State(StrEnum):
    """An inbox row's state: `received` (stored), `processing` (being answered; `attempts` counts tries),
    `answered` (a reply is stored, an apology with its error id included), `failed` (the reply could not be
    delivered; given up)."""

    RECEIVED = "received"
    PROCESSING = "processing"
    ANSWERED = "answered"
    FAILED = "failed"


@dataclass(frozen=True)
class InboxEntry:
    id: int
    message: IncomingMessage
    state: State
    attempts: int = 0
    reply: Reply | None = None
    # When the platform took the reply; None while it is still to deliver.
    delivered_at: float | None = None
    # The platform's reference of the reply being streamed ("" when none was started): a restarted process
    # finishes that message instead of posting a second answer.
    stream: str = ""

    @property
    def delivery_key(self) -> str:
        """Stable across attempts and restarts, and short enough for Discord's 25-character nonce."""
        return f"parley-{self.id}"


def event_key(message: IncomingMessage) -> str:
    """What makes a delivery of this message the same as another: the platform's event id, else its message id.

    A message with neither (a malformed event) is keyed by a hash of where it was said, by whom and what: a
    redelivery of it is still dropped, and so is the same text from the same person in the same place until the
    inbox row is pruned, which only a message without ids can suffer.
    """
    key = message.event_id or message.message_id
    if key:
        return key
    said = json.dumps([message.workspace, message.channel, message.thread, message.user, message.text])
    return "content:" + hashlib.sha256(said.encode()).hexdigest()[:32]


def conversation_key(message: IncomingMessage) -> str:
    """Messages with the same key are answered one at a time, in arrival order."""
    conv = message.conversation
    return f"{message.platform}|{conv.channel}|{conv.thread}"


# Tool executions -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """One tool call as recorded: who asked, what was called with what, and how it ended."""

    tool: str
    args: dict[str, object]
    outcome: str
    observation: str
    duration_ms: float
    started_at: float
    run_id: str = ""
    channel: str = ""
    thread: str = ""
    user_id: str = ""
    truncated: bool = False


@dataclass(frozen=True)
class ToolStats:
    tool: str
    calls: int
    successes: int
    failures: int
    mean_ms: float
    p95_ms: float


# Approvals -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditEntry:
    at: float
    request_id: str
    action: str
    actor: str
    tool: str
    channel: str
    args_hash: str
    outcome: str
    detail: str


@dataclass(frozen=True)
class Grant:
    """An "allow always" for a tool in a channel."""

    tool: str
    channel: str
    granted_by: str
    granted_at: float


# Jobs ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One run of a scheduled job as recorded."""

    job: str
    slot: str
    state: str
    started_at: float
    finished_at: float | None
    detail: str
    error_id: str | None


# Replicas ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Replica:
    """One `parley run` process on the database: live while its heartbeat is fresh."""

    id: str
    host: str = ""
    pid: int = 0
    started_at: float = 0.0
    heartbeat_at: float = 0.0


@dataclass(frozen=True)
class Claim:
    """A replica's hold on a conversation: it alone answers the conversation's messages until `expires_at`.
    `epoch` grows with each new claim of the conversation and fences writes made under an older one."""

    conversation: str
    owner: str
    epoch: int
    expires_at: float


# Whole store -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowCounts:
    """What happened to the messages received in a time window, for the metrics summary."""

    # Reply status (or inbox state while unanswered) -> messages; undelivered ones are counted apart.
    by_status: dict[str, int] = field(default_factory=dict)
    undelivered: int = 0
    # Seconds from receipt to delivery, one per delivered message.
    latencies_s: list[float] = field(default_factory=list)
    model_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    # Tool -> (calls, failed calls), busiest first.
    tools: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Approval state -> requests created in the window.
    approvals: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PrunePolicy:
    """What the prune job deletes: everything older than its cutoff (epoch seconds). Chains above the mark of
    `keep_unexported_of` (a job's `last_id`) are kept, so chains not yet exported survive a failing export."""

    now: float
    fact_max_age_days: float
    turns_before: float
    chains_before: float
    inbox_before: float
    job_runs_before: float
    audit_before: float
    keep_unexported_of: str | None = None
    # Usage rows are the bill, kept longer than the chains they came from (a year of reports); 0 keeps them all.
    usage_before: float = 0.0


@dataclass(frozen=True)
class StorageStatus:
    """`parley db status`: which engine, where (password masked), schema version, and rows per table."""

    engine: str
    location: str
    schema_version: int
    latest_version: int
    rows: dict[str, int]


# Tables every engine holds, in an order that satisfies foreign keys (copy writes them in this order).
TABLES = (
    "conversations",
    "turns",
    "facts",
    "working_memory",
    "chains",
    "chain_steps",
    "chain_attachments",
    "tool_executions",
    "inbox",
    "approvals",
    "approval_audit",
    "approval_grants",
    "job_runs",
    "job_state",
    "channel_settings",
    "setting_changes",
    "usage",
)


@dataclass(frozen=True)
class SettingChange:
    """One change of a channel setting, as the append-only audit keeps it: who, when, the old and new value
    (None: not set at that scope)."""

    id: int
    scope: str
    key: str
    old: str | None
    new: str | None
    actor: str
    at: float


@dataclass(frozen=True)
class UsageRecord:
    """What one answer cost: its model calls and tokens, and the price where the model's is known (USD).
    `user` is `platform:user id`; `channel` is the conversation's memory key (`slack:T1/C2`)."""

    at: float
    platform: str
    channel: str
    user: str
    model: str
    calls: int
    input_tokens: int
    output_tokens: int
    cost: float | None = None
    chain_id: int | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True)
class UsageTotal:
    """Usage summed over a group (one user, channel or model; `key` "" for everything asked about). `cost` is
    None when no answer of the group had a known price."""

    key: str
    answers: int = 0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens
