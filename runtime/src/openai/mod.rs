//! The OpenAI-compatible API under `/v1`: every agent of the caller is a
//! model (`agent:<name>`), reachable through Chat Completions
//! ([`chat`]), the Responses API ([`responses`]) and the model list. A
//! request becomes a conversation and a run like any other: the agent's
//! tools run in the sandbox, usage and quotas count, and the run is there to
//! read over `/api/v1` afterwards. Tools the client sends are offered to the
//! model beside the agent's; a call of one ends the run and reaches the
//! client as `tool_calls` (or `function_call` items), as with OpenAI.
//! Errors have OpenAI's shape ([`error`]); keys are the API's keys.

pub mod chat;
pub mod error;
pub mod gateway;
pub mod messages;
pub mod responses;
pub mod translate;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use self::error::{ApiError, ApiResult, OpenAiErrorResponse};
use crate::agents::repo::AgentRow;
use crate::error::Error;
use crate::http::AppState;
use crate::providers::ToolDefinition;
use crate::runs::{RunService, StreamSlot};
use crate::users::model::{Permission, Principal};

/// The prefix of agent model ids.
pub const AGENT_PREFIX: &str = "agent:";
/// Most agents listed as models.
const MAX_MODELS: i64 = 1000;
/// Most tools a client may send.
const MAX_CLIENT_TOOLS: usize = 128;

/// The routes of `/v1`.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_models))
        .routes(routes!(get_model))
        .routes(routes!(chat::create))
        .routes(routes!(responses::create))
        .routes(routes!(responses::get, responses::delete))
        .routes(routes!(responses::cancel))
        .routes(routes!(responses::input_items))
        .routes(routes!(messages::create))
}

/// Unknown paths under `/v1`, in OpenAI's shape.
pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "Unknown request URL. Please check the URL for typos.",
    )
    .code("unknown_url")
}

/// The caller, or a 401 in OpenAI's shape.
pub fn caller(principal: Result<Principal, Error>) -> ApiResult<Principal> {
    principal.map_err(ApiError::from)
}

/// A JSON object body, parsed into `T`; OpenAI-shaped 400 and 413.
pub fn body<T: serde::de::DeserializeOwned>(raw: Result<Bytes, BytesRejection>) -> ApiResult<T> {
    let bytes = raw.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::from(Error::PayloadTooLarge),
        _ => ApiError::invalid("body", format!("reading the body: {}", e.body_text())),
    })?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "We could not parse the JSON body of your request. The body must be a JSON object.",
        )
    })?;
    if !value.is_object() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "The body of your request must be a JSON object.",
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            format!("Invalid request: {e}"),
        )
        .code("invalid_value")
    })
}

/// The caller's agent a model id names: `agent:<name>`, or the bare name.
pub async fn agent_of(state: &AppState, principal: &Principal, model: &str) -> ApiResult<AgentRow> {
    principal
        .require(Permission::AgentRead)
        .map_err(ApiError::from)?;
    let name = model.strip_prefix(AGENT_PREFIX).unwrap_or(model);
    if name.is_empty() {
        return Err(ApiError::invalid(
            "model",
            "model must name one of your agents",
        ));
    }
    match state.agents.own_by_name(principal, name).await {
        Ok(agent) => Ok(agent),
        Err(Error::NotFound(_)) => Err(ApiError::model_not_found(model)),
        Err(e) => Err(e.into()),
    }
}

/// The model id of an agent.
pub fn model_id(agent: &AgentRow) -> String {
    format!("{AGENT_PREFIX}{}", agent.name)
}

/// Checks one client tool: a name OpenAI accepts that is not one of the
/// agent's tools, and parameters that are a JSON Schema object.
pub fn client_tool(
    agent: Option<&AgentRow>,
    param: &str,
    name: Option<&str>,
    description: Option<&str>,
    parameters: Option<&Value>,
) -> ApiResult<ToolDefinition> {
    let name = name.ok_or_else(|| {
        ApiError::invalid(
            &format!("{param}.name"),
            format!("Missing required parameter: '{param}.name'."),
        )
    })?;
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !valid {
        return Err(ApiError::invalid(
            &format!("{param}.name"),
            format!(
                "Invalid '{param}.name': string does not match pattern. Expected a string that matches the pattern '^[a-zA-Z0-9_-]{{1,64}}$'."
            ),
        ));
    }
    if agent.is_some_and(|a| a.tools.0.iter().any(|t| t == name)) {
        return Err(ApiError::invalid(
            &format!("{param}.name"),
            format!("Invalid '{param}.name': {name:?} is one of the agent's own tools; name the client's tool differently."),
        ));
    }
    let parameters = match parameters {
        None | Some(Value::Null) => serde_json::json!({ "type": "object", "properties": {} }),
        Some(schema @ Value::Object(_)) => {
            if let Err(e) = jsonschema::validator_for(schema) {
                return Err(ApiError::invalid(
                    &format!("{param}.parameters"),
                    format!("Invalid schema for function '{name}': {e}"),
                )
                .code("invalid_function_parameters"));
            }
            if schema.get("type").is_some_and(|t| t != "object") {
                return Err(ApiError::invalid(
                    &format!("{param}.parameters"),
                    format!("Invalid schema for function '{name}': schema must be a JSON Schema of 'type: \"object\"'."),
                )
                .code("invalid_function_parameters"));
            }
            schema.clone()
        }
        Some(_) => {
            return Err(ApiError::invalid(
                &format!("{param}.parameters"),
                format!(
                "Invalid schema for function '{name}': parameters must be a JSON Schema object."
            ),
            )
            .code("invalid_function_parameters"))
        }
    };
    Ok(ToolDefinition {
        name: name.to_owned(),
        description: description.unwrap_or_default().to_owned(),
        parameters,
    })
}

/// Whether the client's tools are offered, from OpenAI's `tool_choice`:
/// `auto` (or absent) offers them, `none` does not; forcing a tool is not
/// supported.
pub fn offers_tools(choice: Option<&Value>) -> ApiResult<bool> {
    match choice {
        None | Some(Value::Null) => Ok(true),
        Some(Value::String(s)) if s == "auto" => Ok(true),
        Some(Value::String(s)) if s == "none" => Ok(false),
        Some(_) => Err(ApiError::unsupported(
            "tool_choice",
            "Unsupported value: 'tool_choice' may be 'auto' or 'none' for agents.",
        )),
    }
}

/// Checks that tool names are distinct.
pub fn distinct_tools(tools: &[ToolDefinition], param: &str) -> ApiResult<()> {
    for (i, t) in tools.iter().enumerate() {
        if tools[..i].iter().any(|u| u.name == t.name) {
            return Err(ApiError::invalid(
                &format!("{param}[{i}].name"),
                format!("Duplicate tool name {:?}.", t.name),
            ));
        }
    }
    if tools.len() > MAX_CLIENT_TOOLS {
        return Err(ApiError::invalid(
            param,
            format!("Invalid '{param}': array too long. Expected an array with maximum length {MAX_CLIENT_TOOLS}."),
        ));
    }
    Ok(())
}

/// A source of SSE events, a batch at a time.
pub trait Batches: Send + 'static {
    /// The next events, and whether more may follow.
    fn next(&mut self) -> impl std::future::Future<Output = (Vec<Event>, bool)> + Send;
}

/// An SSE answer from `source`, holding the caller's stream `slot` while
/// it is open.
pub fn sse_of<B: Batches>(source: B, slot: Option<StreamSlot>) -> Response {
    let stream = futures_util::stream::unfold(Some((source, slot)), |state| async move {
        let (mut source, slot) = state?;
        let (events, more) = source.next().await;
        Some((events, more.then_some((source, slot))))
    })
    .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok::<_, Infallible>)));
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Cancels a run whose client went away before it ended (requests that are
/// not background ones): dropped with the answer's stream or future.
pub struct CancelOnDrop {
    runs: RunService,
    principal: Principal,
    run: Uuid,
    armed: bool,
}

impl CancelOnDrop {
    /// Armed for `run`.
    pub fn new(runs: RunService, principal: Principal, run: Uuid) -> Self {
        CancelOnDrop {
            runs,
            principal,
            run,
            armed: true,
        }
    }

    /// The run ended, or the client may leave: do nothing on drop.
    pub fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let (runs, principal, run) = (self.runs.clone(), self.principal.clone(), self.run);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                match runs.cancel(&principal, run).await {
                    Ok(_) | Err(Error::Conflict { .. }) => {
                        tracing::info!(run = %run, "the client went away; run cancelled")
                    }
                    Err(e) => {
                        tracing::warn!(run = %run, error = %e, "cancelling an abandoned run failed")
                    }
                }
            });
        }
    }
}

/// A model as `/v1/models` lists it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelObject {
    /// `agent:<name>`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// When the agent was created (Unix seconds).
    pub created: i64,
    /// The agent's owner.
    pub owned_by: String,
    /// The agent's description.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `GET /v1/models`
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The caller's agents.
    pub data: Vec<ModelObject>,
}

fn model_object(agent: &AgentRow) -> ModelObject {
    ModelObject {
        id: model_id(agent),
        object: "model",
        created: agent.created_at.timestamp(),
        owned_by: agent.user_id.to_string(),
        description: agent.description.clone(),
    }
}

/// The caller's agents as models (`agent:<name>`), oldest first; with
/// `openai.provider_models`, then the providers' models
/// (`<provider>/<model>`).
#[utoipa::path(get, path = "/v1/models", tag = "openai", security(("bearer" = [])),
    responses((status = 200, body = ModelList), (status = 401, body = OpenAiErrorResponse)))]
async fn list_models(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
) -> ApiResult<axum::Json<ModelList>> {
    let principal = caller(principal)?;
    let agents = state.agents.own(&principal, MAX_MODELS).await?;
    let mut data: Vec<ModelObject> = agents.iter().map(model_object).collect();
    if state.config.openai.provider_models {
        // The providers' models the caller may use (lists the providers
        // could not give are left out).
        for m in state.models.models(&principal).await?.models {
            data.push(ModelObject {
                id: format!("{}/{}", m.provider, m.model),
                object: "model",
                created: 0,
                owned_by: m.provider,
                description: None,
            });
        }
    }
    Ok(axum::Json(ModelList {
        object: "list",
        data,
    }))
}

/// One of the caller's agents as a model.
#[utoipa::path(get, path = "/v1/models/{model}", tag = "openai", security(("bearer" = [])),
    params(("model" = String, Path, description = "`agent:<name>`")),
    responses((status = 200, body = ModelObject), (status = 404, body = OpenAiErrorResponse)))]
async fn get_model(
    State(state): State<AppState>,
    principal: Result<Principal, Error>,
    axum::extract::Path(model): axum::extract::Path<String>,
) -> ApiResult<axum::Json<ModelObject>> {
    let principal = caller(principal)?;
    let agent = agent_of(&state, &principal, &model).await?;
    Ok(axum::Json(model_object(&agent)))
}
