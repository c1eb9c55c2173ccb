//! HTTP handler of `/api/v1/audit-log`.

use axum::extract::State;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AuditEntry, AuditFilter};
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Query};
use crate::http::AppState;
use crate::pagination::{Page, PageParams};
use crate::users::model::Principal;

/// Routes of the audit domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_audit_log))
}

/// The audit log, newest first (admin).
#[utoipa::path(get, path = "/api/v1/audit-log", tag = "admin", security(("bearer" = [])),
    params(AuditFilter, PageParams),
    responses((status = 200, body = Page<AuditEntry>), (status = 403, body = ErrorResponse)))]
async fn list_audit_log(
    State(state): State<AppState>,
    principal: Principal,
    Query(filter): Query<AuditFilter>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<AuditEntry>>> {
    Ok(Json(state.audit.list(&principal, filter, page).await?))
}
