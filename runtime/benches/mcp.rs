//! MCP benchmark (on demand: `cargo bench --bench mcp`). Prints per-call
//! latency (p50, p90, p99) of the bundled calculator plugin's `evaluate`,
//! each call awaited before the next, measured with a minimal client (rmcp's
//! own, with a no-op handler):
//!
//! - in process through the tool catalogue (the sandboxed call alone);
//! - over `/mcp` (Streamable HTTP, API-key authentication on every request),
//!   with stand-alone requests (the default) and with sessions;
//! - over `orchestra mcp stdio` (a child process);
//! - bridged: Orchestra calling a tool of a bridged MCP server, itself an
//!   `orchestra mcp stdio` process (and the Python SDK fixture server, when
//!   `ORCHESTRA_TEST_MCP_PYTHON` names a Python with the `mcp` package).
//!
//! Figures to read, not assertions.

use std::future::Future;
use std::time::{Duration, Instant};

use orchestra::config::Config;
use orchestra::mcp::{CreateMcpServerRequest, StartMode, TransportKind};
use orchestra::users::model::{AuthMethod, CreateApiKeyRequest, Principal, Role};
use rmcp::model::CallToolRequestParams;
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ServiceExt;
use serde_json::{json, Map, Value};

const CALLS: usize = 2000;
const WARMUP: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn measure<F, Fut>(label: &str, mut call: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..WARMUP {
        call().await;
    }
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        call().await;
        times.push(t.elapsed());
    }
    times.sort();
    let p50 = percentile(&times, 0.5);
    println!(
        "{label:<46} p50 {:>7.1} µs   p90 {:>7.1} µs   p99 {:>7.1} µs",
        p50.as_secs_f64() * 1e6,
        percentile(&times, 0.9).as_secs_f64() * 1e6,
        percentile(&times, 0.99).as_secs_f64() * 1e6,
    );
    p50
}

fn arguments() -> Map<String, Value> {
    let Value::Object(map) = json!({ "expression": "1 + 2 * 3" }) else {
        unreachable!()
    };
    map
}

fn stdio_request(name: &str, key: &str, data_dir: &std::path::Path) -> CreateMcpServerRequest {
    CreateMcpServerRequest {
        name: name.to_owned(),
        transport: TransportKind::Stdio,
        command: Some(env!("CARGO_BIN_EXE_orchestra").to_owned()),
        args: vec![
            "mcp".into(),
            "stdio".into(),
            "--api-key".into(),
            key.to_owned(),
        ],
        env: [
            ("ORCHESTRA_DATA_DIR", data_dir.display().to_string()),
            ("ORCHESTRA_RUNS__WORKER", "false".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), orchestra::mcp::EnvValue::Plain(v)))
        .collect(),
        url: None,
        headers: Default::default(),
        bearer_token: None,
        start: StartMode::Boot,
        expose: true,
        enabled: true,
        timeout_secs: None,
        max_result_bytes: None,
        personal: false,
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut config = Config {
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".to_owned(),
        ..Config::default()
    };
    config.runs.worker = false;
    config.log.level = "warn".into();
    let state = orchestra::server::build_state(config).await.unwrap();
    let user = state
        .users
        .create_user_offline(
            "bench@example.com",
            "a long bench password".into(),
            Role::Admin,
            None,
        )
        .await
        .unwrap();
    let principal = Principal {
        user_id: user.id,
        role: Role::Admin,
        method: AuthMethod::AccessToken,
    };
    let key = state
        .users
        .create_api_key(
            &principal,
            CreateApiKeyRequest {
                name: "bench".into(),
                expires_at: None,
            },
        )
        .await
        .unwrap()
        .key;
    let args = Value::Object(arguments());
    println!("calculator__evaluate, {CALLS} calls after {WARMUP} warm-up calls, one at a time");

    let tools = state.tools.clone();
    measure("in process (catalogue, sandboxed call)", || async {
        tools
            .call("calculator__evaluate", &args, Some(user.id))
            .await
            .unwrap();
    })
    .await;

    // /mcp over Streamable HTTP: stand-alone requests (the default), then
    // with sessions.
    orchestra::mcp::install_crypto();
    let mut stops = Vec::new();
    for sessions in [false, true] {
        let mut node = state.clone();
        let mut config = (*state.config).clone();
        config.mcp.sessions = sessions;
        node.config = std::sync::Arc::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/mcp", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push((
            stop,
            tokio::spawn(orchestra::server::serve(listener, node, async {
                let _ = stopped.await;
            })),
        ));
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(key.clone()),
        );
        let client = ().serve(transport).await.expect("connect to /mcp");
        let peer = client.peer().clone();
        let label = if sessions {
            "over /mcp (Streamable HTTP, sessions)"
        } else {
            "over /mcp (Streamable HTTP, stand-alone requests)"
        };
        measure(label, || async {
            let result = peer
                .call_tool(
                    CallToolRequestParams::new("calculator__evaluate").with_arguments(arguments()),
                )
                .await
                .unwrap();
            assert_ne!(result.is_error, Some(true));
        })
        .await;
        drop(client);
    }

    // orchestra mcp stdio.
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestra"));
    command
        .args(["mcp", "stdio", "--api-key", &key])
        .env("ORCHESTRA_DATA_DIR", &data_dir)
        .env("ORCHESTRA_RUNS__WORKER", "false")
        .env("RUST_LOG", "warn");
    let client =
        ().serve(TokioChildProcess::new(command).unwrap())
            .await
            .expect("connect to orchestra mcp stdio");
    let peer = client.peer().clone();
    measure("over stdio (orchestra mcp stdio)", || async {
        let result = peer
            .call_tool(
                CallToolRequestParams::new("calculator__evaluate").with_arguments(arguments()),
            )
            .await
            .unwrap();
        assert_ne!(result.is_error, Some(true));
    })
    .await;
    drop(client);

    // Bridged: Orchestra as the client of another MCP server.
    state
        .mcp
        .create(&principal, stdio_request("peer", &key, &data_dir))
        .await
        .unwrap();
    measure("bridged (catalogue -> orchestra mcp stdio)", || async {
        tools
            .call("peer__calculator__evaluate", &args, Some(user.id))
            .await
            .unwrap();
    })
    .await;
    if let Some(python) = std::env::var_os("ORCHESTRA_TEST_MCP_PYTHON") {
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/mcp/server.py")
            .display()
            .to_string();
        state
            .mcp
            .create(
                &principal,
                CreateMcpServerRequest {
                    command: Some(python.to_string_lossy().into_owned()),
                    args: vec![fixture],
                    env: Default::default(),
                    ..stdio_request("py", &key, &data_dir)
                },
            )
            .await
            .unwrap();
        let add = json!({ "a": 1, "b": 2 });
        measure("bridged (catalogue -> Python SDK MCPServer)", || async {
            tools.call("py__add", &add, Some(user.id)).await.unwrap();
        })
        .await;
    }
    state.mcp.shutdown();
    for (stop, served) in stops {
        let _ = stop.send(());
        let _ = served.await;
    }
}
