//! `tidegate dkim keygen` and `tidegate dkim check`: make a signing key and the DNS record
//! to publish for it; look a published record up and say whether it matches the key.

use std::path::Path;

use anyhow::Context;
use hickory_resolver::proto::rr::{RData, RecordType};

use crate::config::Config;
use crate::dns::Dns;
use crate::sender_auth::keys::{self, Algorithm, SigningKey};

/// Writes a new key to `out` (mode 0600) and prints the zone-file line to publish.
pub fn keygen(
    domain: &str,
    selector: &str,
    out: &Path,
    algorithm: Algorithm,
    bits: usize,
) -> anyhow::Result<String> {
    if algorithm == Algorithm::Rsa && !(2048..=4096).contains(&bits) {
        anyhow::bail!("--bits must be between 2048 and 4096 (receivers refuse shorter RSA keys)");
    }
    let key = keys::generate(algorithm, bits, out)?;
    Ok(keys::zone_line(domain, selector, &key.record()))
}

/// What `check` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// The record publishes this key.
    Matches,
    /// A record is published, but for another key (or it cannot be read).
    Differs(String),
    /// Nothing is published.
    Missing(String),
}

/// Looks up `selector._domainkey.domain` with the configuration's resolver and compares
/// it with the key: `key_file`, or the `[[dkim_sign]]` entry for this domain and selector.
pub async fn check(
    config: &Config,
    domain: &str,
    selector: &str,
    key_file: Option<&Path>,
) -> anyhow::Result<Check> {
    let path = match key_file {
        Some(path) => path.to_owned(),
        None => config
            .dkim_sign
            .iter()
            .find(|k| k.domain.as_str() == domain.to_ascii_lowercase() && k.selector == selector)
            .map(|k| k.key_file.clone())
            .with_context(|| {
                format!("no [[dkim_sign]] for domain {domain} and selector {selector}: give --key")
            })?,
    };
    let key = SigningKey::load(&path)?;
    let dns = Dns::new(&config.dns).map_err(|e| anyhow::anyhow!(e))?;
    let resolver = dns.resolver().context("no DNS resolver")?;
    let name = format!("{selector}._domainkey.{}.", domain.trim_end_matches('.'));
    let records: Vec<String> = match resolver.lookup(name.as_str(), RecordType::TXT).await {
        Ok(lookup) => lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(txt) => Some(
                    txt.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect(),
        Err(e) if e.is_nx_domain() || e.is_no_records_found() => {
            return Ok(Check::Missing(format!("{name} has no TXT record")));
        }
        Err(e) => anyhow::bail!("looking up {name}: {e}"),
    };
    let wanted = key.public_record_value();
    for record in &records {
        let published = record
            .split(';')
            .filter_map(|tag| tag.split_once('='))
            .find(|(tag, _)| tag.trim() == "p")
            .map(|(_, value)| value.split_whitespace().collect::<String>());
        if published.as_deref() == Some(wanted.as_str()) {
            return Ok(Check::Matches);
        }
    }
    Ok(Check::Differs(format!(
        "{name} publishes {}, not this key's p={wanted}",
        records.join(" | ")
    )))
}
