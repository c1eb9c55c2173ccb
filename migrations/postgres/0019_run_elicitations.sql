-- Questions a bridged MCP server asks a run's user in the middle of a tool
-- call (elicitation/create). The call stays open on the worker while the
-- question is pending; the answer is stored here and the worker, told by a
-- notification, passes it back to the server.

CREATE TABLE run_elicitations (
    id                  UUID PRIMARY KEY,
    run_id              UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    call_id             TEXT NOT NULL,
    server              TEXT NOT NULL,
    mode                TEXT NOT NULL CHECK (mode IN ('form', 'url')),
    message             TEXT NOT NULL,
    requested_schema    JSONB,
    url                 TEXT,
    status              TEXT NOT NULL CHECK (status IN
                            ('pending', 'accept', 'decline', 'cancel', 'expired', 'withdrawn')),
    content             JSONB,
    answered_by         UUID REFERENCES users (id) ON DELETE SET NULL,
    expires_ms          BIGINT NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    answered_at         TIMESTAMPTZ
);
CREATE INDEX idx_run_elicitations_run ON run_elicitations (run_id, status);
