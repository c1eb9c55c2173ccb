//! Runs: a user's message to a conversation becomes a durable job that the
//! run engine ([`engine`]) executes (the agent loop of model calls and tool
//! calls), streaming its story as events ([`RunService::events`], SSE in
//! [`routes`]) and stopping for human approval where the agent requires it.

pub mod bus;
pub mod engine;
pub mod follow;
pub mod model;
pub mod repo;
pub mod routes;
pub mod usage;
pub mod writer;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use self::bus::Bus;
use self::model::*;
use self::repo::{ElicitationRow, EventRow, RunRepo, RunRow, StartContext, ToolCallRow};
use crate::config::RunsConfig;
use crate::conversations::ConversationService;
use crate::db::Db;
use crate::error::{Error, Result};
use crate::models::ModelService;
use crate::pagination::{Page, PageParams};
use crate::users::model::{Permission, Principal};
use serde_json::Value;

/// Runs, their events and approvals.
#[derive(Clone, Debug)]
pub struct RunService {
    repo: RunRepo,
    conversations: ConversationService,
    models: ModelService,
    usage: usage::UsageService,
    bus: Bus,
    writer: writer::Writer,
    engine: engine::Engine,
    config: RunsConfig,
    streams: StreamSlots,
}

/// Event streams open on this node, per user, bounded by
/// `runs.max_streams_per_user`.
#[derive(Clone, Debug, Default)]
struct StreamSlots(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<Uuid, usize>>>);

/// One open event stream; dropping it frees its slot.
#[derive(Debug)]
pub struct StreamSlot {
    slots: StreamSlots,
    user: Uuid,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.user);
            }
        }
    }
}

impl StreamSlots {
    fn take(&self, user: Uuid, max: usize) -> Result<StreamSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(user).or_default();
        if *n >= max {
            return Err(Error::TooManyRequests {
                code: "too_many_streams",
                message: format!(
                    "at most {max} event streams may be open at once; close one first"
                ),
                details: Some(serde_json::json!({ "limit": max })),
            });
        }
        *n += 1;
        Ok(StreamSlot {
            slots: self.clone(),
            user,
        })
    }
}

/// An event stream that may start: the run, and the caller's slot.
#[derive(Debug)]
pub struct OpenStream {
    /// The run's id.
    pub id: Uuid,
    /// Whether the run has ended (its last event is `done`).
    pub ended: bool,
    /// The caller's slot, held while the stream is open.
    pub slot: StreamSlot,
}

fn expires_at(ms: Option<i64>) -> Option<DateTime<Utc>> {
    ms.and_then(DateTime::<Utc>::from_timestamp_millis)
}

fn elicitation_info(row: ElicitationRow) -> ElicitationInfo {
    ElicitationInfo {
        id: row.id,
        call_id: row.call_id,
        server: row.server,
        mode: row.mode,
        message: row.message,
        requested_schema: row.requested_schema.map(|s| s.0),
        url: row.url,
        status: row.status,
        expires_at: expires_at(Some(row.expires_ms)),
    }
}

fn response(row: RunRow, calls: &[ToolCallRow], asks: Vec<ElicitationRow>) -> RunResponse {
    let pending = calls
        .iter()
        .filter(|c| c.status == "pending_approval")
        .map(|c| ToolCallInfo {
            call_id: c.call_id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.0.clone(),
            status: c.status.clone(),
            approval_expires_at: expires_at(c.approval_expires_ms),
        })
        .collect();
    RunResponse {
        id: row.id,
        conversation_id: row.conversation_id,
        agent_id: row.agent_id,
        owner_id: row.user_id,
        // A running run whose call waits for the user's answer waits too.
        status: if asks.is_empty() {
            row.status()
        } else {
            RunStatus::RequiresAction
        },
        provider: row.provider,
        model: row.model,
        step_count: row.step_count,
        usage: RunUsage {
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
        },
        limits: row.limits.0,
        error: row.error.map(|e| e.0),
        cancel_requested: row.cancel_requested,
        pending_tool_calls: pending,
        pending_elicitations: asks.into_iter().map(elicitation_info).collect(),
        attempts: row.attempts,
        created_at: row.created_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
    }
}

impl From<EventRow> for RunEvent {
    fn from(row: EventRow) -> Self {
        RunEvent {
            seq: row.seq,
            kind: row.kind,
            data: row.data.0,
            created_at: row.created_at,
        }
    }
}

impl RunService {
    /// A service over `db`.
    pub fn new(
        db: Db,
        conversations: ConversationService,
        models: ModelService,
        bus: Bus,
        writer: writer::Writer,
        engine: engine::Engine,
        config: RunsConfig,
    ) -> Self {
        RunService {
            writer,
            engine,
            repo: RunRepo::new(db.clone()),
            usage: usage::UsageService::new(db),
            conversations,
            models,
            bus,
            config,
            streams: StreamSlots::default(),
        }
    }

    /// Usage figures and limits.
    pub fn usage(&self) -> &usage::UsageService {
        &self.usage
    }

    /// The signal hub (for SSE streams).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    async fn visible(&self, principal: &Principal, id: Uuid) -> Result<RunRow> {
        self.repo
            .get(id, principal.owner_scope())
            .await?
            .ok_or(Error::NotFound("run"))
    }

    async fn respond(&self, row: RunRow) -> Result<RunResponse> {
        let calls = if row.status == "requires_action" {
            self.repo.tool_calls(row.id).await?
        } else {
            Vec::new()
        };
        let asks = if row.status == "running" {
            self.repo.pending_elicitations(row.id).await?
        } else {
            Vec::new()
        };
        Ok(response(row, &calls, asks))
    }

    /// Starts a run in a conversation (queued behind its unfinished runs,
    /// or as `on_active` says).
    pub async fn create(
        &self,
        principal: &Principal,
        conversation: Uuid,
        mut input: RunInput,
    ) -> Result<RunResponse> {
        principal.require(Permission::ConversationWrite)?;
        principal.require(Permission::ConversationRead)?;
        let parts = input.message_parts()?;
        let context = self
            .repo
            .start_context(conversation, principal.owner_scope())
            .await?;
        let Some(StartContext {
            owner,
            agent,
            limits: stored_limits,
        }) = context
        else {
            // Which one is missing, for the error.
            self.conversations.get(principal, conversation).await?;
            return Err(Error::NotFound("agent"));
        };
        let model = agent.model.0.clone();
        let provider = match self.models.client(&model.provider, owner).await {
            Ok(p) => p,
            Err(e) => {
                return Err(Error::unprocessable(
                    "unknown_provider",
                    format!(
                        "the agent's provider {:?} is not usable: {e}",
                        model.provider
                    ),
                ))
            }
        };
        let mut limits = self.config.default_limits;
        if let Some(agent_limits) = agent.config.0.get("limits") {
            let asked: LimitsInput = serde_json::from_value(agent_limits.clone()).map_err(|e| {
                Error::unprocessable(
                    "invalid_agent_limits",
                    format!("the agent's config.limits is invalid: {e}"),
                )
            })?;
            limits = limits
                .apply(&asked, &self.config.max_limits, "agent.config.limits")
                .map_err(|e| Error::unprocessable("invalid_agent_limits", e.to_string()))?;
        }
        if let Some(asked) = &input.limits {
            limits = limits.apply(asked, &self.config.max_limits, "limits")?;
        }
        let run_id = input.id.unwrap_or_else(Uuid::now_v7);
        let recorded = self
            .usage
            .admit(usage::Admission {
                run: run_id,
                user: owner,
                agent: agent.id,
                provider: &model.provider,
                model: &model.model,
                reserve: limits
                    .max_tokens
                    .map_or(self.config.quota_reservation_tokens, |t| t as i64),
                stored: stored_limits,
                default_daily: self.config.default_daily_tokens,
                always_record: false,
            })
            .await?;
        let created = self
            .store_new(
                run_id,
                conversation,
                owner,
                agent,
                provider,
                parts,
                limits,
                &model,
                input.on_active,
                input.options.take(),
            )
            .await;
        if created.is_err() && recorded {
            if let Err(e) = self.usage.release(run_id).await {
                tracing::warn!(run = %run_id, error = %e, "releasing a run's admission failed");
            }
        }
        let (row, interrupted) = created?;
        for other in interrupted {
            self.bus.cancel(other);
        }
        if row.status == "queued" {
            self.bus.queued();
        }
        self.respond(row).await
    }

    /// Stores a new run with id `id`: group-committed (and started at once
    /// when it can) or, for other `on_active` policies, in a transaction
    /// that deals with the conversation's unfinished runs (returned).
    #[allow(clippy::too_many_arguments)]
    async fn store_new(
        &self,
        id: Uuid,
        conversation: Uuid,
        owner: Uuid,
        agent: crate::agents::repo::AgentRow,
        provider: std::sync::Arc<dyn crate::providers::Provider>,
        parts: Option<Vec<crate::conversations::model::ContentPart>>,
        limits: RunLimits,
        model: &crate::agents::model::ModelRef,
        on_active: Option<ActivePolicy>,
        options: Option<RunOptions>,
    ) -> Result<(RunRow, Vec<Uuid>)> {
        let policy = on_active.unwrap_or(self.config.on_active);
        if policy == ActivePolicy::Queue {
            // Nothing to check against other runs: group-committed, and
            // started at once when this node has a free slot and the
            // conversation no unfinished run.
            let mut row = writer::queued_row(
                conversation,
                owner,
                agent.id,
                parts,
                limits,
                &model.provider,
                &model.model,
            );
            row.id = id;
            row.options = options.map(sqlx::types::Json);
            let (start, ticket) = match self.engine.opening(&row) {
                Some((start, ticket)) => (Some(start), Some(ticket)),
                None => (None, None),
            };
            let created = self
                .writer
                .create(writer::CreateWrite { row, start })
                .await?;
            if let Some(ticket) = ticket {
                self.engine.adopt(ticket, &created, agent, provider);
            }
            Ok((created.row, Vec::new()))
        } else {
            self.repo
                .create(
                    id,
                    conversation,
                    owner,
                    agent.id,
                    parts.as_deref(),
                    &limits,
                    &model.provider,
                    &model.model,
                    policy,
                    options.as_ref(),
                )
                .await
        }
    }

    /// Whether run `id` exists (any owner's).
    pub async fn exists(&self, id: Uuid) -> Result<bool> {
        Ok(self.repo.get(id, None).await?.is_some())
    }

    /// One run.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<RunResponse> {
        principal.require(Permission::ConversationRead)?;
        let row = self.visible(principal, id).await?;
        self.respond(row).await
    }

    /// One run, with what its API client asked of it.
    pub async fn get_with_options(
        &self,
        principal: &Principal,
        id: Uuid,
    ) -> Result<(RunResponse, Option<RunOptions>)> {
        principal.require(Permission::ConversationRead)?;
        let mut row = self.visible(principal, id).await?;
        let options = row.options.take().map(|o| o.0);
        Ok((self.respond(row).await?, options))
    }

    /// Replaces what a run's API client asked of it (how it is shown).
    pub async fn set_options(
        &self,
        principal: &Principal,
        id: Uuid,
        options: &RunOptions,
    ) -> Result<()> {
        principal.require(Permission::ConversationWrite)?;
        self.visible(principal, id).await?;
        self.repo.set_options(id, options).await
    }

    /// The runs of a conversation, newest first.
    pub async fn list(
        &self,
        principal: &Principal,
        conversation: Uuid,
        filter: RunFilter,
        page: PageParams,
    ) -> Result<Page<RunResponse>> {
        principal.require(Permission::ConversationRead)?;
        let page = page.validate()?;
        self.conversations.get(principal, conversation).await?;
        let (rows, total) = self
            .repo
            .list(conversation, filter.status, page.limit(), page.offset())
            .await?;
        let mut items = Vec::with_capacity(rows.len());
        for row in rows {
            items.push(self.respond(row).await?);
        }
        Ok(page.wrap(items, total))
    }

    /// The run once it has stopped (completed, failed, cancelled, or
    /// waiting for approvals), or as it is after `timeout`. Waits for the
    /// run's stop signal, not by reading the run after each step; it reads
    /// again at least every second in case a signal from another node was
    /// lost.
    pub async fn wait(
        &self,
        principal: &Principal,
        id: Uuid,
        timeout: std::time::Duration,
    ) -> Result<RunResponse> {
        self.wait_until(principal, id, timeout, |s| {
            !matches!(s, RunStatus::Queued | RunStatus::Running)
        })
        .await
    }

    /// The run once its status satisfies `done`, or as it is after
    /// `timeout` (see [`RunService::wait`]).
    pub async fn wait_until(
        &self,
        principal: &Principal,
        id: Uuid,
        timeout: std::time::Duration,
        done: impl Fn(RunStatus) -> bool,
    ) -> Result<RunResponse> {
        let mut watch = self.bus.watch(id);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Marked seen before the read: a stop after it wakes the wait.
            watch.stops.borrow_and_update();
            let run = self.get(principal, id).await?;
            let now = tokio::time::Instant::now();
            if done(run.status) || now >= deadline {
                return Ok(run);
            }
            let until = deadline.min(now + std::time::Duration::from_secs(1));
            let _ = tokio::time::timeout_at(until, watch.stops.changed()).await;
        }
    }

    /// Cancels a run: at once when queued or waiting, at the worker's next
    /// await point when running (its status changes shortly after).
    pub async fn cancel(&self, principal: &Principal, id: Uuid) -> Result<RunResponse> {
        principal.require(Permission::ConversationWrite)?;
        let row = self.visible(principal, id).await?;
        if row.status().is_terminal() {
            return Err(Error::conflict(format!(
                "the run is already {}",
                row.status
            )));
        }
        match self.repo.cancel(id, "cancelled by the user").await? {
            Some(true) => {
                self.bus.events(id);
                self.bus.stopped(id);
                self.bus.queued();
            }
            Some(false) => self.bus.cancel(id),
            None => return Err(Error::NotFound("run")),
        }
        self.get(principal, id).await
    }

    /// Applies approval decisions; the run continues once none is pending.
    pub async fn approve(
        &self,
        principal: &Principal,
        id: Uuid,
        input: ApprovalInput,
    ) -> Result<RunResponse> {
        principal.require(Permission::ConversationWrite)?;
        if input.decisions.is_empty() {
            return Err(Error::invalid_field("decisions", "must not be empty"));
        }
        let mut decisions = input.decisions;
        for (i, d) in decisions.iter_mut().enumerate() {
            d.check(i)?;
            d.decided_by = Some(principal.user_id);
        }
        for (i, d) in decisions.iter().enumerate() {
            if decisions[..i].iter().any(|e| e.call_id == d.call_id) {
                return Err(Error::invalid_field(
                    &format!("decisions[{i}].call_id"),
                    "decided twice",
                ));
            }
        }
        self.visible(principal, id).await?;
        let requeued = self.repo.decide(id, &decisions).await?;
        self.bus.events(id);
        if requeued {
            self.bus.queued();
        }
        self.get(principal, id).await
    }

    /// Answers a question a tool call's MCP server asked (see
    /// [`crate::tools::asks`]): the worker holding the call passes the
    /// answer on. The content of an accepted form must match the question's
    /// schema.
    pub async fn answer_elicitation(
        &self,
        principal: &Principal,
        id: Uuid,
        elicitation: Uuid,
        input: ElicitationAnswer,
    ) -> Result<RunResponse> {
        principal.require(Permission::ConversationWrite)?;
        self.visible(principal, id).await?;
        let ask = self
            .repo
            .elicitation(id, elicitation)
            .await?
            .ok_or(Error::NotFound("elicitation"))?;
        if ask.status != "pending" {
            return Err(Error::conflict(format!(
                "the question is no longer open: {}",
                ask.status
            )));
        }
        let content = match (input.action, ask.mode.as_str()) {
            (ElicitationAction::Accept, "form") => {
                let content = input.content.unwrap_or(Value::Null);
                if !content.is_object() {
                    return Err(Error::invalid_field(
                        "content",
                        "accept needs a content object with the fields asked for",
                    ));
                }
                if let Some(schema) = &ask.requested_schema {
                    check_answer(&schema.0, &content)?;
                }
                Some(content)
            }
            (_, _) if input.content.is_some() => {
                return Err(Error::invalid_field(
                    "content",
                    "only an accepted form answer carries content",
                ))
            }
            _ => None,
        };
        let settled = self
            .repo
            .settle_elicitation(
                id,
                elicitation,
                input.action.as_str(),
                content.as_ref(),
                Some(principal.user_id),
            )
            .await?;
        if !settled {
            return Err(Error::conflict("the question is no longer open"));
        }
        self.bus.events(id);
        self.get(principal, id).await
    }

    /// Checks access to a run's events; returns the run's id.
    pub async fn open_events(&self, principal: &Principal, id: Uuid) -> Result<OpenStream> {
        principal.require(Permission::ConversationRead)?;
        let row = self.visible(principal, id).await?;
        let slot = self
            .streams
            .take(principal.user_id, self.config.max_streams_per_user)?;
        Ok(OpenStream {
            id: row.id,
            ended: row.status().is_terminal(),
            slot,
        })
    }

    /// A slot for one more event stream of `principal` (429 past
    /// `runs.max_streams_per_user`), held while the stream is open.
    pub fn stream_slot(&self, principal: &Principal) -> Result<StreamSlot> {
        self.streams
            .take(principal.user_id, self.config.max_streams_per_user)
    }

    /// Stored events after `after`.
    pub async fn events(&self, id: Uuid, after: i64, limit: i64) -> Result<Vec<RunEvent>> {
        Ok(self
            .repo
            .events(id, after, limit)
            .await?
            .into_iter()
            .map(RunEvent::from)
            .collect())
    }
}

/// Checks an answer against the question's schema (a JSON Schema; a
/// schema that does not compile is the server's fault, and the answer goes
/// unchecked rather than unanswerable).
fn check_answer(schema: &Value, content: &Value) -> Result<()> {
    let Ok(validator) = jsonschema::validator_for(schema) else {
        return Ok(());
    };
    if let Some(error) = validator.iter_errors(content).next() {
        let path = error.instance_path().to_string();
        let field = if path.is_empty() {
            "content".to_owned()
        } else {
            format!("content{}", path.replace('/', "."))
        };
        return Err(Error::invalid_field(&field, error.to_string()));
    }
    Ok(())
}
