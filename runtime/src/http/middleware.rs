//! Cross-cutting middleware: request ids and request spans, the request
//! timeout, panic containment, CORS, and the 404/405 fallbacks — each answering
//! with the `ErrorResponse` body.

use std::any::Any;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;

use crate::config::HttpConfig;
use crate::error::{Error, ErrorResponse};

/// The header carrying the request id (taken from the client or generated).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Sets `x-request-id` on the request when the client sent none.
pub fn set_request_id() -> SetRequestIdLayer<MakeRequestUuid> {
    SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid)
}

/// Copies `x-request-id` onto the response.
pub fn propagate_request_id() -> PropagateRequestIdLayer {
    PropagateRequestIdLayer::new(REQUEST_ID)
}

/// A span per request carrying its id, method and path, so every log line of
/// the request names it, and one INFO line per response with status and latency.
pub fn trace() -> TraceLayer<
    tower_http::classify::SharedClassifier<tower_http::classify::ServerErrorsAsFailures>,
    impl Fn(&Request) -> tracing::Span + Clone,
    tower_http::trace::DefaultOnRequest,
    DefaultOnResponse,
> {
    TraceLayer::new_for_http()
        .on_response(
            DefaultOnResponse::new()
                .level(Level::INFO)
                .latency_unit(LatencyUnit::Micros),
        )
        .make_span_with(|req: &Request| {
            let request_id = req
                .headers()
                .get(REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!(
                "request",
                request_id = %request_id,
                method = %req.method(),
                path = %req.uri().path(),
            )
        })
}

/// How long a request may take before it is abandoned.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Every request but those below (`http.request_timeout_secs`).
    pub request: Duration,
    /// `/mcp` requests, whose tool calls have deadlines of their own (an
    /// agent's run: `mcp.agent_timeout_secs`): that deadline and a margin.
    pub mcp: Duration,
    /// The OpenAI-compatible API (`/v1/`): an answer that is not streamed
    /// waits for the agent's run (`runs.max_limits.timeout_secs`), and a
    /// margin.
    pub agent: Duration,
}

/// The most a long poll waits (`GET /api/v1/runs/{id}?wait_secs=`).
const MAX_WAIT_SECS: u64 = crate::runs::model::MAX_WAIT_SECS;

impl Timeouts {
    /// The limit of one request: a long poll gets its wait on top of the
    /// request timeout; an event stream is not limited once its headers are
    /// sent (this layer only waits for them).
    fn of(&self, req: &Request) -> Duration {
        let path = req.uri().path();
        if path == "/mcp" || path.starts_with("/mcp/") {
            return self.mcp.max(self.request);
        }
        if path.starts_with("/v1/") {
            return self.agent.max(self.request);
        }
        if path.starts_with("/api/v1/runs/") {
            let wait = req
                .uri()
                .query()
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|pair| pair.strip_prefix("wait_secs="))
                .and_then(|v| v.parse::<u64>().ok())
                .map_or(0, |w| w.min(MAX_WAIT_SECS));
            return self.request + Duration::from_secs(wait);
        }
        self.request
    }
}

/// Abandons a request that runs longer than its limit ([`Timeouts`]).
pub async fn timeout(State(limits): State<Timeouts>, req: Request, next: Next) -> Response {
    let limit = limits.of(&req);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_secs = limit.as_secs(), "request timed out");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(ErrorResponse {
                    error: "timeout".to_owned(),
                    message: "the request took too long and was abandoned".to_owned(),
                    details: None,
                }),
            )
                .into_response()
        }
    }
}

/// Turns a handler panic into a 500 with the error body; the panic message
/// goes to the log only.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = message, "handler panicked");
    Error::Internal(anyhow::anyhow!("handler panicked")).into_response()
}

/// CORS from the configured origins; none configured means no cross-origin
/// access at all.
pub fn cors(config: &HttpConfig) -> CorsLayer {
    let origins = &config.cors_allowed_origins;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect::<Vec<_>>(),
        )
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers([
            axum::http::header::AUTHORIZATION,
            axum::http::header::CONTENT_TYPE,
            axum::http::header::IF_MATCH,
            REQUEST_ID,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([REQUEST_ID, axum::http::header::ETAG])
        .max_age(Duration::from_secs(600))
}

/// Answer for unknown paths.
pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(ErrorResponse {
            error: "not_found".to_owned(),
            message: "no such endpoint".to_owned(),
            details: None,
        }),
    )
        .into_response()
}

/// Answer for a known path with the wrong method.
pub async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        axum::Json(ErrorResponse {
            error: "method_not_allowed".to_owned(),
            message: "this endpoint does not accept this method".to_owned(),
            details: None,
        }),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use axum::Router;
    use tower::ServiceExt;

    async fn body_json(response: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn slow_requests_are_abandoned_with_an_error_body() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                Timeouts {
                    request: Duration::from_millis(50),
                    mcp: Duration::from_millis(50),
                    agent: Duration::from_millis(50),
                },
                timeout,
            ));
        let response = app
            .oneshot(Request::builder().uri("/slow").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body_json(response).await["error"], "timeout");
    }

    #[test]
    fn long_polls_and_mcp_calls_have_limits_of_their_own() {
        let limits = Timeouts {
            request: Duration::from_secs(30),
            mcp: Duration::from_secs(630),
            agent: Duration::from_secs(630),
        };
        let of = |uri: &str| limits.of(&Request::builder().uri(uri).body(Body::empty()).unwrap());
        assert_eq!(of("/api/v1/agents"), Duration::from_secs(30));
        assert_eq!(of("/v1/chat/completions"), Duration::from_secs(630));
        assert_eq!(of("/api/v1/runs/x?wait_secs=45"), Duration::from_secs(75));
        assert_eq!(
            of("/api/v1/runs/x?a=1&wait_secs=600"),
            Duration::from_secs(90)
        );
        assert_eq!(of("/api/v1/runs/x?wait_secs=soon"), Duration::from_secs(30));
        assert_eq!(of("/api/v1/agents?wait_secs=45"), Duration::from_secs(30));
        assert_eq!(of("/mcp"), Duration::from_secs(630));
    }

    #[tokio::test]
    async fn panics_become_500_without_internals() {
        let app = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("secret internal detail");
                    }
                    "unreachable"
                }),
            )
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                panic_response,
            ));
        let response = app
            .oneshot(Request::builder().uri("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_json(response).await;
        assert_eq!(body["error"], "internal_error");
        assert!(!body.to_string().contains("secret"));
    }
}
