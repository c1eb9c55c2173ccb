//! Web console benchmark (on demand: `cargo bench --bench console`; needs
//! Debian's `chromium` and `chromium-driver`). Drives a headless Chromium
//! through WebDriver against the real server (SQLite) and the local server
//! that speaks OpenAI's wire format. Printed:
//!
//! - the first load: bytes transferred (compressed) by a browser with an
//!   empty cache to show the console, by kind;
//! - the time from the model server sending a run's first word to that
//!   word on screen, through Orchestra (the model server's clock against
//!   the page's: one machine, one clock), over 10 runs;
//! - opening a conversation of 10,000 messages (time to its newest message
//!   on screen) and scrolling back through 10 pages of older ones, with the
//!   longest task the page ran (a frozen page shows as a long one).
//!
//! Figures to read, not assertions.

#[path = "../tests/support/vendor.rs"]
#[allow(dead_code)]
mod vendor;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{ClientBuilder, Locator};
use orchestra::config::{Config, EnvProvider};
use serde_json::{json, Value};

const MESSAGES: usize = 10_000;
const PASSWORD: &str = "correct horse battery";

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Value,
) -> Value {
    let r = client
        .request(method, url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let body = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{status}: {body}");
    body
}

#[tokio::main]
async fn main() {
    let (vendor_base, vendor) = vendor::vendor();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.env_providers = vec![EnvProvider {
        name: "openai".into(),
        kind: "openai".into(),
        base_url: vendor_base,
        api_key: "sk-bench".into(),
    }];
    let state = orchestra::server::build_state(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(orchestra::server::serve(
        listener,
        state,
        std::future::pending(),
    ));

    let http = reqwest::Client::new();
    let session = http
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({ "email": "bench@example.com", "password": PASSWORD }))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();
    let agent = call(
        &http,
        reqwest::Method::POST,
        format!("{base}/api/v1/agents"),
        &token,
        json!({
            "name": "bench", "instructions": "Be quick.",
            "model": { "provider": "openai", "model": "gpt-4o-mini" }, "tools": []
        }),
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let conversation = |title: &'static str| {
        let (http, base, token, agent) = (http.clone(), base.clone(), token.clone(), agent.clone());
        async move {
            call(
                &http,
                reqwest::Method::POST,
                format!("{base}/api/v1/conversations"),
                &token,
                json!({ "agent_id": agent, "title": title }),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };

    // A conversation of 10,000 messages (Markdown with code, like real ones).
    let long = conversation("Ten thousand messages").await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|w| {
            let (http, base, token, long) = (http.clone(), base.clone(), token.clone(), long.clone());
            tokio::spawn(async move {
                for i in (w..MESSAGES).step_by(8) {
                    let role = if i % 2 == 0 { "user" } else { "assistant" };
                    let content = format!("Message **{i}**: some text, a list\n\n- one\n- two\n\n```rust\nfn main() {{ println!(\"{i}\"); }}\n```");
                    call(&http, reqwest::Method::POST, format!("{base}/api/v1/conversations/{long}/messages"), &token,
                         json!({ "role": role, "content": content })).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "stored {MESSAGES} messages in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut driver = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver (apt-get install chromium chromium-driver)");
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), json!({
        "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"]
    }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = ClientBuilder::new(connector.clone())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            client = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let b = client.expect("a browser session");
    let js = |script: String| {
        let b = b.clone();
        async move { b.execute(&script, vec![]).await.unwrap() }
    };
    let until = |script: &'static str| {
        let b = b.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let v = b.execute(script, vec![]).await.unwrap();
                if v.as_bool() == Some(true) || deadline < Instant::now() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };

    // First load, empty cache: the sign-in page loads the whole console.
    b.goto(&format!("{base}/chat")).await.unwrap();
    until("return !!document.querySelector('input[type=email]')").await;
    let sizes = js("const e = performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'));
        const by = {}; let total = 0, decoded = 0;
        for (const r of e) { const k = r.name.includes('/vendor/') ? 'vendored libraries' : r.name.includes('/api/') ? 'API' : r.initiatorType === 'navigation' ? 'page' : 'console code'; by[k] = (by[k] || 0) + r.transferSize; total += r.transferSize; decoded += r.decodedBodySize; }
        return { by, total, decoded, files: e.length };".into()).await;
    println!("first load (empty cache): {} files, {:.1} KB transferred (compressed), {:.1} KB uncompressed",
        sizes["files"], sizes["total"].as_f64().unwrap() / 1024.0, sizes["decoded"].as_f64().unwrap() / 1024.0);
    for (k, v) in sizes["by"].as_object().unwrap() {
        println!("  {k}: {:.1} KB", v.as_f64().unwrap() / 1024.0);
    }

    // Sign in.
    b.find(Locator::Css("input[type=email]"))
        .await
        .unwrap()
        .send_keys("bench@example.com")
        .await
        .unwrap();
    b.find(Locator::Css("input[type=password]"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    b.find(Locator::Css("button[type=submit]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until("return !!document.querySelector('nav.sidebar')").await;

    // Time to the first token on screen.
    let mut lags = Vec::new();
    for _ in 0..10 {
        let id = conversation("stream").await;
        b.goto(&format!("{base}/chat/{id}")).await.unwrap();
        until("return !!document.querySelector('#composer-input')").await;
        js("window.__first = null; new MutationObserver((m, o) => { const t = document.querySelector('.live .md'); if (t && t.textContent.includes('tick')) { window.__first = Date.now(); o.disconnect(); } }).observe(document.body, { subtree: true, childList: true, characterData: true }); return true".into()).await;
        let input = b.find(Locator::Css("#composer-input")).await.unwrap();
        input.send_keys("slow").await.unwrap();
        input.send_keys("\u{E007}").await.unwrap();
        until("return window.__first !== null").await;
        let shown = js("return window.__first".into()).await.as_f64().unwrap();
        let sent = *vendor.first_word_ms.lock().unwrap().last().unwrap() as f64;
        lags.push(shown - sent);
        until("return !document.querySelector('.live')").await;
    }
    lags.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!("first streamed word on screen after the model server sent it (through Orchestra): p50 {:.0} ms, max {:.0} ms (10 runs)", lags[lags.len() / 2], lags[lags.len() - 1]);

    // Opening the 10,000-message conversation, then paging back.
    js("window.__long = 0; new PerformanceObserver(l => { for (const e of l.getEntries()) window.__long = Math.max(window.__long, e.duration); }).observe({ type: 'longtask', buffered: false }); return true".into()).await;
    let t = Instant::now();
    b.goto(&format!("{base}/chat/{long}")).await.unwrap();
    until("return document.querySelectorAll('.message').length >= 50").await;
    let open = t.elapsed();
    js("window.__long = 0; new PerformanceObserver(l => { for (const e of l.getEntries()) window.__long = Math.max(window.__long, e.duration); }).observe({ type: 'longtask' }); return true".into()).await;
    let t = Instant::now();
    for _ in 1..=10 {
        let first = js("return document.querySelector('.message')?.dataset.id".into()).await;
        js("const m = document.querySelector('.messages'); m.scrollTop = 0; m.dispatchEvent(new Event('scroll')); return true".into()).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while js("return document.querySelector('.message')?.dataset.id".into()).await == first
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let paging = t.elapsed();
    let rendered = js("return document.querySelectorAll('.message').length".into()).await;
    let longest = js("return window.__long".into()).await;
    println!("10,000-message conversation: newest message on screen {:.0} ms after navigation; 10 older pages in {:.0} ms ({:.0} ms a page); {} messages in the page; longest task {} ms",
        open.as_secs_f64() * 1000.0, paging.as_secs_f64() * 1000.0, paging.as_secs_f64() * 100.0, rendered, longest);

    let _ = b.close().await;
    let _ = driver.kill();
    let _ = driver.wait();
}
