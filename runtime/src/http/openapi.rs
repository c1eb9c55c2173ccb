//! The OpenAPI 3.1 document's frame (title, security scheme, tags) and the
//! health endpoints. Paths and schemas are collected from the handlers'
//! `#[utoipa::path]` attributes when the router is built.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{Error, ErrorResponse};
use crate::http::AppState;

/// The document's frame.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Orchestra",
        description = "A self-hosted agent server: users, agents, conversations, sandboxed tools.",
    ),
    modifiers(&BearerAuth),
    components(schemas(ErrorResponse)),
    tags(
        (name = "auth", description = "Registration, login and token refresh"),
        (name = "users", description = "Accounts (admin management and the caller's own)"),
        (name = "api-keys", description = "Long-lived credentials for scripts and clients"),
        (name = "agents", description = "Agents and their revisions"),
        (name = "conversations", description = "Conversations and their messages"),
        (name = "tools", description = "The tool catalogue: sandboxed plugins and bridged MCP tools, run directly or by agents"),
        (name = "mcp", description = "MCP servers bridged into the tool catalogue (Orchestra's own MCP endpoint is /mcp)"),
        (name = "plugins", description = "Installing plugins, granting capabilities, upgrading and removing"),
        (name = "models", description = "Model providers (keys write-only) and the models agents can use"),
        (name = "secrets", description = "Named secrets that granted plugins read (values are write-only)"),
        (name = "schedules", description = "Agents' runs at set times (cron in a time zone, intervals, once), with a history of firings"),
        (name = "triggers", description = "URLs that start an agent's run from other systems (token, optional HMAC signature, idempotency key)"),
        (name = "webhooks", description = "Signed notifications (Standard Webhooks) of runs, schedules and MCP servers, with a delivery log"),
        (name = "admin", description = "Server settings and the audit log"),
        (name = "health", description = "Liveness and readiness"),
        (name = "openai", description = "The OpenAI-compatible API: agents as models (`agent:<name>`) for Chat Completions, Responses and Anthropic Messages clients; errors in the vendors' shapes, not ErrorResponse"),
    )
)]
pub struct ApiDoc;

/// Declares `Authorization: Bearer <JWT or API key>`.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A JWT access token from /api/v1/auth/login, or an API key (orc_...)",
                    ))
                    .build(),
            ),
        );
    }
}

/// Health status.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`
    pub status: &'static str,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Readiness: the database answers.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    responses((status = 200, body = Health), (status = 503, body = ErrorResponse))
)]
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.db.ping().await {
        Ok((StatusCode::OK, axum::Json(Health { status: "ok" })))
    } else {
        Err(Error::Unavailable("the database is unreachable".to_owned()))
    }
}

/// The health routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}
