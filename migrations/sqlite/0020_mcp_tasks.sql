-- Tasks of /mcp (protocol revision 2025-11-25): a client starts an agent
-- tool as a task, leaves, and fetches the result later. A task is a handle
-- on the durable run, bound to the user and to the credential's context
-- (an OAuth client sees only its own tasks), kept until its ttl lapses.

CREATE TABLE mcp_tasks (
    id                  TEXT PRIMARY KEY,
    user_id             BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    context             TEXT NOT NULL,
    run_id              BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    conversation_id     BLOB NOT NULL,
    tool                TEXT NOT NULL,
    ttl_ms              INTEGER NOT NULL,
    expires_ms          INTEGER NOT NULL,
    created_at          TEXT NOT NULL
);
CREATE INDEX idx_mcp_tasks_owner ON mcp_tasks (user_id, context, created_at);
CREATE INDEX idx_mcp_tasks_expires ON mcp_tasks (expires_ms);
