"""Schema migrations: step N takes a database from `PRAGMA user_version` N to N+1.

Steps are append-only: never edit a released step, add a new one. Later issues add their tables here.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: conversations and their turns.
    """
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        thread TEXT NOT NULL DEFAULT '',
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        UNIQUE (channel, thread)
    );
    CREATE TABLE turns (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
        channel TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
        user_id TEXT NOT NULL DEFAULT '',
        text TEXT NOT NULL,
        chain_id INTEGER,
        created_at REAL NOT NULL
    );
    CREATE INDEX turns_by_channel ON turns (channel, id);
    CREATE INDEX turns_by_conversation ON turns (conversation_id, id);
    """,
    # 2: facts, with an external-content FTS5 index kept in sync by triggers. The index holds
    # `key_terms`/`value_terms`: each word prefixed by a token of the channel, so the channel is inside every
    # MATCH term and a query only walks that channel's postings, however common a word is elsewhere.
    """
    CREATE TABLE facts (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        confidence REAL NOT NULL DEFAULT 1.0,
        access_count INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        last_access REAL NOT NULL,
        key_terms TEXT NOT NULL,
        value_terms TEXT NOT NULL,
        UNIQUE (channel, key)
    );
    CREATE INDEX facts_by_last_access ON facts (last_access);
    CREATE VIRTUAL TABLE facts_fts USING fts5 (
        key_terms, value_terms,
        content = 'facts', content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER facts_after_insert AFTER INSERT ON facts BEGIN
        INSERT INTO facts_fts (rowid, key_terms, value_terms) VALUES (new.id, new.key_terms, new.value_terms);
    END;
    CREATE TRIGGER facts_after_delete AFTER DELETE ON facts BEGIN
        INSERT INTO facts_fts (facts_fts, rowid, key_terms, value_terms)
        VALUES ('delete', old.id, old.key_terms, old.value_terms);
    END;
    CREATE TRIGGER facts_after_update AFTER UPDATE OF key_terms, value_terms ON facts BEGIN
        INSERT INTO facts_fts (facts_fts, rowid, key_terms, value_terms)
        VALUES ('delete', old.id, old.key_terms, old.value_terms);
        INSERT INTO facts_fts (rowid, key_terms, value_terms) VALUES (new.id, new.key_terms, new.value_terms);
    END;
    """,
    # 3: working memory: small key/value notes per conversation.
    """
    CREATE TABLE working_memory (
        channel TEXT NOT NULL,
        thread TEXT NOT NULL DEFAULT '',
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY (channel, thread, key)
    );
    """,
    # 4: reasoning chains: one per answered message, with its ReAct steps.
    """
    CREATE TABLE chains (
        id INTEGER PRIMARY KEY,
        channel TEXT NOT NULL,
        thread TEXT NOT NULL DEFAULT '',
        user_id TEXT NOT NULL DEFAULT '',
        question TEXT NOT NULL,
        answer TEXT NOT NULL,
        status TEXT NOT NULL,
        model TEXT NOT NULL,
        error_id TEXT,
        started_at REAL NOT NULL,
        duration_ms REAL NOT NULL
    );
    CREATE INDEX chains_by_channel ON chains (channel, id);
    CREATE INDEX chains_by_start ON chains (started_at);
    CREATE TABLE chain_steps (
        chain_id INTEGER NOT NULL REFERENCES chains(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        thought TEXT NOT NULL,
        tool TEXT NOT NULL,
        args TEXT NOT NULL,
        observation TEXT NOT NULL,
        PRIMARY KEY (chain_id, idx)
    );
    """,
    # 5: tool executions (every call through the runner, for audit and statistics), and richer chains:
    # the run that ties a chain to its tool executions, the mode, token counts, and per-step timings.
    """
    CREATE TABLE tool_executions (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        thread TEXT NOT NULL DEFAULT '',
        user_id TEXT NOT NULL DEFAULT '',
        tool TEXT NOT NULL,
        args TEXT NOT NULL,
        outcome TEXT NOT NULL,
        observation TEXT NOT NULL,
        truncated INTEGER NOT NULL DEFAULT 0,
        duration_ms REAL NOT NULL,
        started_at REAL NOT NULL
    );
    CREATE INDEX tool_executions_by_tool ON tool_executions (tool, duration_ms);
    CREATE INDEX tool_executions_by_run ON tool_executions (run_id);
    CREATE INDEX tool_executions_by_channel ON tool_executions (channel);
    ALTER TABLE chains ADD COLUMN run_id TEXT NOT NULL DEFAULT '';
    ALTER TABLE chains ADD COLUMN mode TEXT NOT NULL DEFAULT 'react';
    ALTER TABLE chains ADD COLUMN model_calls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE chains ADD COLUMN input_tokens INTEGER;
    ALTER TABLE chains ADD COLUMN output_tokens INTEGER;
    ALTER TABLE chain_steps ADD COLUMN kind TEXT NOT NULL DEFAULT 'action';
    ALTER TABLE chain_steps ADD COLUMN part TEXT NOT NULL DEFAULT '';
    ALTER TABLE chain_steps ADD COLUMN outcome TEXT NOT NULL DEFAULT '';
    ALTER TABLE chain_steps ADD COLUMN model_ms REAL;
    ALTER TABLE chain_steps ADD COLUMN tool_ms REAL;
    ALTER TABLE chain_steps ADD COLUMN input_tokens INTEGER;
    ALTER TABLE chain_steps ADD COLUMN output_tokens INTEGER;
    """,
    # 6: the durable inbox. A message is stored before the platform is acknowledged (unique on platform and
    # event key, so a redelivery is dropped); its reply is stored with it, and `delivered_at` says it was sent.
    """
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY,
        platform TEXT NOT NULL,
        event_key TEXT NOT NULL,
        conversation TEXT NOT NULL,
        user_id TEXT NOT NULL DEFAULT '',
        message TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'received'
            CHECK (state IN ('received', 'processing', 'answered', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        reply TEXT,
        error_id TEXT,
        error TEXT,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        delivered_at REAL,
        UNIQUE (platform, event_key)
    );
    CREATE INDEX inbox_unfinished ON inbox (id) WHERE delivered_at IS NULL AND state != 'failed';
    CREATE INDEX inbox_by_received ON inbox (received_at);
    """,
    # 7: tool approvals. A request is bound to its tool and arguments (args_hash); a decision is a
    # compare-and-set on `state`. The audit is append-only (triggers refuse updates and deletes). Grants are
    # the "allow always" pairs of tool and channel.
    """
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        tool TEXT NOT NULL,
        args TEXT NOT NULL,
        args_hash TEXT NOT NULL,
        level TEXT NOT NULL CHECK (level IN ('confirm', 'approve')),
        platform TEXT NOT NULL,
        channel TEXT NOT NULL,
        thread TEXT NOT NULL DEFAULT '',
        requester TEXT NOT NULL,
        run_id TEXT NOT NULL DEFAULT '',
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'approved', 'denied', 'expired')),
        reason TEXT NOT NULL DEFAULT '',
        decided_by TEXT,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        decided_at REAL
    );
    CREATE INDEX approvals_pending ON approvals (expires_at) WHERE state = 'pending';
    CREATE TABLE approval_audit (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        request_id TEXT NOT NULL DEFAULT '',
        action TEXT NOT NULL,
        actor TEXT NOT NULL DEFAULT '',
        tool TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL DEFAULT '',
        args_hash TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX approval_audit_by_time ON approval_audit (at);
    CREATE TRIGGER approval_audit_no_update BEFORE UPDATE ON approval_audit
    BEGIN SELECT RAISE(ABORT, 'approval_audit is append-only'); END;
    CREATE TRIGGER approval_audit_no_delete BEFORE DELETE ON approval_audit
    BEGIN SELECT RAISE(ABORT, 'approval_audit is append-only'); END;
    CREATE TABLE approval_grants (
        tool TEXT NOT NULL,
        channel TEXT NOT NULL,
        granted_by TEXT NOT NULL,
        granted_at REAL NOT NULL,
        PRIMARY KEY (tool, channel)
    );
    """,
    # 8: scheduled jobs. A run slot is unique per job, so a slot runs once even across a restart; `job_state`
    # holds a job's own marks (the chain export's high-water mark). The approval audit stays append-only,
    # except that the prune job may delete rows older than the cutoff it writes to `audit_retention` in the
    # same transaction.
    """
    CREATE TABLE job_runs (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        slot TEXT NOT NULL,
        state TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'ok', 'failed', 'interrupted')),
        started_at REAL NOT NULL,
        finished_at REAL,
        detail TEXT NOT NULL DEFAULT '',
        error_id TEXT,
        UNIQUE (job, slot)
    );
    CREATE INDEX job_runs_by_job ON job_runs (job, id);
    CREATE TABLE job_state (
        job TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (job, key)
    );
    CREATE TABLE audit_retention (before REAL NOT NULL);
    DROP TRIGGER approval_audit_no_delete;
    CREATE TRIGGER approval_audit_no_delete BEFORE DELETE ON approval_audit
    WHEN old.at >= COALESCE((SELECT MAX(before) FROM audit_retention), 0)
    BEGIN SELECT RAISE(ABORT, 'approval_audit is append-only'); END;
    CREATE INDEX inbox_finished ON inbox (updated_at) WHERE delivered_at IS NOT NULL OR state = 'failed';
    CREATE INDEX turns_by_time ON turns (created_at);
    CREATE INDEX tool_executions_by_time ON tool_executions (started_at);
    """,
    # 9: where each approval prompt was posted (platform, channel, message ts or id), so the process that
    # settles a request, or the next one after a restart, can take the buttons off it. `prompt_closed_at` says
    # the prompt shows the outcome; a settled request with a prompt still open is updated at the next start.
    """
    ALTER TABLE approvals ADD COLUMN prompt_platform TEXT;
    ALTER TABLE approvals ADD COLUMN prompt_channel TEXT;
    ALTER TABLE approvals ADD COLUMN prompt_message TEXT;
    ALTER TABLE approvals ADD COLUMN prompt_closed_at REAL;
    CREATE INDEX approvals_open_prompts ON approvals (created_at)
    WHERE prompt_message IS NOT NULL AND prompt_closed_at IS NULL;
    """,
    # 10: the files of each chain: shared with its question (`in`) or posted with its reply (`out`), by name,
    # media type, size and SHA-256, with what became of each (used, cut, skipped and why). Never the content.
    """
    CREATE TABLE chain_attachments (
        chain_id INTEGER NOT NULL REFERENCES chains(id) ON DELETE CASCADE,
        idx INTEGER NOT NULL,
        direction TEXT NOT NULL DEFAULT 'in' CHECK (direction IN ('in', 'out')),
        name TEXT NOT NULL,
        media_type TEXT NOT NULL DEFAULT '',
        size INTEGER,
        sha256 TEXT NOT NULL DEFAULT '',
        outcome TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (chain_id, idx)
    );
    """,
    # 11: channel settings per scope (thread, channel, workspace) with their append-only audit of changes
    # (pruned like the approval audit, through `audit_retention`); model usage per answer for budgets and
    # reports, kept apart from the chains (no foreign key: a chain is pruned or forgotten long before the bill
    # is); and the platform message a reply is being streamed into, so a restart finishes it.
    """
    CREATE TABLE channel_settings (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated_by TEXT NOT NULL DEFAULT '',
        updated_at REAL NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE TABLE setting_changes (
        id INTEGER PRIMARY KEY,
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        old TEXT,
        new TEXT,
        actor TEXT NOT NULL DEFAULT '',
        at REAL NOT NULL
    );
    CREATE INDEX setting_changes_by_scope ON setting_changes (scope, id);
    CREATE INDEX setting_changes_by_time ON setting_changes (at);
    CREATE TRIGGER setting_changes_no_update BEFORE UPDATE ON setting_changes
    BEGIN SELECT RAISE(ABORT, 'setting_changes is append-only'); END;
    CREATE TRIGGER setting_changes_no_delete BEFORE DELETE ON setting_changes
    WHEN old.at >= COALESCE((SELECT MAX(before) FROM audit_retention), 0)
    BEGIN SELECT RAISE(ABORT, 'setting_changes is append-only'); END;
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        at REAL NOT NULL,
        platform TEXT NOT NULL DEFAULT '',
        channel TEXT NOT NULL,
        user_id TEXT NOT NULL,
        model TEXT NOT NULL,
        calls INTEGER NOT NULL DEFAULT 0,
        input_tokens INTEGER NOT NULL DEFAULT 0,
        output_tokens INTEGER NOT NULL DEFAULT 0,
        cost REAL,
        chain_id INTEGER
    );
    CREATE INDEX usage_by_time ON usage (at);
    CREATE INDEX usage_by_user ON usage (user_id, at);
    CREATE INDEX usage_by_channel ON usage (channel, at);
    ALTER TABLE inbox ADD COLUMN stream TEXT;
    """,
)

LATEST_VERSION = len(MIGRATIONS)
