//! HTTP handlers of `/api/v1/triggers`.

use axum::body::Body;
use axum::extract::{Query as RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use http_body_util::BodyExt;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::*;
use crate::error::{Error, ErrorResponse, Result};
use crate::http::extract::{Json, Path, Query};
use crate::http::AppState;
use crate::pagination::{Page, PageParams};
use crate::runs::model::RunResponse;
use crate::users::model::Principal;

/// Routes of the triggers domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_triggers, create_trigger))
        .routes(routes!(
            get_trigger,
            patch_trigger,
            delete_trigger,
            fire_trigger
        ))
        .routes(routes!(rotate_token))
        .routes(routes!(list_trigger_deliveries))
}

/// Your triggers (admins: everyone's).
#[utoipa::path(get, path = "/api/v1/triggers", tag = "triggers", security(("bearer" = [])),
    params(PageParams), responses((status = 200, body = Page<TriggerResponse>)))]
async fn list_triggers(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<TriggerResponse>>> {
    Ok(Json(state.triggers.list(&principal, page).await?))
}

/// Create a trigger: a URL that starts one of your agent's runs. The
/// answer carries its token (and signing secret), shown this once.
#[utoipa::path(post, path = "/api/v1/triggers", tag = "triggers", security(("bearer" = [])),
    request_body = TriggerInput,
    responses((status = 201, body = TriggerResponse), (status = 404, body = ErrorResponse),
              (status = 422, body = ErrorResponse)))]
async fn create_trigger(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<TriggerInput>,
) -> Result<(StatusCode, Json<TriggerResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.triggers.create(&principal, input).await?),
    ))
}

/// One trigger (never its token or secret).
#[utoipa::path(get, path = "/api/v1/triggers/{id}", tag = "triggers", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = TriggerResponse)))]
async fn get_trigger(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<TriggerResponse>> {
    Ok(Json(state.triggers.get(&principal, id).await?))
}

/// Change a trigger.
#[utoipa::path(patch, path = "/api/v1/triggers/{id}", tag = "triggers", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = TriggerPatch,
    responses((status = 200, body = TriggerResponse)))]
async fn patch_trigger(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(patch): Json<TriggerPatch>,
) -> Result<Json<TriggerResponse>> {
    Ok(Json(state.triggers.patch(&principal, id, patch).await?))
}

/// Delete a trigger (its runs stay).
#[utoipa::path(delete, path = "/api/v1/triggers/{id}", tag = "triggers", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204)))]
async fn delete_trigger(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.triggers.delete(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new token, shown this once; the old one stops working.
#[utoipa::path(post, path = "/api/v1/triggers/{id}/rotate-token", tag = "triggers", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = TriggerResponse)))]
async fn rotate_token(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<TriggerResponse>> {
    Ok(Json(state.triggers.rotate_token(&principal, id).await?))
}

/// A trigger's accepted calls, newest first.
#[utoipa::path(get, path = "/api/v1/triggers/{id}/deliveries", tag = "triggers", security(("bearer" = [])),
    params(("id" = Uuid, Path), PageParams),
    responses((status = 200, body = Page<TriggerDeliveryResponse>)))]
async fn list_trigger_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<TriggerDeliveryResponse>>> {
    Ok(Json(state.triggers.deliveries(&principal, id, page).await?))
}

/// Call a trigger: starts its agent's run with the body as the message
/// and answers 202 with the run. The token goes in `Authorization: Bearer`,
/// `X-Orchestra-Token`, or `?token=` (for senders that set no headers).
/// `Idempotency-Key` (or Standard Webhooks' `webhook-id`, or GitHub's
/// `X-GitHub-Delivery`) makes a retried call answer with the run the first
/// one started (`Idempotent-Replayed: true`).
#[utoipa::path(post, path = "/api/v1/triggers/{id}", tag = "triggers",
    params(("id" = Uuid, Path), ("token" = Option<String>, Query, description = "The trigger's token")),
    request_body(content = String, description = "JSON or text", content_type = "application/json"),
    responses((status = 202, body = RunResponse), (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse),
              (status = 413, body = ErrorResponse), (status = 422, body = ErrorResponse),
              (status = 429, body = ErrorResponse)))]
async fn fire_trigger(
    State(state): State<AppState>,
    Path(id): Path<Uuid>,
    RawQuery(query): RawQuery<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: Body,
) -> Result<impl IntoResponse> {
    let limit = state.triggers.max_body_bytes();
    let bytes = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                Error::PayloadTooLarge
            } else {
                Error::validation("the body could not be read")
            }
        })?
        .to_bytes();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let bearer = header("authorization").and_then(|v| {
        v.strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
            .map(str::to_owned)
    });
    let token = bearer
        .or_else(|| header("x-orchestra-token"))
        .or_else(|| query.get("token").cloned());
    let json = header("content-type").is_some_and(|t| {
        let t = t.to_ascii_lowercase();
        t.starts_with("application/json") || t.contains("+json")
    });
    let (run, fresh) = state
        .triggers
        .fire(
            id,
            Call {
                token: token.as_deref(),
                body: &bytes,
                json,
                header: &header,
            },
        )
        .await?;
    let replayed = [("idempotent-replayed", if fresh { "false" } else { "true" })];
    Ok((StatusCode::ACCEPTED, replayed, Json(run)))
}
