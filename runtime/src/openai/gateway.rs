//! The providers' own models through Chat Completions, `<provider>/<model>`,
//! when the operator allows it (`openai.provider_models`, off by default):
//! Orchestra as a gateway with its usage accounting and quotas. The call
//! goes to the provider the caller may use (a server-wide one, or their
//! own), with no agent, no run and no conversation: it is admitted against
//! the caller's limits and recorded in the usage ledger (agent id nil),
//! and its tokens are settled when the answer ends.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::{json, Value};
use uuid::Uuid;

use super::error::{ApiError, ApiResult};
use crate::conversations::model::{ContentPart, MessageRole};
use crate::conversations::repo::NewHistoryMessage;
use crate::http::AppState;
use crate::providers::{
    Accumulator, ChatRequest, FinishReason, ProviderError, StreamEvent, ToolDefinition, Usage,
};
use crate::runs::engine::chat_messages;
use crate::runs::usage::Admission;
use crate::users::model::{Permission, Principal};

/// `(provider, model)` of a provider model id, when the operator allows
/// them.
pub fn provider_model<'a>(state: &AppState, model: &'a str) -> Option<(&'a str, &'a str)> {
    if !state.config.openai.provider_models || model.starts_with(super::AGENT_PREFIX) {
        return None;
    }
    model
        .split_once('/')
        .filter(|(p, m)| !p.is_empty() && !m.is_empty())
}

/// What a gateway call needs from the request.
pub struct Call<'a> {
    pub provider: &'a str,
    pub model: &'a str,
    /// The id the client named.
    pub model_id: &'a str,
    pub history: Vec<NewHistoryMessage>,
    pub input: Option<Vec<ContentPart>>,
    pub tools: Vec<ToolDefinition>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub parallel_tool_calls: Option<bool>,
    pub stream: bool,
    pub include_usage: bool,
}

/// Settles a call's usage when its answer ends, or when it is dropped
/// (with the tokens known by then).
struct Settle {
    state: AppState,
    call: Uuid,
    usage: Usage,
    done: bool,
}

impl Settle {
    async fn now(mut self) {
        self.done = true;
        let (i, o) = tokens(self.usage);
        if let Err(e) = self.state.runs.usage().settle_call(self.call, i, o).await {
            tracing::warn!(call = %self.call, error = %e, "settling a gateway call failed");
        }
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (state, call, (i, o)) = (self.state.clone(), self.call, tokens(self.usage));
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = state.runs.usage().settle_call(call, i, o).await {
                    tracing::warn!(call = %call, error = %e, "settling a gateway call failed");
                }
            });
        }
    }
}

fn tokens(u: Usage) -> (i64, i64) {
    (
        u.input_tokens.unwrap_or(0) as i64,
        u.output_tokens.unwrap_or(0) as i64,
    )
}

fn finish_reason(finish: Option<&FinishReason>, calls: bool) -> &'static str {
    match finish {
        Some(FinishReason::Length) => "length",
        Some(FinishReason::ContentFilter) => "content_filter",
        Some(FinishReason::ToolCalls) => "tool_calls",
        _ if calls => "tool_calls",
        _ => "stop",
    }
}

fn usage_json(u: Usage) -> Value {
    let (i, o) = tokens(u);
    json!({ "prompt_tokens": i, "completion_tokens": o, "total_tokens": i + o,
            "prompt_tokens_details": { "cached_tokens": 0 },
            "completion_tokens_details": { "reasoning_tokens": 0 } })
}

fn provider_failure(e: &ProviderError) -> ApiError {
    let status = match e {
        ProviderError::Api { status, .. } if (400..500).contains(status) && *status != 429 => {
            StatusCode::BAD_REQUEST
        }
        ProviderError::Api { status: 429, .. } => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_GATEWAY,
    };
    ApiError::new(
        status,
        if status == StatusCode::BAD_GATEWAY {
            "server_error"
        } else {
            "invalid_request_error"
        },
        e.to_string(),
    )
    .code("provider_error")
    .no_retry()
}

/// Answers a chat completion with a provider's model.
pub async fn complete(
    state: &AppState,
    principal: &Principal,
    call: Call<'_>,
) -> ApiResult<Response> {
    principal
        .require(Permission::ConversationWrite)
        .map_err(ApiError::from)?;
    let client = state
        .models
        .client(call.provider, principal.user_id)
        .await
        .map_err(|_| ApiError::model_not_found(call.model_id))?;
    let mut rows: Vec<(&str, &[ContentPart])> = call
        .history
        .iter()
        .map(|m| (m.role, m.content.as_slice()))
        .collect();
    if let Some(input) = &call.input {
        rows.push((MessageRole::User.as_str(), input.as_slice()));
    }
    // The client chose the model for the images it sends.
    let (system, messages) = chat_messages("", rows.into_iter(), None, true);
    let request = ChatRequest {
        model: call.model.to_owned(),
        system,
        messages,
        tools: call.tools,
        max_tokens: call.max_tokens,
        temperature: call.temperature,
        parallel_tool_calls: call.parallel_tool_calls.unwrap_or(true),
    };
    let id = Uuid::now_v7();
    let usage = state.runs.usage();
    let config = &state.config.runs;
    usage
        .admit(Admission {
            run: id,
            user: principal.user_id,
            agent: Uuid::nil(),
            provider: call.provider,
            model: call.model,
            reserve: call
                .max_tokens
                .map_or(config.quota_reservation_tokens, i64::from),
            stored: usage.limits_of(principal.user_id).await?,
            default_daily: config.default_daily_tokens,
            always_record: true,
        })
        .await?;
    let settle = Settle {
        state: state.clone(),
        call: id,
        usage: Usage::default(),
        done: false,
    };
    let completion_id = format!("chatcmpl-{}", id.simple());
    let created = chrono::Utc::now().timestamp();
    let model_id = call.model_id.to_owned();
    let mut events = client.stream(request);
    if !call.stream {
        let mut settle = settle;
        let mut acc = Accumulator::default();
        while let Some(event) = events.next().await {
            let event = event.map_err(|e| provider_failure(&e))?;
            if let StreamEvent::Usage(u) = &event {
                settle.usage = *u;
            }
            acc.push(&event).map_err(|e| provider_failure(&e))?;
        }
        let c = acc.finish();
        settle.usage = c.usage;
        settle.now().await;
        let mut message = json!({ "role": "assistant",
            "content": if c.text.is_empty() && !c.tool_calls.is_empty() { Value::Null } else { json!(c.text) },
            "refusal": null, "annotations": [] });
        if !c.tool_calls.is_empty() {
            message["tool_calls"] = json!(c
                .tool_calls
                .iter()
                .map(|t| json!({ "id": t.id, "type": "function",
                "function": { "name": t.name, "arguments": t.arguments.to_string() } }))
                .collect::<Vec<_>>());
        }
        return Ok(axum::Json(json!({
            "id": completion_id, "object": "chat.completion", "created": created, "model": model_id,
            "choices": [{ "index": 0, "message": message, "logprobs": null,
                          "finish_reason": finish_reason(c.finish.as_ref(), !c.tool_calls.is_empty()) }],
            "usage": usage_json(c.usage),
        }))
        .into_response());
    }
    let head = Head {
        id: completion_id,
        created,
        model: model_id,
    };
    let stream = chunks(events, settle, head, call.include_usage);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

/// What every chunk of one completion repeats.
struct Head {
    id: String,
    created: i64,
    model: String,
}

impl Head {
    fn chunk(&self, delta: Value, finish: Option<&str>) -> Event {
        Event::default().data(
            json!({ "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }] })
            .to_string(),
        )
    }

    fn usage(&self, usage: Usage) -> Event {
        Event::default().data(
            json!({ "id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                    "choices": [], "usage": usage_json(usage) })
            .to_string(),
        )
    }
}

/// The chunks of a streamed gateway call.
fn chunks(
    events: crate::providers::EventStream,
    settle: Settle,
    head: Head,
    include_usage: bool,
) -> impl futures_util::Stream<Item = Result<Event, Infallible>> {
    struct S {
        events: crate::providers::EventStream,
        settle: Option<Settle>,
        head: Head,
        include_usage: bool,
        started: bool,
        calls: bool,
        finish: Option<FinishReason>,
    }
    let state = S {
        events,
        settle: Some(settle),
        head,
        include_usage,
        started: false,
        calls: false,
        finish: None,
    };
    futures_util::stream::unfold(Some(state), |state| async move {
        let mut s = state?;
        let mut out = Vec::new();
        if !s.started {
            s.started = true;
            out.push(s.head.chunk(json!({ "role": "assistant", "content": "", "refusal": null }), None));
            return Some((out, Some(s)));
        }
        match s.events.next().await {
            Some(Ok(event)) => {
                match event {
                    StreamEvent::TextDelta(t) => out.push(s.head.chunk(json!({ "content": t }), None)),
                    StreamEvent::ToolCallStart { index, id, name } => {
                        s.calls = true;
                        out.push(s.head.chunk(json!({ "tool_calls": [{ "index": index, "id": id, "type": "function",
                            "function": { "name": name, "arguments": "" } }] }), None));
                    }
                    StreamEvent::ToolCallDelta { index, fragment } => out.push(s.head.chunk(
                        json!({ "tool_calls": [{ "index": index, "function": { "arguments": fragment } }] }), None)),
                    StreamEvent::Usage(u) => {
                        if let Some(settle) = s.settle.as_mut() {
                            let prev = settle.usage;
                            settle.usage = Usage {
                                input_tokens: u.input_tokens.or(prev.input_tokens),
                                output_tokens: u.output_tokens.or(prev.output_tokens),
                            };
                        }
                    }
                    StreamEvent::Finish(f) => s.finish = Some(f),
                }
                Some((out, Some(s)))
            }
            Some(Err(e)) => {
                let error = provider_failure(&e);
                out.push(Event::default().data(json!({ "error": error.body() }).to_string()));
                out.push(Event::default().data("[DONE]"));
                if let Some(settle) = s.settle.take() {
                    settle.now().await;
                }
                Some((out, None))
            }
            None => {
                out.push(s.head.chunk(json!({}), Some(finish_reason(s.finish.as_ref(), s.calls))));
                let usage = s.settle.as_ref().map(|x| x.usage).unwrap_or_default();
                if s.include_usage {
                    out.push(s.head.usage(usage));
                }
                out.push(Event::default().data("[DONE]"));
                if let Some(settle) = s.settle.take() {
                    settle.now().await;
                }
                Some((out, None))
            }
        }
    })
    .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>)))
}
