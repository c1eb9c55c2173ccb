//! Assembles the application (services, router, middleware) and serves it
//! until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::agents::AgentService;
use crate::audit::AuditService;
use crate::config::Config;
use crate::conversations::ConversationService;
use crate::db::Db;
use crate::http::middleware;
use crate::http::openapi::ApiDoc;
use crate::http::AppState;
use crate::keys::Keys;
use crate::mcp::McpService;
use crate::models::ModelService;
use crate::plugins::host::DbHostServices;
use crate::plugins::PluginService;
use crate::runs::bus::Bus;
use crate::runs::engine::Engine;
use crate::runs::writer::Writer;
use crate::runs::RunService;
use crate::sandbox::{EngineLimits, Sandbox};
use crate::secrets::SecretService;
use crate::settings::SettingsService;
use crate::tools::ToolCatalogue;
use crate::users::credentials::JwtKeys;
use crate::users::{TokenPolicy, UserService};

/// Connects to the database, applies migrations, loads the keys and wires
/// every service.
pub async fn build_state(config: Config) -> anyhow::Result<AppState> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    }
    let keys = Keys::load_or_create(&config)?;
    let db = Db::connect(&config).await?;
    db.migrate().await?;
    let sandbox = Arc::new(Sandbox::new(
        EngineLimits {
            max_concurrent_instances: config.sandbox.max_concurrent_instances,
            fuel: config.sandbox.fuel,
            max_calls_per_plugin: config.sandbox.max_calls_per_plugin.max(1),
            max_calls_per_user: config.sandbox.max_calls_per_user.max(1),
            guest_threads: config.sandbox.guest_threads,
            ..EngineLimits::default()
        },
        Some(
            config
                .sandbox
                .cache_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("cache").join("plugins")),
        ),
    )?);
    let state = wire(config, db, &keys, sandbox);
    state.plugins.load_all().await?;
    state.mcp.load_all().await?;
    state.mcp.bridge().spawn_health_checks();
    state.runs.bus().listen_postgres(&state.db);
    if state.config.runs.worker {
        state.engine.start();
    }
    if state.config.schedules.worker {
        state.schedules.start();
    }
    if state.config.webhooks.worker {
        state.webhooks.start_delivery(state.background.clone());
    }
    if state.config.sandbox.refresh_secs > 0 {
        state
            .plugins
            .spawn_refresh(Duration::from_secs(state.config.sandbox.refresh_secs));
    }
    Ok(state)
}

/// Builds the services over an open, migrated database.
pub fn wire(config: Config, db: Db, keys: &Keys, sandbox: Arc<Sandbox>) -> AppState {
    let audit = AuditService::new(db.clone());
    let settings = SettingsService::new(db.clone(), audit.clone(), config.auth.registration);
    let users = UserService::new(
        db.clone(),
        audit.clone(),
        settings.clone(),
        JwtKeys::new(&keys.jwt_secret),
        TokenPolicy {
            access_ttl_secs: config.auth.access_token_ttl_secs,
            refresh_ttl_secs: config.auth.refresh_token_ttl_secs,
            credential_cache_ms: config.auth.credential_cache_ms,
            login_throttle: config.auth.login_throttle,
        },
    );
    let secrets = SecretService::new(db.clone(), audit.clone(), &keys.encryption_key);
    let models = ModelService::new(
        db.clone(),
        audit.clone(),
        &keys.encryption_key,
        config.env_providers.clone(),
        config.egress,
    );
    let tools = ToolCatalogue::new(
        audit.clone(),
        Some(Arc::new(DbHostServices::new(db.clone(), secrets.clone()))),
    );
    let plugins = PluginService::new(
        db.clone(),
        sandbox,
        tools.clone(),
        audit.clone(),
        config.sandbox.clone(),
    );
    let bridge = crate::mcp::Bridge::new(
        Some(db.clone()),
        config.mcp.clone(),
        config.egress,
        secrets.clone(),
    );
    tools.set_bridge(bridge.clone());
    let mcp = McpService::new(
        db.clone(),
        audit.clone(),
        &keys.encryption_key,
        bridge,
        tools.clone(),
        config.mcp.clone(),
    );
    let agents = AgentService::new(db.clone(), tools.clone());
    let conversations = ConversationService::new(db.clone(), agents.clone());
    let bus = Bus::default();
    let writer = Writer::start(db.clone());
    let engine = Engine::new(
        db.clone(),
        tools.clone(),
        models.clone(),
        bus.clone(),
        writer.clone(),
        config.runs.clone(),
    );
    let runs = RunService::new(
        db.clone(),
        conversations.clone(),
        models.clone(),
        bus,
        writer,
        engine.clone(),
        config.runs.clone(),
    );
    let webhooks = crate::webhooks::WebhookService::new(
        db.clone(),
        audit.clone(),
        &keys.encryption_key,
        config.webhooks.clone(),
        config.egress,
    );
    mcp.bridge().set_webhooks(webhooks.clone());
    mcp.bridge().set_models(models.clone());
    let schedules = crate::schedules::ScheduleService::new(crate::schedules::ScheduleDeps {
        db: db.clone(),
        agents: agents.clone(),
        conversations: conversations.clone(),
        runs: runs.clone(),
        users: users.clone(),
        webhooks: webhooks.clone(),
        audit: audit.clone(),
        clock: Arc::new(crate::clock::SystemClock),
        config: config.schedules.clone(),
        lease_ms: config.runs.lease_secs as i64 * 1000,
    });
    let triggers = crate::triggers::TriggerService::new(crate::triggers::TriggerDeps {
        db: db.clone(),
        agents: agents.clone(),
        conversations: conversations.clone(),
        runs: runs.clone(),
        users: users.clone(),
        audit: audit.clone(),
        key: keys.encryption_key,
        config: config.triggers.clone(),
    });
    let oauth = crate::oauth::OAuthService::new(
        db.clone(),
        audit.clone(),
        users.clone(),
        config.oauth.clone(),
        config.egress,
    );
    AppState {
        oauth,
        schedules,
        triggers,
        webhooks,
        background: tokio_util::sync::CancellationToken::new(),
        config: Arc::new(config),
        db,
        users,
        agents,
        conversations,
        audit,
        settings,
        tools,
        plugins,
        secrets,
        models,
        runs,
        mcp,
        engine,
    }
}

/// The router of every domain, with its OpenAPI document.
pub fn api() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(crate::http::openapi::router())
        .merge(crate::users::routes::router())
        .merge(crate::agents::routes::router())
        .merge(crate::conversations::routes::router())
        .merge(crate::settings::routes::router())
        .merge(crate::audit::routes::router())
        .merge(crate::tools::routes::router())
        .merge(crate::plugins::routes::router())
        .merge(crate::secrets::routes::router())
        .merge(crate::models::routes::router())
        .merge(crate::runs::routes::router())
        .merge(crate::mcp::routes::router())
        .merge(crate::oauth::routes::router())
        .merge(crate::schedules::routes::router())
        .merge(crate::triggers::routes::router())
        .merge(crate::webhooks::routes::router())
        .merge(crate::openai::router())
        .split_for_parts();
    (router, with_error_responses(openapi))
}

/// Documents, on every operation, the errors any request to it may get
/// besides those its handler names: 400 (malformed input), 401 and 403
/// (operations that need credentials), 404 (operations with a path
/// parameter), 413 (operations with a body), 429 (quotas, throttles and
/// stream limits, where they apply: every operation that needs credentials,
/// and login), 500 (a bug; never with internals) and 503 (database
/// unavailable, or the request took too long). Each with the
/// `ErrorResponse` body.
fn with_error_responses(mut openapi: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let error = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorResponse")))
                    .build(),
            )
            .build()
    };
    for (path, item) in openapi.paths.paths.iter_mut() {
        if path.starts_with("/v1/") {
            // The OpenAI-compatible API documents its own error shape.
            continue;
        }
        let has_path_params = path.contains('{');
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut add = |code: &str, description: &str| {
                operation
                    .responses
                    .responses
                    .entry(code.to_owned())
                    .or_insert_with(|| error(description).into());
            };
            add("400", "Malformed or invalid input");
            if secured {
                add("401", "Missing, invalid or expired credentials");
                add("403", "Not allowed for the caller's role");
                add("429", "A quota, throttle or limit is spent");
            }
            if has_path_params {
                add("404", "No such resource, or another user's");
            }
            if operation.request_body.is_some() {
                add("413", "The body is larger than the limit");
            }
            if path == "/api/v1/auth/login" {
                add("429", "Too many failed logins: wait `Retry-After` seconds");
            }
            add("500", "A bug; the body never carries internals");
            add(
                "503",
                "The database is unavailable, or the request took too long",
            );
        }
    }
    openapi
}

/// The complete application: routes, docs and middleware.
pub fn app(state: AppState) -> Router {
    let (router, openapi) = api();
    let http = &state.config.http;
    let timeout = middleware::Timeouts {
        request: Duration::from_secs(http.request_timeout_secs),
        // The longest of a tool call's own deadlines (an agent's run, a
        // bridged tool's default), and a margin to answer with its error.
        mcp: Duration::from_secs(
            state
                .config
                .mcp
                .agent_timeout_secs
                .max(state.config.mcp.call_timeout_secs)
                + 30,
        ),
        // A completion that is not streamed waits for the agent's whole run.
        agent: Duration::from_secs(state.config.runs.max_limits.timeout_secs + 30),
    };
    router
        .merge(SwaggerUi::new("/docs").url("/api/openapi.json", openapi))
        .merge(crate::mcp::host::router(state.clone()))
        .merge(crate::oauth::routes::protocol_router())
        .route("/v1/{*rest}", axum::routing::any(crate::openai::not_found))
        .fallback_service(console_service())
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(DefaultBodyLimit::max(http.body_limit_bytes))
        .layer(axum::middleware::from_fn_with_state(
            timeout,
            middleware::timeout,
        ))
        .layer(CatchPanicLayer::custom(middleware::panic_response))
        .layer(middleware::cors(http))
        .layer(middleware::propagate_request_id())
        .layer(middleware::trace())
        .layer(middleware::set_request_id())
        .with_state(state)
}

/// The web console, compressed (gzip or brotli, as the browser accepts), and
/// the API's 404 for every other unknown path.
fn console_service() -> Router {
    async fn console_or_not_found(
        method: axum::http::Method,
        uri: axum::http::Uri,
        headers: axum::http::HeaderMap,
    ) -> axum::response::Response {
        match crate::console::serve(&method, &uri, &headers) {
            Some(response) => response,
            None => middleware::not_found().await,
        }
    }
    Router::new()
        .fallback(console_or_not_found)
        .layer(tower_http::compression::CompressionLayer::new())
}

/// Serves `state` on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish and closes the database.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let db = state.db.clone();
    let engine = state.engine.clone();
    let mcp = state.mcp.clone();
    let schedules = state.schedules.clone();
    let background = state.background.clone();
    mcp.bridge().start_boot_servers();
    // Streams write small frames one after another (SSE events): without
    // TCP_NODELAY each waits for the client's delayed ACK of the previous
    // one (about 40 ms on Linux).
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
    });
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        // Open MCP streams would hold the graceful shutdown forever.
        mcp.shutdown();
    })
    .await
    .context("serving HTTP")?;
    schedules.shutdown();
    background.cancel();
    engine.shutdown().await;
    db.close().await;
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}
