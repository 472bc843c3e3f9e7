-- SQLite's step 11. Channel settings per scope (thread, channel, workspace), with an append-only audit of every
-- change (pruned like the approval audit, through `audit_retention`); model usage per answer, for budgets and
-- reports, kept apart from the chains (no foreign key: a chain is pruned or forgotten long before the bill is);
-- and the platform message a reply is being streamed into, so a restarted process finishes it.

CREATE TABLE channel_settings (
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    updated_by TEXT NOT NULL DEFAULT '',
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (scope, key)
);

CREATE TABLE setting_changes (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    scope TEXT NOT NULL,
    key TEXT NOT NULL,
    old TEXT,
    new TEXT,
    actor TEXT NOT NULL DEFAULT '',
    at DOUBLE PRECISION NOT NULL
);
CREATE INDEX setting_changes_by_scope ON setting_changes (scope, id);
CREATE INDEX setting_changes_by_time ON setting_changes (at);

CREATE FUNCTION setting_changes_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.at < COALESCE((SELECT MAX(before) FROM audit_retention), 0) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'setting_changes is append-only';
END
$$;
CREATE TRIGGER setting_changes_no_update BEFORE UPDATE ON setting_changes
    FOR EACH ROW EXECUTE FUNCTION setting_changes_append_only();
CREATE TRIGGER setting_changes_no_delete BEFORE DELETE ON setting_changes
    FOR EACH ROW EXECUTE FUNCTION setting_changes_append_only();
CREATE TRIGGER setting_changes_no_truncate BEFORE TRUNCATE ON setting_changes
    FOR EACH STATEMENT EXECUTE FUNCTION setting_changes_append_only();

-- `user_id` is `platform:user id` (a column named `user` would need quoting everywhere: PostgreSQL reserves it).
CREATE TABLE usage (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    platform TEXT NOT NULL DEFAULT '',
    channel TEXT NOT NULL,
    user_id TEXT NOT NULL,
    model TEXT NOT NULL,
    calls INTEGER NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cost DOUBLE PRECISION,
    chain_id BIGINT
);
CREATE INDEX usage_by_time ON usage (at);
CREATE INDEX usage_by_user ON usage (user_id, at);
CREATE INDEX usage_by_channel ON usage (channel, at);

ALTER TABLE inbox ADD COLUMN stream TEXT;
