//! The SQL of schedules and their firings.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use super::model::Timing;
use super::timing::Planned;
use crate::db::{self, Db};
use crate::error::Result;
use crate::on_db;

/// A stored schedule.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ScheduleRow {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub agent_id: Uuid,
    pub name: String,
    pub message: String,
    pub timing: Json<Timing>,
    pub conversation_id: Option<Uuid>,
    pub fixed_conversation: bool,
    pub overlap: String,
    pub catch_up: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub next_fire_ms: Option<i64>,
    pub last_fired_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, owner_id, agent_id, name, message, timing, conversation_id, \
    fixed_conversation, overlap, catch_up, state, state_reason, next_fire_ms, last_fired_at, \
    created_at, updated_at";

/// A stored firing, with its run's status.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct FiringRow {
    pub id: Uuid,
    pub schedule_id: Uuid,
    pub due_ms: i64,
    pub status: String,
    pub reason: Option<String>,
    pub missed: i64,
    pub run_id: Option<Uuid>,
    pub conversation_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
}

const FIRING_COLUMNS: &str = "id, schedule_id, due_ms, status, reason, missed, run_id, \
    conversation_id, created_at, started_at";

/// The SQL of schedules.
#[derive(Debug, Clone)]
pub struct ScheduleRepo {
    db: Db,
}

impl ScheduleRepo {
    /// A repository over `db`.
    pub fn new(db: Db) -> Self {
        ScheduleRepo { db }
    }

    fn lock(&self) -> &'static str {
        match self.db {
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
            Db::Sqlite(_) => "",
        }
    }

    /// Inserts a schedule.
    pub async fn insert(&self, row: &ScheduleRow) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(&format!(
            "INSERT INTO schedules ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)"
        ))
        .bind(row.id)
        .bind(row.owner_id)
        .bind(row.agent_id)
        .bind(&row.name)
        .bind(&row.message)
        .bind(&row.timing)
        .bind(row.conversation_id)
        .bind(row.fixed_conversation)
        .bind(&row.overlap)
        .bind(&row.catch_up)
        .bind(&row.state)
        .bind(&row.state_reason)
        .bind(row.next_fire_ms)
        .bind(row.last_fired_at)
        .bind(row.created_at)
        .bind(row.updated_at)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Writes back every field a user may change (and the state and the
    /// next firing).
    pub async fn update(&self, row: &ScheduleRow) -> Result<bool> {
        let n = on_db!(&self.db, pool => sqlx::query(
            "UPDATE schedules SET name = $2, message = $3, timing = $4, overlap = $5, catch_up = $6,
                 state = $7, state_reason = $8, next_fire_ms = $9, conversation_id = $10,
                 updated_at = $11, lease_owner = NULL, lease_until = NULL
             WHERE id = $1",
        )
        .bind(row.id)
        .bind(&row.name)
        .bind(&row.message)
        .bind(&row.timing)
        .bind(&row.overlap)
        .bind(&row.catch_up)
        .bind(&row.state)
        .bind(&row.state_reason)
        .bind(row.next_fire_ms)
        .bind(row.conversation_id)
        .bind(db::now())
        .execute(pool)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// One schedule, within `owner` when given.
    pub async fn get(&self, id: Uuid, owner: Option<Uuid>) -> Result<Option<ScheduleRow>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM schedules WHERE id = $1 AND ($2 IS NULL OR owner_id = $2)"
        ))
        .bind(id)
        .bind(owner)
        .fetch_optional(pool)
        .await?))
    }

    /// A page of schedules, oldest first.
    pub async fn list(
        &self,
        owner: Option<Uuid>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<ScheduleRow>, i64)> {
        on_db!(&self.db, pool => {
            let rows = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM schedules WHERE ($1 IS NULL OR owner_id = $1)
                 ORDER BY created_at, id LIMIT $2 OFFSET $3"
            ))
            .bind(owner)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
            let total: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM schedules WHERE ($1 IS NULL OR owner_id = $1)",
            )
            .bind(owner)
            .fetch_one(pool)
            .await?;
            Ok((rows, total))
        })
    }

    /// How many schedules `owner` has.
    pub async fn count(&self, owner: Uuid) -> Result<i64> {
        Ok(on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM schedules WHERE owner_id = $1",
        )
        .bind(owner)
        .fetch_one(pool)
        .await?))
    }

    /// Deletes a schedule and its firings.
    pub async fn delete(&self, id: Uuid) -> Result<bool> {
        let n = on_db!(&self.db, pool => sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(n == 1)
    }

    /// Leases up to `limit` active schedules due at `now_ms` to `node`.
    pub async fn claim_due(
        &self,
        node: Uuid,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<ScheduleRow>> {
        let sql = format!(
            "UPDATE schedules SET lease_owner = $1, lease_until = $2
             WHERE id IN (SELECT id FROM schedules WHERE state = 'active' AND next_fire_ms <= $3
                          AND (lease_until IS NULL OR lease_until < $3)
                          ORDER BY next_fire_ms LIMIT $4{})
             RETURNING {COLUMNS}",
            self.lock()
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(node)
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Records the plans of schedules `node` leased, in one transaction:
    /// each schedule's firings (each occurrence once: the unique key of
    /// schedule and due time) and its next occurrence, only if the lease
    /// still holds and nobody changed the schedule's times meanwhile (its
    /// `next_fire_ms` is still the one planned from). Returns how many
    /// firings were recorded to start.
    pub async fn record_plans(
        &self,
        node: Uuid,
        plans: &[(&ScheduleRow, Vec<Planned>, Option<i64>)],
    ) -> Result<usize> {
        let now = db::now();
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let mut recorded = 0;
            for (schedule, firings, next_ms) in plans {
                let last_fired = firings.iter().any(|f| !f.skipped).then_some(now);
                let moved = sqlx::query(
                    "UPDATE schedules SET next_fire_ms = $3,
                         state = CASE WHEN $3 IS NULL AND state = 'active' THEN 'finished' ELSE state END,
                         last_fired_at = COALESCE($4, last_fired_at),
                         lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND lease_owner = $2 AND next_fire_ms = $5",
                )
                .bind(schedule.id)
                .bind(node)
                .bind(*next_ms)
                .bind(last_fired)
                .bind(schedule.next_fire_ms)
                .execute(&mut *tx)
                .await?
                .rows_affected();
                if moved == 0 {
                    continue;
                }
                for f in firings {
                    let (status, reason) = if f.skipped {
                        ("skipped", Some("missed while no node was running; the schedule skips missed times"))
                    } else {
                        ("pending", None)
                    };
                    let conversation = if schedule.fixed_conversation {
                        schedule.conversation_id
                    } else {
                        Some(Uuid::now_v7())
                    };
                    let n = sqlx::query(
                        "INSERT INTO schedule_firings (id, schedule_id, due_ms, status, reason, missed,
                             run_id, conversation_id, created_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                         ON CONFLICT (schedule_id, due_ms) DO NOTHING",
                    )
                    .bind(Uuid::now_v7())
                    .bind(schedule.id)
                    .bind(f.due_ms)
                    .bind(status)
                    .bind(reason)
                    .bind(f.missed)
                    .bind((!f.skipped).then(Uuid::now_v7))
                    .bind(conversation)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    if n == 1 && !f.skipped {
                        recorded += 1;
                    }
                }
            }
            tx.commit().await?;
            Ok(recorded)
        })
    }

    /// Leases up to `limit` pending firings to `node`: the oldest pending
    /// one of each schedule, whose lease (if any) expired.
    pub async fn claim_firings(
        &self,
        node: Uuid,
        now_ms: i64,
        lease_ms: i64,
        limit: i64,
    ) -> Result<Vec<FiringRow>> {
        let sql = format!(
            "UPDATE schedule_firings SET lease_owner = $1, lease_until = $2
             WHERE id IN (SELECT f.id FROM schedule_firings f
                          WHERE f.status = 'pending' AND (f.lease_until IS NULL OR f.lease_until < $3)
                            AND NOT EXISTS (SELECT 1 FROM schedule_firings p WHERE p.schedule_id = f.schedule_id
                                            AND p.status = 'pending' AND p.due_ms < f.due_ms)
                          ORDER BY f.due_ms LIMIT $4{})
             RETURNING {FIRING_COLUMNS}",
            self.lock()
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(node)
            .bind(now_ms + lease_ms)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// Settles firings `node` leased, in one transaction: `(id, status,
    /// reason, conversation)`.
    pub async fn settle_many(
        &self,
        node: Uuid,
        settles: &[(Uuid, &'static str, Option<String>, Option<Uuid>)],
    ) -> Result<()> {
        if settles.is_empty() {
            return Ok(());
        }
        let now = db::now();
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            for (id, status, reason, conversation) in settles {
                sqlx::query(
                    "UPDATE schedule_firings SET status = $3, reason = $4, started_at = $5,
                         conversation_id = COALESCE($6, conversation_id), lease_owner = NULL, lease_until = NULL
                     WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
                )
                .bind(id)
                .bind(node)
                .bind(*status)
                .bind(reason)
                .bind((*status == "started").then_some(now))
                .bind(conversation)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The schedules of `ids` that exist.
    pub async fn get_many(&self, ids: &[Uuid]) -> Result<Vec<ScheduleRow>> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let rows: Vec<ScheduleRow> = on_db!(&self.db, pool => {
                let mut qb = sqlx::QueryBuilder::new(format!("SELECT {COLUMNS} FROM schedules WHERE id IN "));
                db::push_ids(&mut qb, chunk);
                qb.build_query_as().fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Of `ids`, those that are rows of `table` (`runs` or
    /// `conversations`).
    pub async fn existing(&self, table: &'static str, ids: &[Uuid]) -> Result<Vec<Uuid>> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let found: Vec<Uuid> = on_db!(&self.db, pool => {
                let mut qb = sqlx::QueryBuilder::new(format!("SELECT id FROM {table} WHERE id IN "));
                db::push_ids(&mut qb, chunk);
                qb.build_query_scalar().fetch_all(pool).await?
            });
            out.extend(found);
        }
        Ok(out)
    }

    /// For each of `schedules`, the run of its latest started firing and
    /// that run's status (None when the run is gone).
    pub async fn previous_runs(
        &self,
        schedules: &[Uuid],
    ) -> Result<Vec<(Uuid, Uuid, Option<String>)>> {
        let mut out = Vec::new();
        for chunk in schedules.chunks(500) {
            let rows: Vec<(Uuid, Uuid, Option<String>)> = on_db!(&self.db, pool => {
                let mut qb = sqlx::QueryBuilder::new(
                    "SELECT f.schedule_id, f.run_id, r.status FROM schedule_firings f
                     LEFT JOIN runs r ON r.id = f.run_id
                     WHERE f.status = 'started' AND f.run_id IS NOT NULL AND f.due_ms =
                         (SELECT MAX(g.due_ms) FROM schedule_firings g
                          WHERE g.schedule_id = f.schedule_id AND g.status = 'started')
                       AND f.schedule_id IN ",
                );
                db::push_ids(&mut qb, chunk);
                qb.build_query_as().fetch_all(pool).await?
            });
            out.extend(rows);
        }
        Ok(out)
    }

    /// Hands a pending firing back, to be tried again at `retry_ms`.
    pub async fn postpone_firing(&self, id: Uuid, node: Uuid, retry_ms: i64) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE schedule_firings SET lease_until = $3 WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(node)
        .bind(retry_ms)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// (None when it is gone).
    pub async fn previous_run(&self, schedule: Uuid) -> Result<Option<(Uuid, Option<String>)>> {
        let row: Option<(Uuid, Option<String>)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT f.run_id, r.status FROM schedule_firings f LEFT JOIN runs r ON r.id = f.run_id
             WHERE f.schedule_id = $1 AND f.status = 'started'
             ORDER BY f.due_ms DESC LIMIT 1",
        )
        .bind(schedule)
        .fetch_optional(pool)
        .await?);
        Ok(row)
    }

    /// Stops a schedule for `reason` (its agent or owner is gone).
    pub async fn stop(&self, id: Uuid, reason: &str) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE schedules SET state = 'stopped', state_reason = $2, next_fire_ms = NULL, updated_at = $3
             WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .bind(db::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Sets the fixed conversation of a schedule (made again after its
    /// conversation was deleted).
    pub async fn set_conversation(&self, id: Uuid, conversation: Uuid) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE schedules SET conversation_id = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(conversation)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// A page of a schedule's firings, newest first, with their runs'
    /// status.
    pub async fn firings(
        &self,
        schedule: Uuid,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<(FiringRow, Option<String>)>, i64)> {
        on_db!(&self.db, pool => {
            let rows: Vec<FiringWithRun> = sqlx::query_as(
                "SELECT f.id, f.schedule_id, f.due_ms, f.status, f.reason, f.missed, f.run_id,
                        f.conversation_id, f.created_at, f.started_at, r.status AS run_status
                 FROM schedule_firings f LEFT JOIN runs r ON r.id = f.run_id
                 WHERE f.schedule_id = $1 ORDER BY f.due_ms DESC LIMIT $2 OFFSET $3",
            )
            .bind(schedule)
            .bind(limit)
            .bind(offset)
            .fetch_all(pool)
            .await?;
            let total: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM schedule_firings WHERE schedule_id = $1",
            )
            .bind(schedule)
            .fetch_one(pool)
            .await?;
            Ok((rows.into_iter().map(|r| (r.firing, r.run_status)).collect(), total))
        })
    }
}

#[derive(sqlx::FromRow)]
struct FiringWithRun {
    #[sqlx(flatten)]
    firing: FiringRow,
    run_status: Option<String>,
}
