-- Users, credentials, settings, audit log, agents and conversations (SQLite: UUIDs as 16-byte BLOBs, timestamps as RFC 3339 TEXT, JSON as TEXT).

CREATE TABLE users (
    id              BLOB PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    display_name    TEXT,
    password_hash   TEXT NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('admin', 'user', 'viewer')),
    is_active       INTEGER NOT NULL DEFAULT 1,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    last_login_at   TEXT
);
CREATE INDEX idx_users_created_at ON users (created_at DESC, id DESC);

CREATE TABLE refresh_tokens (
    id              BLOB PRIMARY KEY,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id       BLOB NOT NULL,
    token_hash      TEXT NOT NULL UNIQUE,
    created_at      TEXT NOT NULL,
    expires_at      TEXT NOT NULL,
    used_at         TEXT,
    revoked_at      TEXT
);
CREATE INDEX idx_refresh_tokens_family ON refresh_tokens (family_id);
CREATE INDEX idx_refresh_tokens_user ON refresh_tokens (user_id);

CREATE TABLE api_keys (
    id              BLOB PRIMARY KEY,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    prefix          TEXT NOT NULL,
    key_hash        TEXT NOT NULL UNIQUE,
    created_at      TEXT NOT NULL,
    expires_at      TEXT,
    last_used_at    TEXT
);
CREATE INDEX idx_api_keys_user ON api_keys (user_id, created_at DESC, id DESC);

CREATE TABLE settings (
    key             TEXT PRIMARY KEY,
    value           TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE audit_log (
    id              BLOB PRIMARY KEY,
    actor_id        BLOB REFERENCES users (id) ON DELETE SET NULL,
    action          TEXT NOT NULL,
    target_type     TEXT,
    target_id       BLOB,
    details         TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL
);
CREATE INDEX idx_audit_log_created_at ON audit_log (created_at DESC, id DESC);
CREATE INDEX idx_audit_log_action ON audit_log (action, created_at DESC);
CREATE INDEX idx_audit_log_actor ON audit_log (actor_id, created_at DESC);

CREATE TABLE agents (
    id              BLOB PRIMARY KEY,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name            TEXT NOT NULL,
    description     TEXT,
    instructions    TEXT NOT NULL DEFAULT '',
    model           TEXT NOT NULL,
    tools           TEXT NOT NULL DEFAULT '[]',
    config          TEXT NOT NULL DEFAULT '{}',
    metadata        TEXT NOT NULL DEFAULT '{}',
    version         INTEGER NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    deleted_at      TEXT
);
-- Names are unique per owner among live agents; a deleted agent frees its name.
CREATE UNIQUE INDEX uq_agents_owner_name ON agents (user_id, name) WHERE deleted_at IS NULL;
CREATE INDEX idx_agents_owner_created ON agents (user_id, created_at DESC, id DESC) WHERE deleted_at IS NULL;
CREATE INDEX idx_agents_created ON agents (created_at DESC, id DESC) WHERE deleted_at IS NULL;

CREATE TABLE agent_revisions (
    agent_id        BLOB NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    version         INTEGER NOT NULL,
    snapshot        TEXT NOT NULL,
    created_by      BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at      TEXT NOT NULL,
    PRIMARY KEY (agent_id, version)
);

CREATE TABLE conversations (
    id              BLOB PRIMARY KEY,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id        BLOB NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    title           TEXT,
    metadata        TEXT NOT NULL DEFAULT '{}',
    message_count   INTEGER NOT NULL DEFAULT 0,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);
CREATE INDEX idx_conversations_owner ON conversations (user_id, updated_at DESC, id DESC);
CREATE INDEX idx_conversations_agent ON conversations (agent_id, updated_at DESC, id DESC);
CREATE INDEX idx_conversations_updated ON conversations (updated_at DESC, id DESC);

CREATE TABLE messages (
    id              BLOB PRIMARY KEY,
    conversation_id BLOB NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             INTEGER NOT NULL,
    role            TEXT NOT NULL CHECK (role IN ('system', 'user', 'assistant', 'tool')),
    content         TEXT NOT NULL,
    metadata        TEXT NOT NULL DEFAULT '{}',
    created_at      TEXT NOT NULL,
    UNIQUE (conversation_id, seq)
);
