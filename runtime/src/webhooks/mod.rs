//! Outbound webhooks: subscriptions (a user's, or server-wide for admins)
//! to events, delivered as Standard Webhooks (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`). Deliveries are a queue in the
//! database: run events are queued by a database trigger in the same
//! transaction as the run's status change (`migrations/*/0015`), other
//! events by [`WebhookService::emit`]; [`deliver`] sends them with retries.

pub mod deliver;
pub mod model;
pub mod routes;
pub mod signing;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::types::Json;
use uuid::Uuid;

use self::model::*;
use crate::audit::AuditService;
use crate::config::{EgressConfig, WebhooksConfig};
use crate::crypto::Sealer;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::on_db;
use crate::pagination::{Page, PageParams};
use crate::users::model::{Permission, Principal};

/// How long a rotated-out secret still signs deliveries (besides the new
/// one), in milliseconds: a day, for receivers to switch.
const OLD_SECRET_MS: i64 = 24 * 3_600_000;

/// A stored subscription.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SubscriptionRow {
    pub id: Uuid,
    pub owner_id: Option<Uuid>,
    pub url: String,
    pub description: Option<String>,
    pub events: Json<Vec<String>>,
    pub secret_nonce: Vec<u8>,
    pub secret_ciphertext: Vec<u8>,
    pub old_secret_nonce: Option<Vec<u8>>,
    pub old_secret_ciphertext: Option<Vec<u8>>,
    pub old_secret_until_ms: Option<i64>,
    pub enabled: bool,
    pub disabled_reason: Option<String>,
    pub failures: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const SUB_COLUMNS: &str = "id, owner_id, url, description, events, secret_nonce, secret_ciphertext, \
    old_secret_nonce, old_secret_ciphertext, old_secret_until_ms, enabled, disabled_reason, failures, \
    created_at, updated_at";

/// A stored delivery.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRow {
    pub id: Uuid,
    pub subscription_id: Uuid,
    pub event_type: String,
    pub run_id: Option<Uuid>,
    pub data: Option<Json<Value>>,
    pub payload: Option<String>,
    pub status: String,
    pub attempts: i64,
    pub next_attempt_ms: i64,
    pub last_status_code: Option<i64>,
    pub last_duration_ms: Option<i64>,
    pub last_error: Option<String>,
    pub occurred_ms: i64,
}

const DELIVERY_COLUMNS: &str = "id, subscription_id, event_type, run_id, data, payload, status, \
    attempts, next_attempt_ms, last_status_code, last_duration_ms, last_error, occurred_ms";

use crate::clock::time_of_ms as to_time;

/// An attempt as stored: number, status code, duration, error, time.
type AttemptRow = (i64, Option<i64>, i64, Option<String>, i64);

/// The `webhook-id` of a delivery.
pub fn message_id(delivery: Uuid) -> String {
    format!("msg_{}", delivery.simple())
}

/// Subscriptions, the delivery log, and events.
#[derive(Clone)]
pub struct WebhookService {
    db: Db,
    audit: AuditService,
    sealer: Sealer,
    config: WebhooksConfig,
    egress: EgressConfig,
}

impl std::fmt::Debug for WebhookService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookService { .. }")
    }
}

impl WebhookService {
    /// A service over `db`, sealing secrets with `key`.
    pub fn new(
        db: Db,
        audit: AuditService,
        key: &[u8; 32],
        config: WebhooksConfig,
        egress: EgressConfig,
    ) -> Self {
        WebhookService {
            db,
            audit,
            sealer: Sealer::new(key),
            config,
            egress,
        }
    }

    fn seal(&self, id: Uuid, secret: &str) -> Result<(Vec<u8>, Vec<u8>)> {
        Ok(self.sealer.seal(id.as_bytes(), secret.as_bytes())?)
    }

    /// The secrets that sign a subscription's deliveries now: the current
    /// one, and a rotated-out one for a day.
    pub fn secrets(&self, row: &SubscriptionRow, now_ms: i64) -> Result<Vec<String>> {
        let open = |nonce: &[u8], ciphertext: &[u8]| -> Result<String> {
            let plain = self.sealer.open(row.id.as_bytes(), nonce, ciphertext)?;
            String::from_utf8(plain).map_err(|e| Error::Internal(e.into()))
        };
        let mut out = vec![open(&row.secret_nonce, &row.secret_ciphertext)?];
        if let (Some(n), Some(c), Some(until)) = (
            &row.old_secret_nonce,
            &row.old_secret_ciphertext,
            row.old_secret_until_ms,
        ) {
            if until > now_ms {
                out.push(open(n, c)?);
            }
        }
        Ok(out)
    }

    fn check_events(events: &[String]) -> Result<()> {
        if events.is_empty() || events.len() > EVENT_TYPES.len() + 1 {
            return Err(Error::invalid_field(
                "events",
                "one or more event types, or \"*\"",
            ));
        }
        for (i, e) in events.iter().enumerate() {
            if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
                return Err(Error::invalid_field(
                    &format!("events[{i}]"),
                    format!(
                        "unknown event type; one of {} or \"*\"",
                        EVENT_TYPES.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    fn check_url(&self, url: &str, owner: Option<Uuid>) -> Result<()> {
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| Error::invalid_field("url", format!("not a URL: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") || url.len() > 2048 {
            return Err(Error::invalid_field(
                "url",
                "an http or https URL of at most 2048 characters",
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(Error::invalid_field(
                "url",
                "credentials in the URL are not allowed; verify the signature instead",
            ));
        }
        if self.egress.restricts(owner) {
            crate::egress::check_user_url(&parsed).map_err(|e| Error::invalid_field("url", e))?;
        }
        Ok(())
    }

    fn check_description(d: &Option<String>) -> Result<()> {
        if d.as_ref().is_some_and(|d| d.chars().count() > 500) {
            return Err(Error::invalid_field(
                "description",
                "at most 500 characters",
            ));
        }
        Ok(())
    }

    fn response(row: SubscriptionRow, secret: Option<String>) -> WebhookResponse {
        WebhookResponse {
            id: row.id,
            owner_id: row.owner_id,
            url: row.url,
            events: row.events.0,
            description: row.description,
            enabled: row.enabled,
            disabled_reason: row.disabled_reason,
            failures: row.failures,
            secret,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    async fn row(&self, id: Uuid) -> Result<Option<SubscriptionRow>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(&format!(
            "SELECT {SUB_COLUMNS} FROM webhook_subscriptions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    /// A subscription the caller may manage: their own, or (admins) any.
    async fn visible(&self, principal: &Principal, id: Uuid) -> Result<SubscriptionRow> {
        let row = self.row(id).await?.ok_or(Error::NotFound("webhook"))?;
        let mine = row.owner_id == Some(principal.user_id);
        if mine || principal.require(Permission::SettingsManage).is_ok() {
            Ok(row)
        } else {
            Err(Error::NotFound("webhook"))
        }
    }

    /// Subscribes the caller (or, for admins, the server) to events; the
    /// answer carries the signing secret, shown this once.
    pub async fn create(
        &self,
        principal: &Principal,
        input: WebhookInput,
    ) -> Result<WebhookResponse> {
        principal.require(Permission::ConversationWrite)?;
        if input.server_wide {
            principal.require(Permission::SettingsManage)?;
        }
        let owner = (!input.server_wide).then_some(principal.user_id);
        Self::check_events(&input.events)?;
        Self::check_description(&input.description)?;
        self.check_url(&input.url, owner)?;
        if let Some(owner) = owner {
            let count: i64 = on_db!(&self.db, pool => sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_subscriptions WHERE owner_id = $1",
            )
            .bind(owner)
            .fetch_one(pool)
            .await?);
            if count >= self.config.max_per_user {
                return Err(Error::unprocessable(
                    "too_many_webhooks",
                    format!(
                        "a user may have at most {} webhooks (webhooks.max_per_user)",
                        self.config.max_per_user
                    ),
                ));
            }
        }
        let id = Uuid::now_v7();
        let secret = signing::new_secret();
        let (nonce, ciphertext) = self.seal(id, &secret)?;
        let now = db::now();
        let row: SubscriptionRow = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "INSERT INTO webhook_subscriptions (id, owner_id, url, description, events, secret_nonce,
                 secret_ciphertext, enabled, failures, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, TRUE, 0, $8, $8) RETURNING {SUB_COLUMNS}"
        ))
        .bind(id)
        .bind(owner)
        .bind(&input.url)
        .bind(&input.description)
        .bind(Json(&input.events))
        .bind(&nonce)
        .bind(&ciphertext)
        .bind(now)
        .fetch_one(pool)
        .await?);
        self.audit
            .record(
                Some(principal.user_id),
                "webhook.create",
                Some(("webhook", id)),
                json!({ "url": input.url, "events": input.events, "server_wide": input.server_wide }),
            )
            .await;
        Ok(Self::response(row, Some(secret)))
    }

    /// The caller's subscriptions (admins: also server-wide ones and
    /// everyone's).
    pub async fn list(
        &self,
        principal: &Principal,
        page: PageParams,
    ) -> Result<Page<WebhookResponse>> {
        principal.require(Permission::ConversationRead)?;
        let page = page.validate()?;
        let all = principal.require(Permission::SettingsManage).is_ok();
        let (rows, total): (Vec<SubscriptionRow>, i64) = on_db!(&self.db, pool => {
            let rows = sqlx::query_as(&format!(
                "SELECT {SUB_COLUMNS} FROM webhook_subscriptions WHERE $1 OR owner_id = $2
                 ORDER BY created_at, id LIMIT $3 OFFSET $4"
            ))
            .bind(all)
            .bind(principal.user_id)
            .bind(page.limit())
            .bind(page.offset())
            .fetch_all(pool)
            .await?;
            let total = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_subscriptions WHERE $1 OR owner_id = $2",
            )
            .bind(all)
            .bind(principal.user_id)
            .fetch_one(pool)
            .await?;
            (rows, total)
        });
        Ok(page.wrap(
            rows.into_iter().map(|r| Self::response(r, None)).collect(),
            total,
        ))
    }

    /// One subscription.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<WebhookResponse> {
        principal.require(Permission::ConversationRead)?;
        Ok(Self::response(self.visible(principal, id).await?, None))
    }

    /// Changes a subscription; enabling it again clears its failures.
    pub async fn patch(
        &self,
        principal: &Principal,
        id: Uuid,
        patch: WebhookPatch,
    ) -> Result<WebhookResponse> {
        principal.require(Permission::ConversationWrite)?;
        let mut row = self.visible(principal, id).await?;
        if let Some(url) = patch.url {
            self.check_url(&url, row.owner_id)?;
            row.url = url;
        }
        if let Some(events) = patch.events {
            Self::check_events(&events)?;
            row.events = Json(events);
        }
        if patch.description.is_some() {
            Self::check_description(&patch.description)?;
            row.description = patch.description;
        }
        if let Some(enabled) = patch.enabled {
            if enabled && !row.enabled {
                row.failures = 0;
                row.disabled_reason = None;
            }
            row.enabled = enabled;
        }
        let updated: SubscriptionRow = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "UPDATE webhook_subscriptions SET url = $2, events = $3, description = $4, enabled = $5,
                 failures = $6, disabled_reason = $7, updated_at = $8
             WHERE id = $1 RETURNING {SUB_COLUMNS}"
        ))
        .bind(id)
        .bind(&row.url)
        .bind(&row.events)
        .bind(&row.description)
        .bind(row.enabled)
        .bind(row.failures)
        .bind(&row.disabled_reason)
        .bind(db::now())
        .fetch_optional(pool)
        .await?)
        .ok_or(Error::NotFound("webhook"))?;
        self.audit
            .record(
                Some(principal.user_id),
                "webhook.update",
                Some(("webhook", id)),
                json!({ "url": updated.url, "events": updated.events.0, "enabled": updated.enabled }),
            )
            .await;
        Ok(Self::response(updated, None))
    }

    /// A new signing secret (shown this once); the old one still signs
    /// deliveries, beside the new, for a day.
    pub async fn rotate_secret(&self, principal: &Principal, id: Uuid) -> Result<WebhookResponse> {
        principal.require(Permission::ConversationWrite)?;
        let row = self.visible(principal, id).await?;
        let secret = signing::new_secret();
        let (nonce, ciphertext) = self.seal(id, &secret)?;
        let updated: SubscriptionRow = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "UPDATE webhook_subscriptions SET old_secret_nonce = secret_nonce,
                 old_secret_ciphertext = secret_ciphertext, old_secret_until_ms = $2,
                 secret_nonce = $3, secret_ciphertext = $4, updated_at = $5
             WHERE id = $1 RETURNING {SUB_COLUMNS}"
        ))
        .bind(row.id)
        .bind(Utc::now().timestamp_millis() + OLD_SECRET_MS)
        .bind(&nonce)
        .bind(&ciphertext)
        .bind(db::now())
        .fetch_one(pool)
        .await?);
        self.audit
            .record(
                Some(principal.user_id),
                "webhook.rotate_secret",
                Some(("webhook", id)),
                json!({}),
            )
            .await;
        Ok(Self::response(updated, Some(secret)))
    }

    /// Deletes a subscription and its delivery log.
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<()> {
        principal.require(Permission::ConversationWrite)?;
        self.visible(principal, id).await?;
        on_db!(&self.db, pool => sqlx::query("DELETE FROM webhook_subscriptions WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|_| ())?);
        self.audit
            .record(
                Some(principal.user_id),
                "webhook.delete",
                Some(("webhook", id)),
                json!({}),
            )
            .await;
        Ok(())
    }

    /// Queues a `webhook.test` event for one subscription.
    pub async fn test(&self, principal: &Principal, id: Uuid) -> Result<DeliveryResponse> {
        principal.require(Permission::ConversationWrite)?;
        let row = self.visible(principal, id).await?;
        let delivery = Uuid::now_v7();
        self.queue(
            row.id,
            delivery,
            "webhook.test",
            &format!("webhook.test:{delivery}"),
            &json!({ "webhook_id": row.id, "message": "a test delivery from Orchestra" }),
        )
        .await?;
        self.delivery(principal, id, delivery).await
    }

    async fn queue(
        &self,
        subscription: Uuid,
        id: Uuid,
        event_type: &str,
        key: &str,
        data: &Value,
    ) -> Result<bool> {
        let now = Utc::now().timestamp_millis();
        let n = on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO webhook_deliveries (id, subscription_id, event_type, event_key, data, status,
                 attempts, next_attempt_ms, occurred_ms)
             VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)
             ON CONFLICT (subscription_id, event_key) DO NOTHING",
        )
        .bind(id)
        .bind(subscription)
        .bind(event_type)
        .bind(key)
        .bind(Json(data))
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Whether an enabled subscription of `owner` (or a server-wide one)
    /// wants `event_type` (false when that cannot be read).
    pub async fn wanted(&self, owner: Option<Uuid>, event_type: &str) -> bool {
        let subs: Result<Vec<Json<Vec<String>>>> = async {
            Ok(on_db!(&self.db, pool => sqlx::query_scalar(
                "SELECT events FROM webhook_subscriptions
                 WHERE enabled AND (owner_id IS NULL OR owner_id = $1)",
            )
            .bind(owner)
            .fetch_all(pool)
            .await?))
        }
        .await;
        subs.map(|s| {
            s.iter()
                .any(|e| e.0.iter().any(|t| t == "*" || t == event_type))
        })
        .unwrap_or(false)
    }

    /// Queues `event_type` (identified by `key`: an event queued twice is
    /// delivered once) for the enabled subscriptions that want it: those of
    /// `owner`, and the server-wide ones. Never fails its caller: a failure
    /// is logged.
    pub async fn emit(
        &self,
        owner: impl Into<Option<Uuid>>,
        event_type: &str,
        key: &str,
        data: Value,
    ) {
        let owner = owner.into();
        let result: Result<()> = async {
            let subs: Vec<(Uuid, Json<Vec<String>>)> = on_db!(&self.db, pool => sqlx::query_as(
                "SELECT id, events FROM webhook_subscriptions
                 WHERE enabled AND (owner_id IS NULL OR owner_id = $1)",
            )
            .bind(owner)
            .fetch_all(pool)
            .await?);
            for (sub, events) in subs {
                if events.0.iter().any(|e| e == "*" || e == event_type) {
                    self.queue(sub, Uuid::now_v7(), event_type, key, &data)
                        .await?;
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::warn!(event = event_type, error = %e, "queueing a webhook event failed");
        }
    }

    /// A subscription's deliveries, newest first.
    pub async fn deliveries(
        &self,
        principal: &Principal,
        id: Uuid,
        page: PageParams,
    ) -> Result<Page<DeliveryResponse>> {
        principal.require(Permission::ConversationRead)?;
        let page = page.validate()?;
        self.visible(principal, id).await?;
        let (rows, total): (Vec<DeliveryRow>, i64) = on_db!(&self.db, pool => {
            let rows = sqlx::query_as(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE subscription_id = $1
                 ORDER BY occurred_ms DESC, id DESC LIMIT $2 OFFSET $3"
            ))
            .bind(id)
            .bind(page.limit())
            .bind(page.offset())
            .fetch_all(pool)
            .await?;
            let total = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE subscription_id = $1",
            )
            .bind(id)
            .fetch_one(pool)
            .await?;
            (rows, total)
        });
        Ok(page.wrap(
            rows.into_iter()
                .map(|r| delivery_response(r, None))
                .collect(),
            total,
        ))
    }

    /// One delivery with its attempts.
    pub async fn delivery(
        &self,
        principal: &Principal,
        id: Uuid,
        delivery: Uuid,
    ) -> Result<DeliveryResponse> {
        principal.require(Permission::ConversationRead)?;
        self.visible(principal, id).await?;
        let (row, attempts) = on_db!(&self.db, pool => {
            let row: Option<DeliveryRow> = sqlx::query_as(&format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE id = $1 AND subscription_id = $2"
            ))
            .bind(delivery)
            .bind(id)
            .fetch_optional(pool)
            .await?;
            let attempts: Vec<AttemptRow> = sqlx::query_as(
                "SELECT attempt, status_code, duration_ms, error, at_ms FROM webhook_attempts
                 WHERE delivery_id = $1 ORDER BY attempt",
            )
            .bind(delivery)
            .fetch_all(pool)
            .await?;
            (row, attempts)
        });
        let row = row.ok_or(Error::NotFound("delivery"))?;
        let log = attempts
            .into_iter()
            .map(
                |(attempt, status_code, duration_ms, error, at)| AttemptResponse {
                    attempt,
                    status_code,
                    duration_ms,
                    error,
                    at: to_time(at),
                },
            )
            .collect();
        Ok(delivery_response(row, Some(log)))
    }

    /// Sends a delivery again now (a failed one, or a delivered one the
    /// receiver lost), with the same `webhook-id`.
    pub async fn redeliver(
        &self,
        principal: &Principal,
        id: Uuid,
        delivery: Uuid,
    ) -> Result<DeliveryResponse> {
        principal.require(Permission::ConversationWrite)?;
        let sub = self.visible(principal, id).await?;
        if !sub.enabled {
            return Err(Error::conflict(
                "the webhook is disabled; enable it before redelivering",
            ));
        }
        let n = on_db!(&self.db, pool => sqlx::query(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_ms = $3, lease_owner = NULL,
                 lease_until = NULL, finished_ms = NULL
             WHERE id = $1 AND subscription_id = $2 AND status <> 'pending'",
        )
        .bind(delivery)
        .bind(id)
        .bind(Utc::now().timestamp_millis())
        .execute(pool)
        .await?
        .rows_affected());
        if n == 0 {
            // Missing, or already waiting for its next attempt.
            let current = self.delivery(principal, id, delivery).await?;
            if current.status == DeliveryStatus::Pending {
                return Err(Error::conflict("the delivery is already pending"));
            }
        }
        self.audit
            .record(
                Some(principal.user_id),
                "webhook.redeliver",
                Some(("webhook", id)),
                json!({ "delivery_id": delivery }),
            )
            .await;
        self.delivery(principal, id, delivery).await
    }
}

fn delivery_response(row: DeliveryRow, attempts: Option<Vec<AttemptResponse>>) -> DeliveryResponse {
    let status = match row.status.as_str() {
        "pending" => DeliveryStatus::Pending,
        "delivered" => DeliveryStatus::Delivered,
        _ => DeliveryStatus::Failed,
    };
    DeliveryResponse {
        id: row.id,
        message_id: message_id(row.id),
        event_type: row.event_type,
        status,
        attempts: row.attempts,
        last_status_code: row.last_status_code,
        last_duration_ms: row.last_duration_ms,
        last_error: row.last_error,
        occurred_at: to_time(row.occurred_ms),
        next_attempt_at: (status == DeliveryStatus::Pending).then(|| to_time(row.next_attempt_ms)),
        payload: row.payload.and_then(|p| serde_json::from_str(&p).ok()),
        attempt_log: attempts,
    }
}
