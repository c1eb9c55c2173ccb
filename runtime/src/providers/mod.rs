//! Model providers: one streaming interface ([`Provider`]) over the vendors'
//! wire formats, OpenAI-compatible Chat Completions ([`openai`]: OpenAI,
//! Ollama, vLLM, llama.cpp, Groq, OpenRouter ...) and Anthropic Messages
//! ([`anthropic`]).
//!
//! A call streams [`StreamEvent`]s: text deltas, tool-call starts and
//! argument fragments, usage, the finish reason. [`collect`] folds them into a
//! [`Completion`]. Requests are retried with exponential backoff (honouring
//! `retry-after-ms`, `retry-after` and `x-should-retry`) on connection
//! errors, 408, 409, 429 (not an exhausted quota) and 5xx, but only before
//! the first byte of an answer: a stream that broke midway is an error, never
//! a silent replay. Dropping the stream cancels the request and closes the
//! connection.

pub mod anthropic;
pub mod openai;
pub mod schema;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

/// A message of the conversation, in the provider-neutral form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum ChatMessage {
    /// What the user said.
    User {
        /// The text.
        text: String,
        /// Images (`https://` or `data:` URLs), for models that take them.
        images: Vec<String>,
    },
    /// What the model answered: text, tool calls, or both.
    Assistant {
        /// The text, if any.
        text: Option<String>,
        /// The tool calls it asked for.
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    ToolResult {
        /// The id of the call it answers.
        call_id: String,
        /// The result, as text (JSON text for structured results).
        content: String,
        /// Whether the tool failed (the model sees the error).
        is_error: bool,
        /// Images the tool returned (`data:` URLs), for models that take
        /// them.
        images: Vec<String>,
    },
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The vendor's id of the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments (an object; `{}` when the model sent none).
    pub arguments: Value,
    /// Set when the model's arguments were not a JSON object; `arguments` is
    /// then `{}` and the loop should answer with an error result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments_error: Option<String>,
}

/// A tool as offered to a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// Its name (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments (adapted per vendor by [`schema`]).
    pub parameters: Value,
}

/// One model call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The vendor's model name.
    pub model: String,
    /// The system prompt (the agent's instructions).
    pub system: Option<String>,
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// The tools the model may call.
    pub tools: Vec<ToolDefinition>,
    /// Most tokens to generate.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Whether the model may ask for several tool calls at once.
    pub parallel_tool_calls: bool,
}

/// Token counts of one call. Fields are totals so far; a later event's
/// `Some` replaces an earlier one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens read (cache reads and writes included).
    pub input_tokens: Option<u64>,
    /// Tokens generated.
    pub output_tokens: Option<u64>,
}

/// Why the model stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// A final answer.
    Stop,
    /// It wants tool results.
    ToolCalls,
    /// The token limit cut it.
    Length,
    /// The vendor's filter stopped it.
    ContentFilter,
    /// Anything else the vendor said.
    Other(String),
}

/// What a streaming call yields.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// More answer text.
    TextDelta(String),
    /// A tool call begins (`index` orders the calls of this answer).
    ToolCallStart {
        /// Its slot in this answer.
        index: usize,
        /// The vendor's id of the call.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolCallDelta {
        /// The slot of the call.
        index: usize,
        /// Text to append.
        fragment: String,
    },
    /// Token counts so far.
    Usage(Usage),
    /// The model finished.
    Finish(FinishReason),
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ProviderError {
    /// The vendor answered with an error status.
    #[error("the provider answered {status} ({error_type}): {message}")]
    Api {
        /// The HTTP status.
        status: u16,
        /// The vendor's error type or code.
        error_type: String,
        /// The vendor's message.
        message: String,
    },
    /// The vendor reported an error inside a started stream.
    #[error("the provider's stream failed ({error_type}): {message}")]
    Stream {
        /// The vendor's error type.
        error_type: String,
        /// The vendor's message.
        message: String,
    },
    /// No connection, or it broke.
    #[error("could not reach the provider: {0}")]
    Transport(String),
    /// No answer, or no data, within the time allowed.
    #[error("the provider timed out: {0}")]
    Timeout(String),
    /// The answer did not follow the wire format.
    #[error("the provider's answer is malformed: {0}")]
    Protocol(String),
}

/// A stream of a call's events.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<StreamEvent, ProviderError>> + Send>>;

/// A model vendor.
pub trait Provider: Send + Sync {
    /// Starts a call and streams its events; dropping the stream cancels it.
    fn stream(&self, request: ChatRequest) -> EventStream;
}

/// Timeouts and retries of a provider client.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientPolicy {
    /// Time to connect.
    pub connect_timeout: Duration,
    /// Time from sending the request to the response's headers.
    pub first_byte_timeout: Duration,
    /// Longest silence within a streamed answer.
    pub idle_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff; doubled at each retry (with jitter).
    pub initial_backoff: Duration,
    /// Longest wait between attempts, `retry-after` included.
    pub max_backoff: Duration,
}

impl Default for ClientPolicy {
    fn default() -> Self {
        ClientPolicy {
            connect_timeout: Duration::from_secs(10),
            first_byte_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(120),
            max_retries: 3,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Builds the HTTP client providers share.
pub fn http_client(policy: &ClientPolicy) -> reqwest::Client {
    http_client_builder(policy)
        .build()
        .expect("an HTTP client with rustls")
}

/// The settings of [`http_client`], to add to.
pub fn http_client_builder(policy: &ClientPolicy) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .connect_timeout(policy.connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
}

/// How long the vendor asked us to wait, from `retry-after-ms` or
/// `retry-after` (seconds).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = get("retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    get("retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|s| Duration::from_secs_f64(s.max(0.0)))
}

fn backoff(policy: &ClientPolicy, attempt: u32) -> Duration {
    let base = policy
        .initial_backoff
        .saturating_mul(1u32 << attempt.min(16));
    // Up to 25% jitter, so that many runs do not retry in lockstep.
    let mut byte = [0u8; 1];
    let _ = getrandom::fill(&mut byte);
    let jitter = base.mul_f64(f64::from(byte[0]) / 255.0 / 4.0);
    (base + jitter).min(policy.max_backoff)
}

/// Sends a request built by `build`, retrying what may be retried. An error
/// status is read and parsed by `parse_error`.
pub(crate) async fn send_with_retries(
    policy: &ClientPolicy,
    build: impl Fn() -> reqwest::RequestBuilder,
    parse_error: fn(u16, &str) -> ProviderError,
) -> Result<reqwest::Response, ProviderError> {
    let mut attempt = 0;
    loop {
        let outcome = tokio::time::timeout(policy.first_byte_timeout, build().send()).await;
        let (error, wait) = match outcome {
            Err(_) => (
                ProviderError::Timeout(format!(
                    "no answer within {} ms",
                    policy.first_byte_timeout.as_millis()
                )),
                None,
            ),
            Ok(Err(e)) => (ProviderError::Transport(transport_message(&e)), None),
            Ok(Ok(response)) if response.status().is_success() => return Ok(response),
            Ok(Ok(response)) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                let body = tokio::time::timeout(policy.idle_timeout, response.text())
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
                let error = parse_error(status, &body);
                let should = headers
                    .get("x-should-retry")
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.eq_ignore_ascii_case("true"));
                let retryable = match should {
                    Some(explicit) => explicit,
                    None => is_retryable_status(status, &error),
                };
                if !retryable || attempt >= policy.max_retries {
                    return Err(error);
                }
                (error, retry_after(&headers))
            }
        };
        if attempt >= policy.max_retries {
            return Err(error);
        }
        let wait = wait
            .map(|w| w.min(policy.max_backoff))
            .unwrap_or_else(|| backoff(policy, attempt));
        tracing::warn!(attempt = attempt + 1, wait_ms = wait.as_millis() as u64, error = %error, "provider call failed; retrying");
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

fn transport_message(e: &reqwest::Error) -> String {
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(&format!(": {s}"));
        source = s.source();
    }
    message
}

fn is_retryable_status(status: u16, error: &ProviderError) -> bool {
    let quota = matches!(error, ProviderError::Api { error_type, .. } if error_type == "insufficient_quota");
    matches!(status, 408 | 409 | 429 | 500..=599) && !quota
}

/// Runs `produce` on a task that feeds a bounded channel, and returns the
/// channel as a stream. When the stream is dropped, `produce` is dropped at
/// its next await point: the request is cancelled and its connection closed.
pub(crate) fn spawn_stream<F>(produce: impl FnOnce(Sink) -> F) -> EventStream
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    let sink = Sink { tx: tx.clone() };
    let work = produce(sink);
    tokio::spawn(async move {
        tokio::select! {
            _ = work => {}
            _ = tx.closed() => {}
        }
    });
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// Where a producer puts events.
pub(crate) struct Sink {
    tx: mpsc::Sender<Result<StreamEvent, ProviderError>>,
}

impl Sink {
    /// Sends one item; false when the consumer is gone.
    pub(crate) async fn send(&self, item: Result<StreamEvent, ProviderError>) -> bool {
        self.tx.send(item).await.is_ok()
    }
}

/// A streamed response read as SSE events, each within the idle timeout.
pub(crate) struct SseReader {
    events: Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, String>> + Send>>,
    idle: Duration,
}

impl SseReader {
    pub(crate) fn new(response: reqwest::Response, idle: Duration) -> Self {
        use eventsource_stream::Eventsource;
        SseReader {
            events: Box::pin(
                response
                    .bytes_stream()
                    .eventsource()
                    .map(|r| r.map_err(|e| e.to_string())),
            ),
            idle,
        }
    }

    /// The next event; the end of the body before the answer is complete is
    /// an error.
    pub(crate) async fn next(&mut self) -> Result<eventsource_stream::Event, ProviderError> {
        let next = tokio::time::timeout(self.idle, self.events.next())
            .await
            .map_err(|_| {
                ProviderError::Timeout(format!(
                    "no data for {} ms mid-stream",
                    self.idle.as_millis()
                ))
            })?;
        match next {
            None => Err(ProviderError::Protocol(
                "the stream ended before the answer was complete".to_owned(),
            )),
            Some(Err(e)) => Err(ProviderError::Transport(e)),
            Some(Ok(event)) => Ok(event),
        }
    }
}

/// Streams a successful response's SSE events into `sink`, each turned into
/// stream events by `parse` (which also says when the answer is complete),
/// until the answer ends, the consumer leaves or an error comes.
pub(crate) async fn pump(
    sink: &Sink,
    response: reqwest::Response,
    idle: Duration,
    mut parse: impl FnMut(&eventsource_stream::Event) -> Result<(Vec<StreamEvent>, bool), ProviderError>,
) {
    let mut reader = SseReader::new(response, idle);
    loop {
        match reader.next().await.and_then(|event| parse(&event)) {
            Ok((events, done)) => {
                for event in events {
                    if !sink.send(Ok(event)).await {
                        return;
                    }
                }
                if done {
                    return;
                }
            }
            Err(e) => {
                sink.send(Err(e)).await;
                return;
            }
        }
    }
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Completion {
    /// The text.
    pub text: String,
    /// The tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Token counts.
    pub usage: Usage,
    /// Why it stopped.
    pub finish: Option<FinishReason>,
}

/// Folds events into a [`Completion`] one at a time (for callers that
/// forward deltas while the answer streams).
#[derive(Debug, Default)]
pub struct Accumulator {
    completion: Completion,
    calls: Vec<(usize, String, String, String)>,
}

impl Accumulator {
    /// Adds one event.
    pub fn push(&mut self, event: &StreamEvent) -> Result<(), ProviderError> {
        match event {
            StreamEvent::TextDelta(text) => self.completion.text.push_str(text),
            StreamEvent::ToolCallStart { index, id, name } => {
                self.calls
                    .push((*index, id.clone(), name.clone(), String::new()))
            }
            StreamEvent::ToolCallDelta { index, fragment } => {
                match self.calls.iter_mut().rev().find(|c| c.0 == *index) {
                    Some(call) => call.3.push_str(fragment),
                    None => {
                        return Err(ProviderError::Protocol(format!(
                            "arguments for tool call {index} before its start"
                        )))
                    }
                }
            }
            StreamEvent::Usage(usage) => {
                if usage.input_tokens.is_some() {
                    self.completion.usage.input_tokens = usage.input_tokens;
                }
                if usage.output_tokens.is_some() {
                    self.completion.usage.output_tokens = usage.output_tokens;
                }
            }
            StreamEvent::Finish(reason) => self.completion.finish = Some(reason.clone()),
        }
        Ok(())
    }

    /// The whole answer, tool-call arguments parsed.
    pub fn finish(self) -> Completion {
        let mut completion = self.completion;
        let mut calls = self.calls;
        calls.sort_by_key(|c| c.0);
        completion.tool_calls = calls
            .into_iter()
            .map(|(_, id, name, raw)| {
                let (arguments, arguments_error) = if raw.trim().is_empty() {
                    (Value::Object(Default::default()), None)
                } else {
                    match serde_json::from_str::<Value>(&raw) {
                        Ok(v @ Value::Object(_)) => (v, None),
                        Ok(_) => (
                            Value::Object(Default::default()),
                            Some("the arguments are not a JSON object".to_owned()),
                        ),
                        Err(e) => (
                            Value::Object(Default::default()),
                            Some(format!("the arguments are not valid JSON: {e}")),
                        ),
                    }
                };
                ToolCall {
                    id,
                    name,
                    arguments,
                    arguments_error,
                }
            })
            .collect();
        completion
    }
}

/// Folds a stream into a [`Completion`], calling `on_event` for each event
/// (to forward deltas live).
pub async fn collect(
    mut stream: EventStream,
    mut on_event: impl FnMut(&StreamEvent),
) -> Result<Completion, ProviderError> {
    let mut acc = Accumulator::default();
    while let Some(event) = stream.next().await {
        let event = event?;
        on_event(&event);
        acc.push(&event)?;
    }
    Ok(acc.finish())
}
