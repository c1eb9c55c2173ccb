-- Orchestra as the OAuth authorization server of its own `/mcp`: clients
-- (dynamically registered, or known by their metadata document's URL),
-- users' grants to them, pending authorization requests with their
-- single-use codes, and the tokens of each grant. Secrets are stored as
-- SHA-256 digests only.

CREATE TABLE oauth_clients (
    id                  TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('registered', 'metadata_document')),
    name                TEXT NOT NULL,
    client_uri          TEXT,
    redirect_uris       TEXT NOT NULL,
    scopes              TEXT,
    auth_method         TEXT NOT NULL CHECK (auth_method IN ('none', 'client_secret_post', 'client_secret_basic')),
    secret_hash         TEXT,
    created_at          TEXT NOT NULL,
    fetched_at          TEXT
);
CREATE INDEX idx_oauth_clients_created ON oauth_clients (created_at);

CREATE TABLE oauth_grants (
    id                  BLOB PRIMARY KEY,
    user_id             BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id           TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    scopes              TEXT NOT NULL,
    resource            TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    last_used_at        TEXT,
    revoked_at          TEXT
);
CREATE INDEX idx_oauth_grants_user ON oauth_grants (user_id, created_at);
CREATE INDEX idx_oauth_grants_client ON oauth_grants (client_id);

CREATE TABLE oauth_requests (
    id                  BLOB PRIMARY KEY,
    client_id           TEXT NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    redirect_uri        TEXT NOT NULL,
    scopes              TEXT NOT NULL,
    state               TEXT,
    code_challenge      TEXT NOT NULL,
    resource            TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    expires_at          TEXT NOT NULL,
    user_id             BLOB REFERENCES users (id) ON DELETE CASCADE,
    grant_id            BLOB REFERENCES oauth_grants (id) ON DELETE CASCADE,
    code_hash           TEXT UNIQUE,
    used_at             TEXT
);
CREATE INDEX idx_oauth_requests_expires ON oauth_requests (expires_at);

CREATE TABLE oauth_tokens (
    id                  BLOB PRIMARY KEY,
    grant_id            BLOB NOT NULL REFERENCES oauth_grants (id) ON DELETE CASCADE,
    kind                TEXT NOT NULL CHECK (kind IN ('access', 'refresh')),
    token_hash          TEXT NOT NULL UNIQUE,
    scopes              TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    expires_at          TEXT NOT NULL,
    used_at             TEXT,
    revoked_at          TEXT
);
CREATE INDEX idx_oauth_tokens_grant ON oauth_tokens (grant_id);
CREATE INDEX idx_oauth_tokens_expires ON oauth_tokens (expires_at);
