-- Usage that outlives the runs it came from: the usage of a deleted
-- conversation's runs is settled here before they go, and a run of a user
-- with token or run limits is admitted by a row here (with the tokens it
-- reserves) in the same statement that checks the limits.
CREATE TABLE usage_ledger (
    run_id          BLOB PRIMARY KEY,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id        BLOB NOT NULL,
    provider        TEXT NOT NULL,
    model           TEXT NOT NULL,
    created_at      TEXT NOT NULL,
    reserved_tokens INTEGER NOT NULL DEFAULT 0,
    input_tokens    INTEGER NOT NULL DEFAULT 0,
    output_tokens   INTEGER NOT NULL DEFAULT 0,
    settled         INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX idx_usage_ledger_user ON usage_ledger (user_id, created_at);
CREATE INDEX idx_usage_ledger_created ON usage_ledger (created_at);
