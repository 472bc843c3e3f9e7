"""Models to rows and rows to models, for both engines: a column is added here once, not once per engine.

The engines differ in placeholders (`?` or `$1`), connections and dialect; what a row of each table holds, in
which order, and how JSON columns are encoded is the same, so it lives here. A `Row` is what a driver hands
back (`sqlite3.Row`, an asyncpg record): readable by position and by column name.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any, Protocol

from agent.approvals.models import ApprovalRequest, ApprovalState, PromptLocation
from agent.attachments.models import Attachment, AttachmentRecord, OutFile
from agent.messages import Conversation, IncomingMessage, Reply, Step
from agent.storage.models import (
    STORED_OBSERVATION_CHARS,
    ChainRecord,
    Execution,
    InboxEntry,
    SettingChange,
    State,
    UsageRecord,
    UsageTotal,
    WindowCounts,
    conversation_key,
    event_key,
)


class Row(Protocol):
    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def __len__(self) -> int: ...

    def keys(self) -> Any: ...


STEP_COLUMNS = (
    "thought",
    "tool",
    "args",
    "observation",
    "kind",
    "outcome",
    "part",
    "model_ms",
    "tool_ms",
    "input_tokens",
    "output_tokens",
)
# What a chain keeps of each file shared with its question or posted with its reply (never the content).
ATTACHMENT_COLUMNS = ("direction", "name", "media_type", "size", "sha256", "outcome", "detail")
CHAIN_COLUMNS = (
    "channel, thread, user_id, question, answer, status, model, error_id, started_at, duration_ms, run_id, mode, "
    "model_calls, input_tokens, output_tokens"
)
FACT_COLUMNS = "key, value, confidence, access_count, created_at, updated_at, last_access"
INBOX_COLUMNS = "id, message, state, attempts, reply, delivered_at, stream"
NEW_INBOX_COLUMNS = "platform, event_key, conversation, user_id, message, received_at, updated_at"
EXECUTION_COLUMNS = (
    "tool, args, outcome, observation, duration_ms, started_at, run_id, channel, thread, user_id, truncated"
)
# What a new request is written with; REQUEST_COLUMNS is what a request is read back with.
NEW_REQUEST_COLUMNS = (
    "id, tool, args, args_hash, level, platform, channel, thread, requester, created_at, expires_at, run_id, "
    "state, decided_by, reason"
)
REQUEST_COLUMNS = f"{NEW_REQUEST_COLUMNS}, prompt_platform, prompt_channel, prompt_message"
GRANT_COLUMNS = "tool, channel, granted_by, granted_at"
AUDIT_COLUMNS = "at, request_id, action, actor, tool, channel, args_hash, outcome, detail"
RUN_COLUMNS = "job, slot, state, started_at, finished_at, detail, error_id"
SETTING_CHANGE_COLUMNS = "id, scope, key, old, new, actor, at"
# The column `user_id` holds `UsageRecord.user` (`platform:id`): PostgreSQL reserves the word `user`.
USAGE_COLUMNS = "at, platform, channel, user_id, model, calls, input_tokens, output_tokens, cost, chain_id"
# One group's sums, read by `usage_total`: SUM(cost) stays NULL unless some row of the group had a price.
USAGE_SUMS = (
    "COUNT(*), COALESCE(SUM(calls), 0), COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), SUM(cost)"
)
# What `Usage.totals` groups by, and the column that holds it.
USAGE_GROUPS = {"user": "user_id", "channel": "channel", "model": "model"}


def count(columns: str | tuple[str, ...]) -> int:
    """How many columns a list names (for the engine's placeholders)."""
    return len(columns) if isinstance(columns, tuple) else len(columns.split(","))


# Chains --------------------------------------------------------------------------------------------------------


def chain_values(conv: Conversation, chain: ChainRecord) -> tuple[object, ...]:
    """A chain in the order of CHAIN_COLUMNS."""
    c = chain
    return (
        conv.channel,
        conv.thread,
        c.user_id,
        c.question,
        c.answer,
        c.status,
        c.model,
        c.error_id,
        c.started_at,
        c.duration_ms,
        c.run_id,
        c.mode,
        c.model_calls,
        c.input_tokens,
        c.output_tokens,
    )


def step_values(chain_id: int, index: int, step: Step) -> tuple[object, ...]:
    """A step as (chain_id, idx, *STEP_COLUMNS), its arguments as JSON."""
    row = asdict(step)
    row["args"] = json.dumps(step.args, default=str, ensure_ascii=False)
    return (chain_id, index, *(row[c] for c in STEP_COLUMNS))


def step_from(row: Row) -> Step:
    values = dict(zip(STEP_COLUMNS, row, strict=True))
    return Step(**{**values, "args": json.loads(values["args"])})


def attachment_values(chain_id: int, index: int, record: AttachmentRecord) -> tuple[object, ...]:
    """A file of a chain as (chain_id, idx, *ATTACHMENT_COLUMNS)."""
    return (chain_id, index, *(getattr(record, c) for c in ATTACHMENT_COLUMNS))


def attachment_from(row: Row) -> AttachmentRecord:
    values = dict(zip(ATTACHMENT_COLUMNS, row, strict=True))
    return AttachmentRecord(**{**values, "size": None if values["size"] is None else int(values["size"])})


# Inbox ---------------------------------------------------------------------------------------------------------


def message_json(message: IncomingMessage) -> str:
    """The message as the inbox keeps it: its attachments as descriptions, without their fetchers (the platform
    binds them again before the message is answered)."""
    data = {name: getattr(message, name) for name in IncomingMessage.__dataclass_fields__}
    data["attachments"] = [a.as_dict() for a in message.attachments]
    return json.dumps(data)


def message_from(text: str) -> IncomingMessage:
    data = json.loads(text)
    data["attachments"] = tuple(Attachment.from_dict(a) for a in data.get("attachments") or ())
    # JSON has no tuples; a row stored before roles were kept has none.
    data["roles"] = tuple(str(r) for r in data.get("roles") or ())
    return IncomingMessage(**data)


def inbox_values(message: IncomingMessage, now: float) -> tuple[object, ...]:
    """A new inbox row in the order of NEW_INBOX_COLUMNS."""
    return (
        message.platform,
        event_key(message),
        conversation_key(message),
        message.user,
        message_json(message),
        message.received_at,
        now,
    )


def window_counts(
    statuses: Iterable[Row],
    undelivered: int,
    latencies: Iterable[Row],
    model: Row,
    tools: Iterable[Row],
    approvals: Iterable[Row],
) -> WindowCounts:
    """The metrics summary's counts from the rows of its queries (the same on both engines)."""
    return WindowCounts(
        by_status={str(r[0]): int(r[1]) for r in statuses},
        undelivered=int(undelivered),
        latencies_s=[float(r[0]) for r in latencies],
        model_calls=int(model[0]),
        input_tokens=int(model[1]),
        output_tokens=int(model[2]),
        tools={str(r[0]): (int(r[1]), int(r[2])) for r in tools},
        approvals={str(r[0]): int(r[1]) for r in approvals},
    )


def reply_json(reply: Reply) -> str:
    """What the inbox keeps of a reply: enough to deliver it again after a restart, its files included (they are
    bounded by the reply's byte limit, `Limits.max_out_bytes`, and go when the inbox row is pruned)."""
    data: dict[str, object] = {
        "text": reply.text,
        "status": reply.status,
        "error_id": reply.error_id,
        "chain_id": reply.chain_id,
    }
    if reply.files:
        data["files"] = [
            {"name": f.name, "media_type": f.media_type, "content": base64.b64encode(f.content).decode()}
            for f in reply.files
        ]
    return json.dumps(data)


def reply_from(text: str) -> Reply:
    data = json.loads(text)
    files = tuple(
        OutFile(f["name"], base64.b64decode(f["content"]), f["media_type"]) for f in data.pop("files", None) or ()
    )
    return Reply(**data, files=files)


def inbox_entry(row: Row) -> InboxEntry:
    """An inbox row read with INBOX_COLUMNS."""
    reply = reply_from(row["reply"]) if row["reply"] else None
    return InboxEntry(
        id=int(row["id"]),
        message=message_from(row["message"]),
        state=State(row["state"]),
        attempts=int(row["attempts"]),
        reply=reply,
        delivered_at=row["delivered_at"],
        stream=row["stream"] or "",
    )


# Tool executions -----------------------------------------------------------------------------------------------


def execution_values(e: Execution) -> tuple[object, ...]:
    """An execution in the order of EXECUTION_COLUMNS; the observation cut to what the table keeps."""
    return (
        e.tool,
        json.dumps(e.args, default=str, ensure_ascii=False),
        e.outcome,
        e.observation[:STORED_OBSERVATION_CHARS],
        e.duration_ms,
        e.started_at,
        e.run_id,
        e.channel,
        e.thread,
        e.user_id,
        int(e.truncated),
    )


def execution_from(row: Row) -> Execution:
    """An execution read with EXECUTION_COLUMNS."""
    return Execution(
        tool=str(row[0]),
        args=json.loads(str(row[1])),
        outcome=str(row[2]),
        observation=str(row[3]),
        duration_ms=float(row[4]),
        started_at=float(row[5]),
        run_id=str(row[6]),
        channel=str(row[7]),
        thread=str(row[8]),
        user_id=str(row[9]),
        truncated=bool(row[10]),
    )


# Approvals -----------------------------------------------------------------------------------------------------


def request_values(request: ApprovalRequest) -> tuple[object, ...]:
    """A new request in the order of NEW_REQUEST_COLUMNS."""
    r = request
    return (
        r.id,
        r.tool,
        json.dumps(r.args, default=str),
        r.args_hash,
        r.level,
        r.platform,
        r.channel,
        r.thread,
        r.requester,
        r.created_at,
        r.expires_at,
        r.run_id,
        r.state.value,
        None,
        "",
    )


def request_from(row: Row) -> ApprovalRequest:
    """A request read with REQUEST_COLUMNS."""
    values = dict(zip(REQUEST_COLUMNS.split(", "), row, strict=True))
    values["args"] = json.loads(values["args"])
    values["state"] = ApprovalState(values["state"])
    shown = (values.pop("prompt_platform"), values.pop("prompt_channel"), values.pop("prompt_message"))
    values["prompt"] = PromptLocation(*shown) if shown[2] is not None else None
    return ApprovalRequest(**values)


def audit_values(
    action: str,
    outcome: str,
    *,
    request: ApprovalRequest | None = None,
    request_id: str = "",
    actor: str = "",
    detail: str = "",
    tool: str = "",
    channel: str = "",
) -> tuple[object, ...]:
    """An audit row in the order of AUDIT_COLUMNS, about `request` or else the ids given."""
    return (
        time.time(),
        request.id if request else request_id,
        action,
        actor,
        request.tool if request else tool,
        request.channel if request else channel,
        request.args_hash if request else "",
        outcome,
        detail,
    )


# Channel settings and usage ------------------------------------------------------------------------------------


def settings_by_scope(rows: Iterable[Row]) -> dict[str, dict[str, str]]:
    """(scope, key, value) rows as each scope's values by key."""
    found: dict[str, dict[str, str]] = {}
    for scope, key, value in rows:
        found.setdefault(str(scope), {})[str(key)] = str(value)
    return found


def setting_change_from(row: Row) -> SettingChange:
    """An audit row read with SETTING_CHANGE_COLUMNS."""
    return SettingChange(
        id=int(row[0]),
        scope=str(row[1]),
        key=str(row[2]),
        old=None if row[3] is None else str(row[3]),
        new=None if row[4] is None else str(row[4]),
        actor=str(row[5]),
        at=float(row[6]),
    )


def answer_usage(conv: Conversation, chain: ChainRecord, chain_id: int) -> UsageRecord | None:
    """The usage row an answered exchange writes with its chain; None when no model was called."""
    if chain.model_calls <= 0:
        return None
    return UsageRecord(
        at=chain.started_at,
        platform=chain.platform,
        # A thread-channel's usage counts in its parent channel, as a Slack thread's does in its channel.
        channel=conv.settings_channel,
        user=f"{chain.platform}:{chain.user_id}",
        model=chain.model,
        calls=chain.model_calls,
        input_tokens=chain.input_tokens or 0,
        output_tokens=chain.output_tokens or 0,
        cost=chain.cost,
        chain_id=chain_id,
    )


def usage_values(u: UsageRecord) -> tuple[object, ...]:
    """A usage row in the order of USAGE_COLUMNS."""
    return (
        u.at,
        u.platform,
        u.channel,
        u.user,
        u.model,
        u.calls,
        u.input_tokens,
        u.output_tokens,
        u.cost,
        u.chain_id,
    )


def usage_group(by: str) -> str:
    """The column `Usage.totals` groups by; ValueError for a grouping it does not know."""
    try:
        return USAGE_GROUPS[by]
    except KeyError:
        raise ValueError(f"usage is grouped by {', '.join(USAGE_GROUPS)}, not {by!r}") from None


def usage_total(key: str, sums: Sequence[Any]) -> UsageTotal:
    """A group's total from the values of USAGE_SUMS (PostgreSQL sums bigints as numerics: made ints here)."""
    answers, calls, input_tokens, output_tokens, cost = sums
    return UsageTotal(
        key=key,
        answers=int(answers),
        calls=int(calls),
        input_tokens=int(input_tokens),
        output_tokens=int(output_tokens),
        cost=None if cost is None else float(cost),
    )
