//! OAuth types: scopes, the protocol's requests and answers (RFC 6749,
//! 7591, 7009), and the schemas of `/api/v1/oauth`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

/// What an MCP client may do on `/mcp` for the user who approved it; the
/// user's role still applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// `tools:read`: see the tool catalogue (plugins, bridged tools).
    ToolsRead,
    /// `tools:call`: call those tools.
    ToolsCall,
    /// `agents:run`: see the user's agents as tools and run them.
    AgentsRun,
}

impl Scope {
    /// Every scope, in the order they are shown.
    pub const ALL: [Scope; 3] = [Scope::ToolsRead, Scope::ToolsCall, Scope::AgentsRun];

    /// The scope's name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::ToolsRead => "tools:read",
            Scope::ToolsCall => "tools:call",
            Scope::AgentsRun => "agents:run",
        }
    }

    /// What it allows, as the consent page says it.
    pub fn description(self) -> &'static str {
        match self {
            Scope::ToolsRead => "See the tools you can use: plugins and MCP servers",
            Scope::ToolsCall => "Call those tools as you",
            Scope::AgentsRun => "See your agents and run them, in new or existing conversations",
        }
    }

    /// Parses one name.
    pub fn parse(s: &str) -> Option<Scope> {
        Scope::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    /// Parses a space-separated list; `Err` names the first unknown scope.
    pub fn parse_list(s: &str) -> Result<Vec<Scope>, String> {
        let mut scopes = Vec::new();
        for name in s.split_ascii_whitespace() {
            let scope = Scope::parse(name).ok_or_else(|| name.to_owned())?;
            if !scopes.contains(&scope) {
                scopes.push(scope);
            }
        }
        Ok(scopes)
    }

    /// The space-separated list, in the canonical order.
    pub fn join(scopes: &[Scope]) -> String {
        Scope::ALL
            .into_iter()
            .filter(|s| scopes.contains(s))
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// The scopes of the request's OAuth token; absent for API keys and the
/// API's access tokens, which may do everything the role allows.
#[derive(Debug, Clone)]
pub struct GrantedScopes(pub Vec<Scope>);

/// The MCP client an OAuth access token was issued to (its `client_id`);
/// rides in the request's extensions next to [`GrantedScopes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthClient(pub String);

impl GrantedScopes {
    /// Whether `scope` was granted.
    pub fn allows(&self, scope: Scope) -> bool {
        self.0.contains(&scope)
    }
}

/// A client registration request (RFC 7591 §2).
#[derive(Debug, Deserialize)]
pub struct RegistrationRequest {
    /// Where the client may be sent back to; each compared exactly.
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    /// The name shown on the consent page.
    pub client_name: Option<String>,
    /// The client's home page.
    pub client_uri: Option<String>,
    /// Scopes the client will ask for.
    pub scope: Option<String>,
    /// `none` (public clients, the default), `client_secret_post` or
    /// `client_secret_basic`.
    pub token_endpoint_auth_method: Option<String>,
    /// Subset of `authorization_code` and `refresh_token`.
    pub grant_types: Option<Vec<String>>,
    /// `code` only.
    pub response_types: Option<Vec<String>>,
}

/// A client's registration as stored and answered (RFC 7591 §3.2.1).
#[derive(Debug, Serialize)]
pub struct RegistrationResponse {
    /// The client's id.
    pub client_id: String,
    /// Only for confidential clients, and only in this answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// When the id was issued (seconds since the epoch).
    pub client_id_issued_at: i64,
    /// 0: the secret does not expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<i64>,
    /// As registered.
    pub redirect_uris: Vec<String>,
    /// As registered.
    pub client_name: String,
    /// As registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_uri: Option<String>,
    /// As registered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// As registered.
    pub token_endpoint_auth_method: String,
    /// As registered.
    pub grant_types: Vec<String>,
    /// As registered.
    pub response_types: Vec<String>,
}

/// The query of `/oauth/authorize`.
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    /// Must be `code`.
    pub response_type: Option<String>,
    /// The client.
    pub client_id: Option<String>,
    /// One of the client's registered redirect URIs, exactly.
    pub redirect_uri: Option<String>,
    /// Space-separated scopes; all the client registered when absent.
    pub scope: Option<String>,
    /// Echoed back to the client.
    pub state: Option<String>,
    /// PKCE: base64url SHA-256 of the verifier.
    pub code_challenge: Option<String>,
    /// Must be `S256`.
    pub code_challenge_method: Option<String>,
    /// RFC 8707: the `/mcp` URL the token is for.
    pub resource: Option<String>,
}

/// The form of `/oauth/token` and `/oauth/revoke`.
#[derive(Debug, Default, Deserialize)]
pub struct TokenForm {
    /// `authorization_code` or `refresh_token`.
    pub grant_type: Option<String>,
    /// The authorization code.
    pub code: Option<String>,
    /// Must equal the authorization request's.
    pub redirect_uri: Option<String>,
    /// The client (public clients; confidential ones may use Basic).
    pub client_id: Option<String>,
    /// Confidential clients (`client_secret_post`).
    pub client_secret: Option<String>,
    /// PKCE verifier.
    pub code_verifier: Option<String>,
    /// The refresh token.
    pub refresh_token: Option<String>,
    /// A narrower set of scopes (refresh only).
    pub scope: Option<String>,
    /// RFC 8707: the resource, which must be the one approved.
    pub resource: Option<String>,
    /// The token to revoke (`/oauth/revoke`).
    pub token: Option<String>,
}

/// A successful token answer (RFC 6749 §5.1).
#[derive(Debug, Serialize)]
pub struct TokenResponse {
    /// For `/mcp` only.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Seconds the access token lives.
    pub expires_in: u64,
    /// Replaces the one used; the old one is dead.
    pub refresh_token: String,
    /// What was granted.
    pub scope: String,
}

/// A client asking for the signed-in user's approval.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentRequest {
    /// The pending request.
    pub id: Uuid,
    /// The client asking.
    pub client: ClientSummary,
    /// Where the user's browser goes next, with the code.
    pub redirect_uri: String,
    /// The scopes asked for.
    pub scopes: Vec<ScopeInfo>,
    /// The resource the token would be for (`/mcp`).
    pub resource: String,
    /// When the request lapses.
    pub expires_at: DateTime<Utc>,
}

/// A client as users see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClientSummary {
    /// The client id (a URL for clients known by their metadata document).
    pub id: String,
    /// The name it gave itself; not verified.
    pub name: String,
    /// Its home page, as it says.
    pub client_uri: Option<String>,
    /// `registered` (dynamic registration: anyone may claim any name) or
    /// `metadata_document` (the id is a URL on the client's own domain).
    pub kind: String,
}

/// A scope and what it allows.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScopeInfo {
    /// Its name.
    pub name: String,
    /// What it allows.
    pub description: String,
}

/// The signed-in user's answer to a client's request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConsentDecision {
    /// Approve (true) or deny (false).
    pub approve: bool,
    /// Grant fewer scopes than asked (a subset); all asked when absent.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

/// Where to send the browser after a decision.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConsentOutcome {
    /// The client's redirect URI with `code` and `state`, or with `error`.
    pub redirect_to: String,
}

/// A client the user approved, as they see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct GrantResponse {
    /// The grant.
    pub id: Uuid,
    /// The client.
    pub client: ClientSummary,
    /// The scopes granted.
    pub scopes: Vec<String>,
    /// The resource its tokens are for.
    pub resource: String,
    /// When the user approved it.
    pub created_at: DateTime<Utc>,
    /// When the client last used a token (to the minute).
    pub last_used_at: Option<DateTime<Utc>>,
}
