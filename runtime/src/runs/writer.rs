//! Group commit for the run engine's writes.
//!
//! Every step a worker persists, and every queued run the API creates, goes
//! through one writer task per process. The writer takes whatever is
//! waiting (up to a bound), writes all of it in one transaction with a fixed
//! number of statements however many runs are in the batch (the fence: one
//! `UPDATE runs ... FROM (VALUES ...)` per kind of change, or a locking read
//! for steps that change nothing in the run's row; one read of the
//! conversations' last message numbers; one insert per table), commits,
//! then answers each caller. Alone, a write costs what it did before; under
//! load, thousands of runs share a commit and a handful of round trips.
//!
//! The fence: a step whose run is no longer leased to its worker changes
//! nothing and gets [`StepError::LeaseLost`]. If a batch fails as a whole,
//! each of its writes is retried as a batch of one, so one bad write fails
//! only its own caller.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::types::Json;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::bus::CHANNEL;
use super::model::*;
use super::repo::*;
use crate::conversations::model::ContentPart;
use crate::conversations::repo::MessageRow;
use crate::db::link::{self, Link, Stmt};
use crate::db::{self, Db};
use crate::error::Result;

/// Most bound parameters in one statement (SQLite allows 32766).
const MAX_BINDS: usize = 20_000;

/// On SQLite, the tool calls an `UPDATE run_tool_calls ... FROM v` changes,
/// as a list of rowids: SQLite loops over an updated table first, so without
/// it each batch would scan every call ever stored.
const CALLS_OF_V: &str =
    " AND run_tool_calls.rowid IN (SELECT t.rowid FROM v CROSS JOIN run_tool_calls t \
     WHERE t.run_id = v.v_run AND t.call_id = v.v_call)";

/// How far a conversation's `updated_at` may lag behind the input or the
/// last message of a run.
const ACTIVITY_PRECISION: chrono::TimeDelta = chrono::TimeDelta::seconds(1);

/// Which run a step belongs to, as the writer needs it.
#[derive(Debug, Clone, Copy)]
pub struct StepRun {
    pub id: Uuid,
    pub conversation_id: Uuid,
    /// Model steps stored before this one.
    pub step_count: i64,
}

/// A fenced step of a run.
pub struct StepWrite {
    pub run: StepRun,
    pub owner: Uuid,
    pub messages: Vec<NewMessage>,
    pub new_calls: Vec<NewCall>,
    pub started: Vec<String>,
    pub outcomes: Vec<CallOutcome>,
    pub update: RunUpdate,
    pub events: Vec<NewEvent>,
}

/// A new run. With `start`, it begins at once on this node unless its
/// conversation has an unfinished run: stored as `running`, leased to
/// `start.owner`, its input message appended and its first events written,
/// all in the commit that creates it (no claim, no separate first step).
pub struct CreateWrite {
    pub row: RunRow,
    pub start: Option<DirectStart>,
}

/// How a new run starts at once (see [`CreateWrite`]).
pub struct DirectStart {
    pub owner: Uuid,
    /// The lease's end, in Unix milliseconds.
    pub lease_until: i64,
    /// The run's input as a message of the run.
    pub message: Option<NewMessage>,
    /// Its events after `queued` (seq 2 onwards).
    pub events: Vec<NewEvent>,
}

/// A stored new run.
#[derive(Debug)]
pub struct Created {
    /// As stored: `running` (with `attempts`, `started_at` and `input_seq`)
    /// when it started at once, else `queued`.
    pub row: RunRow,
    /// The input message, when it started at once.
    pub appended: Vec<MessageRow>,
}

/// A step on its way to the writer, with its JSON values already encoded
/// (on the caller's task: the writer's thread is the one serial part of
/// the engine).
pub(crate) struct PendingStep {
    write: StepWrite,
    /// Its events as one row's `events`, and their last number.
    events: Option<(Box<RawValue>, i64)>,
    /// Each message's `content` and `metadata`.
    messages: Vec<(Box<RawValue>, Box<RawValue>)>,
    /// Each new call's `arguments`.
    arguments: Vec<Box<RawValue>>,
    /// Each outcome's `result`.
    results: Vec<Box<RawValue>>,
}

impl PendingStep {
    /// Encodes `write`'s JSON and lets go of the values only the writer
    /// would have read (events, arguments, results), so that a queued step
    /// holds one form of each; messages stay, for the caller's rows.
    fn new(mut write: StepWrite) -> std::result::Result<PendingStep, serde_json::Error> {
        use serde_json::value::to_raw_value as raw;
        let events = if write.events.is_empty() {
            None
        } else {
            let (packed, last) = pack(&write.events);
            Some((raw(&packed)?, last))
        };
        let messages = write
            .messages
            .iter()
            .map(|m| Ok((raw(&m.content)?, raw(&m.metadata)?)))
            .collect::<std::result::Result<_, serde_json::Error>>()?;
        let arguments = write
            .new_calls
            .iter()
            .map(|c| raw(&c.arguments))
            .collect::<std::result::Result<_, _>>()?;
        let results = write
            .outcomes
            .iter()
            .map(|o| raw(&o.result))
            .collect::<std::result::Result<_, _>>()?;
        write.events = Vec::new();
        for call in &mut write.new_calls {
            call.arguments = serde_json::Value::Null;
        }
        for outcome in &mut write.outcomes {
            outcome.result = serde_json::Value::Null;
        }
        Ok(PendingStep {
            write,
            events,
            messages,
            arguments,
            results,
        })
    }
}

/// What a committed step gets back: its messages' numbers (none when its
/// conversation is gone) and the commit's time, or why it was not written
/// (`StepError::LeaseLost`, a database error); and the write itself, to be
/// dropped on the caller's task.
type StepReply = (
    std::result::Result<(Vec<i64>, chrono::DateTime<chrono::Utc>), StepError>,
    Box<PendingStep>,
);

enum Op {
    Step(Box<PendingStep>, oneshot::Sender<StepReply>),
    Create(Box<CreateWrite>, oneshot::Sender<Result<Created>>),
}

impl Op {
    fn binds(&self) -> usize {
        match self {
            Op::Step(p, _) => {
                let s = &p.write;
                12 + 8 * s.messages.len()
                    + 5
                    + 11 * s.new_calls.len()
                    + 2 * s.started.len()
                    + 4 * s.outcomes.len()
            }
            Op::Create(c, _) => {
                20 + c.start.as_ref().map_or(0, |s| {
                    4 + 8 * usize::from(s.message.is_some()) + 5 * s.events.len()
                })
            }
        }
    }
}

/// The group-commit writer of one process.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Op>,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Writer")
    }
}

fn gone<T>() -> std::result::Result<T, crate::error::Error> {
    Err(crate::error::Error::Unavailable(
        "the run writer has stopped".into(),
    ))
}

impl Writer {
    /// Starts the writer over `db`: a thread of its own with its own
    /// connection (see [`Conn::open`]). On the shared runtime,
    /// each of a batch's awaits would queue behind every ready run task (with
    /// thousands of runs in flight, tens of milliseconds each), and every
    /// run waits for the writer.
    pub fn start(db: Db) -> Writer {
        let (tx, rx) = mpsc::unbounded_channel::<Op>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the run writer");
        let committed = Arc::new(AtomicU64::new(0));
        if let Db::Sqlite(pool) = &db {
            tokio::spawn(checkpoint_loop(pool.clone(), committed.clone()));
        }
        std::thread::Builder::new()
            .name("orchestra-writer".into())
            .spawn(move || {
                // Its connection is made here: on SQLite it is driven from
                // this thread, on PostgreSQL its pool belongs to this
                // thread's runtime.
                runtime.block_on(async move {
                    match Conn::open(&db) {
                        Ok(conn) => write_loop(conn, rx, committed).await,
                        Err(e) => {
                            tracing::error!(error = %e, "the run writer cannot open its connection")
                        }
                    }
                })
            })
            .expect("a thread for the run writer");
        Writer { tx }
    }

    /// Persists one step; resolves when it is committed, with the messages
    /// it appended. The step's JSON is encoded here, and its values are
    /// dropped here, on the caller's task.
    pub async fn step(&self, write: StepWrite) -> std::result::Result<Vec<MessageRow>, StepError> {
        let pending = PendingStep::new(write)
            .map_err(|e| StepError::Db(anyhow::anyhow!("encoding a step: {e}").into()))?;
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Op::Step(Box::new(pending), reply)).is_err() {
            return gone().map_err(StepError::Db);
        }
        let Ok((result, pending)) = answer.await else {
            return gone().map_err(StepError::Db);
        };
        let (seqs, at) = result?;
        let conversation = pending.write.run.conversation_id;
        Ok(pending
            .write
            .messages
            .into_iter()
            .zip(seqs)
            .map(|(m, seq)| MessageRow {
                id: m.id,
                conversation_id: conversation,
                seq,
                role: m.role.to_owned(),
                content: Json(m.content),
                metadata: Json(m.metadata),
                created_at: at,
            })
            .collect())
    }

    /// Stores a new run (with its `queued` event), started at once when
    /// `write.start` says so and the conversation is free.
    pub async fn create(&self, write: CreateWrite) -> Result<Created> {
        let (reply, answer) = oneshot::channel();
        if self.tx.send(Op::Create(Box::new(write), reply)).is_err() {
            return gone();
        }
        answer.await.unwrap_or_else(|_| gone())
    }
}

/// How often the writer's SQLite log is copied back into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// Checkpoints the SQLite write-ahead log off the writer's path: the
/// writer's own connection checkpoints only as a backstop (see
/// [`Conn::open`]), because a checkpoint syncs the database file
/// to disk, which would stall every run waiting for that commit. A passive
/// checkpoint does not block the writer. Ends when the pool is closed.
async fn checkpoint_loop(pool: sqlx::SqlitePool, committed: Arc<AtomicU64>) {
    let mut seen = 0;
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if pool.is_closed() {
            return;
        }
        let now = committed.load(Ordering::Relaxed);
        if now == seen {
            continue;
        }
        seen = now;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
        {
            if pool.is_closed() {
                return;
            }
            tracing::debug!(error = %e, "a checkpoint of the SQLite log failed");
        }
    }
}

/// Writes whatever is waiting, batch after batch, until every [`Writer`] is
/// gone. Counts its batches in `committed`.
async fn write_loop(
    mut conn: Conn,
    mut rx: mpsc::UnboundedReceiver<Op>,
    committed: Arc<AtomicU64>,
) {
    let mut carry: Option<Op> = None;
    loop {
        let first = match carry.take() {
            Some(op) => op,
            None => match rx.recv().await {
                Some(op) => op,
                None => break,
            },
        };
        let mut binds = first.binds();
        let mut batch = vec![first];
        while let Ok(op) = rx.try_recv() {
            if binds + op.binds() > MAX_BINDS {
                carry = Some(op);
                break;
            }
            binds += op.binds();
            batch.push(op);
        }
        run_batch(&mut conn, batch).await;
        committed.fetch_add(1, Ordering::Relaxed);
    }
    conn.close().await;
}

async fn run_batch(conn: &mut Conn, batch: Vec<Op>) {
    let mut steps = Vec::new();
    let mut creates = Vec::new();
    for op in batch {
        match op {
            Op::Step(s, reply) => steps.push((s, reply)),
            Op::Create(c, reply) => creates.push((*c, reply)),
        }
    }
    let step_refs: Vec<&PendingStep> = steps.iter().map(|(s, _)| &**s).collect();
    let create_refs: Vec<&CreateWrite> = creates.iter().map(|(c, _)| c).collect();
    match write_batch(conn, &step_refs, &create_refs).await {
        Ok(mut outcome) => {
            notify(conn, &outcome.notify).await;
            let at = outcome.at;
            for (i, (s, reply)) in steps.into_iter().enumerate() {
                let numbers = outcome.appended.remove(&i).ok_or(StepError::LeaseLost);
                let _ = reply.send((numbers.map(|n| (n, at)), s));
            }
            for (c, reply) in creates {
                let _ = reply.send(Ok(outcome.created(c.row)));
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, writes = steps.len() + creates.len(),
                "a batch of run writes failed; writing each on its own");
            // The same statements, one write at a time: only the bad one fails.
            for (s, reply) in steps {
                let result = match write_batch(conn, &[&s], &[]).await {
                    Ok(mut outcome) => {
                        notify(conn, &outcome.notify).await;
                        let at = outcome.at;
                        outcome
                            .appended
                            .remove(&0)
                            .ok_or(StepError::LeaseLost)
                            .map(|n| (n, at))
                    }
                    Err(e) => Err(StepError::from(e)),
                };
                let _ = reply.send((result, s));
            }
            for (mut c, reply) in creates {
                let mut result = write_batch(conn, &[], &[&c]).await;
                if let Err(sqlx::Error::Database(e)) = &result {
                    if e.is_unique_violation() && c.start.is_some() {
                        // Another node started a run of this conversation
                        // meanwhile: this one waits in the queue.
                        c.start = None;
                        result = write_batch(conn, &[], &[&c]).await;
                    }
                }
                let result = match result {
                    Ok(mut outcome) => {
                        notify(conn, &outcome.notify).await;
                        Ok(outcome.created(c.row))
                    }
                    Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                        Err(crate::error::Error::NotFound("conversation"))
                    }
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(result);
            }
        }
    }
}

/// Sends the `NOTIFY`s of a committed batch (PostgreSQL).
async fn notify(conn: &Conn, payloads: &[String]) {
    if let Conn::Postgres(pool) = conn {
        if !payloads.is_empty() {
            let sent = sqlx::query("SELECT pg_notify($1, x) FROM unnest($2::text[]) AS x")
                .bind(CHANNEL)
                .bind(payloads)
                .execute(pool)
                .await;
            if let Err(e) = sent {
                tracing::warn!(error = %e, "run notifications were not sent");
            }
        }
    }
}

struct Outcome {
    /// The commit's time, as stored with its rows.
    at: chrono::DateTime<chrono::Utc>,
    /// Per step index: the numbers of the messages it appended (absent:
    /// lease lost).
    appended: HashMap<usize, Vec<i64>>,
    /// New runs that started at once, with the messages they appended.
    started: HashMap<Uuid, Vec<MessageRow>>,
    /// `NOTIFY` payloads (PostgreSQL).
    notify: Vec<String>,
}

impl Outcome {
    /// A new run as this batch stored it.
    fn created(&mut self, mut row: RunRow) -> Created {
        let Some(appended) = self.started.remove(&row.id) else {
            return Created {
                row,
                appended: Vec::new(),
            };
        };
        row.status = "running".into();
        row.attempts = 1;
        row.started_at = Some(row.created_at);
        row.input_seq = appended.first().map(|m| m.seq);
        Created { row, appended }
    }
}

/// The writer's connection: its own SQLite connection, driven from the
/// writer's thread (see [`crate::db::link`]), or a pool of its own on
/// PostgreSQL.
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(sqlx::PgPool),
}

impl Conn {
    /// The writer's connection to `db`. On SQLite it has a larger page
    /// cache (in WAL mode a connection's cache is dropped whenever another
    /// connection has committed, so a writer on whichever pooled connection
    /// was idle would start every transaction cold), and it checkpoints the
    /// log only as a backstop (64 MiB of pages): a checkpoint syncs the
    /// database file, so the writer leaves that to the shared pool (see
    /// [`checkpoint_loop`]). Statement journals stay in memory
    /// (`temp_store`): a multi-row statement inside a transaction keeps the
    /// pages it changes in one, and on disk it is a temporary file created,
    /// written and deleted for every such statement.
    pub(crate) fn open(db: &Db) -> std::result::Result<Conn, sqlx::Error> {
        match db {
            Db::Sqlite(pool) => Ok(Conn::Sqlite(link::open_sqlite(
                pool,
                "PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 16384; \
                 PRAGMA temp_store = MEMORY;",
            )?)),
            Db::Postgres(pool) => Ok(Conn::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(pool.options().get_acquire_timeout())
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .connect_lazy_with((*pool.connect_options()).clone()),
            )),
        }
    }

    async fn close(self) {
        if let Conn::Postgres(pool) = self {
            pool.close().await;
        }
    }
}

async fn write_batch(
    conn: &mut Conn,
    steps: &[&PendingStep],
    creates: &[&CreateWrite],
) -> std::result::Result<Outcome, sqlx::Error> {
    match conn {
        Conn::Sqlite(c) => write_in(&mut Link::Sqlite(c), steps, creates).await,
        Conn::Postgres(pool) => {
            let mut c = pool.acquire().await?;
            write_in(&mut Link::Postgres(&mut c), steps, creates).await
        }
    }
}

/// One batch in one transaction on `link`; any error rolls it back.
async fn write_in(
    link: &mut Link<'_>,
    steps: &[&PendingStep],
    creates: &[&CreateWrite],
) -> std::result::Result<Outcome, sqlx::Error> {
    // On SQLite the write lock is taken at once: the message numbers read
    // below must not change before the commit. (On PostgreSQL the unique
    // index of numbers refuses a clash with a concurrent post; the batch is
    // then retried.)
    link.run(if link.sqlite() {
        "BEGIN IMMEDIATE"
    } else {
        "BEGIN"
    })
    .await?;
    let written = write_statements(link, steps, creates).await;
    let written = match written {
        Ok(outcome) => link.run("COMMIT").await.map(|()| outcome),
        Err(e) => Err(e),
    };
    if written.is_err() {
        let _ = link.run("ROLLBACK").await;
    }
    written
}

async fn write_statements(
    link: &mut Link<'_>,
    pending: &[&PendingStep],
    creates: &[&CreateWrite],
) -> std::result::Result<Outcome, sqlx::Error> {
    let now = db::now();
    let steps: Vec<&StepWrite> = pending.iter().map(|p| &p.write).collect();
    let lite = link.sqlite();
    // New runs that may start at once: the first of each conversation in
    // the batch (a second one waits behind it in any case).
    let mut seen: HashSet<Uuid> = HashSet::new();
    let (starting, queued): (Vec<&CreateWrite>, Vec<&CreateWrite>) = creates
        .iter()
        .copied()
        .partition(|c| c.start.is_some() && seen.insert(c.row.conversation_id));
    // A batch's statements are prepared once per shape: a batch of one
    // write repeats (cached); larger ones rarely do, and caching them would
    // fill the connection's cache with large one-off statements.
    let cache = steps.len() + creates.len() == 1;
    // The statements that return nothing, run in order after those that
    // return something.
    let mut tail: Vec<Stmt<'_>> = Vec::new();
    // New queued runs (their first event comes with the others').
    if !queued.is_empty() {
        let mut q = link.stmt(
            "INSERT INTO runs (id, conversation_id, user_id, agent_id, status, input, limits, provider, model, created_at, updated_at, options) ",
        );
        q.push_values(queued.iter().map(|c| &c.row), |b, r| {
            b.push_bind(r.id)
                .push_bind(r.conversation_id)
                .push_bind(r.user_id)
                .push_bind(r.agent_id)
                .push_bind("queued")
                .push_bind(r.input.as_ref().map(|i| Json(&i.0)))
                .push_bind(Json(&r.limits.0))
                .push_bind(&r.provider)
                .push_bind(&r.model)
                .push_bind(r.created_at)
                .push_bind(r.created_at)
                .push_bind(r.options.as_ref().map(|o| Json(&o.0)));
        });
        tail.push(q);
    }
    // The fence: only steps whose run is still leased to their worker.
    // Steps that change no state go in a statement that sets no indexed
    // column: SQLite rewrites an index's entries whenever one of its
    // columns is assigned, and `status` and `lease_owner` are in three.
    //
    // Steps that change nothing in the run's row (a tool's result, a flush
    // of deltas) only read it: on PostgreSQL with a share lock, which holds
    // off a sweeper until the commit; on SQLite the transaction holds the
    // write lock already.
    let mut live: HashSet<Uuid> = HashSet::new();
    let (checking, steps_touching): (Vec<&StepWrite>, Vec<&StepWrite>) =
        steps.iter().copied().partition(|s| s.update.is_noop());
    if !checking.is_empty() {
        let mut q = link.stmt("WITH v(v_id, v_owner) AS (");
        q.push_values(checking.iter(), |b, s| {
            b.push_bind(s.run.id).push_bind(s.owner);
        });
        // `v` first (CROSS JOIN keeps SQLite from scanning every running
        // run instead).
        q.push(
            ") SELECT runs.id FROM v CROSS JOIN runs WHERE runs.id = v_id \
             AND runs.lease_owner = v_owner AND runs.status = 'running'",
        );
        if !lite {
            q.push(" FOR SHARE OF runs");
        }
        let ids: Vec<(Uuid,)> = link.fetch_all(q, cache).await?;
        live.extend(ids.into_iter().map(|(id,)| id));
    }
    let (counting, changing): (Vec<&StepWrite>, Vec<&StepWrite>) = steps_touching
        .into_iter()
        .partition(|s| s.update.status.is_none() && s.update.error.is_none());
    for (group, changes) in [(counting, false), (changing, true)] {
        if group.is_empty() {
            continue;
        }
        let mut q = link.stmt(if changes {
            "WITH v(v_id, v_owner, v_steps, v_in, v_out, v_status, v_error, v_finished, v_ends) AS ("
        } else {
            "WITH v(v_id, v_owner, v_steps, v_in, v_out) AS ("
        });
        q.push_values(group.iter(), |b, s| {
            let u = &s.update;
            b.push_bind(s.run.id)
                .push_bind(s.owner)
                .push_bind(u.steps)
                .push_bind(u.input_tokens)
                .push_bind(u.output_tokens);
            if changes {
                b.push_bind(u.status.map(RunStatus::as_str))
                    .push_bind(u.error.as_ref().map(Json))
                    .push_bind(u.status.is_some_and(RunStatus::is_terminal))
                    .push_bind(u.status.is_some_and(|st| st != RunStatus::Running));
            }
        });
        q.push(
            ") UPDATE runs SET step_count = step_count + v_steps, input_tokens = input_tokens + v_in, \
             output_tokens = output_tokens + v_out, updated_at = ",
        );
        q.push_bind(now);
        if changes {
            q.push(
                ", status = COALESCE(v_status, status), error = COALESCE(v_error, error), \
                 finished_at = CASE WHEN v_finished THEN ",
            );
            q.push_bind(now);
            q.push(
                " ELSE finished_at END, \
                 lease_owner = CASE WHEN v_ends THEN NULL ELSE lease_owner END, \
                 lease_until = CASE WHEN v_ends THEN NULL ELSE lease_until END",
            );
        }
        if lite {
            // SQLite loops over the updated table first, whatever the plan:
            // without the rowid list, each batch would scan every running
            // run.
            q.push(
                " FROM v WHERE runs.id = v_id AND runs.rowid IN (SELECT r.rowid FROM v CROSS JOIN runs r \
                 WHERE r.id = v.v_id AND r.lease_owner = v.v_owner AND r.status = 'running') RETURNING id",
            );
        } else {
            q.push(
                " FROM v WHERE id = v_id AND lease_owner = v_owner AND status = 'running' RETURNING id",
            );
        }
        let ids: Vec<(Uuid,)> = link.fetch_all(q, cache).await?;
        live.extend(ids.into_iter().map(|(id,)| id));
    }
    let survivors: Vec<(usize, &StepWrite)> = steps
        .iter()
        .enumerate()
        .map(|(i, s)| (i, *s))
        .filter(|(_, s)| live.contains(&s.run.id))
        .collect();
    // Message numbers: one read per conversation, for the steps that store
    // messages and the new runs that may start with their input.
    let mut numbered: HashSet<Uuid> = HashSet::new();
    for (_, s) in &survivors {
        if !s.messages.is_empty() {
            numbered.insert(s.run.conversation_id);
        }
    }
    for c in &starting {
        if c.start.as_ref().is_some_and(|s| s.message.is_some()) {
            numbered.insert(c.row.conversation_id);
        }
    }
    let mut next_seq: HashMap<Uuid, i64> = HashMap::new();
    let mut touched: HashMap<Uuid, chrono::DateTime<chrono::Utc>> = HashMap::new();
    if !numbered.is_empty() {
        // Each conversation's last message number: read, not counted in the
        // conversation's row (an update of it would cost several times this
        // read, on every step).
        let mut q = link.stmt(
            "SELECT c.id, c.updated_at, (SELECT COALESCE(MAX(m.seq), 0) FROM messages m \
             WHERE m.conversation_id = c.id) FROM conversations c WHERE c.id IN ",
        );
        q.push_list(numbered.iter().copied());
        let lasts: Vec<(Uuid, chrono::DateTime<chrono::Utc>, i64)> =
            link.fetch_all(q, cache).await?;
        for (id, updated_at, last) in lasts {
            next_seq.insert(id, last + 1);
            touched.insert(id, updated_at);
        }
    }
    // Steps first: a run that starts in this batch may follow one that ends
    // in it, in the same conversation (its last answer comes before the new
    // run's input).
    let mut appended: HashMap<usize, Vec<i64>> = HashMap::new();
    let mut input_seqs: Vec<(Uuid, i64)> = Vec::new();
    for (i, s) in &survivors {
        let mine = numbers(&mut next_seq, s.run.conversation_id, s.messages.len());
        if s.update.sets_input {
            if let Some(first) = mine.first() {
                input_seqs.push((s.run.id, *first));
            }
        }
        appended.insert(*i, mine);
    }
    // New runs that start at once: `running` and leased to this node unless
    // their conversation has an unfinished run, with the number their input
    // gets (the first one of each conversation starts, at most).
    let mut started: HashSet<Uuid> = HashSet::new();
    if !starting.is_empty() {
        let mut q = link.stmt(
            "WITH v(v_id, v_conv, v_user, v_agent, v_input, v_limits, v_provider, v_model, v_at, v_owner, v_until, v_seq, v_options) AS (",
        );
        q.push_values(starting.iter(), |b, c| {
            let r = &c.row;
            let start = c.start.as_ref().expect("a starting run");
            let input_seq = start
                .message
                .as_ref()
                .and_then(|_| next_seq.get(&r.conversation_id).copied());
            b.push_bind(r.id)
                .push_bind(r.conversation_id)
                .push_bind(r.user_id)
                .push_bind(r.agent_id)
                .push_bind(r.input.as_ref().map(|i| Json(&i.0)))
                .push_bind(Json(&r.limits.0))
                .push_bind(&r.provider)
                .push_bind(&r.model)
                .push_bind(r.created_at)
                .push_bind(start.owner)
                .push_bind(start.lease_until)
                .push_bind(input_seq)
                .push_bind(r.options.as_ref().map(|o| Json(&o.0)));
        });
        q.push(format!(
            "), w AS (SELECT v.*, NOT EXISTS (SELECT 1 FROM runs o WHERE o.conversation_id = v_conv \
               AND o.status IN {UNFINISHED}) AS go FROM v) \
             INSERT INTO runs (id, conversation_id, user_id, agent_id, status, input, limits, provider, model, \
               created_at, updated_at, lease_owner, lease_until, attempts, started_at, input_seq, options) \
             SELECT v_id, v_conv, v_user, v_agent, CASE WHEN go THEN 'running' ELSE 'queued' END, v_input, \
               v_limits, v_provider, v_model, v_at, v_at, CASE WHEN go THEN v_owner END, \
               CASE WHEN go THEN v_until END, CASE WHEN go THEN 1 ELSE 0 END, CASE WHEN go THEN v_at END, \
               CASE WHEN go THEN v_seq END, v_options \
             FROM w RETURNING id, status"
        ));
        let rows: Vec<(Uuid, String)> = link.fetch_all(q, cache).await?;
        started.extend(
            rows.into_iter()
                .filter(|(_, st)| st == "running")
                .map(|(id, _)| id),
        );
    }
    // The runs that started: (run, conversation, how), and their input,
    // numbered as stored with them.
    let openings: Vec<(Uuid, Uuid, &DirectStart)> = starting
        .iter()
        .filter(|c| started.contains(&c.row.id))
        .map(|c| {
            (
                c.row.id,
                c.row.conversation_id,
                c.start.as_ref().expect("a starting run"),
            )
        })
        .collect();
    let mut opened: HashMap<Uuid, Vec<MessageRow>> = HashMap::new();
    for (run, conversation, start) in &openings {
        let mine = number(&mut next_seq, *conversation, start.message.as_slice(), now);
        opened.insert(*run, mine);
    }
    // `updated_at` is in three indexes of conversations: it moves when a
    // run's input arrives or a run stops (its messages are then all there),
    // and only if older than ACTIVITY_PRECISION.
    let mut active: HashSet<Uuid> = HashSet::new();
    for (_, s) in &survivors {
        if !s.messages.is_empty()
            && (s.update.sets_input || s.update.status.is_some_and(|st| st != RunStatus::Running))
        {
            active.insert(s.run.conversation_id);
        }
    }
    for (_, conversation, start) in &openings {
        if start.message.is_some() {
            active.insert(*conversation);
        }
    }
    let stale: Vec<Uuid> = active
        .into_iter()
        .filter(|id| {
            touched
                .get(id)
                .is_some_and(|at| now - *at >= ACTIVITY_PRECISION)
        })
        .collect();
    if !stale.is_empty() {
        let mut q = link.stmt("UPDATE conversations SET updated_at = ");
        q.push_bind(now);
        q.push(" WHERE id IN ");
        q.push_list(stale);
        tail.push(q);
    }
    // (message, conversation, number, content, metadata)
    type Appended<'a> = (&'a NewMessage, Uuid, i64, &'a RawValue, &'a RawValue);
    let mut rows: Vec<Appended<'_>> = Vec::new();
    for (i, s) in &survivors {
        let encoded = &pending[*i].messages;
        for ((m, seq), (content, metadata)) in s.messages.iter().zip(&appended[i]).zip(encoded) {
            rows.push((m, s.run.conversation_id, *seq, content, metadata));
        }
    }
    let opened_rows: Vec<&MessageRow> = opened.values().flatten().collect();
    if !rows.is_empty() || !opened_rows.is_empty() {
        let mut q = link.stmt(
            "INSERT INTO messages (id, conversation_id, seq, role, content, metadata, created_at) ",
        );
        q.push_values(rows, |b, (m, conversation, seq, content, metadata)| {
            b.push_bind(m.id)
                .push_bind(conversation)
                .push_bind(seq)
                .push_bind(m.role)
                .push_bind(Json(content))
                .push_bind(Json(metadata))
                .push_bind(now);
        });
        if !opened_rows.is_empty() {
            q.push_values(opened_rows, |b, r| {
                b.push_bind(r.id)
                    .push_bind(r.conversation_id)
                    .push_bind(r.seq)
                    .push_bind(r.role.as_str())
                    .push_bind(Json(&r.content.0))
                    .push_bind(Json(&r.metadata.0))
                    .push_bind(r.created_at);
            });
        }
        tail.push(q);
    }
    if !input_seqs.is_empty() {
        let mut q = link.stmt("WITH v(v_id, v_seq) AS (");
        q.push_values(input_seqs.iter(), |b, (id, seq)| {
            b.push_bind(*id).push_bind(*seq);
        });
        q.push(") UPDATE runs SET input_seq = v_seq FROM v WHERE id = v_id");
        if lite {
            q.push(
                " AND runs.rowid IN (SELECT r.rowid FROM v CROSS JOIN runs r WHERE r.id = v.v_id)",
            );
        }
        tail.push(q);
    }
    let calls: Vec<(&StepWrite, &NewCall, &RawValue)> = survivors
        .iter()
        .flat_map(|(i, s)| {
            s.new_calls
                .iter()
                .zip(&pending[*i].arguments)
                .map(move |(c, a)| (*s, c, &**a))
        })
        .collect();
    if !calls.is_empty() {
        let mut q = link.stmt(
            "INSERT INTO run_tool_calls (run_id, call_id, step, position, name, arguments, arguments_error,
                 idempotent, status, approval_expires_ms, created_at) ",
        );
        q.push_values(calls.iter(), |b, (s, c, arguments)| {
            b.push_bind(s.run.id)
                .push_bind(c.call_id.as_str())
                .push_bind(s.run.step_count + s.update.steps)
                .push_bind(c.position)
                .push_bind(c.name.as_str())
                .push_bind(Json(*arguments))
                .push_bind(c.arguments_error.as_deref())
                .push_bind(c.idempotent)
                .push_bind(c.status)
                .push_bind(c.approval_expires_ms)
                .push_bind(now);
        });
        tail.push(q);
    }
    let started: Vec<(Uuid, &String)> = survivors
        .iter()
        .flat_map(|(_, s)| s.started.iter().map(move |c| (s.run.id, c)))
        .collect();
    if !started.is_empty() {
        let mut q = link.stmt("WITH v(v_run, v_call) AS (");
        q.push_values(started.iter(), |b, (run, call)| {
            b.push_bind(*run).push_bind(call.as_str());
        });
        q.push(") UPDATE run_tool_calls SET status = 'started' FROM v WHERE run_id = v_run AND call_id = v_call");
        if lite {
            q.push(CALLS_OF_V);
        }
        tail.push(q);
    }
    let outcomes: Vec<(Uuid, &CallOutcome, &RawValue)> = survivors
        .iter()
        .flat_map(|(i, s)| {
            s.outcomes
                .iter()
                .zip(&pending[*i].results)
                .map(move |(o, r)| (s.run.id, o, &**r))
        })
        .collect();
    if !outcomes.is_empty() {
        let mut q = link.stmt("WITH v(v_run, v_call, v_result, v_error) AS (");
        q.push_values(outcomes.iter(), |b, (run, o, result)| {
            b.push_bind(*run)
                .push_bind(o.call_id.as_str())
                .push_bind(Json(*result))
                .push_bind(o.is_error);
        });
        q.push(") UPDATE run_tool_calls SET status = 'completed', result = v_result, is_error = v_error, finished_at = ");
        q.push_bind(now);
        q.push(" FROM v WHERE run_id = v_run AND call_id = v_call");
        if lite {
            q.push(CALLS_OF_V);
        }
        tail.push(q);
    }
    // Each write's events in one row: a step's, or a new run's `queued`
    // with, when it started at once, its first events.
    let queued_event = NewEvent {
        seq: 1,
        kind: "run.status",
        data: serde_json::json!({ "status": "queued" }),
    };
    let first_events: HashMap<Uuid, &[NewEvent]> = openings
        .iter()
        .map(|(run, _, start)| (*run, start.events.as_slice()))
        .collect();
    let step_groups: Vec<(Uuid, &RawValue, i64)> = survivors
        .iter()
        .filter_map(|(i, s)| {
            let (events, last) = pending[*i].events.as_ref()?;
            Some((s.run.id, &**events, *last))
        })
        .collect();
    let create_groups: Vec<(Uuid, Vec<&NewEvent>)> = creates
        .iter()
        .map(|c| {
            let mut events = vec![&queued_event];
            events.extend(first_events.get(&c.row.id).copied().unwrap_or_default());
            (c.row.id, events)
        })
        .collect();
    if !step_groups.is_empty() || !create_groups.is_empty() {
        let mut q =
            link.stmt("INSERT INTO run_event_groups (run_id, last_seq, events, created_at) ");
        q.push_values(step_groups, |b, (run, events, last)| {
            b.push_bind(run)
                .push_bind(last)
                .push_bind(Json(events))
                .push_bind(now);
        });
        if !create_groups.is_empty() {
            q.push_values(create_groups, |b, (run, events)| {
                let (packed, last) = pack(events);
                b.push_bind(run)
                    .push_bind(last)
                    .push_bind(packed)
                    .push_bind(now);
            });
        }
        tail.push(q);
    }
    for q in tail {
        link.execute(q, cache).await?;
    }

    let mut notify: Vec<String> = survivors
        .iter()
        .filter(|(i, _)| pending[*i].events.is_some())
        .map(|(_, s)| format!("e:{}", s.run.id))
        .chain(openings.iter().map(|(run, _, _)| format!("e:{run}")))
        .collect();
    let stopping: Vec<Uuid> = survivors
        .iter()
        .filter(|(_, s)| s.update.status.is_some_and(|st| st != RunStatus::Running))
        .map(|(_, s)| s.run.id)
        .collect();
    notify.extend(stopping.iter().map(|run| format!("s:{run}")));
    if !stopping.is_empty() || creates.len() > openings.len() {
        notify.push("q".into());
    }
    Ok(Outcome {
        at: now,
        appended,
        started: opened,
        notify,
    })
}

/// The numbers of `count` messages in `conversation`, from its next number
/// on (none when the conversation is gone: its runs go with it).
fn numbers(next_seq: &mut HashMap<Uuid, i64>, conversation: Uuid, count: usize) -> Vec<i64> {
    let Some(seq) = next_seq.get_mut(&conversation) else {
        return Vec::new();
    };
    let first = *seq;
    *seq += count as i64;
    (first..*seq).collect()
}

/// Numbers `messages` in `conversation` from its next number on (none when
/// the conversation is gone: its runs go with it).
fn number(
    next_seq: &mut HashMap<Uuid, i64>,
    conversation: Uuid,
    messages: &[NewMessage],
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<MessageRow> {
    let Some(seq) = next_seq.get_mut(&conversation) else {
        return Vec::new();
    };
    messages
        .iter()
        .map(|m| {
            let row = MessageRow {
                id: m.id,
                conversation_id: conversation,
                seq: *seq,
                role: m.role.to_owned(),
                content: Json(m.content.clone()),
                metadata: Json(m.metadata.clone()),
                created_at: now,
            };
            *seq += 1;
            row
        })
        .collect()
}

/// A queued run as it will be stored.
#[allow(clippy::too_many_arguments)]
pub fn queued_row(
    conversation: Uuid,
    user: Uuid,
    agent: Uuid,
    input: Option<Vec<ContentPart>>,
    limits: RunLimits,
    provider: &str,
    model: &str,
) -> RunRow {
    let now = db::now();
    RunRow {
        id: Uuid::now_v7(),
        conversation_id: conversation,
        user_id: user,
        agent_id: agent,
        status: "queued".into(),
        input: input.map(Json),
        input_seq: None,
        limits: Json(limits),
        provider: provider.to_owned(),
        model: model.to_owned(),
        step_count: 0,
        input_tokens: 0,
        output_tokens: 0,
        error: None,
        cancel_requested: false,
        attempts: 0,
        created_at: now,
        started_at: None,
        finished_at: None,
        updated_at: now,
        options: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::Map;

    fn text(role: &'static str, run: Uuid, text: &str) -> NewMessage {
        NewMessage {
            id: Uuid::now_v7(),
            role,
            content: vec![ContentPart::Text { text: text.into() }],
            metadata: Map::from_iter([("run_id".to_owned(), serde_json::json!(run))]),
        }
    }

    /// A run's last answer and the next run's input, stored in one batch:
    /// the answer is numbered first, and the next run starts (the first one
    /// no longer holds the conversation once the batch's fence has run).
    #[tokio::test]
    async fn a_run_started_in_a_batch_follows_the_step_that_ends_the_previous_one() {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        let db = Db::connect(&config).await.unwrap();
        db.migrate().await.unwrap();
        let Db::Sqlite(pool) = &db else {
            unreachable!("no database URL: SQLite")
        };
        let (user, agent, conversation, first, node) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let now = db::now();
        for (sql, id) in [
            ("INSERT INTO users (id, email, password_hash, role, created_at, updated_at) \
              VALUES ($1, 'a@example.com', 'x', 'admin', $2, $2)", user),
            ("INSERT INTO agents (id, user_id, name, model, version, created_at, updated_at) \
              VALUES ($1, $3, 'a', '{}', 1, $2, $2)", agent),
            ("INSERT INTO conversations (id, user_id, agent_id, created_at, updated_at) \
              VALUES ($1, $3, $4, $2, $2)", conversation),
            ("INSERT INTO runs (id, conversation_id, user_id, agent_id, status, limits, provider, model, \
              created_at, updated_at, lease_owner, attempts, input_seq) \
              VALUES ($1, $5, $3, $4, 'running', '{}', 'p', 'm', $2, $2, $6, 1, 1)", first),
        ] {
            sqlx::query(sql)
                .bind(id)
                .bind(now)
                .bind(user)
                .bind(agent)
                .bind(conversation)
                .bind(node)
                .execute(pool)
                .await
                .unwrap();
        }
        // The first run's input.
        sqlx::query(
            "INSERT INTO messages (id, conversation_id, seq, role, content, created_at) \
             VALUES ($1, $2, 1, 'user', '[]', $3)",
        )
        .bind(Uuid::now_v7())
        .bind(conversation)
        .bind(now)
        .execute(pool)
        .await
        .unwrap();

        let last_step = StepWrite {
            run: StepRun {
                id: first,
                conversation_id: conversation,
                step_count: 0,
            },
            owner: node,
            messages: vec![text("assistant", first, "the answer")],
            new_calls: Vec::new(),
            started: Vec::new(),
            outcomes: Vec::new(),
            update: RunUpdate {
                steps: 1,
                status: Some(RunStatus::Completed),
                ..RunUpdate::default()
            },
            events: Vec::new(),
        };
        let row = queued_row(
            conversation,
            user,
            agent,
            Some(vec![ContentPart::Text {
                text: "next".into(),
            }]),
            RunLimits::default(),
            "p",
            "m",
        );
        let second = row.id;
        let next = CreateWrite {
            start: Some(DirectStart {
                owner: node,
                lease_until: i64::MAX,
                message: Some(text("user", second, "next")),
                events: Vec::new(),
            }),
            row,
        };
        let mut conn = Conn::open(&db).unwrap();
        let last_step = PendingStep::new(last_step).unwrap();
        let mut outcome = write_batch(&mut conn, &[&last_step], &[&next])
            .await
            .unwrap();
        assert_eq!(outcome.appended[&0], [2], "the answer");
        let created = outcome.created(next.row);
        assert_eq!(created.row.status, "running");
        assert_eq!(created.row.input_seq, Some(3));
        assert_eq!(created.appended[0].seq, 3);
        let stored: Vec<(i64, String)> = sqlx::query_as(
            "SELECT seq, role FROM messages WHERE conversation_id = $1 ORDER BY seq",
        )
        .bind(conversation)
        .fetch_all(pool)
        .await
        .unwrap();
        assert_eq!(
            stored,
            [
                (1, "user".into()),
                (2, "assistant".into()),
                (3, "user".into())
            ]
        );
        let statuses: Vec<(Uuid, String, Option<i64>)> =
            sqlx::query_as("SELECT id, status, input_seq FROM runs ORDER BY created_at, id")
                .fetch_all(pool)
                .await
                .unwrap();
        assert_eq!(
            statuses,
            [
                (first, "completed".into(), Some(1)),
                (second, "running".into(), Some(3))
            ]
        );

        // The events of one write share a row; reads start anywhere in it.
        let step = StepWrite {
            run: StepRun {
                id: second,
                conversation_id: conversation,
                step_count: 0,
            },
            owner: node,
            messages: Vec::new(),
            new_calls: Vec::new(),
            started: Vec::new(),
            outcomes: Vec::new(),
            update: RunUpdate::default(),
            events: (2..=4)
                .map(|seq| NewEvent {
                    seq,
                    kind: "message.delta",
                    data: serde_json::json!({ "text": seq.to_string() }),
                })
                .collect(),
        };
        let step = PendingStep::new(step).unwrap();
        let mut outcome = write_batch(&mut conn, &[&step], &[]).await.unwrap();
        assert!(
            outcome.appended.remove(&0).is_some(),
            "the run holds its lease"
        );
        let repo = RunRepo::new(db.clone());
        let seqs = |events: Vec<EventRow>| events.iter().map(|e| e.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(repo.events(second, 0, 100).await.unwrap()),
            [1, 2, 3, 4]
        );
        assert_eq!(seqs(repo.events(second, 2, 100).await.unwrap()), [3, 4]);
        assert_eq!(seqs(repo.events(second, 0, 2).await.unwrap()), [1, 2]);
        assert_eq!(seqs(repo.events(second, 2, 1).await.unwrap()), [3]);
        assert_eq!(
            seqs(repo.events(second, 4, 100).await.unwrap()),
            [] as [i64; 0]
        );
        let third = repo.events(second, 2, 1).await.unwrap().remove(0);
        assert_eq!(third.kind, "message.delta");
        assert_eq!(third.data.0, serde_json::json!({ "text": "3" }));
        assert_eq!(repo.last_event(second).await.unwrap(), 4);
        db.close().await;
    }
}
