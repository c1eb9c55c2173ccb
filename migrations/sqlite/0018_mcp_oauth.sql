-- Bridged HTTP servers that need OAuth: the flag, the connection's
-- credentials (rmcp's stored credentials, sealed with the server's key:
-- client id, access and refresh tokens), and the pending authorizations
-- (the PKCE verifier and the client, sealed, under the digest of the
-- state parameter), each bound to the user who started it.

ALTER TABLE mcp_servers ADD COLUMN oauth INTEGER NOT NULL DEFAULT 0;

CREATE TABLE mcp_oauth_credentials (
    server_id           BLOB PRIMARY KEY REFERENCES mcp_servers (id) ON DELETE CASCADE,
    connected_by        BLOB REFERENCES users (id) ON DELETE SET NULL,
    nonce               BLOB NOT NULL,
    ciphertext          BLOB NOT NULL,
    rejected_at         TEXT,
    updated_at          TEXT NOT NULL
);

CREATE TABLE mcp_oauth_states (
    id                  TEXT PRIMARY KEY,
    server_id           BLOB NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    user_id             BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    nonce               BLOB NOT NULL,
    ciphertext          BLOB NOT NULL,
    created_at          TEXT NOT NULL
);
CREATE INDEX idx_mcp_oauth_states_created ON mcp_oauth_states (created_at);
