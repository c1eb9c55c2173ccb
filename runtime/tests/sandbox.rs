//! The sandbox's promises, proven with a purpose-built hostile plugin
//! (`tests/fixtures/hostile`): every abuse fails only its own call, within
//! its deadline, while other calls in flight complete.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use orchestra::sandbox::{CallLimits, EngineLimits, LoadedPlugin, Sandbox, ToolError};
use serde_json::{json, Value};

/// Builds a plugin with plain `cargo build --release --target wasm32-wasip2`
/// (into `target/plugins`, shared with `build.rs`) and returns its bytes.
fn build_plugin(dir: &str, package: Option<&str>, artifact: &str) -> Vec<u8> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"))
        .join("plugins");
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(root.join(dir))
        .args([
            "build",
            "--quiet",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--target-dir",
        ])
        .arg(&target);
    if let Some(package) = package {
        cmd.args(["-p", package]);
    }
    let status = cmd.status().expect("run cargo");
    assert!(status.success(), "building {dir} failed");
    std::fs::read(target.join("wasm32-wasip2/release").join(artifact)).unwrap()
}

/// The hostile fixture, built once per test process.
fn hostile_wasm() -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        build_plugin(
            ".",
            Some("orchestra-plugin-hostile"),
            "orchestra_plugin_hostile.wasm",
        )
    })
    .clone()
}

/// `examples/plugin-template`, built exactly as its README tells an author.
fn template_wasm() -> Vec<u8> {
    build_plugin("examples/plugin-template", None, "word_stats.wasm")
}

fn calculator_wasm() -> Vec<u8> {
    orchestra::tools::BUNDLED
        .iter()
        .find(|(name, _)| *name == "calculator")
        .expect("the calculator is bundled")
        .1
        .to_vec()
}

fn limits() -> CallLimits {
    CallLimits {
        max_memory_bytes: 32 << 20,
        timeout_ms: 500,
        max_output_bytes: 1 << 20,
        max_log_lines: 10,
    }
}

async fn load(sandbox: &Arc<Sandbox>, wasm: Vec<u8>) -> Arc<LoadedPlugin> {
    Arc::new(sandbox.load(wasm, limits()).await.expect("plugin loads"))
}

fn sandbox(cache: Option<PathBuf>) -> Arc<Sandbox> {
    Arc::new(Sandbox::new(EngineLimits::default(), cache).expect("sandbox"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calculator_runs_in_the_sandbox() {
    let sandbox = sandbox(None);
    let calc = load(&sandbox, calculator_wasm()).await;
    let manifest = calc.manifest();
    assert_eq!(manifest.name, "calculator");
    assert_eq!(manifest.tools.len(), 1);
    assert!(manifest.tools[0].read_only);
    assert_eq!(
        manifest.tools[0].input_schema["required"],
        json!(["expression"])
    );
    let out = calc
        .call("evaluate", &json!({ "expression": "2 * (3 + 4) ^ 2" }))
        .await
        .unwrap();
    assert_eq!(out, json!({ "result": 98.0 }));
    let bad = calc
        .call("evaluate", &json!({ "expression": "2 +" }))
        .await
        .unwrap_err();
    assert!(matches!(bad, ToolError::InvalidArguments(_)), "{bad:?}");
    let missing = calc
        .call("evaluate", &json!({ "expr": "1" }))
        .await
        .unwrap_err();
    assert!(
        matches!(&missing, ToolError::InvalidArguments(m) if m.contains("expression")),
        "{missing:?}"
    );
    let unknown = calc.call("nope", &json!({})).await.unwrap_err();
    assert!(matches!(unknown, ToolError::UnknownTool(_)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_abuse_fails_only_its_own_call() {
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;
    let call = |tool: &'static str, args: Value| {
        let hostile = hostile.clone();
        async move {
            let started = Instant::now();
            let result = hostile.call(tool, &args).await;
            (result, started.elapsed())
        }
    };

    let (spin, took) = call("spin", json!({})).await;
    assert_eq!(spin, Err(ToolError::Timeout(500)));
    assert!(
        took < Duration::from_secs(5),
        "the deadline stopped the loop ({took:?})"
    );

    let (sleep, took) = call("sleep", json!({})).await;
    assert_eq!(
        sleep,
        Err(ToolError::Timeout(500)),
        "a blocking host call is cut by the deadline too"
    );
    assert!(took < Duration::from_secs(5));

    let (bomb, _) = call("allocate", json!({})).await;
    assert!(
        matches!(&bomb, Err(ToolError::Crashed(m)) if m.contains("memory")),
        "{bomb:?}"
    );

    let (deep, _) = call("recurse", json!({})).await;
    assert!(
        matches!(&deep, Err(ToolError::Crashed(m)) if m.contains("stack overflow")),
        "{deep:?}"
    );
    // The same on the wasm stack itself (not the guest's shadow stack) is covered by
    // wasmtime's `max_wasm_stack`; either way only this call fails.

    let (flood, _) = call("flood", json!({})).await;
    assert!(
        matches!(&flood, Err(ToolError::InvalidOutput(m)) if m.contains("limit")),
        "{flood:?}"
    );

    let (panic, _) = call("panic", json!({})).await;
    assert!(
        matches!(&panic, Err(ToolError::Crashed(m)) if m.contains("panicked on purpose")),
        "{panic:?}"
    );

    let (garbage, _) = call("garbage", json!({})).await;
    assert!(
        matches!(&garbage, Err(ToolError::InvalidOutput(m)) if m.contains("not JSON")),
        "{garbage:?}"
    );

    let (lie, _) = call("lie", json!({})).await;
    assert!(
        matches!(&lie, Err(ToolError::InvalidOutput(m)) if m.contains("output schema")),
        "{lie:?}"
    );

    let (fail, _) = call("fail", json!({})).await;
    assert_eq!(fail, Err(ToolError::Failed("failed on purpose".into())));

    // The arguments are checked against the schema before the plugin runs.
    let (bad, _) = call("echo", json!({ "n": -1 })).await;
    assert!(
        matches!(&bad, Err(ToolError::InvalidArguments(m)) if m.contains("/n")),
        "{bad:?}"
    );
    let (ok, _) = call("echo", json!({ "n": 3 })).await;
    assert_eq!(
        ok,
        Ok(json!({ "n": 3 })),
        "the plugin still works after every crash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn there_is_no_ambient_authority() {
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;

    let file = hostile.call("read_file", &json!({})).await.unwrap();
    assert!(
        file.get("Err").is_some(),
        "/etc/passwd must be unreadable: {file}"
    );
    assert!(!file.to_string().contains("root:"));

    let env = hostile.call("env", &json!({})).await.unwrap();
    assert_eq!(env, json!([]), "no host environment variable is visible");

    // A listener the plugin would reach if sockets were open.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connect = hostile
        .call("connect", &json!({ "addr": addr }))
        .await
        .unwrap();
    assert!(
        connect.get("Err").is_some(),
        "TCP must be refused: {connect}"
    );

    let resolve = hostile.call("resolve", &json!({})).await.unwrap();
    assert!(
        resolve.get("Err").is_some(),
        "name lookup must be refused: {resolve}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_calls_do_not_disturb_calls_in_flight() {
    let sandbox = sandbox(None);
    let hostile = load(&sandbox, hostile_wasm()).await;
    let calc = load(&sandbox, calculator_wasm()).await;

    let mut abuse = Vec::new();
    for tool in ["spin", "allocate", "recurse", "panic", "sleep", "flood"] {
        let hostile = hostile.clone();
        abuse.push(tokio::spawn(
            async move { hostile.call(tool, &json!({})).await },
        ));
    }
    let mut good = Vec::new();
    for i in 0..200 {
        let calc = calc.clone();
        good.push(tokio::spawn(async move {
            calc.call("evaluate", &json!({ "expression": format!("{i} * 2") }))
                .await
        }));
    }
    for (i, handle) in good.into_iter().enumerate() {
        assert_eq!(
            handle.await.unwrap(),
            Ok(json!({ "result": (i * 2) as f64 }))
        );
    }
    for handle in abuse {
        assert!(handle.await.unwrap().is_err());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_plugins_are_cached_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let first = sandbox(Some(cache.clone()));
    load(&first, calculator_wasm()).await;
    let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(files.len(), 1, "one compiled artifact");
    // A new engine (as after a restart) loads from the cache and works.
    let second = sandbox(Some(cache.clone()));
    let calc = load(&second, calculator_wasm()).await;
    assert_eq!(
        calc.call("evaluate", &json!({ "expression": "1+1" })).await,
        Ok(json!({ "result": 2.0 }))
    );
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
}

#[tokio::test]
async fn what_is_not_a_plugin_is_refused_clearly() {
    let sandbox = sandbox(None);
    let err = sandbox
        .load(b"not wasm at all".to_vec(), limits())
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("not a valid WebAssembly component"),
        "{err:#}"
    );
    // A core module is not a component.
    let module = vec![0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00];
    assert!(sandbox.load(module, limits()).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_template_builds_and_runs() {
    let sandbox = sandbox(None);
    let plugin = load(&sandbox, template_wasm()).await;
    assert_eq!(plugin.manifest().name, "word-stats");
    let tool = &plugin.manifest().tools[0];
    assert_eq!(
        tool.input_schema["properties"]["text"]["description"],
        "The text to measure."
    );
    assert!(tool.output_schema.is_some());
    let out = plugin
        .call("stats", &json!({ "text": "one two\nthree" }))
        .await
        .unwrap();
    assert_eq!(out, json!({ "words": 3, "characters": 13, "lines": 2 }));
}
