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
    pub daily_tokens: Option<i64>,
    /// Tokens per rolling 30 days.
    #[serde(default)]
    pub monthly_tokens: Option<i64>,
    /// Runs started per rolling 24 hours.
    #[serde(default)]
    pub daily_runs: Option<i64>,
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

    async fn spent(&self, user: Uuid, since: DateTime<Utc>) -> Result<(i64, i64)> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(input_tokens + output_tokens), 0) AS BIGINT), COUNT(*)
             FROM runs WHERE user_id = $1 AND created_at >= $2",
        )
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

    /// Refuses (429) a new run of `user` whose limits are spent.
    pub async fn check_quota(&self, user: Uuid, default_daily: Option<i64>) -> Result<()> {
        let stored = self.stored_limits(user).await?;
        self.check_limits(user, stored, default_daily).await
    }

    /// Refuses (429) a new run of `user` whose limits (`stored`, as read
    /// with the run's context, or the default) are spent.
    pub async fn check_limits(
        &self,
        user: Uuid,
        stored: Option<UsageLimits>,
        default_daily: Option<i64>,
    ) -> Result<()> {
        let limits = stored.unwrap_or(UsageLimits {
            daily_tokens: default_daily,
            ..UsageLimits::default()
        });
        if limits == UsageLimits::default() {
            return Ok(());
        }
        let now = Utc::now();
        let (day_tokens, day_runs) = self.spent(user, now - Duration::hours(24)).await?;
        let refuse = |what: &str, used: i64, limit: i64| Error::TooManyRequests {
            code: "quota_exceeded",
            message: format!("usage limit reached: {used} of {limit} {what}"),
            details: Some(serde_json::json!({ "limit": what, "used": used, "allowed": limit })),
        };
        if let Some(limit) = limits.daily_tokens {
            if day_tokens >= limit {
                return Err(refuse("tokens per 24 hours", day_tokens, limit));
            }
        }
        if let Some(limit) = limits.daily_runs {
            if day_runs >= limit {
                return Err(refuse("runs per 24 hours", day_runs, limit));
            }
        }
        if let Some(limit) = limits.monthly_tokens {
            let (month_tokens, _) = self.spent(user, now - Duration::days(30)).await?;
            if month_tokens >= limit {
                return Err(refuse("tokens per 30 days", month_tokens, limit));
            }
        }
        Ok(())
    }

    /// A user's limits (admins).
    pub async fn limits(&self, principal: &Principal, user: Uuid) -> Result<UsageLimits> {
        principal.require(Permission::UserManage)?;
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
        let lines: Vec<(String, i64, i64, i64)> = on_db!(&self.db, pool, D => {
            let mut qb = sqlx::QueryBuilder::<D>::new(format!(
                "SELECT {key} AS k, COUNT(*), CAST(COALESCE(SUM(input_tokens), 0) AS BIGINT),
                        CAST(COALESCE(SUM(output_tokens), 0) AS BIGINT)
                 FROM runs WHERE created_at >= "
            ));
            qb.push_bind(from).push(" AND created_at < ").push_bind(to);
            if let Some(user) = user {
                qb.push(" AND user_id = ").push_bind(user);
            }
            qb.push(" GROUP BY k");
            qb.build_query_as().fetch_all(pool).await?
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
