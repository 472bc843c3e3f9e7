-- Parley's schema on PostgreSQL: the tables and columns of SQLite's schema version 9, in the same column
-- order, so `parley db copy` moves rows one to one. Ids are identities (a copy inserts them with OVERRIDING
-- SYSTEM VALUE), times are epoch seconds as DOUBLE PRECISION (SQLite's REAL), JSON stays TEXT.

CREATE TABLE conversations (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel TEXT NOT NULL,
    thread TEXT NOT NULL DEFAULT '',
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    UNIQUE (channel, thread)
);

CREATE TABLE turns (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id BIGINT NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    channel TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    user_id TEXT NOT NULL DEFAULT '',
    text TEXT NOT NULL,
    chain_id BIGINT,
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX turns_by_channel ON turns (channel, id);
CREATE INDEX turns_by_conversation ON turns (conversation_id, id);
CREATE INDEX turns_by_time ON turns (created_at);

-- Facts. `key_terms`/`value_terms` hold the words worth matching, each glued to a token of the channel
-- (agent.storage.terms.channel_terms, as on SQLite), and `tsv` holds them as lexemes (the `simple` parser
-- keeps a run of letters and digits whole), a key word (A) weighing above a value word (B) for ts_rank. A lexeme is then one channel's word: a query walks only that
-- channel's postings, however common the word is elsewhere (over 1M facts in 1,000 channels, a common word's
-- index scan took 0.3 ms this way and 14 ms with a (channel, tsvector) index through btree_gin).
CREATE TABLE facts (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    confidence DOUBLE PRECISION NOT NULL DEFAULT 1.0,
    access_count INTEGER NOT NULL DEFAULT 0,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    last_access DOUBLE PRECISION NOT NULL,
    key_terms TEXT NOT NULL,
    value_terms TEXT NOT NULL,
    tsv TSVECTOR GENERATED ALWAYS AS (
        setweight(to_tsvector('simple', key_terms), 'A') || setweight(to_tsvector('simple', value_terms), 'B')
    ) STORED,
    UNIQUE (channel, key)
);
CREATE INDEX facts_by_last_access ON facts (last_access);
-- Without fastupdate: facts are written a few times a conversation and read on every message, and a pending
-- list makes each read scan it too (the planner then prefers reading the whole channel: 10x slower).
CREATE INDEX facts_search ON facts USING gin (tsv) WITH (fastupdate = off);

CREATE TABLE working_memory (
    channel TEXT NOT NULL,
    thread TEXT NOT NULL DEFAULT '',
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (channel, thread, key)
);

CREATE TABLE chains (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel TEXT NOT NULL,
    thread TEXT NOT NULL DEFAULT '',
    user_id TEXT NOT NULL DEFAULT '',
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    error_id TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    run_id TEXT NOT NULL DEFAULT '',
    mode TEXT NOT NULL DEFAULT 'react',
    model_calls INTEGER NOT NULL DEFAULT 0,
    input_tokens BIGINT,
    output_tokens BIGINT
);
CREATE INDEX chains_by_channel ON chains (channel, id);
CREATE INDEX chains_by_start ON chains (started_at);

CREATE TABLE chain_steps (
    chain_id BIGINT NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    thought TEXT NOT NULL,
    tool TEXT NOT NULL,
    args TEXT NOT NULL,
    observation TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'action',
    part TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL DEFAULT '',
    model_ms DOUBLE PRECISION,
    tool_ms DOUBLE PRECISION,
    input_tokens BIGINT,
    output_tokens BIGINT,
    PRIMARY KEY (chain_id, idx)
);

CREATE TABLE tool_executions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL DEFAULT '',
    channel TEXT NOT NULL DEFAULT '',
    thread TEXT NOT NULL DEFAULT '',
    user_id TEXT NOT NULL DEFAULT '',
    tool TEXT NOT NULL,
    args TEXT NOT NULL,
    outcome TEXT NOT NULL,
    observation TEXT NOT NULL,
    truncated INTEGER NOT NULL DEFAULT 0,
    duration_ms DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX tool_executions_by_tool ON tool_executions (tool, duration_ms);
CREATE INDEX tool_executions_by_run ON tool_executions (run_id);
CREATE INDEX tool_executions_by_channel ON tool_executions (channel);
CREATE INDEX tool_executions_by_time ON tool_executions (started_at);

CREATE TABLE inbox (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    platform TEXT NOT NULL,
    event_key TEXT NOT NULL,
    conversation TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'received' CHECK (state IN ('received', 'processing', 'answered', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    reply TEXT,
    error_id TEXT,
    error TEXT,
    received_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    delivered_at DOUBLE PRECISION,
    UNIQUE (platform, event_key)
);
CREATE INDEX inbox_unfinished ON inbox (id) WHERE delivered_at IS NULL AND state <> 'failed';
CREATE INDEX inbox_by_received ON inbox (received_at);
CREATE INDEX inbox_finished ON inbox (updated_at) WHERE delivered_at IS NOT NULL OR state = 'failed';

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
    created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL,
    decided_at DOUBLE PRECISION,
    prompt_platform TEXT,
    prompt_channel TEXT,
    prompt_message TEXT,
    prompt_closed_at DOUBLE PRECISION
);
CREATE INDEX approvals_pending ON approvals (expires_at) WHERE state = 'pending';
CREATE INDEX approvals_open_prompts ON approvals (created_at)
    WHERE prompt_message IS NOT NULL AND prompt_closed_at IS NULL;

CREATE TABLE approval_grants (
    tool TEXT NOT NULL,
    channel TEXT NOT NULL,
    granted_by TEXT NOT NULL,
    granted_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tool, channel)
);

-- The audit is append-only, enforced here rather than trusted to the code: updates, truncation and deletes
-- are refused, except the prune's delete of rows older than the cutoff it writes to `audit_retention` in the
-- same transaction (and removes before committing, so no other transaction ever sees one).
CREATE TABLE approval_audit (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
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

CREATE TABLE audit_retention (before DOUBLE PRECISION NOT NULL);

CREATE FUNCTION approval_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < COALESCE((SELECT MAX(before) FROM audit_retention), 0) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'approval_audit is append-only';
END
$$;
CREATE TRIGGER approval_audit_no_update BEFORE UPDATE ON approval_audit
    FOR EACH ROW EXECUTE FUNCTION approval_audit_append_only();
CREATE TRIGGER approval_audit_no_delete BEFORE DELETE ON approval_audit
    FOR EACH ROW EXECUTE FUNCTION approval_audit_append_only();
CREATE TRIGGER approval_audit_no_truncate BEFORE TRUNCATE ON approval_audit
    FOR EACH STATEMENT EXECUTE FUNCTION approval_audit_append_only();

CREATE TABLE job_runs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job TEXT NOT NULL,
    slot TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'ok', 'failed', 'interrupted')),
    started_at DOUBLE PRECISION NOT NULL,
    finished_at DOUBLE PRECISION,
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
