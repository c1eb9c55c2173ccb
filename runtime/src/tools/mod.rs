//! The tool catalogue: every tool, whatever its source, under one stable
//! namespaced name (`<source>__<tool>`, valid for every model vendor and for
//! MCP: `^[a-zA-Z0-9_-]{1,64}$`), with its schemas and hints. Today the
//! sources are WebAssembly plugins (the bundled ones load at start); MCP
//! servers and built-ins join through the same [`ToolCatalogue`].

pub mod asks;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;

use crate::audit::AuditService;
use crate::error::{Error, Result};
use crate::mcp::bridge::Server as McpServer;
use crate::mcp::Bridge;
use crate::sandbox::{
    CallContext, Grants, HostServices, LoadedPlugin, Manifest, ToolError, ToolSpec,
};
use crate::users::model::{Permission, Principal};

include!(concat!(env!("OUT_DIR"), "/bundled.rs"));

/// Separates the source from the tool in a catalogue name.
pub const SEPARATOR: &str = "__";

/// Where a tool comes from.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ToolSource {
    /// A WebAssembly plugin.
    Plugin {
        /// The plugin's name.
        plugin: String,
        /// Its version.
        version: String,
    },
    /// A bridged MCP server.
    Mcp {
        /// The server's name.
        server: String,
        /// The server's id.
        server_id: uuid::Uuid,
        /// The tool's name on that server.
        tool: String,
    },
}

/// A tool as the catalogue lists it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ToolInfo {
    /// The catalogue name agents use, e.g. `calculator__evaluate`.
    pub name: String,
    /// What the tool does.
    pub description: String,
    /// JSON Schema of the arguments.
    #[schema(value_type = Object)]
    pub input_schema: Value,
    /// JSON Schema of the result, if declared.
    #[schema(value_type = Option<Object>)]
    pub output_schema: Option<Value>,
    /// Where it comes from.
    pub source: ToolSource,
    /// Only reads.
    pub read_only: bool,
    /// May destroy or overwrite data.
    pub destructive: bool,
    /// Safe to repeat with the same arguments.
    pub idempotent: bool,
}

/// `POST /api/v1/tools/{name}/invoke`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InvokeRequest {
    /// The arguments object.
    #[serde(default = "empty_object")]
    #[schema(value_type = Object)]
    pub arguments: Value,
}

fn empty_object() -> Value {
    json!({})
}

/// The result of a direct invocation.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InvokeResponse {
    /// The tool's result.
    #[schema(value_type = Object)]
    pub result: Value,
    /// Wall-clock time of the call, validation included, in milliseconds.
    pub duration_ms: f64,
}

/// A plugin in the catalogue: the loaded component and what it was granted.
#[derive(Clone)]
pub struct Entry {
    /// The compiled, linked plugin.
    pub plugin: Arc<LoadedPlugin>,
    /// Whether it ships with Orchestra.
    pub bundled: bool,
    /// What an admin granted it.
    pub grants: Arc<Grants>,
}

/// Every tool the server can run.
#[derive(Clone)]
pub struct ToolCatalogue {
    plugins: Arc<RwLock<BTreeMap<String, Entry>>>,
    bridge: Arc<OnceLock<Bridge>>,
    audit: AuditService,
    services: Option<Arc<dyn HostServices>>,
}

impl std::fmt::Debug for ToolCatalogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ToolCatalogue").finish_non_exhaustive()
    }
}

impl ToolCatalogue {
    /// An empty catalogue whose plugins reach key-value data and secrets
    /// through `services`.
    pub fn new(audit: AuditService, services: Option<Arc<dyn HostServices>>) -> Self {
        ToolCatalogue {
            plugins: Arc::new(RwLock::new(BTreeMap::new())),
            bridge: Arc::new(OnceLock::new()),
            audit,
            services,
        }
    }

    /// Connects the MCP bridge: its servers' tools join the catalogue.
    pub fn set_bridge(&self, bridge: Bridge) {
        let _ = self.bridge.set(bridge);
    }

    /// The bridged MCP server that owns tool `name`, if `user` may use it.
    fn bridged(&self, name: &str, user: Option<uuid::Uuid>) -> Option<Arc<McpServer>> {
        let (server, tool) = name.split_once(SEPARATOR)?;
        self.bridge
            .get()?
            .visible(server, user)
            .filter(|s| s.tool(tool).is_some())
    }

    /// The bridged servers `user` may use: their own, and the server-wide
    /// ones whose names they have not taken for their own.
    pub fn bridged_servers(&self, user: Option<uuid::Uuid>) -> Vec<Arc<McpServer>> {
        let servers = self.bridge.get().map(|b| b.servers()).unwrap_or_default();
        let own: std::collections::HashSet<&str> = servers
            .iter()
            .filter(|s| s.def().owner_id.is_some() && s.def().owner_id == user)
            .map(|s| s.def().name.as_str())
            .collect();
        servers
            .iter()
            .filter(|s| match s.def().owner_id {
                None => !own.contains(s.def().name.as_str()),
                owner => owner == user,
            })
            .cloned()
            .collect()
    }

    /// Adds (or replaces) a plugin.
    pub fn add(&self, entry: Entry) {
        let name = entry.plugin.manifest().name.clone();
        self.plugins
            .write()
            .expect("catalogue lock")
            .insert(name, entry);
    }

    /// Removes a plugin; its tools disappear at once (calls in flight finish).
    pub fn remove(&self, name: &str) -> Option<Entry> {
        self.plugins.write().expect("catalogue lock").remove(name)
    }

    /// The plugin `name`.
    pub fn entry(&self, name: &str) -> Option<Entry> {
        self.plugins
            .read()
            .expect("catalogue lock")
            .get(name)
            .cloned()
    }

    /// Every plugin, by name.
    pub fn entries(&self) -> Vec<Entry> {
        self.plugins
            .read()
            .expect("catalogue lock")
            .values()
            .cloned()
            .collect()
    }

    /// The catalogue entries of one plugin's tools.
    pub fn tools_of(plugin: &LoadedPlugin) -> Vec<ToolInfo> {
        let manifest = plugin.manifest();
        manifest
            .tools
            .iter()
            .map(|tool| Self::tool_info(manifest, tool))
            .collect()
    }

    fn tool_info(manifest: &Manifest, tool: &ToolSpec) -> ToolInfo {
        ToolInfo {
            name: format!("{}{SEPARATOR}{}", manifest.name, tool.name),
            description: tool.description.clone(),
            input_schema: tool.input_schema.clone(),
            output_schema: tool.output_schema.clone(),
            source: ToolSource::Plugin {
                plugin: manifest.name.clone(),
                version: manifest.version.clone(),
            },
            read_only: tool.read_only,
            destructive: tool.destructive,
            idempotent: tool.idempotent,
        }
    }

    /// The tools `user` may use: every plugin's, and those of the bridged
    /// MCP servers that are server-wide or the user's own.
    pub fn infos_for(&self, user: Option<uuid::Uuid>) -> Vec<ToolInfo> {
        let mut infos: Vec<ToolInfo> = {
            let plugins = self.plugins.read().expect("catalogue lock");
            plugins
                .values()
                .flat_map(|entry| Self::tools_of(&entry.plugin))
                .collect()
        };
        for server in self.bridged_servers(user) {
            infos.extend(server.tools());
        }
        infos
    }

    /// The catalogue entry of tool `name`, if `user` may use it.
    pub fn info(&self, name: &str, user: Option<uuid::Uuid>) -> Option<ToolInfo> {
        if let Some((entry, tool)) = self.resolve(name) {
            let manifest = entry.plugin.manifest();
            return manifest
                .tools
                .iter()
                .find(|t| t.name == tool)
                .map(|t| Self::tool_info(manifest, t));
        }
        let server = self.bridged(name, user)?;
        server.tool(name.split_once(SEPARATOR)?.1)
    }

    /// Whether `name` is a tool of the catalogue that `user` may use.
    pub fn contains(&self, name: &str, user: Option<uuid::Uuid>) -> bool {
        self.resolve(name).is_some() || self.bridged(name, user).is_some()
    }

    fn resolve(&self, name: &str) -> Option<(Entry, String)> {
        let (plugin, tool) = name.split_once(SEPARATOR)?;
        let plugins = self.plugins.read().expect("catalogue lock");
        let entry = plugins.get(plugin)?;
        entry
            .plugin
            .manifest()
            .tools
            .iter()
            .any(|t| t.name == tool)
            .then(|| (entry.clone(), tool.to_owned()))
    }

    /// The tools the caller may use.
    pub fn list(&self, principal: &Principal) -> Result<Vec<ToolInfo>> {
        principal.require(Permission::ToolRead)?;
        Ok(self.infos_for(Some(principal.user_id)))
    }

    /// One tool.
    pub fn get(&self, principal: &Principal, name: &str) -> Result<ToolInfo> {
        principal.require(Permission::ToolRead)?;
        self.info(name, Some(principal.user_id))
            .ok_or(Error::NotFound("tool"))
    }

    /// Runs a tool for `user` (whose key-value data the plugin sees), with
    /// the rights its plugin was granted.
    pub async fn call(
        &self,
        name: &str,
        arguments: &Value,
        user: Option<uuid::Uuid>,
    ) -> std::result::Result<Value, ToolError> {
        let Some((entry, tool)) = self.resolve(name) else {
            return match self.bridged(name, user) {
                Some(server) => server.call(name, arguments).await,
                None => Err(ToolError::UnknownTool(name.to_owned())),
            };
        };
        let ctx = CallContext {
            user: user.map(|u| u.to_string()),
            grants: entry.grants.clone(),
            services: self.services.clone(),
        };
        entry.plugin.call_with(&tool, arguments, &ctx).await
    }

    /// Calls bridged tool `name` for `/mcp`, which serves the server's
    /// result again as it came; `None` when `name` is not a bridged tool.
    pub async fn call_mcp(
        &self,
        name: &str,
        arguments: &Value,
        user: Option<uuid::Uuid>,
    ) -> Option<std::result::Result<rmcp::model::CallToolResult, ToolError>> {
        if self.resolve(name).is_some() {
            return None;
        }
        let server = self.bridged(name, user)?;
        Some(server.call_raw(name, arguments).await)
    }

    /// Bridged tool `name` as its server described it (under its catalogue
    /// name).
    pub fn mcp_tool(&self, name: &str, user: Option<uuid::Uuid>) -> Option<rmcp::model::Tool> {
        self.bridged(name, user)?.mcp_tool(name)
    }

    /// Runs a tool directly (the API's invoke endpoint), audited.
    pub async fn invoke(
        &self,
        principal: &Principal,
        name: &str,
        request: InvokeRequest,
    ) -> Result<InvokeResponse> {
        principal.require(Permission::ToolInvoke)?;
        if !self.contains(name, Some(principal.user_id)) {
            return Err(Error::NotFound("tool"));
        }
        let started = Instant::now();
        let outcome = self
            .call(name, &request.arguments, Some(principal.user_id))
            .await;
        let duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        let status = match &outcome {
            Ok(_) => json!("ok"),
            Err(e) => serde_json::to_value(e).unwrap_or(Value::Null),
        };
        self.audit
            .record(
                Some(principal.user_id),
                "tool.invoked",
                None,
                json!({ "tool": name, "outcome": status, "duration_ms": duration_ms }),
            )
            .await;
        match outcome {
            Ok(result) => Ok(InvokeResponse {
                result,
                duration_ms,
            }),
            Err(ToolError::InvalidArguments(message)) => Err(Error::Validation {
                message: format!("invalid arguments: {message}"),
                details: Some(json!({ "kind": "invalid_arguments" })),
            }),
            Err(ToolError::UnknownTool(_)) => Err(Error::NotFound("tool")),
            Err(ToolError::Unavailable(message)) => Err(Error::Unavailable(message)),
            Err(other) => Err(Error::ToolFailed(other)),
        }
    }
}
