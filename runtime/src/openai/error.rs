//! Errors in OpenAI's shape: `{"error": {"message", "type", "param",
//! "code"}}` with OpenAI's status codes, so that the official SDKs raise
//! their own exception types (`AuthenticationError`, `NotFoundError`,
//! `RateLimitError`, ...).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::Error;

/// The body of every error answer of `/v1`.
#[derive(Debug, Serialize, serde::Deserialize, ToSchema)]
pub struct OpenAiErrorResponse {
    /// What went wrong.
    pub error: OpenAiError,
}

/// One error, as OpenAI describes it.
#[derive(Debug, Clone, Serialize, serde::Deserialize, ToSchema)]
pub struct OpenAiError {
    /// A human-readable explanation.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `insufficient_quota`, `requests`, `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter, if one is to blame.
    pub param: Option<String>,
    /// A stable code (`invalid_api_key`, `model_not_found`,
    /// `insufficient_quota`, ...), if there is one.
    pub code: Option<String>,
}

/// An error answer of `/v1`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: OpenAiError,
    retry_after: Option<u64>,
    /// `x-should-retry: false`: the SDKs retry 409, 429 and 5xx by default,
    /// which would start the same run again or hammer a spent quota.
    final_answer: bool,
}

/// Shorthand for handler results.
pub type ApiResult<T> = std::result::Result<T, ApiError>;

impl ApiError {
    /// An error with every field given.
    pub fn new(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error: OpenAiError {
                message: message.into(),
                kind: kind.to_owned(),
                param: None,
                code: None,
            },
            retry_after: None,
            final_answer: false,
        }
    }

    /// A 400 about `param`.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .param(param)
            .code("invalid_value")
    }

    /// A 400 for a parameter or value this server does not support.
    pub fn unsupported(param: &str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
            .param(param)
            .code("unsupported_value")
    }

    /// The 404 of a model id that is none of the caller's.
    pub fn model_not_found(model: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            format!("The model `{model}` does not exist or you do not have access to it."),
        )
        .param("model")
        .code("model_not_found")
    }

    /// With `param` set.
    pub fn param(mut self, param: &str) -> Self {
        self.error.param = Some(param.to_owned());
        self
    }

    /// With `code` set.
    pub fn code(mut self, code: &str) -> Self {
        self.error.code = Some(code.to_owned());
        self
    }

    /// Tells the SDKs not to retry (the request changed something, or
    /// cannot succeed soon).
    pub fn no_retry(mut self) -> Self {
        self.final_answer = true;
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The error object (for an error event inside a stream).
    pub fn body(&self) -> &OpenAiError {
        &self.error
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let body = e.body();
        let field = body
            .details
            .as_ref()
            .and_then(|d| d.get("field"))
            .and_then(|f| f.as_str())
            .map(str::to_owned);
        let retry_after = body
            .details
            .as_ref()
            .and_then(|d| d.get("retry_after_secs"))
            .and_then(serde_json::Value::as_u64);
        let (status, kind, code) = match &e {
            Error::Validation { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            Error::Unauthorized(_) => (
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                Some("invalid_api_key"),
            ),
            Error::Forbidden { code, .. } => {
                (StatusCode::FORBIDDEN, "permission_error", Some(*code))
            }
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found_error", Some("not_found")),
            Error::Conflict { .. } => (
                StatusCode::CONFLICT,
                "invalid_request_error",
                Some("conflict"),
            ),
            Error::PayloadTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
            ),
            Error::Unprocessable { code, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some(*code),
            ),
            Error::ToolFailed(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("tool_failed"),
            ),
            Error::TooManyRequests { code, .. } if *code == "quota_exceeded" => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("insufficient_quota"),
            ),
            Error::TooManyRequests { code, .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "requests", Some(*code))
            }
            Error::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
            Error::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", None),
        };
        let message = match &e {
            Error::Internal(_) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "The server had an error while processing your request.".to_owned()
            }
            _ => body.message,
        };
        // A spent quota comes back tomorrow; the SDKs should not retry it.
        let final_answer =
            matches!(&e, Error::TooManyRequests { code, .. } if *code == "quota_exceeded");
        ApiError {
            status,
            error: OpenAiError {
                message,
                kind: kind.to_owned(),
                param: field,
                code: code.map(str::to_owned),
            },
            retry_after,
            final_answer,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(OpenAiErrorResponse { error: self.error }),
        )
            .into_response();
        let headers = response.headers_mut();
        if let Some(secs) = self.retry_after {
            headers.insert(axum::http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.final_answer {
            headers.insert("x-should-retry", HeaderValue::from_static("false"));
        }
        response
    }
}
