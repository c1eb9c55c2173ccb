//! HTTP handlers of `/api/v1/mcp-servers`.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::connect::{ConnectResponse, FinishConnectRequest};
use super::offers::{GetPromptRequest, McpResources, ReadQuery};
use super::{CreateMcpServerRequest, McpServerResponse, UpdateMcpServerRequest};
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Path, Query};
use crate::http::AppState;
use crate::users::model::Principal;

/// Routes of the MCP bridge.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_servers, create_server))
        .routes(routes!(get_server, update_server, delete_server))
        .routes(routes!(restart_server))
        .routes(routes!(connect_server, disconnect_server))
        .routes(routes!(finish_connect))
        .routes(routes!(list_resources))
        .routes(routes!(read_resource))
        .routes(routes!(list_prompts))
        .routes(routes!(get_prompt))
}

/// A server's resources and resource templates, as it lists them.
#[utoipa::path(get, path = "/api/v1/mcp-servers/{id}/resources", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = McpResources), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
async fn list_resources(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<McpResources>> {
    Ok(Json(state.mcp.resources(&principal, id).await?))
}

/// Reads one of a server's resources (`contents`: text or base64 blobs).
#[utoipa::path(get, path = "/api/v1/mcp-servers/{id}/resources/read", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path), ReadQuery),
    responses((status = 200, body = Object), (status = 404, body = ErrorResponse),
              (status = 422, body = ErrorResponse), (status = 503, body = ErrorResponse)))]
async fn read_resource(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(query): Query<ReadQuery>,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(
        state.mcp.read_resource(&principal, id, &query.uri).await?,
    ))
}

/// A server's prompts, with their arguments.
#[utoipa::path(get, path = "/api/v1/mcp-servers/{id}/prompts", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Vec<Object>), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
async fn list_prompts(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<Vec<serde_json::Value>>> {
    Ok(Json(state.mcp.prompts(&principal, id).await?))
}

/// One of a server's prompts, filled in with `arguments`: its messages.
#[utoipa::path(post, path = "/api/v1/mcp-servers/{id}/prompts/get", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = GetPromptRequest,
    responses((status = 200, body = Object), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
async fn get_prompt(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(request): Json<GetPromptRequest>,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(state.mcp.get_prompt(&principal, id, request).await?))
}

/// Starts connecting a server that signs in with OAuth: answers with the
/// authorization server's page to send the browser to. It comes back to
/// the console's `/mcp-servers/oauth-callback`.
#[utoipa::path(post, path = "/api/v1/mcp-servers/{id}/oauth", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ConnectResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
async fn connect_server(
    State(state): State<AppState>,
    principal: Principal,
    headers: axum::http::HeaderMap,
    Path(id): Path<Uuid>,
) -> Result<Json<ConnectResponse>> {
    let base = crate::oauth::public_base(state.oauth.config(), &headers)?;
    Ok(Json(state.mcp.connect(&principal, id, &base).await?))
}

/// Forgets a server's OAuth tokens; it stops until connected again.
#[utoipa::path(delete, path = "/api/v1/mcp-servers/{id}/oauth", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = McpServerResponse), (status = 403, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn disconnect_server(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<McpServerResponse>> {
    Ok(Json(state.mcp.disconnect(&principal, id).await?))
}

/// Finishes connecting: the code and state the authorization server sent
/// back to the console. Only the user who started it, from the console.
#[utoipa::path(post, path = "/api/v1/mcp-servers/oauth/callback", tag = "mcp", security(("bearer" = [])),
    request_body = FinishConnectRequest,
    responses((status = 200, body = McpServerResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
async fn finish_connect(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<FinishConnectRequest>,
) -> Result<Json<McpServerResponse>> {
    Ok(Json(state.mcp.finish_connect(&principal, request).await?))
}

/// The MCP servers you may use: server-wide ones and your own (admins see
/// every one). Secrets are never shown.
#[utoipa::path(get, path = "/api/v1/mcp-servers", tag = "mcp", security(("bearer" = [])),
    responses((status = 200, body = Vec<McpServerResponse>), (status = 403, body = ErrorResponse)))]
async fn list_servers(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<McpServerResponse>>> {
    Ok(Json(state.mcp.list(&principal).await?))
}

/// Registers an MCP server and connects once to list its tools (a failure
/// shows in `status`). Stdio servers and server-wide ones: admins only;
/// users register HTTP servers for themselves.
#[utoipa::path(post, path = "/api/v1/mcp-servers", tag = "mcp", security(("bearer" = [])),
    request_body = CreateMcpServerRequest,
    responses((status = 201, body = McpServerResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn create_server(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<CreateMcpServerRequest>,
) -> Result<(StatusCode, Json<McpServerResponse>)> {
    let server = state.mcp.create(&principal, request).await?;
    Ok((StatusCode::CREATED, Json(server)))
}

/// One server, with its status (state, last error, tool count) on the node
/// that answers.
#[utoipa::path(get, path = "/api/v1/mcp-servers/{id}", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = McpServerResponse), (status = 404, body = ErrorResponse)))]
async fn get_server(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<McpServerResponse>> {
    Ok(Json(state.mcp.get(&principal, id).await?))
}

/// Changes a server; its connection restarts.
#[utoipa::path(patch, path = "/api/v1/mcp-servers/{id}", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = UpdateMcpServerRequest,
    responses((status = 200, body = McpServerResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn update_server(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(request): Json<UpdateMcpServerRequest>,
) -> Result<Json<McpServerResponse>> {
    Ok(Json(state.mcp.update(&principal, id, request).await?))
}

/// Removes a server: its process stops, its tools leave the catalogue.
#[utoipa::path(delete, path = "/api/v1/mcp-servers/{id}", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn delete_server(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.mcp.delete(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Restarts a server's connection now (also out of backoff).
#[utoipa::path(post, path = "/api/v1/mcp-servers/{id}/restart", tag = "mcp", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = McpServerResponse), (status = 403, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn restart_server(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<McpServerResponse>> {
    Ok(Json(state.mcp.restart(&principal, id).await?))
}
