"""Approval requests, decisions, grants and the audit on PostgreSQL.

A decision is a compare-and-set: the update applies only to a pending request that has not expired, and
PostgreSQL re-checks that condition on a row another transaction just changed, so of two decisions at once
(in two replicas too) exactly one wins. The audit table is append-only: its triggers refuse updates and
deletes. Where a request's prompt was posted is kept with it, and whether that prompt shows the outcome yet.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from contextlib import AbstractAsyncContextManager
from typing import Any

from agent.approvals.models import ApprovalRequest, ApprovalState, PromptLocation
from agent.storage.models import AuditEntry, Grant
from agent.storage.postgres.database import Conn, Database, affected, marks
from agent.storage.postgres.notices import listening
from agent.storage.rows import (
    AUDIT_COLUMNS,
    GRANT_COLUMNS,
    NEW_REQUEST_COLUMNS,
    REQUEST_COLUMNS,
    audit_values,
    count,
    request_from,
    request_values,
)

# The channel on which a settled request's id is announced to every replica.
SETTLED = "parley_approval_settled"
AUDIT_INSERT = f"INSERT INTO approval_audit ({AUDIT_COLUMNS}) VALUES ({marks(AUDIT_COLUMNS)})"


async def _audit(conn: Conn, action: str, outcome: str, **about: Any) -> None:
    """One audit row, inside the caller's transaction (`about`: see `rows.audit_values`)."""
    await conn.execute(AUDIT_INSERT, *audit_values(action, outcome, **about))


class PostgresApprovals:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, request: ApprovalRequest, *, owner: str = "") -> None:
        """Store a new pending request and audit it, in one transaction."""
        async with self.db.transaction() as conn:
            await conn.execute(
                f"INSERT INTO approvals ({NEW_REQUEST_COLUMNS}, owner) "
                f"VALUES ({marks(NEW_REQUEST_COLUMNS)}, ${count(NEW_REQUEST_COLUMNS) + 1})",
                *request_values(request),
                owner,
            )
            await _audit(conn, "requested", "pending", request=request, actor=f"{request.platform}:{request.requester}")

    async def shown(self, request_id: str, prompt: PromptLocation) -> None:
        """Record where the request's prompt was posted (whatever its state by now: a decision can land first)."""
        await self.db.execute(
            "UPDATE approvals SET prompt_platform = $1, prompt_channel = $2, prompt_message = $3 WHERE id = $4",
            prompt.platform,
            prompt.channel,
            prompt.message,
            request_id,
        )

    async def prompt_closed(self, request_id: str, *, now: float) -> None:
        """The prompt now shows the request's outcome and has no buttons left."""
        await self.db.execute("UPDATE approvals SET prompt_closed_at = $1 WHERE id = $2", now, request_id)

    async def open_prompts(self) -> list[ApprovalRequest]:
        """Settled requests whose prompt still shows buttons: its update failed, or its process died first."""
        rows = await self.db.fetch(
            f"SELECT {REQUEST_COLUMNS} FROM approvals WHERE prompt_message IS NOT NULL AND prompt_closed_at IS NULL "
            "AND state <> 'pending' ORDER BY created_at"
        )
        return [request_from(r) for r in rows]

    async def get(self, request_id: str) -> ApprovalRequest | None:
        row = await self.db.fetchrow(f"SELECT {REQUEST_COLUMNS} FROM approvals WHERE id = $1", request_id)
        return request_from(row) if row else None

    async def settle(
        self, request: ApprovalRequest, state: ApprovalState, *, actor: str, now: float, reason: str = ""
    ) -> ApprovalRequest | None:
        """Compare-and-set: move a pending, unexpired request to `state`. None when it was no longer pending
        (another decision won, or it expired); the attempt is audited either way, in the same transaction."""
        # Expiry is decided by the deadline, whatever the clock says when it is written down.
        expiring = state is ApprovalState.EXPIRED
        async with self.db.transaction() as conn:
            row = await conn.fetchrow(
                "UPDATE approvals SET state = $1, decided_by = $2, decided_at = $3, reason = $4 "
                f"WHERE id = $5 AND state = 'pending' AND ($6 OR expires_at > $3) RETURNING {REQUEST_COLUMNS}",
                state.value,
                actor,
                now,
                reason,
                request.id,
                expiring,
            )
            settled = request_from(row) if row else None
            outcome = state.value if settled else "refused"
            detail = reason if settled else "already decided or expired"
            await _audit(conn, state.value, outcome, request=request, actor=actor, detail=detail)
            if settled is not None:  # sent at commit: the replica whose run waits re-reads the request
                await conn.execute("SELECT pg_notify($1, $2)", SETTLED, request.id)
        return settled

    def watch(self, settled: Callable[[str], None]) -> AbstractAsyncContextManager[None]:
        return listening(self.db.url, self.db.location, SETTLED, settled)

    async def refuse(self, request_id: str, *, actor: str, reason: str, request: ApprovalRequest | None) -> None:
        """Audit a decision that was not allowed to count (unknown id, wrong person, wrong arguments)."""
        async with self.db.transaction() as conn:
            await _audit(
                conn, "decision_refused", "refused", request=request, request_id=request_id, actor=actor, detail=reason
            )

    async def note(self, action: str, outcome: str, *, request: ApprovalRequest | None = None, **fields: str) -> None:
        """Audit an event that is not a request or a decision: a policy denial, a grant used, a revocation."""
        async with self.db.transaction() as conn:
            await _audit(conn, action, outcome, request=request, **fields)

    async def expire_pending(
        self, reason: str, *, now: float, keep_owners: Collection[str] = ()
    ) -> list[ApprovalRequest]:
        """Mark pending requests expired, except those of live replicas (`keep_owners`), whose runs still wait
        for them; return them as expired."""
        async with self.db.transaction() as conn:
            # In the order they were made, as SQLite returns them (UPDATE ... RETURNING has no order of its own).
            rows = await conn.fetch(
                "WITH expired AS (UPDATE approvals SET state = 'expired', decided_at = $1, reason = $2 "
                f"WHERE state = 'pending' AND NOT owner = ANY($3::text[]) RETURNING {REQUEST_COLUMNS}) "
                "SELECT * FROM expired ORDER BY created_at",
                now,
                reason,
                list(keep_owners),
            )
            expired = [request_from(row) for row in rows]
            for request in expired:
                await _audit(conn, "expired", "expired", request=request, actor="parley", detail=reason)
        return expired

    async def grant(
        self, tool: str, channel: str, granted_by: str, *, now: float, request: ApprovalRequest | None = None
    ) -> None:
        async with self.db.transaction() as conn:
            await conn.execute(
                f"INSERT INTO approval_grants ({GRANT_COLUMNS}) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (tool, channel) DO UPDATE SET granted_by = excluded.granted_by, "
                "granted_at = excluded.granted_at",
                tool,
                channel,
                granted_by,
                now,
            )
            await _audit(
                conn, "granted_always", "granted", request=request, actor=granted_by, tool=tool, channel=channel
            )

    async def revoke(self, tool: str, channel: str, actor: str) -> bool:
        async with self.db.transaction() as conn:
            gone = affected(
                await conn.execute("DELETE FROM approval_grants WHERE tool = $1 AND channel = $2", tool, channel)
            )
            await _audit(conn, "revoked", "revoked" if gone else "not_found", actor=actor, tool=tool, channel=channel)
        return bool(gone)

    async def granted(self, tool: str, channel: str) -> Grant | None:
        row = await self.db.fetchrow(
            f"SELECT {GRANT_COLUMNS} FROM approval_grants WHERE tool = $1 AND channel = $2", tool, channel
        )
        return Grant(*row) if row else None

    async def grants(self) -> list[Grant]:
        rows = await self.db.fetch(
            f'SELECT {GRANT_COLUMNS} FROM approval_grants ORDER BY channel COLLATE "C", tool COLLATE "C"'
        )
        return [Grant(*r) for r in rows]

    async def pending(self) -> list[ApprovalRequest]:
        rows = await self.db.fetch(
            f"SELECT {REQUEST_COLUMNS} FROM approvals WHERE state = 'pending' ORDER BY created_at"
        )
        return [request_from(r) for r in rows]

    async def audit(self, since: float = 0.0) -> list[AuditEntry]:
        rows = await self.db.fetch(
            f"SELECT {AUDIT_COLUMNS} FROM approval_audit WHERE at >= $1 ORDER BY id",
            since,
        )
        return [AuditEntry(*r) for r in rows]
