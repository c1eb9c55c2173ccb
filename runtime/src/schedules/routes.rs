//! HTTP handlers of `/api/v1/schedules`.

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

/// Routes of the schedules domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_schedules, create_schedule))
        .routes(routes!(get_schedule, patch_schedule, delete_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .routes(routes!(list_firings))
}

/// Your schedules (admins: everyone's), oldest first.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", security(("bearer" = [])),
    params(PageParams),
    responses((status = 200, body = Page<ScheduleResponse>)))]
async fn list_schedules(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<ScheduleResponse>>> {
    Ok(Json(state.schedules.list(&principal, page).await?))
}

/// Create a schedule: one of your agents runs with a message at set times
/// (cron in a time zone, an interval, or once), each firing a durable run.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules", security(("bearer" = [])),
    request_body = ScheduleInput,
    responses((status = 201, body = ScheduleResponse), (status = 404, body = ErrorResponse),
              (status = 422, body = ErrorResponse)))]
async fn create_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<ScheduleInput>,
) -> Result<(StatusCode, Json<ScheduleResponse>)> {
    let schedule = state.schedules.create(&principal, input).await?;
    Ok((StatusCode::CREATED, Json(schedule)))
}

/// One schedule, with its next firing times.
#[utoipa::path(get, path = "/api/v1/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleResponse)))]
async fn get_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<ScheduleResponse>> {
    Ok(Json(state.schedules.get(&principal, id).await?))
}

/// Change a schedule; new times count from now.
#[utoipa::path(patch, path = "/api/v1/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = SchedulePatch,
    responses((status = 200, body = ScheduleResponse), (status = 422, body = ErrorResponse)))]
async fn patch_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(patch): Json<SchedulePatch>,
) -> Result<Json<ScheduleResponse>> {
    Ok(Json(state.schedules.patch(&principal, id, patch).await?))
}

/// Delete a schedule and its history (its runs stay).
#[utoipa::path(delete, path = "/api/v1/schedules/{id}", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path)), responses((status = 204)))]
async fn delete_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.schedules.delete(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pause a schedule.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/pause", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleResponse), (status = 409, body = ErrorResponse)))]
async fn pause_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<ScheduleResponse>> {
    Ok(Json(
        state.schedules.set_paused(&principal, id, true).await?,
    ))
}

/// Resume a paused (or stopped) schedule from its next time after now.
#[utoipa::path(post, path = "/api/v1/schedules/{id}/resume", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ScheduleResponse), (status = 409, body = ErrorResponse)))]
async fn resume_schedule(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<ScheduleResponse>> {
    Ok(Json(
        state.schedules.set_paused(&principal, id, false).await?,
    ))
}

/// A schedule's firings, newest first, with their runs and outcomes.
#[utoipa::path(get, path = "/api/v1/schedules/{id}/firings", tag = "schedules", security(("bearer" = [])),
    params(("id" = Uuid, Path), PageParams),
    responses((status = 200, body = Page<FiringResponse>)))]
async fn list_firings(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<FiringResponse>>> {
    Ok(Json(state.schedules.firings(&principal, id, page).await?))
}
