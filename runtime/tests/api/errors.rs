//! Bad input of every kind gets a clear 4xx with the `ErrorResponse` body and
//! stores nothing; health, docs and request ids.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::*;
use crate::dual_test;

async fn raw(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut req = app
        .client
        .request(method, format!("{}{path}", app.base))
        .body(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not an ErrorResponse: {text:?}")),
    )
}

dual_test!(
    malformed_and_oversized_bodies_get_4xx_and_store_nothing,
    |config: &mut orchestra::config::Config| config.http.body_limit_bytes = 8 * 1024,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let post = reqwest::Method::POST;
        let json_ct = Some("application/json");
        let t = Some(admin.token.as_str());

        let malformed = raw(
            &app,
            post.clone(),
            "/api/v1/agents",
            t,
            json_ct,
            b"{\"name\": ".to_vec(),
        )
        .await;
        assert_error(&malformed, StatusCode::BAD_REQUEST, "validation_error");
        assert!(malformed.1["message"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"));

        let not_json = raw(
            &app,
            post.clone(),
            "/api/v1/agents",
            t,
            Some("text/plain"),
            b"hello".to_vec(),
        )
        .await;
        assert_error(&not_json, StatusCode::BAD_REQUEST, "validation_error");

        let wrong_type = raw(
            &app,
            post.clone(),
            "/api/v1/agents",
            t,
            json_ct,
            b"[1,2,3]".to_vec(),
        )
        .await;
        assert_error(&wrong_type, StatusCode::BAD_REQUEST, "validation_error");

        let huge = json!({
            "name": "big",
            "model": { "provider": "openai", "model": "m" },
            "instructions": "x".repeat(20 * 1024),
        });
        let oversized = raw(
            &app,
            post.clone(),
            "/api/v1/agents",
            t,
            json_ct,
            serde_json::to_vec(&huge).unwrap(),
        )
        .await;
        assert_error(
            &oversized,
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        );

        let invalid_utf8 = raw(
            &app,
            post.clone(),
            "/api/v1/agents",
            t,
            json_ct,
            vec![b'"', 0xff, 0xfe, b'"'],
        )
        .await;
        assert_error(&invalid_utf8, StatusCode::BAD_REQUEST, "validation_error");

        let bad_login = raw(
            &app,
            post.clone(),
            "/api/v1/auth/login",
            None,
            json_ct,
            b"{}".to_vec(),
        )
        .await;
        assert_error(&bad_login, StatusCode::BAD_REQUEST, "validation_error");

        assert_eq!(
            app.get("/api/v1/agents", &admin.token).await.1["total"],
            0,
            "nothing stored"
        );
    }
);

dual_test!(
    paths_methods_and_headers_are_checked,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        assert_error(
            &app.get("/api/v1/agents/not-a-uuid", &admin.token).await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );
        assert_error(
            &app.get(
                "/api/v1/agents/00000000-0000-0000-0000-000000000000/revisions/x",
                &admin.token,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );
        assert_error(
            &app.get("/api/v1/nothing-here", &admin.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        let wrong_method = app
            .call(
                reqwest::Method::PUT,
                "/api/v1/auth/login",
                None,
                Some(json!({})),
            )
            .await;
        assert_error(
            &wrong_method,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );

        let id = app.agent(&admin, "a").await;
        let resp = app
            .client
            .patch(format!("{}/api/v1/agents/{id}", app.base))
            .bearer_auth(&admin.token)
            .header("If-Match", "yesterday")
            .json(&json!({ "name": "b" }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
);

dual_test!(health_docs_and_request_ids, |app: TestApp| async move {
    for path in ["/healthz", "/readyz"] {
        let resp = app
            .client
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers().contains_key("x-request-id"));
    }
    let resp = app
        .client
        .get(format!("{}/healthz", app.base))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-42");

    let spec: Value = app
        .client
        .get(format!("{}/api/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in [
        "/api/v1/agents",
        "/api/v1/agents/{id}",
        "/api/v1/auth/login",
        "/api/v1/conversations/{id}/messages",
        "/api/v1/api-keys",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the OpenAPI document"
        );
    }
    assert!(spec["components"]["schemas"]["ErrorResponse"].is_object());
    assert!(spec["components"]["securitySchemes"]["bearer"].is_object());

    let docs = app
        .client
        .get(format!("{}/docs/", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().contains("swagger"));

    // CORS is closed by default: no allow-origin for a foreign origin.
    let preflight = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/agents", app.base),
        )
        .header("Origin", "https://evil.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(!preflight
        .headers()
        .contains_key("access-control-allow-origin"));
});

dual_test!(
    configured_cors_origins_are_allowed,
    |config: &mut orchestra::config::Config| config.http.cors_allowed_origins =
        vec!["https://app.example".into()],
    |app: TestApp| async move {
        let preflight = app
            .client
            .request(
                reqwest::Method::OPTIONS,
                format!("{}/api/v1/agents", app.base),
            )
            .header("Origin", "https://app.example")
            .header("Access-Control-Request-Method", "POST")
            .send()
            .await
            .unwrap();
        assert_eq!(
            preflight.headers()["access-control-allow-origin"],
            "https://app.example"
        );
    }
);
