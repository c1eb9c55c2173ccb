//! Orchestra as the OAuth 2.1 authorization server of its own `/mcp` (the
//! MCP authorization specification, revision 2025-11-25), for its own
//! users.
//!
//! A remote MCP client finds this server through Protected Resource
//! Metadata (RFC 9728) and authorization server metadata (RFC 8414),
//! registers itself (RFC 7591), sends the user's browser to
//! `/oauth/authorize` with a PKCE challenge (S256 only) and the `/mcp`
//! resource (RFC 8707), and the user approves it in the web console (signed
//! in with their session); the code it gets back is single-use and lives a
//! minute, and the tokens it exchanges it for are opaque, stored as
//! digests, bound to `/mcp` and to the scopes the user approved, and valid
//! nowhere else. Refresh tokens are rotated on each use; a replayed refresh
//! token or code revokes the whole grant. Users list and revoke the clients
//! they approved; every step is audited.

pub mod limits;
pub mod model;
pub mod repo;
pub mod routes;

use std::fmt::Write as _;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chrono::Duration;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::types::Json;
use uuid::Uuid;

use self::model::*;
use self::repo::{ClientRow, NewGrant, NewToken, OAuthRepo, RequestRow};
use crate::audit::AuditService;
use crate::config::OAuthConfig;
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::users::credentials::{random_token, token_digest};
use crate::users::model::{AuthMethod, Principal};
use crate::users::UserService;

/// What every token this server issues to MCP clients starts with; the
/// REST API refuses them.
pub const TOKEN_PREFIX: &str = "omcp_";
const ACCESS_PREFIX: &str = "omcp_at_";
const REFRESH_PREFIX: &str = "omcp_rt_";
const CODE_PREFIX: &str = "omcp_ac_";

/// The path of the protected resource.
pub const RESOURCE_PATH: &str = "/mcp";

/// Longest accepted client name, URI or redirect URI.
const MAX_FIELD: usize = 2000;

/// Redirect URIs a client may register, at most.
const MAX_REDIRECT_URIS: usize = 10;

/// Schemes never accepted as a redirect.
const FORBIDDEN_SCHEMES: [&str; 9] = [
    "javascript",
    "data",
    "file",
    "vbscript",
    "about",
    "blob",
    "ftp",
    "ws",
    "wss",
];

/// An error of a protocol endpoint, in the form OAuth clients read (RFC
/// 6749 §5.2); `message` repeats the description for clients of the API's
/// `ErrorResponse`.
#[derive(Debug)]
pub struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    pub(crate) fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        let status = match error {
            "invalid_client" => StatusCode::UNAUTHORIZED,
            "server_error" => StatusCode::INTERNAL_SERVER_ERROR,
            "temporarily_unavailable" => StatusCode::SERVICE_UNAVAILABLE,
            "too_many_clients" => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        };
        OAuthError {
            status,
            error,
            description: description.into(),
        }
    }

    /// The OAuth error code.
    pub fn code(&self) -> &'static str {
        self.error
    }
}

impl From<Error> for OAuthError {
    fn from(error: Error) -> OAuthError {
        match error {
            Error::Internal(e) => {
                tracing::error!(error = %e, "oauth endpoint failed");
                OAuthError::new("server_error", "internal error")
            }
            Error::Unavailable(m) => OAuthError::new("temporarily_unavailable", m),
            other => OAuthError::new("invalid_request", other.to_string()),
        }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            axum::Json(json!({
                "error": self.error,
                "error_description": self.description,
                "message": self.description,
            })),
        )
            .into_response();
        let headers = response.headers_mut();
        headers.insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Basic realm=\"orchestra\""),
            );
        }
        response
    }
}

/// Where `/oauth/authorize` sends the browser.
#[derive(Debug)]
pub enum Authorize {
    /// To the console's consent page for this pending request.
    Consent(Uuid),
    /// Back to the client with an error (the client and redirect URI are
    /// known good).
    Redirect(String),
}

/// The server's public base URL (no trailing slash): `oauth.public_url`,
/// or the request's scheme (`X-Forwarded-Proto: https`, else http) and
/// `Host`.
pub fn public_base(config: &OAuthConfig, headers: &HeaderMap) -> Result<String> {
    if let Some(url) = &config.public_url {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        })
        .ok_or_else(|| Error::Validation {
            message: "a Host header is required".to_owned(),
            details: None,
        })?;
    let https = headers
        .get("x-forwarded-proto")
        .and_then(|h| h.to_str().ok())
        .is_some_and(|p| p.eq_ignore_ascii_case("https"));
    Ok(format!(
        "{}://{}",
        if https { "https" } else { "http" },
        host.to_ascii_lowercase()
    ))
}

/// The base64url SHA-256 of a PKCE verifier.
fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Appends `params` to `uri`'s query.
fn with_params(uri: &str, params: &[(&str, Option<&str>)]) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) => {
            {
                let mut query = url.query_pairs_mut();
                for (k, v) in params {
                    if let Some(v) = v {
                        query.append_pair(k, v);
                    }
                }
            }
            url.to_string()
        }
        Err(_) => uri.to_owned(),
    }
}

/// Whether `uri` may be registered as a redirect: absolute, no fragment;
/// https, http to a loopback host, or an app's private-use scheme.
fn check_redirect_uri(uri: &str) -> std::result::Result<(), String> {
    if uri.len() > MAX_FIELD {
        return Err("a redirect URI is too long".to_owned());
    }
    let url = url::Url::parse(uri).map_err(|e| format!("{uri:?} is not an absolute URI: {e}"))?;
    if url.fragment().is_some() {
        return Err(format!("{uri:?} has a fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" => match url.host() {
            Some(url::Host::Domain("localhost")) => Ok(()),
            Some(url::Host::Ipv4(ip)) if ip.is_loopback() => Ok(()),
            Some(url::Host::Ipv6(ip)) if ip.is_loopback() => Ok(()),
            _ => Err(format!(
                "{uri:?}: plain http is allowed to loopback hosts only"
            )),
        },
        scheme if FORBIDDEN_SCHEMES.contains(&scheme) => {
            Err(format!("{uri:?}: the {scheme} scheme is not a redirect"))
        }
        _ => Ok(()),
    }
}

fn digest_eq(a: &str, b: &str) -> bool {
    // Both are hex SHA-256 digests: comparing digests of secrets leaks
    // nothing useful, and lengths are equal.
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Largest client metadata document read.
const MAX_METADATA_DOCUMENT: usize = 16 * 1024;

/// How long a fetched client metadata document is trusted.
const METADATA_DOCUMENT_TTL_MINUTES: i64 = 60;

/// Whether `client_id` names a client metadata document (an http(s) URL).
fn is_url_client_id(client_id: &str) -> bool {
    client_id.starts_with("https://") || client_id.starts_with("http://")
}

/// A client metadata document, as far as it is read.
#[derive(serde::Deserialize)]
struct MetadataDocument {
    client_id: String,
    #[serde(default)]
    redirect_uris: Vec<String>,
    client_name: Option<String>,
    client_uri: Option<String>,
    token_endpoint_auth_method: Option<String>,
    scope: Option<String>,
}

/// The OAuth authorization server.
#[derive(Clone)]
pub struct OAuthService {
    repo: OAuthRepo,
    limits: limits::AddressLimits,
    audit: AuditService,
    users: UserService,
    config: OAuthConfig,
    egress: crate::config::EgressConfig,
}

impl OAuthService {
    /// The service over `db`; client metadata documents are fetched as
    /// `egress` allows users' endpoints to be reached.
    pub fn new(
        db: Db,
        audit: AuditService,
        users: UserService,
        config: OAuthConfig,
        egress: crate::config::EgressConfig,
    ) -> OAuthService {
        OAuthService {
            repo: OAuthRepo::new(db),
            limits: limits::AddressLimits::new(
                config.register_per_hour,
                config.authorize_per_minute,
            ),
            audit,
            users,
            config,
            egress,
        }
    }

    /// The client whose id is the URL of its metadata document: fetched
    /// (from public addresses, no redirects, 16 KiB, 5 s) and checked, or
    /// read from the last hour's copy. `Ok(None)` when `client_id` is not a
    /// URL.
    async fn metadata_client(
        &self,
        client_id: &str,
    ) -> std::result::Result<Option<ClientRow>, String> {
        if !is_url_client_id(client_id) {
            return Ok(None);
        }
        if !self.config.client_metadata_documents {
            return Err("This server does not accept clients identified by a URL.".to_owned());
        }
        let url =
            url::Url::parse(client_id).map_err(|e| format!("The client id is not a URL: {e}."))?;
        let scheme_ok = url.scheme() == "https"
            || (url.scheme() == "http" && self.config.allow_http_metadata_documents);
        if !scheme_ok
            || url.path() == "/"
            || url.fragment().is_some()
            || client_id.len() > MAX_FIELD
        {
            return Err(
                "A client id that is a URL must be https, with a path and no fragment.".to_owned(),
            );
        }
        let now = db::now();
        if let Some(row) = self
            .repo
            .client(client_id)
            .await
            .map_err(|e| e.to_string())?
        {
            let fresh = row
                .fetched_at
                .is_some_and(|at| at > now - Duration::minutes(METADATA_DOCUMENT_TTL_MINUTES));
            if row.kind == "metadata_document" && fresh {
                return Ok(Some(row));
            }
        }
        let client = if self.egress.allow_private_user_endpoints {
            reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .map_err(|e| e.to_string())?
        } else {
            crate::egress::plugin_client(&[])
        };
        let refused =
            |why: String| format!("The client's metadata document could not be used: {why}.");
        let mut response = client
            .get(url.clone())
            .header(http::header::ACCEPT, "application/json")
            .timeout(std::time::Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| refused(e.to_string()))?;
        if !response.status().is_success() {
            return Err(refused(format!("it answered {}", response.status())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| refused(e.to_string()))? {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_METADATA_DOCUMENT {
                return Err(refused(format!(
                    "it is larger than {MAX_METADATA_DOCUMENT} bytes"
                )));
            }
        }
        let document: MetadataDocument =
            serde_json::from_slice(&body).map_err(|e| refused(e.to_string()))?;
        if document.client_id != client_id {
            return Err(refused("its client_id is not its own URL".to_owned()));
        }
        if document.redirect_uris.is_empty() || document.redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(refused(format!(
                "it needs 1 to {MAX_REDIRECT_URIS} redirect_uris"
            )));
        }
        for uri in &document.redirect_uris {
            check_redirect_uri(uri).map_err(refused)?;
        }
        if document
            .token_endpoint_auth_method
            .as_deref()
            .is_some_and(|m| m != "none")
        {
            return Err(refused(
                "only public clients (token_endpoint_auth_method none) are supported".to_owned(),
            ));
        }
        let name = document
            .client_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or(url.host_str().unwrap_or("MCP client"))
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect::<String>();
        let client_uri = document.client_uri.filter(|u| {
            u.len() <= MAX_FIELD
                && url::Url::parse(u).is_ok_and(|u| matches!(u.scheme(), "https" | "http"))
        });
        let scope = document.scope.as_deref().and_then(|s| {
            let known: Vec<Scope> = s
                .split_ascii_whitespace()
                .filter_map(Scope::parse)
                .collect();
            (!known.is_empty()).then(|| Scope::join(&known))
        });
        let row = ClientRow {
            id: client_id.to_owned(),
            kind: "metadata_document".to_owned(),
            name,
            client_uri,
            redirect_uris: Json(document.redirect_uris),
            scopes: scope,
            auth_method: "none".to_owned(),
            secret_hash: None,
            created_at: now,
            fetched_at: Some(now),
        };
        self.repo
            .upsert_client(&row)
            .await
            .map_err(|e| e.to_string())?;
        self.audit
            .record(
                None,
                "oauth.client.metadata_document",
                None,
                json!({ "client_id": client_id, "name": row.name, "redirect_uris": row.redirect_uris.0 }),
            )
            .await;
        Ok(Some(row))
    }

    /// The configuration.
    pub fn config(&self) -> &OAuthConfig {
        &self.config
    }

    /// The per-address limits of the unauthenticated endpoints.
    pub fn limits(&self) -> &limits::AddressLimits {
        &self.limits
    }

    /// Protected Resource Metadata (RFC 9728) of `/mcp`.
    pub fn resource_metadata(&self, base: &str) -> serde_json::Value {
        json!({
            "resource": format!("{base}{RESOURCE_PATH}"),
            "authorization_servers": [base],
            "scopes_supported": Scope::ALL.map(Scope::as_str),
            "bearer_methods_supported": ["header"],
            "resource_name": "Orchestra",
            "resource_documentation": format!("{base}/docs"),
        })
    }

    /// Authorization server metadata (RFC 8414).
    pub fn server_metadata(&self, base: &str) -> serde_json::Value {
        let mut metadata = json!({
            "issuer": base,
            "authorization_endpoint": format!("{base}/oauth/authorize"),
            "token_endpoint": format!("{base}/oauth/token"),
            "revocation_endpoint": format!("{base}/oauth/revoke"),
            "scopes_supported": Scope::ALL.map(Scope::as_str),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "revocation_endpoint_auth_methods_supported": ["none", "client_secret_post", "client_secret_basic"],
            "client_id_metadata_document_supported": self.config.client_metadata_documents,
            "service_documentation": format!("{base}/docs"),
        });
        if self.config.dynamic_registration {
            metadata["registration_endpoint"] = json!(format!("{base}/oauth/register"));
        }
        metadata
    }

    /// Registers a client (RFC 7591).
    pub async fn register(
        &self,
        request: RegistrationRequest,
    ) -> std::result::Result<RegistrationResponse, OAuthError> {
        if !self.config.dynamic_registration {
            return Err(OAuthError::new(
                "access_denied",
                "dynamic client registration is turned off on this server",
            ));
        }
        let invalid = |m: String| OAuthError::new("invalid_client_metadata", m);
        if request.redirect_uris.is_empty() || request.redirect_uris.len() > MAX_REDIRECT_URIS {
            return Err(OAuthError::new(
                "invalid_redirect_uri",
                format!("redirect_uris: 1 to {MAX_REDIRECT_URIS} URIs are required"),
            ));
        }
        for uri in &request.redirect_uris {
            check_redirect_uri(uri).map_err(|m| OAuthError::new("invalid_redirect_uri", m))?;
        }
        let auth_method = request
            .token_endpoint_auth_method
            .clone()
            .unwrap_or_else(|| "none".to_owned());
        if !matches!(
            auth_method.as_str(),
            "none" | "client_secret_post" | "client_secret_basic"
        ) {
            return Err(invalid(format!(
                "token_endpoint_auth_method {auth_method:?}: none, client_secret_post or client_secret_basic"
            )));
        }
        let grant_types = request
            .grant_types
            .clone()
            .unwrap_or_else(|| vec!["authorization_code".to_owned(), "refresh_token".to_owned()]);
        if grant_types.is_empty()
            || grant_types
                .iter()
                .any(|g| g != "authorization_code" && g != "refresh_token")
        {
            return Err(invalid(
                "grant_types: authorization_code and refresh_token only".to_owned(),
            ));
        }
        let response_types = request
            .response_types
            .clone()
            .unwrap_or_else(|| vec!["code".to_owned()]);
        if response_types.iter().any(|r| r != "code") {
            return Err(invalid("response_types: code only".to_owned()));
        }
        let name = request
            .client_name
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .unwrap_or("Unnamed MCP client")
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect::<String>();
        if let Some(uri) = &request.client_uri {
            let ok = uri.len() <= MAX_FIELD
                && url::Url::parse(uri).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
            if !ok {
                return Err(invalid("client_uri: an http(s) URL".to_owned()));
            }
        }
        let scope = match &request.scope {
            Some(s) => {
                let known: Vec<Scope> = s
                    .split_ascii_whitespace()
                    .filter_map(Scope::parse)
                    .collect();
                (!known.is_empty()).then(|| Scope::join(&known))
            }
            None => None,
        };
        let now = db::now();
        let unapproved = self.repo.prune_unapproved(now - Duration::days(1)).await?;
        if unapproved >= self.config.max_unapproved_clients {
            return Err(OAuthError::new(
                "too_many_clients",
                "too many clients wait for approval; try again later",
            ));
        }
        let client_id = format!("mcp_{}", random_token(18));
        let secret = (auth_method != "none").then(|| random_token(32));
        let row = ClientRow {
            id: client_id.clone(),
            kind: "registered".to_owned(),
            name: name.clone(),
            client_uri: request.client_uri.clone(),
            redirect_uris: Json(request.redirect_uris.clone()),
            scopes: scope.clone(),
            auth_method: auth_method.clone(),
            secret_hash: secret.as_deref().map(token_digest),
            created_at: now,
            fetched_at: None,
        };
        self.repo.upsert_client(&row).await?;
        self.audit
            .record(
                None,
                "oauth.client.register",
                None,
                json!({ "client_id": client_id, "name": name, "redirect_uris": request.redirect_uris }),
            )
            .await;
        Ok(RegistrationResponse {
            client_id,
            client_secret_expires_at: secret.as_ref().map(|_| 0),
            client_secret: secret,
            client_id_issued_at: now.timestamp(),
            redirect_uris: request.redirect_uris,
            client_name: name,
            client_uri: request.client_uri,
            scope,
            token_endpoint_auth_method: auth_method,
            grant_types,
            response_types,
        })
    }

    /// Checks an authorization request and stores it for the user's
    /// decision. `Err` is shown to the user (the client or its redirect URI
    /// is unknown: nowhere safe to send them).
    pub async fn authorize(
        &self,
        params: AuthorizeParams,
        base: &str,
    ) -> std::result::Result<Authorize, String> {
        let client_id = params
            .client_id
            .as_deref()
            .ok_or("The request names no client (client_id is missing).")?;
        let client = match self.metadata_client(client_id).await? {
            Some(client) => client,
            None => self
                .repo
                .client(client_id)
                .await
                .map_err(|e| format!("The server could not read the client: {e}"))?
                .ok_or("This client is not registered with this server.")?,
        };
        let redirect_uri =
            match &params.redirect_uri {
                Some(uri) if client.redirect_uris.0.iter().any(|r| r == uri) => uri.clone(),
                Some(_) => return Err(
                    "The redirect URI is not one the client registered; the request was stopped."
                        .to_owned(),
                ),
                None if client.redirect_uris.0.len() == 1 => client.redirect_uris.0[0].clone(),
                None => return Err("The request names no redirect URI.".to_owned()),
            };
        let state = params.state.as_deref();
        let back = |error: &str, description: &str| {
            Authorize::Redirect(with_params(
                &redirect_uri,
                &[
                    ("error", Some(error)),
                    ("error_description", Some(description)),
                    ("state", state),
                ],
            ))
        };
        if params.response_type.as_deref() != Some("code") {
            return Ok(back(
                "unsupported_response_type",
                "response_type must be code",
            ));
        }
        let challenge = match (&params.code_challenge, params.code_challenge_method.as_deref()) {
            (Some(c), Some("S256"))
                if (43..=128).contains(&c.len())
                    && c.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) =>
            {
                c.clone()
            }
            (None, _) => return Ok(back("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256")),
            _ => return Ok(back("invalid_request", "code_challenge_method must be S256, with a base64url challenge of 43 to 128 characters")),
        };
        let resource = format!("{base}{RESOURCE_PATH}");
        if let Some(asked) = &params.resource {
            if asked.trim_end_matches('/') != resource {
                return Ok(back(
                    "invalid_target",
                    &format!("this server issues tokens for {resource} only"),
                ));
            }
        }
        let asked = params
            .scope
            .as_deref()
            .or(client.scopes.as_deref())
            .unwrap_or("");
        let mut scopes: Vec<Scope> = asked
            .split_ascii_whitespace()
            .filter_map(Scope::parse)
            .collect();
        if scopes.is_empty() {
            if !asked.trim().is_empty() {
                return Ok(back(
                    "invalid_scope",
                    &format!("known scopes: {}", Scope::join(&Scope::ALL)),
                ));
            }
            scopes = Scope::ALL.to_vec();
        }
        if state.is_some_and(|s| s.len() > MAX_FIELD) {
            return Ok(back("invalid_request", "state is too long"));
        }
        let now = db::now();
        let row = RequestRow {
            id: Uuid::new_v4(),
            client_id: client.id.clone(),
            redirect_uri,
            scopes: Scope::join(&scopes),
            state: params.state.clone(),
            code_challenge: challenge,
            resource,
            created_at: now,
            expires_at: now + Duration::seconds(self.config.consent_ttl_secs as i64),
            user_id: None,
            grant_id: None,
            code_hash: None,
            used_at: None,
        };
        self.repo
            .insert_request(&row, now - Duration::hours(1))
            .await
            .map_err(|e| format!("The server could not store the request: {e}"))?;
        Ok(Authorize::Consent(row.id))
    }

    /// A pending request, for the consent page.
    pub async fn pending(&self, _principal: &Principal, id: Uuid) -> Result<ConsentRequest> {
        let (request, client) = self.live_request(id).await?;
        Ok(ConsentRequest {
            id,
            client: summary(&client.id, &client.name, &client.client_uri, &client.kind),
            redirect_uri: request.redirect_uri,
            scopes: Scope::parse_list(&request.scopes)
                .unwrap_or_default()
                .into_iter()
                .map(|s| ScopeInfo {
                    name: s.as_str().to_owned(),
                    description: s.description().to_owned(),
                })
                .collect(),
            resource: request.resource,
            expires_at: request.expires_at,
        })
    }

    async fn live_request(&self, id: Uuid) -> Result<(RequestRow, ClientRow)> {
        let request = self
            .repo
            .request(id)
            .await?
            .filter(|r| r.user_id.is_none() && r.expires_at > db::now())
            .ok_or(Error::NotFound("authorization request"))?;
        let client = self
            .repo
            .client(&request.client_id)
            .await?
            .ok_or(Error::NotFound("authorization request"))?;
        Ok((request, client))
    }

    /// The signed-in user approves or denies a pending request; the answer
    /// is where their browser goes next. Only a console session may decide
    /// (not an API key).
    pub async fn decide(
        &self,
        principal: &Principal,
        id: Uuid,
        decision: ConsentDecision,
    ) -> Result<ConsentOutcome> {
        if !matches!(principal.method, AuthMethod::AccessToken) {
            return Err(Error::Forbidden {
                code: "forbidden",
                message: "clients are approved by a signed-in user in the web console".to_owned(),
            });
        }
        let (request, client) = self.live_request(id).await?;
        let state = request.state.as_deref();
        if !decision.approve {
            self.repo.delete_request(id).await?;
            self.audit
                .record(
                    Some(principal.user_id),
                    "oauth.consent.deny",
                    None,
                    json!({ "client_id": client.id, "client_name": client.name }),
                )
                .await;
            return Ok(ConsentOutcome {
                redirect_to: with_params(
                    &request.redirect_uri,
                    &[
                        ("error", Some("access_denied")),
                        ("error_description", Some("the user denied the request")),
                        ("state", state),
                    ],
                ),
            });
        }
        let asked = Scope::parse_list(&request.scopes).unwrap_or_default();
        let scopes = match &decision.scopes {
            None => asked.clone(),
            Some(names) => {
                let mut chosen = Vec::new();
                for name in names {
                    match Scope::parse(name) {
                        Some(s) if asked.contains(&s) => chosen.push(s),
                        _ => {
                            return Err(Error::Validation {
                                message: format!("scopes: {name:?} was not asked for"),
                                details: None,
                            })
                        }
                    }
                }
                if chosen.is_empty() {
                    return Err(Error::Validation {
                        message: "scopes: grant at least one, or deny the request".to_owned(),
                        details: None,
                    });
                }
                chosen
            }
        };
        let scopes = Scope::join(&scopes);
        let code = format!("{CODE_PREFIX}{}", random_token(32));
        let now = db::now();
        let grant = Uuid::now_v7();
        let approved = self
            .repo
            .approve(
                id,
                NewGrant {
                    id: grant,
                    user_id: principal.user_id,
                    client_id: &client.id,
                    scopes: &scopes,
                    resource: &request.resource,
                    now,
                },
                &token_digest(&code),
                now + Duration::seconds(self.config.code_ttl_secs as i64),
            )
            .await?;
        if !approved {
            return Err(Error::NotFound("authorization request"));
        }
        self.audit
            .record(
                Some(principal.user_id),
                "oauth.consent.approve",
                Some(("oauth_grant", grant)),
                json!({ "client_id": client.id, "client_name": client.name, "scopes": scopes,
                        "redirect_uri": request.redirect_uri }),
            )
            .await;
        Ok(ConsentOutcome {
            redirect_to: with_params(
                &request.redirect_uri,
                &[("code", Some(&code)), ("state", state)],
            ),
        })
    }

    /// Authenticates the client of a token or revocation request: public
    /// clients by id, confidential ones by their secret (form or Basic).
    async fn client_of(
        &self,
        form: &TokenForm,
        headers: &HeaderMap,
    ) -> std::result::Result<ClientRow, OAuthError> {
        let basic = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Basic "))
            .and_then(|v| STANDARD.decode(v.trim()).ok())
            .and_then(|v| String::from_utf8(v).ok())
            .and_then(|v| {
                let (id, secret) = v.split_once(':')?;
                let decode = |s: &str| {
                    url::form_urlencoded::parse(format!("x={s}").as_bytes())
                        .next()
                        .map(|(_, v)| v.into_owned())
                };
                Some((decode(id)?, decode(secret)?))
            });
        let (id, secret) = match (&basic, &form.client_id) {
            (Some((id, secret)), _) => (id.clone(), Some(secret.clone())),
            (None, Some(id)) => (id.clone(), form.client_secret.clone()),
            (None, None) => return Err(OAuthError::new("invalid_client", "client_id is required")),
        };
        let client = self
            .repo
            .client(&id)
            .await?
            .ok_or_else(|| OAuthError::new("invalid_client", "unknown client"))?;
        match (&client.secret_hash, secret) {
            (None, None) => Ok(client),
            (Some(hash), Some(secret)) if digest_eq(hash, &token_digest(&secret)) => Ok(client),
            (None, Some(_)) => Err(OAuthError::new(
                "invalid_client",
                "this client is public: it has no secret",
            )),
            _ => Err(OAuthError::new(
                "invalid_client",
                "client authentication failed",
            )),
        }
    }

    /// The token endpoint: an authorization code or a refresh token for a
    /// new access token and refresh token.
    pub async fn token(
        &self,
        form: TokenForm,
        headers: &HeaderMap,
        base: &str,
    ) -> std::result::Result<TokenResponse, OAuthError> {
        let client = self.client_of(&form, headers).await?;
        let resource = format!("{base}{RESOURCE_PATH}");
        if let Some(asked) = &form.resource {
            if asked.trim_end_matches('/') != resource {
                return Err(OAuthError::new(
                    "invalid_target",
                    format!("this server issues tokens for {resource} only"),
                ));
            }
        }
        match form.grant_type.as_deref() {
            Some("authorization_code") => self.exchange_code(&client, &form, &resource).await,
            Some("refresh_token") => self.refresh(&client, &form, &resource).await,
            Some(other) => Err(OAuthError::new(
                "unsupported_grant_type",
                format!("{other:?}: authorization_code or refresh_token"),
            )),
            None => Err(OAuthError::new("invalid_request", "grant_type is required")),
        }
    }

    async fn exchange_code(
        &self,
        client: &ClientRow,
        form: &TokenForm,
        resource: &str,
    ) -> std::result::Result<TokenResponse, OAuthError> {
        let invalid = |m: &str| OAuthError::new("invalid_grant", m);
        let code = form
            .code
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "code is required"))?;
        let request = self
            .repo
            .request_by_code(&token_digest(code))
            .await?
            .ok_or_else(|| invalid("the code is unknown"))?;
        let (Some(user), Some(grant)) = (request.user_id, request.grant_id) else {
            return Err(invalid("the code is unknown"));
        };
        if request.client_id != client.id {
            return Err(invalid("the code was issued to another client"));
        }
        let now = db::now();
        if request.used_at.is_some() {
            // RFC 6749 §4.1.2: a code used twice revokes what it gave.
            self.repo.revoke_grant(grant, None, now).await?;
            self.audit
                .record(
                    Some(user),
                    "oauth.code.replay",
                    Some(("oauth_grant", grant)),
                    json!({ "client_id": client.id }),
                )
                .await;
            return Err(invalid("the code was already used; the grant is revoked"));
        }
        if request.expires_at <= now {
            return Err(invalid("the code has expired"));
        }
        if form.redirect_uri.as_deref() != Some(request.redirect_uri.as_str()) {
            return Err(invalid(
                "redirect_uri differs from the authorization request's",
            ));
        }
        let verifier = form
            .code_verifier
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "code_verifier is required"))?;
        if !(43..=128).contains(&verifier.len()) || s256(verifier) != request.code_challenge {
            return Err(invalid("the PKCE verifier does not match the challenge"));
        }
        if request.resource != resource {
            return Err(OAuthError::new(
                "invalid_target",
                "the code is for another resource",
            ));
        }
        let (response, tokens) = self.new_pair(grant, &request.scopes, now);
        let [access, refresh] = &tokens;
        let won = self
            .repo
            .exchange_code(request.id, now, [access.as_new(), refresh.as_new()])
            .await?;
        if !won {
            self.repo.revoke_grant(grant, None, now).await?;
            return Err(invalid("the code was already used; the grant is revoked"));
        }
        self.audit
            .record(
                Some(user),
                "oauth.token.issue",
                Some(("oauth_grant", grant)),
                json!({ "client_id": client.id, "scopes": request.scopes }),
            )
            .await;
        Ok(response)
    }

    async fn refresh(
        &self,
        client: &ClientRow,
        form: &TokenForm,
        resource: &str,
    ) -> std::result::Result<TokenResponse, OAuthError> {
        let invalid = |m: &str| OAuthError::new("invalid_grant", m);
        let token = form
            .refresh_token
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is required"))?;
        let row = self
            .repo
            .token(&token_digest(token))
            .await?
            .filter(|t| t.kind == "refresh")
            .ok_or_else(|| invalid("the refresh token is unknown"))?;
        if row.client_id != client.id {
            return Err(invalid("the refresh token was issued to another client"));
        }
        let now = db::now();
        if row.grant_revoked_at.is_some() || row.revoked_at.is_some() {
            return Err(invalid("the grant was revoked"));
        }
        if row.used_at.is_some() {
            // Someone holds a copy: end the grant for both.
            self.repo.revoke_grant(row.grant_id, None, now).await?;
            self.audit
                .record(
                    Some(row.user_id),
                    "oauth.refresh.replay",
                    Some(("oauth_grant", row.grant_id)),
                    json!({ "client_id": client.id }),
                )
                .await;
            return Err(invalid(
                "the refresh token was already used; the grant is revoked",
            ));
        }
        if row.expires_at <= now {
            return Err(invalid("the refresh token has expired"));
        }
        if row.resource != resource {
            return Err(OAuthError::new(
                "invalid_target",
                "the grant is for another resource",
            ));
        }
        let granted = Scope::parse_list(&row.scopes).unwrap_or_default();
        let scopes = match &form.scope {
            Some(asked) => {
                let asked = Scope::parse_list(asked).map_err(|s| {
                    OAuthError::new("invalid_scope", format!("unknown scope {s:?}"))
                })?;
                if asked.is_empty() || asked.iter().any(|s| !granted.contains(s)) {
                    return Err(OAuthError::new(
                        "invalid_scope",
                        "a refresh may narrow the granted scopes, never widen them",
                    ));
                }
                Scope::join(&asked)
            }
            None => Scope::join(&granted),
        };
        let (response, tokens) = self.new_pair(row.grant_id, &scopes, now);
        let [access, refresh] = &tokens;
        if !self
            .repo
            .rotate(row.id, now, [access.as_new(), refresh.as_new()])
            .await?
        {
            return Err(invalid("the refresh token was already used"));
        }
        self.audit
            .record(
                Some(row.user_id),
                "oauth.token.refresh",
                Some(("oauth_grant", row.grant_id)),
                json!({ "client_id": client.id, "scopes": scopes }),
            )
            .await;
        Ok(response)
    }

    fn new_pair(
        &self,
        grant: Uuid,
        scopes: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> (TokenResponse, [PendingToken; 2]) {
        let access = format!("{ACCESS_PREFIX}{}", random_token(32));
        let refresh = format!("{REFRESH_PREFIX}{}", random_token(32));
        let tokens = [
            PendingToken {
                grant,
                kind: "access",
                hash: token_digest(&access),
                scopes: scopes.to_owned(),
                now,
                expires_at: now + Duration::seconds(self.config.access_token_ttl_secs as i64),
            },
            PendingToken {
                grant,
                kind: "refresh",
                hash: token_digest(&refresh),
                scopes: scopes.to_owned(),
                now,
                expires_at: now + Duration::seconds(self.config.refresh_token_ttl_secs as i64),
            },
        ];
        (
            TokenResponse {
                access_token: access,
                token_type: "Bearer",
                expires_in: self.config.access_token_ttl_secs,
                refresh_token: refresh,
                scope: scopes.to_owned(),
            },
            tokens,
        )
    }

    /// Token revocation (RFC 7009): always 200 once the client is
    /// authenticated; a refresh token ends its whole grant.
    pub async fn revoke(
        &self,
        form: TokenForm,
        headers: &HeaderMap,
    ) -> std::result::Result<(), OAuthError> {
        let client = self.client_of(&form, headers).await?;
        let Some(token) = form.token.as_deref() else {
            return Err(OAuthError::new("invalid_request", "token is required"));
        };
        let Some(row) = self.repo.token(&token_digest(token)).await? else {
            return Ok(());
        };
        if row.client_id != client.id {
            return Ok(());
        }
        let now = db::now();
        if row.kind == "refresh" {
            self.repo.revoke_grant(row.grant_id, None, now).await?;
        } else {
            self.repo.revoke_token(row.id, now).await?;
        }
        self.audit
            .record(
                Some(row.user_id),
                "oauth.token.revoke",
                Some(("oauth_grant", row.grant_id)),
                json!({ "client_id": client.id, "kind": row.kind }),
            )
            .await;
        Ok(())
    }

    /// Authenticates an MCP client's access token at `/mcp` (whose URL is
    /// `resource`).
    pub async fn authenticate(
        &self,
        token: &str,
        resource: &str,
    ) -> Result<(Principal, GrantedScopes, OAuthClient)> {
        let row = self
            .repo
            .token(&token_digest(token))
            .await?
            .filter(|t| t.kind == "access")
            .ok_or_else(|| Error::Unauthorized("the access token is invalid".to_owned()))?;
        let now = db::now();
        if row.revoked_at.is_some() || row.grant_revoked_at.is_some() {
            return Err(Error::Unauthorized(
                "the access token was revoked".to_owned(),
            ));
        }
        if row.expires_at <= now {
            return Err(Error::Unauthorized(
                "the access token has expired".to_owned(),
            ));
        }
        if row.resource != resource {
            return Err(Error::Unauthorized(format!(
                "the access token is for {}, not {resource}",
                row.resource
            )));
        }
        let principal = self.users.through_grant(row.user_id, row.grant_id).await?;
        let stale_before = now - Duration::seconds(60);
        if row.last_used_at.is_none_or(|at| at < stale_before) {
            self.repo
                .touch_grant(row.grant_id, now, stale_before)
                .await?;
        }
        Ok((
            principal,
            GrantedScopes(Scope::parse_list(&row.scopes).unwrap_or_default()),
            OAuthClient(row.client_id),
        ))
    }

    /// The clients the caller approved.
    pub async fn grants(&self, principal: &Principal) -> Result<Vec<GrantResponse>> {
        Ok(self
            .repo
            .grants_of(principal.user_id)
            .await?
            .into_iter()
            .map(|g| GrantResponse {
                id: g.id,
                client: summary(&g.client_id, &g.client_name, &g.client_uri, &g.client_kind),
                scopes: g
                    .scopes
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect(),
                resource: g.resource,
                created_at: g.created_at,
                last_used_at: g.last_used_at,
            })
            .collect())
    }

    /// Revokes one of the caller's grants: its tokens stop working at once.
    pub async fn revoke_grant(&self, principal: &Principal, id: Uuid) -> Result<()> {
        let grant = self
            .repo
            .grant(id)
            .await?
            .filter(|g| g.user_id == principal.user_id && g.revoked_at.is_none())
            .ok_or(Error::NotFound("authorized client"))?;
        self.repo
            .revoke_grant(id, Some(principal.user_id), db::now())
            .await?;
        self.audit
            .record(
                Some(principal.user_id),
                "oauth.grant.revoke",
                Some(("oauth_grant", id)),
                json!({ "client_id": grant.client_id, "client_name": grant.client_name }),
            )
            .await;
        Ok(())
    }
}

/// A token between its making and its storing.
struct PendingToken {
    grant: Uuid,
    kind: &'static str,
    hash: String,
    scopes: String,
    now: chrono::DateTime<chrono::Utc>,
    expires_at: chrono::DateTime<chrono::Utc>,
}

impl PendingToken {
    fn as_new(&self) -> NewToken<'_> {
        NewToken {
            id: Uuid::now_v7(),
            grant_id: self.grant,
            kind: self.kind,
            token_hash: &self.hash,
            scopes: &self.scopes,
            created_at: self.now,
            expires_at: self.expires_at,
        }
    }
}

fn summary(id: &str, name: &str, uri: &Option<String>, kind: &str) -> ClientSummary {
    ClientSummary {
        id: id.to_owned(),
        name: name.to_owned(),
        client_uri: uri.clone(),
        kind: kind.to_owned(),
    }
}

/// The `WWW-Authenticate` challenge of `/mcp`: where to find the resource's
/// metadata, the scopes, and (with `error`) why the credential failed.
pub fn challenge(base: &str, error: Option<(&str, &str)>, scope: Option<&str>) -> String {
    let mut value = format!(
        "Bearer realm=\"orchestra\", resource_metadata=\"{base}/.well-known/oauth-protected-resource{RESOURCE_PATH}\""
    );
    let scope = scope
        .map(str::to_owned)
        .unwrap_or_else(|| Scope::join(&Scope::ALL));
    let _ = write!(value, ", scope=\"{scope}\"");
    if let Some((error, description)) = error {
        let description: String = description
            .chars()
            .filter(|c| *c != '"' && *c != '\\' && !c.is_control())
            .collect();
        let _ = write!(
            value,
            ", error=\"{error}\", error_description=\"{description}\""
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_is_the_base64url_sha256_of_the_verifier() {
        // Python: base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b"=")
        assert_eq!(
            s256("dBjftJeZ4CVP-mJ92K1bH_1sVvJ7BkCk6a9ZHvK-P0Y"),
            "G1O1chLnQwTqwTWLyht94VcI8XJcpbd7TttcrFiWUNs"
        );
    }

    #[test]
    fn redirect_uris_are_https_loopback_http_or_an_app_scheme() {
        assert!(check_redirect_uri("https://client.example/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:3000/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]:9/cb").is_ok());
        assert!(check_redirect_uri("cursor://anysphere.cursor-mcp/oauth/callback").is_ok());
        assert!(check_redirect_uri("http://client.example/cb").is_err());
        assert!(check_redirect_uri("javascript:alert(1)").is_err());
        assert!(check_redirect_uri("data:text/html,hi").is_err());
        assert!(check_redirect_uri("https://client.example/cb#frag").is_err());
        assert!(check_redirect_uri("/relative").is_err());
    }

    #[test]
    fn parameters_are_appended_to_an_existing_query() {
        assert_eq!(
            with_params(
                "https://c.example/cb?x=1",
                &[("code", Some("a b")), ("state", None)]
            ),
            "https://c.example/cb?x=1&code=a+b"
        );
    }

    #[test]
    fn scopes_parse_and_join_in_one_order() {
        let scopes = Scope::parse_list("agents:run tools:read agents:run").unwrap();
        assert_eq!(Scope::join(&scopes), "tools:read agents:run");
        assert_eq!(Scope::parse_list("tools:read nope"), Err("nope".to_owned()));
    }
}
