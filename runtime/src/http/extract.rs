//! Extractors for cross-cutting concerns: JSON bodies, query strings and path
//! parameters whose rejections become `ErrorResponse` 4xx answers, and the
//! authenticated [`Principal`]. A handler that takes a `Principal` cannot be
//! reached without valid credentials.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};

use crate::error::Error;
use crate::http::AppState;
use crate::users::model::Principal;

/// A JSON body; malformed JSON, wrong types, a missing content type and an
/// oversized body each get their own clear 4xx. Every request body of the
/// API is an object: an array is refused (serde would otherwise read a
/// struct of optional fields from `[]`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Error;

    async fn from_request(req: axum::extract::Request, state: &S) -> Result<Self, Error> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_json);
        if !json {
            return Err(Error::validation(
                "expected a JSON body with Content-Type: application/json",
            ));
        }
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| match e.status() {
                StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge,
                _ => Error::validation(format!("reading the body: {}", e.body_text())),
            })?;
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(Error::validation("the body must be a JSON object"));
        }
        let axum::Json(value) = axum::Json::<T>::from_bytes(&bytes)?;
        Ok(Json(value))
    }
}

/// Whether a `Content-Type` is `application/json` or any `+json` type, as
/// axum's `Json` accepts.
fn is_json(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence.split_once('/') {
        Some((kind, sub)) => {
            kind.eq_ignore_ascii_case("application")
                && (sub.eq_ignore_ascii_case("json") || sub.to_ascii_lowercase().ends_with("+json"))
        }
        None => false,
    }
}
/// A query string.
#[derive(Debug, Clone, Copy, Default, FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(Error))]
pub struct Query<T>(pub T);

/// Path parameters.
#[derive(Debug, Clone, Copy, FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(Error))]
pub struct Path<T>(pub T);

impl<T: serde::Serialize> axum::response::IntoResponse for Json<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self.0).into_response()
    }
}

impl From<JsonRejection> for Error {
    fn from(rejection: JsonRejection) -> Self {
        match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => Error::PayloadTooLarge,
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                Error::validation("expected a JSON body with Content-Type: application/json")
            }
            _ => match rejection {
                JsonRejection::JsonSyntaxError(e) => {
                    Error::validation(format!("malformed JSON: {}", source_text(&e)))
                }
                JsonRejection::JsonDataError(e) => Error::validation(source_text(&e)),
                other => Error::validation(other.body_text()),
            },
        }
    }
}

/// The innermost cause of a rejection (serde's message with its path).
fn source_text(e: &dyn std::error::Error) -> String {
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

impl From<QueryRejection> for Error {
    fn from(rejection: QueryRejection) -> Self {
        Error::validation(format!("invalid query string: {}", source_text(&rejection)))
    }
}

impl From<PathRejection> for Error {
    fn from(rejection: PathRejection) -> Self {
        Error::validation(format!(
            "invalid path parameter: {}",
            source_text(&rejection)
        ))
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| Error::Unauthorized("missing Authorization header".to_owned()))?;
        let value = header
            .to_str()
            .map_err(|_| Error::Unauthorized("malformed Authorization header".to_owned()))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Error::Unauthorized("expected Authorization: Bearer <token or API key>".to_owned())
            })?;
        state.users.authenticate(token).await
    }
}

/// The version in an `If-Match` header (`"3"`, `W/"3"` or `3`), if any.
#[derive(Debug, Clone, Copy)]
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Error> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let invalid = || Error::validation("If-Match must hold the version to update, e.g. \"3\"");
        let text = value.to_str().map_err(|_| invalid())?.trim();
        let text = text.strip_prefix("W/").unwrap_or(text).trim_matches('"');
        text.parse::<i64>()
            .map(|v| IfMatch(Some(v)))
            .map_err(|_| invalid())
    }
}

/// An `ETag` header value for a version.
pub fn etag(version: i64) -> [(header::HeaderName, String); 1] {
    [(header::ETAG, format!("\"{version}\""))]
}

/// The client's address: the TCP peer (behind a reverse proxy, the proxy's).
/// `None` where the server was not started with connection info.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub Option<std::net::IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for PeerAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(PeerAddr(
            parts
                .extensions
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|info| info.0.ip()),
        ))
    }
}
