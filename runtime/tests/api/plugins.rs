//! Plugin administration over the API: install (upload, path, URL pinned by
//! SHA-256), inspect, grant and revoke, limits, upgrade, remove; the notes
//! plugin's per-user store; secrets that only granted plugins read.

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{assert_error, Session, TestApp};
use crate::dual_test;
use crate::support::{hostile_wasm, template_wasm};

async fn upload(app: &TestApp, path: &str, token: &str, bytes: Vec<u8>) -> (StatusCode, Value) {
    let resp = app
        .client
        .post(format!("{}{path}", app.base))
        .bearer_auth(token)
        .header("content-type", "application/wasm")
        .body(bytes)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn invoke(app: &TestApp, who: &Session, tool: &str, arguments: Value) -> (StatusCode, Value) {
    app.post(
        &format!("/api/v1/tools/{tool}/invoke"),
        &who.token,
        json!({ "arguments": arguments }),
    )
    .await
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

dual_test!(
    plugins_are_installed_inspected_upgraded_and_removed,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let template = template_wasm();

        let denied = upload(&app, "/api/v1/plugins", &user.token, template.clone()).await;
        assert_error(&denied, StatusCode::FORBIDDEN, "forbidden");

        let (status, installed) =
            upload(&app, "/api/v1/plugins", &admin.token, template.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{installed}");
        assert_eq!(installed["name"], "word-stats");
        assert_eq!(installed["source"], "upload");
        assert_eq!(installed["bundled"], false);
        assert_eq!(installed["digest"], sha256(&template));
        assert_eq!(installed["tools"][0]["name"], "word-stats__stats");
        assert_eq!(
            installed["granted"],
            json!({ "http_hosts": [], "key_value": false, "secrets": [], "directories": [], "private_networks": [] })
        );
        assert_eq!(installed["installed_by"], admin.user_id.as_str());

        // Anyone with tool:invoke can use it at once.
        let (status, out) =
            invoke(&app, &user, "word-stats__stats", json!({ "text": "a b c" })).await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["result"]["words"], 3);

        let again = upload(&app, "/api/v1/plugins", &admin.token, template.clone()).await;
        assert_error(&again, StatusCode::CONFLICT, "conflict");

        let (_, list) = app.get("/api/v1/plugins", &user.token).await;
        let names: Vec<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "calculator",
                "http-fetch",
                "notes",
                "text",
                "time",
                "word-stats"
            ]
        );

        // From a path, pinned by digest, with grants at once.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hostile.wasm");
        let hostile = hostile_wasm();
        std::fs::write(&path, &hostile).unwrap();
        let path = path.display().to_string();
        let wrong = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "path": path, "sha256": "0".repeat(64) }),
            )
            .await;
        assert_error(&wrong, StatusCode::BAD_REQUEST, "validation_error");
        assert_eq!(wrong.1["details"]["actual"], sha256(&hostile));
        let (status, body) = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "path": path, "sha256": sha256(&hostile), "grants": { "key_value": true, "secrets": ["api_token", "unrequested"] } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["source"], format!("path:{path}"));
        assert_eq!(body["requested"]["http_hosts"], json!(["*"]));
        assert_eq!(
            body["granted"]["secrets"],
            json!(["api_token", "unrequested"])
        );
        assert_eq!(
            body["effective"],
            json!({ "http_hosts": [], "key_value": true, "secrets": ["api_token"], "directories": [], "private_networks": [] })
        );

        // Everything that is not a plugin, or not a valid request, is refused clearly.
        let garbage = upload(
            &app,
            "/api/v1/plugins",
            &admin.token,
            b"\0asm garbage".to_vec(),
        )
        .await;
        assert_error(&garbage, StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin");
        let neither = app.post("/api/v1/plugins", &admin.token, json!({})).await;
        assert_error(&neither, StatusCode::BAD_REQUEST, "validation_error");
        let unpinned = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "url": "https://example.com/p.wasm" }),
            )
            .await;
        assert_error(&unpinned, StatusCode::BAD_REQUEST, "validation_error");
        let plain = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "url": "http://example.com/p.wasm", "sha256": sha256(b"") }),
            )
            .await;
        assert_error(&plain, StatusCode::BAD_REQUEST, "validation_error");
        assert!(plain.1["message"].as_str().unwrap().contains("https"));
        let missing = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "path": "/nonexistent/p.wasm" }),
            )
            .await;
        assert_error(&missing, StatusCode::BAD_REQUEST, "validation_error");
        let unknown_field = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "path": path, "grant": {} }),
            )
            .await;
        assert_error(&unknown_field, StatusCode::BAD_REQUEST, "validation_error");
        let resp = app
            .client
            .post(format!("{}/api/v1/plugins", app.base))
            .bearer_auth(&admin.token)
            .header("content-type", "text/plain")
            .body("hello")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

        // Upgrade: the same name only; grants and limits are kept.
        let renamed = upload(
            &app,
            "/api/v1/plugins/word-stats/upgrade",
            &admin.token,
            hostile.clone(),
        )
        .await;
        assert_error(&renamed, StatusCode::UNPROCESSABLE_ENTITY, "invalid_plugin");
        let (status, upgraded) = upload(
            &app,
            "/api/v1/plugins/word-stats/upgrade",
            &admin.token,
            template.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{upgraded}");
        let bundled = upload(
            &app,
            "/api/v1/plugins/calculator/upgrade",
            &admin.token,
            template.clone(),
        )
        .await;
        assert_error(&bundled, StatusCode::CONFLICT, "conflict");

        // Limits per plugin.
        let zero = app
            .patch(
                "/api/v1/plugins/word-stats",
                &admin.token,
                json!({ "limits": { "timeout_ms": 0 } }),
            )
            .await;
        assert_error(&zero, StatusCode::BAD_REQUEST, "validation_error");
        let unmetered = app
            .patch(
                "/api/v1/plugins/word-stats",
                &admin.token,
                json!({ "limits": { "max_fuel": 1000000 } }),
            )
            .await;
        assert_error(&unmetered, StatusCode::BAD_REQUEST, "validation_error");
        assert!(unmetered.1["message"]
            .as_str()
            .unwrap()
            .contains("sandbox.fuel"));
        let (status, limited) = app
            .patch(
                "/api/v1/plugins/word-stats",
                &admin.token,
                json!({ "limits": { "timeout_ms": 2500 } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{limited}");
        assert_eq!(limited["custom_limits"], true);
        assert_eq!(limited["limits"]["timeout_ms"], 2500);
        let (_, reset) = app
            .patch(
                "/api/v1/plugins/word-stats",
                &admin.token,
                json!({ "limits": null }),
            )
            .await;
        assert_eq!(reset["custom_limits"], false);
        let bad_host = app
            .patch(
                "/api/v1/plugins/word-stats",
                &admin.token,
                json!({ "grants": { "http_hosts": ["not a host"] } }),
            )
            .await;
        assert_error(&bad_host, StatusCode::BAD_REQUEST, "validation_error");
        let missing_dir = app
            .patch(
                "/api/v1/plugins/hostile",
                &admin.token,
                json!({ "grants": { "directories": [{ "path": "/data", "host": "/nonexistent/dir" }] } }),
            )
            .await;
        assert_error(&missing_dir, StatusCode::BAD_REQUEST, "validation_error");
        let (status, with_dir) = app
            .patch(
                "/api/v1/plugins/hostile",
                &admin.token,
                json!({ "grants": { "key_value": true, "directories": [{ "path": "/data", "host": dir.path() }] } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{with_dir}");
        assert_eq!(with_dir["effective"]["directories"][0]["path"], "/data");
        assert_eq!(with_dir["effective"]["directories"][0]["writable"], false);
        let by_user = app
            .patch(
                "/api/v1/plugins/word-stats",
                &user.token,
                json!({ "grants": { "key_value": true } }),
            )
            .await;
        assert_error(&by_user, StatusCode::FORBIDDEN, "forbidden");

        // What is installed and granted survives a restart; a second node on
        // the same database sees the same plugins.
        let second = orchestra::server::build_state(app.config.clone())
            .await
            .unwrap();
        assert!(second.tools.contains("word-stats__stats", None));
        let hostile_entry = second.tools.entry("hostile").unwrap();
        assert!(hostile_entry.grants.key_value);
        assert_eq!(hostile_entry.plugin.digest(), sha256(&hostile));
        // A revoke through one node reaches the other at its next refresh.
        let (status, _) = app
            .patch(
                "/api/v1/plugins/hostile",
                &admin.token,
                json!({ "grants": {} }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(second.plugins.refresh().await.unwrap() >= 1);
        assert!(!second.tools.entry("hostile").unwrap().grants.key_value);
        assert_eq!(
            second.plugins.refresh().await.unwrap(),
            0,
            "nothing left to change"
        );

        // Removing.
        let bundled = app.delete("/api/v1/plugins/calculator", &admin.token).await;
        assert_error(&bundled, StatusCode::CONFLICT, "conflict");
        let by_user = app.delete("/api/v1/plugins/word-stats", &user.token).await;
        assert_error(&by_user, StatusCode::FORBIDDEN, "forbidden");
        let (status, _) = app
            .delete("/api/v1/plugins/word-stats?purge=true", &admin.token)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let gone = invoke(&app, &user, "word-stats__stats", json!({ "text": "a" })).await;
        assert_error(&gone, StatusCode::NOT_FOUND, "not_found");
        let gone = app.get("/api/v1/plugins/word-stats", &admin.token).await;
        assert_error(&gone, StatusCode::NOT_FOUND, "not_found");
        second.plugins.refresh().await.unwrap();
        assert!(
            !second.tools.contains("word-stats__stats", None),
            "removed on the other node too"
        );
        drop(second);

        let (_, log) = app
            .get("/api/v1/audit-log?action=plugin.installed", &admin.token)
            .await;
        assert_eq!(log["total"], 2);
        let (_, log) = app
            .get("/api/v1/audit-log?action=plugin.removed", &admin.token)
            .await;
        assert_eq!(log["total"], 1);
    }
);

dual_test!(notes_are_private_to_each_user, |app: TestApp| async move {
    let (admin, alice) = app.admin_and_user().await;
    let bob = app.add_user(&admin, "bob@example.com", "user").await;

    let (status, saved) = invoke(
        &app,
        &alice,
        "notes__save",
        json!({ "title": "groceries", "body": "milk, eggs", "tags": ["home"] }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{saved}");
    assert_eq!(
        saved["result"],
        json!({ "title": "groceries", "replaced": false })
    );
    let (_, saved) = invoke(
        &app,
        &alice,
        "notes__save",
        json!({ "title": "groceries", "body": "milk, eggs, bread", "tags": ["home"] }),
    )
    .await;
    assert_eq!(saved["result"]["replaced"], true);
    invoke(
        &app,
        &alice,
        "notes__save",
        json!({ "title": "work", "body": "ship the release" }),
    )
    .await;

    let (_, read) = invoke(&app, &alice, "notes__read", json!({ "title": "groceries" })).await;
    assert_eq!(read["result"]["body"], "milk, eggs, bread");
    let (_, found) = invoke(&app, &alice, "notes__search", json!({ "query": "BREAD" })).await;
    assert_eq!(found["result"]["notes"][0]["title"], "groceries");
    assert_eq!(found["result"]["searched"], 2);
    let (_, tagged) = invoke(&app, &alice, "notes__search", json!({ "tag": "home" })).await;
    assert_eq!(tagged["result"]["notes"].as_array().unwrap().len(), 1);

    // Bob sees none of it.
    let theirs = invoke(&app, &bob, "notes__read", json!({ "title": "groceries" })).await;
    assert_error(&theirs, StatusCode::UNPROCESSABLE_ENTITY, "tool_failed");
    let (_, none) = invoke(&app, &bob, "notes__search", json!({})).await;
    assert_eq!(none["result"], json!({ "notes": [], "searched": 0 }));

    // Revoked: the plugin loses the store at its next call; the data stays.
    let (status, revoked) = app
        .patch(
            "/api/v1/plugins/notes",
            &admin.token,
            json!({ "grants": { "key_value": false } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{revoked}");
    assert_eq!(revoked["effective"]["key_value"], false);
    let cut = invoke(&app, &alice, "notes__read", json!({ "title": "groceries" })).await;
    assert_error(&cut, StatusCode::UNPROCESSABLE_ENTITY, "tool_failed");
    assert!(
        cut.1["message"].as_str().unwrap().contains("not granted"),
        "{}",
        cut.1
    );
    app.patch(
        "/api/v1/plugins/notes",
        &admin.token,
        json!({ "grants": { "key_value": true } }),
    )
    .await;
    let (status, back) = invoke(&app, &alice, "notes__read", json!({ "title": "groceries" })).await;
    assert_eq!(status, StatusCode::OK, "{back}");

    let (_, deleted) = invoke(
        &app,
        &alice,
        "notes__delete",
        json!({ "title": "groceries" }),
    )
    .await;
    assert_eq!(deleted["result"]["deleted"], true);
    let (_, deleted) = invoke(
        &app,
        &alice,
        "notes__delete",
        json!({ "title": "groceries" }),
    )
    .await;
    assert_eq!(deleted["result"]["deleted"], false);
    let bad = invoke(
        &app,
        &alice,
        "notes__save",
        json!({ "title": "", "body": "x" }),
    )
    .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "validation_error");
});

dual_test!(
    secrets_are_write_only_and_reach_only_granted_plugins,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let denied = app
            .put(
                "/api/v1/secrets/api_token",
                &user.token,
                json!({ "value": "x" }),
            )
            .await;
        assert_error(&denied, StatusCode::FORBIDDEN, "forbidden");
        let (status, set) = app
            .put(
                "/api/v1/secrets/api_token",
                &admin.token,
                json!({ "value": "s3cr3t-value" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{set}");
        assert_eq!(set["name"], "api_token");
        app.put(
            "/api/v1/secrets/db_password",
            &admin.token,
            json!({ "value": "hunter2" }),
        )
        .await;
        let (_, list) = app.get("/api/v1/secrets", &admin.token).await;
        assert_eq!(list.as_array().unwrap().len(), 2);
        assert!(
            !list.to_string().contains("s3cr3t"),
            "values are never shown: {list}"
        );
        let bad = app
            .put(
                "/api/v1/secrets/bad!name",
                &admin.token,
                json!({ "value": "x" }),
            )
            .await;
        assert_error(&bad, StatusCode::BAD_REQUEST, "validation_error");
        let empty = app
            .put("/api/v1/secrets/x", &admin.token, json!({ "value": "" }))
            .await;
        assert_error(&empty, StatusCode::BAD_REQUEST, "validation_error");

        let (status, _) = upload(&app, "/api/v1/plugins", &admin.token, hostile_wasm()).await;
        assert_eq!(status, StatusCode::CREATED);
        let read = |name: &'static str| {
            let app = &app;
            let user = user.clone();
            async move {
                let (status, body) =
                    invoke(app, &user, "hostile__secret", json!({ "name": name })).await;
                assert_eq!(status, StatusCode::OK, "{body}");
                body["result"].clone()
            }
        };
        assert!(read("api_token").await["Err"]
            .as_str()
            .unwrap()
            .contains("not granted"));

        app.patch(
            "/api/v1/plugins/hostile",
            &admin.token,
            json!({ "grants": { "secrets": ["api_token", "db_password"] } }),
        )
        .await;
        assert_eq!(read("api_token").await["Ok"], "s3cr3t-value");
        let other = read("db_password").await;
        assert!(
            other["Err"].as_str().unwrap().contains("not granted"),
            "granted but never requested: {other}"
        );

        let (status, _) = app.delete("/api/v1/secrets/api_token", &admin.token).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(read("api_token").await["Err"]
            .as_str()
            .unwrap()
            .contains("no value"));
        let gone = app.delete("/api/v1/secrets/api_token", &admin.token).await;
        assert_error(&gone, StatusCode::NOT_FOUND, "not_found");
    }
);

/// Serves `bytes` at `/plugin.wasm` on a local HTTP server; returns its base URL.
async fn file_server(bytes: Vec<u8>) -> String {
    let app = axum::Router::new().route(
        "/plugin.wasm",
        axum::routing::get(move || {
            let bytes = bytes.clone();
            async move { bytes }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

dual_test!(
    plugins_download_from_a_url_pinned_by_digest,
    |config: &mut orchestra::config::Config| {
        // Plain http for the local test server; https is the default rule.
        config.sandbox.allow_http_plugin_urls = true;
        config.sandbox.max_plugin_bytes = 4 << 20;
    },
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let template = template_wasm();
        let base = file_server(template.clone()).await;
        let url = format!("{base}/plugin.wasm");

        let wrong = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "url": url, "sha256": sha256(b"other") }),
            )
            .await;
        assert_error(&wrong, StatusCode::BAD_REQUEST, "validation_error");
        assert_eq!(wrong.1["details"]["actual"], sha256(&template));
        let missing = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "url": format!("{base}/nothing.wasm"), "sha256": sha256(&template) }),
            )
            .await;
        assert_error(
            &missing,
            StatusCode::UNPROCESSABLE_ENTITY,
            "download_failed",
        );
        let unreachable = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "url": "http://127.0.0.1:9/plugin.wasm", "sha256": sha256(&template) }),
            )
            .await;
        assert_error(
            &unreachable,
            StatusCode::UNPROCESSABLE_ENTITY,
            "download_failed",
        );

        let (status, installed) = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "url": url, "sha256": sha256(&template).to_uppercase() }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{installed}");
        assert_eq!(installed["source"], format!("url:{url}"));
        assert_eq!(installed["digest"], sha256(&template));

        // A component larger than sandbox.max_plugin_bytes is refused while downloading.
        let big = file_server(vec![0u8; 5 << 20]).await;
        let too_big = app
            .post(
                "/api/v1/plugins",
                &admin.token,
                json!({ "url": format!("{big}/plugin.wasm"), "sha256": sha256(b"x") }),
            )
            .await;
        assert_error(
            &too_big,
            StatusCode::UNPROCESSABLE_ENTITY,
            "download_failed",
        );
        assert!(too_big.1["message"]
            .as_str()
            .unwrap()
            .contains("larger than the limit"));
        let upload_too_big =
            upload(&app, "/api/v1/plugins", &admin.token, vec![0u8; 5 << 20]).await;
        assert_eq!(
            upload_too_big.0,
            StatusCode::PAYLOAD_TOO_LARGE,
            "{}",
            upload_too_big.1
        );
    }
);
