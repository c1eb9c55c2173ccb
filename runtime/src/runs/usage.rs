//! Usage: tokens and runs per user, agent, model or day over a time range
//! (`GET /api/v1/usage`), and per-user limits that refuse new runs with 429
//! once spent (`/api/v1/users/{id}/usage-limits`).

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::on_db;
use crate::users::model::{Permission, Principal};

/// How usage is grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// One line per user.
    User,
    /// One line per agent.
    #[default]
    Agent,
    /// One line per model.
    Model,
    /// One line per UTC day.
    Day,
}

/// `GET /api/v1/usage` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UsageQuery {
    /// Start of the range (RFC 3339; default 30 days ago).
    pub from: Option<DateTime<Utc>>,
    /// End of the range, exclusive (default now).
    pub to: Option<DateTime<Utc>>,
    /// `user`, `agent` (default), `model` or `day`.
    pub group_by: Option<GroupBy>,
    /// Only this user's runs (admins; others always see their own).
    pub user_id: Option<Uuid>,
}

/// One line of a usage report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageLine {
    /// The user id, agent id, `provider/model` or `YYYY-MM-DD`.
    pub key: String,
    /// Runs started.
    pub runs: i64,
    /// Tokens read by models.
    pub input_tokens: i64,
    /// Tokens generated.
    pub output_tokens: i64,
    /// Both.
    pub total_tokens: i64,
}

/// A usage report.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    /// Start of the range.
    pub from: DateTime<Utc>,
    /// End of the range.
    pub to: DateTime<Utc>,
    /// The grouping.
    pub group_by: GroupBy,
    /// The lines, largest total first.
    pub items: Vec<UsageLine>,
    /// Sums over the range.
    pub total: UsageLine,
}

/// A user's limits (absent fields: unlimited).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UsageLimits {
    /// Tokens per rolling 24 hours.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub daily_tokens: Option<i64>,
    /// Tokens per rolling 30 days.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub monthly_tokens: Option<i64>,
    /// Runs started per rolling 24 hours.
    #[serde(default)]
    #[schema(minimum = 0)]
    pub daily_runs: Option<i64>,
}

/// A run to admit against its user's limits ([`UsageService::admit`]).
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    /// The run's id (chosen before it is stored).
    pub run: Uuid,
    /// Whose run.
    pub user: Uuid,
    /// Its agent.
    pub agent: Uuid,
    /// Its provider.
    pub provider: &'a str,
    /// Its model.
    pub model: &'a str,
    /// Tokens it may spend, counted against token limits while it runs.
    pub reserve: i64,
    /// The user's limits, as stored.
    pub stored: Option<UsageLimits>,
    /// Daily tokens of users without stored limits.
    pub default_daily: Option<i64>,
    /// Record it in the ledger even when the user has no limits: a model
    /// call that is not a run (the OpenAI API's provider models) has no
    /// other record.
    pub always_record: bool,
}

/// One row per run, live or deleted: every run (in flight ones with the
/// tokens they reserved, while they run), and the ledger's rows of runs
/// that are gone (their settled usage) or not stored yet (their
/// reservation). `filter` is a condition on `{t}.user_id` and
/// `{t}.created_at`, written once for both tables.
fn usage_rows(filter: &str) -> String {
    let runs = filter.replace("{t}", "r");
    let ledger = filter.replace("{t}", "l");
    format!(
        "SELECT r.user_id, r.agent_id, r.provider, r.model, r.created_at,
                r.input_tokens, r.output_tokens,
                CASE WHEN r.status IN ('queued', 'running', 'requires_action')
                     THEN COALESCE(l.reserved_tokens, 0) ELSE 0 END AS reserved
         FROM runs r LEFT JOIN usage_ledger l ON l.run_id = r.id
         WHERE {runs}
         UNION ALL
         SELECT l.user_id, l.agent_id, l.provider, l.model, l.created_at,
                CASE WHEN l.settled THEN l.input_tokens ELSE 0 END,
                CASE WHEN l.settled THEN l.output_tokens ELSE 0 END,
                CASE WHEN l.settled THEN 0 ELSE l.reserved_tokens END
         FROM usage_ledger l
         WHERE {ledger} AND NOT EXISTS (SELECT 1 FROM runs r WHERE r.id = l.run_id)"
    )
}

/// What a row of [`usage_rows`] counts against token limits: its tokens,
/// or what it reserved while that is more.
const CHARGED: &str = "CASE WHEN reserved > input_tokens + output_tokens \
     THEN reserved ELSE input_tokens + output_tokens END";

/// The PostgreSQL advisory lock of `user`'s admissions.
fn user_lock(user: Uuid) -> i64 {
    let bytes = user.as_bytes();
    i64::from_be_bytes(bytes[8..16].try_into().expect("16 bytes")) ^ 0x0075_7361_6765
    // "usage"
}

/// Usage queries and limits.
#[derive(Clone, Debug)]
pub struct UsageService {
    db: Db,
}

impl UsageService {
    /// A service over `db`.
    pub fn new(db: Db) -> Self {
        UsageService { db }
    }

    /// Runs started by `user` since `since`, and their tokens, counting a
    /// run in flight as at least the tokens it reserved.
    async fn spent(&self, user: Uuid, since: DateTime<Utc>) -> Result<(i64, i64)> {
        let sql = format!(
            "SELECT CAST(COALESCE(SUM({CHARGED}), 0) AS BIGINT), COUNT(*) FROM ({}) u",
            usage_rows("{t}.user_id = $1 AND {t}.created_at >= $2")
        );
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(user)
            .bind(since)
            .fetch_one(pool)
            .await?))
    }

    async fn stored_limits(&self, user: Uuid) -> Result<Option<UsageLimits>> {
        let row: Option<(Option<i64>, Option<i64>, Option<i64>)> = on_db!(&self.db, pool => sqlx::query_as(
            "SELECT daily_tokens, monthly_tokens, daily_runs FROM usage_limits WHERE user_id = $1",
        )
        .bind(user)
        .fetch_optional(pool)
        .await?);
        Ok(row.map(|(d, m, r)| UsageLimits {
            daily_tokens: d,
            monthly_tokens: m,
            daily_runs: r,
        }))
    }

    /// Admits run `run` of `user` against their limits (`stored`, as read
    /// with the run's context, or the default): refuses with 429 when a
    /// limit is spent, counting runs in flight as the tokens they reserve,
    /// and otherwise records the run in the ledger with `reserve` tokens
    /// (when the user has token limits). The check and the record are one
    /// step (one statement on SQLite, under a per-user lock on
    /// PostgreSQL), so concurrent requests cannot pass the same limit
    /// twice. Users without limits are not recorded here: their runs are
    /// their record. Returns whether a ledger row was written (to be
    /// [`UsageService::release`]d if the run is not created after all).
    pub async fn admit(&self, admission: Admission<'_>) -> Result<bool> {
        let limits = admission.stored.clone().unwrap_or(UsageLimits {
            daily_tokens: admission.default_daily,
            ..UsageLimits::default()
        });
        if limits == UsageLimits::default() {
            if !admission.always_record {
                return Ok(false);
            }
            on_db!(&self.db, pool => sqlx::query(
                "INSERT INTO usage_ledger (run_id, user_id, agent_id, provider, model, created_at, reserved_tokens)
                 VALUES ($1, $2, $3, $4, $5, $6, 0)",
            )
            .bind(admission.run)
            .bind(admission.user)
            .bind(admission.agent)
            .bind(admission.provider)
            .bind(admission.model)
            .bind(Utc::now())
            .execute(pool)
            .await
            .map(|_| ())?);
            return Ok(true);
        }
        let token_limits = limits.daily_tokens.is_some() || limits.monthly_tokens.is_some();
        let reserve = if token_limits {
            admission.reserve.max(0)
        } else {
            0
        };
        let now = Utc::now();
        let day = now - Duration::hours(24);
        let month = now - Duration::days(30);
        let count = |since: &str| {
            format!(
                "(SELECT COUNT(*) FROM ({}) u)",
                usage_rows(&format!(
                    "{{t}}.user_id = $2 AND {{t}}.created_at >= {since}"
                ))
            )
        };
        let tokens = |since: &str| {
            format!(
                "(SELECT COALESCE(SUM({CHARGED}), 0) FROM ({}) u)",
                usage_rows(&format!(
                    "{{t}}.user_id = $2 AND {{t}}.created_at >= {since}"
                ))
            )
        };
        let sql = format!(
            "INSERT INTO usage_ledger (run_id, user_id, agent_id, provider, model, created_at, reserved_tokens)
             SELECT $1, $2, $3, $4, $5, $6, $7
             WHERE {} < $10 AND {} < $11 AND {} < $12",
            count("$8"),
            tokens("$8"),
            tokens("$9"),
        );
        let unlimited = i64::MAX;
        // One admission per user at a time, across nodes.
        let admitted = crate::serialised!(&self.db, user_lock(admission.user), exec => sqlx::query(&sql)
            .bind(admission.run)
            .bind(admission.user)
            .bind(admission.agent)
            .bind(admission.provider)
            .bind(admission.model)
            .bind(now)
            .bind(reserve)
            .bind(day)
            .bind(month)
            .bind(limits.daily_runs.unwrap_or(unlimited))
            .bind(limits.daily_tokens.unwrap_or(unlimited))
            .bind(limits.monthly_tokens.unwrap_or(unlimited))
            .execute(exec)
            .await?
            .rows_affected());
        if admitted == 1 {
            return Ok(true);
        }
        // Refused: say which limit, as things stand now.
        let refuse = |what: &str, used: i64, limit: i64| Error::TooManyRequests {
            code: "quota_exceeded",
            message: format!("usage limit reached: {used} of {limit} {what}"),
            details: Some(serde_json::json!({ "limit": what, "used": used, "allowed": limit })),
        };
        let (day_tokens, day_runs) = self.spent(admission.user, day).await?;
        if let Some(limit) = limits.daily_runs.filter(|l| day_runs >= *l) {
            return Err(refuse("runs per 24 hours", day_runs, limit));
        }
        if let Some(limit) = limits.daily_tokens.filter(|l| day_tokens >= *l) {
            return Err(refuse("tokens per 24 hours", day_tokens, limit));
        }
        let (month_tokens, _) = self.spent(admission.user, month).await?;
        let limit = limits.monthly_tokens.unwrap_or(0);
        Err(refuse("tokens per 30 days", month_tokens.max(limit), limit))
    }

    /// Settles a model call recorded with `always_record` (not a run): its
    /// tokens count from now on, and its reservation no longer.
    pub async fn settle_call(
        &self,
        call: Uuid,
        input_tokens: i64,
        output_tokens: i64,
    ) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE usage_ledger SET settled = TRUE, input_tokens = $2, output_tokens = $3, reserved_tokens = 0
             WHERE run_id = $1",
        )
        .bind(call)
        .bind(input_tokens)
        .bind(output_tokens)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// The limits stored for `user`, if any.
    pub async fn limits_of(&self, user: Uuid) -> Result<Option<UsageLimits>> {
        self.stored_limits(user).await
    }

    /// Forgets the admission of a run that was not created after all.
    pub async fn release(&self, run: Uuid) -> Result<()> {
        on_db!(&self.db, pool => sqlx::query(
            "DELETE FROM usage_ledger WHERE run_id = $1 AND settled = FALSE",
        )
        .bind(run)
        .execute(pool)
        .await
        .map(|_| ())?);
        Ok(())
    }

    /// A user's limits (admins; anyone for their own).
    pub async fn limits(&self, principal: &Principal, user: Uuid) -> Result<UsageLimits> {
        // Everyone may read their own limits (the console shows what is left).
        if principal.user_id != user {
            principal.require(Permission::UserManage)?;
        }
        Ok(self.stored_limits(user).await?.unwrap_or_default())
    }

    /// Sets a user's limits (admins).
    pub async fn set_limits(
        &self,
        principal: &Principal,
        user: Uuid,
        limits: UsageLimits,
    ) -> Result<UsageLimits> {
        principal.require(Permission::UserManage)?;
        for (field, v) in [
            ("daily_tokens", limits.daily_tokens),
            ("monthly_tokens", limits.monthly_tokens),
            ("daily_runs", limits.daily_runs),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(Error::invalid_field(field, "must not be negative"));
            }
        }
        let result = on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO usage_limits (user_id, daily_tokens, monthly_tokens, daily_runs, updated_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (user_id) DO UPDATE SET daily_tokens = $2, monthly_tokens = $3,
                 daily_runs = $4, updated_at = $5",
        )
        .bind(user)
        .bind(limits.daily_tokens)
        .bind(limits.monthly_tokens)
        .bind(limits.daily_runs)
        .bind(db::now())
        .execute(pool)
        .await
        .map(|_| ()));
        match result {
            Ok(()) => Ok(limits),
            Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => {
                Err(Error::NotFound("user"))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Usage over a range, grouped.
    pub async fn report(&self, principal: &Principal, query: UsageQuery) -> Result<UsageReport> {
        principal.require(Permission::ConversationRead)?;
        let to = query.to.unwrap_or_else(Utc::now);
        let from = query.from.unwrap_or(to - Duration::days(30));
        if from >= to {
            return Err(Error::invalid_field("from", "must be before `to`"));
        }
        let group_by = query.group_by.unwrap_or_default();
        let user = if principal.owner_scope().is_none() {
            query.user_id
        } else {
            match query.user_id {
                Some(u) if u != principal.user_id => return Err(Error::NotFound("user")),
                _ => Some(principal.user_id),
            }
        };
        let postgres = matches!(self.db, Db::Postgres(_));
        let key = match group_by {
            GroupBy::User => "CAST(user_id AS TEXT)",
            GroupBy::Agent => "CAST(agent_id AS TEXT)",
            GroupBy::Model => "provider || '/' || model",
            GroupBy::Day if postgres => "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
            GroupBy::Day => "substr(created_at, 1, 10)",
        };
        // SQLite stores UUIDs as 16 bytes: group on the bytes, format below.
        let key = match (postgres, group_by) {
            (false, GroupBy::User) => "hex(user_id)",
            (false, GroupBy::Agent) => "hex(agent_id)",
            _ => key,
        };
        // Live runs and the settled usage of deleted ones alike.
        let filter = if user.is_some() {
            "{t}.created_at >= $1 AND {t}.created_at < $2 AND {t}.user_id = $3"
        } else {
            "{t}.created_at >= $1 AND {t}.created_at < $2"
        };
        let sql = format!(
            "SELECT {key} AS k, COUNT(*), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT),
                    CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT)
             FROM ({}) u GROUP BY k",
            usage_rows(filter)
        );
        let lines: Vec<(String, i64, i64, i64)> = on_db!(&self.db, pool => {
            let mut query = sqlx::query_as(&sql).bind(from).bind(to);
            if let Some(user) = user {
                query = query.bind(user);
            }
            query.fetch_all(pool).await?
        });
        let mut items: Vec<UsageLine> = lines
            .into_iter()
            .map(|(k, runs, input, output)| UsageLine {
                key: if postgres {
                    k
                } else {
                    match group_by {
                        GroupBy::User | GroupBy::Agent => {
                            Uuid::try_parse(&k).map(|u| u.to_string()).unwrap_or(k)
                        }
                        _ => k,
                    }
                },
                runs,
                input_tokens: input,
                output_tokens: output,
                total_tokens: input + output,
            })
            .collect();
        items.sort_by(|a, b| {
            b.total_tokens
                .cmp(&a.total_tokens)
                .then_with(|| a.key.cmp(&b.key))
        });
        let total = UsageLine {
            key: "total".into(),
            runs: items.iter().map(|l| l.runs).sum(),
            input_tokens: items.iter().map(|l| l.input_tokens).sum(),
            output_tokens: items.iter().map(|l| l.output_tokens).sum(),
            total_tokens: items.iter().map(|l| l.total_tokens).sum(),
        };
        Ok(UsageReport {
            from,
            to,
            group_by,
            items,
            total,
        })
    }
}
