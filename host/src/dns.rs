//! The gateway's one resolver and DNS cache (`hickory-resolver`, configured by `[dns]`):
//! delivery (MX, addresses, MTA-STS), plugins and sender authentication all ask through it,
//! so every answer is cached once, by its TTL, and every lookup has the same timeouts.
//! With `[dns] dnssec` it also gives DNSSEC-validated answers, with their proof, to DANE
//! ([`Dns::authenticated`]), from a validating resolver of its own.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::DnsConfig;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::dnssec::{Proof, TrustAnchors};
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::{ResolverBuilder, TokioResolver};

/// The resolver, or why there is none.
#[derive(Debug, Default)]
pub struct Dns {
    resolver: Option<TokioResolver>,
    /// The DNSSEC-validating resolver (`[dns] dnssec`), which only DANE asks.
    validating: Option<TokioResolver>,
    /// The zones of a private trust anchor (`dnssec_trust_anchor`): names outside them
    /// have no chain of trust, so they are insecure without asking (the validator would
    /// call them bogus). Empty with the root's anchors.
    anchored: Vec<String>,
}

/// The largest trust anchor file read (a handful of DNSKEY records).
const MAX_TRUST_ANCHOR_FILE: u64 = 64 * 1024;

/// Reads `[dns] dnssec_trust_anchor`: DNSKEY records in zone-file syntax.
pub fn trust_anchors(path: &Path) -> Result<TrustAnchors, String> {
    read_trust_anchors(path).map(|(anchors, _)| anchors)
}

/// The trust anchors of the file, and the zones they are for (lowercase, without the
/// final dot; the root is the empty name).
fn read_trust_anchors(path: &Path) -> Result<(TrustAnchors, Vec<String>), String> {
    let shown = path.display();
    let size = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: cannot read: {e}"))?
        .len();
    if size > MAX_TRUST_ANCHOR_FILE {
        return Err(format!(
            "{shown}: larger than {MAX_TRUST_ANCHOR_FILE} bytes"
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let anchors: TrustAnchors = text
        .parse()
        .map_err(|e| format!("{shown}: not DNSKEY records: {e}"))?;
    let zones: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with(';') && line.contains("DNSKEY"))
        .filter_map(|line| line.split_whitespace().next())
        .map(|name| name.trim_end_matches('.').to_ascii_lowercase())
        .collect();
    if zones.is_empty() {
        return Err(format!("{shown}: no DNSKEY record in it"));
    }
    Ok((anchors, zones))
}

/// What DNSSEC says about one RRset (RFC 4035 §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authenticated {
    /// Validated up to a trust anchor: these records, or none (a secure denial of
    /// existence, NXDOMAIN or NODATA).
    Secure(Vec<RData>),
    /// No chain of trust reaches it (an unsigned zone), or the resolver does not
    /// validate: the data cannot be relied on for security decisions.
    Insecure,
    /// A chain of trust should reach it but the check failed (bad or expired signatures,
    /// missing proofs): possibly an attack.
    Bogus(String),
    /// No answer (time-out, SERVFAIL...): try again later.
    Failed(String),
}

/// A resolver builder for `[dns]`: its name servers (or the system's), timeouts, cache.
fn builder(config: &DnsConfig) -> Result<ResolverBuilder<TokioRuntimeProvider>, String> {
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system DNS configuration: {e}"))?
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|addr| {
                let mut udp = ConnectionConfig::udp();
                udp.port = addr.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = addr.port();
                NameServerConfig::new(addr.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = Duration::from_millis(config.timeout_ms.unwrap_or(2000));
    options.attempts = 2;
    // One cache for every user of the resolver; entries live as long as their TTL.
    options.cache_size = 8192;
    if !config.nameservers.is_empty() {
        // Name servers given explicitly are the whole truth: /etc/hosts is the local
        // machine's business, not the mail system's (Postfix's smtp_host_lookup = dns).
        options.use_hosts_file = hickory_resolver::config::ResolveHosts::Never;
    }
    Ok(builder)
}

impl Dns {
    /// Builds a resolver from `[dns]`: the configured name servers, or the system's; and
    /// beside it, when `[dns] dnssec` asks, a validating one.
    pub fn new(config: &DnsConfig) -> Result<Dns, String> {
        let resolver = builder(config)?
            .build()
            .map_err(|e| format!("DNS resolver: {e}"))?;
        let mut anchored = Vec::new();
        let validating = if config.validates() {
            // DNSSEC (RFC 4035) on its own resolver (same servers, timeouts, its own
            // cache): every answer it gives is checked up to a trust anchor and marked
            // secure or insecure, or refused as bogus. Only DANE asks it
            // (`authenticated`); every other lookup stays as it was, so a zone with broken
            // signatures, or names outside a private trust anchor's zones, can still be
            // mailed without DANE, as RFC 7672 wants.
            let mut builder = builder(config)?;
            builder.options_mut().validate = true;
            if let Some(path) = &config.dnssec_trust_anchor {
                let (trusted, zones) = read_trust_anchors(path)?;
                builder = builder.with_trust_anchor(Arc::new(trusted));
                if !zones.iter().any(String::is_empty) {
                    anchored = zones;
                }
            }
            Some(
                builder
                    .build()
                    .map_err(|e| format!("DNSSEC-validating resolver: {e}"))?,
            )
        } else {
            None
        };
        Ok(Dns {
            resolver: Some(resolver),
            validating,
            anchored,
        })
    }

    /// The resolver, if one could be built (delivery uses it for MX and address lookups).
    pub fn resolver(&self) -> Option<&TokioResolver> {
        self.resolver.as_ref()
    }

    /// Whether DNSSEC-validated answers can be had ([`Dns::authenticated`]).
    pub fn validating(&self) -> bool {
        self.validating.is_some()
    }

    /// The records of `name` (absolute) of `record_type`, with what DNSSEC proves about
    /// them. Without validation everything is [`Authenticated::Insecure`].
    pub async fn authenticated(&self, name: &str, record_type: RecordType) -> Authenticated {
        let Some(resolver) = self.validating.as_ref() else {
            return Authenticated::Insecure;
        };
        if !self.anchored.is_empty() {
            let lower = name.trim_end_matches('.').to_ascii_lowercase();
            let under = |zone: &String| {
                lower == *zone
                    || lower
                        .strip_suffix(zone.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            };
            if !self.anchored.iter().any(under) {
                return Authenticated::Insecure;
            }
        }
        match resolver.lookup(name, record_type).await {
            Ok(lookup) => {
                let wanted: Vec<_> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == record_type)
                    .collect();
                if wanted.is_empty() {
                    // Only a CNAME chain or other types: nothing to rely on.
                    return Authenticated::Insecure;
                }
                if wanted.iter().any(|r| r.proof == Proof::Bogus) {
                    return Authenticated::Bogus(format!("{name} {record_type}: bad signatures"));
                }
                // An RRset is secure only when every record (and any CNAME before it) is.
                if lookup.answers().iter().all(|r| r.proof == Proof::Secure) {
                    Authenticated::Secure(wanted.into_iter().map(|r| r.data.clone()).collect())
                } else {
                    Authenticated::Insecure
                }
            }
            Err(NetError::Dns(DnsError::DnssecBogus)) => {
                Authenticated::Bogus(format!("{name} {record_type}: DNSSEC validation failed"))
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                // A denial is secure when its proofs (the SOA and NSEC/NSEC3 records of
                // the authority section) were validated.
                let soa_secure = none
                    .soa
                    .as_ref()
                    .is_some_and(|soa| soa.proof == Proof::Secure);
                let authorities_secure = none.authorities.as_ref().is_some_and(|records| {
                    !records.is_empty() && records.iter().all(|r| r.proof == Proof::Secure)
                });
                if soa_secure || authorities_secure {
                    Authenticated::Secure(Vec::new())
                } else {
                    Authenticated::Insecure
                }
            }
            Err(e) => Authenticated::Failed(format!("{name} {record_type}: {e}")),
        }
    }
}

/// How long finding a client's name may take at most, PTR and forward lookups together.
const REVERSE_DEADLINE: Duration = Duration::from_secs(3);
/// PTR names checked for one address (a host with dozens of names gets none).
const MAX_PTR_NAMES: usize = 3;

impl Dns {
    /// The forward-confirmed reverse DNS name of `ip` (FCrDNS): a PTR name of the address
    /// whose own A/AAAA records include the address again, lowercase, without the final
    /// dot. `None` when there is none, or the lookups fail or take too long.
    pub async fn confirmed_name(&self, ip: std::net::IpAddr) -> Option<String> {
        let resolver = self.resolver.as_ref()?;
        let lookup = async {
            let names = resolver.reverse_lookup(ip).await.ok()?;
            for name in names.answers().iter().take(MAX_PTR_NAMES) {
                let hickory_resolver::proto::rr::RData::PTR(ptr) = &name.data else {
                    continue;
                };
                let text = ptr.0.to_ascii();
                let Ok(addresses) = resolver.lookup_ip(text.as_str()).await else {
                    continue;
                };
                if addresses
                    .iter()
                    .any(|a| a.to_canonical() == ip.to_canonical())
                {
                    return Some(text.trim_end_matches('.').to_ascii_lowercase());
                }
            }
            None
        };
        tokio::time::timeout(REVERSE_DEADLINE, lookup)
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trust_anchor_file_names_its_zones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchor.key");
        std::fs::write(
            &path,
            "; a comment\nDane.Test. 3600 IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n",
        )
        .unwrap();
        let (_, zones) = read_trust_anchors(&path).unwrap();
        assert_eq!(zones, vec!["dane.test".to_owned()]);
        std::fs::write(&path, "; nothing\n").unwrap();
        assert!(trust_anchors(&path).is_err());
        std::fs::write(&path, "dane.test. IN DNSKEY not a key\n").unwrap();
        assert!(trust_anchors(&path).is_err());
    }

    #[tokio::test]
    async fn names_outside_a_private_anchor_are_insecure_without_asking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("anchor.key");
        std::fs::write(
            &path,
            "dane.test. 3600 IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==\n",
        )
        .unwrap();
        // A name server nobody answers on: only names under dane.test would be asked.
        let config = DnsConfig {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            timeout_ms: Some(100),
            dnssec: false,
            dnssec_trust_anchor: Some(path),
        };
        let dns = Dns::new(&config).unwrap();
        assert!(dns.validating());
        assert_eq!(
            dns.authenticated("evildane.test.", RecordType::MX).await,
            Authenticated::Insecure
        );
        assert!(matches!(
            dns.authenticated("mx.dane.test.", RecordType::MX).await,
            Authenticated::Failed(_) | Authenticated::Bogus(_)
        ));
    }
}
