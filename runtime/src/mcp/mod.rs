//! MCP both ways. [`bridge`] makes Orchestra an MCP client: registered
//! servers (`/api/v1/mcp-servers`) join the tool catalogue as
//! `<server>__<tool>`. [`host`] makes Orchestra an MCP server: `/mcp`
//! (Streamable HTTP) and `orchestra mcp stdio` serve the caller's catalogue
//! and agents.
//!
//! Stdio servers run arbitrary commands, so only admins (`mcp:manage`)
//! register them; users (`mcp:own`) register HTTP servers for themselves,
//! whose tools only they see.

pub mod bridge;
pub mod connect;
pub mod framing;
pub mod host;
pub mod offers;
pub mod routes;
pub mod tasks;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::types::Json;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::AuditService;
use crate::config::McpConfig;
use crate::crypto::Sealer;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::on_db;
use crate::tools::ToolCatalogue;
use crate::users::model::{Permission, Principal};

pub use bridge::{Bridge, EnvValue, ServerStatus, StartMode};

/// Installs the ring crypto provider for the MCP HTTP client (rustls 0.23
/// needs one per process); harmless when one is installed.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// How a server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransportKind {
    /// A local command speaking MCP on stdin/stdout (admins only).
    Stdio,
    /// A Streamable HTTP endpoint.
    Http,
}

impl TransportKind {
    fn as_str(self) -> &'static str {
        match self {
            TransportKind::Stdio => "stdio",
            TransportKind::Http => "http",
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_start() -> StartMode {
    StartMode::Lazy
}

/// `POST /api/v1/mcp-servers`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateMcpServerRequest {
    /// 1 to 32 of `a-z 0-9 _ -` (no `__`), starting with a letter or digit:
    /// the namespace of its tools (`<name>__<tool>`).
    #[schema(pattern = r"^(?!.*__)[a-z0-9][a-z0-9_-]{0,31}$")]
    pub name: String,
    /// `stdio` or `http`.
    pub transport: TransportKind,
    /// stdio: the program to run.
    pub command: Option<String>,
    /// stdio: its arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// stdio: environment variables, each a plain value or
    /// `{"secret": "<name>"}` (injected at start, never stored here).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub env: BTreeMap<String, EnvValue>,
    /// http: the endpoint URL.
    pub url: Option<String>,
    /// http: extra headers; stored encrypted, only their names are shown.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// http: sent as `Authorization: Bearer ...`; stored encrypted.
    pub bearer_token: Option<String>,
    /// http: the server needs OAuth sign-in; connect it with
    /// `POST /api/v1/mcp-servers/{id}/oauth` (not with `bearer_token`).
    #[serde(default)]
    pub oauth: bool,
    /// With `oauth`, for a server-wide server: each user connects their own
    /// account, and their calls use it (default false: one connection,
    /// made by an admin, for everyone).
    #[serde(default)]
    pub oauth_per_user: bool,
    /// `lazy` (default: on first call) or `boot` (when Orchestra starts).
    #[serde(default = "default_start")]
    pub start: StartMode,
    /// Offer its tools over `/mcp` too (default true).
    #[serde(default = "default_true")]
    pub expose: bool,
    /// Default true; a disabled server keeps its record but offers nothing.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Per-call timeout in seconds (default `mcp.call_timeout_secs`).
    pub timeout_secs: Option<u64>,
    /// Largest result in bytes (default `mcp.max_result_bytes`).
    pub max_result_bytes: Option<u64>,
    /// Only for the caller (always so when the caller is not an admin).
    #[serde(default)]
    pub personal: bool,
}

/// `PATCH /api/v1/mcp-servers/{id}`: the fields to change. A change
/// restarts the server's connection.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateMcpServerRequest {
    /// stdio: new program.
    pub command: Option<String>,
    /// stdio: new arguments.
    pub args: Option<Vec<String>>,
    /// stdio: new environment (replaces the old one).
    #[schema(value_type = Option<Object>)]
    pub env: Option<BTreeMap<String, EnvValue>>,
    /// http: new URL.
    pub url: Option<String>,
    /// http: new headers (replace the old ones).
    pub headers: Option<BTreeMap<String, String>>,
    /// http: new bearer token; `null` removes it.
    #[serde(default, deserialize_with = "crate::schema::present")]
    #[schema(value_type = Option<String>)]
    pub bearer_token: Option<Option<String>>,
    /// http: whether the server needs OAuth sign-in.
    pub oauth: Option<bool>,
    /// Whether each user connects their own account (server-wide servers
    /// with `oauth`).
    pub oauth_per_user: Option<bool>,
    /// New start mode.
    pub start: Option<StartMode>,
    /// Offer its tools over `/mcp`.
    pub expose: Option<bool>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// New per-call timeout in seconds.
    pub timeout_secs: Option<u64>,
    /// New result cap in bytes.
    pub max_result_bytes: Option<u64>,
}

/// A registered MCP server, as the API shows it: never a secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct McpServerResponse {
    /// Its id.
    pub id: Uuid,
    /// Its name, the namespace of its tools.
    pub name: String,
    /// The user it belongs to; `null` for a server-wide one.
    pub owner_id: Option<Uuid>,
    /// `stdio` or `http`.
    pub transport: TransportKind,
    /// stdio: the program.
    pub command: Option<String>,
    /// stdio: its arguments.
    pub args: Vec<String>,
    /// stdio: its environment (secret references by name).
    #[schema(value_type = Object)]
    pub env: BTreeMap<String, EnvValue>,
    /// http: the endpoint.
    pub url: Option<String>,
    /// http: names of the extra headers.
    pub header_names: Vec<String>,
    /// http: whether a bearer token is set.
    pub has_bearer_token: bool,
    /// http: whether the server needs OAuth sign-in.
    pub oauth: bool,
    /// Whether each user connects their own account.
    pub oauth_per_user: bool,
    /// The OAuth connection of a server that needs one (to those who may
    /// change the server); of a server with `oauth_per_user`, the caller's
    /// own connection.
    pub oauth_connection: Option<connect::OAuthConnection>,
    /// When it starts.
    pub start: StartMode,
    /// Whether its tools are offered over `/mcp`.
    pub expose: bool,
    /// Whether it is enabled.
    pub enabled: bool,
    /// Per-call timeout in seconds.
    pub timeout_secs: u64,
    /// Result cap in bytes.
    pub max_result_bytes: u64,
    /// Health on the node that answered.
    pub status: ServerStatus,
    /// Its tools' catalogue names.
    pub tools: Vec<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Row {
    id: Uuid,
    name: String,
    owner_id: Option<Uuid>,
    transport: String,
    command: Option<String>,
    args: Json<Vec<String>>,
    env: Json<BTreeMap<String, EnvValue>>,
    url: Option<String>,
    header_names: Json<Vec<String>>,
    secret_nonce: Option<Vec<u8>>,
    secret_ciphertext: Option<Vec<u8>>,
    start_mode: String,
    expose: bool,
    enabled: bool,
    timeout_secs: Option<i64>,
    max_result_bytes: Option<i64>,
    oauth: bool,
    oauth_per_user: bool,
    tools: Json<Vec<rmcp::model::Tool>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, owner_id, transport, command, args, env, url, header_names, \
     secret_nonce, secret_ciphertext, start_mode, expose, enabled, timeout_secs, \
     max_result_bytes, oauth, oauth_per_user, tools, created_at, updated_at";

/// The nonce and ciphertext of an HTTP server's secrets, if it has any.
type Sealed = (Option<Vec<u8>>, Option<Vec<u8>>);

/// What is stored encrypted for an HTTP server.
#[derive(Debug, Default, Serialize, Deserialize)]
struct HttpSecrets {
    headers: BTreeMap<String, String>,
    bearer_token: Option<String>,
}

/// Registers MCP servers and keeps the bridge in step with the database.
#[derive(Clone)]
pub struct McpService {
    db: Db,
    audit: AuditService,
    sealer: Sealer,
    bridge: Bridge,
    tools: ToolCatalogue,
    config: McpConfig,
    closing: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for McpService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("McpService { .. }")
    }
}

impl McpService {
    /// A service over `db`; HTTP secrets are encrypted with `key`.
    pub fn new(
        db: Db,
        audit: AuditService,
        key: &[u8; 32],
        bridge: Bridge,
        tools: ToolCatalogue,
        config: McpConfig,
    ) -> Self {
        McpService {
            db,
            audit,
            sealer: Sealer::new(key),
            bridge,
            tools,
            config,
            closing: tokio_util::sync::CancellationToken::new(),
        }
    }

    /// Cancelled at shutdown: ends `/mcp` sessions and streams.
    pub fn closing(&self) -> tokio_util::sync::CancellationToken {
        self.closing.clone()
    }

    /// Ends `/mcp` sessions and stops every bridged server.
    pub fn shutdown(&self) {
        self.closing.cancel();
        self.bridge.stop_all();
    }

    /// The bridge.
    pub fn bridge(&self) -> &Bridge {
        &self.bridge
    }

    fn aad(id: Uuid) -> Vec<u8> {
        format!("mcp-server:{id}").into_bytes()
    }

    /// Loads every enabled server into the bridge (boot servers connect).
    pub async fn load_all(&self) -> anyhow::Result<()> {
        let rows: Vec<Row> = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM mcp_servers WHERE enabled ORDER BY name"
        ))
        .fetch_all(pool)
        .await?);
        for row in rows {
            let name = row.name.clone();
            match self.def(&row) {
                Ok(def) => self.bridge.upsert(def, row.tools.0.clone()),
                Err(e) => tracing::error!(server = %name, error = %e, "MCP server not loaded"),
            }
        }
        Ok(())
    }

    fn def(&self, row: &Row) -> anyhow::Result<bridge::ServerDef> {
        let transport = if row.transport == "stdio" {
            bridge::Transport::Stdio {
                command: row.command.clone().unwrap_or_default(),
                args: row.args.0.clone(),
                env: row.env.0.clone(),
            }
        } else {
            let secrets = match (&row.secret_nonce, &row.secret_ciphertext) {
                (Some(nonce), Some(ciphertext)) => {
                    let plain = self.sealer.open(&Self::aad(row.id), nonce, ciphertext)?;
                    serde_json::from_slice(&plain)?
                }
                _ => HttpSecrets::default(),
            };
            bridge::Transport::Http {
                url: row.url.clone().unwrap_or_default(),
                headers: secrets.headers,
                bearer_token: secrets.bearer_token,
                oauth: row.oauth.then(|| self.credentials(row.id)),
            }
        };
        Ok(bridge::ServerDef {
            id: row.id,
            name: row.name.clone(),
            owner_id: row.owner_id,
            transport,
            start: if row.start_mode == "boot" {
                StartMode::Boot
            } else {
                StartMode::Lazy
            },
            expose: row.expose,
            oauth_per_user: row.oauth && row.oauth_per_user && row.owner_id.is_none(),
            timeout: Duration::from_secs(self.timeout_of(row)),
            max_result_bytes: self.cap_of(row) as usize,
        })
    }

    fn timeout_of(&self, row: &Row) -> u64 {
        row.timeout_secs
            .map(|t| t as u64)
            .unwrap_or(self.config.call_timeout_secs)
    }

    fn cap_of(&self, row: &Row) -> u64 {
        row.max_result_bytes
            .map(|t| t as u64)
            .unwrap_or(self.config.max_result_bytes as u64)
    }

    /// The server as `principal` may see it: its configuration (command,
    /// arguments, environment, URL, header names) and the stderr tail of its
    /// last error are for those who may change it; others (users and
    /// viewers, for a server-wide server) see its name, tools and a coarse
    /// state.
    fn response(
        &self,
        principal: &Principal,
        row: Row,
        connections: &connect::Connections,
    ) -> McpServerResponse {
        let manages = Self::check_manage(principal, &row).is_ok();
        let own_accounts = row.oauth && row.oauth_per_user && row.owner_id.is_none();
        let mut response = self.full_response(row, connections);
        if own_accounts {
            // The caller's own connection.
            if let Some(status) = self.bridge.own_status(response.id, principal.user_id) {
                response.status = status;
            }
            let mine = connections
                .own
                .get(&response.id)
                .cloned()
                .unwrap_or_else(connect::OAuthConnection::none);
            response.status.last_error = (mine.state != "connected")
                .then(|| bridge::NEEDS_OWN_CONNECTION.to_owned())
                .or(response.status.last_error);
            response.oauth_connection = Some(mine);
        }
        if !manages {
            let mine = response.oauth_connection.take().filter(|_| own_accounts);
            response.command = None;
            response.args = Vec::new();
            response.env = BTreeMap::new();
            response.url = None;
            response.header_names = Vec::new();
            response.has_bearer_token = false;
            response.oauth_connection = mine;
            // A user's own missing sign-in is theirs to know.
            response.status.last_error = response.status.last_error.as_ref().map(|e| {
                if e == bridge::NEEDS_OWN_CONNECTION {
                    e.clone()
                } else {
                    "the server failed; an admin can see why".to_owned()
                }
            });
        }
        response
    }

    fn full_response(&self, row: Row, connections: &connect::Connections) -> McpServerResponse {
        let own_accounts = row.oauth_per_user && row.owner_id.is_none();
        let oauth_connection = row.oauth.then(|| {
            let found = if own_accounts {
                connections.own.get(&row.id)
            } else {
                connections.shared.get(&row.id)
            };
            found
                .cloned()
                .unwrap_or_else(connect::OAuthConnection::none)
        });
        let server = self.bridge.server(row.owner_id, &row.name);
        let status = server.as_ref().map(|s| s.status()).unwrap_or(ServerStatus {
            state: bridge::ServerState::Stopped,
            last_error: None,
            tool_count: 0,
            restarts: 0,
            connected_at: None,
            retry_at: None,
        });
        let tools = server
            .map(|s| s.tools().into_iter().map(|t| t.name).collect())
            .unwrap_or_default();
        let mut status = status;
        if oauth_connection
            .as_ref()
            .is_some_and(|c| c.state != "connected")
        {
            status.last_error = Some(
                if own_accounts {
                    bridge::NEEDS_OWN_CONNECTION
                } else {
                    bridge::NEEDS_CONNECTION
                }
                .to_owned(),
            );
        }
        McpServerResponse {
            id: row.id,
            timeout_secs: self.timeout_of(&row),
            max_result_bytes: self.cap_of(&row),
            name: row.name,
            owner_id: row.owner_id,
            transport: if row.transport == "stdio" {
                TransportKind::Stdio
            } else {
                TransportKind::Http
            },
            command: row.command,
            args: row.args.0,
            env: row.env.0,
            url: row.url,
            header_names: row.header_names.0,
            has_bearer_token: self.has_bearer(row.id, &row.secret_nonce, &row.secret_ciphertext),
            oauth: row.oauth,
            oauth_per_user: row.oauth_per_user,
            oauth_connection,
            start: if row.start_mode == "boot" {
                StartMode::Boot
            } else {
                StartMode::Lazy
            },
            expose: row.expose,
            enabled: row.enabled,
            status,
            tools,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    fn has_bearer(&self, id: Uuid, nonce: &Option<Vec<u8>>, ciphertext: &Option<Vec<u8>>) -> bool {
        let (Some(nonce), Some(ciphertext)) = (nonce, ciphertext) else {
            return false;
        };
        self.sealer
            .open(&Self::aad(id), nonce, ciphertext)
            .ok()
            .and_then(|p| serde_json::from_slice::<HttpSecrets>(&p).ok())
            .is_some_and(|s| s.bearer_token.is_some())
    }

    /// Checks that the caller may see `row`.
    fn visible(principal: &Principal, row: &Row) -> bool {
        principal.owner_scope().is_none() || row.owner_id.is_none_or(|o| o == principal.user_id)
    }

    /// Checks that the caller may change `row`: its owner, or an admin for a
    /// server-wide one (and for stdio servers).
    fn check_manage(principal: &Principal, row: &Row) -> Result<()> {
        match row.owner_id {
            Some(owner) if owner == principal.user_id => {
                if row.transport == "stdio" {
                    principal.require(Permission::McpManage)
                } else {
                    principal.require(Permission::McpOwn)
                }
            }
            Some(_) if principal.owner_scope().is_some() => Err(Error::NotFound("MCP server")),
            _ => principal.require(Permission::McpManage),
        }
    }

    async fn row(&self, id: Uuid) -> Result<Option<Row>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM mcp_servers WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    async fn visible_row(&self, principal: &Principal, id: Uuid) -> Result<Row> {
        principal.require(Permission::ToolRead)?;
        self.row(id)
            .await?
            .filter(|row| Self::visible(principal, row))
            .ok_or(Error::NotFound("MCP server"))
    }

    /// Registers a server, then tries to connect to list its tools (a
    /// failure shows in its status; the registration stands).
    pub async fn create(
        &self,
        principal: &Principal,
        request: CreateMcpServerRequest,
    ) -> Result<McpServerResponse> {
        match request.transport {
            TransportKind::Stdio => principal.require(Permission::McpManage)?,
            TransportKind::Http => principal.require(Permission::McpOwn)?,
        }
        let owner = if request.personal || principal.require(Permission::McpManage).is_err() {
            Some(principal.user_id)
        } else {
            None
        };
        self.check_name(&request.name)?;
        // A user's server may not take the name of a server-wide one (which
        // every user sees): its tools would hide the shared ones.
        if owner.is_some() && self.shared_name_taken(&request.name).await? {
            return Err(Error::conflict(format!(
                "a server-wide MCP server named {:?} exists",
                request.name
            )));
        }
        let checked = Checked::new(
            request.transport,
            request.command,
            request.args,
            request.env,
            request.url,
            request.headers,
            request.bearer_token,
        )?;
        checked.check_reach(self.bridge.restricts(owner))?;
        check_limits(request.timeout_secs, request.max_result_bytes)?;
        check_oauth(request.oauth, &checked)?;
        check_per_user(request.oauth_per_user, request.oauth, owner)?;
        let id = Uuid::now_v7();
        let (nonce, ciphertext) = self.seal(id, &checked)?;
        let now = db::now();
        let inserted = on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO mcp_servers (id, name, owner_id, transport, command, args, env, url, header_names,
                 secret_nonce, secret_ciphertext, start_mode, expose, enabled, timeout_secs, max_result_bytes,
                 tools, created_by, created_at, updated_at, oauth, oauth_per_user)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $19, $20, $21)
             ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&request.name)
        .bind(owner)
        .bind(request.transport.as_str())
        .bind(&checked.command)
        .bind(Json(&checked.args))
        .bind(Json(&checked.env))
        .bind(&checked.url)
        .bind(Json(checked.headers.keys().collect::<Vec<_>>()))
        .bind(nonce)
        .bind(ciphertext)
        .bind(request.start.as_str())
        .bind(request.expose)
        .bind(request.enabled)
        .bind(request.timeout_secs.map(|t| t as i64))
        .bind(request.max_result_bytes.map(|t| t as i64))
        .bind(Json(Vec::<rmcp::model::Tool>::new()))
        .bind(principal.user_id)
        .bind(now)
        .bind(request.oauth)
        .bind(request.oauth_per_user)
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 0 {
            // Names are unique per owner: this says nothing of other users'.
            return Err(Error::conflict(match owner {
                Some(_) => format!("you have an MCP server named {:?}", request.name),
                None => format!("a server-wide MCP server named {:?} exists", request.name),
            }));
        }
        self.audit
            .record(
                Some(principal.user_id),
                "mcp_server.created",
                None,
                json!({ "id": id, "name": request.name, "transport": request.transport, "owner_id": owner }),
            )
            .await;
        self.reactivate(id).await
    }

    /// Reads server `id` as stored, (re)starts it in the bridge, and
    /// answers with its new status.
    async fn reactivate(&self, id: Uuid) -> Result<McpServerResponse> {
        let row = self.row(id).await?.ok_or(Error::NotFound("MCP server"))?;
        self.activate(&row).await?;
        // Only those who may change a server get here.
        let connections = self.oauth_connections(None).await?;
        Ok(self.full_response(
            self.row(id).await?.ok_or(Error::NotFound("MCP server"))?,
            &connections,
        ))
    }

    /// Puts `row` into the bridge (or takes it out when disabled) and, when
    /// enabled, connects once to learn its tools.
    async fn activate(&self, row: &Row) -> Result<()> {
        if !row.enabled {
            self.bridge.remove(row.owner_id, &row.name);
            return Ok(());
        }
        let def = self.def(row)?;
        let own_accounts = def.oauth_per_user;
        self.bridge.upsert(def, row.tools.0.clone());
        // Users connect to a server of their own accounts one by one.
        if own_accounts {
            return Ok(());
        }
        if let Err(e) = self.bridge.start(row.owner_id, &row.name).await {
            tracing::warn!(server = %row.name, error = %e, "MCP server did not start");
        }
        Ok(())
    }

    async fn shared_name_taken(&self, name: &str) -> Result<bool> {
        Ok(on_db!(&self.db, pool => sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM mcp_servers WHERE name = $1 AND owner_id IS NULL)",
        )
        .bind(name)
        .fetch_one(pool)
        .await?))
    }

    fn check_name(&self, name: &str) -> Result<()> {
        let valid = !name.is_empty()
            && name.len() <= 32
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
            && name
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric())
            && !name.contains(crate::tools::SEPARATOR);
        if !valid {
            return Err(Error::invalid_field(
                "name",
                "1 to 32 of a-z 0-9 _ - (no \"__\"), starting with a letter or digit",
            ));
        }
        if name == host::AGENT_NAMESPACE || self.tools.entry(name).is_some() {
            return Err(Error::conflict(format!(
                "the tool namespace {name:?} is taken by a plugin or reserved"
            )));
        }
        Ok(())
    }

    fn seal(&self, id: Uuid, checked: &Checked) -> Result<Sealed> {
        if checked.headers.is_empty() && checked.bearer_token.is_none() {
            return Ok((None, None));
        }
        let plain = serde_json::to_vec(&HttpSecrets {
            headers: checked.headers.clone(),
            bearer_token: checked.bearer_token.clone(),
        })
        .map_err(anyhow::Error::from)?;
        let (nonce, ciphertext) = self.sealer.seal(&Self::aad(id), &plain)?;
        Ok((Some(nonce), Some(ciphertext)))
    }

    /// The servers the caller may see.
    pub async fn list(&self, principal: &Principal) -> Result<Vec<McpServerResponse>> {
        principal.require(Permission::ToolRead)?;
        let rows: Vec<Row> = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM mcp_servers ORDER BY name"
        ))
        .fetch_all(pool)
        .await?);
        let connections = self.oauth_connections(Some(principal.user_id)).await?;
        Ok(rows
            .into_iter()
            .filter(|row| Self::visible(principal, row))
            .map(|row| self.response(principal, row, &connections))
            .collect())
    }

    /// One server, with its status.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<McpServerResponse> {
        let row = self.visible_row(principal, id).await?;
        let connections = self.oauth_connections(Some(principal.user_id)).await?;
        Ok(self.response(principal, row, &connections))
    }

    /// Changes a server and restarts its connection.
    pub async fn update(
        &self,
        principal: &Principal,
        id: Uuid,
        request: UpdateMcpServerRequest,
    ) -> Result<McpServerResponse> {
        let row = self.visible_row(principal, id).await?;
        Self::check_manage(principal, &row)?;
        let kind = if row.transport == "stdio" {
            TransportKind::Stdio
        } else {
            TransportKind::Http
        };
        let old = match self.def(&row)?.transport {
            bridge::Transport::Http {
                headers,
                bearer_token,
                ..
            } => HttpSecrets {
                headers,
                bearer_token,
            },
            bridge::Transport::Stdio { .. } => HttpSecrets::default(),
        };
        let checked = Checked::new(
            kind,
            request.command.or(row.command.clone()),
            request.args.unwrap_or(row.args.0.clone()),
            request.env.unwrap_or(row.env.0.clone()),
            request.url.or(row.url.clone()),
            request.headers.unwrap_or(old.headers),
            request.bearer_token.unwrap_or(old.bearer_token),
        )?;
        checked.check_reach(self.bridge.restricts(row.owner_id))?;
        let oauth = request.oauth.unwrap_or(row.oauth);
        check_oauth(oauth, &checked)?;
        let per_user = request
            .oauth_per_user
            .unwrap_or(row.oauth_per_user && oauth);
        check_per_user(per_user, oauth, row.owner_id)?;
        let timeout = request.timeout_secs.or(row.timeout_secs.map(|t| t as u64));
        let cap = request
            .max_result_bytes
            .or(row.max_result_bytes.map(|t| t as u64));
        check_limits(timeout, cap)?;
        let (nonce, ciphertext) = self.seal(id, &checked)?;
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE mcp_servers SET command = $2, args = $3, env = $4, url = $5, header_names = $6,
                 secret_nonce = $7, secret_ciphertext = $8, start_mode = $9, expose = $10, enabled = $11,
                 timeout_secs = $12, max_result_bytes = $13, updated_at = $14, oauth = $15,
                 oauth_per_user = $16
             WHERE id = $1",
        )
        .bind(id)
        .bind(&checked.command)
        .bind(Json(&checked.args))
        .bind(Json(&checked.env))
        .bind(&checked.url)
        .bind(Json(checked.headers.keys().collect::<Vec<_>>()))
        .bind(nonce)
        .bind(ciphertext)
        .bind(request.start.map(StartMode::as_str).unwrap_or(&row.start_mode))
        .bind(request.expose.unwrap_or(row.expose))
        .bind(request.enabled.unwrap_or(row.enabled))
        .bind(timeout.map(|t| t as i64))
        .bind(cap.map(|t| t as i64))
        .bind(db::now())
        .bind(oauth)
        .bind(per_user)
        .execute(pool)
        .await?
        .rows_affected());
        self.audit
            .record(
                Some(principal.user_id),
                "mcp_server.updated",
                None,
                json!({ "id": id, "name": row.name }),
            )
            .await;
        self.reactivate(id).await
    }

    /// Restarts a server's connection now.
    pub async fn restart(&self, principal: &Principal, id: Uuid) -> Result<McpServerResponse> {
        let row = self.visible_row(principal, id).await?;
        Self::check_manage(principal, &row)?;
        self.reactivate(id).await
    }

    /// Removes a server; its process stops and its tools leave the catalogue.
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<()> {
        let row = self.visible_row(principal, id).await?;
        Self::check_manage(principal, &row)?;
        on_db!(&self.db, pool => sqlx::query("DELETE FROM mcp_servers WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?
            .rows_affected());
        self.bridge.remove(row.owner_id, &row.name);
        self.audit
            .record(
                Some(principal.user_id),
                "mcp_server.deleted",
                None,
                json!({ "id": id, "name": row.name }),
            )
            .await;
        Ok(())
    }
}

/// A server's validated connection settings.
struct Checked {
    command: Option<String>,
    args: Vec<String>,
    env: BTreeMap<String, EnvValue>,
    url: Option<String>,
    headers: BTreeMap<String, String>,
    bearer_token: Option<String>,
}

impl Checked {
    /// Refuses, when `restricted` (a user's own server), a URL that points
    /// at a non-public address (see [`crate::egress`]).
    fn check_reach(&self, restricted: bool) -> Result<()> {
        match self.url.as_deref().filter(|_| restricted) {
            Some(url) => {
                crate::egress::check_user_url_str(url).map_err(|e| Error::invalid_field("url", e))
            }
            None => Ok(()),
        }
    }

    fn new(
        kind: TransportKind,
        command: Option<String>,
        args: Vec<String>,
        env: BTreeMap<String, EnvValue>,
        url: Option<String>,
        headers: BTreeMap<String, String>,
        bearer_token: Option<String>,
    ) -> Result<Checked> {
        let printable = |s: &str| !s.chars().any(char::is_control);
        match kind {
            TransportKind::Stdio => {
                let command = command
                    .filter(|c| !c.trim().is_empty() && c.len() <= 4096 && printable(c))
                    .ok_or_else(|| {
                        Error::invalid_field("command", "a stdio server needs a command")
                    })?;
                if url.is_some() || !headers.is_empty() || bearer_token.is_some() {
                    return Err(Error::validation(
                        "url, headers and bearer_token are for http servers",
                    ));
                }
                if args.len() > 256 || args.iter().any(|a| a.len() > 4096 || a.contains('\0')) {
                    return Err(Error::invalid_field(
                        "args",
                        "at most 256 arguments of at most 4096 bytes",
                    ));
                }
                for (key, value) in &env {
                    let key_ok = !key.is_empty()
                        && key.len() <= 256
                        && !key.contains('=')
                        && key.chars().all(|c| c.is_ascii_graphic());
                    let value_ok = match value {
                        EnvValue::Plain(v) => v.len() <= 32 << 10 && !v.contains('\0'),
                        EnvValue::Secret { secret } => crate::sandbox::host::is_secret_name(secret),
                    };
                    if !key_ok || !value_ok {
                        return Err(Error::invalid_field(
                            "env",
                            format!("{key:?}: a variable name, and a value or {{\"secret\": \"<name>\"}}"),
                        ));
                    }
                }
                Ok(Checked {
                    command: Some(command),
                    args,
                    env,
                    url: None,
                    headers: BTreeMap::new(),
                    bearer_token: None,
                })
            }
            TransportKind::Http => {
                if command.is_some() || !args.is_empty() || !env.is_empty() {
                    return Err(Error::validation(
                        "command, args and env are for stdio servers",
                    ));
                }
                let url =
                    url.ok_or_else(|| Error::invalid_field("url", "an http server needs a url"))?;
                let parsed = reqwest::Url::parse(&url)
                    .map_err(|e| Error::invalid_field("url", format!("not a URL: {e}")))?;
                if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
                    return Err(Error::invalid_field("url", "an http(s) URL with a host"));
                }
                for (name, value) in &headers {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                        || http::HeaderValue::from_str(value).is_err()
                    {
                        return Err(Error::invalid_field(
                            "headers",
                            format!("{name:?} is not a valid header"),
                        ));
                    }
                }
                if let Some(token) = &bearer_token {
                    if token.is_empty() || http::HeaderValue::from_str(token).is_err() {
                        return Err(Error::invalid_field(
                            "bearer_token",
                            "a non-empty token of visible ASCII characters",
                        ));
                    }
                }
                Ok(Checked {
                    command: None,
                    args: Vec::new(),
                    env: BTreeMap::new(),
                    url: Some(url),
                    headers,
                    bearer_token,
                })
            }
        }
    }
}

/// OAuth is for HTTP servers, instead of a static bearer token.
fn check_oauth(oauth: bool, checked: &Checked) -> Result<()> {
    if oauth && checked.url.is_none() {
        return Err(Error::invalid_field(
            "oauth",
            "only HTTP servers sign in with OAuth",
        ));
    }
    if oauth && checked.bearer_token.is_some() {
        return Err(Error::invalid_field(
            "oauth",
            "a server signs in with OAuth or uses a bearer_token, not both",
        ));
    }
    Ok(())
}

/// Per-user connections are for server-wide servers that sign in with
/// OAuth (a user's own server has one user already).
fn check_per_user(per_user: bool, oauth: bool, owner: Option<Uuid>) -> Result<()> {
    if per_user && !oauth {
        return Err(Error::invalid_field(
            "oauth_per_user",
            "needs \"oauth\": true",
        ));
    }
    if per_user && owner.is_some() {
        return Err(Error::invalid_field(
            "oauth_per_user",
            "is for server-wide servers; your own server has one user already",
        ));
    }
    Ok(())
}

fn check_limits(timeout_secs: Option<u64>, max_result_bytes: Option<u64>) -> Result<()> {
    if timeout_secs.is_some_and(|t| !(1..=3600).contains(&t)) {
        return Err(Error::invalid_field("timeout_secs", "1 to 3600"));
    }
    if max_result_bytes.is_some_and(|b| !(1024..=64 << 20).contains(&b)) {
        return Err(Error::invalid_field("max_result_bytes", "1 KiB to 64 MiB"));
    }
    Ok(())
}
