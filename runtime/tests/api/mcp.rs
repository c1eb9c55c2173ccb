//! MCP both ways, against real third-party peers from the official Python
//! SDK (`mcp` on PyPI, installed by `scripts/test`): its `MCPServer` bridged
//! over stdio and over Streamable HTTP, and its `Client` connected to
//! Orchestra's `/mcp` and to `orchestra mcp stdio`.
//!
//! The SDK's Python is `ORCHESTRA_TEST_MCP_PYTHON`, or the virtual
//! environment `scripts/test` makes in `target/mcp-venv`. Without either the
//! tests are skipped with a notice, except under `CI=true`, where they fail.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{assert_error, spawn_app_with, Backend, Session, TestApp};
use crate::dual_test;
use crate::runs::{read_events, with_vendor};

/// The Python with the MCP SDK, or `None` (skip) outside CI.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("ORCHESTRA_TEST_MCP_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/mcp-venv/bin/python")
        });
    if candidate.exists() {
        return Some(candidate);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but the MCP SDK's Python is missing ({}); scripts/test installs it",
            candidate.display()
        );
    }
    eprintln!(
        "note: MCP peer tests skipped: no Python with the `mcp` SDK at {} (run scripts/test)",
        candidate.display()
    );
    None
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/mcp")
        .join(name)
        .display()
        .to_string()
}

async fn register(app: &TestApp, session: &Session, body: Value) -> Value {
    let (status, server) = app.post("/api/v1/mcp-servers", &session.token, body).await;
    assert_eq!(status, StatusCode::CREATED, "{server}");
    server
}

pub fn stdio_server(python: &Path, name: &str) -> Value {
    json!({
        "name": name,
        "transport": "stdio",
        "command": python.display().to_string(),
        "args": [fixture("server.py")],
    })
}

async fn invoke(app: &TestApp, token: &str, tool: &str, arguments: Value) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/tools/{tool}/invoke"),
        token,
        json!({ "arguments": arguments }),
    )
    .await
}

/// Polls `GET /api/v1/mcp-servers/{id}` until `check` holds (20 s at most).
async fn wait_for(app: &TestApp, token: &str, id: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, server) = app.get(&format!("/api/v1/mcp-servers/{id}"), token).await;
        if check(&server) {
            return server;
        }
        assert!(Instant::now() < deadline, "condition not reached: {server}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent of `session` with `tools`, and the text of its answer to `message`.
async fn agent_answer(app: &TestApp, session: &Session, tools: Value, message: &str) -> String {
    let run = start_run(app, session, tools, message).await;
    let events = read_events(app, &session.token, &run, None, None).await;
    let done = events.last().unwrap();
    assert_eq!(done.kind, "done", "{events:?}");
    assert_eq!(done.data["status"], "completed", "{events:?}");
    let completed: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "message.completed" && e.data["message"]["role"] == "assistant")
        .collect();
    completed.last().unwrap().data["message"]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

dual_test!(
    a_stdio_server_is_bridged_into_the_catalogue,
    |config: &mut orchestra::config::Config| {
        with_vendor(config);
        // Sampling requests of server-wide servers go to this model.
        config.mcp.sampling_model = Some("openai/gpt-test".to_owned());
    },
    |app: TestApp| async move {
        let Some(python) = python() else { return };
        let (admin, user) = app.admin_and_user().await;
        let (status, _) = app
            .put(
                "/api/v1/secrets/fixture_token",
                &admin.token,
                json!({ "value": "s3cret-value" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);

        // Only admins run commands.
        let mut body = stdio_server(&python, "fx");
        body["env"] =
            json!({ "FIXTURE_TOKEN": { "secret": "fixture_token" }, "FIXTURE_MODE": "plain" });
        assert_error(
            &app.post("/api/v1/mcp-servers", &user.token, body.clone())
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        let server = register(&app, &admin, body).await;
        assert_eq!(server["status"]["state"], "running", "{server}");
        // Its 11 tools, and the resource reader Orchestra adds to servers
        // that offer resources.
        assert_eq!(server["status"]["tool_count"], 12, "{server}");
        assert!(!server.to_string().contains("s3cret-value"));
        assert_eq!(
            server["env"]["FIXTURE_TOKEN"],
            json!({ "secret": "fixture_token" })
        );

        // Users see server-wide tools, with their schemas and source.
        let (_, tools) = app.get("/api/v1/tools", &user.token).await;
        let add = tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "fx__add")
            .unwrap_or_else(|| panic!("fx__add missing: {tools}"));
        assert_eq!(add["source"]["kind"], "mcp");
        assert_eq!(add["source"]["server"], "fx");
        assert_eq!(add["input_schema"]["properties"]["a"]["type"], "integer");

        let (status, result) =
            invoke(&app, &user.token, "fx__add", json!({ "a": 2, "b": 3 })).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert_eq!(result["result"], json!({ "result": 5 }));

        // The secret is injected; the host's own environment is not passed.
        let (_, result) = invoke(
            &app,
            &user.token,
            "fx__env",
            json!({ "name": "FIXTURE_TOKEN" }),
        )
        .await;
        assert_eq!(result["result"], json!({ "result": "s3cret-value" }));
        let (_, result) = invoke(
            &app,
            &user.token,
            "fx__env",
            json!({ "name": "CARGO_MANIFEST_DIR" }),
        )
        .await;
        assert_eq!(result["result"], json!({ "result": "<unset>" }));

        // A tool error is the tool's failure, with its message.
        let (status, error) = invoke(&app, &user.token, "fx__fail", json!({})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("failed on purpose"),
            "{error}"
        );
        assert_error(
            &invoke(&app, &user.token, "fx__nope", json!({})).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );

        // Over /mcp, a bridged tool is served as its server described it,
        // and its result as the server sent it: typed blocks, annotations,
        // `_meta`, not a JSON string.
        let (_, key) = app.api_key(&user, "mcp").await;
        let rpc = |method: &'static str, params: Value| rpc(&app, &key, method, params);
        let listed = rpc("tools/list", json!({})).await;
        let media = listed["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "fx__media")
            .unwrap_or_else(|| panic!("{listed}"))
            .clone();
        assert_eq!(media["title"], "Media sampler", "{media}");
        assert_eq!(
            media["icons"][0]["src"], "https://example.com/icon.png",
            "{media}"
        );
        assert_eq!(media["_meta"]["example.com/origin"], "fixture", "{media}");
        assert_eq!(media["annotations"]["openWorldHint"], false, "{media}");
        let called = rpc(
            "tools/call",
            json!({ "name": "fx__media", "arguments": {} }),
        )
        .await;
        let result = &called["result"];
        let kinds: Vec<&str> = result["content"]
            .as_array()
            .unwrap_or_else(|| panic!("{called}"))
            .iter()
            .map(|c| c["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["text", "image", "audio", "resource_link", "resource"],
            "{called}"
        );
        let content = &result["content"];
        assert_eq!(content[1]["mimeType"], "image/png");
        assert!(content[1]["data"].as_str().unwrap().starts_with("iVBOR"));
        assert_eq!(content[1]["annotations"]["audience"], json!(["user"]));
        assert_eq!(content[2]["mimeType"], "audio/wav");
        assert_eq!(content[3]["uri"], "file:///reports/q3.pdf");
        assert_eq!(content[3]["title"], "Q3 report");
        assert_eq!(content[4]["resource"]["text"], "the memo");
        assert_eq!(content[4]["_meta"]["example.com/kind"], "memo");
        assert_eq!(result["_meta"]["example.com/trace"], "t-1", "{called}");

        // A server-wide server's sampling request is answered by the model
        // the admin chose.
        let (status, sampled) = invoke(
            &app,
            &user.token,
            "fx__sample",
            json!({ "question": "hello" }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{sampled}");
        let said = sampled["result"].to_string();
        assert!(
            said.contains("Hello from the model.") && said.contains("openai/gpt-test"),
            "{sampled}"
        );

        // Resources and prompts, over the REST API ...
        let id = server["id"].as_str().unwrap();
        let (status, offered) = app
            .get(&format!("/api/v1/mcp-servers/{id}/resources"), &user.token)
            .await;
        assert_eq!(status, StatusCode::OK, "{offered}");
        let uris: Vec<&str> = offered["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["uri"].as_str().unwrap())
            .collect();
        assert!(
            uris.contains(&"memo://one") && uris.contains(&"logo://png"),
            "{offered}"
        );
        assert_eq!(
            offered["resource_templates"][0]["uriTemplate"], "notes://{name}",
            "{offered}"
        );
        let (status, read) = app
            .get(
                &format!("/api/v1/mcp-servers/{id}/resources/read?uri=notes%3A%2F%2Fabc"),
                &user.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{read}");
        assert_eq!(read["contents"][0]["text"], "note abc", "{read}");
        let (status, prompts) = app
            .get(&format!("/api/v1/mcp-servers/{id}/prompts"), &user.token)
            .await;
        assert_eq!(status, StatusCode::OK, "{prompts}");
        assert_eq!(prompts[0]["name"], "review", "{prompts}");
        assert_eq!(prompts[0]["arguments"][0]["required"], true, "{prompts}");
        let (status, filled) = app
            .post(
                &format!("/api/v1/mcp-servers/{id}/prompts/get"),
                &user.token,
                json!({ "name": "review", "arguments": { "code": "x = 1", "tone": "blunt" } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{filled}");
        assert!(
            filled["messages"][0]["content"]["text"]
                .as_str()
                .unwrap()
                .contains("blunt tone"),
            "{filled}"
        );
        let (status, _) = app
            .post(
                &format!("/api/v1/mcp-servers/{id}/prompts/get"),
                &user.token,
                json!({ "name": "review", "arguments": {} }),
            )
            .await;
        assert!(
            status.is_client_error(),
            "a missing argument is the caller's error: {status}"
        );

        // ... and on /mcp, under the server's namespace.
        let listed = rpc("resources/list", json!({})).await;
        let resources = listed["result"]["resources"]
            .as_array()
            .unwrap_or_else(|| panic!("{listed}"));
        let memo = resources
            .iter()
            .find(|r| r["name"] == "fx__memo")
            .unwrap_or_else(|| panic!("{listed}"));
        assert_eq!(memo["uri"], "orchestra://mcp/fx/memo://one", "{memo}");
        assert_eq!(memo["title"], "The memo", "{memo}");
        let read = rpc(
            "resources/read",
            json!({ "uri": "orchestra://mcp/fx/logo://png" }),
        )
        .await;
        let content = &read["result"]["contents"][0];
        assert_eq!(content["uri"], "orchestra://mcp/fx/logo://png", "{read}");
        assert_eq!(content["mimeType"], "image/png", "{read}");
        assert!(
            content["blob"].as_str().unwrap().starts_with("iVBOR"),
            "{read}"
        );
        let templates = rpc("resources/templates/list", json!({})).await;
        assert_eq!(
            templates["result"]["resourceTemplates"][0]["uriTemplate"],
            "orchestra://mcp/fx/notes://{name}",
            "{templates}"
        );
        let read = rpc(
            "resources/read",
            json!({ "uri": "orchestra://mcp/fx/notes://zed" }),
        )
        .await;
        assert_eq!(read["result"]["contents"][0]["text"], "note zed", "{read}");
        let missing = rpc(
            "resources/read",
            json!({ "uri": "orchestra://mcp/nope/memo://one" }),
        )
        .await;
        assert!(missing["error"].is_object(), "{missing}");
        let prompts = rpc("prompts/list", json!({})).await;
        assert_eq!(
            prompts["result"]["prompts"][0]["name"], "fx__review",
            "{prompts}"
        );
        let filled = rpc(
            "prompts/get",
            json!({ "name": "fx__review", "arguments": { "code": "y = 2" } }),
        )
        .await;
        assert!(
            filled["result"]["messages"][0]["content"]["text"]
                .as_str()
                .unwrap()
                .contains("kind tone"),
            "{filled}"
        );

        // Media reach the model described, not as base64.
        let answer = agent_answer(&app, &user, json!(["fx__media"]), "call fx__media {}").await;
        assert!(answer.contains("four blocks follow"), "{answer}");
        assert!(answer.contains("[image image/png,"), "{answer}");
        assert!(!answer.contains("iVBOR"), "{answer}");
        // ... and the image itself, since the model takes images.
        assert!(answer.contains("(images: data:image/png)"), "{answer}");

        // An agent reads a resource through the reader tool.
        let answer = agent_answer(
            &app,
            &user,
            json!(["fx__read_resource"]),
            r#"call fx__read_resource {"uri":"notes://from-an-agent"}"#,
        )
        .await;
        assert!(answer.contains("note from-an-agent"), "{answer}");

        // An agent calls the bridged tool in a run.
        let answer = agent_answer(
            &app,
            &user,
            json!(["fx__add"]),
            r#"call fx__add {"a":2,"b":40}"#,
        )
        .await;
        assert!(answer.contains("42"), "{answer}");

        // Bad input is refused without touching what is stored.
        assert_error(
            &app.post(
                "/api/v1/mcp-servers",
                &admin.token,
                json!({ "name": "fx", "transport": "stdio", "command": "true" }),
            )
            .await,
            StatusCode::CONFLICT,
            "conflict",
        );
        for bad in [
            json!({ "name": "Bad Name", "transport": "stdio", "command": "true" }),
            json!({ "name": "a__b", "transport": "stdio", "command": "true" }),
            json!({ "name": "calculator", "transport": "stdio", "command": "true" }),
            json!({ "name": "ok", "transport": "stdio" }),
            json!({ "name": "ok", "transport": "http", "url": "ftp://x" }),
            json!({ "name": "ok", "transport": "http", "url": "http://x", "command": "true" }),
            json!({ "name": "ok", "transport": "stdio", "command": "true", "env": { "A": { "secret": "no spaces" } } }),
            json!({ "name": "ok", "transport": "stdio", "command": "true", "timeout_secs": 0 }),
            json!({ "name": "ok", "transport": "carrier-pigeon", "command": "true" }),
        ] {
            let (status, body) = app
                .post("/api/v1/mcp-servers", &admin.token, bad.clone())
                .await;
            assert!(
                status == StatusCode::BAD_REQUEST || status == StatusCode::CONFLICT,
                "{bad} -> {status} {body}"
            );
            assert!(body["error"].is_string(), "{body}");
        }
        let (_, list) = app.get("/api/v1/mcp-servers", &admin.token).await;
        assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

        // Removing the server takes its tools away.
        let id = server["id"].as_str().unwrap();
        assert_eq!(
            app.delete(&format!("/api/v1/mcp-servers/{id}"), &admin.token)
                .await
                .0,
            StatusCode::NO_CONTENT
        );
        let (_, tools) = app.get("/api/v1/tools", &user.token).await;
        assert!(!tools.to_string().contains("fx__add"));
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_server_fails_fast_and_is_restarted_with_its_tools_refreshed() {
    let Some(python) = python() else { return };
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let admin = app.register("admin@example.com").await;
    let server = register(&app, &admin, stdio_server(&python, "fx")).await;
    let id = server["id"].as_str().unwrap().to_owned();

    // The process dies in the middle of a call: that call fails, nothing else.
    let (status, error) = invoke(&app, &admin.token, "fx__crash", json!({})).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("closed the connection"),
        "{error}"
    );
    let (status, _) = invoke(
        &app,
        &admin.token,
        "calculator__evaluate",
        json!({ "expression": "1+1" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    // It is restarted with backoff, and its stderr explains the crash.
    let restarted = wait_for(&app, &admin.token, &id, |s| {
        s["status"]["state"] == "running" && s["status"]["restarts"].as_u64() >= Some(1)
    })
    .await;
    let last_error = restarted["status"]["last_error"]
        .as_str()
        .unwrap_or_default();
    assert!(last_error.contains("crashing now"), "{restarted}");
    let (status, result) = invoke(&app, &admin.token, "fx__add", json!({ "a": 1, "b": 1 })).await;
    assert_eq!(status, StatusCode::OK, "{result}");

    // notifications/tools/list_changed refreshes the catalogue.
    let (status, _) = invoke(&app, &admin.token, "fx__grow", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, tools) = app.get("/api/v1/tools", &admin.token).await;
        if tools.to_string().contains("fx__grown") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fx__grown never appeared: {tools}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, result) = invoke(&app, &admin.token, "fx__grown", json!({})).await;
    assert_eq!(result["result"], json!({ "result": "grown" }));

    // A server that cannot start: its (stored) tools fail fast while it is
    // in backoff, with the reason.
    let (status, broken) = app
        .patch(
            &format!("/api/v1/mcp-servers/{id}"),
            &admin.token,
            json!({ "args": ["-c", "import sys; print('no luck', file=sys.stderr); sys.exit(2)"] }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{broken}");
    assert_eq!(broken["status"]["state"], "backoff", "{broken}");
    assert!(
        broken["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("no luck"),
        "{broken}"
    );
    let started = Instant::now();
    let (status, error) = invoke(&app, &admin.token, "fx__add", json!({ "a": 1, "b": 1 })).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("down"),
        "{error}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Starts the fixture server over Streamable HTTP on a free port.
async fn http_fixture(
    python: &Path,
    cancelled_file: &std::path::Path,
) -> (tokio::process::Child, u16) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(python)
        .arg(fixture("server.py"))
        .arg("--http")
        .arg(port.to_string())
        .env("FIXTURE_CANCELLED_FILE", cancelled_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the HTTP fixture");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "the HTTP fixture did not listen");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_bridge_their_own_http_servers_with_timeouts_and_cancellation() {
    let Some(python) = python() else { return };
    // The fixture listens on loopback, which users' endpoints may reach only
    // where the operator allows it (tests/api/egress.rs checks the refusal).
    let app = spawn_app_with(Backend::Sqlite, |config| {
        with_vendor(config);
        config.egress.allow_private_user_endpoints = true;
        config.mcp.sampling_model = Some("openai/gpt-test".to_owned());
    })
    .await
    .unwrap();
    let (admin, user) = app.admin_and_user().await;
    let other = app.add_user(&admin, "other@example.com", "user").await;
    let dir = tempfile::tempdir().unwrap();
    let cancelled = dir.path().join("cancelled");
    let (_child, port) = http_fixture(&python, &cancelled).await;

    let server = register(
        &app,
        &user,
        json!({
            "name": "remote",
            "transport": "http",
            "url": format!("http://127.0.0.1:{port}/mcp"),
            "bearer_token": "tok-123",
            "headers": { "X-Team": "blue" },
            "timeout_secs": 1,
        }),
    )
    .await;
    assert_eq!(server["status"]["state"], "running", "{server}");
    assert_eq!(server["owner_id"], user.user_id.as_str());
    assert_eq!(server["has_bearer_token"], true);
    assert_eq!(server["header_names"], json!(["X-Team"]));
    assert!(!server.to_string().contains("tok-123"));
    let id = server["id"].as_str().unwrap();

    let (status, result) = invoke(&app, &user.token, "remote__echo", json!({ "text": "hi" })).await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["result"], json!({ "result": "hi" }));
    let answer = agent_answer(
        &app,
        &user,
        json!(["remote__add"]),
        r#"call remote__add {"a":20,"b":22}"#,
    )
    .await;
    assert!(answer.contains("42"), "{answer}");

    // A user's own server may not spend the server's model: its sampling
    // request is refused, and its tool says so.
    let (status, refused) = invoke(
        &app,
        &user.token,
        "remote__sample",
        json!({ "question": "hi" }),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert!(refused.to_string().contains("server-wide"), "{refused}");

    // Personal: nobody else sees or calls it.
    let (_, tools) = app.get("/api/v1/tools", &other.token).await;
    assert!(!tools.to_string().contains("remote__"), "{tools}");
    assert_error(
        &invoke(&app, &other.token, "remote__echo", json!({ "text": "hi" })).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &app.get(&format!("/api/v1/mcp-servers/{id}"), &other.token)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let (status, _) = app
        .post(
            "/api/v1/agents",
            &other.token,
            json!({ "name": "thief", "instructions": "x",
                    "model": { "provider": "openai", "model": "gpt-test" }, "tools": ["remote__echo"] }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // The per-call timeout ends a slow call, and the server is told to stop.
    let (status, error) = invoke(&app, &user.token, "remote__slow", json!({ "seconds": 30 })).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{error}");
    assert_eq!(error["details"]["kind"], "timeout", "{error}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&cancelled).is_ok_and(|s| s.contains("cancelled")) {
        assert!(
            Instant::now() < deadline,
            "the server never saw the cancellation"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn with_vendor_only(config: &mut orchestra::config::Config) {
    with_vendor(config);
}

/// Runs the SDK's client against `target` with `calls`; returns its report.
async fn sdk_client(
    python: &Path,
    target: &[String],
    envs: &[(&str, String)],
    calls: Value,
) -> Value {
    let mut command = tokio::process::Command::new(python);
    command
        .arg(fixture("client.py"))
        .args(target)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("start the SDK client");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(json!({ "calls": calls }).to_string().as_bytes())
            .await
            .unwrap();
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the SDK client finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|_| panic!("client output: {stdout}"))
}

fn tool_names(report: &Value) -> Vec<String> {
    report["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_owned())
        .collect()
}

dual_test!(
    a_third_party_client_uses_plugins_and_agents_over_mcp,
    |config: &mut orchestra::config::Config| {
        with_vendor(config);
    },
    |app: TestApp| async move {
        let Some(python) = python() else { return };
        let (admin, user) = app.admin_and_user().await;
        let mine = app.agent(&user, "Helper Bot").await;
        let _theirs = app.agent(&admin, "Admin Only").await;
        let (_, key) = app.api_key(&user, "mcp").await;
        let url = format!("{}/mcp", app.base);

        // No key: 401 with a Bearer challenge, before any MCP processing.
        let response = app
            .client
            .post(&url)
            .header("accept", "application/json, text/event-stream")
            .json(
                &json!({ "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": { "name": "curl", "version": "1" } } }),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], "unauthorized");
        // A browser page from another origin is refused.
        let response = app
            .client
            .post(&url)
            .bearer_auth(&key)
            .header("origin", "https://evil.example")
            .header("accept", "application/json, text/event-stream")
            .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);

        let report = sdk_client(
            &python,
            &["--url".into(), url.clone(), "--key".into(), key.clone()],
            &[],
            json!([
                { "name": "calculator__evaluate", "arguments": { "expression": "6*7" } },
                { "name": "agent__helper_bot", "arguments": { "message": "hello" } },
                { "name": "calculator__evaluate", "arguments": { "expression": "1/0" } },
                { "name": "agent__admin_only", "arguments": { "message": "hello" } },
            ]),
        )
        .await;
        let names = tool_names(&report);
        assert!(
            names.contains(&"calculator__evaluate".to_owned()),
            "{names:?}"
        );
        assert!(names.contains(&"agent__helper_bot".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("admin_only")), "{names:?}");
        let calc = &report["calls"][0];
        assert_eq!(calc["is_error"], false, "{calc}");
        assert!(calc["text"].as_str().unwrap().contains("42"), "{calc}");
        let agent = &report["calls"][1];
        assert_eq!(agent["is_error"], false, "{agent}");
        assert_eq!(
            agent["structured"]["answer"], "Hello from the model.",
            "{agent}"
        );
        assert_eq!(agent["structured"]["status"], "completed", "{agent}");
        let conversation = agent["structured"]["conversation_id"].as_str().unwrap();
        let (status, conv) = app
            .get(
                &format!("/api/v1/conversations/{conversation}"),
                &user.token,
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(conv["agent_id"].as_str(), Some(mine.as_str()));
        let calls = &report["calls"];
        assert_eq!(calls[2]["is_error"], true, "{calls}");
        assert!(calls[3]["protocol_error"].is_string(), "{calls}");

        // The same catalogue over stdio, from the binary on the same data.
        let mut envs = vec![
            (
                "ORCHESTRA_DATA_DIR",
                app.config.data_dir.display().to_string(),
            ),
            ("ORCHESTRA_RUNS__WORKER", "false".to_owned()),
            ("RUST_LOG", "warn".to_owned()),
        ];
        if let Some(url) = &app.config.database_url {
            envs.push(("ORCHESTRA_DATABASE_URL", url.clone()));
        }
        // The same provider as the server's, from the conventional variables.
        let vendor = &app.config.env_providers[0];
        envs.push(("OPENAI_BASE_URL", vendor.base_url.clone()));
        envs.push(("OPENAI_API_KEY", vendor.api_key.clone()));
        let report = sdk_client(
            &python,
            &[
                "--stdio".into(),
                env!("CARGO_BIN_EXE_orchestra").into(),
                "mcp".into(),
                "stdio".into(),
                "--api-key".into(),
                key.clone(),
            ],
            &envs,
            json!([
                { "name": "calculator__evaluate", "arguments": { "expression": "2+3" } },
                { "name": "agent__helper_bot", "arguments": { "message": "hello again" } },
            ]),
        )
        .await;
        let names = tool_names(&report);
        assert!(names.contains(&"agent__helper_bot".to_owned()), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("admin_only")), "{names:?}");
        let calls = &report["calls"];
        assert!(calls[0]["text"].as_str().unwrap().contains('5'), "{calls}");
        // The stdio process does not execute runs here (runs.worker=false):
        // this server's engine does, and the answer comes back all the same.
        assert_eq!(
            calls[1]["structured"]["answer"], "Hello from the model.",
            "{calls}"
        );
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tools_report_progress_and_a_cancelled_call_cancels_its_run() {
    let Some(python) = python() else { return };
    let app = spawn_app_with(Backend::Sqlite, with_vendor_only)
        .await
        .unwrap();
    let user = app.register("owner@example.com").await;
    app.agent(&user, "Talker").await;
    let (_, key) = app.api_key(&user, "mcp").await;
    let report = sdk_client(
        &python,
        &[
            "--url".into(),
            format!("{}/mcp", app.base),
            "--key".into(),
            key,
        ],
        &[],
        json!([
            // A quick turn: progress follows the run's steps.
            { "name": "agent__talker", "arguments": { "message": "hello" } },
            // "slow" streams for about 4 s; the client gives up after 1 s.
            { "name": "agent__talker", "arguments": { "message": "slow" }, "timeout": 1 },
        ]),
    )
    .await;
    let calls = &report["calls"];
    assert_eq!(calls[0]["structured"]["status"], "completed", "{calls}");
    assert!(calls[0]["progress"].as_u64() >= Some(1), "{calls}");
    assert!(calls[1]["protocol_error"].is_string(), "{calls}");

    // The abandoned call's run is cancelled, not left running.
    let (_, conversations) = app.get("/api/v1/conversations", &user.token).await;
    let mut statuses = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        statuses.clear();
        for conversation in conversations["items"].as_array().unwrap() {
            let id = conversation["id"].as_str().unwrap();
            let (_, runs) = app
                .get(&format!("/api/v1/conversations/{id}/runs"), &user.token)
                .await;
            for run in runs["items"].as_array().unwrap() {
                statuses.push(run["status"].as_str().unwrap().to_owned());
            }
        }
        statuses.sort();
        if statuses == ["cancelled", "completed"] {
            break;
        }
        assert!(Instant::now() < deadline, "runs: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Processes whose command line contains `needle` (Linux `/proc`).
fn processes_with(needle: &str) -> usize {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
                .filter(|cmdline| String::from_utf8_lossy(cmdline).contains(needle))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orchestra_bridges_its_own_stdio_server_without_starting_copies_of_itself() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await.unwrap();
    let admin = app.register("admin@example.com").await;
    let (_, key) = app.api_key(&admin, "self").await;
    let server = register(
        &app,
        &admin,
        json!({
            "name": "selfie",
            "transport": "stdio",
            "command": env!("CARGO_BIN_EXE_orchestra"),
            "args": ["mcp", "stdio", "--api-key", key],
            "env": {
                "ORCHESTRA_DATA_DIR": app.config.data_dir.display().to_string(),
                "ORCHESTRA_RUNS__WORKER": "false",
                "RUST_LOG": "warn",
            },
            "start": "boot",
        }),
    )
    .await;
    assert_eq!(server["status"]["state"], "running", "{server}");
    let (status, result) = invoke(
        &app,
        &admin.token,
        "selfie__calculator__evaluate",
        json!({ "expression": "6*7" }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{result}");
    assert_eq!(result["result"]["result"], 42.0, "{result}");
    // The child loads the same servers, "selfie" among them, but does not
    // start them: exactly one copy runs.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(processes_with(&key), 1);
    let id = server["id"].as_str().unwrap();
    app.delete(&format!("/api/v1/mcp-servers/{id}"), &admin.token)
        .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while processes_with(&key) > 0 {
        assert!(
            Instant::now() < deadline,
            "the bridged process outlived its removal"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One JSON-RPC request to `/mcp` under revision 2025-11-25, with `key`:
/// its answer.
async fn rpc(app: &TestApp, key: &str, method: &str, params: Value) -> Value {
    let body = json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params });
    post_mcp(app, key, Some("2025-11-25"), body.to_string())
        .await
        .1
}

/// What the OAuth fixture at `base` counted.
async fn provider_stats(app: &TestApp, base: &str) -> Value {
    app.client
        .get(format!("{base}/test/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A raw JSON-RPC POST to `/mcp` with `revision` (when given) as the
/// `MCP-Protocol-Version` header.
async fn post_mcp(
    app: &TestApp,
    key: &str,
    revision: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, Value) {
    let mut request = app
        .client
        .post(format!("{}/mcp", app.base))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body);
    if let Some(revision) = revision {
        request = request.header("mcp-protocol-version", revision);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_mcp_answers_parse_errors_batches_per_revision_and_cancellations() {
    let app = spawn_app_with(Backend::Sqlite, with_vendor_only)
        .await
        .unwrap();
    let (admin, user) = app.admin_and_user().await;
    app.agent(&user, "Talker").await;
    let (_, key) = app.api_key(&user, "mcp").await;
    let (_, other_key) = app.api_key(&admin, "other").await;

    // Not JSON: the JSON-RPC parse error, id null.
    let (status, body) = post_mcp(&app, &key, None, "{\"jsonrpc\": \"2.0\", \"id\": 1,").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], -32700, "{body}");
    assert_eq!(body["id"], Value::Null, "{body}");
    // Still authenticated first.
    let (status, _) = post_mcp(&app, "wrong", None, "not json").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // A batch under 2025-03-26 (and without a header, which means it): each
    // request answered, in one array; notifications get no answer.
    let batch = json!([
        { "jsonrpc": "2.0", "id": 1, "method": "ping" },
        { "jsonrpc": "2.0", "method": "notifications/initialized" },
        { "jsonrpc": "2.0", "id": "two", "method": "tools/list" },
        { "jsonrpc": "2.0", "id": 3, "method": "tools/call",
          "params": { "name": "calculator__evaluate", "arguments": { "expression": "6*7" } } },
        { "jsonrpc": "2.0", "id": 4, "method": "no/such/method" },
    ]);
    for revision in [Some("2025-03-26"), None] {
        let (status, body) = post_mcp(&app, &key, revision, batch.to_string()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let answers = body.as_array().unwrap_or_else(|| panic!("{body}"));
        assert_eq!(answers.len(), 4, "{body}");
        let by_id = |id: Value| answers.iter().find(|a| a["id"] == id).unwrap().clone();
        assert!(by_id(json!(1))["result"].is_object(), "{body}");
        let tools = by_id(json!("two"));
        assert!(tools["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "agent__talker"));
        let call = by_id(json!(3));
        assert!(
            call["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .contains("42"),
            "{call}"
        );
        assert_eq!(by_id(json!(4))["error"]["code"], -32601, "{body}");
    }
    // Only notifications: 202 and no body.
    let (status, _) = post_mcp(
        &app,
        &key,
        Some("2025-03-26"),
        json!([{ "jsonrpc": "2.0", "method": "notifications/initialized" }]).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Empty, and initialize inside a batch: refused.
    let (status, body) = post_mcp(&app, &key, Some("2025-03-26"), "[]").await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (StatusCode::BAD_REQUEST, &json!(-32600))
    );
    let (_, body) = post_mcp(
        &app,
        &key,
        Some("2025-03-26"),
        json!([{ "jsonrpc": "2.0", "id": 9, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": { "name": "raw", "version": "1" } } }])
        .to_string(),
    )
    .await;
    assert_eq!(body[0]["error"]["code"], -32600, "{body}");
    // Later revisions removed batches.
    for revision in ["2025-06-18", "2025-11-25"] {
        let (status, body) = post_mcp(&app, &key, Some(revision), batch.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["error"]["code"], -32600, "{body}");
        assert!(body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(revision));
    }

    // Cancellation without a session: "slow" streams for about 4 s.
    let call = {
        let (app_client, base, key) = (app.client.clone(), app.base.clone(), key.clone());
        tokio::spawn(async move {
            let response = app_client
                .post(format!("{base}/mcp"))
                .bearer_auth(&key)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-06-18")
                .json(&json!({ "jsonrpc": "2.0", "id": 77, "method": "tools/call",
                    "params": { "name": "agent__talker", "arguments": { "message": "slow" } } }))
                .send()
                .await
                .unwrap();
            response.json::<Value>().await.unwrap()
        })
    };
    let run_status = |app: &TestApp, token: String| {
        let app_client = app.client.clone();
        let base = app.base.clone();
        async move {
            let conversations: Value = app_client
                .get(format!("{base}/api/v1/conversations"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let Some(id) = conversations["items"][0]["id"].as_str() else {
                return String::new();
            };
            let runs: Value = app_client
                .get(format!("{base}/api/v1/conversations/{id}/runs"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            runs["items"][0]["status"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while run_status(&app, user.token.clone()).await != "running" {
        assert!(Instant::now() < deadline, "the run never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancel = json!({ "jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": { "requestId": 77, "reason": "changed my mind" } })
    .to_string();
    // Another caller's cancellation of the same request id touches nothing.
    let (status, _) = post_mcp(&app, &other_key, Some("2025-06-18"), cancel.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(run_status(&app, user.token.clone()).await, "running");
    // The caller's own ends the call and its run.
    let (status, _) = post_mcp(&app, &key, Some("2025-06-18"), cancel).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let answer = tokio::time::timeout(Duration::from_secs(3), call)
        .await
        .expect("the cancelled call answered at once")
        .unwrap();
    assert_eq!(answer["id"], 77, "{answer}");
    assert_eq!(answer["error"]["code"], -32800, "{answer}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while run_status(&app, user.token.clone()).await != "cancelled" {
        assert!(Instant::now() < deadline, "the run was not cancelled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

dual_test!(
    a_remote_client_of_the_official_sdk_connects_through_the_oauth_flow,
    |config: &mut orchestra::config::Config| {
        with_vendor(config);
        // Short-lived access tokens: the client must refresh during the run.
        config.oauth.access_token_ttl_secs = 2;
    },
    |app: TestApp| async move {
        let Some(python) = python() else { return };
        let user = app.register("remote@example.com").await;
        app.agent(&user, "Helper").await;
        let url = format!("{}/mcp", app.base);
        let mut child = tokio::process::Command::new(&python)
            .arg(fixture("oauth_client.py"))
            .args(["--url", &url, "--email", "remote@example.com"])
            .args([
                "--password",
                "correct horse battery",
                "--first-scopes",
                "tools:read tools:call",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SDK's OAuth client");
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = child.stdin.take().unwrap();
            let plan = json!({ "calls": [
                { "name": "calculator__evaluate", "arguments": { "expression": "6*7" } },
                // Needs agents:run, which the first approval left out: the
                // client steps up and the user approves again.
                { "name": "agent__helper", "arguments": { "message": "hello" } },
                // The access token has expired by now: the client refreshes.
                { "name": "calculator__evaluate", "arguments": { "expression": "2+3" }, "sleep": 3 },
            ] });
            stdin.write_all(plan.to_string().as_bytes()).await.unwrap();
        }
        let output = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
            .await
            .expect("the SDK client finished")
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "client failed: {}\n{stdout}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_str(stdout.trim()).unwrap();

        // First approval: the client named itself; only two scopes granted.
        let approvals = report["approvals"].as_array().unwrap();
        assert_eq!(approvals.len(), 2, "{report}");
        assert_eq!(approvals[0]["client"], "SDK OAuth test client");
        assert_eq!(approvals[0]["resource"], url.as_str());
        assert_eq!(approvals[0]["granted"], json!(["tools:read", "tools:call"]));
        assert!(
            approvals[1]["granted"]
                .as_array()
                .unwrap()
                .contains(&json!("agents:run")),
            "{report}"
        );
        // Listed under the first grant: tools, no agents.
        let tools: Vec<&str> = report["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap())
            .collect();
        assert!(tools.contains(&"calculator__evaluate"), "{tools:?}");
        assert!(!tools.iter().any(|t| t.starts_with("agent__")), "{tools:?}");
        let calls = &report["calls"];
        assert!(calls[0]["text"].as_str().unwrap().contains("42"), "{calls}");
        assert_eq!(
            calls[1]["structured"]["answer"], "Hello from the model.",
            "{calls}"
        );
        assert!(
            calls[2]["text"].as_str().is_some_and(|t| t.contains('5')),
            "{calls}"
        );
        // Tokens: the first grant's, the step-up's, then a refresh that
        // rotated the refresh token.
        let tokens = report["tokens"].as_array().unwrap();
        assert!(tokens.len() >= 3, "{tokens:?}");
        let (before, last) = (&tokens[tokens.len() - 2], &tokens[tokens.len() - 1]);
        assert_ne!(before["refresh_token"], last["refresh_token"]);
        assert!(last["access_token"]
            .as_str()
            .unwrap()
            .starts_with("omcp_at_"));

        // The user sees one connected client (the step-up replaced the
        // first grant), revokes it, and its token stops working.
        let (_, grants) = app.get("/api/v1/oauth/grants", &user.token).await;
        let grants = grants.as_array().unwrap();
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!(grants[0]["client"]["id"], report["client_id"]);
        let id = grants[0]["id"].as_str().unwrap();
        let (status, _) = app
            .delete(&format!("/api/v1/oauth/grants/{id}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let refused = app
            .client
            .post(&url)
            .bearer_auth(last["access_token"].as_str().unwrap())
            .header("accept", "application/json, text/event-stream")
            .json(&json!({ "jsonrpc": "2.0", "id": 1, "method": "ping" }))
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    }
);

/// Starts the OAuth-protected fixture (its own authorization server) on a
/// free port, with access tokens living `ttl` seconds.
pub async fn oauth_fixture(python: &Path, ttl: u64) -> (tokio::process::Child, u16) {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let child = tokio::process::Command::new(python)
        .arg(fixture("oauth_server.py"))
        .args(["--port", &port.to_string(), "--token-ttl", &ttl.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the OAuth fixture");
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the OAuth fixture did not listen"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (child, port)
}

/// Connects server `id` as `session` does from the console: asks for the
/// authorization URL, lets "the browser" follow it (the fixture approves at
/// once and redirects back to the console), and hands code and state back.
async fn connect_oauth(app: &TestApp, session: &Session, id: &str) -> (StatusCode, Value) {
    let (status, started) = app
        .post(
            &format!("/api/v1/mcp-servers/{id}/oauth"),
            &session.token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{started}");
    let url = started["authorization_url"].as_str().unwrap();
    let query: std::collections::HashMap<String, String> = url::Url::parse(url)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(query["code_challenge_method"], "S256", "{url}");
    assert!(query["resource"].ends_with("/mcp"), "{url}");
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = browser.get(url).send().await.unwrap();
    assert!(response.status().is_redirection(), "{}", response.status());
    let back = response.headers()["location"].to_str().unwrap().to_owned();
    assert!(
        back.starts_with(&format!("{}/mcp-servers/oauth-callback?", app.base)),
        "{back}"
    );
    let params: std::collections::HashMap<String, String> = url::Url::parse(&back)
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    app.post(
        "/api/v1/mcp-servers/oauth/callback",
        &session.token,
        json!({ "state": params["state"], "code": params["code"] }),
    )
    .await
}

dual_test!(
    an_oauth_protected_server_is_usable_by_agents_after_one_connect,
    |config: &mut orchestra::config::Config| {
        with_vendor(config);
        config.egress.allow_private_user_endpoints = true;
    },
    |app: TestApp| async move {
        let Some(python) = python() else { return };
        let (admin, user) = app.admin_and_user().await;
        // Access tokens live 2 s: the bridge must refresh them.
        let (_child, port) = oauth_fixture(&python, 2).await;
        let base = format!("http://127.0.0.1:{port}");

        // A bearer token and OAuth together make no sense.
        let (status, _) = app
            .post(
                "/api/v1/mcp-servers",
                &user.token,
                json!({ "name": "files", "transport": "http", "url": format!("{base}/mcp"),
                        "oauth": true, "bearer_token": "x" }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, server) = app
            .post(
                "/api/v1/mcp-servers",
                &user.token,
                json!({ "name": "files", "transport": "http", "url": format!("{base}/mcp"), "oauth": true }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{server}");
        let id = server["id"].as_str().unwrap().to_owned();
        // Not connected yet: a clear state, not a silent failure.
        assert_eq!(
            server["oauth_connection"]["state"], "not_connected",
            "{server}"
        );
        assert!(
            server["status"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("not connected"),
            "{server}"
        );

        // One connect: discovery, registration, PKCE, the browser's trip,
        // the code exchanged by the user who started it, and only them.
        // A code obtained under someone else's authorization is refused:
        // states are bound to the user who started them (here an admin,
        // who may manage the server), so nobody can attach their account
        // at the provider to another user's server.
        let (status, theirs) = app
            .post(
                &format!("/api/v1/mcp-servers/{id}/oauth"),
                &admin.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{theirs}");
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let back = browser
            .get(theirs["authorization_url"].as_str().unwrap())
            .send()
            .await
            .unwrap();
        let back = url::Url::parse(back.headers()["location"].to_str().unwrap()).unwrap();
        let params: std::collections::HashMap<String, String> = back
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let (status, refused) = app
            .post(
                "/api/v1/mcp-servers/oauth/callback",
                &user.token,
                json!({ "state": params["state"], "code": params["code"] }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
        let (status, _) = app
            .post(
                "/api/v1/mcp-servers/oauth/callback",
                &user.token,
                json!({ "state": "made-up", "code": "x" }),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, connected) = connect_oauth(&app, &user, &id).await;
        assert_eq!(status, StatusCode::OK, "{connected}");
        assert_eq!(
            connected["oauth_connection"]["state"], "connected",
            "{connected}"
        );
        assert_eq!(connected["status"]["state"], "running", "{connected}");
        // Its tool, and the resource reader (the SDK's server declares
        // resources).
        assert_eq!(
            connected["tools"],
            json!(["files__whoami", "files__read_resource"]),
            "{connected}"
        );
        let (status, result) = invoke(&app, &user.token, "files__whoami", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        assert!(
            result["result"].to_string().contains("alice via"),
            "{result}"
        );

        // An agent uses it.
        let answer = agent_answer(
            &app,
            &user,
            json!(["files__whoami"]),
            "call files__whoami {}",
        )
        .await;
        assert!(answer.contains("alice"), "{answer}");

        // The access token expires; the bridge refreshes it.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let (status, result) = invoke(&app, &user.token, "files__whoami", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{result}");
        let stats = provider_stats(&app, &base).await;
        assert!(stats["refreshes"].as_u64() >= Some(1), "{stats}");
        assert_eq!(stats["code_exchanges"], 1, "{stats}");

        // The provider revokes everything: the connection is shown as
        // expired, calls fail with the reason, and connecting again fixes it.
        let _ = app
            .client
            .post(format!("{base}/test/revoke-all"))
            .send()
            .await
            .unwrap();
        let (status, failed) = invoke(&app, &user.token, "files__whoami", json!({})).await;
        assert!(
            status.is_client_error() || status.is_server_error(),
            "{status} {failed}"
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        let expired = loop {
            let (_, server) = app
                .get(&format!("/api/v1/mcp-servers/{id}"), &user.token)
                .await;
            if server["oauth_connection"]["state"] == "expired" {
                break server;
            }
            assert!(
                Instant::now() < deadline,
                "never shown as expired: {server}"
            );
            let _ = invoke(&app, &user.token, "files__whoami", json!({})).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // Calls say why, and the status tells the owner to connect again.
        let (_, failed) = invoke(&app, &user.token, "files__whoami", json!({})).await;
        assert!(
            failed["message"]
                .as_str()
                .unwrap_or_default()
                .contains("connect"),
            "{failed}"
        );
        assert!(
            expired["status"]["last_error"]
                .as_str()
                .unwrap_or_default()
                .contains("connect it"),
            "{expired}"
        );
        let (status, reconnected) = connect_oauth(&app, &user, &id).await;
        assert_eq!(status, StatusCode::OK, "{reconnected}");
        assert_eq!(reconnected["oauth_connection"]["state"], "connected");
        let (status, result) = invoke(&app, &user.token, "files__whoami", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{result}");

        // The reconnection was a second authorization at the provider.
        let stats = provider_stats(&app, &base).await;
        assert_eq!(stats["code_exchanges"], 2, "{stats}");
        let (_, audit) = app
            .get("/api/v1/audit-log?page_size=100", &admin.token)
            .await;
        let actions = audit.to_string();
        assert!(actions.contains("mcp_server.oauth.connect"), "{actions}");
    }
);

/// `server-everything` from npm (installed by `scripts/test`), or `None`
/// (skip) outside CI.
fn server_everything() -> Option<PathBuf> {
    let candidate = std::env::var_os("ORCHESTRA_TEST_SERVER_EVERYTHING")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(
                "../target/npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js",
            )
        });
    if candidate.exists() {
        return Some(candidate);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "CI=true but server-everything is missing ({}); scripts/test installs it",
            candidate.display()
        );
    }
    eprintln!("note: server-everything tests skipped: run scripts/test to install it");
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_everything_from_npm_is_bridged_and_served_again_with_the_same_types() {
    let Some(everything) = server_everything() else {
        return;
    };
    let app = spawn_app_with(Backend::Sqlite, |config| {
        with_vendor(config);
        config.mcp.sampling_model = Some("openai/gpt-test".to_owned());
    })
    .await
    .unwrap();
    let (admin, user) = app.admin_and_user().await;
    let server = register(
        &app,
        &admin,
        json!({ "name": "everything", "transport": "stdio", "command": "node",
                "args": [everything.display().to_string(), "stdio"] }),
    )
    .await;
    assert_eq!(server["status"]["state"], "running", "{server}");
    let (_, key) = app.api_key(&user, "mcp").await;
    let rpc = |method: &'static str, params: Value| rpc(&app, &key, method, params);
    let kinds = |result: &Value| -> Vec<String> {
        result["result"]["content"]
            .as_array()
            .unwrap_or_else(|| panic!("{result}"))
            .iter()
            .map(|c| c["type"].as_str().unwrap().to_owned())
            .collect()
    };

    // Its tools, re-served over /mcp with their own types.
    let image = rpc(
        "tools/call",
        json!({ "name": "everything__get-tiny-image", "arguments": {} }),
    )
    .await;
    assert!(kinds(&image).contains(&"image".to_owned()), "{image}");
    let block = image["result"]["content"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "image")
        .unwrap();
    assert_eq!(block["mimeType"], "image/png", "{block}");
    let annotated = rpc(
        "tools/call",
        json!({ "name": "everything__get-annotated-message",
                "arguments": { "messageType": "error", "includeImage": true } }),
    )
    .await;
    assert!(
        annotated["result"]["content"][0]["annotations"].is_object(),
        "{annotated}"
    );
    let links = rpc(
        "tools/call",
        json!({ "name": "everything__get-resource-links", "arguments": { "count": 2 } }),
    )
    .await;
    assert_eq!(
        kinds(&links)
            .iter()
            .filter(|k| *k == "resource_link")
            .count(),
        2,
        "{links}"
    );
    let embedded = rpc(
        "tools/call",
        json!({ "name": "everything__get-resource-reference",
                "arguments": { "resourceType": "Text", "resourceId": 1 } }),
    )
    .await;
    assert!(
        kinds(&embedded).contains(&"resource".to_owned()),
        "{embedded}"
    );

    // Resources, templates and prompts under its namespace.
    let listed = rpc("resources/list", json!({})).await;
    let uris: Vec<&str> = listed["result"]["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{listed}"))
        .iter()
        .map(|r| r["uri"].as_str().unwrap())
        .collect();
    let features = "orchestra://mcp/everything/demo://resource/static/document/features.md";
    assert!(uris.contains(&features), "{uris:?}");
    let read = rpc("resources/read", json!({ "uri": features })).await;
    assert_eq!(read["result"]["contents"][0]["uri"], features, "{read}");
    assert!(
        read["result"]["contents"][0]["text"]
            .as_str()
            .is_some_and(|t| !t.is_empty()),
        "{read}"
    );
    let templates = rpc("resources/templates/list", json!({})).await;
    assert!(
        templates
            .to_string()
            .contains("orchestra://mcp/everything/demo://resource/dynamic/text/{resourceId}"),
        "{templates}"
    );
    let dynamic = rpc(
        "resources/read",
        json!({ "uri": "orchestra://mcp/everything/demo://resource/dynamic/text/7" }),
    )
    .await;
    assert!(
        dynamic["result"]["contents"][0]["text"].is_string(),
        "{dynamic}"
    );
    let prompt = rpc(
        "prompts/get",
        json!({ "name": "everything__args-prompt", "arguments": { "city": "Paris", "state": "IDF" } }),
    )
    .await;
    assert!(prompt.to_string().contains("Paris, IDF"), "{prompt}");

    // Its sampling request, answered by the model the admin chose.
    let sampled = rpc(
        "tools/call",
        json!({ "name": "everything__trigger-sampling-request",
                "arguments": { "prompt": "hello", "maxTokens": 20 } }),
    )
    .await;
    assert!(
        sampled.to_string().contains("Hello from the model."),
        "{sampled}"
    );

    // Its elicitation request inside a run: the run waits for the user,
    // who answers the form of every field type it asks for.
    let run = start_run(
        &app,
        &user,
        json!(["everything__trigger-elicitation-request"]),
        "call everything__trigger-elicitation-request {}",
    )
    .await;
    let waiting = stopped_run(&app, &user.token, &run).await;
    assert_eq!(waiting["status"], "requires_action", "{waiting}");
    let question = &waiting["pending_elicitations"][0];
    assert_eq!(question["server"], "everything", "{waiting}");
    let fields = question["requested_schema"]["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{question}"));
    assert!(
        fields.contains_key("titledMultipleSelectEnum"),
        "{question}"
    );
    let (status, answered) = app
        .post(
            &format!(
                "/api/v1/runs/{run}/elicitations/{}",
                question["id"].as_str().unwrap()
            ),
            &user.token,
            json!({ "action": "accept", "content": {
                "name": "Ada Lovelace", "check": true, "email": "ada@example.com",
                "integer": 7, "untitledSingleSelectEnum": "Joey",
                "titledMultipleSelectEnum": ["fish-2"] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answered}");
    assert_eq!(
        stopped_run(&app, &user.token, &run).await["status"],
        "completed"
    );
    let result = tool_result(&app, &user.token, &run).await.to_string();
    assert!(
        result.contains("Ada Lovelace") && result.contains("fish-2"),
        "{result}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_subscriptions_pass_a_bridged_servers_updates_to_mcp_sessions() {
    let (Some(python), Some(everything)) = (python(), server_everything()) else {
        return;
    };
    let app = spawn_app_with(Backend::Sqlite, |config| {
        with_vendor(config);
        // Subscriptions live in a session.
        config.mcp.sessions = true;
    })
    .await
    .unwrap();
    let (admin, user) = app.admin_and_user().await;
    register(
        &app,
        &admin,
        json!({ "name": "everything", "transport": "stdio", "command": "node",
                "args": [everything.display().to_string(), "stdio"] }),
    )
    .await;
    let (_, key) = app.api_key(&user, "mcp").await;
    let uri = "orchestra://mcp/everything/demo://resource/dynamic/text/1";
    let output = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(&python)
            .arg(fixture("subscribe_client.py"))
            .args([
                "--url",
                &format!("{}/mcp", app.base),
                "--key",
                &key,
                "--uri",
                uri,
            ])
            .args(["--tool", "everything__toggle-subscriber-updates"])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the subscribing client finished")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "client failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!(
        report["updated"]
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u == uri),
        "{report}"
    );
}

/// Starts a run of a new agent of `session` with `tools` on `message`;
/// the run's id.
async fn start_run(app: &TestApp, session: &Session, tools: Value, message: &str) -> String {
    let (status, agent) = app
        .post(
            "/api/v1/agents",
            &session.token,
            json!({
                "name": format!("asker {}", uuid::Uuid::new_v4()),
                "instructions": "You are a test agent.",
                "model": { "provider": "openai", "model": "gpt-test" },
                "tools": tools,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    let conversation = app
        .conversation(session, agent["id"].as_str().unwrap())
        .await;
    let (status, run) = app
        .post(
            &format!("/api/v1/conversations/{conversation}/runs"),
            &session.token,
            json!({ "message": message }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    run["id"].as_str().unwrap().to_owned()
}

/// Waits (long polls) until run `id` stops: finished, or waiting.
async fn stopped_run(app: &TestApp, token: &str, id: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, run) = app
            .get(&format!("/api/v1/runs/{id}?wait_secs=5"), token)
            .await;
        assert_eq!(status, StatusCode::OK, "{run}");
        if !matches!(run["status"].as_str(), Some("queued" | "running")) {
            return run;
        }
        assert!(Instant::now() < deadline, "the run did not stop: {run}");
    }
}

/// The result a run recorded for its tool call.
async fn tool_result(app: &TestApp, token: &str, run: &str) -> Value {
    let events = read_events(app, token, run, None, None).await;
    events
        .iter()
        .find(|e| e.kind == "tool_call.completed")
        .unwrap_or_else(|| panic!("no tool result: {events:?}"))
        .data["result"]
        .clone()
}

dual_test!(
    a_question_a_bridged_server_asks_during_a_run_waits_for_the_users_answer,
    |config: &mut orchestra::config::Config| {
        with_vendor(config);
        // The webhook receiver below is on loopback.
        config.egress.allow_private_user_endpoints = true;
    },
    |app: TestApp| async move {
        let Some(python) = python() else { return };
        let (admin, user) = app.admin_and_user().await;
        let other = app
            .add_user(&admin, "other-asker@example.com", "user")
            .await;
        register(&app, &admin, stdio_server(&python, "fx")).await;
        let (status, hook) = app
            .post(
                "/api/v1/webhooks",
                &user.token,
                json!({ "url": "http://127.0.0.1:9/hook", "events": ["run.requires_action"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{hook}");
        let hook = hook["id"].as_str().unwrap().to_owned();

        // The server asks during the call: the run waits for its user, the
        // call stays open.
        let run = start_run(
            &app,
            &user,
            json!(["fx__book"]),
            r#"call fx__book {"place":"Luigi's"}"#,
        )
        .await;
        let waiting = stopped_run(&app, &user.token, &run).await;
        assert_eq!(waiting["status"], "requires_action", "{waiting}");
        assert_eq!(waiting["pending_tool_calls"], json!([]), "{waiting}");
        let question = &waiting["pending_elicitations"][0];
        assert_eq!(question["server"], "fx", "{waiting}");
        assert_eq!(question["mode"], "form");
        assert_eq!(question["status"], "pending");
        assert_eq!(question["message"], "How many seats at Luigi's?");
        let schema = &question["requested_schema"];
        assert_eq!(schema["properties"]["seats"]["type"], "integer", "{schema}");
        assert_eq!(schema["required"], json!(["seats"]), "{schema}");
        assert!(question["expires_at"].is_string());
        let qid = question["id"].as_str().unwrap();
        // Subscribers hear of it as of an approval.
        let (_, deliveries) = app
            .get(&format!("/api/v1/webhooks/{hook}/deliveries"), &user.token)
            .await;
        assert_eq!(
            deliveries["items"][0]["event_type"], "run.requires_action",
            "{deliveries}"
        );
        let answer_at = format!("/api/v1/runs/{run}/elicitations/{qid}");
        // Listed among the waiting runs of the conversation, too.
        let conversation = waiting["conversation_id"].as_str().unwrap();
        let (_, listed) = app
            .get(
                &format!("/api/v1/conversations/{conversation}/runs?status=requires_action"),
                &user.token,
            )
            .await;
        assert_eq!(listed["items"][0]["id"], run, "{listed}");

        // Another user neither sees nor answers it.
        assert_error(
            &app.post(
                &answer_at,
                &other.token,
                json!({ "action": "accept", "content": { "seats": 2 } }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        // Answers that do not fit the question are refused; nothing changes.
        let (status, refused) = app
            .post(
                &answer_at,
                &user.token,
                json!({ "action": "accept", "content": { "seats": 20 } }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
        assert!(refused.to_string().contains("content.seats"), "{refused}");
        let (status, refused) = app
            .post(&answer_at, &user.token, json!({ "action": "accept" }))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
        let (status, refused) = app
            .post(
                &answer_at,
                &user.token,
                json!({ "action": "decline", "content": { "seats": 1 } }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
        let (status, refused) = app
            .post(&answer_at, &user.token, json!({ "action": "maybe" }))
            .await;
        assert!(status.is_client_error(), "{status} {refused}");
        let (_, still) = app.get(&format!("/api/v1/runs/{run}"), &user.token).await;
        assert_eq!(
            still["pending_elicitations"][0]["status"], "pending",
            "{still}"
        );

        // The answer reaches the server, and the run goes on.
        let (status, answered) = app
            .post(
                &answer_at,
                &user.token,
                json!({ "action": "accept", "content": { "seats": 3, "window": true } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{answered}");
        assert_error(
            &app.post(&answer_at, &user.token, json!({ "action": "decline" }))
                .await,
            StatusCode::CONFLICT,
            "conflict",
        );
        let done = stopped_run(&app, &user.token, &run).await;
        assert_eq!(done["status"], "completed", "{done}");
        let result = tool_result(&app, &user.token, &run).await;
        assert!(
            result
                .to_string()
                .contains("booked 3 seats at Luigi's (window: True, meal: none)"),
            "{result}"
        );
        let events = read_events(&app, &user.token, &run, None, None).await;
        let kinds: Vec<&str> = events.iter().map(|e| e.kind.as_str()).collect();
        let asked = kinds
            .iter()
            .position(|k| *k == "elicitation.required")
            .unwrap();
        let answered = kinds
            .iter()
            .position(|k| *k == "elicitation.answered")
            .unwrap();
        let completed = kinds
            .iter()
            .position(|k| *k == "tool_call.completed")
            .unwrap();
        assert!(asked < answered && answered < completed, "{kinds:?}");
        assert_eq!(events[answered].data["action"], "accept");

        // URL mode: the user is sent to a page, then declines.
        let run = start_run(&app, &user, json!(["fx__sign_in"]), "call fx__sign_in {}").await;
        let waiting = stopped_run(&app, &user.token, &run).await;
        let question = &waiting["pending_elicitations"][0];
        assert_eq!(question["mode"], "url", "{waiting}");
        assert_eq!(
            question["url"],
            "https://auth.example.com/sign-in?session=42"
        );
        let (status, _) = app
            .post(
                &format!(
                    "/api/v1/runs/{run}/elicitations/{}",
                    question["id"].as_str().unwrap()
                ),
                &user.token,
                json!({ "action": "decline" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            stopped_run(&app, &user.token, &run).await["status"],
            "completed"
        );
        let result = tool_result(&app, &user.token, &run).await;
        assert!(result.to_string().contains("sign-in: decline"), "{result}");

        // Cancelling a waiting run cancels the question and the call.
        let run = start_run(
            &app,
            &user,
            json!(["fx__book"]),
            r#"call fx__book {"place":"X"}"#,
        )
        .await;
        let waiting = stopped_run(&app, &user.token, &run).await;
        let qid = waiting["pending_elicitations"][0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, _) = app
            .post(
                &format!("/api/v1/runs/{run}/cancel"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        // The worker holding the call stops it at once (it still shows
        // waiting until then).
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let run = stopped_run(&app, &user.token, &run).await;
            if run["status"] == "cancelled" {
                break;
            }
            assert!(Instant::now() < deadline, "not cancelled: {run}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_error(
            &app.post(
                &format!("/api/v1/runs/{run}/elicitations/{qid}"),
                &user.token,
                json!({ "action": "accept", "content": { "seats": 1 } }),
            )
            .await,
            StatusCode::CONFLICT,
            "conflict",
        );

        // Outside a run nobody can answer: the call fails, clearly.
        let (status, outcome) =
            invoke(&app, &user.token, "fx__book", json!({ "place": "Y" })).await;
        assert!(
            outcome.to_string().contains("no user can answer"),
            "{status} {outcome}"
        );
    }
);

dual_test!(
    agent_tools_run_as_tasks_of_revision_2025_11_25_that_a_client_polls_and_fetches_later,
    with_vendor_only,
    |app: TestApp| async move {
        let Some(python) = python() else { return };
        let (admin, user) = app.admin_and_user().await;
        for (name, config) in [
            ("Helper", json!({})),
            ("Careful", json!({ "require_approval": true })),
        ] {
            let (status, agent) = app
                .post(
                    "/api/v1/agents",
                    &user.token,
                    json!({ "name": name, "instructions": "Help.",
                            "model": { "provider": "openai", "model": "gpt-test" },
                            "tools": ["calculator__evaluate"], "config": config }),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{agent}");
        }
        let (_, key) = app.api_key(&user, "tasks").await;
        let output = tokio::process::Command::new(&python)
            .arg(fixture("tasks_client.py"))
            .arg(&app.base)
            .arg(&key)
            .output()
            .await
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();

        // Declared for the revision that has them, not for older ones.
        assert_eq!(report["protocol"], "2025-11-25", "{report}");
        assert_eq!(
            report["capability"],
            json!({ "list": {}, "cancel": {}, "requests": { "tools": { "call": {} } } })
        );
        assert_eq!(report["older_capability"], false);
        assert_eq!(report["task_support"]["agent__helper"], "optional");
        assert_eq!(report["task_support"]["calculator__evaluate"], Value::Null);

        // Started at once, polled to the end, result fetched later.
        assert_eq!(report["created"]["status"], "working", "{report}");
        assert_eq!(report["created"]["ttl"], 120000);
        assert_eq!(report["created"]["poll_interval"], 1000);
        assert_eq!(
            report["polled"].as_array().unwrap().last().unwrap(),
            "completed"
        );
        assert_eq!(report["result"]["is_error"], false, "{report}");
        assert_eq!(report["result"]["structured"]["status"], "completed");
        assert!(report["result"]["structured"]["answer"].is_string());
        assert!(report["result"]["related"]["taskId"].is_string());
        // tasks/result waited for the slow answer.
        assert!(
            report["waited"]["answer"]
                .as_str()
                .unwrap()
                .contains("tick"),
            "{report}"
        );
        // Waiting for an approval is input_required.
        assert_eq!(report["approval"]["status"], "input_required", "{report}");
        assert!(report["approval"]["message"]
            .as_str()
            .unwrap()
            .contains("approval"));
        assert_eq!(report["cancelled"], "cancelled", "{report}");
        assert_eq!(report["cancel_again"], -32602);
        assert_eq!(report["listed"], 4);
        assert_eq!(
            report["listed_statuses"],
            json!(["cancelled", "completed", "completed", "input_required"])
        );
        assert_eq!(report["unknown"], -32602);
        assert_eq!(report["not_an_agent"], -32601);
        assert_eq!(report["bad_cursor"], -32602);

        // The tasks are backed by the runs: the run of the cancelled task
        // is cancelled.
        let task = report["first_task"].as_str().unwrap();
        // Another user (an admin included) finds none of them.
        let (_, admin_key) = app.api_key(&admin, "tasks").await;
        let ask = |key: String, method: &'static str| {
            let app = &app;
            async move {
                post_mcp(
                    app,
                    &key,
                    Some("2025-11-25"),
                    json!({ "jsonrpc": "2.0", "id": 1, "method": method,
                            "params": { "taskId": task } })
                    .to_string(),
                )
                .await
            }
        };
        for method in ["tasks/get", "tasks/result", "tasks/cancel"] {
            let (status, answer) = ask(admin_key.clone(), method).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(answer["error"]["code"], -32602, "{method}: {answer}");
        }
        let (_, listed) = post_mcp(
            &app,
            &admin_key,
            Some("2025-11-25"),
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tasks/list" }).to_string(),
        )
        .await;
        assert_eq!(listed["result"]["tasks"], json!([]), "{listed}");
        // The owner's other credentials share them.
        let (_, again) = ask(key.clone(), "tasks/get").await;
        assert_eq!(again["result"]["status"], "cancelled", "{again}");
        // Under an older revision, tasks/* are not this server's methods.
        let (_, older) = post_mcp(
            &app,
            &key,
            Some("2025-06-18"),
            json!({ "jsonrpc": "2.0", "id": 1, "method": "tasks/get",
                    "params": { "taskId": task } })
            .to_string(),
        )
        .await;
        assert!(older["error"].is_object(), "{older}");
    }
);

dual_test!(
    each_user_connects_their_own_account_to_a_server_wide_oauth_server,
    |config: &mut orchestra::config::Config| {
        with_vendor(config);
    },
    |app: TestApp| async move {
        let Some(python) = python() else { return };
        let (admin, alice) = app.admin_and_user().await;
        let bob = app.add_user(&admin, "bob@example.com", "user").await;
        let viewer = app.add_user(&admin, "viewer@example.com", "viewer").await;
        let (_child, port) = oauth_fixture(&python, 3600).await;
        let url = format!("http://127.0.0.1:{port}/mcp");

        // Per-user accounts are for server-wide servers that sign in.
        let (status, _) = app
            .post(
                "/api/v1/mcp-servers",
                &admin.token,
                json!({ "name": "nosign", "transport": "http", "url": url, "oauth_per_user": true }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let server = register(
            &app,
            &admin,
            json!({ "name": "files", "transport": "http", "url": url,
                    "oauth": true, "oauth_per_user": true }),
        )
        .await;
        let id = server["id"].as_str().unwrap().to_owned();
        assert_eq!(server["oauth_per_user"], true, "{server}");

        // Nobody has connected: each user is told to connect their own.
        let (_, seen) = app
            .get(&format!("/api/v1/mcp-servers/{id}"), &alice.token)
            .await;
        assert_eq!(seen["oauth_connection"]["state"], "not_connected", "{seen}");
        assert!(seen["status"]["last_error"]
            .as_str()
            .unwrap()
            .contains("your own account"));
        // Its tools are learnt from the first connection.
        let (status, _) = invoke(&app, &alice.token, "files__whoami", json!({})).await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Alice connects hers (a user, not an admin): her calls use it.
        let (status, connected) = connect_oauth(&app, &alice, &id).await;
        assert_eq!(status, StatusCode::OK, "{connected}");
        assert_eq!(connected["oauth_connection"]["state"], "connected");
        assert!(connected["tools"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t == "files__whoami"));
        let (status, hers) = invoke(&app, &alice.token, "files__whoami", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{hers}");
        let hers = hers["result"].to_string();
        assert!(hers.contains("alice via"), "{hers}");

        // Bob is still not connected: his calls never borrow hers.
        let (_, his) = app
            .get(&format!("/api/v1/mcp-servers/{id}"), &bob.token)
            .await;
        assert_eq!(his["oauth_connection"]["state"], "not_connected", "{his}");
        let (_, refused) = invoke(&app, &bob.token, "files__whoami", json!({})).await;
        assert!(
            refused.to_string().contains("your own account"),
            "{refused}"
        );
        // Once he connects, he calls through his own client registration.
        let (status, _) = connect_oauth(&app, &bob, &id).await;
        assert_eq!(status, StatusCode::OK);
        let (status, his) = invoke(&app, &bob.token, "files__whoami", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{his}");
        let his = his["result"].to_string();
        assert!(his.contains("alice via"), "{his}");
        assert_ne!(his, hers, "two users, two connections");

        // A viewer may not connect an account (no tool calls).
        let (status, _) = app
            .post(
                &format!("/api/v1/mcp-servers/{id}/oauth"),
                &viewer.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        // Alice signs out: her calls stop, Bob's go on.
        let (status, after) = app
            .delete(&format!("/api/v1/mcp-servers/{id}/oauth"), &alice.token)
            .await;
        assert_eq!(status, StatusCode::OK, "{after}");
        assert_eq!(after["oauth_connection"]["state"], "not_connected");
        let (_, refused) = invoke(&app, &alice.token, "files__whoami", json!({})).await;
        assert!(
            refused.to_string().contains("your own account"),
            "{refused}"
        );
        let (status, still) = invoke(&app, &bob.token, "files__whoami", json!({})).await;
        assert_eq!(status, StatusCode::OK, "{still}");
    }
);

dual_test!(
    a_question_of_a_call_stopped_with_its_node_is_withdrawn_and_the_run_resumes,
    |config: &mut orchestra::config::Config| {
        with_vendor(config);
    },
    |mut app: TestApp| async move {
        let Some(python) = python() else { return };
        let (admin, user) = app.admin_and_user().await;
        register(&app, &admin, stdio_server(&python, "fx")).await;
        let run = start_run(
            &app,
            &user,
            json!(["fx__book"]),
            r#"call fx__book {"place":"Z"}"#,
        )
        .await;
        let waiting = stopped_run(&app, &user.token, &run).await;
        let asked = waiting["pending_elicitations"][0]["id"].clone();
        assert!(asked.is_string(), "{waiting}");
        // The node stops with the call open; another takes the run over.
        app.stop();
        let node = app.second_node(|_| {}).await;
        let deadline = Instant::now() + Duration::from_secs(30);
        let resumed = loop {
            let run = stopped_run(&node, &user.token, &run).await;
            if run["attempts"].as_i64() > Some(1) && run["status"] != "queued" {
                break run;
            }
            assert!(Instant::now() < deadline, "not resumed: {run}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The old question is gone: either the call ran again and asked
        // anew, or it was reported interrupted.
        let pending = resumed["pending_elicitations"].as_array().unwrap();
        assert!(pending.iter().all(|q| q["id"] != asked), "{resumed}");
        assert!(pending.len() <= 1, "{resumed}");
        let (status, _) = node
            .post(
                &format!(
                    "/api/v1/runs/{run}/elicitations/{}",
                    asked.as_str().unwrap()
                ),
                &user.token,
                json!({ "action": "decline" }),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
    }
);
