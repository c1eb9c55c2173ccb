//! Sandbox benchmark (run on demand: `cargo bench --bench sandbox`). Prints,
//! for the bundled calculator plugin: compile time, cached load time, per-call
//! latency with a fresh instance per call (argument validation included), calls
//! per second on 1 and 2 threads, and the memory an instance starts with;
//! and the latency of an HTTP endpoint served beside the sandbox, idle and
//! while hostile guests spin on every core. These are figures to read, not
//! assertions.

#[path = "../tests/support/build.rs"]
#[allow(dead_code)]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use orchestra::sandbox::{CallLimits, EngineLimits, LoadedPlugin, Sandbox};
use serde_json::json;

fn calculator() -> Vec<u8> {
    orchestra::tools::BUNDLED
        .iter()
        .find(|(name, _)| *name == "calculator")
        .expect("the calculator is bundled")
        .1
        .to_vec()
}

fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn throughput(plugin: &Arc<LoadedPlugin>, threads: usize, seconds: u64) -> f64 {
    let rt = runtime(threads);
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    rt.block_on(async {
        let deadline = started + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for _ in 0..threads * 2 {
            let plugin = plugin.clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                let args = json!({ "expression": "1 + 2 * 3" });
                while Instant::now() < deadline {
                    plugin.call("evaluate", &args).await.expect("call succeeds");
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let wasm = calculator();
    let cache = tempfile::tempdir().unwrap();
    let rt = runtime(2);

    // Compile (cold: no cache) and load from the on-disk cache (as after a restart).
    let cold =
        Arc::new(Sandbox::new(EngineLimits::default(), Some(cache.path().to_path_buf())).unwrap());
    let t = Instant::now();
    rt.block_on(cold.load(wasm.clone(), CallLimits::default()))
        .unwrap();
    let compile = t.elapsed();
    let mut cached_loads = Vec::new();
    let mut plugin = None;
    for _ in 0..5 {
        let warm = Arc::new(
            Sandbox::new(EngineLimits::default(), Some(cache.path().to_path_buf())).unwrap(),
        );
        let t = Instant::now();
        let loaded = rt
            .block_on(warm.load(wasm.clone(), CallLimits::default()))
            .unwrap();
        cached_loads.push(t.elapsed());
        plugin = Some(Arc::new(loaded));
    }
    cached_loads.sort();
    let plugin = plugin.unwrap();
    drop(rt);

    // How the pool resets memory between calls changes the per-call cost and
    // how it scales over threads: zeroing resident pages (keep_resident),
    // finding dirty pages with PAGEMAP_SCAN, or madvise (and page faults on
    // the next call), with decommits flushed one by one or in batches.
    println!("pool reset settings (keep_resident, pagemap_scan, decommit_batch):");
    for (keep, scan, batch) in [
        (0usize, false, 1usize),
        (64 << 10, false, 1),
        (64 << 10, false, 32),
        (1 << 20, false, 1),
        (1 << 20, true, 1),
        (4 << 20, true, 1),
        (4 << 20, true, 32),
    ] {
        let limits = EngineLimits {
            memory_keep_resident: keep,
            pagemap_scan: scan,
            decommit_batch_size: batch,
            ..EngineLimits::default()
        };
        let sandbox = Arc::new(Sandbox::new(limits, Some(cache.path().to_path_buf())).unwrap());
        let rt = runtime(1);
        let plugin = Arc::new(
            rt.block_on(sandbox.load(wasm.clone(), CallLimits::default()))
                .unwrap(),
        );
        let args = json!({ "expression": "2 * (3 + 4) ^ 2 / sqrt(16)" });
        let mut samples = Vec::with_capacity(5_000);
        rt.block_on(async {
            for _ in 0..5_500 {
                let t = Instant::now();
                plugin.call("evaluate", &args).await.unwrap();
                samples.push(t.elapsed());
            }
        });
        drop(rt);
        samples.drain(..500);
        samples.sort();
        println!(
            "  {:>7} B, scan {:<5}, batch {:>2}: p50 {:>5.1} µs, {:>6.0} calls/s on 1 thread, {:>6.0} on 2",
            keep,
            scan,
            batch,
            percentile(&samples, 0.5).as_secs_f64() * 1e6,
            throughput(&plugin, 1, 2),
            throughput(&plugin, 2, 2),
        );
    }

    // Latency: one call at a time, a fresh instance each, validation included.
    let rt = runtime(1);
    let args = json!({ "expression": "2 * (3 + 4) ^ 2 / sqrt(16)" });
    let mut samples = Vec::with_capacity(20_000);
    rt.block_on(async {
        for _ in 0..2_000 {
            plugin.call("evaluate", &args).await.unwrap();
        }
        for _ in 0..20_000 {
            let t = Instant::now();
            plugin.call("evaluate", &args).await.unwrap();
            samples.push(t.elapsed());
        }
    });
    drop(rt);
    samples.sort();

    let one = throughput(&plugin, 1, 3);
    let two = throughput(&plugin, 2, 3);

    println!(
        "sandbox benchmark: calculator plugin ({} KiB component)",
        wasm.len() / 1024
    );
    println!(
        "  compile (cold, no cache)     {:>10.2} ms",
        compile.as_secs_f64() * 1e3
    );
    println!(
        "  load from disk cache (p50)   {:>10.2} ms",
        cached_loads[2].as_secs_f64() * 1e3
    );
    println!(
        "  call latency p50             {:>10.1} µs",
        percentile(&samples, 0.50).as_secs_f64() * 1e6
    );
    println!(
        "  call latency p99             {:>10.1} µs",
        percentile(&samples, 0.99).as_secs_f64() * 1e6
    );
    println!("  calls per second, 1 thread   {:>10.0}", one);
    println!("  calls per second, 2 threads  {:>10.0}", two);
    // Memory per concurrent instance: hold 32 instances that have each run
    // one call, and divide the growth of the resident set.
    let rt = runtime(1);
    let before = status_kib("VmRSS");
    let held = rt
        .block_on(plugin.hold_instances(32, "evaluate", &args))
        .unwrap();
    let after = status_kib("VmRSS");
    println!(
        "  memory per live instance     {:>10.0} KiB (RSS growth with 32 held)",
        (after.saturating_sub(before)) as f64 / 32.0
    );
    drop(held);
    drop(rt);
    println!(
        "  process peak RSS             {:>10} KiB",
        status_kib("VmHWM")
    );
    api_latency_beside_hostile_guests();
}

/// An HTTP endpoint served on a runtime like the server's (one worker per
/// CPU) that also drives tool calls, as the server does; its latency from a
/// client on another thread, idle and while calls of a busy-looping tool
/// keep every core of the guests' threads busy.
fn api_latency_beside_hostile_guests() {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let api = runtime(cpus);
    let sandbox = Arc::new(Sandbox::new(EngineLimits::default(), None).unwrap());
    let limits = CallLimits {
        timeout_ms: 60_000,
        ..CallLimits::default()
    };
    let hostile = Arc::new(
        api.block_on(sandbox.load(support::hostile_wasm(), limits))
            .unwrap(),
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    api.spawn(async move {
        let app = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" }));
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, app).await.unwrap();
    });
    let measure = || {
        let client = runtime(1);
        client.block_on(async {
            let http = reqwest::Client::new();
            let url = format!("http://{addr}/healthz");
            let mut samples = Vec::with_capacity(400);
            for i in 0..450 {
                let t = Instant::now();
                http.get(&url).send().await.unwrap().text().await.unwrap();
                if i >= 50 {
                    samples.push(t.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            samples.sort();
            samples
        })
    };
    let idle = measure();
    // Calls made for as many users as there are CPUs, two each: every
    // guest thread spins.
    let spinning: Vec<_> = (0..cpus * 2)
        .map(|i| {
            let hostile = hostile.clone();
            api.spawn(async move {
                let ctx = orchestra::sandbox::CallContext {
                    user: Some(format!("user-{}", i / 2)),
                    ..Default::default()
                };
                let _ = hostile.call_with("spin", &json!({}), &ctx).await;
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let busy = measure();
    for task in spinning {
        task.abort();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("API latency beside the sandbox ({cpus} CPUs, GET /healthz over loopback):");
    println!(
        "  idle                         p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        ms(percentile(&idle, 0.5)),
        ms(percentile(&idle, 0.99)),
        ms(*idle.last().unwrap())
    );
    println!(
        "  {:>2} spinning guest calls      p50 {:>7.2} ms   p99 {:>7.2} ms   max {:>7.2} ms",
        cpus * 2,
        ms(percentile(&busy, 0.5)),
        ms(percentile(&busy, 0.99)),
        ms(*busy.last().unwrap())
    );
    api.shutdown_background();
}

/// A `/proc/self/status` field, in KiB.
fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
