-- The files of each chain (SQLite's step 10): shared with its question (`in`) or posted with its reply (`out`),
-- by name, media type, size and SHA-256, with what became of each (used, cut, skipped and why). Never the content.

CREATE TABLE chain_attachments (
    chain_id BIGINT NOT NULL REFERENCES chains (id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    direction TEXT NOT NULL DEFAULT 'in' CHECK (direction IN ('in', 'out')),
    name TEXT NOT NULL,
    media_type TEXT NOT NULL DEFAULT '',
    size BIGINT,
    sha256 TEXT NOT NULL DEFAULT '',
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (chain_id, idx)
);
