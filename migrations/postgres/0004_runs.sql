-- Runs: durable jobs of the agent loop, their tool calls and their events.

CREATE TABLE runs (
    id                  UUID PRIMARY KEY,
    conversation_id     UUID NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id             UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id            UUID NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    status              TEXT NOT NULL CHECK (status IN
                            ('queued', 'running', 'requires_action', 'completed', 'failed', 'cancelled')),
    input               JSONB,
    input_seq           BIGINT,
    limits              JSONB NOT NULL,
    provider            TEXT NOT NULL,
    model               TEXT NOT NULL,
    step_count          BIGINT NOT NULL DEFAULT 0,
    input_tokens        BIGINT NOT NULL DEFAULT 0,
    output_tokens       BIGINT NOT NULL DEFAULT 0,
    error               JSONB,
    cancel_requested    BOOLEAN NOT NULL DEFAULT FALSE,
    lease_owner         UUID,
    lease_until         BIGINT,
    attempts            BIGINT NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL,
    started_at          TIMESTAMPTZ,
    finished_at         TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_runs_queue ON runs (status, created_at, id);
CREATE INDEX idx_runs_conversation ON runs (conversation_id, created_at, id);
CREATE INDEX idx_runs_user ON runs (user_id, created_at);
CREATE INDEX idx_runs_lease ON runs (lease_owner) WHERE status = 'running';
-- At most one run per conversation holds the conversation at a time.
CREATE UNIQUE INDEX idx_runs_one_active ON runs (conversation_id)
    WHERE status IN ('running', 'requires_action');

CREATE TABLE run_tool_calls (
    run_id              UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    call_id             TEXT NOT NULL,
    step                BIGINT NOT NULL,
    position            BIGINT NOT NULL,
    name                TEXT NOT NULL,
    arguments           JSONB NOT NULL,
    arguments_error     TEXT,
    idempotent          BOOLEAN NOT NULL,
    status              TEXT NOT NULL CHECK (status IN
                            ('planned', 'pending_approval', 'approved', 'started', 'completed')),
    decision            JSONB,
    approval_expires_ms BIGINT,
    result              JSONB,
    is_error            BOOLEAN,
    created_at          TIMESTAMPTZ NOT NULL,
    finished_at         TIMESTAMPTZ,
    PRIMARY KEY (run_id, call_id)
);

CREATE TABLE run_events (
    run_id              UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq                 BIGINT NOT NULL,
    type                TEXT NOT NULL,
    data                JSONB NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- Per-user usage limits set by admins.
CREATE TABLE usage_limits (
    user_id             UUID PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    daily_tokens        BIGINT,
    monthly_tokens      BIGINT,
    daily_runs          BIGINT,
    updated_at          TIMESTAMPTZ NOT NULL
);
