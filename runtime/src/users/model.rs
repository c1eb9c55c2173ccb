//! Users domain types: roles, permissions, the authenticated principal, and the
//! request/response schemas of the auth, user and API-key endpoints.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::error::{Error, Result};

/// A user's role; each role is a fixed set of [`Permission`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, over every user's resources.
    Admin,
    /// Creates and manages their own agents, conversations and keys.
    User,
    /// Reads their own resources, never writes.
    Viewer,
}

impl Role {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::User => "user",
            Role::Viewer => "viewer",
        }
    }

    /// Parses the stored name.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "admin" => Some(Role::Admin),
            "user" => Some(Role::User),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }

    /// Whether this role holds `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        use Permission::*;
        match self {
            Role::Admin => true,
            Role::User => !matches!(
                permission,
                UserManage
                    | SettingsManage
                    | AuditRead
                    | PluginManage
                    | SecretManage
                    | ProviderManage
                    | McpManage
            ),
            Role::Viewer => matches!(permission, AgentRead | ConversationRead | ToolRead),
        }
    }
}

/// A named permission, checked by services before they act.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `agent:read`
    AgentRead,
    /// `agent:create`
    AgentCreate,
    /// `agent:update`
    AgentUpdate,
    /// `agent:delete`
    AgentDelete,
    /// `conversation:read`
    ConversationRead,
    /// `conversation:write`: create, rename, delete, post messages.
    ConversationWrite,
    /// `api_key:manage`: one's own API keys.
    ApiKeyManage,
    /// `user:manage`: list, create, change role, disable.
    UserManage,
    /// `settings:manage`: server-wide settings.
    SettingsManage,
    /// `audit:read`
    AuditRead,
    /// `tool:read`: list the tool catalogue and plugins.
    ToolRead,
    /// `tool:invoke`: run a tool directly.
    ToolInvoke,
    /// `plugin:manage`: install, grant, upgrade and remove plugins.
    PluginManage,
    /// `secret:manage`: set and delete named secrets.
    SecretManage,
    /// `provider:manage`: configure server-wide model providers and their keys.
    ProviderManage,
    /// `provider:own`: configure model providers for oneself.
    ProviderOwn,
    /// `mcp:manage`: register stdio and server-wide MCP servers.
    McpManage,
    /// `mcp:own`: register HTTP MCP servers for oneself.
    McpOwn,
}

impl Permission {
    /// The permission's public name.
    pub fn name(self) -> &'static str {
        match self {
            Permission::AgentRead => "agent:read",
            Permission::AgentCreate => "agent:create",
            Permission::AgentUpdate => "agent:update",
            Permission::AgentDelete => "agent:delete",
            Permission::ConversationRead => "conversation:read",
            Permission::ConversationWrite => "conversation:write",
            Permission::ApiKeyManage => "api_key:manage",
            Permission::UserManage => "user:manage",
            Permission::SettingsManage => "settings:manage",
            Permission::AuditRead => "audit:read",
            Permission::ToolRead => "tool:read",
            Permission::ToolInvoke => "tool:invoke",
            Permission::PluginManage => "plugin:manage",
            Permission::SecretManage => "secret:manage",
            Permission::ProviderManage => "provider:manage",
            Permission::ProviderOwn => "provider:own",
            Permission::McpManage => "mcp:manage",
            Permission::McpOwn => "mcp:own",
        }
    }
}

/// How a request authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// A JWT access token.
    AccessToken,
    /// An API key, by its id.
    ApiKey(Uuid),
    /// No request: the owner's own schedule or trigger acting for them.
    Owner,
    /// An OAuth access token of an MCP client, by the user's grant.
    OAuth(Uuid),
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's id.
    pub user_id: Uuid,
    /// The user's role at the time of the request.
    pub role: Role,
    /// How the request authenticated.
    pub method: AuthMethod,
}

impl Principal {
    /// Fails with 403 unless the caller's role holds `permission`.
    pub fn require(&self, permission: Permission) -> Result<()> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(Error::Forbidden {
                code: "forbidden",
                message: format!("this action requires the {} permission", permission.name()),
            })
        }
    }

    /// The owner whose rows the caller may see: `None` for admins (every row),
    /// the caller's own id otherwise.
    pub fn owner_scope(&self) -> Option<Uuid> {
        match self.role {
            Role::Admin => None,
            _ => Some(self.user_id),
        }
    }
}

/// A normalised, validated email address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Lower-cases and checks the shape `local@domain`.
    pub fn parse(raw: &str) -> Result<Email> {
        let email = raw.trim().to_lowercase();
        let valid = email.len() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && matches!(email.split_once('@'), Some((local, domain))
                if !local.is_empty() && domain.contains('.') && !domain.starts_with('.')
                    && !domain.ends_with('.') && !domain.contains('@'));
        if valid {
            Ok(Email(email))
        } else {
            Err(Error::invalid_field(
                "email",
                "must be a valid email address",
            ))
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the length policy.
pub struct Password(String);

impl Password {
    /// Shortest accepted password.
    pub const MIN_LEN: usize = 8;
    /// Longest accepted password (argon2 input stays bounded).
    pub const MAX_LEN: usize = 256;

    /// Checks the length policy; `field` names the field in the error.
    pub fn parse(raw: String, field: &str) -> Result<Password> {
        let len = raw.chars().count();
        if !(Self::MIN_LEN..=Self::MAX_LEN).contains(&len) {
            return Err(Error::invalid_field(
                field,
                format!(
                    "must be between {} and {} characters",
                    Self::MIN_LEN,
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(Password(raw))
    }

    /// The secret.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// An optional display name, trimmed, at most 200 characters.
pub fn parse_display_name(raw: Option<String>) -> Result<Option<String>> {
    match raw.map(|s| s.trim().to_owned()) {
        None => Ok(None),
        Some(s) if s.is_empty() => Ok(None),
        Some(s) if s.chars().count() > 200 => Err(Error::invalid_field(
            "display_name",
            "must be at most 200 characters",
        )),
        Some(s) if s.chars().any(char::is_control) => Err(Error::invalid_field(
            "display_name",
            "must not contain control characters",
        )),
        Some(s) => {
            crate::schema::check_visible("display_name", &s)?;
            Ok(Some(s))
        }
    }
}

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserResponse {
    /// The user's id.
    pub id: Uuid,
    /// Login email, lower-cased.
    pub email: String,
    /// Optional name shown in clients.
    pub display_name: Option<String>,
    /// admin, user or viewer.
    pub role: Role,
    /// False once an admin disables the account.
    pub is_active: bool,
    /// When the account was created.
    pub created_at: DateTime<Utc>,
    /// When the account last changed.
    pub updated_at: DateTime<Utc>,
    /// When the user last logged in with a password.
    pub last_login_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/auth/register`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// Login email.
    #[schema(
        max_length = 254,
        pattern = r"^\s*[^\s@\x00-\x1f\x7f-\x9f]+@[^\s@.\x00-\x1f\x7f-\x9f][^\s@\x00-\x1f\x7f-\x9f]*\.[^\s@\x00-\x1f\x7f-\x9f]*[^\s@.\x00-\x1f\x7f-\x9f]\s*$"
    )]
    pub email: String,
    /// 8 to 256 characters.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
    /// Optional name shown in clients: up to 200 characters, no control,
    /// invisible or direction-changing characters.
    #[serde(default)]
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]*$"
    )]
    pub display_name: Option<String>,
}

/// `POST /api/v1/auth/login`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    /// Login email.
    pub email: String,
    /// The password.
    pub password: String,
}

/// `POST /api/v1/auth/refresh` and `/auth/logout`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh.
    pub refresh_token: String,
}

/// A fresh pair of tokens.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    /// A JWT for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until `access_token` expires.
    pub expires_in: u64,
    /// Single-use token for `/auth/refresh`; rotated on every use.
    pub refresh_token: String,
    /// The authenticated user.
    pub user: UserResponse,
}

/// `POST /api/v1/users/{id}/password` (admin)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ResetPasswordRequest {
    /// The new password: 8 to 256 characters.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
}

/// `POST /api/v1/users` (admin)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// Login email.
    #[schema(
        max_length = 254,
        pattern = r"^\s*[^\s@\x00-\x1f\x7f-\x9f]+@[^\s@.\x00-\x1f\x7f-\x9f][^\s@\x00-\x1f\x7f-\x9f]*\.[^\s@\x00-\x1f\x7f-\x9f]*[^\s@.\x00-\x1f\x7f-\x9f]\s*$"
    )]
    pub email: String,
    /// 8 to 256 characters.
    #[schema(min_length = 8, max_length = 256)]
    pub password: String,
    /// Optional name shown in clients: up to 200 characters, no control,
    /// invisible or direction-changing characters.
    #[serde(default)]
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]*$"
    )]
    pub display_name: Option<String>,
    /// Defaults to `user`.
    #[serde(default)]
    pub role: Option<Role>,
}

/// `PATCH /api/v1/users/{id}` (admin)
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    /// New role.
    #[serde(default)]
    pub role: Option<Role>,
    /// False disables the account and revokes its tokens at once.
    #[serde(default)]
    pub is_active: Option<bool>,
    /// New display name: up to 200 characters, no control, invisible or
    /// direction-changing characters.
    #[serde(default)]
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1f\x7f-\x9f\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]*$"
    )]
    pub display_name: Option<String>,
}

/// `POST /api/v1/users/me/password`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChangePasswordRequest {
    /// The password in use.
    pub current_password: String,
    /// The new password, 8 to 256 characters.
    #[schema(min_length = 8, max_length = 256)]
    pub new_password: String,
}

/// `POST /api/v1/api-keys`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// A label to recognise the key by (1 to 100 characters).
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub name: String,
    /// Optional expiry; must be in the future.
    #[serde(default)]
    pub expires_at: Option<DateTime<Utc>>,
}

/// An API key as listed (never with its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyResponse {
    /// The key's id.
    pub id: Uuid,
    /// Its label.
    pub name: String,
    /// The first characters of the key, to recognise it.
    pub prefix: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it last authenticated a request (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A newly created API key, with the secret shown this once.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiKeyResponse {
    /// The key's metadata.
    #[serde(flatten)]
    pub api_key: ApiKeyResponse,
    /// The secret. It is stored only as a hash and cannot be shown again.
    pub key: String,
}
