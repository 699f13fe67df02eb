//! What a plugin's URL asks for, and whether its `http_allow` grants it.
//!
//! The URL is parsed once, here, into a [`Target`]: scheme, host, port and the path the
//! request line carries. What reaches the wire is built from these parts, never from the
//! plugin's text, so the grant that was checked is the request that is sent.

use std::net::IpAddr;

use crate::config::{HttpOrigin, OriginHost, ascii_domain, split_host_port};

/// The host a URL names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name: lowercase, A-labels, no trailing dot.
    Name(String),
    /// An address literal.
    Ip(IpAddr),
}

/// A parsed URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https` (else `http`).
    pub https: bool,
    /// The host.
    pub host: Host,
    /// The port (the scheme's default when the URL has none).
    pub port: u16,
    /// The path and query, `/` at least (the request target, RFC 9112 §3.2.1).
    pub path: String,
}

impl Target {
    /// Parses an absolute `http://` or `https://` URL; the error says what is wrong.
    pub fn parse(url: &str) -> Result<Target, String> {
        let (scheme, _) = url
            .split_once("://")
            .ok_or_else(|| "the URL is not absolute (scheme://host/path)".to_owned())?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme `{other}`: only http and https")),
        };
        // `http::Uri` checks the characters of what follows (no spaces, no controls).
        let uri: http::Uri = url.parse().map_err(|e| format!("{e}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| "the URL has no host".to_owned())?
            .as_str();
        if authority.contains('@') {
            return Err("user information in the URL is not allowed".into());
        }
        if url.contains('#') {
            return Err("a fragment is not part of a request".into());
        }
        let (host, port) =
            split_host_port(authority).ok_or_else(|| format!("bad port in `{authority}`"))?;
        let port = port.unwrap_or(if https { 443 } else { 80 });
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            Host::Ip(IpAddr::V6(
                v6.parse().map_err(|_| format!("bad IPv6 address `{v6}`"))?,
            ))
        } else if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
            Host::Ip(IpAddr::V4(v4))
        } else {
            // Percent-encoded or otherwise odd names are not names: refuse rather than
            // guess how a resolver would read them.
            let name = ascii_domain(host)
                .filter(|n| {
                    !n.is_empty()
                        && n.len() <= 253
                        && n.split('.').all(|label| {
                            !label.is_empty()
                                && label.len() <= 63
                                && label
                                    .bytes()
                                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        })
                })
                .ok_or_else(|| format!("`{host}` is not a host name"))?;
            Host::Name(name)
        };
        let path = uri
            .path_and_query()
            .map(|p| p.as_str())
            .filter(|p| !p.is_empty())
            .unwrap_or("/")
            .to_owned();
        Ok(Target {
            https,
            host,
            port,
            path,
        })
    }

    /// The `Host` header's value: the host, and the port when it is not the scheme's.
    pub fn authority(&self) -> String {
        let host = match &self.host {
            Host::Name(name) => name.clone(),
            Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            Host::Ip(IpAddr::V4(v4)) => v4.to_string(),
        };
        if self.port == if self.https { 443 } else { 80 } {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The origin, for messages: `https://host:port`.
    pub fn origin(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        match &self.host {
            Host::Name(name) => format!("{scheme}://{name}:{}", self.port),
            Host::Ip(ip) => format!("{scheme}://{}", std::net::SocketAddr::new(*ip, self.port)),
        }
    }
}

/// The entry of `allow` that grants `target`, if one does.
pub fn granted<'a>(allow: &'a [HttpOrigin], target: &Target) -> Option<&'a HttpOrigin> {
    allow.iter().find(|origin| {
        origin.https == target.https
            && origin.port == target.port
            && match (&origin.host, &target.host) {
                (OriginHost::Name(name), Host::Name(host)) => name == host,
                (OriginHost::Below(parent), Host::Name(host)) => host
                    .strip_suffix(parent.as_str())
                    .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
                (OriginHost::Ip(ip), Host::Ip(host)) => ip.to_canonical() == host.to_canonical(),
                _ => false,
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins(list: &[&str]) -> Vec<HttpOrigin> {
        list.iter()
            .map(|o| HttpOrigin::try_from((*o).to_owned()).unwrap())
            .collect()
    }

    fn allowed(list: &[HttpOrigin], url: &str) -> bool {
        granted(list, &Target::parse(url).unwrap()).is_some()
    }

    #[test]
    fn urls_are_parsed_into_their_parts() {
        let t = Target::parse("https://API.Example.NET/v1/ip?q=1").unwrap();
        assert_eq!(t.host, Host::Name("api.example.net".into()));
        assert_eq!(
            (t.https, t.port, t.path.as_str()),
            (true, 443, "/v1/ip?q=1")
        );
        assert_eq!(t.authority(), "api.example.net");
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(t.host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!((t.port, t.path.as_str()), (8080, "/"));
        assert_eq!(t.authority(), "127.0.0.1:8080");
        let t = Target::parse("http://[::1]:81/x").unwrap();
        assert_eq!(t.authority(), "[::1]:81");
        for bad in [
            "ftp://example.net/",
            "example.net/x",
            "http://user:pw@example.net/",
            "http://example.net:0/",
            "http://example.net:99999/",
            "http://exa mple.net/",
            "http://example.net/a b",
            "http://ex%41mple.net/",
            "http://example.net/#frag",
            "http://example.net/\r\nHost: evil",
            "http:///path",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_listed_origins_are_granted() {
        let list = origins(&[
            "https://api.example.net",
            "http://127.0.0.1:8080",
            "https://*.rep.example.org:8443/",
            "http://[::1]:9000",
        ]);
        assert!(allowed(&list, "https://api.example.net/v1"));
        assert!(allowed(&list, "https://api.example.net:443/v1"));
        assert!(!allowed(&list, "http://api.example.net/v1"), "scheme");
        assert!(!allowed(&list, "https://api.example.net:8443/v1"), "port");
        assert!(!allowed(&list, "https://x.api.example.net/"), "exact name");
        assert!(!allowed(&list, "https://api.example.net.evil.test/"));
        assert!(allowed(&list, "http://127.0.0.1:8080/check"));
        assert!(!allowed(&list, "http://127.0.0.1:8081/check"));
        assert!(!allowed(&list, "http://127.0.0.2:8080/check"));
        assert!(
            !allowed(&list, "http://localhost:8080/check"),
            "a name is not its address"
        );
        assert!(allowed(&list, "https://a.rep.example.org:8443/"));
        assert!(allowed(&list, "https://a.b.rep.example.org:8443/"));
        assert!(
            !allowed(&list, "https://rep.example.org:8443/"),
            "*. is below only"
        );
        assert!(!allowed(&list, "https://evilrep.example.org:8443/"));
        assert!(allowed(&list, "http://[::1]:9000/"));
        assert!(
            !allowed(&[], "https://api.example.net/"),
            "nothing by default"
        );
    }

    #[test]
    fn malformed_entries_are_refused() {
        for bad in [
            "api.example.net",
            "ftp://api.example.net",
            "https://api.example.net/path",
            "https://user@api.example.net",
            "https://api.example.net:0",
            "https://api.example.net:http",
            "https://",
            "https://*.",
            "https://[::1",
            "https://bad_name.example",
        ] {
            assert!(HttpOrigin::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
