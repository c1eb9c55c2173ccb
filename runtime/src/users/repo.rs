//! SQL for users, refresh tokens and API keys. Nothing but queries: the rules
//! (who may do what, when a token is valid) live in the service.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::db::Db;
use crate::error::Result;
use crate::on_db;
use crate::pagination::PageRequest;

/// A row of `users`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub display_name: Option<String>,
    pub password_hash: String,
    pub role: String,
    pub is_active: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
    /// Bumped by every password change: access tokens of an older
    /// generation are refused.
    pub token_generation: i64,
}

/// A user about to be inserted.
pub struct NewUser<'a> {
    pub id: Uuid,
    pub email: &'a str,
    pub display_name: Option<&'a str>,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub now: DateTime<Utc>,
}

/// A row of `refresh_tokens`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// A refresh token about to be inserted.
pub struct NewRefresh<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub family_id: Uuid,
    pub token_hash: &'a str,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A row of `api_keys`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// An API key with what authentication needs of its user.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyHolder {
    pub id: Uuid,
    pub user_id: Uuid,
    pub expires_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub role: String,
    pub is_active: bool,
}

const USER_COLUMNS: &str =
    "id, email, display_name, password_hash, role, is_active, created_at, updated_at, last_login_at, token_generation";
const API_KEY_COLUMNS: &str = "id, user_id, name, prefix, created_at, expires_at, last_used_at";

/// The settings key whose insertion marks that the first user exists.
/// PostgreSQL advisory lock taken by every change that may take away an
/// admin (`update` with `keep_an_admin`).
const ADMIN_CHANGE_LOCK: i64 = 0x6f72_6368_6164_6d6e; // "orchadmn"

const BOOTSTRAP_KEY: &str = "bootstrap.first_user";

/// Queries over users and their credentials.
#[derive(Clone, Debug)]
pub struct UserRepo {
    db: Db,
}

impl UserRepo {
    /// A repository over `db`.
    pub fn new(db: Db) -> Self {
        UserRepo { db }
    }

    /// Inserts a user. In the same transaction it claims the one-time
    /// bootstrap marker; when this insert is the first ever, the user gets
    /// `first_role` (if given) instead of `user.role`. With `only_if_first`,
    /// nothing is stored unless this is the first user (`Ok(None)`).
    /// Returns the row and whether it was the first user.
    pub async fn insert(
        &self,
        user: NewUser<'_>,
        first_role: Option<&str>,
        only_if_first: bool,
    ) -> Result<Option<(UserRow, bool)>> {
        let sql = format!(
            "INSERT INTO users (id, email, display_name, password_hash, role, is_active, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, TRUE, $6, $6) RETURNING {USER_COLUMNS}"
        );
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let claimed = sqlx::query(
                "INSERT INTO settings (key, value, updated_at) VALUES ($1, $2, $3) ON CONFLICT (key) DO NOTHING",
            )
            .bind(BOOTSTRAP_KEY)
            .bind(sqlx::types::Json(serde_json::json!({ "user_id": user.id })))
            .bind(user.now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if only_if_first && !claimed {
                return Ok(None);
            }
            let role = match (claimed, first_role) {
                (true, Some(first)) => first,
                _ => user.role,
            };
            let row: UserRow = sqlx::query_as(&sql)
                .bind(user.id)
                .bind(user.email)
                .bind(user.display_name)
                .bind(user.password_hash)
                .bind(role)
                .bind(user.now)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(Some((row, claimed)))
        })
    }

    /// The user with `id`.
    pub async fn get(&self, id: Uuid) -> Result<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    /// The user with `email` (already normalised).
    pub async fn get_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE email = $1");
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).bind(email).fetch_optional(pool).await?))
    }

    /// One page of users, newest first, and the total.
    pub async fn list(&self, page: PageRequest) -> Result<(Vec<UserRow>, i64)> {
        let sql = format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
        );
        on_db!(&self.db, pool => {
            let rows = sqlx::query_as(&sql)
                .bind(page.limit())
                .bind(page.offset())
                .fetch_all(pool)
                .await?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(pool).await?;
            Ok((rows, total))
        })
    }

    /// Changes a user's role, status or name. With `keep_an_admin`, the
    /// change happens only if another active admin remains, checked in the
    /// same statement ([`crate::serialised`]: SQLite takes its write lock
    /// before reading; PostgreSQL an advisory lock), so two admins demoting
    /// each other at once cannot both succeed. `None`: no such user, or the
    /// change would leave no admin.
    #[allow(clippy::too_many_arguments)]
    pub async fn update(
        &self,
        id: Uuid,
        role: Option<&str>,
        is_active: Option<bool>,
        display_name: Option<Option<&str>>,
        now: DateTime<Utc>,
        keep_an_admin: bool,
    ) -> Result<Option<UserRow>> {
        let sql = format!(
            "UPDATE users SET
                role = COALESCE($2, role),
                is_active = COALESCE($3, is_active),
                display_name = CASE WHEN $4 THEN $5 ELSE display_name END,
                updated_at = $6
             WHERE id = $1
               AND ($7 = FALSE OR EXISTS (SELECT 1 FROM users other
                    WHERE other.role = 'admin' AND other.is_active = TRUE AND other.id <> $1))
             RETURNING {USER_COLUMNS}"
        );
        Ok(
            crate::serialised!(&self.db, ADMIN_CHANGE_LOCK, exec => sqlx::query_as(&sql)
            .bind(id)
            .bind(role)
            .bind(is_active)
            .bind(display_name.is_some())
            .bind(display_name.flatten())
            .bind(now)
            .bind(keep_an_admin)
            .fetch_optional(exec)
            .await?),
        )
    }

    /// Whether any account exists.
    pub async fn any_user(&self) -> Result<bool> {
        Ok(on_db!(&self.db, pool => sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM users)",
        )
        .fetch_one(pool)
        .await?))
    }

    /// Replaces the password hash.
    /// Replaces the password hash and ends the user's access tokens (a new
    /// token generation).
    pub async fn set_password(&self, id: Uuid, hash: &str, now: DateTime<Utc>) -> Result<bool> {
        Ok(on_db!(&self.db, pool => sqlx::query(
            "UPDATE users SET password_hash = $2, updated_at = $3,
                token_generation = token_generation + 1 WHERE id = $1",
        )
        .bind(id)
        .bind(hash)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()
            == 1))
    }

    /// Records a successful password login.
    pub async fn touch_login(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query("UPDATE users SET last_login_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(pool)
            .await
            .map(|_| ())?);
        Ok(())
    }

    /// Stores a new refresh token.
    pub async fn insert_refresh(&self, token: NewRefresh<'_>) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(token.id)
        .bind(token.user_id)
        .bind(token.family_id)
        .bind(token.token_hash)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// The refresh token stored under `hash`.
    pub async fn find_refresh(&self, hash: &str) -> Result<Option<RefreshRow>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT id, user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await?))
    }

    /// Marks `old` used and stores `new` in one transaction. Returns false,
    /// storing nothing, when `old` was already used or revoked (a concurrent
    /// refresh won, or the token is being replayed).
    pub async fn rotate_refresh(&self, old: Uuid, new: NewRefresh<'_>) -> Result<bool> {
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let won = sqlx::query(
                "UPDATE refresh_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL",
            )
            .bind(old)
            .bind(new.created_at)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if !won {
                return Ok(false);
            }
            sqlx::query(
                "INSERT INTO refresh_tokens (id, user_id, family_id, token_hash, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(new.id)
            .bind(new.user_id)
            .bind(new.family_id)
            .bind(new.token_hash)
            .bind(new.created_at)
            .bind(new.expires_at)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Revokes every live token of a family; returns how many.
    pub async fn revoke_family(&self, family: Uuid, now: DateTime<Utc>) -> Result<u64> {
        Ok(on_db!(&self.db, pool => sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE family_id = $1 AND revoked_at IS NULL",
        )
        .bind(family)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// Revokes every live refresh token of a user.
    pub async fn revoke_user_tokens(&self, user: Uuid, now: DateTime<Utc>) -> Result<u64> {
        Ok(on_db!(&self.db, pool => sqlx::query(
            "UPDATE refresh_tokens SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user)
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// Revokes every live OAuth grant of a user (the MCP clients they
    /// approved) and the tokens of each.
    pub async fn revoke_oauth_grants(&self, user: Uuid, now: DateTime<Utc>) -> Result<()> {
        on_db!(&self.db, pool => {
            sqlx::query(
                "UPDATE oauth_tokens SET revoked_at = $2 WHERE revoked_at IS NULL
                 AND grant_id IN (SELECT id FROM oauth_grants WHERE user_id = $1)",
            )
            .bind(user)
            .bind(now)
            .execute(pool)
            .await?;
            sqlx::query(
                "UPDATE oauth_grants SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL",
            )
            .bind(user)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Stores a new API key.
    pub async fn insert_api_key(&self, row: &ApiKeyRow, key_hash: &str) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, prefix, key_hash, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(row.id)
        .bind(row.user_id)
        .bind(&row.name)
        .bind(&row.prefix)
        .bind(key_hash)
        .bind(row.created_at)
        .bind(row.expires_at)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// One page of a user's API keys, newest first, and the total.
    pub async fn list_api_keys(
        &self,
        user: Uuid,
        page: PageRequest,
    ) -> Result<(Vec<ApiKeyRow>, i64)> {
        let sql = format!(
            "SELECT {API_KEY_COLUMNS} FROM api_keys WHERE user_id = $1
             ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3"
        );
        on_db!(&self.db, pool => {
            let rows = sqlx::query_as(&sql)
                .bind(user)
                .bind(page.limit())
                .bind(page.offset())
                .fetch_all(pool)
                .await?;
            let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_keys WHERE user_id = $1")
                .bind(user)
                .fetch_one(pool)
                .await?;
            Ok((rows, total))
        })
    }

    /// Deletes a user's key; false when no such key belongs to the user.
    pub async fn delete_api_key(&self, user: Uuid, id: Uuid) -> Result<bool> {
        Ok(
            on_db!(&self.db, pool => sqlx::query("DELETE FROM api_keys WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user)
            .execute(pool)
            .await?
            .rows_affected()
            == 1),
        )
    }

    /// The key stored under `hash`.
    pub async fn find_api_key(&self, hash: &str) -> Result<Option<ApiKeyRow>> {
        let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1");
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).bind(hash).fetch_optional(pool).await?))
    }

    /// The key with digest `hash` and its user's role and state, in one read
    /// (every API-key request starts here).
    pub async fn find_api_key_holder(&self, hash: &str) -> Result<Option<ApiKeyHolder>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT k.id, k.user_id, k.expires_at, k.last_used_at, u.role, u.is_active
             FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.key_hash = $1",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await?))
    }

    /// Records a use of a key, at most once per `granularity` to spare writes.
    pub async fn touch_api_key(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(id)
        .bind(now)
        .bind(stale_before)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }
}
