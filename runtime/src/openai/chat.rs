//! `POST /v1/chat/completions`: OpenAI's Chat Completions over an agent.
//! The client's messages become a new conversation (its last user message
//! the run's input), the agent answers in a run, and the answer comes back
//! as one completion or as chunks in OpenAI's data-only SSE, ending with
//! `data: [DONE]`.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ApiResult, OpenAiErrorResponse};
use super::translate::{ClientCall, Piece, Translator};
use super::{
    agent_of, body, caller, client_tool, distinct_tools, offers_tools, sse_of, Batches,
    CancelOnDrop,
};
use crate::agents::repo::AgentRow;
use crate::conversations::model::{ContentInput, ContentPart, MessageRole};
use crate::conversations::repo::NewHistoryMessage;
use crate::error::Error;
use crate::http::AppState;
use crate::providers::ToolDefinition;
use crate::runs::follow::Follower;
use crate::runs::model::{RunError, RunInput, RunOptions, RunResponse, RunStatus};
use crate::users::model::Principal;

/// Most messages in one request.
const MAX_MESSAGES: usize = 2000;

/// `POST /v1/chat/completions` (fields of OpenAI's request that this server
/// does not use, such as `user`, `seed` or `logprobs`, are ignored).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// `agent:<name>` (see `GET /v1/models`).
    pub model: String,
    /// The conversation: `system`/`developer`, `user`, `assistant` and
    /// `tool` messages in OpenAI's form.
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
    /// Tools the client runs itself (`{"type": "function", "function":
    /// {...}}`), offered to the model beside the agent's own.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `auto` (default) or `none` (the client's tools are not offered).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Whether the model may ask for several tool calls at once.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// `{"include_usage": true}` adds the usage chunk.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub stream_options: Option<Value>,
    /// Sampling temperature (0 to 2) in place of the agent's.
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Most tokens per model answer.
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Most tokens per model answer (OpenAI's newer name).
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Only 1.
    #[serde(default)]
    pub n: Option<u32>,
    /// Only `{"type": "text"}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// Up to 16 string pairs, stored as the conversation's metadata;
    /// `conversation` names the conversation (its title).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// The checked parts of a request that are shared with the Responses API.
pub struct Sampling {
    pub temperature: Option<f64>,
    pub max_output_tokens: Option<u32>,
    pub parallel_tool_calls: Option<bool>,
}

/// Checks sampling settings.
pub fn check_sampling(
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    max_tokens_param: &str,
) -> ApiResult<()> {
    if let Some(t) = temperature {
        if !(0.0..=2.0).contains(&t) {
            return Err(ApiError::invalid(
                "temperature",
                format!("Invalid 'temperature': decimal above maximum value. Expected a value <= 2 and >= 0, but got {t} instead."),
            ));
        }
    }
    if max_tokens == Some(0) {
        return Err(ApiError::invalid(
            max_tokens_param,
            format!("Invalid '{max_tokens_param}': integer below minimum value. Expected a value >= 1, but got 0 instead."),
        ));
    }
    Ok(())
}

/// Checks OpenAI metadata (at most 16 pairs of strings, keys up to 64
/// characters, values up to 512).
pub fn check_metadata(metadata: &Map<String, Value>) -> ApiResult<()> {
    if metadata.len() > 16 {
        return Err(ApiError::invalid(
            "metadata",
            "Invalid 'metadata': too many properties. Expected an object with at most 16 properties.",
        ));
    }
    for (k, v) in metadata {
        let ok = k.chars().count() <= 64 && v.as_str().is_some_and(|s| s.chars().count() <= 512);
        if !ok {
            return Err(ApiError::invalid(
                &format!("metadata.{k}"),
                "Invalid 'metadata': keys are strings of at most 64 characters and values strings of at most 512.",
            ));
        }
    }
    Ok(())
}

/// The text of OpenAI content (Chat Completions or Responses): a string,
/// or text parts.
pub fn text_content(content: &Value, param: &str) -> ApiResult<String> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut out = String::new();
            for (i, p) in parts.iter().enumerate() {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text" | "input_text" | "output_text"), Some(t)) => out.push_str(t),
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{param}[{i}]"),
                            format!("Invalid '{param}[{i}]': expected a text content part."),
                        ))
                    }
                }
            }
            Ok(out)
        }
        _ => Err(ApiError::invalid(
            param,
            format!("Invalid '{param}': expected a string or an array of content parts."),
        )),
    }
}

/// A user message's parts: text and images.
pub fn user_parts(content: &Value, param: &str) -> ApiResult<Vec<ContentPart>> {
    let parts = match content {
        Value::String(s) => vec![ContentPart::Text { text: s.clone() }],
        Value::Array(items) => {
            let mut parts = Vec::with_capacity(items.len());
            for (i, p) in items.iter().enumerate() {
                let kind = p.get("type").and_then(Value::as_str);
                let part = match kind {
                    Some("text" | "input_text") => p
                        .get("text")
                        .and_then(Value::as_str)
                        .map(|t| ContentPart::Text { text: t.to_owned() }),
                    Some("image_url") => p
                        .pointer("/image_url/url")
                        .or_else(|| p.get("image_url"))
                        .and_then(Value::as_str)
                        .map(|u| ContentPart::Image { url: u.to_owned() }),
                    Some("input_image") => p
                        .get("image_url")
                        .and_then(Value::as_str)
                        .map(|u| ContentPart::Image { url: u.to_owned() }),
                    _ => None,
                };
                match part {
                    Some(part) => parts.push(part),
                    None => {
                        return Err(ApiError::invalid(
                            &format!("{param}[{i}]"),
                            format!(
                                "Invalid '{param}[{i}]': expected a text or image content part."
                            ),
                        ))
                    }
                }
            }
            parts
        }
        _ => {
            return Err(ApiError::invalid(
                param,
                format!("Invalid '{param}': expected a string or an array of content parts."),
            ))
        }
    };
    // The same rules as a message posted to a conversation.
    crate::conversations::model::MessageInput {
        role: MessageRole::User,
        content: ContentInput::Parts(parts.clone()),
        metadata: Map::new(),
    }
    .into_parts()
    .map_err(|e| ApiError::invalid(param, format!("Invalid '{param}': {e}")))?;
    Ok(parts)
}

/// A history being built from a client's messages: the tool calls of the
/// last assistant message that still wait for their results.
#[derive(Default)]
pub struct HistoryBuilder {
    pub messages: Vec<NewHistoryMessage>,
    /// (call id, tool name) of calls not answered yet.
    open_calls: Vec<(String, String)>,
    /// Where the open calls were asked for.
    open_at: String,
}

impl HistoryBuilder {
    fn push(&mut self, role: MessageRole, content: Vec<ContentPart>) {
        self.messages.push(NewHistoryMessage {
            role: role.as_str(),
            content,
            metadata: Map::new(),
        });
    }

    /// Refuses a new turn while tool calls are unanswered.
    pub fn require_answered(&self) -> ApiResult<()> {
        if self.open_calls.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = self.open_calls.iter().map(|(id, _)| id.as_str()).collect();
        Err(ApiError::invalid(
            &self.open_at,
            format!(
                "An assistant message with 'tool_calls' must be followed by tool messages responding to each 'tool_call_id'. The following tool_call_ids did not have response messages: {}",
                ids.join(", ")
            ),
        ))
    }

    /// A system (or developer) message.
    pub fn system(&mut self, text: String) -> ApiResult<()> {
        self.require_answered()?;
        if !text.trim().is_empty() {
            self.push(MessageRole::System, vec![ContentPart::Text { text }]);
        }
        Ok(())
    }

    /// A user message.
    pub fn user(&mut self, parts: Vec<ContentPart>) -> ApiResult<()> {
        self.require_answered()?;
        self.push(MessageRole::User, parts);
        Ok(())
    }

    /// An assistant message with optional text and tool calls
    /// (id, name, JSON arguments text).
    pub fn assistant(
        &mut self,
        text: String,
        calls: Vec<(String, String, String)>,
        param: &str,
    ) -> ApiResult<()> {
        self.require_answered()?;
        let mut parts = Vec::new();
        if !text.is_empty() || calls.is_empty() {
            parts.push(ContentPart::Text { text });
        }
        for (i, (id, name, arguments)) in calls.into_iter().enumerate() {
            let args: Value =
                match serde_json::from_str(&arguments) {
                    Ok(v @ Value::Object(_)) => v,
                    _ => return Err(ApiError::invalid(
                        &format!("{param}[{i}].function.arguments"),
                        "Invalid tool call arguments: expected a JSON object encoded as a string.",
                    )),
                };
            if id.is_empty() || self.open_calls.iter().any(|(o, _)| *o == id) {
                return Err(ApiError::invalid(
                    &format!("{param}[{i}].id"),
                    "Each tool call needs an id of its own.",
                ));
            }
            self.open_calls.push((id.clone(), name.clone()));
            parts.push(ContentPart::ToolCall {
                id,
                name,
                arguments: args,
            });
        }
        self.open_at = param.to_owned();
        self.push(MessageRole::Assistant, parts);
        Ok(())
    }

    /// One more tool call of the assistant (a Responses `function_call`
    /// item): added to the assistant message just before it, if any.
    pub fn add_call(
        &mut self,
        id: &str,
        name: &str,
        arguments: &str,
        param: &str,
    ) -> ApiResult<()> {
        let joins = self.messages.last().is_some_and(|m| {
            m.role == MessageRole::Assistant.as_str()
                && self.open_calls.len()
                    == m.content
                        .iter()
                        .filter(|p| matches!(p, ContentPart::ToolCall { .. }))
                        .count()
        });
        if !joins {
            return self.assistant(
                String::new(),
                vec![(id.to_owned(), name.to_owned(), arguments.to_owned())],
                param,
            );
        }
        let args: Value = match serde_json::from_str(arguments) {
            Ok(v @ Value::Object(_)) => v,
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.arguments"),
                    "Invalid tool call arguments: expected a JSON object encoded as a string.",
                ))
            }
        };
        if id.is_empty() || self.open_calls.iter().any(|(o, _)| o == id) {
            return Err(ApiError::invalid(
                &format!("{param}.call_id"),
                "Each tool call needs an id of its own.",
            ));
        }
        self.open_calls.push((id.to_owned(), name.to_owned()));
        let last = self.messages.last_mut().expect("checked above");
        // A text-only placeholder goes once the message has calls.
        last.content
            .retain(|p| !matches!(p, ContentPart::Text { text } if text.is_empty()));
        last.content.push(ContentPart::ToolCall {
            id: id.to_owned(),
            name: name.to_owned(),
            arguments: args,
        });
        Ok(())
    }

    /// A tool's result for an open call.
    pub fn tool_result(
        &mut self,
        call_id: &str,
        content: String,
        is_error: bool,
        param: &str,
    ) -> ApiResult<()> {
        let Some(pos) = self.open_calls.iter().position(|(id, _)| id == call_id) else {
            return Err(ApiError::invalid(
                param,
                format!("Invalid parameter: a tool result must respond to a preceding tool call; no open tool call has the id {call_id:?}."),
            ));
        };
        let (call_id, name) = self.open_calls.remove(pos);
        self.push(
            MessageRole::Tool,
            vec![ContentPart::ToolResult {
                call_id,
                name,
                content,
                is_error,
                images: Vec::new(),
            }],
        );
        Ok(())
    }

    /// Marks the calls of an assistant message already stored as open.
    pub fn expect_results(&mut self, calls: Vec<(String, String)>, at: &str) {
        self.open_calls = calls;
        self.open_at = at.to_owned();
    }

    /// The history, and the run's input: the last message when it is the
    /// user's.
    pub fn finish(mut self) -> ApiResult<(Vec<NewHistoryMessage>, Option<Vec<ContentPart>>)> {
        self.require_answered()?;
        let input = match self.messages.last() {
            Some(m) if m.role == MessageRole::User.as_str() => {
                self.messages.pop().map(|m| m.content)
            }
            _ => None,
        };
        Ok((self.messages, input))
    }
}

/// The client's messages as a history.
fn history(messages: &[Value]) -> ApiResult<HistoryBuilder> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.",
        ));
    }
    if messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid(
            "messages",
            format!("Invalid 'messages': array too long. Expected an array with maximum length {MAX_MESSAGES}."),
        ));
    }
    let mut h = HistoryBuilder::default();
    for (i, m) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = m.get("role").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid(
                &format!("{param}.role"),
                format!("Missing required parameter: '{param}.role'."),
            )
        })?;
        let content = m.get("content").unwrap_or(&Value::Null);
        match role {
            "system" | "developer" => h.system(text_content(content, &format!("{param}.content"))?)?,
            "user" => h.user(user_parts(content, &format!("{param}.content"))?)?,
            "assistant" => {
                let text = match content {
                    Value::Null => String::new(),
                    other => text_content(other, &format!("{param}.content"))?,
                };
                let mut calls = Vec::new();
                if let Some(list) = m.get("tool_calls").filter(|v| !v.is_null()) {
                    let Some(list) = list.as_array() else {
                        return Err(ApiError::invalid(&format!("{param}.tool_calls"), "Invalid 'tool_calls': expected an array."));
                    };
                    for (j, c) in list.iter().enumerate() {
                        let f = &c["function"];
                        match (c.get("id").and_then(Value::as_str), f.get("name").and_then(Value::as_str)) {
                            (Some(id), Some(name)) => calls.push((
                                id.to_owned(),
                                name.to_owned(),
                                f.get("arguments").and_then(Value::as_str).unwrap_or("{}").to_owned(),
                            )),
                            _ => {
                                return Err(ApiError::invalid(
                                    &format!("{param}.tool_calls[{j}]"),
                                    "Invalid tool call: expected an id and a function name.",
                                ))
                            }
                        }
                    }
                }
                if text.is_empty() && calls.is_empty() && content.is_null() {
                    return Err(ApiError::invalid(
                        &format!("{param}.content"),
                        "Invalid 'content': an assistant message needs content or tool_calls.",
                    ));
                }
                h.assistant(text, calls, &format!("{param}.tool_calls"))?
            }
            "tool" => {
                let id = m.get("tool_call_id").and_then(Value::as_str).ok_or_else(|| {
                    ApiError::invalid(
                        &format!("{param}.tool_call_id"),
                        format!("Missing required parameter: '{param}.tool_call_id'."),
                    )
                })?;
                let text = text_content(content, &format!("{param}.content"))?;
                h.tool_result(id, text, false, &param)?
            }
            other => {
                return Err(ApiError::invalid(
                    &format!("{param}.role"),
                    format!("Invalid value: '{other}'. Supported values are: 'system', 'developer', 'user', 'assistant' and 'tool'."),
                ))
            }
        }
    }
    Ok(h)
}

/// The client's tools in Chat Completions form.
fn tools(
    agent: Option<&AgentRow>,
    raw: Option<&[Value]>,
    choice: Option<&Value>,
) -> ApiResult<Vec<ToolDefinition>> {
    if !offers_tools(choice)? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for (i, t) in raw.unwrap_or_default().iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                &format!("{param}.type"),
                format!("Invalid value for '{param}.type': supported values are: 'function'."),
            ));
        }
        let f = &t["function"];
        if !f.is_object() {
            return Err(ApiError::invalid(
                &format!("{param}.function"),
                format!("Missing required parameter: '{param}.function'."),
            ));
        }
        out.push(client_tool(
            agent,
            &format!("{param}.function"),
            f.get("name").and_then(Value::as_str),
            f.get("description").and_then(Value::as_str),
            f.get("parameters"),
        )?);
    }
    distinct_tools(&out, "tools")?;
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
/// Starts the run of a request already checked: imports the history and
/// creates the run; on failure nothing stays stored.
pub async fn start(
    state: &AppState,
    principal: &Principal,
    agent: &AgentRow,
    title: Option<String>,
    metadata: Map<String, Value>,
    history: Vec<NewHistoryMessage>,
    input: Option<Vec<ContentPart>>,
    options: RunOptions,
) -> ApiResult<RunResponse> {
    let conversation = state
        .conversations
        .import(principal, agent, title, metadata, &history)
        .await?;
    let created = state
        .runs
        .create(
            principal,
            conversation.id,
            RunInput {
                message: input.map(ContentInput::Parts),
                limits: None,
                on_active: None,
                options: Some(options),
                id: None,
            },
        )
        .await;
    match created {
        Ok(run) => Ok(run),
        Err(e) => {
            if let Err(d) = state.conversations.delete(principal, conversation.id).await {
                tracing::warn!(conversation = %conversation.id, error = %d, "removing the conversation of a refused request failed");
            }
            Err(e.into())
        }
    }
}

/// A completion's id.
fn completion_id(run: Uuid) -> String {
    format!("chatcmpl-{}", run.simple())
}

/// Headers that lead from an answer to its conversation and run.
pub fn run_headers(run: &RunResponse) -> [(&'static str, HeaderValue); 2] {
    [
        (
            "x-orchestra-conversation-id",
            HeaderValue::from_str(&run.conversation_id.to_string())
                .expect("a uuid is a header value"),
        ),
        (
            "x-orchestra-run-id",
            HeaderValue::from_str(&run.id.to_string()).expect("a uuid is a header value"),
        ),
    ]
}

/// The error a failed, cancelled or parked run gives its client.
pub fn run_failure(run: Uuid, status: RunStatus, error: Option<&RunError>) -> ApiError {
    match status {
        RunStatus::Cancelled => ApiError::new(StatusCode::CONFLICT, "invalid_request_error", "The run was cancelled.")
            .code("cancelled")
            .no_retry(),
        RunStatus::RequiresAction => ApiError::new(
            StatusCode::CONFLICT,
            "invalid_request_error",
            format!(
                "The agent is waiting for a person to approve its tool calls: decide at POST /api/v1/runs/{run}/approvals, then read GET /api/v1/runs/{run}."
            ),
        )
        .code("requires_action")
        .no_retry(),
        _ => {
            let (code, message) = error
                .map(|e| (e.code.as_str(), e.message.as_str()))
                .unwrap_or(("internal", "the run failed"));
            let status = if code.starts_with("provider") {
                StatusCode::BAD_GATEWAY
            } else {
                StatusCode::INTERNAL_SERVER_ERROR
            };
            ApiError::new(status, "server_error", format!("The agent's run failed ({code}): {message}"))
                .code(code)
                .no_retry()
        }
    }
}

/// Everything a finished answer needs, folded from pieces.
#[derive(Default)]
pub struct Folded {
    pub text: String,
    last_text_step: Option<usize>,
    pub calls: Vec<ClientCall>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub finish: Option<String>,
}

impl Folded {
    /// The text to add for a piece of step `step` (a blank line between
    /// the texts of two answers).
    pub fn text_delta(&mut self, step: usize, text: &str) -> String {
        let sep = matches!(self.last_text_step, Some(s) if s != step);
        self.last_text_step = Some(step);
        let delta = if sep {
            format!("\n\n{text}")
        } else {
            text.to_owned()
        };
        self.text.push_str(&delta);
        delta
    }

    pub fn finish_reason(&self, error: Option<&RunError>) -> &'static str {
        if !self.calls.is_empty() {
            "tool_calls"
        } else if self.finish.as_deref() == Some("length")
            || error.is_some_and(|e| e.code == "max_tokens" || e.code == "max_steps")
        {
            "length"
        } else {
            "stop"
        }
    }

    /// Folds one piece; a run that ended (or parked) gives its outcome.
    pub fn push(&mut self, run: Uuid, piece: Piece) -> Option<ApiResult<Option<RunError>>> {
        match piece {
            Piece::Text { step, text } => {
                self.text_delta(step, &text);
            }
            Piece::StepEnd { calls, .. } => self.calls = calls,
            Piece::Usage {
                input_tokens,
                output_tokens,
                finish_reason,
            } => {
                self.input_tokens = input_tokens;
                self.output_tokens = output_tokens;
                self.finish = finish_reason;
            }
            Piece::Parked => return Some(Err(run_failure(run, RunStatus::RequiresAction, None))),
            Piece::Done { status, error } => {
                if status != RunStatus::Completed && !ends_short(error.as_ref()) {
                    return Some(Err(run_failure(run, status, error.as_ref())));
                }
                return Some(Ok(error));
            }
            Piece::CallStart { .. } | Piece::CallArgs { .. } => {}
        }
        None
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.input_tokens + self.output_tokens,
            "prompt_tokens_details": { "cached_tokens": 0 },
            "completion_tokens_details": { "reasoning_tokens": 0 },
        })
    }
}

/// A run failure that still makes an answer: limits cut it short.
pub fn ends_short(error: Option<&RunError>) -> bool {
    error.is_some_and(|e| e.code == "max_tokens" || e.code == "max_steps")
}

/// Creates a chat completion with an agent.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "openai", security(("bearer" = [])),
    request_body = ChatCompletionRequest,
    responses((status = 200, description = "A `chat.completion`, or with `stream: true` a text/event-stream of `chat.completion.chunk`s ending with `data: [DONE]`", body = Object),
              (status = 400, body = OpenAiErrorResponse), (status = 401, body = OpenAiErrorResponse),
              (status = 403, body = OpenAiErrorResponse), (status = 404, body = OpenAiErrorResponse),
              (status = 409, body = OpenAiErrorResponse), (status = 413, body = OpenAiErrorResponse),
              (status = 429, body = OpenAiErrorResponse), (status = 500, body = OpenAiErrorResponse),
              (status = 502, body = OpenAiErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let principal = caller(principal)?;
    let request: ChatCompletionRequest = body(raw)?;
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::unsupported(
            "n",
            "Unsupported value: 'n' must be 1 for agents.",
        ));
    }
    match request
        .response_format
        .as_ref()
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        None | Some("text") => {}
        Some(other) => {
            return Err(ApiError::unsupported(
                "response_format",
                format!(
                "Unsupported value: response_format of type '{other}' is not supported for agents."
            ),
            ))
        }
    }
    let max_tokens = request.max_completion_tokens.or(request.max_tokens);
    check_sampling(request.temperature, max_tokens, "max_completion_tokens")?;
    let metadata = request.metadata.clone().unwrap_or_default();
    check_metadata(&metadata)?;
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if let Some((provider, model)) = super::gateway::provider_model(&state, &request.model) {
        let client_tools = tools(None, request.tools.as_deref(), request.tool_choice.as_ref())?;
        let (history, input) = history(&request.messages)?.finish()?;
        return super::gateway::complete(
            &state,
            &principal,
            super::gateway::Call {
                provider,
                model,
                model_id: &request.model,
                history,
                input,
                tools: client_tools,
                temperature: request.temperature,
                max_tokens,
                parallel_tool_calls: request.parallel_tool_calls,
                stream: request.stream.unwrap_or(false),
                include_usage,
            },
        )
        .await;
    }
    let agent = agent_of(&state, &principal, &request.model).await?;
    let client_tools = tools(
        Some(&agent),
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
    )?;
    let (history, input) = history(&request.messages)?.finish()?;
    let title = headers
        .get("x-orchestra-conversation")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| {
            metadata
                .get("conversation")
                .and_then(Value::as_str)
                .map(str::to_owned)
        });
    let mut stored = metadata.clone();
    stored.insert("source".into(), json!("chat.completions"));
    let options = RunOptions {
        client_tools,
        temperature: request.temperature,
        max_output_tokens: max_tokens,
        parallel_tool_calls: request.parallel_tool_calls,
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
        &state, &principal, &agent, title, stored, history, input, options,
    )
    .await?;
    let guard = CancelOnDrop::new(state.runs.clone(), principal.clone(), run.id);
    let answer = Answer {
        follower: Follower::new(state.runs.clone(), run.id, 0),
        translator,
        id: completion_id(run.id),
        run: run.id,
        created: run.created_at.timestamp(),
        model: request.model.clone(),
        folded: Folded::default(),
        guard,
    };
    let headers = run_headers(&run);
    if request.stream.unwrap_or(false) {
        let stream = ChatStream {
            answer,
            include_usage,
            started: false,
        };
        Ok((headers, sse_of(stream, slot)).into_response())
    } else {
        // A run that failed or waits for approval exists: its error says
        // where it is.
        Ok(match answer.complete().await {
            Ok(body) => (headers, axum::Json(body)).into_response(),
            Err(e) => (headers, e).into_response(),
        })
    }
}

/// Reads a run to its end (or its stop for approval) into `folded`; gives
/// the error of a run that limits cut short, or the failure of one that
/// gives no answer.
pub async fn fold(
    follower: &mut Follower,
    translator: &mut Translator,
    folded: &mut Folded,
    guard: &mut CancelOnDrop,
    run: Uuid,
) -> ApiResult<Option<RunError>> {
    while let Some(event) = follower.next().await {
        for piece in translator.push(&event) {
            if let Some(outcome) = folded.push(run, piece) {
                guard.disarm();
                return outcome;
            }
        }
    }
    guard.disarm();
    Err(run_failure(run, RunStatus::Failed, None))
}

/// A run being read as a completion.
struct Answer {
    follower: Follower,
    translator: Translator,
    id: String,
    run: Uuid,
    created: i64,
    model: String,
    folded: Folded,
    guard: CancelOnDrop,
}

impl Answer {
    /// Reads the run to its end and gives the completion.
    async fn complete(mut self) -> ApiResult<Value> {
        let error = fold(
            &mut self.follower,
            &mut self.translator,
            &mut self.folded,
            &mut self.guard,
            self.run,
        )
        .await?;
        Ok(self.body(error.as_ref()))
    }

    fn body(&self, error: Option<&RunError>) -> Value {
        let f = &self.folded;
        let mut message = json!({
            "role": "assistant",
            "content": if f.text.is_empty() && !f.calls.is_empty() { Value::Null } else { json!(f.text) },
            "refusal": null,
            "annotations": [],
        });
        if !f.calls.is_empty() {
            message["tool_calls"] = json!(f
                .calls
                .iter()
                .map(|c| json!({ "id": c.id, "type": "function", "function": { "name": c.name, "arguments": c.arguments } }))
                .collect::<Vec<_>>());
        }
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": message,
                "logprobs": null,
                "finish_reason": f.finish_reason(error),
            }],
            "usage": f.usage(),
        })
    }

    fn chunk(&self, delta: Value, finish: Option<&str>) -> Event {
        Event::default().data(
            json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }],
            })
            .to_string(),
        )
    }
}

/// The chunks of a streamed completion.
struct ChatStream {
    answer: Answer,
    include_usage: bool,
    started: bool,
}

fn error_event(error: &ApiError) -> Event {
    Event::default().data(json!({ "error": error.body() }).to_string())
}

fn done_event() -> Event {
    Event::default().data("[DONE]")
}

impl Batches for ChatStream {
    async fn next(&mut self) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            out.push(self.answer.chunk(
                json!({ "role": "assistant", "content": "", "refusal": null }),
                None,
            ));
            return (out, true);
        }
        let Some(event) = self.answer.follower.next().await else {
            let error = run_failure(self.answer.run, RunStatus::Failed, None);
            return (vec![error_event(&error), done_event()], false);
        };
        for piece in self.answer.translator.push(&event) {
            match piece {
                Piece::Text { step, text } => {
                    let delta = self.answer.folded.text_delta(step, &text);
                    out.push(self.answer.chunk(json!({ "content": delta }), None));
                }
                Piece::CallStart { index, id, name, .. } => out.push(self.answer.chunk(
                    json!({ "tool_calls": [{ "index": index, "id": id, "type": "function",
                                             "function": { "name": name, "arguments": "" } }] }),
                    None,
                )),
                Piece::CallArgs { index, fragment, .. } => out.push(self.answer.chunk(
                    json!({ "tool_calls": [{ "index": index, "function": { "arguments": fragment } }] }),
                    None,
                )),
                Piece::StepEnd { calls, .. } => self.answer.folded.calls = calls,
                Piece::Usage {
                    input_tokens,
                    output_tokens,
                    finish_reason,
                } => {
                    let f = &mut self.answer.folded;
                    f.input_tokens = input_tokens;
                    f.output_tokens = output_tokens;
                    f.finish = finish_reason;
                }
                Piece::Parked => {
                    self.answer.guard.disarm();
                    let error = run_failure(self.answer.run, RunStatus::RequiresAction, None);
                    out.push(error_event(&error));
                    out.push(done_event());
                    return (out, false);
                }
                Piece::Done { status, error } => {
                    self.answer.guard.disarm();
                    if status != RunStatus::Completed && !ends_short(error.as_ref()) {
                        out.push(error_event(&run_failure(self.answer.run, status, error.as_ref())));
                        out.push(done_event());
                        return (out, false);
                    }
                    let finish = self.answer.folded.finish_reason(error.as_ref());
                    out.push(self.answer.chunk(json!({}), Some(finish)));
                    if self.include_usage {
                        let a = &self.answer;
                        out.push(Event::default().data(
                            json!({
                                "id": a.id, "object": "chat.completion.chunk", "created": a.created,
                                "model": a.model, "choices": [], "usage": a.folded.usage(),
                            })
                            .to_string(),
                        ));
                    }
                    out.push(done_event());
                    return (out, false);
                }
            }
        }
        (out, true)
    }
}
