//! The configuration file: one `Config` tree, loaded and validated as a whole.
//!
//! Every table denies unknown keys, because a typo in a mail gateway's policy must never be
//! silently ignored. Errors name the file, the line and the dotted key path
//! (`config.toml:7: listener[0].address: invalid socket address syntax`), so an operator
//! can fix them without guessing. Values are checked while they are deserialised (through
//! newtypes such as [`DomainName`] and [`Duration`]), which is what lets serde report the
//! exact position of a bad value; the few checks that span several keys run afterwards and
//! still point at a line.

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::Deserialize;

mod rollout;
mod shaping;
pub use rollout::{CanaryPolicy, PluginMode};
pub use shaping::{EgressAddress, EgressConfig, Pattern, Reaction, ShapingConfig, Window};

pub use crate::inbound::body::BareLineEndings;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The name this gateway uses in its greeting, EHLO reply and `Received:` headers.
    pub hostname: DomainName,
    /// How long sessions in progress may go on after SIGTERM/SIGINT before the process exits.
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
    /// How long after SIGTERM/SIGINT `/readyz` says "draining" while the listeners still
    /// accept, so a load balancer stops sending before they close (0 by default).
    #[serde(default)]
    pub drain_delay: Duration,
    /// The sockets to accept SMTP on; several may run at once.
    #[serde(rename = "listener")]
    pub listeners: Vec<ListenerConfig>,
    /// Where accepted messages are kept.
    pub spool: SpoolConfig,
    /// Who may send mail to where.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Bounds on sessions and messages.
    #[serde(default)]
    pub limits: Limits,
    /// Protocol choices for the inbound SMTP server.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// DNS resolution for plugins (and, later, delivery).
    #[serde(default)]
    pub dns: DnsConfig,
    /// The plugin runtime's shared settings.
    #[serde(default)]
    pub plugins: PluginRuntimeConfig,
    /// The delivery queue: retries, lifetime, concurrency.
    #[serde(default)]
    pub queue: QueueConfig,
    /// The outbound side: ports, timeouts, the local transport.
    #[serde(default)]
    pub delivery: DeliveryConfig,
    /// Static routes by recipient domain.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// The admin listener (metrics, health).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Certificates for STARTTLS and implicit TLS; TLS is off without them.
    #[serde(default)]
    pub tls: Option<crate::tls::TlsConfig>,
    /// SMTP AUTH.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// The plugins, in chain order.
    #[serde(default, rename = "plugin")]
    pub plugin_list: Vec<PluginConfig>,
    /// Milters (Sendmail/Postfix milter protocol) that listener chains may name.
    #[serde(default, rename = "milter")]
    pub milters: Vec<MilterConfig>,
    /// Postfix policy delegation services that listener chains may name.
    #[serde(default, rename = "policy_service")]
    pub policy_services: Vec<PolicyServiceConfig>,
    /// DKIM signing keys.
    #[serde(default, rename = "dkim_sign")]
    pub dkim_sign: Vec<DkimSignConfig>,
    /// ARC sealing of verified mail as it leaves.
    #[serde(default)]
    pub arc_seal: Option<ArcSealConfig>,
    /// Where delivery events (received, refused, delivered, ...) are sent.
    #[serde(default)]
    pub events: Vec<EventSinkConfig>,
    /// How fast, how much at once and when each destination is sent to.
    #[serde(default)]
    pub shaping: Vec<ShapingConfig>,
    /// SMTP TLS Reporting (RFC 8460): aggregate reports of MX deliveries' TLS to the
    /// recipient domains that publish a `_smtp._tls` record; off when absent.
    #[serde(default)]
    pub tls_report: Option<TlsReportConfig>,
    /// Pools of local addresses mail leaves from.
    #[serde(default)]
    pub egress: Vec<EgressConfig>,
    /// Where the plugin key/value store lives: in this process, or in Redis for a fleet.
    #[serde(default)]
    pub kv: KvConfig,
}

/// `[kv]`: the plugin key/value store's backend.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KvConfig {
    /// `memory` (the default: this gateway's own, gone at restart) or `redis` (shared by
    /// every gateway pointed at the same server).
    pub backend: KvBackendKind,
    /// redis: the server, `redis://[user:password@]host[:port][/db]`.
    pub url: Option<RedisUrl>,
    /// redis: connections kept to the server (each multiplexes concurrent calls).
    pub pool_size: usize,
    /// redis: the deadline of one connection attempt, in milliseconds.
    pub connect_timeout_ms: u64,
    /// redis: the deadline of one operation, in milliseconds (a plugin call's own
    /// `time_limit_ms` bounds it too).
    pub command_timeout_ms: u64,
    /// redis: what every key starts with, so several fleets (or other programs) can share a
    /// server.
    pub key_prefix: String,
}

impl Default for KvConfig {
    fn default() -> Self {
        KvConfig {
            backend: KvBackendKind::Memory,
            url: None,
            pool_size: 2,
            connect_timeout_ms: 500,
            command_timeout_ms: 500,
            key_prefix: "tidegate:".into(),
        }
    }
}

impl KvConfig {
    /// Checks that span keys; returns the key (under `kv.`) and the problem.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        match self.backend {
            KvBackendKind::Memory => {
                if self.url.is_some() {
                    return Err(("url", "`url` applies only to backend = \"redis\"".into()));
                }
            }
            KvBackendKind::Redis => {
                if self.url.is_none() {
                    return Err((
                        "url",
                        "backend = \"redis\" needs a `url` (redis://host:port/db)".into(),
                    ));
                }
            }
        }
        if !(1..=64).contains(&self.pool_size) {
            return Err(("pool_size", "must be between 1 and 64".into()));
        }
        if !(1..=60_000).contains(&self.connect_timeout_ms) {
            return Err(("connect_timeout_ms", "must be between 1 and 60000".into()));
        }
        if !(1..=60_000).contains(&self.command_timeout_ms) {
            return Err(("command_timeout_ms", "must be between 1 and 60000".into()));
        }
        if self.key_prefix.len() > 128 {
            return Err(("key_prefix", "at most 128 bytes".into()));
        }
        Ok(())
    }
}

/// Which KV backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KvBackendKind {
    /// In this process.
    #[default]
    Memory,
    /// A Redis (or Valkey) server.
    Redis,
}

/// A Redis server's URL, checked by the redis client's own parser when the file is read.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct RedisUrl(String);

impl RedisUrl {
    /// The URL as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A URL may carry a password: never in a log or a debug dump.
        match self.0.split_once('@') {
            Some((_, host)) => write!(f, "redis://***@{host}"),
            None => write!(f, "{}", self.0),
        }
    }
}

impl TryFrom<String> for RedisUrl {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        if !(text.starts_with("redis://") || text.starts_with("redis+unix://")) {
            return Err("a redis URL starts with redis:// (or redis+unix://)".into());
        }
        // Only parses; nothing is connected.
        redis::Client::open(text.as_str()).map_err(|e| format!("not a usable redis URL: {e}"))?;
        Ok(RedisUrl(text))
    }
}

/// One `[[events]]`: a sink that delivery events are written or posted to.
///
/// One flat table for both kinds (rather than a serde enum tagged by `kind`), so that a
/// bad value still reports its exact key and line; the keys that do not belong to the
/// sink's kind are refused by [`Config::validate`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventSinkConfig {
    /// `file` or `webhook`.
    pub kind: EventSinkKind,
    /// The name used in logs and metrics, and the webhook buffer's directory under
    /// `<spool>/events/`; the sink's index in the list when absent.
    #[serde(default)]
    pub name: Option<String>,
    /// Events queued in memory for this sink before new ones are dropped.
    #[serde(default = "default_event_queue")]
    pub queue_size: usize,
    /// file: the JSON-lines file; relative to the configuration file.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// file: rotate when the file would grow over this (default 100MB).
    #[serde(default)]
    pub max_size: Option<ByteSize>,
    /// file: rotated files kept (`events.jsonl.1` ... `.N`; default 5).
    #[serde(default)]
    pub keep: Option<u32>,
    /// webhook: the URL posted to (`http://` only).
    #[serde(default)]
    pub url: Option<String>,
    /// webhook: the file holding the HMAC secret (a trailing newline is ignored); relative
    /// to the configuration file.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// webhook: the most events in one POST (default 100).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// webhook: how long a partial batch waits for more events (default 1s).
    #[serde(default)]
    pub batch_wait: Option<Duration>,
    /// webhook: the deadline of one POST, connect to response read (default 10s).
    #[serde(default)]
    pub timeout: Option<Duration>,
    /// webhook: the most the on-disk buffer holds (default 64MiB); the oldest events are
    /// dropped over it.
    #[serde(default)]
    pub max_buffer: Option<ByteSize>,
    /// webhook: the first wait after a failed POST (default 1s); it doubles per failure.
    #[serde(default)]
    pub retry_min: Option<Duration>,
    /// webhook: the longest wait between retries (default 5m).
    #[serde(default)]
    pub retry_max: Option<Duration>,
}

/// What an `[[events]]` sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventSinkKind {
    /// JSON lines appended to a file, rotated by size.
    File,
    /// Batches POSTed to an HTTP endpoint from a durable buffer.
    Webhook,
}

fn default_event_queue() -> usize {
    10_000
}

impl EventSinkConfig {
    /// The name in logs, metrics and the buffer directory: `name`, or the index.
    pub fn label(&self, index: usize) -> String {
        self.name.clone().unwrap_or_else(|| index.to_string())
    }

    /// file: the size past which the file is rotated.
    pub fn file_max_size(&self) -> u64 {
        self.max_size.map_or(100_000_000, |s| s.0)
    }

    /// file: rotated files kept.
    pub fn file_keep(&self) -> u32 {
        self.keep.unwrap_or(5)
    }

    /// webhook: events per POST.
    pub fn webhook_batch_size(&self) -> usize {
        self.batch_size.unwrap_or(100)
    }

    /// webhook: how long a partial batch waits.
    pub fn webhook_batch_wait(&self) -> std::time::Duration {
        self.batch_wait
            .map_or(std::time::Duration::from_secs(1), |d| d.0)
    }

    /// webhook: the deadline of one POST.
    pub fn webhook_timeout(&self) -> std::time::Duration {
        self.timeout
            .map_or(std::time::Duration::from_secs(10), |d| d.0)
    }

    /// webhook: the on-disk buffer's bound, in octets.
    pub fn webhook_max_buffer(&self) -> u64 {
        self.max_buffer.map_or(64 << 20, |s| s.0)
    }

    /// webhook: the first and the longest wait between retries.
    pub fn webhook_retry(&self) -> (std::time::Duration, std::time::Duration) {
        let secs = std::time::Duration::from_secs;
        (
            self.retry_min.map_or(secs(1), |d| d.0),
            self.retry_max.map_or(secs(300), |d| d.0),
        )
    }

    /// The keys set that belong to the other kind, for validation.
    fn foreign_keys(&self) -> Vec<&'static str> {
        let file = [
            ("path", self.path.is_some()),
            ("max_size", self.max_size.is_some()),
            ("keep", self.keep.is_some()),
        ];
        let webhook = [
            ("url", self.url.is_some()),
            ("secret_file", self.secret_file.is_some()),
            ("batch_size", self.batch_size.is_some()),
            ("batch_wait", self.batch_wait.is_some()),
            ("timeout", self.timeout.is_some()),
            ("max_buffer", self.max_buffer.is_some()),
            ("retry_min", self.retry_min.is_some()),
            ("retry_max", self.retry_max.is_some()),
        ];
        let foreign: &[(&'static str, bool)] = match self.kind {
            EventSinkKind::File => &webhook,
            EventSinkKind::Webhook => &file,
        };
        foreign
            .iter()
            .filter(|(_, set)| *set)
            .map(|(k, _)| *k)
            .collect()
    }

    /// Checks one sink; returns the key (under `events[i].`) and the problem.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(key) = self.foreign_keys().first() {
            return Err((
                key,
                format!("`{key}` does not apply to a {:?} sink", self.kind),
            ));
        }
        if let Some(name) = &self.name
            && (name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        {
            return Err((
                "name",
                "1 to 64 letters, digits, `-` or `_` (it names a directory)".into(),
            ));
        }
        if !(1..=1_000_000).contains(&self.queue_size) {
            return Err(("queue_size", "must be between 1 and 1000000".into()));
        }
        match self.kind {
            EventSinkKind::File => {
                if self.path.is_none() {
                    return Err(("path", "a file sink needs a `path`".into()));
                }
                if self.file_max_size() < 4096 {
                    return Err(("max_size", "at least 4096 octets".into()));
                }
                if !(1..=1000).contains(&self.file_keep()) {
                    return Err(("keep", "must be between 1 and 1000".into()));
                }
            }
            EventSinkKind::Webhook => {
                let Some(url) = &self.url else {
                    return Err(("url", "a webhook sink needs a `url`".into()));
                };
                if let Err(problem) = check_webhook_url(url) {
                    return Err(("url", problem));
                }
                if self.secret_file.is_none() {
                    return Err((
                        "secret_file",
                        "a webhook sink needs a `secret_file` to sign its posts".into(),
                    ));
                }
                if !(1..=10_000).contains(&self.webhook_batch_size()) {
                    return Err(("batch_size", "must be between 1 and 10000".into()));
                }
                if self.webhook_batch_wait() > std::time::Duration::from_secs(3600) {
                    return Err(("batch_wait", "at most 1h".into()));
                }
                if self.webhook_timeout().is_zero() {
                    return Err(("timeout", "must be greater than 0".into()));
                }
                if self.webhook_max_buffer() < 64 * 1024 {
                    return Err(("max_buffer", "at least 64KiB".into()));
                }
                let (min, max) = self.webhook_retry();
                if min.is_zero() {
                    return Err(("retry_min", "must be greater than 0".into()));
                }
                if max < min {
                    return Err(("retry_max", "must be at least retry_min".into()));
                }
            }
        }
        Ok(())
    }
}

/// A webhook URL the sink can post to: `http://host[:port]/path`.
fn check_webhook_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https is not supported yet: post to http:// (loopback, or a local \
                        TLS-terminating proxy)"
                    .into(),
            );
        }
        _ => return Err(format!("`{url}` is not an http:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

/// `[arc_seal]`: seal the mail this gateway verified (RFC 8617) with this key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArcSealConfig {
    /// The sealing domain (`d=`).
    pub domain: DomainName,
    /// The selector (`s=`).
    pub selector: String,
    /// The RSA private key, PEM; relative to the configuration file.
    pub key_file: PathBuf,
}

/// One `[[plugin]]`: a WebAssembly component and how to run it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The name used in logs, metrics and listener chains.
    pub name: String,
    /// The component file; a relative path is relative to the configuration file.
    pub path: PathBuf,
    /// What happens when the plugin fails (trap, CPU or memory limit, invalid answer).
    #[serde(default)]
    pub on_error: OnError,
    /// The most linear memory one instance may use, in MiB.
    #[serde(default = "default_plugin_memory_mib")]
    pub memory_limit_mib: u64,
    /// The CPU budget of one hook call, in milliseconds of guest execution. It is counted
    /// in instructions (fuel), so a busy machine never cuts a healthy plugin short.
    #[serde(default = "default_plugin_cpu_ms")]
    pub cpu_limit_ms: u64,
    /// The wall-clock deadline of one hook call, in milliseconds: guest code, host calls
    /// (DNS, KV) and WASI clock waits all count. Past it the call is abandoned like a trap.
    #[serde(default = "default_plugin_time_ms")]
    pub time_limit_ms: u64,
    /// What the plugin's key/value namespace may hold: bytes of keys and values.
    #[serde(default = "default_kv_max_bytes")]
    pub kv_max_bytes: u64,
    /// What the plugin's key/value namespace may hold: live keys.
    #[serde(default = "default_kv_max_keys")]
    pub kv_max_keys: u64,
    /// Distinct counter names the plugin may create with `counter-add`.
    #[serde(default = "default_max_counters")]
    pub max_counters: u32,
    /// Log lines per second the plugin may write (its own and its stdout/stderr); a burst
    /// of up to ten seconds' worth passes, what is over is dropped and counted.
    #[serde(default = "default_log_lines_per_second")]
    pub log_lines_per_second: u32,
    /// DNS queries one hook call may make.
    #[serde(default = "default_dns_per_call")]
    pub dns_queries_per_call: u32,
    /// DNS queries one session (or delivery) may make, over all its calls.
    #[serde(default = "default_dns_per_session")]
    pub dns_queries_per_session: u32,
    /// The origins the plugin may reach with `http-call`; none by default.
    #[serde(default)]
    pub http_allow: Vec<HttpOrigin>,
    /// The deadline of one HTTP call, connect to the last byte of the answer, in
    /// milliseconds; capped by what is left of the hook's `time_limit_ms`.
    #[serde(default = "default_http_timeout_ms")]
    pub http_timeout_ms: u64,
    /// The largest request body the plugin may send.
    #[serde(default = "default_http_max_request_bytes")]
    pub http_max_request_bytes: u64,
    /// The largest response body the plugin may receive (reading stops there).
    #[serde(default = "default_http_max_response_bytes")]
    pub http_max_response_bytes: u64,
    /// HTTP calls one hook call may make.
    #[serde(default = "default_http_calls_per_hook")]
    pub http_max_calls_per_hook: u32,
    /// `enforce` (the default), `shadow` or `canary` (see `config/rollout.rs`).
    #[serde(default)]
    pub mode: PluginMode,
    /// A shadow's primary: the enforcing plugin it is compared with (absent: the chain).
    #[serde(default)]
    pub shadow_of: Option<String>,
    /// Sessions a shadow runs in at once, over the gateway; past it, skipped and counted.
    #[serde(default = "rollout::default_shadow_max_sessions")]
    pub shadow_max_sessions: u32,
    /// A canary's primary: the enforcing plugin it stands in for.
    #[serde(default)]
    pub canary_of: Option<String>,
    /// The share of new sessions a canary takes, by a stable hash of the client address.
    #[serde(default)]
    pub canary: Option<f64>,
    /// Sessions a canary must have served before its rates are judged.
    #[serde(default = "rollout::default_canary_min_sessions")]
    pub canary_min_sessions: u64,
    /// How much a canary's fault rate may exceed its primary's before it is rolled back.
    #[serde(default = "rollout::default_canary_fault_margin")]
    pub canary_max_fault_rate_margin: f64,
    /// How much a canary's refusal rate may exceed its primary's before it is rolled back.
    #[serde(default = "rollout::default_canary_refusal_margin")]
    pub canary_max_refusal_rate_margin: f64,
    /// Promote a canary after this long without a regression.
    #[serde(default)]
    pub canary_soak: Option<Duration>,
    /// An enforcing plugin whose file or settings change at a reload enters as a canary of
    /// the running version, with this share of new sessions, instead of taking them all.
    #[serde(default)]
    pub reload_as_canary: Option<f64>,
    /// The plugin's own configuration, handed to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

fn default_plugin_memory_mib() -> u64 {
    64
}

fn default_plugin_cpu_ms() -> u64 {
    100
}

fn default_plugin_time_ms() -> u64 {
    3_000
}

fn default_kv_max_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_kv_max_keys() -> u64 {
    100_000
}

fn default_max_counters() -> u32 {
    64
}

fn default_log_lines_per_second() -> u32 {
    20
}

fn default_dns_per_call() -> u32 {
    16
}

fn default_dns_per_session() -> u32 {
    64
}

fn default_http_timeout_ms() -> u64 {
    1_000
}

fn default_http_max_request_bytes() -> u64 {
    64 * 1024
}

fn default_http_max_response_bytes() -> u64 {
    256 * 1024
}

fn default_http_calls_per_hook() -> u32 {
    4
}

/// An origin a plugin may reach over HTTP (`http_allow`): `scheme://host[:port]`, where
/// the host is a name (exactly that name), `*.name` (any name below it, not the name
/// itself) or an IP address (IPv6 in brackets), and the port defaults to the scheme's.
/// Only an entry that names an address literally lets a plugin reach a loopback, private
/// or otherwise internal address, or the gateway's own.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct HttpOrigin {
    /// `https` (else `http`).
    pub https: bool,
    /// Which hosts.
    pub host: OriginHost,
    /// The port.
    pub port: u16,
}

/// The host part of an [`HttpOrigin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginHost {
    /// Exactly this name (lowercase, A-labels, no trailing dot).
    Name(String),
    /// Any name that ends in `.` and this one.
    Below(String),
    /// This address.
    Ip(std::net::IpAddr),
}

impl fmt::Display for HttpOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        match &self.host {
            OriginHost::Name(name) => write!(f, "{scheme}://{name}:{}", self.port),
            OriginHost::Below(name) => write!(f, "{scheme}://*.{name}:{}", self.port),
            OriginHost::Ip(ip) => write!(f, "{scheme}://{}", SocketAddr::new(*ip, self.port)),
        }
    }
}

impl TryFrom<String> for HttpOrigin {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let bad = |why: &str| format!("`{text}` is not `http[s]://host[:port]`: {why}");
        let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
        let https = match scheme.to_ascii_lowercase().as_str() {
            "https" => true,
            "http" => false,
            _ => return Err(bad("the scheme is http or https")),
        };
        // An origin is no more than scheme, host and port: a path, a query or user
        // information would suggest a narrower grant than the one given.
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains(['/', '?', '#', '@']) || authority.is_empty() {
            return Err(bad("only a host and a port, no path, query or user"));
        }
        let (host, port) = split_host_port(authority).ok_or_else(|| bad("a bad port"))?;
        let port = match port {
            Some(port) => port,
            None if https => 443,
            None => 80,
        };
        let host = if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            OriginHost::Ip(std::net::IpAddr::V6(
                v6.parse().map_err(|_| bad("a bad IPv6 address"))?,
            ))
        } else if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
            OriginHost::Ip(std::net::IpAddr::V4(v4))
        } else if let Some(below) = host.strip_prefix("*.") {
            OriginHost::Below(DomainName::try_from(below.to_owned())?.as_str().to_owned())
        } else {
            OriginHost::Name(DomainName::try_from(host.to_owned())?.as_str().to_owned())
        };
        Ok(HttpOrigin { https, host, port })
    }
}

/// `host[:port]` or `[v6][:port]` into the host and the port, if any; `None` for a port
/// that is not a number from 1 to 65535.
pub fn split_host_port(authority: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        match authority.find(']') {
            Some(end) if end + 1 == authority.len() => (authority, None),
            Some(end) => (
                &authority[..=end],
                Some(authority[end + 1..].strip_prefix(':')?),
            ),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    match port {
        None => Some((host, None)),
        Some(port) => {
            let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
            Some((host, Some(port)))
        }
    }
}

/// What a failing plugin means for the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Answer 451 4.3.0 at that stage (the default: never accept what policy could not check).
    #[default]
    Tempfail,
    /// Skip the plugin and go on with the chain.
    Continue,
}

/// Where an external filter listens: `host:port` (an IP address) or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterAddress {
    /// TCP.
    Tcp(SocketAddr),
    /// A Unix-domain stream socket.
    Unix(PathBuf),
}

impl fmt::Display for FilterAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FilterAddress::Tcp(address) => write!(f, "{address}"),
            FilterAddress::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for FilterAddress {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if let Some(path) = text.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(serde::de::Error::custom("`unix:` needs a socket path"));
            }
            return Ok(FilterAddress::Unix(PathBuf::from(path)));
        }
        text.parse::<SocketAddr>()
            .map(FilterAddress::Tcp)
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "`{text}` is neither `ip:port` (IPv6 as `[::1]:port`) nor `unix:/path`"
                ))
            })
    }
}

/// One `[[milter]]`: a Sendmail/Postfix milter (protocol version 6) a listener chain may
/// name like a plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MilterConfig {
    /// The name used in listener chains, logs and metrics (shared with `[[plugin]]` names).
    pub name: String,
    /// Where the milter listens.
    pub address: FilterAddress,
    /// The longest wait for one answer (connecting included), in milliseconds.
    #[serde(default = "default_milter_timeout_ms")]
    pub timeout_ms: u64,
    /// What a milter that is down, slow or speaks garbage means for the session.
    #[serde(default)]
    pub on_error: OnError,
}

fn default_milter_timeout_ms() -> u64 {
    5_000
}

/// One `[[policy_service]]`: a Postfix SMTPD policy delegation server a listener chain may
/// name like a plugin.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyServiceConfig {
    /// The name used in listener chains, logs and metrics (shared with `[[plugin]]` names).
    pub name: String,
    /// Where the server listens.
    pub address: FilterAddress,
    /// The protocol states it is asked at; `["rcpt"]` when absent.
    #[serde(default = "default_policy_stages")]
    pub stages: Vec<PolicyStage>,
    /// The longest wait for one answer (connecting included), in milliseconds.
    #[serde(default = "default_policy_timeout_ms")]
    pub timeout_ms: u64,
    /// What a server that is down, slow or answers garbage means for the session.
    #[serde(default)]
    pub on_error: OnError,
    /// Connections kept open to the server (and the most used at once).
    #[serde(default = "default_policy_connections")]
    pub max_connections: usize,
}

/// A protocol state a policy service is asked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PolicyStage {
    /// CONNECT, when the client connects.
    Connect,
    /// HELO, at HELO/EHLO.
    Helo,
    /// MAIL, at MAIL FROM.
    Mail,
    /// RCPT, at each RCPT TO.
    Rcpt,
    /// END-OF-MESSAGE, when the whole message is in (`data` means the same: Tidegate asks
    /// after the message, not at the DATA command).
    #[serde(alias = "data")]
    EndOfMessage,
}

fn default_policy_stages() -> Vec<PolicyStage> {
    vec![PolicyStage::Rcpt]
}

fn default_policy_timeout_ms() -> u64 {
    2_000
}

fn default_policy_connections() -> usize {
    8
}

/// Shared plugin-runtime settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginRuntimeConfig {
    /// Where precompiled components are cached; relative to the configuration file.
    pub cache_dir: PathBuf,
    /// Plugin instances that may exist at once (sessions × plugins), bounding memory.
    /// When absent: `max_connections` × the longest listener chain, plus
    /// `max_concurrent_deliveries` × the number of plugins for the delivery side.
    pub max_instances: Option<u32>,
    /// Finished sessions' instances kept ready for the next session, per plugin version.
    pub idle_instances: u32,
    /// The deadline of a whole stage's chain (every plugin called at, say, RCPT TO), in
    /// milliseconds, so a chain of slow plugins cannot keep a client waiting longer than
    /// SMTP clients wait for a reply.
    pub stage_time_limit_ms: u64,
}

impl Default for PluginRuntimeConfig {
    fn default() -> Self {
        PluginRuntimeConfig {
            cache_dir: PathBuf::from("var/plugin-cache"),
            max_instances: None,
            idle_instances: 32,
            stage_time_limit_ms: 30_000,
        }
    }
}

impl Config {
    /// The longest plugin chain of any listener.
    pub fn longest_chain(&self) -> usize {
        self.listeners
            .iter()
            .map(|l| {
                // Milters and policy services in a chain take no plugin instance.
                l.plugins.as_ref().map_or(self.plugin_list.len(), |names| {
                    // A shadow is never listed but takes an instance of its own beside
                    // the chain's plugins.
                    let shadows = self
                        .plugin_list
                        .iter()
                        .filter(|p| p.mode == PluginMode::Shadow)
                        .count();
                    names
                        .iter()
                        .filter(|n| self.plugin_list.iter().any(|p| &p.name == *n))
                        .count()
                        + shadows
                })
            })
            .max()
            .unwrap_or(0)
    }

    /// The largest `memory_limit_mib` of any plugin, in bytes.
    pub fn largest_plugin_memory(&self) -> usize {
        self.plugin_list
            .iter()
            .map(|p| usize::try_from(p.memory_limit_mib).unwrap_or(usize::MAX))
            .max()
            .unwrap_or(0)
            .saturating_mul(1024 * 1024)
    }

    /// How many plugin instances the pool holds: configured, or enough for every session's
    /// chain and every delivery's (the runtime caps the latter at what fits in the address
    /// space).
    pub fn plugin_instances(&self) -> u32 {
        self.plugins.max_instances.unwrap_or_else(|| {
            let sessions = self
                .limits
                .max_connections
                .saturating_mul(self.longest_chain());
            let deliveries = self
                .queue
                .max_concurrent_deliveries
                .saturating_mul(self.plugin_list.len());
            u32::try_from(sessions.saturating_add(deliveries))
                .unwrap_or(u32::MAX)
                .max(16)
        })
    }
}

/// The delivery queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Waits between attempts; the last one repeats.
    pub retry_intervals: Vec<Duration>,
    /// How long a message may stay before its undelivered recipients bounce.
    pub max_lifetime: Duration,
    /// Deliveries in progress at once, over all destinations.
    pub max_concurrent_deliveries: usize,
    /// Deliveries in progress at once to one destination (route or domain); as many
    /// attempts again may wait for them, and the rest wait parked, costing nothing.
    pub max_per_destination: usize,
    /// Attempts in progress at once, delivering or waiting for a slot (the messages whose
    /// envelopes are in memory); absent: four times `max_concurrent_deliveries`.
    pub max_active: Option<usize>,
    /// Send a delay notice to the sender once a message has waited this long (off when
    /// absent).
    pub delay_notice_after: Option<Duration>,
    /// Accept and keep mail but deliver nothing (maintenance, or a gateway that only
    /// spools); restart with `hold = false` to release it.
    pub hold: bool,
    /// Deliveries in progress at once to one destination over every gateway sharing the
    /// `[kv]` Redis (each node keeps to `max_per_destination` too); off when absent.
    pub fleet_max_per_destination: Option<usize>,
}

impl QueueConfig {
    /// The bound on attempts in progress: `max_active`, or four times the deliveries.
    pub fn active_limit(&self) -> usize {
        self.max_active
            .unwrap_or(self.max_concurrent_deliveries.saturating_mul(4))
            .max(1)
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        let minutes = |m: u64| Duration(std::time::Duration::from_secs(m * 60));
        QueueConfig {
            retry_intervals: vec![
                minutes(1),
                minutes(5),
                minutes(15),
                minutes(30),
                minutes(60),
            ],
            max_lifetime: Duration(std::time::Duration::from_secs(5 * 86_400)),
            max_concurrent_deliveries: 200,
            max_per_destination: 20,
            max_active: None,
            delay_notice_after: None,
            hold: false,
            fleet_max_per_destination: None,
        }
    }
}

/// The outbound side.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// The port used for MX hosts (25; a lab or test may change it).
    pub mx_port: u16,
    /// The name said in EHLO; the `hostname` when absent.
    pub helo_name: Option<String>,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Timeout for the greeting and each command.
    pub command_timeout: Duration,
    /// Timeout for the reply to the end of data.
    pub data_timeout: Duration,
    /// The maildir root of the `local` transport (`<root>/<recipient>/new/`); relative to
    /// the configuration file.
    pub local_maildir: Option<PathBuf>,
    /// TLS towards next hops that have no route of their own (MX delivery).
    pub tls: TlsPolicy,
    /// CA certificates (PEM) that verify next hops under `required`; the public web PKI
    /// roots when absent. Relative to the configuration file.
    pub tls_ca: Option<PathBuf>,
    /// Honour the MTA-STS policies (RFC 8461) of recipient domains in MX delivery.
    pub mta_sts: bool,
    /// Send with BDAT (RFC 3030) to next hops that offer CHUNKING; false: always DATA.
    pub chunking: bool,
    /// The HTTPS port policies are fetched from (443; a lab may change it).
    pub mta_sts_port: u16,
    /// DANE (RFC 7672) in MX delivery: an MX host whose TLSA records DNSSEC
    /// authenticates gets the mail only over TLS with a certificate those records match.
    /// Needs a validating resolver (`[dns] dnssec` or `dnssec_trust_anchor`).
    pub dane: bool,
    /// How long a connection kept for the next message to the same host stays open idle.
    pub pool_idle_timeout: Duration,
    /// Idle connections kept over all next hops (0: no reuse).
    pub pool_max_idle: usize,
    /// The `[[egress]]` pool mail leaves from when neither its route nor its shaping
    /// entry names one (the system's choice of address when absent).
    pub egress: Option<String>,
}

/// Outbound TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Never use TLS.
    None,
    /// Use STARTTLS when offered, without verifying the certificate (RFC 7435); fall back
    /// to plain text when the handshake fails.
    #[default]
    Opportunistic,
    /// STARTTLS with a verified certificate, or no delivery (deferred).
    Required,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let secs = |s: u64| Duration(std::time::Duration::from_secs(s));
        DeliveryConfig {
            mx_port: 25,
            helo_name: None,
            connect_timeout: secs(30),
            command_timeout: secs(300),
            data_timeout: secs(600),
            local_maildir: None,
            tls: TlsPolicy::Opportunistic,
            tls_ca: None,
            mta_sts: false,
            chunking: true,
            mta_sts_port: 443,
            dane: false,
            pool_idle_timeout: secs(15),
            pool_max_idle: 100,
            egress: None,
        }
    }
}

/// A static route: recipient domains and where their mail goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name (plugins route to it with `named(name)`).
    pub name: String,
    /// Recipient domains sent this way (exact, case-insensitive).
    #[serde(default)]
    pub domains: Vec<DomainName>,
    /// The next hop, `host:port` (an IP address or a name).
    pub smarthost: Option<String>,
    /// Or: deliver into this maildir root instead (relative to the configuration file).
    pub maildir: Option<PathBuf>,
    /// TLS towards the smarthost; `[delivery] tls` when absent.
    pub tls: Option<TlsPolicy>,
    /// BDAT towards a smarthost that offers CHUNKING; `[delivery] chunking` when absent.
    pub chunking: Option<bool>,
    /// Verify recipients at RCPT TO by asking the smarthost (MAIL FROM:<>, RCPT, RSET):
    /// an address it refuses gets 550 5.1.1 instead of a bounce later (backscatter).
    #[serde(default)]
    pub verify_recipients: bool,
    /// How long an address the smarthost accepted is remembered.
    #[serde(default = "default_verify_positive_ttl")]
    pub verify_positive_ttl: Duration,
    /// How long an address the smarthost refused is remembered.
    #[serde(default = "default_verify_negative_ttl")]
    pub verify_negative_ttl: Duration,
    /// What RCPT answers when the smarthost cannot say (unreachable, or a 4xx).
    #[serde(default)]
    pub verify_unreachable: VerifyUnreachable,
    /// The recipients the route's domains have, one address (or `@domain`) per line;
    /// anyone else gets 550 5.1.1 at RCPT. Relative to the configuration file.
    #[serde(default)]
    pub recipients_file: Option<PathBuf>,
    /// The `[[egress]]` pool its mail leaves from.
    #[serde(default)]
    pub egress: Option<String>,
    /// A client certificate (PEM chain) presented in STARTTLS to a smarthost that
    /// authenticates clients by certificate; with `client_key`. Relative to the
    /// configuration file.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    /// The private key (PEM) of `client_certificate`.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

fn default_verify_positive_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(3600))
}

fn default_verify_negative_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(300))
}

/// What recipient verification does when the next hop gives no answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyUnreachable {
    /// 450 4.1.1: the client tries again later (the default, as Postfix does).
    #[default]
    Tempfail,
    /// Accept the recipient unverified (delivery will tell).
    Accept,
}

/// SMTP AUTH (RFC 4954).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `user:argon2-hash` lines (`tidegate hash-password --user NAME` makes them); relative
    /// to the configuration file. Without it only plugins (on-auth) can accept a login.
    #[serde(default)]
    pub users_file: Option<PathBuf>,
    /// Offer AUTH without TLS. Passwords then cross the network in the clear: for loopback
    /// tests only.
    #[serde(default)]
    pub allow_plaintext: bool,
    /// Failed attempts from one address (an IPv6 /64) before AUTH is refused for a while.
    #[serde(default = "default_auth_failures")]
    pub max_failures: u32,
    /// The window of `max_failures`.
    #[serde(default = "default_auth_window")]
    pub failure_window: Duration,
    /// Refuse a MAIL FROM that is not the authenticated user's address.
    #[serde(default)]
    pub require_sender_match: bool,
}

fn default_auth_failures() -> u32 {
    5
}

fn default_auth_window() -> Duration {
    Duration(std::time::Duration::from_secs(300))
}

/// The admin listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where to serve the admin API (HTTP); off when absent. Keep it on loopback or a
    /// management network.
    pub address: Option<SocketAddr>,
    /// The bearer tokens of the API: one per line, `TOKEN` or `NAME TOKEN` (the name is
    /// logged with every change it makes); relative to the configuration file. Without
    /// it only `/metrics`, `/healthz` and `/readyz` are served.
    pub token_file: Option<PathBuf>,
}

/// `[tls_report]`: SMTP TLS Reporting (RFC 8460).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsReportConfig {
    /// How long one report covers (24h, as RFC 8460 §4.1 asks; shorter in a lab).
    pub period: Duration,
    /// The report's `organization-name`; the `hostname` when absent.
    pub organization: Option<String>,
    /// The report's `contact-info`; `postmaster@<hostname>` when absent.
    pub contact: Option<String>,
}

impl Default for TlsReportConfig {
    fn default() -> Self {
        TlsReportConfig {
            period: Duration(std::time::Duration::from_secs(86_400)),
            organization: None,
            contact: None,
        }
    }
}

/// DNS settings.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Name servers (`ip:port`) to use instead of the system's `/etc/resolv.conf`.
    pub nameservers: Vec<SocketAddr>,
    /// Per-query timeout in milliseconds (default 2000).
    pub timeout_ms: Option<u64>,
    /// Validate answers with DNSSEC (RFC 4035) from the root's trust anchors built into
    /// the resolver; what DANE needs. Implied by `dnssec_trust_anchor`.
    pub dnssec: bool,
    /// A file of DNSKEY records (zone-file syntax) trusted as DNSSEC trust anchors instead
    /// of the root's: a private or lab zone. Relative to the configuration file.
    pub dnssec_trust_anchor: Option<PathBuf>,
}

impl DnsConfig {
    /// Whether answers are validated with DNSSEC.
    pub fn validates(&self) -> bool {
        self.dnssec || self.dnssec_trust_anchor.is_some()
    }
}

/// One listening socket.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// A short name used in logs and `Received:` headers.
    pub name: String,
    /// The address and port to bind; IPv6 is written `[::1]:2525`.
    pub address: SocketAddr,
    /// What the listener speaks.
    #[serde(default)]
    pub protocol: Protocol,
    /// The plugin chain of this listener, by name; all plugins in order when absent.
    #[serde(default)]
    pub plugins: Option<Vec<String>>,
    /// Sender authentication checks run on mail arriving here; all four on `smtp`
    /// listeners and none on `submission`/`smtps` when absent.
    #[serde(default)]
    pub verify: Option<Vec<VerifyCheck>>,
    /// Every connection starts with a PROXY protocol header (v1 or v2, as HAProxy's
    /// `send-proxy` / `send-proxy-v2` write it) naming the real client.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// The proxies allowed to speak for clients; a connection from anywhere else is
    /// closed. Required with `proxy_protocol`.
    #[serde(default)]
    pub proxy_trusted: Vec<ipnet::IpNet>,
    /// Record the plugin calls of this listener's sessions for `tidegate replay`.
    #[serde(default)]
    pub record: Option<RecordConfig>,
}

/// `record = { path = "var/records", body_bytes = 65536 }` in a `[[listener]]`: where and
/// how much of its sessions' plugin calls are written (format: `tidegate_plugin_sdk::record`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordConfig {
    /// The records directory; relative to the configuration file.
    pub path: PathBuf,
    /// How much of a message's body (after its header) is recorded.
    #[serde(default = "default_record_body_bytes")]
    pub body_bytes: u64,
    /// A records file is closed and a new one started past this size.
    #[serde(default = "default_record_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Records files kept; the oldest is deleted past it.
    #[serde(default = "default_record_keep_files")]
    pub keep_files: u32,
    /// The fraction of sessions recorded (evenly spread: 0.1 is every tenth).
    #[serde(default = "default_record_sample")]
    pub sample: f64,
}

fn default_record_sample() -> f64 {
    1.0
}

fn default_record_body_bytes() -> u64 {
    65_536
}

fn default_record_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}

fn default_record_keep_files() -> u32 {
    10
}

/// A sender authentication check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyCheck {
    /// SPF (RFC 7208) for HELO and MAIL FROM.
    Spf,
    /// DKIM (RFC 6376) signatures.
    Dkim,
    /// DMARC (RFC 7489).
    Dmarc,
    /// ARC (RFC 8617) chains.
    Arc,
}

impl ListenerConfig {
    /// The checks this listener runs.
    pub fn checks(&self) -> crate::sender_auth::Checks {
        let default: &[VerifyCheck] = match self.protocol {
            Protocol::Smtp => &[
                VerifyCheck::Spf,
                VerifyCheck::Dkim,
                VerifyCheck::Dmarc,
                VerifyCheck::Arc,
            ],
            Protocol::Submission | Protocol::Smtps => &[],
        };
        let list = self.verify.as_deref().unwrap_or(default);
        crate::sender_auth::Checks {
            spf: list.contains(&VerifyCheck::Spf),
            dkim: list.contains(&VerifyCheck::Dkim),
            dmarc: list.contains(&VerifyCheck::Dmarc),
            arc: list.contains(&VerifyCheck::Arc),
        }
    }
}

/// One `[[dkim_sign]]`: a key that signs mail from a domain, in a time window.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DkimSignConfig {
    /// Mail whose RFC 5322 From domain is this is signed.
    pub domain: DomainName,
    /// The selector (`s=`): the key's record is `SELECTOR._domainkey.DOMAIN`.
    pub selector: String,
    /// The private key, PEM (RSA or Ed25519; the algorithm follows the key); relative to
    /// the configuration file.
    pub key_file: PathBuf,
    /// The key signs from this time on (RFC 3339).
    #[serde(default, with = "rfc3339_opt")]
    pub not_before: Option<time::OffsetDateTime>,
    /// ... and until this time (RFC 3339).
    #[serde(default, with = "rfc3339_opt")]
    pub not_after: Option<time::OffsetDateTime>,
    /// The header fields to sign instead of the default list.
    #[serde(default)]
    pub headers: Option<Vec<String>>,
}

/// RFC 3339 times in the configuration.
mod rfc3339_opt {
    use serde::{Deserialize, Deserializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("`{text}` is not an RFC 3339 time: {e}")))
    }
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// Plain SMTP (port 25): mail from anyone to the accepted domains.
    #[default]
    Smtp,
    /// Message submission (port 587): STARTTLS and AUTH required.
    Submission,
    /// Submission over implicit TLS (port 465).
    Smtps,
}

/// The spool: where messages are kept, durably, from the 250 reply until delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpoolConfig {
    /// The spool directory; a relative path is relative to the configuration file.
    pub path: PathBuf,
    /// Free space kept in the spool's file system for the queue (state logs, bounces):
    /// below it, new mail is refused at MAIL FROM with 452 4.3.1. 0 turns it off.
    #[serde(default = "default_min_free_space")]
    pub min_free_space: ByteSize,
}

fn default_min_free_space() -> ByteSize {
    ByteSize(64 * 1024 * 1024)
}

/// Relay control: the rules that keep the gateway from being an open relay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Recipient domains accepted from any client (exact names, case-insensitive).
    #[serde(default)]
    pub accept_domains: Vec<DomainName>,
    /// Client networks allowed to relay to any domain.
    #[serde(default)]
    pub relay_networks: Vec<IpNet>,
}

/// Bounds on sessions and messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// The largest message accepted, in octets (advertised with SIZE).
    pub max_message_size: u64,
    /// Recipients accepted per transaction; more get 452 4.5.3.
    pub max_recipients: usize,
    /// Simultaneous sessions over all listeners.
    pub max_connections: usize,
    /// Simultaneous sessions from one client IP address.
    pub max_connections_per_ip: usize,
    /// How long the server waits for the next command (RFC 5321 §4.5.3.2.7 suggests 5 minutes).
    pub command_timeout_secs: u64,
    /// How long the server waits for each read while receiving message data.
    pub data_timeout_secs: u64,
    /// Error replies (5xx) a session may cause before it is disconnected with 421.
    pub max_errors: u32,
    /// The most `Received:` fields a message may carry, counting the one this gateway
    /// adds; a message over it is refused with 554 5.4.6 (a mail loop).
    pub max_hops: u32,
    /// How long one whole message transfer (DATA, or every BDAT chunk of a message) may
    /// take, however steadily it trickles in; then 421 4.4.2 and close.
    pub max_data_time_secs: u64,
    /// NOOP, RSET, VRFY, EXPN and HELP commands a session may send between accepted
    /// messages before it is closed with 421 4.7.0 (Postfix's smtpd_junk_command_limit).
    pub max_junk_commands: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 10 * 1024 * 1024,
            max_recipients: 100,
            max_connections: 1000,
            max_connections_per_ip: 50,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
            max_errors: 20,
            max_hops: 50,
            max_data_time_secs: 600,
            max_junk_commands: 100,
        }
    }
}

/// Protocol choices for the inbound SMTP server.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Look up each client's forward-confirmed reverse DNS name at connect (for plugins),
    /// when any plugin runs on its listener.
    pub reverse_dns: bool,
    /// What to do with a bare CR or LF inside DATA (the SMTP smuggling vector).
    pub bare_line_endings: BareLineEndings,
    /// How long to wait before the greeting, watching for a client that talks first (a
    /// spam engine that does not wait for the server); 0 (the default) only checks what
    /// has already arrived when the greeting is due.
    pub greet_pause: Option<Duration>,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            reverse_dns: true,
            bare_line_endings: BareLineEndings::default(),
            greet_pause: None,
        }
    }
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `tidegate=debug`; `RUST_LOG` overrides it.
    pub level: String,
    /// `text` (human-readable lines, the default) or `json` (one object per line).
    pub format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

fn default_shutdown_grace() -> Duration {
    Duration(std::time::Duration::from_secs(30))
}

/// A DNS domain name, checked and lowercased when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct DomainName(String);

impl DomainName {
    /// The name in lowercase, without a trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for DomainName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        // An internationalised name may be written either way; it is kept (and compared)
        // as A-labels, the form DNS and ASCII-only peers use.
        let Some(name) = ascii_domain(&name) else {
            return Err(format!(
                "`{name}` is not a valid internationalised domain name"
            ));
        };
        if name.is_empty() || name.len() > 253 {
            return Err(format!("`{name}` is not a domain name (1 to 253 octets)"));
        }
        for label in name.split('.') {
            let ok = !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !ok {
                return Err(format!(
                    "`{name}` is not a domain name (label `{label}`: letters, digits and inner hyphens only)"
                ));
            }
        }
        Ok(DomainName(name))
    }
}

/// A domain name in the one form in which domains are configured and compared: lowercase,
/// without a trailing dot, and with internationalised labels as A-labels
/// (`bücher.example` → `xn--bcher-kva.example`, RFC 5890). `None` for a name that IDNA
/// cannot convert.
pub fn ascii_domain(name: &str) -> Option<String> {
    let name = name.trim_end_matches('.');
    if name.is_ascii() {
        return Some(name.to_ascii_lowercase());
    }
    idna::domain_to_ascii(name).ok()
}

/// A duration written the usual way: `30s`, `5m`, `2h`, `5d` (or `500ms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Duration(pub std::time::Duration);

impl TryFrom<String> for Duration {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let bad = || format!("`{text}` is not a duration (write e.g. 500ms, 30s, 5m, 2h, 5d)");
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (digits, unit) = text.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let millis_per_unit = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        let millis = n.checked_mul(millis_per_unit).ok_or_else(bad)?;
        Ok(Duration(std::time::Duration::from_millis(millis)))
    }
}

/// A size in octets, written as an integer (`67108864`) or with a unit: `512KiB`, `64MiB`,
/// `1GiB`, `1TiB` (powers of 1024) or `500kB`, `100MB`, `2GB`, `1TB` (powers of 1000).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    fn parse(text: &str) -> Result<ByteSize, String> {
        let bad =
            || format!("`{text}` is not a size (write octets, or e.g. 512KiB, 64MiB, 1GiB, 100MB)");
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(trimmed.len());
        let (digits, unit) = trimmed.split_at(split);
        let n: u64 = digits.parse().map_err(|_| bad())?;
        let multiplier: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            "kB" | "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            _ => return Err(bad()),
        };
        n.checked_mul(multiplier).map(ByteSize).ok_or_else(bad)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in octets, or a string such as \"64MiB\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A configuration problem, located in the file.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {key}: {message}", file.display(), line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// The 1-based line of the problem, when it is known.
    pub line: Option<usize>,
    /// The dotted key path, e.g. `listener[0].address`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl Config {
    /// Reads, parses and validates a configuration file, resolving relative paths against
    /// the file's directory.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: None,
            key: "(file)".to_owned(),
            message: format!("cannot read: {e}"),
        })?;
        let mut config = Config::parse(&text, file)?;
        let base = file.parent().unwrap_or(Path::new("."));
        if config.spool.path.is_relative() {
            config.spool.path = base.join(&config.spool.path);
        }
        if config.plugins.cache_dir.is_relative() {
            config.plugins.cache_dir = base.join(&config.plugins.cache_dir);
        }
        for record in config
            .listeners
            .iter_mut()
            .filter_map(|l| l.record.as_mut())
        {
            if record.path.is_relative() {
                record.path = base.join(&record.path);
            }
        }
        if let Some(tls) = &mut config.tls {
            tls.resolve_paths(base);
        }
        if let Some(file) = config.auth.as_mut().and_then(|a| a.users_file.as_mut())
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        if let Some(dir) = &mut config.delivery.local_maildir
            && dir.is_relative()
        {
            *dir = base.join(&*dir);
        }
        if let Some(ca) = &mut config.delivery.tls_ca
            && ca.is_relative()
        {
            *ca = base.join(&*ca);
        }
        if let Some(file) = &mut config.admin.token_file
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        if let Some(file) = &mut config.dns.dnssec_trust_anchor
            && file.is_relative()
        {
            *file = base.join(&*file);
        }
        for route in &mut config.routes {
            if let Some(dir) = &mut route.maildir
                && dir.is_relative()
            {
                *dir = base.join(&*dir);
            }
            for file in [
                &mut route.recipients_file,
                &mut route.client_certificate,
                &mut route.client_key,
            ]
            .into_iter()
            .flatten()
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        for plugin in &mut config.plugin_list {
            if plugin.path.is_relative() {
                plugin.path = base.join(&plugin.path);
            }
        }
        let filter_addresses = config
            .milters
            .iter_mut()
            .map(|m| &mut m.address)
            .chain(config.policy_services.iter_mut().map(|p| &mut p.address));
        for address in filter_addresses {
            if let FilterAddress::Unix(path) = address
                && path.is_relative()
            {
                *path = base.join(&*path);
            }
        }
        for key in &mut config.dkim_sign {
            if key.key_file.is_relative() {
                key.key_file = base.join(&key.key_file);
            }
        }
        if let Some(arc) = &mut config.arc_seal
            && arc.key_file.is_relative()
        {
            arc.key_file = base.join(&arc.key_file);
        }
        for sink in &mut config.events {
            for file in [&mut sink.path, &mut sink.secret_file]
                .into_iter()
                .flatten()
            {
                if file.is_relative() {
                    *file = base.join(&*file);
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates configuration text; `file` is used only in error messages.
    pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let locate = |span: Option<std::ops::Range<usize>>| {
            span.map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1)
        };
        let deserializer = toml::Deserializer::parse(text).map_err(|e| ConfigError {
            file: file.to_owned(),
            line: locate(e.span()),
            key: "(syntax)".to_owned(),
            message: e.message().to_owned(),
        })?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let mut key = e.path().to_string();
            let top_level = key == ".";
            let inner = e.into_inner();
            // A missing key has no position of its own: name it from the message, under
            // the table it belongs to.
            if let Some(missing) = inner
                .message()
                .strip_prefix("missing field `")
                .and_then(|m| m.strip_suffix('`'))
            {
                key = if key == "." {
                    missing.to_owned()
                } else {
                    format!("{key}.{missing}")
                };
            }
            ConfigError {
                file: file.to_owned(),
                // The whole document's span says nothing about where a missing key goes.
                line: if top_level {
                    None
                } else {
                    locate(inner.span())
                },
                key,
                message: inner.message().to_owned(),
            }
        })?;
        config.validate().map_err(|(key, message)| ConfigError {
            file: file.to_owned(),
            line: line_of_key(text, &key),
            key,
            message,
        })?;
        Ok(config)
    }

    /// Checks that span several keys; returns the key path and the problem.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.listeners.is_empty() {
            return Err((
                "listener".into(),
                "at least one [[listener]] is needed".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut addresses = HashSet::new();
        for (i, listener) in self.listeners.iter().enumerate() {
            if listener.name.is_empty() || !listener.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    format!("listener[{i}].name"),
                    "a listener name is printable ASCII without spaces".into(),
                ));
            }
            if !names.insert(listener.name.as_str()) {
                return Err((
                    format!("listener[{i}].name"),
                    format!("listener name `{}` is used twice", listener.name),
                ));
            }
            // Port 0 asks the kernel for a free port, so two such listeners cannot clash.
            if listener.address.port() != 0 && !addresses.insert(listener.address) {
                return Err((
                    format!("listener[{i}].address"),
                    format!("address {} is used by two listeners", listener.address),
                ));
            }
            if listener.protocol == Protocol::Smtps && self.tls.is_none() {
                return Err((
                    format!("listener[{i}].protocol"),
                    "an `smtps` listener needs a [tls] certificate".into(),
                ));
            }
            if listener.protocol != Protocol::Smtp && self.auth.is_none() {
                return Err((
                    format!("listener[{i}].protocol"),
                    "`submission` and `smtps` listeners require AUTH: add an [auth] table".into(),
                ));
            }
            if let Some(record) = &listener.record {
                if record.body_bytes > 16 * 1024 * 1024 {
                    return Err((
                        format!("listener[{i}].record.body_bytes"),
                        "at most 16777216 (16 MiB)".into(),
                    ));
                }
                if !(4096..=(1 << 40)).contains(&record.max_file_bytes) {
                    return Err((
                        format!("listener[{i}].record.max_file_bytes"),
                        "between 4096 and 1 TiB".into(),
                    ));
                }
                if !(record.sample > 0.0 && record.sample <= 1.0) {
                    return Err((
                        format!("listener[{i}].record.sample"),
                        "a fraction of sessions above 0 and at most 1".into(),
                    ));
                }
                if !(1..=10_000).contains(&record.keep_files) {
                    return Err((
                        format!("listener[{i}].record.keep_files"),
                        "between 1 and 10000".into(),
                    ));
                }
            }
            if listener.proxy_protocol && listener.proxy_trusted.is_empty() {
                return Err((
                    format!("listener[{i}].proxy_trusted"),
                    "name the proxies' networks: without them any client could claim any address"
                        .into(),
                ));
            }
        }
        let mut plugin_names = HashSet::new();
        for (i, plugin) in self.plugin_list.iter().enumerate() {
            if plugin.name.is_empty() || !plugin.name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    format!("plugin[{i}].name"),
                    "a plugin name is printable ASCII without spaces".into(),
                ));
            }
            if !plugin_names.insert(plugin.name.as_str()) {
                return Err((
                    format!("plugin[{i}].name"),
                    format!("plugin name `{}` is used twice", plugin.name),
                ));
            }
            if plugin.memory_limit_mib == 0 || plugin.memory_limit_mib > 4096 {
                return Err((
                    format!("plugin[{i}].memory_limit_mib"),
                    "must be between 1 and 4096".into(),
                ));
            }
            let ranges: [(&str, u64, u64, u64); 12] = [
                ("http_timeout_ms", plugin.http_timeout_ms, 1, 300_000),
                (
                    "http_max_request_bytes",
                    plugin.http_max_request_bytes,
                    0,
                    16 * 1024 * 1024,
                ),
                (
                    "http_max_response_bytes",
                    plugin.http_max_response_bytes,
                    0,
                    64 * 1024 * 1024,
                ),
                (
                    "http_max_calls_per_hook",
                    plugin.http_max_calls_per_hook.into(),
                    0,
                    100,
                ),
                ("cpu_limit_ms", plugin.cpu_limit_ms, 1, 60_000),
                ("time_limit_ms", plugin.time_limit_ms, 1, 300_000),
                (
                    "kv_max_bytes",
                    plugin.kv_max_bytes,
                    0,
                    16 * 1024 * 1024 * 1024,
                ),
                ("kv_max_keys", plugin.kv_max_keys, 0, 100_000_000),
                ("max_counters", plugin.max_counters.into(), 0, 10_000),
                (
                    "log_lines_per_second",
                    plugin.log_lines_per_second.into(),
                    0,
                    100_000,
                ),
                (
                    "dns_queries_per_call",
                    plugin.dns_queries_per_call.into(),
                    0,
                    1_000,
                ),
                (
                    "dns_queries_per_session",
                    plugin.dns_queries_per_session.into(),
                    0,
                    100_000,
                ),
            ];
            for (key, value, min, max) in ranges {
                if value < min || value > max {
                    return Err((
                        format!("plugin[{i}].{key}"),
                        format!("must be between {min} and {max}"),
                    ));
                }
            }
        }
        if !(1..=600_000).contains(&self.plugins.stage_time_limit_ms) {
            return Err((
                "plugins.stage_time_limit_ms".into(),
                "must be between 1 and 600000".into(),
            ));
        }
        if let Some(max) = self.plugins.max_instances {
            let needed = self
                .limits
                .max_connections
                .saturating_mul(self.longest_chain());
            if usize::try_from(max).unwrap_or(usize::MAX) < needed {
                return Err((
                    "plugins.max_instances".into(),
                    format!(
                        "{max} instances cannot serve limits.max_connections ({}) sessions \
                         through a chain of {} plugins: raise it to at least {needed}, lower \
                         max_connections, or leave it out to have it computed",
                        self.limits.max_connections,
                        self.longest_chain()
                    ),
                ));
            }
        }
        let filters = self
            .milters
            .iter()
            .map(|m| ("milter", m.name.as_str(), m.timeout_ms))
            .chain(
                self.policy_services
                    .iter()
                    .map(|p| ("policy_service", p.name.as_str(), p.timeout_ms)),
            );
        let mut seen = std::collections::HashMap::new();
        for (table, name, timeout) in filters {
            let i = seen.entry(table).or_insert(0usize);
            let at = *i;
            *i += 1;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    format!("{table}[{at}].name"),
                    "a name is printable ASCII without spaces".into(),
                ));
            }
            // Milters, policy services and plugins share one namespace: a listener's
            // chain names any of them.
            if !plugin_names.insert(name) {
                return Err((
                    format!("{table}[{at}].name"),
                    format!(
                        "name `{name}` is used twice (plugins, milters and policy services share names)"
                    ),
                ));
            }
            if !(1..=300_000).contains(&timeout) {
                return Err((
                    format!("{table}[{at}].timeout_ms"),
                    "must be between 1 and 300000".into(),
                ));
            }
        }
        for (i, policy) in self.policy_services.iter().enumerate() {
            if policy.stages.is_empty() {
                return Err((
                    format!("policy_service[{i}].stages"),
                    "name at least one of connect, helo, mail, rcpt, end-of-message".into(),
                ));
            }
            if !(1..=1024).contains(&policy.max_connections) {
                return Err((
                    format!("policy_service[{i}].max_connections"),
                    "must be between 1 and 1024".into(),
                ));
            }
        }
        for (i, listener) in self.listeners.iter().enumerate() {
            for name in listener.plugins.iter().flatten() {
                if !plugin_names.contains(name.as_str()) {
                    return Err((
                        format!("listener[{i}].plugins"),
                        format!(
                            "no [[plugin]], [[milter]] or [[policy_service]] is named `{name}`"
                        ),
                    ));
                }
            }
        }
        for (i, key) in self.dkim_sign.iter().enumerate() {
            let selector_ok = !key.selector.is_empty()
                && key.selector.split('.').all(|label| {
                    !label.is_empty()
                        && label.len() <= 63
                        && label
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                });
            if !selector_ok {
                return Err((
                    format!("dkim_sign[{i}].selector"),
                    format!(
                        "`{}` is not a DNS label (letters, digits, hyphens)",
                        key.selector
                    ),
                ));
            }
            if let (Some(from), Some(until)) = (key.not_before, key.not_after)
                && from >= until
            {
                return Err((
                    format!("dkim_sign[{i}].not_after"),
                    "must be later than not_before".into(),
                ));
            }
        }
        rollout::validate(&self.plugin_list, &self.listeners)?;
        let route_list: Vec<String> = self.routes.iter().map(|r| r.name.clone()).collect();
        shaping::validate(
            &self.shaping,
            &self.egress,
            &route_list,
            self.delivery.egress.as_deref(),
        )?;
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(pool) = &route.egress
                && !self.egress.iter().any(|e| &e.name == pool)
            {
                return Err((
                    format!("route[{i}].egress"),
                    format!("no [[egress]] is named `{pool}`"),
                ));
            }
        }
        let mut route_names = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            if !route_names.insert(route.name.as_str()) {
                return Err((
                    format!("route[{i}].name"),
                    format!("route name `{}` is used twice", route.name),
                ));
            }
            match (&route.smarthost, &route.maildir) {
                (Some(host), None) => {
                    if crate::outbound::lookup::parse_host_port(host).is_none() {
                        return Err((
                            format!("route[{i}].smarthost"),
                            format!("`{host}` is not host:port"),
                        ));
                    }
                }
                (None, Some(_)) if route.verify_recipients => {
                    return Err((
                        format!("route[{i}].verify_recipients"),
                        "only a `smarthost` route can verify recipients".into(),
                    ));
                }
                (None, Some(_)) => {}
                _ => {
                    return Err((
                        format!("route[{i}].smarthost"),
                        "a route needs exactly one of `smarthost` and `maildir`".into(),
                    ));
                }
            }
            match (&route.client_certificate, &route.client_key) {
                (Some(_), Some(_)) if route.smarthost.is_none() => {
                    return Err((
                        format!("route[{i}].client_certificate"),
                        "only a `smarthost` route presents a client certificate".into(),
                    ));
                }
                // The key that is there is named: it has a line.
                (Some(_), None) => {
                    return Err((
                        format!("route[{i}].client_certificate"),
                        "a `client_certificate` needs its `client_key`".into(),
                    ));
                }
                (None, Some(_)) => {
                    return Err((
                        format!("route[{i}].client_key"),
                        "a `client_key` needs its `client_certificate`".into(),
                    ));
                }
                _ => {}
            }
        }
        if let Some(report) = &self.tls_report {
            let period = report.period.0;
            if period < std::time::Duration::from_secs(1)
                || period > std::time::Duration::from_secs(7 * 86_400)
            {
                return Err((
                    "tls_report.period".into(),
                    "between 1s and 7d (RFC 8460 reports cover a day)".into(),
                ));
            }
            for (key, value) in [
                ("organization", &report.organization),
                ("contact", &report.contact),
            ] {
                if let Some(text) = value
                    && (text.is_empty() || text.len() > 200 || text.chars().any(|c| c.is_control()))
                {
                    return Err((
                        format!("tls_report.{key}"),
                        "1 to 200 characters, no control characters".into(),
                    ));
                }
            }
        }
        if self.delivery.dane && !self.dns.validates() {
            return Err((
                "delivery.dane".into(),
                "DANE needs a validating resolver: set `[dns] dnssec = true` or `dnssec_trust_anchor`"
                    .into(),
            ));
        }
        if self.queue.retry_intervals.is_empty()
            || self.queue.retry_intervals.iter().any(|d| d.0.is_zero())
        {
            return Err((
                "queue.retry_intervals".into(),
                "at least one interval, each greater than 0".into(),
            ));
        }
        if self.queue.max_concurrent_deliveries == 0 || self.queue.max_per_destination == 0 {
            return Err((
                "queue.max_per_destination".into(),
                "concurrency limits must be greater than 0".into(),
            ));
        }
        if self
            .queue
            .max_active
            .is_some_and(|active| active < self.queue.max_concurrent_deliveries)
        {
            return Err((
                "queue.max_active".into(),
                "at least `max_concurrent_deliveries`: every delivery is an active attempt".into(),
            ));
        }
        let idle = self.delivery.pool_idle_timeout.0;
        if idle.is_zero() || idle > std::time::Duration::from_secs(300) {
            return Err((
                "delivery.pool_idle_timeout".into(),
                "between 1ms and 5m (servers close idle clients after a few minutes)".into(),
            ));
        }
        if self
            .smtp
            .greet_pause
            .is_some_and(|d| d.0 > std::time::Duration::from_secs(30))
        {
            return Err((
                "smtp.greet_pause".into(),
                "at most 30s: clients give up on a silent server".into(),
            ));
        }
        if self.limits.max_data_time_secs > 86_400 {
            return Err((
                "limits.max_data_time_secs".into(),
                "at most 86400 (a day)".into(),
            ));
        }
        let mut sink_names = std::collections::HashMap::new();
        for (i, sink) in self.events.iter().enumerate() {
            sink.validate()
                .map_err(|(key, problem)| (format!("events[{i}].{key}"), problem))?;
            if let Some(&first) = sink_names.get(&sink.label(i)) {
                // Point at the sink whose `name` clashes with the other's index.
                let at = if sink.name.is_some() { i } else { first };
                return Err((
                    format!("events[{at}].name"),
                    format!("sink name `{}` is used twice", sink.label(i)),
                ));
            }
            sink_names.insert(sink.label(i), i);
        }
        self.kv
            .validate()
            .map_err(|(key, problem)| (format!("kv.{key}"), problem))?;
        if let Some(limit) = self.queue.fleet_max_per_destination {
            if self.kv.backend != KvBackendKind::Redis {
                return Err((
                    "queue.fleet_max_per_destination".into(),
                    "a fleet-wide limit is kept in Redis: it needs [kv] backend = \"redis\"".into(),
                ));
            }
            if !(1..=100_000).contains(&limit) {
                return Err((
                    "queue.fleet_max_per_destination".into(),
                    "must be between 1 and 100000".into(),
                ));
            }
        }
        let limits = &self.limits;
        for (key, value) in [
            ("max_message_size", limits.max_message_size),
            ("max_recipients", limits.max_recipients as u64),
            ("max_connections", limits.max_connections as u64),
            (
                "max_connections_per_ip",
                limits.max_connections_per_ip as u64,
            ),
            ("command_timeout_secs", limits.command_timeout_secs),
            ("data_timeout_secs", limits.data_timeout_secs),
            ("max_errors", u64::from(limits.max_errors)),
            ("max_hops", u64::from(limits.max_hops)),
            ("max_junk_commands", u64::from(limits.max_junk_commands)),
            ("max_data_time_secs", limits.max_data_time_secs),
        ] {
            if value == 0 {
                return Err((format!("limits.{key}"), "must be greater than 0".into()));
            }
        }
        Ok(())
    }
}

/// Finds the line that sets the last segment of a key path such as `listener[1].name`, for
/// errors found after deserialisation. A best effort: it returns the first line that
/// assigns that key inside the right table (counting `[[array]]` headers).
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    // A key inside an inline table or array (`addresses[0].address`) has no line of its
    // own: the line of the key that holds it is the nearest.
    line_of_leaf(text, key).or_else(|| {
        let (parent, _) = key.rsplit_once('.')?;
        parent
            .contains('.')
            .then(|| line_of_key(text, parent))
            .flatten()
    })
}

fn line_of_leaf(text: &str, key: &str) -> Option<usize> {
    let mut segments: Vec<&str> = key.split('.').collect();
    let leaf = segments.pop()?;
    let (table, index) = match segments.first() {
        Some(first) => match first.split_once('[') {
            Some((name, rest)) => (name, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (*first, None),
        },
        None => ("", None),
    };
    let (leaf, _) = leaf.split_once('[').unwrap_or((leaf, ""));
    let mut current = "";
    let mut seen = 0usize;
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if let Some(header) = trimmed.strip_prefix("[[") {
            current = header.trim_end_matches("]]").trim();
            if current == table {
                seen += 1;
            }
            continue;
        }
        if let Some(header) = trimmed.strip_prefix('[') {
            current = header.trim_end_matches(']').trim();
            continue;
        }
        let in_table = current == table && index.is_none_or(|i| seen == i + 1);
        let assigns = trimmed
            .split_once('=')
            .is_some_and(|(k, _)| k.trim() == leaf);
        if in_table && assigns {
            return Some(n + 1);
        }
        if table.is_empty() && current.is_empty() && trimmed.starts_with(leaf) {
            return Some(n + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
hostname = "relay.example.test"

[[listener]]
name = "mx"
address = "127.0.0.1:2525"
protocol = "smtp"            # later also "submission" and "smtps"

[spool]
path = "var/spool"

[relay]
accept_domains = ["example.test"]     # recipients accepted from any client
relay_networks = ["127.0.0.1/32"]     # clients allowed to relay to any domain

[limits]
max_message_size = 10485760
max_recipients = 100
max_connections = 1000
max_connections_per_ip = 50
command_timeout_secs = 300
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("t.toml"))
    }

    #[test]
    fn the_documented_example_is_accepted() {
        let config = parse(EXAMPLE).expect("example parses");
        assert_eq!(config.hostname.as_str(), "relay.example.test");
        assert_eq!(config.listeners[0].address.port(), 2525);
        assert_eq!(config.relay.accept_domains[0].as_str(), "example.test");
        assert_eq!(config.limits.max_recipients, 100);
        assert_eq!(config.shutdown_grace.0.as_secs(), 30);
    }

    #[test]
    fn an_unknown_key_names_key_and_line() {
        let text = EXAMPLE.replace("max_recipients = 100", "max_recipient = 100");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.line, Some(18), "{err}");
        assert!(err.message.contains("max_recipient"), "{err}");
        assert!(err.to_string().starts_with("t.toml:18: limits"), "{err}");
    }

    #[test]
    fn a_bad_value_names_key_and_line() {
        let text = EXAMPLE.replace("127.0.0.1:2525", "127.0.0.1:99999");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, "listener[0].address");
        assert_eq!(err.line, Some(6), "{err}");

        let text = EXAMPLE.replace("\"127.0.0.1/32\"", "\"127.0.0.1/33\"");
        let err = parse(&text).unwrap_err();
        assert!(err.key.starts_with("relay.relay_networks"), "{err}");
        assert_eq!(err.line, Some(14), "{err}");
    }

    #[test]
    fn a_listeners_record_is_read_with_its_defaults_and_checked() {
        let text = EXAMPLE.replace(
            "protocol = \"smtp\"            # later also \"submission\" and \"smtps\"",
            "protocol = \"smtp\"\nrecord = { path = \"var/records\", body_bytes = 65536 }",
        );
        let config = parse(&text).expect("record parses");
        let record = config.listeners[0].record.as_ref().expect("record");
        assert_eq!(record.path, Path::new("var/records"));
        assert_eq!(
            (record.body_bytes, record.max_file_bytes, record.keep_files),
            (65536, 64 * 1024 * 1024, 10)
        );

        let err = parse(&text.replace("body_bytes = 65536", "keep_files = 0")).unwrap_err();
        assert_eq!(err.key, "listener[0].record.keep_files", "{err}");
        assert_eq!(err.line, Some(8), "{err}");
        let err = parse(&text.replace("body_bytes = 65536", "sample = 0.0")).unwrap_err();
        assert_eq!(err.key, "listener[0].record.sample", "{err}");
        let err = parse(&text.replace("body_bytes", "body_size")).unwrap_err();
        assert!(err.message.contains("body_size"), "{err}");
    }

    #[test]
    fn cross_key_problems_point_at_a_line() {
        let text =
            format!("{EXAMPLE}\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:2526\"\n");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, "listener[1].name");
        assert_eq!(err.line, Some(24), "{err}");
    }

    #[test]
    fn the_kv_table_is_checked() {
        let config = parse(EXAMPLE).unwrap();
        assert_eq!(config.kv.backend, KvBackendKind::Memory);
        let redis =
            format!("{EXAMPLE}\n[kv]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:6379/0\"\n");
        let config = parse(&redis).unwrap();
        assert_eq!(config.kv.backend, KvBackendKind::Redis);
        assert_eq!(
            config.kv.url.as_ref().map(RedisUrl::as_str),
            Some("redis://127.0.0.1:6379/0")
        );
        let bad = redis.replace("redis://127.0.0.1:6379/0", "http://127.0.0.1:6379");
        let err = parse(&bad).unwrap_err();
        assert_eq!(err.key, "kv.url", "{err}");
        assert_eq!(err.line, Some(25), "{err}");
        let bad = redis.replace("redis://127.0.0.1:6379/0", "redis://127.0.0.1:notaport/0");
        assert_eq!(parse(&bad).unwrap_err().key, "kv.url");
        let missing = format!("{EXAMPLE}\n[kv]\nbackend = \"redis\"\n");
        let err = parse(&missing).unwrap_err();
        assert_eq!(err.key, "kv.url", "{err}");
        let bad = format!("{redis}pool_size = 0\n");
        let err = parse(&bad).unwrap_err();
        assert_eq!(err.key, "kv.pool_size", "{err}");
        assert_eq!(err.line, Some(26), "{err}");
        let fleet = EXAMPLE.replace(
            "[limits]",
            "[queue]\nfleet_max_per_destination = 2\n\n[limits]",
        );
        let err = parse(&fleet).unwrap_err();
        assert_eq!(err.key, "queue.fleet_max_per_destination", "{err}");
        assert!(err.message.contains("[kv]"), "{err}");
        let fleet = format!("{fleet}\n[kv]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1/0\"\n");
        assert_eq!(
            parse(&fleet).unwrap().queue.fleet_max_per_destination,
            Some(2)
        );
        let secret = RedisUrl::try_from("redis://u:hunter2@127.0.0.1/0".to_owned()).unwrap();
        assert!(!format!("{secret:?}").contains("hunter2"));
    }

    #[test]
    fn durations_parse_in_the_usual_units() {
        for (text, secs) in [("30s", 30), ("5m", 300), ("2h", 7200), ("5d", 432_000)] {
            assert_eq!(
                Duration::try_from(text.to_owned()).unwrap().0.as_secs(),
                secs
            );
        }
        for bad in ["", "5", "m", "5x", "-1s", "99999999999999999999d"] {
            assert!(Duration::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_parse_as_octets_or_with_units() {
        for (text, octets) in [
            ("0", 0),
            ("1000", 1000),
            ("512KiB", 512 * 1024),
            ("64MiB", 64 << 20),
            ("1GiB", 1 << 30),
            ("100MB", 100_000_000),
            ("2 GB", 2_000_000_000),
        ] {
            assert_eq!(ByteSize::parse(text), Ok(ByteSize(octets)), "{text}");
        }
        for bad in ["", "MiB", "64mib", "-1", "1.5GiB", "99999999999TiB"] {
            assert!(ByteSize::parse(bad).is_err(), "{bad}");
        }
        let text = EXAMPLE.replace(
            "path = \"var/spool\"",
            "path = \"var/spool\"\nmin_free_space = \"64MiB\"",
        );
        assert_eq!(
            parse(&text).unwrap().spool.min_free_space,
            ByteSize(64 << 20)
        );
        let text = EXAMPLE.replace(
            "path = \"var/spool\"",
            "path = \"var/spool\"\nmin_free_space = \"lots\"",
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.key, "spool.min_free_space", "{err}");
        assert_eq!(err.line, Some(11), "{err}");
        assert_eq!(
            parse(EXAMPLE).unwrap().spool.min_free_space,
            ByteSize(64 << 20)
        );
    }

    const EVENTS: &str = r#"
[[events]]
kind = "file"
path = "var/events.jsonl"

[[events]]
kind = "webhook"
url = "http://127.0.0.1:8099/tidegate-events"
secret_file = "webhook.secret"
"#;

    #[test]
    fn the_documented_event_sinks_are_accepted_with_their_defaults() {
        let config = parse(&format!("{EXAMPLE}{EVENTS}")).expect("events parse");
        let [file, hook] = &config.events[..] else {
            panic!("two sinks: {:?}", config.events);
        };
        assert_eq!(file.kind, EventSinkKind::File);
        assert_eq!(file.file_max_size(), 100_000_000);
        assert_eq!(file.file_keep(), 5);
        assert_eq!(hook.kind, EventSinkKind::Webhook);
        assert_eq!(hook.label(1), "1");
        assert_eq!(hook.webhook_batch_size(), 100);
        assert_eq!(hook.webhook_max_buffer(), 64 << 20);
        let text = EVENTS.replace(
            "secret_file = \"webhook.secret\"",
            "secret_file = \"webhook.secret\"\nname = \"crm\"\nbatch_size = 10\n\
             batch_wait = \"200ms\"\ntimeout = \"5s\"\nmax_buffer = \"1MiB\"\n\
             retry_min = \"100ms\"\nretry_max = \"1m\"",
        );
        let config = parse(&format!("{EXAMPLE}{text}")).expect("every webhook key parses");
        assert_eq!(config.events[1].label(1), "crm");
        assert_eq!(config.events[1].webhook_max_buffer(), 1 << 20);
    }

    #[test]
    fn a_bad_event_sink_names_its_key() {
        for (from, to, key) in [
            (
                "http://127.0.0.1:8099",
                "ftp://127.0.0.1:8099",
                "events[1].url",
            ),
            (
                "http://127.0.0.1:8099",
                "https://127.0.0.1:8099",
                "events[1].url",
            ),
            (
                "secret_file = \"webhook.secret\"",
                "",
                "events[1].secret_file",
            ),
            (
                "path = \"var/events.jsonl\"",
                "url = \"http://x/\"",
                "events[0].url",
            ),
            (
                "kind = \"file\"",
                "kind = \"file\"\nmax_size = \"1kB\"",
                "events[0].max_size",
            ),
            (
                "kind = \"file\"",
                "kind = \"file\"\nname = \"1\"",
                "events[0].name",
            ),
            (
                "kind = \"file\"",
                "kind = \"file\"\nname = \"../x\"",
                "events[0].name",
            ),
            (
                "kind = \"file\"",
                "kind = \"file\"\npaht = \"x\"",
                "events[0]",
            ),
        ] {
            let text = format!("{EXAMPLE}{}", EVENTS.replacen(from, to, 1));
            let err = parse(&text).expect_err(key);
            assert!(err.key.starts_with(key), "{key}: {err}");
            // A missing key has no line of its own.
            assert!(err.line.is_some() || to.is_empty(), "{key}: {err}");
        }
    }

    #[test]
    fn event_sink_paths_are_relative_to_the_configuration_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tidegate.toml");
        std::fs::write(&file, format!("{EXAMPLE}{EVENTS}")).unwrap();
        let config = Config::load(&file).unwrap();
        assert_eq!(
            config.events[0].path,
            Some(dir.path().join("var/events.jsonl"))
        );
        assert_eq!(
            config.events[1].secret_file,
            Some(dir.path().join("webhook.secret"))
        );
    }

    #[test]
    fn domain_names_are_checked_and_lowercased() {
        assert_eq!(
            DomainName::try_from("Example.TEST.".to_owned())
                .unwrap()
                .as_str(),
            "example.test"
        );
        for bad in ["", "a..b", "-a.test", "a_b.test", "a b"] {
            assert!(DomainName::try_from(bad.to_owned()).is_err(), "{bad}");
        }
        for idn in ["bücher.example", "BÜCHER.example.", "xn--bcher-kva.example"] {
            assert_eq!(
                DomainName::try_from(idn.to_owned()).unwrap().as_str(),
                "xn--bcher-kva.example",
                "{idn}"
            );
        }
    }

    #[test]
    fn milters_and_policy_services_parse_as_the_readme_writes_them_and_share_one_namespace() {
        let filters = r#"
[[policy_service]]
name = "greylist"
address = "127.0.0.1:10023"      # Postfix policy delegation protocol over TCP
stages = ["rcpt"]
timeout_ms = 2000
on_error = "continue"

[[milter]]
name = "rspamd"
address = "127.0.0.1:11332"
timeout_ms = 5000
on_error = "tempfail"

[[milter]]
name = "clamav"
address = "unix:/run/clamav/clamav-milter.ctl"
"#;
        let config = parse(&format!("{EXAMPLE}{filters}")).unwrap();
        assert_eq!(config.policy_services[0].stages, vec![PolicyStage::Rcpt]);
        assert_eq!(config.policy_services[0].on_error, OnError::Continue);
        assert_eq!(
            config.milters[0].address,
            FilterAddress::Tcp("127.0.0.1:11332".parse().unwrap())
        );
        assert_eq!(
            config.milters[1].address,
            FilterAddress::Unix("/run/clamav/clamav-milter.ctl".into())
        );
        assert_eq!(config.milters[1].on_error, OnError::Tempfail);
        let chained = EXAMPLE.replace(
            "protocol = \"smtp\"",
            "protocol = \"smtp\"\nplugins = [\"rspamd\", \"greylist\"]",
        );
        assert!(parse(&format!("{chained}{filters}")).is_ok());

        // A name used twice across the tables, with its file, line and key.
        let twice = format!(
            "{EXAMPLE}{filters}\n[[policy_service]]\nname = \"rspamd\"\naddress = \"127.0.0.1:1\"\n"
        );
        let error = parse(&twice).unwrap_err();
        assert_eq!(error.key, "policy_service[1].name");
        assert!(error.message.contains("used twice"), "{error}");
        assert!(error.line.is_some(), "{error}");
        // An unknown name in a chain.
        let unknown = EXAMPLE.replace(
            "protocol = \"smtp\"",
            "protocol = \"smtp\"\nplugins = [\"spamassassin\"]",
        );
        let error = parse(&format!("{unknown}{filters}")).unwrap_err();
        assert_eq!(error.key, "listener[0].plugins");
        assert!(error.to_string().starts_with("t.toml:"), "{error}");
        // Bad values, located.
        for (bad, key) in [
            ("address = \"localhost\"", "milter[0].address"),
            ("timeout_ms = 0", "milter[0].timeout_ms"),
            ("on_error = \"explode\"", "milter[0].on_error"),
        ] {
            let text = format!("{EXAMPLE}\n[[milter]]\nname = \"m\"\naddress = \"127.0.0.1:1\"\n")
                .replace(
                    "address = \"127.0.0.1:1\"",
                    if bad.starts_with("address") {
                        bad
                    } else {
                        "address = \"127.0.0.1:1\""
                    },
                )
                + if bad.starts_with("address") { "" } else { bad };
            let error = parse(&text).unwrap_err();
            assert_eq!(error.key, key, "{error}");
            assert!(error.line.is_some(), "{error}");
        }
        let error = parse(&format!(
            "{EXAMPLE}\n[[policy_service]]\nname = \"p\"\naddress = \"127.0.0.1:1\"\nstages = [\"queue\"]\n"
        ))
        .unwrap_err();
        assert!(error.key.starts_with("policy_service[0].stages"), "{error}");
    }
}
