//! DNS for plugins, answered by the host's `hickory-resolver` so a lookup awaits on tokio
//! instead of blocking a worker thread.

use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::bindings::tidegate::plugin::types::{DnsError, RecordType as Kind};
use crate::config::DnsConfig;

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
        let resolver = builder.build().map_err(|e| format!("DNS resolver: {e}"))?;
        Ok(Dns {
            resolver: Some(resolver),
        })
    }

    /// The resolver, if one could be built (delivery uses it for MX and address lookups).
    pub fn resolver(&self) -> Option<&TokioResolver> {
        self.resolver.as_ref()
    }

    /// Looks up `name` and renders the answers as text.
    pub async fn lookup(&self, name: &str, kind: Kind) -> Result<Vec<String>, DnsError> {
        let Some(resolver) = &self.resolver else {
            return Err(DnsError::Temporary("no DNS resolver configured".into()));
        };
        if name.is_empty() || name.len() > 253 {
            return Err(DnsError::Invalid("bad name length".into()));
        }
        let record_type = match kind {
            Kind::A => RecordType::A,
            Kind::Aaaa => RecordType::AAAA,
            Kind::Mx => RecordType::MX,
            Kind::Txt => RecordType::TXT,
            Kind::Ptr => RecordType::PTR,
        };
        // Names from plugins are absolute: never let a search domain turn a DNSBL query
        // into a query about something else.
        let fqdn = crate::outbound::lookup::absolute(name);
        match resolver.lookup(fqdn.as_str(), record_type).await {
            Ok(lookup) => {
                let answers: Vec<String> = lookup
                    .answers()
                    .iter()
                    .filter(|r| r.record_type() == record_type)
                    .map(|r| render(&r.data))
                    .collect();
                if answers.is_empty() {
                    Err(DnsError::NoRecords)
                } else {
                    Ok(answers)
                }
            }
            Err(e) if e.is_nx_domain() => Err(DnsError::NotFound),
            Err(e) if e.is_no_records_found() => Err(DnsError::NoRecords),
            Err(e) => Err(DnsError::Temporary(e.to_string())),
        }
    }
}

fn render(data: &RData) -> String {
    match data {
        RData::TXT(txt) => txt
            .txt_data
            .iter()
            .map(|part| String::from_utf8_lossy(part).into_owned())
            .collect(),
        other => other.to_string(),
    }
}
