//! Agents that act on their own, against the real server and the local
//! server that speaks OpenAI's wire format: schedules firing durable runs
//! (history, pause and resume, fixed conversations, overlap, a deleted
//! agent), inbound triggers (tokens, GitHub and Standard Webhooks
//! signatures, idempotency keys, body and rate limits) and outbound
//! webhooks delivered to a receiver on loopback, every delivery verified
//! by the `standardwebhooks` reference library from PyPI (retries, the
//! delivery log, redelivery, tenancy, a subscription disabled after
//! failures, a restart between retries).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use orchestra::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::common::{assert_error, Session, TestApp};
use crate::dual_test;
use crate::mcp::python;
use crate::runs::with_vendor;
use crate::vendor::serve_in_thread;

fn configure(config: &mut Config) {
    with_vendor(config);
    config.schedules.min_interval_secs = 2;
    config.schedules.tick_ms = 100;
    config.egress.allow_private_user_endpoints = true;
    config.webhooks.poll_ms = 100;
    config.webhooks.retry_ms = vec![300, 300, 300, 300];
    config.webhooks.disable_after_failures = 4;
    config.triggers.max_body_bytes = 1024;
}

/// Polls `check` every 100 ms until it returns `Some`, for at most
/// `secs` seconds.
async fn until<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn agent(app: &TestApp, session: &Session, name: &str) -> String {
    let (status, body) = app
        .post(
            "/api/v1/agents",
            &session.token,
            json!({ "name": name, "instructions": "You are a test agent.",
                    "model": { "provider": "openai", "model": "gpt-test" }, "tools": [] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["id"].as_str().unwrap().to_owned()
}

async fn firings(app: &TestApp, session: &Session, schedule: &str) -> Vec<Value> {
    let (status, body) = app
        .get(
            &format!("/api/v1/schedules/{schedule}/firings?page_size=100"),
            &session.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().clone()
}

fn started(firings: &[Value]) -> Vec<&Value> {
    firings
        .iter()
        .filter(|f| f["status"] == "started")
        .collect()
}

/// The first user message of a run's conversation.
async fn first_message(app: &TestApp, session: &Session, conversation: &str) -> String {
    let (_, body) = app
        .get(
            &format!("/api/v1/conversations/{conversation}/messages"),
            &session.token,
        )
        .await;
    body["items"][0]["content"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

dual_test!(
    schedules_fire_durable_runs_with_history_pause_resume_overlap_and_a_deleted_agent,
    configure,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let other = app.add_user(&admin, "other@example.com", "user").await;
        let helper = agent(&app, &user, "helper").await;
        let schedule = |name: &str, agent: &str, timing: Value| {
            json!({ "agent_id": agent, "name": name, "timing": timing,
                    "message": "Ping from {{ schedule.name }} at {{ fired_at }}" })
        };
        // Bad input: clear 4xx, nothing stored.
        let too_often = app
            .post(
                "/api/v1/schedules",
                &user.token,
                schedule(
                    "x",
                    &helper,
                    json!({ "kind": "cron", "cron": "* * * * * *" }),
                ),
            )
            .await;
        assert_error(
            &too_often,
            StatusCode::UNPROCESSABLE_ENTITY,
            "schedule_too_frequent",
        );
        for bad in [
            json!({ "kind": "cron", "cron": "0 9 * * *", "timezone": "Mars/Olympus" }),
            json!({ "kind": "cron", "cron": "every day at nine" }),
            json!({ "kind": "interval", "every_secs": 0 }),
            json!({ "kind": "once", "at": "2001-01-01T00:00:00Z" }),
            json!({ "kind": "weekly" }),
        ] {
            let (status, body) = app
                .post(
                    "/api/v1/schedules",
                    &user.token,
                    schedule("x", &helper, bad.clone()),
                )
                .await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
        let mut broken = schedule("x", &helper, json!({ "kind": "interval", "every_secs": 2 }));
        broken["message"] = json!("{{ unclosed");
        let (status, _) = app.post("/api/v1/schedules", &user.token, broken).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let (status, _) = app
            .post(
                "/api/v1/schedules",
                &other.token,
                schedule("x", &helper, json!({ "kind": "interval", "every_secs": 2 })),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "another user's agent");
        let (_, listed) = app.get("/api/v1/schedules", &user.token).await;
        assert_eq!(listed["total"], 0);

        // Every two seconds; the next times are shown.
        let (status, pinger) = app
            .post(
                "/api/v1/schedules",
                &user.token,
                schedule(
                    "pinger",
                    &helper,
                    json!({ "kind": "interval", "every_secs": 2 }),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{pinger}");
        let id = pinger["id"].as_str().unwrap().to_owned();
        let times: Vec<chrono::DateTime<chrono::Utc>> =
            serde_json::from_value(pinger["next_fire_times"].clone()).unwrap();
        assert_eq!(times.len(), 5);
        assert!(times.windows(2).all(|w| (w[1] - w[0]).num_seconds() == 2));
        let fired = until(20, "two firings with completed runs", || async {
            let f = firings(&app, &user, &id).await;
            let done = started(&f)
                .into_iter()
                .filter(|f| f["run_status"] == "completed")
                .count();
            (done >= 2).then_some(f)
        })
        .await;
        let first = started(&fired)[0];
        let text = first_message(&app, &user, first["conversation_id"].as_str().unwrap()).await;
        assert!(text.starts_with("Ping from pinger at 20"), "{text}");
        // Each firing ran in a conversation of its own.
        let convs: std::collections::HashSet<&str> = started(&fired)
            .iter()
            .map(|f| f["conversation_id"].as_str().unwrap())
            .collect();
        assert_eq!(convs.len(), started(&fired).len());
        // Another user sees nothing.
        let (status, _) = app
            .get(&format!("/api/v1/schedules/{id}"), &other.token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = app
            .get(&format!("/api/v1/schedules/{id}/firings"), &other.token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // Paused: nothing fires; resumed: it fires again.
        let (status, paused) = app
            .post(
                &format!("/api/v1/schedules/{id}/pause"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{paused}");
        assert_eq!(paused["state"], "paused");
        assert_eq!(paused["next_fire_times"], json!([]));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let before = firings(&app, &user, &id).await.len();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            firings(&app, &user, &id).await.len(),
            before,
            "a paused schedule fired"
        );
        let (status, resumed) = app
            .post(
                &format!("/api/v1/schedules/{id}/resume"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{resumed}");
        assert_eq!(resumed["state"], "active");
        until(10, "a firing after resume", || async {
            (firings(&app, &user, &id).await.len() > before).then_some(())
        })
        .await;

        // One conversation for every firing.
        let keeper = agent(&app, &user, "keeper").await;
        let mut fixed = schedule(
            "keeper",
            &keeper,
            json!({ "kind": "interval", "every_secs": 2 }),
        );
        fixed["conversation"] = json!("fixed");
        let (status, fixed) = app.post("/api/v1/schedules", &user.token, fixed).await;
        assert_eq!(status, StatusCode::CREATED, "{fixed}");
        let fixed_id = fixed["id"].as_str().unwrap().to_owned();
        let conversation = fixed["conversation_id"].as_str().unwrap().to_owned();
        let f = until(20, "two firings in the fixed conversation", || async {
            let f = firings(&app, &user, &fixed_id).await;
            (started(&f).len() >= 2).then_some(f)
        })
        .await;
        assert!(started(&f)
            .iter()
            .all(|f| f["conversation_id"] == conversation.as_str()));

        // Overlap: runs of four seconds every two seconds, skipping.
        let slow = agent(&app, &user, "slowpoke").await;
        let mut overlapping = schedule(
            "slow",
            &slow,
            json!({ "kind": "interval", "every_secs": 2 }),
        );
        overlapping["message"] = json!("slow");
        let (status, overlapping) = app
            .post("/api/v1/schedules", &user.token, overlapping)
            .await;
        assert_eq!(status, StatusCode::CREATED, "{overlapping}");
        let slow_id = overlapping["id"].as_str().unwrap().to_owned();
        let f = until(20, "a firing skipped for overlap", || async {
            let f = firings(&app, &user, &slow_id).await;
            f.iter().any(|f| f["status"] == "skipped").then_some(f)
        })
        .await;
        let skipped = f.iter().find(|f| f["status"] == "skipped").unwrap();
        assert!(
            skipped["reason"].as_str().unwrap().contains("previous run"),
            "{skipped}"
        );
        app.delete(&format!("/api/v1/schedules/{slow_id}"), &user.token)
            .await;
        app.delete(&format!("/api/v1/schedules/{fixed_id}"), &user.token)
            .await;

        // Once: fires one time, then the schedule is finished.
        let at = chrono::Utc::now() + chrono::Duration::seconds(1);
        let (status, once) = app
            .post(
                "/api/v1/schedules",
                &user.token,
                schedule("once", &keeper, json!({ "kind": "once", "at": at })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{once}");
        let once_id = once["id"].as_str().unwrap().to_owned();
        until(15, "the single firing", || async {
            let (_, s) = app
                .get(&format!("/api/v1/schedules/{once_id}"), &user.token)
                .await;
            (s["state"] == "finished").then_some(())
        })
        .await;
        // The schedule is finished once its occurrence is planned; the
        // firing settles as started when its run is made, a moment later.
        let fired = until(15, "the single firing started", || async {
            let f = firings(&app, &user, &once_id).await;
            f.iter().all(|f| f["status"] != "pending").then_some(f)
        })
        .await;
        assert_eq!(started(&fired).len(), 1, "{fired:?}");
        assert_eq!(fired.len(), 1, "{fired:?}");

        // Quotas apply: a user whose runs for the day are spent gets failed
        // firings that say so, and the schedule goes on.
        let limited = app.add_user(&admin, "limited@example.com", "user").await;
        let (status, body) = app
            .put(
                &format!("/api/v1/users/{}/usage-limits", limited.user_id),
                &admin.token,
                json!({ "daily_runs": 1 }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let thrifty = agent(&app, &limited, "thrifty").await;
        let (status, capped) = app
            .post(
                "/api/v1/schedules",
                &limited.token,
                schedule(
                    "capped",
                    &thrifty,
                    json!({ "kind": "interval", "every_secs": 2 }),
                ),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{capped}");
        let capped_id = capped["id"].as_str().unwrap().to_owned();
        let f = until(20, "a firing refused by the quota", || async {
            let f = firings(&app, &limited, &capped_id).await;
            f.iter().any(|f| f["status"] == "failed").then_some(f)
        })
        .await;
        assert_eq!(started(&f).len(), 1, "{f:?}");
        let failed = f.iter().find(|f| f["status"] == "failed").unwrap();
        assert!(
            failed["reason"].as_str().unwrap().contains("runs"),
            "{failed}"
        );
        let (_, capped) = app
            .get(&format!("/api/v1/schedules/{capped_id}"), &limited.token)
            .await;
        assert_eq!(capped["state"], "active");

        // The agent is deleted: the schedule stops, saying why.
        let (status, _) = app
            .delete(&format!("/api/v1/agents/{helper}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let stopped = until(15, "the schedule stops", || async {
            let (_, s) = app
                .get(&format!("/api/v1/schedules/{id}"), &user.token)
                .await;
            (s["state"] == "stopped").then_some(s)
        })
        .await;
        assert!(
            stopped["state_reason"].as_str().unwrap().contains("agent"),
            "{stopped}"
        );
        let (status, body) = app
            .post(
                &format!("/api/v1/schedules/{id}/resume"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
    }
);

dual_test!(
    schedules_missed_while_no_node_ran_fire_once_or_are_skipped_and_overlap_can_cancel,
    |config: &mut Config| {
        configure(config);
        config.schedules.misfire_grace_secs = 1;
    },
    |mut app: TestApp| async move {
        let (_, user) = app.admin_and_user().await;
        let helper = agent(&app, &user, "helper").await;
        let mut ids = Vec::new();
        for catch_up in ["once", "skip"] {
            let (status, s) = app
                .post(
                    "/api/v1/schedules",
                    &user.token,
                    json!({ "agent_id": helper, "name": catch_up, "catch_up": catch_up,
                            "message": "missed {{ missed }}",
                            "timing": { "kind": "interval", "every_secs": 2 } }),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{s}");
            ids.push(s["id"].as_str().unwrap().to_owned());
        }
        // No node runs for eight seconds: about four occurrences each.
        app.stop();
        tokio::time::sleep(Duration::from_secs(8)).await;
        let node = app.second_node(|_| {}).await;
        let user = node.login("user@example.com").await;
        let once = until(15, "the catch-up firing", || async {
            let f = firings(&node, &user, &ids[0]).await;
            f.iter()
                .any(|f| f["missed"].as_i64() > Some(0) && f["status"] == "started")
                .then_some(f)
        })
        .await;
        let caught = once
            .iter()
            .find(|f| f["missed"].as_i64() > Some(0))
            .unwrap();
        let text = first_message(&node, &user, caught["conversation_id"].as_str().unwrap()).await;
        assert_eq!(text, format!("missed {}", caught["missed"]));
        let skip = until(15, "the skipped window", || async {
            let f = firings(&node, &user, &ids[1]).await;
            f.iter().any(|f| f["status"] == "skipped").then_some(f)
        })
        .await;
        let skipped = skip.iter().find(|f| f["status"] == "skipped").unwrap();
        assert!(
            skipped["reason"].as_str().unwrap().contains("missed"),
            "{skipped}"
        );
        // Either way the schedule is back on time: later firings start.
        until(10, "a firing after the window", || async {
            let f = firings(&node, &user, &ids[1]).await;
            (f.first()?["status"] == "started").then_some(())
        })
        .await;
        for id in &ids {
            node.delete(&format!("/api/v1/schedules/{id}"), &user.token)
                .await;
        }

        // Overlap `cancel`: runs of four seconds every two seconds; each
        // firing cancels the run before it.
        let (status, s) = node
            .post(
                "/api/v1/schedules",
                &user.token,
                json!({ "agent_id": helper, "name": "impatient", "overlap": "cancel",
                        "message": "slow", "timing": { "kind": "interval", "every_secs": 2 } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{s}");
        let id = s["id"].as_str().unwrap().to_owned();
        let f = until(20, "a run cancelled by the next firing", || async {
            let f = firings(&node, &user, &id).await;
            (f.iter().any(|f| f["run_status"] == "cancelled") && started(&f).len() >= 2)
                .then_some(f)
        })
        .await;
        assert!(f.iter().all(|f| f["status"] != "skipped"), "{f:?}");
    }
);

/// A request as received: its headers and body.
type Received = (HashMap<String, String>, String);

/// A receiver of webhooks on loopback: records each request, answers 500
/// to the first `fail_first` (all, when `always_fail`) and 200 after; or,
/// when `hang`, never answers.
#[derive(Clone, Default)]
struct Receiver {
    seen: Arc<Mutex<Vec<Received>>>,
    fail_first: Arc<AtomicUsize>,
    always_fail: bool,
    hang: bool,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> AxumStatus {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    r.seen
        .lock()
        .unwrap()
        .push((headers, String::from_utf8_lossy(&body).into_owned()));
    if r.hang {
        std::future::pending::<()>().await;
    }
    let failing = r.always_fail
        || r.fail_first
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if failing {
        AxumStatus::INTERNAL_SERVER_ERROR
    } else {
        AxumStatus::OK
    }
}

fn receiver(fail_first: usize, always_fail: bool) -> (String, Receiver) {
    serve_receiver(Receiver {
        fail_first: Arc::new(AtomicUsize::new(fail_first)),
        always_fail,
        ..Receiver::default()
    })
}

fn serve_receiver(r: Receiver) -> (String, Receiver) {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(r.clone());
    (format!("http://{}/hook", serve_in_thread(app)), r)
}

impl Receiver {
    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }
}

fn standard_script() -> String {
    format!(
        "{}/tests/fixtures/webhooks/standard.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// Verifies every request `receiver` got with the reference library;
/// returns the payloads (None without the Python environment).
fn verify_all(receiver: &Receiver, secret: &str) -> Option<Vec<Value>> {
    let python = python()?;
    let deliveries: Vec<Value> = receiver
        .seen()
        .into_iter()
        .map(|(headers, body)| json!({ "secret": secret, "headers": headers, "body": body }))
        .collect();
    let mut child = Command::new(python)
        .arg(standard_script())
        .arg("verify")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(serde_json::to_string(&deliveries).unwrap().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the reference library refused a delivery: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(result["verified"], deliveries.len());
    Some(result["payloads"].as_array().unwrap().clone())
}

/// Signs `body` the way a Standard Webhooks sender does, with the
/// reference library.
fn reference_signature(secret: &str, id: &str, timestamp: i64, body: &str) -> Option<String> {
    let python = python()?;
    let mut child = Command::new(python)
        .args([standard_script(), "sign".into(), secret.into(), id.into()])
        .arg(timestamp.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    Some(String::from_utf8(out.stdout).unwrap().trim().to_owned())
}

async fn subscribe(
    app: &TestApp,
    session: &Session,
    url: &str,
    events: Value,
    server_wide: bool,
) -> Value {
    let (status, body) = app
        .post(
            "/api/v1/webhooks",
            &session.token,
            json!({ "url": url, "events": events, "server_wide": server_wide }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(body["secret"].as_str().unwrap().starts_with("whsec_"));
    body
}

/// Runs `message` in a new conversation with `agent` until it stops.
async fn run(app: &TestApp, session: &Session, agent: &str, message: &str) -> Value {
    let conversation = app.conversation(session, agent).await;
    let (status, run) = app
        .post(
            &format!("/api/v1/conversations/{conversation}/runs"),
            &session.token,
            json!({ "message": message }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{run}");
    let id = run["id"].as_str().unwrap();
    let (_, run) = app
        .get(&format!("/api/v1/runs/{id}?wait_secs=20"), &session.token)
        .await;
    run
}

async fn deliveries(app: &TestApp, session: &Session, webhook: &str) -> Vec<Value> {
    let (status, body) = app
        .get(
            &format!("/api/v1/webhooks/{webhook}/deliveries?page_size=100"),
            &session.token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().unwrap().clone()
}

dual_test!(
    webhooks_are_signed_retried_logged_and_verified_by_the_reference_library,
    configure,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let other = app.add_user(&admin, "other@example.com", "user").await;
        let helper = agent(&app, &user, "helper").await;
        // Bad input.
        for bad in [
            json!({ "url": "ftp://example.com/x", "events": ["run.completed"] }),
            json!({ "url": "https://example.com/x", "events": ["run.exploded"] }),
            json!({ "url": "https://example.com/x", "events": [] }),
            json!({ "url": "https://user:pw@example.com/x", "events": ["*"] }),
        ] {
            let (status, body) = app.post("/api/v1/webhooks", &user.token, bad.clone()).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        }
        let (status, _) = app
            .post(
                "/api/v1/webhooks",
                &user.token,
                json!({ "url": "https://example.com/x", "events": ["*"], "server_wide": true }),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "server-wide needs an admin");

        // 500 three times, then 200: one accepted delivery, four attempts
        // with the same webhook-id, each signed.
        let (url, flaky) = receiver(3, false);
        let hook = subscribe(
            &app,
            &user,
            &url,
            json!(["run.completed", "run.failed"]),
            false,
        )
        .await;
        let hook_id = hook["id"].as_str().unwrap().to_owned();
        let secret = hook["secret"].as_str().unwrap().to_owned();
        let (status, shown) = app
            .get(&format!("/api/v1/webhooks/{hook_id}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(shown.get("secret").is_none(), "the secret is shown once");
        // The other user's subscription and an admin's server-wide one.
        let (other_url, other_receiver) = receiver(0, false);
        subscribe(&app, &other, &other_url, json!(["*"]), false).await;
        let (wide_url, wide_receiver) = receiver(0, false);
        let wide = subscribe(&app, &admin, &wide_url, json!(["run.completed"]), true).await;

        let done = run(&app, &user, &helper, "hello").await;
        assert_eq!(done["status"], "completed", "{done}");
        let run_id = done["id"].as_str().unwrap().to_owned();
        let delivered = until(20, "the delivery succeeds", || async {
            let d = deliveries(&app, &user, &hook_id).await;
            d.iter().find(|d| d["status"] == "delivered").cloned()
        })
        .await;
        assert_eq!(delivered["attempts"], 4, "{delivered}");
        assert_eq!(delivered["last_status_code"], 200);
        let delivery_id = delivered["id"].as_str().unwrap().to_owned();
        let (_, one) = app
            .get(
                &format!("/api/v1/webhooks/{hook_id}/deliveries/{delivery_id}"),
                &user.token,
            )
            .await;
        let codes: Vec<i64> = one["attempt_log"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["status_code"].as_i64().unwrap())
            .collect();
        assert_eq!(codes, [500, 500, 500, 200], "{one}");
        let seen = flaky.seen();
        assert_eq!(seen.len(), 4);
        let ids: std::collections::HashSet<&str> =
            seen.iter().map(|(h, _)| h["webhook-id"].as_str()).collect();
        assert_eq!(ids.len(), 1, "one webhook-id for every attempt");
        assert_eq!(
            ids.into_iter().next().unwrap(),
            one["message_id"].as_str().unwrap()
        );
        if let Some(payloads) = verify_all(&flaky, &secret) {
            for p in &payloads {
                assert_eq!(p["type"], "run.completed");
                assert_eq!(p["data"]["run_id"], run_id.as_str());
                assert_eq!(p["data"]["status"], "completed");
                assert_eq!(p["data"]["agent_id"], helper.as_str());
            }
        }
        // The server-wide subscription got the user's event; the other
        // user's did not.
        until(10, "the server-wide delivery", || async {
            (!wide_receiver.seen().is_empty()).then_some(())
        })
        .await;
        let wide_secret = wide["secret"].as_str().unwrap();
        verify_all(&wide_receiver, wide_secret);
        assert!(
            other_receiver.seen().is_empty(),
            "another user's event leaked"
        );
        let (status, _) = app
            .get(&format!("/api/v1/webhooks/{hook_id}"), &other.token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // A failed run, with its error.
        let failed = run(&app, &user, &helper, "fail").await;
        assert_eq!(failed["status"], "failed", "{failed}");
        until(10, "the run.failed delivery", || async {
            (flaky.seen().len() == 5).then_some(())
        })
        .await;
        if let Some(payloads) = verify_all(&flaky, &secret) {
            let last = payloads.last().unwrap();
            assert_eq!(last["type"], "run.failed");
            assert!(last["data"]["error"]["message"].is_string(), "{last}");
        }

        // Redelivery: the same webhook-id again.
        let (status, again) = app
            .post(
                &format!("/api/v1/webhooks/{hook_id}/deliveries/{delivery_id}/redeliver"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{again}");
        until(10, "the redelivery", || async {
            (flaky.seen().len() == 6).then_some(())
        })
        .await;
        assert_eq!(
            flaky.seen()[5].0["webhook-id"],
            flaky.seen()[0].0["webhook-id"]
        );

        // A rotated secret: deliveries carry both signatures for a day.
        let (status, rotated) = app
            .post(
                &format!("/api/v1/webhooks/{hook_id}/rotate-secret"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{rotated}");
        let new_secret = rotated["secret"].as_str().unwrap().to_owned();
        assert_ne!(new_secret, secret);
        let (status, _) = app
            .post(
                &format!("/api/v1/webhooks/{hook_id}/test"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        until(10, "the test delivery", || async {
            (flaky.seen().len() == 7).then_some(())
        })
        .await;
        let last_only = Receiver::default();
        last_only.seen.lock().unwrap().push(flaky.seen()[6].clone());
        for s in [&secret, &new_secret] {
            if let Some(p) = verify_all(&last_only, s) {
                assert_eq!(p[0]["type"], "webhook.test");
            }
        }

        // The other events: a schedule fired, a run waiting for approval,
        // an MCP server down; each verified by the reference library.
        let (events_url, events) = receiver(0, false);
        let all = subscribe(
            &app,
            &user,
            &events_url,
            json!(["schedule.fired", "run.requires_action", "mcp.server_down"]),
            false,
        )
        .await;
        let (status, cautious) = app
            .post(
                "/api/v1/agents",
                &user.token,
                json!({ "name": "cautious", "instructions": "Ask first.",
                        "model": { "provider": "openai", "model": "gpt-test" },
                        "tools": ["calculator__evaluate"],
                        "config": { "require_approval": true } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{cautious}");
        let waiting = run(&app, &user, cautious["id"].as_str().unwrap(), "calc").await;
        assert_eq!(waiting["status"], "requires_action", "{waiting}");
        let (status, schedule) = app
            .post(
                "/api/v1/schedules",
                &user.token,
                json!({ "agent_id": helper, "name": "tick", "message": "tick",
                        "timing": { "kind": "once", "at": chrono::Utc::now() + chrono::Duration::seconds(1) } }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{schedule}");
        let (status, server) = app
            .post(
                "/api/v1/mcp-servers",
                &user.token,
                json!({ "name": "gone", "transport": "http", "url": "http://127.0.0.1:9/mcp" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{server}");
        app.post(
            &format!(
                "/api/v1/mcp-servers/{}/restart",
                server["id"].as_str().unwrap()
            ),
            &user.token,
            json!({}),
        )
        .await;
        until(20, "the three events", || async {
            (events.seen().len() >= 3).then_some(())
        })
        .await;
        if let Some(payloads) = verify_all(&events, all["secret"].as_str().unwrap()) {
            let of = |t: &str| payloads.iter().find(|p| p["type"] == t).cloned();
            let approval = of("run.requires_action").expect("run.requires_action");
            assert_eq!(approval["data"]["run_id"], waiting["id"]);
            let fired = of("schedule.fired").expect("schedule.fired");
            assert_eq!(fired["data"]["schedule_id"], schedule["id"]);
            assert!(fired["data"]["run_id"].is_string(), "{fired}");
            let down = of("mcp.server_down").expect("mcp.server_down");
            assert_eq!(down["data"]["name"], "gone");
            assert!(down["data"]["error"].is_string(), "{down}");
        }

        // A receiver that always fails: the subscription is disabled after
        // four failed attempts in a row, with a note.
        let (dead_url, _dead) = receiver(0, true);
        let dead = subscribe(&app, &user, &dead_url, json!(["run.completed"]), false).await;
        let dead_id = dead["id"].as_str().unwrap().to_owned();
        run(&app, &user, &helper, "hello").await;
        let disabled = until(20, "the failing subscription is disabled", || async {
            let (_, w) = app
                .get(&format!("/api/v1/webhooks/{dead_id}"), &user.token)
                .await;
            (w["enabled"] == false).then_some(w)
        })
        .await;
        assert!(
            disabled["disabled_reason"]
                .as_str()
                .unwrap()
                .contains("4 failed attempts"),
            "{disabled}"
        );
        let (status, _) = app
            .patch(
                &format!("/api/v1/webhooks/{dead_id}"),
                &user.token,
                json!({ "enabled": true }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (_, w) = app
            .get(&format!("/api/v1/webhooks/{dead_id}"), &user.token)
            .await;
        assert_eq!(w["failures"], 0);
    }
);

dual_test!(
    a_receiver_that_never_answers_holds_back_its_own_deliveries_only,
    |config: &mut Config| {
        configure(config);
        config.webhooks.concurrency = 24;
        config.webhooks.timeout_secs = 120;
    },
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let other = app.add_user(&admin, "other@example.com", "user").await;
        // A user's subscriptions to a receiver that never answers, each
        // with events queued.
        let (hang_url, hanging) = serve_receiver(Receiver {
            hang: true,
            ..Receiver::default()
        });
        let helper = agent(&app, &user, "helper").await;
        for _ in 0..3 {
            subscribe(&app, &user, &hang_url, json!(["run.completed"]), false).await;
        }
        for _ in 0..4 {
            run(&app, &user, &helper, "hello").await;
        }
        until(10, "the hanging receiver holds attempts", || async {
            (hanging.seen().len() >= 3).then_some(())
        })
        .await;
        // Another user's delivery goes out while those hang.
        let (url, fine) = receiver(0, false);
        let hook = subscribe(&app, &other, &url, json!(["run.completed"]), false).await;
        let theirs = agent(&app, &other, "theirs").await;
        run(&app, &other, &theirs, "hello").await;
        until(20, "the other user's delivery", || async {
            (!fine.seen().is_empty()).then_some(())
        })
        .await;
        verify_all(&fine, hook["secret"].as_str().unwrap());
        // One user has at most sixteen attempts in flight: the rest of the
        // node's slots stay free.
        assert!(hanging.seen().len() <= 16, "{}", hanging.seen().len());
    }
);

dual_test!(
    a_users_webhook_url_must_be_public,
    |config: &mut Config| {
        with_vendor(config);
    },
    |app: TestApp| async move {
        let (_, user) = app.admin_and_user().await;
        for url in [
            "http://127.0.0.1:9/hook",
            "http://localhost/hook",
            "http://10.0.0.1/",
        ] {
            let result = app
                .post(
                    "/api/v1/webhooks",
                    &user.token,
                    json!({ "url": url, "events": ["*"] }),
                )
                .await;
            assert_error(&result, StatusCode::BAD_REQUEST, "validation_error");
        }
    }
);

dual_test!(
    a_webhook_delivery_survives_a_restart_between_retries,
    |config: &mut Config| {
        configure(config);
        config.webhooks.retry_ms = vec![2000];
    },
    |mut app: TestApp| async move {
        let (_, user) = app.admin_and_user().await;
        let helper = agent(&app, &user, "helper").await;
        let (url, flaky) = receiver(1, false);
        let hook = subscribe(&app, &user, &url, json!(["run.completed"]), false).await;
        run(&app, &user, &helper, "hello").await;
        until(10, "the first, failed attempt", || async {
            (flaky.seen().len() == 1).then_some(())
        })
        .await;
        app.stop();
        let node = app.second_node(|_| {}).await;
        let user = node.login("user@example.com").await;
        let hook_id = hook["id"].as_str().unwrap();
        let delivered = until(20, "the retry after the restart", || async {
            let d = deliveries(&node, &user, hook_id).await;
            d.iter().find(|d| d["status"] == "delivered").cloned()
        })
        .await;
        assert_eq!(delivered["attempts"], 2);
        assert_eq!(flaky.seen().len(), 2);
        verify_all(&flaky, hook["secret"].as_str().unwrap());
    }
);

/// Calls trigger `id` with `body` and extra headers.
async fn fire(
    app: &TestApp,
    id: &str,
    query: &str,
    headers: &[(&str, String)],
    body: String,
) -> (StatusCode, Value, HeaderMap) {
    let mut req = app
        .client
        .post(format!("{}/api/v1/triggers/{id}{query}", app.base))
        .body(body);
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

dual_test!(
    triggers_start_runs_with_tokens_signatures_idempotency_and_limits,
    configure,
    |app: TestApp| async move {
        let (admin, user) = app.admin_and_user().await;
        let other = app.add_user(&admin, "other@example.com", "user").await;
        let helper = agent(&app, &user, "helper").await;
        let (status, trigger) = app
            .post(
                "/api/v1/triggers",
                &user.token,
                json!({ "agent_id": helper, "name": "issues", "rate_per_minute": 3,
                        "template": "Event: {{ body.action }} on {{ body.issue.title }}" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{trigger}");
        let id = trigger["id"].as_str().unwrap().to_owned();
        let token = trigger["token"].as_str().unwrap().to_owned();
        assert!(token.starts_with("trg_"));
        let json_only = [("content-type", "application/json".to_owned())];
        let json_type = json_only[0].clone();
        let body =
            json!({ "action": "opened", "issue": { "title": "Crash on start" } }).to_string();

        // Tokens: missing, wrong, or for an unknown trigger: 401 alike.
        let (status, err, _) = fire(&app, &id, "", &json_only, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
        assert_eq!(err["error"], "unauthorized");
        let (status, _, _) = fire(&app, &id, "?token=trg_wrong", &json_only, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let unknown = uuid::Uuid::now_v7().to_string();
        let (status, _, _) = fire(
            &app,
            &unknown,
            &format!("?token={token}"),
            &[],
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Accepted: 202 with the run, whose message is the template's.
        let (status, run, _) = fire(
            &app,
            &id,
            &format!("?token={token}"),
            &json_only,
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{run}");
        let text = first_message(&app, &user, run["conversation_id"].as_str().unwrap()).await;
        assert_eq!(text, "Event: opened on Crash on start");

        // The same idempotency key: the same run, one delivery.
        let keyed = [
            json_type.clone(),
            ("authorization", format!("Bearer {token}")),
            ("idempotency-key", "delivery-1".to_owned()),
        ];
        let (status, first, h1) = fire(&app, &id, "", &keyed, body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{first}");
        assert_eq!(h1["idempotent-replayed"], "false");
        let (status, replay, h2) = fire(&app, &id, "", &keyed, body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{replay}");
        assert_eq!(h2["idempotent-replayed"], "true");
        assert_eq!(replay["id"], first["id"]);

        // Too large: 413, nothing started.
        let big = json!({ "action": "x".repeat(2000) }).to_string();
        let (status, err, _) = fire(&app, &id, &format!("?token={token}"), &json_only, big).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{err}");
        // Not JSON although it says so: 400.
        let (status, _, _) = fire(
            &app,
            &id,
            &format!("?token={token}"),
            &json_only,
            "{".into(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);

        // Three calls a minute: the third is accepted, the fourth is 429.
        let (status, _, _) = fire(
            &app,
            &id,
            &format!("?token={token}"),
            &json_only,
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (status, err, _) = fire(
            &app,
            &id,
            &format!("?token={token}"),
            &json_only,
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{err}");
        // A replay of a known key is still answered.
        let (status, _, _) = fire(&app, &id, "", &keyed, body.clone()).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let (_, calls) = app
            .get(&format!("/api/v1/triggers/{id}/deliveries"), &user.token)
            .await;
        assert_eq!(calls["total"], 3, "{calls}");

        // GitHub's signature.
        let (status, gh) = app
            .post(
                "/api/v1/triggers",
                &user.token,
                json!({ "agent_id": helper, "name": "github", "signature": "github",
                        "secret": "It's a Secret to Everybody" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{gh}");
        let gh_id = gh["id"].as_str().unwrap();
        let gh_token = format!("?token={}", gh["token"].as_str().unwrap());
        let signed = (
            "x-hub-signature-256",
            "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17".to_owned(),
        );
        let (status, run, _) = fire(
            &app,
            gh_id,
            &gh_token,
            std::slice::from_ref(&signed),
            "Hello, World!".into(),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{run}");
        let text = first_message(&app, &user, run["conversation_id"].as_str().unwrap()).await;
        assert_eq!(text, "Hello, World!");
        let (status, err, _) = fire(&app, gh_id, &gh_token, &[signed], "Hello, Moon!".into()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
        let (status, _, _) = fire(&app, gh_id, &gh_token, &[], "Hello, World!".into()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        // Standard Webhooks, signed by the reference library.
        let (status, sw) = app
            .post(
                "/api/v1/triggers",
                &user.token,
                json!({ "agent_id": helper, "name": "standard", "signature": "standard" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{sw}");
        let sw_id = sw["id"].as_str().unwrap();
        let sw_token = format!("?token={}", sw["token"].as_str().unwrap());
        let sw_secret = sw["secret"].as_str().unwrap();
        assert!(sw_secret.starts_with("whsec_"));
        let now = chrono::Utc::now().timestamp();
        let payload = json!({ "type": "invoice.paid", "amount": 42 }).to_string();
        if let Some(signature) = reference_signature(sw_secret, "msg_1", now, &payload) {
            let headers = |ts: i64, sig: &str| {
                vec![
                    json_type.clone(),
                    ("webhook-id", "msg_1".to_owned()),
                    ("webhook-timestamp", ts.to_string()),
                    ("webhook-signature", sig.to_owned()),
                ]
            };
            let (status, run, _) = fire(
                &app,
                sw_id,
                &sw_token,
                &headers(now, &signature),
                payload.clone(),
            )
            .await;
            assert_eq!(status, StatusCode::ACCEPTED, "{run}");
            // Tampered, or too old: 401.
            let tampered = payload.replace("42", "4200");
            let (status, _, _) =
                fire(&app, sw_id, &sw_token, &headers(now, &signature), tampered).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            let old = now - 3600;
            let old_sig = reference_signature(sw_secret, "msg_2", old, &payload).unwrap();
            let mut h = headers(old, &old_sig);
            h[1].1 = "msg_2".into();
            let (status, err, _) = fire(&app, sw_id, &sw_token, &h, payload.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{err}");
            // The webhook-id is the idempotency key: a redelivery is one run.
            let (status, again, h) = fire(
                &app,
                sw_id,
                &sw_token,
                &headers(now, &signature),
                payload.clone(),
            )
            .await;
            assert_eq!(status, StatusCode::ACCEPTED);
            assert_eq!(again["id"], run["id"]);
            assert_eq!(h["idempotent-replayed"], "true");
        }

        // Tenancy, disabling, and a token rotation.
        let (status, _) = app
            .get(&format!("/api/v1/triggers/{id}"), &other.token)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, shown) = app
            .get(&format!("/api/v1/triggers/{id}"), &user.token)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(shown.get("token").is_none());
        let (status, rotated) = app
            .post(
                &format!("/api/v1/triggers/{gh_id}/rotate-token"),
                &user.token,
                json!({}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, _) = fire(&app, gh_id, &gh_token, &[], "x".into()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "the old token stopped working"
        );
        let new_token = format!("?token={}", rotated["token"].as_str().unwrap());
        app.patch(
            &format!("/api/v1/triggers/{gh_id}"),
            &user.token,
            json!({ "enabled": false }),
        )
        .await;
        let (status, _, _) = fire(&app, gh_id, &new_token, &[], "x".into()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
    }
);
