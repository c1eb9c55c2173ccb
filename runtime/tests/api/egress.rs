//! Users' own endpoints (personal providers, their HTTP MCP servers) may not
//! reach the server's own network unless the operator allows it.

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{assert_error, TestApp};
use crate::dual_test;
use crate::runs::with_vendor;

const PRIVATE: [&str; 6] = [
    "http://127.0.0.1:11434/v1",
    "http://localhost:11434/v1",
    "http://169.254.169.254/latest/meta-data",
    "http://10.0.0.7/v1",
    "http://[::1]:8080/v1",
    "http://[::ffff:192.168.1.1]/v1",
];

dual_test!(
    users_own_endpoints_may_not_reach_private_addresses,
    |config| {
        with_vendor(config);
    },
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        for url in PRIVATE {
            let refused = app
                .post(
                    "/api/v1/providers",
                    &user.token,
                    json!({ "name": "mine", "kind": "openai", "base_url": url }),
                )
                .await;
            assert_error(&refused, StatusCode::BAD_REQUEST, "validation_error");
            assert_eq!(
                refused.1["details"]["field"], "base_url",
                "{url}: {}",
                refused.1
            );
            assert!(
                refused.1["message"]
                    .as_str()
                    .unwrap()
                    .contains("may not reach"),
                "{url}: {}",
                refused.1
            );
            let refused = app
                .post(
                    "/api/v1/mcp-servers",
                    &user.token,
                    json!({ "name": "mine", "transport": "http", "url": format!("{url}/mcp") }),
                )
                .await;
            assert_error(&refused, StatusCode::BAD_REQUEST, "validation_error");
            assert_eq!(refused.1["details"]["field"], "url", "{url}: {}", refused.1);
        }
        // An admin's personal provider is a user's endpoint too.
        let refused = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({ "name": "adminsown", "kind": "openai", "personal": true, "base_url": PRIVATE[0] }),
            )
            .await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "validation_error");

        // A public URL is accepted, and cannot be changed into a private one:
        // the stored provider is left as it was.
        let (status, mine) = app
            .post(
                "/api/v1/providers",
                &user.token,
                json!({ "name": "mine", "kind": "openai", "base_url": "https://api.example.com/v1", "models": ["m"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{mine}");
        let refused = app
            .patch(
                "/api/v1/providers/mine",
                &user.token,
                json!({ "base_url": "http://169.254.169.254/v1" }),
            )
            .await;
        assert_error(&refused, StatusCode::BAD_REQUEST, "validation_error");
        let (_, stored) = app.get("/api/v1/providers/mine", &user.token).await;
        assert_eq!(stored["base_url"], "https://api.example.com/v1", "{stored}");

        // Server-wide endpoints are the operator's: a local one is fine.
        let (status, local) = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({ "name": "ollama", "kind": "openai", "base_url": PRIVATE[1], "models": ["llama3"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{local}");
        assert_eq!(local["owner_id"], serde_json::Value::Null);
    }
);

dual_test!(
    an_operator_may_let_users_reach_private_addresses,
    |config| {
        with_vendor(config);
        config.egress.allow_private_user_endpoints = true;
    },
    |app: TestApp| async move {
        let (_, user) = app.admin_and_user().await;
        let (status, mine) = app
            .post(
                "/api/v1/providers",
                &user.token,
                json!({ "name": "mine", "kind": "openai", "base_url": PRIVATE[0], "models": ["m"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{mine}");
    }
);
