-- Usage that outlives the runs it came from: the usage of a deleted
-- conversation's runs is settled here before they go, and a run of a user
-- with token or run limits is admitted by a row here (with the tokens it
-- reserves) in the same transaction that checks the limits.
CREATE TABLE usage_ledger (
    run_id          UUID PRIMARY KEY,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id        UUID NOT NULL,
    provider        TEXT NOT NULL,
    model           TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    reserved_tokens BIGINT NOT NULL DEFAULT 0,
    input_tokens    BIGINT NOT NULL DEFAULT 0,
    output_tokens   BIGINT NOT NULL DEFAULT 0,
    settled         BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX idx_usage_ledger_user ON usage_ledger (user_id, created_at);
CREATE INDEX idx_usage_ledger_created ON usage_ledger (created_at);
