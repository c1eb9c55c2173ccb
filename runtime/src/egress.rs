//! Outbound connections to endpoints that users configure for themselves
//! (personal model providers, their HTTP MCP servers).
//!
//! Such an endpoint is the user's input, and the server makes requests to
//! it from inside the operator's network: pointed at `127.0.0.1`, a cloud
//! metadata address (`169.254.169.254`) or a private range, it would let the
//! user reach what only the server can (server-side request forgery). So,
//! unless the operator allows it (`egress.allow_private_user_endpoints`):
//!
//! - the URL is refused when it is saved if its host is such an address or
//!   a `localhost` name ([`check_user_url`]);
//! - every connection resolves names itself and keeps public addresses only
//!   ([`PublicOnly`]), so a name that resolves, or later re-resolves, to a
//!   private address (DNS rebinding) reaches nothing;
//! - redirects are followed only to URLs that pass the same check, and no
//!   proxy from the environment is used (a proxy would resolve the name
//!   itself, out of our sight).
//!
//! Endpoints an admin configures for the whole server are trusted: a local
//! Ollama or a sidecar MCP server is their business.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Where users' own endpoints may connect.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct EgressConfig {
    /// Let endpoints that belong to one user (personal providers, users'
    /// HTTP MCP servers) reach loopback, private, link-local and other
    /// non-public addresses. Off by default; turn it on only where every
    /// user may reach the server's network.
    pub allow_private_user_endpoints: bool,
}

impl EgressConfig {
    /// Whether an endpoint of `owner` may reach public addresses only: a
    /// user's own (server-wide endpoints have no owner), unless the
    /// operator allows more.
    pub fn restricts(&self, owner: Option<uuid::Uuid>) -> bool {
        owner.is_some() && !self.allow_private_user_endpoints
    }
}

mod special;

/// Whether `ip` is an address on the public internet: in no block of the
/// IANA special-purpose registries that is not globally reachable
/// (loopback, private, link-local, shared, documentation, benchmarking,
/// reserved, ...; see `egress/special.rs`), nor multicast or broadcast.
/// IPv4 inside IPv6 (mapped, translated, compatible, NAT64, 6to4) is judged
/// by its IPv4 address; any other IPv6 address must be global unicast
/// (`2000::/3`).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let addr = u128::from(u32::from(ip));
    !special::V4.iter().any(|(net, len, _, _)| {
        special::within(addr, u128::from(u32::from_be_bytes(*net)), *len, 32)
    })
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let addr = u128::from(ip);
    let block = special::V6
        .iter()
        .find(|(net, len, ..)| special::within(addr, u128::from(Ipv6Addr::from(*net)), *len, 128));
    match block.map(|b| b.4) {
        Some(special::Kind::NotPublic) => false,
        Some(special::Kind::EmbedsV4Low) => is_public_v4(Ipv4Addr::from(addr as u32)),
        Some(special::Kind::EmbedsV4At16) => is_public_v4(Ipv4Addr::from((addr >> 80) as u32)),
        // Global unicast is 2000::/3; the rest is unassigned or reserved.
        None => (ip.segments()[0] & 0xe000) == 0x2000,
    }
}

/// Checks a user's endpoint URL before it is saved: an `http(s)` URL whose
/// host is not a non-public IP address nor a `localhost` name. Names are
/// resolved, and checked again, at every connection.
pub fn check_user_url(url: &reqwest::Url) -> Result<(), String> {
    match url.host() {
        None => Err("the URL has no host".to_owned()),
        Some(url::Host::Ipv4(ip)) if !is_public_v4(ip) => Err(private(IpAddr::V4(ip))),
        Some(url::Host::Ipv6(ip)) if !is_public_v6(ip) => Err(private(IpAddr::V6(ip))),
        Some(url::Host::Domain(name)) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name == "localhost" || name.ends_with(".localhost") {
                Err(format!(
                    "{name} is this machine, which users' endpoints may not reach"
                ))
            } else {
                Ok(())
            }
        }
        Some(_) => Ok(()),
    }
}

/// [`check_user_url`] of a URL as stored.
pub fn check_user_url_str(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    check_user_url(&parsed)
}

fn private(ip: IpAddr) -> String {
    format!("{ip} is not a public address, which users' endpoints may not reach")
}

/// Resolves names with the system resolver and keeps public addresses
/// only, and those of the networks in `also` (which an admin granted); a
/// name with none of those fails to resolve.
#[derive(Debug, Clone, Default)]
pub struct PublicOnly {
    also: Arc<[ipnet::IpNet]>,
}

impl PublicOnly {
    /// Public addresses and those of `networks`.
    pub fn and(networks: &[ipnet::IpNet]) -> PublicOnly {
        PublicOnly {
            also: networks.into(),
        }
    }

    /// Whether a connection to `ip` is allowed.
    pub fn allows(&self, ip: IpAddr) -> bool {
        is_public(ip) || self.also.iter().any(|net| net.contains(&ip))
    }

    async fn resolve(&self, host: String) -> Result<Vec<SocketAddr>, std::io::Error> {
        let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
        let allowed: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.allows(a.ip()))
            .collect();
        if allowed.is_empty() && !all.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                // Which address it was is the internal network's business.
                format!("{host} is not a destination this connection may reach"),
            ));
        }
        Ok(allowed)
    }
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve(host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl reqwest13::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest13::dns::Name) -> reqwest13::dns::Resolving {
        let host = name.as_str().to_owned();
        let this = self.clone();
        Box::pin(async move {
            let addrs = this.resolve(host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest13::dns::Addrs)
        })
    }
}

/// The HTTP client of plugins' outbound requests: names resolved to public
/// addresses (and to those of `private`, networks an admin granted the
/// plugin), no redirects (the plugin sees them and its next request is
/// checked again), no proxy, no default headers of its own. Clients without
/// private networks are shared.
pub fn plugin_client(private: &[ipnet::IpNet]) -> reqwest::Client {
    static SHARED: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    let build = || {
        reqwest::Client::builder()
            .dns_resolver(Arc::new(PublicOnly::and(private)))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("a client without custom TLS builds")
    };
    if private.is_empty() {
        SHARED.get_or_init(build).clone()
    } else {
        build()
    }
}

const MAX_REDIRECTS: usize = 10;

/// Whether a restricted client follows a redirect to `url`, after
/// `previous` of them.
fn redirect_allowed(url: &reqwest::Url, previous: usize) -> Result<(), String> {
    if previous >= MAX_REDIRECTS {
        return Err("too many redirects".to_owned());
    }
    check_user_url(url)
}

/// Restricts `builder` (the providers' HTTP client) to public addresses.
pub fn restrict(builder: reqwest::ClientBuilder) -> reqwest::ClientBuilder {
    builder
        .dns_resolver(Arc::new(PublicOnly::default()))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::custom(
            |attempt| match redirect_allowed(attempt.url(), attempt.previous().len()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            },
        ))
}

/// Restricts `builder` (an MCP client's, for rmcp's HTTP transport) to
/// public addresses.
pub fn restrict13(builder: reqwest13::ClientBuilder) -> reqwest13::ClientBuilder {
    builder
        .dns_resolver(PublicOnly::default())
        .no_proxy()
        .redirect(reqwest13::redirect::Policy::custom(|attempt| {
            // Both reqwest versions use the same `url::Url`.
            match redirect_allowed(attempt.url(), attempt.previous().len()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(e),
            }
        }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn non_public_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "127.8.9.10",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "240.0.0.1",
            "::",
            "::1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::10.0.0.1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::1",
            // Local-use NAT64 (RFC 8215) and IPv4-translated (RFC 2765).
            "64:ff9b:1::808:808",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "3fff::1",
            "5f00::1",
            "2001::1",
            "2001:2::1",
            "100::1",
            "100:0:0:1::1",
            "4000::1",
            "198.51.100.7",
            "203.0.113.9",
            "192.88.99.1",
        ] {
            assert!(!public(ip), "{ip} must not count as public");
        }
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "::ffff:0:808:808",
            "2620:4f:8000::1",
        ] {
            assert!(public(ip), "{ip} is public");
        }
    }

    #[test]
    fn every_special_purpose_block_is_refused_at_both_ends() {
        for (net, len, name, _) in special::V4 {
            let first = u32::from_be_bytes(*net);
            let last = first | (u32::MAX.checked_shr(u32::from(*len)).unwrap_or(0));
            for addr in [first, last] {
                let ip = Ipv4Addr::from(addr);
                assert!(!is_public_v4(ip), "{ip} ({name})");
                // ... and inside IPv6 in every form that carries it.
                for v6 in [
                    ip.to_ipv6_mapped(),
                    Ipv6Addr::from(0xffff_0000_0000u128 | u128::from(addr)),
                    Ipv6Addr::from((0x64_ff9bu128 << 96) | u128::from(addr)),
                    Ipv6Addr::from((0x2002u128 << 112) | (u128::from(addr) << 80)),
                ] {
                    assert!(!is_public_v6(v6), "{v6} carries {ip} ({name})");
                }
            }
        }
        for (net, len, name, _, kind) in special::V6 {
            if *kind != special::Kind::NotPublic {
                continue;
            }
            let first = u128::from(Ipv6Addr::from(*net));
            let last = first | u128::MAX.checked_shr(u32::from(*len)).unwrap_or(0);
            for addr in [first, last] {
                let ip = Ipv6Addr::from(addr);
                assert!(!is_public_v6(ip), "{ip} ({name})");
            }
        }
    }

    #[test]
    fn user_urls_are_checked_by_host() {
        let check = |s: &str| check_user_url(&s.parse().unwrap());
        assert!(check("https://api.openai.com/v1").is_ok());
        assert!(check("http://93.184.215.14:8080/mcp").is_ok());
        for bad in [
            "http://127.0.0.1:8080/",
            "http://localhost:11434/v1",
            "http://LOCALHOST./v1",
            "http://api.localhost/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[::1]:8080/",
            "http://[::ffff:10.0.0.1]/",
            "http://0x7f.1/",
            "http://2130706433/",
        ] {
            let error = check(bad).expect_err(bad);
            assert!(error.contains("may not reach"), "{bad}: {error}");
        }
    }

    #[tokio::test]
    async fn names_resolve_to_public_addresses_only() {
        let error = PublicOnly::default()
            .resolve("localhost".to_owned())
            .await
            .expect_err("localhost is private");
        assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(error.to_string().contains("not a destination"), "{error}");
        // Which address the name resolved to is not told.
        assert!(!error.to_string().contains("127.0.0.1"), "{error}");
        // A granted network lets it through.
        let granted = PublicOnly::and(&["127.0.0.0/8".parse().unwrap()]);
        let addrs = granted.resolve("localhost".to_owned()).await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
    }

    #[tokio::test]
    async fn restricted_clients_do_not_connect_to_names_of_private_addresses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut request = [0u8; 1024];
                let _ = socket.read(&mut request).await;
                let _ = socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await;
            }
        });
        let url = format!("http://localhost:{port}/");
        // The same request gets through without the restriction...
        let open = reqwest::Client::builder().no_proxy().build().unwrap();
        let answer = open.get(&url).send().await;
        assert!(answer.is_ok(), "{answer:?}");
        // ...and not with it, on both clients.
        let restricted = restrict(reqwest::Client::builder()).build().unwrap();
        let error = restricted.get(&url).send().await.expect_err("refused");
        assert!(
            format!("{error:?}").contains("not a destination"),
            "{error:?}"
        );
        crate::mcp::install_crypto();
        let restricted = restrict13(reqwest13::Client::builder()).build().unwrap();
        let error = restricted.get(&url).send().await.expect_err("refused");
        assert!(
            format!("{error:?}").contains("not a destination"),
            "{error:?}"
        );
    }
}
