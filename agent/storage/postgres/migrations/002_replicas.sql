-- Several `parley run` processes on one database. Each registers itself as a replica and beats a heartbeat;
-- a replica whose heartbeat is older than the lease time is gone, and what it held is free.

CREATE TABLE replicas (
    id TEXT PRIMARY KEY,
    host TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    started_at DOUBLE PRECISION NOT NULL,
    heartbeat_at DOUBLE PRECISION NOT NULL
);

-- One claim per conversation: the replica answering it, until `expires_at` (renewed by its heartbeat). A new
-- claim takes the next `epoch`: writes carry the epoch they were made under (a fencing token), so a replica
-- that lost its claim cannot record or deliver for that conversation any more.
CREATE TABLE conversation_claims (
    conversation TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX conversation_claims_by_owner ON conversation_claims (owner);
CREATE INDEX inbox_unfinished_by_conversation ON inbox (conversation, id)
    WHERE delivered_at IS NULL AND state <> 'failed';

-- The per-user rate limit, counted in the database so every replica counts the same messages: one row per
-- key and fixed window, bumped by an atomic upsert.
CREATE TABLE rate_counts (
    key TEXT NOT NULL,
    window_start DOUBLE PRECISION NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (key, window_start)
);

-- Which replica asked for an approval and which runs a job: at start-up only what a gone replica left is
-- expired or marked interrupted, never a live replica's.
ALTER TABLE approvals ADD COLUMN owner TEXT NOT NULL DEFAULT '';
ALTER TABLE job_runs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
