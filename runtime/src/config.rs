//! Typed, layered configuration: defaults < optional TOML file < environment.
//!
//! Environment variables are `ORCHESTRA_<KEY>`, with `__` between nested keys
//! (`ORCHESTRA_HTTP__BODY_LIMIT_BYTES=2097152`). `DATABASE_URL` is honoured as
//! well as `ORCHESTRA_DATABASE_URL`. Everything is checked once at start by
//! [`Config::validate`], which names the bad setting.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use crate::egress::EgressConfig;
use crate::runs::model::{ActivePolicy, RunLimits};
use crate::sandbox::{CallLimits, EngineLimits};
use crate::settings::RegistrationMode;

/// The whole server configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Socket address the HTTP server binds (`ORCHESTRA_LISTEN`).
    pub listen: String,
    /// Directory for the SQLite database and the key files (`ORCHESTRA_DATA_DIR`).
    pub data_dir: PathBuf,
    /// `postgres://...` or `sqlite://...`; unset means SQLite inside `data_dir`.
    pub database_url: Option<String>,
    /// Connection pool settings.
    pub database: DatabaseConfig,
    /// Logging output.
    pub log: LogConfig,
    /// Token lifetimes and the registration policy.
    pub auth: AuthConfig,
    /// HTTP limits and CORS.
    pub http: HttpConfig,
    /// The tool sandbox.
    pub sandbox: SandboxConfig,
    /// The run engine.
    pub runs: RunsConfig,
    /// MCP: bridged servers and the `/mcp` endpoint.
    pub mcp: McpConfig,
    /// Orchestra as the OAuth authorization server of `/mcp`.
    pub oauth: OAuthConfig,
    /// Where endpoints that users configure for themselves may connect
    /// (`ORCHESTRA_EGRESS__ALLOW_PRIVATE_USER_ENDPOINTS`).
    pub egress: EgressConfig,
    /// The OpenAI-compatible API (`/v1`).
    pub openai: OpenAiConfig,
    /// Schedules: agents' runs at set times.
    pub schedules: SchedulesConfig,
    /// Inbound triggers: URLs that start an agent's run.
    pub triggers: TriggersConfig,
    /// Outbound webhooks: signed notifications of runs and servers.
    pub webhooks: WebhooksConfig,
    /// Providers registered from the conventional environment variables
    /// (`OPENAI_API_KEY`, `OPENAI_BASE_URL`, `ANTHROPIC_API_KEY`,
    /// `ANTHROPIC_BASE_URL`); never written to a file or the database.
    #[serde(skip)]
    pub env_providers: Vec<EnvProvider>,
}

/// A provider registered from environment variables at start.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvProvider {
    /// Its name (`openai` or `anthropic`).
    pub name: String,
    /// `openai` or `anthropic`.
    pub kind: String,
    /// The API's base URL.
    pub base_url: String,
    /// The API key.
    pub api_key: String,
}

impl std::fmt::Debug for EnvProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvProvider")
            .field("name", &self.name)
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl EnvProvider {
    /// The providers the process environment defines.
    pub fn from_env() -> Vec<EnvProvider> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut out = Vec::new();
        if let Some(key) = var("OPENAI_API_KEY") {
            out.push(EnvProvider {
                name: "openai".into(),
                kind: "openai".into(),
                base_url: var("OPENAI_BASE_URL")
                    .unwrap_or_else(|| "https://api.openai.com/v1".into()),
                api_key: key,
            });
        }
        if let Some(key) = var("ANTHROPIC_API_KEY") {
            out.push(EnvProvider {
                name: "anthropic".into(),
                kind: "anthropic".into(),
                base_url: var("ANTHROPIC_BASE_URL")
                    .unwrap_or_else(|| "https://api.anthropic.com".into()),
                api_key: key,
            });
        }
        out
    }
}

/// The tool sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SandboxConfig {
    /// Plugin instances alive at once; further calls wait for a slot.
    pub max_concurrent_instances: u32,
    /// Default per-call limits of every plugin.
    pub call: CallLimits,
    /// Where compiled plugins are cached (default `data_dir/cache/plugins`).
    pub cache_dir: Option<PathBuf>,
    /// Largest plugin component accepted for installation, in bytes.
    pub max_plugin_bytes: usize,
    /// Also accept plain `http://` URLs for `POST /api/v1/plugins` (still
    /// pinned by SHA-256). Off by default: use it for a mirror on a trusted
    /// network only.
    pub allow_http_plugin_urls: bool,
    /// How often each node re-reads installed plugins and grants from the
    /// database, so that a change made through another node (a revoke, say)
    /// takes effect here too. 0 turns it off (a single node).
    pub refresh_secs: u64,
    /// Meter fuel in every call, so that a plugin's `limits.max_fuel` caps its
    /// computation deterministically. Off by default: it slows every call.
    pub fuel: bool,
    /// Calls of one plugin at once, unless its own limits say otherwise.
    pub max_calls_per_plugin: u32,
    /// Tool calls made for one user at once, across plugins.
    pub max_calls_per_user: u32,
    /// Threads that run plugin code (0: one per CPU), at a lower priority
    /// than the threads that serve requests.
    pub guest_threads: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_concurrent_instances: EngineLimits::default().max_concurrent_instances,
            call: CallLimits::default(),
            cache_dir: None,
            max_plugin_bytes: 32 << 20,
            allow_http_plugin_urls: false,
            refresh_secs: 5,
            fuel: false,
            max_calls_per_plugin: EngineLimits::default().max_calls_per_plugin,
            max_calls_per_user: EngineLimits::default().max_calls_per_user,
            guest_threads: 0,
        }
    }
}

/// The run engine.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RunsConfig {
    /// Execute runs on this node (a node with `false` only serves the API).
    pub worker: bool,
    /// Runs this node executes at once; more wait in the queue.
    pub max_concurrent: usize,
    /// Seconds a worker's claim on a run lasts without a heartbeat; after
    /// that another node (or this one, restarted) resumes the run.
    pub lease_secs: u64,
    /// How often, in milliseconds, an idle worker looks for queued runs
    /// when no notification woke it.
    pub poll_ms: u64,
    /// Most times a run is picked up (after crashes) before it fails.
    pub max_attempts: i64,
    /// What a new run does when its conversation already has one.
    pub on_active: ActivePolicy,
    /// Limits of a run unless the agent or the request sets tighter ones.
    pub default_limits: RunLimits,
    /// The most an agent or a request may ask for.
    pub max_limits: RunLimits,
    /// Seconds a tool call waits for approval before it counts as rejected.
    pub approval_ttl_secs: u64,
    /// Seconds a question a bridged MCP server asks during a run's tool
    /// call (elicitation) waits for the user's answer before it is
    /// cancelled. The call stays open and the run holds its worker slot
    /// meanwhile, hence far shorter than approvals.
    pub elicitation_ttl_secs: u64,
    /// Text and tool-call deltas are stored and streamed in batches at most
    /// this many milliseconds apart.
    pub delta_flush_ms: u64,
    /// Tokens a user may spend per day unless an admin sets a limit for them
    /// (absent: unlimited).
    pub default_daily_tokens: Option<i64>,
    /// Tokens a run of a user with token limits reserves while it runs
    /// (unless its `limits.max_tokens` says how many it may spend): parallel
    /// runs cannot start past the limit on tokens not yet counted.
    pub quota_reservation_tokens: i64,
    /// Event streams (`GET /api/v1/runs/{id}/events`) one user may hold
    /// open on one node; more are refused with 429.
    pub max_streams_per_user: usize,
}

impl Default for RunsConfig {
    fn default() -> Self {
        RunsConfig {
            worker: true,
            max_concurrent: 10_000,
            lease_secs: 30,
            poll_ms: 1000,
            max_attempts: 5,
            on_active: ActivePolicy::Queue,
            default_limits: RunLimits::default(),
            max_limits: RunLimits {
                max_steps: 200,
                max_tokens: None,
                timeout_secs: 3600,
            },
            approval_ttl_secs: 24 * 3600,
            elicitation_ttl_secs: 600,
            delta_flush_ms: 50,
            default_daily_tokens: None,
            max_streams_per_user: 32,
            quota_reservation_tokens: 4096,
        }
    }
}

/// MCP settings: the bridge to external servers and the `/mcp` endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct McpConfig {
    /// Seconds a bridged server has to start and answer `initialize`.
    pub connect_timeout_secs: u64,
    /// Default per-call timeout of a bridged tool, in seconds (a server may
    /// set its own).
    pub call_timeout_secs: u64,
    /// Default cap on a bridged tool's result, in bytes.
    pub max_result_bytes: usize,
    /// Seconds between health pings of a running bridged server.
    pub health_secs: u64,
    /// Longest wait between two restarts of a crashed server, in seconds.
    pub max_backoff_secs: u64,
    /// Hosts (`Host` header, without port) `/mcp` answers; empty allows any
    /// host when the server listens on a public address and only loopback
    /// names when it listens on loopback (DNS-rebinding protection).
    pub allowed_hosts: Vec<String>,
    /// Origins (`Origin` header) allowed to call `/mcp` from a browser;
    /// requests with another origin get 403. Requests without an `Origin`
    /// header (desktop clients, SDKs) are not affected.
    pub allowed_origins: Vec<String>,
    /// Keep MCP sessions (`Mcp-Session-Id`) in this node's memory. Off (the
    /// default), every `/mcp` request stands alone and any node of a cluster
    /// answers it, with a plain JSON response when the call sends no
    /// progress; a client cancels a call by closing its request or with
    /// `notifications/cancelled` (honoured by the node that runs the call).
    /// On, a session is bound to the node that created it (clients must
    /// stick to it).
    pub sessions: bool,
    /// Offer each of the caller's agents as a tool over `/mcp`.
    pub expose_agents: bool,
    /// Seconds an agent tool waits for its run to finish.
    pub agent_timeout_secs: u64,
    /// The model (`provider/model`) that answers sampling requests of
    /// server-wide bridged servers; unset (the default), sampling is off.
    pub sampling_model: Option<String>,
    /// Most tokens one sampling answer may have.
    pub sampling_max_tokens: u32,
}

/// Schedules.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulesConfig {
    /// Fire schedules from this node (every node may; each occurrence
    /// fires once).
    pub worker: bool,
    /// How often, in milliseconds, the node looks for due schedules.
    pub tick_ms: u64,
    /// The shortest time between two firings a schedule may ask for, in
    /// seconds.
    pub min_interval_secs: u64,
    /// An occurrence later than this (in seconds) when a node sees it was
    /// missed (no node was running): the schedule's `catch_up` decides.
    pub misfire_grace_secs: u64,
    /// Schedules one user may have.
    pub max_per_user: i64,
}

impl Default for SchedulesConfig {
    fn default() -> Self {
        SchedulesConfig {
            worker: true,
            tick_ms: 250,
            min_interval_secs: 60,
            misfire_grace_secs: 60,
            max_per_user: 100,
        }
    }
}

/// Inbound triggers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TriggersConfig {
    /// Largest body a trigger accepts, in bytes (413 past it).
    pub max_body_bytes: usize,
    /// Calls per minute a trigger accepts unless it sets its own limit.
    pub default_rate_per_minute: i64,
    /// Seconds a Standard Webhooks timestamp may be off from now.
    pub signature_tolerance_secs: i64,
}

impl Default for TriggersConfig {
    fn default() -> Self {
        TriggersConfig {
            max_body_bytes: 256 << 10,
            default_rate_per_minute: 60,
            signature_tolerance_secs: 300,
        }
    }
}

/// Outbound webhooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhooksConfig {
    /// Deliver webhooks from this node.
    pub worker: bool,
    /// How often, in milliseconds, the node looks for due deliveries.
    pub poll_ms: u64,
    /// Waits before each retry of a failed delivery, in milliseconds (each
    /// with up to a fifth of jitter); after the last one the delivery
    /// fails. The default spreads retries over about 28 hours.
    pub retry_ms: Vec<u64>,
    /// Seconds a receiver has to answer.
    pub timeout_secs: u64,
    /// Deliveries this node sends at once (one subscription has at most
    /// eight in flight, one owner's subscriptions sixteen).
    pub concurrency: usize,
    /// Failed attempts in a row (with no success between them) after which
    /// a subscription is disabled.
    pub disable_after_failures: i64,
    /// Subscriptions one user may have.
    pub max_per_user: i64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            worker: true,
            poll_ms: 500,
            retry_ms: vec![
                5_000,
                5 * 60_000,
                30 * 60_000,
                2 * 3_600_000,
                5 * 3_600_000,
                10 * 3_600_000,
                10 * 3_600_000,
            ],
            timeout_secs: 15,
            concurrency: 128,
            disable_after_failures: 40,
            max_per_user: 20,
        }
    }
}

/// The OpenAI-compatible API.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenAiConfig {
    /// Also serve the providers' own models as `<provider>/<model>` (a
    /// gateway with usage accounting and quotas), to everyone who may use
    /// the provider (`ORCHESTRA_OPENAI__PROVIDER_MODELS`; off by default).
    pub provider_models: bool,
}

impl Default for McpConfig {
    fn default() -> Self {
        McpConfig {
            connect_timeout_secs: 30,
            call_timeout_secs: 60,
            max_result_bytes: 1 << 20,
            health_secs: 30,
            max_backoff_secs: 60,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            sessions: false,
            expose_agents: true,
            agent_timeout_secs: 600,
            sampling_model: None,
            sampling_max_tokens: 1024,
        }
    }
}

/// Orchestra as the OAuth 2.1 authorization server of `/mcp` (the MCP
/// authorization specification, revision 2025-11-25).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct OAuthConfig {
    /// The address clients reach this server at (`https://orchestra.example.com`):
    /// the issuer, and the `/mcp` resource tokens are bound to. Unset, each
    /// request's `Host` (and `X-Forwarded-Proto`) gives it; set it behind a
    /// proxy.
    pub public_url: Option<String>,
    /// Accept dynamic client registration (RFC 7591) at `/oauth/register`.
    pub dynamic_registration: bool,
    /// Accept client IDs that are HTTPS URLs of client metadata documents
    /// (fetched from public addresses, cached for an hour).
    pub client_metadata_documents: bool,
    /// Also fetch client metadata documents over plain http (development
    /// and tests only; private addresses still need
    /// `egress.allow_private_user_endpoints`).
    pub allow_http_metadata_documents: bool,
    /// Seconds an access token lives.
    pub access_token_ttl_secs: u64,
    /// Seconds a refresh token lives (each use replaces it).
    pub refresh_token_ttl_secs: u64,
    /// Seconds between the user's approval and the code's exchange.
    pub code_ttl_secs: u64,
    /// Seconds the user has to sign in and approve a client.
    pub consent_ttl_secs: u64,
    /// Registered clients that no user has approved yet, at most; older
    /// ones are removed after a day.
    pub max_unapproved_clients: i64,
    /// Client registrations one address may make per hour (a burst of as
    /// many, then that rate); 0 for no limit.
    pub register_per_hour: u32,
    /// Authorization requests one address may start per minute; 0 for no
    /// limit.
    pub authorize_per_minute: u32,
}

impl Default for OAuthConfig {
    fn default() -> Self {
        OAuthConfig {
            public_url: None,
            dynamic_registration: true,
            client_metadata_documents: true,
            allow_http_metadata_documents: false,
            access_token_ttl_secs: 3600,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            code_ttl_secs: 60,
            consent_ttl_secs: 600,
            max_unapproved_clients: 10_000,
            register_per_hour: 20,
            authorize_per_minute: 60,
        }
    }
}

/// Connection pool settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DatabaseConfig {
    /// Upper bound of pooled connections per node.
    pub max_connections: u32,
    /// Seconds to wait for a free connection before answering 503.
    pub acquire_timeout_secs: u64,
}

/// Logging output.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A tracing filter directive, e.g. `info` or `orchestra=debug,info`.
    pub level: String,
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Token lifetimes and registration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthConfig {
    /// Lifetime of an access token (JWT), in seconds.
    pub access_token_ttl_secs: u64,
    /// Lifetime of a refresh token, in seconds.
    pub refresh_token_ttl_secs: u64,
    /// Registration policy used until an admin changes it through the API.
    pub registration: RegistrationMode,
    /// Milliseconds for which a checked API key or access-token holder is
    /// trusted without reading the database again (0: read every time).
    /// Changes made on this node apply at once; on other nodes of a cluster,
    /// within this time.
    pub credential_cache_ms: u64,
    /// Base64 JWT signing secret; shared by every node of a cluster. When unset,
    /// a secret is generated once in `data_dir/keys`.
    pub jwt_secret: Option<String>,
    /// Base64 32-byte key that encrypts secrets at rest; shared by every node of
    /// a cluster. When unset, a key is generated once in `data_dir/keys`.
    pub encryption_key: Option<String>,
    /// Delays after failed password logins, per account and per address.
    pub login_throttle: crate::users::throttle::ThrottleConfig,
}

/// HTTP limits and CORS.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    /// Seconds after which a request is abandoned with 503.
    pub request_timeout_secs: u64,
    /// Origins allowed by CORS; empty means no cross-origin access.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".to_owned(),
            data_dir: PathBuf::from("orchestra-data"),
            database_url: None,
            database: DatabaseConfig::default(),
            log: LogConfig::default(),
            auth: AuthConfig::default(),
            http: HttpConfig::default(),
            sandbox: SandboxConfig::default(),
            runs: RunsConfig::default(),
            mcp: McpConfig::default(),
            oauth: OAuthConfig::default(),
            egress: EgressConfig::default(),
            openai: OpenAiConfig::default(),
            schedules: SchedulesConfig::default(),
            triggers: TriggersConfig::default(),
            webhooks: WebhooksConfig::default(),
            env_providers: Vec::new(),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            max_connections: 10,
            acquire_timeout_secs: 10,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info,sqlx::postgres::notice=warn".to_owned(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            registration: RegistrationMode::Closed,
            credential_cache_ms: 1000,
            jwt_secret: None,
            encryption_key: None,
            login_throttle: Default::default(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            body_limit_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            cors_allowed_origins: Vec::new(),
        }
    }
}

impl Config {
    /// Loads defaults, then `file` (if any), then the environment, and validates.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            if !file.exists() {
                bail!("configuration file {} does not exist", file.display());
            }
            figment = figment.merge(Toml::file(file));
        }
        figment = figment
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL"])
                    .map(|_| "database_url".into()),
            )
            .merge(Env::prefixed("ORCHESTRA_").ignore(&["config"]).split("__"));
        let mut config: Config = figment
            .extract()
            .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
        config.env_providers = EnvProvider::from_env();
        config.validate()?;
        Ok(config)
    }

    /// Checks every setting, naming the first bad one.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.listen_addr()?;
        let runs = &self.runs;
        if runs.lease_secs < 2 || runs.max_concurrent == 0 || runs.poll_ms == 0 {
            bail!("runs: lease_secs must be at least 2, max_concurrent and poll_ms at least 1");
        }
        let (d, m) = (&runs.default_limits, &runs.max_limits);
        if d.max_steps == 0
            || d.max_steps > m.max_steps
            || d.timeout_secs == 0
            || d.timeout_secs > m.timeout_secs
            || matches!((d.max_tokens, m.max_tokens), (None, Some(_)))
            || matches!((d.max_tokens, m.max_tokens), (Some(a), Some(b)) if a > b)
        {
            bail!("runs.default_limits must be positive and within runs.max_limits");
        }
        if self.schedules.tick_ms == 0 || self.schedules.min_interval_secs == 0 {
            bail!("schedules: tick_ms and min_interval_secs must be at least 1");
        }
        if self.webhooks.poll_ms == 0
            || self.webhooks.concurrency == 0
            || self.webhooks.timeout_secs == 0
            || self.webhooks.retry_ms.len() > 50
        {
            bail!("webhooks: poll_ms, concurrency and timeout_secs must be at least 1, and retry_ms at most 50 waits");
        }
        let oauth = &self.oauth;
        if oauth.access_token_ttl_secs == 0
            || oauth.refresh_token_ttl_secs == 0
            || oauth.code_ttl_secs == 0
            || oauth.consent_ttl_secs == 0
        {
            bail!("oauth: token, code and consent lifetimes must be at least 1 second");
        }
        if let Some(url) = &oauth.public_url {
            let parsed = url::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if parsed.is_none_or(|u| u.query().is_some() || u.fragment().is_some()) {
                bail!("oauth.public_url (ORCHESTRA_OAUTH__PUBLIC_URL): an http(s) URL without query or fragment, such as https://orchestra.example.com");
            }
        }
        if self.triggers.max_body_bytes == 0 || self.triggers.default_rate_per_minute <= 0 {
            bail!("triggers: max_body_bytes and default_rate_per_minute must be at least 1");
        }
        if let Some(url) = &self.database_url {
            if !(url.starts_with("postgres://")
                || url.starts_with("postgresql://")
                || url.starts_with("sqlite:"))
            {
                bail!("database_url (DATABASE_URL): must start with postgres://, postgresql:// or sqlite:");
            }
        }
        if self.database.max_connections == 0 {
            bail!("database.max_connections: must be at least 1");
        }
        if self.auth.access_token_ttl_secs == 0 {
            bail!("auth.access_token_ttl_secs: must be at least 1");
        }
        if self.auth.refresh_token_ttl_secs < self.auth.access_token_ttl_secs {
            bail!(
                "auth.refresh_token_ttl_secs: must not be shorter than auth.access_token_ttl_secs"
            );
        }
        if self.http.body_limit_bytes < 1024 {
            bail!("http.body_limit_bytes: must be at least 1024");
        }
        if self.http.request_timeout_secs == 0 {
            bail!("http.request_timeout_secs: must be at least 1");
        }
        for origin in &self.http.cors_allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                bail!("http.cors_allowed_origins: {origin:?} is not an http(s) origin or \"*\"");
            }
        }
        if !(1..=10_000).contains(&self.sandbox.max_concurrent_instances) {
            bail!("sandbox.max_concurrent_instances: must be between 1 and 10000");
        }
        let call = &self.sandbox.call;
        if call.max_memory_bytes < (1 << 20)
            || call.max_memory_bytes > EngineLimits::default().max_memory_bytes
        {
            bail!("sandbox.call.max_memory_bytes: must be between 1 MiB and 256 MiB");
        }
        if call.timeout_ms == 0 {
            bail!("sandbox.call.timeout_ms: must be at least 1");
        }
        if call.max_output_bytes == 0 {
            bail!("sandbox.call.max_output_bytes: must be at least 1");
        }
        if self
            .log
            .level
            .parse::<tracing_subscriber::EnvFilter>()
            .is_err()
        {
            bail!("log.level: {:?} is not a valid filter", self.log.level);
        }
        Ok(())
    }

    /// The socket address to bind.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        self.listen.parse().with_context(|| {
            format!(
                "listen (ORCHESTRA_LISTEN): {:?} is not host:port",
                self.listen
            )
        })
    }

    /// The database URL, defaulting to SQLite in the data directory.
    pub fn effective_database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", self.data_dir.join("orchestra.db").display()),
        }
    }
}
