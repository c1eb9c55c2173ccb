//! Model providers as admins configure them for the server and users for
//! themselves, and the models users can pick. A provider is a named endpoint of a kind (`openai`: any
//! OpenAI-compatible Chat Completions server; `anthropic`: Anthropic
//! Messages) with an API key encrypted at rest (never returned, never
//! logged). Providers also come from the conventional environment variables
//! at start. Agents name a provider by its `name` in `model.provider`.

pub mod routes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::AuditService;
use crate::config::EgressConfig;
use crate::config::EnvProvider;
use crate::crypto::Sealer;
use crate::db::{self, Db};
use crate::egress;
use crate::error::{Error, Result};
use crate::on_db;
use crate::providers::anthropic::{AnthropicProvider, API_VERSION};
use crate::providers::openai::OpenAiProvider;
use crate::providers::{http_client, http_client_builder, ClientPolicy, Provider};
use crate::users::model::{Permission, Principal};

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI-compatible Chat Completions (OpenAI, Ollama, vLLM, llama.cpp, Groq, OpenRouter).
    Openai,
    /// Anthropic Messages.
    Anthropic,
}

impl ProviderKind {
    fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
        }
    }

    fn parse(s: &str) -> Option<ProviderKind> {
        match s {
            "openai" => Some(ProviderKind::Openai),
            "anthropic" => Some(ProviderKind::Anthropic),
            _ => None,
        }
    }

    fn default_base_url(self) -> &'static str {
        match self {
            ProviderKind::Openai => "https://api.openai.com/v1",
            ProviderKind::Anthropic => "https://api.anthropic.com",
        }
    }
}

/// A provider as the API shows it: never its key.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ProviderInfo {
    /// What agents put in `model.provider`.
    pub name: String,
    /// The wire format.
    pub kind: ProviderKind,
    /// The API's base URL; shown only to those who may change the provider
    /// (admins, and a personal provider's owner): a server-wide endpoint is
    /// the operator's network, and its URL may carry a key.
    pub base_url: Option<String>,
    /// Whether an API key is set.
    pub has_api_key: bool,
    /// The models offered; empty means "ask the provider".
    pub models: Vec<String>,
    /// `database` (managed over the API) or `environment` (read-only).
    pub source: String,
    /// The user it belongs to; absent for server-wide providers.
    pub owner_id: Option<Uuid>,
    /// When it was created (database providers).
    pub created_at: Option<DateTime<Utc>>,
    /// When it last changed (database providers).
    pub updated_at: Option<DateTime<Utc>>,
}

/// `POST /api/v1/providers`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProviderRequest {
    /// 1 to 64 of `a-z 0-9 _ -`, starting with a letter or digit.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,63}$")]
    pub name: String,
    /// The wire format.
    pub kind: ProviderKind,
    /// Default: the vendor's public API.
    pub base_url: Option<String>,
    /// Stored encrypted; never shown again.
    pub api_key: Option<String>,
    /// Models to offer; empty asks the provider's model list.
    #[serde(default)]
    pub models: Vec<String>,
    /// Only for the caller (always so when the caller is not an admin).
    #[serde(default)]
    pub personal: bool,
}

/// `PATCH /api/v1/providers/{name}`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProviderRequest {
    /// New base URL.
    pub base_url: Option<String>,
    /// New API key; `null` removes it.
    #[serde(default, deserialize_with = "crate::schema::present")]
    #[schema(value_type = Option<String>)]
    pub api_key: Option<Option<String>>,
    /// New model list.
    pub models: Option<Vec<String>>,
}

/// A model a user can pick.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelInfo {
    /// The provider's name (an agent's `model.provider`).
    pub provider: String,
    /// The model id (an agent's `model.model`).
    pub model: String,
}

/// A provider whose model list could not be read.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Unavailable {
    /// The provider.
    pub provider: String,
    /// Why.
    pub reason: String,
}

/// `GET /api/v1/models`
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ModelList {
    /// Every model of every reachable provider.
    pub models: Vec<ModelInfo>,
    /// Providers that did not answer.
    pub unavailable: Vec<Unavailable>,
}

type Row = (
    Uuid,
    String,
    String,
    String,
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    sqlx::types::Json<Vec<String>>,
    DateTime<Utc>,
    DateTime<Utc>,
    Option<Uuid>,
);

const COLUMNS: &str =
    "id, name, kind, base_url, api_key_nonce, api_key_ciphertext, models, created_at, updated_at, owner_id";

/// Whether `user` may use and see a provider owned by `owner` (`None`:
/// server-wide; `user` `None`: an admin).
fn visible(owner: Option<Uuid>, user: Option<Uuid>) -> bool {
    match (owner, user) {
        (None, _) | (_, None) => true,
        (Some(o), Some(u)) => o == u,
    }
}

/// How long a provider's model list is kept.
const MODEL_LIST_TTL: Duration = Duration::from_secs(300);

/// Configures providers and hands out clients.
#[derive(Clone)]
pub struct ModelService {
    db: Db,
    audit: AuditService,
    sealer: Sealer,
    env: Arc<Vec<EnvProvider>>,
    policy: ClientPolicy,
    client: reqwest::Client,
    /// For users' own providers: public addresses only.
    public_client: reqwest::Client,
    egress: EgressConfig,
    listed: Arc<Mutex<ModelCache>>,
    in_process: Arc<std::sync::RwLock<HashMap<String, Arc<dyn Provider>>>>,
}

/// Model lists read from providers, by provider (owner and name), with when
/// they were read.
type ModelCache = HashMap<(Option<Uuid>, String), (Instant, Vec<String>)>;

impl std::fmt::Debug for ModelService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ModelService { .. }")
    }
}

fn check_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid_field(
            "name",
            "1 to 64 of a-z 0-9 _ -, starting with a letter or digit",
        ))
    }
}

/// `restricted`: the URL is a user's own, which may reach public addresses
/// only (see [`crate::egress`]).
fn check_base_url(url: &str, restricted: bool) -> Result<String> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| Error::invalid_field("base_url", format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(Error::invalid_field(
            "base_url",
            "an http(s) URL with a host",
        ));
    }
    if restricted {
        egress::check_user_url(&parsed).map_err(|e| Error::invalid_field("base_url", e))?;
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn check_models(models: &[String]) -> Result<()> {
    if models.len() > 500
        || models
            .iter()
            .any(|m| m.trim().is_empty() || m.len() > 200 || m.chars().any(char::is_control))
    {
        return Err(Error::invalid_field(
            "models",
            "at most 500 model ids of 1 to 200 printable characters",
        ));
    }
    Ok(())
}

fn check_key(key: &str) -> Result<()> {
    if key.trim().is_empty() || key.len() > 4096 || key.chars().any(char::is_control) {
        return Err(Error::invalid_field(
            "api_key",
            "1 to 4096 printable characters",
        ));
    }
    Ok(())
}

impl ModelService {
    /// A service over `db`, encrypting keys with `key`, plus the providers
    /// of the environment.
    pub fn new(
        db: Db,
        audit: AuditService,
        key: &[u8; 32],
        env: Vec<EnvProvider>,
        egress: EgressConfig,
    ) -> Self {
        let policy = ClientPolicy::default();
        ModelService {
            db,
            audit,
            sealer: Sealer::new(key),
            env: Arc::new(env),
            client: http_client(&policy),
            public_client: egress::restrict(http_client_builder(&policy))
                .build()
                .expect("an HTTP client with rustls"),
            egress,
            policy,
            listed: Arc::new(Mutex::new(HashMap::new())),
            in_process: Arc::default(),
        }
    }

    fn aad(id: Uuid) -> Vec<u8> {
        format!("provider:{id}").into_bytes()
    }

    fn env_info(env: &EnvProvider, principal: &Principal) -> ProviderInfo {
        ProviderInfo {
            name: env.name.clone(),
            kind: ProviderKind::parse(&env.kind).unwrap_or(ProviderKind::Openai),
            base_url: principal
                .owner_scope()
                .is_none()
                .then(|| env.base_url.clone()),
            has_api_key: true,
            models: Vec::new(),
            source: "environment".into(),
            owner_id: None,
            created_at: None,
            updated_at: None,
        }
    }

    fn row_info(row: &Row, principal: &Principal) -> ProviderInfo {
        let shows = match principal.owner_scope() {
            None => true,
            Some(user) => row.9 == Some(user),
        };
        ProviderInfo {
            name: row.1.clone(),
            kind: ProviderKind::parse(&row.2).unwrap_or(ProviderKind::Openai),
            base_url: shows.then(|| row.3.clone()),
            has_api_key: row.5.is_some(),
            models: row.6 .0.clone(),
            source: "database".into(),
            owner_id: row.9,
            created_at: Some(row.7),
            updated_at: Some(row.8),
        }
    }

    async fn rows(&self) -> Result<Vec<Row>> {
        let sql = format!("SELECT {COLUMNS} FROM providers ORDER BY name");
        Ok(on_db!(&self.db, pool => sqlx::query_as(&sql).fetch_all(pool).await?))
    }

    /// The provider `user` reaches by `name`: their own, else the
    /// server-wide one. Names are unique per owner, so another user's
    /// provider of that name is neither found nor in the way.
    async fn row(&self, name: &str, user: Uuid) -> Result<Option<Row>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM providers WHERE name = $1 AND (owner_id IS NULL OR owner_id = $2)
             ORDER BY CASE WHEN owner_id IS NULL THEN 1 ELSE 0 END LIMIT 1"
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(&sql).bind(name).bind(user).fetch_optional(pool).await?),
        )
    }

    /// The provider of `owner` (`None`: server-wide) named `name`.
    async fn row_of(&self, name: &str, owner: Option<Uuid>) -> Result<Option<Row>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM providers WHERE name = $1 AND owner_id IS NOT DISTINCT FROM $2"
        );
        Ok(
            on_db!(&self.db, pool => sqlx::query_as(&sql).bind(name).bind(owner).fetch_optional(pool).await?),
        )
    }

    /// The providers the caller may use: server-wide ones and their own
    /// (admins: every one).
    pub async fn list(&self, principal: &Principal) -> Result<Vec<ProviderInfo>> {
        principal.require(Permission::AgentRead)?;
        let scope = principal.owner_scope();
        let mut out: Vec<ProviderInfo> = self
            .env
            .iter()
            .map(|e| Self::env_info(e, principal))
            .collect();
        out.extend(
            self.rows()
                .await?
                .iter()
                .filter(|r| visible(r.9, scope))
                .map(|r| Self::row_info(r, principal)),
        );
        Ok(out)
    }

    /// One provider the caller may use.
    pub async fn get(&self, principal: &Principal, name: &str) -> Result<ProviderInfo> {
        principal.require(Permission::AgentRead)?;
        if let Some(env) = self.env.iter().find(|e| e.name == name) {
            return Ok(Self::env_info(env, principal));
        }
        let row = self
            .row(name, principal.user_id)
            .await?
            .ok_or(Error::NotFound("provider"))?;
        Ok(Self::row_info(&row, principal))
    }

    /// Fails unless the caller may change `row`: admins any, users their own.
    fn check_change(principal: &Principal, row: &Row) -> Result<()> {
        match (row.9, principal.owner_scope()) {
            (_, None) => Ok(()),
            (Some(owner), Some(user)) if owner == user => {
                principal.require(Permission::ProviderOwn)
            }
            (Some(_), Some(_)) => Err(Error::NotFound("provider")),
            (None, Some(_)) => Err(Error::forbidden("only admins change server-wide providers")),
        }
    }

    /// Adds a provider (admins).
    pub async fn create(
        &self,
        principal: &Principal,
        request: CreateProviderRequest,
    ) -> Result<ProviderInfo> {
        // Admins add server-wide providers (or personal ones); users add
        // providers for themselves.
        let owner = if request.personal || principal.owner_scope().is_some() {
            principal.require(Permission::ProviderOwn)?;
            Some(principal.user_id)
        } else {
            principal.require(Permission::ProviderManage)?;
            None
        };
        check_name(&request.name)?;
        let base_url = check_base_url(
            request
                .base_url
                .as_deref()
                .unwrap_or(request.kind.default_base_url()),
            self.egress.restricts(owner),
        )?;
        check_models(&request.models)?;
        if let Some(key) = &request.api_key {
            check_key(key)?;
        }
        if self.env.iter().any(|e| e.name == request.name) {
            return Err(Error::conflict(format!(
                "the provider {:?} comes from the environment",
                request.name
            )));
        }
        // A user's provider may not take the name of a server-wide one
        // (which every user sees): agents naming it would change provider.
        if owner.is_some() && self.row_of(&request.name, None).await?.is_some() {
            return Err(Error::conflict(format!(
                "a server-wide provider named {:?} exists",
                request.name
            )));
        }
        let id = Uuid::now_v7();
        let sealed = match &request.api_key {
            Some(key) => Some(self.sealer.seal(&Self::aad(id), key.as_bytes())?),
            None => None,
        };
        let (nonce, ciphertext) = sealed.unzip();
        let now = db::now();
        let inserted = on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO providers (id, name, kind, base_url, api_key_nonce, api_key_ciphertext, models, created_by, created_at, updated_at, owner_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(&request.name)
        .bind(request.kind.as_str())
        .bind(&base_url)
        .bind(nonce)
        .bind(ciphertext)
        .bind(sqlx::types::Json(&request.models))
        .bind(principal.user_id)
        .bind(now)
        .bind(owner)
        .execute(pool)
        .await?
        .rows_affected());
        if inserted == 0 {
            // Names are unique per owner: this says nothing of other users'.
            return Err(Error::conflict(match owner {
                Some(_) => format!("you have a provider named {:?}", request.name),
                None => format!("a server-wide provider named {:?} exists", request.name),
            }));
        }
        self.audit
            .record(
                Some(principal.user_id),
                "provider.created",
                None,
                json!({ "name": request.name, "kind": request.kind, "base_url": base_url, "owner_id": owner }),
            )
            .await;
        self.get(principal, &request.name).await
    }

    /// Changes a provider (admins).
    pub async fn update(
        &self,
        principal: &Principal,
        name: &str,
        request: UpdateProviderRequest,
    ) -> Result<ProviderInfo> {
        principal.require(Permission::ProviderOwn)?;
        if self.env.iter().any(|e| e.name == name) {
            return Err(Error::conflict(
                "a provider from the environment is changed in the environment",
            ));
        }
        let row = self
            .row(name, principal.user_id)
            .await?
            .ok_or(Error::NotFound("provider"))?;
        Self::check_change(principal, &row)?;
        let base_url = match &request.base_url {
            Some(url) => check_base_url(url, self.egress.restricts(row.9))?,
            None => row.3.clone(),
        };
        let models = request.models.clone().unwrap_or_else(|| row.6 .0.clone());
        check_models(&models)?;
        let (nonce, ciphertext) = match &request.api_key {
            None => (row.4.clone(), row.5.clone()),
            Some(None) => (None, None),
            Some(Some(key)) => {
                check_key(key)?;
                let (n, c) = self.sealer.seal(&Self::aad(row.0), key.as_bytes())?;
                (Some(n), Some(c))
            }
        };
        on_db!(&self.db, pool => sqlx::query(
            "UPDATE providers SET base_url = $2, api_key_nonce = $3, api_key_ciphertext = $4, models = $5, updated_at = $6 WHERE id = $1",
        )
        .bind(row.0)
        .bind(&base_url)
        .bind(nonce)
        .bind(ciphertext)
        .bind(sqlx::types::Json(&models))
        .bind(db::now())
        .execute(pool)
        .await
        .map(|_| ())?);
        self.listed
            .lock()
            .expect("model cache")
            .remove(&(row.9, name.to_owned()));
        self.audit
            .record(
                Some(principal.user_id),
                "provider.updated",
                None,
                json!({ "name": name, "base_url": base_url, "api_key_changed": request.api_key.is_some() }),
            )
            .await;
        self.get(principal, name).await
    }

    /// Removes a provider (admins).
    pub async fn delete(&self, principal: &Principal, name: &str) -> Result<()> {
        principal.require(Permission::ProviderOwn)?;
        if self.env.iter().any(|e| e.name == name) {
            return Err(Error::conflict(
                "a provider from the environment is removed from the environment",
            ));
        }
        let row = self
            .row(name, principal.user_id)
            .await?
            .ok_or(Error::NotFound("provider"))?;
        Self::check_change(principal, &row)?;
        let deleted = on_db!(&self.db, pool => sqlx::query("DELETE FROM providers WHERE id = $1")
            .bind(row.0)
            .execute(pool)
            .await?
            .rows_affected());
        if deleted == 0 {
            return Err(Error::NotFound("provider"));
        }
        self.listed
            .lock()
            .expect("model cache")
            .remove(&(row.9, name.to_owned()));
        self.audit
            .record(
                Some(principal.user_id),
                "provider.deleted",
                None,
                json!({ "name": name }),
            )
            .await;
        Ok(())
    }

    /// Checks a stored URL again before it is used: one saved while the
    /// operator allowed private addresses may no longer be reachable.
    /// (Names are checked as they resolve, by the client.)
    fn check_reachable(&self, base_url: &str, owner: Option<Uuid>) -> Result<()> {
        if !self.egress.restricts(owner) {
            return Ok(());
        }
        egress::check_user_url_str(base_url).map_err(|e| anyhow::anyhow!(e).into())
    }

    /// The HTTP client for a provider of `owner`.
    fn http_for(&self, owner: Option<Uuid>) -> reqwest::Client {
        if self.egress.restricts(owner) {
            self.public_client.clone()
        } else {
            self.client.clone()
        }
    }

    /// Kind, base URL, decrypted key and owner of the provider `name`:
    /// `Ok(user)`, the one that user reaches by that name (their own, else
    /// the server-wide one); `Err(owner)`, exactly the one of `owner`.
    async fn endpoint(
        &self,
        name: &str,
        whose: std::result::Result<Uuid, Option<Uuid>>,
    ) -> Result<(ProviderKind, String, Option<String>, Option<Uuid>)> {
        if let Some(env) = self.env.iter().find(|e| e.name == name) {
            let kind = ProviderKind::parse(&env.kind).unwrap_or(ProviderKind::Openai);
            return Ok((kind, env.base_url.clone(), Some(env.api_key.clone()), None));
        }
        let row = match whose {
            Ok(user) => self.row(name, user).await?,
            Err(owner) => self.row_of(name, owner).await?,
        }
        .ok_or(Error::NotFound("provider"))?;
        let kind = ProviderKind::parse(&row.2)
            .ok_or_else(|| anyhow::anyhow!("provider {name:?} has an unknown kind"))?;
        let key = match (&row.4, &row.5) {
            (Some(nonce), Some(ciphertext)) => Some(
                String::from_utf8(self.sealer.open(&Self::aad(row.0), nonce, ciphertext)?)
                    .map_err(|e| anyhow::anyhow!("provider key: {e}"))?,
            ),
            _ => None,
        };
        Ok((kind, row.3, key, row.9))
    }

    /// Registers a provider implemented in this process under `name` (for
    /// embedding Orchestra as a library, and for the benchmark, which
    /// measures the runtime without a network in between). It takes
    /// precedence over a configured provider of the same name.
    pub fn register_in_process(&self, name: &str, provider: Arc<dyn Provider>) {
        self.in_process
            .write()
            .expect("provider registry")
            .insert(name.to_owned(), provider);
    }

    /// A client of the provider `name` for runs of `user` (a personal
    /// provider serves only its owner).
    pub async fn client(&self, name: &str, user: Uuid) -> Result<Arc<dyn Provider>> {
        if let Some(p) = self.in_process.read().expect("provider registry").get(name) {
            return Ok(p.clone());
        }
        let (kind, base_url, key, owner) = self.endpoint(name, Ok(user)).await?;
        self.check_reachable(&base_url, owner)?;
        let http = self.http_for(owner);
        Ok(match kind {
            ProviderKind::Openai => {
                Arc::new(OpenAiProvider::new(&base_url, key, http, self.policy))
            }
            ProviderKind::Anthropic => Arc::new(AnthropicProvider::new(
                &base_url,
                key.unwrap_or_default(),
                http,
                self.policy,
            )),
        })
    }

    /// The model list of a provider that configured none: its `/models`.
    async fn remote_models(
        &self,
        name: &str,
        owner: Option<Uuid>,
    ) -> std::result::Result<Vec<String>, String> {
        let cache_key = (owner, name.to_owned());
        if let Some((at, models)) = self.listed.lock().expect("model cache").get(&cache_key) {
            if at.elapsed() < MODEL_LIST_TTL {
                return Ok(models.clone());
            }
        }
        let (kind, base_url, key, owner) = self
            .endpoint(name, Err(owner))
            .await
            .map_err(|e| e.to_string())?;
        self.check_reachable(&base_url, owner)
            .map_err(|e| e.to_string())?;
        let http = self.http_for(owner);
        let request = match kind {
            ProviderKind::Openai => {
                let r = http.get(format!("{base_url}/models"));
                match &key {
                    Some(k) => r.bearer_auth(k),
                    None => r,
                }
            }
            ProviderKind::Anthropic => http
                .get(format!("{base_url}/v1/models?limit=1000"))
                .header("x-api-key", key.unwrap_or_default())
                .header("anthropic-version", API_VERSION),
        };
        let response = request
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| format!("could not reach the provider: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("the model list is not JSON: {e}"))?;
        if !status.is_success() {
            let message = body["error"]["message"].as_str().unwrap_or("no message");
            return Err(format!("the provider answered {status}: {message}"));
        }
        let mut models: Vec<String> = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_owned))
            .collect();
        models.sort();
        self.listed
            .lock()
            .expect("model cache")
            .insert(cache_key, (Instant::now(), models.clone()));
        Ok(models)
    }

    /// Every model the caller can use: the configured lists, and the lists
    /// of providers that configured none (asked live, kept 5 minutes).
    pub async fn models(&self, principal: &Principal) -> Result<ModelList> {
        principal.require(Permission::AgentRead)?;
        let mut providers: Vec<(String, Option<Uuid>, Vec<String>)> = self
            .env
            .iter()
            .map(|e| (e.name.clone(), None, Vec::new()))
            .collect();
        let scope = principal.owner_scope();
        providers.extend(
            self.rows()
                .await?
                .into_iter()
                .filter(|r| visible(r.9, scope))
                .map(|r| (r.1, r.9, r.6 .0)),
        );
        let mut list = ModelList {
            models: Vec::new(),
            unavailable: Vec::new(),
        };
        for (provider, owner, configured) in providers {
            let models = if configured.is_empty() {
                match self.remote_models(&provider, owner).await {
                    Ok(m) => m,
                    Err(reason) => {
                        list.unavailable.push(Unavailable { provider, reason });
                        continue;
                    }
                }
            } else {
                configured
            };
            list.models
                .extend(models.into_iter().map(|model| ModelInfo {
                    provider: provider.clone(),
                    model,
                }));
        }
        Ok(list)
    }
}
