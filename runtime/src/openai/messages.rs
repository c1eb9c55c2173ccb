//! Anthropic's Messages API over agents: `POST /v1/messages`, streamed or
//! not, for clients built on Anthropic's SDKs. The same mapping as Chat
//! Completions: the request's `system` and messages become the
//! conversation (`tool_use` and `tool_result` blocks included), the agent
//! answers in a run with its own tools in the sandbox, and the client's
//! `tools` come back as `tool_use` blocks with `stop_reason: "tool_use"`.
//! Keys arrive as `x-api-key` (Anthropic's header) or as a bearer token;
//! errors have Anthropic's shape.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::chat::{fold, run_failure, run_headers, start, Folded, HistoryBuilder};
use super::error::ApiError;
use super::translate::{Piece, Translator};
use super::{agent_of, body, client_tool, distinct_tools, sse_of, Batches, CancelOnDrop};
use crate::agents::repo::AgentRow;
use crate::conversations::model::ContentPart;
use crate::error::Error;
use crate::http::AppState;
use crate::providers::ToolDefinition;
use crate::runs::follow::Follower;
use crate::runs::model::{RunError, RunOptions, RunStatus};
use crate::users::model::Principal;

/// An error in Anthropic's shape: `{"type": "error", "error": {"type",
/// "message"}}`.
#[derive(Debug)]
pub struct MessagesError(ApiError);

impl From<ApiError> for MessagesError {
    fn from(e: ApiError) -> Self {
        MessagesError(e)
    }
}

impl From<Error> for MessagesError {
    fn from(e: Error) -> Self {
        MessagesError(e.into())
    }
}

fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        500..=599 => "api_error",
        _ => "invalid_request_error",
    }
}

fn error_body(e: &ApiError) -> Value {
    json!({ "type": "error", "error": { "type": error_type(e.status()), "message": e.body().message } })
}

impl IntoResponse for MessagesError {
    fn into_response(self) -> Response {
        let body = error_body(&self.0);
        let mut response = self.0.into_response();
        *response.body_mut() = axum::body::Body::from(body.to_string());
        response
            .headers_mut()
            .remove(axum::http::header::CONTENT_LENGTH);
        response
    }
}

type MessagesResult<T> = Result<T, MessagesError>;

/// `POST /v1/messages` (fields this server does not use, such as `top_k`
/// or `thinking`, are ignored).
#[derive(Debug, Deserialize, ToSchema)]
pub struct MessagesRequest {
    /// `agent:<name>`.
    pub model: String,
    /// Most tokens per model answer.
    pub max_tokens: u32,
    /// `user` and `assistant` messages, content as a string or blocks
    /// (`text`, `image`, `tool_use`, `tool_result`).
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// Instructions after the agent's: a string or text blocks.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub system: Option<Value>,
    /// Tools the client runs itself (`name`, `description`, `input_schema`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `{"type": "auto"}` (default) or `{"type": "none"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Stream Anthropic's events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Sampling temperature (0 to 1).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Not supported when not empty.
    #[serde(default)]
    pub stop_sequences: Option<Vec<String>>,
}

/// Text of Anthropic content: a string or text blocks.
fn text_blocks(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut out = String::new();
            for (i, b) in blocks.iter().enumerate() {
                match (
                    b.get("type").and_then(Value::as_str),
                    b.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{param}.{i}"),
                            format!("{param}.{i}: expected a text block"),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::invalid(
            param,
            format!("{param}: expected a string or a list of blocks"),
        )),
    }
}

/// The request's messages as a history.
fn history(system: Option<&Value>, messages: &[Value]) -> Result<HistoryBuilder, ApiError> {
    let mut h = HistoryBuilder::default();
    if let Some(system) = system.filter(|s| !s.is_null()) {
        h.system(text_blocks(system, "system")?)?;
    }
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages: at least one message is required",
        ));
    }
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages.{i}");
        let content = m.get("content").unwrap_or(&Value::Null);
        let blocks: Vec<Value> = match content {
            Value::String(s) => vec![json!({ "type": "text", "text": s })],
            Value::Array(b) => b.clone(),
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.content"),
                    format!("{param}.content: Field required"),
                ))
            }
        };
        match m.get("role").and_then(Value::as_str) {
            Some("user") => {
                let mut parts = Vec::new();
                for (j, b) in blocks.iter().enumerate() {
                    let at = format!("{param}.content.{j}");
                    match b.get("type").and_then(Value::as_str) {
                        Some("tool_result") => {
                            let id = b
                                .get("tool_use_id")
                                .and_then(Value::as_str)
                                .unwrap_or_default();
                            let text = match b.get("content") {
                                None | Some(Value::Null) => String::new(),
                                Some(c) => text_blocks(c, &format!("{at}.content"))?,
                            };
                            let is_error =
                                b.get("is_error").and_then(Value::as_bool).unwrap_or(false);
                            h.tool_result(id, text, is_error, &at)?;
                        }
                        Some("text") => parts.push(ContentPart::Text {
                            text: b
                                .get("text")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                        }),
                        Some("image") => {
                            let source = &b["source"];
                            let url = match source.get("type").and_then(Value::as_str) {
                                Some("url") => {
                                    source.get("url").and_then(Value::as_str).map(str::to_owned)
                                }
                                Some("base64") => match (
                                    source.get("media_type").and_then(Value::as_str),
                                    source.get("data").and_then(Value::as_str),
                                ) {
                                    (Some(t), Some(d)) => Some(format!("data:{t};base64,{d}")),
                                    _ => None,
                                },
                                _ => None,
                            };
                            match url {
                                Some(url) => parts.push(ContentPart::Image { url }),
                                None => {
                                    return Err(ApiError::invalid(
                                        &at,
                                        format!(
                                            "{at}.source: expected a url or base64 image source"
                                        ),
                                    ))
                                }
                            }
                        }
                        _ => {
                            return Err(ApiError::invalid(
                                &at,
                                format!("{at}: expected a text, image or tool_result block"),
                            ))
                        }
                    }
                }
                if !parts.is_empty() {
                    let parts = super::chat::user_parts(
                        &json!(parts
                            .iter()
                            .map(|p| match p {
                                ContentPart::Text { text } =>
                                    json!({ "type": "text", "text": text }),
                                ContentPart::Image { url } =>
                                    json!({ "type": "image_url", "image_url": { "url": url } }),
                                _ => Value::Null,
                            })
                            .collect::<Vec<_>>()),
                        &format!("{param}.content"),
                    )?;
                    h.user(parts)?;
                }
            }
            Some("assistant") => {
                let mut text = String::new();
                let mut calls = Vec::new();
                for (j, b) in blocks.iter().enumerate() {
                    match b.get("type").and_then(Value::as_str) {
                        Some("text") => {
                            text.push_str(b.get("text").and_then(Value::as_str).unwrap_or_default())
                        }
                        Some("tool_use") => calls.push((
                            b.get("id")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            b.get("name")
                                .and_then(Value::as_str)
                                .unwrap_or_default()
                                .to_owned(),
                            b.get("input").cloned().unwrap_or(json!({})).to_string(),
                        )),
                        Some("thinking" | "redacted_thinking") => {}
                        _ => {
                            return Err(ApiError::invalid(
                                &format!("{param}.content.{j}"),
                                format!("{param}.content.{j}: expected a text or tool_use block"),
                            ))
                        }
                    }
                }
                h.assistant(text, calls, &format!("{param}.content"))?;
            }
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    format!("{param}.role: Input should be 'user' or 'assistant'"),
                ))
            }
        }
    }
    Ok(h)
}

/// The client's tools in Anthropic's form.
fn tools(
    agent: &AgentRow,
    raw: Option<&[Value]>,
    choice: Option<&Value>,
) -> Result<Vec<ToolDefinition>, ApiError> {
    match choice.and_then(|c| c.get("type")).and_then(Value::as_str) {
        None | Some("auto") => {}
        Some("none") => return Ok(Vec::new()),
        Some(other) => {
            return Err(ApiError::unsupported(
                "tool_choice",
                format!("tool_choice: '{other}' is not supported for agents; use 'auto' or 'none'"),
            ))
        }
    }
    let mut out = Vec::new();
    for (i, t) in raw.unwrap_or_default().iter().enumerate() {
        if let Some(kind) = t
            .get("type")
            .and_then(Value::as_str)
            .filter(|k| *k != "custom")
        {
            return Err(ApiError::unsupported(
                &format!("tools.{i}.type"),
                format!("tools.{i}: server tools of type '{kind}' are not supported; agents bring their own"),
            ));
        }
        out.push(client_tool(
            Some(agent),
            &format!("tools.{i}"),
            t.get("name").and_then(Value::as_str),
            t.get("description").and_then(Value::as_str),
            t.get("input_schema"),
        )?);
    }
    distinct_tools(&out, "tools")?;
    Ok(out)
}

/// The caller by `x-api-key` (Anthropic's header) or a bearer token.
async fn caller(
    state: &AppState,
    principal: Result<Principal, Error>,
    headers: &HeaderMap,
) -> MessagesResult<Principal> {
    if let Some(key) = headers.get("x-api-key") {
        let key = key
            .to_str()
            .map_err(|_| Error::Unauthorized("malformed x-api-key header".to_owned()))?;
        return Ok(state.users.authenticate(key.trim()).await?);
    }
    Ok(principal?)
}

fn stop_reason(folded: &Folded, error: Option<&RunError>) -> &'static str {
    match folded.finish_reason(error) {
        "tool_calls" => "tool_use",
        "length" => "max_tokens",
        _ => "end_turn",
    }
}

fn tool_use(id: &str, name: &str, arguments: &str) -> Value {
    json!({ "type": "tool_use", "id": id, "name": name,
            "input": serde_json::from_str::<Value>(arguments).unwrap_or(json!({})) })
}

/// Creates a message with an agent.
#[utoipa::path(post, path = "/v1/messages", tag = "openai", security(("bearer" = [])),
    request_body = MessagesRequest,
    responses((status = 200, description = "A `message`, or with `stream: true` a text/event-stream of Anthropic's events", body = Object),
              (status = 400, body = Object), (status = 401, body = Object), (status = 404, body = Object),
              (status = 413, body = Object), (status = 429, body = Object), (status = 500, body = Object)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> MessagesResult<Response> {
    let principal = caller(&state, principal, &headers).await?;
    let request: MessagesRequest = body(raw)?;
    if request.max_tokens == 0 {
        return Err(ApiError::invalid(
            "max_tokens",
            "max_tokens: Input should be greater than or equal to 1",
        )
        .into());
    }
    if request
        .temperature
        .is_some_and(|t| !(0.0..=1.0).contains(&t))
    {
        return Err(ApiError::invalid(
            "temperature",
            "temperature: Input should be between 0 and 1",
        )
        .into());
    }
    if request
        .stop_sequences
        .as_ref()
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::unsupported(
            "stop_sequences",
            "stop_sequences: not supported for agents",
        )
        .into());
    }
    let agent = agent_of(&state, &principal, &request.model).await?;
    let client_tools = tools(
        &agent,
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
    )?;
    let (history, input) = history(request.system.as_ref(), &request.messages)?.finish()?;
    let mut stored = Map::new();
    stored.insert("source".into(), json!("messages"));
    let options = RunOptions {
        client_tools,
        temperature: request.temperature,
        max_output_tokens: Some(request.max_tokens),
        ..RunOptions::default()
    };
    let translator = Translator::new(Some(&options));
    // A stream holds one of the caller's stream slots while it is open
    // (taken before anything is stored).
    let slot = if request.stream.unwrap_or(false) {
        Some(state.runs.stream_slot(&principal)?)
    } else {
        None
    };
    let run = start(
        &state, &principal, &agent, None, stored, history, input, options,
    )
    .await?;
    let headers = run_headers(&run);
    let mut reader = MessageReader {
        follower: Follower::new(state.runs.clone(), run.id, 0),
        translator,
        folded: Folded::default(),
        guard: CancelOnDrop::new(state.runs.clone(), principal.clone(), run.id),
        id: format!("msg_{}", run.id.simple()),
        run: run.id,
        model: request.model.clone(),
        started: false,
        text_block: None,
        blocks: 0,
        open_call: None,
    };
    if request.stream.unwrap_or(false) {
        return Ok((headers, sse_of(reader, slot)).into_response());
    }
    let error = match fold(
        &mut reader.follower,
        &mut reader.translator,
        &mut reader.folded,
        &mut reader.guard,
        reader.run,
    )
    .await
    {
        Ok(error) => error,
        Err(e) => return Ok((headers, MessagesError(e)).into_response()),
    };
    let f = &reader.folded;
    let mut content = Vec::new();
    if !f.text.is_empty() || f.calls.is_empty() {
        content.push(json!({ "type": "text", "text": f.text }));
    }
    content.extend(
        f.calls
            .iter()
            .map(|c| tool_use(&c.id, &c.name, &c.arguments)),
    );
    Ok((
        headers,
        axum::Json(json!({
            "id": reader.id, "type": "message", "role": "assistant", "model": reader.model,
            "content": content, "stop_reason": stop_reason(f, error.as_ref()), "stop_sequence": null,
            "usage": { "input_tokens": f.input_tokens, "output_tokens": f.output_tokens },
        })),
    )
        .into_response())
}

/// A run being read as Anthropic's events.
struct MessageReader {
    follower: Follower,
    translator: Translator,
    folded: Folded,
    guard: CancelOnDrop,
    id: String,
    run: Uuid,
    model: String,
    started: bool,
    /// The index of the open text block.
    text_block: Option<usize>,
    /// Blocks started so far.
    blocks: usize,
    /// The open tool_use block: (client call index, block index).
    open_call: Option<(usize, usize)>,
}

fn event(kind: &str, mut data: Value) -> Event {
    data["type"] = json!(kind);
    Event::default().event(kind).data(data.to_string())
}

impl Batches for MessageReader {
    async fn next(&mut self) -> (Vec<Event>, bool) {
        self.step().await
    }
}

impl MessageReader {
    fn close(&mut self, out: &mut Vec<Event>) {
        if let Some(i) = self.text_block.take() {
            out.push(event("content_block_stop", json!({ "index": i })));
        }
        if let Some((_, i)) = self.open_call.take() {
            out.push(event("content_block_stop", json!({ "index": i })));
        }
    }

    async fn step(&mut self) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(event("message_start", json!({ "message": {
                "id": self.id, "type": "message", "role": "assistant", "content": [], "model": self.model,
                "stop_reason": null, "stop_sequence": null, "usage": { "input_tokens": 0, "output_tokens": 0 } } })));
            return (out, true);
        }
        let Some(e) = self.follower.next().await else {
            return (out, false);
        };
        for piece in self.translator.push(&e) {
            match piece {
                Piece::Text { step, text } => {
                    if self.open_call.is_some() {
                        self.close(&mut out);
                    }
                    let delta = self.folded.text_delta(step, &text);
                    let index = match self.text_block {
                        Some(i) => i,
                        None => {
                            let i = self.blocks;
                            self.blocks += 1;
                            self.text_block = Some(i);
                            out.push(event("content_block_start", json!({ "index": i, "content_block": { "type": "text", "text": "" } })));
                            i
                        }
                    };
                    out.push(event(
                        "content_block_delta",
                        json!({ "index": index, "delta": { "type": "text_delta", "text": delta } }),
                    ));
                }
                Piece::CallStart {
                    index, id, name, ..
                } => {
                    self.close(&mut out);
                    let block = self.blocks;
                    self.blocks += 1;
                    self.open_call = Some((index, block));
                    out.push(event("content_block_start", json!({ "index": block,
                        "content_block": { "type": "tool_use", "id": id, "name": name, "input": {} } })));
                }
                Piece::CallArgs {
                    index, fragment, ..
                } => {
                    if let Some((_, block)) = self.open_call.filter(|(i, _)| *i == index) {
                        out.push(event(
                            "content_block_delta",
                            json!({ "index": block,
                            "delta": { "type": "input_json_delta", "partial_json": fragment } }),
                        ));
                    }
                }
                Piece::Parked => {
                    self.guard.disarm();
                    let e = run_failure(self.run, RunStatus::RequiresAction, None);
                    out.push(event("error", error_body(&e)));
                    return (out, false);
                }
                other => {
                    let done = matches!(other, Piece::Done { .. });
                    if let Some(outcome) = self.folded.push(self.run, other) {
                        self.guard.disarm();
                        match outcome {
                            Err(e) => out.push(event("error", error_body(&e))),
                            Ok(error) => {
                                self.close(&mut out);
                                let f = &self.folded;
                                out.push(event("message_delta", json!({
                                    "delta": { "stop_reason": stop_reason(f, error.as_ref()), "stop_sequence": null },
                                    "usage": { "input_tokens": f.input_tokens, "output_tokens": f.output_tokens } })));
                                out.push(event("message_stop", json!({})));
                            }
                        }
                        return (out, false);
                    }
                    debug_assert!(!done);
                }
            }
        }
        (out, true)
    }
}
