-- A run's events are stored a write at a time: one row holds the events of
-- one step (a dozen per turn were a dozen rows; now three or four), as a
-- JSON array of {"seq", "type", "data"}, keyed by the greatest seq in it.
-- Events are read in order from a seq on, so a reader takes the rows whose
-- `last_seq` is past it and skips what it has seen.

CREATE TABLE run_event_groups (
    run_id              BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    last_seq            INTEGER NOT NULL,
    events              TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    PRIMARY KEY (run_id, last_seq)
) WITHOUT ROWID;

INSERT INTO run_event_groups (run_id, last_seq, events, created_at)
    SELECT run_id, seq, json_array(json_object('seq', seq, 'type', type, 'data', json(data))), created_at
    FROM run_events;

DROP TABLE run_events;
