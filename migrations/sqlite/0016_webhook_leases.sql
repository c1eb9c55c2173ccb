-- The delivery worker's looks: the due deliveries in order with what it
-- filters them by (covering, status included, so a look reads no table
-- rows), and the deliveries in flight (pending, with a live lease).
DROP INDEX idx_webhook_deliveries_due;
CREATE INDEX idx_webhook_deliveries_pending ON webhook_deliveries (next_attempt_ms, subscription_id, lease_until, id, status)
    WHERE status = 'pending';
CREATE INDEX idx_webhook_deliveries_leased ON webhook_deliveries (lease_until) WHERE status = 'pending';
