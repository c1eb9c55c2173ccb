//! The audit log: an append-only record of sensitive actions (logins, role
//! changes, key creation and deletion, settings changes), readable by admins.

pub mod routes;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::db::{self, Db};
use crate::error::Result;
use crate::on_db;
use crate::pagination::{Page, PageParams};
use crate::users::model::{Permission, Principal};

/// One recorded action.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct AuditEntry {
    /// The entry's id.
    pub id: Uuid,
    /// Who acted; absent for anonymous attempts (a failed login) or a deleted user.
    pub actor_id: Option<Uuid>,
    /// What happened, e.g. `auth.login` or `user.role_changed`.
    pub action: String,
    /// The kind of thing acted upon, e.g. `user` or `api_key`.
    pub target_type: Option<String>,
    /// The id of the thing acted upon.
    pub target_id: Option<Uuid>,
    /// Action-specific context (never secrets).
    #[schema(value_type = Object)]
    pub details: sqlx::types::Json<Value>,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// Filters of `GET /api/v1/audit-log`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditFilter {
    /// Only entries with this action.
    pub action: Option<String>,
    /// Only entries by this actor.
    pub actor_id: Option<Uuid>,
}

/// Records and lists audit entries.
#[derive(Clone, Debug)]
pub struct AuditService {
    db: Db,
}

impl AuditService {
    /// A service over `db`.
    pub fn new(db: Db) -> Self {
        AuditService { db }
    }

    /// Appends an entry. A failure is logged, not returned: losing an audit
    /// line must not fail the user's action, and it is never silent.
    pub async fn record(
        &self,
        actor: Option<Uuid>,
        action: &str,
        target: Option<(&str, Uuid)>,
        details: Value,
    ) {
        let result = on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO audit_log (id, actor_id, action, target_type, target_id, details, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(Uuid::now_v7())
        .bind(actor)
        .bind(action)
        .bind(target.map(|t| t.0))
        .bind(target.map(|t| t.1))
        .bind(sqlx::types::Json(&details))
        .bind(db::now())
        .execute(pool)
        .await
        .map(|_| ()));
        if let Err(e) = result {
            tracing::error!(error = %e, action, "failed to write an audit entry");
        }
    }

    /// One page of entries, newest first (admins only).
    pub async fn list(
        &self,
        principal: &Principal,
        filter: AuditFilter,
        page: PageParams,
    ) -> Result<Page<AuditEntry>> {
        principal.require(Permission::AuditRead)?;
        let page = page.validate()?;
        on_db!(&self.db, pool, D => {
            let mut count = sqlx::QueryBuilder::<D>::new("SELECT COUNT(*) FROM audit_log WHERE 1=1");
            let mut select = sqlx::QueryBuilder::<D>::new(
                "SELECT id, actor_id, action, target_type, target_id, details, created_at FROM audit_log WHERE 1=1",
            );
            for qb in [&mut count, &mut select] {
                if let Some(action) = &filter.action {
                    qb.push(" AND action = ").push_bind(action.clone());
                }
                if let Some(actor) = filter.actor_id {
                    qb.push(" AND actor_id = ").push_bind(actor);
                }
            }
            select
                .push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(page.limit())
                .push(" OFFSET ")
                .push_bind(page.offset());
            let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
            let items: Vec<AuditEntry> = select.build_query_as().fetch_all(pool).await?;
            Ok(page.wrap(items, total))
        })
    }
}
