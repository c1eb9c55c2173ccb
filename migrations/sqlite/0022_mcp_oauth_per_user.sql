-- A server-wide server that signs in with OAuth may ask each user to
-- connect their own account (`oauth_per_user`): each user's tokens are kept
-- apart, sealed with the server's and the user's ids as associated data.

ALTER TABLE mcp_servers ADD COLUMN oauth_per_user INTEGER NOT NULL DEFAULT 0;

CREATE TABLE mcp_oauth_user_credentials (
    server_id           BLOB NOT NULL REFERENCES mcp_servers (id) ON DELETE CASCADE,
    user_id             BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    nonce               BLOB NOT NULL,
    ciphertext          BLOB NOT NULL,
    rejected_at         TEXT,
    updated_at          TEXT NOT NULL,
    PRIMARY KEY (server_id, user_id)
);
CREATE INDEX idx_mcp_oauth_user_credentials_user ON mcp_oauth_user_credentials (user_id);
