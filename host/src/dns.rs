//! The gateway's one resolver and DNS cache (`hickory-resolver`, configured by `[dns]`):
//! delivery (MX, addresses, MTA-STS), plugins and sender authentication all ask through it,
//! so every answer is cached once, by its TTL, and every lookup has the same timeouts.

use std::time::Duration;

use crate::config::DnsConfig;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// The resolver, or why there is none.
#[derive(Debug, Default)]
pub struct Dns {
    resolver: Option<TokioResolver>,
}

impl Dns {
    /// Builds a resolver from `[dns]`: the configured name servers, or the system's.
    pub fn new(config: &DnsConfig) -> Result<Dns, String> {
        let builder = if config.nameservers.is_empty() {
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
        let mut builder = builder;
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
        let resolver = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(Dns {
            resolver: Some(resolver),
        })
    }

    /// The resolver, if one could be built (delivery uses it for MX and address lookups).
    pub fn resolver(&self) -> Option<&TokioResolver> {
        self.resolver.as_ref()
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
