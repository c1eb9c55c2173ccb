-- Bridged HTTP servers that need OAuth: the flag, the connection's
-- credentials (rmcp's stored credentials, sealed with the server's key:
-- client id, access and refresh tokens), and the pending authorizations
-- (the PKCE verifier and the client, sealed, under the digest of the
-- state parameter), each bound to the user who started it.

ALTER TABLE mcp_servers ADD COLUMN oauth BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE mcp_oauth_credentials (
    server_id           UUID PRIMARY KEY REFERENCES mcp_servers (id) ON DELETE CASCADE,
    connected_by        UUID REFERENCES users (id) ON DELETE SET NULL,
    nonce               BYTEA NOT NULL,
    ciphertext          BYTEA NOT NULL,
    rejected_at         TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL
);

CREATE TABLE mcp_oauth_states (
    id                  TEXT PRIMARY KEY,
    server_id           UUID NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    user_id             UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    nonce               BYTEA NOT NULL,
    ciphertext          BYTEA NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_mcp_oauth_states_created ON mcp_oauth_states (created_at);
