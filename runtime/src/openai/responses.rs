//! The Responses API over agents: `POST /v1/responses` (streamed or not,
//! in the background or not), `GET /v1/responses/{id}` (also as a stream
//! that resumes after a sequence number), `POST /v1/responses/{id}/cancel`
//! and `DELETE /v1/responses/{id}`.
//!
//! A response is a run (`resp_<run id>`). `previous_response_id` continues
//! the previous response's conversation when it is that conversation's
//! latest turn, and otherwise branches: a new conversation with the history
//! up to that response. `store: false` runs in a conversation of its own
//! that is deleted once the run ends (its usage stays counted). A
//! `background` response is a durable run like any other: it survives a
//! restart of the server and is read with `GET`.

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::chat::{
    check_metadata, check_sampling, run_failure, run_headers, start, text_content, user_parts,
    HistoryBuilder,
};
use super::error::{ApiError, ApiResult, OpenAiErrorResponse};
use super::translate::{Piece, Translator};
use super::{
    agent_of, body, caller, client_tool, distinct_tools, model_id, offers_tools, sse_of, Batches,
    CancelOnDrop,
};
use crate::agents::repo::AgentRow;
use crate::conversations::model::{ContentPart, MessageRole};
use crate::conversations::repo::{MessageRow, NewHistoryMessage};
use crate::error::Error;
use crate::http::AppState;
use crate::pagination::PageParams;
use crate::providers::ToolDefinition;
use crate::runs::follow::Follower;
use crate::runs::model::{RunFilter, RunOptions, RunResponse, RunStatus};
use crate::users::model::Principal;

/// The prefix of response ids.
const PREFIX: &str = "resp_";

/// `POST /v1/responses` (fields of OpenAI's request that this server does
/// not use, such as `user` or `reasoning`, are ignored).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ResponseRequest {
    /// `agent:<name>`; optional with `previous_response_id` (the same
    /// agent answers).
    #[serde(default)]
    pub model: Option<String>,
    /// Text, or a list of items: messages, `function_call` and
    /// `function_call_output`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub input: Option<Value>,
    /// Instructions for this response only, after the agent's.
    #[serde(default)]
    pub instructions: Option<String>,
    /// Function tools the client runs itself.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Value>>,
    /// `auto` (default) or `none`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Continue from this response.
    #[serde(default)]
    pub previous_response_id: Option<String>,
    /// Keep the response to read or continue later (default `true`).
    #[serde(default)]
    pub store: Option<bool>,
    /// Stream the Responses events.
    #[serde(default)]
    pub stream: Option<bool>,
    /// Answer at once and run on (read with `GET`).
    #[serde(default)]
    pub background: Option<bool>,
    /// Up to 16 string pairs.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Sampling temperature (0 to 2).
    #[serde(default)]
    pub temperature: Option<f64>,
    /// Most tokens per model answer.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Whether the model may ask for several tool calls at once.
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Only `{"format": {"type": "text"}}`.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub text: Option<Value>,
    /// Not supported (use `previous_response_id`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub conversation: Option<Value>,
}

/// `?stream=&starting_after=` of `GET /v1/responses/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RetrieveParams {
    /// Stream the response's events (from the start, or after
    /// `starting_after`).
    pub stream: Option<bool>,
    /// The sequence number of the last event received.
    pub starting_after: Option<u64>,
}

/// A response id's run.
fn run_of(id: &str) -> ApiResult<Uuid> {
    id.strip_prefix(PREFIX)
        .filter(|h| h.len() == 32)
        .and_then(|h| Uuid::parse_str(h).ok())
        .ok_or_else(|| not_found(id))
}

fn response_id(run: Uuid) -> String {
    format!("{PREFIX}{}", run.simple())
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        format!("Response with id '{id}' not found."),
    )
    .code("not_found")
}

/// The `api` part of a response's run options.
fn api(options: &Option<RunOptions>) -> Option<&Value> {
    options
        .as_ref()
        .and_then(|o| o.api.as_ref())
        .filter(|a| a.get("kind").and_then(Value::as_str) == Some("response"))
}

/// A stored, not deleted response of the caller.
async fn visible(
    state: &AppState,
    principal: &Principal,
    id: &str,
) -> ApiResult<(RunResponse, RunOptions)> {
    let run = run_of(id)?;
    let (response, options) = match state.runs.get_with_options(principal, run).await {
        Ok(found) => found,
        Err(Error::NotFound(_)) => return Err(not_found(id)),
        Err(e) => return Err(e.into()),
    };
    let Some(a) = api(&options) else {
        return Err(not_found(id));
    };
    if a.get("deleted").and_then(Value::as_bool) == Some(true)
        || a.get("store").and_then(Value::as_bool) == Some(false)
    {
        return Err(not_found(id));
    }
    Ok((response, options.unwrap_or_default()))
}

/// The messages a run wrote.
fn run_messages(run: Uuid, messages: &[MessageRow]) -> impl Iterator<Item = &MessageRow> {
    let id = run.to_string();
    messages
        .iter()
        .filter(move |m| m.metadata.0.get("run_id").and_then(Value::as_str) == Some(id.as_str()))
}

fn message_item_id(run: Uuid, step: usize) -> String {
    format!("msg_{}_{step}", run.simple())
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "id": id, "type": "message", "status": status, "role": "assistant",
        "content": if status == "completed" || !text.is_empty() {
            json!([{ "type": "output_text", "text": text, "annotations": [], "logprobs": [] }])
        } else { json!([]) },
    })
}

fn call_item(call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({ "id": format!("fc_{call_id}"), "type": "function_call", "call_id": call_id,
            "name": name, "arguments": arguments, "status": status })
}

/// The output items of a run: a message per model answer with text, and
/// the calls of the client's tools.
fn output(run: Uuid, options: &RunOptions, messages: &[MessageRow]) -> Vec<Value> {
    let mut items = Vec::new();
    let mut step = 0;
    for m in run_messages(run, messages) {
        if m.role != MessageRole::Assistant.as_str() {
            continue;
        }
        let mut text = String::new();
        let mut calls = Vec::new();
        for part in &m.content.0 {
            match part {
                ContentPart::Text { text: t } => text.push_str(t),
                ContentPart::ToolCall {
                    id,
                    name,
                    arguments,
                } if options.is_client_tool(name) => {
                    calls.push(call_item(id, name, &arguments.to_string(), "completed"))
                }
                _ => {}
            }
        }
        if !text.is_empty() {
            items.push(message_item(
                &message_item_id(run, step),
                &text,
                "completed",
            ));
        }
        items.extend(calls);
        step += 1;
    }
    items
}

/// A response object.
fn object(run: &RunResponse, options: &RunOptions, output: Vec<Value>) -> Value {
    let a = options.api.clone().unwrap_or(Value::Null);
    let short = run
        .error
        .as_ref()
        .is_some_and(|e| e.code == "max_tokens" || e.code == "max_steps");
    let status = match run.status {
        RunStatus::Queued => "queued",
        RunStatus::Running | RunStatus::RequiresAction => "in_progress",
        RunStatus::Completed => "completed",
        RunStatus::Failed if short => "incomplete",
        RunStatus::Failed => "failed",
        RunStatus::Cancelled => "cancelled",
    };
    let error = match (&run.error, status) {
        (Some(e), "failed") => {
            json!({ "code": "server_error", "message": format!("{}: {}", e.code, e.message) })
        }
        _ => Value::Null,
    };
    let incomplete = if status == "incomplete" {
        json!({ "reason": "max_output_tokens" })
    } else {
        Value::Null
    };
    let usage = run.usage;
    json!({
        "id": response_id(run.id),
        "object": "response",
        "created_at": run.created_at.timestamp(),
        "completed_at": run.finished_at.map(|t| t.timestamp()),
        "status": status,
        "background": a.get("background").cloned().unwrap_or(json!(false)),
        "error": error,
        "incomplete_details": incomplete,
        "instructions": options.instructions,
        "max_output_tokens": options.max_output_tokens,
        "model": a.get("model").cloned().unwrap_or(Value::Null),
        "output": output,
        "parallel_tool_calls": options.parallel_tool_calls.unwrap_or(true),
        "previous_response_id": a.get("previous_response_id").cloned().unwrap_or(Value::Null),
        "reasoning": { "effort": null, "summary": null },
        "store": a.get("store").cloned().unwrap_or(json!(true)),
        "temperature": options.temperature,
        "text": { "format": { "type": "text" } },
        "tool_choice": a.get("tool_choice").cloned().unwrap_or(json!("auto")),
        "tools": a.get("tools").cloned().unwrap_or(json!([])),
        "top_p": null,
        "truncation": "disabled",
        "usage": {
            "input_tokens": usage.input_tokens,
            "input_tokens_details": { "cached_tokens": 0 },
            "output_tokens": usage.output_tokens,
            "output_tokens_details": { "reasoning_tokens": 0 },
            "total_tokens": usage.input_tokens + usage.output_tokens,
        },
        "user": null,
        "metadata": a.get("metadata").cloned().unwrap_or(json!({})),
    })
}

/// The response object of a run as stored now.
async fn load(state: &AppState, principal: &Principal, run: Uuid) -> ApiResult<Value> {
    let (response, options) = state.runs.get_with_options(principal, run).await?;
    let options = options.unwrap_or_default();
    let messages = state
        .conversations
        .history(principal, response.conversation_id)
        .await?;
    Ok(object(
        &response,
        &options,
        output(run, &options, &messages),
    ))
}

/// The client's function tools in Responses form.
fn tools(
    agent: &AgentRow,
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
            return Err(ApiError::unsupported(
                &format!("{param}.type"),
                format!("Unsupported value for '{param}.type': agents accept 'function' tools (their own tools run on the server)."),
            ));
        }
        out.push(client_tool(
            Some(agent),
            &param,
            t.get("name").and_then(Value::as_str),
            t.get("description").and_then(Value::as_str),
            t.get("parameters"),
        )?);
    }
    distinct_tools(&out, "tools")?;
    Ok(out)
}

/// Adds the request's input items to a history.
fn add_input(h: &mut HistoryBuilder, input: &Value) -> ApiResult<()> {
    let items = match input {
        Value::String(s) => {
            return h.user(user_parts(&json!(s), "input")?);
        }
        Value::Array(items) => items,
        _ => {
            return Err(ApiError::invalid(
                "input",
                "Invalid 'input': expected a string or an array of input items.",
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item.get("type").and_then(Value::as_str);
        match kind {
            None | Some("message") => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
                let content = item.get("content").unwrap_or(&Value::Null);
                match role {
                    "user" => h.user(user_parts(content, &format!("{param}.content"))?)?,
                    "system" | "developer" => h.system(text_content(content, &format!("{param}.content"))?)?,
                    "assistant" => h.assistant(text_content(content, &format!("{param}.content"))?, Vec::new(), &param)?,
                    other => {
                        return Err(ApiError::invalid(
                            &format!("{param}.role"),
                            format!("Invalid value: '{other}'. Supported values are: 'user', 'assistant', 'system' and 'developer'."),
                        ))
                    }
                }
            }
            Some("function_call") => {
                let (Some(call_id), Some(name)) = (
                    item.get("call_id").and_then(Value::as_str),
                    item.get("name").and_then(Value::as_str),
                ) else {
                    return Err(ApiError::invalid(&param, "Invalid function_call item: expected call_id and name."));
                };
                let arguments = item.get("arguments").and_then(Value::as_str).unwrap_or("{}");
                h.add_call(call_id, name, arguments, &param)?;
            }
            Some("function_call_output") => {
                let Some(call_id) = item.get("call_id").and_then(Value::as_str) else {
                    return Err(ApiError::invalid(&format!("{param}.call_id"), format!("Missing required parameter: '{param}.call_id'.")));
                };
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => text_content(v, &format!("{param}.output"))?,
                    _ => {
                        return Err(ApiError::invalid(&format!("{param}.output"), format!("Missing required parameter: '{param}.output'.")))
                    }
                };
                h.tool_result(call_id, output, false, &param)?;
            }
            Some("reasoning") => {}
            Some(other) => {
                return Err(ApiError::unsupported(
                    &format!("{param}.type"),
                    format!("Unsupported input item type '{other}': agents accept messages, function_call and function_call_output items."),
                ))
            }
        }
    }
    Ok(())
}

/// The client calls of a run still waiting for their results.
fn open_calls(run: Uuid, options: &RunOptions, messages: &[MessageRow]) -> Vec<(String, String)> {
    let Some(last) = run_messages(run, messages)
        .filter(|m| m.role == MessageRole::Assistant.as_str())
        .last()
    else {
        return Vec::new();
    };
    let answered: Vec<&str> = messages
        .iter()
        .filter(|m| m.seq > last.seq)
        .flat_map(|m| m.content.0.iter())
        .filter_map(|p| match p {
            ContentPart::ToolResult { call_id, .. } => Some(call_id.as_str()),
            _ => None,
        })
        .collect();
    last.content
        .0
        .iter()
        .filter_map(|p| match p {
            ContentPart::ToolCall { id, name, .. }
                if options.is_client_tool(name) && !answered.contains(&id.as_str()) =>
            {
                Some((id.clone(), name.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Where a new response's turn goes.
enum Place {
    /// A new conversation with this history.
    New(Vec<NewHistoryMessage>),
    /// The previous response's conversation, after its messages.
    Continue(Uuid, Vec<NewHistoryMessage>),
}

/// Creates a response with an agent.
#[utoipa::path(post, path = "/v1/responses", tag = "openai", security(("bearer" = [])),
    request_body = ResponseRequest,
    responses((status = 200, description = "A `response` object, or with `stream: true` a text/event-stream of Responses events", body = Object),
              (status = 400, body = OpenAiErrorResponse), (status = 401, body = OpenAiErrorResponse),
              (status = 404, body = OpenAiErrorResponse), (status = 409, body = OpenAiErrorResponse),
              (status = 413, body = OpenAiErrorResponse), (status = 429, body = OpenAiErrorResponse),
              (status = 500, body = OpenAiErrorResponse), (status = 502, body = OpenAiErrorResponse)))]
pub async fn create(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
    raw: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let principal = caller(principal)?;
    let request: ResponseRequest = body(raw)?;
    if request.conversation.is_some() {
        return Err(ApiError::unsupported(
            "conversation",
            "Unsupported parameter: 'conversation'; continue with 'previous_response_id'.",
        ));
    }
    match request
        .text
        .as_ref()
        .and_then(|t| t.pointer("/format/type"))
        .and_then(Value::as_str)
    {
        None | Some("text") => {}
        Some(other) => {
            return Err(ApiError::unsupported(
                "text.format",
                format!(
                    "Unsupported value: text.format of type '{other}' is not supported for agents."
                ),
            ))
        }
    }
    check_sampling(
        request.temperature,
        request.max_output_tokens,
        "max_output_tokens",
    )?;
    let metadata = request.metadata.clone().unwrap_or_default();
    check_metadata(&metadata)?;
    let store = request.store.unwrap_or(true);
    let background = request.background.unwrap_or(false);
    if background && !store {
        return Err(ApiError::invalid(
            "background",
            "Background responses must be stored: 'store' must be true.",
        ));
    }
    let Some(input) = request.input.as_ref() else {
        return Err(ApiError::invalid(
            "input",
            "Missing required parameter: 'input'.",
        ));
    };
    // The previous response, its conversation and the calls it left open.
    let previous = match &request.previous_response_id {
        None => None,
        Some(id) => {
            let (run, options) = visible(&state, &principal, id).await.map_err(|e| {
                if e.status() == StatusCode::NOT_FOUND {
                    not_found(id).param("previous_response_id")
                } else {
                    e
                }
            })?;
            if !run.status.is_terminal() {
                return Err(ApiError::invalid(
                    "previous_response_id",
                    format!("Previous response with id '{id}' is still in progress."),
                ));
            }
            let messages = state
                .conversations
                .history(&principal, run.conversation_id)
                .await?;
            Some((id.clone(), run, options, messages))
        }
    };
    let agent = match (&request.model, &previous) {
        (Some(model), _) => agent_of(&state, &principal, model).await?,
        (None, Some((_, run, _, _))) => {
            match state.agents.visible(&principal, run.agent_id).await {
                Ok(agent) => agent,
                Err(Error::NotFound(_)) => {
                    return Err(ApiError::invalid(
                        "model",
                        "The previous response's agent was deleted.",
                    ))
                }
                Err(e) => return Err(e.into()),
            }
        }
        (None, None) => {
            return Err(ApiError::invalid(
                "model",
                "Missing required parameter: 'model'.",
            ))
        }
    };
    if let Some((_, run, _, _)) = &previous {
        if run.agent_id != agent.id {
            return Err(ApiError::invalid(
                "model",
                "A response continues with the agent of its previous response.",
            ));
        }
    }
    let client_tools = tools(
        &agent,
        request.tools.as_deref(),
        request.tool_choice.as_ref(),
    )?;
    let mut h = HistoryBuilder::default();
    let mut continue_in = None;
    if let Some((id, run, options, messages)) = &previous {
        let last_seq = run_messages(run.id, messages)
            .map(|m| m.seq)
            .max()
            .unwrap_or(0);
        let latest = state
            .runs
            .list(
                &principal,
                run.conversation_id,
                RunFilter::default(),
                PageParams {
                    page: Some(1),
                    page_size: Some(1),
                },
            )
            .await?;
        let in_place = store
            && latest.items.first().is_some_and(|r| r.id == run.id)
            && messages.iter().all(|m| m.seq <= last_seq);
        if in_place {
            continue_in = Some(run.conversation_id);
        } else {
            for m in messages.iter().filter(|m| m.seq <= last_seq) {
                h.messages.push(NewHistoryMessage {
                    role: MessageRole::parse(&m.role)
                        .unwrap_or(MessageRole::User)
                        .as_str(),
                    content: m.content.0.clone(),
                    metadata: Map::new(),
                });
            }
        }
        h.expect_results(
            open_calls(run.id, options, messages),
            &format!("previous_response_id ({id})"),
        );
    }
    let before = h.messages.len();
    add_input(&mut h, input)?;
    if h.messages.len() == before {
        return Err(ApiError::invalid(
            "input",
            "Invalid 'input': expected at least one item.",
        ));
    }
    let (history, input) = h.finish()?;
    let place = match continue_in {
        Some(conversation) => Place::Continue(conversation, history),
        None => Place::New(history),
    };
    let options = RunOptions {
        client_tools,
        instructions: request
            .instructions
            .clone()
            .filter(|i| !i.trim().is_empty()),
        temperature: request.temperature,
        max_output_tokens: request.max_output_tokens,
        parallel_tool_calls: request.parallel_tool_calls,
        api: Some(json!({
            "kind": "response",
            "model": request.model.clone().unwrap_or_else(|| model_id(&agent)),
            "previous_response_id": request.previous_response_id,
            "store": store,
            "background": background,
            "metadata": metadata,
            "tools": request.tools.clone().unwrap_or_default(),
            "tool_choice": request.tool_choice.clone().unwrap_or(json!("auto")),
        })),
    };
    let translator = Translator::new(Some(&options));
    // A stream holds one of the caller's stream slots while it is open
    // (taken before anything is stored).
    let slot = if request.stream.unwrap_or(false) {
        Some(state.runs.stream_slot(&principal)?)
    } else {
        None
    };
    let run = match place {
        Place::New(history) => {
            let mut stored = metadata.clone();
            stored.insert("source".into(), json!("responses"));
            start(
                &state, &principal, &agent, None, stored, history, input, options,
            )
            .await?
        }
        Place::Continue(conversation, history) => {
            let before = state
                .conversations
                .append_history(&principal, conversation, &history)
                .await?;
            let created = state
                .runs
                .create(
                    &principal,
                    conversation,
                    crate::runs::model::RunInput {
                        message: input.map(crate::conversations::model::ContentInput::Parts),
                        limits: None,
                        on_active: None,
                        options: Some(options),
                        id: None,
                    },
                )
                .await;
            match created {
                Ok(run) => run,
                Err(e) => {
                    // Refused (a quota): the items this request added go too.
                    if !history.is_empty() {
                        match state
                            .conversations
                            .take_back(conversation, before, history.len())
                            .await
                        {
                            Ok(true) => {}
                            Ok(false) => {
                                tracing::warn!(%conversation, "a refused turn's items stay: the conversation moved on")
                            }
                            Err(d) => {
                                tracing::warn!(%conversation, error = %d, "taking back a refused turn's items failed")
                            }
                        }
                    }
                    return Err(e.into());
                }
            }
        }
    };
    // An unstored response's conversation goes once the run ended and its
    // answer was given (the reader holds `answered` until then).
    let (answered, given) = tokio::sync::oneshot::channel::<()>();
    if !store {
        forget_when_done(state.clone(), principal.clone(), run.clone(), given);
    }
    let headers = run_headers(&run);
    let guard =
        (!background).then(|| CancelOnDrop::new(state.runs.clone(), principal.clone(), run.id));
    let mut reader = Reader::new(&state, &principal, run.id, translator, background, None);
    reader.guard = guard;
    reader._answered = Some(answered);
    if request.stream.unwrap_or(false) {
        return Ok((headers, sse_of(reader, slot)).into_response());
    }
    if background {
        return Ok((headers, axum::Json(load(&state, &principal, run.id).await?)).into_response());
    }
    Ok(match reader.finish().await {
        Ok(body) => (headers, axum::Json(body)).into_response(),
        Err(e) => (headers, e).into_response(),
    })
}

/// Deletes the conversation of a `store: false` response once its run ends
/// (the usage stays counted).
fn forget_when_done(
    state: AppState,
    principal: Principal,
    run: RunResponse,
    given: tokio::sync::oneshot::Receiver<()>,
) {
    let limit = Duration::from_secs(
        state.config.runs.max_limits.timeout_secs + state.config.runs.approval_ttl_secs + 120,
    );
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match state
                .runs
                .wait(&principal, run.id, Duration::from_secs(60))
                .await
            {
                Ok(r) if r.status.is_terminal() => break,
                Ok(_) if tokio::time::Instant::now() < deadline => continue,
                Ok(_) => break,
                Err(Error::NotFound(_)) => return,
                Err(e) => {
                    tracing::warn!(run = %run.id, error = %e, "waiting for an unstored response failed");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    if tokio::time::Instant::now() >= deadline {
                        break;
                    }
                }
            }
        }
        // The answer is being read from the conversation: wait for it.
        let _ = tokio::time::timeout(Duration::from_secs(60), given).await;
        if let Err(e) = state
            .conversations
            .delete(&principal, run.conversation_id)
            .await
        {
            tracing::warn!(run = %run.id, error = %e, "deleting an unstored response failed");
        }
    });
}

/// A run being read as Responses events.
struct Reader {
    state: AppState,
    principal: Principal,
    follower: Follower,
    translator: Translator,
    run: Uuid,
    guard: Option<CancelOnDrop>,
    background: bool,
    /// The last sequence number given out.
    seq: u64,
    /// Events up to this sequence number were received before.
    skip_until: Option<u64>,
    output_index: usize,
    /// The open message item: (step, output index, text so far).
    message: Option<(usize, usize, String)>,
    /// Open client calls: (index in the answer, output index, call id, name, arguments so far).
    calls: Vec<(usize, usize, String, String, String)>,
    started: bool,
    /// Dropped once the answer was given (see `forget_when_done`).
    _answered: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Reader {
    /// A reader of `run` from its first event (events up to
    /// `skip_until` are not sent again).
    fn new(
        state: &AppState,
        principal: &Principal,
        run: Uuid,
        translator: Translator,
        background: bool,
        skip_until: Option<u64>,
    ) -> Self {
        Reader {
            state: state.clone(),
            principal: principal.clone(),
            follower: Follower::new(state.runs.clone(), run, 0),
            translator,
            run,
            guard: None,
            background,
            seq: 0,
            skip_until,
            output_index: 0,
            message: None,
            calls: Vec::new(),
            started: false,
            _answered: None,
        }
    }

    fn disarm(&mut self) {
        if let Some(g) = self.guard.as_mut() {
            g.disarm();
        }
    }

    /// Reads the run to its end (or its stop for approval) and gives the
    /// response object.
    async fn finish(mut self) -> ApiResult<Value> {
        while let Some(event) = self.follower.next().await {
            for piece in self.translator.push(&event) {
                match piece {
                    Piece::Parked => {
                        self.disarm();
                        return Err(run_failure(self.run, RunStatus::RequiresAction, None));
                    }
                    Piece::Done { .. } => {
                        self.disarm();
                        return load(&self.state, &self.principal, self.run).await;
                    }
                    _ => {}
                }
            }
        }
        load(&self.state, &self.principal, self.run).await
    }

    fn event(&mut self, kind: &str, mut data: Value) -> Option<Event> {
        self.seq += 1;
        if self.skip_until.is_some_and(|s| self.seq <= s) {
            return None;
        }
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.seq);
        Some(Event::default().event(kind).data(data.to_string()))
    }

    fn close_message(&mut self, out: &mut Vec<Event>) {
        let Some((step, index, text)) = self.message.take() else {
            return;
        };
        let id = message_item_id(self.run, step);
        let part =
            json!({ "type": "output_text", "text": text, "annotations": [], "logprobs": [] });
        out.extend(self.event("response.output_text.done",
            json!({ "item_id": id, "output_index": index, "content_index": 0, "text": text, "logprobs": [] })));
        out.extend(self.event(
            "response.content_part.done",
            json!({ "item_id": id, "output_index": index, "content_index": 0, "part": part }),
        ));
        out.extend(self.event(
            "response.output_item.done",
            json!({ "output_index": index, "item": message_item(&id, &text, "completed") }),
        ));
    }

    /// The next events, and whether more may follow.
    async fn step(&mut self) -> (Vec<Event>, bool) {
        let mut out = Vec::new();
        if !self.started {
            self.started = true;
            match load(&self.state, &self.principal, self.run).await {
                Ok(mut response) => {
                    if response["status"] == "completed" || response["status"] == "failed" {
                        // Replayed from the start: the story, then the end.
                        response["status"] = json!("in_progress");
                    }
                    response["output"] = json!([]);
                    out.extend(
                        self.event("response.created", json!({ "response": response.clone() })),
                    );
                    out.extend(self.event("response.in_progress", json!({ "response": response })));
                }
                Err(e) => {
                    out.extend(self.event("error", json!({ "code": e.body().code, "message": e.body().message, "param": null })));
                    return (out, false);
                }
            }
            return (out, true);
        }
        let Some(event) = self.follower.next().await else {
            return (out, false);
        };
        for piece in self.translator.push(&event) {
            match piece {
                Piece::Text { step, text } => {
                    if self.message.as_ref().is_some_and(|(s, _, _)| *s != step) {
                        self.close_message(&mut out);
                    }
                    if self.message.is_none() {
                        let index = self.output_index;
                        self.output_index += 1;
                        let id = message_item_id(self.run, step);
                        out.extend(self.event("response.output_item.added",
                            json!({ "output_index": index, "item": message_item(&id, "", "in_progress") })));
                        out.extend(self.event("response.content_part.added",
                            json!({ "item_id": id, "output_index": index, "content_index": 0,
                                    "part": { "type": "output_text", "text": "", "annotations": [], "logprobs": [] } })));
                        self.message = Some((step, index, String::new()));
                    }
                    let (_, index, so_far) = self.message.as_mut().expect("opened above");
                    so_far.push_str(&text);
                    let index = *index;
                    let id = message_item_id(self.run, step);
                    out.extend(self.event("response.output_text.delta",
                        json!({ "item_id": id, "output_index": index, "content_index": 0, "delta": text, "logprobs": [] })));
                }
                Piece::CallStart {
                    index, id, name, ..
                } => {
                    let output_index = self.output_index;
                    self.output_index += 1;
                    out.extend(self.event("response.output_item.added",
                        json!({ "output_index": output_index, "item": call_item(&id, &name, "", "in_progress") })));
                    self.calls
                        .push((index, output_index, id, name, String::new()));
                }
                Piece::CallArgs {
                    index, fragment, ..
                } => {
                    if let Some(pos) = self.calls.iter().position(|c| c.0 == index) {
                        self.calls[pos].4.push_str(&fragment);
                        let (output_index, id) =
                            (self.calls[pos].1, format!("fc_{}", self.calls[pos].2));
                        out.extend(self.event("response.function_call_arguments.delta",
                            json!({ "item_id": id, "output_index": output_index, "delta": fragment })));
                    }
                }
                Piece::StepEnd { calls, .. } => {
                    self.close_message(&mut out);
                    let open = std::mem::take(&mut self.calls);
                    for call in calls {
                        let output_index = match open.iter().find(|c| c.2 == call.id) {
                            Some(c) => c.1,
                            None => {
                                let i = self.output_index;
                                self.output_index += 1;
                                out.extend(self.event("response.output_item.added",
                                    json!({ "output_index": i, "item": call_item(&call.id, &call.name, "", "in_progress") })));
                                i
                            }
                        };
                        let id = format!("fc_{}", call.id);
                        out.extend(self.event("response.function_call_arguments.done",
                            json!({ "item_id": id, "output_index": output_index, "arguments": call.arguments })));
                        out.extend(self.event("response.output_item.done",
                            json!({ "output_index": output_index, "item": call_item(&call.id, &call.name, &call.arguments, "completed") })));
                    }
                }
                Piece::Usage { .. } => {}
                Piece::Parked if !self.background => {
                    self.disarm();
                    let e = run_failure(self.run, RunStatus::RequiresAction, None);
                    out.extend(self.event("error", json!({ "code": e.body().code, "message": e.body().message, "param": null })));
                    return (out, false);
                }
                Piece::Parked => {}
                Piece::Done { .. } => {
                    self.disarm();
                    self.close_message(&mut out);
                    match load(&self.state, &self.principal, self.run).await {
                        Ok(response) => {
                            let kind = match response["status"].as_str() {
                                Some("completed") => "response.completed",
                                Some("incomplete") => "response.incomplete",
                                _ => "response.failed",
                            };
                            out.extend(self.event(kind, json!({ "response": response })));
                        }
                        Err(e) => out.extend(self.event("error", json!({ "code": e.body().code, "message": e.body().message, "param": null }))),
                    }
                    return (out, false);
                }
            }
        }
        (out, true)
    }
}

impl Batches for Reader {
    async fn next(&mut self) -> (Vec<Event>, bool) {
        self.step().await
    }
}

/// A response; with `stream=true`, its events (resuming after
/// `starting_after`).
#[utoipa::path(get, path = "/v1/responses/{id}", tag = "openai", security(("bearer" = [])),
    params(("id" = String, Path, description = "`resp_...`"), RetrieveParams),
    responses((status = 200, description = "A `response` object, or a text/event-stream of its events", body = Object),
              (status = 404, body = OpenAiErrorResponse)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
    Path(id): Path<String>,
    params: Result<Query<RetrieveParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let principal = caller(principal)?;
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let (run, options) = visible(&state, &principal, &id).await?;
    if params.stream.unwrap_or(false) {
        let reader = Reader::new(
            &state,
            &principal,
            run.id,
            Translator::new(Some(&options)),
            true,
            params.starting_after,
        );
        let slot = state.runs.stream_slot(&principal)?;
        return Ok(sse_of(reader, Some(slot)));
    }
    Ok(axum::Json(load(&state, &principal, run.id).await?).into_response())
}

/// Cancels a response that is still running.
#[utoipa::path(post, path = "/v1/responses/{id}/cancel", tag = "openai", security(("bearer" = [])),
    params(("id" = String, Path, description = "`resp_...`")),
    responses((status = 200, description = "The `response` object", body = Object),
              (status = 400, body = OpenAiErrorResponse), (status = 404, body = OpenAiErrorResponse)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let principal = caller(principal)?;
    let (run, _) = visible(&state, &principal, &id).await?;
    if run.status.is_terminal() {
        return Err(ApiError::invalid(
            "response_id",
            format!("Cannot cancel a response that is {}.", run.status.as_str()),
        )
        .no_retry());
    }
    state.runs.cancel(&principal, run.id).await?;
    // A running run stops at its worker's next step: wait for it briefly.
    state
        .runs
        .wait(&principal, run.id, Duration::from_secs(10))
        .await?;
    Ok(axum::Json(load(&state, &principal, run.id).await?).into_response())
}

/// Deletes a response. A response that is the only turn of its
/// conversation takes the conversation with it; otherwise its messages stay
/// in the conversation that later turns continue.
#[utoipa::path(delete, path = "/v1/responses/{id}", tag = "openai", security(("bearer" = [])),
    params(("id" = String, Path, description = "`resp_...`")),
    responses((status = 200, description = "`{id, object, deleted}`", body = Object),
              (status = 404, body = OpenAiErrorResponse)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let principal = caller(principal)?;
    let (run, mut options) = visible(&state, &principal, &id).await?;
    if !run.status.is_terminal() {
        match state.runs.cancel(&principal, run.id).await {
            Ok(_) | Err(Error::Conflict { .. }) => {}
            Err(e) => return Err(e.into()),
        }
        state
            .runs
            .wait(&principal, run.id, Duration::from_secs(10))
            .await?;
    }
    let runs = state
        .runs
        .list(
            &principal,
            run.conversation_id,
            RunFilter::default(),
            PageParams {
                page: Some(1),
                page_size: Some(2),
            },
        )
        .await?;
    if runs.total <= 1 {
        state
            .conversations
            .delete(&principal, run.conversation_id)
            .await?;
    } else {
        if let Some(a) = options.api.as_mut() {
            a["deleted"] = json!(true);
        }
        state.runs.set_options(&principal, run.id, &options).await?;
    }
    Ok(axum::Json(json!({ "id": id, "object": "response", "deleted": true })).into_response())
}

/// `?order=` of the input items.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InputItemsParams {
    /// `desc` (default, newest first) or `asc`.
    pub order: Option<String>,
}

/// An input item as the Responses API shows it.
fn input_item(m: &MessageRow) -> Vec<Value> {
    let id = format!("msg_{}", m.id.simple());
    let text: String = m
        .content
        .0
        .iter()
        .filter_map(|p| match p {
            ContentPart::Text { text } => Some(text.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut items = Vec::new();
    match MessageRole::parse(&m.role) {
        Some(MessageRole::Tool) => {
            for p in &m.content.0 {
                if let ContentPart::ToolResult {
                    call_id, content, ..
                } = p
                {
                    items.push(json!({ "id": format!("fco_{call_id}"), "type": "function_call_output",
                                       "call_id": call_id, "output": content, "status": "completed" }));
                }
            }
        }
        Some(MessageRole::Assistant) => {
            if !text.is_empty() {
                items.push(message_item(&id, &text, "completed"));
            }
            for p in &m.content.0 {
                if let ContentPart::ToolCall {
                    id,
                    name,
                    arguments,
                } = p
                {
                    items.push(call_item(id, name, &arguments.to_string(), "completed"));
                }
            }
        }
        role => {
            let role = match role {
                Some(MessageRole::System) => "system",
                _ => "user",
            };
            let mut content: Vec<Value> = Vec::new();
            for p in &m.content.0 {
                match p {
                    ContentPart::Text { text } => {
                        content.push(json!({ "type": "input_text", "text": text }))
                    }
                    ContentPart::Image { url } => content
                        .push(json!({ "type": "input_image", "image_url": url, "detail": "auto" })),
                    _ => {}
                }
            }
            items.push(json!({ "id": id, "type": "message", "role": role, "status": "completed", "content": content }));
        }
    }
    items
}

/// The items a response was given: what its request added to the
/// conversation (the whole history, for a response that started or
/// branched one), its input message last.
#[utoipa::path(get, path = "/v1/responses/{id}/input_items", tag = "openai", security(("bearer" = [])),
    params(("id" = String, Path, description = "`resp_...`"), InputItemsParams),
    responses((status = 200, description = "A list of input items", body = Object),
              (status = 404, body = OpenAiErrorResponse)))]
pub async fn input_items(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
    Path(id): Path<String>,
    params: Result<Query<InputItemsParams>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let principal = caller(principal)?;
    let Query(params) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let descending = match params.order.as_deref() {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => {
            return Err(ApiError::invalid(
                "order",
                format!("Invalid value: '{other}'. Supported values are: 'asc' and 'desc'."),
            ))
        }
    };
    let (run, _) = visible(&state, &principal, &id).await?;
    let messages = state
        .conversations
        .history(&principal, run.conversation_id)
        .await?;
    let mine = run.id.to_string();
    let of = |m: &MessageRow| {
        m.metadata
            .0
            .get("run_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    // The run's input (its first message, when it is the user's), and the
    // messages before it back to the previous turn's last one.
    let first = messages
        .iter()
        .position(|m| of(m).as_deref() == Some(mine.as_str()));
    let end = match first {
        Some(i) if messages[i].role == MessageRole::User.as_str() => i + 1,
        Some(i) => i,
        None => messages.len(),
    };
    let start = messages[..end]
        .iter()
        .rposition(|m| of(m).is_some_and(|r| r != mine))
        .map_or(0, |i| i + 1);
    let mut data: Vec<Value> = messages[start..end].iter().flat_map(input_item).collect();
    if descending {
        data.reverse();
    }
    Ok(axum::Json(json!({
        "object": "list",
        "first_id": data.first().map(|i| i["id"].clone()),
        "last_id": data.last().map(|i| i["id"].clone()),
        "has_more": false,
        "data": data,
    }))
    .into_response())
}
