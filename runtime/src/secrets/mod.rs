//! Named secrets (API tokens and the like) that admins set and plugins read
//! by name, when granted. Values are encrypted at rest with
//! ChaCha20-Poly1305 under the server's encryption key; the secret's name is
//! the associated data, so a ciphertext moved to another name fails to
//! decrypt. The API never returns a value, only names and timestamps.

pub mod routes;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::AuditService;
use crate::crypto::Sealer;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::on_db;
use crate::sandbox::host::is_secret_name;
use crate::users::model::{Permission, Principal};

/// Longest secret value, in characters (a private key in PEM fits).
pub const MAX_SECRET_CHARS: usize = 64 << 10;

/// A secret as the API lists it: never its value.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// When it was first set.
    pub created_at: DateTime<Utc>,
    /// When its value last changed.
    pub updated_at: DateTime<Utc>,
    /// Who last set it.
    pub updated_by: Option<Uuid>,
}

/// `PUT /api/v1/secrets/{name}`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSecretRequest {
    /// The value, 1 to 65536 characters; stored encrypted, never shown again.
    #[schema(min_length = 1, max_length = 65536)]
    pub value: String,
}

/// Stores and reads secrets.
#[derive(Clone)]
pub struct SecretService {
    db: Db,
    audit: AuditService,
    sealer: Sealer,
}

impl std::fmt::Debug for SecretService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretService { .. }")
    }
}

type Row = (String, DateTime<Utc>, DateTime<Utc>, Option<Uuid>);

impl SecretService {
    /// A service over `db`, encrypting with `key`.
    pub fn new(db: Db, audit: AuditService, key: &[u8; 32]) -> Self {
        SecretService {
            db,
            audit,
            sealer: Sealer::new(key),
        }
    }

    fn check_name(name: &str) -> Result<()> {
        if is_secret_name(name) {
            Ok(())
        } else {
            Err(Error::invalid_field(
                "name",
                "a secret name is 1 to 64 of A-Z a-z 0-9 _ - .",
            ))
        }
    }

    /// Every secret's name (admins only).
    pub async fn list(&self, principal: &Principal) -> Result<Vec<SecretInfo>> {
        principal.require(Permission::SecretManage)?;
        let rows: Vec<Row> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT name, created_at, updated_at, updated_by FROM secrets ORDER BY name",
        )
        .fetch_all(pool)
        .await?);
        Ok(rows.into_iter().map(info).collect())
    }

    /// Sets (creates or replaces) a secret (admins only).
    pub async fn set(
        &self,
        principal: &Principal,
        name: &str,
        request: SetSecretRequest,
    ) -> Result<SecretInfo> {
        principal.require(Permission::SecretManage)?;
        Self::check_name(name)?;
        if request.value.is_empty() || request.value.chars().count() > MAX_SECRET_CHARS {
            return Err(Error::invalid_field(
                "value",
                format!("a secret value is 1 to {MAX_SECRET_CHARS} characters"),
            ));
        }
        let (nonce, ciphertext) = self
            .sealer
            .seal(name.as_bytes(), request.value.as_bytes())?;
        let now = db::now();
        let row: Row = on_db!(&self.db, pool => sqlx::query_as(
            "INSERT INTO secrets (name, nonce, ciphertext, created_at, updated_at, updated_by)
             VALUES ($1, $2, $3, $4, $4, $5)
             ON CONFLICT (name) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                 updated_at = excluded.updated_at, updated_by = excluded.updated_by
             RETURNING name, created_at, updated_at, updated_by",
        )
        .bind(name)
        .bind(&nonce)
        .bind(&ciphertext)
        .bind(now)
        .bind(principal.user_id)
        .fetch_one(pool)
        .await?);
        self.audit
            .record(
                Some(principal.user_id),
                "secret.set",
                None,
                json!({ "name": name }),
            )
            .await;
        Ok(info(row))
    }

    /// Deletes a secret (admins only).
    pub async fn delete(&self, principal: &Principal, name: &str) -> Result<()> {
        principal.require(Permission::SecretManage)?;
        let deleted = on_db!(&self.db, pool => sqlx::query("DELETE FROM secrets WHERE name = $1")
            .bind(name)
            .execute(pool)
            .await?
            .rows_affected());
        if deleted == 0 {
            return Err(Error::NotFound("secret"));
        }
        self.audit
            .record(
                Some(principal.user_id),
                "secret.deleted",
                None,
                json!({ "name": name }),
            )
            .await;
        Ok(())
    }

    /// The decrypted value of `name`, for the sandbox.
    pub async fn reveal(&self, name: &str) -> anyhow::Result<Option<String>> {
        let row: Option<(Vec<u8>, Vec<u8>)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT nonce, ciphertext FROM secrets WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(pool)
        .await?);
        let Some((nonce, ciphertext)) = row else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(name.as_bytes(), &nonce, &ciphertext)
            .map_err(|e| anyhow::anyhow!("secret {name:?}: {e}"))?;
        Ok(Some(String::from_utf8(plain)?))
    }
}

fn info((name, created_at, updated_at, updated_by): Row) -> SecretInfo {
    SecretInfo {
        name,
        created_at,
        updated_at,
        updated_by,
    }
}
