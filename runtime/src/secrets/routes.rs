//! HTTP handlers of `/api/v1/secrets`.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{SecretInfo, SetSecretRequest};
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Path};
use crate::http::AppState;
use crate::users::model::Principal;

/// Routes of the secrets domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_secrets))
        .routes(routes!(set_secret, delete_secret))
}

/// Every secret's name and timestamps; values are never returned (admins).
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets", security(("bearer" = [])),
    responses((status = 200, body = Vec<SecretInfo>), (status = 403, body = ErrorResponse)))]
async fn list_secrets(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<SecretInfo>>> {
    Ok(Json(state.secrets.list(&principal).await?))
}

/// Sets a secret's value, stored encrypted (admins). Plugins granted this
/// name read it at their next call.
#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("name" = String, Path, description = "1 to 64 of A-Z a-z 0-9 _ - .")),
    request_body = SetSecretRequest,
    responses((status = 200, body = SecretInfo), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse)))]
async fn set_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Json(request): Json<SetSecretRequest>,
) -> Result<Json<SecretInfo>> {
    Ok(Json(state.secrets.set(&principal, &name, request).await?))
}

/// Deletes a secret (admins).
#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn delete_secret(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode> {
    state.secrets.delete(&principal, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
