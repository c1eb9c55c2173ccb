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
//! Stdio and HTTP are measured twice: with a minimal blocking client (JSON
//! lines on a pipe; HTTP/1.1 on one keep-alive socket), which shows what the
//! server costs, and with rmcp's client, which adds its own.
//!
//! The first line is the machine's floor, a byte to another thread and back.
//! On a VM whose idle vCPUs halt, waking the other vCPU costs far more than
//! anything measured here; `taskset -c 0 cargo bench --bench mcp` puts
//! client and server on one CPU and shows what the server itself costs.
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
    report(label, times)
}

/// Prints the percentiles of `times`; returns the p50.
fn report(label: &str, mut times: Vec<Duration>) -> Duration {
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

fn measure_blocking(label: &str, mut call: impl FnMut()) -> Duration {
    for _ in 0..WARMUP {
        call();
    }
    let mut times = Vec::with_capacity(CALLS);
    for _ in 0..CALLS {
        let t = Instant::now();
        call();
        times.push(t.elapsed());
    }
    report(label, times)
}

/// The machine's floor for everything below: one byte to another thread and
/// back over a socket pair, blocking. On a VM whose idle vCPUs halt, this
/// is where a cross-CPU wake-up shows.
#[cfg(unix)]
fn floor() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let (mut a, mut b) = UnixStream::pair().unwrap();
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8; 1];
        while b.read_exact(&mut byte).is_ok() {
            if b.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut byte = [0u8; 1];
    measure_blocking("floor: a byte to another thread and back", || {
        a.write_all(b"x").unwrap();
        a.read_exact(&mut byte).unwrap();
    });
    drop(a);
    echo.join().unwrap();
}

#[cfg(not(unix))]
fn floor() {}

fn call_message(id: u64) -> String {
    json!({ "jsonrpc": "2.0", "id": id, "method": "tools/call",
            "params": { "name": "calculator__evaluate", "arguments": { "expression": "1 + 2 * 3" } } })
    .to_string()
}

fn initialize_message() -> String {
    json!({ "jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {},
        "clientInfo": { "name": "minimal", "version": "1" } } })
    .to_string()
}

fn check_answer(answer: &str) {
    assert!(
        answer.contains("\"result\"") && !answer.contains("\"isError\":true"),
        "unexpected answer: {answer}"
    );
}

/// A minimal stdio client: JSON lines on the child's pipes, blocking.
fn minimal_stdio(key: &str, data_dir: &std::path::Path) {
    use std::io::{BufRead, Write};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_orchestra"))
        .args(["mcp", "stdio", "--api-key", key])
        .env("ORCHESTRA_DATA_DIR", data_dir)
        .env("ORCHESTRA_RUNS__WORKER", "false")
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    // Each message leaves in one write, as a client that buffers its output
    // sends it: `writeln!` on an unbuffered pipe writes piece by piece, and
    // the server would wake for each piece.
    stdin
        .write_all(format!("{}\n", initialize_message()).as_bytes())
        .unwrap();
    stdout.read_line(&mut line).unwrap();
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"notifications/initialized\"}\n")
        .unwrap();
    let mut id = 0;
    measure_blocking("over stdio, minimal client", || {
        id += 1;
        stdin
            .write_all(format!("{}\n", call_message(id)).as_bytes())
            .unwrap();
        line.clear();
        stdout.read_line(&mut line).unwrap();
        check_answer(&line);
    });
    drop(stdin);
    let _ = child.wait();
}

/// A minimal HTTP client: HTTP/1.1 on one keep-alive socket, blocking.
fn minimal_http(addr: std::net::SocketAddr, key: &str) {
    use std::io::{BufRead, Read, Write};
    let stream = std::net::TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = std::io::BufReader::new(stream);
    let mut post = |body: &str| -> String {
        // One write per request (`write!` on a socket with TCP_NODELAY would
        // send each piece of the format string as its own segment).
        let request = format!(
            "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n\
             MCP-Protocol-Version: 2025-06-18\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        writer.write_all(request.as_bytes()).unwrap();
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                }
            }
        }
        let mut body = vec![0; length.expect("a JSON response with a length")];
        reader.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    };
    post(&initialize_message());
    let mut id = 0;
    measure_blocking("over /mcp, minimal client (stand-alone requests)", || {
        id += 1;
        check_answer(&post(&call_message(id)));
    });
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
        oauth: false,
        oauth_per_user: false,
        start: StartMode::Lazy,
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
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "calculator__evaluate, {CALLS} calls after {WARMUP} warm-up calls, one at a time; \
         {cpus} CPU(s) available to client and server"
    );
    tokio::task::spawn_blocking(floor).await.unwrap();

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
        let addr = listener.local_addr().unwrap();
        let url = format!("http://{addr}/mcp");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push((
            stop,
            tokio::spawn(orchestra::server::serve(listener, node, async {
                let _ = stopped.await;
            })),
        ));
        if !sessions {
            let key = key.clone();
            tokio::task::spawn_blocking(move || minimal_http(addr, &key))
                .await
                .unwrap();
        }
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(url.as_str()).auth_header(key.clone()),
        );
        let client = ().serve(transport).await.expect("connect to /mcp");
        let peer = client.peer().clone();
        let label = if sessions {
            "over /mcp, rmcp client (sessions)"
        } else {
            "over /mcp, rmcp client (stand-alone requests)"
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
    {
        let (key, data_dir) = (key.clone(), data_dir.clone());
        tokio::task::spawn_blocking(move || minimal_stdio(&key, &data_dir))
            .await
            .unwrap();
    }
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
    measure("over stdio, rmcp client", || async {
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
