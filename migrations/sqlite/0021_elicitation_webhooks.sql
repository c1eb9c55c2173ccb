-- A question a tool asks during a run makes the run wait for its user as an
-- approval does: `run.requires_action` is queued for the subscriptions
-- that want it, in the same transaction as the question.

CREATE TRIGGER run_elicitations_webhook_events AFTER INSERT ON run_elicitations
BEGIN
    INSERT OR IGNORE INTO webhook_deliveries (id, subscription_id, event_type, event_key, run_id, status,
                                              next_attempt_ms, occurred_ms)
    SELECT randomblob(16), s.id, 'run.requires_action',
           'run.requires_action:' || hex(r.id) || ':elicitation:' || hex(NEW.id), r.id, 'pending',
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER),
           CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)
    FROM runs r JOIN webhook_subscriptions s
      ON s.enabled = 1 AND (s.owner_id IS NULL OR s.owner_id = r.user_id)
    WHERE r.id = NEW.run_id
      AND EXISTS (SELECT 1 FROM json_each(s.events) e
                  WHERE e.value = 'run.requires_action' OR e.value = '*');
END;
