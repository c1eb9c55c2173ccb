//! OAuth for bridged HTTP servers that need sign-in (`"oauth": true`),
//! with rmcp's OAuth client (`AuthorizationManager`, `AuthClient`).
//!
//! Connecting: the server's owner (an admin, for a server-wide server)
//! asks for an authorization URL; Orchestra discovers the server's
//! authorization server from its metadata (RFC 9728, RFC 8414), registers
//! itself there (RFC 7591), and answers with the URL (PKCE S256, the
//! server's URL as `resource`). The user's browser comes back to the
//! console's `/mcp-servers/oauth-callback`, which hands the code and state
//! to the API with the user's own session: a state is bound to the user who
//! started it, so nobody can attach their account at a provider to someone
//! else's server. The tokens are kept sealed (ChaCha20-Poly1305, the
//! server's id as associated data) in `mcp_oauth_credentials`; the bridge
//! connects with them and refreshes them when they expire. A refresh the
//! provider rejects marks the connection expired: the server's status says
//! so, and the owner connects again.
//!
//! A server-wide server holds one connection, made by an admin, that every
//! user's calls share; or, with `oauth_per_user`, each user connects their
//! own account (from the same MCP servers page) and their calls use their
//! own connection (`mcp_oauth_user_credentials`); a user who has not
//! connected gets a clear "connect your account" failure.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rmcp::transport::auth::{
    AuthError, AuthorizationManager, CredentialStore, OAuthClientConfig, StateStore,
    StoredAuthorizationState, StoredCredentials,
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;
use uuid::Uuid;

use super::McpService;
use crate::crypto::Sealer;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::on_db;
use crate::users::model::{AuthMethod, Principal};

/// Minutes a started authorization may take.
const STATE_TTL_MINUTES: i64 = 15;

/// The console page an authorization server sends the browser back to.
pub const CALLBACK_PATH: &str = "/mcp-servers/oauth-callback";

/// `POST /api/v1/mcp-servers/{id}/oauth`: where to send the browser.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectResponse {
    /// The authorization server's page, with PKCE and state.
    pub authorization_url: String,
}

/// `POST /api/v1/mcp-servers/oauth/callback`: what the authorization
/// server sent back to the console.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FinishConnectRequest {
    /// The `state` parameter.
    pub state: String,
    /// The `code` parameter.
    pub code: String,
    /// The `iss` parameter, when the server sends one (RFC 9207).
    #[serde(default)]
    pub iss: Option<String>,
}

/// A server's OAuth connection, as its status shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OAuthConnection {
    /// `connected`, `expired` (the provider refused to refresh the tokens:
    /// connect again) or `not_connected`.
    pub state: String,
    /// Who connected it.
    pub connected_by: Option<Uuid>,
    /// When it was connected or last refreshed.
    pub updated_at: Option<DateTime<Utc>>,
}

impl OAuthConnection {
    /// No connection.
    pub fn none() -> OAuthConnection {
        OAuthConnection {
            state: "not_connected".to_owned(),
            connected_by: None,
            updated_at: None,
        }
    }
}

/// The OAuth connections servers show: the shared ones, by server, and one
/// user's own (`oauth_per_user` servers), by server.
#[derive(Debug, Default)]
pub struct Connections {
    pub shared: std::collections::HashMap<Uuid, OAuthConnection>,
    pub own: std::collections::HashMap<Uuid, OAuthConnection>,
}

fn unavailable(what: &str, e: AuthError) -> Error {
    Error::Unavailable(format!("{what}: {e}"))
}

/// A connection's server, connecting user, refusal and last change.
type ConnectionRow = (Uuid, Option<Uuid>, Option<DateTime<Utc>>, DateTime<Utc>);

/// A pending authorization: server, user, sealed state, start.
type StateRow = (Uuid, Uuid, Vec<u8>, Vec<u8>, DateTime<Utc>);

/// The client Orchestra registered at a server's authorization server.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct ClientRecord {
    client_id: String,
    client_secret: Option<String>,
    redirect_uri: String,
    scopes: Vec<String>,
}

/// What a pending authorization keeps, sealed.
#[derive(Serialize, Deserialize)]
struct PendingState {
    state: StoredAuthorizationState,
    client: ClientRecord,
}

/// A server's tokens in the database, sealed.
#[derive(Clone)]
pub struct CredentialsStore {
    db: Db,
    sealer: Sealer,
    server: Uuid,
    connected_by: Option<Uuid>,
    /// The user whose own connection this is (`oauth_per_user` servers).
    user: Option<Uuid>,
}

impl CredentialsStore {
    /// The store of server `server`'s connection.
    pub fn new(db: Db, sealer: Sealer, server: Uuid) -> CredentialsStore {
        CredentialsStore {
            db,
            sealer,
            server,
            connected_by: None,
            user: None,
        }
    }

    /// The store of `user`'s own connection to the same server.
    pub fn for_user(&self, user: Uuid) -> CredentialsStore {
        CredentialsStore {
            user: Some(user),
            connected_by: Some(user),
            ..self.clone()
        }
    }

    fn aad(&self) -> Vec<u8> {
        match self.user {
            Some(user) => format!("mcp-oauth:{}:{user}", self.server).into_bytes(),
            None => format!("mcp-oauth:{}", self.server).into_bytes(),
        }
    }
}

fn store_error(e: impl std::fmt::Display) -> AuthError {
    AuthError::InternalError(format!("credential store: {e}"))
}

#[async_trait]
impl CredentialStore for CredentialsStore {
    async fn load(&self) -> std::result::Result<Option<StoredCredentials>, AuthError> {
        let row: Option<(Vec<u8>, Vec<u8>, Option<DateTime<Utc>>)> = match self.user {
            None => on_db!(&self.db, pool => sqlx::query_as(
                "SELECT nonce, ciphertext, rejected_at FROM mcp_oauth_credentials WHERE server_id = $1",
            )
            .bind(self.server)
            .fetch_optional(pool)
            .await
            .map_err(store_error)?),
            Some(user) => on_db!(&self.db, pool => sqlx::query_as(
                "SELECT nonce, ciphertext, rejected_at FROM mcp_oauth_user_credentials
                 WHERE server_id = $1 AND user_id = $2",
            )
            .bind(self.server)
            .bind(user)
            .fetch_optional(pool)
            .await
            .map_err(store_error)?),
        };
        let Some((nonce, ciphertext, rejected)) = row else {
            return Ok(None);
        };
        if rejected.is_some() {
            return Ok(None);
        }
        let plain = self
            .sealer
            .open(&self.aad(), &nonce, &ciphertext)
            .map_err(store_error)?;
        serde_json::from_slice(&plain)
            .map(Some)
            .map_err(store_error)
    }

    async fn save(&self, credentials: StoredCredentials) -> std::result::Result<(), AuthError> {
        let plain = serde_json::to_vec(&credentials).map_err(store_error)?;
        let (nonce, ciphertext) = self.sealer.seal(&self.aad(), &plain).map_err(store_error)?;
        if let Some(user) = self.user {
            on_db!(&self.db, pool => sqlx::query(
                "INSERT INTO mcp_oauth_user_credentials (server_id, user_id, nonce, ciphertext, rejected_at, updated_at)
                 VALUES ($1, $2, $3, $4, NULL, $5)
                 ON CONFLICT (server_id, user_id) DO UPDATE SET nonce = excluded.nonce,
                     ciphertext = excluded.ciphertext, rejected_at = NULL, updated_at = excluded.updated_at",
            )
            .bind(self.server)
            .bind(user)
            .bind(nonce)
            .bind(ciphertext)
            .bind(db::now())
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(store_error)?);
            return Ok(());
        }
        on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO mcp_oauth_credentials (server_id, connected_by, nonce, ciphertext, rejected_at, updated_at)
             VALUES ($1, $2, $3, $4, NULL, $5)
             ON CONFLICT (server_id) DO UPDATE SET nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                 rejected_at = NULL, updated_at = excluded.updated_at,
                 connected_by = COALESCE(excluded.connected_by, mcp_oauth_credentials.connected_by)",
        )
        .bind(self.server)
        .bind(self.connected_by)
        .bind(nonce)
        .bind(ciphertext)
        .bind(db::now())
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(store_error)?);
        Ok(())
    }

    async fn clear(&self) -> std::result::Result<(), AuthError> {
        if let Some(user) = self.user {
            on_db!(&self.db, pool => sqlx::query(
                "DELETE FROM mcp_oauth_user_credentials WHERE server_id = $1 AND user_id = $2",
            )
            .bind(self.server)
            .bind(user)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(store_error)?);
            return Ok(());
        }
        on_db!(&self.db, pool => sqlx::query("DELETE FROM mcp_oauth_credentials WHERE server_id = $1")
            .bind(self.server)
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(store_error)?);
        Ok(())
    }

    async fn on_refresh_token_rejected(
        &self,
        _credentials: &StoredCredentials,
    ) -> std::result::Result<(), AuthError> {
        tracing::warn!(server = %self.server, user = ?self.user, "the MCP server's authorization server refused to refresh its tokens; it must be connected again");
        if let Some(user) = self.user {
            on_db!(&self.db, pool => sqlx::query(
                "UPDATE mcp_oauth_user_credentials SET rejected_at = $3 WHERE server_id = $1 AND user_id = $2",
            )
            .bind(self.server)
            .bind(user)
            .bind(db::now())
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(store_error)?);
            return Ok(());
        }
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE mcp_oauth_credentials SET rejected_at = $2 WHERE server_id = $1",
        )
        .bind(self.server)
        .bind(db::now())
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(store_error)?);
        Ok(())
    }
}

/// Pending authorizations in the database, sealed, under the digest of
/// their state parameter.
struct StatesStore {
    db: Db,
    sealer: Sealer,
    server: Uuid,
    user: Uuid,
    client: ClientRecord,
}

impl StatesStore {
    fn aad(server: Uuid) -> Vec<u8> {
        format!("mcp-oauth-state:{server}").into_bytes()
    }
}

#[async_trait]
impl StateStore for StatesStore {
    async fn save(
        &self,
        csrf_token: &str,
        state: StoredAuthorizationState,
    ) -> std::result::Result<(), AuthError> {
        let plain = serde_json::to_vec(&PendingState {
            state,
            client: self.client.clone(),
        })
        .map_err(store_error)?;
        let (nonce, ciphertext) = self
            .sealer
            .seal(&Self::aad(self.server), &plain)
            .map_err(store_error)?;
        let now = db::now();
        on_db!(&self.db, pool => {
            sqlx::query("DELETE FROM mcp_oauth_states WHERE created_at < $1")
                .bind(now - chrono::Duration::minutes(STATE_TTL_MINUTES))
                .execute(pool)
                .await
                .map_err(store_error)?;
            sqlx::query(
                "INSERT INTO mcp_oauth_states (id, server_id, user_id, nonce, ciphertext, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(crate::crypto::sha256_hex(csrf_token.as_bytes()))
            .bind(self.server)
            .bind(self.user)
            .bind(nonce)
            .bind(ciphertext)
            .bind(now)
            .execute(pool)
            .await
            .map_err(store_error)?;
        });
        Ok(())
    }

    async fn load(
        &self,
        csrf_token: &str,
    ) -> std::result::Result<Option<StoredAuthorizationState>, AuthError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT nonce, ciphertext FROM mcp_oauth_states WHERE id = $1 AND server_id = $2 AND user_id = $3",
        )
        .bind(crate::crypto::sha256_hex(csrf_token.as_bytes()))
        .bind(self.server)
        .bind(self.user)
        .fetch_optional(pool)
        .await
        .map_err(store_error)?);
        let Some((nonce, ciphertext)) = row else {
            return Ok(None);
        };
        let plain = self
            .sealer
            .open(&Self::aad(self.server), &nonce, &ciphertext)
            .map_err(store_error)?;
        let pending: PendingState = serde_json::from_slice(&plain).map_err(store_error)?;
        Ok(Some(pending.state))
    }

    async fn delete(&self, csrf_token: &str) -> std::result::Result<(), AuthError> {
        on_db!(&self.db, pool => sqlx::query("DELETE FROM mcp_oauth_states WHERE id = $1")
            .bind(crate::crypto::sha256_hex(csrf_token.as_bytes()))
            .execute(pool)
            .await
            .map(|_| ())
            .map_err(store_error)?);
        Ok(())
    }
}

/// An OAuth client for the server at `url`: restricted to public addresses
/// when the server's endpoints are (a user's own server, by default).
pub async fn manager(
    url: &str,
    restricted: bool,
) -> std::result::Result<AuthorizationManager, AuthError> {
    super::install_crypto();
    let mut manager = AuthorizationManager::new(url).await?;
    if restricted {
        let client = crate::egress::restrict13(reqwest13::Client::builder())
            .build()
            .map_err(|e| AuthError::InternalError(format!("HTTP client: {e}")))?;
        manager.with_client(client)?;
    }
    Ok(manager)
}

impl McpService {
    /// The OAuth connections of every server, and `user`'s own.
    pub(super) async fn oauth_connections(&self, user: Option<Uuid>) -> Result<Connections> {
        let rows: Vec<ConnectionRow> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT server_id, connected_by, rejected_at, updated_at FROM mcp_oauth_credentials",
        )
        .fetch_all(pool)
        .await?);
        let own: Vec<ConnectionRow> = match user {
            None => Vec::new(),
            Some(user) => on_db!(&self.db, pool => sqlx::query_as(
                "SELECT server_id, user_id, rejected_at, updated_at FROM mcp_oauth_user_credentials
                 WHERE user_id = $1",
            )
            .bind(user)
            .fetch_all(pool)
            .await?),
        };
        Ok(Connections {
            shared: by_server(rows),
            own: by_server(own),
        })
    }
}

fn by_server(rows: Vec<ConnectionRow>) -> std::collections::HashMap<Uuid, OAuthConnection> {
    rows.into_iter()
        .map(|(server, by, rejected, updated)| {
            (
                server,
                OAuthConnection {
                    state: if rejected.is_some() {
                        "expired"
                    } else {
                        "connected"
                    }
                    .to_owned(),
                    connected_by: by,
                    updated_at: Some(updated),
                },
            )
        })
        .collect()
}

impl McpService {
    /// Whether each user of server `row` connects their own account.
    pub(super) fn own_accounts(row: &super::Row) -> bool {
        row.oauth && row.oauth_per_user && row.owner_id.is_none()
    }

    /// Who may connect server `row`: those who may change it; for a server
    /// of users' own accounts, every user who may call tools (each for
    /// themselves).
    fn check_connect(principal: &Principal, row: &super::Row) -> Result<()> {
        if Self::own_accounts(row) {
            return principal.require(crate::users::model::Permission::ToolInvoke);
        }
        Self::check_manage(principal, row)
    }

    /// The store of server `id`'s tokens.
    pub(super) fn credentials(&self, id: Uuid) -> CredentialsStore {
        CredentialsStore::new(self.db.clone(), self.sealer.clone(), id)
    }

    /// Starts connecting server `id`: registers Orchestra with its
    /// authorization server and answers with the page to send the browser
    /// to. `base` is this server's public URL (for the callback).
    pub async fn connect(
        &self,
        principal: &Principal,
        id: Uuid,
        base: &str,
    ) -> Result<ConnectResponse> {
        let row = self.visible_row(principal, id).await?;
        Self::check_connect(principal, &row)?;
        if !row.oauth {
            return Err(Error::invalid_field(
                "oauth",
                "this server is not marked as needing OAuth (\"oauth\": true)",
            ));
        }
        let url = row.url.clone().unwrap_or_default();
        let restricted = self.bridge.restricts(row.owner_id);
        if restricted {
            crate::egress::check_user_url_str(&url).map_err(|m| Error::invalid_field("url", &m))?;
        }
        let mut manager = manager(&url, restricted)
            .await
            .map_err(|e| unavailable("the server's URL", e))?;
        let found = manager
            .resolve_metadata()
            .await
            .map_err(|e| unavailable("discovering the server's authorization server", e))?;
        manager.set_metadata(found.metadata);
        let redirect_uri = format!("{base}{CALLBACK_PATH}");
        let scopes = manager.select_initial_scopes(&[]).await;
        let scope_refs: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let client = manager
            .register_client("Orchestra", &redirect_uri, &scope_refs)
            .await
            .map_err(|e| unavailable("registering with the server's authorization server", e))?;
        manager.set_state_store(StatesStore {
            db: self.db.clone(),
            sealer: self.sealer.clone(),
            server: id,
            user: principal.user_id,
            client: ClientRecord {
                client_id: client.client_id.clone(),
                client_secret: client.client_secret.clone(),
                redirect_uri: redirect_uri.clone(),
                scopes: scopes.clone(),
            },
        });
        let authorization_url = manager
            .get_authorization_url(&scope_refs)
            .await
            .map_err(|e| unavailable("building the authorization URL", e))?;
        self.audit
            .record(
                Some(principal.user_id),
                "mcp_server.oauth.start",
                None,
                json!({ "id": id, "name": row.name, "scopes": scopes }),
            )
            .await;
        Ok(ConnectResponse { authorization_url })
    }

    /// Finishes connecting: exchanges the code the authorization server
    /// sent back, stores the tokens and restarts the server's connection.
    /// Only the user who started the authorization may finish it.
    pub async fn finish_connect(
        &self,
        principal: &Principal,
        request: FinishConnectRequest,
    ) -> Result<super::McpServerResponse> {
        if !matches!(principal.method, AuthMethod::AccessToken) {
            return Err(Error::Forbidden {
                code: "forbidden",
                message: "servers are connected from the web console".to_owned(),
            });
        }
        let digest = crate::crypto::sha256_hex(request.state.as_bytes());
        let found: Option<StateRow> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT server_id, user_id, nonce, ciphertext, created_at FROM mcp_oauth_states WHERE id = $1",
        )
        .bind(&digest)
        .fetch_optional(pool)
        .await?);
        let gone = || Error::NotFound("authorization in progress");
        let (server, user, nonce, ciphertext, created) = found.ok_or_else(gone)?;
        if created < db::now() - chrono::Duration::minutes(STATE_TTL_MINUTES) {
            return Err(gone());
        }
        if user != principal.user_id {
            return Err(Error::Forbidden {
                code: "forbidden",
                message: "this authorization was started by another user".to_owned(),
            });
        }
        let row = self.visible_row(principal, server).await?;
        Self::check_connect(principal, &row)?;
        let own_account = Self::own_accounts(&row);
        let plain = self
            .sealer
            .open(&StatesStore::aad(server), &nonce, &ciphertext)
            .map_err(Error::Internal)?;
        let pending: PendingState =
            serde_json::from_slice(&plain).map_err(|e| Error::Internal(e.into()))?;
        let url = row.url.clone().unwrap_or_default();
        let mut manager = manager(&url, self.bridge.restricts(row.owner_id))
            .await
            .map_err(|e| unavailable("the server's URL", e))?;
        let found = manager
            .resolve_metadata()
            .await
            .map_err(|e| unavailable("discovering the server's authorization server", e))?;
        manager.set_metadata(found.metadata);
        let mut config =
            OAuthClientConfig::new(&pending.client.client_id, &pending.client.redirect_uri)
                .with_scopes(pending.client.scopes.clone());
        if let Some(secret) = &pending.client.client_secret {
            config = config.with_client_secret(secret);
        }
        manager
            .configure_client(config)
            .map_err(|e| unavailable("configuring the client", e))?;
        manager.set_state_store(StatesStore {
            db: self.db.clone(),
            sealer: self.sealer.clone(),
            server,
            user,
            client: pending.client.clone(),
        });
        let mut store = self.credentials(server);
        store.connected_by = Some(principal.user_id);
        if own_account {
            store = store.for_user(principal.user_id);
        }
        manager.set_credential_store(store);
        manager
            .exchange_code_for_token_with_issuer(
                &request.code,
                &request.state,
                request.iss.as_deref(),
            )
            .await
            .map_err(|e| Error::Validation {
                message: format!("the authorization server did not accept the code: {e}"),
                details: None,
            })?;
        self.audit
            .record(
                Some(principal.user_id),
                "mcp_server.oauth.connect",
                None,
                json!({ "id": server, "name": row.name, "own_account": own_account }),
            )
            .await;
        if own_account {
            // The user's own connection starts again with the new tokens,
            // and learns the tools.
            self.bridge.drop_own(server, Some(principal.user_id));
            if let Err(e) = self.bridge.start_own(&row.name, principal.user_id).await {
                tracing::warn!(server = %row.name, error = %e, "a user's own MCP connection did not start");
            }
            return self.get(principal, server).await;
        }
        self.reactivate(server).await
    }

    /// Forgets server `id`'s tokens; its connection stops.
    pub async fn disconnect(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<super::McpServerResponse> {
        let row = self.visible_row(principal, id).await?;
        Self::check_connect(principal, &row)?;
        let own_account = Self::own_accounts(&row);
        let store = if own_account {
            self.credentials(id).for_user(principal.user_id)
        } else {
            self.credentials(id)
        };
        store
            .clear()
            .await
            .map_err(|e| Error::Internal(anyhow::anyhow!("{e}")))?;
        self.audit
            .record(
                Some(principal.user_id),
                "mcp_server.oauth.disconnect",
                None,
                json!({ "id": id, "name": row.name, "own_account": own_account }),
            )
            .await;
        if own_account {
            self.bridge.drop_own(id, Some(principal.user_id));
            return self.get(principal, id).await;
        }
        self.reactivate(id).await
    }
}
