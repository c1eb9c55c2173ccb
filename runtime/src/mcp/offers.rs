//! A bridged server's resources and prompts over the REST API:
//! `/api/v1/mcp-servers/{id}/resources` (list, templates, read) and
//! `/api/v1/mcp-servers/{id}/prompts` (list, get), for whoever may use the
//! server. `/mcp` serves the same under each server's namespace
//! (`host.rs`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::bridge::Server;
use super::McpService;
use crate::error::{Error, Result};
use crate::users::model::{Permission, Principal};

/// A server's resources and resource templates, as the server lists them.
#[derive(Debug, Serialize, ToSchema)]
pub struct McpResources {
    /// Resources (`uri`, `name`, `title`, `mimeType`, ...).
    #[schema(value_type = Vec<Object>)]
    pub resources: Vec<Value>,
    /// Resource templates (`uriTemplate`, `name`, ...).
    #[schema(value_type = Vec<Object>)]
    pub resource_templates: Vec<Value>,
}

/// `GET .../resources/read?uri=`
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ReadQuery {
    /// The resource's URI, as the server names it.
    pub uri: String,
}

/// `POST .../prompts/get`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GetPromptRequest {
    /// The prompt's name, as the server names it.
    pub name: String,
    /// Its arguments (strings).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub arguments: Option<Map<String, Value>>,
}

/// A failure of the server as the API answers it: 503 while it is down,
/// 422 for what it refused.
fn failed(error: crate::sandbox::ToolError) -> Error {
    match error {
        crate::sandbox::ToolError::Unavailable(message) => Error::Unavailable(message),
        other => Error::ToolFailed(other),
    }
}

fn json<T: Serialize>(value: T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

impl McpService {
    /// The running server `id`, if `principal` may use it.
    async fn usable(
        &self,
        principal: &Principal,
        id: Uuid,
        permission: Permission,
    ) -> Result<Arc<Server>> {
        principal.require(permission)?;
        let row = self.visible_row(principal, id).await?;
        if !row.enabled {
            return Err(Error::conflict(format!(
                "the MCP server {} is disabled",
                row.name
            )));
        }
        self.bridge
            .server(row.owner_id, &row.name)
            .ok_or(Error::NotFound("MCP server"))
    }

    /// Server `id`'s resources and templates.
    pub async fn resources(&self, principal: &Principal, id: Uuid) -> Result<McpResources> {
        let server = self.usable(principal, id, Permission::ToolRead).await?;
        let (resources, templates) = server.resources().await.map_err(failed)?;
        Ok(McpResources {
            resources: resources.into_iter().map(json).collect(),
            resource_templates: templates.into_iter().map(json).collect(),
        })
    }

    /// Reads resource `uri` of server `id`.
    pub async fn read_resource(&self, principal: &Principal, id: Uuid, uri: &str) -> Result<Value> {
        let server = self.usable(principal, id, Permission::ToolInvoke).await?;
        Ok(json(server.read_resource(uri).await.map_err(failed)?))
    }

    /// Server `id`'s prompts.
    pub async fn prompts(&self, principal: &Principal, id: Uuid) -> Result<Vec<Value>> {
        let server = self.usable(principal, id, Permission::ToolRead).await?;
        Ok(server
            .prompts()
            .await
            .map_err(failed)?
            .into_iter()
            .map(json)
            .collect())
    }

    /// Prompt `request.name` of server `id`, filled in.
    pub async fn get_prompt(
        &self,
        principal: &Principal,
        id: Uuid,
        request: GetPromptRequest,
    ) -> Result<Value> {
        let server = self.usable(principal, id, Permission::ToolInvoke).await?;
        Ok(json(
            server
                .get_prompt(&request.name, request.arguments)
                .await
                .map_err(failed)?,
        ))
    }
}
