//! What `/mcp` does with a POST body before rmcp sees it: JSON-RPC framing
//! that rmcp leaves out.
//!
//! - A body that is not JSON gets the JSON-RPC parse error (`-32700`), not
//!   an HTTP 415 with text.
//! - A batch (a JSON array) is answered as the caller's protocol revision
//!   says: revision 2025-03-26 (also assumed when no `MCP-Protocol-Version`
//!   header is sent) allows them, and each element is served on its own and
//!   the answers come back together; later revisions removed batches, so
//!   the batch gets `-32600`.
//! - `notifications/cancelled` cancels the call it names in stand-alone mode
//!   too (no `Mcp-Session-Id`), where rmcp ignores notifications: each
//!   in-flight `tools/call` is registered under its caller's credential and
//!   request id, and the notification must come with the same credential.
//!   The registry is this node's: a cancellation reaching another node of a
//!   cluster finds nothing (the client can still close its request).
//! - Tasks of revision 2025-11-25 (see [`super::tasks`]): task-augmented
//!   `tools/call` and the `tasks/*` requests are served here, and rmcp's
//!   answers to `initialize` and `tools/list` gain the `tasks` capability and
//!   the agent tools' `execution.taskSupport`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::host::PublicBase;
use super::tasks;
use crate::http::AppState;
use crate::oauth::model::{GrantedScopes, OAuthClient, Scope};
use crate::users::model::Principal;

/// The one protocol revision whose clients may send batches.
const BATCH_REVISION: &str = "2025-03-26";

/// Elements a batch may hold.
const MAX_BATCH: usize = 64;

/// Cancels one stand-alone `tools/call`; rides in the request's extensions
/// to the host.
#[derive(Clone, Debug, Default)]
pub struct CallCancel(pub CancellationToken);

/// The state of the framing layer.
#[derive(Clone)]
pub struct Framing {
    calls: Arc<Mutex<HashMap<(String, String), CancellationToken>>>,
    limit: usize,
    sessions: bool,
    state: Arc<AppState>,
}

impl Framing {
    /// Framing for bodies up to `limit` bytes; `sessions` when rmcp keeps
    /// sessions (it then honours cancellations inside them itself).
    pub fn new(state: AppState, limit: usize, sessions: bool) -> Framing {
        Framing {
            calls: Arc::default(),
            limit,
            sessions,
            state: Arc::new(state),
        }
    }
}

/// Removes a call from the registry when its response is gone.
struct Registered {
    calls: Arc<Mutex<HashMap<(String, String), CancellationToken>>>,
    key: (String, String),
}

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut calls) = self.calls.lock() {
            calls.remove(&self.key);
        }
    }
}

/// A JSON-RPC error with no result, as an HTTP response.
pub fn jsonrpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response {
    let body = json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": code, "message": message },
    });
    (status, axum::Json(body)).into_response()
}

/// The caller's credential, digested: cancellations are matched within it.
fn caller(headers: &HeaderMap) -> String {
    let credential = headers
        .get(http::header::AUTHORIZATION)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    crate::crypto::sha256_hex(credential)
}

/// The middleware: see the module's documentation.
pub async fn frame(State(framing): State<Framing>, request: Request, next: Next) -> Response {
    if request.method() != http::Method::POST {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, framing.limit).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return jsonrpc_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                Value::Null,
                -32600,
                &format!("Invalid Request: the body exceeds {} bytes", framing.limit),
            )
        }
    };
    let message: Value = match serde_json::from_slice(&bytes) {
        Ok(message) => message,
        Err(e) => {
            return jsonrpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                &format!("Parse error: {e}"),
            )
        }
    };
    let in_session = framing.sessions && parts.headers.contains_key("mcp-session-id");
    if let Some(response) = task_framing(&framing, &parts, &message).await {
        return response;
    }
    if let Some(edit) = task_edit(&parts, &message) {
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let response = next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
        return rewrite(response, &id, edit, framing.limit).await;
    }
    match message {
        Value::Array(batch) => batch_response(&framing, parts, batch, next).await,
        Value::Object(ref object) if !in_session => {
            let method = object.get("method").and_then(Value::as_str);
            if method == Some("notifications/cancelled") {
                if let Some(id) = object.get("params").and_then(|p| p.get("requestId")) {
                    let key = (caller(&parts.headers), id.to_string());
                    let token = framing
                        .calls
                        .lock()
                        .expect("registry lock")
                        .get(&key)
                        .cloned();
                    if let Some(token) = token {
                        tracing::debug!(request = %key.1, "a stand-alone call is cancelled");
                        token.cancel();
                    }
                }
                return next
                    .run(Request::from_parts(parts, Body::from(bytes)))
                    .await;
            }
            let id = object.get("id").filter(|id| !id.is_null());
            if let (Some("tools/call"), Some(scopes)) =
                (method, parts.extensions.get::<GrantedScopes>())
            {
                let name = object
                    .get("params")
                    .and_then(|p| p.get("name"))
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let needed = super::host::required_scope(name);
                if !scopes.allows(needed) {
                    return insufficient_scope(&parts, id.cloned(), needed);
                }
            }
            let (Some("tools/call"), Some(id)) = (method, id) else {
                return next
                    .run(Request::from_parts(parts, Body::from(bytes)))
                    .await;
            };
            let key = (caller(&parts.headers), id.to_string());
            let token = CancellationToken::new();
            {
                let mut calls = framing.calls.lock().expect("registry lock");
                if calls.contains_key(&key) {
                    drop(calls);
                    return jsonrpc_error(
                        StatusCode::BAD_REQUEST,
                        id.clone(),
                        -32600,
                        "Invalid Request: a call with this id is already in flight",
                    );
                }
                calls.insert(key.clone(), token.clone());
            }
            let registered = Registered {
                calls: framing.calls.clone(),
                key,
            };
            parts.extensions.insert(CallCancel(token));
            let response = next
                .run(Request::from_parts(parts, Body::from(bytes)))
                .await;
            // Stays registered while the response streams (progress, then
            // the result).
            let (parts, body) = response.into_parts();
            let body = Body::from_stream(body.into_data_stream().map(move |chunk| {
                let _ = &registered;
                chunk
            }));
            Response::from_parts(parts, body)
        }
        _ => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
    }
}

/// The revision the caller speaks (its `MCP-Protocol-Version` header).
fn revision(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
}

/// Serves the task requests of revision 2025-11-25 (see
/// [`super::tasks`]); `None` for any other message.
async fn task_framing(
    framing: &Framing,
    parts: &http::request::Parts,
    message: &Value,
) -> Option<Response> {
    if revision(parts) != Some(tasks::REVISION) {
        return None;
    }
    let method = message.get("method").and_then(Value::as_str)?;
    let id = message.get("id").filter(|id| !id.is_null())?;
    let augmented = method == "tools/call"
        && message
            .get("params")
            .and_then(|p| p.get("task"))
            .is_some_and(|t| !t.is_null());
    if !augmented
        && !matches!(
            method,
            "tasks/get" | "tasks/result" | "tasks/list" | "tasks/cancel"
        )
    {
        return None;
    }
    let principal = parts.extensions.get::<Principal>()?;
    let scopes = parts.extensions.get::<GrantedScopes>();
    if scopes.is_some_and(|s| !s.allows(Scope::AgentsRun)) {
        return Some(insufficient_scope(
            parts,
            Some(id.clone()),
            Scope::AgentsRun,
        ));
    }
    let caller = tasks::Caller {
        principal,
        scopes,
        client: parts.extensions.get::<OAuthClient>(),
    };
    let answer = tasks::serve(&framing.state, caller, message).await;
    Some((StatusCode::OK, axum::Json(answer)).into_response())
}

/// How rmcp's answer to this message is completed for tasks: the `tasks`
/// capability in `initialize` (when revision 2025-11-25 is agreed), the
/// agent tools' `execution.taskSupport` in `tools/list`.
fn task_edit(parts: &http::request::Parts, message: &Value) -> Option<fn(&mut Value)> {
    match message.get("method").and_then(Value::as_str)? {
        "initialize"
            if message
                .get("params")
                .and_then(|p| p.get("protocolVersion"))
                .and_then(Value::as_str)
                == Some(tasks::REVISION) =>
        {
            Some(|result: &mut Value| {
                if result.get("protocolVersion").and_then(Value::as_str) == Some(tasks::REVISION) {
                    result["capabilities"]["tasks"] = tasks::capability();
                }
            })
        }
        "tools/list" if revision(parts) == Some(tasks::REVISION) => Some(|result: &mut Value| {
            if let Some(tools) = result.get_mut("tools").and_then(Value::as_array_mut) {
                for tool in tools {
                    let agent = tool
                        .get("name")
                        .and_then(Value::as_str)
                        .is_some_and(tasks::supports);
                    if agent {
                        tool["execution"] = json!({ "taskSupport": "optional" });
                    }
                }
            }
        }),
        _ => None,
    }
}

/// Applies `edit` to the result of the answer to request `id` in
/// `response` (a JSON body or an event stream that ends with the answer).
async fn rewrite(response: Response, id: &Value, edit: fn(&mut Value), limit: usize) -> Response {
    let (mut parts, body) = response.into_parts();
    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let bytes = match axum::body::to_bytes(body, limit.max(16 << 20)).await {
        Ok(bytes) => bytes,
        Err(_) => {
            return jsonrpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                id.clone(),
                -32603,
                "Internal error: the answer could not be read",
            )
        }
    };
    let apply = |text: &str| -> Option<String> {
        let mut value: Value = serde_json::from_str(text).ok()?;
        if value.get("id") != Some(id) {
            return None;
        }
        edit(value.get_mut("result")?);
        Some(value.to_string())
    };
    let out = if content_type.starts_with("text/event-stream") {
        let text = String::from_utf8_lossy(&bytes);
        let events: Vec<String> = text
            .split("\n\n")
            .map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|line| line.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                match apply(&data.join("\n")) {
                    Some(edited) => {
                        let mut lines: Vec<String> = event
                            .lines()
                            .filter(|line| !line.starts_with("data:"))
                            .map(str::to_owned)
                            .collect();
                        lines.push(format!("data: {edited}"));
                        lines.join("\n")
                    }
                    None => event.to_owned(),
                }
            })
            .collect();
        Bytes::from(events.join("\n\n"))
    } else {
        match std::str::from_utf8(&bytes).ok().and_then(apply) {
            Some(edited) => Bytes::from(edited),
            None => bytes,
        }
    };
    parts.headers.remove(http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// 403 for a token without the scope a call needs, with the challenge
/// that lets the client ask the user for more (step-up authorization).
fn insufficient_scope(parts: &http::request::Parts, id: Option<Value>, needed: Scope) -> Response {
    let message = format!("insufficient scope: this call needs {}", needed.as_str());
    let mut response = jsonrpc_error(
        StatusCode::FORBIDDEN,
        id.unwrap_or(Value::Null),
        -32600,
        &message,
    );
    if let Some(PublicBase(base)) = parts.extensions.get::<PublicBase>() {
        let granted = parts
            .extensions
            .get::<GrantedScopes>()
            .map(|g| g.0.clone())
            .unwrap_or_default();
        let mut wanted = granted;
        wanted.push(needed);
        let value = crate::oauth::challenge(
            base,
            Some(("insufficient_scope", &message)),
            Some(&Scope::join(&wanted)),
        );
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(http::header::WWW_AUTHENTICATE, value);
        }
    }
    response
}

/// Serves a batch element by element, as revision 2025-03-26 says, or
/// refuses it under a later revision.
async fn batch_response(
    framing: &Framing,
    parts: http::request::Parts,
    batch: Vec<Value>,
    next: Next,
) -> Response {
    let revision = parts
        .headers
        .get("mcp-protocol-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(BATCH_REVISION);
    if revision != BATCH_REVISION {
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            -32600,
            &format!(
                "Invalid Request: JSON-RPC batches are not part of protocol revision {revision} \
                 (only of {BATCH_REVISION}); send one message per request"
            ),
        );
    }
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return jsonrpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            -32600,
            &format!("Invalid Request: a batch holds 1 to {MAX_BATCH} messages"),
        );
    }
    let answers = futures_util::future::join_all(batch.into_iter().map(|element| {
        let next = next.clone();
        let mut headers = parts.headers.clone();
        headers.remove(http::header::CONTENT_LENGTH);
        let (method, uri, version) = (parts.method.clone(), parts.uri.clone(), parts.version);
        // The principal, among others.
        let extensions = parts.extensions.clone();
        let framing = framing.clone();
        async move {
            let id = element.get("id").cloned().unwrap_or(Value::Null);
            let is_request = element.get("method").is_some() && !id.is_null();
            if !element.is_object() {
                return vec![error_value(
                    Value::Null,
                    -32600,
                    "Invalid Request: a batch element must be an object",
                )];
            }
            if element.get("method").and_then(Value::as_str) == Some("initialize") {
                return vec![error_value(
                    id,
                    -32600,
                    "Invalid Request: initialize cannot be part of a batch",
                )];
            }
            let mut request = Request::new(Body::from(element.to_string()));
            *request.method_mut() = method;
            *request.uri_mut() = uri;
            *request.version_mut() = version;
            *request.headers_mut() = headers;
            *request.extensions_mut() = extensions;
            // Each element goes through the same framing (cancellation
            // registry included), never as a batch again.
            let response = Box::pin(frame(State(framing), request, next)).await;
            let status = response.status();
            let content_type = response
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap_or_default();
            let mut answers = answers_in(&content_type, &body);
            if answers.is_empty() && is_request {
                answers.push(error_value(
                    id,
                    -32603,
                    &format!(
                        "Internal error: no answer ({status}): {}",
                        String::from_utf8_lossy(&body)
                            .chars()
                            .take(200)
                            .collect::<String>()
                    ),
                ));
            }
            answers
        }
    }))
    .await;
    let answers: Vec<Value> = answers.into_iter().flatten().collect();
    if answers.is_empty() {
        return StatusCode::ACCEPTED.into_response();
    }
    (StatusCode::OK, axum::Json(Value::Array(answers))).into_response()
}

fn error_value(id: Value, code: i64, message: &str) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } })
}

/// The JSON-RPC answers (results and errors) in one element's response: a
/// JSON body, or the `data` of an event stream's events.
fn answers_in(content_type: &str, body: &Bytes) -> Vec<Value> {
    let is_answer = |v: &Value| {
        v.get("id").is_some() && (v.get("result").is_some() || v.get("error").is_some())
    };
    if content_type.starts_with("text/event-stream") {
        let text = String::from_utf8_lossy(body);
        let mut answers = Vec::new();
        for event in text.split("\n\n") {
            let data: Vec<&str> = event
                .lines()
                .filter_map(|line| line.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if data.is_empty() {
                continue;
            }
            if let Ok(value) = serde_json::from_str::<Value>(&data.join("\n")) {
                if is_answer(&value) {
                    answers.push(value);
                }
            }
        }
        return answers;
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(value) if is_answer(&value) => vec![value],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_from_json_and_event_streams() {
        let json = Bytes::from_static(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#);
        assert_eq!(answers_in("application/json", &json).len(), 1);
        let sse = Bytes::from_static(
            b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n\
              id: 2\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"error\":{\"code\":-1,\"message\":\"x\"}}\n\n",
        );
        let answers = answers_in("text/event-stream", &sse);
        assert_eq!(answers.len(), 1);
        assert_eq!(answers[0]["id"], 7);
        assert!(answers_in("text/plain", &Bytes::from_static(b"nope")).is_empty());
    }
}
