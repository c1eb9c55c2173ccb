-- Installed plugins and their grants, the plugins' key-value data, and named secrets.

CREATE TABLE plugins (
    name            TEXT PRIMARY KEY,
    version         TEXT NOT NULL,
    digest          TEXT NOT NULL,
    -- The component; NULL for a plugin bundled with the server.
    wasm            BYTEA,
    bundled         BOOLEAN NOT NULL,
    source          TEXT NOT NULL,
    grants          JSONB NOT NULL,
    limits          JSONB,
    installed_by    UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL
);

CREATE TABLE plugin_kv (
    plugin          TEXT NOT NULL,
    user_id         UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key             TEXT COLLATE "C" NOT NULL,
    value           BYTEA NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (plugin, user_id, key)
);

CREATE TABLE secrets (
    name            TEXT PRIMARY KEY,
    nonce           BYTEA NOT NULL,
    ciphertext      BYTEA NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    updated_at      TIMESTAMPTZ NOT NULL,
    updated_by      UUID REFERENCES users (id) ON DELETE SET NULL
);
