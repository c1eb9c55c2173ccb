-- MCP server and provider names are unique per owner (server-wide ones
-- among themselves), not across users: a user's name says nothing of another
-- user's, and a name a user took for their own stays free for a
-- server-wide one. SQLite cannot drop a column's UNIQUE: the table is
-- rebuilt.
CREATE TABLE mcp_servers_new (
    id                  BLOB PRIMARY KEY,
    name                TEXT NOT NULL,
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
INSERT INTO mcp_servers_new (id, name, owner_id, transport, command, args, env, url, header_names,
    secret_nonce, secret_ciphertext, start_mode, expose, enabled, timeout_secs, tools,
    max_result_bytes, created_by, created_at, updated_at)
SELECT id, name, owner_id, transport, command, args, env, url, header_names,
    secret_nonce, secret_ciphertext, start_mode, expose, enabled, timeout_secs, tools,
    max_result_bytes, created_by, created_at, updated_at
FROM mcp_servers;
DROP TABLE mcp_servers;
ALTER TABLE mcp_servers_new RENAME TO mcp_servers;
CREATE UNIQUE INDEX idx_mcp_servers_shared_name ON mcp_servers (name) WHERE owner_id IS NULL;
CREATE UNIQUE INDEX idx_mcp_servers_owner_name ON mcp_servers (owner_id, name) WHERE owner_id IS NOT NULL;

CREATE TABLE providers_new (
    id                  BLOB PRIMARY KEY,
    name                TEXT NOT NULL,
    kind                TEXT NOT NULL CHECK (kind IN ('openai', 'anthropic')),
    base_url            TEXT NOT NULL,
    api_key_nonce       BLOB,
    api_key_ciphertext  BLOB,
    models              TEXT NOT NULL,
    created_by          BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL,
    owner_id            BLOB REFERENCES users (id) ON DELETE CASCADE
);
INSERT INTO providers_new (id, name, kind, base_url, api_key_nonce, api_key_ciphertext, models,
    created_by, created_at, updated_at, owner_id)
SELECT id, name, kind, base_url, api_key_nonce, api_key_ciphertext, models,
    created_by, created_at, updated_at, owner_id
FROM providers;
DROP TABLE providers;
ALTER TABLE providers_new RENAME TO providers;
CREATE UNIQUE INDEX idx_providers_shared_name ON providers (name) WHERE owner_id IS NULL;
CREATE UNIQUE INDEX idx_providers_owner_name ON providers (owner_id, name) WHERE owner_id IS NOT NULL;
