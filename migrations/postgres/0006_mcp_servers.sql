-- External MCP servers bridged into the tool catalogue. Secrets never sit
-- here in plain text: stdio environment values may name a secret (resolved
-- at start), and HTTP headers and bearer tokens are stored encrypted.
-- `tools` keeps the last tool listing, so a lazily started server's tools
-- are in the catalogue before its first call.

CREATE TABLE mcp_servers (
    id                  UUID PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    owner_id            UUID REFERENCES users (id) ON DELETE CASCADE,
    transport           TEXT NOT NULL CHECK (transport IN ('stdio', 'http')),
    command             TEXT,
    args                JSONB NOT NULL,
    env                 JSONB NOT NULL,
    url                 TEXT,
    header_names        JSONB NOT NULL,
    secret_nonce        BYTEA,
    secret_ciphertext   BYTEA,
    start_mode          TEXT NOT NULL CHECK (start_mode IN ('lazy', 'boot')),
    expose              BOOLEAN NOT NULL,
    enabled             BOOLEAN NOT NULL,
    timeout_secs        BIGINT,
    tools               JSONB NOT NULL,
    max_result_bytes    BIGINT,
    created_by          UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
