//! Statements built once for both backends, run on one connection of
//! either: PostgreSQL through sqlx, SQLite directly on the calling thread.
//!
//! sqlx runs each SQLite connection on a thread of its own, so every
//! statement is a round trip between threads (two context switches, and on
//! a busy machine a wait for a CPU each way). A writer that issues several
//! statements per transaction, thousands of times a second, spends more on
//! those trips than in SQLite. [`Link::Sqlite`] drives the same
//! `libsqlite3` through rusqlite from the caller's thread instead, and binds
//! values as sqlx encodes them (its own `Encode` implementations fill the
//! argument list), so what it stores reads back through sqlx unchanged.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset, NaiveDateTime, Utc};
use sqlx::encode::IsNull;
use sqlx::error::{BoxDynError, DatabaseError, ErrorKind};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::sqlite::SqliteArgumentValue;
use sqlx::{Arguments, Encode, FromRow, Postgres, Sqlite, Type};
use uuid::Uuid;

/// A value either backend can bind, as sqlx encodes it for each.
pub trait Bind<'q>: Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Send + 'q {}

impl<'q, T> Bind<'q> for T where
    T: Encode<'q, Postgres> + Type<Postgres> + Encode<'q, Sqlite> + Send + 'q
{
}

enum Args<'q> {
    Postgres(PgArguments),
    Sqlite(Vec<SqliteArgumentValue<'q>>),
}

/// One statement and its bound values, with the placeholders of its
/// backend (`$1, $2, ...` or `?`).
pub struct Stmt<'q> {
    sql: String,
    args: Args<'q>,
    count: usize,
    /// Rows of the `VALUES` list so far, once it is started.
    rows: Option<usize>,
    /// The first value that could not be encoded (reported when run).
    error: Option<BoxDynError>,
}

impl<'q> Stmt<'q> {
    /// A statement for SQLite (`sqlite`) or PostgreSQL, starting with `sql`.
    pub fn new(sqlite: bool, sql: impl Into<String>) -> Stmt<'q> {
        Stmt {
            sql: sql.into(),
            args: if sqlite {
                Args::Sqlite(Vec::new())
            } else {
                Args::Postgres(PgArguments::default())
            },
            count: 0,
            rows: None,
            error: None,
        }
    }

    /// Appends SQL text.
    pub fn push(&mut self, sql: impl AsRef<str>) -> &mut Self {
        self.sql.push_str(sql.as_ref());
        self
    }

    /// Appends a placeholder bound to `value`.
    pub fn push_bind<T: Bind<'q>>(&mut self, value: T) -> &mut Self {
        self.count += 1;
        let added = match &mut self.args {
            Args::Postgres(args) => {
                let _ = write!(self.sql, "${}", self.count);
                args.add(value)
            }
            Args::Sqlite(values) => {
                self.sql.push('?');
                let before = values.len();
                match Encode::<Sqlite>::encode(value, values) {
                    Ok(IsNull::Yes) => {
                        values.truncate(before);
                        values.push(SqliteArgumentValue::Null);
                        Ok(())
                    }
                    Ok(IsNull::No) => Ok(()),
                    Err(e) => {
                        values.truncate(before);
                        values.push(SqliteArgumentValue::Null);
                        Err(e)
                    }
                }
            }
        };
        if let Err(e) = added {
            self.error.get_or_insert(e);
        }
        self
    }

    /// Appends `VALUES (...), (...)`, one row per item, its values bound by
    /// `row`; a second call adds rows to the same list.
    pub fn push_values<I, F>(&mut self, items: I, mut row: F) -> &mut Self
    where
        I: IntoIterator,
        F: FnMut(&mut Row<'_, 'q>, I::Item),
    {
        let mut rows = match self.rows {
            Some(rows) => rows,
            None => {
                self.sql.push_str("VALUES ");
                0
            }
        };
        for item in items {
            if rows > 0 {
                self.sql.push_str(", ");
            }
            rows += 1;
            self.sql.push('(');
            row(
                &mut Row {
                    stmt: self,
                    first: true,
                },
                item,
            );
            self.sql.push(')');
        }
        self.rows = Some(rows);
        self
    }

    /// Appends `(?, ?, ...)`, one placeholder per item.
    pub fn push_list<T: Bind<'q>>(&mut self, items: impl IntoIterator<Item = T>) -> &mut Self {
        self.sql.push('(');
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.push_bind(item);
        }
        self.sql.push(')');
        self
    }

    /// The SQL text so far.
    pub fn sql(&self) -> &str {
        &self.sql
    }
}

/// One row of [`Stmt::push_values`].
pub struct Row<'s, 'q> {
    stmt: &'s mut Stmt<'q>,
    first: bool,
}

impl<'q> Row<'_, 'q> {
    /// The row's next value.
    pub fn push_bind<T: Bind<'q>>(&mut self, value: T) -> &mut Self {
        if !self.first {
            self.stmt.sql.push_str(", ");
        }
        self.first = false;
        self.stmt.push_bind(value);
        self
    }
}

/// A column a [`Record`] reads from a SQLite row, decoded as sqlx would.
pub trait Column: Sized {
    fn get(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self>;
}

fn conversion(i: usize, ty: rusqlite::types::Type, e: impl Into<BoxDynError>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(i, ty, e.into())
}

impl Column for Uuid {
    fn get(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        let bytes = row.get_ref(i)?.as_blob()?;
        Uuid::from_slice(bytes).map_err(|e| conversion(i, rusqlite::types::Type::Blob, e))
    }
}

impl Column for String {
    fn get(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
}

impl Column for i64 {
    fn get(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        row.get(i)
    }
}

impl Column for DateTime<Utc> {
    fn get(row: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Self> {
        let text = row.get_ref(i)?.as_str()?;
        parse_time(text)
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(|| {
                conversion(
                    i,
                    rusqlite::types::Type::Text,
                    format!("not a time: {text:?}"),
                )
            })
    }
}

/// A time as SQLite stores it: RFC 3339 (as sqlx writes it), or one of
/// SQLite's own formats (as sqlx reads them).
fn parse_time(text: &str) -> Option<DateTime<FixedOffset>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t);
    }
    ["%F %T%.f", "%F %T%.f%:z", "%FT%T%.f", "%F %R"]
        .iter()
        .find_map(|format| {
            DateTime::parse_from_str(text, format).ok().or_else(|| {
                NaiveDateTime::parse_from_str(text, format)
                    .ok()
                    .map(|t| t.and_utc().fixed_offset())
            })
        })
}

/// A row a query returns, read from either backend.
pub trait Record: Sized + Send + Unpin + for<'r> FromRow<'r, PgRow> {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

impl<A> Record for (A,)
where
    A: Column + Send + Unpin,
    (A,): for<'r> FromRow<'r, PgRow>,
{
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((A::get(row, 0)?,))
    }
}

impl<A, B> Record for (A, B)
where
    A: Column + Send + Unpin,
    B: Column + Send + Unpin,
    (A, B): for<'r> FromRow<'r, PgRow>,
{
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((A::get(row, 0)?, B::get(row, 1)?))
    }
}

impl<A, B, C> Record for (A, B, C)
where
    A: Column + Send + Unpin,
    B: Column + Send + Unpin,
    C: Column + Send + Unpin,
    (A, B, C): for<'r> FromRow<'r, PgRow>,
{
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok((A::get(row, 0)?, B::get(row, 1)?, C::get(row, 2)?))
    }
}

/// A connection statements run on.
pub enum Link<'c> {
    Postgres(&'c mut sqlx::PgConnection),
    /// Runs on the caller's thread.
    Sqlite(&'c rusqlite::Connection),
}

impl Link<'_> {
    /// True on SQLite.
    pub fn sqlite(&self) -> bool {
        matches!(self, Link::Sqlite(_))
    }

    /// A new statement for this connection's backend.
    pub fn stmt<'q>(&self, sql: impl Into<String>) -> Stmt<'q> {
        Stmt::new(self.sqlite(), sql)
    }

    /// Runs `stmt`, which returns no rows. With `cache`, its prepared form
    /// is kept for the next statement of the same text.
    pub async fn execute(&mut self, stmt: Stmt<'_>, cache: bool) -> Result<(), sqlx::Error> {
        if let Some(e) = stmt.error {
            return Err(sqlx::Error::Encode(e));
        }
        match (self, stmt.args) {
            (Link::Postgres(conn), Args::Postgres(args)) => {
                sqlx::query_with(&stmt.sql, args)
                    .persistent(cache)
                    .execute(&mut **conn)
                    .await?;
                Ok(())
            }
            (Link::Sqlite(conn), Args::Sqlite(values)) => {
                sqlite_run(conn, &stmt.sql, &values, cache, |s| {
                    s.raw_execute().map(drop)
                })
            }
            _ => Err(mismatch()),
        }
    }

    /// Runs `stmt` and reads every row it returns.
    pub async fn fetch_all<R: Record>(
        &mut self,
        stmt: Stmt<'_>,
        cache: bool,
    ) -> Result<Vec<R>, sqlx::Error> {
        if let Some(e) = stmt.error {
            return Err(sqlx::Error::Encode(e));
        }
        match (self, stmt.args) {
            (Link::Postgres(conn), Args::Postgres(args)) => {
                sqlx::query_as_with::<_, R, _>(&stmt.sql, args)
                    .persistent(cache)
                    .fetch_all(&mut **conn)
                    .await
            }
            (Link::Sqlite(conn), Args::Sqlite(values)) => {
                sqlite_run(conn, &stmt.sql, &values, cache, |s| {
                    let mut rows = s.raw_query();
                    let mut out = Vec::new();
                    while let Some(row) = rows.next()? {
                        out.push(R::from_sqlite(row)?);
                    }
                    Ok(out)
                })
            }
            _ => Err(mismatch()),
        }
    }

    /// Runs SQL without values (`BEGIN`, `COMMIT`, ...), cached.
    pub async fn run(&mut self, sql: &str) -> Result<(), sqlx::Error> {
        let stmt = self.stmt(sql);
        self.execute(stmt, true).await
    }
}

fn mismatch() -> sqlx::Error {
    sqlx::Error::Protocol("a statement built for the other backend".into())
}

/// Prepares `sql` (from the connection's cache with `cache`), binds
/// `values` and hands the statement to `body`.
fn sqlite_run<T>(
    conn: &rusqlite::Connection,
    sql: &str,
    values: &[SqliteArgumentValue<'_>],
    cache: bool,
    body: impl FnOnce(&mut rusqlite::Statement<'_>) -> rusqlite::Result<T>,
) -> Result<T, sqlx::Error> {
    let run = || -> rusqlite::Result<T> {
        let mut cached;
        let mut fresh;
        let stmt: &mut rusqlite::Statement<'_> = if cache {
            cached = conn.prepare_cached(sql)?;
            &mut cached
        } else {
            fresh = conn.prepare(sql)?;
            &mut fresh
        };
        for (i, value) in values.iter().enumerate() {
            let i = i + 1;
            match value {
                SqliteArgumentValue::Null => stmt.raw_bind_parameter(i, rusqlite::types::Null)?,
                SqliteArgumentValue::Text(t) => stmt.raw_bind_parameter(i, t.as_ref())?,
                SqliteArgumentValue::Blob(b) => stmt.raw_bind_parameter(i, b.as_ref())?,
                SqliteArgumentValue::Double(d) => stmt.raw_bind_parameter(i, *d)?,
                SqliteArgumentValue::Int(n) => stmt.raw_bind_parameter(i, *n)?,
                SqliteArgumentValue::Int64(n) => stmt.raw_bind_parameter(i, *n)?,
            }
        }
        body(stmt)
    };
    run().map_err(from_sqlite)
}

/// A SQLite failure as sqlx reports one (so callers can ask
/// `is_unique_violation()` and the like of either path).
pub fn from_sqlite(e: rusqlite::Error) -> sqlx::Error {
    match e {
        rusqlite::Error::SqliteFailure(failure, message) => {
            sqlx::Error::Database(Box::new(SqliteFailure {
                code: failure.extended_code,
                message: message.unwrap_or_else(|| failure.to_string()),
            }))
        }
        rusqlite::Error::FromSqlConversionFailure(i, _, e) => sqlx::Error::ColumnDecode {
            index: i.to_string(),
            source: e,
        },
        other => sqlx::Error::Protocol(other.to_string()),
    }
}

#[derive(Debug)]
struct SqliteFailure {
    code: i32,
    message: String,
}

impl std::fmt::Display for SqliteFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "(code: {}) {}", self.code, self.message)
    }
}

impl std::error::Error for SqliteFailure {}

impl DatabaseError for SqliteFailure {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
        Some(self.code.to_string().into())
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> ErrorKind {
        use rusqlite::ffi;
        match self.code {
            ffi::SQLITE_CONSTRAINT_UNIQUE | ffi::SQLITE_CONSTRAINT_PRIMARYKEY => {
                ErrorKind::UniqueViolation
            }
            ffi::SQLITE_CONSTRAINT_FOREIGNKEY => ErrorKind::ForeignKeyViolation,
            ffi::SQLITE_CONSTRAINT_NOTNULL => ErrorKind::NotNullViolation,
            ffi::SQLITE_CONSTRAINT_CHECK => ErrorKind::CheckViolation,
            _ => ErrorKind::Other,
        }
    }
}

/// Opens a connection of its own to the SQLite database of `pool`, with the
/// pool's settings (WAL, `synchronous = NORMAL`, foreign keys, a busy
/// timeout) and `pragmas` on top.
pub fn open_sqlite(
    pool: &sqlx::SqlitePool,
    pragmas: &str,
) -> Result<rusqlite::Connection, sqlx::Error> {
    use rusqlite::OpenFlags;
    let options = pool.connect_options();
    let name = options.get_filename().to_string_lossy();
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    // sqlx names an in-memory database (`sqlite::memory:`) this way and
    // shares it between its connections through SQLite's shared cache.
    let conn = if name.starts_with("file:sqlx-in-memory-") {
        rusqlite::Connection::open_with_flags(
            format!("{name}?mode=memory&cache=shared"),
            flags | OpenFlags::SQLITE_OPEN_URI,
        )
    } else {
        rusqlite::Connection::open_with_flags(name.as_ref(), flags)
    }
    .map_err(from_sqlite)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .map_err(from_sqlite)?;
    conn.execute_batch(&format!(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; {pragmas}"
    ))
    .map_err(from_sqlite)?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn times_parse_as_sqlx_writes_and_reads_them() {
        let t = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let written = t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, false);
        assert_eq!(parse_time(&written).unwrap(), t);
        assert_eq!(parse_time("2026-01-02 03:04:05").unwrap(), t);
        assert!(parse_time("yesterday").is_none());
    }

    /// What the connection writes, sqlx reads, for a file and for an
    /// in-memory database; constraint failures keep their kind.
    #[tokio::test]
    async fn a_connection_of_its_own_shares_the_pools_database() {
        let dir = tempfile::tempdir().unwrap();
        let file = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        for url in [file.as_str(), "sqlite::memory:"] {
            let pool = sqlx::sqlite::SqlitePoolOptions::new()
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect(url)
                .await
                .unwrap();
            sqlx::query("CREATE TABLE t (id BLOB PRIMARY KEY, at TEXT NOT NULL, n INTEGER)")
                .execute(&pool)
                .await
                .unwrap();
            let conn = open_sqlite(&pool, "").unwrap();
            let id = Uuid::now_v7();
            let at = crate::db::now();
            let mut link = Link::Sqlite(&conn);
            let mut q = link.stmt("INSERT INTO t (id, at, n) ");
            q.push_values([(id, at)], |row, (id, at)| {
                row.push_bind(id).push_bind(at).push_bind(None::<i64>);
            });
            link.execute(q, true).await.unwrap();
            let read: (Uuid, DateTime<Utc>, Option<i64>) =
                sqlx::query_as("SELECT id, at, n FROM t")
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            assert_eq!(read, (id, at, None), "{url}");
            let mut q = link.stmt("SELECT id, at FROM t WHERE id IN ");
            q.push_list([id]);
            let back: Vec<(Uuid, DateTime<Utc>)> = link.fetch_all(q, false).await.unwrap();
            assert_eq!(back, [(id, at)]);
            let mut again = link.stmt("INSERT INTO t (id, at) VALUES (");
            again.push_bind(id).push(", 'x')");
            match link.execute(again, false).await {
                Err(sqlx::Error::Database(e)) => assert!(e.is_unique_violation(), "{e}"),
                other => panic!("{other:?}"),
            }
            drop(conn);
            pool.close().await;
        }
    }

    #[test]
    fn placeholders_follow_the_backend() {
        let mut pg = Stmt::new(false, "SELECT ");
        pg.push_list([1i64, 2]);
        assert_eq!(pg.sql(), "SELECT ($1, $2)");
        let mut lite = Stmt::new(true, "INSERT INTO t ");
        lite.push_values([(1i64, "a"), (2, "b")], |row, (n, s)| {
            row.push_bind(n).push_bind(s);
        });
        assert_eq!(lite.sql(), "INSERT INTO t VALUES (?, ?), (?, ?)");
    }
}
