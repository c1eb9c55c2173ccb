//! Defects found by attacking a running server, each with the test that
//! would catch its return: event streams that never close, races on the
//! last admin and on quotas, usage forgotten with deleted conversations,
//! long calls cut by the request timeout, server-wide configuration and
//! secrets shown to users, unthrottled logins, refused uploads kept, names
//! that read differently than they are, and PostgreSQL without TLS.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::common::{assert_error, TestApp};
use crate::dual_test;
use crate::runs::{configure, read_events, run, start, two_finished_runs, wait_status};

dual_test!(
    a_finished_runs_stream_reopened_at_its_end_answers_204,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!([]), json!({})).await;
        let created = run(&app, &admin, &conv, json!({ "message": "hello" })).await;
        let id = created["id"].as_str().unwrap();
        let events = read_events(&app, &admin.token, id, None, None).await;
        let done = events.last().unwrap();
        assert_eq!(done.kind, "done");
        // What an EventSource sends when it reconnects after `done`.
        let reopen = |last: i64| {
            app.client
                .get(format!("{}/api/v1/runs/{id}/events", app.base))
                .bearer_auth(&admin.token)
                .header("Last-Event-ID", last.to_string())
                .send()
        };
        let answer = tokio::time::timeout(Duration::from_secs(5), reopen(done.id))
            .await
            .expect("answered at once")
            .unwrap();
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        // From before its end, the rest is replayed and the stream ends.
        let rest = read_events(&app, &admin.token, id, Some(done.id - 1), None).await;
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].kind, "done");
    }
);

dual_test!(
    a_user_holds_a_bounded_number_of_event_streams,
    |config: &mut orchestra::config::Config| {
        configure(config);
        config.runs.max_streams_per_user = 2;
    },
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let conv = start(&app, &user, json!([]), json!({})).await;
        let created = run(&app, &user, &conv, json!({ "message": "slow" })).await;
        let id = created["id"].as_str().unwrap();
        let open = |token: String| {
            app.client
                .get(format!("{}/api/v1/runs/{id}/events", app.base))
                .bearer_auth(token)
                .send()
        };
        let first = open(user.token.clone()).await.unwrap();
        let second = open(user.token.clone()).await.unwrap();
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(second.status(), StatusCode::OK);
        let third = open(user.token.clone()).await.unwrap();
        assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
        let body: serde_json::Value = third.json().await.unwrap();
        assert_eq!(body["error"], "too_many_streams");
        // The bound is per user: an admin watching the same run is not refused.
        let admins = open(admin.token.clone()).await.unwrap();
        assert_eq!(admins.status(), StatusCode::OK);
        // Closing a stream frees its slot.
        drop(first);
        let mut again = StatusCode::TOO_MANY_REQUESTS;
        for _ in 0..50 {
            again = open(user.token.clone()).await.unwrap().status();
            if again == StatusCode::OK {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(again, StatusCode::OK);
    }
);

dual_test!(
    a_long_poll_outlasts_the_request_timeout,
    |config: &mut orchestra::config::Config| {
        configure(config);
        config.http.request_timeout_secs = 1;
    },
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!([]), json!({})).await;
        // Forty chunks 100 ms apart: longer than the request timeout.
        let created = run(&app, &admin, &conv, json!({ "message": "slow" })).await;
        let id = created["id"].as_str().unwrap();
        let (status, body) = app
            .get(&format!("/api/v1/runs/{id}?wait_secs=3"), &admin.token)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(body["id"], id);
        wait_status(&app, &admin.token, id, "completed").await;
    }
);

dual_test!(
    two_admins_demoting_each_other_at_once_leave_one_admin,
    |app: TestApp| async move {
        let mut boss = app.register("admin@example.com").await;
        for round in 0..8 {
            let other = app
                .add_user(&boss, &format!("admin{round}@example.com"), "admin")
                .await;
            let app = &app;
            let demote = |by: crate::common::Session, whom: String| async move {
                app.patch(
                    &format!("/api/v1/users/{whom}"),
                    &by.token,
                    json!({ "role": "user" }),
                )
                .await
            };
            let (a, b) = tokio::join!(
                demote(boss.clone(), other.user_id.clone()),
                demote(other.clone(), boss.user_id.clone())
            );
            let ok = [&a, &b].iter().filter(|r| r.0 == StatusCode::OK).count();
            assert_eq!(ok, 1, "round {round}: one demotion succeeds: {a:?} {b:?}");
            let refused = if a.0 == StatusCode::OK { &b } else { &a };
            // Refused by the rule, or because its author is no admin any more.
            assert!(
                refused.0 == StatusCode::UNPROCESSABLE_ENTITY || refused.0 == StatusCode::FORBIDDEN,
                "{refused:?}"
            );
            if b.0 == StatusCode::OK {
                boss = other;
            }
            let (status, users) = app.get("/api/v1/users?page_size=100", &boss.token).await;
            assert_eq!(status, StatusCode::OK, "{users}");
            let admins = users["items"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|u| u["role"] == "admin" && u["is_active"] == true)
                .count();
            assert_eq!(admins, 1, "round {round}: {users}");
        }
        // The one admin left cannot step down.
        let alone = app
            .patch(
                &format!("/api/v1/users/{}", boss.user_id),
                &boss.token,
                json!({ "is_active": false }),
            )
            .await;
        assert_error(&alone, StatusCode::UNPROCESSABLE_ENTITY, "last_admin");
    }
);

dual_test!(
    server_wide_configuration_is_for_admins_and_secrets_never_come_back,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let viewer = app.add_user(&admin, "viewer@example.com", "viewer").await;
        let secret = "s3cr3t-value-7d2f";
        let (status, _) = app
            .put(
                "/api/v1/secrets/db_token",
                &admin.token,
                json!({ "value": secret }),
            )
            .await;
        assert!(status.is_success());
        // A server that prints the secret it was given, and dies.
        let (status, created) = app
            .post(
                "/api/v1/mcp-servers",
                &admin.token,
                json!({
                    "name": "leaky",
                    "transport": "stdio",
                    "command": "python3",
                    "args": ["-c", "import os, sys; print('token is', os.environ['TOKEN'], file=sys.stderr); sys.exit(2)"],
                    "env": { "TOKEN": { "secret": "db_token" }, "REGION": "eu-internal-3" },
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let id = created["id"].as_str().unwrap();
        // The admin sees the configuration and why it failed, secret blotted out.
        let mut seen = created.clone();
        for _ in 0..100 {
            if seen["status"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("token is"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            seen = app
                .get(&format!("/api/v1/mcp-servers/{id}"), &admin.token)
                .await
                .1;
        }
        let error = seen["status"]["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("token is [redacted]"), "{seen}");
        assert!(!seen.to_string().contains(secret), "{seen}");
        assert_eq!(seen["command"], "python3");
        assert_eq!(seen["env"]["REGION"], "eu-internal-3");
        // Users and viewers see its name and state, not its configuration.
        for who in [&user, &viewer] {
            for body in [
                app.get(&format!("/api/v1/mcp-servers/{id}"), &who.token)
                    .await
                    .1,
                app.get("/api/v1/mcp-servers", &who.token).await.1[0].clone(),
            ] {
                assert_eq!(body["name"], "leaky", "{body}");
                assert!(body["command"].is_null(), "{body}");
                assert_eq!(body["args"], json!([]), "{body}");
                assert_eq!(body["env"], json!({}), "{body}");
                let text = body.to_string();
                assert!(
                    !text.contains("token is") && !text.contains("eu-internal-3"),
                    "{text}"
                );
                assert!(!text.contains(secret), "{text}");
            }
        }

        // The same for a server-wide provider's URL.
        let (status, provider) = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({
                    "name": "internal",
                    "kind": "openai",
                    "base_url": "https://llm.corp.example/v1?key=k-123",
                    "api_key": "sk-internal",
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{provider}");
        assert_eq!(
            provider["base_url"],
            "https://llm.corp.example/v1?key=k-123"
        );
        for who in [&user, &viewer] {
            let (status, one) = app.get("/api/v1/providers/internal", &who.token).await;
            assert_eq!(status, StatusCode::OK, "{one}");
            assert!(one["base_url"].is_null(), "{one}");
            let (_, all) = app.get("/api/v1/providers", &who.token).await;
            assert!(!all.to_string().contains("corp.example"), "{all}");
        }
    }
);

dual_test!(
    failed_logins_slow_down_further_attempts_with_retry_after,
    |config: &mut orchestra::config::Config| {
        config.auth.login_throttle.account_free_failures = 2;
        config.auth.login_throttle.base_delay_secs = 30;
    },
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let login = |password: &'static str| {
            app.client
                .post(format!("{}/api/v1/auth/login", app.base))
                .json(&json!({ "email": "admin@example.com", "password": password }))
                .send()
        };
        for _ in 0..3 {
            let wrong = login("wrong password!").await.unwrap();
            assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
        }
        // Locked: even the right password waits, so the answer tells nothing.
        let locked = login("correct horse battery").await.unwrap();
        assert_eq!(locked.status(), StatusCode::TOO_MANY_REQUESTS);
        let retry: u64 = locked.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        let body: serde_json::Value = locked.json().await.unwrap();
        assert_eq!(body["error"], "too_many_attempts");
        // Other accounts are not locked by it, and sessions keep working.
        assert_eq!(
            app.get("/api/v1/users/me", &admin.token).await.0,
            StatusCode::OK
        );
    }
);

dual_test!(
    closed_registration_and_refused_uploads_cost_the_server_nothing,
    |app: TestApp| async move {
        let (_admin, user) = app.admin_and_user().await;
        let refused = app
            .call(
                reqwest::Method::POST,
                "/api/v1/auth/register",
                None,
                Some(json!({ "email": "late@example.com", "password": "a long enough password" })),
            )
            .await;
        assert_error(&refused, StatusCode::FORBIDDEN, "registration_closed");
        // A user's upload that never ends still gets its 403, without the
        // server waiting for (or keeping) the body.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
        let feeder = tokio::spawn(async move {
            while tx.send(Ok(vec![0u8; 64 << 10])).await.is_ok() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
        let answer = tokio::time::timeout(
            Duration::from_secs(10),
            app.client
                .post(format!("{}/api/v1/plugins", app.base))
                .bearer_auth(&user.token)
                .header("content-type", "application/wasm")
                .body(body)
                .send(),
        )
        .await
        .expect("answered while the upload goes on");
        feeder.abort();
        let answer = answer.unwrap();
        assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    }
);

/// A stream over a channel's items.
fn tokio_stream_from<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

dual_test!(
    names_that_read_differently_than_they_are_are_refused,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        for name in [
            "Helper\u{202E}tpg",
            "Hel\u{200B}per",
            "\u{2067}admin\u{2069}",
        ] {
            let refused = app
                .post(
                    "/api/v1/agents",
                    &admin.token,
                    json!({ "name": name, "model": { "provider": "openai", "model": "m" } }),
                )
                .await;
            assert_error(&refused, StatusCode::BAD_REQUEST, "validation_error");
            let refused = app
                .patch(
                    &format!("/api/v1/users/{}", admin.user_id),
                    &admin.token,
                    json!({ "display_name": name }),
                )
                .await;
            assert_error(&refused, StatusCode::BAD_REQUEST, "validation_error");
        }
        let (_, agents) = app.get("/api/v1/agents", &admin.token).await;
        assert_eq!(agents["total"], 0);
        // Ordinary scripts, right-to-left ones included, are welcome.
        let (status, body) = app
            .post(
                "/api/v1/agents",
                &admin.token,
                json!({ "name": "مساعد Helper 助手", "model": { "provider": "openai", "model": "m" } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
);

dual_test!(
    deleting_conversations_keeps_usage_and_quotas,
    configure,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let conv = two_finished_runs(&app, &user).await;
        let limits = format!("/api/v1/users/{}/usage-limits", user.user_id);
        let (status, _) = app
            .put(&limits, &admin.token, json!({ "daily_runs": 2 }))
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, before) = app.get("/api/v1/usage?group_by=model", &user.token).await;
        assert_eq!(before["total"]["runs"], 2, "{before}");
        let (status, _) = app
            .delete(&format!("/api/v1/conversations/{conv}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        // The record stays, to the token, for the user and for the admin.
        for token in [&user.token, &admin.token] {
            for group in ["model", "agent", "user", "day"] {
                let (_, after) = app
                    .get(&format!("/api/v1/usage?group_by={group}"), token)
                    .await;
                assert_eq!(after["total"], before["total"], "{group}: {after}");
            }
        }
        // And so does the quota: a new conversation does not reset it.
        let conv = start(&app, &user, json!([]), json!({})).await;
        let refused = app
            .post(
                &format!("/api/v1/conversations/{conv}/runs"),
                &user.token,
                json!({ "message": "hi" }),
            )
            .await;
        assert_error(&refused, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");
    }
);

/// Posts `n` runs of `message` at once; the statuses of the answers.
async fn burst(
    app: &TestApp,
    token: &str,
    conversations: &[String],
    n: usize,
    message: &str,
) -> Vec<StatusCode> {
    let posts = (0..n).map(|i| async move {
        let path = format!(
            "/api/v1/conversations/{}/runs",
            conversations[i % conversations.len()]
        );
        app.post(&path, token, json!({ "message": message })).await
    });
    futures_util::future::join_all(posts)
        .await
        .into_iter()
        .map(|(status, _)| status)
        .collect()
}

/// Waits until the user's usage shows `tokens` tokens.
async fn settled_tokens(app: &TestApp, token: &str, tokens: i64) {
    for _ in 0..300 {
        let (_, usage) = app.get("/api/v1/usage", token).await;
        if usage["total"]["total_tokens"] == tokens {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("usage never reached {tokens} tokens");
}

dual_test!(
    concurrent_runs_cannot_pass_a_limit_together,
    configure,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let mut conversations = Vec::new();
        for _ in 0..4 {
            conversations.push(start(&app, &user, json!([]), json!({})).await);
        }
        let limits = format!("/api/v1/users/{}/usage-limits", user.user_id);
        app.put(&limits, &admin.token, json!({ "daily_runs": 1 }))
            .await;
        let statuses = burst(&app, &user.token, &conversations, 40, "hi").await;
        let count = |statuses: &[StatusCode], want: StatusCode| {
            statuses.iter().filter(|s| **s == want).count()
        };
        assert_eq!(
            (
                count(&statuses, StatusCode::ACCEPTED),
                count(&statuses, StatusCode::TOO_MANY_REQUESTS)
            ),
            (1, 39),
            "{statuses:?}"
        );
        settled_tokens(&app, &user.token, 15).await;

        // Tokens: a run in flight counts as what it reserves (4096 by
        // default), so runs started together cannot spend tokens not yet
        // counted: of ten slow runs, one starts.
        app.put(&limits, &admin.token, json!({ "daily_tokens": 1000 }))
            .await;
        let statuses = burst(&app, &user.token, &conversations, 10, "slow").await;
        assert_eq!(
            (
                count(&statuses, StatusCode::ACCEPTED),
                count(&statuses, StatusCode::TOO_MANY_REQUESTS)
            ),
            (1, 9),
            "{statuses:?}"
        );
        // Once it ends, its real tokens count, not the reservation.
        settled_tokens(&app, &user.token, 30).await;
        let statuses = burst(&app, &user.token, &conversations, 1, "hi").await;
        assert_eq!(statuses, [StatusCode::ACCEPTED]);
    }
);

/// Whether the pool's connection is encrypted (`pg_stat_ssl`).
async fn encrypted(db: &orchestra::db::Db) -> bool {
    let orchestra::db::Db::Postgres(pool) = db else {
        panic!("a PostgreSQL pool")
    };
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_honour_sslmode() {
    let Some(server) = crate::common::postgres_url() else {
        return;
    };
    let ca = match std::env::var("ORCHESTRA_TEST_PG_CA") {
        Ok(ca) if !ca.is_empty() => ca,
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but ORCHESTRA_TEST_PG_CA is not set: scripts/test starts PostgreSQL with TLS")
        }
        _ => {
            eprintln!("skipping the PostgreSQL TLS test: ORCHESTRA_TEST_PG_CA is not set (scripts/test sets it)");
            return;
        }
    };
    let url = crate::common::fresh_postgres_database(&server).await;
    let with = |query: &str| {
        let mut config = orchestra::config::Config::default();
        let sep = if url.contains('?') { '&' } else { '?' };
        config.database_url = Some(format!("{url}{sep}{query}"));
        config
    };
    // Verified against the CA: encrypted.
    let db = orchestra::db::Db::connect(&with(&format!("sslmode=verify-full&sslrootcert={ca}")))
        .await
        .expect("TLS with a verified certificate");
    assert!(encrypted(&db).await);
    db.migrate().await.expect("migrations over TLS");
    // Asked for plain: plain.
    let db = orchestra::db::Db::connect(&with("sslmode=disable"))
        .await
        .unwrap();
    assert!(!encrypted(&db).await);
    // A certificate no trusted CA signed is refused when verification is asked.
    let refused = orchestra::db::Db::connect(&with("sslmode=verify-full")).await;
    assert!(refused.is_err(), "the test CA is not a public one");
}

dual_test!(
    mcp_server_names_belong_to_their_owner,
    |app: TestApp| async move {
        let (admin, alice) = app.admin_and_user().await;
        let bob = app.add_user(&admin, "bob@example.com", "user").await;
        let carol = app.add_user(&admin, "carol@example.com", "user").await;
        // `.invalid` never resolves: the registration stands, the server is down.
        let remote =
            json!({ "name": "remote", "transport": "http", "url": "https://mcp.invalid/mcp" });
        let app = &app;
        let create = |token: String, body: serde_json::Value| async move {
            app.post("/api/v1/mcp-servers", &token, body).await
        };
        let (status, body) = create(alice.token.clone(), remote.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // Another user's name is not theirs to know about, nor to block.
        let (status, body) = create(bob.token.clone(), remote.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let again = create(alice.token.clone(), remote.clone()).await;
        assert_error(&again, StatusCode::CONFLICT, "conflict");
        assert!(
            again.1["message"].as_str().unwrap().contains("you have"),
            "{again:?}"
        );
        // Users' names do not take a name from the server.
        let (status, body) = create(admin.token.clone(), remote.clone()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert!(body["owner_id"].is_null(), "{body}");
        // A server-wide name, which everyone sees, is taken for everyone.
        let taken = create(carol.token.clone(), remote.clone()).await;
        assert_error(&taken, StatusCode::CONFLICT, "conflict");
        // Each sees their own and the server-wide one, not the others'.
        for who in [&alice, &bob] {
            let (_, list) = app.get("/api/v1/mcp-servers", &who.token).await;
            let owners: Vec<&serde_json::Value> = list
                .as_array()
                .unwrap()
                .iter()
                .map(|s| &s["owner_id"])
                .collect();
            assert_eq!(owners.len(), 2, "{list}");
            assert!(owners.contains(&&json!(who.user_id)), "{list}");
        }
    }
);

dual_test!(
    provider_names_belong_to_their_owner,
    |app: TestApp| async move {
        let (admin, alice) = app.admin_and_user().await;
        let bob = app.add_user(&admin, "bob@example.com", "user").await;
        let app = &app;
        let create = |token: String, base: &'static str| async move {
            app.post(
                "/api/v1/providers",
                &token,
                json!({ "name": "mine", "kind": "openai", "base_url": base, "models": ["m"] }),
            )
            .await
        };
        let (status, body) = create(alice.token.clone(), "https://alice.example/v1").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        // Bob's name is his, whatever Alice has.
        let (status, body) = create(bob.token.clone(), "https://bob.example/v1").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_error(
            &create(alice.token.clone(), "https://again.example/v1").await,
            StatusCode::CONFLICT,
            "conflict",
        );
        // Each reaches their own by that name; changes touch only their own.
        for (who, url) in [
            (&alice, "https://alice.example/v1"),
            (&bob, "https://bob.example/v1"),
        ] {
            let (status, one) = app.get("/api/v1/providers/mine", &who.token).await;
            assert_eq!(status, StatusCode::OK, "{one}");
            assert_eq!(one["base_url"], url, "{one}");
        }
        let (status, _) = app.delete("/api/v1/providers/mine", &bob.token).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, one) = app.get("/api/v1/providers/mine", &alice.token).await;
        assert_eq!(status, StatusCode::OK, "Alice's is untouched: {one}");
        // The admin may still take the name for the whole server; a
        // server-wide name is then taken for every user.
        let (status, body) = create(admin.token.clone(), "https://shared.example/v1").await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_error(
            &create(bob.token.clone(), "https://bob.example/v1").await,
            StatusCode::CONFLICT,
            "conflict",
        );
        // Alice's own still comes first for her.
        let (_, one) = app.get("/api/v1/providers/mine", &alice.token).await;
        assert_eq!(one["base_url"], "https://alice.example/v1", "{one}");
    }
);

dual_test!(
    bodies_that_are_not_objects_are_refused,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let limits = format!("/api/v1/users/{}/usage-limits", user.user_id);
        app.put(&limits, &admin.token, json!({ "daily_runs": 3 }))
            .await;
        // serde reads a struct of optional fields from an array; the API does not.
        for (method, path, body) in [
            ("PUT", limits.clone(), json!([null, null])),
            ("PATCH", "/api/v1/admin/settings".to_owned(), json!([])),
            (
                "PATCH",
                format!("/api/v1/users/{}", user.user_id),
                json!([null, null]),
            ),
        ] {
            let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let answer = app
                .call(method, &path, Some(&admin.token), Some(body))
                .await;
            assert_error(&answer, StatusCode::BAD_REQUEST, "validation_error");
        }
        let (_, stored) = app.get(&limits, &admin.token).await;
        assert_eq!(stored["daily_runs"], 3, "unchanged: {stored}");
    }
);
