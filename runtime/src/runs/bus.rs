//! Wake-ups between the parts of the run engine: "run R has new events"
//! (for SSE streams), "run R stopped" (it left `queued`/`running`: for
//! callers waiting for its outcome), "cancel run R" (for the worker
//! executing it) and "a run was queued" (for the dispatcher).
//!
//! The database is the source of truth; these signals only say "look again".
//! Inside one process they are in-memory; on PostgreSQL every write that
//! matters also sends a `NOTIFY orchestra_runs` in its transaction, and
//! [`Bus::listen_postgres`] turns other nodes' notifications into the same
//! local signals. Per-run entries exist only while someone watches the run, so
//! a signal costs one map lookup, however many runs are in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use uuid::Uuid;

use crate::db::Db;

/// The channel of `NOTIFY` on PostgreSQL.
pub const CHANNEL: &str = "orchestra_runs";

struct Signals {
    events: watch::Sender<u64>,
    stops: watch::Sender<u64>,
    cancel: watch::Sender<bool>,
}

#[derive(Default)]
struct Inner {
    runs: Mutex<HashMap<Uuid, Arc<Signals>>>,
    queued: Notify,
    /// Some run may be queued (set by every `queued` signal, cleared by the
    /// dispatcher when the queue is empty): runs that end wake the
    /// dispatcher only then.
    maybe_queued: std::sync::atomic::AtomicBool,
}

/// The signal hub of one process.
#[derive(Clone, Default)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus").finish_non_exhaustive()
    }
}

/// A subscription to one run's signals; dropping it unsubscribes.
pub struct RunWatch {
    bus: Bus,
    id: Uuid,
    signals: Arc<Signals>,
    /// Changes when the run has new events.
    pub events: watch::Receiver<u64>,
    /// Changes when the run stopped: completed, failed, cancelled, or
    /// waiting for approvals.
    pub stops: watch::Receiver<u64>,
    /// Becomes `true` when the run should be cancelled.
    pub cancel: watch::Receiver<bool>,
}

impl Drop for RunWatch {
    fn drop(&mut self) {
        let mut runs = self.bus.inner.runs.lock().expect("bus lock");
        // The map's reference and ours: nobody else watches this run.
        if Arc::strong_count(&self.signals) == 2 {
            runs.remove(&self.id);
        }
    }
}

impl Bus {
    /// Subscribes to the signals of run `id`.
    pub fn watch(&self, id: Uuid) -> RunWatch {
        let signals = self
            .inner
            .runs
            .lock()
            .expect("bus lock")
            .entry(id)
            .or_insert_with(|| {
                Arc::new(Signals {
                    events: watch::channel(0).0,
                    stops: watch::channel(0).0,
                    cancel: watch::channel(false).0,
                })
            })
            .clone();
        RunWatch {
            bus: self.clone(),
            id,
            events: signals.events.subscribe(),
            stops: signals.stops.subscribe(),
            cancel: signals.cancel.subscribe(),
            signals,
        }
    }

    fn signals(&self, id: Uuid) -> Option<Arc<Signals>> {
        self.inner.runs.lock().expect("bus lock").get(&id).cloned()
    }

    /// Run `id` has new events.
    pub fn events(&self, id: Uuid) {
        if let Some(s) = self.signals(id) {
            s.events.send_modify(|n| *n += 1);
        }
    }

    /// Run `id` stopped (its new status is stored).
    pub fn stopped(&self, id: Uuid) {
        if let Some(s) = self.signals(id) {
            s.stops.send_modify(|n| *n += 1);
        }
    }

    /// Run `id` should stop.
    pub fn cancel(&self, id: Uuid) {
        if let Some(s) = self.signals(id) {
            s.cancel.send_replace(true);
        }
    }

    /// A run was queued.
    pub fn queued(&self) {
        self.inner
            .maybe_queued
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.queued.notify_one();
    }

    /// A run left its worker: a run waiting for its conversation or for a
    /// slot may go now, if any may be queued.
    pub fn run_ended(&self) {
        if self
            .inner
            .maybe_queued
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            self.inner.queued.notify_one();
        }
    }

    /// The dispatcher found runs queued or none (after a claim that took
    /// none). A run queued meanwhile has also sent its `queued` signal, so
    /// the dispatcher looks again.
    pub fn queue_seen(&self, nonempty: bool) {
        self.inner
            .maybe_queued
            .store(nonempty, std::sync::atomic::Ordering::SeqCst);
    }

    /// Resolves at the next `queued` signal (or one sent before).
    pub async fn wait_queued(&self) {
        self.inner.queued.notified().await
    }

    /// Applies one `NOTIFY` payload: `e:<run>`, `s:<run>`, `c:<run>` or `q`.
    pub fn apply(&self, payload: &str) {
        match payload.split_once(':') {
            Some(("e", id)) => {
                if let Ok(id) = id.parse() {
                    self.events(id)
                }
            }
            Some(("s", id)) => {
                if let Ok(id) = id.parse() {
                    self.stopped(id)
                }
            }
            Some(("c", id)) => {
                if let Ok(id) = id.parse() {
                    self.cancel(id)
                }
            }
            _ if payload == "q" => self.queued(),
            _ => tracing::debug!(payload, "unknown run notification"),
        }
    }

    /// On PostgreSQL, forwards other nodes' notifications to this bus until
    /// the pool closes; reconnects after a lost connection.
    pub fn listen_postgres(&self, db: &Db) {
        let Db::Postgres(pool) = db else {
            return;
        };
        let pool = pool.clone();
        let bus = self.clone();
        tokio::spawn(async move {
            loop {
                if pool.is_closed() {
                    return;
                }
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, "run notifications: cannot connect; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(CHANNEL).await {
                    tracing::warn!(error = %e, "run notifications: LISTEN failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => bus.apply(n.payload()),
                        // The connection was lost: wake everyone to re-read.
                        Ok(None) => bus.queued(),
                        Err(e) => {
                            if pool.is_closed() {
                                return;
                            }
                            tracing::warn!(error = %e, "run notifications: connection lost");
                            break;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_live_while_watched() {
        let bus = Bus::default();
        let id = Uuid::now_v7();
        let a = bus.watch(id);
        let b = bus.watch(id);
        bus.events(id);
        assert!(a.events.has_changed().unwrap());
        drop(a);
        assert!(bus.signals(id).is_some());
        bus.apply(&format!("c:{id}"));
        assert!(*b.cancel.borrow());
        bus.apply(&format!("s:{id}"));
        assert!(b.stops.has_changed().unwrap());
        drop(b);
        assert!(bus.signals(id).is_none());
        // Signals to unwatched runs are dropped, not stored.
        bus.events(id);
        assert!(bus.signals(id).is_none());
    }
}
