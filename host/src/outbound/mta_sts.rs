//! MTA-STS (RFC 8461): a domain publishes, over HTTPS, which MX hosts are genuine and that
//! they must be reached over verified TLS. When enabled, delivery to a domain with an
//! `enforce` policy goes only to listed MX hosts, only over TLS with a certificate valid
//! for the MX name; `testing` policies are only logged.
//!
//! Policies are cached for their `max_age` (capped), keyed by domain, and refreshed when
//! the `_mta-sts` TXT record's `id` changes. RFC 8461 §5 has senders keep them across
//! restarts (an attacker who blocks the policy fetch after a restart must not be able to
//! downgrade delivery): the cache is also written, atomically and bounded, to
//! `<spool>/mta-sts.json` and read back at start, expired policies left out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use hickory_resolver::proto::rr::{RData, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::dns::Dns;

/// The largest policy file accepted (RFC 8461 §3.2 suggests 64 KiB).
const MAX_POLICY: usize = 64 * 1024;
/// Policies are kept no longer than this, whatever `max_age` says (RFC 8461 §3.2: 1 year).
const MAX_AGE_CAP: Duration = Duration::from_secs(31_557_600);
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(60);
/// Policies kept (in memory and in the file); past it the soonest to expire go first.
const MAX_POLICIES: usize = 10_000;
/// The largest policy file read back at start.
const MAX_STORE: u64 = 16 * 1024 * 1024;
/// MX patterns kept per policy, and the longest pattern or id.
const MAX_MX: usize = 64;
const MAX_NAME: usize = 253;

/// What a policy asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Deliver only to listed MX hosts over verified TLS.
    Enforce,
    /// Report (log) failures, deliver anyway.
    Testing,
    /// No policy.
    None,
}

/// A domain's policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The mode.
    pub mode: Mode,
    /// MX patterns: exact names, or `*.domain` for one leftmost label.
    pub mx: Vec<String>,
    /// How long the policy may be cached.
    pub max_age: Duration,
}

/// One policy as the store file keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    id: String,
    mode: String,
    mx: Vec<String>,
    max_age: u64,
    /// When it expires, in seconds since the epoch.
    expires: u64,
}

/// The store file: `{"version": 1, "policies": {domain: Stored}}`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StoreFile {
    version: u32,
    policies: HashMap<String, Stored>,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether a name read back from the file is one delivery could have stored.
fn plausible_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*' | b'_'))
}

/// The policies of a store file still valid now, checked like anything read from disk.
fn read_store(path: &Path) -> HashMap<String, Cached> {
    let mut cache = HashMap::new();
    let text = match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_STORE => {
            tracing::warn!(file = %path.display(), "MTA-STS policy store too large, ignored");
            return cache;
        }
        Ok(_) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the MTA-STS policy store");
                return cache;
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return cache,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot read the MTA-STS policy store");
            return cache;
        }
    };
    let file: StoreFile = match serde_json::from_str(&text) {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "MTA-STS policy store unreadable, ignored");
            return cache;
        }
    };
    let now = unix_now();
    for (domain, stored) in file.policies.into_iter().take(MAX_POLICIES) {
        let mode = match stored.mode.as_str() {
            "enforce" => Mode::Enforce,
            "testing" => Mode::Testing,
            "none" => Mode::None,
            _ => continue,
        };
        let valid = plausible_name(&domain)
            && !stored.id.is_empty()
            && stored.id.len() <= 64
            && stored.id.bytes().all(|b| b.is_ascii_graphic())
            && stored.mx.len() <= MAX_MX
            && stored.mx.iter().all(|mx| plausible_name(mx))
            && stored.expires > now;
        if !valid {
            continue;
        }
        let remaining = Duration::from_secs(stored.expires - now).min(MAX_AGE_CAP);
        let policy = Policy {
            mode,
            mx: stored.mx,
            max_age: Duration::from_secs(stored.max_age).min(MAX_AGE_CAP),
        };
        cache.insert(
            domain,
            (Arc::new(policy), stored.id, Instant::now() + remaining),
        );
    }
    cache
}

/// Writes `bytes` to `path` through a temporary file and a rename, so a crash leaves the
/// old file or the new one, never half of one.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

impl Policy {
    /// Whether an MX host name matches one of the policy's patterns.
    pub fn allows(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.mx
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(parent) => host
                    .split_once('.')
                    .is_some_and(|(label, rest)| !label.is_empty() && rest == parent),
                None => *pattern == host,
            })
    }
}

/// Parses a policy file (RFC 8461 §3.2): `key: value` lines.
pub fn parse_policy(text: &str) -> Result<Policy, String> {
    let mut version = None;
    let mut mode = None;
    let mut mx = Vec::new();
    let mut max_age = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "version" => version = Some(value.to_owned()),
            "mode" => {
                mode = Some(match value {
                    "enforce" => Mode::Enforce,
                    "testing" => Mode::Testing,
                    "none" => Mode::None,
                    other => return Err(format!("unknown mode `{other}`")),
                })
            }
            "mx" => mx.push(value.trim_end_matches('.').to_ascii_lowercase()),
            "max_age" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| format!("bad max_age `{value}`"))?;
                max_age = Some(Duration::from_secs(secs).min(MAX_AGE_CAP));
            }
            _ => {}
        }
    }
    if version.as_deref() != Some("STSv1") {
        return Err("version is not STSv1".into());
    }
    let mode = mode.ok_or("no mode")?;
    let max_age = max_age.ok_or("no max_age")?;
    if mode != Mode::None && mx.is_empty() {
        return Err("no mx".into());
    }
    Ok(Policy { mode, mx, max_age })
}

/// A cached policy: the policy, the TXT `id` it was fetched under, and when it expires.
type Cached = (Arc<Policy>, String, Instant);

/// Fetches and caches policies.
pub struct MtaSts {
    https: TlsConnector,
    port: u16,
    cache: Mutex<HashMap<String, Cached>>,
    /// The file the cache is kept in, and the generation last written to it.
    store: Option<(PathBuf, Arc<Mutex<u64>>)>,
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for MtaSts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtaSts")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl MtaSts {
    /// Policies fetched with `https` (verifying the web PKI, or a lab CA) on `port` (443).
    pub fn new(https: TlsConnector, port: u16) -> MtaSts {
        MtaSts {
            https,
            port,
            cache: Mutex::new(HashMap::new()),
            store: None,
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Keeps the policies in `path` too, starting from those it holds.
    pub fn stored_in(mut self, path: PathBuf) -> MtaSts {
        let loaded = read_store(&path);
        if !loaded.is_empty() {
            tracing::info!(policies = loaded.len(), file = %path.display(), "MTA-STS policies read back");
        }
        self.cache = Mutex::new(loaded);
        self.store = Some((path, Arc::new(Mutex::new(0))));
        self
    }

    /// Writes the cache to the store file (in the background, newest generation wins).
    fn persist(&self) {
        let Some((path, written)) = &self.store else {
            return;
        };
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let now_instant = Instant::now();
        let now = unix_now();
        let file = {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            StoreFile {
                version: 1,
                policies: cache
                    .iter()
                    .filter(|(_, (_, _, expires))| *expires > now_instant)
                    .map(|(domain, (policy, id, expires))| {
                        let mode = match policy.mode {
                            Mode::Enforce => "enforce",
                            Mode::Testing => "testing",
                            Mode::None => "none",
                        };
                        let stored = Stored {
                            id: id.clone(),
                            mode: mode.to_owned(),
                            mx: policy.mx.clone(),
                            max_age: policy.max_age.as_secs(),
                            expires: now + (*expires - now_instant).as_secs(),
                        };
                        (domain.clone(), stored)
                    })
                    .collect(),
            }
        };
        let Ok(bytes) = serde_json::to_vec(&file) else {
            return;
        };
        let path = path.clone();
        let written = Arc::clone(written);
        tokio::task::spawn_blocking(move || {
            let mut last = written.lock().unwrap_or_else(PoisonError::into_inner);
            if *last >= generation {
                return;
            }
            match write_atomically(&path, &bytes) {
                Ok(()) => *last = generation,
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot write the MTA-STS policy store")
                }
            }
        });
    }

    /// The policy of `domain`, if it has one. Failures to fetch a policy announced in DNS
    /// fall back to a cached one, or to none (RFC 8461 §5: a sender without a policy
    /// delivers as usual).
    pub async fn policy(&self, dns: &Dns, domain: &str) -> Option<Arc<Policy>> {
        self.policy_and_fetch_error(dns, domain).await.0
    }

    /// [`policy`](MtaSts::policy), and why fetching a policy the domain announces failed
    /// this time, if it did (TLS reporting's `sts-policy-fetch-error`).
    pub async fn policy_and_fetch_error(
        &self,
        dns: &Dns,
        domain: &str,
    ) -> (Option<Arc<Policy>>, Option<String>) {
        let id = txt_id(dns, domain).await;
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(domain)
            .cloned();
        if let Some((policy, cached_id, expires)) = &cached
            && Instant::now() < *expires
            && id.as_ref().is_none_or(|id| id == cached_id)
        {
            return (Some(Arc::clone(policy)), None);
        }
        let Some(id) = id else {
            return (cached.map(|(policy, ..)| policy), None);
        };
        match self.fetch(dns, domain).await {
            Ok(policy) => {
                let policy = Arc::new(policy);
                let expires = Instant::now() + policy.max_age;
                {
                    let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
                    let now = Instant::now();
                    cache.retain(|_, (_, _, expires)| *expires > now);
                    if cache.len() >= MAX_POLICIES
                        && let Some(soonest) = cache
                            .iter()
                            .min_by_key(|(_, (_, _, expires))| *expires)
                            .map(|(domain, _)| domain.clone())
                    {
                        cache.remove(&soonest);
                    }
                    cache.insert(domain.to_owned(), (Arc::clone(&policy), id, expires));
                }
                self.persist();
                (Some(policy), None)
            }
            Err(e) => {
                tracing::warn!(%domain, error = %e, "MTA-STS policy fetch failed");
                (cached.map(|(policy, ..)| policy), Some(e))
            }
        }
    }

    async fn fetch(&self, dns: &Dns, domain: &str) -> Result<Policy, String> {
        let host = format!("mta-sts.{domain}");
        let body = tokio::time::timeout(FETCH_TIMEOUT, self.get(dns, &host))
            .await
            .map_err(|_| "timed out".to_owned())??;
        parse_policy(&body)
    }

    /// `GET /.well-known/mta-sts.txt` over HTTPS, no redirects (RFC 8461 §3.3).
    async fn get(&self, dns: &Dns, host: &str) -> Result<String, String> {
        // The gateway's resolver, not the system's: the same answers as for delivery.
        let addrs = super::lookup::resolve_host(dns, host, self.port)
            .await
            .map_err(|e| format!("resolving {host}: {e}"))?;
        let tcp = TcpStream::connect(addrs.as_slice())
            .await
            .map_err(|e| format!("connect {host}: {e}"))?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| format!("{host}: {e}"))?;
        let mut tls = self
            .https
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {host}: {e}"))?;
        let request = format!(
            "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Tidegate\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
        );
        tls.write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match tls.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    response.extend_from_slice(&chunk[..n]);
                    if response.len() > MAX_POLICY + 8192 {
                        return Err("response too large".into());
                    }
                }
                // Servers often close without a TLS close_notify; what arrived is whole
                // when its length says so (checked below).
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e.to_string()),
            }
        }
        parse_response(&response)
    }
}

/// Extracts the body of a `200` HTTP/1.1 response (Content-Length, chunked, or up to the
/// end of the connection).
fn parse_response(response: &[u8]) -> Result<String, String> {
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&response[..split]).map_err(|_| "headers not UTF-8")?;
    let mut body = response[split + 4..].to_vec();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        return Err(format!("HTTP status `{status}`"));
    }
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        }
    }
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(length) = length {
        if body.len() < length {
            return Err("truncated body".into());
        }
        body.truncate(length);
    }
    if body.len() > MAX_POLICY {
        return Err("policy too large".into());
    }
    String::from_utf8(body).map_err(|_| "policy not UTF-8".to_owned())
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("bad chunk")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 || out.len() + size > MAX_POLICY {
            return Err("bad chunk".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// The `id` of the domain's `_mta-sts` TXT record (`v=STSv1; id=...`), if it has one.
async fn txt_id(dns: &Dns, domain: &str) -> Option<String> {
    let resolver = dns.resolver()?;
    let name = format!("_mta-sts.{domain}.");
    let lookup = resolver.lookup(name.as_str(), RecordType::TXT).await.ok()?;
    let records: Vec<String> = lookup
        .answers()
        .iter()
        .filter_map(|r| match &r.data {
            RData::TXT(txt) => Some(
                txt.txt_data
                    .iter()
                    .map(|part| String::from_utf8_lossy(part).into_owned())
                    .collect::<String>(),
            ),
            _ => None,
        })
        .filter(|text| text.starts_with("v=STSv1"))
        .collect();
    // RFC 8461 §3.1: more than one STSv1 record means no policy.
    let [record] = records.as_slice() else {
        return None;
    };
    record.split(';').find_map(|field| {
        field
            .trim()
            .strip_prefix("id=")
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_store_keeps_valid_policies_and_drops_expired_or_hostile_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mta-sts.json");
        let later = unix_now() + 3600;
        let text = format!(
            r#"{{"version":1,"policies":{{
            "good.test":{{"id":"abc1","mode":"enforce","mx":["mx.good.test"],"max_age":86400,"expires":{later}}},
            "old.test":{{"id":"abc1","mode":"enforce","mx":["mx.old.test"],"max_age":86400,"expires":1}},
            "bad mode.test":{{"id":"abc1","mode":"enforce","mx":["mx"],"max_age":1,"expires":{later}}},
            "weird.test":{{"id":"abc1","mode":"sometimes","mx":["mx"],"max_age":1,"expires":{later}}}
            }}}}"#
        );
        std::fs::write(&path, text).unwrap();
        let cache = read_store(&path);
        assert_eq!(cache.keys().collect::<Vec<_>>(), vec!["good.test"]);
        assert!(cache["good.test"].0.allows("mx.good.test"));
        // Garbage is ignored, not fatal.
        std::fs::write(&path, "{not json").unwrap();
        assert!(read_store(&path).is_empty());
        assert!(read_store(&dir.path().join("missing.json")).is_empty());
    }

    #[test]
    fn policies_parse_and_match() {
        let policy = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmx: *.backup.example.test\r\nmax_age: 86400\r\n",
        )
        .unwrap();
        assert_eq!(policy.mode, Mode::Enforce);
        assert!(policy.allows("mail.example.test."));
        assert!(policy.allows("MX1.backup.example.test"));
        assert!(!policy.allows("a.b.backup.example.test"));
        assert!(!policy.allows("backup.example.test"));
        assert!(!policy.allows("evil.test"));
        assert!(parse_policy("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n").is_err());
        assert!(parse_policy("version: STSv1\nmode: sometimes\nmx: a\nmax_age: 1\n").is_err());
    }

    #[test]
    fn http_responses_are_read_by_length_chunks_or_close() {
        let by_length = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello trailing";
        assert_eq!(parse_response(by_length).unwrap(), "hello");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "hello");
        let closed = b"HTTP/1.0 200 OK\r\n\r\nhello";
        assert_eq!(parse_response(closed).unwrap(), "hello");
        assert!(parse_response(b"HTTP/1.1 301 Moved\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }
}
