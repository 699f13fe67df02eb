//! Where mail for a domain goes: MX resolution per RFC 5321 §5.1, with null MX (RFC 7505).
//!
//! MX records are tried by preference, those of equal preference in random order; a domain
//! without MX records is its own mail host (the implicit MX); a null MX (`MX 0 .`) means the
//! domain takes no mail at all. Every address of every host is a candidate, IPv6 and IPv4.

use std::net::{IpAddr, SocketAddr};

use hickory_resolver::proto::rr::{RData, RecordType};

use crate::dns::Dns;

/// One next-hop host and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// The host name (or the literal address).
    pub name: String,
    /// Addresses to try, in order.
    pub addrs: Vec<SocketAddr>,
}

/// Why a destination could not be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// The destination does not exist or takes no mail: bounce.
    Permanent {
        /// The RFC 3463 code, e.g. `5.1.10` for a null MX.
        enhanced: &'static str,
        /// What happened.
        why: String,
    },
    /// DNS failed for now: try again later.
    Temporary(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::Permanent { enhanced, why } => write!(f, "{enhanced} {why}"),
            LookupError::Temporary(why) => write!(f, "4.4.3 {why}"),
        }
    }
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
pub fn parse_host_port(text: &str) -> Option<(String, u16)> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Some((addr.ip().to_string(), addr.port()));
    }
    let (host, port) = text.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    valid.then(|| (host.to_owned(), port))
}

/// The addresses of `host` (a literal address is itself).
pub async fn resolve_host(
    dns: &Dns,
    host: &str,
    port: u16,
) -> Result<Vec<SocketAddr>, LookupError> {
    if let Ok(ip) = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let resolver = dns
        .resolver()
        .ok_or_else(|| LookupError::Temporary("no DNS resolver".into()))?;
    let fqdn = absolute(host);
    // A first, AAAA only when there is no A record (as before). Each answer is judged on
    // its own: a resolver's combined A-then-AAAA lookup reports only the last one, so a
    // temporary failure of the A query followed by an empty AAAA answer would look like
    // "no addresses" and bounce mail that a retry would deliver.
    let v4 = addresses(resolver, &fqdn, RecordType::A).await;
    if let Answer::Found(ips) = &v4 {
        return Ok(ips.iter().map(|&ip| SocketAddr::new(ip, port)).collect());
    }
    let v6 = addresses(resolver, &fqdn, RecordType::AAAA).await;
    match (v4, v6) {
        (_, Answer::Found(ips)) => Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect()),
        (Answer::Failed(why), _) | (_, Answer::Failed(why)) => {
            Err(LookupError::Temporary(format!("looking up {host}: {why}")))
        }
        (Answer::NxDomain, _) | (_, Answer::NxDomain) => Err(LookupError::Permanent {
            enhanced: "5.1.2",
            why: format!("host {host} does not exist"),
        }),
        _ => Err(LookupError::Permanent {
            enhanced: "5.1.2",
            why: format!("host {host} has no addresses"),
        }),
    }
}

/// What one address query (A or AAAA) said.
enum Answer {
    /// Addresses (at least one).
    Found(Vec<IpAddr>),
    /// The name does not exist (NXDOMAIN): permanent.
    NxDomain,
    /// The name exists but has no record of this type: permanent.
    NoData,
    /// No usable answer (SERVFAIL, REFUSED, a timeout...): worth retrying.
    Failed(String),
}

async fn addresses(
    resolver: &hickory_resolver::TokioResolver,
    fqdn: &str,
    record_type: RecordType,
) -> Answer {
    match resolver.lookup(fqdn, record_type).await {
        Ok(lookup) => {
            let ips: Vec<IpAddr> = lookup
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(IpAddr::V4(a.0)),
                    RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                    _ => None,
                })
                .collect();
            if ips.is_empty() {
                Answer::NoData
            } else {
                Answer::Found(ips)
            }
        }
        Err(e) if e.is_nx_domain() => Answer::NxDomain,
        Err(e) if e.is_no_records_found() => Answer::NoData,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// The mail hosts of `domain`, in the order to try them.
pub async fn mx_hosts(dns: &Dns, domain: &str, port: u16) -> Result<Vec<NextHop>, LookupError> {
    // An address literal (user@[192.0.2.1]) names its host directly.
    if domain.starts_with('[') {
        let literal = domain
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_start_matches("IPv6:");
        return match literal.parse::<IpAddr>() {
            Ok(ip) => Ok(vec![NextHop {
                name: domain.to_owned(),
                addrs: vec![SocketAddr::new(ip, port)],
            }]),
            Err(_) => Err(LookupError::Permanent {
                enhanced: "5.1.2",
                why: format!("bad address literal {domain}"),
            }),
        };
    }
    let resolver = dns
        .resolver()
        .ok_or_else(|| LookupError::Temporary("no DNS resolver".into()))?;
    let mut exchanges: Vec<(u16, String)> = match resolver
        .lookup(absolute(domain).as_str(), RecordType::MX)
        .await
    {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::MX(mx) => Some((mx.preference, mx.exchange.to_ascii())),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_nx_domain() => {
            return Err(LookupError::Permanent {
                enhanced: "5.1.2",
                why: format!("domain {domain} does not exist"),
            });
        }
        Err(e) if e.is_no_records_found() => Vec::new(),
        Err(e) => {
            return Err(LookupError::Temporary(format!(
                "MX lookup for {domain}: {e}"
            )));
        }
    };
    // RFC 7505: a single MX whose exchange is the root means "no mail here".
    if exchanges.len() == 1 && (exchanges[0].1 == "." || exchanges[0].1.is_empty()) {
        return Err(LookupError::Permanent {
            enhanced: "5.1.10",
            why: format!("domain {domain} accepts no mail (null MX)"),
        });
    }
    exchanges.retain(|(_, name)| name != "." && !name.is_empty());
    if exchanges.is_empty() {
        // RFC 5321 §5.1: no MX records, so the domain itself is the mail host.
        let addrs = resolve_host(dns, domain, port).await?;
        return Ok(vec![NextHop {
            name: domain.to_owned(),
            addrs,
        }]);
    }
    order_by_preference(&mut exchanges);
    let mut hops = Vec::with_capacity(exchanges.len());
    let mut last_error = None;
    for (_, name) in exchanges {
        let host = name.trim_end_matches('.').to_owned();
        match resolve_host(dns, &host, port).await {
            Ok(addrs) => hops.push(NextHop { name: host, addrs }),
            Err(e) => last_error = Some(e),
        }
    }
    if hops.is_empty() {
        // MX hosts that do not resolve are a temporary problem for the sender's MTA:
        // their DNS may be fixed before the message expires.
        return Err(LookupError::Temporary(match last_error {
            Some(e) => format!("no MX host of {domain} resolves: {e}"),
            None => format!("no MX host of {domain} resolves"),
        }));
    }
    Ok(hops)
}

/// Sorts by preference and shuffles equal preferences (RFC 5321 §5.1 asks senders to
/// spread load over equal-preference hosts).
fn order_by_preference(exchanges: &mut [(u16, String)]) {
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new();
    exchanges.sort_by_key(|(preference, name)| (*preference, random.hash_one(name)));
}

/// `name` as an absolute DNS name (with its trailing dot), so no search domain applies.
pub(crate) fn absolute(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("127.0.0.1:2526"),
            Some(("127.0.0.1".into(), 2526))
        );
        assert_eq!(parse_host_port("[::1]:25"), Some(("::1".into(), 25)));
        assert_eq!(
            parse_host_port("mx.example.test:587"),
            Some(("mx.example.test".into(), 587))
        );
        assert_eq!(parse_host_port("mx.example.test"), None);
        assert_eq!(parse_host_port("bad host:25"), None);
        assert_eq!(parse_host_port("host:99999"), None);
    }

    #[test]
    fn equal_preferences_keep_the_preference_order() {
        let mut exchanges = vec![
            (20, "c".to_owned()),
            (10, "a".to_owned()),
            (10, "b".to_owned()),
            (5, "z".to_owned()),
        ];
        order_by_preference(&mut exchanges);
        let prefs: Vec<u16> = exchanges.iter().map(|(p, _)| *p).collect();
        assert_eq!(prefs, vec![5, 10, 10, 20]);
    }
}
