//! HTTP handlers of `/api/v1/webhooks`.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::*;
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Path, Query};
use crate::http::AppState;
use crate::pagination::{Page, PageParams};
use crate::users::model::Principal;

/// Routes of the webhooks domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_webhooks, create_webhook))
        .routes(routes!(get_webhook, patch_webhook, delete_webhook))
        .routes(routes!(rotate_secret))
        .routes(routes!(test_webhook))
        .routes(routes!(list_deliveries))
        .routes(routes!(get_delivery))
        .routes(routes!(redeliver))
}

/// Your webhook subscriptions (admins: also server-wide and everyone's).
#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    params(PageParams), responses((status = 200, body = Page<WebhookResponse>)))]
async fn list_webhooks(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<WebhookResponse>>> {
    Ok(Json(state.webhooks.list(&principal, page).await?))
}

/// Subscribe to events. Deliveries follow Standard Webhooks; the answer
/// carries the signing secret (`whsec_...`), shown this once.
#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    request_body = WebhookInput,
    responses((status = 201, body = WebhookResponse), (status = 422, body = ErrorResponse)))]
async fn create_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<WebhookInput>,
) -> Result<(StatusCode, Json<WebhookResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.webhooks.create(&principal, input).await?),
    ))
}

/// One subscription (never its secret).
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = WebhookResponse)))]
async fn get_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<WebhookResponse>> {
    Ok(Json(state.webhooks.get(&principal, id).await?))
}

/// Change a subscription; enabling it again clears its failures.
#[utoipa::path(patch, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = WebhookPatch,
    responses((status = 200, body = WebhookResponse)))]
async fn patch_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(patch): Json<WebhookPatch>,
) -> Result<Json<WebhookResponse>> {
    Ok(Json(state.webhooks.patch(&principal, id, patch).await?))
}

/// Delete a subscription and its delivery log.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204)))]
async fn delete_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.webhooks.delete(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret, shown this once; for a day deliveries carry
/// signatures by both the old and the new.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/rotate-secret", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 200, body = WebhookResponse)))]
async fn rotate_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<WebhookResponse>> {
    Ok(Json(state.webhooks.rotate_secret(&principal, id).await?))
}

/// Queue a `webhook.test` delivery.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/test", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 202, body = DeliveryResponse)))]
async fn test_webhook(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<DeliveryResponse>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.webhooks.test(&principal, id).await?),
    ))
}

/// A subscription's deliveries, newest first, with status codes and times.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("id" = Uuid, Path), PageParams), responses((status = 200, body = Page<DeliveryResponse>)))]
async fn list_deliveries(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<DeliveryResponse>>> {
    Ok(Json(state.webhooks.deliveries(&principal, id, page).await?))
}

/// One delivery, with every attempt.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}", tag = "webhooks",
    security(("bearer" = [])), params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 200, body = DeliveryResponse)))]
async fn get_delivery(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, delivery)): Path<(Uuid, Uuid)>,
) -> Result<Json<DeliveryResponse>> {
    Ok(Json(
        state.webhooks.delivery(&principal, id, delivery).await?,
    ))
}

/// Send a delivery again now, with the same `webhook-id`.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    security(("bearer" = [])), params(("id" = Uuid, Path), ("delivery_id" = Uuid, Path)),
    responses((status = 202, body = DeliveryResponse), (status = 409, body = ErrorResponse)))]
async fn redeliver(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, delivery)): Path<(Uuid, Uuid)>,
) -> Result<(StatusCode, Json<DeliveryResponse>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.webhooks.redeliver(&principal, id, delivery).await?),
    ))
}
