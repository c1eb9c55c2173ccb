-- Agents that act on their own: schedules and their firings, inbound
-- triggers and their deliveries, outbound webhook subscriptions and their
-- delivery queue. Times that nodes compare to pick work are epoch
-- milliseconds (INTEGER), as the runs' leases are.

CREATE TABLE schedules (
    id                  BLOB PRIMARY KEY,
    owner_id            BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id            BLOB NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    message             TEXT NOT NULL,
    timing              TEXT NOT NULL,
    conversation_id     BLOB REFERENCES conversations (id) ON DELETE SET NULL,
    fixed_conversation  INTEGER NOT NULL,
    overlap             TEXT NOT NULL CHECK (overlap IN ('skip', 'queue', 'cancel')),
    catch_up            TEXT NOT NULL CHECK (catch_up IN ('once', 'skip')),
    state               TEXT NOT NULL CHECK (state IN ('active', 'paused', 'finished', 'stopped')),
    state_reason        TEXT,
    next_fire_ms        INTEGER,
    lease_owner         BLOB,
    lease_until         INTEGER,
    last_fired_at       TEXT,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX idx_schedules_owner ON schedules (owner_id, created_at, id);
CREATE INDEX idx_schedules_due ON schedules (next_fire_ms) WHERE state = 'active';

-- One row per occurrence: the unique key is what makes a firing happen once
-- however many nodes see it due.
CREATE TABLE schedule_firings (
    id                  BLOB PRIMARY KEY,
    schedule_id         BLOB NOT NULL REFERENCES schedules (id) ON DELETE CASCADE,
    due_ms              INTEGER NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'started', 'skipped', 'failed')),
    reason              TEXT,
    missed              INTEGER NOT NULL DEFAULT 0,
    run_id              BLOB,
    conversation_id     BLOB,
    lease_owner         BLOB,
    lease_until         INTEGER,
    created_at          TEXT NOT NULL,
    started_at          TEXT,
    UNIQUE (schedule_id, due_ms)
);
CREATE INDEX idx_schedule_firings_pending ON schedule_firings (due_ms) WHERE status = 'pending';

CREATE TABLE triggers (
    id                  BLOB PRIMARY KEY,
    owner_id            BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    agent_id            BLOB NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    name                TEXT NOT NULL,
    token_hash          TEXT NOT NULL,
    template            TEXT,
    signature           TEXT NOT NULL CHECK (signature IN ('none', 'github', 'standard')),
    secret_nonce        BLOB,
    secret_ciphertext   BLOB,
    rate_per_minute     INTEGER NOT NULL,
    conversation_id     BLOB REFERENCES conversations (id) ON DELETE SET NULL,
    enabled             INTEGER NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX idx_triggers_owner ON triggers (owner_id, created_at, id);

CREATE TABLE trigger_deliveries (
    id                  BLOB PRIMARY KEY,
    trigger_id          BLOB NOT NULL REFERENCES triggers (id) ON DELETE CASCADE,
    idempotency_key     TEXT,
    run_id              BLOB NOT NULL,
    conversation_id     BLOB NOT NULL,
    received_ms         INTEGER NOT NULL
);
CREATE UNIQUE INDEX idx_trigger_deliveries_key ON trigger_deliveries (trigger_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX idx_trigger_deliveries_recent ON trigger_deliveries (trigger_id, received_ms);

-- Subscriptions of a user (owner_id) or server-wide (owner_id NULL, admins).
CREATE TABLE webhook_subscriptions (
    id                  BLOB PRIMARY KEY,
    owner_id            BLOB REFERENCES users (id) ON DELETE CASCADE,
    url                 TEXT NOT NULL,
    description         TEXT,
    events              TEXT NOT NULL,
    secret_nonce        BLOB NOT NULL,
    secret_ciphertext   BLOB NOT NULL,
    old_secret_nonce    BLOB,
    old_secret_ciphertext BLOB,
    old_secret_until_ms INTEGER,
    enabled             INTEGER NOT NULL,
    disabled_reason     TEXT,
    failures            INTEGER NOT NULL DEFAULT 0,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);
CREATE INDEX idx_webhook_subscriptions_owner ON webhook_subscriptions (owner_id, created_at, id);

-- The delivery queue and log: one row per event and subscription (the
-- unique key keeps an event from being queued twice), claimed by a node
-- with a lease, retried with backoff.
CREATE TABLE webhook_deliveries (
    id                  BLOB PRIMARY KEY,
    subscription_id     BLOB NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_type          TEXT NOT NULL,
    event_key           TEXT NOT NULL,
    run_id              BLOB,
    data                TEXT,
    payload             TEXT,
    status              TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts            INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms     INTEGER NOT NULL,
    lease_owner         BLOB,
    lease_until         INTEGER,
    last_status_code    INTEGER,
    last_duration_ms    INTEGER,
    last_error          TEXT,
    occurred_ms         INTEGER NOT NULL,
    finished_ms         INTEGER,
    UNIQUE (subscription_id, event_key)
);
CREATE INDEX idx_webhook_deliveries_due ON webhook_deliveries (next_attempt_ms) WHERE status = 'pending';
CREATE INDEX idx_webhook_deliveries_log ON webhook_deliveries (subscription_id, occurred_ms DESC);

CREATE TABLE webhook_attempts (
    delivery_id         BLOB NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt             INTEGER NOT NULL,
    status_code         INTEGER,
    duration_ms         INTEGER NOT NULL,
    error               TEXT,
    at_ms               INTEGER NOT NULL,
    PRIMARY KEY (delivery_id, attempt)
);

-- A run that stops (or waits for approval) queues a delivery for every
-- enabled subscription that wants the event, in the same transaction as
-- the status change: whichever path changes the status (worker, sweeper,
-- cancel), the event is queued once.
CREATE TRIGGER runs_webhook_events AFTER UPDATE OF status ON runs
    WHEN NEW.status <> OLD.status
         AND NEW.status IN ('completed', 'failed', 'cancelled', 'requires_action')
BEGIN
    INSERT OR IGNORE INTO webhook_deliveries (id, subscription_id, event_type, event_key, run_id, status,
                                              next_attempt_ms, occurred_ms)
    SELECT randomblob(16), s.id, 'run.' || NEW.status,
           'run.' || NEW.status || ':' || hex(NEW.id) || ':' || NEW.step_count, NEW.id, 'pending',
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM webhook_subscriptions s
    WHERE s.enabled = 1 AND (s.owner_id IS NULL OR s.owner_id = NEW.user_id)
      AND EXISTS (SELECT 1 FROM json_each(s.events) e
                  WHERE e.value = 'run.' || NEW.status OR e.value = '*');
END;
