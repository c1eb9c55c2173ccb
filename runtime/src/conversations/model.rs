//! Conversations domain types: conversations, messages and their content
//! parts, and the request/response schemas.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 300;
/// Most content parts in one message.
pub const MAX_PARTS: usize = 64;
/// Largest serialised `metadata`, in bytes.
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
/// Default messages per page.
pub const DEFAULT_MESSAGE_LIMIT: u32 = 50;
/// Most messages per page.
pub const MAX_MESSAGE_LIMIT: u32 = 200;

/// `POST /api/v1/conversations`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationInput {
    /// The agent this conversation talks to (one of yours).
    pub agent_id: Uuid,
    /// Optional title, up to 300 characters, no control characters.
    #[serde(default)]
    #[schema(max_length = 300, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub title: Option<String>,
    /// Free-form metadata object.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

/// `PATCH /api/v1/conversations/{id}`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConversationPatch {
    /// New title (up to 300 characters, no control characters); `null`
    /// clears it.
    #[serde(default, deserialize_with = "crate::schema::present")]
    #[schema(value_type = Option<String>, max_length = 300, pattern = r"^[^\x00-\x1f\x7f-\x9f]*$")]
    pub title: Option<Option<String>>,
    /// New metadata (replaces the old one).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

/// A conversation as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ConversationResponse {
    /// The conversation's id.
    pub id: Uuid,
    /// The user who owns it.
    pub owner_id: Uuid,
    /// The agent it talks to.
    pub agent_id: Uuid,
    /// Its title.
    pub title: Option<String>,
    /// Free-form metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// Messages so far.
    pub message_count: i64,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it last changed: renamed, a message posted, or a run started or
    /// stopped (to within a second; a run's steps in between do not move it).
    pub updated_at: DateTime<Utc>,
}

/// Filters of `GET /api/v1/conversations`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConversationFilter {
    /// Only conversations with this agent.
    pub agent_id: Option<Uuid>,
    /// Only conversations whose title contains this text (case-insensitive
    /// for ASCII letters; 1 to 200 characters).
    #[param(min_length = 1, max_length = 200)]
    pub q: Option<String>,
}

impl ConversationFilter {
    /// The title search as a `LIKE` pattern (escape character `\`).
    pub fn title_pattern(&self) -> Result<Option<String>> {
        let Some(q) = self.q.as_deref().map(str::trim).filter(|q| !q.is_empty()) else {
            return Ok(None);
        };
        if q.chars().count() > 200 || q.chars().any(char::is_control) {
            return Err(Error::invalid_field(
                "q",
                "must be at most 200 printable characters",
            ));
        }
        let mut pattern = String::from("%");
        for c in q.to_lowercase().chars() {
            if matches!(c, '%' | '_' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push('%');
        Ok(Some(pattern))
    }
}

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// Extra instructions for this conversation.
    System,
    /// The human.
    User,
    /// The agent (written by the run engine, or imported history).
    Assistant,
    /// A tool's result (written by the run engine only).
    Tool,
}

impl MessageRole {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageRole::System => "system",
            MessageRole::User => "user",
            MessageRole::Assistant => "assistant",
            MessageRole::Tool => "tool",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<MessageRole> {
        match s {
            "system" => Some(MessageRole::System),
            "user" => Some(MessageRole::User),
            "assistant" => Some(MessageRole::Assistant),
            "tool" => Some(MessageRole::Tool),
            _ => None,
        }
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ContentPart {
    /// Plain text.
    Text {
        /// The text.
        text: String,
    },
    /// An image, by URL (`https://...` or a `data:` URL).
    Image {
        /// Where the image is.
        url: String,
    },
    /// A tool call the agent asked for (written by runs only).
    ToolCall {
        /// The call's id, answered by a `tool_result` with the same `call_id`.
        id: String,
        /// The catalogue name of the tool.
        name: String,
        /// The arguments object.
        #[schema(value_type = Object)]
        arguments: Value,
    },
    /// The result of a tool call (written by runs only).
    ToolResult {
        /// The id of the call it answers.
        call_id: String,
        /// The catalogue name of the tool.
        name: String,
        /// The result as the model saw it (JSON text for structured results).
        content: String,
        /// Whether the call failed.
        is_error: bool,
        /// Images the tool returned (`data:` URLs), given to models that
        /// take images (the text describes them for the others).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        images: Vec<String>,
    },
}

/// Content as sent: a plain string, or a list of parts.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ContentInput {
    /// Shorthand for one text part.
    Text(String),
    /// Explicit parts.
    Parts(Vec<ContentPart>),
}

/// `POST /api/v1/conversations/{id}/messages`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageInput {
    /// `user` (usual), `system` or `assistant`; `tool` messages come from runs only.
    #[serde(default = "default_role")]
    pub role: MessageRole,
    /// A string, or a list of content parts.
    pub content: ContentInput,
    /// Free-form metadata object.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
}

fn default_role() -> MessageRole {
    MessageRole::User
}

/// A message as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MessageResponse {
    /// The message's id.
    pub id: Uuid,
    /// Its conversation.
    pub conversation_id: Uuid,
    /// Position in the conversation, from 1, without gaps.
    pub seq: i64,
    /// Who wrote it.
    pub role: MessageRole,
    /// Its content parts.
    pub content: Vec<ContentPart>,
    /// Free-form metadata.
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

/// `?after=&limit=` (or `?before=&limit=`) of the message list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MessageCursor {
    /// The `next_cursor` of the previous page; omit for the first page.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub after: Option<String>,
    /// Reads backwards: the messages just before this `seq` (`latest`:
    /// the newest messages), still oldest first within the page; then
    /// `next_cursor` is the `before` of the page of older ones. Not with
    /// `after`.
    #[param(pattern = r"^([0-9]{1,18}|latest)$")]
    pub before: Option<String>,
    /// Messages per page, 1 to 200 (default 50).
    #[param(minimum = 1, maximum = 200)]
    pub limit: Option<u32>,
}

/// One page of messages, oldest first.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct MessagePage {
    /// The messages.
    pub items: Vec<MessageResponse>,
    /// Pass as `after` to read on (as `before`, reading backwards); absent
    /// on the last page.
    pub next_cursor: Option<String>,
    /// Whether more messages follow (precede, reading backwards).
    pub has_more: bool,
}

/// A validated message cursor.
pub struct CursorRequest {
    /// Only messages with a greater `seq`.
    pub after_seq: i64,
    /// Reading backwards: only messages with a smaller `seq`.
    pub before_seq: Option<i64>,
    /// Page size.
    pub limit: u32,
}

impl MessageCursor {
    /// Checks the bounds and decodes the cursor.
    pub fn validate(&self) -> Result<CursorRequest> {
        let limit = self.limit.unwrap_or(DEFAULT_MESSAGE_LIMIT);
        if limit == 0 || limit > MAX_MESSAGE_LIMIT {
            return Err(Error::invalid_field(
                "limit",
                format!("must be between 1 and {MAX_MESSAGE_LIMIT}"),
            ));
        }
        let seq = |field: &str, c: &str| {
            (1..=18)
                .contains(&c.len())
                .then_some(c)
                .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|c| c.parse::<i64>().ok())
                .ok_or_else(|| Error::invalid_field(field, "is not a cursor from this API"))
        };
        let after_seq = match &self.after {
            None => 0,
            Some(c) => seq("after", c)?,
        };
        let before_seq = match self.before.as_deref() {
            None => None,
            Some(_) if self.after.is_some() => {
                return Err(Error::invalid_field("before", "cannot be used with after"))
            }
            Some("latest") => Some(i64::MAX),
            Some(c) => Some(seq("before", c)?),
        };
        Ok(CursorRequest {
            after_seq,
            before_seq,
            limit,
        })
    }
}

/// Trims and checks an optional title.
pub fn parse_title(raw: Option<String>) -> Result<Option<String>> {
    match raw.map(|t| t.trim().to_owned()) {
        None => Ok(None),
        Some(t) if t.is_empty() => Ok(None),
        Some(t) if t.chars().count() > MAX_TITLE_CHARS || t.chars().any(char::is_control) => {
            Err(Error::invalid_field(
                "title",
                format!("must be at most {MAX_TITLE_CHARS} printable characters"),
            ))
        }
        Some(t) => Ok(Some(t)),
    }
}

/// Checks the size of a metadata object.
pub fn check_metadata(metadata: &Map<String, Value>) -> Result<()> {
    crate::schema::check_object_size("metadata", metadata, MAX_METADATA_BYTES)
}

impl MessageInput {
    /// Validates the role and content into stored parts.
    pub fn into_parts(self) -> Result<(MessageRole, Vec<ContentPart>, Map<String, Value>)> {
        if self.role == MessageRole::Tool {
            return Err(Error::invalid_field(
                "role",
                "tool messages are written by runs, not posted",
            ));
        }
        check_metadata(&self.metadata)?;
        let parts = match self.content {
            ContentInput::Text(text) => vec![ContentPart::Text { text }],
            ContentInput::Parts(parts) => parts,
        };
        if parts.is_empty() || parts.len() > MAX_PARTS {
            return Err(Error::invalid_field(
                "content",
                format!("must hold 1 to {MAX_PARTS} parts"),
            ));
        }
        for part in &parts {
            match part {
                ContentPart::Text { text } if text.trim().is_empty() => {
                    return Err(Error::invalid_field(
                        "content",
                        "text parts must not be empty",
                    ));
                }
                ContentPart::Image { url }
                    if !(url.starts_with("https://")
                        || url.starts_with("http://")
                        || url.starts_with("data:image/")) =>
                {
                    return Err(Error::invalid_field(
                        "content",
                        "image urls must be http(s) or data:image/ URLs",
                    ));
                }
                ContentPart::ToolCall { .. } | ContentPart::ToolResult { .. } => {
                    return Err(Error::invalid_field(
                        "content",
                        "tool_call and tool_result parts are written by runs, not posted",
                    ));
                }
                _ => {}
            }
        }
        Ok((self.role, parts, self.metadata))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<(MessageRole, Vec<ContentPart>, Map<String, Value>)> {
        serde_json::from_value::<MessageInput>(v)
            .unwrap()
            .into_parts()
    }

    #[test]
    fn content_accepts_a_string_or_parts() {
        let (role, parts, _) = parse(serde_json::json!({"content": "hi"})).unwrap();
        assert_eq!(role, MessageRole::User);
        assert_eq!(parts, vec![ContentPart::Text { text: "hi".into() }]);
        let (_, parts, _) = parse(serde_json::json!({
            "role": "assistant",
            "content": [{"type": "text", "text": "a"}, {"type": "image", "url": "https://x/y.png"}]
        }))
        .unwrap();
        assert_eq!(parts.len(), 2);
    }

    #[test]
    fn bad_content_is_refused() {
        assert!(parse(serde_json::json!({"content": "  "})).is_err());
        assert!(parse(serde_json::json!({"content": []})).is_err());
        assert!(parse(serde_json::json!({"role": "tool", "content": "x"})).is_err());
        assert!(parse(
            serde_json::json!({"content": [{"type": "image", "url": "file:///etc/passwd"}]})
        )
        .is_err());
    }

    #[test]
    fn cursors_are_checked() {
        let c = |after: Option<&str>, limit| {
            MessageCursor {
                after: after.map(Into::into),
                before: None,
                limit,
            }
            .validate()
        };
        assert!(c(Some("x"), None).is_err());
        assert!(c(Some("-1"), None).is_err());
        assert!(c(None, Some(0)).is_err());
        assert_eq!(c(Some("7"), Some(3)).unwrap().after_seq, 7);
    }
}
