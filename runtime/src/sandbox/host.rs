//! What the host gives a running plugin: logging, the key-value store, named
//! secrets and outbound HTTP, each checked against the plugin's effective
//! rights (what it requested in its manifest AND what an admin granted).
//!
//! The sandbox does not know where values live: the key-value store and the
//! secrets come from a [`HostServices`] implementation (the database, in the
//! server), handed in with each call's [`CallContext`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimits;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use super::bindings::orchestra::plugin::{kv, log, secrets, types};
use super::limits;
use super::Capabilities;

/// A boxed future, for the object-safe [`HostServices`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Whose key-value store a call uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KvScope {
    /// The plugin's name.
    pub plugin: String,
    /// The user the call is made for.
    pub user: String,
}

/// Why a key-value operation failed on the host's side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvFailure {
    /// The scope holds as many keys as it may.
    QuotaExceeded(String),
    /// The store is unreachable.
    Unavailable(String),
}

/// Where key-value data and secrets live.
pub trait HostServices: Send + Sync {
    /// The value under `key`.
    fn kv_get<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, KvFailure>>;
    /// Stores `value` under `key`, refusing a new key beyond `max_keys`.
    fn kv_set<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
        value: &'a [u8],
        max_keys: u64,
    ) -> BoxFuture<'a, Result<(), KvFailure>>;
    /// Removes `key`; whether it existed.
    fn kv_delete<'a>(
        &'a self,
        scope: &'a KvScope,
        key: &'a str,
    ) -> BoxFuture<'a, Result<bool, KvFailure>>;
    /// Keys starting with `prefix`, in order, at most `limit`.
    fn kv_list<'a>(
        &'a self,
        scope: &'a KvScope,
        prefix: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<String>, KvFailure>>;
    /// The decrypted value of the secret `name`, if set.
    fn secret<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<String>, String>>;
}

/// What an admin granted a plugin. The plugin gets the intersection with
/// what it requested.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Grants {
    /// Hosts it may reach: `host`, `host:port`, `*.domain` or `*`. A host
    /// without a port means the scheme's default port (80 or 443).
    pub http_hosts: Vec<String>,
    /// The private key-value store.
    pub key_value: bool,
    /// Secrets it may read, by name.
    pub secrets: Vec<String>,
    /// Directories of the server it may see, each under the path it asked for.
    pub directories: Vec<DirectoryGrant>,
    /// Non-public networks (`10.0.0.0/8`, `fd00::/8`, or one address) that
    /// the granted hosts may resolve to. Without one, a request reaches
    /// public addresses only, whatever host it names (`*` included), except
    /// a host granted by its IP address (`10.1.2.3:8080`), which the admin
    /// named.
    #[schema(value_type = Vec<String>)]
    pub private_networks: Vec<String>,
}

/// A directory of the server, shown to a plugin at `path`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DirectoryGrant {
    /// The absolute path the plugin uses (as requested in its manifest).
    pub path: String,
    /// The directory on the server.
    pub host: String,
    /// Whether the plugin may create, change and delete files (default: read only).
    #[serde(default)]
    pub writable: bool,
}

/// An absolute path without `.`, `..` or empty segments, e.g. `/data`.
pub fn check_guest_path(path: &str) -> Result<(), String> {
    let valid = path.len() <= 255
        && path.starts_with('/')
        && path.len() > 1
        && path[1..]
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && !path.chars().any(char::is_control);
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{path:?} must be an absolute path such as /data, without . or .. segments"
        ))
    }
}

impl Grants {
    /// Lower-cases hosts, drops duplicates, and checks every entry.
    pub fn normalised(mut self) -> Result<Grants, String> {
        for host in &mut self.http_hosts {
            *host = host.trim().to_ascii_lowercase();
            check_host_pattern(host)?;
        }
        self.http_hosts.sort();
        self.http_hosts.dedup();
        for name in &self.secrets {
            if !is_secret_name(name) {
                return Err(format!(
                    "secret name {name:?} must be 1 to 64 of A-Z a-z 0-9 _ - ."
                ));
            }
        }
        self.secrets.sort();
        self.secrets.dedup();
        for dir in &self.directories {
            check_guest_path(&dir.path)?;
            if !std::path::Path::new(&dir.host).is_absolute() {
                return Err(format!(
                    "directory {:?}: the server path {:?} must be absolute",
                    dir.path, dir.host
                ));
            }
        }
        self.directories.sort_by(|a, b| a.path.cmp(&b.path));
        if self.directories.windows(2).any(|w| w[0].path == w[1].path) {
            return Err("a directory path is granted twice".to_owned());
        }
        for net in &mut self.private_networks {
            *net = parse_network(net)?.to_string();
        }
        self.private_networks.sort();
        self.private_networks.dedup();
        Ok(self)
    }

    /// What the plugin may actually use: granted AND requested.
    pub fn effective(&self, requested: &Capabilities) -> Grants {
        Grants {
            http_hosts: self
                .http_hosts
                .iter()
                .filter(|granted| {
                    requested
                        .http_hosts
                        .iter()
                        .any(|wanted| pattern_covers(&wanted.to_ascii_lowercase(), granted))
                })
                .cloned()
                .collect(),
            key_value: self.key_value && requested.key_value,
            secrets: self
                .secrets
                .iter()
                .filter(|s| requested.secrets.contains(s))
                .cloned()
                .collect(),
            directories: self
                .directories
                .iter()
                .filter(|d| requested.directories.contains(&d.path))
                .cloned()
                .collect(),
            // Not a right of its own: where the granted hosts may resolve to.
            private_networks: self.private_networks.clone(),
        }
    }

    /// The private networks, parsed (entries that do not parse, which
    /// `normalised` refuses, are left out).
    fn networks(&self) -> Vec<ipnet::IpNet> {
        self.private_networks
            .iter()
            .filter_map(|n| parse_network(n).ok())
            .collect()
    }
}

/// `10.0.0.0/8`, `fd00::/8` or one address (`10.1.2.3`, `::1`).
fn parse_network(net: &str) -> Result<ipnet::IpNet, String> {
    let net = net.trim();
    net.parse::<ipnet::IpNet>()
        .map(|n| n.trunc())
        .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{net:?} is not a network such as 10.0.0.0/8 or an IP address"))
}

/// `^[A-Za-z0-9_.-]{1,64}$`
pub fn is_secret_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks `host`, `host:port`, `*.domain[:port]` or `*`.
pub fn check_host_pattern(pattern: &str) -> Result<(), String> {
    if pattern == "*" {
        return Ok(());
    }
    let (host, port) = split_port(pattern);
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("{pattern:?}: the port must be 1 to 65535"));
        }
    }
    let name = host.strip_prefix("*.").unwrap_or(host);
    let ipv6 = name.starts_with('[') && name.ends_with(']');
    let valid = !name.is_empty()
        && name.len() <= 253
        && (ipv6
            || name.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
            }));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{pattern:?} is not a host, host:port, *.domain or *"
        ))
    }
}

/// `("host", Some("port"))`, understanding `[v6]:port`.
fn split_port(pattern: &str) -> (&str, Option<&str>) {
    if let Some(end) = pattern.rfind(']') {
        return match pattern[end + 1..].strip_prefix(':') {
            Some(port) => (&pattern[..=end], Some(port)),
            None => (pattern, None),
        };
    }
    match pattern.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (pattern, None),
    }
}

/// Whether the request pattern `wanted` covers the grant `granted`: a grant
/// is usable only where the plugin asked for it.
fn pattern_covers(wanted: &str, granted: &str) -> bool {
    if wanted == "*" {
        return true;
    }
    if granted == "*" {
        return false;
    }
    let (w_host, w_port) = split_port(wanted);
    let (g_host, g_port) = split_port(granted);
    // No port means the scheme's default port, on both sides.
    if w_port != g_port {
        return false;
    }
    match (w_host.strip_prefix("*."), g_host.strip_prefix("*.")) {
        (None, None) => w_host == g_host,
        (Some(domain), None) => g_host.ends_with(&format!(".{domain}")),
        (Some(domain), Some(g_domain)) => {
            g_domain == domain || g_domain.ends_with(&format!(".{domain}"))
        }
        (None, Some(_)) => false,
    }
}

/// Whether `pattern` allows a request to `host:port` (`default_port` being
/// the scheme's).
fn pattern_allows(pattern: &str, host: &str, port: u16, default_port: u16) -> bool {
    if pattern == "*" {
        return true;
    }
    let (p_host, p_port) = split_port(pattern);
    let port_ok = match p_port {
        Some(p) => p.parse::<u16>().ok() == Some(port),
        None => port == default_port,
    };
    let host_ok = match p_host.strip_prefix("*.") {
        Some(domain) => host.ends_with(&format!(".{domain}")),
        None => p_host == host,
    };
    port_ok && host_ok
}

/// Who a call is for and what it may use.
#[derive(Clone, Default)]
pub struct CallContext {
    /// The user the call is made for; the key-value store is theirs.
    pub user: Option<String>,
    /// What an admin granted the plugin.
    pub grants: Arc<Grants>,
    /// Where key-value data and secrets live.
    pub services: Option<Arc<dyn HostServices>>,
}

impl std::fmt::Debug for CallContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallContext")
            .field("user", &self.user)
            .field("grants", &self.grants)
            .finish_non_exhaustive()
    }
}

/// The outbound HTTP policy of one call: every request's real destination
/// (the URI the connection is made to, never a header) must match a host
/// the plugin both requested and was granted, and the address connected to
/// must be public, in a private network granted to the plugin, or an IP
/// address granted by name (`crate::egress`): a plugin granted `*` does not
/// reach the server's own network. Names are resolved at every connection,
/// so a name that later resolves elsewhere (DNS rebinding) reaches nothing.
pub(super) struct HttpPolicy {
    plugin: Arc<str>,
    allowed: Vec<String>,
    private: Vec<ipnet::IpNet>,
    client: Option<reqwest::Client>,
    timeout: Duration,
}

impl HttpPolicy {
    fn new(plugin: Arc<str>, effective: &Grants, timeout: Duration) -> HttpPolicy {
        HttpPolicy {
            plugin,
            allowed: effective.http_hosts.clone(),
            private: effective.networks(),
            client: None,
            timeout,
        }
    }

    fn allows(&self, uri: &http::Uri) -> Result<(), String> {
        let default_port = match uri.scheme_str() {
            Some("https") => 443,
            Some("http") => 80,
            other => return Err(format!("scheme {other:?} is not http or https")),
        };
        let Some(authority) = uri.authority() else {
            return Err("the request has no destination".to_owned());
        };
        let host = authority.host().to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(default_port);
        let mut matching = self
            .allowed
            .iter()
            .filter(|p| pattern_allows(p, &host, port, default_port));
        let Some(_) = matching.clone().next() else {
            return Err(format!("{host}:{port} is not among the hosts granted"));
        };
        // An address in the URI is not resolved: check it here, read as the
        // HTTP client reads it (`127.1`, `0x7f.1` and `2130706433` are all
        // 127.0.0.1). It may be private where the admin granted it by that
        // address (no wildcard).
        let address = match url::Host::parse(&host) {
            Ok(url::Host::Ipv4(ip)) => Some(std::net::IpAddr::V4(ip)),
            Ok(url::Host::Ipv6(ip)) => Some(std::net::IpAddr::V6(ip)),
            Ok(url::Host::Domain(_)) => None,
            Err(_) => return Err(format!("{host} is not a valid host")),
        };
        if let Some(ip) = address {
            let named = matching.any(|p| !split_port(p).0.contains('*') && p != "*");
            if !named && !crate::egress::PublicOnly::and(&self.private).allows(ip) {
                return Err(format!(
                    "{host} is not a public address, and no private network granted holds it"
                ));
            }
        }
        Ok(())
    }

    fn client(&mut self) -> reqwest::Client {
        self.client
            .get_or_insert_with(|| crate::egress::plugin_client(&self.private))
            .clone()
    }
}

/// A wasi-http error for a failed outbound request.
fn send_error(error: &reqwest::Error) -> wasmtime_wasi_http::Error {
    use std::error::Error as _;
    let mut source = error.source();
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::PermissionDenied {
                return wasmtime_wasi_http::Error::DestinationIpProhibited;
            }
        }
        source = cause.source();
    }
    if error.is_timeout() {
        wasmtime_wasi_http::Error::ConnectionTimeout
    } else if error.is_connect() {
        wasmtime_wasi_http::Error::ConnectionRefused
    } else {
        wasmtime_wasi_http::Error::InternalError(Some(error.to_string()))
    }
}

impl WasiHttpHooks for HttpPolicy {
    fn send_request(
        &mut self,
        request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        drop(fut);
        if let Err(reason) = self.allows(request.uri()) {
            tracing::warn!(plugin = %self.plugin, uri = %request.uri(), %reason, "plugin HTTP request denied");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        tracing::debug!(plugin = %self.plugin, method = %request.method(), uri = %request.uri(), "plugin HTTP request");
        let client = self.client();
        // The call's deadline bounds everything; this keeps a silent peer
        // from holding a connection open until then.
        let timeout = self.timeout;
        let plugin = self.plugin.clone();
        Box::new(async move {
            use futures_util::TryStreamExt;
            use http_body_util::BodyExt;
            let (parts, body) = request.into_parts();
            // The body as a stream of its data frames (trailers are not sent).
            let frames = http_body_util::BodyStream::new(body)
                .try_filter_map(|frame| std::future::ready(Ok(frame.into_data().ok())));
            let request = http::Request::from_parts(parts, reqwest::Body::wrap_stream(frames));
            let mut request = reqwest::Request::try_from(request)
                .map_err(|_| wasmtime_wasi_http::Error::HttpRequestUriInvalid)?;
            *request.timeout_mut() = Some(timeout);
            let response = client.execute(request).await.map_err(|e| {
                tracing::info!(plugin = %plugin, error = %e, "plugin HTTP request failed");
                send_error(&e)
            })?;
            let response: http::Response<reqwest::Body> = response.into();
            let response = response.map(|body| {
                body.map_err(|e| {
                    if e.is_timeout() {
                        wasmtime_wasi_http::Error::ConnectionReadTimeout
                    } else {
                        wasmtime_wasi_http::Error::HttpResponseIncomplete
                    }
                })
                .boxed_unsync()
            });
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// Per-instance host state.
pub(super) struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) limits: StoreLimits,
    http: WasiHttpCtx,
    hooks: HttpPolicy,
    plugin: Arc<str>,
    user: Option<String>,
    effective: Grants,
    services: Option<Arc<dyn HostServices>>,
    pub(super) log_lines_left: usize,
    pub(super) log_lines_dropped: usize,
}

impl HostState {
    pub(super) fn new(
        wasi: WasiCtx,
        limits: StoreLimits,
        plugin: Arc<str>,
        effective: Grants,
        ctx: &CallContext,
        call_limits: &limits::CallLimits,
    ) -> HostState {
        HostState {
            wasi,
            table: ResourceTable::new(),
            limits,
            http: WasiHttpCtx::new(),
            hooks: HttpPolicy::new(plugin.clone(), &effective, call_limits.timeout()),
            plugin,
            user: ctx.user.clone(),
            effective,
            services: ctx.services.clone(),
            log_lines_left: call_limits.max_log_lines,
            log_lines_dropped: 0,
        }
    }

    fn kv_scope(&self) -> Result<(KvScope, Arc<dyn HostServices>), kv::KvError> {
        if !self.effective.key_value {
            return Err(kv::KvError::NotGranted);
        }
        let (Some(user), Some(services)) = (&self.user, &self.services) else {
            return Err(kv::KvError::Unavailable(
                "this call is not made for a user".to_owned(),
            ));
        };
        Ok((
            KvScope {
                plugin: self.plugin.to_string(),
                user: user.clone(),
            },
            services.clone(),
        ))
    }
}

fn check_key(key: &str) -> Result<(), kv::KvError> {
    if key.is_empty() || key.len() > limits::MAX_KV_KEY_BYTES {
        return Err(kv::KvError::Invalid(format!(
            "a key is 1 to {} bytes, this one {}",
            limits::MAX_KV_KEY_BYTES,
            key.len()
        )));
    }
    if key.chars().any(char::is_control) {
        return Err(kv::KvError::Invalid(
            "a key may not contain control characters".to_owned(),
        ));
    }
    Ok(())
}

fn kv_failure(f: KvFailure) -> kv::KvError {
    match f {
        KvFailure::QuotaExceeded(m) => kv::KvError::QuotaExceeded(m),
        KvFailure::Unavailable(m) => kv::KvError::Unavailable(m),
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

impl types::Host for HostState {}

impl log::Host for HostState {
    async fn log(&mut self, level: log::Level, message: String) {
        if self.log_lines_left == 0 {
            self.log_lines_dropped += 1;
            return;
        }
        self.log_lines_left -= 1;
        let mut message = message;
        if message.len() > limits::MAX_LOG_LINE_BYTES {
            let mut cut = limits::MAX_LOG_LINE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        let plugin = &*self.plugin;
        match level {
            log::Level::Debug => tracing::debug!(plugin, "{message}"),
            log::Level::Info => tracing::info!(plugin, "{message}"),
            log::Level::Warn => tracing::warn!(plugin, "{message}"),
            log::Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

impl kv::Host for HostState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, kv::KvError> {
        let (scope, services) = self.kv_scope()?;
        check_key(&key)?;
        services.kv_get(&scope, &key).await.map_err(kv_failure)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), kv::KvError> {
        let (scope, services) = self.kv_scope()?;
        check_key(&key)?;
        if value.len() > limits::MAX_KV_VALUE_BYTES {
            return Err(kv::KvError::Invalid(format!(
                "a value is at most {} bytes, this one {}",
                limits::MAX_KV_VALUE_BYTES,
                value.len()
            )));
        }
        services
            .kv_set(&scope, &key, &value, limits::MAX_KV_KEYS)
            .await
            .map_err(kv_failure)
    }

    async fn delete(&mut self, key: String) -> Result<bool, kv::KvError> {
        let (scope, services) = self.kv_scope()?;
        check_key(&key)?;
        services.kv_delete(&scope, &key).await.map_err(kv_failure)
    }

    async fn list_keys(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, kv::KvError> {
        let (scope, services) = self.kv_scope()?;
        if prefix.len() > limits::MAX_KV_KEY_BYTES {
            return Ok(Vec::new());
        }
        services
            .kv_list(&scope, &prefix, limit.min(limits::MAX_KV_LIST))
            .await
            .map_err(kv_failure)
    }
}

impl secrets::Host for HostState {
    async fn get(&mut self, name: String) -> Result<String, secrets::SecretError> {
        if !self.effective.secrets.contains(&name) {
            tracing::warn!(plugin = %self.plugin, secret = %name, "plugin asked for a secret it was not granted");
            return Err(secrets::SecretError::NotGranted);
        }
        let Some(services) = &self.services else {
            return Err(secrets::SecretError::NotSet);
        };
        match services.secret(&name).await {
            Ok(Some(value)) => Ok(value),
            Ok(None) => Err(secrets::SecretError::NotSet),
            Err(e) => {
                tracing::error!(plugin = %self.plugin, secret = %name, error = %e, "reading a secret failed");
                Err(secrets::SecretError::NotSet)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps(hosts: &[&str]) -> Capabilities {
        Capabilities {
            http_hosts: hosts.iter().map(|s| s.to_string()).collect(),
            key_value: true,
            secrets: vec!["token".into()],
            directories: vec!["/data".into()],
        }
    }

    #[test]
    fn effective_rights_are_requested_and_granted() {
        let grants = Grants {
            http_hosts: vec![
                "api.example.com".into(),
                "evil.test".into(),
                "a.b.example.com:8443".into(),
                "*".into(),
            ],
            key_value: true,
            secrets: vec!["token".into(), "other".into()],
            directories: vec![
                DirectoryGrant {
                    path: "/data".into(),
                    host: "/srv/data".into(),
                    writable: false,
                },
                DirectoryGrant {
                    path: "/etc".into(),
                    host: "/etc".into(),
                    writable: false,
                },
            ],
            private_networks: vec![],
        };
        let e = grants.effective(&caps(&["api.example.com", "*.b.example.com"]));
        assert_eq!(e.http_hosts, vec!["api.example.com"]);
        let e = grants.effective(&caps(&["*.b.example.com:8443"]));
        assert_eq!(e.http_hosts, vec!["a.b.example.com:8443"]);
        assert_eq!(e.secrets, vec!["token"]);
        assert!(e.key_value);
        assert_eq!(e.directories.len(), 1);
        assert_eq!(e.directories[0].path, "/data");
        let any = grants.effective(&caps(&["*"]));
        assert_eq!(any.http_hosts.len(), 4);
        let none = Grants::default().effective(&caps(&["*"]));
        assert!(none.http_hosts.is_empty() && !none.key_value && none.secrets.is_empty());
        assert!(none.directories.is_empty());
    }

    #[test]
    fn destinations_match_host_and_port() {
        assert!(pattern_allows("example.com", "example.com", 443, 443));
        assert!(!pattern_allows("example.com", "example.com", 8443, 443));
        assert!(pattern_allows("example.com:8443", "example.com", 8443, 443));
        assert!(!pattern_allows(
            "example.com",
            "example.com.evil.test",
            443,
            443
        ));
        assert!(!pattern_allows("example.com", "evilexample.com", 443, 443));
        assert!(pattern_allows("*.example.com", "a.example.com", 443, 443));
        assert!(!pattern_allows("*.example.com", "example.com", 443, 443));
        assert!(!pattern_allows("*.example.com", "aexample.com", 443, 443));
        assert!(pattern_allows("127.0.0.1:9000", "127.0.0.1", 9000, 80));
        assert!(pattern_allows("*", "anything", 1, 80));
    }

    #[test]
    fn the_policy_reads_the_uri_not_the_user_info() {
        let grants = Grants {
            http_hosts: vec!["good.test".into(), "*".into(), "10.0.0.7:8080".into()],
            private_networks: vec!["192.168.1.0/24".into()],
            ..Grants::default()
        };
        let only_good = Grants {
            http_hosts: vec!["good.test".into()],
            ..Grants::default()
        };
        let policy = HttpPolicy::new(Arc::from("p"), &only_good, Duration::from_secs(1));
        let ok: http::Uri = "https://good.test/x".parse().unwrap();
        assert!(policy.allows(&ok).is_ok());
        let trick: http::Uri = "https://good.test@evil.test/x".parse().unwrap();
        assert!(policy.allows(&trick).is_err());
        let port: http::Uri = "http://good.test:8080/".parse().unwrap();
        assert!(policy.allows(&port).is_err());

        // `*` reaches public addresses, not private ones, unless granted
        // by address or in a granted network.
        let policy = HttpPolicy::new(Arc::from("p"), &grants, Duration::from_secs(1));
        let allows = |uri: &str| policy.allows(&uri.parse().unwrap()).is_ok();
        assert!(allows("http://93.184.215.14/"));
        for private in [
            "http://127.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.7/",
            "http://[64:ff9b:1::a00:7]/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://2130706433/",
        ] {
            assert!(!allows(private), "{private}");
        }
        assert!(allows("http://10.0.0.7:8080/"), "granted by its address");
        assert!(allows("http://192.168.1.20/"), "in a granted network");
        assert!(!allows("http://192.168.2.20/"));
    }

    #[test]
    fn grants_are_checked_and_normalised() {
        let g = Grants {
            http_hosts: vec![" API.Example.com ".into(), "api.example.com".into()],
            key_value: false,
            secrets: vec!["b".into(), "a".into(), "a".into()],
            directories: vec![],
            private_networks: vec!["10.1.2.3/8".into(), "::1".into()],
        }
        .normalised()
        .unwrap();
        assert_eq!(g.private_networks, vec!["10.0.0.0/8", "::1/128"]);
        let bad = Grants {
            private_networks: vec!["intranet".into()],
            ..Grants::default()
        };
        assert!(bad.normalised().is_err());
        assert_eq!(g.http_hosts, vec!["api.example.com"]);
        assert_eq!(g.secrets, vec!["a", "b"]);
        for bad in ["", "a b", "http://x", "x:0", "x:99999", "*.", "a/b"] {
            assert!(check_host_pattern(bad).is_err(), "{bad:?}");
        }
        for good in ["*", "x", "*.x.com", "x.com:8080", "127.0.0.1:1", "[::1]:80"] {
            assert!(check_host_pattern(good).is_ok(), "{good:?}");
        }
        assert!(!is_secret_name("a b") && is_secret_name("GITHUB_TOKEN"));
        for bad in ["", "/", "data", "/a/../b", "/a//b", "/./a"] {
            assert!(check_guest_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_guest_path("/data/cache").is_ok());
    }
}
