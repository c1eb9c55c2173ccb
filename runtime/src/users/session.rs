//! Browser sessions of the web console: the refresh token lives in an
//! `HttpOnly`, `SameSite=Strict` cookie scoped to `/api/v1/auth/session`,
//! never in the page's reach; the page keeps only the short-lived access
//! token, in memory, and asks this path for a new one when it expires.
//!
//! Cookie-based requests are CSRF-safe three times over: the cookie is
//! `SameSite=Strict` (no cross-site request carries it), every request
//! here needs the `X-Orchestra-Csrf` header (which a cross-origin page can
//! only send after a CORS preflight that this header never passes), and a
//! request whose `Origin` is not this server's own is refused.

use axum::extract::State;
use axum::http::header::{COOKIE, HOST, ORIGIN, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::model::*;
use crate::error::{Error, ErrorResponse, Result};
use crate::http::extract::{Json, PeerAddr};
use crate::http::AppState;
use crate::settings::RegistrationMode;

/// The cookie that holds a console session's refresh token.
pub const COOKIE_NAME: &str = "orchestra_session";
/// The only path the cookie is sent to.
pub const COOKIE_PATH: &str = "/api/v1/auth/session";
/// The header every session request carries.
pub const CSRF_HEADER: &str = "x-orchestra-csrf";

/// A console session's access token (its refresh token is in the cookie).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SessionResponse {
    /// A JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
    /// The signed-in user.
    pub user: UserResponse,
}

/// What the sign-in page needs to know before anyone signs in.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct SetupStatus {
    /// No account exists yet: the first one to register becomes admin.
    pub needs_admin: bool,
    /// Whether anyone may create an account.
    pub registration: RegistrationMode,
}

/// Whether no account exists yet, and the registration setting.
#[utoipa::path(get, path = "/api/v1/auth/setup", tag = "auth",
    responses((status = 200, body = SetupStatus)))]
pub async fn setup_status(State(state): State<AppState>) -> Result<Json<SetupStatus>> {
    Ok(Json(SetupStatus {
        needs_admin: !state.users.any_user().await?,
        registration: state.settings.registration().await?,
    }))
}

/// Sign in from the console: the refresh token is set as an `HttpOnly`
/// cookie, the access token is in the answer. Needs the `X-Orchestra-Csrf`
/// header.
#[utoipa::path(post, path = "/api/v1/auth/session", tag = "auth", request_body = LoginRequest,
    params(("X-Orchestra-Csrf" = String, Header, description = "Any value; proves a same-origin caller")),
    responses((status = 200, body = SessionResponse), (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 429, body = ErrorResponse)))]
pub async fn create_session(
    State(state): State<AppState>,
    PeerAddr(address): PeerAddr,
    headers: HeaderMap,
    Json(request): Json<LoginRequest>,
) -> Result<Response> {
    same_origin(&headers)?;
    let tokens = state.users.login(request, address).await?;
    Ok(with_cookie(StatusCode::OK, tokens, &headers, &state))
}

/// Create an account from the console (the first becomes admin) and sign
/// in, as `POST /api/v1/auth/session` does.
#[utoipa::path(post, path = "/api/v1/auth/session/register", tag = "auth", request_body = RegisterRequest,
    params(("X-Orchestra-Csrf" = String, Header, description = "Any value; proves a same-origin caller")),
    responses((status = 201, body = SessionResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
pub async fn register_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<RegisterRequest>,
) -> Result<Response> {
    same_origin(&headers)?;
    let tokens = state.users.register(request).await?;
    Ok(with_cookie(StatusCode::CREATED, tokens, &headers, &state))
}

/// A new access token for the session in the cookie; the cookie's refresh
/// token is rotated (a replayed one ends the session).
#[utoipa::path(post, path = "/api/v1/auth/session/refresh", tag = "auth",
    params(("X-Orchestra-Csrf" = String, Header, description = "Any value; proves a same-origin caller")),
    responses((status = 200, body = SessionResponse), (status = 401, body = ErrorResponse),
              (status = 403, body = ErrorResponse)))]
pub async fn refresh_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response> {
    same_origin(&headers)?;
    let refresh_token =
        cookie(&headers).ok_or_else(|| Error::Unauthorized("no session: sign in".to_owned()))?;
    match state.users.refresh(RefreshRequest { refresh_token }).await {
        Ok(tokens) => Ok(with_cookie(StatusCode::OK, tokens, &headers, &state)),
        // A dead session's cookie is cleared with the 401.
        Err(e) => {
            let mut response = e.into_response();
            response
                .headers_mut()
                .insert(SET_COOKIE, clear_cookie(&headers));
            Ok(response)
        }
    }
}

/// Sign out: the session's refresh tokens are revoked and the cookie
/// cleared. Succeeds without a session too.
#[utoipa::path(delete, path = "/api/v1/auth/session", tag = "auth",
    params(("X-Orchestra-Csrf" = String, Header, description = "Any value; proves a same-origin caller")),
    responses((status = 204), (status = 403, body = ErrorResponse)))]
pub async fn delete_session(State(state): State<AppState>, headers: HeaderMap) -> Result<Response> {
    same_origin(&headers)?;
    if let Some(refresh_token) = cookie(&headers) {
        match state.users.logout(RefreshRequest { refresh_token }).await {
            Ok(()) | Err(Error::Unauthorized(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, clear_cookie(&headers));
    Ok(response)
}

/// Refuses a request without the CSRF header, or from another origin.
fn same_origin(headers: &HeaderMap) -> Result<()> {
    let refuse = |why: &str| Error::Forbidden {
        code: "csrf",
        message: why.to_owned(),
    };
    if !headers.contains_key(CSRF_HEADER) {
        return Err(refuse("the X-Orchestra-Csrf header is required"));
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok());
        let origin_host = origin
            .to_str()
            .ok()
            .and_then(|o| url::Url::parse(o).ok())
            .map(|u| match u.port() {
                Some(port) => format!("{}:{port}", u.host_str().unwrap_or_default()),
                None => u.host_str().unwrap_or_default().to_owned(),
            });
        if host.is_none() || origin_host.as_deref() != host {
            return Err(refuse("cross-origin session requests are refused"));
        }
    }
    Ok(())
}

/// The refresh token in the request's cookie.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE_NAME)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether the browser reached us over TLS (directly, or through a proxy
/// that says so): the cookie is then `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"));
    let origin = headers
        .get(ORIGIN)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("https://"));
    forwarded || origin
}

fn cookie_header(value: &str, max_age: u64, headers: &HeaderMap) -> HeaderValue {
    let secure = if over_tls(headers) { "; Secure" } else { "" };
    let text = format!(
        "{COOKIE_NAME}={value}; Path={COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
    );
    HeaderValue::from_str(&text).expect("refresh tokens are URL-safe base64")
}

fn clear_cookie(headers: &HeaderMap) -> HeaderValue {
    cookie_header("", 0, headers)
}

fn with_cookie(
    status: StatusCode,
    tokens: TokenResponse,
    headers: &HeaderMap,
    state: &AppState,
) -> Response {
    let cookie = cookie_header(
        &tokens.refresh_token,
        state.config.auth.refresh_token_ttl_secs,
        headers,
    );
    let body = SessionResponse {
        access_token: tokens.access_token,
        token_type: tokens.token_type,
        expires_in: tokens.expires_in,
        user: tokens.user,
    };
    let mut response = (status, Json(body)).into_response();
    response.headers_mut().insert(SET_COOKIE, cookie);
    response
        .headers_mut()
        .insert("cache-control", HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn the_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; orchestra_session=abc_-1; b=2")]);
        assert_eq!(cookie(&h).as_deref(), Some("abc_-1"));
        assert_eq!(cookie(&headers(&[("cookie", "orchestra_session=")])), None);
        assert_eq!(
            cookie(&headers(&[("cookie", "x_orchestra_session=z")])),
            None
        );
    }

    #[test]
    fn cross_origin_and_headerless_requests_are_refused() {
        assert!(same_origin(&headers(&[("host", "a.example:8080")])).is_err());
        let ok = headers(&[
            (CSRF_HEADER, "1"),
            ("host", "a.example:8080"),
            ("origin", "http://a.example:8080"),
        ]);
        assert!(same_origin(&ok).is_ok());
        let evil = headers(&[
            (CSRF_HEADER, "1"),
            ("host", "a.example:8080"),
            ("origin", "http://evil.example"),
        ]);
        assert!(same_origin(&evil).is_err());
        let null = headers(&[
            (CSRF_HEADER, "1"),
            ("host", "a.example"),
            ("origin", "null"),
        ]);
        assert!(same_origin(&null).is_err());
    }

    #[test]
    fn the_cookie_is_secure_over_tls_only() {
        let plain = cookie_header("t", 60, &HeaderMap::new());
        let plain = plain.to_str().unwrap();
        assert!(plain.contains("HttpOnly") && plain.contains("SameSite=Strict"));
        assert!(plain.contains("Path=/api/v1/auth/session") && !plain.contains("Secure"));
        let tls = cookie_header("t", 60, &headers(&[("x-forwarded-proto", "https")]));
        assert!(tls.to_str().unwrap().ends_with("; Secure"));
    }
}
