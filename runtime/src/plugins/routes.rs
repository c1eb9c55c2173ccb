//! HTTP handlers of `/api/v1/plugins`.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{InstallRequest, PluginInfo, Source, UpdatePluginRequest};
use crate::error::{Error, ErrorResponse, Result};
use crate::http::extract::{Json, Path, Query};
use crate::http::AppState;
use crate::users::model::{Permission, Principal};

/// Routes of the plugins domain.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_plugins, install_plugin))
        .routes(routes!(get_plugin, update_plugin, remove_plugin))
        .routes(routes!(upgrade_plugin))
}

/// How much of an oversized upload is read (and dropped) before answering 413.
const DRAIN_BYTES: usize = 64 << 20;

/// How much of a refused upload (a caller who may not install plugins) is
/// read and dropped, and for how long at most, before the 403, so that an
/// ordinary client receives the answer; the rest is never read.
const REFUSED_DRAIN_BYTES: usize = 1 << 20;
const REFUSED_DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops at most `REFUSED_DRAIN_BYTES` of `body`, for at most
/// `REFUSED_DRAIN_TIME`.
async fn discard(body: Body) {
    let mut stream = body.into_data_stream();
    let mut seen = 0usize;
    let _ = tokio::time::timeout(REFUSED_DRAIN_TIME, async {
        while let Some(Ok(chunk)) = stream.next().await {
            seen += chunk.len();
            if seen > REFUSED_DRAIN_BYTES {
                break;
            }
        }
    })
    .await;
}

/// Reads an install body: the raw component (`application/wasm` or
/// `application/octet-stream`) or the JSON form, up to the plugin size limit.
async fn source(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Source> {
    let max = state.config.sandbox.max_plugin_bytes;
    // An oversized upload is read to its end (up to a bound) before the 413,
    // so that the client receives the answer instead of a broken connection.
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::validation(format!("reading the body: {e}")))?;
        seen += chunk.len();
        if seen <= max {
            bytes.extend_from_slice(&chunk);
        } else if seen > max.saturating_add(DRAIN_BYTES) {
            break;
        }
    }
    if seen > max {
        return Err(Error::PayloadTooLarge);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match content_type.as_str() {
        "application/wasm" | "application/octet-stream" => Ok(Source::Upload(bytes)),
        "application/json" => serde_json::from_slice::<InstallRequest>(&bytes)
            .map(|r| Source::Request(Box::new(r)))
            .map_err(|e| Error::validation(format!("invalid JSON body: {e}"))),
        other => Err(Error::validation(format!(
            "Content-Type {other:?}: send application/json (path or url) or application/wasm (the component)"
        ))),
    }
}

/// Every plugin, with its tools and requested, granted and effective capabilities.
#[utoipa::path(get, path = "/api/v1/plugins", tag = "plugins", security(("bearer" = [])),
    responses((status = 200, body = Vec<PluginInfo>), (status = 401, body = ErrorResponse)))]
async fn list_plugins(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Json<Vec<PluginInfo>>> {
    Ok(Json(state.plugins.list(&principal).await?))
}

/// Installs a plugin (admins): JSON `{"path": ...}` or `{"url": "https://...",
/// "sha256": ...}`, optionally with `grants` and `limits`; or the component
/// itself with `Content-Type: application/wasm`. Capabilities are granted
/// only as listed in `grants` (default none).
#[utoipa::path(post, path = "/api/v1/plugins", tag = "plugins", security(("bearer" = [])),
    request_body(content = InstallRequest, description = "JSON, or the raw component as application/wasm"),
    responses((status = 201, body = PluginInfo), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 409, body = ErrorResponse),
              (status = 413, body = ErrorResponse), (status = 422, body = ErrorResponse)))]
async fn install_plugin(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<PluginInfo>), Response> {
    // Permission first: a caller who may not install plugins gets its 403
    // without the server keeping (or waiting for) its upload. A little of
    // it is read and dropped so that an ordinary client sees the answer;
    // the connection is then closed.
    if let Err(refused) = principal.require(Permission::PluginManage) {
        discard(body).await;
        let mut response = refused.into_response();
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
        return Err(response);
    }
    let source = source(&state, &headers, body)
        .await
        .map_err(IntoResponse::into_response)?;
    let info = state
        .plugins
        .install(&principal, source)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok((StatusCode::CREATED, Json(info)))
}

/// One plugin.
#[utoipa::path(get, path = "/api/v1/plugins/{name}", tag = "plugins", security(("bearer" = [])),
    params(("name" = String, Path)),
    responses((status = 200, body = PluginInfo), (status = 404, body = ErrorResponse)))]
async fn get_plugin(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
) -> Result<Json<PluginInfo>> {
    Ok(Json(state.plugins.get(&principal, &name).await?))
}

/// Grants or revokes capabilities (`grants` replaces the whole set) and sets
/// per-call limits (admins). Takes effect at the next call.
#[utoipa::path(patch, path = "/api/v1/plugins/{name}", tag = "plugins", security(("bearer" = [])),
    params(("name" = String, Path)), request_body = UpdatePluginRequest,
    responses((status = 200, body = PluginInfo), (status = 400, body = ErrorResponse),
              (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn update_plugin(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Json(request): Json<UpdatePluginRequest>,
) -> Result<Json<PluginInfo>> {
    Ok(Json(
        state.plugins.update(&principal, &name, request).await?,
    ))
}

/// `DELETE /api/v1/plugins/{name}` options.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
struct RemoveParams {
    /// Also delete every user's key-value data of the plugin.
    #[serde(default)]
    purge: bool,
}

/// Removes an installed plugin (admins); its tools disappear at once.
/// Bundled plugins cannot be removed (409).
#[utoipa::path(delete, path = "/api/v1/plugins/{name}", tag = "plugins", security(("bearer" = [])),
    params(("name" = String, Path), RemoveParams),
    responses((status = 204), (status = 403, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse)))]
async fn remove_plugin(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    Query(params): Query<RemoveParams>,
) -> Result<StatusCode> {
    state
        .plugins
        .remove(&principal, &name, params.purge)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replaces an installed plugin's component with a new version, keeping its
/// grants and limits (admins). Same body forms as installing.
#[utoipa::path(post, path = "/api/v1/plugins/{name}/upgrade", tag = "plugins", security(("bearer" = [])),
    params(("name" = String, Path)),
    request_body(content = InstallRequest, description = "JSON, or the raw component as application/wasm"),
    responses((status = 200, body = PluginInfo), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse), (status = 409, body = ErrorResponse),
              (status = 422, body = ErrorResponse)))]
async fn upgrade_plugin(
    State(state): State<AppState>,
    principal: Principal,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<PluginInfo>> {
    // The body is read before the permission check on purpose: answering
    // while a client is still uploading breaks its connection instead of
    // giving it the 403.
    let source = source(&state, &headers, body).await?;
    Ok(Json(
        state.plugins.upgrade(&principal, &name, source).await?,
    ))
}
