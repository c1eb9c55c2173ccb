//! HTTP handlers of `/api/v1/providers` and `/api/v1/models`.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{CreateProviderRequest, ModelList, ProviderInfo, UpdateProviderRequest};
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Path};
use crate::http::AppState;
use crate::users::model::Principal;

/// Routes of the models domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers, create_provider))
        .routes(routes!(get_provider, update_provider, delete_provider))
        .routes(routes!(list_models))
}

/// The providers you may use: server-wide ones (database and environment)
/// and your own; admins see every one. Keys are never shown.
#[utoipa::path(get, path = "/api/v1/providers", tag = "models", security(("bearer" = [])),
    responses((status = 200, body = Vec<ProviderInfo>), (status = 403, body = ErrorResponse)))]
async fn list_providers(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<ProviderInfo>>> {
    Ok(Json(state.models.list(&principal).await?))
}

/// Adds a provider; its API key is stored encrypted. Admins add server-wide
/// providers (or personal ones with `personal: true`); users add their own.
#[utoipa::path(post, path = "/api/v1/providers", tag = "models", security(("bearer" = [])),
    request_body = CreateProviderRequest,
    responses((status = 201, body = ProviderInfo), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn create_provider(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<CreateProviderRequest>,
) -> Result<(StatusCode, Json<ProviderInfo>)> {
    let info = state.models.create(&principal, request).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// One provider you may use.
#[utoipa::path(get, path = "/api/v1/providers/{name}", tag = "models", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = ProviderInfo), (status = 404, body = ErrorResponse)))]
async fn get_provider(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<ProviderInfo>> {
    Ok(Json(state.models.get(&principal, &name).await?))
}

/// Changes a provider's URL, key (`null` removes it) or models (your own;
/// admins any).
#[utoipa::path(patch, path = "/api/v1/providers/{name}", tag = "models", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = UpdateProviderRequest,
    responses((status = 200, body = ProviderInfo), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn update_provider(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Json(request): Json<UpdateProviderRequest>,
) -> Result<Json<ProviderInfo>> {
    Ok(Json(state.models.update(&principal, &name, request).await?))
}

/// Removes a provider (your own; admins any).
#[utoipa::path(delete, path = "/api/v1/providers/{name}", tag = "models", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn delete_provider(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    state.models.delete(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The models you can give an agent: `provider` and `model` go in its
/// `model`. Providers that did not answer are listed under `unavailable`.
#[utoipa::path(get, path = "/api/v1/models", tag = "models", security(("bearer" = [])),
    responses((status = 200, body = ModelList), (status = 401, body = ErrorResponse)))]
async fn list_models(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<ModelList>> {
    Ok(Json(state.models.models(&principal).await?))
}
