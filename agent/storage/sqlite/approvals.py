"""Approval requests, decisions, grants and the audit on SQLite.

A decision is a compare-and-set: the update applies only to a pending request that has not expired, so of
two decisions at once exactly one wins. The audit table is append-only (triggers refuse updates/deletes).
Where a request's prompt was posted is kept with it, and whether that prompt shows the outcome yet: a prompt
left with buttons (its update failed, or its process died) is found by `open_prompts` and updated later.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from typing import Any

from agent.approvals.models import ApprovalRequest, ApprovalState, PromptLocation
from agent.storage.models import AuditEntry, Grant
from agent.storage.rows import (
    AUDIT_COLUMNS,
    GRANT_COLUMNS,
    NEW_REQUEST_COLUMNS,
    REQUEST_COLUMNS,
    audit_values,
    request_from,
    request_values,
)
from agent.storage.sqlite.database import Database, marks

AUDIT_INSERT = f"INSERT INTO approval_audit ({AUDIT_COLUMNS}) VALUES ({marks(AUDIT_COLUMNS)})"


def _audit(db: sqlite3.Connection, action: str, outcome: str, **about: Any) -> None:
    """One audit row, inside the caller's transaction (`about`: see `rows.audit_values`)."""
    db.execute(AUDIT_INSERT, audit_values(action, outcome, **about))


class SqliteApprovals:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, request: ApprovalRequest, *, owner: str = "") -> None:
        """Store a new pending request and audit it, in one transaction."""

        def write(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO approvals ({NEW_REQUEST_COLUMNS}) VALUES ({marks(NEW_REQUEST_COLUMNS)})",
                request_values(request),
            )
            _audit(db, "requested", "pending", request=request, actor=f"{request.platform}:{request.requester}")

        await self.db.write(write)

    async def shown(self, request_id: str, prompt: PromptLocation) -> None:
        """Record where the request's prompt was posted (whatever its state by now: a decision can land first)."""
        await self.db.write(
            lambda db: db.execute(
                "UPDATE approvals SET prompt_platform = ?, prompt_channel = ?, prompt_message = ? WHERE id = ?",
                (prompt.platform, prompt.channel, prompt.message, request_id),
            )
        )

    async def prompt_closed(self, request_id: str, *, now: float) -> None:
        """The prompt now shows the request's outcome and has no buttons left."""
        await self.db.write(
            lambda db: db.execute("UPDATE approvals SET prompt_closed_at = ? WHERE id = ?", (now, request_id))
        )

    async def open_prompts(self) -> list[ApprovalRequest]:
        """Settled requests whose prompt still shows buttons: its update failed, or its process died first."""
        rows = await self.db.fetchall(
            f"SELECT {REQUEST_COLUMNS} FROM approvals WHERE prompt_message IS NOT NULL AND prompt_closed_at IS NULL "
            "AND state != 'pending' ORDER BY created_at"
        )
        return [request_from(r) for r in rows]

    async def get(self, request_id: str) -> ApprovalRequest | None:
        row = await self.db.fetchone(f"SELECT {REQUEST_COLUMNS} FROM approvals WHERE id = ?", (request_id,))
        return request_from(row) if row else None

    async def settle(
        self, request: ApprovalRequest, state: ApprovalState, *, actor: str, now: float, reason: str = ""
    ) -> ApprovalRequest | None:
        """Compare-and-set: move a pending, unexpired request to `state`. None when it was no longer pending
        (another decision won, or it expired); the attempt is audited either way."""
        # Expiry is decided by the deadline, whatever the clock says when it is written down.
        expiring = state is ApprovalState.EXPIRED

        def write(db: sqlite3.Connection) -> ApprovalRequest | None:
            row = db.execute(
                "UPDATE approvals SET state = ?, decided_by = ?, decided_at = ?, reason = ? "
                f"WHERE id = ? AND state = 'pending' AND (? OR expires_at > ?) RETURNING {REQUEST_COLUMNS}",
                (state.value, actor, now, reason, request.id, expiring, now),
            ).fetchone()
            settled = request_from(row) if row else None
            outcome = state.value if settled else "refused"
            detail = reason if settled else "already decided or expired"
            _audit(db, state.value, outcome, request=request, actor=actor, detail=detail)
            return settled

        return await self.db.write(write)

    async def refuse(self, request_id: str, *, actor: str, reason: str, request: ApprovalRequest | None) -> None:
        """Audit a decision that was not allowed to count (unknown id, wrong person, wrong arguments)."""
        await self.db.write(
            lambda db: _audit(
                db, "decision_refused", "refused", request=request, request_id=request_id, actor=actor, detail=reason
            )
        )

    async def note(self, action: str, outcome: str, *, request: ApprovalRequest | None = None, **fields: str) -> None:
        """Audit an event that is not a request or a decision: a policy denial, a grant used, a revocation."""
        await self.db.write(lambda db: _audit(db, action, outcome, request=request, **fields))

    async def expire_pending(
        self, reason: str, *, now: float, keep_owners: Collection[str] = ()
    ) -> list[ApprovalRequest]:
        """Mark every pending request expired (on start-up, a previous process's requests can get no answer);
        return them as expired. One process holds the file, so every pending request is an earlier process's:
        there is no owner to keep."""

        def write(db: sqlite3.Connection) -> list[ApprovalRequest]:
            rows = db.execute(
                "UPDATE approvals SET state = 'expired', decided_at = ?, reason = ? WHERE state = 'pending' "
                f"RETURNING {REQUEST_COLUMNS}",
                (now, reason),
            ).fetchall()
            expired = [request_from(row) for row in rows]
            for request in expired:
                _audit(db, "expired", "expired", request=request, actor="parley", detail=reason)
            return expired

        return await self.db.write(write)

    @asynccontextmanager
    async def watch(self, settled: Callable[[str], None]) -> AsyncIterator[None]:
        """Decisions reach the waiting run in this same process (the broker's future): nothing to watch."""
        yield

    async def grant(
        self, tool: str, channel: str, granted_by: str, *, now: float, request: ApprovalRequest | None = None
    ) -> None:
        def write(db: sqlite3.Connection) -> None:
            db.execute(
                f"INSERT INTO approval_grants ({GRANT_COLUMNS}) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tool, channel) DO UPDATE SET granted_by = excluded.granted_by, "
                "granted_at = excluded.granted_at",
                (tool, channel, granted_by, now),
            )
            _audit(db, "granted_always", "granted", request=request, actor=granted_by, tool=tool, channel=channel)

        await self.db.write(write)

    async def revoke(self, tool: str, channel: str, actor: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            gone = db.execute("DELETE FROM approval_grants WHERE tool = ? AND channel = ?", (tool, channel)).rowcount
            _audit(db, "revoked", "revoked" if gone else "not_found", actor=actor, tool=tool, channel=channel)
            return bool(gone)

        return await self.db.write(write)

    async def granted(self, tool: str, channel: str) -> Grant | None:
        row = await self.db.fetchone(
            f"SELECT {GRANT_COLUMNS} FROM approval_grants WHERE tool = ? AND channel = ?",
            (tool, channel),
        )
        return Grant(*row) if row else None

    async def grants(self) -> list[Grant]:
        rows = await self.db.fetchall(f"SELECT {GRANT_COLUMNS} FROM approval_grants ORDER BY channel, tool")
        return [Grant(*r) for r in rows]

    async def pending(self) -> list[ApprovalRequest]:
        rows = await self.db.fetchall(
            f"SELECT {REQUEST_COLUMNS} FROM approvals WHERE state = 'pending' ORDER BY created_at"
        )
        return [request_from(r) for r in rows]

    async def audit(self, since: float = 0.0) -> list[AuditEntry]:
        rows = await self.db.fetchall(
            f"SELECT {AUDIT_COLUMNS} FROM approval_audit WHERE at >= ? ORDER BY id",
            (since,),
        )
        return [AuditEntry(*r) for r in rows]
