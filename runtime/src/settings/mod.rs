//! Server-wide settings that admins change at run time (today: whether anyone
//! may register). Stored in the `settings` table so every node sees the same
//! value; the configuration supplies the value used until an admin sets one.

pub mod routes;

use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use crate::audit::AuditService;
use crate::db::{self, Db};
use crate::error::Result;
use crate::on_db;
use crate::users::model::{Permission, Principal};

/// Who may call `POST /api/v1/auth/register` once the first user exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone may register (as a `user`).
    Open,
    /// Only admins create accounts (`POST /api/v1/users`).
    Closed,
}

/// The settings as the API shows them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerSettings {
    /// The registration policy.
    pub registration: RegistrationMode,
}

/// `PATCH /api/v1/admin/settings`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateSettingsRequest {
    /// New registration policy.
    #[serde(default)]
    pub registration: Option<RegistrationMode>,
}

const REGISTRATION_KEY: &str = "registration.mode";

/// Reads and changes server settings.
#[derive(Clone, Debug)]
pub struct SettingsService {
    db: Db,
    audit: AuditService,
    default_registration: RegistrationMode,
}

impl SettingsService {
    /// A service over `db`; `default_registration` applies until an admin sets one.
    pub fn new(db: Db, audit: AuditService, default_registration: RegistrationMode) -> Self {
        SettingsService {
            db,
            audit,
            default_registration,
        }
    }

    /// The registration policy in force.
    pub async fn registration(&self) -> Result<RegistrationMode> {
        let stored: Option<sqlx::types::Json<RegistrationMode>> = on_db!(&self.db, pool =>
            sqlx::query_scalar("SELECT value FROM settings WHERE key = $1")
                .bind(REGISTRATION_KEY)
                .fetch_optional(pool)
                .await?);
        Ok(stored.map(|v| v.0).unwrap_or(self.default_registration))
    }

    /// The settings (admins only).
    pub async fn get(&self, principal: &Principal) -> Result<ServerSettings> {
        principal.require(Permission::SettingsManage)?;
        Ok(ServerSettings {
            registration: self.registration().await?,
        })
    }

    /// Applies changes (admins only).
    pub async fn update(
        &self,
        principal: &Principal,
        request: UpdateSettingsRequest,
    ) -> Result<ServerSettings> {
        principal.require(Permission::SettingsManage)?;
        if let Some(mode) = request.registration {
            on_db!(&self.db, pool => sqlx::query(
                "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(REGISTRATION_KEY)
            .bind(sqlx::types::Json(mode))
            .bind(db::now())
            .execute(pool)
            .await
            .map(|_| ())?);
            self.audit
                .record(
                    Some(principal.user_id),
                    "settings.updated",
                    None,
                    json!({ "registration": mode }),
                )
                .await;
        }
        self.get(principal).await
    }
}
