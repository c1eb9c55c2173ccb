//! Model providers over the API: admins configure them (keys write-only and
//! encrypted at rest), the environment adds its own, and users list the
//! models, read from a local server that speaks the vendors' `/models` wire
//! format.

use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::get;
use axum::Json as AxumJson;
use reqwest::StatusCode;
use serde_json::json;

use crate::common::{assert_error, TestApp};
use crate::dual_test;

/// A local server answering `GET /v1/models` in both vendors' formats, for
/// the right key only. Runs on its own thread so that a configuration
/// closure can start it.
fn models_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                "/v1/models",
                get(|headers: HeaderMap| async move {
                    let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
                    let anthropic = headers.get("x-api-key").and_then(|v| v.to_str().ok());
                    match (bearer, anthropic) {
                        (Some("Bearer sk-openai-test"), _) => (
                            AxumStatus::OK,
                            AxumJson(json!({ "object": "list", "data": [
                                { "id": "gpt-test-mini", "object": "model", "created": 1, "owned_by": "system" },
                                { "id": "gpt-test", "object": "model", "created": 1, "owned_by": "system" }
                            ] })),
                        ),
                        (_, Some("sk-ant-env")) => (
                            AxumStatus::OK,
                            AxumJson(json!({ "data": [
                                { "type": "model", "id": "claude-test", "display_name": "Claude Test", "created_at": "2025-01-01T00:00:00Z" }
                            ], "has_more": false, "first_id": "claude-test", "last_id": "claude-test" })),
                        ),
                        _ => (
                            AxumStatus::UNAUTHORIZED,
                            AxumJson(json!({ "error": { "message": "Incorrect API key provided", "type": "invalid_request_error", "param": null, "code": "invalid_api_key" } })),
                        ),
                    }
                }),
            );
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    base
}

dual_test!(
    providers_are_configured_by_admins_and_models_listed,
    |config: &mut orchestra::config::Config| {
        config.env_providers = vec![orchestra::config::EnvProvider {
            name: "anthropic".into(),
            kind: "anthropic".into(),
            base_url: models_server(),
            api_key: "sk-ant-env".into(),
        }];
    },
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let server = models_server();

        let viewer = app.add_user(&admin, "viewer@example.com", "viewer").await;
        let denied = app
            .post(
                "/api/v1/providers",
                &viewer.token,
                json!({ "name": "x", "kind": "openai" }),
            )
            .await;
        assert_error(&denied, StatusCode::FORBIDDEN, "forbidden");
        let _ = &user;

        let (status, created) = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({ "name": "local", "kind": "openai", "base_url": format!("{server}/v1/"), "api_key": "sk-openai-test" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["base_url"], format!("{server}/v1"));
        assert_eq!(created["has_api_key"], true);
        assert!(
            !created.to_string().contains("sk-openai-test"),
            "the key is never shown"
        );
        let (status, fixed) = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({ "name": "fixed", "kind": "anthropic", "base_url": server, "models": ["claude-a", "claude-b"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{fixed}");
        assert_eq!(fixed["has_api_key"], false);
        let (status, _) = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({ "name": "wrongkey", "kind": "openai", "base_url": format!("{server}/v1"), "api_key": "sk-wrong" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);

        for bad in [
            json!({ "name": "Bad Name", "kind": "openai" }),
            json!({ "name": "ok", "kind": "cohere" }),
            json!({ "name": "ok", "kind": "openai", "base_url": "ftp://x" }),
            json!({ "name": "ok", "kind": "openai", "api_key": "" }),
            json!({ "name": "ok", "kind": "openai", "models": [""] }),
            json!({ "name": "ok", "kind": "openai", "secret": "x" }),
        ] {
            let r = app
                .post("/api/v1/providers", &admin.token, bad.clone())
                .await;
            assert_error(&r, StatusCode::BAD_REQUEST, "validation_error");
        }
        let dup = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({ "name": "local", "kind": "openai" }),
            )
            .await;
        assert_error(&dup, StatusCode::CONFLICT, "conflict");
        let env_dup = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({ "name": "anthropic", "kind": "anthropic" }),
            )
            .await;
        assert_error(&env_dup, StatusCode::CONFLICT, "conflict");

        let (_, list) = app.get("/api/v1/providers", &admin.token).await;
        let sources: Vec<(String, String)> = list
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap().to_owned(),
                    p["source"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(
            sources,
            [
                ("anthropic".to_owned(), "environment".to_owned()),
                ("fixed".to_owned(), "database".to_owned()),
                ("local".to_owned(), "database".to_owned()),
                ("wrongkey".to_owned(), "database".to_owned()),
            ]
        );
        assert!(!list.to_string().contains("sk-ant-env"));

        // Any user lists the models: configured lists, and live lists read
        // with the stored (decrypted) keys.
        let (status, models) = app.get("/api/v1/models", &user.token).await;
        assert_eq!(status, StatusCode::OK, "{models}");
        let names: Vec<String> = models["models"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                format!(
                    "{}/{}",
                    m["provider"].as_str().unwrap(),
                    m["model"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                "anthropic/claude-test",
                "fixed/claude-a",
                "fixed/claude-b",
                "local/gpt-test",
                "local/gpt-test-mini"
            ]
        );
        assert_eq!(models["unavailable"][0]["provider"], "wrongkey");
        assert!(models["unavailable"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("401"));

        // Changing the key takes effect; removing it is possible; env providers are read-only.
        let (status, _) = app
            .patch(
                "/api/v1/providers/wrongkey",
                &admin.token,
                json!({ "api_key": "sk-openai-test" }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, models) = app.get("/api/v1/models", &user.token).await;
        assert_eq!(models["unavailable"], json!([]));
        let (_, cleared) = app
            .patch(
                "/api/v1/providers/wrongkey",
                &admin.token,
                json!({ "api_key": null }),
            )
            .await;
        assert_eq!(cleared["has_api_key"], false);
        let env_change = app
            .patch(
                "/api/v1/providers/anthropic",
                &admin.token,
                json!({ "models": ["x"] }),
            )
            .await;
        assert_error(&env_change, StatusCode::CONFLICT, "conflict");
        let env_delete = app
            .delete("/api/v1/providers/anthropic", &admin.token)
            .await;
        assert_error(&env_delete, StatusCode::CONFLICT, "conflict");
        let (status, _) = app.delete("/api/v1/providers/fixed", &admin.token).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let gone = app.get("/api/v1/providers/fixed", &admin.token).await;
        assert_error(&gone, StatusCode::NOT_FOUND, "not_found");

        // At rest the key is ciphertext only.
        let db = orchestra::db::Db::connect(&app.config).await.unwrap();
        let stored: Vec<u8> = match &db {
            orchestra::db::Db::Sqlite(pool) => {
                sqlx::query_scalar("SELECT api_key_ciphertext FROM providers WHERE name = 'local'")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
            orchestra::db::Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT api_key_ciphertext FROM providers WHERE name = 'local'")
                    .fetch_one(pool)
                    .await
                    .unwrap()
            }
        };
        assert!(!stored.windows(14).any(|w| w == b"sk-openai-test"));
    }
);
