//! The worker: claims queued runs, executes the agent loop, persists every
//! step before the next, and resumes runs whose worker died.
//!
//! A run's state is derived from what is stored, never from memory: the
//! conversation's messages written by the run (tagged with its id in their
//! metadata) and the run's `run_tool_calls`. So the first execution and a
//! resumption after a crash are the same code: look at the last message the
//! run wrote; if it asked for tool calls, answer the unanswered ones (a
//! non-idempotent call that was started but not recorded gets an
//! "interrupted" result instead of a second execution); otherwise call the
//! model; stop at a final answer or a limit.
//!
//! A new run usually does not wait for the dispatcher: when this node has a
//! free slot and the conversation no unfinished run, the API creates it
//! already `running` and leased here, with its input message, in one commit
//! ([`Engine::opening`]), and hands it to a worker with the agent and
//! provider it loaded ([`Engine::adopt`]).
//!
//! One process runs one dispatcher (claims runs while it has free slots), one
//! heartbeat (extends the leases of its runs in one statement and picks up
//! cancellations the bus missed) and one sweeper (re-queues runs whose lease
//! expired, expires approvals).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde_json::{json, Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::bus::{Bus, RunWatch};
use super::model::*;
use super::repo::*;
use super::writer::{Created, DirectStart, StepRun, StepWrite, Writer};
use crate::agents::repo::{AgentRepo, AgentRow};
use crate::config::RunsConfig;
use crate::conversations::model::{ContentPart, MessageRole};
use crate::conversations::repo::{ConversationRepo, MessageRow};
use crate::db::Db;
use crate::models::ModelService;
use crate::providers::{
    Accumulator, ChatMessage, ChatRequest, Provider, StreamEvent, ToolCall, ToolDefinition,
};
use crate::tools::asks::{self, Ask, CallOrigin};
use crate::tools::ToolCatalogue;

/// What woke a worker waiting for a user's answer.
enum Wake {
    Cancelled,
    Expired,
    Withdrawn,
    Look,
}

/// The largest schema a question may carry (bytes of JSON).
const MAX_QUESTION_SCHEMA: usize = 32 * 1024;

/// Runs claimed per query.
const CLAIM_BATCH: usize = 64;

/// The run engine of one process.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.inner.node)
            .finish_non_exhaustive()
    }
}

struct Inner {
    repo: RunRepo,
    conversations: ConversationRepo,
    agents: AgentRepo,
    tools: ToolCatalogue,
    models: ModelService,
    bus: Bus,
    writer: Writer,
    node: Uuid,
    config: RunsConfig,
    slots: Arc<Semaphore>,
    /// Set by [`Engine::start`]: this process executes runs.
    working: std::sync::atomic::AtomicBool,
    stopping: std::sync::atomic::AtomicBool,
}

/// A worker slot kept for a new run that may start at once (see
/// [`Engine::opening`]).
pub struct Ticket {
    permit: OwnedSemaphorePermit,
    /// The seq of the run's last event once it started.
    seq: i64,
}

/// What the API already loaded for a run it starts at once.
struct Prepared {
    agent: AgentRow,
    provider: Arc<dyn Provider>,
}

/// A run that started at once: what was loaded, its last event's seq, and
/// its history when that is only its input.
struct Adopted {
    prepared: Prepared,
    seq: i64,
    history: Option<Vec<MessageRow>>,
}

/// How a run's execution ended on this worker.
enum Stop {
    /// The run reached a final state or parked for approval.
    Done,
    /// Cancelled by a user.
    Cancelled,
    /// A limit or a failure ends it.
    Failed(RunError),
}

impl Engine {
    /// An engine over `db`; call [`Engine::start`] to execute runs.
    pub fn new(
        db: Db,
        tools: ToolCatalogue,
        models: ModelService,
        bus: Bus,
        writer: Writer,
        config: RunsConfig,
    ) -> Self {
        Engine {
            inner: Arc::new(Inner {
                writer,
                repo: RunRepo::new(db.clone()),
                conversations: ConversationRepo::new(db.clone()),
                agents: AgentRepo::new(db),
                tools,
                models,
                bus,
                node: Uuid::now_v7(),
                slots: Arc::new(Semaphore::new(config.max_concurrent)),
                working: std::sync::atomic::AtomicBool::new(false),
                stopping: std::sync::atomic::AtomicBool::new(false),
                config,
            }),
        }
    }

    /// This process's worker id (the `lease_owner` of its runs).
    pub fn node(&self) -> Uuid {
        self.inner.node
    }

    /// Stops claiming runs and hands this node's running runs back to the
    /// queue, so another node (or this one, restarted) resumes them at once
    /// instead of after their lease. Called on a graceful shutdown.
    pub async fn shutdown(&self) {
        self.inner
            .stopping
            .store(true, std::sync::atomic::Ordering::SeqCst);
        match self.inner.repo.release(self.inner.node).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(runs = n, "handed running runs back to the queue"),
            Err(e) => {
                tracing::warn!(error = %e, "could not hand runs back; they resume when their lease expires")
            }
        }
    }

    /// How a new run can start at once on this worker: a free slot, the
    /// lease, the input message and the first events. `None` when this
    /// process executes no runs, is stopping, or has no free slot (the run
    /// is then only queued).
    pub fn opening(&self, run: &RunRow) -> Option<(DirectStart, Ticket)> {
        use std::sync::atomic::Ordering;
        let me = &self.inner;
        if !me.working.load(Ordering::SeqCst) || me.stopping.load(Ordering::SeqCst) {
            return None;
        }
        let permit = me.slots.clone().try_acquire_owned().ok()?;
        let mut events = vec![NewEvent {
            seq: 2,
            kind: "run.status",
            data: json!({ "status": "running", "attempt": 1, "worker": me.node }),
        }];
        let message = run.input.as_ref().map(|input| {
            let message = run_message(run.id, MessageRole::User, input.0.clone());
            events.push(NewEvent {
                seq: 3,
                kind: "message.completed",
                data: message_preview(&message),
            });
            message
        });
        let seq = events.len() as i64 + 1;
        let start = DirectStart {
            owner: me.node,
            lease_until: now_ms() + me.lease_ms(),
            message,
            events,
        };
        Some((start, Ticket { permit, seq }))
    }

    /// Executes a new run that [`Engine::opening`] started, with the agent
    /// and provider the API loaded. A run that did not start (its
    /// conversation was busy) just gives its slot back.
    pub fn adopt(
        &self,
        ticket: Ticket,
        created: &Created,
        agent: AgentRow,
        provider: Arc<dyn Provider>,
    ) {
        if created.row.status != "running" {
            return;
        }
        let me = self.inner.clone();
        let run = created.row.clone();
        // With its first message numbered 1, the run's input is the whole
        // history: nothing to read.
        let history = created
            .appended
            .first()
            .is_some_and(|m| m.seq == 1)
            .then(|| created.appended.clone());
        let adopted = Box::new(Adopted {
            prepared: Prepared { agent, provider },
            seq: ticket.seq,
            history,
        });
        let run = Box::new(run);
        tokio::spawn(async move {
            me.execute(run, Some(adopted)).await;
            drop(ticket.permit);
            me.bus.run_ended();
        });
    }

    /// Starts the dispatcher, the heartbeat and the sweeper.
    pub fn start(&self) {
        self.inner
            .working
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let lease = Duration::from_secs(self.inner.config.lease_secs);
        let me = self.inner.clone();
        tokio::spawn(async move { me.dispatch().await });
        let me = self.inner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(lease / 3);
            loop {
                tick.tick().await;
                match me.repo.heartbeat(me.node, me.lease_ms()).await {
                    Ok(cancelled) => cancelled.into_iter().for_each(|id| me.bus.cancel(id)),
                    Err(e) => tracing::warn!(error = %e, "run heartbeat failed"),
                }
            }
        });
        let me = self.inner.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval((lease / 2).max(Duration::from_secs(1)));
            loop {
                tick.tick().await;
                match me.repo.sweep().await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(runs = n, "re-queued runs (expired lease or approval)");
                        me.bus.queued();
                    }
                    Err(e) => tracing::warn!(error = %e, "run sweeper failed"),
                }
            }
        });
    }
}

impl Inner {
    fn lease_ms(&self) -> i64 {
        (self.config.lease_secs * 1000) as i64
    }

    async fn dispatch(self: Arc<Self>) {
        let poll = Duration::from_millis(self.config.poll_ms);
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            let free = self.slots.available_permits().min(CLAIM_BATCH);
            let mut claimed = 0;
            if free > 0 {
                match self
                    .repo
                    .claim(self.node, self.lease_ms(), free as i64)
                    .await
                {
                    Ok(rows) => {
                        claimed = rows.len();
                        if claimed == 0 {
                            if let Ok(any) = self.repo.any_queued().await {
                                self.bus.queue_seen(any);
                            }
                        }
                        for row in rows {
                            let permit = self
                                .slots
                                .clone()
                                .try_acquire_owned()
                                .expect("a slot was free");
                            let me = self.clone();
                            tokio::spawn(async move {
                                let id = row.id;
                                me.execute(Box::new(row), None).await;
                                drop(permit);
                                me.bus.run_ended();
                                tracing::debug!(run = %id, "run left the worker");
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "claiming runs failed"),
                }
            }
            if claimed == free && free > 0 {
                continue;
            }
            tokio::select! {
                _ = self.bus.wait_queued() => {}
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    /// Executes a claimed run, or one that started at once with what the
    /// API prepared (its last event's seq, and its history when it is only
    /// its input).
    ///
    /// What a waiting run holds is this future's state and those it awaits:
    /// arguments and the execution are boxed (an async fn keeps its
    /// arguments for its whole life), and so are the futures it awaits
    /// (10,000 runs in flight must fit in little memory).
    async fn execute(self: &Arc<Self>, run: Box<RunRow>, adopted: Option<Box<Adopted>>) {
        let watch = self.bus.watch(run.id);
        let id = run.id;
        let mut exec = match Box::pin(Execution::new(self.clone(), *run, watch, adopted)).await {
            Ok(e) => Box::new(e),
            Err(e) => {
                tracing::error!(run = %id, error = %e, "cannot start the run; its lease will expire and it will be retried");
                return;
            }
        };
        let stop = Box::pin(exec.drive()).await;
        let outcome = match stop {
            Ok(Stop::Done) => Ok(()),
            Ok(Stop::Cancelled) => Box::pin(exec.finish(RunStatus::Cancelled, None)).await,
            Ok(Stop::Failed(error)) => Box::pin(exec.finish(RunStatus::Failed, Some(error))).await,
            Err(e) => Err(e),
        };
        match outcome {
            Ok(()) => {}
            Err(StepError::LeaseLost) => {
                tracing::info!(run = %id, "the run was taken over or ended elsewhere; this worker stops")
            }
            Err(StepError::Db(e)) => {
                tracing::error!(run = %id, error = %e, "run step failed; the run will be resumed when its lease expires")
            }
        }
    }
}

/// One run on this worker.
struct Execution {
    engine: Arc<Inner>,
    run: RunRow,
    watch: RunWatch,
    seq: i64,
    deadline: tokio::time::Instant,
    history: Vec<MessageRow>,
    /// Tool calls this worker stored, as stored (saves re-reading them).
    known_calls: HashMap<String, ToolCallRow>,
    /// Calls whose `tool_call.started` event went out with the model output.
    announced: std::collections::HashSet<String>,
    /// Set when the run started at once: its first step is stored.
    prepared: Option<Prepared>,
}

/// What the stored story says comes next.
enum Next {
    Model,
    Tools(Vec<ToolCall>),
    Finished,
}

fn text_of(parts: &[ContentPart]) -> String {
    let mut out = String::new();
    for part in parts {
        if let ContentPart::Text { text } = part {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(text);
        }
    }
    out
}

/// The tool calls among a message's parts, in order.
fn tool_calls_of(parts: &[ContentPart]) -> Vec<ToolCall> {
    parts
        .iter()
        .filter_map(|p| match p {
            ContentPart::ToolCall {
                id,
                name,
                arguments,
            } => Some(ToolCall {
                id: id.clone(),
                name: name.clone(),
                arguments: arguments.clone(),
                arguments_error: None,
            }),
            _ => None,
        })
        .collect()
}

fn run_of(message: &MessageRow) -> Option<Uuid> {
    message.metadata.0.get("run_id")?.as_str()?.parse().ok()
}

/// A message of `run` (tagged with its id).
fn run_message(run: Uuid, role: MessageRole, content: Vec<ContentPart>) -> NewMessage {
    let mut metadata = Map::new();
    metadata.insert("run_id".into(), json!(run));
    NewMessage {
        id: Uuid::now_v7(),
        role: role.as_str(),
        content,
        metadata,
    }
}

/// The result text a model sees for a tool's value.
fn result_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Array(blocks) if !blocks.is_empty() && blocks.iter().all(is_content_block) => {
            blocks.iter().map(block_text).collect::<Vec<_>>().join("\n")
        }
        other => other.to_string(),
    }
}

/// Whether an agent's model is given images (`config.vision`, on unless
/// set to `false`: for models that take text only).
pub fn takes_images(config: &Map<String, Value>) -> bool {
    config
        .get("vision")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

/// Image types every vendor that takes images accepts.
const IMAGE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// The images a tool's result holds (MCP image blocks), as `data:` URLs.
fn result_images(value: &Value) -> Vec<String> {
    let Value::Array(blocks) = value else {
        return Vec::new();
    };
    if !blocks.iter().all(is_content_block) {
        return Vec::new();
    }
    blocks
        .iter()
        .filter(|b| b["type"] == "image")
        .filter_map(|b| {
            let mime = b["mimeType"].as_str()?;
            let data = b["data"].as_str()?;
            IMAGE_TYPES
                .contains(&mime)
                .then(|| format!("data:{mime};base64,{data}"))
        })
        .take(MAX_RESULT_IMAGES)
        .collect()
}

/// Images of one tool result given to a model.
const MAX_RESULT_IMAGES: usize = 8;

/// An image as text, for models that take none: its URL, or the type and
/// size of inline data.
fn image_description(url: &str) -> String {
    match url.strip_prefix("data:") {
        Some(rest) => {
            let (mime, data) = rest.split_once(',').unwrap_or((rest, ""));
            let mime = mime.trim_end_matches(";base64");
            format!("[image {mime}, {} bytes]", data.len() / 4 * 3)
        }
        None => format!("[image <{url}>]"),
    }
}

/// Whether `value` is an MCP content block (what a bridged tool returns
/// when its result is not text alone).
fn is_content_block(value: &Value) -> bool {
    matches!(
        value.get("type").and_then(Value::as_str),
        Some("text" | "image" | "audio" | "resource_link" | "resource")
    )
}

/// A content block as the model reads it: text as itself, media and
/// binary resources described (type and size) rather than pasted as
/// base64, links and embedded text resources with their URI.
fn block_text(block: &Value) -> String {
    let str_of = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let size = |data: &str| data.len() / 4 * 3;
    match block["type"].as_str().unwrap_or_default() {
        "text" => str_of(block, "text"),
        kind @ ("image" | "audio") => format!(
            "[{kind} {}, {} bytes]",
            str_of(block, "mimeType"),
            size(&str_of(block, "data"))
        ),
        "resource_link" => {
            let title = block
                .get("title")
                .or_else(|| block.get("name"))
                .and_then(Value::as_str)
                .unwrap_or_default();
            format!("[resource link: {title} <{}>]", str_of(block, "uri"))
        }
        _ => {
            let resource = &block["resource"];
            match resource.get("text").and_then(Value::as_str) {
                Some(text) => format!("[resource <{}>]\n{text}", str_of(resource, "uri")),
                None => format!(
                    "[resource <{}>: {}, {} bytes]",
                    str_of(resource, "uri"),
                    str_of(resource, "mimeType"),
                    size(&str_of(resource, "blob"))
                ),
            }
        }
    }
}

impl Execution {
    async fn new(
        engine: Arc<Inner>,
        run: RunRow,
        watch: RunWatch,
        adopted: Option<Box<Adopted>>,
    ) -> Result<Self, crate::error::Error> {
        let (prepared, seq, history) = match adopted.map(|a| *a) {
            Some(Adopted {
                prepared,
                seq,
                history,
            }) => (Some(prepared), seq, history),
            // A first attempt has only its `queued` event so far.
            None if run.attempts == 1 => (None, 1, None),
            None => (None, engine.repo.last_event(run.id).await?, None),
        };
        let history = match history {
            Some(h) => h,
            None => {
                engine
                    .conversations
                    .messages(run.conversation_id, 0, i64::MAX)
                    .await?
            }
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(run.limits.timeout_secs);
        Ok(Execution {
            engine,
            run,
            watch,
            seq,
            deadline,
            history,
            known_calls: HashMap::new(),
            announced: Default::default(),
            prepared,
        })
    }

    fn event(&mut self, kind: &'static str, data: Value) -> NewEvent {
        self.seq += 1;
        NewEvent {
            seq: self.seq,
            kind,
            data,
        }
    }

    fn cancelled(&self) -> bool {
        *self.watch.cancel.borrow()
    }

    /// One fenced write; keeps the local view in step with what was stored.
    /// Boxed: a caller's future then holds a pointer, not the write.
    fn write(
        &mut self,
        messages: Vec<NewMessage>,
        new_calls: Vec<NewCall>,
        started: Vec<String>,
        outcomes: Vec<CallOutcome>,
        update: RunUpdate,
        events: Vec<NewEvent>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StepError>> + Send + '_>>
    {
        Box::pin(async move {
            let (steps, input_tokens, output_tokens) =
                (update.steps, update.input_tokens, update.output_tokens);
            let sets_input = update.sets_input;
            let stops = update.status.is_some_and(|s| s != RunStatus::Running);
            let has_events = !events.is_empty();
            let rows = self
                .engine
                .writer
                .step(StepWrite {
                    run: StepRun {
                        id: self.run.id,
                        conversation_id: self.run.conversation_id,
                        step_count: self.run.step_count,
                    },
                    owner: self.engine.node,
                    messages,
                    new_calls,
                    started,
                    outcomes,
                    update,
                    events,
                })
                .await?;
            self.run.step_count += steps;
            self.run.input_tokens += input_tokens;
            self.run.output_tokens += output_tokens;
            if sets_input {
                self.run.input_seq = rows.first().map(|r| r.seq);
            }
            self.history.extend(rows);
            if has_events {
                self.engine.bus.events(self.run.id);
            }
            if stops {
                self.engine.bus.stopped(self.run.id);
            }
            Ok(())
        })
    }

    /// A write of events alone.
    fn write_events(
        &mut self,
        events: Vec<NewEvent>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), StepError>> + Send + '_>>
    {
        self.write(
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            RunUpdate::default(),
            events,
        )
    }

    /// A message of this run (tagged with its id).
    fn message(&self, role: MessageRole, content: Vec<ContentPart>) -> NewMessage {
        run_message(self.run.id, role, content)
    }

    /// Ends the run in `status`.
    async fn finish(
        &mut self,
        status: RunStatus,
        error: Option<RunError>,
    ) -> Result<(), StepError> {
        let mut data = json!({ "status": status });
        if let Some(e) = &error {
            data["error"] = json!(e);
        }
        let events = vec![
            self.event("run.status", data.clone()),
            self.event("done", data),
        ];
        self.write(
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            RunUpdate {
                status: Some(status),
                error,
                ..RunUpdate::default()
            },
            events,
        )
        .await?;
        Ok(())
    }

    async fn drive(&mut self) -> Result<Stop, StepError> {
        if self.run.cancel_requested {
            return Ok(Stop::Cancelled);
        }
        if self.run.attempts > self.engine.config.max_attempts {
            return Ok(Stop::Failed(RunError::new(
                "internal",
                format!(
                    "the run was interrupted {} times; giving up",
                    self.run.attempts - 1
                ),
            )));
        }
        if self.run.attempts > 1 {
            // Questions a call of an interrupted attempt asked died with
            // that call: they are no longer the user's to answer.
            self.engine.repo.withdraw_elicitations(self.run.id).await?;
        }
        if let Some(Prepared { agent, provider }) = self.prepared.take() {
            // Started at once: the first step is stored with the run.
            return Box::pin(self.steps(&agent, provider.as_ref())).await;
        }
        let agent = match Box::pin(self.engine.agents.get(self.run.agent_id, None)).await {
            Ok(Some(agent)) => agent,
            Ok(None) => {
                return Ok(Stop::Failed(RunError::new(
                    "agent_deleted",
                    "the agent was deleted",
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let provider = match Box::pin(
            self.engine
                .models
                .client(&self.run.provider, self.run.user_id),
        )
        .await
        {
            Ok(p) => p,
            Err(e) => {
                return Ok(Stop::Failed(RunError::new(
                    "provider_unavailable",
                    format!("provider {:?}: {e}", self.run.provider),
                )))
            }
        };
        // Start (or resume): the status event, and the run's own message.
        let mut events = vec![self.event(
            "run.status",
            json!({ "status": "running", "attempt": self.run.attempts, "worker": self.engine.node }),
        )];
        let mut messages = Vec::new();
        if self.run.input_seq.is_none() {
            if let Some(input) = &self.run.input {
                let message = self.message(MessageRole::User, input.0.clone());
                events.push(self.event("message.completed", message_preview(&message)));
                messages.push(message);
            }
        }
        let update = RunUpdate {
            sets_input: !messages.is_empty(),
            ..RunUpdate::default()
        };
        self.write(messages, Vec::new(), Vec::new(), Vec::new(), update, events)
            .await?;
        Box::pin(self.steps(&agent, provider.as_ref())).await
    }

    /// The loop of model and tool steps, from what is stored.
    async fn steps(
        &mut self,
        agent: &AgentRow,
        provider: &dyn Provider,
    ) -> Result<Stop, StepError> {
        loop {
            if self.cancelled() {
                return Ok(Stop::Cancelled);
            }
            let next = self.next();
            let stop = match next {
                Next::Finished => {
                    Box::pin(self.finish(RunStatus::Completed, None)).await?;
                    return Ok(Stop::Done);
                }
                Next::Model => Box::pin(self.model_step(agent, provider)).await?,
                Next::Tools(calls) => Box::pin(self.tool_step(agent, calls)).await?,
            };
            if let Some(stop) = stop {
                return Ok(stop);
            }
        }
    }

    /// What the stored story says comes next.
    fn next(&self) -> Next {
        let id = self.run.id;
        let Some(pos) = self
            .history
            .iter()
            .rposition(|m| run_of(m) == Some(id) && m.role == MessageRole::Assistant.as_str())
        else {
            return Next::Model;
        };
        let assistant = &self.history[pos];
        let calls = tool_calls_of(&assistant.content.0);
        if calls.is_empty() {
            return Next::Finished;
        }
        let answered: Vec<&str> = self.history[pos + 1..]
            .iter()
            .flat_map(|m| m.content.0.iter())
            .filter_map(|p| match p {
                ContentPart::ToolResult { call_id, .. } => Some(call_id.as_str()),
                _ => None,
            })
            .collect();
        let pending: Vec<ToolCall> = calls
            .into_iter()
            .filter(|c| !answered.contains(&c.id.as_str()))
            .collect();
        // Calls of the client's own tools are the client's to answer, in a
        // later run: once the agent's calls are answered, this run ends.
        let (client, own): (Vec<ToolCall>, Vec<ToolCall>) = pending
            .into_iter()
            .partition(|c| self.run.is_client_tool(&c.name));
        if !own.is_empty() {
            Next::Tools(own)
        } else if !client.is_empty() {
            Next::Finished
        } else {
            Next::Model
        }
    }

    fn chat_history(&self, agent: &AgentRow) -> (Option<String>, Vec<ChatMessage>) {
        chat_messages(
            &agent.instructions,
            self.history
                .iter()
                .map(|m| (m.role.as_str(), m.content.0.as_slice())),
            self.options().and_then(|o| o.instructions.as_deref()),
            takes_images(&agent.config.0),
        )
    }

    /// What the run's API client asked beyond the agent's definition.
    fn options(&self) -> Option<&RunOptions> {
        self.run.options.as_ref().map(|o| &o.0)
    }

    /// The agent's tools, then the client's own.
    fn tool_definitions(&self, agent: &AgentRow) -> Vec<ToolDefinition> {
        let mut tools: Vec<ToolDefinition> = agent
            .tools
            .0
            .iter()
            .filter_map(|name| self.engine.tools.info(name, Some(self.run.user_id)))
            .map(|t| ToolDefinition {
                name: t.name,
                description: t.description,
                parameters: t.input_schema,
            })
            .collect();
        if let Some(options) = self.options() {
            tools.extend(options.client_tools.iter().cloned());
        }
        tools
    }

    /// Calls the model once and stores its answer.
    async fn model_step(
        &mut self,
        agent: &AgentRow,
        provider: &dyn Provider,
    ) -> Result<Option<Stop>, StepError> {
        let limits = self.run.limits.0;
        if self.run.step_count >= limits.max_steps as i64 {
            return Ok(Some(Stop::Failed(RunError::new(
                "max_steps",
                format!(
                    "the run reached its limit of {} model calls",
                    limits.max_steps
                ),
            ))));
        }
        let spent = (self.run.input_tokens + self.run.output_tokens) as u64;
        if let Some(max) = limits.max_tokens {
            if spent >= max {
                return Ok(Some(Stop::Failed(RunError::new(
                    "max_tokens",
                    format!("the run used {spent} tokens, its limit is {max}"),
                ))));
            }
        }
        let (system, messages) = self.chat_history(agent);
        let params = &agent.model.0.parameters;
        let options = self.options();
        let request = ChatRequest {
            model: self.run.model.clone(),
            system,
            messages,
            tools: self.tool_definitions(agent),
            max_tokens: options.and_then(|o| o.max_output_tokens).or_else(|| {
                params
                    .get("max_tokens")
                    .and_then(Value::as_u64)
                    .map(|n| n.min(u32::MAX as u64) as u32)
            }),
            temperature: options
                .and_then(|o| o.temperature)
                .or_else(|| params.get("temperature").and_then(Value::as_f64)),
            parallel_tool_calls: options
                .and_then(|o| o.parallel_tool_calls)
                .or_else(|| params.get("parallel_tool_calls").and_then(Value::as_bool))
                .unwrap_or(true),
        };
        let mut stream = provider.stream(request);
        let mut acc = Accumulator::default();
        let flush_every = Duration::from_millis(self.engine.config.delta_flush_ms);
        let mut last_flush = tokio::time::Instant::now();
        let mut text = String::new();
        let mut call_deltas: Vec<Value> = Vec::new();
        let mut cancel = self.watch.cancel.clone();
        loop {
            // Deltas are stored together, at most every `flush_every`, and
            // only once the stream has nothing more ready: a burst (one
            // network read often carries many events) is one write.
            let event = match stream.next().now_or_never() {
                Some(event) => {
                    if self.cancelled() {
                        return Ok(Some(Stop::Cancelled));
                    }
                    if tokio::time::Instant::now() >= self.deadline {
                        return Ok(Some(Stop::Failed(timeout_error(limits))));
                    }
                    event
                }
                None => {
                    let buffered = !text.is_empty() || !call_deltas.is_empty();
                    let flush_at = last_flush + flush_every;
                    let waited = tokio::select! {
                        biased;
                        _ = cancel.wait_for(|c| *c) => return Ok(Some(Stop::Cancelled)),
                        _ = tokio::time::sleep_until(self.deadline) => return Ok(Some(Stop::Failed(timeout_error(limits)))),
                        _ = tokio::time::sleep_until(flush_at), if buffered => None,
                        event = stream.next() => Some(event),
                    };
                    match waited {
                        Some(event) => event,
                        None => {
                            let events = self.delta_events(&mut text, &mut call_deltas);
                            self.write_events(events).await?;
                            last_flush = tokio::time::Instant::now();
                            continue;
                        }
                    }
                }
            };
            let Some(event) = event else { break };
            let event = match event {
                Ok(e) => e,
                Err(e) => {
                    let mut error = RunError::new("provider_error", e.to_string());
                    error.details = serde_json::to_value(&e).ok();
                    return Ok(Some(Stop::Failed(error)));
                }
            };
            if let Err(e) = acc.push(&event) {
                return Ok(Some(Stop::Failed(RunError::new(
                    "provider_error",
                    e.to_string(),
                ))));
            }
            match event {
                StreamEvent::TextDelta(t) => text.push_str(&t),
                StreamEvent::ToolCallStart { index, id, name } => call_deltas
                    .push(json!({ "index": index, "id": id, "name": name, "arguments": "" })),
                StreamEvent::ToolCallDelta { index, fragment } => match call_deltas.last_mut() {
                    Some(last) if last["index"] == index => {
                        let joined =
                            format!("{}{fragment}", last["arguments"].as_str().unwrap_or(""));
                        last["arguments"] = json!(joined);
                    }
                    _ => call_deltas.push(json!({ "index": index, "arguments": fragment })),
                },
                _ => {}
            }
        }
        drop(stream);
        let completion = acc.finish();
        let mut events = self.delta_events(&mut text, &mut call_deltas);
        let usage = RunUsage {
            input_tokens: completion.usage.input_tokens.unwrap_or(0) as i64,
            output_tokens: completion.usage.output_tokens.unwrap_or(0) as i64,
        };
        // The answer as a message.
        let mut content = Vec::new();
        if !completion.text.is_empty() || completion.tool_calls.is_empty() {
            content.push(ContentPart::Text {
                text: completion.text.clone(),
            });
        }
        let approval = approval_rule(&agent.config.0);
        let ttl_ms = (self.engine.config.approval_ttl_secs * 1000) as i64;
        let mut new_calls = Vec::new();
        for (position, call) in completion.tool_calls.iter().enumerate() {
            content.push(ContentPart::ToolCall {
                id: call.id.clone(),
                name: call.name.clone(),
                arguments: call.arguments.clone(),
            });
            let known = agent.tools.0.contains(&call.name);
            let info = self.engine.tools.info(&call.name, Some(self.run.user_id));
            let needs_approval = known && approval.requires(&call.name);
            new_calls.push(NewCall {
                call_id: call.id.clone(),
                position: position as i64,
                name: call.name.clone(),
                arguments: call.arguments.clone(),
                arguments_error: call.arguments_error.clone(),
                idempotent: info.map(|i| i.idempotent).unwrap_or(true),
                status: if needs_approval {
                    "pending_approval"
                } else {
                    "planned"
                },
                approval_expires_ms: needs_approval.then(|| now_ms() + ttl_ms),
            });
        }
        let message = self.message(MessageRole::Assistant, content);
        let total = RunUsage {
            input_tokens: self.run.input_tokens + usage.input_tokens,
            output_tokens: self.run.output_tokens + usage.output_tokens,
        };
        let pending: Vec<&NewCall> = new_calls
            .iter()
            .filter(|c| c.status == "pending_approval")
            .collect();
        let mut update = RunUpdate {
            steps: 1,
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            ..RunUpdate::default()
        };
        // The message event needs the stored row: written in a second
        // statement of the same step below.
        events.push(self.event(
            "usage",
            json!({ "step": usage, "run": total, "finish_reason": completion.finish }),
        ));
        // An answer whose calls are all the client's ends the run: the
        // client runs them and continues in a later run.
        let final_answer = completion
            .tool_calls
            .iter()
            .all(|c| self.run.is_client_tool(&c.name));
        let park = !pending.is_empty();
        let step = self.run.step_count + 1;
        for c in &new_calls {
            self.known_calls.insert(
                c.call_id.clone(),
                ToolCallRow {
                    run_id: self.run.id,
                    call_id: c.call_id.clone(),
                    step,
                    position: c.position,
                    name: c.name.clone(),
                    arguments: sqlx::types::Json(c.arguments.clone()),
                    arguments_error: c.arguments_error.clone(),
                    idempotent: c.idempotent,
                    status: c.status.to_owned(),
                    decision: None,
                    approval_expires_ms: c.approval_expires_ms,
                },
            );
        }
        let message_seq = self.event("message.completed", Value::Null).seq;
        let mut tail = Vec::new();
        if park {
            let calls: Vec<Value> = pending
                .iter()
                .map(|c| {
                    json!({ "call_id": c.call_id, "name": c.name, "arguments": c.arguments,
                            "approval_expires_in_secs": self.engine.config.approval_ttl_secs })
                })
                .collect();
            tail.push(self.event("approval.required", json!({ "tool_calls": calls })));
            tail.push(self.event("run.status", json!({ "status": "requires_action" })));
            update.status = Some(RunStatus::RequiresAction);
        } else if !final_answer {
            // Idempotent calls about to run need no separate "started"
            // write: their start is announced with the answer.
            for c in &new_calls {
                let runnable = c.idempotent
                    && c.arguments_error.is_none()
                    && agent.tools.0.contains(&c.name)
                    && self.engine.tools.contains(&c.name, Some(self.run.user_id));
                if runnable {
                    tail.push(self.event(
                        "tool_call.started",
                        json!({ "call_id": c.call_id, "name": c.name, "arguments": c.arguments }),
                    ));
                    self.announced.insert(c.call_id.clone());
                }
            }
        } else {
            let data = json!({ "status": "completed" });
            tail.push(self.event("run.status", data.clone()));
            tail.push(self.event("done", data));
            update.status = Some(RunStatus::Completed);
        }
        events.push(NewEvent {
            seq: message_seq,
            kind: "message.completed",
            data: message_preview(&message),
        });
        events.extend(tail);
        events.sort_by_key(|e| e.seq);
        self.write(
            vec![message],
            new_calls,
            Vec::new(),
            Vec::new(),
            update,
            events,
        )
        .await?;
        if park || final_answer {
            return Ok(Some(Stop::Done));
        }
        Ok(None)
    }

    fn delta_events(&mut self, text: &mut String, calls: &mut Vec<Value>) -> Vec<NewEvent> {
        let mut events = Vec::new();
        if !text.is_empty() {
            let t = std::mem::take(text);
            events.push(self.event("message.delta", json!({ "text": t })));
        }
        for c in std::mem::take(calls) {
            events.push(self.event("tool_call.delta", c));
        }
        events
    }

    /// Answers the pending tool calls of the last model answer.
    async fn tool_step(
        &mut self,
        agent: &AgentRow,
        calls: Vec<ToolCall>,
    ) -> Result<Option<Stop>, StepError> {
        let rows: HashMap<String, ToolCallRow> =
            if calls.iter().all(|c| self.known_calls.contains_key(&c.id)) {
                std::mem::take(&mut self.known_calls)
            } else {
                self.engine
                    .repo
                    .tool_calls(self.run.id)
                    .await?
                    .into_iter()
                    .map(|r| (r.call_id.clone(), r))
                    .collect()
            };
        // Decide each call's fate from its stored record.
        let mut immediate: Vec<(ToolCall, Value, bool)> = Vec::new();
        let mut to_run: Vec<(ToolCall, Value)> = Vec::new();
        let mut waiting = false;
        for call in calls {
            let Some(row) = rows.get(&call.id) else {
                immediate.push((
                    call,
                    json!("the call was not recorded; it was not run"),
                    true,
                ));
                continue;
            };
            if let Some(error) = &row.arguments_error {
                let msg = format!("invalid arguments: {error}");
                immediate.push((call, json!(msg), true));
                continue;
            }
            if !agent.tools.0.contains(&row.name)
                || !self
                    .engine
                    .tools
                    .contains(&row.name, Some(self.run.user_id))
            {
                let msg = format!(
                    "unknown tool {:?}: it is not one of this agent's tools",
                    row.name
                );
                immediate.push((call, json!(msg), true));
                continue;
            }
            let arguments = row.arguments.0.clone();
            match (row.status.as_str(), row.decision.as_ref().map(|d| &d.0)) {
                ("pending_approval", _) => waiting = true,
                ("approved", Some(d)) => match d.action {
                    DecisionAction::Accept => to_run.push((call, arguments)),
                    DecisionAction::Edit => {
                        to_run.push((call, d.arguments.clone().unwrap_or(arguments)))
                    }
                    DecisionAction::Reject => {
                        let reason = d.reason.clone().unwrap_or_else(|| "no reason given".into());
                        immediate.push((call, json!(format!("the user rejected this call: {reason}")), true))
                    }
                    DecisionAction::Answer => {
                        immediate.push((call, d.result.clone().unwrap_or(Value::Null), false))
                    }
                },
                ("started", _) if !row.idempotent => immediate.push((
                    call,
                    json!("interrupted: the server stopped while this call was running; it was not repeated because the tool is not idempotent"),
                    true,
                )),
                _ => to_run.push((call, arguments)),
            }
        }
        if waiting {
            // Still waiting for decisions (resumed too early): park again.
            let event = self.event("run.status", json!({ "status": "requires_action" }));
            self.write(
                Vec::new(),
                Vec::new(),
                Vec::new(),
                Vec::new(),
                RunUpdate {
                    status: Some(RunStatus::RequiresAction),
                    ..RunUpdate::default()
                },
                vec![event],
            )
            .await?;
            return Ok(Some(Stop::Done));
        }
        // Answers that need no execution.
        for (call, result, is_error) in immediate {
            self.record(&call, result, is_error, 0.0).await?;
        }
        if to_run.is_empty() {
            return Ok(None);
        }
        // Mark the executions started (non-idempotent ones durably) ...
        let started: Vec<String> = to_run
            .iter()
            .filter(|(c, _)| rows.get(&c.id).is_some_and(|r| !r.idempotent))
            .map(|(c, _)| c.id.clone())
            .collect();
        let events: Vec<NewEvent> = to_run
            .iter()
            .filter(|(c, _)| !self.announced.contains(&c.id))
            .map(|(c, args)| {
                (
                    "tool_call.started",
                    json!({ "call_id": c.id, "name": c.name, "arguments": args }),
                )
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(k, d)| self.event(k, d))
            .collect();
        if !started.is_empty() || !events.is_empty() {
            self.write(
                Vec::new(),
                Vec::new(),
                started,
                Vec::new(),
                RunUpdate::default(),
                events,
            )
            .await?;
        }
        self.announced.clear();
        // ... then run them in parallel, recording each as it finishes.
        let user = self.run.user_id;
        // Questions the calls' MCP servers ask the user come back here.
        let (asks, mut questions) = tokio::sync::mpsc::channel::<Ask>(4);
        let mut running: FuturesUnordered<_> = to_run
            .into_iter()
            .map(|(call, args)| {
                let tools = self.engine.tools.clone();
                let origin = CallOrigin {
                    run: self.run.id,
                    call_id: call.id.clone(),
                    user,
                    asks: asks.clone(),
                };
                let handle = tokio::spawn(asks::ORIGIN.scope(origin, async move {
                    let started = Instant::now();
                    let outcome = tools.call(&call.name, &args, Some(user)).await;
                    (call, outcome, started.elapsed())
                }));
                AbortOnDrop(Some(handle))
            })
            .collect();
        let mut cancel = self.watch.cancel.clone();
        loop {
            let woke = tokio::select! {
                biased;
                _ = cancel.wait_for(|c| *c) => return Ok(Some(Stop::Cancelled)),
                _ = tokio::time::sleep_until(self.deadline) => return Ok(Some(Stop::Failed(timeout_error(self.run.limits.0)))),
                Some(ask) = questions.recv() => Err(ask),
                done = running.next() => Ok(done),
            };
            let done = match woke {
                Ok(done) => done,
                Err(ask) => {
                    if let Some(stop) = self.elicit(ask).await? {
                        return Ok(Some(stop));
                    }
                    continue;
                }
            };
            let Some(joined) = done else { break };
            let (call, outcome, elapsed) = match joined {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "a tool task failed");
                    continue;
                }
            };
            let ms = elapsed.as_secs_f64() * 1000.0;
            match outcome {
                Ok(value) => self.record(&call, value, false, ms).await?,
                Err(e) => self.record(&call, json!(e.to_string()), true, ms).await?,
            }
        }
        Ok(None)
    }

    /// Puts a question a tool call's MCP server asks to the user: stores
    /// it, shows the run as `requires_action`, waits for the answer (or its
    /// expiry, the run's cancellation, the server withdrawing it) and passes
    /// the answer back to the server. The call stays open meanwhile, and the
    /// wait does not count against the run's time limit.
    async fn elicit(&mut self, ask: Ask) -> Result<Option<Stop>, StepError> {
        let Ask {
            server,
            call_id: origin,
            params,
            answer,
        } = ask;
        let id = Uuid::now_v7();
        let ttl_secs = self.engine.config.elicitation_ttl_secs;
        let expires_ms = now_ms() + (ttl_secs as i64).saturating_mul(1000);
        let mode = params
            .get("mode")
            .and_then(Value::as_str)
            .filter(|m| *m == "url")
            .unwrap_or("form");
        let message: String = params
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .chars()
            .take(4000)
            .collect();
        let schema = params.get("requestedSchema").filter(|_| mode == "form");
        if schema.is_some_and(|s| s.to_string().len() > MAX_QUESTION_SCHEMA) {
            let _ = answer.send(json!({ "action": "cancel" }));
            return Ok(None);
        }
        let url = params
            .get("url")
            .and_then(Value::as_str)
            .filter(|_| mode == "url");
        self.engine
            .repo
            .ask(NewElicitation {
                id,
                run: self.run.id,
                call_id: &origin,
                server: &server,
                mode,
                message: &message,
                requested_schema: schema,
                url,
                expires_ms,
            })
            .await?;
        let asked_at = tokio::time::Instant::now();
        let events = vec![
            self.event(
                "elicitation.required",
                json!({ "elicitation_id": id, "call_id": origin, "server": server, "mode": mode,
                        "message": message, "requested_schema": schema, "url": url,
                        "expires_in_secs": ttl_secs }),
            ),
            self.event("run.status", json!({ "status": "requires_action" })),
        ];
        self.write_events(events).await?;
        // Callers waiting for the run to stop see it waiting for its user.
        self.engine.bus.stopped(self.run.id);
        self.engine.repo.notify_stopped(self.run.id).await?;
        let expiry = asked_at + Duration::from_secs(ttl_secs);
        let mut cancel = self.watch.cancel.clone();
        let mut signals = self.watch.events.clone();
        let mut answer = Some(answer);
        let (status, result, stop) = loop {
            let row = self.engine.repo.elicitation(self.run.id, id).await?;
            if let Some(row) = row.filter(|r| r.status != "pending") {
                let mut result = json!({ "action": row.status });
                if let Some(content) = row.content {
                    result["content"] = content.0;
                }
                break (row.status, Some(result), None);
            }
            let closed = answer.as_mut().map(|a| a.closed());
            let woke = tokio::select! {
                biased;
                _ = cancel.wait_for(|c| *c) => Wake::Cancelled,
                _ = tokio::time::sleep_until(expiry) => Wake::Expired,
                _ = async { match closed { Some(c) => c.await, None => std::future::pending().await } } => Wake::Withdrawn,
                _ = signals.changed() => Wake::Look,
                _ = tokio::time::sleep(Duration::from_secs(1)) => Wake::Look,
            };
            match woke {
                Wake::Cancelled => {
                    break (
                        "cancel".to_owned(),
                        Some(json!({ "action": "cancel" })),
                        Some(Stop::Cancelled),
                    )
                }
                Wake::Expired => {
                    let repo = &self.engine.repo;
                    if repo
                        .settle_elicitation(self.run.id, id, "expired", None, None)
                        .await?
                    {
                        break (
                            "expired".to_owned(),
                            Some(json!({ "action": "cancel" })),
                            None,
                        );
                    }
                }
                Wake::Withdrawn => {
                    let repo = &self.engine.repo;
                    if repo
                        .settle_elicitation(self.run.id, id, "withdrawn", None, None)
                        .await?
                    {
                        break ("withdrawn".to_owned(), None, None);
                    }
                }
                Wake::Look => {}
            }
        };
        if stop.is_some() {
            // Cancelled: the question is answered with `cancel` (best effort).
            let _ = self
                .engine
                .repo
                .settle_elicitation(self.run.id, id, "cancel", None, None)
                .await;
        }
        if let (Some(answer), Some(result)) = (answer.take(), result) {
            let _ = answer.send(result);
        }
        // The wait does not count against the run's time limit.
        self.deadline += asked_at.elapsed();
        if stop.is_none() {
            let events = vec![
                self.event(
                    "elicitation.answered",
                    json!({ "elicitation_id": id, "call_id": origin, "action": status }),
                ),
                self.event("run.status", json!({ "status": "running" })),
            ];
            self.write_events(events).await?;
        }
        Ok(stop)
    }

    /// Stores one call's result as a tool message.
    async fn record(
        &mut self,
        call: &ToolCall,
        result: Value,
        is_error: bool,
        duration_ms: f64,
    ) -> Result<(), StepError> {
        let content = result_text(&result);
        let message = self.message(
            MessageRole::Tool,
            vec![ContentPart::ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content,
                is_error,
                images: result_images(&result),
            }],
        );
        let event = self.event(
            "tool_call.completed",
            json!({ "call_id": call.id, "name": call.name, "result": result,
                    "is_error": is_error, "duration_ms": duration_ms }),
        );
        self.write(
            vec![message],
            Vec::new(),
            Vec::new(),
            vec![CallOutcome {
                call_id: call.id.clone(),
                result,
                is_error,
            }],
            RunUpdate::default(),
            vec![event],
        )
        .await?;
        Ok(())
    }
}

/// Aborts a tool task when the run stops waiting for it.
struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.abort();
        }
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let handle = self.0.as_mut().expect("polled after completion");
        std::pin::Pin::new(handle).poll(cx)
    }
}

/// A conversation as a model sees it: the system prompt (`instructions`,
/// then the conversation's system messages, then `extra`) and the messages
/// in the provider-neutral form, each answer's tool results in the order
/// of its calls.
///
/// With `vision`, images (the user's, and those tools returned) go to the
/// model as images; without, the user's are described in the text (tool
/// results describe theirs already).
pub fn chat_messages<'a>(
    instructions: &str,
    history: impl Iterator<Item = (&'a str, &'a [ContentPart])>,
    extra: Option<&str>,
    vision: bool,
) -> (Option<String>, Vec<ChatMessage>) {
    let mut system = instructions.to_owned();
    let mut out = Vec::new();
    for (role, content) in history {
        match MessageRole::parse(role) {
            Some(MessageRole::System) => {
                if !system.is_empty() {
                    system.push_str("\n\n");
                }
                system.push_str(&text_of(content));
            }
            Some(MessageRole::User) => {
                let urls: Vec<String> = content
                    .iter()
                    .filter_map(|p| match p {
                        ContentPart::Image { url } => Some(url.clone()),
                        _ => None,
                    })
                    .collect();
                let mut text = text_of(content);
                if !vision {
                    for url in &urls {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(&image_description(url));
                    }
                }
                out.push(ChatMessage::User {
                    text,
                    images: if vision { urls } else { Vec::new() },
                })
            }
            Some(MessageRole::Assistant) => {
                let text = text_of(content);
                let tool_calls = tool_calls_of(content);
                out.push(ChatMessage::Assistant {
                    text: (!text.is_empty()).then_some(text),
                    tool_calls,
                });
            }
            Some(MessageRole::Tool) | None => {
                for p in content {
                    if let ContentPart::ToolResult {
                        call_id,
                        content,
                        is_error,
                        images,
                        ..
                    } = p
                    {
                        out.push(ChatMessage::ToolResult {
                            call_id: call_id.clone(),
                            content: content.clone(),
                            is_error: *is_error,
                            images: if vision { images.clone() } else { Vec::new() },
                        });
                    }
                }
            }
        }
    }
    if let Some(extra) = extra {
        if !system.is_empty() {
            system.push_str("\n\n");
        }
        system.push_str(extra);
    }
    order_tool_results(&mut out);
    ((!system.is_empty()).then_some(system), out)
}

/// Puts each answer's tool results in the order of its tool calls (they are
/// stored in the order they finished).
fn order_tool_results(messages: &mut [ChatMessage]) {
    let mut i = 0;
    while i < messages.len() {
        let ChatMessage::Assistant { tool_calls, .. } = &messages[i] else {
            i += 1;
            continue;
        };
        let order: Vec<String> = tool_calls.iter().map(|c| c.id.clone()).collect();
        let start = i + 1;
        let mut end = start;
        while end < messages.len() && matches!(messages[end], ChatMessage::ToolResult { .. }) {
            end += 1;
        }
        messages[start..end].sort_by_key(|m| match m {
            ChatMessage::ToolResult { call_id, .. } => order
                .iter()
                .position(|id| id == call_id)
                .unwrap_or(usize::MAX),
            _ => usize::MAX,
        });
        i = end.max(i + 1);
    }
}

fn timeout_error(limits: RunLimits) -> RunError {
    RunError::new(
        "timeout",
        format!(
            "the run exceeded its wall-clock budget of {} s",
            limits.timeout_secs
        ),
    )
}

/// The payload of `message.completed`: the message as stored (its `seq`
/// is assigned by the same transaction, so it is not part of the event).
fn message_preview(message: &NewMessage) -> Value {
    json!({ "message": {
        "id": message.id,
        "role": message.role,
        "content": message.content,
        "metadata": message.metadata,
    }})
}

/// Which tool calls of an agent need a human's approval, from its
/// `config.require_approval`: `true` or `"*"` for every tool, or a list of
/// tool names.
pub struct ApprovalRule {
    all: bool,
    tools: Vec<String>,
}

impl ApprovalRule {
    /// Whether calls of `tool` wait for approval.
    pub fn requires(&self, tool: &str) -> bool {
        self.all || self.tools.iter().any(|t| t == tool)
    }
}

/// The approval rule of an agent's configuration.
pub fn approval_rule(config: &Map<String, Value>) -> ApprovalRule {
    match config.get("require_approval") {
        Some(Value::Bool(true)) => ApprovalRule {
            all: true,
            tools: Vec::new(),
        },
        Some(Value::String(s)) if s == "*" => ApprovalRule {
            all: true,
            tools: Vec::new(),
        },
        Some(Value::Array(items)) => ApprovalRule {
            all: false,
            tools: items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
        },
        _ => ApprovalRule {
            all: false,
            tools: Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_blocks_reach_the_model_as_text_without_base64() {
        let blocks = json!([
            { "type": "text", "text": "four blocks follow" },
            { "type": "image", "data": "iVBORw0KGgoAAAANSUhEUg==", "mimeType": "image/png" },
            { "type": "audio", "data": "UklGRiQAAABXQVZF", "mimeType": "audio/wav" },
            { "type": "resource_link", "uri": "file:///q3.pdf", "name": "q3", "title": "Q3 report" },
            { "type": "resource", "resource": { "uri": "memo://one", "text": "the memo" } },
            { "type": "resource", "resource": { "uri": "logo://png", "blob": "AAAA", "mimeType": "image/png" } },
        ]);
        let text = result_text(&blocks);
        assert_eq!(
            text,
            "four blocks follow\n[image image/png, 18 bytes]\n[audio audio/wav, 12 bytes]\n\
             [resource link: Q3 report <file:///q3.pdf>]\n[resource <memo://one>]\nthe memo\n\
             [resource <logo://png>: image/png, 3 bytes]"
        );
        // Other arrays and values are JSON, as before.
        assert_eq!(result_text(&json!([1, 2])), "[1,2]");
        assert_eq!(result_text(&json!({ "a": 1 })), "{\"a\":1}");
        assert_eq!(result_text(&json!("plain")), "plain");
        // The image also rides along for models that take images; audio
        // and binary resources do not.
        assert_eq!(
            result_images(&blocks),
            ["data:image/png;base64,iVBORw0KGgoAAAANSUhEUg=="]
        );
        assert!(result_images(&json!([1, 2])).is_empty());
        let svg = json!([{ "type": "image", "data": "PHN2Zz4=", "mimeType": "image/svg+xml" }]);
        assert!(result_images(&svg).is_empty(), "a type vendors refuse");
    }

    #[test]
    fn images_go_to_models_that_take_them_and_are_described_to_the_others() {
        let user = vec![
            ContentPart::Text {
                text: "what is this?".into(),
            },
            ContentPart::Image {
                url: "data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==".into(),
            },
        ];
        let tool = vec![ContentPart::ToolResult {
            call_id: "c1".into(),
            name: "shot__take".into(),
            content: "[image image/png, 3 bytes]".into(),
            is_error: false,
            images: vec!["data:image/png;base64,AAAA".into()],
        }];
        let history = || [("user", user.as_slice()), ("tool", tool.as_slice())].into_iter();
        let (_, seen) = chat_messages("", history(), None, true);
        assert_eq!(
            seen[0],
            ChatMessage::User {
                text: "what is this?".into(),
                images: vec!["data:image/png;base64,iVBORw0KGgoAAAANSUhEUg==".into()],
            }
        );
        assert!(matches!(&seen[1], ChatMessage::ToolResult { images, .. } if images.len() == 1));
        let (_, told) = chat_messages("", history(), None, false);
        assert_eq!(
            told[0],
            ChatMessage::User {
                text: "what is this?\n[image image/png, 18 bytes]".into(),
                images: vec![],
            }
        );
        assert!(matches!(&told[1], ChatMessage::ToolResult { images, .. } if images.is_empty()));
        assert!(takes_images(&Map::new()));
        let off = json!({ "vision": false });
        assert!(!takes_images(off.as_object().unwrap()));
    }
}
