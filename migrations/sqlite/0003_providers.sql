-- Model providers configured by admins; API keys encrypted at rest.

CREATE TABLE providers (
    id                  BLOB PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL CHECK (kind IN ('openai', 'anthropic')),
    base_url            TEXT NOT NULL,
    api_key_nonce       BLOB,
    api_key_ciphertext  BLOB,
    models              TEXT NOT NULL,
    created_by          BLOB REFERENCES users (id) ON DELETE SET NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
