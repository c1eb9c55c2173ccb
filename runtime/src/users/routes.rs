//! HTTP handlers of `/api/v1/auth`, `/api/v1/users` and `/api/v1/api-keys`.

use axum::extract::State;
use axum::http::StatusCode;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use uuid::Uuid;

use super::model::*;
use crate::error::{ErrorResponse, Result};
use crate::http::extract::{Json, Path, PeerAddr, Query};
use crate::http::AppState;
use crate::pagination::{Page, PageParams};

/// Routes of the users domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(super::session::setup_status))
        .routes(routes!(
            super::session::create_session,
            super::session::delete_session
        ))
        .routes(routes!(super::session::register_session))
        .routes(routes!(super::session::refresh_session))
        .routes(routes!(me))
        .routes(routes!(change_password))
        .routes(routes!(list_users, create_user))
        .routes(routes!(get_user, update_user))
        .routes(routes!(reset_password))
        .routes(routes!(list_api_keys, create_api_key))
        .routes(routes!(delete_api_key))
}

/// Create an account. The first account becomes admin; afterwards the
/// server's registration setting applies.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = TokenResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn register(
    State(state): State<AppState>,
    Json(request): Json<RegisterRequest>,
) -> Result<(StatusCode, Json<TokenResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.users.register(request).await?),
    ))
}

/// Log in with email and password. Failed logins slow down further
/// attempts on the account and from the address: 429 with `Retry-After`.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorResponse),
              (status = 429, body = ErrorResponse)))]
async fn login(
    State(state): State<AppState>,
    PeerAddr(address): PeerAddr,
    Json(request): Json<LoginRequest>,
) -> Result<Json<TokenResponse>> {
    Ok(Json(state.users.login(request, address).await?))
}

/// Exchange a refresh token for a new pair. Each refresh token works once;
/// replaying a used one revokes the whole session.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = ErrorResponse)))]
async fn refresh(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<Json<TokenResponse>> {
    Ok(Json(state.users.refresh(request).await?))
}

/// End the session that a refresh token belongs to.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest,
    responses((status = 204), (status = 401, body = ErrorResponse)))]
async fn logout(
    State(state): State<AppState>,
    Json(request): Json<RefreshRequest>,
) -> Result<StatusCode> {
    state.users.logout(request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users", security(("bearer" = [])),
    responses((status = 200, body = UserResponse), (status = 401, body = ErrorResponse)))]
async fn me(State(state): State<AppState>, principal: Principal) -> Result<Json<UserResponse>> {
    Ok(Json(state.users.me(&principal).await?))
}

/// Change the caller's password; every refresh token of the account is revoked.
#[utoipa::path(post, path = "/api/v1/users/me/password", tag = "users", security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses((status = 204), (status = 400, body = ErrorResponse), (status = 401, body = ErrorResponse)))]
async fn change_password(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<ChangePasswordRequest>,
) -> Result<StatusCode> {
    state.users.change_password(&principal, request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List every account (admin).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<UserResponse>), (status = 403, body = ErrorResponse)))]
async fn list_users(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<UserResponse>>> {
    Ok(Json(state.users.list_users(&principal, page).await?))
}

/// Create an account (admin); works whatever the registration setting.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", security(("bearer" = [])),
    request_body = CreateUserRequest,
    responses((status = 201, body = UserResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse)))]
async fn create_user(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<CreateUserRequest>,
) -> Result<(StatusCode, Json<UserResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.users.create_user(&principal, request).await?),
    ))
}

/// One account (admin).
#[utoipa::path(get, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")),
    responses((status = 200, body = UserResponse), (status = 403, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn get_user(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<Json<UserResponse>> {
    Ok(Json(state.users.get_user(&principal, id).await?))
}

/// Change an account's role, status or name (admin). A disabled account's
/// tokens and keys stop working at once.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")), request_body = UpdateUserRequest,
    responses((status = 200, body = UserResponse), (status = 403, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn update_user(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(request): Json<UpdateUserRequest>,
) -> Result<Json<UserResponse>> {
    Ok(Json(
        state.users.update_user(&principal, id, request).await?,
    ))
}

/// Set a user's password (admin); every session and access token of the
/// user ends at once.
#[utoipa::path(post, path = "/api/v1/users/{id}/password", tag = "users", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "User id")), request_body = ResetPasswordRequest,
    responses((status = 204), (status = 400, body = ErrorResponse), (status = 403, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
async fn reset_password(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
    Json(request): Json<ResetPasswordRequest>,
) -> Result<StatusCode> {
    state.users.reset_password(&principal, id, request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// List the caller's API keys (never their secrets).
#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])), params(PageParams),
    responses((status = 200, body = Page<ApiKeyResponse>), (status = 401, body = ErrorResponse)))]
async fn list_api_keys(
    State(state): State<AppState>,
    principal: Principal,
    Query(page): Query<PageParams>,
) -> Result<Json<Page<ApiKeyResponse>>> {
    Ok(Json(state.users.list_api_keys(&principal, page).await?))
}

/// Create an API key. The secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys", security(("bearer" = [])),
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKeyResponse), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse)))]
async fn create_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Json(request): Json<CreateApiKeyRequest>,
) -> Result<(StatusCode, Json<CreatedApiKeyResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.users.create_api_key(&principal, request).await?),
    ))
}

/// Delete one of the caller's API keys; it stops working at once.
#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = Uuid, Path, description = "API key id")),
    responses((status = 204), (status = 404, body = ErrorResponse)))]
async fn delete_api_key(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<Uuid>,
) -> Result<StatusCode> {
    state.users.delete_api_key(&principal, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
