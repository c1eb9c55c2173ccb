//! Run-engine benchmark (on demand: `cargo bench --bench runs`). Prints
//! figures, asserts nothing.
//!
//! Every turn is the same: the model asks for one calculator call, the tool
//! runs in the sandbox, the model answers. So one turn is three agent steps
//! (two model steps and one tool step), each persisted before the next.
//!
//! 1. With a provider that answers at once (in process, no network): the
//!    runtime's own time per turn and per step, persistence included, one
//!    turn at a time; then runs per second with 2,000 turns in flight.
//! 2. With a provider that takes 1 s per answer: 10,000 conversations each
//!    running one such turn at the same time (2 s is the floor): wall time
//!    and peak memory of the process.
//!
//! SQLite always; PostgreSQL too when `ORCHESTRA_BENCH_DATABASE_URL` (or
//! `ORCHESTRA_TEST_DATABASE_URL`) names a server whose user may create
//! databases. `ORCHESTRA_BENCH_CONCURRENT` changes the 10,000,
//! `ORCHESTRA_BENCH_TURNS` the 300 turns timed one at a time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use orchestra::agents::model::{AgentInput, ModelRef};
use orchestra::config::Config;
use orchestra::conversations::model::{ContentInput, ConversationInput};
use orchestra::http::AppState;
use orchestra::providers::{
    ChatMessage, ChatRequest, EventStream, FinishReason, Provider, StreamEvent, Usage,
};
use orchestra::runs::model::{RunInput, RunStatus};
use orchestra::users::model::{AuthMethod, Principal, Role};
use serde_json::Map;
use uuid::Uuid;

/// The server's allocator (see `main.rs`), counting the heap's live bytes (to
/// tell the program's own memory from the allocator's and the kernel's share
/// of the RSS).
struct Counting;

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            let now =
                LIVE.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let now = LIVE.fetch_add(
                    new_size - layout.size(),
                    std::sync::atomic::Ordering::Relaxed,
                ) + new_size
                    - layout.size();
                PEAK.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(
                    layout.size() - new_size,
                    std::sync::atomic::Ordering::Relaxed,
                );
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn heap_mib() -> f64 {
    LIVE.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

fn peak_heap_mib() -> f64 {
    PEAK.load(std::sync::atomic::Ordering::Relaxed) as f64 / (1024.0 * 1024.0)
}

/// A model that asks for the calculator once, then answers, after `delay`.
struct Scripted {
    delay: Duration,
}

impl Provider for Scripted {
    fn stream(&self, request: ChatRequest) -> EventStream {
        let answered = request
            .messages
            .iter()
            .any(|m| matches!(m, ChatMessage::ToolResult { .. }));
        let mut events = Vec::new();
        if answered {
            events.push(StreamEvent::TextDelta("The answer is ".into()));
            events.push(StreamEvent::TextDelta("42.".into()));
            events.push(StreamEvent::Finish(FinishReason::Stop));
        } else {
            events.push(StreamEvent::ToolCallStart {
                index: 0,
                id: "call_1".into(),
                name: "calculator__evaluate".into(),
            });
            events.push(StreamEvent::ToolCallDelta {
                index: 0,
                fragment: r#"{"expression":"6*7"}"#.into(),
            });
            events.push(StreamEvent::Finish(FinishReason::ToolCalls));
        }
        events.push(StreamEvent::Usage(Usage {
            input_tokens: Some(50),
            output_tokens: Some(10),
        }));
        let delay = self.delay;
        futures_util::stream::once(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            futures_util::stream::iter(events.into_iter().map(Ok))
        })
        .flatten()
        .boxed()
    }
}

/// CPU time (user and system) the process used so far, in seconds.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command (which may hold spaces): utime is the 12th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<f64> = after
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0.0))
        .collect();
    let ticks = 100.0; // USER_HZ on Linux
    (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / ticks
}

/// CPU time (user and system) of this process's threads named `name`, in
/// seconds (the run writer's thread: the one part of the engine that does
/// not spread over cores).
fn thread_cpu_secs(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
            let fields: Vec<f64> = after
                .split_whitespace()
                .map(|f| f.parse().unwrap_or(0.0))
                .collect();
            (fields.get(11).unwrap_or(&0.0) + fields.get(12).unwrap_or(&0.0)) / 100.0
        })
        .sum()
}

fn peak_rss_mib() -> f64 {
    status_kib("VmHWM:") / 1024.0
}

fn rss_mib() -> f64 {
    status_kib("VmRSS:") / 1024.0
}

fn status_kib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0.0)
}

async fn fresh_postgres(server: &str) -> String {
    use sqlx::Connection;
    let name = format!("orchestra_bench_{}", Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(server).await.unwrap();
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let (base, _) = server.rsplit_once('/').unwrap();
    format!("{base}/{name}")
}

struct Bench {
    state: AppState,
    principal: Principal,
    agent: Uuid,
    _dir: tempfile::TempDir,
}

async fn setup(database_url: Option<String>, delay: Duration) -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config {
        data_dir: dir.path().join("data"),
        database_url,
        ..Config::default()
    };
    config.database.max_connections = std::env::var("ORCHESTRA_BENCH_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    config.sandbox.refresh_secs = 0;
    // Compiled plugins are kept between bench runs (compiling them is start-up
    // work, not the engine's).
    config.sandbox.cache_dir = Some(std::env::temp_dir().join("orchestra-bench-plugin-cache"));
    config.runs.max_concurrent = 20_000;
    let state = orchestra::server::build_state(config).await.unwrap();
    state
        .models
        .register_in_process("bench", Arc::new(Scripted { delay }));
    let user = state
        .users
        .create_user_offline(
            "bench@example.com",
            "correct horse battery".into(),
            Role::Admin,
            None,
        )
        .await
        .unwrap();
    let principal = Principal {
        user_id: user.id,
        role: Role::Admin,
        method: AuthMethod::AccessToken,
    };
    let agent = state
        .agents
        .create(
            &principal,
            AgentInput {
                name: "bench".into(),
                description: None,
                instructions: "Compute.".into(),
                model: ModelRef {
                    provider: "bench".into(),
                    model: "scripted".into(),
                    parameters: Map::new(),
                },
                tools: vec!["calculator__evaluate".into()],
                config: Map::new(),
                metadata: Map::new(),
            },
        )
        .await
        .unwrap();
    Bench {
        state,
        principal,
        agent: agent.id,
        _dir: dir,
    }
}

impl Bench {
    async fn conversations(&self, n: usize) -> Vec<Uuid> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            let c = self
                .state
                .conversations
                .create(
                    &self.principal,
                    ConversationInput {
                        agent_id: self.agent,
                        title: None,
                        metadata: Map::new(),
                    },
                )
                .await
                .unwrap();
            out.push(c.id);
        }
        out
    }

    async fn start(&self, conversation: Uuid) -> Uuid {
        self.state
            .runs
            .create(
                &self.principal,
                conversation,
                RunInput {
                    message: Some(ContentInput::Text("What is 6*7?".into())),
                    limits: None,
                    on_active: None,
                    options: None,
                    id: None,
                },
            )
            .await
            .unwrap()
            .id
    }

    /// Waits for the run's end as a client of the API would, by a long poll
    /// (`GET /api/v1/runs/{id}?wait_secs=`): woken by the run's stop, with
    /// no read of the run after each of its steps.
    async fn wait(&self, run: Uuid) {
        loop {
            let r = self
                .state
                .runs
                .wait(&self.principal, run, Duration::from_secs(60))
                .await
                .unwrap();
            if r.status.is_terminal() {
                assert_eq!(r.status, RunStatus::Completed, "{:?}", r.error);
                return;
            }
        }
    }

    async fn completed(&self) -> i64 {
        orchestra::on_db!(&self.state.db, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM runs WHERE status = 'completed'",
        )
        .fetch_one(pool)
        .await
        .unwrap())
    }

    async fn wait_completed(&self, n: i64) {
        let started = Instant::now();
        let mut last_report = Instant::now();
        while self.completed().await < n {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if std::env::var("ORCHESTRA_BENCH_PROGRESS").is_ok()
                && last_report.elapsed() > Duration::from_millis(500)
            {
                last_report = Instant::now();
                let counts: Vec<(String, i64)> = orchestra::on_db!(&self.state.db, pool => sqlx::query_as(
                    "SELECT status || ':' || step_count, COUNT(*) FROM runs GROUP BY status, step_count",
                )
                .fetch_all(pool)
                .await
                .unwrap());
                eprintln!(
                    "{:>6.2} s RSS {:.0} MiB, heap {:.0} MiB {counts:?}",
                    started.elapsed().as_secs_f64(),
                    rss_mib(),
                    heap_mib()
                );
            }
        }
    }
}

async fn overhead(name: &str, url: Option<String>) {
    let bench = setup(url, Duration::ZERO).await;
    // Warm up: plugin instances, connections, statement caches.
    for c in bench.conversations(20).await {
        let run = bench.start(c).await;
        bench.wait(run).await;
    }
    let turns = std::env::var("ORCHESTRA_BENCH_TURNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let conversations = bench.conversations(turns).await;
    let mut times = Vec::with_capacity(turns);
    let cpu_before = cpu_secs();
    for c in conversations {
        let started = Instant::now();
        let run = bench.start(c).await;
        bench.wait(run).await;
        times.push(started.elapsed());
    }
    let cpu_per_turn = (cpu_secs() - cpu_before) / turns as f64;
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let p50 = times[times.len() / 2];
    let p99 = times[times.len() * 99 / 100];
    println!(
        "{name}: one turn at a time (3 steps, instant model): p50 {:.2} ms, p99 {:.2} ms, mean {:.2} ms per turn; {:.3} ms per step (mean); CPU {:.2} ms per turn",
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3 / 3.0,
        cpu_per_turn * 1e3
    );

    let n = 2000;
    let conversations = bench.conversations(n).await;
    let before = bench.completed().await;
    let started = Instant::now();
    let bench = Arc::new(bench);
    let mut tasks = Vec::new();
    for c in conversations {
        let b = bench.clone();
        tasks.push(tokio::spawn(async move { b.start(c).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    bench.wait_completed(before + n as i64).await;
    let elapsed = started.elapsed();
    println!(
        "{name}: {n} turns in flight: {:.2} s, {:.0} runs/s, {:.0} steps/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        3.0 * n as f64 / elapsed.as_secs_f64()
    );
    bench.state.db.close().await;
}

async fn concurrent(name: &str, url: Option<String>, n: usize) {
    let bench = Arc::new(setup(url, Duration::from_secs(1)).await);
    let conversations = bench.conversations(n).await;
    if std::env::var("ORCHESTRA_BENCH_PROGRESS").is_ok() {
        eprintln!("{name}: {n} conversations ready; timing starts");
    }
    let rss_before = rss_mib();
    let cpu_before = cpu_secs();
    let writer_before = thread_cpu_secs("orchestra-write");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in conversations {
        let b = bench.clone();
        tasks.push(tokio::spawn(async move { b.start(c).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let created = started.elapsed();
    bench.wait_completed(n as i64).await;
    let elapsed = started.elapsed();
    println!(
        "{name}: {n} concurrent turns, 1 s per model answer (floor 2 s): all done in {:.2} s (runs created in {:.2} s), {:.2} s of CPU ({:.2} s in the writer's thread); RSS {:.0} MiB before, peak {:.0} MiB (peak heap {:.0} MiB)",
        elapsed.as_secs_f64(),
        created.as_secs_f64(),
        cpu_secs() - cpu_before,
        thread_cpu_secs("orchestra-write") - writer_before,
        rss_before,
        peak_rss_mib(),
        peak_heap_mib()
    );
    bench.state.db.close().await;
}

fn main() {
    orchestra::allocator::tune();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pg = std::env::var("ORCHESTRA_BENCH_DATABASE_URL")
        .or_else(|_| std::env::var("ORCHESTRA_TEST_DATABASE_URL"))
        .ok()
        .filter(|s| !s.is_empty());
    let n: usize = std::env::var("ORCHESTRA_BENCH_CONCURRENT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    let want = |phase: &str| only.as_deref().is_none_or(|o| phase.contains(o));
    rt.block_on(async {
        if want("overhead-sqlite") {
            overhead("sqlite", None).await;
        }
        if let (Some(server), true) = (&pg, want("overhead-postgres")) {
            overhead("postgres", Some(fresh_postgres(server).await)).await;
        }
        if want("concurrent-sqlite") {
            concurrent("sqlite", None, n).await;
        }
        if let (Some(server), true) = (&pg, want("concurrent-postgres")) {
            concurrent("postgres", Some(fresh_postgres(server).await), n).await;
        }
    });
}
