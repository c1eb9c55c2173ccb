//! The sandbox's promises, proven with a purpose-built hostile plugin
//! (`tests/fixtures/hostile`): every abuse fails only its own call, within
//! its deadline, while other calls in flight complete.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestra::sandbox::{CallLimits, EngineLimits, LoadedPlugin, Sandbox, ToolError};
use serde_json::{json, Value};

#[path = "support/build.rs"]
mod support;
use support::{hostile_wasm, template_wasm};

fn calculator_wasm() -> Vec<u8> {
    orchestra::tools::BUNDLED
        .iter()
        .find(|(name, _)| *name == "calculator")
        .expect("the calculator is bundled")
        .1
        .to_vec()
}

fn limits() -> CallLimits {
    CallLimits {
        max_memory_bytes: 32 << 20,
        timeout_ms: 500,
        max_output_bytes: 1 << 20,
        max_log_lines: 10,
        max_fuel: None,
        max_concurrent_calls: None,
    }
}

async fn load(sandbox: &Arc<Sandbox>, wasm: Vec<u8>) -> Arc<LoadedPlugin> {
    Arc::new(sandbox.load(wasm, limits()).await.expect("plugin loads"))
}

fn sandbox(cache: Option<PathBuf>) -> Arc<Sandbox> {
    Arc::new(Sandbox::new(EngineLimits::default(), cache).expect("sandbox"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calculator_runs_in_the_sandbox() {
    let sandbox = sandbox(None);
    let calc = load(&sandbox, calculator_wasm()).await;
    let manifest = calc.manifest();
    assert_eq!(manifest.name, "calculator");
    assert_eq!(manifest.tools.len(), 1);
    assert!(manifest.tools[0].read_only);
    assert_eq!(
        manifest.tools[0].input_schema["required"],
        json!(["expression"])
    );
    let out = calc
        .call("evaluate", &json!({ "expression": "2 * (3 + 4) ^ 2" }))
        .await
        .unwrap();
    assert_eq!(out, json!({ "result": 98.0 }));
    let bad = calc
        .call("evaluate", &json!({ "expression": "2 +" }))
        .await
        .unwrap_err();
    assert!(matches!(bad, ToolError::InvalidArguments(_)), "{bad:?}");
    let missing = calc
        .call("evaluate", &json!({ "expr": "1" }))
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, ToolError::InvalidArguments(m) if m.contains("expression")),
        "{missing:?}"
    );
    let unknown = calc.call("nope", &json!({})).await.unwrap_err();
    assert!(matches!(unknown, ToolError::UnknownTool(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_abuse_fails_only_its_own_call() {
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;
    let call = |tool: &'static str, args: Value| {
        let hostile = hostile.clone();
        async move {
            let started = Instant::now();
            let result = hostile.call(tool, &args).await;
            (result, started.elapsed())
        }
    };

    let (spin, took) = call("spin", json!({})).await;
    assert_eq!(spin, Err(ToolError::Timeout(500)));
    assert!(
        took < Duration::from_secs(5),
        "the deadline stopped the loop ({took:?})"
    );

    let (sleep, took) = call("sleep", json!({})).await;
    assert_eq!(
        sleep,
        Err(ToolError::Timeout(500)),
        "a blocking host call is cut by the deadline too"
    );
    assert!(took < Duration::from_secs(5));

    let (bomb, _) = call("allocate", json!({})).await;
    assert!(
        matches!(&bomb, Err(ToolError::Crashed(m)) if m.contains("memory")),
        "{bomb:?}"
    );

    let (deep, _) = call("recurse", json!({})).await;
    assert!(
        matches!(&deep, Err(ToolError::Crashed(m)) if m.contains("stack overflow")),
        "{deep:?}"
    );
    // The same on the wasm stack itself (not the guest's shadow stack) is covered by
    // wasmtime's `max_wasm_stack`; either way only this call fails.

    let (flood, _) = call("flood", json!({})).await;
    assert!(
        matches!(&flood, Err(ToolError::InvalidOutput(m)) if m.contains("limit")),
        "{flood:?}"
    );

    let (panic, _) = call("panic", json!({})).await;
    assert!(
        matches!(&panic, Err(ToolError::Crashed(m)) if m.contains("panicked on purpose")),
        "{panic:?}"
    );

    let (garbage, _) = call("garbage", json!({})).await;
    assert!(
        matches!(&garbage, Err(ToolError::InvalidOutput(m)) if m.contains("not JSON")),
        "{garbage:?}"
    );

    let (lie, _) = call("lie", json!({})).await;
    assert!(
        matches!(&lie, Err(ToolError::InvalidOutput(m)) if m.contains("output schema")),
        "{lie:?}"
    );

    let (fail, _) = call("fail", json!({})).await;
    assert_eq!(fail, Err(ToolError::Failed("failed on purpose".into())));

    // The arguments are checked against the schema before the plugin runs.
    let (bad, _) = call("echo", json!({ "n": -1 })).await;
    assert!(
        matches!(&bad, Err(ToolError::InvalidArguments(m)) if m.contains("/n")),
        "{bad:?}"
    );
    let (ok, _) = call("echo", json!({ "n": 3 })).await;
    assert_eq!(
        ok,
        Ok(json!({ "n": 3 })),
        "the plugin still works after every crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn there_is_no_ambient_authority() {
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;

    let file = hostile.call("read_file", &json!({})).await.unwrap();
    assert!(
        file.get("Err").is_some(),
        "/etc/passwd must be unreadable: {file}"
    );
    assert!(!file.to_string().contains("root:"));

    let env = hostile.call("env", &json!({})).await.unwrap();
    assert_eq!(env, json!([]), "no host environment variable is visible");

    // A listener the plugin would reach if sockets were open.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connect = hostile
        .call("connect", &json!({ "addr": addr }))
        .await
        .unwrap();
    assert!(
        connect.get("Err").is_some(),
        "TCP must be refused: {connect}"
    );

    let resolve = hostile.call("resolve", &json!({})).await.unwrap();
    assert!(
        resolve.get("Err").is_some(),
        "name lookup must be refused: {resolve}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_calls_do_not_disturb_calls_in_flight() {
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;
    let calc = load(&sandbox, calculator_wasm()).await;

    let mut abuse = Vec::new();
    for tool in ["spin", "allocate", "recurse", "panic", "sleep", "flood"] {
        let hostile = hostile.clone();
        abuse.push(tokio::spawn(
            async move { hostile.call(tool, &json!({})).await },
        ));
    }
    // Capability abuses without grants: HTTP and a secret.
    let mut denied = Vec::new();
    for (tool, args) in [
        ("http", json!({ "url": "http://127.0.0.1:9/" })),
        ("secret", json!({ "name": "api_token" })),
        ("kv", json!({})),
    ] {
        let hostile = hostile.clone();
        denied.push(tokio::spawn(async move { hostile.call(tool, &args).await }));
    }
    let mut good = Vec::new();
    for i in 0..200 {
        let calc = calc.clone();
        good.push(tokio::spawn(async move {
            calc.call("evaluate", &json!({ "expression": format!("{i} * 2") }))
                .await
        }));
    }
    for (i, handle) in good.into_iter().enumerate() {
        assert_eq!(
            handle.await.unwrap(),
            Ok(json!({ "result": (i * 2) as f64 }))
        );
    }
    for handle in abuse {
        assert!(handle.await.unwrap().is_err());
    }
    for handle in denied {
        let out = handle
            .await
            .unwrap()
            .expect("a denial is the plugin's own result");
        assert!(out.get("Err").is_some(), "{out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let first = sandbox(Some(cache.clone()));
    load(&first, calculator_wasm()).await;
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "one compiled artifact");
    // A new engine (as after a restart) loads from the cache and works.
    let second = sandbox(Some(cache.clone()));
    let calc = load(&second, calculator_wasm()).await;
    assert_eq!(
        calc.call("evaluate", &json!({ "expression": "1+1" })).await,
        Ok(json!({ "result": 2.0 }))
    );
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
}

#[tokio::test]
async fn what_is_not_a_plugin_is_refused_clearly() {
    let sandbox = sandbox(None);
    let err = sandbox
        .load(b"not wasm at all".to_vec(), limits())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not a valid WebAssembly component"),
        "{err:#}"
    );
    // A core module is not a component.
    let module = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    assert!(sandbox.load(module, limits()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_template_builds_and_runs() {
    let sandbox = sandbox(None);
    let plugin = load(&sandbox, template_wasm()).await;
    assert_eq!(plugin.manifest().name, "word-stats");
    let tool = &plugin.manifest().tools[0];
    assert_eq!(
        tool.input_schema["properties"]["text"]["description"],
        "The text to measure."
    );
    assert!(tool.output_schema.is_some());
    let out = plugin
        .call("stats", &json!({ "text": "one two\nthree" }))
        .await
        .unwrap();
    assert_eq!(out, json!({ "words": 3, "characters": 13, "lines": 2 }));
}

// ---- Capabilities: HTTP to granted hosts only, secrets by grant, key-value.

use orchestra::sandbox::{CallContext, Grants, HostServices, KvFailure, KvScope};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

fn bundled(name: &str) -> Vec<u8> {
    orchestra::tools::BUNDLED
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("{name} is bundled"))
        .1
        .to_vec()
}

/// A local web server; counts the requests it receives.
struct Site {
    addr: String,
    hits: Arc<AtomicUsize>,
}

async fn site(away: Option<String>) -> Site {
    use axum::extract::State;
    use axum::http::{header, HeaderMap, StatusCode};
    use axum::response::{Html, IntoResponse};
    use axum::routing::get;
    let hits = Arc::new(AtomicUsize::new(0));
    let away = away.unwrap_or_default();
    let app = axum::Router::new()
        .route(
            "/",
            get(|| async {
                Html("<html><head><title> Granted   page </title></head><body><h1>Hello</h1><p>Readable <b>text</b> here, see <a href=\"https://docs.example/guide\">the guide</a>.</p></body></html>")
            }),
        )
        .route(
            "/home",
            get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/")]) }),
        )
        .route(
            "/away",
            get(|State((away, _)): State<(String, Arc<AtomicUsize>)>| async move {
                (StatusCode::FOUND, [(header::LOCATION, format!("http://{away}/"))]).into_response()
            }),
        )
        .route(
            "/host",
            get(|headers: HeaderMap| async move {
                headers.get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("").to_owned()
            }),
        )
        .layer(axum::middleware::from_fn_with_state(
            hits.clone(),
            |State(hits): State<Arc<AtomicUsize>>, req: axum::extract::Request, next: axum::middleware::Next| async move {
                hits.fetch_add(1, Ordering::SeqCst);
                next.run(req).await
            },
        ))
        .with_state((away, hits.clone()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Site { addr, hits }
}

fn granting(hosts: &[&str]) -> CallContext {
    CallContext {
        user: None,
        grants: Arc::new(Grants {
            http_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ..Grants::default()
        }),
        services: None,
    }
}

fn failure(result: Result<Value, ToolError>) -> String {
    match result {
        Err(ToolError::Failed(m)) => m,
        other => panic!("expected a tool failure, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_fetch_reaches_granted_hosts_and_nothing_else() {
    let sandbox = sandbox(None);
    let fetch = load(&sandbox, bundled("http-fetch")).await;
    let other = site(None).await;
    let granted = site(Some(other.addr.clone())).await;
    let ctx = granting(&[&granted.addr]);
    let get = |url: String, ctx: CallContext| {
        let fetch = fetch.clone();
        async move { fetch.call_with("fetch", &json!({ "url": url }), &ctx).await }
    };

    let page = get(format!("http://{}/", granted.addr), ctx.clone())
        .await
        .unwrap();
    assert_eq!(page["status"], 200);
    assert_eq!(page["title"], "Granted page");
    let text = page["text"].as_str().unwrap();
    assert!(
        text.contains("Hello") && text.contains("Readable text here"),
        "{text}"
    );
    assert!(
        !text.contains("<p>") && !text.contains("**"),
        "HTML is rendered as plain text: {text}"
    );
    assert!(
        text.contains("https://docs.example/guide"),
        "links are kept: {text}"
    );

    // A redirect within the granted host is followed.
    let home = get(format!("http://{}/home", granted.addr), ctx.clone())
        .await
        .unwrap();
    assert_eq!(home["url"], format!("http://{}/", granted.addr));

    // Not granted: refused before any connection.
    let denied = failure(get(format!("http://{}/", other.addr), ctx.clone()).await);
    assert!(denied.contains("denied"), "{denied}");
    // A redirect from a granted host to another host is refused at the hop.
    let away = failure(get(format!("http://{}/away", granted.addr), ctx.clone()).await);
    assert!(away.contains("denied"), "{away}");
    // The same host under another name is another host.
    let port = granted.addr.rsplit_once(':').unwrap().1;
    let by_name = failure(get(format!("http://localhost:{port}/"), ctx.clone()).await);
    assert!(by_name.contains("denied"), "{by_name}");
    // User info in the authority does not fool the check.
    let trick = get(
        format!("http://{}@{}/", granted.addr, other.addr),
        ctx.clone(),
    )
    .await;
    assert!(
        matches!(&trick, Err(ToolError::Failed(m)) if m.contains("denied"))
            || matches!(&trick, Err(ToolError::InvalidArguments(_))),
        "{trick:?}"
    );
    // Nothing granted, nothing reachable.
    let none = failure(get(format!("http://{}/", granted.addr), CallContext::default()).await);
    assert!(none.contains("denied"), "{none}");

    assert_eq!(
        other.hits.load(Ordering::SeqCst),
        0,
        "the other host saw no request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wildcard_grant_reaches_public_addresses_only() {
    let sandbox = sandbox(None);
    let fetch = load(&sandbox, bundled("http-fetch")).await;
    let site = site(None).await;
    let port = site.addr.rsplit_once(':').unwrap().1.to_owned();
    let get = |url: String, ctx: CallContext| {
        let fetch = fetch.clone();
        async move { fetch.call_with("fetch", &json!({ "url": url }), &ctx).await }
    };
    // `*` (and `*.domain`) grants never reach loopback, however it is named.
    let anywhere = granting(&["*"]);
    for url in [
        format!("http://127.0.0.1:{port}/"),
        format!("http://localhost:{port}/"),
        format!("http://[::ffff:127.0.0.1]:{port}/"),
        format!("http://127.1:{port}/"),
    ] {
        let result = get(url.clone(), anywhere.clone()).await;
        assert!(result.is_err(), "{url}: {result:?}");
    }
    assert_eq!(
        site.hits.load(Ordering::SeqCst),
        0,
        "the site saw no request"
    );

    // A host granted by its address was named by the admin: reachable.
    let page = get(format!("http://{}/", site.addr), granting(&[&site.addr]))
        .await
        .unwrap();
    assert_eq!(page["status"], 200);
    // A name that resolves to a private address needs a private network.
    let mut grants = Grants {
        http_hosts: vec![format!("localhost:{port}")],
        ..Grants::default()
    };
    let by_name = CallContext {
        grants: Arc::new(grants.clone()),
        ..CallContext::default()
    };
    assert!(get(format!("http://localhost:{port}/"), by_name)
        .await
        .is_err());
    grants.private_networks = vec!["127.0.0.0/8".into(), "::1".into()];
    let by_name = CallContext {
        grants: Arc::new(grants),
        ..CallContext::default()
    };
    let page = get(format!("http://localhost:{port}/"), by_name)
        .await
        .unwrap();
    assert_eq!(page["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_host_header_reaches_nothing() {
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;
    let other = site(None).await;
    let granted = site(None).await;
    let ctx = granting(&[&granted.addr]);
    let http = |url: String, headers: Value| {
        let hostile = hostile.clone();
        let ctx = ctx.clone();
        async move {
            hostile
                .call_with("http", &json!({ "url": url, "headers": headers }), &ctx)
                .await
                .unwrap()
        }
    };

    // To the other host, claiming to be the granted one.
    let forged = http(
        format!("http://{}/host", other.addr),
        json!({ "host": granted.addr }),
    )
    .await;
    assert!(forged.get("Err").is_some(), "{forged}");
    let forged = http(format!("http://{}/host", other.addr), json!({})).await;
    assert!(
        forged["Err"].as_str().unwrap().contains("denied"),
        "{forged}"
    );
    assert_eq!(other.hits.load(Ordering::SeqCst), 0);

    // To the granted host, claiming to be another: the header is refused.
    let lie = http(
        format!("http://{}/host", granted.addr),
        json!({ "Host": other.addr }),
    )
    .await;
    assert!(
        lie["Err"].as_str().unwrap().contains("invalid header"),
        "{lie}"
    );
    // Without the lie, the host sets Host from the real destination.
    let honest = http(format!("http://{}/host", granted.addr), json!({})).await;
    assert_eq!(honest["Ok"]["body"], granted.addr.as_str(), "{honest}");
}

/// An in-memory store that records which secrets were looked up.
#[derive(Default)]
struct Memory {
    kv: Mutex<HashMap<(KvScope, String), Vec<u8>>>,
    secrets_read: Mutex<Vec<String>>,
}

impl HostServices for Memory {
    fn kv_get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> orchestra::sandbox::host::BoxFuture<'a, Result<Option<Vec<u8>>, KvFailure>> {
        let v = self
            .kv
            .lock()
            .unwrap()
            .get(&(scope.clone(), key.to_owned()))
            .cloned();
        Box::pin(async move { Ok(v) })
    }
    fn kv_set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        _max_keys: u64,
    ) -> orchestra::sandbox::host::BoxFuture<'a, Result<(), KvFailure>> {
        self.kv
            .lock()
            .unwrap()
            .insert((scope.clone(), key.to_owned()), value.to_vec());
        Box::pin(async { Ok(()) })
    }
    fn kv_delete<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> orchestra::sandbox::host::BoxFuture<'a, Result<bool, KvFailure>> {
        let existed = self
            .kv
            .lock()
            .unwrap()
            .remove(&(scope.clone(), key.to_owned()))
            .is_some();
        Box::pin(async move { Ok(existed) })
    }
    fn kv_list<'a>(
        &'a self,
        _scope: &'a KvScope,
        _prefix: &'a str,
        _limit: u32,
    ) -> orchestra::sandbox::host::BoxFuture<'a, Result<Vec<String>, KvFailure>> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn secret<'a>(
        &'a self,
        name: &'a str,
    ) -> orchestra::sandbox::host::BoxFuture<'a, Result<Option<String>, String>> {
        self.secrets_read.lock().unwrap().push(name.to_owned());
        Box::pin(async move { Ok(Some(format!("value-of-{name}"))) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_and_the_store_need_a_grant() {
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;
    let memory = Arc::new(Memory::default());
    let ctx = |grants: Grants| CallContext {
        user: Some("user-1".into()),
        grants: Arc::new(grants),
        services: Some(memory.clone()),
    };
    let call = |tool: &'static str, args: Value, ctx: CallContext| {
        let hostile = hostile.clone();
        async move { hostile.call_with(tool, &args, &ctx).await.unwrap() }
    };

    // Requested (api_token) but not granted.
    let nothing = ctx(Grants::default());
    let r = call("secret", json!({ "name": "api_token" }), nothing.clone()).await;
    assert!(r["Err"].as_str().unwrap().contains("not granted"), "{r}");
    let r = call("kv", json!({}), nothing).await;
    assert!(r["Err"].as_str().unwrap().contains("not granted"), "{r}");

    // Granted, including a secret it never asked for.
    let granted = ctx(Grants {
        key_value: true,
        secrets: vec!["api_token".into(), "db_password".into()],
        ..Grants::default()
    });
    let r = call("secret", json!({ "name": "api_token" }), granted.clone()).await;
    assert_eq!(r["Ok"], "value-of-api_token");
    let r = call("secret", json!({ "name": "db_password" }), granted.clone()).await;
    assert!(
        r["Err"].as_str().unwrap().contains("not granted"),
        "granted but not requested is not effective: {r}"
    );
    assert_eq!(
        *memory.secrets_read.lock().unwrap(),
        vec!["api_token".to_owned()],
        "a secret not granted is never even looked up"
    );

    let r = call("kv", json!({ "key": "a", "value": "1" }), granted.clone()).await;
    assert_eq!(r["Ok"], "1");
    let too_long = "k".repeat(300);
    let r = call("kv", json!({ "key": too_long }), granted).await;
    assert!(r["Err"].as_str().unwrap().contains("1 to 256 bytes"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fuel_budget_stops_a_loop_deterministically() {
    let sandbox = Arc::new(
        Sandbox::new(
            EngineLimits {
                fuel: true,
                ..EngineLimits::default()
            },
            None,
        )
        .unwrap(),
    );
    let budget = CallLimits {
        max_fuel: Some(5_000_000),
        timeout_ms: 60_000,
        ..limits()
    };
    let hostile = Arc::new(sandbox.load(hostile_wasm(), budget).await.unwrap());
    let spin = hostile.call("spin", &json!({})).await;
    assert!(
        matches!(&spin, Err(ToolError::Crashed(m)) if m.contains("ran out of fuel (5000000 units)")),
        "{spin:?}"
    );
    assert_eq!(
        hostile.call("echo", &json!({ "n": 1 })).await,
        Ok(json!({ "n": 1 })),
        "a call within its budget runs"
    );
    // Without a budget, a metered engine runs plugins as before.
    let calc = Arc::new(
        sandbox
            .load(calculator_wasm(), CallLimits::default())
            .await
            .unwrap(),
    );
    assert_eq!(
        calc.call("evaluate", &json!({ "expression": "6 * 7" }))
            .await,
        Ok(json!({ "result": 42.0 }))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_granted_directory_is_visible_and_only_as_granted() {
    use orchestra::sandbox::DirectoryGrant;
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hello from the host").unwrap();
    let with = |writable: bool| CallContext {
        user: None,
        grants: Arc::new(Grants {
            directories: vec![DirectoryGrant {
                path: "/data".into(),
                host: dir.path().display().to_string(),
                writable,
            }],
            ..Grants::default()
        }),
        services: None,
    };
    let fs = |args: Value, ctx: CallContext| {
        let hostile = hostile.clone();
        async move { hostile.call_with("fs", &args, &ctx).await.unwrap() }
    };

    let none = fs(json!({ "path": "/data/hello.txt" }), CallContext::default()).await;
    assert!(none.get("Err").is_some(), "nothing granted: {none}");

    let read = fs(json!({ "path": "/data/hello.txt" }), with(false)).await;
    assert_eq!(read["Ok"], "hello from the host");
    let write = fs(
        json!({ "path": "/data/new.txt", "write": "x" }),
        with(false),
    )
    .await;
    assert!(write.get("Err").is_some(), "read-only: {write}");
    assert!(!dir.path().join("new.txt").exists());
    for escape in [
        "/data/../etc/passwd",
        "/etc/passwd",
        "/data/../../../../etc/passwd",
    ] {
        let out = fs(json!({ "path": escape }), with(true)).await;
        assert!(out.get("Err").is_some(), "{escape}: {out}");
        assert!(!out.to_string().contains("root:"));
    }

    let write = fs(
        json!({ "path": "/data/new.txt", "write": "written" }),
        with(true),
    )
    .await;
    assert_eq!(write["Ok"], Value::Null, "{write}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("new.txt")).unwrap(),
        "written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_cap_on_concurrent_calls_leaves_slots_to_others() {
    let sandbox = sandbox(None);
    let capped = CallLimits {
        max_concurrent_calls: Some(1),
        timeout_ms: 300,
        ..limits()
    };
    let hostile = Arc::new(sandbox.load(hostile_wasm(), capped).await.unwrap());
    let calc = load(&sandbox, calculator_wasm()).await;
    // Three sleepers, one at a time: the last ends after about three deadlines.
    let started = Instant::now();
    let sleepers: Vec<_> = (0..3)
        .map(|_| {
            let hostile = hostile.clone();
            tokio::spawn(async move { hostile.call("sleep", &json!({})).await })
        })
        .collect();
    // Meanwhile another plugin is not held up.
    for i in 0..20 {
        assert_eq!(
            calc.call("evaluate", &json!({ "expression": format!("{i}+1") }))
                .await,
            Ok(json!({ "result": (i + 1) as f64 }))
        );
    }
    for s in sleepers {
        assert_eq!(s.await.unwrap(), Err(ToolError::Timeout(300)));
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the sleepers ran one after another ({:?})",
        started.elapsed()
    );
}
