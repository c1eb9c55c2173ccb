//! The provider clients against local servers that speak each vendor's wire
//! format byte for byte (the streams below are the captured ones of the
//! vendors' SDK test fixtures): streaming text, parallel tool calls, usage,
//! errors before and inside a stream, retries, timeouts and cancellation.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use futures_util::StreamExt;
use orchestra::providers::anthropic::AnthropicProvider;
use orchestra::providers::openai::OpenAiProvider;
use orchestra::providers::{
    collect, http_client, ChatMessage, ChatRequest, ClientPolicy, FinishReason, Provider,
    ProviderError, StreamEvent, ToolCall, ToolDefinition,
};
use serde_json::{json, Value};

const OPENAI_TEXT: &str = concat!(
    "data: {\"id\":\"chatcmpl-A1\",\"object\":\"chat.completion.chunk\",\"created\":1727346173,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-A1\",\"object\":\"chat.completion.chunk\",\"created\":1727346173,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-A1\",\"object\":\"chat.completion.chunk\",\"created\":1727346173,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there!\"},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-A1\",\"object\":\"chat.completion.chunk\",\"created\":1727346173,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"chatcmpl-A1\",\"object\":\"chat.completion.chunk\",\"created\":1727346173,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":3,\"total_tokens\":12,\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

const OPENAI_TOOLS: &str = concat!(
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"id\":\"call_a1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"ci\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"ty\\\": \\\"Paris\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":\"call_b2\",\"type\":\"function\",\"function\":{\"name\":\"calculator\",\"arguments\":\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\"{\\\"expression\\\"\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"function\":{\"arguments\":\": \\\"6*7\\\"}\"}}]},\"logprobs\":null,\"finish_reason\":null}]}\n\n",
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"tool_calls\"}]}\n\n",
    "data: {\"id\":\"chatcmpl-B2\",\"object\":\"chat.completion.chunk\",\"created\":1727346178,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[],\"usage\":{\"prompt_tokens\":149,\"completion_tokens\":60,\"total_tokens\":209,\"completion_tokens_details\":{\"reasoning_tokens\":0}}}\n\n",
    "data: [DONE]\n\n",
);

const ANTHROPIC_TEXT: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_4QpJur2dWWDjF6C758FbBw5vm12BaVipnK\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there!\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":6}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

const ANTHROPIC_TOOLS: &str = concat!(
    "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_019Q1hrJbZG26Fb9BQhrkHEr\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5-20250929\",\"content\":[],\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":472,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1,\"service_tier\":\"standard\"}}}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
    "event: ping\ndata: {\"type\": \"ping\"}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Checking both.\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01A\",\"name\":\"get_weather\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"city\\\": \\\"Pa\"}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"ris\\\"}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
    "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_01B\",\"name\":\"calculator\",\"input\":{}}}\n\n",
    "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"expression\\\": \\\"6*7\\\"}\"}}\n\n",
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":2}\n\n",
    "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":89}}\n\n",
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
);

/// One scripted answer of the wire server.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// Body pieces, sent one by one.
    chunks: Vec<String>,
    /// After the pieces, keep the connection open without sending anything.
    stall: bool,
}

impl Reply {
    fn sse(body: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("content-type", "text/event-stream".to_owned())],
            // Split inside records too: clients must reassemble across reads.
            chunks: body
                .as_bytes()
                .chunks(37)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect(),
            stall: false,
        }
    }

    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: vec![("content-type", "application/json".to_owned())],
            chunks: vec![body.to_string()],
            stall: false,
        }
    }

    fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_owned()));
        self
    }
}

/// A local server speaking a vendor's wire format from a script; records
/// what it was sent and whether a streaming body was abandoned.
#[derive(Clone, Default)]
struct Wire {
    replies: Arc<Mutex<VecDeque<Reply>>>,
    requests: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
    abandoned: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

async fn answer(State(wire): State<Wire>, headers: HeaderMap, body: Bytes) -> Response {
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    wire.requests.lock().unwrap().push((headers, json));
    let reply = wire
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .expect("a scripted reply");
    let flag = DropFlag(wire.abandoned.clone());
    let stall = reply.stall;
    let pieces = futures_util::stream::iter(reply.chunks.into_iter().map(Ok::<_, Infallible>))
        .then(|c| async move {
            tokio::time::sleep(Duration::from_millis(1)).await;
            c
        })
        .chain(futures_util::stream::unfold(stall, |stall| async move {
            if stall {
                std::future::pending::<()>().await;
            }
            None
        }))
        .map(move |c| {
            let _keep = &flag;
            c
        });
    let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    for (name, value) in reply.headers {
        response = response.header(name, value);
    }
    response.body(Body::from_stream(pieces)).unwrap()
}

async fn serve_wire(replies: Vec<Reply>) -> (Wire, String) {
    let wire = Wire::default();
    wire.replies.lock().unwrap().extend(replies);
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(answer))
        .route("/v1/messages", axum::routing::post(answer))
        .with_state(wire.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (wire, base)
}

fn policy() -> ClientPolicy {
    ClientPolicy {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(200),
        max_retries: 2,
        first_byte_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..ClientPolicy::default()
    }
}

fn openai(base: &str, policy: ClientPolicy) -> OpenAiProvider {
    OpenAiProvider::new(
        &format!("{base}/v1"),
        Some("sk-test".into()),
        http_client(&policy),
        policy,
    )
}

fn anthropic(base: &str, policy: ClientPolicy) -> AnthropicProvider {
    AnthropicProvider::new(base, "sk-ant-test".into(), http_client(&policy), policy)
}

fn tools() -> Vec<ToolDefinition> {
    vec![
        ToolDefinition {
            name: "get_weather".into(),
            description: "Current weather for a city.".into(),
            parameters: json!({ "type": "object", "properties": { "city": { "type": "string" } }, "required": ["city"] }),
        },
        ToolDefinition {
            name: "calculator".into(),
            description: "Evaluate an arithmetic expression.".into(),
            parameters: json!({ "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object", "properties": { "expression": { "type": "string" } }, "required": ["expression"] }),
        },
    ]
}

/// The second turn of a tool loop, as in the wire references.
fn tool_loop() -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        system: Some("You are terse.".into()),
        messages: vec![
            ChatMessage::User {
                text: "Weather in Paris and 6*7?".into(),
                images: vec![],
            },
            ChatMessage::Assistant {
                text: Some("Checking both.".into()),
                tool_calls: vec![
                    ToolCall {
                        id: "call_a1".into(),
                        name: "get_weather".into(),
                        arguments: json!({ "city": "Paris" }),
                        arguments_error: None,
                    },
                    ToolCall {
                        id: "call_b2".into(),
                        name: "calculator".into(),
                        arguments: json!({ "expression": "6*7" }),
                        arguments_error: None,
                    },
                ],
            },
            ChatMessage::ToolResult {
                call_id: "call_a1".into(),
                content: "18C, cloudy".into(),
                is_error: false,
                images: vec![],
            },
            ChatMessage::ToolResult {
                call_id: "call_b2".into(),
                content: "calculator offline".into(),
                is_error: true,
                images: vec![],
            },
        ],
        tools: tools(),
        max_tokens: Some(1024),
        temperature: None,
        parallel_tool_calls: true,
    }
}

fn hello() -> ChatRequest {
    ChatRequest {
        model: "test-model".into(),
        system: Some("You are terse.".into()),
        messages: vec![ChatMessage::User {
            text: "Say hello".into(),
            images: vec![],
        }],
        ..ChatRequest::default()
    }
}

/// A turn with a user's image and a tool's: what vision models are sent.
fn with_images() -> ChatRequest {
    let mut request = tool_loop();
    request.messages[0] = ChatMessage::User {
        text: "What is in this photo?".into(),
        images: vec!["https://example.com/cat.jpg".into()],
    };
    if let ChatMessage::ToolResult { images, .. } = &mut request.messages[2] {
        *images = vec!["data:image/png;base64,iVBORw0KGgo=".into()];
    }
    request
}

#[tokio::test]
async fn openai_local_wire_server_receives_the_images_of_users_and_tools() {
    let (wire, base) = serve_wire(vec![Reply::sse(OPENAI_TEXT)]).await;
    collect(openai(&base, policy()).stream(with_images()), |_| {})
        .await
        .unwrap();
    let requests = wire.requests.lock().unwrap();
    let messages = requests[0].1["messages"].as_array().unwrap().clone();
    assert_eq!(
        messages[1]["content"],
        json!([{ "type": "text", "text": "What is in this photo?" },
               { "type": "image_url", "image_url": { "url": "https://example.com/cat.jpg" } }])
    );
    // Tool messages take text; the tool's image follows them, as the user's.
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(messages[3]["content"], "18C, cloudy");
    assert_eq!(messages[4]["role"], "tool");
    assert_eq!(messages[5]["role"], "user");
    assert_eq!(
        messages[5]["content"],
        json!([{ "type": "text", "text": "The images the tool call call_a1 returned:" },
               { "type": "image_url", "image_url": { "url": "data:image/png;base64,iVBORw0KGgo=" } }])
    );
    assert_eq!(messages.len(), 6);
}

#[tokio::test]
async fn anthropic_local_wire_server_receives_the_images_of_users_and_tools() {
    let (wire, base) = serve_wire(vec![Reply::sse(ANTHROPIC_TEXT)]).await;
    collect(anthropic(&base, policy()).stream(with_images()), |_| {})
        .await
        .unwrap();
    let requests = wire.requests.lock().unwrap();
    let messages = requests[0].1["messages"].as_array().unwrap().clone();
    assert_eq!(
        messages[0]["content"],
        json!([{ "type": "text", "text": "What is in this photo?" },
               { "type": "image", "source": { "type": "url", "url": "https://example.com/cat.jpg" } }])
    );
    let results = messages[2]["content"].as_array().unwrap();
    assert_eq!(
        results[0]["content"],
        json!([{ "type": "text", "text": "18C, cloudy" },
               { "type": "image", "source": { "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo=" } }])
    );
    assert_eq!(results[1]["content"], "calculator offline");
}

#[tokio::test]
async fn openai_local_wire_server_streams_text_and_usage() {
    let (wire, base) = serve_wire(vec![Reply::sse(OPENAI_TEXT)]).await;
    let mut deltas = Vec::new();
    let done = collect(openai(&base, policy()).stream(hello()), |e| {
        if let StreamEvent::TextDelta(t) = e {
            deltas.push(t.clone());
        }
    })
    .await
    .unwrap();
    assert_eq!(deltas, ["Hello", " there!"], "text arrives as it streams");
    assert_eq!(done.text, "Hello there!");
    assert_eq!(done.finish, Some(FinishReason::Stop));
    assert_eq!(done.usage.input_tokens, Some(9));
    assert_eq!(done.usage.output_tokens, Some(3));
    let requests = wire.requests.lock().unwrap();
    let (headers, body) = &requests[0];
    assert_eq!(headers["authorization"], "Bearer sk-test");
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"], json!({ "include_usage": true }));
    assert_eq!(
        body["messages"],
        json!([{ "role": "system", "content": "You are terse." }, { "role": "user", "content": "Say hello" }])
    );
    assert!(body.get("tools").is_none());
}

#[tokio::test]
async fn openai_local_wire_server_streams_parallel_tool_calls() {
    let (wire, base) = serve_wire(vec![Reply::sse(OPENAI_TOOLS)]).await;
    let done = collect(openai(&base, policy()).stream(tool_loop()), |_| {})
        .await
        .unwrap();
    assert_eq!(done.finish, Some(FinishReason::ToolCalls));
    assert_eq!(done.tool_calls.len(), 2);
    assert_eq!(done.tool_calls[0].id, "call_a1");
    assert_eq!(done.tool_calls[0].arguments, json!({ "city": "Paris" }));
    assert_eq!(done.tool_calls[1].name, "calculator");
    assert_eq!(done.tool_calls[1].arguments, json!({ "expression": "6*7" }));
    assert_eq!(done.usage.input_tokens, Some(149));

    let body = &wire.requests.lock().unwrap()[0].1;
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages[2]["role"], "assistant");
    assert_eq!(
        messages[2]["tool_calls"][0],
        json!({ "id": "call_a1", "type": "function", "function": { "name": "get_weather", "arguments": "{\"city\":\"Paris\"}" } }),
        "arguments go out as a JSON string"
    );
    assert_eq!(
        messages[3],
        json!({ "role": "tool", "tool_call_id": "call_a1", "content": "18C, cloudy" })
    );
    assert_eq!(body["tools"][1]["type"], "function");
    assert!(
        body["tools"][1]["function"]["parameters"]
            .get("$schema")
            .is_none(),
        "schemas are adapted"
    );
    assert_eq!(body["tool_choice"], "auto");
    assert_eq!(body["parallel_tool_calls"], true);
    assert_eq!(body["max_tokens"], 1024);
}

#[tokio::test]
async fn openai_local_wire_server_interleaved_calls_and_broken_arguments() {
    let chunk = |delta: Value| {
        format!(
            "data: {}\n\n",
            json!({ "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{ "index": 0, "delta": delta, "finish_reason": null }] })
        )
    };
    let body = [
        chunk(json!({ "tool_calls": [{ "index": 0, "id": "a", "type": "function", "function": { "name": "x", "arguments": "" } }] })),
        chunk(json!({ "tool_calls": [{ "index": 1, "id": "b", "type": "function", "function": { "name": "y", "arguments": "{\"n\":" } }] })),
        chunk(json!({ "tool_calls": [{ "index": 0, "function": { "arguments": "{\"m\": 1}" } }] })),
        chunk(json!({ "tool_calls": [{ "index": 1, "function": { "arguments": "oops" } }] })),
        "data: [DONE]\n\n".to_owned(),
    ]
    .concat();
    let (_, base) = serve_wire(vec![Reply::sse(&body)]).await;
    let done = collect(openai(&base, policy()).stream(hello()), |_| {})
        .await
        .unwrap();
    assert_eq!(done.tool_calls[0].arguments, json!({ "m": 1 }));
    assert_eq!(done.tool_calls[1].arguments, json!({}));
    assert!(done.tool_calls[1]
        .arguments_error
        .as_deref()
        .unwrap()
        .contains("not valid JSON"));
}

#[tokio::test]
async fn openai_local_wire_server_errors_and_retries() {
    let rate_limited = Reply::json(
        429,
        json!({ "error": { "message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded" } }),
    )
    .header("retry-after-ms", "20");
    let (wire, base) = serve_wire(vec![rate_limited, Reply::sse(OPENAI_TEXT)]).await;
    let done = collect(openai(&base, policy()).stream(hello()), |_| {})
        .await
        .unwrap();
    assert_eq!(done.text, "Hello there!");
    assert_eq!(
        wire.requests.lock().unwrap().len(),
        2,
        "retried once after the 429"
    );

    let bad_key = Reply::json(
        401,
        json!({ "error": { "message": "Incorrect API key provided: sk-abc*******xyz.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key" } }),
    );
    let quota = Reply::json(
        429,
        json!({ "error": { "message": "You exceeded your current quota", "type": "insufficient_quota", "param": null, "code": "insufficient_quota" } }),
    );
    let server = Reply::json(
        500,
        json!({ "error": { "message": "The server had an error while processing your request.", "type": "server_error", "param": null, "code": null } }),
    );
    let (wire, base) =
        serve_wire(vec![bad_key, quota, server.clone(), server.clone(), server]).await;
    let client = openai(&base, policy());
    let err = collect(client.stream(hello()), |_| {}).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Api {
            status: 401,
            error_type: "invalid_api_key".into(),
            message: "Incorrect API key provided: sk-abc*******xyz.".into()
        }
    );
    let err = collect(client.stream(hello()), |_| {}).await.unwrap_err();
    assert!(
        matches!(&err, ProviderError::Api { status: 429, error_type, .. } if error_type == "insufficient_quota"),
        "{err:?}"
    );
    assert_eq!(wire.requests.lock().unwrap().len(), 2, "neither is retried");
    let err = collect(client.stream(hello()), |_| {}).await.unwrap_err();
    assert!(
        matches!(err, ProviderError::Api { status: 500, .. }),
        "{err:?}"
    );
    assert_eq!(
        wire.requests.lock().unwrap().len(),
        5,
        "a 5xx is tried 1 + max_retries times"
    );
}

#[tokio::test]
async fn openai_local_wire_server_error_inside_the_stream() {
    let body = concat!(
        "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n\n",
        "data: {\"error\":{\"message\":\"The server had an error\",\"type\":\"server_error\",\"param\":null,\"code\":null}}\n\n",
    );
    let (wire, base) = serve_wire(vec![Reply::sse(body)]).await;
    let mut seen = String::new();
    let err = collect(openai(&base, policy()).stream(hello()), |e| {
        if let StreamEvent::TextDelta(t) = e {
            seen.push_str(t);
        }
    })
    .await
    .unwrap_err();
    assert_eq!(seen, "Hel");
    assert_eq!(
        err,
        ProviderError::Stream {
            error_type: "server_error".into(),
            message: "The server had an error".into()
        }
    );
    assert_eq!(
        wire.requests.lock().unwrap().len(),
        1,
        "a started answer is never replayed"
    );

    // A body that ends without [DONE] is an error, not a short answer.
    let cut = OPENAI_TEXT.replace("data: [DONE]\n\n", "");
    let (_, base) = serve_wire(vec![Reply::sse(&cut)]).await;
    let err = collect(openai(&base, policy()).stream(hello()), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Protocol(_)), "{err:?}");
}

#[tokio::test]
async fn anthropic_local_wire_server_streams_text_and_usage() {
    let (wire, base) = serve_wire(vec![Reply::sse(ANTHROPIC_TEXT)]).await;
    let done = collect(anthropic(&base, policy()).stream(hello()), |_| {})
        .await
        .unwrap();
    assert_eq!(done.text, "Hello there!");
    assert_eq!(done.finish, Some(FinishReason::Stop));
    assert_eq!(done.usage.input_tokens, Some(11));
    assert_eq!(
        done.usage.output_tokens,
        Some(6),
        "the last cumulative count"
    );
    let requests = wire.requests.lock().unwrap();
    let (headers, body) = &requests[0];
    assert_eq!(headers["x-api-key"], "sk-ant-test");
    assert_eq!(headers["anthropic-version"], "2023-06-01");
    assert_eq!(body["system"], "You are terse.");
    assert_eq!(body["max_tokens"], 4096, "max_tokens is always sent");
    assert_eq!(
        body["messages"],
        json!([{ "role": "user", "content": [{ "type": "text", "text": "Say hello" }] }])
    );
}

#[tokio::test]
async fn anthropic_local_wire_server_streams_text_then_parallel_tool_calls() {
    let (wire, base) = serve_wire(vec![Reply::sse(ANTHROPIC_TOOLS)]).await;
    let done = collect(anthropic(&base, policy()).stream(tool_loop()), |_| {})
        .await
        .unwrap();
    assert_eq!(done.text, "Checking both.");
    assert_eq!(done.finish, Some(FinishReason::ToolCalls));
    assert_eq!(done.tool_calls[0].id, "toolu_01A");
    assert_eq!(done.tool_calls[0].arguments, json!({ "city": "Paris" }));
    assert_eq!(done.tool_calls[1].arguments, json!({ "expression": "6*7" }));
    assert_eq!(done.usage.input_tokens, Some(472));
    assert_eq!(done.usage.output_tokens, Some(89));

    let body = &wire.requests.lock().unwrap()[0].1;
    assert_eq!(
        body["messages"][1],
        json!({ "role": "assistant", "content": [
            { "type": "text", "text": "Checking both." },
            { "type": "tool_use", "id": "call_a1", "name": "get_weather", "input": { "city": "Paris" } },
            { "type": "tool_use", "id": "call_b2", "name": "calculator", "input": { "expression": "6*7" } }
        ] })
    );
    assert_eq!(
        body["messages"][2],
        json!({ "role": "user", "content": [
            { "type": "tool_result", "tool_use_id": "call_a1", "content": "18C, cloudy" },
            { "type": "tool_result", "tool_use_id": "call_b2", "content": "calculator offline", "is_error": true }
        ] }),
        "every tool result goes in the one next user message"
    );
    assert_eq!(
        body["tools"][0]["input_schema"]["required"],
        json!(["city"])
    );
    assert!(body["tools"][1]["input_schema"].get("$schema").is_none());
    assert_eq!(body["tool_choice"], json!({ "type": "auto" }));
}

#[tokio::test]
async fn anthropic_local_wire_server_overload_retry_and_error_event() {
    let overloaded = Reply::json(
        529,
        json!({ "type": "error", "error": { "type": "overloaded_error", "message": "Overloaded" }, "request_id": "req_1" }),
    );
    let broken = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"x\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":3,\"output_tokens\":1}}}\n\n",
        "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
    );
    let (wire, base) = serve_wire(vec![
        overloaded,
        Reply::sse(ANTHROPIC_TEXT),
        Reply::sse(broken),
    ])
    .await;
    let client = anthropic(&base, policy());
    let done = collect(client.stream(hello()), |_| {}).await.unwrap();
    assert_eq!(done.text, "Hello there!");
    assert_eq!(
        wire.requests.lock().unwrap().len(),
        2,
        "the 529 was retried"
    );
    let err = collect(client.stream(hello()), |_| {}).await.unwrap_err();
    assert_eq!(
        err,
        ProviderError::Stream {
            error_type: "overloaded_error".into(),
            message: "Overloaded".into()
        }
    );
    let bad = Reply::json(
        400,
        json!({ "type": "error", "error": { "type": "invalid_request_error", "message": "max_tokens: Field required" } }),
    );
    let (wire, base) = serve_wire(vec![bad]).await;
    let err = collect(anthropic(&base, policy()).stream(hello()), |_| {})
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ProviderError::Api { status: 400, error_type, message } if error_type == "invalid_request_error" && message.contains("max_tokens")),
        "{err:?}"
    );
    assert_eq!(wire.requests.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_call_on_the_local_wire_server() {
    let mut reply = Reply::sse(&OPENAI_TEXT[..OPENAI_TEXT.find("data: {\"id\":\"chatcmpl-A1\",\"object\":\"chat.completion.chunk\",\"created\":1727346173,\"model\":\"gpt-4o-2024-08-06\",\"system_fingerprint\":\"fp_5050236cbd\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there").unwrap()]);
    reply.stall = true;
    let (wire, base) = serve_wire(vec![reply]).await;
    let mut stream = openai(&base, policy()).stream(hello());
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first, StreamEvent::TextDelta("Hello".into()));
    assert!(!wire.abandoned.load(Ordering::SeqCst));
    drop(stream);
    let mut waited = 0;
    while !wire.abandoned.load(Ordering::SeqCst) && waited < 100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        waited += 1;
    }
    assert!(
        wire.abandoned.load(Ordering::SeqCst),
        "the server saw the connection close"
    );
}

#[tokio::test]
async fn a_silent_local_wire_server_times_out() {
    let mut reply = Reply::sse("");
    reply.chunks.clear();
    reply.stall = true;
    let (_, base) = serve_wire(vec![reply]).await;
    let quick = ClientPolicy {
        idle_timeout: Duration::from_millis(200),
        ..policy()
    };
    let err = collect(anthropic(&base, quick).stream(hello()), |_| {})
        .await
        .unwrap_err();
    assert!(matches!(err, ProviderError::Timeout(_)), "{err:?}");
}
