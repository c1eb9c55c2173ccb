-- Runs: durable jobs of the agent loop, their tool calls and their events.

CREATE TABLE runs (
    id                  BLOB PRIMARY KEY,
    conversation_id     BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id             BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id            BLOB NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    status              TEXT NOT NULL CHECK (status IN
                            ('queued', 'running', 'requires_action', 'completed', 'failed', 'cancelled')),
    input               TEXT,
    input_seq           INTEGER,
    limits              TEXT NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    step_count          INTEGER NOT NULL DEFAULT 0,
    input_tokens        INTEGER NOT NULL DEFAULT 0,
    output_tokens       INTEGER NOT NULL DEFAULT 0,
    error               TEXT,
    cancel_requested    BOOLEAN NOT NULL DEFAULT FALSE,
    lease_owner         BLOB,
    lease_until         INTEGER,
    attempts            INTEGER NOT NULL DEFAULT 0,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    finished_at         TEXT,
    updated_at          TEXT NOT NULL
);
CREATE INDEX idx_runs_queue ON runs (status, created_at, id);
CREATE INDEX idx_runs_conversation ON runs (conversation_id, created_at, id);
CREATE INDEX idx_runs_user ON runs (user_id, created_at);
CREATE INDEX idx_runs_lease ON runs (lease_owner) WHERE status = 'running';
-- At most one run per conversation holds the conversation at a time.
CREATE UNIQUE INDEX idx_runs_one_active ON runs (conversation_id)
    WHERE status IN ('running', 'requires_action');

CREATE TABLE run_tool_calls (
    run_id              BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    call_id             TEXT NOT NULL,
    step                INTEGER NOT NULL,
    position            INTEGER NOT NULL,
    name                TEXT NOT NULL,
    arguments           TEXT NOT NULL,
    arguments_error     TEXT,
    idempotent          BOOLEAN NOT NULL,
    status              TEXT NOT NULL CHECK (status IN
                            ('planned', 'pending_approval', 'approved', 'started', 'completed')),
    decision            TEXT,
    approval_expires_ms INTEGER,
    result              TEXT,
    is_error            BOOLEAN,
    created_at          TEXT NOT NULL,
    finished_at         TEXT,
    PRIMARY KEY (run_id, call_id)
);

CREATE TABLE run_events (
    run_id              BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq                 INTEGER NOT NULL,
    type                TEXT NOT NULL,
    data                TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Per-user usage limits set by admins.
CREATE TABLE usage_limits (
    user_id             BLOB PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    daily_tokens        INTEGER,
    monthly_tokens      INTEGER,
    daily_runs          INTEGER,
    updated_at          TEXT NOT NULL
);
