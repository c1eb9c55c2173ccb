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

/// Whether `ip` is an address on the public internet: not loopback,
/// private, link-local, shared (CGNAT), unspecified, broadcast, multicast,
/// documentation or otherwise reserved. IPv4 inside IPv6 (mapped,
/// compatible, NAT64, 6to4) is judged by its IPv4 address.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4
    // (2002::/16) carry an IPv4 address that decides.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || ip.is_unique_local()
        || ip.is_unicast_link_local()
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0; 3])) // discard-only
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
/// only; a name with none fails to resolve.
#[derive(Debug, Clone, Copy, Default)]
pub struct PublicOnly;

impl PublicOnly {
    async fn resolve(host: String) -> Result<Vec<SocketAddr>, std::io::Error> {
        let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
        let public: Vec<SocketAddr> = all.iter().copied().filter(|a| is_public(a.ip())).collect();
        if public.is_empty() && !all.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                format!(
                    "{host} resolves to {}, not a public address, which users' endpoints may not reach",
                    all[0].ip()
                ),
            ));
        }
        Ok(public)
    }
}

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = PublicOnly::resolve(host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

impl reqwest13::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest13::dns::Name) -> reqwest13::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = PublicOnly::resolve(host).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest13::dns::Addrs)
        })
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
        .dns_resolver(Arc::new(PublicOnly))
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
        .dns_resolver(PublicOnly)
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
        ] {
            assert!(public(ip), "{ip} is public");
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
        let error = PublicOnly::resolve("localhost".to_owned())
            .await
            .expect_err("localhost is private");
        assert_eq!(error.kind(), std::io::ErrorKind::PermissionDenied);
        assert!(
            error.to_string().contains("not a public address"),
            "{error}"
        );
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
            format!("{error:?}").contains("not a public address"),
            "{error:?}"
        );
        crate::mcp::install_crypto();
        let restricted = restrict13(reqwest13::Client::builder()).build().unwrap();
        let error = restricted.get(&url).send().await.expect_err("refused");
        assert!(
            format!("{error:?}").contains("not a public address"),
            "{error:?}"
        );
    }
}
