-- A question a tool asks during a run makes the run wait for its user as an
-- approval does: `run.requires_action` is queued for the subscriptions
-- that want it, in the same transaction as the question.

CREATE FUNCTION orchestra_elicitation_webhooks() RETURNS trigger AS $$
BEGIN
    INSERT INTO webhook_deliveries (id, subscription_id, event_type, event_key, run_id, status,
                                    next_attempt_ms, occurred_ms)
    SELECT gen_random_uuid(), s.id, 'run.requires_action',
           'run.requires_action:' || r.id::text || ':elicitation:' || NEW.id::text, r.id, 'pending',
           (extract(epoch FROM clock_timestamp()) * 1000)::bigint,
           (extract(epoch FROM clock_timestamp()) * 1000)::bigint
    FROM runs r JOIN webhook_subscriptions s
      ON s.enabled AND (s.owner_id IS NULL OR s.owner_id = r.user_id)
    WHERE r.id = NEW.run_id
      AND (s.events ? 'run.requires_action' OR s.events ? '*')
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER run_elicitations_webhook_events AFTER INSERT ON run_elicitations FOR EACH ROW
    EXECUTE FUNCTION orchestra_elicitation_webhooks();
