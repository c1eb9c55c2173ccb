//! Builds test plugins with plain `cargo build --release --target
//! wasm32-wasip2` (into `target/plugins`, shared with `build.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Builds the package `package` (or the workspace at `dir`) and returns the
/// bytes of `artifact`.
pub fn build_plugin(dir: &str, package: Option<&str>, artifact: &str) -> Vec<u8> {
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

/// The hostile fixture (`tests/fixtures/hostile`), built once per process.
pub fn hostile_wasm() -> Vec<u8> {
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
#[allow(dead_code)]
pub fn template_wasm() -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| build_plugin("examples/plugin-template", None, "word_stats.wasm"))
        .clone()
}
