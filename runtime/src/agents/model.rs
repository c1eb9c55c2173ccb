//! Agents domain types: the validated agent specification, the request and
//! response schemas, list filters and revisions.
//!
//! Input is parsed into an [`AgentSpec`] at the edge; a spec that exists is
//! valid, so the service and repository never re-check it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest agent name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2_000;
/// Longest instructions, in characters.
pub const MAX_INSTRUCTIONS_CHARS: usize = 100_000;
/// Most tools an agent may list.
pub const MAX_TOOLS: usize = 128;
/// Largest serialised `config`, `metadata` or model `parameters`, in bytes.
pub const MAX_OBJECT_BYTES: usize = 64 * 1024;

/// Which model an agent talks to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// The provider's name as configured on this server, e.g. `openai` or `anthropic`.
    #[schema(pattern = r"^[a-z0-9_-]{1,64}$")]
    pub provider: String,
    /// The provider's model id, e.g. `gpt-4o-mini`.
    pub model: String,
    /// Sampling parameters passed to the provider (temperature, max_tokens, ...).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
}

/// A complete, validated agent definition: what a revision snapshots.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AgentSpec {
    /// Unique among the owner's live agents.
    pub name: String,
    /// What the agent is for.
    pub description: Option<String>,
    /// The system prompt.
    pub instructions: String,
    /// The model the agent uses.
    pub model: ModelRef,
    /// Names of the tools the agent may call.
    pub tools: Vec<String>,
    /// Free-form configuration.
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// Free-form metadata for clients.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// `POST /api/v1/agents` and `PUT /api/v1/agents/{id}`: a whole agent.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentInput {
    /// 1 to 200 characters, unique among your agents; no control,
    /// invisible or direction-changing characters.
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]*\S[^\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]*$"
    )]
    pub name: String,
    /// Up to 2000 characters.
    #[serde(default)]
    pub description: Option<String>,
    /// The system prompt, up to 100000 characters.
    #[serde(default)]
    pub instructions: String,
    /// The model the agent uses.
    pub model: ModelRef,
    /// Names of the tools the agent may call (up to 128, no duplicates).
    #[serde(default)]
    pub tools: Vec<String>,
    /// Free-form configuration object.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub config: Map<String, Value>,
    /// Free-form metadata object.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// `PATCH /api/v1/agents/{id}`: only the fields present change; a `null`
/// description clears it.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentPatch {
    /// New name.
    #[serde(default)]
    pub name: Option<String>,
    /// New description; `null` clears it.
    #[serde(default, deserialize_with = "crate::schema::present")]
    #[schema(value_type = Option<String>)]
    pub description: Option<Option<String>>,
    /// New instructions.
    #[serde(default)]
    pub instructions: Option<String>,
    /// New model.
    #[serde(default)]
    pub model: Option<ModelRef>,
    /// New tool list (replaces the old one).
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    /// New configuration (replaces the old one).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub config: Option<Map<String, Value>>,
    /// New metadata (replaces the old one).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// `POST /api/v1/agents/{id}/clone`
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CloneRequest {
    /// Name of the copy; defaults to "<name> (copy)", numbered if taken.
    #[serde(default)]
    pub name: Option<String>,
}

/// An agent as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct AgentResponse {
    /// The agent's id.
    pub id: Uuid,
    /// The user who owns it.
    pub owner_id: Uuid,
    /// The definition.
    #[serde(flatten)]
    pub spec: AgentSpec,
    /// Bumped by every change; send it back in `If-Match` to update safely.
    pub version: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

/// One stored version of an agent.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RevisionResponse {
    /// The agent.
    pub agent_id: Uuid,
    /// The version this revision holds.
    pub version: i64,
    /// The definition at that version.
    pub spec: AgentSpec,
    /// Who made the change (absent if that user was deleted).
    pub created_by: Option<Uuid>,
    /// When the change was made.
    pub created_at: DateTime<Utc>,
}

/// Orderings of `GET /api/v1/agents`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, ToSchema)]
pub enum AgentSort {
    /// Newest first (default).
    #[default]
    #[serde(rename = "-created_at")]
    CreatedDesc,
    /// Oldest first.
    #[serde(rename = "created_at")]
    CreatedAsc,
    /// Most recently changed first.
    #[serde(rename = "-updated_at")]
    UpdatedDesc,
    /// Least recently changed first.
    #[serde(rename = "updated_at")]
    UpdatedAsc,
    /// By name, A to Z.
    #[serde(rename = "name")]
    NameAsc,
    /// By name, Z to A.
    #[serde(rename = "-name")]
    NameDesc,
}

impl AgentSort {
    /// The ORDER BY clause (with a unique tie-breaker so pages never overlap).
    pub fn order_by(self) -> &'static str {
        match self {
            AgentSort::CreatedDesc => " ORDER BY created_at DESC, id DESC",
            AgentSort::CreatedAsc => " ORDER BY created_at ASC, id ASC",
            AgentSort::UpdatedDesc => " ORDER BY updated_at DESC, id DESC",
            AgentSort::UpdatedAsc => " ORDER BY updated_at ASC, id ASC",
            AgentSort::NameAsc => " ORDER BY name ASC, id ASC",
            AgentSort::NameDesc => " ORDER BY name DESC, id DESC",
        }
    }
}

/// Filters of `GET /api/v1/agents`.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AgentFilter {
    /// Case-insensitive substring of the name.
    pub q: Option<String>,
    /// Only agents of this model provider.
    pub provider: Option<String>,
    /// Only agents allowed to call this tool.
    pub tool: Option<String>,
    /// Only agents of this owner (admins; others only ever see their own).
    pub owner_id: Option<Uuid>,
    /// `-created_at` (default), `created_at`, `-updated_at`, `updated_at`, `name`, `-name`.
    #[param(inline)]
    pub sort: Option<AgentSort>,
}

fn has_control(s: &str) -> bool {
    s.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t' && c != '\r')
}

/// Trims and checks an agent name.
pub fn parse_name(raw: &str) -> Result<String> {
    let name = raw.trim();
    let len = name.chars().count();
    if len == 0 || len > MAX_NAME_CHARS {
        return Err(Error::invalid_field(
            "name",
            format!("must be 1 to {MAX_NAME_CHARS} characters"),
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(Error::invalid_field(
            "name",
            "must not contain control characters",
        ));
    }
    crate::schema::check_visible("name", name)?;
    Ok(name.to_owned())
}

fn parse_description(raw: Option<String>) -> Result<Option<String>> {
    match raw {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_CHARS => Err(Error::invalid_field(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters"),
        )),
        Some(d) if has_control(&d) => Err(Error::invalid_field(
            "description",
            "must not contain control characters",
        )),
        other => Ok(other),
    }
}

fn parse_instructions(raw: String) -> Result<String> {
    if raw.chars().count() > MAX_INSTRUCTIONS_CHARS {
        return Err(Error::invalid_field(
            "instructions",
            format!("must be at most {MAX_INSTRUCTIONS_CHARS} characters"),
        ));
    }
    Ok(raw)
}

fn check_object(field: &str, object: &Map<String, Value>) -> Result<()> {
    crate::schema::check_object_size(field, object, MAX_OBJECT_BYTES)
}

fn parse_model(model: ModelRef) -> Result<ModelRef> {
    let provider_ok = (1..=64).contains(&model.provider.len())
        && model
            .provider
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !provider_ok {
        return Err(Error::invalid_field(
            "model.provider",
            "must be 1 to 64 characters of a-z, 0-9, '-' or '_'",
        ));
    }
    let model_name = model.model.trim();
    if model_name.is_empty()
        || model_name.chars().count() > 200
        || model_name.chars().any(char::is_control)
    {
        return Err(Error::invalid_field(
            "model.model",
            "must be 1 to 200 printable characters",
        ));
    }
    check_object("model.parameters", &model.parameters)?;
    Ok(ModelRef {
        model: model_name.to_owned(),
        ..model
    })
}

/// Checks a catalogue tool name: `^[a-zA-Z0-9_-]{1,64}$`, valid for every
/// model vendor and for MCP.
pub fn is_valid_tool_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn parse_tools(tools: Vec<String>) -> Result<Vec<String>> {
    if tools.len() > MAX_TOOLS {
        return Err(Error::invalid_field(
            "tools",
            format!("at most {MAX_TOOLS} tools"),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for tool in &tools {
        if !is_valid_tool_name(tool) {
            return Err(Error::invalid_field(
                "tools",
                format!("{tool:?} is not a valid tool name (1 to 64 of A-Z a-z 0-9 _ -)"),
            ));
        }
        if !seen.insert(tool.as_str()) {
            return Err(Error::invalid_field(
                "tools",
                format!("{tool:?} is listed twice"),
            ));
        }
    }
    Ok(tools)
}

impl AgentInput {
    /// Validates every field into a spec.
    pub fn into_spec(self) -> Result<AgentSpec> {
        check_object("config", &self.config)?;
        check_object("metadata", &self.metadata)?;
        Ok(AgentSpec {
            name: parse_name(&self.name)?,
            description: parse_description(self.description)?,
            instructions: parse_instructions(self.instructions)?,
            model: parse_model(self.model)?,
            tools: parse_tools(self.tools)?,
            config: self.config,
            metadata: self.metadata,
        })
    }
}

impl AgentPatch {
    /// Applies the present fields to `spec`, validating each.
    pub fn apply(self, mut spec: AgentSpec) -> Result<AgentSpec> {
        if let Some(name) = self.name {
            spec.name = parse_name(&name)?;
        }
        if let Some(description) = self.description {
            spec.description = parse_description(description)?;
        }
        if let Some(instructions) = self.instructions {
            spec.instructions = parse_instructions(instructions)?;
        }
        if let Some(model) = self.model {
            spec.model = parse_model(model)?;
        }
        if let Some(tools) = self.tools {
            spec.tools = parse_tools(tools)?;
        }
        if let Some(config) = self.config {
            check_object("config", &config)?;
            spec.config = config;
        }
        if let Some(metadata) = self.metadata {
            check_object("metadata", &metadata)?;
            spec.metadata = metadata;
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> AgentInput {
        serde_json::from_value(serde_json::json!({
            "name": "  Helper ",
            "model": {"provider": "openai", "model": "gpt-4o-mini"}
        }))
        .unwrap()
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(input().into_spec().unwrap().name, "Helper");
        let mut long = input();
        long.name = "x".repeat(201);
        assert!(long.into_spec().is_err());
        let mut blank = input();
        blank.name = "   ".into();
        assert!(blank.into_spec().is_err());
    }

    #[test]
    fn tools_must_be_valid_and_unique() {
        let mut i = input();
        i.tools = vec!["web_fetch".into(), "web_fetch".into()];
        assert!(i.into_spec().is_err());
        let mut i = input();
        i.tools = vec!["bad name".into()];
        assert!(i.into_spec().is_err());
        let mut i = input();
        i.tools = vec!["github__create_issue".into()];
        assert!(i.into_spec().is_ok());
    }

    #[test]
    fn patch_distinguishes_null_from_absent() {
        let spec = AgentInput {
            description: Some("d".into()),
            ..input()
        }
        .into_spec()
        .unwrap();
        let absent: AgentPatch = serde_json::from_str("{}").unwrap();
        assert_eq!(
            absent.apply(spec.clone()).unwrap().description.as_deref(),
            Some("d")
        );
        let null: AgentPatch = serde_json::from_str(r#"{"description": null}"#).unwrap();
        assert_eq!(null.apply(spec).unwrap().description, None);
    }
}
