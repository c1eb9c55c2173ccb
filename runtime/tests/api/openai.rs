//! The OpenAI-compatible API driven by the official `openai` Python SDK
//! (from PyPI, pinned in `scripts/test`) against the real server, with the
//! local server that speaks OpenAI's Chat Completions wire format behind
//! the agents: chat completions streamed and not, with a server-side tool
//! (a real plugin) and a client-side tool round trip; responses across
//! three turns with `previous_response_id`; a background response that
//! survives a restart; cancel; errors parsed into the SDK's own exception
//! types; bad input that stores nothing.

use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{Session, TestApp};
use crate::dual_test;
use crate::mcp::python;
use crate::runs::configure;

fn script() -> String {
    format!(
        "{}/tests/fixtures/openai/sdk_checks.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Runs one scenario of the SDK script; returns its JSON result.
async fn sdk(app: &TestApp, scenario: &str, env: &[(&str, &str)]) -> Option<Value> {
    let python = python()?;
    let mut cmd = Command::new(python);
    cmd.arg(script())
        .arg(scenario)
        .env("ORCHESTRA_BASE", format!("{}/v1", app.base));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run python"))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scenario {scenario} failed:\n{stdout}\n{stderr}"
    );
    Some(serde_json::from_str(stdout.lines().last().unwrap_or("null")).expect("JSON result"))
}

/// `name`'s agent with `tools`.
async fn agent(app: &TestApp, session: &Session, name: &str, tools: Value) {
    let (status, body) = app
        .post(
            "/api/v1/agents",
            &session.token,
            json!({ "name": name, "instructions": "You are a test agent.",
                    "model": { "provider": "openai", "model": "gpt-test" }, "tools": tools }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// The caller's conversations.
async fn conversations(app: &TestApp, session: &Session) -> Vec<Value> {
    let (status, body) = app
        .get("/api/v1/conversations?page_size=100", &session.token)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().clone()
}

/// A user with the `helper` and `calc` agents, and their API key.
async fn setup(app: &TestApp) -> (Session, Session, String) {
    let (admin, user) = app.admin_and_user().await;
    agent(app, &user, "helper", json!([])).await;
    agent(app, &user, "calc", json!(["calculator__evaluate"])).await;
    let (_, key) = app.api_key(&user, "sdk").await;
    (admin, user, key)
}

dual_test!(
    openai_sdk_chat_completions_against_openai_wire_server,
    configure,
    |app: TestApp| async move {
        let (_, user, key) = setup(&app).await;
        let env = [("ORCHESTRA_KEY", key.as_str())];
        let Some(models) = sdk(&app, "models", &env).await else {
            return;
        };
        assert_eq!(models["models"], json!(["agent:helper", "agent:calc"]));
        sdk(&app, "chat", &env).await;
        sdk(&app, "client_tool", &env).await;
        // Anthropic's SDK against the same agents.
        sdk(&app, "messages", &env).await;
        // Every completion is a run in a conversation of its own, with its
        // usage counted.
        let convs = conversations(&app, &user).await;
        assert_eq!(convs.len(), 10, "{convs:?}");
        let sources: Vec<&str> = convs
            .iter()
            .map(|c| c["metadata"]["source"].as_str().unwrap())
            .collect();
        assert_eq!(sources.iter().filter(|s| **s == "messages").count(), 5);
        assert_eq!(
            sources.iter().filter(|s| **s == "chat.completions").count(),
            5
        );
        let (_, usage) = app.get("/api/v1/usage?group_by=agent", &user.token).await;
        assert_eq!(usage["total"]["runs"], 10, "{usage}");
        assert!(usage["total"]["total_tokens"].as_i64() > Some(0), "{usage}");
        // The round trip's second call saw the tool result the client sent
        // (conversations are listed newest first).
        let second_call = convs
            .iter()
            .filter(|c| c["metadata"]["source"] == "chat.completions")
            .nth(1)
            .unwrap();
        let (_, first) = app
            .get(
                &format!(
                    "/api/v1/conversations/{}/messages",
                    second_call["id"].as_str().unwrap()
                ),
                &user.token,
            )
            .await;
        let roles: Vec<&str> = first["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "tool", "assistant"], "{first}");
    }
);

dual_test!(
    openai_sdk_responses_across_turns_against_openai_wire_server,
    configure,
    |app: TestApp| async move {
        let (_, user, key) = setup(&app).await;
        let env = [("ORCHESTRA_KEY", key.as_str())];
        let Some(result) = sdk(&app, "responses", &env).await else {
            return;
        };
        // The three turns share one conversation; the branch and the
        // function-tool exchange have their own, and the unstored one is
        // gone once it ended.
        let quiet = result["quiet"]
            .as_str()
            .unwrap()
            .trim_start_matches("resp_");
        let quiet = uuid::Uuid::parse_str(quiet).unwrap();
        let mut gone = false;
        for _ in 0..100 {
            let (status, _) = app.get(&format!("/api/v1/runs/{quiet}"), &user.token).await;
            if status == StatusCode::NOT_FOUND {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "an unstored response's run is deleted once it ended");
        let r1 = result["r1"].as_str().unwrap().trim_start_matches("resp_");
        let (_, run) = app
            .get(
                &format!("/api/v1/runs/{}", uuid::Uuid::parse_str(r1).unwrap()),
                &user.token,
            )
            .await;
        let (_, runs) = app
            .get(
                &format!(
                    "/api/v1/conversations/{}/runs",
                    run["conversation_id"].as_str().unwrap()
                ),
                &user.token,
            )
            .await;
        assert_eq!(runs["total"], 3, "{runs}");
    }
);

dual_test!(
    openai_sdk_background_response_survives_a_restart_against_openai_wire_server,
    configure,
    |mut app: TestApp| async move {
        let (_, _, key) = setup(&app).await;
        let env = [("ORCHESTRA_KEY", key.as_str())];
        let Some(started) = sdk(&app, "background_start", &env).await else {
            return;
        };
        // The node stops mid-run; a new one takes the run over.
        tokio::time::sleep(Duration::from_millis(500)).await;
        app.stop();
        let second = app.second_node(|_| {}).await;
        let id = started["id"].as_str().unwrap();
        sdk(
            &second,
            "background_finish",
            &[("ORCHESTRA_KEY", key.as_str()), ("ORCHESTRA_RESPONSE", id)],
        )
        .await;
        // It really was interrupted: the second node ran it again.
        let run = uuid::Uuid::parse_str(id.trim_start_matches("resp_")).unwrap();
        let (_, user) = (0, second.login("user@example.com").await);
        let (_, body) = second
            .get(&format!("/api/v1/runs/{run}"), &user.token)
            .await;
        assert!(body["attempts"].as_i64() >= Some(2), "{body}");
        sdk(&second, "cancel", &[("ORCHESTRA_KEY", key.as_str())]).await;
    }
);

dual_test!(
    openai_sdk_errors_are_openai_shaped_and_store_nothing,
    |config: &mut orchestra::config::Config| {
        configure(config);
        config.http.body_limit_bytes = 1024 * 1024;
    },
    |app: TestApp| async move {
        let (admin, user, key) = setup(&app).await;
        let other = app.add_user(&admin, "other@example.com", "user").await;
        agent(&app, &other, "mine", json!([])).await;
        let (_, other_key) = app.api_key(&other, "sdk").await;
        // The other user's response, then a spent quota.
        let (status, response) = app
            .call(
                reqwest::Method::POST,
                "/v1/responses",
                Some(&other_key),
                Some(json!({ "model": "agent:mine", "input": "hi" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{response}");
        let (status, _) = app
            .put(
                &format!("/api/v1/users/{}/usage-limits", other.user_id),
                &admin.token,
                json!({ "daily_runs": 1 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let before = conversations(&app, &user).await.len();
        let other_before = conversations(&app, &other).await.len();
        let env = [
            ("ORCHESTRA_KEY", key.as_str()),
            ("ORCHESTRA_OTHER_KEY", other_key.as_str()),
            ("ORCHESTRA_OTHER_RESPONSE", response["id"].as_str().unwrap()),
        ];
        let Some(result) = sdk(&app, "errors", &env).await else {
            return;
        };
        let errors = result["errors"].as_array().unwrap();
        assert_eq!(
            errors[0],
            json!(["AuthenticationError", 401, "invalid_api_key"])
        );
        assert_eq!(errors[1], json!(["NotFoundError", 404, "model_not_found"]));
        assert_eq!(errors[8][1], 413, "{errors:?}");
        assert_eq!(
            errors[9],
            json!(["RateLimitError", 429, "insufficient_quota"])
        );
        // Nothing was stored by any refused request.
        assert_eq!(conversations(&app, &user).await.len(), before);
        assert_eq!(conversations(&app, &other).await.len(), other_before);
        // Unknown paths and raw bodies get OpenAI's shape too.
        let (status, body) = app
            .call(reqwest::Method::GET, "/v1/nothing", Some(&key), None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body["error"]["message"].is_string(), "{body}");
        let raw = app
            .client
            .post(format!("{}/v1/chat/completions", app.base))
            .bearer_auth(&key)
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .unwrap();
        assert_eq!(raw.status(), StatusCode::BAD_REQUEST);
        let body: Value = raw.json().await.unwrap();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert!(body["error"].as_object().unwrap().contains_key("param"));
    }
);

/// `POST` with an API key; the status, headers and JSON body.
async fn post_v1(
    app: &TestApp,
    key: &str,
    path: &str,
    body: Value,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let resp = app
        .client
        .post(format!("{}{path}", app.base))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (status, headers) = (resp.status(), resp.headers().clone());
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

dual_test!(
    a_client_that_goes_away_cancels_its_run_and_failures_are_final,
    configure,
    |app: TestApp| async move {
        let (_, user, key) = setup(&app).await;
        // A streamed completion whose client leaves after the first chunk.
        let resp = app
            .client
            .post(format!("{}/v1/chat/completions", app.base))
            .bearer_auth(&key)
            .json(&json!({ "model": "agent:helper", "stream": true,
                           "messages": [{ "role": "user", "content": "slow" }] }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let run = resp.headers()["x-orchestra-run-id"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut body = resp.bytes_stream();
        use futures_util::StreamExt;
        let first = body.next().await.unwrap().unwrap();
        assert!(String::from_utf8_lossy(&first).starts_with("data: {"));
        drop(body);
        crate::runs::wait_status(&app, &user.token, &run, "cancelled").await;

        // A provider failure: a final 502 in OpenAI's shape, not retried.
        let (status, headers, body) = post_v1(
            &app,
            &key,
            "/v1/chat/completions",
            json!({ "model": "agent:helper", "messages": [{ "role": "user", "content": "fail" }] }),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
        assert_eq!(headers["x-should-retry"], "false");
        assert_eq!(body["error"]["type"], "server_error");
        assert_eq!(body["error"]["code"], "provider_error");
        // The same as a response: stored, with status failed.
        let (status, _, response) = post_v1(
            &app,
            &key,
            "/v1/responses",
            json!({ "model": "agent:helper", "input": "fail" }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{response}");
        assert_eq!(response["status"], "failed");
        assert_eq!(response["error"]["code"], "server_error");
    }
);

dual_test!(
    an_agent_that_needs_approval_stops_the_answer_with_requires_action,
    configure,
    |app: TestApp| async move {
        let (_, user, key) = setup(&app).await;
        let (status, body) = app
            .post(
                "/api/v1/agents",
                &user.token,
                json!({ "name": "careful", "instructions": "Ask first.",
                        "model": { "provider": "openai", "model": "gpt-test" },
                        "tools": ["calculator__evaluate"], "config": { "require_approval": true } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, headers, body) = post_v1(
            &app,
            &key,
            "/v1/chat/completions",
            json!({ "model": "agent:careful", "messages": [{ "role": "user", "content": "calc" }] }),
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["error"]["code"], "requires_action");
        let run = headers["x-orchestra-run-id"].to_str().unwrap();
        assert!(body["error"]["message"].as_str().unwrap().contains(run));
        // The run waits for a person; approving it finishes it.
        let (_, waiting) = app.get(&format!("/api/v1/runs/{run}"), &user.token).await;
        assert_eq!(waiting["status"], "requires_action");
        let decisions: Vec<Value> = waiting["pending_tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| json!({ "call_id": c["call_id"], "action": "accept" }))
            .collect();
        let (status, _) = app
            .post(
                &format!("/api/v1/runs/{run}/approvals"),
                &user.token,
                json!({ "decisions": decisions }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        crate::runs::wait_status(&app, &user.token, run, "completed").await;
    }
);

dual_test!(
    responses_are_their_owners_and_their_events_resume,
    configure,
    |app: TestApp| async move {
        let (admin, _, key) = setup(&app).await;
        let other = app.add_user(&admin, "other@example.com", "user").await;
        let (_, other_key) = app.api_key(&other, "sdk").await;
        let (status, _, response) = post_v1(
            &app,
            &key,
            "/v1/responses",
            json!({ "model": "agent:helper", "input": "turns", "metadata": { "ticket": "42" } }),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{response}");
        assert_eq!(response["object"], "response");
        assert_eq!(response["status"], "completed");
        assert_eq!(response["model"], "agent:helper");
        assert_eq!(response["metadata"]["ticket"], "42");
        assert_eq!(response["output"][0]["type"], "message");
        assert_eq!(response["output"][0]["content"][0]["type"], "output_text");
        assert_eq!(response["output"][0]["content"][0]["text"], "turn 1: turns");
        let id = response["id"].as_str().unwrap();
        // Another user: every operation is a 404, and continuing is too.
        for (method, path) in [
            (reqwest::Method::GET, format!("/v1/responses/{id}")),
            (reqwest::Method::POST, format!("/v1/responses/{id}/cancel")),
            (reqwest::Method::DELETE, format!("/v1/responses/{id}")),
        ] {
            let resp = app
                .client
                .request(method.clone(), format!("{}{path}", app.base))
                .bearer_auth(&other_key)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {path}");
        }
        let (status, _, body) = post_v1(
            &app,
            &other_key,
            "/v1/responses",
            json!({ "input": "hi", "previous_response_id": id }),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["param"], "previous_response_id");
        // Its events again, after sequence number 3, end with the response.
        let text = app
            .client
            .get(format!(
                "{}/v1/responses/{id}?stream=true&starting_after=3",
                app.base
            ))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let events: Vec<Value> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .map(|d| serde_json::from_str(d).unwrap())
            .collect();
        assert_eq!(events[0]["sequence_number"], 4, "{text}");
        let seqs: Vec<i64> = events
            .iter()
            .map(|e| e["sequence_number"].as_i64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let last = events.last().unwrap();
        assert_eq!(last["type"], "response.completed");
        assert_eq!(
            last["response"]["output"][0]["content"][0]["text"],
            "turn 1: turns"
        );
        // Deleted: gone for its owner too, and with it its conversation.
        let (status, _) = app.delete(&format!("/v1/responses/{id}"), &key).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = app.get(&format!("/v1/responses/{id}"), &key).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
);

dual_test!(
    provider_models_are_a_gateway_only_where_the_operator_allows_it,
    |config: &mut orchestra::config::Config| {
        configure(config);
        config.openai.provider_models = true;
    },
    |app: TestApp| async move {
        let (admin, user, key) = setup(&app).await;
        let body = json!({ "model": "openai/gpt-test", "stream_options": { "include_usage": true },
                           "messages": [{ "role": "user", "content": "hello" }] });
        let (status, _, done) = post_v1(&app, &key, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{done}");
        assert_eq!(done["model"], "openai/gpt-test");
        assert_eq!(
            done["choices"][0]["message"]["content"],
            "Hello from the model."
        );
        assert_eq!(done["usage"]["total_tokens"], 15);
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        let text = app
            .client
            .post(format!("{}/v1/chat/completions", app.base))
            .bearer_auth(&key)
            .json(&streamed)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let chunks: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        assert_eq!(*chunks.last().unwrap(), "[DONE]");
        let usage: Value = serde_json::from_str(chunks[chunks.len() - 2]).unwrap();
        assert_eq!(usage["usage"]["total_tokens"], 15, "{text}");
        // Both calls count, with no run or conversation of their own.
        let (_, report) = app.get("/api/v1/usage?group_by=model", &user.token).await;
        assert_eq!(report["total"]["runs"], 2, "{report}");
        assert_eq!(report["total"]["total_tokens"], 30, "{report}");
        assert!(conversations(&app, &user).await.is_empty());
        // Quotas hold: one more call is past a limit of two a day.
        let (status, _) = app
            .put(
                &format!("/api/v1/users/{}/usage-limits", user.user_id),
                &admin.token,
                json!({ "daily_runs": 2 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, headers, refused) = post_v1(&app, &key, "/v1/chat/completions", body).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
        assert_eq!(refused["error"]["code"], "insufficient_quota");
        assert_eq!(headers["x-should-retry"], "false");
        // A provider nobody configured is no model.
        let (status, _, missing) = post_v1(
            &app,
            &key,
            "/v1/chat/completions",
            json!({ "model": "nowhere/x", "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(missing["error"]["code"], "model_not_found");
    }
);

dual_test!(
    provider_models_are_off_by_default,
    configure,
    |app: TestApp| async move {
        let (_, _, key) = setup(&app).await;
        let (status, _, body) = post_v1(
            &app,
            &key,
            "/v1/chat/completions",
            json!({ "model": "openai/gpt-test", "messages": [{ "role": "user", "content": "hi" }] }),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert_eq!(body["error"]["code"], "model_not_found");
    }
);

dual_test!(
    a_refused_turn_adds_nothing_to_the_conversation_it_continues,
    configure,
    |app: TestApp| async move {
        let (admin, user, key) = setup(&app).await;
        let (_, _, first) = post_v1(
            &app,
            &key,
            "/v1/responses",
            json!({ "model": "agent:helper", "input": "turns" }),
        )
        .await;
        let conversation = conversations(&app, &user).await[0]["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/api/v1/conversations/{conversation}");
        let before = app.get(&path, &user.token).await.1["message_count"].clone();
        assert_eq!(before, 2);
        let (status, _) = app
            .put(
                &format!("/api/v1/users/{}/usage-limits", user.user_id),
                &admin.token,
                json!({ "daily_runs": 1 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, refused) = post_v1(
            &app,
            &key,
            "/v1/responses",
            json!({ "input": [{ "role": "developer", "content": "Be brief." },
                              { "role": "user", "content": "more" }],
                    "previous_response_id": first["id"] }),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
        assert_eq!(app.get(&path, &user.token).await.1["message_count"], before);
    }
);

dual_test!(
    streams_count_against_the_callers_stream_limit,
    |config: &mut orchestra::config::Config| {
        configure(config);
        config.runs.max_streams_per_user = 1;
    },
    |app: TestApp| async move {
        let (_, user, key) = setup(&app).await;
        let body = json!({ "model": "agent:helper", "stream": true,
                           "messages": [{ "role": "user", "content": "slow" }] });
        let open = app
            .client
            .post(format!("{}/v1/chat/completions", app.base))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(open.status(), StatusCode::OK);
        let stored = conversations(&app, &user).await.len();
        let (status, _, refused) = post_v1(&app, &key, "/v1/chat/completions", body.clone()).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{refused}");
        assert_eq!(refused["error"]["code"], "too_many_streams");
        assert_eq!(conversations(&app, &user).await.len(), stored);
        // Once the first stream is closed, another may open.
        drop(open);
        let mut reopened = None;
        for _ in 0..100 {
            let resp = app
                .client
                .post(format!("{}/v1/chat/completions", app.base))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .unwrap();
            if resp.status() == StatusCode::OK {
                reopened = Some(resp);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(reopened.is_some(), "a closed stream frees its slot");
    }
);
