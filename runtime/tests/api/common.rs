//! The test harness: `spawn_app` starts the real server in-process on a free
//! port against a fresh, migrated database (a temporary SQLite file, or a new
//! PostgreSQL database), and `TestApp` talks to it over HTTP.
//!
//! PostgreSQL tests need `ORCHESTRA_TEST_DATABASE_URL` (a server URL whose
//! user may create databases; `scripts/test` starts one). Without it they are
//! skipped with a notice, except under `CI=true`, where they fail.

use std::time::Duration;

use orchestra::config::Config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::sync::oneshot;

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A running server and a client for it.
pub struct TestApp {
    pub base: String,
    /// The configuration the server runs with (to start another on the same data).
    pub config: Config,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
    shutdown: Option<oneshot::Sender<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: String,
    pub token: String,
    pub refresh: String,
}

/// Runs `$body(app)` once on SQLite and once on PostgreSQL.
#[macro_export]
macro_rules! dual_test {
    ($name:ident, $body:expr) => {
        dual_test!($name, |_config| {}, $body);
    };
    ($name:ident, $configure:expr, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let app =
                    $crate::common::spawn_app_with($crate::common::Backend::Sqlite, $configure)
                        .await
                        .expect("SQLite is always available");
                ($body)(app).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(app) =
                    $crate::common::spawn_app_with($crate::common::Backend::Postgres, $configure)
                        .await
                {
                    ($body)(app).await;
                }
            }
        }
    };
}

/// The PostgreSQL server URL for tests, or `None` (skip) outside CI.
pub fn postgres_url() -> Option<String> {
    match std::env::var("ORCHESTRA_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI=true but ORCHESTRA_TEST_DATABASE_URL is not set: PostgreSQL tests must run in CI")
        }
        _ => {
            eprintln!("skipping a PostgreSQL test: ORCHESTRA_TEST_DATABASE_URL is not set (scripts/test sets it)");
            None
        }
    }
}

/// Replaces the database name in a PostgreSQL URL.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_part = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    }
}

/// A fresh, empty PostgreSQL database; returns its URL.
pub async fn fresh_postgres_database(server: &str) -> String {
    use sqlx::Connection;
    let name = format!("orchestra_test_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(server)
        .await
        .expect("connect to ORCHESTRA_TEST_DATABASE_URL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    conn.close().await.ok();
    with_database(server, &name)
}

/// Starts the server after `configure` adjusts the configuration.
pub async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Config),
) -> Option<TestApp> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut config = Config {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".to_owned(),
        ..Config::default()
    };
    config.database.max_connections = 5;
    // One compiled-plugin cache for the whole test run: each app still loads
    // the plugins, but compiles them only once.
    config.sandbox.cache_dir = Some(std::env::temp_dir().join("orchestra-test-plugin-cache"));
    if backend == Backend::Postgres {
        let server = postgres_url()?;
        config.database_url = Some(fresh_postgres_database(&server).await);
    }
    configure(&mut config);
    config.validate().expect("valid test configuration");
    Some(serve(config, dir).await)
}

/// Builds the app for `config` and serves it on a free port.
async fn serve(config: Config, dir: tempfile::TempDir) -> TestApp {
    let state = orchestra::server::build_state(config.clone())
        .await
        .expect("build the app");
    let state_config = (*state.config).clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        orchestra::server::serve(listener, state, async {
            let _ = rx.await;
        })
        .await
        .expect("server runs");
    });
    TestApp {
        base: format!("http://{addr}"),
        config: state_config,
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        _dir: dir,
        shutdown: Some(tx),
    }
}

impl TestApp {
    /// Stops serving (a graceful shutdown: running runs are handed back to
    /// the queue); the data stays for another node.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Another node on the same database and keys, after `configure`.
    pub async fn second_node(&self, configure: impl FnOnce(&mut Config)) -> TestApp {
        let mut config = self.config.clone();
        configure(&mut config);
        serve(config, tempfile::tempdir().expect("temporary directory")).await
    }

    /// Sends a request; returns the status and the JSON body (`Null` if none).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|_| panic!("non-JSON body for {path}: {text}"))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PATCH, path, Some(token), Some(body))
            .await
    }

    pub async fn put(&self, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(token), Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, Some(token), None).await
    }

    /// Registers an account (the first one becomes admin) and logs it in.
    pub async fn register(&self, email: &str) -> Session {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/register",
                None,
                Some(json!({ "email": email, "password": "correct horse battery" })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {email}: {body}");
        session(&body)
    }

    /// Logs in with the test password.
    pub async fn login(&self, email: &str) -> Session {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": email, "password": "correct horse battery" })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {email}: {body}");
        session(&body)
    }

    /// An admin (the first registered user) and a second, plain user.
    pub async fn admin_and_user(&self) -> (Session, Session) {
        let admin = self.register("admin@example.com").await;
        let user = self.add_user(&admin, "user@example.com", "user").await;
        (admin, user)
    }

    /// Has `admin` create an account with `role`, then logs it in.
    pub async fn add_user(&self, admin: &Session, email: &str, role: &str) -> Session {
        let (status, body) = self
            .post(
                "/api/v1/users",
                &admin.token,
                json!({ "email": email, "password": "correct horse battery", "role": role }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create {email}: {body}");
        self.login(email).await
    }

    /// Creates an agent named `name` for `session`; returns its id.
    pub async fn agent(&self, session: &Session, name: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/agents",
                &session.token,
                json!({
                    "name": name,
                    "instructions": "Be helpful.",
                    "model": { "provider": "openai", "model": "gpt-4o-mini", "parameters": { "temperature": 0.2 } },
                    "tools": ["calculator__evaluate"],
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create agent: {body}");
        body["id"].as_str().unwrap().to_owned()
    }

    /// Creates an API key named `name` for `session`; returns its id and
    /// its secret.
    pub async fn api_key(&self, session: &Session, name: &str) -> (String, String) {
        let (status, body) = self
            .post("/api/v1/api-keys", &session.token, json!({ "name": name }))
            .await;
        assert_eq!(status, StatusCode::CREATED, "create API key: {body}");
        (
            body["id"].as_str().unwrap().to_owned(),
            body["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Creates a conversation with `agent`; returns its id.
    pub async fn conversation(&self, session: &Session, agent: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/conversations",
                &session.token,
                json!({ "agent_id": agent, "title": "chat" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create conversation: {body}");
        body["id"].as_str().unwrap().to_owned()
    }
}

fn session(body: &Value) -> Session {
    Session {
        user_id: body["user"]["id"].as_str().unwrap().to_owned(),
        token: body["access_token"].as_str().unwrap().to_owned(),
        refresh: body["refresh_token"].as_str().unwrap().to_owned(),
    }
}

/// Asserts an error answer: the status and the `ErrorResponse` code.
#[track_caller]
pub fn assert_error(result: &(StatusCode, Value), status: StatusCode, code: &str) {
    assert_eq!(result.0, status, "unexpected status; body: {}", result.1);
    assert_eq!(
        result.1["error"], code,
        "unexpected error code; body: {}",
        result.1
    );
    assert!(
        result.1["message"].as_str().is_some_and(|m| !m.is_empty()),
        "error without message: {}",
        result.1
    );
}

impl TestApp {
    /// Logs in with an explicit password.
    pub async fn login_with(&self, email: &str, password: &str) -> Session {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/auth/login",
                None,
                Some(json!({ "email": email, "password": password })),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {email}: {body}");
        session(&body)
    }
}
