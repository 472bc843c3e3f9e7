"""Approval requests, decisions, grants and the audit in SQLite; the only place that speaks SQL about them.

A decision is a compare-and-set: the update applies only to a pending request that has not expired, so of
two decisions at once exactly one wins. The audit table is append-only (triggers refuse updates/deletes).
Where a request's prompt was posted is kept with it, and whether that prompt shows the outcome yet: a prompt
left with buttons (its update failed, or its process died) is found by `open_prompts` and updated later.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from agent.approvals.models import ApprovalRequest, ApprovalState, PromptLocation
from agent.store import Store

# What a new request is written with; COLUMNS is what a request is read back with.
NEW_COLUMNS = (
    "id, tool, args, args_hash, level, platform, channel, thread, requester, created_at, expires_at, run_id, "
    "state, decided_by, reason"
)
COLUMNS = f"{NEW_COLUMNS}, prompt_platform, prompt_channel, prompt_message"


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


def _request(row: sqlite3.Row) -> ApprovalRequest:
    values = dict(row)
    values["args"] = json.loads(values["args"])
    values["state"] = ApprovalState(values["state"])
    shown = (values.pop("prompt_platform"), values.pop("prompt_channel"), values.pop("prompt_message"))
    values["prompt"] = PromptLocation(*shown) if shown[2] is not None else None
    return ApprovalRequest(**values)


def _audit(
    db: sqlite3.Connection,
    action: str,
    outcome: str,
    *,
    request: ApprovalRequest | None = None,
    request_id: str = "",
    actor: str = "",
    detail: str = "",
    tool: str = "",
    channel: str = "",
) -> None:
    db.execute(
        "INSERT INTO approval_audit (at, request_id, action, actor, tool, channel, args_hash, outcome, detail) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            time.time(),
            request.id if request else request_id,
            action,
            actor,
            request.tool if request else tool,
            request.channel if request else channel,
            request.args_hash if request else "",
            outcome,
            detail,
        ),
    )


class ApprovalStore:
    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    async def create(self, request: ApprovalRequest) -> None:
        """Store a new pending request and audit it, in one transaction."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO approvals ({NEW_COLUMNS}) VALUES ({', '.join('?' * 15)})",
                (
                    request.id,
                    request.tool,
                    json.dumps(request.args, default=str),
                    request.args_hash,
                    request.level,
                    request.platform,
                    request.channel,
                    request.thread,
                    request.requester,
                    request.created_at,
                    request.expires_at,
                    request.run_id,
                    request.state.value,
                    None,
                    "",
                ),
            )
            _audit(db, "requested", "pending", request=request, actor=f"{request.platform}:{request.requester}")

        await self.store.write(write)

    async def shown(self, request_id: str, prompt: PromptLocation) -> None:
        """Record where the request's prompt was posted (whatever its state by now: a decision can land first)."""
        await self.store.write(
            lambda db: db.execute(
                "UPDATE approvals SET prompt_platform = ?, prompt_channel = ?, prompt_message = ? WHERE id = ?",
                (prompt.platform, prompt.channel, prompt.message, request_id),
            )
        )

    async def prompt_closed(self, request_id: str) -> None:
        """The prompt now shows the request's outcome and has no buttons left."""
        now = self.clock()
        await self.store.write(
            lambda db: db.execute("UPDATE approvals SET prompt_closed_at = ? WHERE id = ?", (now, request_id))
        )

    async def open_prompts(self) -> list[ApprovalRequest]:
        """Settled requests whose prompt still shows buttons: its update failed, or its process died first."""
        rows = await self.store.fetchall(
            f"SELECT {COLUMNS} FROM approvals WHERE prompt_message IS NOT NULL AND prompt_closed_at IS NULL "
            "AND state != 'pending' ORDER BY created_at"
        )
        return [_request(r) for r in rows]

    async def get(self, request_id: str) -> ApprovalRequest | None:
        row = await self.store.fetchone(f"SELECT {COLUMNS} FROM approvals WHERE id = ?", (request_id,))
        return _request(row) if row else None

    async def settle(
        self, request: ApprovalRequest, state: ApprovalState, *, actor: str, reason: str = ""
    ) -> ApprovalRequest | None:
        """Compare-and-set: move a pending, unexpired request to `state`. None when it was no longer pending
        (another decision won, or it expired); the attempt is audited either way."""
        now = self.clock()
        # Expiry is decided by the deadline, whatever the clock says when it is written down.
        expiring = state is ApprovalState.EXPIRED

        def write(db: sqlite3.Connection) -> ApprovalRequest | None:
            row = db.execute(
                "UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, reason = ? "
                f"WHERE id = ? AND state = 'pending' AND (? OR expires_at > ?) RETURNING {COLUMNS}",
                (state.value, actor, now, reason, request.id, expiring, now),
            ).fetchone()
            settled = _request(row) if row else None
            outcome = state.value if settled else "refused"
            detail = reason if settled else "already decided or expired"
            _audit(db, state.value, outcome, request=request, actor=actor, detail=detail)
            return settled

        return await self.store.write(write)

    async def refuse(self, request_id: str, *, actor: str, reason: str, request: ApprovalRequest | None) -> None:
        """Audit a decision that was not allowed to count (unknown id, wrong person, wrong arguments)."""
        await self.store.write(
            lambda db: _audit(
                db, "decision_refused", "refused", request=request, request_id=request_id, actor=actor, detail=reason
            )
        )

    async def note(self, action: str, outcome: str, *, request: ApprovalRequest | None = None, **fields: str) -> None:
        """Audit an event that is not a request or a decision: a policy denial, a grant used, a revocation."""
        await self.store.write(lambda db: _audit(db, action, outcome, request=request, **fields))

    async def expire_pending(self, reason: str) -> list[ApprovalRequest]:
        """Mark every pending request expired (on start-up, a previous process's requests can get no answer);
        return them as expired."""
        now = self.clock()

        def write(db: sqlite3.Connection) -> list[ApprovalRequest]:
            rows = db.execute(
                "UPDATE approvals SET state = 'expired', decided_at = ?, reason = ? WHERE state = 'pending' "
                f"RETURNING {COLUMNS}",
                (now, reason),
            ).fetchall()
            expired = [_request(row) for row in rows]
            for request in expired:
                _audit(db, "expired", "expired", request=request, actor="parley", detail=reason)
            return expired

        return await self.store.write(write)

    async def grant(self, tool: str, channel: str, granted_by: str, request: ApprovalRequest | None = None) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO approval_grants (tool, channel, granted_by, granted_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tool, channel) DO UPDATE SET granted_by = excluded.granted_by, "
                "granted_at = excluded.granted_at",
                (tool, channel, granted_by, self.clock()),
            )
            _audit(db, "granted_always", "granted", request=request, actor=granted_by, tool=tool, channel=channel)

        await self.store.write(write)

    async def revoke(self, tool: str, channel: str, actor: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            gone = db.execute("DELETE FROM approval_grants WHERE tool = ? AND channel = ?", (tool, channel)).rowcount
            _audit(db, "revoked", "revoked" if gone else "not_found", actor=actor, tool=tool, channel=channel)
            return bool(gone)

        return await self.store.write(write)

    async def granted(self, tool: str, channel: str) -> Grant | None:
        row = await self.store.fetchone(
            "SELECT tool, channel, granted_by, granted_at FROM approval_grants WHERE tool = ? AND channel = ?",
            (tool, channel),
        )
        return Grant(*row) if row else None

    async def grants(self) -> list[Grant]:
        rows = await self.store.fetchall(
            "SELECT tool, channel, granted_by, granted_at FROM approval_grants ORDER BY channel, tool"
        )
        return [Grant(*r) for r in rows]

    async def pending(self) -> list[ApprovalRequest]:
        rows = await self.store.fetchall(f"SELECT {COLUMNS} FROM approvals WHERE state = 'pending' ORDER BY created_at")
        return [_request(r) for r in rows]

    async def audit(self, since: float = 0.0) -> list[AuditEntry]:
        rows = await self.store.fetchall(
            "SELECT at, request_id, action, actor, tool, channel, args_hash, outcome, detail FROM approval_audit "
            "WHERE at >= ? ORDER BY id",
            (since,),
        )
        return [AuditEntry(*r) for r in rows]
