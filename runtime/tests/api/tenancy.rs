//! Row-level tenancy: another user's resources answer 404 on every endpoint,
//! never 403, and are never changed; admins see everyone's.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::*;
use crate::dual_test;

dual_test!(
    another_users_resources_are_404_everywhere,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let alice = app.add_user(&admin, "alice@example.com", "user").await;
        let bob = app.add_user(&admin, "bob@example.com", "user").await;
        let agent = app.agent(&alice, "private").await;
        let conv = app.conversation(&alice, &agent).await;
        app.post(
            &format!("/api/v1/conversations/{conv}/messages"),
            &alice.token,
            json!({ "content": "secret" }),
        )
        .await;

        let agent_body =
            json!({ "name": "stolen", "model": { "provider": "openai", "model": "m" } });
        let requests: Vec<(Method, String, Option<serde_json::Value>)> = vec![
            (Method::GET, format!("/api/v1/agents/{agent}"), None),
            (
                Method::PUT,
                format!("/api/v1/agents/{agent}"),
                Some(agent_body.clone()),
            ),
            (
                Method::PATCH,
                format!("/api/v1/agents/{agent}"),
                Some(json!({ "name": "stolen" })),
            ),
            (Method::DELETE, format!("/api/v1/agents/{agent}"), None),
            (
                Method::POST,
                format!("/api/v1/agents/{agent}/clone"),
                Some(json!({})),
            ),
            (
                Method::GET,
                format!("/api/v1/agents/{agent}/revisions"),
                None,
            ),
            (
                Method::GET,
                format!("/api/v1/agents/{agent}/revisions/1"),
                None,
            ),
            (
                Method::POST,
                "/api/v1/conversations".to_owned(),
                Some(json!({ "agent_id": agent })),
            ),
            (Method::GET, format!("/api/v1/conversations/{conv}"), None),
            (
                Method::PATCH,
                format!("/api/v1/conversations/{conv}"),
                Some(json!({ "title": "stolen" })),
            ),
            (
                Method::DELETE,
                format!("/api/v1/conversations/{conv}"),
                None,
            ),
            (
                Method::GET,
                format!("/api/v1/conversations/{conv}/messages"),
                None,
            ),
            (
                Method::POST,
                format!("/api/v1/conversations/{conv}/messages"),
                Some(json!({ "content": "hi" })),
            ),
        ];
        for (method, path, body) in requests {
            let result = app
                .call(method.clone(), &path, Some(&bob.token), body)
                .await;
            assert_eq!(
                result.0,
                StatusCode::NOT_FOUND,
                "{method} {path} answered {}: {}",
                result.0,
                result.1
            );
            assert_eq!(result.1["error"], "not_found");
        }

        // Lists never show them, even when asked by owner.
        let (_, agents) = app.get("/api/v1/agents", &bob.token).await;
        assert_eq!(agents["total"], 0);
        let (_, agents) = app
            .get(
                &format!("/api/v1/agents?owner_id={}", alice.user_id),
                &bob.token,
            )
            .await;
        assert_eq!(agents["total"], 0);
        let (_, convs) = app.get("/api/v1/conversations", &bob.token).await;
        assert_eq!(convs["total"], 0);

        // Nothing of Alice's changed.
        let (_, a) = app
            .get(&format!("/api/v1/agents/{agent}"), &alice.token)
            .await;
        assert_eq!(
            (a["name"].as_str(), a["version"].as_i64()),
            (Some("private"), Some(1))
        );
        let (_, c) = app
            .get(&format!("/api/v1/conversations/{conv}"), &alice.token)
            .await;
        assert_eq!(
            (c["title"].as_str(), c["message_count"].as_i64()),
            (Some("chat"), Some(1))
        );

        // Admins see and manage everyone's resources.
        assert_eq!(
            app.get(&format!("/api/v1/agents/{agent}"), &admin.token)
                .await
                .0,
            StatusCode::OK
        );
        let (_, all) = app
            .get(
                &format!("/api/v1/agents?owner_id={}", alice.user_id),
                &admin.token,
            )
            .await;
        assert_eq!(all["total"], 1);
        assert_eq!(
            app.get(
                &format!("/api/v1/conversations/{conv}/messages"),
                &admin.token
            )
            .await
            .0,
            StatusCode::OK
        );
    }
);
