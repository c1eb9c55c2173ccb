//! SQL for OAuth clients, grants, pending requests (with their codes) and
//! tokens. Nothing but queries: the rules live in the service.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use uuid::Uuid;

use crate::db::Db;
use crate::error::Result;
use crate::on_db;

/// A row of `oauth_clients`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClientRow {
    pub id: String,
    pub kind: String,
    pub name: String,
    pub client_uri: Option<String>,
    pub redirect_uris: Json<Vec<String>>,
    pub scopes: Option<String>,
    pub auth_method: String,
    pub secret_hash: Option<String>,
    pub created_at: DateTime<Utc>,
    pub fetched_at: Option<DateTime<Utc>>,
}

/// A row of `oauth_requests`: a pending authorization request, then (once
/// approved) its code.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestRow {
    pub id: Uuid,
    pub client_id: String,
    pub redirect_uri: String,
    pub scopes: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub resource: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub user_id: Option<Uuid>,
    pub grant_id: Option<Uuid>,
    pub code_hash: Option<String>,
    pub used_at: Option<DateTime<Utc>>,
}

/// A row of `oauth_grants`, with its client.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GrantRow {
    pub id: Uuid,
    pub user_id: Uuid,
    pub client_id: String,
    pub scopes: String,
    pub resource: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub client_name: String,
    pub client_uri: Option<String>,
    pub client_kind: String,
}

/// A grant about to be inserted.
pub struct NewGrant<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub client_id: &'a str,
    pub scopes: &'a str,
    pub resource: &'a str,
    pub now: DateTime<Utc>,
}

/// A token with what it is worth: its grant and client.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: Uuid,
    pub grant_id: Uuid,
    pub kind: String,
    pub scopes: String,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub user_id: Uuid,
    pub client_id: String,
    pub resource: String,
    pub grant_revoked_at: Option<DateTime<Utc>>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A token about to be inserted.
pub struct NewToken<'a> {
    pub id: Uuid,
    pub grant_id: Uuid,
    pub kind: &'static str,
    pub token_hash: &'a str,
    pub scopes: &'a str,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

const GRANT_COLUMNS: &str = "g.id, g.user_id, g.client_id, g.scopes, g.resource, g.created_at, \
     g.last_used_at, g.revoked_at, c.name AS client_name, c.client_uri, c.kind AS client_kind";

/// Queries of the OAuth tables.
#[derive(Clone)]
pub struct OAuthRepo {
    db: Db,
}

impl OAuthRepo {
    /// A repository over `db`.
    pub fn new(db: Db) -> OAuthRepo {
        OAuthRepo { db }
    }

    /// Stores a client (a metadata document's client replaces its row).
    pub async fn upsert_client(&self, c: &ClientRow) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO oauth_clients (id, kind, name, client_uri, redirect_uris, scopes, auth_method, secret_hash, created_at, fetched_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, client_uri = excluded.client_uri,
                 redirect_uris = excluded.redirect_uris, scopes = excluded.scopes,
                 fetched_at = excluded.fetched_at",
        )
        .bind(&c.id)
        .bind(&c.kind)
        .bind(&c.name)
        .bind(&c.client_uri)
        .bind(&c.redirect_uris)
        .bind(&c.scopes)
        .bind(&c.auth_method)
        .bind(&c.secret_hash)
        .bind(c.created_at)
        .bind(c.fetched_at)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// The client `id`.
    pub async fn client(&self, id: &str) -> Result<Option<ClientRow>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT id, kind, name, client_uri, redirect_uris, scopes, auth_method, secret_hash, created_at, fetched_at
             FROM oauth_clients WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    /// Removes registered clients created before `before` that no user
    /// approved; then counts those left.
    pub async fn prune_unapproved(&self, before: DateTime<Utc>) -> Result<i64> {
        let unapproved = "kind = 'registered' AND NOT EXISTS (SELECT 1 FROM oauth_grants g WHERE g.client_id = oauth_clients.id)";
        on_db!(&self.db, pool => {
            sqlx::query(&format!("DELETE FROM oauth_clients WHERE {unapproved} AND created_at < $1"))
                .bind(before)
                .execute(pool)
                .await?;
            let (count,): (i64,) =
                sqlx::query_as(&format!("SELECT COUNT(*) FROM oauth_clients WHERE {unapproved}"))
                    .fetch_one(pool)
                    .await?;
            Ok(count)
        })
    }

    /// Stores a pending request; removes requests long lapsed.
    pub async fn insert_request(&self, r: &RequestRow, lapsed_before: DateTime<Utc>) -> Result<()> {
        on_db!(&self.db, pool => {
            sqlx::query("DELETE FROM oauth_requests WHERE expires_at < $1")
                .bind(lapsed_before)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO oauth_requests (id, client_id, redirect_uri, scopes, state, code_challenge, resource, created_at, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(r.id)
            .bind(&r.client_id)
            .bind(&r.redirect_uri)
            .bind(&r.scopes)
            .bind(&r.state)
            .bind(&r.code_challenge)
            .bind(&r.resource)
            .bind(r.created_at)
            .bind(r.expires_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    const REQUEST_COLUMNS: &'static str = "id, client_id, redirect_uri, scopes, state, code_challenge, resource, created_at, expires_at, user_id, grant_id, code_hash, used_at";

    /// The request `id`.
    pub async fn request(&self, id: Uuid) -> Result<Option<RequestRow>> {
        let sql = format!(
            "SELECT {} FROM oauth_requests WHERE id = $1",
            Self::REQUEST_COLUMNS
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }

    /// The request whose code is `code_hash`.
    pub async fn request_by_code(&self, code_hash: &str) -> Result<Option<RequestRow>> {
        let sql = format!(
            "SELECT {} FROM oauth_requests WHERE code_hash = $1",
            Self::REQUEST_COLUMNS
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(&sql).bind(code_hash).fetch_optional(pool).await?),
        )
    }

    /// Records the user's approval: the grant (replacing the user's earlier
    /// grant to the same client), and the request's code (valid until
    /// `code_expires`). False, storing nothing, when the
    /// request was already decided or has lapsed.
    pub async fn approve(
        &self,
        request: Uuid,
        grant: NewGrant<'_>,
        code_hash: &str,
        code_expires: DateTime<Utc>,
    ) -> Result<bool> {
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO oauth_grants (id, user_id, client_id, scopes, resource, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(grant.id)
            .bind(grant.user_id)
            .bind(grant.client_id)
            .bind(grant.scopes)
            .bind(grant.resource)
            .bind(grant.now)
            .execute(&mut *tx)
            .await?;
            let won = sqlx::query(
                "UPDATE oauth_requests SET user_id = $2, grant_id = $3, code_hash = $4, expires_at = $5, scopes = $6
                 WHERE id = $1 AND user_id IS NULL AND expires_at > $7",
            )
            .bind(request)
            .bind(grant.user_id)
            .bind(grant.id)
            .bind(code_hash)
            .bind(code_expires)
            .bind(grant.scopes)
            .bind(grant.now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            if won {
                // One live grant per user and client: a new approval (a
                // step-up to more scopes) replaces the one before.
                sqlx::query(
                    "UPDATE oauth_tokens SET revoked_at = $4 WHERE revoked_at IS NULL AND grant_id IN
                     (SELECT id FROM oauth_grants WHERE user_id = $1 AND client_id = $2 AND id <> $3)",
                )
                .bind(grant.user_id)
                .bind(grant.client_id)
                .bind(grant.id)
                .bind(grant.now)
                .execute(&mut *tx)
                .await?;
                sqlx::query(
                    "UPDATE oauth_grants SET revoked_at = $4
                     WHERE user_id = $1 AND client_id = $2 AND id <> $3 AND revoked_at IS NULL",
                )
                .bind(grant.user_id)
                .bind(grant.client_id)
                .bind(grant.id)
                .bind(grant.now)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
            }
            Ok(won)
        })
    }

    /// Removes a pending request (denied).
    pub async fn delete_request(&self, id: Uuid) -> Result<bool> {
        Ok(on_db!(&self.db, pool => sqlx::query(
            "DELETE FROM oauth_requests WHERE id = $1 AND user_id IS NULL",
        )
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected())
            == 1)
    }

    /// Marks the code of request `id` used and stores the grant's first
    /// tokens, in one transaction. False, storing nothing, when the code was
    /// already used (a replay, or a concurrent exchange that won).
    pub async fn exchange_code(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        tokens: [NewToken<'_>; 2],
    ) -> Result<bool> {
        self.claim_and_issue(
            "UPDATE oauth_requests SET used_at = $2 WHERE id = $1 AND used_at IS NULL",
            id,
            now,
            tokens,
        )
        .await
    }

    /// The token stored under `hash`, with its grant.
    pub async fn token(&self, hash: &str) -> Result<Option<TokenRow>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT t.id, t.grant_id, t.kind, t.scopes, t.expires_at, t.used_at, t.revoked_at,
                    g.user_id, g.client_id, g.resource, g.revoked_at AS grant_revoked_at, g.last_used_at
             FROM oauth_tokens t JOIN oauth_grants g ON g.id = t.grant_id
             WHERE t.token_hash = $1",
        )
        .bind(hash)
        .fetch_optional(pool)
        .await?))
    }

    /// Marks refresh token `old` used and stores the new pair, in one
    /// transaction. False, storing nothing, when `old` was already used or
    /// revoked.
    pub async fn rotate(
        &self,
        old: Uuid,
        now: DateTime<Utc>,
        tokens: [NewToken<'_>; 2],
    ) -> Result<bool> {
        self.claim_and_issue(
            "UPDATE oauth_tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL",
            old,
            now,
            tokens,
        )
        .await
    }

    /// Runs `claim` (an update of row `$1` at time `$2` that matches only
    /// once) and, when it matched, stores `tokens` and removes the grant's
    /// tokens dead for a day; all in one transaction. False, storing
    /// nothing, when the claim matched no row.
    async fn claim_and_issue(
        &self,
        claim: &str,
        id: Uuid,
        now: DateTime<Utc>,
        tokens: [NewToken<'_>; 2],
    ) -> Result<bool> {
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let won = sqlx::query(claim)
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                == 1;
            if !won {
                return Ok(false);
            }
            for token in &tokens {
                sqlx::query(
                    "INSERT INTO oauth_tokens (id, grant_id, kind, token_hash, scopes, created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(token.id)
                .bind(token.grant_id)
                .bind(token.kind)
                .bind(token.token_hash)
                .bind(token.scopes)
                .bind(token.created_at)
                .bind(token.expires_at)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query("DELETE FROM oauth_tokens WHERE grant_id = $1 AND expires_at < $2")
                .bind(tokens[0].grant_id)
                .bind(now - chrono::Duration::days(1))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// Revokes one token.
    pub async fn revoke_token(&self, id: Uuid, now: DateTime<Utc>) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE oauth_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id)
        .bind(now)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// Revokes grant `id` and every token of it. False when it was not live
    /// (or, with `user`, not theirs).
    pub async fn revoke_grant(
        &self,
        id: Uuid,
        user: Option<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<bool> {
        on_db!(&self.db, pool => {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(
                "UPDATE oauth_grants SET revoked_at = $2
                 WHERE id = $1 AND revoked_at IS NULL AND ($3 IS NULL OR user_id = $3)",
            )
            .bind(id)
            .bind(now)
            .bind(user)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1;
            sqlx::query("UPDATE oauth_tokens SET revoked_at = $2 WHERE grant_id = $1 AND revoked_at IS NULL")
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done)
        })
    }

    /// Notes a grant's use, at most once a minute.
    pub async fn touch_grant(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
        stale_before: DateTime<Utc>,
    ) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE oauth_grants SET last_used_at = $2 WHERE id = $1 AND (last_used_at IS NULL OR last_used_at < $3)",
        )
        .bind(id)
        .bind(now)
        .bind(stale_before)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// The user's live grants, newest first.
    pub async fn grants_of(&self, user: Uuid) -> Result<Vec<GrantRow>> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM oauth_grants g JOIN oauth_clients c ON c.id = g.client_id
             WHERE g.user_id = $1 AND g.revoked_at IS NULL ORDER BY g.created_at DESC, g.id DESC LIMIT 500"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).bind(user).fetch_all(pool).await?))
    }

    /// Grant `id`.
    pub async fn grant(&self, id: Uuid) -> Result<Option<GrantRow>> {
        let sql = format!(
            "SELECT {GRANT_COLUMNS} FROM oauth_grants g JOIN oauth_clients c ON c.id = g.client_id WHERE g.id = $1"
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).bind(id).fetch_optional(pool).await?))
    }
}
