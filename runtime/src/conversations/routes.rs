//! HTTP handlers of `/api/v1/conversations`.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::*;
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Path, Query};
use crate::http::AppState;
use crate::pagination::{Page, PageParams};
use crate::users::model::Principal;

/// Routes of the conversations domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_conversations, create_conversation))
        .routes(routes!(
            get_conversation,
            update_conversation,
            delete_conversation
        ))
        .routes(routes!(list_messages, post_message))
}

/// List your conversations (admins: everyone's), most recently active first.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations", security(("bearer" = [])),
    params(ConversationFilter, PageParams),
    responses((status = 200, body = Page<ConversationResponse>), (status = 400, body = ErrorResponse)))]
async fn list_conversations(
    State(state): State<AppState>,
    principal: Principal,
    Query(filter): Query<ConversationFilter>,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<ConversationResponse>>> {
    Ok(Json(
        state.conversations.list(&principal, filter, page).await?,
    ))
}

/// Start a conversation with one of your agents.
#[utoipa::path(post, path = "/api/v1/conversations", tag = "conversations", security(("bearer" = [])),
    request_body = ConversationInput,
    responses((status = 201, body = ConversationResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn create_conversation(
    State(state): State<AppState>,
    principal: Principal,
    Json(input): Json<ConversationInput>,
) -> Result<(StatusCode, Json<ConversationResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.conversations.create(&principal, input).await?),
    ))
}

/// One conversation.
#[utoipa::path(get, path = "/api/v1/conversations/{id}", tag = "conversations", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id")),
    responses((status = 200, body = ConversationResponse), (status = 404, body = ErrorResponse)))]
async fn get_conversation(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<ConversationResponse>> {
    Ok(Json(state.conversations.get(&principal, id).await?))
}

/// Rename a conversation or replace its metadata.
#[utoipa::path(patch, path = "/api/v1/conversations/{id}", tag = "conversations", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id")), request_body = ConversationPatch,
    responses((status = 200, body = ConversationResponse), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn update_conversation(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(patch): Json<ConversationPatch>,
) -> Result<Json<ConversationResponse>> {
    Ok(Json(
        state.conversations.update(&principal, id, patch).await?,
    ))
}

/// Delete a conversation and all its messages.
#[utoipa::path(delete, path = "/api/v1/conversations/{id}", tag = "conversations", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id")),
    responses((status = 204), (status = 404, body = ErrorResponse)))]
async fn delete_conversation(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.conversations.delete(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A conversation's messages, oldest first; follow `next_cursor` for more.
#[utoipa::path(get, path = "/api/v1/conversations/{id}/messages", tag = "conversations",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id"), MessageCursor),
    responses((status = 200, body = MessagePage), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn list_messages(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Query(cursor): Query<MessageCursor>,
) -> Result<Json<MessagePage>> {
    Ok(Json(
        state.conversations.messages(&principal, id, cursor).await?,
    ))
}

/// Add a message to a conversation.
#[utoipa::path(post, path = "/api/v1/conversations/{id}/messages", tag = "conversations",
    security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "Conversation id")), request_body = MessageInput,
    responses((status = 201, body = MessageResponse), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn post_message(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(input): Json<MessageInput>,
) -> Result<(StatusCode, Json<MessageResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(
            state
                .conversations
                .post_message(&principal, id, input)
                .await?,
        ),
    ))
}
