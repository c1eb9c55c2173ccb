//! HTTP handlers of runs, their event streams, approvals and usage.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::follow::Follower;
use super::model::*;
use super::usage::{UsageLimits, UsageQuery, UsageReport};
use crate::error::{Error, ErrorResponse, Result};
use crate::http::extract::{Json, Path, Query};
use crate::http::AppState;
use crate::pagination::{Page, PageParams};
use crate::users::model::Principal;

/// Routes of the runs domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_runs, create_run))
        .routes(routes!(get_run))
        .routes(routes!(cancel_run))
        .routes(routes!(run_events))
        .routes(routes!(approve_run))
        .routes(routes!(answer_elicitation))
        .routes(routes!(usage_report))
        .routes(routes!(get_usage_limits, set_usage_limits))
}

/// Start a run: the agent answers (the message, if given, is added first).
/// Answers 202 at once; follow it with `GET /api/v1/runs/{id}/events`.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/runs", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id")), request_body = RunInput,
    responses((status = 202, body = RunResponse), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
              (status = 422, body = ErrorResponse), (status = 429, body = ErrorResponse)))]
async fn create_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(input): Json<RunInput>,
) -> Result<(StatusCode, Json<RunResponse>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.runs.create(&principal, id, input).await?),
    ))
}

/// A conversation's runs, newest first.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/runs", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id"), RunFilter, PageParams),
    responses((status = 200, body = Page<RunResponse>), (status = 404, body = ErrorResponse)))]
async fn list_runs(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(filter): Query<RunFilter>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<RunResponse>>> {
    Ok(Json(state.runs.list(&principal, id, filter, page).await?))
}

/// One run: status, steps, usage, error, pending approvals; with
/// `wait_secs`, once it has stopped (a long poll).
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id"), RunWait),
    responses((status = 200, body = RunResponse), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn get_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(wait): Query<RunWait>,
) -> Result<Json<RunResponse>> {
    Ok(Json(match wait.wait_secs {
        None | Some(0) => state.runs.get(&principal, id).await?,
        Some(secs) if secs > MAX_WAIT_SECS => {
            return Err(Error::invalid_field(
                "wait_secs",
                format!("must be at most {MAX_WAIT_SECS}"),
            ))
        }
        Some(secs) => {
            state
                .runs
                .wait(&principal, id, Duration::from_secs(secs))
                .await?
        }
    }))
}

/// Cancel a run (202: a running run stops at its worker's next step).
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")),
    responses((status = 202, body = RunResponse), (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse)))]
async fn cancel_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<(StatusCode, Json<RunResponse>)> {
    Ok((
        StatusCode::ACCEPTED,
        Json(state.runs.cancel(&principal, id).await?),
    ))
}

/// Answer a question that an MCP server asked during one of the run's tool
/// calls (MCP elicitation): accept with the fields asked for, decline, or
/// cancel. The call, waiting meanwhile, goes on with the answer.
#[utoipa::path(post, path = "/api/v1/runs/{id}/elicitations/{elicitation_id}", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id"), ("elicitation_id" = Uuid, Path, description = "Question id")),
    request_body = ElicitationAnswer,
    responses((status = 200, body = RunResponse), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn answer_elicitation(
    State(state): State<AppState>,
    principal: Principal,
    Path((id, elicitation)): Path<(Uuid, Uuid)>,
    Json(input): Json<ElicitationAnswer>,
) -> Result<Json<RunResponse>> {
    Ok(Json(
        state
            .runs
            .answer_elicitation(&principal, id, elicitation, input)
            .await?,
    ))
}

/// Decide on tool calls waiting for approval: accept, edit the arguments,
/// reject with a reason, or answer in place of the tool.
#[utoipa::path(post, path = "/api/v1/runs/{id}/approvals", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id")), request_body = ApprovalInput,
    responses((status = 200, body = RunResponse), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn approve_run(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(input): Json<ApprovalInput>,
) -> Result<Json<RunResponse>> {
    Ok(Json(state.runs.approve(&principal, id, input).await?))
}

/// The run's story as Server-Sent Events (`id` = seq, `event` = type,
/// `data` = JSON). Reconnect with `Last-Event-ID` (or `?after=`) to get
/// every event after it; the stream ends after the `done` event. A stream
/// opened after the `done` event of an ended run answers 204, which tells
/// an `EventSource` to stop reconnecting. A user holds at most
/// `runs.max_streams_per_user` streams open at once (429 beyond).
#[utoipa::path(get, path = "/api/v1/runs/{id}/events", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Run id"), EventCursor,
           ("Last-Event-ID" = Option<i64>, Header, minimum = 0, description = "The last event received")),
    responses((status = 200, description = "text/event-stream of RunEvent", body = RunEvent),
              (status = 204, description = "The run has ended and every event was received"),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 429, body = ErrorResponse)))]
async fn run_events(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(cursor): Query<EventCursor>,
    headers: HeaderMap,
) -> Result<Response> {
    let header = match headers.get("last-event-id") {
        None => None,
        Some(v) => Some(parse_last_event_id(v.as_bytes())?),
    };
    let after = header.or(cursor.after).unwrap_or(0);
    if after < 0 {
        return Err(Error::invalid_field("after", "must not be negative"));
    }
    let open = state.runs.open_events(&principal, id).await?;
    let id = open.id;
    if open.ended && state.runs.events(id, after, 1).await?.is_empty() {
        // Nothing will ever follow: a reconnecting EventSource stops here.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let stream = futures_util::stream::unfold(
        Streamer {
            follower: Follower::new(state.runs.clone(), id, after),
            _slot: open.slot,
        },
        |mut s| async move { s.next().await.map(|event| (Ok::<_, Infallible>(event), s)) },
    );
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// A `Last-Event-ID` header: an event id of a run's stream (a sequence
/// number, 0 or more), or a 400.
pub fn parse_last_event_id(value: &[u8]) -> Result<i64> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .ok_or_else(|| Error::invalid_field("Last-Event-ID", "must be an event id of this stream"))
}

struct Streamer {
    follower: Follower,
    _slot: crate::runs::StreamSlot,
}

impl Streamer {
    async fn next(&mut self) -> Option<Event> {
        let e = self.follower.next().await?;
        let data = serde_json::to_string(&e.data).unwrap_or_else(|_| "null".into());
        Some(
            Event::default()
                .id(e.seq.to_string())
                .event(e.kind)
                .data(data),
        )
    }
}

/// Tokens and runs over a time range, grouped by user, agent, model or day.
/// Admins see everyone's (or one user's); others see their own.
#[utoipa::path(get, path = "/api/v1/usage", tag = "runs", security(("bearer" = [])),
    params(UsageQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorResponse)))]
async fn usage_report(
    State(state): State<AppState>,
    principal: Principal,
    Query(query): Query<UsageQuery>,
) -> Result<Json<UsageReport>> {
    Ok(Json(state.runs.usage().report(&principal, query).await?))
}

/// A user's usage limits (admins; anyone for their own).
#[utoipa::path(get, path = "/api/v1/users/{id}/usage-limits", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses((status = 200, body = UsageLimits), (status = 403, body = ErrorResponse)))]
async fn get_usage_limits(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<UsageLimits>> {
    Ok(Json(state.runs.usage().limits(&principal, id).await?))
}

/// Set a user's usage limits (admins); new runs past a limit get 429.
#[utoipa::path(put, path = "/api/v1/users/{id}/usage-limits", tag = "runs", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")), request_body = UsageLimits,
    responses((status = 200, body = UsageLimits), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn set_usage_limits(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(limits): Json<UsageLimits>,
) -> Result<Json<UsageLimits>> {
    Ok(Json(
        state
            .runs
            .usage()
            .set_limits(&principal, id, limits)
            .await?,
    ))
}
