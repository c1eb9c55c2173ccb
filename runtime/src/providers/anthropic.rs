//! Anthropic Messages (`POST {base_url}/v1/messages`), streamed: named SSE
//! events (`message_start`, `content_block_*`, `message_delta`,
//! `message_stop`, `ping`, `error`). The system prompt is top-level, tool
//! calls are `tool_use` blocks whose input arrives as JSON fragments, and
//! every tool result goes back in the next user message.

use serde_json::{json, Value};

use super::{
    pump, schema, send_with_retries, spawn_stream, ChatMessage, ChatRequest, ClientPolicy,
    EventStream, FinishReason, Provider, ProviderError, StreamEvent, Usage,
};

/// The API version sent with every request.
pub const API_VERSION: &str = "2023-06-01";
/// `max_tokens` is required by the API; this is used when a request sets none.
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// An Anthropic Messages endpoint.
#[derive(Clone)]
pub struct AnthropicProvider {
    base_url: String,
    api_key: String,
    client: reqwest::Client,
    policy: ClientPolicy,
}

impl std::fmt::Debug for AnthropicProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnthropicProvider")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl AnthropicProvider {
    /// A client of `base_url` (e.g. `https://api.anthropic.com`).
    pub fn new(
        base_url: &str,
        api_key: String,
        client: reqwest::Client,
        policy: ClientPolicy,
    ) -> Self {
        AnthropicProvider {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            client,
            policy,
        }
    }
}

/// Appends `block` to the last message when it has `role`, else starts a
/// new message: consecutive same-role turns are one message.
fn push(messages: &mut Vec<Value>, role: &str, block: Value) {
    match messages.last_mut() {
        Some(last) if last["role"] == role => last["content"]
            .as_array_mut()
            .expect("content blocks")
            .push(block),
        _ => messages.push(json!({ "role": role, "content": [block] })),
    }
}

/// An image block: inline data from a `data:` URL, else by URL.
fn image_block(url: &str) -> Value {
    if let Some((mime, data)) = url
        .strip_prefix("data:")
        .and_then(|rest| rest.split_once(";base64,"))
    {
        return json!({ "type": "image",
                       "source": { "type": "base64", "media_type": mime, "data": data } });
    }
    json!({ "type": "image", "source": { "type": "url", "url": url } })
}

/// The request body for `request`.
pub fn body(request: &ChatRequest) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    for message in &request.messages {
        match message {
            ChatMessage::User { text, images } => {
                push(
                    &mut messages,
                    "user",
                    json!({ "type": "text", "text": text }),
                );
                for url in images {
                    push(&mut messages, "user", image_block(url));
                }
            }
            ChatMessage::Assistant { text, tool_calls } => {
                if let Some(text) = text.as_deref().filter(|t| !t.is_empty()) {
                    push(
                        &mut messages,
                        "assistant",
                        json!({ "type": "text", "text": text }),
                    );
                }
                for call in tool_calls {
                    push(
                        &mut messages,
                        "assistant",
                        json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments }),
                    );
                }
            }
            ChatMessage::ToolResult {
                call_id,
                content,
                is_error,
                images,
            } => {
                let content = if images.is_empty() {
                    json!(content)
                } else {
                    let mut blocks = vec![json!({ "type": "text", "text": content })];
                    blocks.extend(images.iter().map(|url| image_block(url)));
                    Value::Array(blocks)
                };
                let mut block =
                    json!({ "type": "tool_result", "tool_use_id": call_id, "content": content });
                if *is_error {
                    block["is_error"] = json!(true);
                }
                push(&mut messages, "user", block);
            }
        }
    }
    let mut body = json!({
        "model": request.model,
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
        "stream": true,
    });
    if let Some(system) = &request.system {
        body["system"] = json!(system);
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "name": t.name,
                    "description": t.description,
                    "input_schema": schema::for_anthropic(&t.parameters),
                })
            })
            .collect();
        let mut choice = json!({ "type": "auto" });
        if !request.parallel_tool_calls {
            choice["disable_parallel_tool_use"] = json!(true);
        }
        body["tool_choice"] = choice;
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// `{"type": "error", "error": {"type", "message"}}`, or whatever came.
pub fn parse_error(status: u16, body: &str) -> ProviderError {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    ProviderError::Api {
        status,
        error_type: value["error"]["type"]
            .as_str()
            .unwrap_or("unknown")
            .to_owned(),
        message: value["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| body.chars().take(500).collect()),
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "tool_use" => FinishReason::ToolCalls,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn input_tokens(usage: &Value) -> Option<u64> {
    let base = usage["input_tokens"].as_u64()?;
    Some(
        base + usage["cache_creation_input_tokens"].as_u64().unwrap_or(0)
            + usage["cache_read_input_tokens"].as_u64().unwrap_or(0),
    )
}

/// What one event means: its stream events, and whether the message is over.
pub fn event_events(name: &str, data: &Value) -> Result<(Vec<StreamEvent>, bool), ProviderError> {
    let mut events = Vec::new();
    match name {
        "message_start" => {
            let usage = &data["message"]["usage"];
            events.push(StreamEvent::Usage(Usage {
                input_tokens: input_tokens(usage),
                output_tokens: usage["output_tokens"].as_u64(),
            }));
        }
        "content_block_start" => {
            let index = data["index"].as_u64().unwrap_or(0) as usize;
            let block = &data["content_block"];
            match block["type"].as_str() {
                Some("text") => {
                    if let Some(text) = block["text"].as_str().filter(|t| !t.is_empty()) {
                        events.push(StreamEvent::TextDelta(text.to_owned()));
                    }
                }
                Some("tool_use") => {
                    events.push(StreamEvent::ToolCallStart {
                        index,
                        id: block["id"].as_str().unwrap_or("").to_owned(),
                        name: block["name"].as_str().unwrap_or("").to_owned(),
                    });
                    // A start with a non-empty input and no fragments stands as is.
                    if block["input"].as_object().is_some_and(|o| !o.is_empty()) {
                        events.push(StreamEvent::ToolCallDelta {
                            index,
                            fragment: block["input"].to_string(),
                        });
                    }
                }
                _ => {}
            }
        }
        "content_block_delta" => {
            let index = data["index"].as_u64().unwrap_or(0) as usize;
            let delta = &data["delta"];
            match delta["type"].as_str() {
                Some("text_delta") => {
                    if let Some(text) = delta["text"].as_str().filter(|t| !t.is_empty()) {
                        events.push(StreamEvent::TextDelta(text.to_owned()));
                    }
                }
                Some("input_json_delta") => {
                    if let Some(fragment) = delta["partial_json"].as_str().filter(|f| !f.is_empty())
                    {
                        events.push(StreamEvent::ToolCallDelta {
                            index,
                            fragment: fragment.to_owned(),
                        });
                    }
                }
                _ => {}
            }
        }
        "message_delta" => {
            if let Some(reason) = data["delta"]["stop_reason"].as_str() {
                events.push(StreamEvent::Finish(finish_reason(reason)));
            }
            let usage = &data["usage"];
            if usage.is_object() {
                events.push(StreamEvent::Usage(Usage {
                    input_tokens: input_tokens(usage),
                    output_tokens: usage["output_tokens"].as_u64(),
                }));
            }
        }
        "message_stop" => return Ok((events, true)),
        "error" => {
            return Err(ProviderError::Stream {
                error_type: data["error"]["type"]
                    .as_str()
                    .unwrap_or("unknown")
                    .to_owned(),
                message: data["error"]["message"].as_str().unwrap_or("").to_owned(),
            })
        }
        // ping, content_block_stop, and event types added later.
        _ => {}
    }
    Ok((events, false))
}

impl Provider for AnthropicProvider {
    fn stream(&self, request: ChatRequest) -> EventStream {
        let this = self.clone();
        spawn_stream(move |sink| async move {
            let url = format!("{}/v1/messages", this.base_url);
            let body = body(&request);
            let build = || {
                this.client
                    .post(&url)
                    .header("x-api-key", &this.api_key)
                    .header("anthropic-version", API_VERSION)
                    .json(&body)
            };
            let response = match send_with_retries(&this.policy, build, parse_error).await {
                Ok(r) => r,
                Err(e) => {
                    sink.send(Err(e)).await;
                    return;
                }
            };
            pump(&sink, response, this.policy.idle_timeout, |event| {
                let data: Value = serde_json::from_str(&event.data).map_err(|e| {
                    ProviderError::Protocol(format!("event {:?} is not JSON ({e})", event.event))
                })?;
                let name = if event.event.is_empty() {
                    data["type"].as_str().unwrap_or("").to_owned()
                } else {
                    event.event.clone()
                };
                event_events(&name, &data)
            })
            .await;
        })
    }
}
