//! HTTP handlers: the OAuth protocol's endpoints (`/.well-known/...`,
//! `/oauth/...`, shaped by their RFCs, not in the OpenAPI document) and the
//! console's `/api/v1/oauth/...`.

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::*;
use super::{public_base, Authorize, OAuthError};
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Path, PeerAddr};
use crate::http::AppState;
use crate::users::model::Principal;

/// The protocol's endpoints.
pub fn protocol_router() -> axum::Router<AppState> {
    axum::Router::new()
        .route(
            "/.well-known/oauth-protected-resource",
            get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(resource_metadata),
        )
        .route(
            "/.well-known/oauth-authorization-server",
            get(server_metadata),
        )
        .route("/oauth/register", post(register))
        .route("/oauth/authorize", get(authorize))
        .route("/oauth/token", post(token))
        .route("/oauth/revoke", post(revoke))
}

/// The console's endpoints.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_request, decide_request))
        .routes(routes!(list_grants))
        .routes(routes!(revoke_grant))
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    response
}

async fn resource_metadata(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let base = public_base(state.oauth.config(), &headers)?;
    Ok(axum::Json(state.oauth.resource_metadata(&base)).into_response())
}

async fn server_metadata(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    let base = public_base(state.oauth.config(), &headers)?;
    Ok(axum::Json(state.oauth.server_metadata(&base)).into_response())
}

async fn register(State(state): State<AppState>, peer: PeerAddr, body: Bytes) -> Response {
    if let Err(wait) = state.oauth.limits().register(peer.0) {
        let mut response = OAuthError::new(
            "temporarily_unavailable",
            "too many client registrations from this address; try again later",
        )
        .into_response();
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        retry_after(&mut response, wait);
        return response;
    }
    let request: RegistrationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return OAuthError::new(
                "invalid_client_metadata",
                format!("the body is not a client registration: {e}"),
            )
            .into_response()
        }
    };
    match state.oauth.register(request).await {
        Ok(client) => no_store((StatusCode::CREATED, axum::Json(client)).into_response()),
        Err(e) => e.into_response(),
    }
}

/// `Retry-After` in whole seconds (at least 1).
fn retry_after(response: &mut Response, wait: std::time::Duration) {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from(secs.max(1)),
    );
}

/// A page for an authorization request that cannot go back to its client.
fn refusal(message: &str) -> Response {
    let escaped = message
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>Authorization refused · Orchestra</title><link rel=\"stylesheet\" href=\"/assets/app.css\"></head>\
         <body><main class=\"refusal\"><h1>This authorization request was refused</h1><p>{escaped}</p>\
         <p>Nothing was shared. Close this page and try connecting again from the application.</p>\
         <p><a href=\"/\">Open Orchestra</a></p></main></body></html>"
    );
    let mut response = (StatusCode::BAD_REQUEST, Html(page)).into_response();
    crate::console::secure_page(response.headers_mut());
    no_store(response)
}

async fn authorize(
    State(state): State<AppState>,
    peer: PeerAddr,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(wait) = state.oauth.limits().authorize(peer.0) {
        let mut response = refusal(
            "Too many authorization requests came from your address; wait a moment and try again.",
        );
        *response.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        retry_after(&mut response, wait);
        return response;
    }
    let params: AuthorizeParams = match serde_urlencoded::from_str(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return refusal(&format!("The request's parameters are malformed: {e}.")),
    };
    let base = match public_base(state.oauth.config(), &headers) {
        Ok(base) => base,
        Err(e) => return refusal(&e.to_string()),
    };
    match state.oauth.authorize(params, &base).await {
        Ok(Authorize::Consent(id)) => {
            no_store(Redirect::to(&format!("/oauth/consent?request={id}")).into_response())
        }
        Ok(Authorize::Redirect(url)) => no_store(Redirect::to(&url).into_response()),
        Err(message) => refusal(&message),
    }
}

fn form(body: &Bytes) -> std::result::Result<TokenForm, OAuthError> {
    serde_urlencoded::from_bytes(body).map_err(|e| {
        OAuthError::new(
            "invalid_request",
            format!("the body must be application/x-www-form-urlencoded: {e}"),
        )
    })
}

async fn token(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let outcome = async {
        let form = form(&body)?;
        let base = public_base(state.oauth.config(), &headers)?;
        state.oauth.token(form, &headers, &base).await
    }
    .await;
    match outcome {
        Ok(tokens) => no_store(axum::Json(tokens).into_response()),
        Err(e) => e.into_response(),
    }
}

async fn revoke(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let outcome = async {
        let form = form(&body)?;
        state.oauth.revoke(form, &headers).await
    }
    .await;
    match outcome {
        Ok(()) => no_store(StatusCode::OK.into_response()),
        Err(e) => e.into_response(),
    }
}

/// A client's request for your approval (the consent page reads it).
#[utoipa::path(get, path = "/api/v1/oauth/requests/{id}", tag = "oauth", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 200, body = ConsentRequest), (status = 401, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn get_request(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<ConsentRequest>> {
    Ok(Json(state.oauth.pending(&principal, id).await?))
}

/// Approve (optionally with fewer scopes) or deny a client's request;
/// answers where the browser goes next. A console session only.
#[utoipa::path(post, path = "/api/v1/oauth/requests/{id}", tag = "oauth", security(("bearer" = [])),
    params(("id" = Uuid, Path)), request_body = ConsentDecision,
    responses((status = 200, body = ConsentOutcome), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn decide_request(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(decision): Json<ConsentDecision>,
) -> Result<Json<ConsentOutcome>> {
    Ok(Json(state.oauth.decide(&principal, id, decision).await?))
}

/// The MCP clients you approved.
#[utoipa::path(get, path = "/api/v1/oauth/grants", tag = "oauth", security(("bearer" = [])),
    responses((status = 200, body = Vec<GrantResponse>), (status = 401, body = ErrorResponse)))]
async fn list_grants(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<GrantResponse>>> {
    Ok(Json(state.oauth.grants(&principal).await?))
}

/// Revokes an approved client: its tokens stop working at once.
#[utoipa::path(delete, path = "/api/v1/oauth/grants/{id}", tag = "oauth", security(("bearer" = [])),
    params(("id" = Uuid, Path)),
    responses((status = 204), (status = 404, body = ErrorResponse)))]
async fn revoke_grant(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.oauth.revoke_grant(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
