//! The HTTP surface: shared state, extractors, middleware, the OpenAPI
//! document and the router that merges every domain's routes.
//!
//! Handlers live next to their domain (`agents::routes`, ...) and stay thin:
//! extract, call one service method, wrap the answer.

pub mod extract;
pub mod middleware;
pub mod openapi;

use std::sync::Arc;

use crate::agents::AgentService;
use crate::audit::AuditService;
use crate::config::Config;
use crate::conversations::ConversationService;
use crate::db::Db;
use crate::mcp::McpService;
use crate::models::ModelService;
use crate::plugins::PluginService;
use crate::runs::engine::Engine;
use crate::runs::RunService;
use crate::secrets::SecretService;
use crate::settings::SettingsService;
use crate::tools::ToolCatalogue;
use crate::users::UserService;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// The database, for readiness checks.
    pub db: Db,
    /// Accounts, sessions, API keys.
    pub users: UserService,
    /// Agents and their revisions.
    pub agents: AgentService,
    /// Conversations and messages.
    pub conversations: ConversationService,
    /// The audit log.
    pub audit: AuditService,
    /// Server-wide settings.
    pub settings: SettingsService,
    /// Every tool: sandboxed plugins and bridged MCP servers.
    pub tools: ToolCatalogue,
    /// Plugin installation and grants.
    pub plugins: PluginService,
    /// Named secrets.
    pub secrets: SecretService,
    /// Model providers and models.
    pub models: ModelService,
    /// Runs, their events, approvals and usage.
    pub runs: RunService,
    /// Bridged MCP servers.
    pub mcp: McpService,
    /// The OAuth authorization server of `/mcp`.
    pub oauth: crate::oauth::OAuthService,
    /// Schedules of agents' runs.
    pub schedules: crate::schedules::ScheduleService,
    /// Inbound triggers.
    pub triggers: crate::triggers::TriggerService,
    /// Outbound webhooks.
    pub webhooks: crate::webhooks::WebhookService,
    /// Stops this node's scheduler and webhook worker.
    pub background: tokio_util::sync::CancellationToken,
    /// The run engine of this process (started by `build_state` when
    /// `runs.worker` is on).
    pub engine: Engine,
}
