//! Runs domain types: states, limits, the request and response schemas,
//! events and approval decisions.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::conversations::model::{ContentInput, ContentPart, MessageInput, MessageRole};
use crate::error::{Error, Result};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for a worker (or for the conversation's earlier run).
    Queued,
    /// A worker is executing it.
    Running,
    /// Stopped until tool calls are approved, edited, rejected or answered.
    RequiresAction,
    /// The agent gave its final answer.
    Completed,
    /// A limit, the provider or the server ended it; see `error`.
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl RunStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::RequiresAction => "requires_action",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<RunStatus> {
        Some(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "requires_action" => RunStatus::RequiresAction,
            "completed" => RunStatus::Completed,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            _ => return None,
        })
    }

    /// Whether the run has ended for good.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

/// The bounds of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct RunLimits {
    /// Most model calls.
    pub max_steps: u32,
    /// Most tokens (input plus output, summed over the run's model calls).
    pub max_tokens: Option<u64>,
    /// Wall-clock budget in seconds, counted from when a worker picks the
    /// run up (time queued or waiting for approval does not count; a run
    /// resumed after a crash starts a new budget).
    pub timeout_secs: u64,
}

impl Default for RunLimits {
    fn default() -> Self {
        RunLimits {
            max_steps: 25,
            max_tokens: None,
            timeout_secs: 600,
        }
    }
}

/// Limits asked for by a request or an agent's `config`; each is capped by
/// the server's maxima.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsInput {
    /// Most model calls (1 to the server's maximum).
    #[serde(default)]
    pub max_steps: Option<u32>,
    /// Most tokens for the whole run.
    #[serde(default)]
    pub max_tokens: Option<u64>,
    /// Wall-clock budget in seconds.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

impl RunLimits {
    /// `self` with `input`'s values applied, checked against `max`.
    pub fn apply(mut self, input: &LimitsInput, max: &RunLimits, field: &str) -> Result<Self> {
        if let Some(steps) = input.max_steps {
            if steps == 0 || steps > max.max_steps {
                return Err(Error::invalid_field(
                    &format!("{field}.max_steps"),
                    format!("must be between 1 and {}", max.max_steps),
                ));
            }
            self.max_steps = steps;
        }
        if let Some(tokens) = input.max_tokens {
            if tokens == 0 || max.max_tokens.is_some_and(|m| tokens > m) {
                return Err(Error::invalid_field(
                    &format!("{field}.max_tokens"),
                    "must be positive and within the server's maximum",
                ));
            }
            self.max_tokens = Some(tokens);
        }
        if let Some(secs) = input.timeout_secs {
            if secs == 0 || secs > max.timeout_secs {
                return Err(Error::invalid_field(
                    &format!("{field}.timeout_secs"),
                    format!("must be between 1 and {}", max.timeout_secs),
                ));
            }
            self.timeout_secs = secs;
        }
        Ok(self)
    }
}

/// What happens to a new run when the conversation already has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActivePolicy {
    /// Wait for the earlier runs to end, then start (default).
    #[default]
    Queue,
    /// Refuse with 409.
    Reject,
    /// Cancel the earlier runs, then start.
    Interrupt,
}

/// `POST /api/v1/conversations/{id}/runs`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RunInput {
    /// The user's message that starts the run (a string or content parts).
    /// Without one, the agent answers the conversation as it stands.
    #[serde(default)]
    pub message: Option<ContentInput>,
    /// Tighter limits for this run.
    #[serde(default)]
    pub limits: Option<LimitsInput>,
    /// What to do if the conversation already has an unfinished run
    /// (default: the server's `runs.on_active`, `queue` unless configured).
    #[serde(default)]
    pub on_active: Option<ActivePolicy>,
    /// Set by the OpenAI-compatible endpoints, never read from a request.
    #[serde(skip)]
    pub options: Option<RunOptions>,
    /// The run's id, chosen by the caller (a schedule's firing or a
    /// trigger's delivery, so a retry after a crash finds the run it
    /// started); never read from a request.
    #[serde(skip)]
    pub id: Option<Uuid>,
}

/// What an API client asked of one run beyond its agent's definition (the
/// OpenAI-compatible endpoints), stored with the run so that a resumed run
/// asks the model the same.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunOptions {
    /// Tools the client runs itself: offered to the model with the agent's
    /// own, and when the model calls one, the run ends and the client gets
    /// the call (OpenAI's `tool_calls`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_tools: Vec<crate::providers::ToolDefinition>,
    /// Instructions for this run only, after the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<String>,
    /// Sampling temperature in place of the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Most tokens per model answer in place of the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u32>,
    /// Whether the model may ask for several tool calls at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallel_tool_calls: Option<bool>,
    /// How the run is shown by the OpenAI-compatible endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<Value>,
}

impl RunOptions {
    /// Whether `name` is one of the client's tools.
    pub fn is_client_tool(&self, name: &str) -> bool {
        self.client_tools.iter().any(|t| t.name == name)
    }
}

impl RunInput {
    /// The validated message parts, if a message was sent.
    pub fn message_parts(&mut self) -> Result<Option<Vec<ContentPart>>> {
        match self.message.take() {
            None => Ok(None),
            Some(content) => {
                let (_, parts, _) = MessageInput {
                    role: MessageRole::User,
                    content,
                    metadata: Map::new(),
                }
                .into_parts()
                .map_err(|e| match e {
                    Error::Validation { message, .. } => Error::invalid_field("message", message),
                    other => other,
                })?;
                Ok(Some(parts))
            }
        }
    }
}

/// Why a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RunError {
    /// A stable code: `max_steps`, `max_tokens`, `timeout`, `provider_error`,
    /// `provider_unavailable`, `agent_deleted`, `approval_expired`, `internal`.
    pub code: String,
    /// What happened.
    pub message: String,
    /// Structured detail (the provider's error, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<Value>,
}

impl RunError {
    /// An error with a code and message.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        RunError {
            code: code.to_owned(),
            message: message.into(),
            details: None,
        }
    }
}

/// Tokens a run used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
pub struct RunUsage {
    /// Tokens read by the model, summed over its calls.
    pub input_tokens: i64,
    /// Tokens generated.
    pub output_tokens: i64,
}

/// A tool call of a run, as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolCallInfo {
    /// The model's id of the call.
    pub call_id: String,
    /// The catalogue name of the tool.
    pub name: String,
    /// The arguments (edited ones, after an approval edited them).
    #[schema(value_type = Object)]
    pub arguments: Value,
    /// `planned`, `pending_approval`, `approved`, `started` or `completed`.
    pub status: String,
    /// When a pending approval expires.
    pub approval_expires_at: Option<DateTime<Utc>>,
}

/// A question a bridged MCP server asks the run's user in the middle of a
/// tool call (MCP elicitation). The call waits for the answer; the run
/// shows `requires_action` meanwhile.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ElicitationInfo {
    /// The question's id (answer it at
    /// `POST /api/v1/runs/{id}/elicitations/{elicitation_id}`).
    pub id: Uuid,
    /// The tool call that asks.
    pub call_id: String,
    /// The MCP server that asks (its name).
    pub server: String,
    /// `form`: fill in `requested_schema`; `url`: visit `url`, then accept
    /// or decline.
    pub mode: String,
    /// What the server asks, for the user.
    pub message: String,
    /// The fields asked for (form mode): a flat JSON Schema object of
    /// strings, numbers, integers, booleans and enums.
    #[schema(value_type = Option<Object>)]
    pub requested_schema: Option<Value>,
    /// Where to go (URL mode).
    pub url: Option<String>,
    /// `pending`, then `accept`, `decline`, `cancel`, `expired` or
    /// `withdrawn` (the server gave up).
    pub status: String,
    /// When an unanswered question is cancelled.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The user's answer to a question: `POST
/// /api/v1/runs/{id}/elicitations/{elicitation_id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ElicitationAnswer {
    /// `accept` (with `content` in form mode), `decline` (the call goes on
    /// without it) or `cancel` (the user stops the operation).
    pub action: ElicitationAction,
    /// The fields, matching the question's `requested_schema` (form mode,
    /// `accept` only).
    #[schema(value_type = Option<Object>)]
    pub content: Option<Value>,
}

/// What the user does with a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ElicitationAction {
    /// Answers it.
    Accept,
    /// Declines to answer; the call goes on.
    Decline,
    /// Stops the operation.
    Cancel,
}

impl ElicitationAction {
    /// Its name on the wire and in storage.
    pub fn as_str(self) -> &'static str {
        match self {
            ElicitationAction::Accept => "accept",
            ElicitationAction::Decline => "decline",
            ElicitationAction::Cancel => "cancel",
        }
    }
}

/// A run as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunResponse {
    /// The run's id.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// The agent that answers.
    pub agent_id: Uuid,
    /// Who started it.
    pub owner_id: Uuid,
    /// Where it is.
    pub status: RunStatus,
    /// The provider it uses.
    pub provider: String,
    /// The model it uses.
    pub model: String,
    /// Model calls so far.
    pub step_count: i64,
    /// Tokens used so far.
    pub usage: RunUsage,
    /// Its limits.
    pub limits: RunLimits,
    /// Why it failed.
    pub error: Option<RunError>,
    /// Whether a cancellation is on its way to the worker.
    pub cancel_requested: bool,
    /// Tool calls waiting for a decision (when `requires_action`).
    pub pending_tool_calls: Vec<ToolCallInfo>,
    /// Questions that tool calls in flight wait for the user to answer
    /// (when `requires_action`).
    #[serde(default)]
    pub pending_elicitations: Vec<ElicitationInfo>,
    /// Times a worker picked it up (more than 1 after a crash or restart).
    pub attempts: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When a worker first started it.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
}

/// Filters of `GET /api/v1/conversations/{id}/runs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunFilter {
    /// Only runs in this state.
    pub status: Option<RunStatus>,
}

/// `?wait_secs=` of `GET /api/v1/runs/{id}`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunWait {
    /// Wait up to this many seconds (at most 60) for the run to stop:
    /// completed, failed, cancelled, or waiting for approvals. The answer
    /// comes as soon as it stops, or with the run as it is when the time is
    /// up. Without it, the run as it is now.
    #[param(minimum = 0, maximum = 60)]
    pub wait_secs: Option<u64>,
}

/// The longest `wait_secs`.
pub const MAX_WAIT_SECS: u64 = 60;

/// One event of a run's story.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RunEvent {
    /// Position in the run's story, from 1, without gaps (the SSE `id`).
    pub seq: i64,
    /// `run.status`, `message.delta`, `tool_call.delta`, `message.completed`,
    /// `tool_call.started`, `tool_call.completed`, `approval.required`,
    /// `usage` or `done` (the SSE `event`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's payload.
    #[schema(value_type = Object)]
    pub data: Value,
    /// When it happened.
    pub created_at: DateTime<Utc>,
}

/// `?after=` of the events list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventCursor {
    /// Only events with a greater `seq` (like `Last-Event-ID`).
    #[param(minimum = 0)]
    pub after: Option<i64>,
}

/// What to do with one pending tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DecisionAction {
    /// Run it as the model asked.
    Accept,
    /// Run it with `arguments` instead.
    Edit,
    /// Do not run it; the model is told `reason`.
    Reject,
    /// Do not run it; the model gets `result` as the tool's answer.
    Answer,
}

/// A decision on one pending tool call.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The call decided on.
    pub call_id: String,
    /// What to do.
    pub action: DecisionAction,
    /// For `edit`: the arguments to run with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<Value>,
    /// For `reject`: why (the model sees it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// For `answer`: the result given to the model in place of the tool's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub result: Option<Value>,
    /// Who decided (set by the server; ignored in requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<Uuid>,
}

/// `POST /api/v1/runs/{id}/approvals`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalInput {
    /// One decision per pending call (calls left out stay pending).
    pub decisions: Vec<Decision>,
}

impl Decision {
    /// Checks that the fields match the action.
    pub fn check(&self, index: usize) -> Result<()> {
        let field = |f: &str| format!("decisions[{index}].{f}");
        match self.action {
            DecisionAction::Edit if !matches!(self.arguments, Some(Value::Object(_))) => Err(
                Error::invalid_field(&field("arguments"), "edit needs an arguments object"),
            ),
            DecisionAction::Answer if self.result.is_none() => Err(Error::invalid_field(
                &field("result"),
                "answer needs a result",
            )),
            DecisionAction::Reject
                if self
                    .reason
                    .as_ref()
                    .is_some_and(|r| r.chars().count() > 2000) =>
            {
                Err(Error::invalid_field(
                    &field("reason"),
                    "must be at most 2000 characters",
                ))
            }
            _ => Ok(()),
        }
    }
}
