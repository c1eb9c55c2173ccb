//! The web console: the files of `runtime/console` (our own ES modules as
//! written, and the vendored libraries), served at `/`. Every path that is
//! not the API's, the MCP endpoint's or the docs' gets the entry page, so
//! that the console's own routes (`/chat/...`, `/agents`) survive a reload.
//!
//! Release builds carry the files inside the binary; debug builds read them
//! from the source tree, so that an edit shows on reload.

use axum::body::Body;
use axum::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "console/"]
struct Files;

/// The console's Content-Security-Policy: no inline script or style, no
/// other origin for anything (a model's answer cannot load a remote image
/// that would carry the conversation away in its URL), no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self' data: blob:; font-src 'self'; connect-src 'self'; manifest-src 'self'; \
base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Paths that belong to the API and the other endpoints, never to the console.
fn reserved(path: &str) -> bool {
    [
        "/api",
        "/v1",
        "/mcp",
        "/docs",
        "/healthz",
        "/readyz",
        "/.well-known",
    ]
    .iter()
    .any(|p| path == *p || path.starts_with(&format!("{p}/")))
}

/// Answers a GET or HEAD for a console path: an asset under `/assets/`,
/// or the entry page. `None` for anything else (the API's 404 then).
pub fn serve(method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<Response> {
    if method != Method::GET && method != Method::HEAD {
        return None;
    }
    let path = uri.path();
    if reserved(path) {
        return None;
    }
    let (name, entry) = match path.strip_prefix("/assets/") {
        Some(asset) => (asset.to_owned(), false),
        None => ("index.html".to_owned(), true),
    };
    if name.contains("..") || name.contains('\\') {
        return None;
    }
    let Some(file) = Files::get(&name) else {
        // A missing asset is a 404, not the entry page (a script that got
        // HTML would fail in a confusing way).
        return Some(not_found());
    };
    let etag = format!("\"{}\"", hex(&file.metadata.sha256_hash()[..12]));
    let mut response = if headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        Response::new(Body::from(file.data.into_owned()))
    };
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type(&name)));
    h.insert(ETAG, HeaderValue::from_str(&etag).expect("hex"));
    // Module files keep stable names: the browser asks again each time
    // and gets a 304 while the file is unchanged.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if entry {
        secure_page(h);
    } else {
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
    Some(response)
}

/// The headers of a page of the console.
pub fn secure_page(h: &mut HeaderMap) {
    h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
}

fn not_found() -> Response {
    let mut r = (StatusCode::NOT_FOUND, "not found").into_response();
    r.headers_mut()
        .insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "webmanifest" => "application/json",
        "txt" | "" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(path: &str) -> Option<Response> {
        serve(&Method::GET, &path.parse().unwrap(), &HeaderMap::new())
    }

    #[test]
    fn api_paths_are_not_the_consoles() {
        for p in [
            "/api/v1/nothing",
            "/v1/models",
            "/mcp",
            "/docs/",
            "/healthz",
        ] {
            assert!(get(p).is_none(), "{p}");
        }
        assert!(get("/apiary").is_some());
    }

    #[test]
    fn routes_get_the_entry_page_with_its_policy() {
        let page = get("/chat/123").unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert!(page.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
        assert_eq!(page.headers()[CONTENT_SECURITY_POLICY], CSP);
    }

    #[test]
    fn assets_have_types_etags_and_no_escape() {
        let js = get("/assets/app.js").unwrap();
        assert!(js.headers()[CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        let etag = js.headers()[ETAG].clone();
        let mut h = HeaderMap::new();
        h.insert(IF_NONE_MATCH, etag);
        let again = serve(&Method::GET, &"/assets/app.js".parse().unwrap(), &h).unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(
            get("/assets/nope.js").unwrap().status(),
            StatusCode::NOT_FOUND
        );
        assert!(get("/assets/../Cargo.toml").is_none());
    }
}
