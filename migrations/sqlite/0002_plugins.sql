-- Installed plugins and their grants, the plugins' key-value data, and named secrets.

CREATE TABLE plugins (
    name            TEXT PRIMARY KEY,
    version         TEXT NOT NULL,
    digest          TEXT NOT NULL,
    -- The component; NULL for a plugin bundled with the server.
    wasm            BLOB,
    bundled         INTEGER NOT NULL,
    source          TEXT NOT NULL,
    grants          TEXT NOT NULL,
    limits          TEXT,
    installed_by    BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL
);

CREATE TABLE plugin_kv (
    plugin          TEXT NOT NULL,
    user_id         BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key             TEXT NOT NULL,
    value           BLOB NOT NULL,
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (plugin, user_id, key)
);

CREATE TABLE secrets (
    name            TEXT PRIMARY KEY,
    nonce           BLOB NOT NULL,
    ciphertext      BLOB NOT NULL,
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    updated_by      BLOB REFERENCES users (id) ON DELETE SET NULL
);
