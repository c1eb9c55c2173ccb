//! Following a run's story: its stored events in order, then each new one
//! as the bus says it was written, until `done`. The SSE stream of
//! `/api/v1/runs/{id}/events` and the OpenAI-compatible endpoints read runs
//! this way.

use std::collections::VecDeque;
use std::time::Duration;

use uuid::Uuid;

use super::bus::RunWatch;
use super::model::RunEvent;
use super::RunService;

/// Stored events read per query.
const EVENT_BATCH: i64 = 500;
/// How often a follower reads again when no signal came (one from another
/// node may be lost).
const POLL: Duration = Duration::from_secs(2);

/// A reader of one run's events, from a position on.
pub struct Follower {
    runs: RunService,
    id: Uuid,
    after: i64,
    watch: RunWatch,
    buffer: VecDeque<RunEvent>,
    ended: bool,
}

impl Follower {
    /// Follows run `id` from after event `after`. Subscribes before the
    /// first read, so no wake-up is missed.
    pub fn new(runs: RunService, id: Uuid, after: i64) -> Self {
        let watch = runs.bus().watch(id);
        Follower {
            runs,
            id,
            after,
            watch,
            buffer: VecDeque::new(),
            ended: false,
        }
    }

    /// The seq of the last event returned.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// The next event; `None` after `done`.
    pub async fn next(&mut self) -> Option<RunEvent> {
        loop {
            if let Some(e) = self.buffer.pop_front() {
                self.after = e.seq;
                if e.kind == "done" {
                    self.ended = true;
                }
                return Some(e);
            }
            if self.ended {
                return None;
            }
            // Mark what we have seen before reading, then read.
            self.watch.events.borrow_and_update();
            match self.runs.events(self.id, self.after, EVENT_BATCH).await {
                Ok(events) if !events.is_empty() => {
                    self.buffer.extend(events);
                    continue;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(run = %self.id, error = %e, "reading run events failed");
                }
            }
            tokio::select! {
                changed = self.watch.events.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(POLL).await;
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
            }
        }
    }
}
