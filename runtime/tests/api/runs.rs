//! Runs end to end against a local server that speaks the OpenAI Chat
//! Completions wire format (streamed chunks, tool-call deltas, usage chunk,
//! `[DONE]`, error bodies), scripted by the first user message: multi-step
//! runs with parallel tool calls through real plugins, cancellation
//! mid-stream, limits, provider errors and retries, approvals, SSE resume,
//! queueing, usage and quotas.

use std::sync::Mutex;
use std::time::Duration;

use futures_util::StreamExt;
use orchestra::config::{Config, EnvProvider};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{assert_error, Session, TestApp};
use crate::dual_test;
use crate::vendor::{vendor, Vendor};

/// Registers the scripted vendor as the `openai` provider.
pub fn with_vendor(config: &mut Config) -> Vendor {
    let (base, vendor) = vendor();
    config.env_providers = vec![EnvProvider {
        name: "openai".into(),
        kind: "openai".into(),
        base_url: base,
        api_key: "sk-test".into(),
    }];
    vendor
}

pub fn configure(config: &mut Config) {
    with_vendor(config);
}

/// `configure`, and users' own endpoints may reach the vendor on loopback.
fn configure_private(config: &mut Config) {
    with_vendor(config);
    config.egress.allow_private_user_endpoints = true;
}

/// One SSE event.
#[derive(Debug, Clone)]
pub struct Ev {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

/// Reads a run's event stream until `done` (or `stop_after` events).
pub async fn read_events(
    app: &TestApp,
    token: &str,
    run: &str,
    last_event_id: Option<i64>,
    stop_after: Option<usize>,
) -> Vec<Ev> {
    use eventsource_stream::Eventsource;
    let mut req = app
        .client
        .get(format!("{}/api/v1/runs/{run}/events", app.base))
        .bearer_auth(token);
    if let Some(id) = last_event_id {
        req = req.header("Last-Event-ID", id.to_string());
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut stream = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    let read = async {
        while let Some(event) = stream.next().await {
            let event = event.expect("a well-formed SSE event");
            out.push(Ev {
                id: event.id.parse().expect("numeric event id"),
                kind: event.event.clone(),
                data: serde_json::from_str(&event.data).expect("JSON data"),
            });
            if event.event == "done" || stop_after.is_some_and(|n| out.len() >= n) {
                break;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .is_err()
    {
        let (_, body) = app.get(&format!("/api/v1/runs/{run}"), token).await;
        panic!("the run did not end within 30 s: {body}; events so far: {out:?}");
    }
    out
}

pub async fn start(app: &TestApp, session: &Session, tools: Value, config: Value) -> String {
    let (status, agent) = app
        .post(
            "/api/v1/agents",
            &session.token,
            json!({
                "name": format!("runner {}", uuid::Uuid::new_v4()),
                "instructions": "You are a test agent.",
                "model": { "provider": "openai", "model": "gpt-test" },
                "tools": tools,
                "config": config,
            }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    app.conversation(session, agent["id"].as_str().unwrap())
        .await
}

pub async fn run(app: &TestApp, session: &Session, conversation: &str, body: Value) -> Value {
    let (status, run) = app
        .post(
            &format!("/api/v1/conversations/{conversation}/runs"),
            &session.token,
            body,
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    run
}

pub async fn wait_status(app: &TestApp, token: &str, run: &str, want: &str) -> Value {
    for _ in 0..600 {
        let (_, body) = app.get(&format!("/api/v1/runs/{run}"), token).await;
        if body["status"] == want {
            return body;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("run {run} never reached {want}");
}

/// `POST /api/v1/runs/{run}/cancel`.
async fn cancel(app: &TestApp, token: &str, run: &str) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/runs/{run}/cancel"), token, json!({}))
        .await
}

/// Starts a run and returns its id.
pub async fn run_id(app: &TestApp, session: &Session, conversation: &str, body: Value) -> String {
    run(app, session, conversation, body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A conversation of `user` with two finished runs of 15 tokens each.
pub async fn two_finished_runs(app: &TestApp, user: &Session) -> String {
    let conv = start(app, user, json!([]), json!({})).await;
    for _ in 0..2 {
        let id = run_id(app, user, &conv, json!({ "message": "hi" })).await;
        read_events(app, &user.token, &id, None, None).await;
    }
    conv
}

fn kinds(events: &[Ev]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

dual_test!(
    multi_step_run_with_parallel_tool_calls_through_plugins_against_openai_wire_server,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!(["calculator__evaluate"]), json!({})).await;
        let created = run(&app, &admin, &conv, json!({ "message": "calc" })).await;
        // A free worker and an idle conversation: the run starts at once.
        assert_eq!(created["status"], "running");
        assert_eq!(created["attempts"], 1);
        assert!(created["started_at"].is_string());
        let id = created["id"].as_str().unwrap();
        let events = read_events(&app, &admin.token, id, None, None).await;
        // Sequence ids are 1..n without gaps.
        for (i, e) in events.iter().enumerate() {
            assert_eq!(e.id, i as i64 + 1, "{:?}", kinds(&events));
        }
        let k = kinds(&events);
        assert_eq!(k[0], "run.status");
        assert_eq!(events[0].data["status"], "queued");
        assert!(k.contains(&"tool_call.delta"), "{k:?}");
        assert_eq!(k.iter().filter(|k| **k == "tool_call.started").count(), 2);
        assert_eq!(k.iter().filter(|k| **k == "tool_call.completed").count(), 2);
        assert!(k.contains(&"message.delta"));
        assert_eq!(*k.last().unwrap(), "done");
        assert_eq!(events.last().unwrap().data["status"], "completed");
        let results: Vec<&Value> = events
            .iter()
            .filter(|e| e.kind == "tool_call.completed")
            .map(|e| &e.data["result"])
            .collect();
        assert!(results.iter().all(|r| !r.is_null()));

        let (_, done) = app.get(&format!("/api/v1/runs/{id}"), &admin.token).await;
        assert_eq!(done["status"], "completed");
        assert_eq!(done["step_count"], 2);
        assert_eq!(done["usage"]["input_tokens"], 30);
        assert_eq!(done["usage"]["output_tokens"], 12);
        assert!(done["finished_at"].is_string());

        // The conversation holds the whole exchange, in order.
        let (_, page) = app
            .get(
                &format!("/api/v1/conversations/{conv}/messages"),
                &admin.token,
            )
            .await;
        let roles: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["user", "assistant", "tool", "tool", "assistant"]);
        let items = page["items"].as_array().unwrap();
        assert_eq!(items[1]["content"][0]["type"], "tool_call");
        assert_eq!(items[1]["content"][1]["type"], "tool_call");
        let last = items[4]["content"][0]["text"].as_str().unwrap();
        assert!(last.contains("42") && last.contains('4'), "{last}");
        assert!(items.iter().all(|m| m["metadata"]["run_id"] == id));

        // A client that connects after the end gets the whole story again.
        let again = read_events(&app, &admin.token, id, None, None).await;
        assert_eq!(kinds(&again), k);
    }
);

dual_test!(
    the_model_sees_instructions_history_and_tool_results_in_openai_wire_format,
    |config: &mut Config| {
        let vendor = with_vendor(config);
        VENDORS.lock().unwrap().push(vendor);
    },
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!(["calculator__evaluate"]), json!({})).await;
        let id = run_id(&app, &admin, &conv, json!({ "message": "calc" })).await;
        read_events(&app, &admin.token, &id, None, None).await;
        // Find this app's vendor: the one that saw "calc".
        let vendors = VENDORS.lock().unwrap().clone();
        let requests: Vec<Value> = vendors
            .iter()
            .map(|v| v.requests.lock().unwrap().clone())
            .find(|r| r.len() == 2 && r[0]["messages"][1]["content"] == "calc")
            .expect("a vendor saw both calls");
        let first = &requests[0];
        assert_eq!(first["model"], "gpt-test");
        assert_eq!(first["stream"], true);
        assert_eq!(first["messages"][0]["role"], "system");
        assert_eq!(first["messages"][0]["content"], "You are a test agent.");
        assert_eq!(
            first["tools"][0]["function"]["name"],
            "calculator__evaluate"
        );
        let second = &requests[1]["messages"];
        let roles: Vec<&str> = second
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "tool", "tool"]);
        assert_eq!(second[2]["tool_calls"].as_array().unwrap().len(), 2);
        assert_eq!(second[3]["tool_call_id"], "call_a");
        assert_eq!(second[4]["tool_call_id"], "call_b");
    }
);

static VENDORS: Mutex<Vec<Vendor>> = Mutex::new(Vec::new());

dual_test!(
    a_users_images_reach_models_that_take_images_and_are_described_to_the_others,
    |config: &mut Config| {
        let vendor = with_vendor(config);
        VENDORS.lock().unwrap().push(vendor);
    },
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let marker = uuid::Uuid::new_v4().to_string();
        let url = format!("https://example.com/{marker}.jpg");
        let seen = |text: &'static str| {
            let marker = marker.clone();
            move || -> Value {
                let vendors = VENDORS.lock().unwrap().clone();
                vendors
                    .iter()
                    .flat_map(|v| v.requests.lock().unwrap().clone())
                    .map(|r| r["messages"][1]["content"].clone())
                    .find(|c| c.to_string().contains(&marker) && c.to_string().contains(text))
                    .expect("a vendor saw the message")
            }
        };
        let message = |text: &str| json!({ "message": [{ "type": "text", "text": text }, { "type": "image", "url": url }] });
        // By default the model takes images: they go as image parts.
        let conv = start(&app, &admin, json!([]), json!({})).await;
        let id = run_id(&app, &admin, &conv, message("look")).await;
        read_events(&app, &admin.token, &id, None, None).await;
        assert_eq!(
            seen("look")(),
            json!([{ "type": "text", "text": "look" },
                   { "type": "image_url", "image_url": { "url": url } }])
        );
        // A text-only model (`"vision": false`) is told of the image.
        let conv = start(&app, &admin, json!([]), json!({ "vision": false })).await;
        let id = run_id(&app, &admin, &conv, message("describe")).await;
        read_events(&app, &admin.token, &id, None, None).await;
        assert_eq!(
            seen("describe")(),
            json!(format!("describe\n[image <{url}>]"))
        );
    }
);

dual_test!(
    cancelling_mid_stream_stops_the_run_and_frees_the_conversation,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!([]), json!({})).await;
        let id = run_id(&app, &admin, &conv, json!({ "message": "slow" })).await;
        // Wait until text is streaming, then cancel.
        let early = read_events(&app, &admin.token, &id, None, Some(4)).await;
        assert!(kinds(&early).contains(&"run.status"));
        let (status, body) = cancel(&app, &admin.token, &id).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        let done = wait_status(&app, &admin.token, &id, "cancelled").await;
        assert!(done["finished_at"].is_string());
        let events = read_events(&app, &admin.token, &id, None, None).await;
        assert_eq!(events.last().unwrap().data["status"], "cancelled");
        // Cancelling again is a conflict; the conversation takes a new run.
        assert_error(
            &cancel(&app, &admin.token, &id).await,
            StatusCode::CONFLICT,
            "conflict",
        );
        let next = run(&app, &admin, &conv, json!({ "message": "hi" })).await;
        let next_id = next["id"].as_str().unwrap();
        let events = read_events(&app, &admin.token, next_id, None, None).await;
        assert_eq!(events.last().unwrap().data["status"], "completed");
    }
);

dual_test!(
    sse_resumes_after_a_dropped_connection_with_last_event_id,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!(["calculator__evaluate"]), json!({})).await;
        let id = run_id(&app, &admin, &conv, json!({ "message": "calc" })).await;
        let first = read_events(&app, &admin.token, &id, None, Some(3)).await;
        assert_eq!(first.len(), 3);
        let rest = read_events(&app, &admin.token, &id, Some(first[2].id), None).await;
        assert_eq!(rest[0].id, 4, "resumes right after the last event seen");
        let all = read_events(&app, &admin.token, &id, None, None).await;
        let joined: Vec<i64> = first.iter().chain(rest.iter()).map(|e| e.id).collect();
        let every: Vec<i64> = all.iter().map(|e| e.id).collect();
        assert_eq!(joined, every);
        // A bad Last-Event-ID is a 400.
        let resp = app
            .client
            .get(format!("{}/api/v1/runs/{id}/events", app.base))
            .bearer_auth(&admin.token)
            .header("Last-Event-ID", "yesterday")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    }
);

dual_test!(
    limits_end_a_run_with_a_clear_reason_and_failing_tools_become_error_results,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!(["calculator__evaluate"]), json!({})).await;
        let id = run_id(
            &app,
            &admin,
            &conv,
            json!({ "message": "loop", "limits": { "max_steps": 3 } }),
        )
        .await;
        let events = read_events(&app, &admin.token, &id, None, None).await;
        let done = events.last().unwrap();
        assert_eq!(done.data["status"], "failed");
        assert_eq!(done.data["error"]["code"], "max_steps");
        let (_, body) = app.get(&format!("/api/v1/runs/{id}"), &admin.token).await;
        assert_eq!(body["step_count"], 3);
        assert_eq!(body["error"]["code"], "max_steps");

        // Over the server's maximum: a 400 naming the field.
        let conv2 = app
            .conversation(&admin, body["agent_id"].as_str().unwrap())
            .await;
        assert_error(
            &app.post(
                &format!("/api/v1/conversations/{conv2}/runs"),
                &admin.token,
                json!({ "message": "x", "limits": { "max_steps": 100000 } }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );

        // An unknown tool and a failing tool: error results the model sees.
        let id = run_id(&app, &admin, &conv2, json!({ "message": "bad tool" })).await;
        let events = read_events(&app, &admin.token, &id, None, None).await;
        assert_eq!(events.last().unwrap().data["status"], "completed");
        let errors: Vec<&Ev> = events
            .iter()
            .filter(|e| e.kind == "tool_call.completed")
            .collect();
        assert_eq!(errors.len(), 2);
        assert!(errors.iter().all(|e| e.data["is_error"] == true));
        let (_, page) = app
            .get(
                &format!("/api/v1/conversations/{conv2}/messages"),
                &admin.token,
            )
            .await;
        let last = page["items"].as_array().unwrap().last().unwrap().clone();
        let text = last["content"][0]["text"].as_str().unwrap();
        assert!(text.contains("unknown tool"), "{text}");
    }
);

dual_test!(
    provider_errors_fail_the_run_and_overloads_are_retried,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!([]), json!({})).await;
        let id = run_id(&app, &admin, &conv, json!({ "message": "fail" })).await;
        let events = read_events(&app, &admin.token, &id, None, None).await;
        let done = &events.last().unwrap().data;
        assert_eq!(done["status"], "failed");
        assert_eq!(done["error"]["code"], "provider_error");
        assert_eq!(done["error"]["details"]["status"], 400);
        assert!(done["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not exist"));

        let conv = start(&app, &admin, json!([]), json!({})).await;
        let id = run_id(&app, &admin, &conv, json!({ "message": "flaky" })).await;
        let events = read_events(&app, &admin.token, &id, None, None).await;
        assert_eq!(events.last().unwrap().data["status"], "completed");
    }
);

dual_test!(
    approvals_accept_edit_reject_and_answer,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let mut decisions = vec![
            (json!({ "action": "accept" }), "\"replaced\":false"),
            (
                json!({ "action": "edit", "arguments": { "title": "plan", "body": "edited" } }),
                "\"replaced\":true",
            ),
            (
                json!({ "action": "reject", "reason": "not today" }),
                "rejected this call: not today",
            ),
            (
                json!({ "action": "answer", "result": { "ok": "answered by a human" } }),
                "answered by a human",
            ),
        ];
        let mut conv = String::new();
        for (decision, expect) in decisions.drain(..) {
            conv = start(
                &app,
                &admin,
                json!(["notes__save", "notes__read"]),
                json!({ "require_approval": ["notes__save"] }),
            )
            .await;
            let id = run_id(&app, &admin, &conv, json!({ "message": "note" })).await;
            let waiting = wait_status(&app, &admin.token, &id, "requires_action").await;
            let pending = waiting["pending_tool_calls"].as_array().unwrap();
            assert_eq!(pending.len(), 1);
            assert_eq!(pending[0]["name"], "notes__save");
            assert_eq!(pending[0]["call_id"], "call_n");
            assert!(pending[0]["approval_expires_at"].is_string());
            // A bad decision changes nothing.
            assert_error(
                &app.post(
                    &format!("/api/v1/runs/{id}/approvals"),
                    &admin.token,
                    json!({ "decisions": [{ "call_id": "nope", "action": "accept" }] }),
                )
                .await,
                StatusCode::BAD_REQUEST,
                "validation_error",
            );
            let mut d = decision.clone();
            d["call_id"] = json!("call_n");
            let (status, body) = app
                .post(
                    &format!("/api/v1/runs/{id}/approvals"),
                    &admin.token,
                    json!({ "decisions": [d] }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            let events = read_events(&app, &admin.token, &id, None, None).await;
            let k = kinds(&events);
            assert!(k.contains(&"approval.required"));
            assert!(k.contains(&"approval.decided"));
            assert_eq!(events.last().unwrap().data["status"], "completed", "{k:?}");
            let (_, page) = app
                .get(
                    &format!("/api/v1/conversations/{conv}/messages?limit=200"),
                    &admin.token,
                )
                .await;
            let last = page["items"].as_array().unwrap().last().unwrap().clone();
            let text = last["content"][0]["text"].as_str().unwrap().to_owned();
            assert!(text.contains(expect), "{decision}: {text}");
        }
        // The edit was what ran: the note holds the edited body.
        let (status, read) = app
            .post(
                "/api/v1/tools/notes__read/invoke",
                &admin.token,
                json!({ "arguments": { "title": "plan" } }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{read}");
        assert!(read.to_string().contains("edited"), "{read}");
        // Deciding on a run that is not waiting is a conflict.
        let (_, runs) = app
            .get(&format!("/api/v1/conversations/{conv}/runs"), &admin.token)
            .await;
        let any = runs["items"][0]["id"].as_str().unwrap();
        assert_error(
            &app.post(
                &format!("/api/v1/runs/{any}/approvals"),
                &admin.token,
                json!({ "decisions": [{ "call_id": "call_n", "action": "accept" }] }),
            )
            .await,
            StatusCode::CONFLICT,
            "conflict",
        );
    }
);

dual_test!(
    a_message_during_a_run_is_queued_rejected_or_interrupts,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let conv = start(&app, &admin, json!([]), json!({})).await;
        let first = run_id(&app, &admin, &conv, json!({ "message": "slow" })).await;
        wait_status(&app, &admin.token, &first, "running").await;
        // Reject: 409 naming the active run.
        let refused = app
            .post(
                &format!("/api/v1/conversations/{conv}/runs"),
                &admin.token,
                json!({ "message": "hi", "on_active": "reject" }),
            )
            .await;
        assert_error(&refused, StatusCode::CONFLICT, "conflict");
        assert_eq!(refused.1["details"]["active_runs"][0], first);
        // Queue (the default): waits for the first.
        let second = run_id(&app, &admin, &conv, json!({ "message": "hi" })).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (_, body) = app
            .get(&format!("/api/v1/runs/{second}"), &admin.token)
            .await;
        assert_eq!(body["status"], "queued");
        // Interrupt: cancels both, then runs.
        let third = run_id(
            &app,
            &admin,
            &conv,
            json!({ "message": "hi", "on_active": "interrupt" }),
        )
        .await;
        let events = read_events(&app, &admin.token, &third, None, None).await;
        assert_eq!(events.last().unwrap().data["status"], "completed");
        wait_status(&app, &admin.token, &first, "cancelled").await;
        wait_status(&app, &admin.token, &second, "cancelled").await;
        // The conversation shows only the messages of runs that ran.
        let (_, page) = app
            .get(
                &format!("/api/v1/conversations/{conv}/messages"),
                &admin.token,
            )
            .await;
        let texts: Vec<String> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["role"] == "user")
            .map(|m| m["content"][0]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(texts, ["slow", "hi"]);
    }
);

dual_test!(
    usage_is_reported_by_agent_user_model_and_day_and_quotas_answer_429,
    configure,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let conv = two_finished_runs(&app, &user).await;
        let (status, report) = app.get("/api/v1/usage?group_by=model", &user.token).await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["items"][0]["key"], "openai/gpt-test");
        assert_eq!(report["total"]["runs"], 2);
        assert_eq!(report["total"]["total_tokens"], 30);
        for group in ["agent", "user", "day"] {
            let (status, r) = app
                .get(&format!("/api/v1/usage?group_by={group}"), &admin.token)
                .await;
            assert_eq!(status, StatusCode::OK, "{r}");
            assert_eq!(r["items"].as_array().unwrap().len(), 1, "{group}: {r}");
            assert_eq!(r["total"]["total_tokens"], 30);
        }
        let (_, by_user) = app.get("/api/v1/usage?group_by=user", &admin.token).await;
        assert_eq!(by_user["items"][0]["key"], user.user_id);
        // Users see only their own usage.
        let (_, own) = app.get("/api/v1/usage", &admin.token.clone()).await;
        assert_eq!(own["total"]["runs"], 2);
        assert_error(
            &app.get(
                &format!("/api/v1/usage?user_id={}", admin.user_id),
                &user.token,
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &app.get(
                "/api/v1/usage?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z",
                &user.token,
            )
            .await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );
        // A limit the user already spent: 429, and nothing is stored.
        let limits = format!("/api/v1/users/{}/usage-limits", user.user_id);
        assert_error(
            &app.put(&limits, &user.token, json!({ "daily_tokens": 1 }))
                .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        let (status, set) = app
            .put(&limits, &admin.token, json!({ "daily_tokens": 30 }))
            .await;
        assert_eq!(status, StatusCode::OK, "{set}");
        let refused = app
            .post(
                &format!("/api/v1/conversations/{conv}/runs"),
                &user.token,
                json!({ "message": "hi" }),
            )
            .await;
        assert_error(&refused, StatusCode::TOO_MANY_REQUESTS, "quota_exceeded");
        assert_eq!(refused.1["details"]["used"], 30);
        let (_, runs) = app
            .get(&format!("/api/v1/conversations/{conv}/runs"), &user.token)
            .await;
        assert_eq!(runs["total"], 2);
        // Raised: runs go again.
        app.put(
            &limits,
            &admin.token,
            json!({ "daily_tokens": 1000, "daily_runs": 3 }),
        )
        .await;
        let id = run_id(&app, &user, &conv, json!({ "message": "hi" })).await;
        read_events(&app, &user.token, &id, None, None).await;
        assert_error(
            &app.post(
                &format!("/api/v1/conversations/{conv}/runs"),
                &user.token,
                json!({ "message": "hi" }),
            )
            .await,
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
        );
    }
);

dual_test!(
    runs_are_private_and_bad_input_gets_4xx,
    configure,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let conv = start(&app, &user, json!([]), json!({})).await;
        let id = run_id(&app, &user, &conv, json!({ "message": "hi" })).await;
        read_events(&app, &user.token, &id, None, None).await;
        let other = app.add_user(&admin, "other@example.com", "user").await;
        for path in [
            format!("/api/v1/runs/{id}"),
            format!("/api/v1/runs/{id}/events"),
            format!("/api/v1/conversations/{conv}/runs"),
        ] {
            assert_error(
                &app.get(&path, &other.token).await,
                StatusCode::NOT_FOUND,
                "not_found",
            );
        }
        // Admins see everyone's runs.
        let (status, _) = app.get(&format!("/api/v1/runs/{id}"), &admin.token).await;
        assert_eq!(status, StatusCode::OK);
        let path = format!("/api/v1/conversations/{conv}/runs");
        for body in [
            json!({ "message": "" }),
            json!({ "message": [] }),
            json!({ "message": [{ "type": "tool_result", "call_id": "x", "name": "y", "content": "z", "is_error": false }] }),
            json!({ "message": "x", "on_active": "sometimes" }),
            json!({ "message": "x", "limits": { "max_steps": 0 } }),
            json!({ "message": "x", "unknown": 1 }),
        ] {
            assert_error(
                &app.post(&path, &user.token, body).await,
                StatusCode::BAD_REQUEST,
                "validation_error",
            );
        }
        assert_error(
            &app.post(
                "/api/v1/conversations/00000000-0000-0000-0000-000000000000/runs",
                &user.token,
                json!({ "message": "x" }),
            )
            .await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &app.get("/api/v1/runs/not-a-uuid", &user.token).await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );
        assert_error(
            &app.post(
                &format!("/api/v1/runs/{id}/approvals"),
                &user.token,
                json!({ "decisions": [] }),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "validation_error",
        );
        // An agent whose provider is not configured: 422 up front.
        let (_, agent) = app
            .post(
                "/api/v1/agents",
                &user.token,
                json!({ "name": "elsewhere", "model": { "provider": "nowhere", "model": "m" } }),
            )
            .await;
        let conv = app.conversation(&user, agent["id"].as_str().unwrap()).await;
        assert_error(
            &app.post(
                &format!("/api/v1/conversations/{conv}/runs"),
                &user.token,
                json!({ "message": "x" }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_provider",
        );
        // Runs without a message answer the conversation as it stands.
        let conv = start(&app, &user, json!([]), json!({})).await;
        let (status, _) = app
            .post(
                &format!("/api/v1/conversations/{conv}/messages"),
                &user.token,
                json!({ "content": "hello" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let id = run_id(&app, &user, &conv, json!({})).await;
        let events = read_events(&app, &user.token, &id, None, None).await;
        assert_eq!(events.last().unwrap().data["status"], "completed");
        let (_, page) = app
            .get(
                &format!("/api/v1/conversations/{conv}/messages"),
                &user.token,
            )
            .await;
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1]["content"][0]["text"], "Hello from the model.");
    }
);

/// Two nodes on one PostgreSQL database: the second serves the API only, so
/// the first executes the run. Events read through the second node come from
/// the first; a cancel sent to the second reaches the first's worker through
/// `NOTIFY` (the heartbeat, the fallback, is 20 s away; the run would have
/// completed by then).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_cancellation_cross_nodes_on_postgres() {
    let Some(app) = crate::common::spawn_app_with(crate::common::Backend::Postgres, |c| {
        with_vendor(c);
        c.runs.lease_secs = 60;
    })
    .await
    else {
        return;
    };
    let api_only = app.second_node(|c| c.runs.worker = false).await;
    let admin = app.register("admin@example.com").await;
    let conv = start(&api_only, &admin, json!([]), json!({})).await;
    let id = run_id(&api_only, &admin, &conv, json!({ "message": "slow" })).await;
    let early = read_events(&api_only, &admin.token, &id, None, Some(4)).await;
    let k = kinds(&early);
    assert!(
        k.contains(&"message.delta") || k.contains(&"message.completed"),
        "{k:?}"
    );
    let worker = early
        .iter()
        .find(|e| e.data["status"] == "running")
        .map(|e| e.data["worker"].clone())
        .expect("a running event");
    assert!(worker.is_string());
    let (status, _) = cancel(&api_only, &admin.token, &id).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let events = read_events(&api_only, &admin.token, &id, None, None).await;
    assert_eq!(
        events.last().unwrap().data["status"],
        "cancelled",
        "{:?}",
        kinds(&events)
    );
}

dual_test!(
    users_bring_their_own_provider_and_only_they_can_use_it,
    configure_private,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let base = app.config.env_providers[0].base_url.clone();
        let (status, mine) = app
            .post(
                "/api/v1/providers",
                &user.token,
                json!({ "name": "mine", "kind": "openai", "base_url": base, "api_key": "sk-user", "models": ["gpt-test"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{mine}");
        assert_eq!(mine["owner_id"], user.user_id);
        assert!(mine.get("api_key").is_none());
        // The owner runs an agent on it.
        let (_, agent) = app
            .post(
                "/api/v1/agents",
                &user.token,
                json!({ "name": "own", "model": { "provider": "mine", "model": "gpt-test" } }),
            )
            .await;
        let conv = app.conversation(&user, agent["id"].as_str().unwrap()).await;
        let id = run_id(&app, &user, &conv, json!({ "message": "hi" })).await;
        let events = read_events(&app, &user.token, &id, None, None).await;
        assert_eq!(events.last().unwrap().data["status"], "completed");
        let (_, models) = app.get("/api/v1/models", &user.token).await;
        assert!(
            models["models"].to_string().contains("\"mine\""),
            "{models}"
        );

        // Nobody else sees or uses it; admins see it.
        let other = app.add_user(&admin, "other@example.com", "user").await;
        let (_, list) = app.get("/api/v1/providers", &other.token).await;
        assert!(!list.to_string().contains("\"mine\""), "{list}");
        assert_error(
            &app.get("/api/v1/providers/mine", &other.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        assert_error(
            &app.delete("/api/v1/providers/mine", &other.token).await,
            StatusCode::NOT_FOUND,
            "not_found",
        );
        let (_, models) = app.get("/api/v1/models", &other.token).await;
        assert!(!models.to_string().contains("\"mine\""), "{models}");
        let (_, agent) = app
            .post(
                "/api/v1/agents",
                &other.token,
                json!({ "name": "borrowing", "model": { "provider": "mine", "model": "gpt-test" } }),
            )
            .await;
        let conv = app
            .conversation(&other, agent["id"].as_str().unwrap())
            .await;
        assert_error(
            &app.post(
                &format!("/api/v1/conversations/{conv}/runs"),
                &other.token,
                json!({ "message": "hi" }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_provider",
        );
        let (_, all) = app.get("/api/v1/providers", &admin.token).await;
        assert!(all.to_string().contains("\"mine\""));
        // Users change their own, never server-wide ones.
        let (status, _) = app
            .post(
                "/api/v1/providers",
                &admin.token,
                json!({ "name": "shared", "kind": "openai", "base_url": "http://127.0.0.1:9/v1" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert_error(
            &app.patch(
                "/api/v1/providers/shared",
                &user.token,
                json!({ "models": ["x"] }),
            )
            .await,
            StatusCode::FORBIDDEN,
            "forbidden",
        );
        let (status, _) = app
            .patch(
                "/api/v1/providers/mine",
                &user.token,
                json!({ "models": ["gpt-test", "gpt-other"] }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = app.delete("/api/v1/providers/mine", &user.token).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
);

dual_test!(
    a_long_poll_answers_when_the_run_stops_or_when_the_wait_is_over,
    configure,
    |app: TestApp| async move {
        let admin = app.register("admin@example.com").await;
        let get = |id: String, query: &'static str| {
            let app = &app;
            let token = admin.token.clone();
            async move { app.get(&format!("/api/v1/runs/{id}?{query}"), &token).await }
        };
        // One request, answered once the run has completed.
        let conv = start(&app, &admin, json!(["calculator__evaluate"]), json!({})).await;
        let id = run_id(&app, &admin, &conv, json!({ "message": "calc" })).await;
        let (status, done) = get(id.clone(), "wait_secs=30").await;
        assert_eq!(status, StatusCode::OK, "{done}");
        assert_eq!(done["status"], "completed");
        assert_eq!(done["step_count"], 2);

        // A run that waits for approvals has stopped too.
        let conv = start(
            &app,
            &admin,
            json!(["notes__save", "notes__read"]),
            json!({ "require_approval": ["notes__save"] }),
        )
        .await;
        let id = run_id(&app, &admin, &conv, json!({ "message": "note" })).await;
        let (_, waiting) = get(id.clone(), "wait_secs=30").await;
        assert_eq!(waiting["status"], "requires_action", "{waiting}");
        assert_eq!(waiting["pending_tool_calls"].as_array().unwrap().len(), 1);

        // Still running when the time is up: the run as it is.
        let conv = start(&app, &admin, json!([]), json!({})).await;
        let id = run_id(&app, &admin, &conv, json!({ "message": "slow" })).await;
        let (status, running) = get(id.clone(), "wait_secs=1").await;
        assert_eq!(status, StatusCode::OK, "{running}");
        assert_eq!(running["status"], "running");
        // Cancelled while a caller waits: the caller gets the cancelled run.
        let waiter = tokio::spawn({
            let client = app.client.clone();
            let url = format!("{}/api/v1/runs/{id}?wait_secs=30", app.base);
            let token = admin.token.clone();
            async move {
                let resp = client.get(url).bearer_auth(token).send().await.unwrap();
                resp.json::<Value>().await.unwrap()
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, _) = cancel(&app, &admin.token, &id).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let cancelled = tokio::time::timeout(Duration::from_secs(20), waiter)
            .await
            .expect("the long poll answered")
            .unwrap();
        assert_eq!(cancelled["status"], "cancelled", "{cancelled}");

        // Too long a wait, or not a number: 400, and the run is untouched.
        for query in ["wait_secs=61", "wait_secs=soon", "wait_secs=-1"] {
            assert_error(
                &get(id.clone(), query).await,
                StatusCode::BAD_REQUEST,
                "validation_error",
            );
        }
        let (_, after) = get(id.clone(), "wait_secs=0").await;
        assert_eq!(after["status"], "cancelled");
    }
);
