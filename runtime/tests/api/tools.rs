//! The tool catalogue over HTTP: listing, direct invocation in the sandbox,
//! permissions and auditing.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::*;
use crate::dual_test;

dual_test!(
    bundled_tools_are_listed_and_invocable,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let viewer = app.add_user(&admin, "viewer@example.com", "viewer").await;

        let (status, tools) = app.get("/api/v1/tools", &viewer.token).await;
        assert_eq!(status, StatusCode::OK);
        let calc = tools
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "calculator__evaluate")
            .expect("the calculator is available on a fresh install")
            .clone();
        assert_eq!(calc["source"]["kind"], "plugin");
        assert_eq!(calc["read_only"], true);
        assert_eq!(calc["input_schema"]["type"], "object");
        for tool in tools.as_array().unwrap() {
            let name = tool["name"].as_str().unwrap();
            assert!(
                name.len() <= 64
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
                "{name} is not a vendor-safe tool name"
            );
        }
        let (status, one) = app
            .get("/api/v1/tools/calculator__evaluate", &viewer.token)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(one["name"], "calculator__evaluate");
        assert_error(
            &app.get("/api/v1/tools/nope__nothing", &viewer.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );

        let (status, out) = app
            .post(
                "/api/v1/tools/calculator__evaluate/invoke",
                &admin.token,
                json!({ "arguments": { "expression": "6 * 7" } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert_eq!(out["result"], json!({ "result": 42.0 }));
        assert!(out["duration_ms"].as_f64().unwrap() >= 0.0);

        let bad = app
            .post(
                "/api/v1/tools/calculator__evaluate/invoke",
                &admin.token,
                json!({ "arguments": { "expression": 5 } }),
            )
            .await;
        assert_error(&bad, StatusCode::BAD_REQUEST, "validation_error");
        let parse = app
            .post(
                "/api/v1/tools/calculator__evaluate/invoke",
                &admin.token,
                json!({ "arguments": { "expression": "1 / 0" } }),
            )
            .await;
        assert_error(&parse, StatusCode::BAD_REQUEST, "validation_error");
        assert!(parse.1["message"]
            .as_str()
            .unwrap()
            .contains("division by zero"));
        let unknown = app
            .post(
                "/api/v1/tools/nope__nothing/invoke",
                &admin.token,
                json!({ "arguments": {} }),
            )
            .await;
        assert_error(&unknown, StatusCode::NOT_FOUND, "not_found");

        // A viewer reads the catalogue but does not run tools.
        let denied = app
            .post(
                "/api/v1/tools/calculator__evaluate/invoke",
                &viewer.token,
                json!({ "arguments": { "expression": "1" } }),
            )
            .await;
        assert_error(&denied, StatusCode::FORBIDDEN, "forbidden");

        let (_, log) = app
            .get("/api/v1/audit-log?action=tool.invoked", &admin.token)
            .await;
        assert_eq!(
            log["total"], 3,
            "every invocation of an existing tool by a permitted caller is audited"
        );

        let (status, plugins) = app.get("/api/v1/plugins", &admin.token).await;
        assert_eq!(status, StatusCode::OK);
        let calc = plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "calculator")
            .unwrap();
        assert_eq!(calc["bundled"], true);
        assert_eq!(calc["digest"].as_str().unwrap().len(), 64);
        assert_eq!(calc["tools"][0]["name"], "calculator__evaluate");
        assert_eq!(calc["source"], "bundled");
        assert_eq!(calc["requested"]["key_value"], false);
        assert_eq!(
            calc["effective"],
            json!({ "http_hosts": [], "key_value": false, "secrets": [], "directories": [], "private_networks": [] })
        );
    }
);

dual_test!(
    the_text_and_time_plugins_work_through_the_api,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let invoke = |tool: &'static str, arguments: serde_json::Value| {
            let app = &app;
            let token = admin.token.clone();
            async move {
                app.post(
                    &format!("/api/v1/tools/{tool}/invoke"),
                    &token,
                    json!({ "arguments": arguments }),
                )
                .await
            }
        };
        let (status, found) = invoke(
            "text__regex_search",
            json!({ "text": "order 66 and 42", "pattern": r"\d+" }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{found}");
        assert_eq!(found["result"]["matches"].as_array().unwrap().len(), 2);
        let (_, replaced) = invoke(
        "text__regex_replace",
        json!({ "text": "2025-01-31", "pattern": r"(\d+)-(\d+)-(\d+)", "replacement": "$3/$2/$1" }),
    )
    .await;
        assert_eq!(replaced["result"]["text"], "31/01/2025");
        let bad = invoke("text__regex_search", json!({ "text": "x", "pattern": "(" })).await;
        assert_error(&bad, StatusCode::BAD_REQUEST, "validation_error");
        let (_, digest) = invoke("text__sha256", json!({ "text": "abc" })).await;
        assert_eq!(
            digest["result"]["sha256"],
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (status, now) = invoke("time__now", json!({ "offset": "+05:30" })).await;
        assert_eq!(status, StatusCode::OK, "{now}");
        assert!(now["result"]["rfc3339"]
            .as_str()
            .unwrap()
            .ends_with("+05:30"));
        assert!(
            now["result"]["unix"].as_i64().unwrap() > 1_700_000_000,
            "the wall clock is the host's"
        );
        let (_, diff) = invoke(
            "time__diff",
            json!({ "from": "2025-01-01T00:00:00Z", "to": "2025-01-01T01:00:00+00:00" }),
        )
        .await;
        assert_eq!(diff["result"]["seconds"], 3600);
    }
);
