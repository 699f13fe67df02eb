//! What plugins see of DNS: the gateway's resolver ([`crate::dns`]), answers rendered as
//! text, names always absolute.

use hickory_resolver::proto::rr::{RData, RecordType};

use super::bindings::tidegate::plugin::types::{DnsError, RecordType as Kind};
use crate::dns::Dns;

/// Looks up `name` for a plugin and renders the answers as text.
pub async fn lookup(dns: &Dns, name: &str, kind: Kind) -> Result<Vec<String>, DnsError> {
    let Some(resolver) = dns.resolver() else {
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
