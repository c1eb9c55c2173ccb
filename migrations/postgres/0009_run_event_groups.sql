-- A run's events are stored a write at a time: one row holds the events of
-- one step (a dozen per turn were a dozen rows; now three or four), as a
-- JSON array of {"seq", "type", "data"}, keyed by the greatest seq in it.
-- Events are read in order from a seq on, so a reader takes the rows whose
-- `last_seq` is past it and skips what it has seen.

CREATE TABLE run_event_groups (
    run_id              UUID NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    last_seq            BIGINT NOT NULL,
    events              JSONB NOT NULL,
    created_at          TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_id, last_seq)
);

INSERT INTO run_event_groups (run_id, last_seq, events, created_at)
    SELECT run_id, seq, jsonb_build_array(jsonb_build_object('seq', seq, 'type', type, 'data', data)), created_at
    FROM run_events;

DROP TABLE run_events;
