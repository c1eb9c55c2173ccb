-- The queue index holds queued runs only. It held every run under its
-- status, so each run that started at once, and each change of status,
-- rewrote entries nobody reads: the dispatcher looks for queued runs, and
-- the sweeper finds running ones through idx_runs_lease.
DROP INDEX idx_runs_queue;
CREATE INDEX idx_runs_queue ON runs (created_at, id) WHERE status = 'queued';
