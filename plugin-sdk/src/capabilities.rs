//! What a plugin can ask the host for: a private key-value store, named
//! secrets and outbound HTTP. Each works only once an admin has granted it.

/// A key-value store private to the plugin and to the user the call is made
/// for. Needs [`Plugin::key_value`](crate::Plugin::key_value).
pub mod kv {
    use serde::de::DeserializeOwned;
    use serde::Serialize;

    use crate::bindings::orchestra::plugin::kv as host;
    pub use host::KvError;

    /// A sentence for people and models.
    pub fn describe(e: &KvError) -> String {
        match e {
            KvError::NotGranted => "the key-value store was not granted to this plugin".to_owned(),
            KvError::Invalid(m) => format!("invalid key or value: {m}"),
            KvError::QuotaExceeded(m) => format!("store full: {m}"),
            KvError::Unavailable(m) => format!("store unavailable: {m}"),
        }
    }

    impl From<KvError> for crate::ToolError {
        fn from(e: KvError) -> Self {
            crate::ToolError::Failed(describe(&e))
        }
    }

    /// The bytes under `key`.
    pub fn get(key: &str) -> Result<Option<Vec<u8>>, KvError> {
        host::get(key)
    }

    /// Stores `value` under `key`.
    pub fn set(key: &str, value: &[u8]) -> Result<(), KvError> {
        host::set(key, value)
    }

    /// Removes `key`; whether it existed.
    pub fn delete(key: &str) -> Result<bool, KvError> {
        host::delete(key)
    }

    /// Keys starting with `prefix`, in order, at most `limit` (capped at 1000).
    pub fn list_keys(prefix: &str, limit: u32) -> Result<Vec<String>, KvError> {
        host::list_keys(prefix, limit)
    }

    /// The value under `key`, decoded from JSON.
    pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, KvError> {
        match host::get(key)? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| KvError::Invalid(format!("stored value under {key:?}: {e}"))),
        }
    }

    /// Stores `value` under `key` as JSON.
    pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), KvError> {
        let bytes = serde_json::to_vec(value).map_err(|e| KvError::Invalid(e.to_string()))?;
        host::set(key, &bytes)
    }
}

/// Named secrets set by an admin. Needs [`Plugin::secret`](crate::Plugin::secret)
/// for each name.
pub mod secrets {
    use crate::bindings::orchestra::plugin::secrets as host;
    pub use host::SecretError;

    /// A sentence for people and models.
    pub fn describe(e: &SecretError) -> String {
        match e {
            SecretError::NotGranted => "the secret was not granted to this plugin".to_owned(),
            SecretError::NotSet => "the secret has no value yet (an admin sets it)".to_owned(),
        }
    }

    impl From<SecretError> for crate::ToolError {
        fn from(e: SecretError) -> Self {
            crate::ToolError::Failed(describe(&e))
        }
    }

    /// The value of the secret `name`.
    pub fn get(name: &str) -> Result<String, SecretError> {
        host::get(name)
    }
}

/// Outbound HTTP through `wasi:http`, to the hosts an admin granted. The
/// host checks every request's real destination; redirects are returned,
/// not followed, so each hop is checked again when you follow it.
pub mod http {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{
        ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
    };
    use wasip2::io::streams::StreamError;

    /// Largest response body read by default: 8 MiB.
    pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 8 << 20;

    /// Why a request failed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum HttpError {
        /// The URL cannot be requested (scheme, syntax).
        InvalidUrl(String),
        /// The host refused the request: the destination was not granted.
        Denied(String),
        /// A header was refused (for example `Host`, which the host sets).
        InvalidHeader(String),
        /// The response body was larger than the limit.
        TooLarge(usize),
        /// Connection, TLS, protocol or timeout failure.
        Failed(String),
    }

    impl std::fmt::Display for HttpError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            match self {
                HttpError::InvalidUrl(m) => write!(f, "invalid URL: {m}"),
                HttpError::Denied(m) => write!(f, "request denied: {m}"),
                HttpError::InvalidHeader(m) => write!(f, "invalid header: {m}"),
                HttpError::TooLarge(n) => write!(f, "response body over {n} bytes"),
                HttpError::Failed(m) => write!(f, "request failed: {m}"),
            }
        }
    }

    impl std::error::Error for HttpError {}

    impl From<HttpError> for crate::ToolError {
        fn from(e: HttpError) -> Self {
            crate::ToolError::Failed(e.to_string())
        }
    }

    /// A response, its body read whole.
    #[derive(Debug, Clone)]
    pub struct Response {
        /// Status code.
        pub status: u16,
        /// Header names (lower case) and values.
        pub headers: Vec<(String, String)>,
        /// The body.
        pub body: Vec<u8>,
    }

    impl Response {
        /// The first value of header `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }

        /// The body as text (invalid UTF-8 replaced).
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }
    }

    /// A request being built.
    #[derive(Debug, Clone)]
    pub struct Request {
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        max_response_bytes: usize,
    }

    impl Request {
        /// A request with `method` (GET, POST, ...) to `url`.
        pub fn new(method: &str, url: &str) -> Request {
            Request {
                method: method.to_ascii_uppercase(),
                url: url.to_owned(),
                headers: Vec::new(),
                body: Vec::new(),
                max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            }
        }

        /// Adds a header.
        pub fn header(mut self, name: &str, value: &str) -> Request {
            self.headers.push((name.to_owned(), value.to_owned()));
            self
        }

        /// Sets the body.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Request {
            self.body = body.into();
            self
        }

        /// Caps the response body (default 8 MiB).
        pub fn max_response_bytes(mut self, max: usize) -> Request {
            self.max_response_bytes = max;
            self
        }

        /// Sends the request and reads the whole response.
        pub fn send(self) -> Result<Response, HttpError> {
            send(self)
        }
    }

    /// `GET url`.
    pub fn get(url: &str) -> Result<Response, HttpError> {
        Request::new("GET", url).send()
    }

    /// Splits `scheme://authority/path?query#fragment`.
    fn split_url(url: &str) -> Result<(Scheme, &str, &str), HttpError> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| HttpError::InvalidUrl(format!("{url:?} has no scheme")))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            other => {
                return Err(HttpError::InvalidUrl(format!(
                    "scheme {other:?} is not http(s)"
                )))
            }
        };
        let rest = rest.split('#').next().unwrap_or_default();
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() {
            return Err(HttpError::InvalidUrl(format!("{url:?} has no host")));
        }
        let path = if path.is_empty() { "/" } else { path };
        Ok((scheme, authority, path))
    }

    fn method(name: &str) -> Method {
        match name {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            other => Method::Other(other.to_owned()),
        }
    }

    fn error_code(e: ErrorCode) -> HttpError {
        match e {
            ErrorCode::HttpRequestDenied => {
                HttpError::Denied("the destination is not among the hosts granted".to_owned())
            }
            other => HttpError::Failed(format!("{other:?}")),
        }
    }

    fn send(request: Request) -> Result<Response, HttpError> {
        let (scheme, authority, path) = split_url(&request.url)?;
        let headers = Fields::new();
        for (name, value) in &request.headers {
            headers
                .append(name, value.as_bytes())
                .map_err(|e| HttpError::InvalidHeader(format!("{name}: {e:?}")))?;
        }
        let outgoing = OutgoingRequest::new(headers);
        outgoing
            .set_method(&method(&request.method))
            .map_err(|()| HttpError::InvalidUrl(format!("method {:?}", request.method)))?;
        outgoing
            .set_scheme(Some(&scheme))
            .map_err(|()| HttpError::InvalidUrl("scheme".to_owned()))?;
        outgoing
            .set_authority(Some(authority))
            .map_err(|()| HttpError::InvalidUrl(format!("host {authority:?}")))?;
        outgoing
            .set_path_with_query(Some(path))
            .map_err(|()| HttpError::InvalidUrl(format!("path {path:?}")))?;
        let body = outgoing
            .body()
            .map_err(|()| HttpError::Failed("request body taken".to_owned()))?;
        let pending = outgoing_handler::handle(outgoing, None).map_err(error_code)?;
        if !request.body.is_empty() {
            let stream = body
                .write()
                .map_err(|()| HttpError::Failed("request body stream".to_owned()))?;
            for chunk in request.body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .map_err(|e| HttpError::Failed(format!("writing the body: {e:?}")))?;
            }
        }
        OutgoingBody::finish(body, None).map_err(error_code)?;

        let response = loop {
            match pending.get() {
                Some(result) => break result,
                None => pending.subscribe().block(),
            }
        };
        let response = response
            .map_err(|()| HttpError::Failed("response taken twice".to_owned()))?
            .map_err(error_code)?;
        let status = response.status();
        let headers = response
            .headers()
            .entries()
            .into_iter()
            .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
            .collect();
        let incoming = response
            .consume()
            .map_err(|()| HttpError::Failed("response body taken".to_owned()))?;
        let stream = incoming
            .stream()
            .map_err(|()| HttpError::Failed("response body stream".to_owned()))?;
        let mut body = Vec::new();
        loop {
            match stream.blocking_read(64 << 10) {
                Ok(chunk) => {
                    if body.len() + chunk.len() > request.max_response_bytes {
                        return Err(HttpError::TooLarge(request.max_response_bytes));
                    }
                    body.extend_from_slice(&chunk);
                }
                Err(StreamError::Closed) => break,
                Err(StreamError::LastOperationFailed(e)) => {
                    return Err(HttpError::Failed(format!(
                        "reading the body: {}",
                        e.to_debug_string()
                    )))
                }
            }
        }
        drop(stream);
        let _trailers = IncomingBody::finish(incoming);
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn urls_split_into_scheme_authority_and_path() {
            let (_, a, p) = split_url("https://example.com/a/b?q=1#frag").unwrap();
            assert_eq!((a, p), ("example.com", "/a/b?q=1"));
            let (_, a, p) = split_url("http://127.0.0.1:8080").unwrap();
            assert_eq!((a, p), ("127.0.0.1:8080", "/"));
            let (_, a, p) = split_url("http://h?x=1").unwrap();
            assert_eq!((a, p), ("h", "?x=1"));
            assert!(split_url("ftp://h/").is_err());
            assert!(split_url("https:///x").is_err());
            assert!(split_url("example.com").is_err());
        }
    }
}
