//! The server's [`HostServices`]: plugins' key-value data in the
//! `plugin_kv` table, secrets from [`SecretService`].

use uuid::Uuid;

use crate::db::{self, Db};
use crate::on_db;
use crate::sandbox::host::BoxFuture;
use crate::sandbox::{HostServices, KvFailure, KvScope};
use crate::secrets::SecretService;

/// Key-value data and secrets, from the database.
#[derive(Debug, Clone)]
pub struct DbHostServices {
    db: Db,
    secrets: SecretService,
}

impl DbHostServices {
    /// Services over `db`.
    pub fn new(db: Db, secrets: SecretService) -> Self {
        DbHostServices { db, secrets }
    }
}

fn user(scope: &KvScope) -> Result<Uuid, KvFailure> {
    Uuid::parse_str(&scope.user)
        .map_err(|_| KvFailure::Unavailable("the calling user is not known".to_owned()))
}

fn unavailable(e: sqlx::Error) -> KvFailure {
    tracing::error!(error = %e, "plugin key-value store");
    KvFailure::Unavailable("the store could not be reached".to_owned())
}

impl HostServices for DbHostServices {
    fn kv_get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, KvFailure>> {
        Box::pin(async move {
            let user = user(scope)?;
            let value: Option<Vec<u8>> = on_db!(&self.db, pool => sqlx::query_scalar(
                "SELECT value FROM plugin_kv WHERE plugin = $1 AND user_id = $2 AND key = $3",
            )
            .bind(&scope.plugin)
            .bind(user)
            .bind(key)
            .fetch_optional(pool)
            .await
            .map_err(unavailable)?);
            Ok(value)
        })
    }

    fn kv_set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        max_keys: u64,
    ) -> BoxFuture<'a, Result<(), KvFailure>> {
        Box::pin(async move {
            let user = user(scope)?;
            // One statement: replace an existing key, or add a new one only
            // while the scope holds fewer than `max_keys`.
            let written = on_db!(&self.db, pool => sqlx::query(
                "INSERT INTO plugin_kv (plugin, user_id, key, value, updated_at)
                 SELECT $1, $2, $3, $4, $5
                 WHERE EXISTS (SELECT 1 FROM plugin_kv WHERE plugin = $1 AND user_id = $2 AND key = $3)
                    OR (SELECT COUNT(*) FROM plugin_kv WHERE plugin = $1 AND user_id = $2) < $6
                 ON CONFLICT (plugin, user_id, key)
                 DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(&scope.plugin)
            .bind(user)
            .bind(key)
            .bind(value)
            .bind(db::now())
            .bind(max_keys as i64)
            .execute(pool)
            .await
            .map_err(unavailable)?
            .rows_affected());
            if written == 0 {
                return Err(KvFailure::QuotaExceeded(format!(
                    "at most {max_keys} keys per plugin and user"
                )));
            }
            Ok(())
        })
    }

    fn kv_delete<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, KvFailure>> {
        Box::pin(async move {
            let user = user(scope)?;
            let deleted = on_db!(&self.db, pool => sqlx::query(
                "DELETE FROM plugin_kv WHERE plugin = $1 AND user_id = $2 AND key = $3",
            )
            .bind(&scope.plugin)
            .bind(user)
            .bind(key)
            .execute(pool)
            .await
            .map_err(unavailable)?
            .rows_affected());
            Ok(deleted > 0)
        })
    }

    fn kv_list<'a>(
        &'a self,
        scope: &'a KvScope,
        prefix: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<String>, KvFailure>> {
        Box::pin(async move {
            let user = user(scope)?;
            // substr, not LIKE: SQLite's LIKE ignores ASCII case.
            let keys: Vec<String> = on_db!(&self.db, pool => sqlx::query_scalar(
                "SELECT key FROM plugin_kv
                 WHERE plugin = $1 AND user_id = $2 AND substr(key, 1, length($3)) = $3
                 ORDER BY key LIMIT $4",
            )
            .bind(&scope.plugin)
            .bind(user)
            .bind(prefix)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await
            .map_err(unavailable)?);
            Ok(keys)
        })
    }

    fn secret<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<String>, String>> {
        Box::pin(async move {
            self.secrets
                .reveal(name)
                .await
                .map_err(|e| format!("{e:#}"))
        })
    }
}
