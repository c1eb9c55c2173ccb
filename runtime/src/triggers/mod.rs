//! Inbound triggers: a URL (`POST /api/v1/triggers/{id}` with the
//! trigger's token) that other systems call to start one of its owner's
//! agent's runs, with the request body as the message (JSON rendered
//! through the trigger's template, or text). Optionally the body must carry
//! an HMAC signature (GitHub's `X-Hub-Signature-256`, or Standard
//! Webhooks); an idempotency key makes a retried delivery start one run; a
//! per-trigger rate limit holds across nodes (counted in the database).

pub mod routes;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::agents::AgentService;
use crate::audit::AuditService;
use crate::config::TriggersConfig;
use crate::conversations::model::{ContentInput, ConversationInput};
use crate::conversations::ConversationService;
use crate::crypto::{sha256_hex, Sealer};
use crate::db::{self, Db};
use crate::error::{Error, Result};
use crate::on_db;
use crate::pagination::{Page, PageParams};
use crate::runs::model::{RunInput, RunResponse};
use crate::runs::RunService;
use crate::users::credentials::random_token;
use crate::users::model::{Permission, Principal};
use crate::users::UserService;
use crate::webhooks::signing;

/// The prefix of trigger tokens.
pub const TOKEN_PREFIX: &str = "trg_";

/// How a trigger checks that a call comes from who it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum SignatureScheme {
    /// The token only (default).
    #[default]
    None,
    /// GitHub's `X-Hub-Signature-256: sha256=<hex>` over the body.
    Github,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`.
    Standard,
}

impl SignatureScheme {
    fn as_str(self) -> &'static str {
        match self {
            SignatureScheme::None => "none",
            SignatureScheme::Github => "github",
            SignatureScheme::Standard => "standard",
        }
    }

    fn parse(s: &str) -> SignatureScheme {
        match s {
            "github" => SignatureScheme::Github,
            "standard" => SignatureScheme::Standard,
            _ => SignatureScheme::None,
        }
    }
}

/// `POST /api/v1/triggers`
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerInput {
    /// One of your agents.
    pub agent_id: Uuid,
    /// A name, 1 to 200 characters.
    pub name: String,
    /// The message template (minijinja) with `body` (the parsed JSON body,
    /// or null), `text` (the body as text), `received_at`, and
    /// `trigger.name`. Without one, a JSON body is sent as pretty JSON and
    /// any other body as its text.
    #[serde(default)]
    pub template: Option<String>,
    /// Signature check of each call.
    #[serde(default)]
    pub signature: SignatureScheme,
    /// The signing secret, for `github` (the secret you give GitHub) or
    /// `standard` (`whsec_...`); one is made when absent and shown once.
    #[serde(default)]
    pub secret: Option<String>,
    /// Calls accepted per minute (default `triggers.default_rate_per_minute`).
    #[serde(default)]
    pub rate_per_minute: Option<i64>,
    /// Run every call in this conversation of yours (with the same agent)
    /// instead of a new one per call.
    #[serde(default)]
    pub conversation_id: Option<Uuid>,
}

/// `PATCH /api/v1/triggers/{id}`
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TriggerPatch {
    /// A new name.
    pub name: Option<String>,
    /// A new template (an empty string removes it).
    pub template: Option<String>,
    /// A new rate limit.
    pub rate_per_minute: Option<i64>,
    /// Enable or disable.
    pub enabled: Option<bool>,
}

/// A trigger.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TriggerResponse {
    /// Its id.
    pub id: Uuid,
    /// Its owner.
    pub owner_id: Uuid,
    /// The agent it runs.
    pub agent_id: Uuid,
    /// Its name.
    pub name: String,
    /// The URL path to `POST` to.
    pub path: String,
    /// The template.
    pub template: Option<String>,
    /// Its signature check.
    pub signature: SignatureScheme,
    /// Calls accepted per minute.
    pub rate_per_minute: i64,
    /// The fixed conversation, if any.
    pub conversation_id: Option<Uuid>,
    /// Whether calls are accepted.
    pub enabled: bool,
    /// The token (`trg_...`): only in the answer that created or rotated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// The signing secret: only in the answer that created it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// One accepted call of a trigger.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TriggerDeliveryResponse {
    /// Its id.
    pub id: Uuid,
    /// The idempotency key it came with.
    pub idempotency_key: Option<String>,
    /// The run it started.
    pub run_id: Uuid,
    /// The run's conversation.
    pub conversation_id: Uuid,
    /// When it arrived.
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct TriggerRow {
    id: Uuid,
    owner_id: Uuid,
    agent_id: Uuid,
    name: String,
    token_hash: String,
    template: Option<String>,
    signature: String,
    secret_nonce: Option<Vec<u8>>,
    secret_ciphertext: Option<Vec<u8>>,
    rate_per_minute: i64,
    conversation_id: Option<Uuid>,
    enabled: bool,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, owner_id, agent_id, name, token_hash, template, signature, secret_nonce, \
    secret_ciphertext, rate_per_minute, conversation_id, enabled, created_at, updated_at";

/// A call of a trigger, as the handler read it.
pub struct Call<'a> {
    /// The token it carried.
    pub token: Option<&'a str>,
    /// Its body.
    pub body: &'a [u8],
    /// Whether the body is JSON (by its content type).
    pub json: bool,
    /// Header values by lower-case name.
    pub header: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

/// Triggers and their calls.
#[derive(Clone)]
pub struct TriggerService {
    db: Db,
    agents: AgentService,
    conversations: ConversationService,
    runs: RunService,
    users: UserService,
    audit: AuditService,
    sealer: Sealer,
    config: TriggersConfig,
}

impl std::fmt::Debug for TriggerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TriggerService { .. }")
    }
}

/// What wires a [`TriggerService`].
pub struct TriggerDeps {
    /// The database.
    pub db: Db,
    /// Agents.
    pub agents: AgentService,
    /// Conversations.
    pub conversations: ConversationService,
    /// Runs.
    pub runs: RunService,
    /// Users (the owner acts through their principal).
    pub users: UserService,
    /// The audit log.
    pub audit: AuditService,
    /// The encryption key of secrets.
    pub key: [u8; 32],
    /// Settings.
    pub config: TriggersConfig,
}

fn unauthorized() -> Error {
    Error::Unauthorized("the trigger's token is missing or wrong".into())
}

impl TriggerService {
    /// A service over its dependencies.
    pub fn new(deps: TriggerDeps) -> Self {
        TriggerService {
            db: deps.db,
            agents: deps.agents,
            conversations: deps.conversations,
            runs: deps.runs,
            users: deps.users,
            audit: deps.audit,
            sealer: Sealer::new(&deps.key),
            config: deps.config,
        }
    }

    /// The largest body a call may carry.
    pub fn max_body_bytes(&self) -> usize {
        self.config.max_body_bytes
    }

    fn response(row: TriggerRow, token: Option<String>, secret: Option<String>) -> TriggerResponse {
        TriggerResponse {
            id: row.id,
            owner_id: row.owner_id,
            agent_id: row.agent_id,
            name: row.name,
            path: format!("/api/v1/triggers/{}", row.id),
            template: row.template,
            signature: SignatureScheme::parse(&row.signature),
            rate_per_minute: row.rate_per_minute,
            conversation_id: row.conversation_id,
            enabled: row.enabled,
            token,
            secret,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    fn check_rate(rate: i64) -> Result<()> {
        if !(1..=10_000).contains(&rate) {
            return Err(Error::invalid_field("rate_per_minute", "1 to 10000"));
        }
        Ok(())
    }

    async fn row(&self, id: Uuid) -> Result<Option<TriggerRow>> {
        Ok(on_db!(&self.db, pool => sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM triggers WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await?))
    }

    async fn visible(&self, principal: &Principal, id: Uuid) -> Result<TriggerRow> {
        let row = self.row(id).await?.ok_or(Error::NotFound("trigger"))?;
        if principal.owner_scope().is_some_and(|me| me != row.owner_id) {
            return Err(Error::NotFound("trigger"));
        }
        Ok(row)
    }

    /// Creates a trigger of one of the caller's agents; the answer carries
    /// the token (and secret) this once.
    pub async fn create(
        &self,
        principal: &Principal,
        input: TriggerInput,
    ) -> Result<TriggerResponse> {
        principal.require(Permission::ConversationWrite)?;
        let name = crate::schema::label(&input.name)?;
        if let Some(t) = &input.template {
            crate::template::check("template", t)?;
        }
        let rate = input
            .rate_per_minute
            .unwrap_or(self.config.default_rate_per_minute);
        Self::check_rate(rate)?;
        let agent = self.agents.visible(principal, input.agent_id).await?;
        if agent.user_id != principal.user_id {
            return Err(Error::NotFound("agent"));
        }
        if let Some(c) = input.conversation_id {
            if self.conversations.get(principal, c).await?.agent_id != agent.id {
                return Err(Error::invalid_field(
                    "conversation_id",
                    "the conversation talks to another agent",
                ));
            }
        }
        let id = Uuid::now_v7();
        let secret = match (input.signature, input.secret) {
            (SignatureScheme::None, Some(_)) => {
                return Err(Error::invalid_field(
                    "secret",
                    "only with a signature scheme",
                ))
            }
            (SignatureScheme::None, None) => None,
            (_, Some(s)) if s.len() < 16 || s.len() > 256 => {
                return Err(Error::invalid_field("secret", "16 to 256 characters"))
            }
            (SignatureScheme::Standard, Some(s)) if !s.starts_with(signing::SECRET_PREFIX) => {
                return Err(Error::invalid_field(
                    "secret",
                    "a Standard Webhooks secret starts with whsec_",
                ))
            }
            (_, Some(s)) => Some(s),
            (SignatureScheme::Standard, None) => Some(signing::new_secret()),
            (SignatureScheme::Github, None) => Some(random_token(32)),
        };
        let sealed = match &secret {
            Some(s) => Some(self.sealer.seal(id.as_bytes(), s.as_bytes())?),
            None => None,
        };
        let token = format!("{TOKEN_PREFIX}{}", random_token(32));
        let now = db::now();
        let row: TriggerRow = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "INSERT INTO triggers ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, TRUE, $12, $12)
             RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(principal.user_id)
        .bind(agent.id)
        .bind(&name)
        .bind(sha256_hex(token.as_bytes()))
        .bind(&input.template)
        .bind(input.signature.as_str())
        .bind(sealed.as_ref().map(|s| &s.0))
        .bind(sealed.as_ref().map(|s| &s.1))
        .bind(rate)
        .bind(input.conversation_id)
        .bind(now)
        .fetch_one(pool)
        .await?);
        self.audit
            .record(
                Some(principal.user_id),
                "trigger.create",
                Some(("trigger", id)),
                json!({ "name": name, "agent_id": agent.id }),
            )
            .await;
        Ok(Self::response(row, Some(token), secret))
    }

    /// The caller's triggers (admins: everyone's).
    pub async fn list(
        &self,
        principal: &Principal,
        page: PageParams,
    ) -> Result<Page<TriggerResponse>> {
        principal.require(Permission::ConversationRead)?;
        let page = page.validate()?;
        let owner = principal.owner_scope();
        let (rows, total): (Vec<TriggerRow>, i64) = on_db!(&self.db, pool => {
            let rows = sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM triggers WHERE ($1 IS NULL OR owner_id = $1)
                 ORDER BY created_at, id LIMIT $2 OFFSET $3"
            ))
            .bind(owner)
            .bind(page.limit())
            .bind(page.offset())
            .fetch_all(pool)
            .await?;
            let total = sqlx::query_scalar(
                "SELECT COUNT(*) FROM triggers WHERE ($1 IS NULL OR owner_id = $1)",
            )
            .bind(owner)
            .fetch_one(pool)
            .await?;
            (rows, total)
        });
        Ok(page.wrap(
            rows.into_iter()
                .map(|r| Self::response(r, None, None))
                .collect(),
            total,
        ))
    }

    /// One trigger.
    pub async fn get(&self, principal: &Principal, id: Uuid) -> Result<TriggerResponse> {
        principal.require(Permission::ConversationRead)?;
        Ok(Self::response(
            self.visible(principal, id).await?,
            None,
            None,
        ))
    }

    /// Changes a trigger.
    pub async fn patch(
        &self,
        principal: &Principal,
        id: Uuid,
        patch: TriggerPatch,
    ) -> Result<TriggerResponse> {
        principal.require(Permission::ConversationWrite)?;
        let mut row = self.visible(principal, id).await?;
        if let Some(name) = patch.name {
            row.name = crate::schema::label(&name)?;
        }
        if let Some(t) = patch.template {
            if t.is_empty() {
                row.template = None;
            } else {
                crate::template::check("template", &t)?;
                row.template = Some(t);
            }
        }
        if let Some(rate) = patch.rate_per_minute {
            Self::check_rate(rate)?;
            row.rate_per_minute = rate;
        }
        if let Some(enabled) = patch.enabled {
            row.enabled = enabled;
        }
        let row: TriggerRow = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "UPDATE triggers SET name = $2, template = $3, rate_per_minute = $4, enabled = $5, updated_at = $6
             WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(&row.name)
        .bind(&row.template)
        .bind(row.rate_per_minute)
        .bind(row.enabled)
        .bind(db::now())
        .fetch_optional(pool)
        .await?)
        .ok_or(Error::NotFound("trigger"))?;
        self.audit
            .record(
                Some(principal.user_id),
                "trigger.update",
                Some(("trigger", id)),
                json!({}),
            )
            .await;
        Ok(Self::response(row, None, None))
    }

    /// A new token (shown this once); the old one stops working at once.
    pub async fn rotate_token(&self, principal: &Principal, id: Uuid) -> Result<TriggerResponse> {
        principal.require(Permission::ConversationWrite)?;
        self.visible(principal, id).await?;
        let token = format!("{TOKEN_PREFIX}{}", random_token(32));
        let row: TriggerRow = on_db!(&self.db, pool => sqlx::query_as(&format!(
            "UPDATE triggers SET token_hash = $2, updated_at = $3 WHERE id = $1 RETURNING {COLUMNS}"
        ))
        .bind(id)
        .bind(sha256_hex(token.as_bytes()))
        .bind(db::now())
        .fetch_one(pool)
        .await?);
        self.audit
            .record(
                Some(principal.user_id),
                "trigger.rotate_token",
                Some(("trigger", id)),
                json!({}),
            )
            .await;
        Ok(Self::response(row, Some(token), None))
    }

    /// Deletes a trigger (its runs stay).
    pub async fn delete(&self, principal: &Principal, id: Uuid) -> Result<()> {
        principal.require(Permission::ConversationWrite)?;
        self.visible(principal, id).await?;
        on_db!(&self.db, pool => sqlx::query("DELETE FROM triggers WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await
            .map(|_| ())?);
        self.audit
            .record(
                Some(principal.user_id),
                "trigger.delete",
                Some(("trigger", id)),
                json!({}),
            )
            .await;
        Ok(())
    }

    /// A trigger's accepted calls, newest first.
    pub async fn deliveries(
        &self,
        principal: &Principal,
        id: Uuid,
        page: PageParams,
    ) -> Result<Page<TriggerDeliveryResponse>> {
        principal.require(Permission::ConversationRead)?;
        let page = page.validate()?;
        self.visible(principal, id).await?;
        type Row = (Uuid, Option<String>, Uuid, Uuid, i64);
        let (rows, total): (Vec<Row>, i64) = on_db!(&self.db, pool => {
            let rows = sqlx::query_as(
                "SELECT id, idempotency_key, run_id, conversation_id, received_ms FROM trigger_deliveries
                 WHERE trigger_id = $1 ORDER BY received_ms DESC, id DESC LIMIT $2 OFFSET $3",
            )
            .bind(id)
            .bind(page.limit())
            .bind(page.offset())
            .fetch_all(pool)
            .await?;
            let total = sqlx::query_scalar("SELECT COUNT(*) FROM trigger_deliveries WHERE trigger_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await?;
            (rows, total)
        });
        let items = rows
            .into_iter()
            .map(|(id, key, run, conversation, at)| TriggerDeliveryResponse {
                id,
                idempotency_key: key,
                run_id: run,
                conversation_id: conversation,
                received_at: crate::clock::time_of_ms(at),
            })
            .collect();
        Ok(page.wrap(items, total))
    }

    /// A call of trigger `id`: checks the token, the signature, the rate
    /// limit and the idempotency key, then starts the run. Returns the run
    /// and whether this call started it (false: a replayed key).
    pub async fn fire(&self, id: Uuid, call: Call<'_>) -> Result<(RunResponse, bool)> {
        // Unknown trigger and wrong token answer alike.
        let row = self.row(id).await?.ok_or_else(unauthorized)?;
        let token = call.token.ok_or_else(unauthorized)?;
        let given = sha256_hex(token.as_bytes());
        if !constant_time_eq(given.as_bytes(), row.token_hash.as_bytes()) {
            return Err(unauthorized());
        }
        if !row.enabled {
            return Err(Error::forbidden("the trigger is disabled"));
        }
        if call.body.len() > self.config.max_body_bytes {
            return Err(Error::PayloadTooLarge);
        }
        let header = call.header;
        let scheme = SignatureScheme::parse(&row.signature);
        if scheme != SignatureScheme::None {
            let secret = match (&row.secret_nonce, &row.secret_ciphertext) {
                (Some(n), Some(c)) => {
                    String::from_utf8(self.sealer.open(row.id.as_bytes(), n, c)?)
                        .map_err(|e| Error::Internal(e.into()))?
                }
                _ => {
                    return Err(Error::Internal(anyhow::anyhow!(
                        "a trigger's secret is missing"
                    )))
                }
            };
            let checked = match scheme {
                SignatureScheme::Github => signing::verify_github(
                    &secret,
                    header("x-hub-signature-256").as_deref(),
                    call.body,
                ),
                _ => signing::verify_standard(
                    &secret,
                    header("webhook-id").as_deref(),
                    header("webhook-timestamp").as_deref(),
                    header("webhook-signature").as_deref(),
                    call.body,
                    Utc::now().timestamp(),
                    self.config.signature_tolerance_secs,
                ),
            };
            checked.map_err(|e| Error::Unauthorized(format!("the signature is not valid: {e}")))?;
        }
        let key = header("idempotency-key")
            .or_else(|| header("webhook-id"))
            .or_else(|| header("x-github-delivery"));
        if key.as_ref().is_some_and(|k| k.is_empty() || k.len() > 255) {
            return Err(Error::invalid_field(
                "Idempotency-Key",
                "1 to 255 characters",
            ));
        }
        let principal = self
            .users
            .acting_as(row.owner_id)
            .await
            .map_err(|_| Error::forbidden("the trigger's owner cannot act"))?;
        // A replayed key answers with the run it started.
        if let Some(k) = &key {
            if let Some(run) = self.replayed(row.id, k, &principal).await? {
                return Ok((run, false));
            }
        }
        let now_ms = Utc::now().timestamp_millis();
        let recent: i64 = on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT COUNT(*) FROM trigger_deliveries WHERE trigger_id = $1 AND received_ms > $2",
        )
        .bind(row.id)
        .bind(now_ms - 60_000)
        .fetch_one(pool)
        .await?);
        if recent >= row.rate_per_minute {
            return Err(Error::TooManyRequests {
                code: "rate_limited",
                message: format!(
                    "the trigger accepts {} calls per minute",
                    row.rate_per_minute
                ),
                details: Some(json!({ "limit": row.rate_per_minute, "retry_after_secs": 60 })),
            });
        }
        let message = self.message(&row, &call, now_ms)?;
        let run_id = Uuid::now_v7();
        let conversation_id = match row.conversation_id {
            Some(c) => c,
            None => Uuid::now_v7(),
        };
        // Claims the key before the run starts: of two calls with one key
        // at once, one inserts, the other finds its row.
        let claimed = on_db!(&self.db, pool => sqlx::query(
            "INSERT INTO trigger_deliveries (id, trigger_id, idempotency_key, run_id, conversation_id, received_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(Uuid::now_v7())
        .bind(row.id)
        .bind(&key)
        .bind(run_id)
        .bind(conversation_id)
        .bind(now_ms)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()));
        match claimed {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                let k = key.as_deref().unwrap_or_default();
                // The other call may still be starting its run.
                for _ in 0..50 {
                    if let Some(run) = self.replayed(row.id, k, &principal).await? {
                        return Ok((run, false));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                return Err(Error::conflict(
                    "a call with this idempotency key is being handled",
                ));
            }
            Err(e) => return Err(e.into()),
        }
        let started = self
            .start(&row, &principal, conversation_id, run_id, message)
            .await;
        match started {
            Ok(run) => Ok((run, true)),
            Err(e) => {
                // Nothing started: the key may be used again.
                let _ = on_db!(&self.db, pool => sqlx::query(
                    "DELETE FROM trigger_deliveries WHERE trigger_id = $1 AND run_id = $2",
                )
                .bind(row.id)
                .bind(run_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected()));
                Err(e)
            }
        }
    }

    async fn replayed(
        &self,
        trigger: Uuid,
        key: &str,
        principal: &Principal,
    ) -> Result<Option<RunResponse>> {
        let run: Option<Uuid> = on_db!(&self.db, pool => sqlx::query_scalar(
            "SELECT run_id FROM trigger_deliveries WHERE trigger_id = $1 AND idempotency_key = $2",
        )
        .bind(trigger)
        .bind(key)
        .fetch_optional(pool)
        .await?);
        match run {
            Some(run) => match self.runs.get(principal, run).await {
                Ok(r) => Ok(Some(r)),
                Err(Error::NotFound(_)) => Ok(None),
                Err(e) => Err(e),
            },
            None => Ok(None),
        }
    }

    fn message(&self, row: &TriggerRow, call: &Call<'_>, now_ms: i64) -> Result<String> {
        let text = String::from_utf8_lossy(call.body).into_owned();
        let parsed: Option<Value> = if call.json || row.template.is_some() {
            serde_json::from_slice(call.body).ok()
        } else {
            None
        };
        if call.json && parsed.is_none() && !call.body.is_empty() {
            return Err(Error::validation("the body is not valid JSON"));
        }
        let message = match &row.template {
            Some(t) => crate::template::render(
                t,
                &json!({
                    "body": parsed,
                    "text": text,
                    "received_at": crate::clock::time_of_ms(now_ms).to_rfc3339(),
                    "trigger": { "id": row.id, "name": row.name },
                }),
            )
            .map_err(|e| Error::unprocessable("template_failed", e))?,
            None => match &parsed {
                Some(v) => serde_json::to_string_pretty(v).unwrap_or(text),
                None => text,
            },
        };
        if message.trim().is_empty() {
            return Err(Error::validation(
                "the call's message is empty (an empty body, or a template that renders nothing)",
            ));
        }
        Ok(message)
    }

    async fn start(
        &self,
        row: &TriggerRow,
        principal: &Principal,
        conversation: Uuid,
        run_id: Uuid,
        message: String,
    ) -> Result<RunResponse> {
        if row.conversation_id.is_none() {
            self.conversations
                .create_with_id(
                    principal,
                    conversation,
                    ConversationInput {
                        agent_id: row.agent_id,
                        title: Some(format!(
                            "{} · {}",
                            row.name,
                            Utc::now().format("%Y-%m-%d %H:%M")
                        )),
                        metadata: Map::from_iter([
                            ("source".to_owned(), json!("trigger")),
                            ("trigger_id".to_owned(), json!(row.id)),
                        ]),
                    },
                )
                .await?;
        }
        let created = self
            .runs
            .create(
                principal,
                conversation,
                RunInput {
                    message: Some(ContentInput::Text(message)),
                    limits: None,
                    on_active: None,
                    options: None,
                    id: Some(run_id),
                },
            )
            .await;
        if created.is_err() && row.conversation_id.is_none() {
            let _ = self.conversations.delete(principal, conversation).await;
        }
        created
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
