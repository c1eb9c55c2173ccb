//! HTTP handlers of `/api/v1/tools`.

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{InvokeRequest, InvokeResponse, ToolInfo};
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Path};
use crate::http::AppState;
use crate::users::model::Principal;

/// Routes of the tools domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_tools))
        .routes(routes!(get_tool))
        .routes(routes!(invoke_tool))
}

/// Every tool you may use, with its schemas.
#[utoipa::path(get, path = "/api/v1/tools", tag = "tools", security(("bearer" = [])),
    responses((status = 200, body = Vec<ToolInfo>), (status = 401, body = ErrorResponse)))]
async fn list_tools(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<ToolInfo>>> {
    Ok(Json(state.tools.list(&principal)?))
}

/// One tool.
#[utoipa::path(get, path = "/api/v1/tools/{name}", tag = "tools", security(("bearer" = [])),
    params(("name" = String, Path, description = "Catalogue name, e.g. calculator__evaluate")),
    responses((status = 200, body = ToolInfo), (status = 404, body = ErrorResponse)))]
async fn get_tool(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<ToolInfo>> {
    Ok(Json(state.tools.get(&principal, &name)?))
}

/// Run a tool directly, in the sandbox, with these arguments (audited).
/// Invalid arguments answer 400; a tool that fails, crashes, times out or
/// returns an invalid result answers 422 `tool_failed` with the reason.
#[utoipa::path(post, path = "/api/v1/tools/{name}/invoke", tag = "tools", security(("bearer" = [])),
    params(("name" = String, Path, description = "Catalogue name")), request_body = InvokeRequest,
    responses((status = 200, body = InvokeResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 422, body = ErrorResponse)))]
async fn invoke_tool(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Json(request): Json<InvokeRequest>,
) -> Result<Json<InvokeResponse>> {
    Ok(Json(state.tools.invoke(&principal, &name, request).await?))
}
