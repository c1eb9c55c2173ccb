-- Run events are the engine's most written rows (a dozen per turn), always
-- read by (run_id, seq). As a table clustered on that key (WITHOUT ROWID),
-- an event is one b-tree insert instead of two (the rows and the key's
-- index), and a run's events sit together in the same pages.

CREATE TABLE run_events_clustered (
    run_id              BLOB NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq                 INTEGER NOT NULL,
    type                TEXT NOT NULL,
    data                TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

INSERT INTO run_events_clustered (run_id, seq, type, data, created_at)
    SELECT run_id, seq, type, data, created_at FROM run_events;

DROP TABLE run_events;

ALTER TABLE run_events_clustered RENAME TO run_events;
