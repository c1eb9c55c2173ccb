-- Model providers configured by admins; API keys encrypted at rest.

CREATE TABLE providers (
    id                  UUID PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    kind                TEXT NOT NULL CHECK (kind IN ('openai', 'anthropic')),
    base_url            TEXT NOT NULL,
    api_key_nonce       BYTEA,
    api_key_ciphertext  BYTEA,
    models              JSONB NOT NULL,
    created_by          UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
