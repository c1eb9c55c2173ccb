//! The bridge: Orchestra as an MCP client. Each registered server gets one
//! connection per node (a child process over stdio, or a Streamable HTTP
//! session), started lazily or at boot, health-checked with pings and
//! restarted with exponential backoff when it dies. Its tools are cached, so
//! listing the catalogue never waits on a server, and refreshed when the
//! server sends `notifications/tools/list_changed`.
//!
//! A server that is down fails its own calls at once with
//! [`ToolError::Unavailable`] until its next restart; nothing else waits on it.

use std::collections::{BTreeMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rmcp::model::{
    CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig, ClientRequest,
    ContentBlock, ErrorCode, Implementation, Tool,
};
use rmcp::service::{NotificationContext, Peer, RunningService, RunningServiceCancellationToken};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, RoleClient, ServiceError, ServiceExt};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio::io::AsyncBufReadExt;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::{EgressConfig, McpConfig};
use crate::db::Db;
use crate::on_db;
use crate::sandbox::ToolError;
use crate::secrets::SecretService;
use crate::tools::asks::{Ask, CallOrigin};
use crate::tools::{ToolInfo, ToolSource, SEPARATOR};

/// Lines of a server's stderr kept to explain a crash.
const STDERR_TAIL: usize = 20;
/// How long a failure waits for a dying server's last stderr lines.
const STDERR_DRAIN: Duration = Duration::from_secs(2);
/// Longest catalogue name a model vendor accepts.
const MAX_TOOL_NAME: usize = 64;

/// An environment value of a stdio server: plain text, or the name of a
/// secret injected when the server starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum EnvValue {
    /// A value stored as is (not for secrets).
    Plain(String),
    /// A secret (`PUT /api/v1/secrets/{name}`), resolved at start.
    Secret {
        /// The secret's name.
        secret: String,
    },
}

/// How a bridged server is reached.
#[derive(Clone)]
pub enum Transport {
    /// A child process speaking MCP over stdin/stdout.
    Stdio {
        /// The program.
        command: String,
        /// Its arguments.
        args: Vec<String>,
        /// Its environment (on top of `PATH`, `HOME` and `LANG`).
        env: BTreeMap<String, EnvValue>,
    },
    /// A Streamable HTTP endpoint.
    Http {
        /// The endpoint URL.
        url: String,
        /// Extra headers (decrypted).
        headers: BTreeMap<String, String>,
        /// A bearer token (decrypted).
        bearer_token: Option<String>,
        /// The store of its OAuth tokens, when it signs in with OAuth.
        oauth: Option<crate::mcp::connect::CredentialsStore>,
    },
}

/// When a server starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// On its first call after Orchestra starts (its last known tools are
    /// listed meanwhile), and once at registration to learn its tools.
    Lazy,
    /// When the server process starts, and right after registration.
    Boot,
}

impl StartMode {
    /// The stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMode::Lazy => "lazy",
            StartMode::Boot => "boot",
        }
    }
}

/// Why a server that signs in with OAuth does not start.
pub const NEEDS_CONNECTION: &str =
    "not connected: this server needs OAuth sign-in; connect it (again) from the MCP servers page";

/// Why a server whose users connect their own accounts does not start for
/// a user.
pub const NEEDS_OWN_CONNECTION: &str =
    "not connected: this server needs you to sign in with your own account; connect it (again) from the MCP servers page";

/// A bridged server as the bridge runs it.
#[derive(Clone)]
pub struct ServerDef {
    /// Its id.
    pub id: Uuid,
    /// Its name: the namespace of its tools.
    pub name: String,
    /// The user it belongs to; `None` for a server-wide one.
    pub owner_id: Option<Uuid>,
    /// How it is reached.
    pub transport: Transport,
    /// When it starts.
    pub start: StartMode,
    /// Whether its tools are offered over `/mcp`.
    pub expose: bool,
    /// Each user connects their own account (a server-wide OAuth server):
    /// calls go through the caller's own connection.
    pub oauth_per_user: bool,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Largest accepted result, in bytes of JSON.
    pub max_result_bytes: usize,
}

/// The state of a bridged server on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ServerState {
    /// Not started yet (lazy) or disabled.
    Stopped,
    /// Connecting.
    Starting,
    /// Connected; its tools are in the catalogue.
    Running,
    /// Crashed or failed to start; waiting to restart.
    Backoff,
}

/// What `GET /api/v1/mcp-servers/{id}` shows of a server's health.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServerStatus {
    /// The state on the node that answered.
    pub state: ServerState,
    /// The last failure (start, crash, failed health check), if any.
    pub last_error: Option<String>,
    /// Tools it offers (as of its last listing).
    pub tool_count: usize,
    /// Times it was restarted after a failure.
    pub restarts: u32,
    /// When the current connection was made.
    pub connected_at: Option<DateTime<Utc>>,
    /// When the next restart is due, while in backoff.
    pub retry_at: Option<DateTime<Utc>>,
}

/// One tool of a bridged server.
#[derive(Clone)]
struct BridgedTool {
    /// The name the server knows it by.
    remote: String,
    info: ToolInfo,
    /// The server's own description (title, annotations, icons, `_meta`),
    /// under the catalogue name: what `/mcp` serves again.
    original: Tool,
}

struct State {
    state: ServerState,
    peer: Option<Peer<RoleClient>>,
    cancel: Option<RunningServiceCancellationToken>,
    last_error: Option<String>,
    restarts: u32,
    failures: u32,
    retry_at: Option<Instant>,
    connected_at: Option<DateTime<Utc>>,
    /// Bumped on every connect and stop: a supervisor of an older
    /// connection must not touch the state.
    generation: u64,
    stopped: bool,
    stderr: VecDeque<String>,
    /// Turns true once the current process's stderr reached its end.
    stderr_closed: Option<tokio::sync::watch::Receiver<bool>>,
}

/// One bridged server and its connection.
pub struct Server {
    def: ServerDef,
    /// Connect to public addresses only (see [`crate::egress`]).
    restricted: bool,
    db: Option<Db>,
    webhooks: Webhooks,
    config: Arc<McpConfig>,
    secrets: SecretService,
    connecting: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    tools: RwLock<Arc<Vec<BridgedTool>>>,
    models: Models,
    /// `/mcp` sessions subscribed to its resources: its own URI, then the
    /// session id and the session's peer.
    subscribers: Mutex<BTreeMap<String, Vec<Subscriber>>>,
    /// Calls in flight that a run makes, by a number of their own: where a
    /// question the server asks (elicitation) can go.
    in_flight: Mutex<BTreeMap<u64, InFlight>>,
    next_call: std::sync::atomic::AtomicU64,
    /// A user's own connection to a server-wide server (`oauth_per_user`)
    /// shares its tool list with the server it stands for.
    parent: std::sync::OnceLock<Weak<Server>>,
}

/// A run's call in flight on a connection.
struct InFlight {
    origin: CallOrigin,
    /// When the call times out: pushed back while the user answers a
    /// question the server asked.
    deadline: tokio::sync::watch::Sender<tokio::time::Instant>,
}

/// Takes a call off [`Server::in_flight`] when it ends.
struct InFlightGuard<'a> {
    server: &'a Server,
    key: u64,
}

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.server.in_flight.lock() {
            calls.remove(&self.key);
        }
    }
}

impl Server {
    #[allow(clippy::too_many_arguments)]
    fn new(
        def: ServerDef,
        restricted: bool,
        db: Option<Db>,
        webhooks: Webhooks,
        models: Models,
        config: Arc<McpConfig>,
        secrets: SecretService,
        cached: Vec<Tool>,
    ) -> Arc<Server> {
        let server = Arc::new(Server {
            def,
            restricted,
            db,
            webhooks,
            models,
            subscribers: Mutex::new(BTreeMap::new()),
            in_flight: Mutex::new(BTreeMap::new()),
            next_call: std::sync::atomic::AtomicU64::new(0),
            parent: std::sync::OnceLock::new(),
            config,
            secrets,
            connecting: tokio::sync::Mutex::new(()),
            state: Mutex::new(State {
                state: ServerState::Stopped,
                peer: None,
                cancel: None,
                last_error: None,
                restarts: 0,
                failures: 0,
                retry_at: None,
                connected_at: None,
                generation: 0,
                stopped: false,
                stderr: VecDeque::new(),
                stderr_closed: None,
            }),
            tools: RwLock::new(Arc::new(Vec::new())),
        });
        let tools = server.catalogue_tools(cached);
        *server.tools.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(tools);
        server
    }

    /// Keeps the listing in the database, for the next start.
    /// What a server that is not signed in says.
    fn needs_connection(&self) -> &'static str {
        if self.def.oauth_per_user {
            NEEDS_OWN_CONNECTION
        } else {
            NEEDS_CONNECTION
        }
    }

    /// Replaces the tool list (and that of the server a user's own
    /// connection stands for).
    fn set_tools(&self, tools: Vec<BridgedTool>) {
        let tools = Arc::new(tools);
        if let Some(parent) = self.parent.get().and_then(Weak::upgrade) {
            *parent.tools.write().unwrap_or_else(|e| e.into_inner()) = tools.clone();
        }
        *self.tools.write().unwrap_or_else(|e| e.into_inner()) = tools;
    }

    fn save_tools(&self, tools: &[Tool]) {
        let Some(db) = self.db.clone() else {
            return;
        };
        let id = self.def.id;
        let json = sqlx::types::Json(tools.to_vec());
        tokio::spawn(async move {
            let saved = on_db!(&db, pool => sqlx::query("UPDATE mcp_servers SET tools = $2 WHERE id = $1")
                .bind(id)
                .bind(&json)
                .execute(pool)
                .await
                .map(|_| ()));
            if let Err(e) = saved {
                tracing::warn!(error = %e, "could not store an MCP server's tool list");
            }
        });
    }

    /// Its definition.
    pub fn def(&self) -> &ServerDef {
        &self.def
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Its health on this node.
    pub fn status(&self) -> ServerStatus {
        let state = self.lock();
        let now = Instant::now();
        ServerStatus {
            state: state.state,
            last_error: state.last_error.clone(),
            tool_count: self.tools.read().map(|t| t.len()).unwrap_or(0),
            restarts: state.restarts,
            connected_at: state.connected_at,
            retry_at: state.retry_at.map(|at| {
                Utc::now()
                    + chrono::Duration::from_std(at.saturating_duration_since(now))
                        .unwrap_or_default()
            }),
        }
    }

    /// Its tools as catalogue entries.
    pub fn tools(&self) -> Vec<ToolInfo> {
        self.tools
            .read()
            .map(|t| t.iter().map(|t| t.info.clone()).collect())
            .unwrap_or_default()
    }

    /// Whether `name` (the part after the separator) is one of its tools.
    pub fn tool(&self, name: &str) -> Option<ToolInfo> {
        let full = format!("{}{SEPARATOR}{name}", self.def.name);
        self.tools
            .read()
            .ok()?
            .iter()
            .find(|t| t.info.name == full)
            .map(|t| t.info.clone())
    }

    /// Tool `full` (its catalogue name) as the server described it.
    pub fn mcp_tool(&self, full: &str) -> Option<Tool> {
        self.tools
            .read()
            .ok()?
            .iter()
            .find(|t| t.info.name == full)
            .map(|t| t.original.clone())
    }

    fn remote_name(&self, full: &str) -> Option<String> {
        self.tools
            .read()
            .ok()?
            .iter()
            .find(|t| t.info.name == full)
            .map(|t| t.remote.clone())
    }

    /// A connected peer: the current one, or a new connection. Fails fast
    /// while the server is in backoff.
    async fn peer(self: &Arc<Self>) -> Result<Peer<RoleClient>, ToolError> {
        if let Some(peer) = self.ready_peer()? {
            return Ok(peer);
        }
        self.connect().await
    }

    fn ready_peer(&self) -> Result<Option<Peer<RoleClient>>, ToolError> {
        let state = self.lock();
        if state.stopped {
            return Err(ToolError::Unavailable(format!(
                "the MCP server {} is disabled",
                self.def.name
            )));
        }
        if let Some(peer) = &state.peer {
            if !peer.is_transport_closed() {
                return Ok(Some(peer.clone()));
            }
        }
        if let Some(at) = state.retry_at {
            let now = Instant::now();
            if at > now {
                return Err(ToolError::Unavailable(format!(
                    "the MCP server {} is down ({}); next restart in {} s",
                    self.def.name,
                    state.last_error.as_deref().unwrap_or("unknown error"),
                    at.duration_since(now).as_secs() + 1
                )));
            }
        }
        Ok(None)
    }

    /// Connects (once at a time), lists the tools and starts the supervisor.
    async fn connect(self: &Arc<Self>) -> Result<Peer<RoleClient>, ToolError> {
        let _one = self.connecting.lock().await;
        if let Some(peer) = self.ready_peer()? {
            return Ok(peer);
        }
        let generation = {
            let mut state = self.lock();
            state.state = ServerState::Starting;
            state.generation += 1;
            state.stderr_closed = None;
            state.generation
        };
        let limit = Duration::from_secs(self.config.connect_timeout_secs);
        let outcome = match tokio::time::timeout(limit, self.open(generation)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer to initialize within {} s",
                limit.as_secs()
            )),
        };
        match outcome {
            Ok((running, tools)) => {
                let peer = running.peer().clone();
                let count = tools.len();
                self.set_tools(tools);
                {
                    let mut state = self.lock();
                    state.state = ServerState::Running;
                    state.peer = Some(peer.clone());
                    state.cancel = Some(running.cancellation_token());
                    state.failures = 0;
                    state.retry_at = None;
                    state.connected_at = Some(Utc::now());
                }
                tracing::info!(server = %self.def.name, tools = count, "MCP server connected");
                let server = Arc::downgrade(self);
                tokio::spawn(supervise(server, running, generation));
                Ok(peer)
            }
            Err(error) => {
                let error = self.with_stderr(error);
                tracing::warn!(server = %self.def.name, %error, "MCP server failed to start");
                self.fail(generation, error.clone());
                Err(ToolError::Unavailable(format!(
                    "the MCP server {} failed to start: {error}",
                    self.def.name
                )))
            }
        }
    }

    /// Opens the transport and performs the handshake and the first listing.
    async fn open(
        self: &Arc<Self>,
        generation: u64,
    ) -> Result<(RunningService<RoleClient, Handler>, Vec<BridgedTool>), String> {
        let handler = Handler {
            server: Arc::downgrade(self),
        };
        let running = match &self.def.transport {
            Transport::Stdio { command, args, env } => {
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args).env_clear();
                for key in ["PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT"] {
                    if let Some(value) = std::env::var_os(key) {
                        cmd.env(key, value);
                    }
                }
                // Secret values given to the process, to be blotted out of
                // what it writes on stderr (logged, and kept for last_error).
                let mut revealed = Vec::new();
                for (key, value) in env {
                    let value = match value {
                        EnvValue::Plain(v) => v.clone(),
                        EnvValue::Secret { secret } => match self.secrets.reveal(secret).await {
                            Ok(Some(v)) => {
                                revealed.push(v.clone());
                                v
                            }
                            Ok(None) => return Err(format!("secret {secret:?} is not set")),
                            Err(e) => return Err(format!("secret {secret:?}: {e}")),
                        },
                    };
                    cmd.env(key, value);
                }
                let mut wrapped = process_wrap::tokio::CommandWrap::from(cmd);
                wrapped
                    .wrap(process_wrap::tokio::ProcessGroup::leader())
                    .wrap(process_wrap::tokio::KillOnDrop);
                let (process, stderr) = TokioChildProcess::builder(wrapped)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start {command:?}: {e}"))?;
                if let Some(stderr) = stderr {
                    let (closed, watch) = tokio::sync::watch::channel(false);
                    self.lock().stderr_closed = Some(watch);
                    tokio::spawn(capture_stderr(
                        Arc::downgrade(self),
                        stderr,
                        generation,
                        closed,
                        Redactor::new(revealed),
                    ));
                }
                match handler.serve(process).await {
                    Ok(running) => running,
                    Err(e) => {
                        // A process that exits at once explains itself on
                        // stderr: read it to the end before reporting.
                        self.stderr_drained().await;
                        return Err(format!("initialize failed: {e}"));
                    }
                }
            }
            Transport::Http {
                url,
                headers,
                bearer_token,
                oauth,
            } => {
                crate::mcp::install_crypto();
                let mut custom = std::collections::HashMap::new();
                for (name, value) in headers {
                    let name = http::HeaderName::from_bytes(name.as_bytes())
                        .map_err(|_| format!("invalid header name {name:?}"))?;
                    let value = http::HeaderValue::from_str(value)
                        .map_err(|_| format!("invalid value for header {name}"))?;
                    custom.insert(name, value);
                }
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(custom);
                if let Some(token) = bearer_token {
                    config = config.auth_header(token.clone());
                }
                let served = if let Some(store) = oauth {
                    if self.restricted {
                        crate::egress::check_user_url_str(url)?;
                    }
                    let mut manager = crate::mcp::connect::manager(url, self.restricted)
                        .await
                        .map_err(|e| format!("OAuth: {e}"))?;
                    manager.set_credential_store(store.clone());
                    match manager.initialize_from_store().await {
                        Ok(true) => {}
                        Ok(false) => return Err(self.needs_connection().to_owned()),
                        Err(e) => return Err(format!("OAuth: {e}")),
                    }
                    let mut builder = reqwest13::Client::builder();
                    if self.restricted {
                        builder = crate::egress::restrict13(builder);
                    }
                    let client = builder
                        .build()
                        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
                    handler
                        .serve(StreamableHttpClientTransport::with_client(
                            rmcp::transport::auth::AuthClient::new(client, manager),
                            config,
                        ))
                        .await
                } else if self.restricted {
                    // Checked when saved, and again here: the operator may
                    // have disallowed private addresses since.
                    crate::egress::check_user_url_str(url)?;
                    let client = crate::egress::restrict13(reqwest13::Client::builder())
                        .build()
                        .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
                    handler
                        .serve(StreamableHttpClientTransport::with_client(client, config))
                        .await
                } else {
                    handler
                        .serve(StreamableHttpClientTransport::from_config(config))
                        .await
                };
                served.map_err(|e| format!("initialize failed: {e}"))?
            }
        };
        let mut tools = running
            .peer()
            .list_all_tools()
            .await
            .map_err(|e| format!("tools/list failed: {e}"))?;
        with_resource_reader(running.peer(), &mut tools);
        self.save_tools(&tools);
        Ok((running, self.catalogue_tools(tools)))
    }

    /// Maps the server's tools to catalogue entries. Names are made safe for
    /// every model vendor (`[A-Za-z0-9_-]`, 64 at most); a tool whose safe
    /// name collides with another's is left out, with a warning.
    fn catalogue_tools(&self, tools: Vec<Tool>) -> Vec<BridgedTool> {
        let mut seen = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(tools.len());
        for tool in tools {
            let safe: String = tool
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let mut name = format!("{}{SEPARATOR}{safe}", self.def.name);
            if name.len() > MAX_TOOL_NAME {
                name.truncate(MAX_TOOL_NAME);
            }
            if !seen.insert(name.clone()) {
                tracing::warn!(server = %self.def.name, tool = %tool.name,
                    "MCP tool left out: its catalogue name collides with another tool's");
                continue;
            }
            let hints = tool.annotations.clone().unwrap_or_default();
            let read_only = hints.read_only_hint.unwrap_or(false);
            let mut original = tool.clone();
            original.name = name.clone().into();
            out.push(BridgedTool {
                original,
                remote: if is_reader(&tool) {
                    READER_REMOTE.to_owned()
                } else {
                    tool.name.to_string()
                },
                info: ToolInfo {
                    name,
                    description: tool
                        .description
                        .as_deref()
                        .or(tool.title.as_deref())
                        .unwrap_or_default()
                        .to_owned(),
                    input_schema: Value::Object((*tool.input_schema).clone()),
                    output_schema: tool.output_schema.map(|s| Value::Object((*s).clone())),
                    source: ToolSource::Mcp {
                        server: self.def.name.clone(),
                        server_id: self.def.id,
                        tool: tool.name.to_string(),
                    },
                    read_only,
                    // The protocol's defaults: a tool that does not say
                    // otherwise may destroy data and is not idempotent.
                    destructive: !read_only && hints.destructive_hint.unwrap_or(true),
                    idempotent: read_only || hints.idempotent_hint.unwrap_or(false),
                },
            });
        }
        out
    }

    /// Waits, briefly, until the reader of the process's stderr has seen
    /// its end, so the last lines of a dying server are in the tail.
    async fn stderr_drained(&self) {
        let watch = self.lock().stderr_closed.clone();
        if let Some(mut watch) = watch {
            let _ = tokio::time::timeout(STDERR_DRAIN, watch.wait_for(|closed| *closed)).await;
        }
    }

    fn with_stderr(&self, error: String) -> String {
        let state = self.lock();
        if state.stderr.is_empty() {
            error
        } else {
            let tail: Vec<&str> = state
                .stderr
                .iter()
                .rev()
                .take(3)
                .map(String::as_str)
                .collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("{error}; stderr: {}", tail.join(" | "))
        }
    }

    /// Queues `mcp.server_down` for the server's owner (and server-wide
    /// subscriptions): once per failure that follows a success, and, across
    /// nodes that see the same failure, once a minute.
    fn announce_down(&self, error: String) {
        let Some(webhooks) = self.webhooks.get().cloned() else {
            return;
        };
        let def = &self.def;
        let minute = chrono::Utc::now().timestamp() / 60;
        let key = format!("mcp.server_down:{}:{minute}", def.id);
        let data = serde_json::json!({
            "server_id": def.id,
            "name": def.name,
            "owner_id": def.owner_id,
            "error": error,
        });
        let owner = def.owner_id;
        tokio::spawn(async move {
            webhooks.emit(owner, "mcp.server_down", &key, data).await;
        });
    }

    /// Records a failure of connection `generation` and schedules a restart.
    fn fail(self: &Arc<Self>, generation: u64, error: String) {
        let delay = {
            let mut state = self.lock();
            if state.generation != generation || state.stopped {
                return;
            }
            state.peer = None;
            state.cancel = None;
            state.state = ServerState::Backoff;
            state.last_error = Some(error);
            state.failures += 1;
            let exp = state.failures.saturating_sub(1).min(16);
            let delay = Duration::from_millis(500u64 << exp)
                .min(Duration::from_secs(self.config.max_backoff_secs.max(1)));
            state.retry_at = Some(Instant::now() + delay);
            if state.failures == 1 {
                self.announce_down(state.last_error.clone().unwrap_or_default());
            }
            delay
        };
        let server = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(server) = server.upgrade() else {
                return;
            };
            let due = {
                let state = server.lock();
                state.generation == generation && !state.stopped && state.peer.is_none()
            };
            if due {
                {
                    let mut state = server.lock();
                    state.retry_at = None;
                    state.restarts += 1;
                }
                if server.connect().await.is_ok() {
                    tracing::info!(server = %server.def.name, "MCP server restarted");
                }
            }
        });
    }

    /// Stops the connection for good (the server was removed or changed).
    fn stop(&self) {
        let mut state = self.lock();
        state.stopped = true;
        state.generation += 1;
        state.peer = None;
        state.state = ServerState::Stopped;
        if let Some(cancel) = state.cancel.take() {
            cancel.cancel();
        }
    }

    /// Kills the current connection so that the supervisor restarts it.
    fn drop_connection(&self, reason: String) {
        let mut state = self.lock();
        state.last_error = Some(reason);
        if let Some(cancel) = state.cancel.take() {
            cancel.cancel();
        }
    }

    /// Pings a running server; a server that does not answer is restarted.
    async fn health_check(self: &Arc<Self>) {
        let peer = {
            let state = self.lock();
            match (&state.peer, state.state) {
                (Some(peer), ServerState::Running) => peer.clone(),
                _ => return,
            }
        };
        let ping = peer.send_request(ClientRequest::PingRequest(Default::default()));
        let answer = tokio::time::timeout(Duration::from_secs(10), ping).await;
        match answer {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => self.drop_connection(format!("health check failed: {e}")),
            Err(_) => self.drop_connection("health check: no answer to ping within 10 s".into()),
        }
    }

    async fn refresh_tools(self: &Arc<Self>, peer: &Peer<RoleClient>) {
        match peer.list_all_tools().await {
            Ok(mut tools) => {
                with_resource_reader(peer, &mut tools);
                self.save_tools(&tools);
                let tools = self.catalogue_tools(tools);
                tracing::info!(server = %self.def.name, tools = tools.len(), "MCP tool list refreshed");
                self.set_tools(tools);
            }
            Err(e) => {
                tracing::warn!(server = %self.def.name, error = %e, "MCP tool list refresh failed")
            }
        }
    }

    /// Calls tool `full` (its catalogue name) with `arguments`: the result
    /// as the catalogue gives it to runs and the API.
    pub async fn call(self: &Arc<Self>, full: &str, arguments: &Value) -> Result<Value, ToolError> {
        self.result(self.call_raw(full, arguments).await?)
    }

    /// Calls tool `full` with `arguments`: the server's result as it sent
    /// it (typed content blocks, `structuredContent`, `isError`, `_meta`),
    /// within the size cap.
    pub async fn call_raw(
        self: &Arc<Self>,
        full: &str,
        arguments: &Value,
    ) -> Result<CallToolResult, ToolError> {
        let peer = self.peer().await?;
        let remote = self
            .remote_name(full)
            .ok_or_else(|| ToolError::UnknownTool(full.to_owned()))?;
        let arguments = match arguments {
            Value::Object(map) => map.clone(),
            Value::Null => Map::new(),
            _ => {
                return Err(ToolError::InvalidArguments(
                    "the arguments must be a JSON object".into(),
                ))
            }
        };
        if remote == READER_REMOTE {
            let Some(uri) = arguments.get("uri").and_then(Value::as_str) else {
                return Err(ToolError::InvalidArguments(
                    "\"uri\" (a string) is required".into(),
                ));
            };
            return Ok(resource_result(self.read_resource(uri).await?));
        }
        let params = CallToolRequestParams::new(remote).with_arguments(arguments);
        // A run's call is noted with its origin: a question the server asks
        // meanwhile goes to that run's user, and the timeout waits while
        // the user answers.
        let (deadline_tx, mut deadline) =
            tokio::sync::watch::channel(tokio::time::Instant::now() + self.def.timeout);
        let _noted = crate::tools::asks::current().map(|origin| {
            let key = self
                .next_call
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Ok(mut calls) = self.in_flight.lock() {
                calls.insert(
                    key,
                    InFlight {
                        origin,
                        deadline: deadline_tx.clone(),
                    },
                );
            }
            InFlightGuard { server: self, key }
        });
        // Dropping the call (timeout, run cancelled) sends
        // notifications/cancelled to the server.
        let call = peer.call_tool(params);
        tokio::pin!(call);
        let outcome = loop {
            let at = *deadline.borrow_and_update();
            tokio::select! {
                result = &mut call => break Ok(result),
                _ = deadline.changed() => continue,
                _ = tokio::time::sleep_until(at) => {
                    if *deadline.borrow() <= tokio::time::Instant::now() {
                        break Err(());
                    }
                }
            }
        };
        if let (
            Ok(Err(e)),
            Transport::Http {
                oauth: Some(store), ..
            },
        ) = (&outcome, &self.def.transport)
        {
            // A connection whose tokens the provider stopped accepting
            // says so, rather than a transport error.
            use rmcp::transport::auth::CredentialStore as _;
            if !matches!(e, ServiceError::McpError(_)) && matches!(store.load().await, Ok(None)) {
                return Err(ToolError::Unavailable(format!(
                    "the MCP server {} is {}",
                    self.def.name,
                    self.needs_connection()
                )));
            }
        }
        match outcome {
            Err(_) => Err(ToolError::Timeout(self.def.timeout.as_millis() as u64)),
            Ok(Ok(result)) => {
                let size = serde_json::to_vec(&result).map(|v| v.len()).unwrap_or(0);
                if size > self.def.max_result_bytes {
                    return Err(ToolError::InvalidOutput(format!(
                        "the result is {size} bytes, over the {} byte cap",
                        self.def.max_result_bytes
                    )));
                }
                Ok(result)
            }
            Ok(Err(ServiceError::McpError(error))) if error.code == ErrorCode::INVALID_PARAMS => {
                Err(ToolError::InvalidArguments(error.message.to_string()))
            }
            Ok(Err(ServiceError::McpError(error))) => {
                Err(ToolError::Failed(error.message.to_string()))
            }
            Ok(Err(ServiceError::TransportClosed | ServiceError::TransportSend(_))) => {
                Err(ToolError::Unavailable(format!(
                    "the MCP server {} closed the connection during the call",
                    self.def.name
                )))
            }
            Ok(Err(other)) => Err(ToolError::Failed(other.to_string())),
        }
    }

    /// Runs one request of `what` on the server, within its timeout, with
    /// errors as tool errors.
    async fn request<T>(
        self: &Arc<Self>,
        what: &str,
        request: impl std::future::Future<Output = Result<T, ServiceError>>,
    ) -> Result<T, ToolError> {
        match tokio::time::timeout(self.def.timeout, request).await {
            Err(_) => Err(ToolError::Timeout(self.def.timeout.as_millis() as u64)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(ServiceError::McpError(error))) if error.code == ErrorCode::INVALID_PARAMS => {
                Err(ToolError::InvalidArguments(error.message.to_string()))
            }
            Ok(Err(ServiceError::McpError(error))) => {
                Err(ToolError::Failed(format!("{what}: {}", error.message)))
            }
            Ok(Err(other)) => Err(ToolError::Unavailable(format!(
                "the MCP server {} failed {what}: {other}",
                self.def.name
            ))),
        }
    }

    /// What the server offers besides tools, from its `initialize` answer:
    /// (resources, prompts).
    async fn offers(self: &Arc<Self>) -> Result<(Peer<RoleClient>, bool, bool), ToolError> {
        let peer = self.peer().await?;
        let capabilities = peer.peer_info().map(|info| info.capabilities.clone());
        let resources = capabilities.as_ref().is_some_and(|c| c.resources.is_some());
        let prompts = capabilities.as_ref().is_some_and(|c| c.prompts.is_some());
        Ok((peer, resources, prompts))
    }

    /// Its resources and resource templates (none when it offers none).
    pub async fn resources(
        self: &Arc<Self>,
    ) -> Result<
        (
            Vec<rmcp::model::Resource>,
            Vec<rmcp::model::ResourceTemplate>,
        ),
        ToolError,
    > {
        let (peer, resources, _) = self.offers().await?;
        if !resources {
            return Ok((Vec::new(), Vec::new()));
        }
        let listed = self
            .request("resources/list", peer.list_all_resources())
            .await?;
        // Templates are optional even where resources are offered.
        let templates = self
            .request(
                "resources/templates/list",
                peer.list_all_resource_templates(),
            )
            .await
            .unwrap_or_default();
        Ok((listed, templates))
    }

    /// Reads resource `uri` (as the server names it).
    pub async fn read_resource(
        self: &Arc<Self>,
        uri: &str,
    ) -> Result<rmcp::model::ReadResourceResult, ToolError> {
        let (peer, resources, _) = self.offers().await?;
        if !resources {
            return Err(ToolError::InvalidArguments(format!(
                "the MCP server {} offers no resources",
                self.def.name
            )));
        }
        let params = rmcp::model::ReadResourceRequestParams::new(uri);
        let result = self
            .request("resources/read", peer.read_resource(params))
            .await?;
        let size = serde_json::to_vec(&result).map(|v| v.len()).unwrap_or(0);
        if size > self.def.max_result_bytes {
            return Err(ToolError::InvalidOutput(format!(
                "the resource is {size} bytes, over the {} byte cap",
                self.def.max_result_bytes
            )));
        }
        Ok(result)
    }

    /// Subscribes `/mcp` session `session` (whose peer is `peer`) to
    /// resource `uri`; the server is asked once per URI.
    #[allow(deprecated)]
    pub async fn subscribe(
        self: &Arc<Self>,
        uri: &str,
        session: &str,
        peer: Peer<rmcp::RoleServer>,
    ) -> Result<(), ToolError> {
        let (client, resources, _) = self.offers().await?;
        let subscribes = client
            .peer_info()
            .and_then(|i| i.capabilities.resources.as_ref().and_then(|r| r.subscribe))
            .unwrap_or(false);
        if !resources || !subscribes {
            return Err(ToolError::InvalidArguments(format!(
                "the MCP server {} offers no resource subscriptions",
                self.def.name
            )));
        }
        let first = {
            let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            let list = subscribers.entry(uri.to_owned()).or_default();
            list.retain(|(s, _)| s != session);
            list.push((session.to_owned(), peer));
            list.len() == 1
        };
        if first {
            let params = rmcp::model::SubscribeRequestParams::new(uri);
            self.request("resources/subscribe", client.subscribe(params))
                .await?;
        }
        Ok(())
    }

    /// Ends session `session`'s subscription to `uri`; the server is told
    /// when nobody is left.
    #[allow(deprecated)]
    pub async fn unsubscribe(self: &Arc<Self>, uri: &str, session: &str) -> Result<(), ToolError> {
        let last = {
            let mut subscribers = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
            let Some(list) = subscribers.get_mut(uri) else {
                return Ok(());
            };
            list.retain(|(s, _)| s != session);
            let empty = list.is_empty();
            if empty {
                subscribers.remove(uri);
            }
            empty
        };
        if last {
            let peer = self.peer().await?;
            let params = rmcp::model::UnsubscribeRequestParams::new(uri);
            self.request("resources/unsubscribe", peer.unsubscribe(params))
                .await?;
        }
        Ok(())
    }

    /// Passes the server's `notifications/resources/updated` on to the
    /// subscribed sessions, under its namespace; sessions that are gone are
    /// forgotten.
    async fn updated(&self, uri: &str) {
        let peers = self
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(uri)
            .cloned()
            .unwrap_or_default();
        let namespaced = format!(
            "{}{}/{uri}",
            crate::mcp::host::RESOURCE_PREFIX,
            self.def.name
        );
        let mut gone = Vec::new();
        for (session, peer) in peers {
            let param = rmcp::model::ResourceUpdatedNotificationParam::new(namespaced.clone());
            if peer.notify_resource_updated(param).await.is_err() {
                gone.push(session);
            }
        }
        if !gone.is_empty() {
            if let Some(list) = self
                .subscribers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(uri)
            {
                list.retain(|(s, _)| !gone.contains(s));
            }
        }
    }

    /// Its prompts (none when it offers none).
    pub async fn prompts(self: &Arc<Self>) -> Result<Vec<rmcp::model::Prompt>, ToolError> {
        let (peer, _, prompts) = self.offers().await?;
        if !prompts {
            return Ok(Vec::new());
        }
        self.request("prompts/list", peer.list_all_prompts()).await
    }

    /// Prompt `name` (as the server names it) with `arguments`.
    pub async fn get_prompt(
        self: &Arc<Self>,
        name: &str,
        arguments: Option<Map<String, Value>>,
    ) -> Result<rmcp::model::GetPromptResult, ToolError> {
        let (peer, _, prompts) = self.offers().await?;
        if !prompts {
            return Err(ToolError::InvalidArguments(format!(
                "the MCP server {} offers no prompts",
                self.def.name
            )));
        }
        let mut params = rmcp::model::GetPromptRequestParams::new(name);
        if let Some(arguments) = arguments {
            params = params.with_arguments(arguments);
        }
        self.request("prompts/get", peer.get_prompt(params)).await
    }

    /// A tool result as the catalogue returns it: the structured content
    /// when there is one, else the text (one block) or the content blocks.
    fn result(&self, result: CallToolResult) -> Result<Value, ToolError> {
        let text = || {
            let texts: Vec<&str> = result
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
                .collect();
            (texts.len() == result.content.len()).then(|| texts.join("\n"))
        };
        if result.is_error == Some(true) {
            return Err(ToolError::Failed(
                text().unwrap_or_else(|| content_json(&result.content).to_string()),
            ));
        }
        if let Some(structured) = result.structured_content.clone() {
            return Ok(structured);
        }
        Ok(match text() {
            Some(text) => Value::String(text),
            None => content_json(&result.content),
        })
    }
}

fn content_json(content: &[ContentBlock]) -> Value {
    serde_json::to_value(content).unwrap_or(Value::Null)
}

/// The name of the tool Orchestra adds to servers that offer resources, so
/// that agents can read them.
pub const READ_RESOURCE: &str = "read_resource";

/// What the resource-reading tool is called by in the bridge: no name a
/// server's own tool can have.
const READER_REMOTE: &str = "\u{0}read_resource";

/// The `_meta` key that marks Orchestra's own resource-reading tool.
const READER_MARK: &str = "orchestra/resource-reader";

/// Adds the resource-reading tool to `tools` when the server offers
/// resources and has no tool of that name itself. Its description names
/// the resources the server lists (not fetched here: the listing is cheap
/// to ask for, but the tool list must not wait on it).
fn with_resource_reader(peer: &Peer<RoleClient>, tools: &mut Vec<Tool>) {
    let offers = peer
        .peer_info()
        .is_some_and(|info| info.capabilities.resources.is_some());
    if !offers || tools.iter().any(|t| t.name == READ_RESOURCE) {
        return;
    }
    let schema = serde_json::json!({
        "type": "object",
        "properties": { "uri": { "type": "string",
            "description": "The resource's URI, as the server lists it (resources/list) or builds it from a template." } },
        "required": ["uri"],
        "additionalProperties": false
    });
    let Value::Object(schema) = schema else {
        return;
    };
    let mut tool = Tool::new(
        READ_RESOURCE,
        "Reads one of this MCP server's resources by URI and returns its contents (text, or \
         the size and type of binary contents).",
        Arc::new(schema),
    )
    .with_annotations(
        rmcp::model::ToolAnnotations::new()
            .read_only(true)
            .destructive(false)
            .idempotent(true),
    );
    tool.meta = Some(rmcp::model::MetaObject(Map::from_iter([(
        READER_MARK.to_owned(),
        Value::Bool(true),
    )])));
    tools.push(tool);
}

/// Whether `tool` is Orchestra's resource-reading tool.
fn is_reader(tool: &Tool) -> bool {
    tool.meta
        .as_ref()
        .is_some_and(|m| m.0.contains_key(READER_MARK))
}

/// A resource's contents as a tool result: text as text blocks, binary
/// contents as embedded resources.
fn resource_result(result: rmcp::model::ReadResourceResult) -> CallToolResult {
    let value = serde_json::to_value(&result).unwrap_or_default();
    let mut blocks = Vec::new();
    for content in value["contents"].as_array().into_iter().flatten() {
        if let Some(text) = content.get("text").and_then(Value::as_str) {
            blocks.push(ContentBlock::text(text.to_owned()));
        } else {
            blocks.push(ContentBlock::text(format!(
                "[binary resource {} ({}), {} base64 characters]",
                content["uri"].as_str().unwrap_or_default(),
                content["mimeType"].as_str().unwrap_or("unknown type"),
                content["blob"].as_str().map(str::len).unwrap_or(0)
            )));
        }
    }
    CallToolResult::success(blocks)
}

/// Waits for a connection to end; an end nobody asked for is a crash.
async fn supervise(
    server: Weak<Server>,
    running: RunningService<RoleClient, Handler>,
    generation: u64,
) {
    let reason = running.waiting().await;
    let Some(server) = server.upgrade() else {
        return;
    };
    let error = {
        let state = server.lock();
        if state.generation != generation || state.stopped {
            return;
        }
        state
            .last_error
            .clone()
            .filter(|e| e.starts_with("health check"))
            .unwrap_or_else(|| format!("the connection ended ({reason:?})"))
    };
    // Let the stderr reader catch the last words of a dying process.
    server.stderr_drained().await;
    let error = server.with_stderr(error);
    tracing::warn!(server = %server.def.name, %error, "MCP server down; restarting");
    server.fail(generation, error);
}

/// Blots the values of secrets out of text.
#[derive(Debug, Default)]
pub(crate) struct Redactor {
    secrets: Vec<String>,
}

impl Redactor {
    /// Values shorter than 4 characters are left alone: blotting out every
    /// `1` or `yes` would hide the text and protect nothing.
    pub(crate) fn new(mut secrets: Vec<String>) -> Redactor {
        secrets.retain(|s| s.chars().count() >= 4);
        // Longest first, so that a secret containing another goes whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor { secrets }
    }

    pub(crate) fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for secret in &self.secrets {
            if out.contains(secret.as_str()) {
                out = out.replace(secret.as_str(), "[redacted]");
            }
        }
        out
    }
}

/// Logs a stdio server's stderr and keeps its last lines, with the values
/// of the secrets given to it blotted out.
async fn capture_stderr(
    server: Weak<Server>,
    stderr: tokio::process::ChildStderr,
    generation: u64,
    closed: tokio::sync::watch::Sender<bool>,
    redactor: Redactor,
) {
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(server) = server.upgrade() else {
            break;
        };
        let line = redactor.redact(&line);
        tracing::info!(target: "orchestra::mcp::stderr", server = %server.def.name, "{line}");
        let mut state = server.lock();
        if state.generation == generation {
            if state.stderr.len() == STDERR_TAIL {
                state.stderr.pop_front();
            }
            state.stderr.push_back(line.chars().take(500).collect());
        }
    }
    closed.send_replace(true);
}

/// The client side of a connection: follows tool-list changes.
#[derive(Clone)]
struct Handler {
    server: Weak<Server>,
}

impl ClientHandler for Handler {
    async fn on_resource_updated(
        &self,
        params: rmcp::model::ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Some(server) = self.server.upgrade() {
            server.updated(&params.uri).await;
        }
    }

    async fn on_tool_list_changed(&self, context: NotificationContext<RoleClient>) {
        if let Some(server) = self.server.upgrade() {
            tokio::spawn(async move { server.refresh_tools(&context.peer).await });
        }
    }

    #[allow(deprecated)]
    fn get_info(&self) -> ClientConfig {
        // Sampling is offered to server-wide servers when an admin chose
        // the model that answers.
        let sampling = self
            .server
            .upgrade()
            .is_some_and(|s| s.def.owner_id.is_none() && s.config.sampling_model.is_some());
        let mut capabilities = if sampling {
            ClientCapabilities::builder().enable_sampling().build()
        } else {
            ClientCapabilities::default()
        };
        // Questions asked during a run's call go to the run's user.
        capabilities.elicitation = Some(
            rmcp::model::ElicitationCapability::new()
                .with_form(rmcp::model::FormElicitationCapability::new())
                .with_url(rmcp::model::UrlElicitationCapability::new()),
        );
        ClientConfig::new(
            capabilities,
            Implementation::new("orchestra", env!("CARGO_PKG_VERSION")),
        )
    }

    async fn create_elicitation(
        &self,
        params: rmcp::model::ElicitRequestParams,
        context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::ElicitResult, rmcp::ErrorData> {
        let server = self
            .server
            .upgrade()
            .ok_or_else(|| rmcp::ErrorData::internal_error("the server is gone", None))?;
        let value = serde_json::to_value(&params).unwrap_or_default();
        let answer = server
            .elicit(value, context.ct.clone())
            .await
            .map_err(|m| rmcp::ErrorData::invalid_request(m, None))?;
        serde_json::from_value(answer)
            .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))
    }

    #[allow(deprecated)]
    async fn create_message(
        &self,
        params: rmcp::model::CreateMessageRequestParams,
        _context: rmcp::service::RequestContext<RoleClient>,
    ) -> Result<rmcp::model::CreateMessageResult, rmcp::ErrorData> {
        let server = self
            .server
            .upgrade()
            .ok_or_else(|| rmcp::ErrorData::internal_error("the server is gone", None))?;
        let value = serde_json::to_value(&params).unwrap_or_default();
        let answer = server
            .sample(&value)
            .await
            .map_err(|m| rmcp::ErrorData::invalid_request(m, None))?;
        serde_json::from_value(answer)
            .map_err(|e| rmcp::ErrorData::internal_error(e.to_string(), None))
    }
}

impl Server {
    /// Hands a question the server asks (`elicitation/create` params as
    /// JSON) to the run whose call is in flight, and waits for the user's
    /// answer (an `ElicitResult`). Refused when no run's call is in flight
    /// or when calls of several runs are (a shared connection cannot tell
    /// whose call asks, and a question must never reach another user).
    async fn elicit(
        &self,
        params: Value,
        cancelled: tokio_util::sync::CancellationToken,
    ) -> Result<Value, String> {
        let (origin, deadlines) = {
            let calls = self.in_flight.lock().map_err(|_| "internal error")?;
            let mut runs = calls.values().map(|c| c.origin.run).collect::<Vec<_>>();
            runs.sort();
            runs.dedup();
            match runs.as_slice() {
                [] => {
                    return Err(
                        "no user can answer: the question did not come during a run's tool call"
                            .to_owned(),
                    )
                }
                [_] => {}
                _ => {
                    return Err(
                        "no user can answer: calls of several runs are in flight on this connection, and the question cannot be told apart"
                            .to_owned(),
                    )
                }
            }
            let origin = calls.values().next().map(|c| c.origin.clone());
            let deadlines: Vec<_> = calls.values().map(|c| c.deadline.clone()).collect();
            (origin.ok_or("internal error")?, deadlines)
        };
        // The calls wait while the user answers.
        let far = tokio::time::Instant::now() + Duration::from_secs(365 * 24 * 3600);
        for d in &deadlines {
            d.send_replace(far);
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        let asked = origin
            .asks
            .send(Ask {
                server: self.def.name.clone(),
                call_id: origin.call_id.clone(),
                params,
                answer,
            })
            .await;
        let outcome = match asked {
            Err(_) => Err("the run no longer waits for this call".to_owned()),
            Ok(()) => tokio::select! {
                answer = answered => answer.map_err(|_| "the run stopped before the user answered".to_owned()),
                _ = cancelled.cancelled() => Err("the server withdrew the question".to_owned()),
            },
        };
        let resumed = tokio::time::Instant::now() + self.def.timeout;
        for d in &deadlines {
            d.send_replace(resumed);
        }
        outcome
    }

    /// Answers a sampling request (`sampling/createMessage` params as
    /// JSON) with the model the admin chose (`mcp.sampling_model`,
    /// `provider/model`), text only, at most `mcp.sampling_max_tokens`.
    /// Refused for users' own servers (they would spend the server's model
    /// budget) and when no model is chosen.
    async fn sample(&self, params: &Value) -> Result<Value, String> {
        use futures_util::StreamExt;
        if self.def.owner_id.is_some() {
            return Err("sampling is offered to server-wide MCP servers only".to_owned());
        }
        let Some(chosen) = &self.config.sampling_model else {
            return Err("sampling is turned off on this Orchestra (mcp.sampling_model)".to_owned());
        };
        let (provider, model) = chosen
            .split_once('/')
            .ok_or("mcp.sampling_model must be provider/model")?;
        let models = self.models.get().ok_or("models are not available")?;
        let client = models
            .client(provider, Uuid::nil())
            .await
            .map_err(|e| format!("the sampling model is unavailable: {e}"))?;
        let mut messages = Vec::new();
        for message in params["messages"].as_array().into_iter().flatten() {
            let blocks: Vec<&Value> = match &message["content"] {
                Value::Array(blocks) => blocks.iter().collect(),
                block => vec![block],
            };
            let text = blocks
                .iter()
                .map(|b| match b["type"].as_str() {
                    Some("text") => b["text"].as_str().unwrap_or_default().to_owned(),
                    Some(other) => format!("[{other} omitted]"),
                    None => String::new(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            messages.push(match message["role"].as_str() {
                Some("assistant") => crate::providers::ChatMessage::Assistant {
                    text: Some(text),
                    tool_calls: Vec::new(),
                },
                _ => crate::providers::ChatMessage::User {
                    text,
                    images: Vec::new(),
                },
            });
        }
        if messages.is_empty() {
            return Err("a sampling request needs messages".to_owned());
        }
        let cap = self.config.sampling_max_tokens;
        let max_tokens = params["maxTokens"]
            .as_u64()
            .map(|t| (t as u32).min(cap))
            .unwrap_or(cap);
        let request = crate::providers::ChatRequest {
            model: model.to_owned(),
            system: params["systemPrompt"].as_str().map(str::to_owned),
            messages,
            tools: Vec::new(),
            max_tokens: Some(max_tokens),
            temperature: params["temperature"].as_f64(),
            parallel_tool_calls: false,
        };
        let mut stream = client.stream(request);
        let mut text = String::new();
        let mut stop = "endTurn";
        while let Some(event) = stream.next().await {
            match event.map_err(|e| format!("the sampling model failed: {e}"))? {
                crate::providers::StreamEvent::TextDelta(delta) => text.push_str(&delta),
                crate::providers::StreamEvent::Finish(reason) => {
                    if matches!(reason, crate::providers::FinishReason::Length) {
                        stop = "maxTokens";
                    }
                }
                _ => {}
            }
        }
        tracing::info!(server = %self.def.name, model = %chosen, chars = text.len(), "answered a sampling request");
        Ok(serde_json::json!({
            "model": chosen,
            "stopReason": stop,
            "role": "assistant",
            "content": { "type": "text", "text": text },
        }))
    }
}

/// A server's key in the bridge: its owner (none for a server-wide one) and
/// its name. Names are unique per owner: two users may each have a server
/// named `github`, and a user's own shadows a server-wide one of that name
/// in their catalogue.
type ServerKey = (Option<Uuid>, String);

/// The webhook service, once wired (servers announce failures through it).
type Webhooks = Arc<std::sync::OnceLock<crate::webhooks::WebhookService>>;

/// A `/mcp` session subscribed to a resource: its id and its peer.
type Subscriber = (String, Peer<rmcp::RoleServer>);

/// The model service, once wired (it answers servers' sampling requests).
type Models = Arc<std::sync::OnceLock<crate::models::ModelService>>;

/// Users' own connections to `oauth_per_user` servers: (server id, user).
type OwnConnections = BTreeMap<(Uuid, Uuid), Arc<Server>>;

/// Every bridged server of this node.
#[derive(Clone)]
pub struct Bridge {
    servers: Arc<RwLock<BTreeMap<ServerKey, Arc<Server>>>>,
    /// Users' own connections to `oauth_per_user` servers, by server id and
    /// user.
    own: Arc<Mutex<OwnConnections>>,
    db: Option<Db>,
    webhooks: Webhooks,
    models: Models,
    config: Arc<McpConfig>,
    egress: EgressConfig,
    secrets: SecretService,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl Bridge {
    /// An empty bridge; tool listings are kept in `db`.
    pub fn new(
        db: Option<Db>,
        config: McpConfig,
        egress: EgressConfig,
        secrets: SecretService,
    ) -> Bridge {
        Bridge {
            servers: Arc::new(RwLock::new(BTreeMap::new())),
            own: Arc::default(),
            db,
            webhooks: Webhooks::default(),
            models: Models::default(),
            config: Arc::new(config),
            egress,
            secrets,
        }
    }

    /// Where servers announce that they went down (set once, when the
    /// services are wired).
    pub fn set_webhooks(&self, webhooks: crate::webhooks::WebhookService) {
        let _ = self.webhooks.set(webhooks);
    }

    /// The models that answer servers' sampling requests (set once, when
    /// the services are wired).
    pub fn set_models(&self, models: crate::models::ModelService) {
        let _ = self.models.set(models);
    }

    /// Whether a server of `owner` may reach public addresses only (see
    /// [`crate::egress`]).
    pub fn restricts(&self, owner: Option<Uuid>) -> bool {
        self.egress.restricts(owner)
    }

    /// Adds or replaces a server (a replaced one is stopped), with its last
    /// known tools. It connects on its first call, or when
    /// [`Bridge::start_boot_servers`] starts it.
    pub fn upsert(&self, def: ServerDef, cached: Vec<Tool>) {
        let restricted = self.restricts(def.owner_id);
        let server = Server::new(
            def,
            restricted,
            self.db.clone(),
            self.webhooks.clone(),
            self.models.clone(),
            self.config.clone(),
            self.secrets.clone(),
            cached,
        );
        let old = self
            .servers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (server.def.owner_id, server.def.name.clone()),
                server.clone(),
            );
        if let Some(old) = old {
            self.drop_own(old.def.id, None);
            old.stop();
        }
    }

    /// A user's own connection to server-wide server `server` (an
    /// `oauth_per_user` one), made on first use with the user's tokens.
    fn own_connection(&self, server: &Arc<Server>, user: Uuid) -> Arc<Server> {
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = own.get(&(server.def.id, user)) {
            return found.clone();
        }
        let mut def = server.def.clone();
        if let Transport::Http {
            oauth: Some(store), ..
        } = &mut def.transport
        {
            *store = store.for_user(user);
        }
        let shadow = Server::new(
            def,
            server.restricted,
            self.db.clone(),
            self.webhooks.clone(),
            self.models.clone(),
            self.config.clone(),
            self.secrets.clone(),
            Vec::new(),
        );
        *shadow.tools.write().unwrap_or_else(|e| e.into_inner()) = server
            .tools
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let _ = shadow.parent.set(Arc::downgrade(server));
        own.insert((server.def.id, user), shadow.clone());
        shadow
    }

    /// The state of `user`'s own connection to server `server`, if it was
    /// made on this node.
    pub fn own_status(&self, server: Uuid, user: Uuid) -> Option<ServerStatus> {
        let own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        own.get(&(server, user)).map(|s| s.status())
    }

    /// Stops users' own connections to server `server` (of `user`, or of
    /// everyone): after a new sign-in, a sign-out, or a change.
    pub fn drop_own(&self, server: Uuid, user: Option<Uuid>) {
        let mut own = self.own.lock().unwrap_or_else(|e| e.into_inner());
        let keys: Vec<(Uuid, Uuid)> = own
            .keys()
            .filter(|(s, u)| *s == server && user.is_none_or(|user| *u == user))
            .copied()
            .collect();
        for key in keys {
            if let Some(old) = own.remove(&key) {
                old.stop();
            }
        }
    }

    /// Connects `user`'s own connection to server-wide server `name` now
    /// (after they signed in), to learn its tools.
    pub async fn start_own(&self, name: &str, user: Uuid) -> Result<(), ToolError> {
        match self.visible(name, Some(user)) {
            Some(server) => server.peer().await.map(|_| ()),
            None => Err(ToolError::UnknownTool(name.to_owned())),
        }
    }

    /// Starts connecting every `boot` server not yet connected. Only the
    /// HTTP server does this: `orchestra mcp stdio` and the operator
    /// commands start servers on demand (a bridged server that is itself
    /// `orchestra mcp stdio` on the same database would otherwise start
    /// another copy of itself, without end).
    pub fn start_boot_servers(&self) {
        for server in self.servers() {
            if server.def.start == StartMode::Boot && server.lock().peer.is_none() {
                tokio::spawn(async move {
                    let _ = server.connect().await;
                });
            }
        }
    }

    /// Removes and stops a server.
    pub fn remove(&self, owner: Option<Uuid>, name: &str) {
        let old = self
            .servers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(owner, name.to_owned()));
        if let Some(old) = old {
            self.drop_own(old.def.id, None);
            old.stop();
        }
    }

    /// Stops every server (shutdown).
    pub fn stop_all(&self) {
        let servers: Vec<_> = self
            .servers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        for server in servers {
            server.stop();
        }
        let own = std::mem::take(&mut *self.own.lock().unwrap_or_else(|e| e.into_inner()));
        for server in own.into_values() {
            server.stop();
        }
    }

    /// The server of `owner` named `name`.
    pub fn server(&self, owner: Option<Uuid>, name: &str) -> Option<Arc<Server>> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(owner, name.to_owned()))
            .cloned()
    }

    /// The server named `name` that `user` reaches by that name: their own,
    /// else the server-wide one.
    /// A server-wide server whose users connect their own accounts is
    /// reached through the user's own connection.
    pub fn visible(&self, name: &str, user: Option<Uuid>) -> Option<Arc<Server>> {
        let server = {
            let servers = self.servers.read().unwrap_or_else(|e| e.into_inner());
            user.and_then(|u| servers.get(&(Some(u), name.to_owned())))
                .or_else(|| servers.get(&(None, name.to_owned())))
                .cloned()
        }?;
        match user {
            Some(user) if server.def.oauth_per_user && server.def.owner_id.is_none() => {
                Some(self.own_connection(&server, user))
            }
            _ => Some(server),
        }
    }

    /// Every server.
    pub fn servers(&self) -> Vec<Arc<Server>> {
        self.servers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Starts (or restarts) a server now and waits for the outcome.
    pub async fn start(&self, owner: Option<Uuid>, name: &str) -> Result<(), ToolError> {
        let server = self
            .server(owner, name)
            .ok_or_else(|| ToolError::UnknownTool(name.to_owned()))?;
        {
            let mut state = server.lock();
            state.retry_at = None;
        }
        server.peer().await.map(|_| ())
    }

    /// Pings every running server every `health_secs`.
    pub fn spawn_health_checks(&self) {
        if self.config.health_secs == 0 {
            return;
        }
        let servers = Arc::downgrade(&self.servers);
        let every = Duration::from_secs(self.config.health_secs);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(servers) = servers.upgrade() else {
                    return;
                };
                let list: Vec<_> = servers
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .cloned()
                    .collect();
                drop(servers);
                for server in list {
                    tokio::spawn(async move { server.health_check().await });
                }
            }
        });
    }
}
