//! Schedules: an agent's run at set times (a cron expression in a time
//! zone, an interval, or once). Every node may run the scheduler
//! ([`Scheduler`]); an occurrence fires once however many do: a node leases
//! the due schedule, records its firings (one row per occurrence, unique
//! by schedule and time) and its next time in one transaction fenced by
//! the lease, then starts each firing's run under a lease of the firing.
//! The firing carries the ids of its run and conversation, so a node that
//! takes over a firing whose node died finds what was already made.

pub mod model;
pub mod repo;
pub mod routes;
pub mod timing;

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Map};
use sqlx::types::Json;
use uuid::Uuid;

use self::model::*;
use self::repo::{FiringRow, ScheduleRepo, ScheduleRow};
use self::timing::{plan, Compiled};
use crate::agents::AgentService;
use crate::audit::AuditService;
use crate::clock::SharedClock;
use crate::config::SchedulesConfig;
use crate::conversations::model::{ContentInput, ConversationInput};
use crate::conversations::repo::NewConversation;
use crate::conversations::ConversationService;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::pagination::{Page, PageParams};
use crate::runs::model::{RunInput, RunStatus};
use crate::runs::RunService;
use crate::users::model::{Permission, Principal};
use crate::users::UserService;
use crate::webhooks::WebhookService;

/// Firings of one schedule a node records per look (a schedule every
/// second after a pause of the node records the rest at its next look).
const MAX_FIRINGS_PER_PLAN: usize = 100;
/// Schedules and firings a node takes per look.
const CLAIM_BATCH: i64 = 500;
/// Firings a node starts at once.
const START_CONCURRENCY: usize = 32;

use crate::clock::time_of_ms as to_time;

/// Schedules and their firings.
#[derive(Clone)]
pub struct ScheduleService {
    repo: ScheduleRepo,
    agents: AgentService,
    conversations: ConversationService,
    runs: RunService,
    users: UserService,
    webhooks: WebhookService,
    audit: AuditService,
    clock: SharedClock,
    config: SchedulesConfig,
    lease_ms: i64,
    shutdown: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for ScheduleService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScheduleService { .. }")
    }
}

/// What wires a [`ScheduleService`].
pub struct ScheduleDeps {
    /// The database.
    pub db: Db,
    /// Agents (the schedule's must be the owner's, and alive).
    pub agents: AgentService,
    /// Conversations (each firing's).
    pub conversations: ConversationService,
    /// Runs (each firing's).
    pub runs: RunService,
    /// Users (the owner acts through their principal).
    pub users: UserService,
    /// Webhooks (`schedule.fired`).
    pub webhooks: WebhookService,
    /// The audit log.
    pub audit: AuditService,
    /// The clock.
    pub clock: SharedClock,
    /// Settings.
    pub config: SchedulesConfig,
    /// How long a node's claim of a schedule or firing lasts.
    pub lease_ms: i64,
}

impl ScheduleService {
    /// A service over its dependencies.
    pub fn new(deps: ScheduleDeps) -> Self {
        ScheduleService {
            repo: ScheduleRepo::new(deps.db),
            agents: deps.agents,
            conversations: deps.conversations,
            runs: deps.runs,
            users: deps.users,
            webhooks: deps.webhooks,
            audit: deps.audit,
            clock: deps.clock,
            config: deps.config,
            lease_ms: deps.lease_ms,
            shutdown: tokio_util::sync::CancellationToken::new(),
        }
    }

    fn compile(&self, timing: &Timing, created_ms: i64) -> Result<Compiled> {
        let compiled = timing
            .compile(created_ms)
            .map_err(|e| Error::invalid_field("timing", e))?;
        let min_ms = self.config.min_interval_secs as i64 * 1000;
        if let Some(gap) = compiled.shortest_gap_ms(self.clock.now_ms(), 20) {
            if gap < min_ms {
                return Err(Error::unprocessable(
                    "schedule_too_frequent",
                    format!(
                        "the schedule fires {} s apart; the server allows at least {} s (schedules.min_interval_secs)",
                        gap as f64 / 1000.0,
                        self.config.min_interval_secs
                    ),
                ));
            }
        }
        Ok(compiled)
    }

    fn response(&self, row: ScheduleRow) -> ScheduleResponse {
        let state = ScheduleState::parse(&row.state);
        let mut next_fire_times = Vec::new();
        if state == ScheduleState::Active {
            if let (Some(first), Ok(compiled)) = (
                row.next_fire_ms,
                row.timing.0.compile(row.created_at.timestamp_millis()),
            ) {
                let mut at = Some(first);
                while let Some(ms) = at {
                    next_fire_times.push(to_time(ms));
                    if next_fire_times.len() == 5 {
                        break;
                    }
                    at = compiled.next_after(ms);
                }
            }
        }
        ScheduleResponse {
            id: row.id,
            owner_id: row.owner_id,
            agent_id: row.agent_id,
            name: row.name,
            message: row.message,
            timing: row.timing.0,
            conversation: if row.fixed_conversation {
                ConversationMode::Fixed
            } else {
                ConversationMode::New
            },
            conversation_id: row.conversation_id,
            overlap: Overlap::parse(&row.overlap),
            catch_up: if row.catch_up == "skip" {
                CatchUp::Skip
            } else {
                CatchUp::Once
            },
            state,
            state_reason: row.state_reason,
            next_fire_times,
            last_fired_at: row.last_fired_at,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    fn check_message(message: &str) -> Result<()> {
        if message.trim().is_empty() {
            return Err(Error::invalid_field("message", "must not be empty"));
        }
        crate::template::check("message", message)
    }

    async fn visible(&self, principal: &Principal, id: Uuid) -> Result<ScheduleRow> {
        self.repo
            .get(id, principal.owner_scope())
            .await?
            .ok_or(Error::NotFound("schedule"))
    }

    /// Creates a schedule of one of the caller's agents.
    pub async fn create(
        &self,
        principal: &Principal,
        input: ScheduleInput,
    ) -> Result<ScheduleResponse> {
        principal.require(Permission::ConversationWrite)?;
        let name = crate::schema::label(&input.name)?;
        Self::check_message(&input.message)?;
        let agent = self.agents.visible(principal, input.agent_id).await?;
        if agent.user_id != principal.user_id {
            return Err(Error::NotFound("agent"));
        }
        let now_ms = self.clock.now_ms();
        let compiled = self.compile(&input.timing, now_ms)?;
        let next = compiled.next_after(now_ms);
        if next.is_none() {
            return Err(Error::invalid_field("timing", "never fires after now"));
        }
        if self.repo.count(principal.user_id).await? >= self.config.max_per_user {
            return Err(Error::unprocessable(
                "too_many_schedules",
                format!(
                    "a user may have at most {} schedules (schedules.max_per_user)",
                    self.config.max_per_user
                ),
            ));
        }
        let conversation_id = match (input.conversation, input.conversation_id) {
            (ConversationMode::New, Some(_)) => {
                return Err(Error::invalid_field(
                    "conversation_id",
                    "only with conversation: fixed",
                ))
            }
            (ConversationMode::New, None) => None,
            (ConversationMode::Fixed, Some(id)) => {
                let c = self.conversations.get(principal, id).await?;
                if c.agent_id != agent.id {
                    return Err(Error::invalid_field(
                        "conversation_id",
                        "the conversation talks to another agent",
                    ));
                }
                Some(id)
            }
            (ConversationMode::Fixed, None) => Some(
                self.conversations
                    .create(
                        principal,
                        ConversationInput {
                            agent_id: agent.id,
                            title: Some(format!("Schedule: {name}")),
                            metadata: Map::from_iter([("source".to_owned(), json!("schedule"))]),
                        },
                    )
                    .await?
                    .id,
            ),
        };
        let now = db::now();
        let row = ScheduleRow {
            id: Uuid::now_v7(),
            owner_id: principal.user_id,
            agent_id: agent.id,
            name,
            message: input.message,
            timing: Json(input.timing),
            conversation_id,
            fixed_conversation: input.conversation == ConversationMode::Fixed,
            overlap: input.overlap.as_str().to_owned(),
            catch_up: catch_up_name(input.catch_up).to_owned(),
            state: if input.paused { "paused" } else { "active" }.to_owned(),
            state_reason: None,
            next_fire_ms: next,
            last_fired_at: None,
            // The interval's anchor is the creation time as the clock says.
            created_at: to_time(now_ms),
            updated_at: now,
        };
        self.repo.insert(&row).await?;
        self.audit
            .record(
                Some(principal.user_id),
                "schedule.create",
                Some(("schedule", row.id)),
                json!({ "name": row.name, "agent_id": row.agent_id }),
            )
            .await;
        Ok(self.response(row))
    }

    /// One schedule.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<ScheduleResponse> {
        principal.require(Permission::ConversationRead)?;
        Ok(self.response(self.visible(principal, id).await?))
    }

    /// The caller's schedules (admins: everyone's), oldest first.
    pub async fn list(
        &self,
        principal: &Principal,
        page: PageParams,
    ) -> Result<Page<ScheduleResponse>> {
        principal.require(Permission::ConversationRead)?;
        let page = page.validate()?;
        let (rows, total) = self
            .repo
            .list(principal.owner_scope(), page.limit(), page.offset())
            .await?;
        Ok(page.wrap(rows.into_iter().map(|r| self.response(r)).collect(), total))
    }

    /// Changes a schedule; new times take effect from now.
    pub async fn patch(
        &self,
        principal: &Principal,
        id: Uuid,
        patch: SchedulePatch,
    ) -> Result<ScheduleResponse> {
        principal.require(Permission::ConversationWrite)?;
        let mut row = self.visible(principal, id).await?;
        if let Some(name) = &patch.name {
            row.name = crate::schema::label(name)?;
        }
        if let Some(message) = patch.message {
            Self::check_message(&message)?;
            row.message = message;
        }
        if let Some(overlap) = patch.overlap {
            row.overlap = overlap.as_str().to_owned();
        }
        if let Some(catch_up) = patch.catch_up {
            row.catch_up = catch_up_name(catch_up).to_owned();
        }
        if let Some(timing) = patch.timing {
            let now_ms = self.clock.now_ms();
            let compiled = self.compile(&timing, now_ms)?;
            row.timing = Json(timing);
            row.next_fire_ms = compiled.next_after(now_ms);
            if row.state == "finished" && row.next_fire_ms.is_some() {
                row.state = "active".into();
            }
            if row.next_fire_ms.is_none() && row.state == "active" {
                row.state = "finished".into();
            }
        }
        if !self.repo.update(&row).await? {
            return Err(Error::NotFound("schedule"));
        }
        self.audit
            .record(
                Some(principal.user_id),
                "schedule.update",
                Some(("schedule", id)),
                json!({}),
            )
            .await;
        self.get(principal, id).await
    }

    /// Pauses (`pause`) or resumes a schedule. A resumed schedule fires at
    /// its next time from now; occurrences while paused do not fire.
    pub async fn set_paused(
        &self,
        principal: &Principal,
        id: Uuid,
        pause: bool,
    ) -> Result<ScheduleResponse> {
        principal.require(Permission::ConversationWrite)?;
        let mut row = self.visible(principal, id).await?;
        if pause {
            if row.state != "active" {
                return Err(Error::conflict(format!("the schedule is {}", row.state)));
            }
            row.state = "paused".into();
        } else {
            if row.state == "active" {
                return Err(Error::conflict("the schedule is active"));
            }
            self.agents
                .visible(principal, row.agent_id)
                .await
                .map_err(|_| Error::conflict("the schedule's agent was deleted"))?;
            let now_ms = self.clock.now_ms();
            let compiled = self.compile(&row.timing.0, row.created_at.timestamp_millis())?;
            row.next_fire_ms = compiled.next_after(now_ms);
            if row.next_fire_ms.is_none() {
                return Err(Error::conflict("the schedule has no time after now"));
            }
            row.state = "active".into();
            row.state_reason = None;
        }
        if !self.repo.update(&row).await? {
            return Err(Error::NotFound("schedule"));
        }
        self.audit
            .record(
                Some(principal.user_id),
                if pause {
                    "schedule.pause"
                } else {
                    "schedule.resume"
                },
                Some(("schedule", id)),
                json!({}),
            )
            .await;
        self.get(principal, id).await
    }

    /// Deletes a schedule and its history (runs stay).
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<()> {
        principal.require(Permission::ConversationWrite)?;
        self.visible(principal, id).await?;
        if !self.repo.delete(id).await? {
            return Err(Error::NotFound("schedule"));
        }
        self.audit
            .record(
                Some(principal.user_id),
                "schedule.delete",
                Some(("schedule", id)),
                json!({}),
            )
            .await;
        Ok(())
    }

    /// A schedule's firings, newest first.
    pub async fn firings(
        &self,
        principal: &Principal,
        id: Uuid,
        page: PageParams,
    ) -> Result<Page<FiringResponse>> {
        principal.require(Permission::ConversationRead)?;
        let page = page.validate()?;
        self.visible(principal, id).await?;
        let (rows, total) = self.repo.firings(id, page.limit(), page.offset()).await?;
        let items = rows
            .into_iter()
            .map(|(f, run_status)| FiringResponse {
                id: f.id,
                due_at: to_time(f.due_ms),
                status: match f.status.as_str() {
                    "pending" => FiringStatus::Pending,
                    "started" => FiringStatus::Started,
                    "skipped" => FiringStatus::Skipped,
                    _ => FiringStatus::Failed,
                },
                reason: f.reason,
                missed: f.missed,
                run_id: f.run_id.filter(|_| f.status == "started"),
                conversation_id: f.conversation_id.filter(|_| f.status == "started"),
                run_status,
                created_at: f.created_at,
                started_at: f.started_at,
            })
            .collect();
        Ok(page.wrap(items, total))
    }

    /// Starts this node's scheduler: every `schedules.tick_ms` it records
    /// the firings of due schedules and starts pending firings' runs, until
    /// [`Self::shutdown`].
    pub fn start(&self) {
        let node = Uuid::now_v7();
        let this = self.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(this.config.tick_ms));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                if let Err(e) = this.tick(node).await {
                    tracing::warn!(error = %e, "the scheduler's look for due schedules failed");
                }
            }
        });
    }

    /// Stops this node's scheduler (a firing being started finishes, or is
    /// taken over by another node when its lease expires).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// One look: records due schedules' firings, then starts pending
    /// firings. Returns how many runs it started.
    pub async fn tick(&self, node: Uuid) -> Result<usize> {
        loop {
            let now_ms = self.clock.now_ms();
            let due = self
                .repo
                .claim_due(node, now_ms, self.lease_ms, CLAIM_BATCH)
                .await?;
            let more = due.len() as i64 == CLAIM_BATCH;
            let mut plans = Vec::with_capacity(due.len());
            for schedule in &due {
                if let Some((firings, next)) = self.plan_of(schedule, now_ms).await {
                    plans.push((schedule, firings, next));
                }
            }
            // One transaction for the batch; a failure leaves the leases
            // to expire, and the schedules are planned again.
            if let Err(e) = self.repo.record_plans(node, &plans).await {
                tracing::warn!(error = %e, "recording schedules' firings failed");
                break;
            }
            if !more {
                break;
            }
        }
        let mut started = 0;
        loop {
            let now_ms = self.clock.now_ms();
            let firings = self
                .repo
                .claim_firings(node, now_ms, self.lease_ms, CLAIM_BATCH)
                .await?;
            let more = firings.len() as i64 == CLAIM_BATCH;
            started += self.start_batch(node, firings).await?;
            if !more {
                break;
            }
        }
        Ok(started)
    }

    /// The plan of a due schedule now (None: its timing no longer
    /// compiles, and it was stopped).
    async fn plan_of(
        &self,
        schedule: &ScheduleRow,
        now_ms: i64,
    ) -> Option<(Vec<timing::Planned>, Option<i64>)> {
        let next = schedule.next_fire_ms?;
        let compiled = match schedule
            .timing
            .0
            .compile(schedule.created_at.timestamp_millis())
        {
            Ok(c) => c,
            Err(e) => {
                let _ = self
                    .repo
                    .stop(schedule.id, &format!("its timing is no longer valid: {e}"))
                    .await;
                return None;
            }
        };
        let catch_up = if schedule.catch_up == "skip" {
            CatchUp::Skip
        } else {
            CatchUp::Once
        };
        let plan = plan(
            &compiled,
            next,
            now_ms,
            self.config.misfire_grace_secs as i64 * 1000,
            catch_up,
            MAX_FIRINGS_PER_PLAN,
        );
        Some((plan.firings, plan.next_ms))
    }

    /// Starts a batch of firings `node` leased. What can be read for the
    /// whole batch is read once (the schedules, runs already made by a
    /// node that died, the previous firings' runs, the owners); the new
    /// conversations are written in one transaction, the runs go through
    /// the run writer's group commit, and the firings are settled in one
    /// transaction. Returns how many runs it started.
    async fn start_batch(&self, node: Uuid, firings: Vec<FiringRow>) -> Result<usize> {
        if firings.is_empty() {
            return Ok(0);
        }
        let mut schedule_ids: Vec<Uuid> = firings.iter().map(|f| f.schedule_id).collect();
        schedule_ids.sort();
        schedule_ids.dedup();
        let schedules: HashMap<Uuid, ScheduleRow> = self
            .repo
            .get_many(&schedule_ids)
            .await?
            .into_iter()
            .map(|s| (s.id, s))
            .collect();
        let run_ids: Vec<Uuid> = firings.iter().filter_map(|f| f.run_id).collect();
        let made: HashSet<Uuid> = self
            .repo
            .existing("runs", &run_ids)
            .await?
            .into_iter()
            .collect();
        let conversation_ids: Vec<Uuid> =
            firings.iter().filter_map(|f| f.conversation_id).collect();
        let conversations: HashSet<Uuid> = self
            .repo
            .existing("conversations", &conversation_ids)
            .await?
            .into_iter()
            .collect();
        let previous: HashMap<Uuid, (Uuid, Option<String>)> = self
            .repo
            .previous_runs(&schedule_ids)
            .await?
            .into_iter()
            .map(|(s, r, status)| (s, (r, status)))
            .collect();
        let mut principals: HashMap<Uuid, std::result::Result<Principal, String>> = HashMap::new();
        let mut live_agents: HashMap<Uuid, bool> = HashMap::new();
        let mut settles: Vec<(Uuid, &'static str, Option<String>, Option<Uuid>)> = Vec::new();
        let mut starts = Vec::new();
        let mut new_conversations = Vec::new();
        for firing in &firings {
            let (Some(schedule), Some(run_id)) =
                (schedules.get(&firing.schedule_id), firing.run_id)
            else {
                continue; // Deleted with its schedule.
            };
            if made.contains(&run_id) {
                // Taken over from a node that died after starting the run.
                settles.push((firing.id, "started", None, None));
                continue;
            }
            if let Entry::Vacant(slot) = principals.entry(schedule.owner_id) {
                let p = self
                    .users
                    .acting_as(schedule.owner_id)
                    .await
                    .map_err(|e| format!("its owner cannot act: {e}"));
                slot.insert(p);
            }
            let principal = match &principals[&schedule.owner_id] {
                Ok(p) => p.clone(),
                Err(reason) => {
                    self.repo.stop(schedule.id, reason).await?;
                    settles.push((firing.id, "failed", Some(reason.clone()), None));
                    continue;
                }
            };
            if let Entry::Vacant(slot) = live_agents.entry(schedule.agent_id) {
                let live = self
                    .agents
                    .visible(&principal, schedule.agent_id)
                    .await
                    .is_ok();
                slot.insert(live);
            }
            if !live_agents[&schedule.agent_id] {
                self.repo.stop(schedule.id, "its agent was deleted").await?;
                settles.push((
                    firing.id,
                    "failed",
                    Some("its agent was deleted".into()),
                    None,
                ));
                continue;
            }
            if let Some((previous, Some(status))) = previous.get(&schedule.id) {
                let active = matches!(
                    RunStatus::parse(status),
                    Some(RunStatus::Queued | RunStatus::Running | RunStatus::RequiresAction)
                );
                if active {
                    match Overlap::parse(&schedule.overlap) {
                        Overlap::Skip => {
                            settles.push((
                                firing.id,
                                "skipped",
                                Some(format!("the previous run {previous} had not ended")),
                                None,
                            ));
                            continue;
                        }
                        Overlap::Queue if !schedule.fixed_conversation => {
                            // Looked at again shortly; later firings wait
                            // behind this one.
                            let retry = self.clock.now_ms() + self.config.tick_ms as i64 * 4;
                            self.repo.postpone_firing(firing.id, node, retry).await?;
                            continue;
                        }
                        // In a fixed conversation the run queues behind the
                        // previous one.
                        Overlap::Queue => {}
                        Overlap::Cancel => {
                            if let Err(e) = self.runs.cancel(&principal, *previous).await {
                                tracing::debug!(run = %previous, error = %e, "cancelling the previous run");
                            }
                        }
                    }
                }
            }
            let message = match crate::template::render(
                &schedule.message,
                &self.template_context(schedule, firing),
            ) {
                Ok(m) if !m.trim().is_empty() => m,
                Ok(_) => {
                    settles.push((
                        firing.id,
                        "failed",
                        Some("the message rendered empty".into()),
                        None,
                    ));
                    continue;
                }
                Err(e) => {
                    settles.push((firing.id, "failed", Some(e), None));
                    continue;
                }
            };
            let fixed = schedule
                .conversation_id
                .filter(|_| schedule.fixed_conversation);
            let conversation = match fixed {
                Some(id) if self.conversations.get(&principal, id).await.is_ok() => id,
                _ => {
                    let id = firing.conversation_id.unwrap_or_else(Uuid::now_v7);
                    if !conversations.contains(&id) {
                        let due = to_time(firing.due_ms);
                        new_conversations.push((
                            principal.clone(),
                            NewConversation {
                                id,
                                owner: principal.user_id,
                                agent: schedule.agent_id,
                                title: format!(
                                    "{} · {}",
                                    schedule.name,
                                    due.format("%Y-%m-%d %H:%M")
                                ),
                                metadata: Map::from_iter([
                                    ("source".to_owned(), json!("schedule")),
                                    ("schedule_id".to_owned(), json!(schedule.id)),
                                ]),
                            },
                        ));
                    }
                    if schedule.fixed_conversation {
                        // Its conversation was deleted: made again.
                        self.repo.set_conversation(schedule.id, id).await?;
                    }
                    id
                }
            };
            starts.push((
                firing.clone(),
                schedule.clone(),
                principal,
                conversation,
                run_id,
                message,
            ));
        }
        self.conversations.create_many(&new_conversations).await?;
        let runs = self.runs.clone();
        let created: Vec<_> = futures_util::stream::iter(starts)
            .map(
                move |(firing, schedule, principal, conversation, run_id, message)| {
                    let runs = runs.clone();
                    async move {
                        let result = runs
                            .create(
                                &principal,
                                conversation,
                                RunInput {
                                    message: Some(ContentInput::Text(message)),
                                    limits: None,
                                    on_active: None,
                                    options: None,
                                    id: Some(run_id),
                                },
                            )
                            .await;
                        (firing, schedule, conversation, run_id, result)
                    }
                },
            )
            .buffer_unordered(START_CONCURRENCY)
            .collect()
            .await;
        let mut started = Vec::new();
        for (firing, schedule, conversation, run_id, result) in created {
            match result {
                Ok(_) => {
                    settles.push((firing.id, "started", None, Some(conversation)));
                    started.push((firing, schedule, conversation, run_id));
                }
                // Left pending: tried again when the lease expires.
                Err(Error::Internal(e)) => {
                    tracing::warn!(firing = %firing.id, error = %e, "starting a schedule's firing failed");
                }
                Err(Error::Unavailable(e)) => {
                    tracing::warn!(firing = %firing.id, error = %e, "starting a schedule's firing failed");
                }
                Err(Error::Conflict { .. }) if self.runs.exists(run_id).await? => {
                    // Another node started it (this node's lease ran out
                    // meanwhile).
                    settles.push((firing.id, "started", None, Some(conversation)));
                }
                Err(e) => {
                    // A quota, the agent's provider: this firing fails, the
                    // schedule goes on.
                    let _ = self.runs.usage().release(run_id).await;
                    settles.push((firing.id, "failed", Some(e.to_string()), None));
                }
            }
        }
        self.repo.settle_many(node, &settles).await?;
        let mut wanted: HashMap<Uuid, bool> = HashMap::new();
        for (firing, schedule, conversation, run_id) in &started {
            if let Entry::Vacant(slot) = wanted.entry(schedule.owner_id) {
                let wants = self
                    .webhooks
                    .wanted(Some(schedule.owner_id), "schedule.fired")
                    .await;
                slot.insert(wants);
            }
            if !wanted[&schedule.owner_id] {
                continue;
            }
            self.webhooks
                .emit(
                    schedule.owner_id,
                    "schedule.fired",
                    &format!("schedule.fired:{}", firing.id),
                    json!({
                        "schedule_id": schedule.id,
                        "schedule_name": schedule.name,
                        "firing_id": firing.id,
                        "due_at": to_time(firing.due_ms),
                        "run_id": run_id,
                        "conversation_id": conversation,
                    }),
                )
                .await;
        }
        Ok(started.len())
    }

    fn template_context(&self, schedule: &ScheduleRow, firing: &FiringRow) -> serde_json::Value {
        let fired_at = to_time(self.clock.now_ms());
        let local = match &schedule.timing.0 {
            Timing::Cron {
                timezone: Some(tz), ..
            } => tz
                .parse::<chrono_tz::Tz>()
                .map(|tz| fired_at.with_timezone(&tz).to_rfc3339())
                .unwrap_or_else(|_| fired_at.to_rfc3339()),
            _ => fired_at.to_rfc3339(),
        };
        json!({
            "fired_at": fired_at.to_rfc3339(),
            "fired_at_local": local,
            "due_at": to_time(firing.due_ms).to_rfc3339(),
            "missed": firing.missed,
            "schedule": { "id": schedule.id, "name": schedule.name },
        })
    }
}

fn catch_up_name(c: CatchUp) -> &'static str {
    match c {
        CatchUp::Once => "once",
        CatchUp::Skip => "skip",
    }
}
