//! HTTP handlers of `/api/v1/agents`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::*;
use crate::error::{Error, ErrorResponse, Result};
use crate::http::extract::{etag, IfMatch, Json, Path, Query};
use crate::http::AppState;
use crate::pagination::{Page, PageParams};
use crate::users::model::Principal;

/// Routes of the agents domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_agents, create_agent))
        .routes(routes!(get_agent, replace_agent, patch_agent, delete_agent))
        .routes(routes!(clone_agent))
        .routes(routes!(list_revisions))
        .routes(routes!(get_revision))
}

fn with_etag(agent: AgentResponse) -> ([(header::HeaderName, String); 1], Json<AgentResponse>) {
    (etag(agent.version), Json(agent))
}

/// List your agents (admins: everyone's), filtered, sorted and paged.
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents", security(("bearer" = [])),
    params(AgentFilter, PageParams),
    responses((status = 200, body = Page<AgentResponse>), (status = 400, body = ErrorResponse)))]
async fn list_agents(
    State(state): State<AppState>,
    principal: Principal,
    Query(filter): Query<AgentFilter>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<AgentResponse>>> {
    Ok(Json(state.agents.list(&principal, filter, page).await?))
}

/// Create an agent.
#[utoipa::path(post, path = "/api/v1/agents", tag = "agents", security(("bearer" = [])),
    request_body = AgentInput,
    responses((status = 201, body = AgentResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn create_agent(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<AgentInput>,
) -> Result<impl IntoResponse> {
    let agent = state.agents.create(&principal, input).await?;
    Ok((StatusCode::CREATED, with_etag(agent)))
}

/// One agent; its `ETag` is its version.
#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Agent id")),
    responses((status = 200, body = AgentResponse), (status = 404, body = ErrorResponse)))]
async fn get_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<impl IntoResponse> {
    Ok(with_etag(state.agents.get(&principal, id).await?))
}

/// Replace an agent's whole definition; a new version. Send `If-Match: "<version>"`
/// to fail with 409 instead of overwriting someone else's change.
#[utoipa::path(put, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Agent id"),
           ("If-Match" = Option<String>, Header, description = "Expected current version")),
    request_body = AgentInput,
    responses((status = 200, body = AgentResponse), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn replace_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    IfMatch(if_match): IfMatch,
    Json(input): Json<AgentInput>,
) -> Result<impl IntoResponse> {
    Ok(with_etag(
        state
            .agents
            .replace(&principal, id, input, if_match)
            .await?,
    ))
}

/// Change some fields of an agent; a new version. `If-Match` as for PUT.
#[utoipa::path(patch, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Agent id"),
           ("If-Match" = Option<String>, Header, description = "Expected current version")),
    request_body = AgentPatch,
    responses((status = 200, body = AgentResponse), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn patch_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    IfMatch(if_match): IfMatch,
    Json(patch): Json<AgentPatch>,
) -> Result<impl IntoResponse> {
    Ok(with_etag(
        state.agents.patch(&principal, id, patch, if_match).await?,
    ))
}

/// Delete an agent (soft: its revisions are kept, its name is free again).
#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Agent id")),
    responses((status = 204), (status = 404, body = ErrorResponse)))]
async fn delete_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.agents.delete(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Copy an agent into a new one you own.
#[utoipa::path(post, path = "/api/v1/agents/{id}/clone", tag = "agents", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Agent id")), request_body(content = Option<CloneRequest>),
    responses((status = 201, body = AgentResponse), (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse)))]
async fn clone_agent(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    body: Bytes,
) -> Result<impl IntoResponse> {
    let request: CloneRequest = if body.iter().all(u8::is_ascii_whitespace) {
        CloneRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::validation(format!("invalid body: {e}")))?
    };
    let agent = state.agents.clone_agent(&principal, id, request).await?;
    Ok((StatusCode::CREATED, with_etag(agent)))
}

/// An agent's revisions, newest first.
#[utoipa::path(get, path = "/api/v1/agents/{id}/revisions", tag = "agents", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Agent id"), PageParams),
    responses((status = 200, body = Page<RevisionResponse>), (status = 404, body = ErrorResponse)))]
async fn list_revisions(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<RevisionResponse>>> {
    Ok(Json(state.agents.revisions(&principal, id, page).await?))
}

/// One revision of an agent.
#[utoipa::path(get, path = "/api/v1/agents/{id}/revisions/{version}", tag = "agents",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Agent id"), ("version" = i64, Path, description = "Version")),
    responses((status = 200, body = RevisionResponse), (status = 404, body = ErrorResponse)))]
async fn get_revision(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, version)): Path<(Uuid, i64)>,
) -> Result<Json<RevisionResponse>> {
    Ok(Json(state.agents.revision(&principal, id, version).await?))
}
