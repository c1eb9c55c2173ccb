-- External MCP servers bridged into the tool catalogue. Secrets never sit
-- here in plain text: stdio environment values may name a secret (resolved
-- at start), and HTTP headers and bearer tokens are stored encrypted.
-- `tools` keeps the last tool listing, so a lazily started server's tools
-- are in the catalogue before its first call.

CREATE TABLE mcp_servers (
    id                  BLOB PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    owner_id            BLOB REFERENCES users (id) ON DELETE CASCADE,
    transport           TEXT NOT NULL CHECK (transport IN ('stdio', 'http')),
    command             TEXT,
    args                TEXT NOT NULL,
    env                 TEXT NOT NULL,
    url                 TEXT,
    header_names        TEXT NOT NULL,
    secret_nonce        BLOB,
    secret_ciphertext   BLOB,
    start_mode          TEXT NOT NULL CHECK (start_mode IN ('lazy', 'boot')),
    expose              INTEGER NOT NULL,
    enabled             INTEGER NOT NULL,
    timeout_secs        INTEGER,
    tools               TEXT NOT NULL,
    max_result_bytes    INTEGER,
    created_by          BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
