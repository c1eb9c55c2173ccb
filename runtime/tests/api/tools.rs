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
        assert_eq!(calc["tools"], json!(["calculator__evaluate"]));
    }
);
