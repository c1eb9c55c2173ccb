-- A server-wide server that signs in with OAuth may ask each user to
-- connect their own account (`oauth_per_user`): each user's tokens are kept
-- apart, sealed with the server's and the user's ids as associated data.

ALTER TABLE mcp_servers ADD COLUMN oauth_per_user BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE mcp_oauth_user_credentials (
    server_id           UUID NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    user_id             UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    nonce               BYTEA NOT NULL,
    ciphertext          BYTEA NOT NULL,
    rejected_at         TIMESTAMPTZ,
    updated_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (server_id, user_id)
);
CREATE INDEX idx_mcp_oauth_user_credentials_user ON mcp_oauth_user_credentials (user_id);
