-- The deliveries in flight (pending, with a live lease), which the
-- delivery worker reads at each look to keep one subscription or owner to
-- its share.
CREATE INDEX idx_webhook_deliveries_leased ON webhook_deliveries (lease_until) WHERE status = 'pending';
