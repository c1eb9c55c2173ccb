//! Fault tests of the run engine with the real binary: `kill -9` while runs
//! are in flight (SQLite and PostgreSQL), then a restart that finishes every
//! run with no message lost or duplicated; and three `orchestra serve`
//! processes sharing 500 runs on one PostgreSQL database, one of them killed
//! midway, every run executed exactly once; two processes firing a
//! schedule every second for a minute, one killed midway, each occurrence
//! fired once. The model is the local
//! OpenAI wire-format server of `support/vendor.rs`.

#[allow(dead_code)]
#[path = "api/common.rs"]
mod common;
#[allow(dead_code)]
#[path = "support/build.rs"]
mod support;
#[allow(dead_code)]
#[path = "support/vendor.rs"]
mod vendor;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

impl Server {
    fn kill9(&mut self) {
        let status = Command::new("kill")
            .arg("-KILL")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        self.child.wait().unwrap();
    }
}

/// Starts `orchestra serve` on `data_dir` (and `database_url`) with the
/// scripted vendor as its `openai` provider and a 2-second lease.
fn serve(data_dir: &Path, database_url: Option<&str>, vendor_base: &str) -> Server {
    serve_with(data_dir, database_url, vendor_base, &[])
}

/// [`serve`] with more environment variables.
fn serve_with(
    data_dir: &Path,
    database_url: Option<&str>,
    vendor_base: &str,
    env: &[(&str, &str)],
) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestra"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ORCHESTRA_") || key == "DATABASE_URL" || key.starts_with("OPENAI_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ORCHESTRA_DATA_DIR", data_dir)
        .env("ORCHESTRA_LISTEN", "127.0.0.1:0")
        .env("ORCHESTRA_RUNS__LEASE_SECS", "2")
        .env("ORCHESTRA_RUNS__POLL_MS", "200")
        .env("ORCHESTRA_DATABASE__MAX_CONNECTIONS", "10")
        .env(
            "ORCHESTRA_SANDBOX__CACHE_DIR",
            std::env::temp_dir().join("orchestra-test-plugin-cache"),
        )
        .env(
            "ORCHESTRA_AUTH__JWT_SECRET",
            "dGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQtdGVzdC1zZWNyZXQ=",
        )
        .env(
            "ORCHESTRA_AUTH__ENCRYPTION_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        )
        .env("OPENAI_API_KEY", "sk-test")
        .env("OPENAI_BASE_URL", vendor_base);
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start orchestra serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines.next().expect("serve printed its URL").unwrap();
        if let Some(rest) = line.strip_prefix("Orchestra is listening on ") {
            break rest.trim().to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

struct Api {
    client: reqwest::Client,
    token: String,
}

impl Api {
    async fn post(&self, url: &str, body: Value) -> Value {
        let resp = self
            .client
            .post(url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(status.is_success(), "{url}: {status} {body}");
        body
    }
}

/// Registers the admin and creates an agent with the calculator.
async fn setup(base: &str) -> (Api, String) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let body: Value = client
        .post(format!("{base}/api/v1/auth/register"))
        .json(&json!({ "email": "admin@example.com", "password": "correct horse battery" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api = Api {
        client,
        token: body["access_token"].as_str().expect("a token").to_owned(),
    };
    let agent = api
        .post(
            &format!("{base}/api/v1/agents"),
            json!({
                "name": "calculating",
                "instructions": "Compute.",
                "model": { "provider": "openai", "model": "gpt-test" },
                "tools": ["calculator__evaluate"],
            }),
        )
        .await;
    (api, agent["id"].as_str().unwrap().to_owned())
}

/// Creates `n` conversations, each with a `calc` run; returns the run ids.
async fn start_runs(api: &Api, bases: &[String], agent: &str, n: usize) -> Vec<String> {
    let mut runs = Vec::with_capacity(n);
    for i in 0..n {
        let base = &bases[i % bases.len()];
        let conv = api
            .post(
                &format!("{base}/api/v1/conversations"),
                json!({ "agent_id": agent }),
            )
            .await;
        let id = conv["id"].as_str().unwrap();
        let run = api
            .post(
                &format!("{base}/api/v1/conversations/{id}/runs"),
                json!({ "message": "calc" }),
            )
            .await;
        runs.push(run["id"].as_str().unwrap().to_owned());
    }
    runs
}

/// What the database says about the runs, read straight from it.
struct Story {
    statuses: HashMap<String, i64>,
    attempts_over_one: i64,
    /// Conversations whose messages are not exactly user, assistant, tool,
    /// tool, assistant with distinct tool results.
    bad_conversations: Vec<String>,
    workers: usize,
    done_events: i64,
}

async fn story(database_url: &str) -> Story {
    let config = orchestra::config::Config {
        database_url: Some(database_url.to_owned()),
        ..orchestra::config::Config::default()
    };
    let db = orchestra::db::Db::connect(&config)
        .await
        .expect("open the database");
    type Message = (uuid::Uuid, String, sqlx::types::Json<Value>);
    type Rows = (
        Vec<(String, i64)>,
        i64,
        Vec<Message>,
        Vec<sqlx::types::Json<Value>>,
        i64,
    );
    let (statuses, attempts_over_one, messages, events, done_events): Rows = orchestra::on_db!(&db, pool => {
        let statuses = sqlx::query_as("SELECT status, COUNT(*) FROM runs GROUP BY status")
            .fetch_all(pool)
            .await
            .unwrap();
        let attempts = sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE attempts > 1")
            .fetch_one(pool)
            .await
            .unwrap();
        let messages = sqlx::query_as(
            "SELECT conversation_id, role, content FROM messages ORDER BY conversation_id, seq",
        )
        .fetch_all(pool)
        .await
        .unwrap();
        // Each row holds the events of one write.
        let groups: Vec<sqlx::types::Json<Vec<Value>>> =
            sqlx::query_scalar("SELECT events FROM run_event_groups")
                .fetch_all(pool)
                .await
                .unwrap();
        let all: Vec<Value> = groups.into_iter().flat_map(|g| g.0).collect();
        let events = all
            .iter()
            .filter(|e| e["type"] == "run.status")
            .map(|e| sqlx::types::Json(e["data"].clone()))
            .collect();
        let done = all.iter().filter(|e| e["type"] == "done").count() as i64;
        (statuses, attempts, messages, events, done)
    });
    db.close().await;
    let mut by_conversation: HashMap<uuid::Uuid, Vec<(String, String)>> = HashMap::new();
    for (conversation, role, content) in messages {
        by_conversation
            .entry(conversation)
            .or_default()
            .push((role, content.0.to_string()));
    }
    let bad_conversations = by_conversation
        .iter()
        .filter(|(_, messages)| {
            let roles: Vec<&str> = messages.iter().map(|m| m.0.as_str()).collect();
            let results: HashSet<&str> = messages
                .iter()
                .filter(|m| m.0 == "tool")
                .map(|m| m.1.as_str())
                .collect();
            roles != ["user", "assistant", "tool", "tool", "assistant"]
                || results.len() != 2
                || !messages[4].1.contains("42")
        })
        .map(|(c, m)| format!("{c}: {m:?}"))
        .collect();
    let workers: HashSet<String> = events
        .iter()
        .filter_map(|e| e.0["worker"].as_str().map(str::to_owned))
        .collect();
    Story {
        statuses: statuses.into_iter().collect(),
        attempts_over_one,
        bad_conversations,
        workers: workers.len(),
        done_events,
    }
}

async fn wait_all_completed(database_url: &str, n: i64, within: Duration) -> Story {
    let started = Instant::now();
    loop {
        let s = story(database_url).await;
        if s.statuses.get("completed") == Some(&n) || started.elapsed() > within {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn kill_and_resume(database_url: Option<String>) {
    let (vendor_base, vendor) = vendor::vendor();
    // Each model answer streams for about 0.3 s: runs are in flight.
    vendor.pause_ms.store(25, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = serve(&data, database_url.as_deref(), &vendor_base);
    let (api, agent) = setup(&first.url).await;
    let runs = start_runs(&api, &[first.url.clone()], &agent, 20).await;
    // Let some runs get halfway, then kill the process outright.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.kill9();
    let url =
        database_url.unwrap_or_else(|| format!("sqlite://{}", data.join("orchestra.db").display()));
    let before = story(&url).await;
    let unfinished = 20 - before.statuses.get("completed").copied().unwrap_or(0);
    assert!(unfinished > 0, "the kill came after every run had finished");

    let _second = serve(
        &data,
        Some(url.as_str()).filter(|u| u.starts_with("postgres")),
        &vendor_base,
    );
    let after = wait_all_completed(&url, 20, Duration::from_secs(60)).await;
    assert_eq!(
        after.statuses.get("completed"),
        Some(&20),
        "{:?}",
        after.statuses
    );
    assert!(
        after.bad_conversations.is_empty(),
        "lost or duplicated messages: {:#?}",
        after.bad_conversations
    );
    assert!(after.attempts_over_one > 0, "no run was resumed");
    assert_eq!(
        after.done_events,
        runs.len() as i64,
        "one done event per run"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_completes_every_run_on_sqlite() {
    kill_and_resume(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_run_then_restart_completes_every_run_on_postgres() {
    let Some(server) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres_database(&server).await;
    kill_and_resume(Some(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_500_runs_on_postgres_each_exactly_once_one_killed() {
    let Some(server) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres_database(&server).await;
    let (vendor_base, vendor) = vendor::vendor();
    // About 0.2 s per run: the killed node holds runs when it dies.
    vendor.pause_ms.store(10, Ordering::Relaxed);
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    // The first node migrates; the others start on the migrated database.
    let mut nodes = vec![serve(dirs[0].path(), Some(&url), &vendor_base)];
    for dir in &dirs[1..] {
        nodes.push(serve(dir.path(), Some(&url), &vendor_base));
    }
    let bases: Vec<String> = nodes.iter().map(|n| n.url.clone()).collect();
    let (api, agent) = setup(&bases[0]).await;
    let survivors = [bases[0].clone(), bases[2].clone()];
    let runs = start_runs(&api, &bases[..], &agent, 250).await;
    // Midway: kill the second node while it holds runs.
    nodes[1].kill9();
    let more = start_runs(&api, &survivors, &agent, 250).await;
    assert_eq!(runs.len() + more.len(), 500);
    let s = wait_all_completed(&url, 500, Duration::from_secs(240)).await;
    assert_eq!(s.statuses.get("completed"), Some(&500), "{:?}", s.statuses);
    assert!(
        s.bad_conversations.is_empty(),
        "lost or duplicated messages: {:#?}",
        &s.bad_conversations[..s.bad_conversations.len().min(3)]
    );
    assert_eq!(s.done_events, 500, "one done event per run");
    assert_eq!(s.workers, 3, "every node executed runs");
    assert!(
        s.attempts_over_one > 0,
        "the killed node's runs were resumed"
    );
    eprintln!(
        "500 runs on 3 nodes: {} resumed after the kill, {} model requests",
        s.attempts_over_one,
        vendor.requests.lock().unwrap().len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_fire_a_schedule_every_second_for_a_minute_each_occurrence_once_one_killed() {
    let Some(server) = common::postgres_url() else {
        return;
    };
    let url = common::fresh_postgres_database(&server).await;
    let (vendor_base, _vendor) = vendor::vendor();
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let env = [("ORCHESTRA_SCHEDULES__MIN_INTERVAL_SECS", "1")];
    let mut nodes = vec![serve_with(dirs[0].path(), Some(&url), &vendor_base, &env)];
    nodes.push(serve_with(dirs[1].path(), Some(&url), &vendor_base, &env));
    let base = nodes[0].url.clone();
    let (api, agent) = setup(&base).await;
    let schedule = api
        .post(
            &format!("{base}/api/v1/schedules"),
            json!({ "agent_id": agent, "name": "every second", "message": "tick {{ due_at }}",
                    "timing": { "kind": "cron", "cron": "* * * * * *" }, "overlap": "queue" }),
        )
        .await;
    let id = schedule["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_secs(30)).await;
    // Midway: kill one node, whatever it holds.
    nodes[1].kill9();
    tokio::time::sleep(Duration::from_secs(30)).await;
    api.post(&format!("{base}/api/v1/schedules/{id}/pause"), json!({}))
        .await;

    let config = orchestra::config::Config {
        database_url: Some(url.clone()),
        ..orchestra::config::Config::default()
    };
    let db = orchestra::db::Db::connect(&config).await.unwrap();
    type Firing = (i64, String, Option<uuid::Uuid>);
    let started = Instant::now();
    let (firings, runs) = loop {
        let (firings, runs): (Vec<Firing>, Vec<(uuid::Uuid, String)>) = orchestra::on_db!(&db, pool => {
            let f = sqlx::query_as("SELECT due_ms, status, run_id FROM schedule_firings ORDER BY due_ms")
                .fetch_all(pool)
                .await
                .unwrap();
            let r = sqlx::query_as("SELECT id, status FROM runs")
                .fetch_all(pool)
                .await
                .unwrap();
            (f, r)
        });
        let settled =
            firings.iter().all(|f| f.1 != "pending") && runs.iter().all(|r| r.1 == "completed");
        if settled || started.elapsed() > Duration::from_secs(60) {
            break (firings, runs);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    db.close().await;
    assert!(firings.len() >= 50, "{} firings in a minute", firings.len());
    // Every second between the first and the last fired: none lost to the
    // kill, none twice (the unique key would refuse a second row).
    let gaps: Vec<i64> = firings.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.iter().all(|g| *g == 1000),
        "gaps between firings: {gaps:?}"
    );
    let statuses: HashMap<&str, usize> = firings.iter().fold(HashMap::new(), |mut m, f| {
        *m.entry(f.1.as_str()).or_default() += 1;
        m
    });
    assert_eq!(
        statuses.get("started"),
        Some(&firings.len()),
        "{statuses:?}"
    );
    // One run per firing, each the firing's own, each completed.
    let run_ids: HashSet<uuid::Uuid> = firings.iter().filter_map(|f| f.2).collect();
    assert_eq!(run_ids.len(), firings.len());
    let stored: HashMap<uuid::Uuid, &str> = runs.iter().map(|r| (r.0, r.1.as_str())).collect();
    assert_eq!(stored.len(), firings.len(), "a run per firing and no other");
    assert!(run_ids.iter().all(|r| stored.get(r) == Some(&"completed")));
    eprintln!(
        "a schedule every second on 2 nodes, one killed at 30 s: {} firings, each once",
        firings.len()
    );
}

/// Follows the run's event stream until an event of type `kind` arrives.
async fn wait_event(api: &Api, base: &str, run: &str, kind: &str) {
    let mut resp = api
        .client
        .get(format!("{base}/api/v1/runs/{run}/events"))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap();
    let mut seen = String::new();
    let wanted = format!("event: {kind}\n");
    let read = async {
        while let Some(bytes) = resp.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&bytes));
            if seen.contains(&wanted) {
                return;
            }
        }
        panic!("the stream ended without {kind}: {seen}");
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("run {run} never produced {kind}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_idempotent_call_cut_by_kill_9_is_not_repeated_the_model_is_told_it_was_interrupted()
{
    let wasm = support::hostile_wasm();
    let (vendor_base, _vendor) = vendor::vendor();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut first = serve(&data, None, &vendor_base);
    let (api, _) = setup(&first.url).await;
    let base = first.url.clone();
    let resp = api
        .client
        .post(format!("{base}/api/v1/plugins"))
        .bearer_auth(&api.token)
        .header("content-type", "application/wasm")
        .body(wasm)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{:?}", resp.text().await);
    let agent = api
        .post(
            &format!("{base}/api/v1/agents"),
            json!({
                "name": "sleeper",
                "model": { "provider": "openai", "model": "gpt-test" },
                "tools": ["hostile__sleep"],
            }),
        )
        .await;
    let conv = api
        .post(
            &format!("{base}/api/v1/conversations"),
            json!({ "agent_id": agent["id"] }),
        )
        .await;
    let conv = conv["id"].as_str().unwrap().to_owned();
    let run = api
        .post(
            &format!("{base}/api/v1/conversations/{conv}/runs"),
            json!({ "message": "sleepy" }),
        )
        .await;
    let run = run["id"].as_str().unwrap().to_owned();
    // The call is recorded as started and is sleeping: kill the server.
    wait_event(&api, &base, &run, "tool_call.started").await;
    first.kill9();

    let second = serve(&data, None, &vendor_base);
    let url = format!("sqlite://{}", data.join("orchestra.db").display());
    let s = wait_all_completed(&url, 1, Duration::from_secs(60)).await;
    assert_eq!(s.statuses.get("completed"), Some(&1), "{:?}", s.statuses);
    let resp: Value = api
        .client
        .get(format!(
            "{}/api/v1/conversations/{conv}/messages",
            second.url
        ))
        .bearer_auth(&api.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = resp["items"].as_array().unwrap();
    let roles: Vec<&str> = items.iter().map(|m| m["role"].as_str().unwrap()).collect();
    assert_eq!(roles, ["user", "assistant", "tool", "assistant"], "{resp}");
    let result = &items[2]["content"][0];
    assert_eq!(result["is_error"], true);
    assert!(
        result["content"].as_str().unwrap().contains("interrupted"),
        "{result}"
    );
    let answer = items[3]["content"][0]["text"].as_str().unwrap();
    assert!(answer.contains("not repeated"), "{answer}");
}
