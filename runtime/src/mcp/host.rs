//! The host: Orchestra as an MCP server. `/mcp` speaks Streamable HTTP
//! (every protocol revision rmcp knows), authenticated with the API's bearer
//! API keys and access tokens; `orchestra mcp stdio` serves the same
//! catalogue over stdin/stdout for desktop clients.
//!
//! The tool list is the caller's catalogue: the plugins, the bridged MCP
//! tools of servers marked `expose`, and each of the caller's agents as
//! `agent__<name>`, a tool that runs one conversation turn and returns the
//! answer. Tool failures are `isError` results; a cancelled request stops
//! its tool call (and an agent tool's run).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, ErrorData,
    Implementation, ListToolsResult, PaginatedRequestParams, ProgressNotificationParam,
    ServerCapabilities, ServerConfig, Tool, ToolAnnotations,
};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{RoleServer, ServerHandler};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::framing::{frame, CallCancel, Framing};
use crate::agents::model::{AgentFilter, AgentResponse};
use crate::conversations::model::{ContentInput, ContentPart, ConversationInput};
use crate::error::Error;
use crate::http::AppState;
use crate::oauth::model::{GrantedScopes, Scope};
use crate::pagination::PageParams;
use crate::runs::model::{RunInput, RunResponse, RunStatus};
use crate::sandbox::ToolError;
use crate::tools::{ToolInfo, ToolSource, SEPARATOR};
use crate::users::model::{Permission, Principal};

/// The namespace of agent tools (`agent__<name>`); no plugin or MCP server
/// may take it.
pub const AGENT_NAMESPACE: &str = "agent";

/// Longest tool name clients accept.
const MAX_TOOL_NAME: usize = 64;

/// Serves the catalogue of one caller (stdio) or of each request's caller
/// (HTTP, where the principal comes from the request).
#[derive(Clone)]
pub struct McpHost {
    // Shared: rmcp clones the host for every stand-alone HTTP request.
    state: Arc<AppState>,
    fixed: Option<Principal>,
}

impl McpHost {
    /// A host whose every request is `principal`'s (stdio).
    pub fn for_principal(state: AppState, principal: Principal) -> McpHost {
        McpHost {
            state: Arc::new(state),
            fixed: Some(principal),
        }
    }

    fn principal(&self, context: &RequestContext<RoleServer>) -> Result<Principal, ErrorData> {
        if let Some(p) = &self.fixed {
            return Ok(p.clone());
        }
        context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<Principal>())
            .cloned()
            .ok_or_else(|| ErrorData::invalid_request("not authenticated", None))
    }

    /// The `/mcp` session of the request (`Mcp-Session-Id`), with sessions
    /// on; stdio is one session.
    fn session(context: &RequestContext<RoleServer>) -> Option<String> {
        match context.extensions.get::<http::request::Parts>() {
            Some(parts) => parts
                .headers
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            None => Some("stdio".to_owned()),
        }
    }

    /// The OAuth scopes of the request's token (`None`: not an OAuth
    /// token, the role alone decides).
    fn scopes(context: &RequestContext<RoleServer>) -> Option<GrantedScopes> {
        context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<GrantedScopes>())
            .cloned()
    }

    /// The caller's catalogue as MCP tools (agent tools included), as far
    /// as `scopes` let the client see.
    pub async fn tools(
        &self,
        principal: &Principal,
        scopes: Option<&GrantedScopes>,
    ) -> Result<Vec<Tool>, Error> {
        let allows = |scope| scopes.is_none_or(|s| s.allows(scope));
        let mut tools: Vec<Tool> = if allows(Scope::ToolsRead) {
            self.state
                .tools
                .list(principal)?
                .into_iter()
                .filter(|t| self.exposed(t, principal))
                .map(|t| match t.source {
                    // A bridged tool as its server described it.
                    ToolSource::Mcp { .. } => self
                        .state
                        .tools
                        .mcp_tool(&t.name, Some(principal.user_id))
                        .unwrap_or_else(|| mcp_tool(t)),
                    ToolSource::Plugin { .. } => mcp_tool(t),
                })
                .collect()
        } else {
            Vec::new()
        };
        if self.state.config.mcp.expose_agents
            && allows(Scope::AgentsRun)
            && principal.require(Permission::AgentRead).is_ok()
        {
            for (name, agent) in self.agent_tools(principal).await? {
                tools.push(agent_tool(name, &agent));
            }
        }
        Ok(tools)
    }

    fn exposed(&self, tool: &ToolInfo, principal: &Principal) -> bool {
        match &tool.source {
            ToolSource::Plugin { .. } => true,
            ToolSource::Mcp { server, .. } => self
                .state
                .mcp
                .bridge()
                .visible(server, Some(principal.user_id))
                .is_some_and(|s| s.def().expose),
        }
    }

    /// The caller's own agents, by tool name. Names are the agent's name made
    /// safe; a clash gets the id's first characters appended.
    async fn agent_tools(
        &self,
        principal: &Principal,
    ) -> Result<Vec<(String, AgentResponse)>, Error> {
        let mut agents = Vec::new();
        for page in 1..=20u32 {
            let found = self
                .state
                .agents
                .list(
                    principal,
                    AgentFilter {
                        owner_id: Some(principal.user_id),
                        ..AgentFilter::default()
                    },
                    PageParams {
                        page: Some(page),
                        page_size: Some(100),
                    },
                )
                .await?;
            let last = found.items.len() < 100;
            agents.extend(found.items);
            if last {
                break;
            }
        }
        agents.sort_by_key(|a| a.created_at);
        let mut taken = std::collections::HashSet::new();
        let mut out = Vec::with_capacity(agents.len());
        for agent in agents {
            let safe: String = agent
                .spec
                .name
                .to_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            let prefix = format!("{AGENT_NAMESPACE}{SEPARATOR}");
            let mut name: String = format!("{prefix}{safe}")
                .chars()
                .take(MAX_TOOL_NAME)
                .collect();
            if !taken.insert(name.clone()) {
                let suffix = format!("_{}", &agent.id.simple().to_string()[..8]);
                name = format!("{prefix}{safe}")
                    .chars()
                    .take(MAX_TOOL_NAME - suffix.len())
                    .collect::<String>()
                    + &suffix;
                taken.insert(name.clone());
            }
            out.push((name, agent));
        }
        Ok(out)
    }

    /// Calls tool `name` for `principal`; tool failures become `isError`
    /// results, an unknown tool a protocol error.
    pub async fn call(
        &self,
        principal: &Principal,
        scopes: Option<&GrantedScopes>,
        name: &str,
        arguments: Value,
        progress: Option<(rmcp::Peer<RoleServer>, rmcp::model::ProgressToken)>,
    ) -> Result<CallToolResult, ErrorData> {
        principal
            .require(Permission::ToolInvoke)
            .map_err(|e| ErrorData::invalid_request(e.to_string(), None))?;
        let needed = required_scope(name);
        if scopes.is_some_and(|s| !s.allows(needed)) {
            return Err(ErrorData::invalid_request(
                format!(
                    "insufficient scope: calling {name} needs {}",
                    needed.as_str()
                ),
                None,
            ));
        }
        if name.starts_with(&format!("{AGENT_NAMESPACE}{SEPARATOR}")) {
            return self.call_agent(principal, name, arguments, progress).await;
        }
        let info = self
            .state
            .tools
            .info(name, Some(principal.user_id))
            .filter(|t| self.exposed(t, principal))
            .ok_or_else(|| unknown_tool(name))?;
        if matches!(info.source, ToolSource::Mcp { .. }) {
            // Served again as the server sent it: typed content blocks
            // (images, audio, resource links, embedded resources) with
            // their annotations and `_meta`, structured content, isError.
            if let Some(outcome) = self
                .state
                .tools
                .call_mcp(name, &arguments, Some(principal.user_id))
                .await
            {
                return Ok(match outcome {
                    Ok(result) => result,
                    Err(ToolError::UnknownTool(_)) => return Err(unknown_tool(name)),
                    Err(error) => {
                        CallToolResult::error(vec![ContentBlock::text(error.to_string())])
                    }
                });
            }
        }
        let outcome = self
            .state
            .tools
            .call(name, &arguments, Some(principal.user_id))
            .await;
        Ok(match outcome {
            Ok(value) => tool_result(value, info.output_schema.is_some()),
            Err(ToolError::UnknownTool(_)) => return Err(unknown_tool(name)),
            Err(error) => CallToolResult::error(vec![ContentBlock::text(error.to_string())]),
        })
    }

    async fn call_agent(
        &self,
        principal: &Principal,
        name: &str,
        arguments: Value,
        progress: Option<(rmcp::Peer<RoleServer>, rmcp::model::ProgressToken)>,
    ) -> Result<CallToolResult, ErrorData> {
        let (conversation, run) = match self.start_agent(principal, name, arguments).await? {
            Ok(started) => started,
            Err(refused) => return Ok(refused),
        };
        // Cancels the run if the client cancels the request (the future is
        // dropped).
        let mut guard = CancelRun {
            state: self.state.clone(),
            principal: principal.clone(),
            run: run.id,
            armed: true,
        };
        let outcome = self.wait(principal, run.id, progress).await;
        guard.armed = false;
        Ok(match outcome {
            Ok(run) => self.agent_result(conversation, run).await,
            Err(e) => internal_result(e),
        })
    }

    /// Starts the run of agent tool `name`: its conversation (a new one
    /// unless `conversation_id` names one) and the run, or the tool result
    /// that says why it did not start.
    pub async fn start_agent(
        &self,
        principal: &Principal,
        name: &str,
        arguments: Value,
    ) -> Result<Result<(Uuid, RunResponse), CallToolResult>, ErrorData> {
        let agents = self
            .agent_tools(principal)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        let Some((_, agent)) = agents.into_iter().find(|(n, _)| n == name) else {
            return Err(unknown_tool(name));
        };
        let message = match arguments.get("message").and_then(Value::as_str) {
            Some(m) if !m.trim().is_empty() => m.to_owned(),
            _ => {
                return Ok(Err(CallToolResult::error(vec![ContentBlock::text(
                    "invalid arguments: \"message\" (a non-empty string) is required",
                )])))
            }
        };
        let conversation = match arguments.get("conversation_id") {
            None | Some(Value::Null) => {
                match self
                    .state
                    .conversations
                    .create(
                        principal,
                        ConversationInput {
                            agent_id: agent.id,
                            title: Some(message.chars().take(80).collect()),
                            metadata: Map::from_iter([("source".to_owned(), json!("mcp"))]),
                        },
                    )
                    .await
                {
                    Ok(c) => c.id,
                    Err(e) => return Ok(Err(internal_result(e))),
                }
            }
            Some(v) => match v.as_str().and_then(|s| s.parse::<Uuid>().ok()) {
                Some(id) => id,
                None => {
                    return Ok(Err(CallToolResult::error(vec![ContentBlock::text(
                        "invalid arguments: \"conversation_id\" must be a UUID",
                    )])))
                }
            },
        };
        let run = self
            .state
            .runs
            .create(
                principal,
                conversation,
                RunInput {
                    message: Some(ContentInput::Text(message)),
                    limits: None,
                    on_active: None,
                    options: None,
                    id: None,
                },
            )
            .await;
        Ok(match run {
            Ok(run) => Ok((conversation, run)),
            Err(e) => Err(internal_result(e)),
        })
    }

    /// What an agent tool answers once its run stopped: the answer, or why
    /// there is none.
    pub async fn agent_result(&self, conversation: Uuid, run: RunResponse) -> CallToolResult {
        let answer = self.answer(run.id).await.unwrap_or_default();
        let structured = json!({
            "answer": answer,
            "conversation_id": conversation,
            "run_id": run.id,
            "status": run.status,
        });
        match run.status {
            RunStatus::Completed => CallToolResult::structured(structured),
            RunStatus::RequiresAction => CallToolResult::structured_error(json!({
                "error": if run.pending_elicitations.is_empty() {
                    "the run waits for a human to approve tool calls; approve them in the console or over the API"
                } else {
                    "the run waits for its user to answer a question a tool asked; answer it in the console or over the API"
                },
                "conversation_id": conversation,
                "run_id": run.id,
                "status": run.status,
            })),
            _ => CallToolResult::structured_error(json!({
                "error": run.error.map(|e| e.message).unwrap_or_else(|| "the run did not complete".into()),
                "conversation_id": conversation,
                "run_id": run.id,
                "status": run.status,
            })),
        }
    }

    /// Waits for run `id` to stop (finished, or waiting for approval),
    /// reporting its steps as progress.
    async fn wait(
        &self,
        principal: &Principal,
        id: Uuid,
        progress: Option<(rmcp::Peer<RoleServer>, rmcp::model::ProgressToken)>,
    ) -> Result<crate::runs::model::RunResponse, Error> {
        let mut watch = self.state.runs.bus().watch(id);
        let deadline = tokio::time::Instant::now()
            + Duration::from_secs(self.state.config.mcp.agent_timeout_secs);
        let mut steps = -1;
        loop {
            let run = self.state.runs.get(principal, id).await?;
            if let Some((peer, token)) = &progress {
                if run.step_count != steps {
                    steps = run.step_count;
                    let _ = peer
                        .notify_progress(
                            ProgressNotificationParam::new(token.clone(), steps.max(0) as f64)
                                .with_message(format!("{} (step {steps})", run.status.as_str())),
                        )
                        .await;
                }
            }
            if matches!(
                run.status,
                RunStatus::Completed
                    | RunStatus::Failed
                    | RunStatus::Cancelled
                    | RunStatus::RequiresAction
            ) {
                return Ok(run);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "the run {id} did not finish within {} s; it goes on",
                    self.state.config.mcp.agent_timeout_secs
                )));
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), watch.events.changed()).await;
        }
    }

    /// The text of the run's last assistant message.
    async fn answer(&self, run: Uuid) -> Option<String> {
        let mut after = 0;
        let mut answer = None;
        loop {
            let events = self.state.runs.events(run, after, 500).await.ok()?;
            let Some(last) = events.last() else {
                break;
            };
            after = last.seq;
            for event in &events {
                if event.kind != "message.completed" {
                    continue;
                }
                let Some(message) = event.data.get("message") else {
                    continue;
                };
                if message.get("role").and_then(Value::as_str) != Some("assistant") {
                    continue;
                }
                let parts: Vec<ContentPart> =
                    serde_json::from_value(message.get("content")?.clone()).ok()?;
                let text: Vec<String> = parts
                    .into_iter()
                    .filter_map(|p| match p {
                        ContentPart::Text { text } => Some(text),
                        _ => None,
                    })
                    .collect();
                answer = Some(text.join("\n"));
            }
        }
        answer
    }
}

/// A failure as an agent tool's result (internal details logged, not sent).
fn internal_result(e: Error) -> CallToolResult {
    match e {
        Error::Internal(e) => {
            tracing::error!(error = %e, "agent tool failed");
            CallToolResult::error(vec![ContentBlock::text("internal error")])
        }
        other => CallToolResult::error(vec![ContentBlock::text(other.to_string())]),
    }
}

/// Cancels an agent tool's run when its request is abandoned.
struct CancelRun {
    state: Arc<AppState>,
    principal: Principal,
    run: Uuid,
    armed: bool,
}

impl Drop for CancelRun {
    fn drop(&mut self) {
        if self.armed {
            let (state, principal, run) = (self.state.clone(), self.principal.clone(), self.run);
            tokio::spawn(async move {
                let _ = state.runs.cancel(&principal, run).await;
            });
        }
    }
}

/// The OAuth scope a call of tool `name` needs.
pub fn required_scope(name: &str) -> Scope {
    if name.starts_with(&format!("{AGENT_NAMESPACE}{SEPARATOR}")) {
        Scope::AgentsRun
    } else {
        Scope::ToolsCall
    }
}

/// The answer to a call the client cancelled (-32800, as LSP numbers it;
/// MCP clients have forgotten the request by then).
fn cancelled() -> ErrorData {
    ErrorData::new(
        rmcp::model::ErrorCode(-32800),
        "cancelled by the client",
        None,
    )
}

fn unknown_tool(name: &str) -> ErrorData {
    ErrorData::invalid_params(format!("unknown tool: {name}"), None)
}

/// A catalogue tool as MCP describes it.
fn mcp_tool(info: ToolInfo) -> Tool {
    let schema = match info.input_schema {
        Value::Object(map) => map,
        _ => Map::from_iter([("type".to_owned(), json!("object"))]),
    };
    let mut tool = Tool::new(info.name, info.description, Arc::new(schema)).with_annotations(
        ToolAnnotations::new()
            .read_only(info.read_only)
            .destructive(info.destructive)
            .idempotent(info.idempotent),
    );
    if let Some(Value::Object(output)) = info.output_schema {
        tool = tool.with_raw_output_schema(Arc::new(output));
    }
    tool
}

fn agent_tool(name: String, agent: &AgentResponse) -> Tool {
    let description = format!(
        "Ask the agent {:?}{}. Runs one conversation turn and returns the answer; pass \
         conversation_id (from an earlier answer) to continue that conversation.",
        agent.spec.name,
        agent
            .spec
            .description
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    let input = json!({
        "type": "object",
        "properties": {
            "message": { "type": "string", "description": "What to ask the agent." },
            "conversation_id": { "type": "string", "format": "uuid",
                "description": "Continue this conversation instead of starting a new one." }
        },
        "required": ["message"],
        "additionalProperties": false
    });
    let output = json!({
        "type": "object",
        "properties": {
            "answer": { "type": "string" },
            "conversation_id": { "type": "string" },
            "run_id": { "type": "string" },
            "status": { "type": "string" }
        },
        "required": ["answer", "conversation_id", "run_id", "status"]
    });
    let (Value::Object(input), Value::Object(output)) = (input, output) else {
        unreachable!("literal objects")
    };
    Tool::new(name, description, Arc::new(input))
        .with_raw_output_schema(Arc::new(output))
        .with_annotations(ToolAnnotations::new().read_only(false).destructive(false))
}

/// A tool's JSON result as an MCP result: structured content when the tool
/// declares an output schema (and the result is an object), text always.
fn tool_result(value: Value, structured: bool) -> CallToolResult {
    match value {
        Value::Object(_) if structured => CallToolResult::structured(value),
        Value::String(text) => CallToolResult::success(vec![ContentBlock::text(text)]),
        other => CallToolResult::success(vec![ContentBlock::text(other.to_string())]),
    }
}

/// Where the resources of bridged servers live on `/mcp`:
/// `orchestra://mcp/<server>/<the server's own URI>`.
pub const RESOURCE_PREFIX: &str = "orchestra://mcp/";

/// The server and its own URI of a namespaced resource URI.
fn split_uri(uri: &str) -> Option<(&str, &str)> {
    uri.strip_prefix(RESOURCE_PREFIX)?.split_once('/')
}

/// Rewrites the `uri` of each of `contents` into `server`'s namespace.
fn namespace_contents(server: &str, result: rmcp::model::ReadResourceResult) -> Value {
    let mut value = serde_json::to_value(result).unwrap_or(Value::Null);
    if let Some(contents) = value.get_mut("contents").and_then(Value::as_array_mut) {
        for content in contents {
            if let Some(uri) = content.get("uri").and_then(Value::as_str) {
                content["uri"] = json!(format!("{RESOURCE_PREFIX}{server}/{uri}"));
            }
        }
    }
    value
}

impl McpHost {
    /// The bridged servers whose resources and prompts the caller sees on
    /// `/mcp`: those they may use that are exposed, when the token may see
    /// tools.
    fn offering(
        &self,
        principal: &Principal,
        scopes: Option<&GrantedScopes>,
    ) -> Vec<Arc<crate::mcp::bridge::Server>> {
        self.offering_for(principal, scopes, Scope::ToolsRead)
    }

    /// As [`Self::offering`], for a token that must hold `needed`.
    fn offering_for(
        &self,
        principal: &Principal,
        scopes: Option<&GrantedScopes>,
        needed: Scope,
    ) -> Vec<Arc<crate::mcp::bridge::Server>> {
        if scopes.is_some_and(|s| !s.allows(needed))
            || principal.require(Permission::ToolRead).is_err()
        {
            return Vec::new();
        }
        self.state
            .tools
            .bridged_servers(Some(principal.user_id))
            .into_iter()
            .filter(|s| s.def().expose)
            .collect()
    }

    /// The server named `name`, to read a resource or fill a prompt in:
    /// an OAuth token needs `tools:call`, as calling a tool does.
    fn offering_named(
        &self,
        principal: &Principal,
        scopes: Option<&GrantedScopes>,
        name: &str,
    ) -> Option<Arc<crate::mcp::bridge::Server>> {
        self.offering_for(principal, scopes, Scope::ToolsCall)
            .into_iter()
            .find(|s| s.def().name == name)
    }
}

fn offer_error(error: ToolError) -> ErrorData {
    match error {
        ToolError::InvalidArguments(m) => ErrorData::invalid_params(m, None),
        other => ErrorData::internal_error(other.to_string(), None),
    }
}

impl ServerHandler for McpHost {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_resources_subscribe()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new("orchestra", env!("CARGO_PKG_VERSION")))
        .with_instructions(
            "Orchestra's tools: sandboxed WebAssembly plugins, bridged MCP servers, and your \
             agents (agent__<name>), each of which runs a conversation turn.",
        )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        let principal = self.principal(&context)?;
        let tools = self
            .tools(&principal, Self::scopes(&context).as_ref())
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(ListToolsResult::with_all_items(tools))
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourcesResult, ErrorData> {
        let principal = self.principal(&context)?;
        let servers = self.offering(&principal, Self::scopes(&context).as_ref());
        let listed = futures_util::future::join_all(servers.iter().map(|s| s.resources())).await;
        let mut resources = Vec::new();
        for (server, outcome) in servers.iter().zip(listed) {
            let name = &server.def().name;
            match outcome {
                Ok((found, _)) => resources.extend(found.into_iter().map(|mut r| {
                    r.uri = format!("{RESOURCE_PREFIX}{name}/{}", r.uri);
                    r.name = format!("{name}{SEPARATOR}{}", r.name);
                    r
                })),
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "resources/list of a bridged server failed")
                }
            }
        }
        Ok(rmcp::model::ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListResourceTemplatesResult, ErrorData> {
        let principal = self.principal(&context)?;
        let servers = self.offering(&principal, Self::scopes(&context).as_ref());
        let listed = futures_util::future::join_all(servers.iter().map(|s| s.resources())).await;
        let mut templates = Vec::new();
        for (server, outcome) in servers.iter().zip(listed) {
            let name = &server.def().name;
            if let Ok((_, found)) = outcome {
                templates.extend(found.into_iter().map(|mut t| {
                    t.uri_template = format!("{RESOURCE_PREFIX}{name}/{}", t.uri_template);
                    t.name = format!("{name}{SEPARATOR}{}", t.name);
                    t
                }));
            }
        }
        Ok(rmcp::model::ListResourceTemplatesResult::with_all_items(
            templates,
        ))
    }

    async fn read_resource(
        &self,
        request: rmcp::model::ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ReadResourceResponse, ErrorData> {
        let principal = self.principal(&context)?;
        let unknown = || {
            ErrorData::resource_not_found(
                format!("unknown resource: {}", request.uri),
                Some(json!({ "uri": request.uri })),
            )
        };
        let (name, uri) = split_uri(&request.uri).ok_or_else(unknown)?;
        let server = self
            .offering_named(&principal, Self::scopes(&context).as_ref(), name)
            .ok_or_else(unknown)?;
        let result = server.read_resource(uri).await.map_err(offer_error)?;
        let value = namespace_contents(name, result);
        let result: rmcp::model::ReadResourceResult = serde_json::from_value(value)
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(result.into())
    }

    async fn subscribe(
        &self,
        request: rmcp::model::SubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let principal = self.principal(&context)?;
        let session = Self::session(&context).ok_or_else(|| {
            ErrorData::invalid_request(
                "resource subscriptions need an MCP session (the server's mcp.sessions setting)",
                None,
            )
        })?;
        let (name, uri) = split_uri(&request.uri).ok_or_else(|| {
            ErrorData::resource_not_found(format!("unknown resource: {}", request.uri), None)
        })?;
        let server = self
            .offering_named(&principal, Self::scopes(&context).as_ref(), name)
            .ok_or_else(|| {
                ErrorData::resource_not_found(format!("unknown resource: {}", request.uri), None)
            })?;
        server
            .subscribe(uri, &session, context.peer.clone())
            .await
            .map_err(offer_error)
    }

    async fn unsubscribe(
        &self,
        request: rmcp::model::UnsubscribeRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        let principal = self.principal(&context)?;
        let Some(session) = Self::session(&context) else {
            return Ok(());
        };
        let Some((name, uri)) = split_uri(&request.uri) else {
            return Ok(());
        };
        if let Some(server) = self.offering_named(&principal, Self::scopes(&context).as_ref(), name)
        {
            server
                .unsubscribe(uri, &session)
                .await
                .map_err(offer_error)?;
        }
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::ListPromptsResult, ErrorData> {
        let principal = self.principal(&context)?;
        let servers = self.offering(&principal, Self::scopes(&context).as_ref());
        let listed = futures_util::future::join_all(servers.iter().map(|s| s.prompts())).await;
        let mut prompts = Vec::new();
        for (server, outcome) in servers.iter().zip(listed) {
            let name = &server.def().name;
            match outcome {
                Ok(found) => prompts.extend(found.into_iter().map(|mut p| {
                    p.name = format!("{name}{SEPARATOR}{}", p.name);
                    p
                })),
                Err(e) => {
                    tracing::warn!(server = %name, error = %e, "prompts/list of a bridged server failed")
                }
            }
        }
        Ok(rmcp::model::ListPromptsResult::with_all_items(prompts))
    }

    async fn get_prompt(
        &self,
        request: rmcp::model::GetPromptRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<rmcp::model::GetPromptResponse, ErrorData> {
        let principal = self.principal(&context)?;
        let unknown =
            || ErrorData::invalid_params(format!("unknown prompt: {}", request.name), None);
        let (name, prompt) = request.name.split_once(SEPARATOR).ok_or_else(unknown)?;
        let server = self
            .offering_named(&principal, Self::scopes(&context).as_ref(), name)
            .ok_or_else(unknown)?;
        let result = server
            .get_prompt(prompt, request.arguments.clone())
            .await
            .map_err(offer_error)?;
        Ok(result.into())
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let principal = self.principal(&context)?;
        let arguments = Value::Object(request.arguments.unwrap_or_default());
        let progress = context
            .meta
            .get_progress_token()
            .map(|token| (context.peer.clone(), token));
        // In stand-alone mode, the framing layer's token for this call.
        let standalone = context
            .extensions
            .get::<http::request::Parts>()
            .and_then(|parts| parts.extensions.get::<CallCancel>())
            .cloned()
            .unwrap_or_default();
        let scopes = Self::scopes(&context);
        let call = self.call(
            &principal,
            scopes.as_ref(),
            &request.name,
            arguments,
            progress,
        );
        // A `notifications/cancelled` from the client drops the call: the
        // plugin instance is stopped, a bridged call is cancelled upstream,
        // an agent's run is cancelled.
        tokio::select! {
            result = call => result.map(CallToolResponse::from),
            _ = context.ct.cancelled() => Err(cancelled()),
            _ = standalone.0.cancelled() => Err(cancelled()),
        }
    }
}

/// Authenticates `/mcp` requests: API keys, the API's access tokens, and
/// the OAuth access tokens of MCP clients (bound to this `/mcp` and to
/// their scopes, which ride in the request as [`GrantedScopes`]). A missing
/// or bad credential gets 401 with a `WWW-Authenticate: Bearer` challenge
/// that points at the Protected Resource Metadata (RFC 9728).
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let token = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned);
    let base = crate::oauth::public_base(state.oauth.config(), request.headers());
    let outcome = match (&token, &base) {
        (Some(token), Ok(base)) if token.starts_with(crate::oauth::TOKEN_PREFIX) => state
            .oauth
            .authenticate(token, &format!("{base}{}", crate::oauth::RESOURCE_PATH))
            .await
            .map(|(principal, scopes, client)| (principal, Some((scopes, client)))),
        (Some(token), _) => state.users.authenticate(token).await.map(|p| (p, None)),
        (None, _) => Err(Error::Unauthorized(
            "expected Authorization: Bearer <API key or access token>".to_owned(),
        )),
    };
    match outcome {
        Ok((principal, scopes)) => {
            request.extensions_mut().insert(principal);
            if let Some((scopes, client)) = scopes {
                request.extensions_mut().insert(scopes);
                request.extensions_mut().insert(client);
            }
            if let Ok(base) = base {
                request.extensions_mut().insert(PublicBase(base));
            }
            next.run(request).await
        }
        Err(error) => {
            let described = match &error {
                Error::Unauthorized(m) if token.is_some() => Some(("invalid_token", m.clone())),
                _ => None,
            };
            let mut response = error.into_response();
            let value = match &base {
                Ok(base) => crate::oauth::challenge(
                    base,
                    described.as_ref().map(|(e, m)| (*e, m.as_str())),
                    None,
                ),
                Err(_) => "Bearer realm=\"orchestra\"".to_owned(),
            };
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                response
                    .headers_mut()
                    .insert(http::header::WWW_AUTHENTICATE, value);
            }
            response
        }
    }
}

/// The server's public base URL, as the request gave it (for challenges).
#[derive(Clone, Debug)]
pub struct PublicBase(pub String);

/// The `/mcp` service: Streamable HTTP with sessions, the configured host
/// and origin checks, and per-request authentication.
pub fn router(state: AppState) -> axum::Router<AppState> {
    let mcp = &state.config.mcp;
    let mut config = StreamableHttpServerConfig::default()
        .with_max_request_body_bytes(state.config.http.body_limit_bytes)
        .with_cancellation_token(state.mcp.closing())
        .with_legacy_session_mode(mcp.sessions)
        .with_json_response(!mcp.sessions);
    if !mcp.allowed_hosts.is_empty() {
        config = config.with_allowed_hosts(mcp.allowed_hosts.clone());
    } else if !listens_on_loopback(&state.config.listen) {
        config = config.disable_allowed_hosts();
    }
    config = config
        .with_allowed_origins(mcp.allowed_origins.clone())
        .enforce_origin_validation();
    let host = McpHost {
        state: Arc::new(state.clone()),
        fixed: None,
    };
    let service = StreamableHttpService::new(
        move || Ok(host.clone()),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    let framing = Framing::new(
        state.clone(),
        state.config.http.body_limit_bytes,
        mcp.sessions,
    );
    axum::Router::new()
        .route_service("/mcp", service)
        .layer(axum::middleware::from_fn_with_state(framing, frame))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ))
}

fn listens_on_loopback(listen: &str) -> bool {
    listen
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip().is_loopback())
        .unwrap_or_else(|_| listen.starts_with("localhost:"))
}

/// Serves `principal`'s catalogue over stdin/stdout until the client leaves.
pub async fn serve_stdio(state: AppState, principal: Principal) -> anyhow::Result<()> {
    use rmcp::ServiceExt;
    let host = McpHost::for_principal(state, principal);
    let running = match stdio_pipes() {
        Some(pipes) => host.serve(pipes).await?,
        None => host.serve(rmcp::transport::stdio()).await?,
    };
    running.waiting().await?;
    Ok(())
}

/// Stdin and stdout as non-blocking pipes driven by the reactor, when they
/// are pipes (as MCP clients start us). Tokio's own stdin reads on the
/// blocking pool, a thread hop per read.
#[cfg(unix)]
fn stdio_pipes() -> Option<(
    tokio::net::unix::pipe::Receiver,
    tokio::net::unix::pipe::Sender,
)> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let stdout = std::io::stdout().as_fd().try_clone_to_owned().ok()?;
    let receiver = tokio::net::unix::pipe::Receiver::from_owned_fd(stdin).ok()?;
    let sender = tokio::net::unix::pipe::Sender::from_owned_fd(stdout).ok()?;
    Some((receiver, sender))
}

#[cfg(not(unix))]
fn stdio_pipes() -> Option<(tokio::io::Stdin, tokio::io::Stdout)> {
    None
}
