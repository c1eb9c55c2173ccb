//! Tasks on `/mcp`, as protocol revision 2025-11-25 defines them, for
//! agent tools: a client calls `agent__<name>` with `params.task`, gets a
//! task at once, may leave, and later polls `tasks/get`, fetches the result
//! with `tasks/result` (which waits for the end), lists its tasks with
//! `tasks/list` or cancels one with `tasks/cancel`.
//!
//! A task is a handle on the agent's durable run (stored in `mcp_tasks`),
//! so it survives restarts and is answered by any node. It is bound to the
//! user and to the credential's context: an OAuth client sees only the tasks
//! it started, other credentials (API keys, console tokens) share the
//! user's. rmcp, which implements the later tasks extension instead, never
//! sees these requests: the framing layer hands them here when the caller
//! speaks revision 2025-11-25, and adds the `tasks` capability and the
//! tools' `execution.taskSupport` to rmcp's answers.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use super::host::McpHost;
use crate::db::{self, Db};
use crate::error::Result;
use crate::http::AppState;
use crate::oauth::model::{GrantedScopes, OAuthClient, Scope};
use crate::on_db;
use crate::runs::model::{RunResponse, RunStatus};
use crate::tools::SEPARATOR;
use crate::users::model::{AuthMethod, Permission, Principal};

/// The protocol revision whose tasks these are.
pub const REVISION: &str = "2025-11-25";

/// A task's lifetime when the client asks for none (milliseconds).
const DEFAULT_TTL_MS: i64 = 3600 * 1000;
/// The longest lifetime a client may ask for.
const MAX_TTL_MS: i64 = 24 * 3600 * 1000;
/// The shortest (a smaller ask is raised to it).
const MIN_TTL_MS: i64 = 60 * 1000;
/// How often clients are asked to poll.
const POLL_INTERVAL_MS: u64 = 1000;
/// Tasks per `tasks/list` page.
const PAGE: i64 = 50;

/// The `tasks` capability of the `initialize` answer.
pub fn capability() -> Value {
    json!({ "list": {}, "cancel": {}, "requests": { "tools": { "call": {} } } })
}

/// Whether tool `name` may be called as a task (agent tools).
pub fn supports(name: &str) -> bool {
    name.starts_with(&format!("{}{SEPARATOR}", super::host::AGENT_NAMESPACE))
}

/// A row of `mcp_tasks`.
#[derive(Debug, Clone, sqlx::FromRow)]
struct TaskRow {
    id: String,
    run_id: Uuid,
    conversation_id: Uuid,
    ttl_ms: i64,
    created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, run_id, conversation_id, ttl_ms, created_at";

/// The SQL of tasks.
#[derive(Clone)]
struct TaskRepo {
    db: Db,
}

impl TaskRepo {
    #[allow(clippy::too_many_arguments)]
    async fn insert(
        &self,
        id: &str,
        user: Uuid,
        context: &str,
        run: Uuid,
        conversation: Uuid,
        tool: &str,
        ttl_ms: i64,
    ) -> Result<TaskRow> {
        let now = db::now();
        let now_ms = now.timestamp_millis();
        on_db!(&self.db, pool => {
            // Lapsed tasks go first (their runs stay).
            sqlx::query("DELETE FROM mcp_tasks WHERE expires_ms < $1")
                .bind(now_ms)
                .execute(pool)
                .await?;
            sqlx::query(
                "INSERT INTO mcp_tasks (id, user_id, context, run_id, conversation_id, tool, ttl_ms, expires_ms, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
            )
            .bind(id)
            .bind(user)
            .bind(context)
            .bind(run)
            .bind(conversation)
            .bind(tool)
            .bind(ttl_ms)
            .bind(now_ms + ttl_ms)
            .bind(now)
            .execute(pool)
            .await?;
        });
        Ok(TaskRow {
            id: id.to_owned(),
            run_id: run,
            conversation_id: conversation,
            ttl_ms,
            created_at: now,
        })
    }

    async fn get(&self, id: &str, user: Uuid, context: &str) -> Result<Option<TaskRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM mcp_tasks WHERE id = $1 AND user_id = $2 AND context = $3 AND expires_ms >= $4"
        );
        let now_ms = Utc::now().timestamp_millis();
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(id)
            .bind(user)
            .bind(context)
            .bind(now_ms)
            .fetch_optional(pool)
            .await?))
    }

    async fn list(&self, user: Uuid, context: &str, offset: i64) -> Result<Vec<TaskRow>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM mcp_tasks WHERE user_id = $1 AND context = $2 AND expires_ms >= $3
             ORDER BY created_at DESC, id LIMIT $4 OFFSET $5"
        );
        let now_ms = Utc::now().timestamp_millis();
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql)
            .bind(user)
            .bind(context)
            .bind(now_ms)
            .bind(PAGE + 1)
            .bind(offset)
            .fetch_all(pool)
            .await?))
    }
}

/// A JSON-RPC error answer.
fn error(id: &Value, code: i64, message: impl Into<String>) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message.into() } })
}

fn answer(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The credential's context: an OAuth client's tasks are its own.
fn context(principal: &Principal, client: Option<&OAuthClient>) -> String {
    match (&principal.method, client) {
        (AuthMethod::OAuth(_), Some(OAuthClient(client))) => format!("oauth:{client}"),
        _ => "user".to_owned(),
    }
}

/// The task as the protocol shows it, from its run.
fn task_json(row: &TaskRow, run: &RunResponse) -> Value {
    let (status, message) = match run.status {
        RunStatus::Queued => ("working", "queued".to_owned()),
        RunStatus::Running => ("working", format!("running (step {})", run.step_count)),
        RunStatus::RequiresAction if !run.pending_elicitations.is_empty() => (
            "input_required",
            "a tool asked its user a question; answer it in the console or over the API".to_owned(),
        ),
        RunStatus::RequiresAction => (
            "input_required",
            "tool calls wait for the user's approval in the console or over the API".to_owned(),
        ),
        RunStatus::Completed => ("completed", "completed".to_owned()),
        RunStatus::Failed => (
            "failed",
            run.error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_else(|| "the run failed".to_owned()),
        ),
        RunStatus::Cancelled => ("cancelled", "cancelled".to_owned()),
    };
    let updated = run
        .finished_at
        .or(run.started_at)
        .unwrap_or(run.created_at)
        .max(row.created_at);
    json!({
        "taskId": row.id,
        "status": status,
        "statusMessage": message,
        "createdAt": timestamp(row.created_at),
        "lastUpdatedAt": timestamp(updated),
        "ttl": row.ttl_ms,
        "pollInterval": POLL_INTERVAL_MS,
    })
}

fn terminal(status: RunStatus) -> bool {
    matches!(
        status,
        RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
    )
}

/// What a request of revision 2025-11-25 needs from its HTTP request.
pub struct Caller<'a> {
    pub principal: &'a Principal,
    pub scopes: Option<&'a GrantedScopes>,
    pub client: Option<&'a OAuthClient>,
}

/// Serves a task request (`tools/call` with `params.task`, `tasks/get`,
/// `tasks/result`, `tasks/list`, `tasks/cancel`): the JSON-RPC answer.
pub async fn serve(state: &AppState, caller: Caller<'_>, message: &Value) -> Value {
    let id = message.get("id").cloned().unwrap_or(Value::Null);
    let method = message
        .get("method")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let params = message.get("params").cloned().unwrap_or(Value::Null);
    if caller.principal.require(Permission::ToolInvoke).is_err() {
        return error(&id, -32600, "this account may not call tools");
    }
    if caller.scopes.is_some_and(|s| !s.allows(Scope::AgentsRun)) {
        return error(&id, -32600, "insufficient scope: tasks need agents:run");
    }
    let repo = TaskRepo {
        db: state.db.clone(),
    };
    let context = context(caller.principal, caller.client);
    let user = caller.principal.user_id;
    let outcome = match method {
        "tools/call" => create(state, &caller, &repo, &context, &params).await,
        "tasks/list" => list(state, &caller, &repo, &context, &params).await,
        _ => {
            let Some(task_id) = params.get("taskId").and_then(Value::as_str) else {
                return error(
                    &id,
                    -32602,
                    "Invalid params: \"taskId\" (a string) is required",
                );
            };
            let row = match repo.get(task_id, user, &context).await {
                Ok(Some(row)) => row,
                Ok(None) => {
                    return error(
                        &id,
                        -32602,
                        format!("Invalid params: no task {task_id:?} (unknown, expired, or another client's)"),
                    )
                }
                Err(e) => return internal(&id, e),
            };
            match method {
                "tasks/get" => get(state, &caller, &row).await,
                "tasks/result" => result(state, &caller, &row).await,
                _ => cancel(state, &caller, &row).await,
            }
        }
    };
    match outcome {
        Ok(Ok(result)) => answer(&id, result),
        Ok(Err((code, message))) => error(&id, code, message),
        Err(e) => internal(&id, e),
    }
}

fn internal(id: &Value, e: crate::error::Error) -> Value {
    match e {
        crate::error::Error::Internal(e) => {
            tracing::error!(error = %e, "an MCP task request failed");
            error(id, -32603, "Internal error")
        }
        other => error(id, -32603, other.to_string()),
    }
}

/// A protocol error of one request: (code, message).
type Refusal = (i64, String);

async fn create(
    state: &AppState,
    caller: &Caller<'_>,
    repo: &TaskRepo,
    context: &str,
    params: &Value,
) -> Result<std::result::Result<Value, Refusal>> {
    let name = params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !supports(name) {
        return Ok(Err((
            -32601,
            format!("{name:?} cannot be called as a task: only agent tools (agent__<name>) can"),
        )));
    }
    let ttl = match params.get("task").and_then(|t| t.get("ttl")) {
        None | Some(Value::Null) => DEFAULT_TTL_MS,
        Some(v) => match v.as_i64() {
            Some(ms) if ms >= 0 => ms.clamp(MIN_TTL_MS, MAX_TTL_MS),
            _ => {
                return Ok(Err((
                    -32602,
                    "Invalid params: task.ttl must be a non-negative integer (milliseconds)"
                        .to_owned(),
                )))
            }
        },
    };
    let arguments = params.get("arguments").cloned().unwrap_or(json!({}));
    let host = McpHost::for_principal(state.clone(), caller.principal.clone());
    let started = host
        .start_agent(caller.principal, name, arguments)
        .await
        .map_err(|e| crate::error::Error::Internal(anyhow::anyhow!(e.message.to_string())))?;
    let (conversation, run) = match started {
        Ok(started) => started,
        Err(refused) => {
            let text = refused
                .content
                .iter()
                .filter_map(|c| c.as_text().map(|t| t.text.clone()))
                .collect::<Vec<_>>()
                .join(" ");
            return Ok(Err((-32602, format!("Invalid params: {text}"))));
        }
    };
    let task_id = format!("task_{}", Uuid::new_v4().simple());
    let row = repo
        .insert(
            &task_id,
            caller.principal.user_id,
            context,
            run.id,
            conversation,
            name,
            ttl,
        )
        .await?;
    Ok(Ok(json!({ "task": task_json(&row, &run) })))
}

async fn get(
    state: &AppState,
    caller: &Caller<'_>,
    row: &TaskRow,
) -> Result<std::result::Result<Value, Refusal>> {
    let run = state.runs.get(caller.principal, row.run_id).await?;
    Ok(Ok(task_json(row, &run)))
}

async fn list(
    state: &AppState,
    caller: &Caller<'_>,
    repo: &TaskRepo,
    context: &str,
    params: &Value,
) -> Result<std::result::Result<Value, Refusal>> {
    let offset = match params.get("cursor") {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_str().and_then(|c| c.parse::<i64>().ok()) {
            Some(offset) if offset >= 0 => offset,
            _ => return Ok(Err((-32602, "Invalid params: unknown cursor".to_owned()))),
        },
    };
    let mut rows = repo.list(caller.principal.user_id, context, offset).await?;
    let more = rows.len() as i64 > PAGE;
    rows.truncate(PAGE as usize);
    let mut tasks = Vec::with_capacity(rows.len());
    for row in &rows {
        // A run deleted with its conversation takes its task along.
        if let Ok(run) = state.runs.get(caller.principal, row.run_id).await {
            tasks.push(task_json(row, &run));
        }
    }
    let mut result = json!({ "tasks": tasks });
    if more {
        result["nextCursor"] = json!((offset + PAGE).to_string());
    }
    Ok(Ok(result))
}

/// Waits for the run to end (up to `mcp.agent_timeout_secs`), then gives
/// the agent tool's result, as a call without a task would have.
async fn result(
    state: &AppState,
    caller: &Caller<'_>,
    row: &TaskRow,
) -> Result<std::result::Result<Value, Refusal>> {
    let limit = Duration::from_secs(state.config.mcp.agent_timeout_secs);
    let run = state
        .runs
        .wait_until(caller.principal, row.run_id, limit, terminal)
        .await?;
    if !terminal(run.status) {
        return Ok(Err((
            -32603,
            format!(
                "the task is still {} after {} s; call tasks/result again, or poll tasks/get",
                task_json(row, &run)["status"].as_str().unwrap_or("working"),
                limit.as_secs()
            ),
        )));
    }
    let host = McpHost::for_principal(state.clone(), caller.principal.clone());
    let outcome = host.agent_result(row.conversation_id, run).await;
    let mut value = serde_json::to_value(outcome).unwrap_or_else(|_| json!({}));
    value["_meta"]["io.modelcontextprotocol/related-task"] = json!({ "taskId": row.id });
    Ok(Ok(value))
}

async fn cancel(
    state: &AppState,
    caller: &Caller<'_>,
    row: &TaskRow,
) -> Result<std::result::Result<Value, Refusal>> {
    let run = state.runs.get(caller.principal, row.run_id).await?;
    if terminal(run.status) {
        return Ok(Err((
            -32602,
            format!(
                "Invalid params: the task is already {}",
                task_json(row, &run)["status"]
                    .as_str()
                    .unwrap_or("finished")
            ),
        )));
    }
    state.runs.cancel(caller.principal, row.run_id).await?;
    // A running run (or one whose call waits for an answer) stops at its
    // worker's next await: shortly.
    let run = state
        .runs
        .wait_until(
            caller.principal,
            row.run_id,
            Duration::from_secs(5),
            terminal,
        )
        .await?;
    Ok(Ok(task_json(row, &run)))
}
