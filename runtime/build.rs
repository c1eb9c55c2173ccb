//! Builds the first-party plugins (`plugins/*`) for `wasm32-wasip2` and
//! embeds them in the binary, so a fresh install has them without any step.
//!
//! The plugins are built by a nested `cargo build --release` into their own
//! target directory (`target/plugins`), so it never contends with the outer
//! build's lock. `bundled.rs` in `OUT_DIR` lists them for `tools::bundled`.

use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    println!(
        "cargo:rerun-if-changed={}",
        root.join("plugin-sdk").display()
    );
    println!("cargo:rerun-if-changed={}", root.join("plugins").display());
    // `sqlx::migrate!` embeds the migrations; on stable Rust it cannot tell
    // cargo that it read them.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("migrations").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.toml").display()
    );
    println!(
        "cargo:rerun-if-changed={}",
        root.join("Cargo.lock").display()
    );

    let mut plugins: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(root.join("plugins")).expect("plugins/ exists") {
        let dir = entry.unwrap().path();
        let manifest = dir.join("Cargo.toml");
        if !manifest.exists() {
            continue;
        }
        println!("cargo:rerun-if-changed={}", dir.display());
        let text = std::fs::read_to_string(&manifest).unwrap();
        let package = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("name = \"")
                    .and_then(|r| r.strip_suffix('"'))
            })
            .expect("plugin package name")
            .to_owned();
        let short = dir.file_name().unwrap().to_string_lossy().into_owned();
        plugins.push((short, package));
    }
    plugins.sort();

    let cargo_target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    let target_dir = cargo_target.join("plugins");
    check_target_installed();

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    for (_, package) in &plugins {
        cmd.args(["-p", package]);
    }
    // Nothing of the outer build's configuration applies to the plugins.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("running cargo to build the bundled plugins");
    if !status.success() {
        panic!("building the bundled plugins for {TARGET} failed (see the errors above)");
    }

    let mut source = String::from("/// First-party plugins built from `plugins/`: (directory name, component bytes).\npub static BUNDLED: &[(&str, &[u8])] = &[\n");
    for (short, package) in &plugins {
        let wasm = target_dir
            .join(TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        assert!(wasm.exists(), "missing {}", wasm.display());
        source.push_str(&format!(
            "    ({short:?}, include_bytes!({:?})),\n",
            wasm.display().to_string()
        ));
    }
    source.push_str("];\n");
    std::fs::write(out_dir.join("bundled.rs"), source).unwrap();
}

fn check_target_installed() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let libdir = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let installed = libdir.is_some_and(|dir| Path::new(&dir).exists());
    if !installed {
        panic!(
            "the {TARGET} Rust target is not installed; run `rustup target add {TARGET}` \
             (./scripts/serve and ./scripts/test do it for you)"
        );
    }
}
