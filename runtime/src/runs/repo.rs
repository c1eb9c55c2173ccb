//! SQL of runs, their tool calls and events.
//!
//! A worker's steps are written by [`super::writer`], fenced by the lease
//! (`lease_owner = <this node> AND status = 'running'`). Writes here that
//! change what streams see send a `NOTIFY` on PostgreSQL (see
//! [`super::bus`]), delivered when they commit.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::types::Json;
use uuid::Uuid;

use super::bus::CHANNEL;
use super::model::*;
use super::usage::UsageLimits;
use crate::agents::repo::AgentRow;
use crate::conversations::model::ContentPart;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::on_db;

/// A row of `runs` (without the lease columns).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunRow {
    pub id: Uuid,
    pub conversation_id: Uuid,
    pub user_id: Uuid,
    pub agent_id: Uuid,
    pub status: String,
    pub input: Option<Json<Vec<ContentPart>>>,
    pub input_seq: Option<i64>,
    pub limits: Json<RunLimits>,
    pub provider: String,
    pub model: String,
    pub step_count: i64,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub error: Option<Json<RunError>>,
    pub cancel_requested: bool,
    pub attempts: i64,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// What an API client asked of this run beyond its agent's definition.
    pub options: Option<Json<RunOptions>>,
}

impl RunRow {
    /// Whether `name` is a tool the run's client executes itself.
    pub fn is_client_tool(&self, name: &str) -> bool {
        self.options
            .as_ref()
            .is_some_and(|o| o.0.is_client_tool(name))
    }

    /// The parsed status (the CHECK constraint guarantees one).
    pub fn status(&self) -> RunStatus {
        RunStatus::parse(&self.status).unwrap_or(RunStatus::Failed)
    }
}

/// A row of `run_tool_calls`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ToolCallRow {
    pub run_id: Uuid,
    pub call_id: String,
    pub step: i64,
    pub position: i64,
    pub name: String,
    pub arguments: Json<Value>,
    pub arguments_error: Option<String>,
    pub idempotent: bool,
    pub status: String,
    pub decision: Option<Json<Decision>>,
    pub approval_expires_ms: Option<i64>,
}

/// One stored event.
#[derive(Debug, Clone)]
pub struct EventRow {
    pub seq: i64,
    pub kind: String,
    pub data: Json<Value>,
    pub created_at: DateTime<Utc>,
}

/// An event as a row of `run_event_groups` holds it (the events of one
/// write share a row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackedEvent {
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Value,
}

/// `events` as one row's `events` and `last_seq` (`events` is not empty).
pub fn pack<'a>(events: impl IntoIterator<Item = &'a NewEvent>) -> (Json<Vec<PackedRef<'a>>>, i64) {
    let packed: Vec<PackedRef<'a>> = events
        .into_iter()
        .map(|e| PackedRef {
            seq: e.seq,
            kind: e.kind,
            data: &e.data,
        })
        .collect();
    let last = packed.iter().map(|e| e.seq).max().unwrap_or(0);
    (Json(packed), last)
}

/// A borrowed [`PackedEvent`], to store.
#[derive(Debug, Serialize)]
pub struct PackedRef<'a> {
    seq: i64,
    #[serde(rename = "type")]
    kind: &'a str,
    data: &'a Value,
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub seq: i64,
    pub kind: &'static str,
    pub data: Value,
}

/// A tool call to store with the model output that asked for it.
#[derive(Debug, Clone)]
pub struct NewCall {
    pub call_id: String,
    pub position: i64,
    pub name: String,
    pub arguments: Value,
    pub arguments_error: Option<String>,
    pub idempotent: bool,
    /// `planned` or `pending_approval`.
    pub status: &'static str,
    pub approval_expires_ms: Option<i64>,
}

/// A message to append in a step's transaction.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub id: Uuid,
    pub role: &'static str,
    pub content: Vec<ContentPart>,
    pub metadata: Map<String, Value>,
}

/// How a step changes the run row.
#[derive(Debug, Clone, Default)]
pub struct RunUpdate {
    /// Model calls to add.
    pub steps: i64,
    /// Tokens to add.
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// A new state (and the end of the lease when it is not `running`).
    pub status: Option<RunStatus>,
    pub error: Option<RunError>,
    /// The first message appended is the one that started the run.
    pub sets_input: bool,
}

impl RunUpdate {
    /// True when the run's row stays as it is (the input's number aside,
    /// which is written on its own).
    pub fn is_noop(&self) -> bool {
        self.steps == 0
            && self.input_tokens == 0
            && self.output_tokens == 0
            && self.status.is_none()
            && self.error.is_none()
    }
}

/// A tool call's outcome to store.
#[derive(Debug, Clone)]
pub struct CallOutcome {
    pub call_id: String,
    pub result: Value,
    pub is_error: bool,
}

const COLUMNS: &str = "id, conversation_id, user_id, agent_id, status, input, input_seq, limits, provider, model, \
     step_count, input_tokens, output_tokens, error, cancel_requested, attempts, created_at, started_at, finished_at, updated_at, options";
const CALL_COLUMNS: &str = "run_id, call_id, step, position, name, arguments, arguments_error, idempotent, status, decision, approval_expires_ms";

/// Statuses that hold or wait for the conversation.
pub(crate) const UNFINISHED: &str = "('queued', 'running', 'requires_action')";

/// The current time in Unix milliseconds (lease deadlines).
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Stores events (and, on PostgreSQL, notifies) in an open transaction.
macro_rules! insert_events {
    ($tx:expr, $D:ty, $postgres:expr, $run:expr, $events:expr, $now:expr) => {{
        if !$events.is_empty() {
            let (packed, last) = pack($events.iter());
            sqlx::query::<$D>(
                "INSERT INTO run_event_groups (run_id, last_seq, events, created_at) VALUES ($1, $2, $3, $4)",
            )
            .bind($run)
            .bind(last)
            .bind(packed)
            .bind($now)
            .execute(&mut *$tx)
            .await?;
            if $postgres {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(format!("e:{}", $run))
                    .execute(&mut *$tx)
                    .await?;
            }
        }
    }};
}

/// Why a fenced write did nothing.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Another worker owns the run now (or it was cancelled meanwhile).
    #[error("the run's lease was lost")]
    LeaseLost,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] Error),
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> Self {
        StepError::Db(e.into())
    }
}

/// What starting a run needs, read at once (see [`RunRepo::start_context`]).
#[derive(Debug)]
pub struct StartContext {
    /// The conversation's owner (the run's user).
    pub owner: Uuid,
    /// The conversation's agent.
    pub agent: AgentRow,
    /// The owner's stored usage limits.
    pub limits: Option<UsageLimits>,
}

/// Queries over runs.
#[derive(Clone, Debug)]
pub struct RunRepo {
    db: Db,
}

impl RunRepo {
    /// A repository over `db`.
    pub fn new(db: Db) -> Self {
        RunRepo { db }
    }

    fn postgres(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// Replaces a run's options.
    pub async fn set_options(&self, id: Uuid, options: &RunOptions) -> Result<()> {
        on_db!(&self.db, pool => {
            sqlx::query("UPDATE runs SET options = $2 WHERE id = $1")
                .bind(id)
                .bind(Json(options))
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Creates a queued run, applying `policy` to the conversation's
    /// unfinished runs. Returns the run and the ids of running runs that
    /// must be told to stop.
    #[allow(clippy::too_many_arguments)]
    pub async fn create(
        &self,
        id: Uuid,
        conversation: Uuid,
        user: Uuid,
        agent: Uuid,
        input: Option<&[ContentPart]>,
        limits: &RunLimits,
        provider: &str,
        model: &str,
        policy: ActivePolicy,
        options: Option<&RunOptions>,
    ) -> Result<(RunRow, Vec<Uuid>)> {
        let now = db::now();
        let postgres = self.postgres();
        on_db!(&self.db, pool, D => {
            let mut tx = pool.begin().await?;
            // Serialise run creation per conversation.
            let touched = sqlx::query("UPDATE conversations SET updated_at = $2 WHERE id = $1")
                .bind(conversation)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if touched == 0 {
                return Err(Error::NotFound("conversation"));
            }
            let active: Vec<(Uuid, String)> = sqlx::query_as(&format!(
                "SELECT id, status FROM runs WHERE conversation_id = $1 AND status IN {UNFINISHED}"
            ))
            .bind(conversation)
            .fetch_all(&mut *tx)
            .await?;
            let mut to_signal = Vec::new();
            if !active.is_empty() {
                match policy {
                    ActivePolicy::Queue => {}
                    ActivePolicy::Reject => {
                        return Err(Error::Conflict {
                            message: "the conversation already has an unfinished run".into(),
                            details: Some(serde_json::json!({
                                "active_runs": active.iter().map(|a| a.0).collect::<Vec<_>>()
                            })),
                        });
                    }
                    ActivePolicy::Interrupt => {
                        for (other, status) in &active {
                            if status == "running" {
                                sqlx::query("UPDATE runs SET cancel_requested = TRUE, updated_at = $2 WHERE id = $1")
                                    .bind(other)
                                    .bind(now)
                                    .execute(&mut *tx)
                                    .await?;
                                to_signal.push(*other);
                            } else {
                                let seq: i64 = sqlx::query_scalar(
                                    "SELECT COALESCE(MAX(last_seq), 0) FROM run_event_groups WHERE run_id = $1",
                                )
                                .bind(other)
                                .fetch_one(&mut *tx)
                                .await?;
                                sqlx::query(
                                    "UPDATE runs SET status = 'cancelled', finished_at = $2, updated_at = $2,
                                         lease_owner = NULL, lease_until = NULL WHERE id = $1",
                                )
                                .bind(other)
                                .bind(now)
                                .execute(&mut *tx)
                                .await?;
                                let events = cancelled_events(seq, "interrupted by a newer run");
                                insert_events!(tx, D, postgres, *other, events, now);
                            }
                        }
                    }
                }
            }
            let row: RunRow = sqlx::query_as(&format!(
                "INSERT INTO runs (id, conversation_id, user_id, agent_id, status, input, limits, provider, model, created_at, updated_at, options)
                 VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7, $8, $9, $9, $10) RETURNING {COLUMNS}"
            ))
            .bind(id)
            .bind(conversation)
            .bind(user)
            .bind(agent)
            .bind(input.map(Json))
            .bind(Json(limits))
            .bind(provider)
            .bind(model)
            .bind(now)
            .bind(options.map(Json))
            .fetch_one(&mut *tx)
            .await?;
            let events = [NewEvent { seq: 1, kind: "run.status", data: serde_json::json!({ "status": "queued" }) }];
            insert_events!(tx, D, postgres, id, events, now);
            if postgres {
                sqlx::query("SELECT pg_notify($1, 'q')").bind(CHANNEL).execute(&mut *tx).await?;
                for other in &to_signal {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(CHANNEL)
                        .bind(format!("c:{other}"))
                        .execute(&mut *tx)
                        .await?;
                }
            }
            tx.commit().await?;
            Ok((row, to_signal))
        })
    }

    /// The owner, live agent and usage limits of `conversation`, if `owner`
    /// (when given) owns it, in one read. `None` when the conversation is
    /// not visible or its agent was deleted.
    pub async fn start_context(
        &self,
        conversation: Uuid,
        owner: Option<Uuid>,
    ) -> Result<Option<StartContext>> {
        use sqlx::{FromRow, Row};
        let agent_columns: Vec<String> = crate::agents::repo::COLUMNS
            .split(", ")
            .map(|c| format!("a.{c}"))
            .collect();
        on_db!(&self.db, pool, D => {
            let mut qb = sqlx::QueryBuilder::<D>::new(format!(
                "SELECT {}, c.user_id AS c_owner, l.user_id AS l_user, l.daily_tokens AS l_daily, \
                   l.monthly_tokens AS l_monthly, l.daily_runs AS l_runs \
                 FROM conversations c JOIN agents a ON a.id = c.agent_id AND a.deleted_at IS NULL \
                 LEFT JOIN usage_limits l ON l.user_id = c.user_id WHERE c.id = ",
                agent_columns.join(", ")
            ));
            qb.push_bind(conversation);
            if let Some(owner) = owner {
                qb.push(" AND c.user_id = ").push_bind(owner);
            }
            let Some(row) = qb.build().fetch_optional(pool).await? else {
                return Ok(None);
            };
            let limits = match row.try_get::<Option<Uuid>, _>("l_user")? {
                Some(_) => Some(UsageLimits {
                    daily_tokens: row.try_get("l_daily")?,
                    monthly_tokens: row.try_get("l_monthly")?,
                    daily_runs: row.try_get("l_runs")?,
                }),
                None => None,
            };
            Ok(Some(StartContext {
                owner: row.try_get("c_owner")?,
                agent: AgentRow::from_row(&row)?,
                limits,
            }))
        })
    }

    /// A run, if `owner` (when given) started it.
    pub async fn get(&self, id: Uuid, owner: Option<Uuid>) -> Result<Option<RunRow>> {
        on_db!(&self.db, pool, D => {
            let mut qb = sqlx::QueryBuilder::<D>::new(format!("SELECT {COLUMNS} FROM runs WHERE id = "));
            qb.push_bind(id);
            if let Some(owner) = owner {
                qb.push(" AND user_id = ").push_bind(owner);
            }
            Ok(qb.build_query_as().fetch_optional(pool).await?)
        })
    }

    /// The runs of a conversation, newest first.
    pub async fn list(
        &self,
        conversation: Uuid,
        status: Option<RunStatus>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<RunRow>, i64)> {
        on_db!(&self.db, pool, D => {
            let mut count = sqlx::QueryBuilder::<D>::new("SELECT COUNT(*) FROM runs WHERE conversation_id = ");
            let mut select = sqlx::QueryBuilder::<D>::new(format!("SELECT {COLUMNS} FROM runs WHERE conversation_id = "));
            for qb in [&mut count, &mut select] {
                qb.push_bind(conversation);
                match status {
                    // A running run whose tool call waits for the user's
                    // answer shows as waiting too.
                    Some(RunStatus::RequiresAction) => {
                        qb.push(" AND (status = 'requires_action' OR (status = 'running' AND EXISTS \
                                 (SELECT 1 FROM run_elicitations e WHERE e.run_id = runs.id AND e.status = 'pending')))");
                    }
                    Some(RunStatus::Running) => {
                        qb.push(" AND status = 'running' AND NOT EXISTS \
                                 (SELECT 1 FROM run_elicitations e WHERE e.run_id = runs.id AND e.status = 'pending')");
                    }
                    Some(status) => {
                        qb.push(" AND status = ").push_bind(status.as_str());
                    }
                    None => {}
                }
            }
            select
                .push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(limit)
                .push(" OFFSET ")
                .push_bind(offset);
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let rows: Vec<RunRow> = select.build_query_as().fetch_all(pool).await?;
            Ok((rows, total))
        })
    }

    /// The tool calls of a run, in the order the model asked for them.
    pub async fn tool_calls(&self, run: Uuid) -> Result<Vec<ToolCallRow>> {
        let sql = format!(
            "SELECT {CALL_COLUMNS} FROM run_tool_calls WHERE run_id = $1 ORDER BY step, position"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).bind(run).fetch_all(pool).await?))
    }

    /// Events after `after`, at most `limit`.
    pub async fn events(&self, run: Uuid, after: i64, limit: i64) -> Result<Vec<EventRow>> {
        // Each row holds at least one event: `limit` rows hold enough.
        let groups: Vec<(Json<Vec<PackedEvent>>, DateTime<Utc>)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT events, created_at FROM run_event_groups WHERE run_id = $1 AND last_seq > $2 \
             ORDER BY last_seq LIMIT $3",
        )
        .bind(run)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await?);
        let limit = usize::try_from(limit).unwrap_or(0);
        let mut out = Vec::new();
        for (Json(mut events), created_at) in groups {
            events.sort_by_key(|e| e.seq);
            out.extend(
                events
                    .into_iter()
                    .filter(|e| e.seq > after)
                    .map(|e| EventRow {
                        seq: e.seq,
                        kind: e.kind,
                        data: Json(e.data),
                        created_at,
                    }),
            );
            if out.len() >= limit {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// The last event's seq.
    pub async fn last_event(&self, run: Uuid) -> Result<i64> {
        Ok(on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT COALESCE(MAX(last_seq), 0) FROM run_event_groups WHERE run_id = $1",
        )
        .bind(run)
        .fetch_one(pool)
        .await?))
    }

    /// Whether any run is queued.
    pub async fn any_queued(&self) -> Result<bool> {
        Ok(on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM runs WHERE status = 'queued')",
        )
        .fetch_one(pool)
        .await?))
    }

    /// Claims up to `limit` queued runs for `owner`: the oldest unfinished
    /// run of each conversation that has none running or waiting.
    pub async fn claim(&self, owner: Uuid, lease_ms: i64, limit: i64) -> Result<Vec<RunRow>> {
        let now = db::now();
        let pick = "SELECT r.id FROM runs r WHERE r.status = 'queued'
               AND NOT EXISTS (SELECT 1 FROM runs o WHERE o.conversation_id = r.conversation_id
                               AND o.status IN ('running', 'requires_action'))
               AND NOT EXISTS (SELECT 1 FROM runs p WHERE p.conversation_id = r.conversation_id
                               AND p.status = 'queued' AND (p.created_at, p.id) < (r.created_at, r.id))
             ORDER BY r.created_at, r.id LIMIT $4";
        let lock = if self.postgres() {
            " FOR UPDATE SKIP LOCKED"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE runs SET status = 'running', lease_owner = $1, lease_until = $2, attempts = attempts + 1,
                 started_at = COALESCE(started_at, $3), updated_at = $3
             WHERE id IN ({pick}{lock}) RETURNING {COLUMNS}"
        );
        let result = on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(owner)
            .bind(now_ms() + lease_ms)
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await);
        match result {
            Ok(rows) => Ok(rows),
            // Two nodes raced for the same conversation: the unique index
            // let one win; the loser claims next time.
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// Extends the leases of `owner`'s running runs; returns those whose
    /// cancellation was requested.
    pub async fn heartbeat(&self, owner: Uuid, lease_ms: i64) -> Result<Vec<Uuid>> {
        let cancelled: Vec<Option<Uuid>> = on_db!(&self.db, pool => sqlx::query_scalar(
            "UPDATE runs SET lease_until = $2 WHERE lease_owner = $1 AND status = 'running'
             RETURNING CASE WHEN cancel_requested THEN id END",
        )
        .bind(owner)
        .bind(now_ms() + lease_ms)
        .fetch_all(pool)
        .await?);
        Ok(cancelled.into_iter().flatten().collect())
    }

    /// Hands `owner`'s running runs back to the queue; returns how many.
    pub async fn release(&self, owner: Uuid) -> Result<u64> {
        let notify = if self.postgres() {
            "SELECT pg_notify('orchestra_runs', 'q')"
        } else {
            "SELECT 1"
        };
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let n = sqlx::query(
                "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = $2
                 WHERE lease_owner = $1 AND status = 'running'",
            )
            .bind(owner)
            .bind(db::now())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query(notify).execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(n)
        })
    }

    /// Re-queues runs whose lease expired, and rejects approvals that
    /// expired (re-queueing their runs). Returns how many runs were re-queued.
    pub async fn sweep(&self) -> Result<u64> {
        let now = db::now();
        let ms = now_ms();
        let postgres = self.postgres();
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let expired = sqlx::query(
                "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = $2
                 WHERE status = 'running' AND lease_until < $1",
            )
            .bind(ms)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            let decision = Json(Decision {
                call_id: String::new(),
                action: DecisionAction::Reject,
                arguments: None,
                reason: Some("the approval expired".into()),
                result: None,
                decided_by: None,
            });
            let runs: Vec<Uuid> = sqlx::query_scalar(
                "UPDATE run_tool_calls SET status = 'approved', decision = $2
                 WHERE status = 'pending_approval' AND approval_expires_ms < $1 RETURNING run_id",
            )
            .bind(ms)
            .bind(decision)
            .fetch_all(&mut *tx)
            .await?;
            let mut requeued = expired;
            for run in runs {
                requeued += sqlx::query(
                    "UPDATE runs SET status = 'queued', updated_at = $2 WHERE id = $1 AND status = 'requires_action'
                     AND NOT EXISTS (SELECT 1 FROM run_tool_calls c WHERE c.run_id = $1 AND c.status = 'pending_approval')",
                )
                .bind(run)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            if requeued > 0 && postgres {
                sqlx::query("SELECT pg_notify($1, 'q')").bind(CHANNEL).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(requeued)
        })
    }

    /// Asks for a run to stop. A queued or waiting run is cancelled at once
    /// (returns `true`); a running one gets the flag and its worker stops it.
    pub async fn cancel(&self, id: Uuid, reason: &str) -> Result<Option<bool>> {
        let now = db::now();
        let postgres = self.postgres();
        on_db!(&self.db, pool, D => {
            let mut tx = pool.begin().await?;
            // A write first: it takes the lock (SQLite) before anything is read.
            let status: Option<String> = sqlx::query_scalar(
                "UPDATE runs SET updated_at = $2 WHERE id = $1 RETURNING status",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(status) = status else { return Ok(None) };
            let done = match status.as_str() {
                "queued" | "requires_action" => {
                    let changed = sqlx::query(
                        "UPDATE runs SET status = 'cancelled', finished_at = $2, updated_at = $2
                         WHERE id = $1 AND status IN ('queued', 'requires_action')",
                    )
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if changed == 1 {
                        let seq: i64 = sqlx::query_scalar(
                            "SELECT COALESCE(MAX(last_seq), 0) FROM run_event_groups WHERE run_id = $1",
                        )
                        .bind(id)
                        .fetch_one(&mut *tx)
                        .await?;
                        let events = cancelled_events(seq, reason);
                        insert_events!(tx, D, postgres, id, events, now);
                        if postgres {
                            sqlx::query("SELECT pg_notify($1, 'q')").bind(CHANNEL).execute(&mut *tx).await?;
                        }
                        true
                    } else {
                        false
                    }
                }
                "running" => {
                    sqlx::query("UPDATE runs SET cancel_requested = TRUE, updated_at = $2 WHERE id = $1")
                        .bind(id)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                    if postgres {
                        sqlx::query("SELECT pg_notify($1, $2)")
                            .bind(CHANNEL)
                            .bind(format!("c:{id}"))
                            .execute(&mut *tx)
                            .await?;
                    }
                    false
                }
                _ => false,
            };
            tx.commit().await?;
            Ok(Some(done))
        })
    }

    /// Applies approval decisions to a waiting run; re-queues it when no call
    /// is left pending. Returns whether it was re-queued.
    pub async fn decide(&self, id: Uuid, decisions: &[Decision]) -> Result<bool> {
        let now = db::now();
        let postgres = self.postgres();
        on_db!(&self.db, pool, D => {
            let mut tx = pool.begin().await?;
            // Lock the run for the decision.
            let status: Option<String> = sqlx::query_scalar(
                "UPDATE runs SET updated_at = $2 WHERE id = $1 RETURNING status",
            )
            .bind(id)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            if status.as_deref() != Some("requires_action") {
                return Err(Error::conflict("the run is not waiting for approval"));
            }
            for (i, d) in decisions.iter().enumerate() {
                let changed = sqlx::query(
                    "UPDATE run_tool_calls SET status = 'approved', decision = $3
                     WHERE run_id = $1 AND call_id = $2 AND status = 'pending_approval'",
                )
                .bind(id)
                .bind(&d.call_id)
                .bind(Json(d))
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if changed == 0 {
                    return Err(Error::invalid_field(
                        &format!("decisions[{i}].call_id"),
                        "is not a tool call waiting for approval in this run",
                    ));
                }
            }
            let pending: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM run_tool_calls WHERE run_id = $1 AND status = 'pending_approval'",
            )
            .bind(id)
            .fetch_one(&mut *tx)
            .await?;
            let requeue = pending == 0;
            let seq: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(last_seq), 0) FROM run_event_groups WHERE run_id = $1")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
            let mut events = vec![NewEvent {
                seq: seq + 1,
                kind: "approval.decided",
                data: serde_json::json!({ "decisions": decisions }),
            }];
            if requeue {
                sqlx::query("UPDATE runs SET status = 'queued' WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                events.push(NewEvent {
                    seq: seq + 2,
                    kind: "run.status",
                    data: serde_json::json!({ "status": "queued" }),
                });
                if postgres {
                    sqlx::query("SELECT pg_notify($1, 'q')").bind(CHANNEL).execute(&mut *tx).await?;
                }
            }
            insert_events!(tx, D, postgres, id, events, now);
            tx.commit().await?;
            Ok(requeue)
        })
    }
}

/// The events of a cancellation, after the event `seq`.
pub fn cancelled_events(seq: i64, reason: &str) -> Vec<NewEvent> {
    vec![
        NewEvent {
            seq: seq + 1,
            kind: "run.status",
            data: serde_json::json!({ "status": "cancelled", "reason": reason }),
        },
        NewEvent {
            seq: seq + 2,
            kind: "done",
            data: serde_json::json!({ "status": "cancelled", "reason": reason }),
        },
    ]
}

/// A row of `run_elicitations`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ElicitationRow {
    pub id: Uuid,
    pub run_id: Uuid,
    pub call_id: String,
    pub server: String,
    pub mode: String,
    pub message: String,
    pub requested_schema: Option<Json<Value>>,
    pub url: Option<String>,
    pub status: String,
    pub content: Option<Json<Value>>,
    pub expires_ms: i64,
}

/// A question to store (see [`RunRepo::ask`]).
pub struct NewElicitation<'a> {
    pub id: Uuid,
    pub run: Uuid,
    pub call_id: &'a str,
    pub server: &'a str,
    pub mode: &'a str,
    pub message: &'a str,
    pub requested_schema: Option<&'a Value>,
    pub url: Option<&'a str>,
    pub expires_ms: i64,
}

const ELICITATION_COLUMNS: &str =
    "id, run_id, call_id, server, mode, message, requested_schema, url, status, content, expires_ms";

impl RunRepo {
    /// Stores a pending question of a run's tool call.
    pub async fn ask(&self, q: NewElicitation<'_>) -> Result<()> {
        let now = db::now();
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO run_elicitations (id, run_id, call_id, server, mode, message, requested_schema, url,
                                           status, expires_ms, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', $9, $10)",
        )
        .bind(q.id)
        .bind(q.run)
        .bind(q.call_id)
        .bind(q.server)
        .bind(q.mode)
        .bind(q.message)
        .bind(q.requested_schema.map(Json))
        .bind(q.url)
        .bind(q.expires_ms)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// One question of run `run`.
    pub async fn elicitation(&self, run: Uuid, id: Uuid) -> Result<Option<ElicitationRow>> {
        let sql = format!(
            "SELECT {ELICITATION_COLUMNS} FROM run_elicitations WHERE run_id = $1 AND id = $2"
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(&sql).bind(run).bind(id).fetch_optional(pool).await?),
        )
    }

    /// The pending questions of run `run`, oldest first.
    pub async fn pending_elicitations(&self, run: Uuid) -> Result<Vec<ElicitationRow>> {
        let sql = format!(
            "SELECT {ELICITATION_COLUMNS} FROM run_elicitations WHERE run_id = $1 AND status = 'pending'
             ORDER BY created_at, id"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).bind(run).fetch_all(pool).await?))
    }

    /// Ends a pending question in `status` (`accept`, `decline`, `cancel`,
    /// `expired`, `withdrawn`) with the user's `content`; false when it was
    /// no longer pending. On PostgreSQL the run's worker, wherever it is, is
    /// told to look again.
    pub async fn settle_elicitation(
        &self,
        run: Uuid,
        id: Uuid,
        status: &str,
        content: Option<&Value>,
        by: Option<Uuid>,
    ) -> Result<bool> {
        let now = db::now();
        let postgres = self.postgres();
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let changed = sqlx::query(
                "UPDATE run_elicitations SET status = $3, content = $4, answered_by = $5, answered_at = $6
                 WHERE run_id = $1 AND id = $2 AND status = 'pending'",
            )
            .bind(run)
            .bind(id)
            .bind(status)
            .bind(content.map(Json))
            .bind(by)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 1 && postgres {
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(format!("e:{run}"))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(changed == 1)
        })
    }

    /// Withdraws the pending questions of run `run` (their calls are gone:
    /// the run is resumed after its worker stopped).
    pub async fn withdraw_elicitations(&self, run: Uuid) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE run_elicitations SET status = 'withdrawn', answered_at = $2
             WHERE run_id = $1 AND status = 'pending'",
        )
        .bind(run)
        .bind(db::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Tells waiters on other nodes that run `run` stopped to wait for its
    /// user (PostgreSQL; one process signals its own bus).
    pub async fn notify_stopped(&self, run: Uuid) -> Result<()> {
        if self.postgres() {
            on_db!(&self.db, pool => sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(format!("s:{run}"))
                .execute(pool)
                .await
                .map(|_| ())?);
        }
        Ok(())
    }
}
