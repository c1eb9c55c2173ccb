//! Schedules' request and response types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

pub use super::timing::{CatchUp, Timing};

/// What a firing does while the previous firing's run has not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Record the firing as skipped (default).
    #[default]
    Skip,
    /// Wait for the previous run to end, then start.
    Queue,
    /// Cancel the previous run, then start.
    Cancel,
}

impl Overlap {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Cancel => "cancel",
        }
    }

    /// From the stored name.
    pub fn parse(s: &str) -> Overlap {
        match s {
            "queue" => Overlap::Queue,
            "cancel" => Overlap::Cancel,
            _ => Overlap::Skip,
        }
    }
}

/// Where each firing's run goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ConversationMode {
    /// A new conversation per firing (default).
    #[default]
    New,
    /// One conversation for every firing (`conversation_id`, or one made
    /// when the schedule is created).
    Fixed,
}

/// A schedule's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScheduleState {
    /// Fires at its times.
    Active,
    /// Paused by its owner.
    Paused,
    /// Has no further time (a single time that fired).
    Finished,
    /// Stopped by the server (`state_reason` says why: its agent was
    /// deleted, its owner disabled).
    Stopped,
}

impl ScheduleState {
    /// From the stored name.
    pub fn parse(s: &str) -> ScheduleState {
        match s {
            "active" => ScheduleState::Active,
            "paused" => ScheduleState::Paused,
            "finished" => ScheduleState::Finished,
            _ => ScheduleState::Stopped,
        }
    }
}

/// `POST /api/v1/schedules`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleInput {
    /// One of your agents.
    pub agent_id: Uuid,
    /// A name, 1 to 200 characters.
    pub name: String,
    /// The message each firing sends: a template (minijinja) with
    /// `fired_at` (RFC 3339, UTC), `fired_at_local` (in the schedule's
    /// time zone), `due_at`, `missed` (occurrences this firing stands for
    /// beyond its own) and `schedule.name`, `schedule.id`.
    pub message: String,
    /// When it fires.
    pub timing: Timing,
    /// A new conversation per firing, or one for all.
    #[serde(default)]
    pub conversation: ConversationMode,
    /// With `conversation: fixed`, an existing conversation of yours with
    /// the same agent (one is made when absent).
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
    /// While the previous run has not ended.
    #[serde(default)]
    pub overlap: Overlap,
    /// After downtime.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Create it paused.
    #[serde(default)]
    pub paused: bool,
}

/// `PATCH /api/v1/schedules/{id}`: fields to change.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SchedulePatch {
    /// A new name.
    pub name: Option<String>,
    /// A new message template.
    pub message: Option<String>,
    /// New times (the next firing is computed again from now).
    pub timing: Option<Timing>,
    /// A new overlap policy.
    pub overlap: Option<Overlap>,
    /// A new catch-up policy.
    pub catch_up: Option<CatchUp>,
}

/// A schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ScheduleResponse {
    /// Its id.
    pub id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// The agent it runs.
    pub agent_id: Uuid,
    /// Its name.
    pub name: String,
    /// The message template.
    pub message: String,
    /// When it fires.
    pub timing: Timing,
    /// New conversation per firing, or one for all.
    pub conversation: ConversationMode,
    /// The fixed conversation, if any.
    pub conversation_id: Option<Uuid>,
    /// The overlap policy.
    pub overlap: Overlap,
    /// The catch-up policy.
    pub catch_up: CatchUp,
    /// Its state.
    pub state: ScheduleState,
    /// Why it stopped, when it did.
    pub state_reason: Option<String>,
    /// The next firing times (up to five), when active.
    pub next_fire_times: Vec<DateTime<Utc>>,
    /// When it last fired.
    pub last_fired_at: Option<DateTime<Utc>>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// What became of one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FiringStatus {
    /// Due, its run not started yet (or waiting for the previous one).
    Pending,
    /// Its run started (`run_id`).
    Started,
    /// Not fired (`reason`: the previous run was still going, or it was
    /// missed during downtime and the schedule skips those).
    Skipped,
    /// Could not start a run (`reason`: a quota, the agent's model, ...).
    Failed,
}

/// One firing of a schedule.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct FiringResponse {
    /// Its id.
    pub id: Uuid,
    /// The occurrence it stands for.
    pub due_at: DateTime<Utc>,
    /// What became of it.
    pub status: FiringStatus,
    /// Why it was skipped or failed.
    pub reason: Option<String>,
    /// Occurrences missed during downtime that this firing stands for.
    pub missed: i64,
    /// The run it started.
    pub run_id: Option<Uuid>,
    /// The run's conversation.
    pub conversation_id: Option<Uuid>,
    /// The run's status now (absent when the run is gone or none started).
    pub run_status: Option<String>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When its run started.
    pub started_at: Option<DateTime<Utc>>,
}
