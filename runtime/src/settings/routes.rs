//! HTTP handlers of `/api/v1/admin/settings`.

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ServerSettings, UpdateSettingsRequest};
use crate::error::{ErrorResponse, Result};
use crate::http::extract::Json;
use crate::http::AppState;
use crate::users::model::Principal;

/// Routes of the settings domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_settings, update_settings))
}

/// The server settings (admin).
#[utoipa::path(get, path = "/api/v1/admin/settings", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = ServerSettings), (status = 403, body = ErrorResponse)))]
async fn get_settings(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<ServerSettings>> {
    Ok(Json(state.settings.get(&principal).await?))
}

/// Change server settings (admin).
#[utoipa::path(patch, path = "/api/v1/admin/settings", tag = "admin", security(("bearer" = [])),
    request_body = UpdateSettingsRequest,
    responses((status = 200, body = ServerSettings), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse)))]
async fn update_settings(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<UpdateSettingsRequest>,
) -> Result<Json<ServerSettings>> {
    Ok(Json(state.settings.update(&principal, request).await?))
}
