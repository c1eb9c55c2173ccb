//! The one error type every service returns, and its HTTP form.
//!
//! Services speak in domain terms (`Error::NotFound`, `Error::Conflict`); the
//! `IntoResponse` impl turns each variant into the status-code table of the API
//! and the single `ErrorResponse {error, message, details}` body. Internal errors
//! are logged with their cause and answered with a generic message, so nothing
//! about the server's internals leaks to a client.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

/// The body of every error answer.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct ErrorResponse {
    /// A stable, machine-readable code such as `validation_error` or `not_found`.
    pub error: String,
    /// A human-readable explanation.
    pub message: String,
    /// Structured context (the offending field, the current version, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

/// Every way a request can fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Malformed or invalid input (400).
    #[error("{message}")]
    Validation {
        message: String,
        details: Option<Value>,
    },
    /// Missing, invalid or expired credentials (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed (403).
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    /// The resource does not exist, or belongs to someone else (404).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A duplicate, or a concurrent change that lost its race (409).
    #[error("{message}")]
    Conflict {
        message: String,
        details: Option<Value>,
    },
    /// The request body is larger than the configured limit (413).
    #[error("request body too large")]
    PayloadTooLarge,
    /// Well-formed input that breaks a business rule (422).
    #[error("{message}")]
    Unprocessable { code: &'static str, message: String },
    /// A tool ran and failed, crashed, timed out or returned an invalid result (422).
    #[error("{0}")]
    ToolFailed(crate::sandbox::ToolError),
    /// A quota is spent (429).
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        details: Option<Value>,
    },
    /// A dependency (the database) is unavailable (503).
    #[error("{0}")]
    Unavailable(String),
    /// A bug or an unexpected failure (500). The cause is logged, never returned.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

/// Shorthand for service results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A 400 with a message.
    pub fn validation(message: impl Into<String>) -> Self {
        Error::Validation {
            message: message.into(),
            details: None,
        }
    }

    /// A 400 naming the offending field.
    pub fn invalid_field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Error::Validation {
            details: Some(serde_json::json!({ "field": field, "reason": message })),
            message: format!("{field}: {message}"),
        }
    }

    /// A 409 with a message.
    pub fn conflict(message: impl Into<String>) -> Self {
        Error::Conflict {
            message: message.into(),
            details: None,
        }
    }

    /// A 403 for a missing permission.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Error::Forbidden {
            code: "forbidden",
            message: message.into(),
        }
    }

    /// A 422 for a broken business rule.
    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Error::Unprocessable {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::Validation { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden { .. } => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict { .. } => StatusCode::CONFLICT,
            Error::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unprocessable { .. } | Error::ToolFailed(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The body for this error.
    pub fn body(&self) -> ErrorResponse {
        let (error, details) = match self {
            Error::Validation { details, .. } => ("validation_error", details.clone()),
            Error::Unauthorized(_) => ("unauthorized", None),
            Error::Forbidden { code, .. } => (*code, None),
            Error::NotFound(_) => ("not_found", None),
            Error::Conflict { details, .. } => ("conflict", details.clone()),
            Error::PayloadTooLarge => ("payload_too_large", None),
            Error::Unprocessable { code, .. } => (*code, None),
            Error::ToolFailed(e) => ("tool_failed", serde_json::to_value(e).ok()),
            Error::TooManyRequests { code, details, .. } => (*code, details.clone()),
            Error::Unavailable(_) => ("service_unavailable", None),
            Error::Internal(_) => ("internal_error", None),
        };
        let message = match self {
            Error::Internal(_) => "an internal error occurred".to_owned(),
            other => other.to_string(),
        };
        ErrorResponse {
            error: error.to_owned(),
            message,
            details,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                Error::conflict("a resource with these unique fields already exists")
            }
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::error!(error = %err, "database unavailable");
                Error::Unavailable("the database is unavailable".to_owned())
            }
            _ => Error::Internal(anyhow::Error::new(err).context("database query failed")),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        if let Error::Internal(cause) = &self {
            tracing::error!(error = format!("{cause:#}"), "internal error");
        }
        let body = self.body();
        let mut response = (self.status(), axum::Json(&body)).into_response();
        // A 429 that knows when to come back says so.
        if let Some(secs) = body
            .details
            .as_ref()
            .and_then(|d| d.get("retry_after_secs"))
            .and_then(serde_json::Value::as_u64)
        {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}
