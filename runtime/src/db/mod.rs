//! Storage: one handle over SQLite or PostgreSQL, migrations, and the
//! [`on_db!`] macro that lets a repository write a query once for both.
//!
//! Repositories hold a [`Db`] and run each query through `on_db!`, which
//! expands the body once per backend with a concretely typed pool, so the same
//! SQL text and the same row types are checked against both drivers. Native
//! types are used on each side (UUID, JSONB, TIMESTAMPTZ on PostgreSQL; BLOB,
//! TEXT on SQLite), chosen by sqlx's type mappings, not by string conversions.

pub mod link;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::config::Config;

/// A pool on one of the two supported backends.
#[derive(Clone, Debug)]
pub enum Db {
    /// Embedded SQLite: one node, no set-up.
    Sqlite(SqlitePool),
    /// PostgreSQL: one or many nodes.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the concrete pool of `$db` (and, when
/// given, `$ty` bound to the backend type), once per backend.
#[macro_export]
macro_rules! on_db {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => $body,
            $crate::db::Db::Postgres($pool) => $body,
        }
    };
    ($db:expr, $pool:ident, $ty:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite($pool) => {
                #[allow(dead_code)]
                type $ty = ::sqlx::Sqlite;
                $body
            }
            $crate::db::Db::Postgres($pool) => {
                #[allow(dead_code)]
                type $ty = ::sqlx::Postgres;
                $body
            }
        }
    };
}

/// Runs one statement that checks and changes at once, so that concurrent
/// callers cannot both pass the check: `$exec` is the executor `$body` uses.
/// On SQLite a single writing statement holds the write lock from its
/// start; on PostgreSQL it runs in a transaction holding the advisory lock
/// `$lock` (an `i64`), which every caller of that kind takes, so each reads
/// what the one before committed.
#[macro_export]
macro_rules! serialised {
    ($db:expr, $lock:expr, $exec:ident => $body:expr) => {
        match $db {
            $crate::db::Db::Sqlite(pool) => {
                let $exec = pool;
                $body
            }
            $crate::db::Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                ::sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind($lock)
                    .execute(&mut *tx)
                    .await?;
                let out = {
                    let $exec = &mut *tx;
                    $body
                };
                tx.commit().await?;
                out
            }
        }
    };
}

/// SQLite's process-wide settings, made once before its first use (SQLite
/// accepts them only before it initialises): no memory statistics, which
/// otherwise take a global mutex around every allocation and free.
fn sqlite_process_settings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_config` is called before any connection of this
        // process exists (it answers SQLITE_MISUSE, harmlessly, if SQLite
        // was initialised already), with an integer as MEMSTATUS expects.
        let code = unsafe {
            rusqlite::ffi::sqlite3_config(
                rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS,
                0 as std::ffi::c_int,
            )
        };
        if code != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(code, "SQLite was initialised before its settings");
        }
    });
}

impl Db {
    /// Opens a pool for `config`'s database, creating the SQLite file if needed.
    pub async fn connect(config: &Config) -> anyhow::Result<Db> {
        let url = config.effective_database_url();
        let acquire = Duration::from_secs(config.database.acquire_timeout_secs);
        if url.starts_with("postgres") {
            let pool = PgPoolOptions::new()
                .max_connections(config.database.max_connections)
                .acquire_timeout(acquire)
                .connect(&url)
                .await
                .context("connecting to PostgreSQL (DATABASE_URL)")?;
            Ok(Db::Postgres(pool))
        } else {
            sqlite_process_settings();
            let options = SqliteConnectOptions::from_str(&url)
                .with_context(|| format!("parsing SQLite URL {url:?}"))?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(10));
            // A connection to a local file does not go stale: no ping (a
            // round trip to the connection's thread) before every use.
            let pool = SqlitePoolOptions::new()
                .max_connections(config.database.max_connections)
                .acquire_timeout(acquire)
                .test_before_acquire(false)
                .connect_with(options)
                .await
                .with_context(|| format!("opening SQLite database {url:?}"))?;
            Ok(Db::Sqlite(pool))
        }
    }

    /// Applies every pending migration of this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        match self {
            Db::Sqlite(pool) => sqlx::migrate!("../migrations/sqlite").run(pool).await,
            Db::Postgres(pool) => sqlx::migrate!("../migrations/postgres").run(pool).await,
        }
        .context("applying database migrations")
    }

    /// True when a trivial query succeeds.
    pub async fn ping(&self) -> bool {
        on_db!(self, pool => sqlx::query("SELECT 1").execute(pool).await.is_ok())
    }

    /// The backend's name, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection.
    pub async fn close(&self) {
        on_db!(self, pool => pool.close().await)
    }
}

/// The current time at the precision both backends store (microseconds), so a
/// value read back compares equal to the value written.
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// Appends `(id, id, ...)`, each bound, to `qb` (after `... IN `).
pub fn push_ids<'a, DB>(qb: &mut sqlx::QueryBuilder<'a, DB>, ids: &[uuid::Uuid])
where
    DB: sqlx::Database,
    uuid::Uuid: sqlx::Encode<'a, DB> + sqlx::Type<DB>,
{
    qb.push("(");
    let mut list = qb.separated(", ");
    for id in ids {
        list.push_bind(*id);
    }
    qb.push(")");
}

/// Escapes `%`, `_` and `\` for a `LIKE ... ESCAPE '\'` pattern.
pub fn like_pattern(needle: &str) -> String {
    let mut out = String::with_capacity(needle.len() + 2);
    out.push('%');
    for c in needle.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}
