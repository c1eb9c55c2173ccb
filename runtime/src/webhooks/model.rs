//! Webhooks' request and response types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// Events a subscription may ask for (`*`: all of them).
pub const EVENT_TYPES: &[&str] = &[
    "run.completed",
    "run.failed",
    "run.cancelled",
    "run.requires_action",
    "schedule.fired",
    "mcp.server_down",
];

/// `POST /api/v1/webhooks`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Where deliveries go: an `https` (or `http`) URL. A user's URL must
    /// reach a public address (checked when saved and at each delivery);
    /// redirects are not followed.
    pub url: String,
    /// Events to deliver: `run.completed`, `run.failed`, `run.cancelled`,
    /// `run.requires_action`, `schedule.fired`, `mcp.server_down`, or `*`.
    pub events: Vec<String>,
    /// A note for yourself.
    #[serde(default)]
    pub description: Option<String>,
    /// Server-wide (admins): every user's events.
    #[serde(default)]
    pub server_wide: bool,
}

/// `PATCH /api/v1/webhooks/{id}`: fields to change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    /// A new URL.
    pub url: Option<String>,
    /// New events.
    pub events: Option<Vec<String>>,
    /// A new note.
    pub description: Option<String>,
    /// Enable (clears the failure count) or disable.
    pub enabled: Option<bool>,
}

/// A subscription.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct WebhookResponse {
    /// Its id.
    pub id: Uuid,
    /// Its owner (absent: server-wide).
    pub owner_id: Option<Uuid>,
    /// Where deliveries go.
    pub url: String,
    /// Events it receives.
    pub events: Vec<String>,
    /// The note.
    pub description: Option<String>,
    /// Whether deliveries are sent.
    pub enabled: bool,
    /// Why the server disabled it.
    pub disabled_reason: Option<String>,
    /// Failed attempts since the last success.
    pub failures: i64,
    /// The signing secret (`whsec_...`): only in the answer that created
    /// or rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// A delivery's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its first attempt or a retry.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every retry failed (or the subscription was disabled).
    Failed,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AttemptResponse {
    /// 1 for the first.
    pub attempt: i64,
    /// The receiver's status code (absent: no answer).
    pub status_code: Option<i64>,
    /// How long the receiver took, in milliseconds.
    pub duration_ms: i64,
    /// What went wrong.
    pub error: Option<String>,
    /// When.
    pub at: DateTime<Utc>,
}

/// A delivery of one event to one subscription.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryResponse {
    /// Its id; `webhook-id` is `msg_` and its hex.
    pub id: Uuid,
    /// The `webhook-id` header (the same on every attempt).
    pub message_id: String,
    /// The event type.
    pub event_type: String,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts so far.
    pub attempts: i64,
    /// The last status code.
    pub last_status_code: Option<i64>,
    /// The last attempt's duration, in milliseconds.
    pub last_duration_ms: Option<i64>,
    /// The last error.
    pub last_error: Option<String>,
    /// When the event happened.
    pub occurred_at: DateTime<Utc>,
    /// When the next attempt is due (pending deliveries).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The body sent (once the first attempt was made).
    #[schema(value_type = Option<Object>)]
    pub payload: Option<serde_json::Value>,
    /// Every attempt (in a single delivery's answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt_log: Option<Vec<AttemptResponse>>,
}
