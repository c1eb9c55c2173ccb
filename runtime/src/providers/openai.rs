//! OpenAI-compatible Chat Completions (`POST {base_url}/chat/completions`),
//! streamed: data-only SSE ending with `data: [DONE]`, tool calls
//! accumulated by their `index`, usage from the last chunk
//! (`stream_options.include_usage`). The base URL makes it work with OpenAI,
//! Ollama, vLLM, llama.cpp's server, Groq and OpenRouter alike.

use serde_json::{json, Value};

use super::{
    pump, schema, send_with_retries, spawn_stream, ChatMessage, ChatRequest, ClientPolicy,
    EventStream, FinishReason, Provider, ProviderError, StreamEvent, Usage,
};

/// A Chat Completions endpoint.
#[derive(Clone)]
pub struct OpenAiProvider {
    base_url: String,
    api_key: Option<String>,
    client: reqwest::Client,
    policy: ClientPolicy,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl OpenAiProvider {
    /// A client of `base_url` (e.g. `https://api.openai.com/v1`), with an
    /// API key unless the server needs none (a local Ollama).
    pub fn new(
        base_url: &str,
        api_key: Option<String>,
        client: reqwest::Client,
        policy: ClientPolicy,
    ) -> Self {
        OpenAiProvider {
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
            client,
            policy,
        }
    }
}

/// The request body for `request`.
pub fn body(request: &ChatRequest) -> Value {
    let mut messages = Vec::new();
    if let Some(system) = &request.system {
        messages.push(json!({ "role": "system", "content": system }));
    }
    // Images tools returned go in a user message after the tool messages
    // of the same answer (tool messages carry text only).
    let mut tool_images: Vec<Value> = Vec::new();
    for message in &request.messages {
        if !matches!(message, ChatMessage::ToolResult { .. }) && !tool_images.is_empty() {
            messages.push(json!({ "role": "user", "content": std::mem::take(&mut tool_images) }));
        }
        messages.push(match message {
            ChatMessage::User { text, images } if images.is_empty() => {
                json!({ "role": "user", "content": text })
            }
            ChatMessage::User { text, images } => {
                let mut parts = vec![json!({ "type": "text", "text": text })];
                parts.extend(images.iter().map(|url| image_part(url)));
                json!({ "role": "user", "content": parts })
            }
            ChatMessage::Assistant { text, tool_calls } => {
                let mut m = json!({ "role": "assistant", "content": text });
                if !tool_calls.is_empty() {
                    m["tool_calls"] = tool_calls
                        .iter()
                        .map(|c| {
                            json!({
                                "id": c.id,
                                "type": "function",
                                "function": { "name": c.name, "arguments": c.arguments.to_string() },
                            })
                        })
                        .collect();
                }
                m
            }
            ChatMessage::ToolResult {
                call_id,
                content,
                images,
                ..
            } => {
                if !images.is_empty() {
                    tool_images.push(json!({ "type": "text",
                        "text": format!("The images the tool call {call_id} returned:") }));
                    tool_images.extend(images.iter().map(|url| image_part(url)));
                }
                json!({ "role": "tool", "tool_call_id": call_id, "content": content })
            }
        });
    }
    if !tool_images.is_empty() {
        messages.push(json!({ "role": "user", "content": tool_images }));
    }
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "stream": true,
        "stream_options": { "include_usage": true },
    });
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({
                    "type": "function",
                    "function": {
                        "name": t.name,
                        "description": t.description,
                        "parameters": schema::for_openai(&t.parameters),
                    },
                })
            })
            .collect();
        body["tool_choice"] = json!("auto");
        body["parallel_tool_calls"] = json!(request.parallel_tool_calls);
    }
    if let Some(max) = request.max_tokens {
        body["max_tokens"] = json!(max);
    }
    if let Some(t) = request.temperature {
        body["temperature"] = json!(t);
    }
    body
}

/// An image content part.
fn image_part(url: &str) -> Value {
    json!({ "type": "image_url", "image_url": { "url": url } })
}

/// `{"error": {"message", "type", "param", "code"}}`, or whatever came.
pub fn parse_error(status: u16, body: &str) -> ProviderError {
    let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
    let error = &value["error"];
    let error_type = error["code"]
        .as_str()
        .or_else(|| error["type"].as_str())
        .unwrap_or("unknown")
        .to_owned();
    let message = error["message"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(500).collect());
    ProviderError::Api {
        status,
        error_type,
        message,
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" => FinishReason::Stop,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "length" => FinishReason::Length,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// The events of one `data:` chunk.
pub fn chunk_events(chunk: &Value) -> Result<Vec<StreamEvent>, ProviderError> {
    if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
        return Err(ProviderError::Stream {
            error_type: error["code"]
                .as_str()
                .or_else(|| error["type"].as_str())
                .unwrap_or("unknown")
                .to_owned(),
            message: error["message"].as_str().unwrap_or("").to_owned(),
        });
    }
    let mut events = Vec::new();
    if let Some(choice) = chunk["choices"].as_array().and_then(|c| c.first()) {
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            events.push(StreamEvent::TextDelta(text.to_owned()));
        }
        for call in delta["tool_calls"].as_array().into_iter().flatten() {
            let index = call["index"]
                .as_u64()
                .ok_or_else(|| ProviderError::Protocol("a tool call delta without index".into()))?
                as usize;
            if let Some(id) = call["id"].as_str() {
                events.push(StreamEvent::ToolCallStart {
                    index,
                    id: id.to_owned(),
                    name: call["function"]["name"].as_str().unwrap_or("").to_owned(),
                });
            }
            if let Some(fragment) = call["function"]["arguments"]
                .as_str()
                .filter(|f| !f.is_empty())
            {
                events.push(StreamEvent::ToolCallDelta {
                    index,
                    fragment: fragment.to_owned(),
                });
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            events.push(StreamEvent::Finish(finish_reason(reason)));
        }
    }
    let usage = &chunk["usage"];
    if usage.is_object() {
        events.push(StreamEvent::Usage(Usage {
            input_tokens: usage["prompt_tokens"].as_u64(),
            output_tokens: usage["completion_tokens"].as_u64(),
        }));
    }
    Ok(events)
}

impl Provider for OpenAiProvider {
    fn stream(&self, request: ChatRequest) -> EventStream {
        let this = self.clone();
        spawn_stream(move |sink| async move {
            let url = format!("{}/chat/completions", this.base_url);
            let body = body(&request);
            let build = || {
                let mut r = this.client.post(&url).json(&body);
                if let Some(key) = &this.api_key {
                    r = r.bearer_auth(key);
                }
                r
            };
            let response = match send_with_retries(&this.policy, build, parse_error).await {
                Ok(r) => r,
                Err(e) => {
                    sink.send(Err(e)).await;
                    return;
                }
            };
            pump(&sink, response, this.policy.idle_timeout, |event| {
                let data = event.data.trim();
                if data == "[DONE]" {
                    return Ok((Vec::new(), true));
                }
                let chunk: Value = serde_json::from_str(data).map_err(|e| {
                    ProviderError::Protocol(format!("a chunk is not JSON ({e}): {data}"))
                })?;
                Ok((chunk_events(&chunk)?, false))
            })
            .await;
        })
    }
}
