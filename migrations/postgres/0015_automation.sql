-- Agents that act on their own: schedules and their firings, inbound
-- triggers and their deliveries, outbound webhook subscriptions and their
-- delivery queue. Times that nodes compare to pick work are epoch
-- milliseconds (BIGINT), as the runs' leases are.

CREATE TABLE schedules (
    id                  UUID PRIMARY KEY,
    owner_id            UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id            UUID NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    message             TEXT NOT NULL,
    timing              JSONB NOT NULL,
    conversation_id     UUID REFERENCES conversations (id) ON DELETE SET NULL,
    fixed_conversation  BOOLEAN NOT NULL,
    overlap             TEXT NOT NULL CHECK (overlap IN ('skip', 'queue', 'cancel')),
    catch_up            TEXT NOT NULL CHECK (catch_up IN ('once', 'skip')),
    state               TEXT NOT NULL CHECK (state IN ('active', 'paused', 'finished', 'stopped')),
    state_reason        TEXT,
    next_fire_ms        BIGINT,
    lease_owner         UUID,
    lease_until         BIGINT,
    last_fired_at       TIMESTAMPTZ,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_schedules_owner ON schedules (owner_id, created_at, id);
CREATE INDEX idx_schedules_due ON schedules (next_fire_ms) WHERE state = 'active';

-- One row per occurrence: the unique key is what makes a firing happen once
-- however many nodes see it due.
CREATE TABLE schedule_firings (
    id                  UUID PRIMARY KEY,
    schedule_id         UUID NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    due_ms              BIGINT NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'started', 'skipped', 'failed')),
    reason              TEXT,
    missed              BIGINT NOT NULL DEFAULT 0,
    run_id              UUID,
    conversation_id     UUID,
    lease_owner         UUID,
    lease_until         BIGINT,
    created_at          TIMESTAMPTZ NOT NULL,
    started_at          TIMESTAMPTZ,
    UNIQUE (schedule_id, due_ms)
);
CREATE INDEX idx_schedule_firings_pending ON schedule_firings (due_ms) WHERE status = 'pending';

CREATE TABLE triggers (
    id                  UUID PRIMARY KEY,
    owner_id            UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id            UUID NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    token_hash          TEXT NOT NULL,
    template            TEXT,
    signature           TEXT NOT NULL CHECK (signature IN ('none', 'github', 'standard')),
    secret_nonce        BYTEA,
    secret_ciphertext   BYTEA,
    rate_per_minute     BIGINT NOT NULL,
    conversation_id     UUID REFERENCES conversations (id) ON DELETE SET NULL,
    enabled             BOOLEAN NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_triggers_owner ON triggers (owner_id, created_at, id);

CREATE TABLE trigger_deliveries (
    id                  UUID PRIMARY KEY,
    trigger_id          UUID NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    idempotency_key     TEXT,
    run_id              UUID NOT NULL,
    conversation_id     UUID NOT NULL,
    received_ms         BIGINT NOT NULL
);
CREATE UNIQUE INDEX idx_trigger_deliveries_key ON trigger_deliveries (trigger_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX idx_trigger_deliveries_recent ON trigger_deliveries (trigger_id, received_ms);

-- Subscriptions of a user (owner_id) or server-wide (owner_id NULL, admins).
CREATE TABLE webhook_subscriptions (
    id                  UUID PRIMARY KEY,
    owner_id            UUID REFERENCES users (id) ON DELETE CASCADE,
    url                 TEXT NOT NULL,
    description         TEXT,
    events              JSONB NOT NULL,
    secret_nonce        BYTEA NOT NULL,
    secret_ciphertext   BYTEA NOT NULL,
    old_secret_nonce    BYTEA,
    old_secret_ciphertext BYTEA,
    old_secret_until_ms BIGINT,
    enabled             BOOLEAN NOT NULL,
    disabled_reason     TEXT,
    failures            BIGINT NOT NULL DEFAULT 0,
    created_at          TIMESTAMPTZ NOT NULL,
    updated_at          TIMESTAMPTZ NOT NULL
);
CREATE INDEX idx_webhook_subscriptions_owner ON webhook_subscriptions (owner_id, created_at, id);

-- The delivery queue and log: one row per event and subscription (the
-- unique key keeps an event from being queued twice), claimed by a node
-- with a lease, retried with backoff.
CREATE TABLE webhook_deliveries (
    id                  UUID PRIMARY KEY,
    subscription_id     UUID NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_type          TEXT NOT NULL,
    event_key           TEXT NOT NULL,
    run_id              UUID,
    data                JSONB,
    payload             TEXT,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts            BIGINT NOT NULL DEFAULT 0,
    next_attempt_ms     BIGINT NOT NULL,
    lease_owner         UUID,
    lease_until         BIGINT,
    last_status_code    BIGINT,
    last_duration_ms    BIGINT,
    last_error          TEXT,
    occurred_ms         BIGINT NOT NULL,
    finished_ms         BIGINT,
    UNIQUE (subscription_id, event_key)
);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (next_attempt_ms) WHERE status = 'pending';
CREATE INDEX idx_webhook_deliveries_log ON webhook_deliveries (subscription_id, occurred_ms DESC);

CREATE TABLE webhook_attempts (
    delivery_id         UUID NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt             BIGINT NOT NULL,
    status_code         BIGINT,
    duration_ms         BIGINT NOT NULL,
    error               TEXT,
    at_ms               BIGINT NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- A run that stops (or waits for approval) queues a delivery for every
-- enabled subscription that wants the event, in the same transaction as
-- the status change: whichever path changes the status (worker, sweeper,
-- cancel), the event is queued once.
CREATE FUNCTION orchestra_run_webhooks() RETURNS trigger AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, subscription_id, event_type, event_key, run_id, status,
                                    next_attempt_ms, occurred_ms)
    SELECT gen_random_uuid(), s.id, 'run.' || NEW.status,
           'run.' || NEW.status || ':' || NEW.id::text || ':' || NEW.step_count::text, NEW.id, 'pending',
           (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
           (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FROM webhook_subscriptions s
    WHERE s.enabled AND (s.owner_id IS NULL OR s.owner_id = NEW.user_id)
      AND (s.events ? ('run.' || NEW.status) OR s.events ? '*')
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER runs_webhook_events AFTER UPDATE OF status ON runs FOR EACH ROW
    WHEN (NEW.status IS DISTINCT FROM OLD.status
          AND NEW.status IN ('completed', 'failed', 'cancelled', 'requires_action'))
    EXECUTE FUNCTION orchestra_run_webhooks();
