//! Schedules and webhooks benchmark (on demand: `cargo bench --bench
//! automation`). 10,000 single-time schedules of one user all fall due at
//! the same second; the local server that speaks OpenAI's wire format
//! answers their runs. Printed: the lag from the due time to each run's
//! creation and start (p50, p95, max) and the time until every run has
//! completed; then the webhook deliveries those runs' `run.completed`
//! events cause (to four subscriptions on one local receiver that answers
//! 200), per second, from the first delivery to the last.
//!
//! SQLite by default; `ORCHESTRA_BENCH_DATABASE_URL=postgres://...` runs it
//! on PostgreSQL (a fresh database is expected). Figures to read, not
//! assertions.

#[path = "../tests/support/vendor.rs"]
#[allow(dead_code)]
mod vendor;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use orchestra::config::{Config, EnvProvider};
use serde_json::{json, Value};

const SCHEDULES: usize = 10_000;
const SUBSCRIPTIONS: usize = 4;

fn percentile(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// A receiver that answers 200 to every delivery, counting them.
fn receiver() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let seen = seen.clone();
            async move {
                seen.fetch_add(1, Ordering::Relaxed);
                "ok"
            }
        }),
    );
    let url = format!("http://{}/hook", vendor::serve_in_thread(app));
    (url, count)
}

#[tokio::main]
async fn main() {
    let (vendor_base, _vendor) = vendor::vendor();
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.database_url = std::env::var("ORCHESTRA_BENCH_DATABASE_URL").ok();
    config.env_providers = vec![EnvProvider {
        name: "openai".into(),
        kind: "openai".into(),
        base_url: vendor_base,
        api_key: "sk-bench".into(),
    }];
    config.schedules.max_per_user = SCHEDULES as i64;
    config.egress.allow_private_user_endpoints = true;
    config.database.max_connections = 32;
    let state = orchestra::server::build_state(config).await.expect("build");
    let db = state.db.clone();
    let backend = db.backend();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(orchestra::server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    let session: Value = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({ "email": "bench@example.com", "password": "correct horse battery" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = session["access_token"].as_str().unwrap().to_owned();
    let agent: Value = client
        .post(format!("{base}/api/v1/agents"))
        .bearer_auth(&token)
        .json(&json!({ "name": "ticker", "instructions": "Answer.",
                       "model": { "provider": "openai", "model": "gpt-test" }, "tools": [] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let agent = agent["id"].as_str().unwrap().to_owned();
    let (hook_url, delivered) = receiver();
    for _ in 0..SUBSCRIPTIONS {
        let r = client
            .post(format!("{base}/api/v1/webhooks"))
            .bearer_auth(&token)
            .json(&json!({ "url": hook_url, "events": ["run.completed"] }))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    // Every schedule falls due at the same second, far enough ahead for
    // all to be created.
    let due = chrono::Utc::now() + chrono::Duration::seconds(40);
    let due = due - chrono::Duration::nanoseconds(due.timestamp_subsec_nanos() as i64);
    let created = Instant::now();
    let statuses: Vec<u16> = futures_util::stream::iter(0..SCHEDULES)
        .map(|i| {
            let (client, base, token, agent) = (&client, &base, &token, &agent);
            async move {
                client
                    .post(format!("{base}/api/v1/schedules"))
                    .bearer_auth(token)
                    .json(&json!({ "agent_id": agent, "name": format!("s{i}"),
                                   "message": "tick {{ due_at }}",
                                   "timing": { "kind": "once", "at": due } }))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    assert!(
        statuses.iter().all(|s| *s == 201),
        "creating schedules failed"
    );
    println!(
        "{backend}: {SCHEDULES} schedules created in {:.1} s, all due at {due}",
        created.elapsed().as_secs_f64()
    );
    let due_ms = due.timestamp_millis();
    let wait = (due_ms - chrono::Utc::now().timestamp_millis()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;

    type Row = (
        i64,
        chrono::DateTime<chrono::Utc>,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
        String,
    );
    let rows: Vec<Row> = loop {
        let rows: Vec<Row> = orchestra::on_db!(&db, pool => sqlx::query_as(
            "SELECT f.due_ms, r.created_at, r.started_at, r.finished_at, r.status
             FROM schedule_firings f JOIN runs r ON r.id = f.run_id",
        )
        .fetch_all(pool)
        .await
        .unwrap());
        if rows.len() == SCHEDULES && rows.iter().all(|r| r.4 == "completed") {
            break rows;
        }
        assert!(
            chrono::Utc::now().timestamp_millis() - due_ms < 600_000,
            "not every schedule's run completed within ten minutes ({} of {SCHEDULES} started)",
            rows.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut created: Vec<i64> = rows.iter().map(|r| r.1.timestamp_millis() - r.0).collect();
    let mut started: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.2.map(|t| t.timestamp_millis() - r.0))
        .collect();
    let last_finished = rows
        .iter()
        .filter_map(|r| r.3.map(|t| t.timestamp_millis() - r.0))
        .max()
        .unwrap_or_default();
    created.sort();
    started.sort();
    println!("lag from the due time (ms), {SCHEDULES} schedules due at the same second:");
    for (what, v) in [("run created", &created), ("run started", &started)] {
        println!(
            "  {what}: p50 {:>6}   p95 {:>6}   max {:>6}",
            percentile(v, 0.5),
            percentile(v, 0.95),
            v.last().copied().unwrap_or_default()
        );
    }
    println!("  every run completed {last_finished} ms after the due time");

    let expected = (SCHEDULES * SUBSCRIPTIONS) as i64;
    let (first, last) = loop {
        let (n, first, last): (i64, Option<i64>, Option<i64>) = orchestra::on_db!(&db, pool => sqlx::query_as(
            "SELECT COUNT(*), MIN(finished_ms), MAX(finished_ms) FROM webhook_deliveries WHERE status = 'delivered'",
        )
        .fetch_one(pool)
        .await
        .unwrap());
        if n == expected {
            break (first.unwrap_or_default(), last.unwrap_or_default());
        }
        assert!(
            chrono::Utc::now().timestamp_millis() - due_ms < 1_200_000,
            "deliveries stalled at {n} of {expected}"
        );
        tokio::time::sleep(Duration::from_millis(1000)).await;
    };
    let secs = ((last - first) as f64 / 1000.0).max(0.001);
    println!(
        "webhooks: {expected} deliveries ({SUBSCRIPTIONS} subscriptions x {SCHEDULES} run.completed) in {secs:.1} s: {:.0} per second ({} received)",
        expected as f64 / secs,
        delivered.load(Ordering::Relaxed)
    );
}
