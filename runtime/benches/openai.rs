//! OpenAI-compatible API benchmark (on demand: `cargo bench --bench
//! openai`). What Orchestra adds to a streamed chat completion over calling
//! the model server directly: the local server that speaks OpenAI's Chat
//! Completions wire format answers a short text (`Hello from the model.`,
//! five content chunks), once straight from the client and once through
//! `POST /v1/chat/completions` with an agent (a new conversation, a durable
//! run, its events stored and streamed back). For each: time to the first
//! content chunk and to `[DONE]`, p50 and p99, one request at a time and
//! with 500 concurrent clients (each one request on a connection opened
//! beforehand, all started together).
//!
//! Both paths are measured in one run on one machine, against the same
//! model server. Figures to read, not assertions.

#[path = "../tests/support/vendor.rs"]
#[allow(dead_code)]
mod vendor;

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use orchestra::config::{Config, EnvProvider};
use serde_json::{json, Value};

const SEQUENTIAL: usize = 300;
const CONCURRENT: usize = 500;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Time to the response's headers, to the first content chunk and to
/// `[DONE]` of one streamed call.
async fn one(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    model: &str,
) -> (Duration, Duration, Duration) {
    let started = Instant::now();
    let resp = client
        .post(url)
        .bearer_auth(key)
        .json(&json!({ "model": model, "stream": true,
                       "messages": [{ "role": "user", "content": "hello" }] }))
        .send()
        .await
        .expect("request");
    assert!(resp.status().is_success(), "{}", resp.status());
    let headers = started.elapsed();
    let mut body = resp.bytes_stream();
    let mut first = None;
    let mut buf = String::new();
    while let Some(bytes) = body.next().await {
        buf.push_str(&String::from_utf8_lossy(&bytes.expect("body")));
        if first.is_none() && buf.contains("\"content\":\"Hello") {
            first = Some(started.elapsed());
        }
        if buf.contains("data: [DONE]") {
            break;
        }
    }
    (headers, first.expect("a content chunk"), started.elapsed())
}

struct Figures {
    headers: Vec<Duration>,
    first: Vec<Duration>,
    total: Vec<Duration>,
}

async fn sequential(client: &reqwest::Client, url: &str, key: &str, model: &str) -> Figures {
    for _ in 0..20 {
        one(client, url, key, model).await;
    }
    let mut f = Figures {
        headers: Vec::new(),
        first: Vec::new(),
        total: Vec::new(),
    };
    for _ in 0..SEQUENTIAL {
        let (h, a, b) = one(client, url, key, model).await;
        f.headers.push(h);
        f.first.push(a);
        f.total.push(b);
    }
    f
}

/// `CONCURRENT` clients, each on a connection of its own that is open
/// before the clock starts (a warm-up request), then all at once: what is
/// measured is the server's work, not 500 TCP handshakes queueing in the
/// listen backlog (a dropped SYN is retried after a second).
async fn concurrent(url: &str, key: &str, model: &str) -> Figures {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(CONCURRENT));
    let tasks: Vec<_> = (0..CONCURRENT)
        .map(|_| {
            let (url, key, model) = (url.to_owned(), key.to_owned(), model.to_owned());
            let barrier = barrier.clone();
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .pool_max_idle_per_host(1)
                    .build()
                    .unwrap();
                let warm = url.replace("/chat/completions", "/models");
                // Read to the end, so that the connection goes back to the pool.
                if let Ok(r) = client.get(&warm).bearer_auth(&key).send().await {
                    let _ = r.bytes().await;
                }
                barrier.wait().await;
                one(&client, &url, &key, &model).await
            })
        })
        .collect();
    let mut f = Figures {
        headers: Vec::new(),
        first: Vec::new(),
        total: Vec::new(),
    };
    for t in tasks {
        let (h, a, b) = t.await.expect("task");
        f.headers.push(h);
        f.first.push(a);
        f.total.push(b);
    }
    f
}

fn report(label: &str, direct: &mut Figures, ours: &mut Figures) {
    for v in [
        &mut direct.headers,
        &mut direct.first,
        &mut direct.total,
        &mut ours.headers,
        &mut ours.first,
        &mut ours.total,
    ] {
        v.sort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("{label}");
    for (what, d, o) in [
        ("headers    ", &direct.headers, &ours.headers),
        ("first token", &direct.first, &ours.first),
        ("[DONE]     ", &direct.total, &ours.total),
    ] {
        for p in [0.5, 0.99] {
            let (a, b) = (percentile(d, p), percentile(o, p));
            println!(
                "  {what} p{:<2}: direct {:>8.2} ms   through Orchestra {:>8.2} ms   added {:>8.2} ms ({:.1}x)",
                (p * 100.0) as u32,
                ms(a),
                ms(b),
                ms(b) - ms(a),
                ms(b) / ms(a).max(1e-9)
            );
        }
    }
}

#[tokio::main]
async fn main() {
    let (vendor_base, _vendor) = vendor::vendor();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.env_providers = vec![EnvProvider {
        name: "openai".into(),
        kind: "openai".into(),
        base_url: vendor_base.clone(),
        api_key: "sk-bench".into(),
    }];
    config.runs.max_concurrent = CONCURRENT * 2;
    config.runs.max_streams_per_user = CONCURRENT * 2;
    config.database.max_connections = 32;
    let state = orchestra::server::build_state(config).await.expect("build");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(orchestra::server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let session: Value = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({ "email": "bench@example.com", "password": "correct horse battery" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["access_token"]
        .as_str()
        .expect("a token")
        .to_owned();
    let agent = client
        .post(format!("{base}/api/v1/agents"))
        .bearer_auth(&token)
        .json(&json!({ "name": "bench", "instructions": "Answer.",
                       "model": { "provider": "openai", "model": "gpt-test" } }))
        .send()
        .await
        .unwrap();
    assert!(agent.status().is_success());
    let key: Value = client
        .post(format!("{base}/api/v1/api-keys"))
        .bearer_auth(&token)
        .json(&json!({ "name": "bench" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    let direct_url = format!("{vendor_base}/chat/completions");
    let ours_url = format!("{base}/v1/chat/completions");
    println!(
        "streamed chat completions, SQLite, {} ({} one at a time, {} concurrent)",
        std::env::consts::ARCH,
        SEQUENTIAL,
        CONCURRENT
    );
    let mut d = sequential(&client, &direct_url, "sk-bench", "gpt-test").await;
    let mut o = sequential(&client, &ours_url, &key, "agent:bench").await;
    report("one at a time", &mut d, &mut o);
    let mut d = concurrent(&direct_url, "sk-bench", "gpt-test").await;
    let mut o = concurrent(&ours_url, &key, "agent:bench").await;
    report(&format!("{CONCURRENT} concurrent clients"), &mut d, &mut o);
}
