//! SQL for agents and their revisions. Every update bumps `version` with a
//! compare-and-set on the expected version and stores the new revision in the
//! same transaction, so no change is ever lost or recorded twice.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use sqlx::types::Json;
use uuid::Uuid;

use super::model::{AgentFilter, AgentSpec, ModelRef};
use crate::db::{self, Db};
use crate::error::Result;
use crate::on_db;
use crate::pagination::PageRequest;

/// A live row of `agents`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub instructions: String,
    pub model: Json<ModelRef>,
    pub tools: Json<Vec<String>>,
    pub config: Json<Map<String, Value>>,
    pub metadata: Json<Map<String, Value>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl AgentRow {
    /// The definition held by this row.
    pub fn spec(&self) -> AgentSpec {
        AgentSpec {
            name: self.name.clone(),
            description: self.description.clone(),
            instructions: self.instructions.clone(),
            model: self.model.0.clone(),
            tools: self.tools.0.clone(),
            config: self.config.0.clone(),
            metadata: self.metadata.0.clone(),
        }
    }
}

/// A row of `agent_revisions`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RevisionRow {
    pub agent_id: Uuid,
    pub version: i64,
    pub snapshot: Json<AgentSpec>,
    pub created_by: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

/// Binds the seven fields of an [`AgentSpec`] in column order (name,
/// description, instructions, model, tools, config, metadata).
macro_rules! bind_spec {
    ($query:expr, $spec:expr) => {
        $query
            .bind(&$spec.name)
            .bind(&$spec.description)
            .bind(&$spec.instructions)
            .bind(Json(&$spec.model))
            .bind(Json(&$spec.tools))
            .bind(Json(&$spec.config))
            .bind(Json(&$spec.metadata))
    };
}

pub(crate) const COLUMNS: &str = "id, user_id, name, description, instructions, model, tools, config, metadata, version, created_at, updated_at";
const REVISION_INSERT: &str =
    "INSERT INTO agent_revisions (agent_id, version, snapshot, created_by, created_at) VALUES ($1, $2, $3, $4, $5)";

/// Queries over agents.
#[derive(Clone, Debug)]
pub struct AgentRepo {
    db: Db,
}

impl AgentRepo {
    /// A repository over `db`.
    pub fn new(db: Db) -> Self {
        AgentRepo { db }
    }

    /// Inserts an agent at version 1 with its first revision.
    pub async fn insert(&self, owner: Uuid, spec: &AgentSpec) -> Result<AgentRow> {
        let sql = format!(
            "INSERT INTO agents ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 1, $10, $10) RETURNING {COLUMNS}"
        );
        let now = db::now();
        let id = Uuid::now_v7();
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let row: AgentRow = bind_spec!(sqlx::query_as(&sql).bind(id).bind(owner), spec)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
            sqlx::query(REVISION_INSERT)
                .bind(id)
                .bind(1i64)
                .bind(Json(spec))
                .bind(owner)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(row)
        })
    }

    /// A live agent, if `owner` (when given) owns it.
    pub async fn get(&self, id: Uuid, owner: Option<Uuid>) -> Result<Option<AgentRow>> {
        on_db!(&self.db, pool, D => {
            let mut qb = sqlx::QueryBuilder::<D>::new(format!(
                "SELECT {COLUMNS} FROM agents WHERE deleted_at IS NULL AND id = "
            ));
            qb.push_bind(id);
            if let Some(owner) = owner {
                qb.push(" AND user_id = ").push_bind(owner);
            }
            Ok(qb.build_query_as().fetch_optional(pool).await?)
        })
    }

    /// `owner`'s live agent called `name`.
    pub async fn by_name(&self, owner: Uuid, name: &str) -> Result<Option<AgentRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM agents WHERE deleted_at IS NULL AND user_id = $1 AND name = $2"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(owner)
            .bind(name)
            .fetch_optional(pool)
            .await?))
    }

    /// Up to `limit` live agents of `owner`, oldest first.
    pub async fn of_owner(&self, owner: Uuid, limit: i64) -> Result<Vec<AgentRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM agents WHERE deleted_at IS NULL AND user_id = $1 ORDER BY created_at, id LIMIT $2"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(owner)
            .bind(limit)
            .fetch_all(pool)
            .await?))
    }

    /// One page of live agents of `owner` (all owners if `None`) matching
    /// `filter` (whose `owner_id` the caller has already folded into `owner`),
    /// and the total.
    pub async fn list(
        &self,
        owner: Option<Uuid>,
        filter: &AgentFilter,
        page: PageRequest,
    ) -> Result<(Vec<AgentRow>, i64)> {
        let postgres = matches!(self.db, Db::Postgres(_));
        on_db!(&self.db, pool, D => {
            let mut count = sqlx::QueryBuilder::<D>::new("SELECT COUNT(*) FROM agents WHERE deleted_at IS NULL");
            let mut select = sqlx::QueryBuilder::<D>::new(format!(
                "SELECT {COLUMNS} FROM agents WHERE deleted_at IS NULL"
            ));
            for qb in [&mut count, &mut select] {
                if let Some(owner) = owner {
                    qb.push(" AND user_id = ").push_bind(owner);
                }
                if let Some(q) = filter.q.as_deref().filter(|q| !q.is_empty()) {
                    qb.push(" AND LOWER(name) LIKE ")
                        .push_bind(db::like_pattern(&q.to_lowercase()))
                        .push(" ESCAPE '\\'");
                }
                if let Some(provider) = &filter.provider {
                    if postgres {
                        qb.push(" AND model->>'provider' = ");
                    } else {
                        qb.push(" AND json_extract(model, '$.provider') = ");
                    }
                    qb.push_bind(provider.clone());
                }
                if let Some(tool) = &filter.tool {
                    if postgres {
                        qb.push(" AND tools @> ").push_bind(Json(vec![tool.clone()]));
                    } else {
                        qb.push(" AND EXISTS (SELECT 1 FROM json_each(agents.tools) WHERE json_each.value = ")
                            .push_bind(tool.clone())
                            .push(")");
                    }
                }
            }
            select
                .push(filter.sort.unwrap_or_default().order_by())
                .push(" LIMIT ")
                .push_bind(page.limit())
                .push(" OFFSET ")
                .push_bind(page.offset());
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let rows: Vec<AgentRow> = select.build_query_as().fetch_all(pool).await?;
            Ok((rows, total))
        })
    }

    /// Writes `spec` as version `expected + 1` if the agent is still live at
    /// version `expected`, and stores the revision. `None` when another change
    /// got there first (or the agent was deleted).
    pub async fn update(
        &self,
        id: Uuid,
        expected: i64,
        spec: &AgentSpec,
        by: Uuid,
    ) -> Result<Option<AgentRow>> {
        let sql = format!(
            "UPDATE agents SET name = $3, description = $4, instructions = $5, model = $6, tools = $7,
                config = $8, metadata = $9, version = version + 1, updated_at = $10
             WHERE id = $1 AND version = $2 AND deleted_at IS NULL RETURNING {COLUMNS}"
        );
        let now = db::now();
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let row: Option<AgentRow> = bind_spec!(sqlx::query_as(&sql).bind(id).bind(expected), spec)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
            let Some(row) = row else {
                return Ok(None);
            };
            sqlx::query(REVISION_INSERT)
                .bind(id)
                .bind(row.version)
                .bind(Json(spec))
                .bind(by)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some(row))
        })
    }

    /// Soft-deletes a live agent; false if there was none (for `owner`).
    pub async fn soft_delete(&self, id: Uuid, owner: Option<Uuid>) -> Result<bool> {
        let now = db::now();
        on_db!(&self.db, pool, D => {
            let mut qb = sqlx::QueryBuilder::<D>::new("UPDATE agents SET deleted_at = ");
            qb.push_bind(now)
                .push(", updated_at = ")
                .push_bind(now)
                .push(" WHERE deleted_at IS NULL AND id = ")
                .push_bind(id);
            if let Some(owner) = owner {
                qb.push(" AND user_id = ").push_bind(owner);
            }
            Ok(qb.build().execute(pool).await?.rows_affected() == 1)
        })
    }

    /// One page of an agent's revisions, newest first, and the total.
    pub async fn revisions(&self, id: Uuid, page: PageRequest) -> Result<(Vec<RevisionRow>, i64)> {
        on_db!(&self.db, pool => {
            let rows = sqlx::query_as(
                "SELECT agent_id, version, snapshot, created_by, created_at FROM agent_revisions
                 WHERE agent_id = $1 ORDER BY version DESC LIMIT $2 OFFSET $3",
            )
            .bind(id)
            .bind(page.limit())
            .bind(page.offset())
            .fetch_all(pool)
            .await?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM agent_revisions WHERE agent_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
            Ok((rows, total))
        })
    }

    /// One revision of an agent.
    pub async fn revision(&self, id: Uuid, version: i64) -> Result<Option<RevisionRow>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT agent_id, version, snapshot, created_by, created_at FROM agent_revisions
             WHERE agent_id = $1 AND version = $2",
        )
        .bind(id)
        .bind(version)
        .fetch_optional(pool)
        .await?))
    }
}
