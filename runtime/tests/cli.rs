//! The `orchestra` binary as an operator runs it: `serve` with no
//! configuration at all, bad configuration, `migrate`, `user create`,
//! `user reset-password`, `DATABASE_URL` switching to PostgreSQL, and a clean
//! stop on SIGTERM.

#[allow(dead_code)]
#[path = "api/common.rs"]
mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

fn orchestra(data_dir: &Path, database_url: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_orchestra"));
    for (key, _) in std::env::vars() {
        if key.starts_with("ORCHESTRA_") || key == "DATABASE_URL" {
            cmd.env_remove(key);
        }
    }
    cmd.env("ORCHESTRA_DATA_DIR", data_dir)
        .env("ORCHESTRA_LISTEN", "127.0.0.1:0");
    if let Some(url) = database_url {
        cmd.env("DATABASE_URL", url);
    }
    cmd
}

/// Starts `serve` and returns the child and the URL it printed.
fn serve(data_dir: &Path, database_url: Option<&str>) -> (Child, String) {
    let mut child = orchestra(data_dir, database_url)
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
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, url)
}

fn terminate(mut child: Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    for _ in 0..100 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(
                status.success(),
                "orchestra exited with {status} after SIGTERM"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().ok();
    panic!("orchestra did not stop within 10 s of SIGTERM");
}

fn create_user(
    data_dir: &Path,
    database_url: Option<&str>,
    email: &str,
    role: &str,
    password: &str,
) {
    let mut child = orchestra(data_dir, database_url)
        .args([
            "user",
            "create",
            "--email",
            email,
            "--role",
            role,
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "user create failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(email));
}

async fn login(url: &str, email: &str, password: &str) -> reqwest::StatusCode {
    reqwest::Client::new()
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn serve_with_no_configuration_creates_everything_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (child, url) = serve(&data, None);

    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(format!("{url}/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let resp = client
        .post(format!("{url}/api/v1/auth/register"))
        .json(&json!({ "email": "op@example.com", "password": "operator password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let docs = client.get(format!("{url}/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), 200);

    assert!(data.join("orchestra.db").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for key in ["jwt.key", "encryption.key"] {
            let mode = std::fs::metadata(data.join("keys").join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key} must be private");
        }
    }
    terminate(child);

    // A restart keeps the keys: the account still logs in and old tokens stay valid.
    let (child, url) = serve(&data, None);
    assert_eq!(
        login(&url, "op@example.com", "operator password").await,
        200
    );
    terminate(child);
}

#[test]
fn bad_configuration_is_named_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = orchestra(dir.path(), None)
        .env("ORCHESTRA_LISTEN", "not-an-address")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ORCHESTRA_LISTEN"), "{stderr}");

    let out = orchestra(dir.path(), None)
        .env("ORCHESTRA_HTTP__BODY_LIMIT_BYTES", "lots")
        .arg("migrate")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.to_lowercase().contains("body_limit_bytes"),
        "{stderr}"
    );

    let file = dir.path().join("orchestra.toml");
    std::fs::write(&file, "[auth]\naccess_token_ttl_secs = 0\n").unwrap();
    let out = orchestra(dir.path(), None)
        .args(["--config", file.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.access_token_ttl_secs"));

    let out = orchestra(dir.path(), None)
        .args([
            "--config",
            dir.path().join("missing.toml").to_str().unwrap(),
            "migrate",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
}

async fn operator_bootstrap(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = orchestra(&data, database_url)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    create_user(
        &data,
        database_url,
        "boss@example.com",
        "admin",
        "first password",
    );
    let mut reset = orchestra(&data, database_url)
        .args([
            "user",
            "reset-password",
            "--email",
            "boss@example.com",
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    writeln!(reset.stdin.take().unwrap(), "second password").unwrap();
    assert!(reset.wait().unwrap().success());

    let short = orchestra(&data, database_url)
        .args(["user", "create", "--email", "x@example.com"])
        .env("ORCHESTRA_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!short.status.success());
    assert!(String::from_utf8_lossy(&short.stderr).contains("password"));

    let (child, url) = serve(&data, database_url);
    assert_eq!(login(&url, "boss@example.com", "first password").await, 401);
    assert_eq!(
        login(&url, "boss@example.com", "second password").await,
        200
    );
    let me: serde_json::Value = reqwest::Client::new()
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({ "email": "boss@example.com", "password": "second password" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(me["user"]["role"], "admin");
    terminate(child);
}

#[tokio::test]
async fn operators_bootstrap_accounts_from_the_command_line_on_sqlite() {
    operator_bootstrap(None).await;
}

#[tokio::test]
async fn database_url_switches_the_same_binary_to_postgres() {
    if let Some(server) = common::postgres_url() {
        let url = common::fresh_postgres_database(&server).await;
        operator_bootstrap(Some(&url)).await;
    }
}

#[test]
fn the_readme_walkthrough_runs_against_a_fresh_server() {
    if Command::new("curl").arg("--version").output().is_err() {
        eprintln!("skipping: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (child, url) = serve(&dir.path().join("data"), None);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/walkthrough.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("ORCHESTRA_URL", &url)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("What is WebAssembly?"), "{stdout}");
    assert!(stdout.contains(r#""result":{"result":98.0}"#), "{stdout}");
    assert!(stdout.contains(r#""replaced":false"#), "{stdout}");
    assert!(
        stdout.contains(r#""effective":{"http_hosts":["example.com"]"#),
        "{stdout}"
    );
    assert!(
        stdout.contains("orc_"),
        "the API key is printed once: {stdout}"
    );
    // Running it twice works too (it logs in and reuses the agent).
    let again = Command::new("bash")
        .arg(&script)
        .env("ORCHESTRA_URL", &url)
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    terminate(child);
}
