//! What the host offers plugins: the `host` and `message` interfaces of the contract, and
//! the per-instance state (the wasmtime store data) they run against.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use wasmtime::component::{Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use tidegate_plugin_sdk::Message as _;
use tidegate_plugin_sdk::inspect::ParsedMessage;

use super::bindings::tidegate::plugin::{host, message, types};
use super::kv::{Kv, KvError, Quota, Usage};
use super::limits::{
    Admit, Failure, MAX_LOG_FIELD, MAX_LOG_FIELDS, MAX_LOG_LINE, MemoryLimiter, OverLimit,
    PluginLimits,
};
use super::record::{CallTape, convert};
use crate::dns::Dns;
use crate::metrics::{Metrics, PluginCounterLabels, PluginHttpLabels, PluginLabels};
use tidegate_plugin_sdk::record::{Answer, Bytes};

/// Services shared by every plugin instance.
#[derive(Debug, Default)]
pub struct HostServices {
    /// The key/value store (in this process, or in Redis for a fleet).
    pub kv: Kv,
    /// DNS for `resolve`.
    pub dns: Arc<Dns>,
    /// Where plugin counters and failures are counted.
    pub metrics: Arc<Metrics>,
    /// What plugins' HTTP calls share.
    pub http: super::http::HttpServices,
    /// The counter names each plugin has created, bounded by its `max_counters`.
    counter_names: Mutex<HashMap<String, HashSet<String>>>,
    /// The queue's destination gates, for `suspend-destination` (set once the queue
    /// runs; weak, so the plugins never keep the queue alive).
    pub destinations: std::sync::OnceLock<std::sync::Weak<dyn DestinationControl>>,
}

/// What on-delivery may do to a destination.
pub trait DestinationControl: Send + Sync + std::fmt::Debug {
    /// Suspends the gate `key` for `ms` milliseconds; false when it has no gate.
    fn suspend(&self, key: &str, ms: u64, reason: &str) -> bool;
}

impl HostServices {
    /// Services over this resolver, these metrics and this KV store.
    pub fn new(dns: Arc<Dns>, metrics: Arc<Metrics>, kv: Kv) -> HostServices {
        HostServices {
            kv,
            dns,
            metrics,
            ..HostServices::default()
        }
    }

    /// Whether `plugin` may add to counter `name`: a name it has used, or a new one within
    /// its bound.
    fn admit_counter(&self, plugin: &str, name: &str, max: usize) -> bool {
        let Ok(mut all) = self.counter_names.lock() else {
            return false;
        };
        let names = all.entry(plugin.to_owned()).or_default();
        if names.contains(name) {
            return true;
        }
        if names.len() >= max {
            return false;
        }
        names.insert(name.to_owned());
        true
    }
}

/// Writes a plugin's log line through its budget: dropped lines are counted, and the next
/// line written says how many went before it.
fn write_log(
    plugin: &str,
    limits: &PluginLimits,
    metrics: &Metrics,
    level: types::Level,
    text: &str,
) {
    let dropped = match limits.log.admit() {
        Admit::Write { dropped } => dropped,
        Admit::Drop { first } => {
            if first {
                tracing::warn!(
                    plugin,
                    limit = limits.log.per_second(),
                    "plugin is over log_lines_per_second, dropping its log lines"
                );
            }
            metrics
                .plugin_log_dropped
                .get_or_create(&PluginLabels {
                    plugin: plugin.to_owned(),
                })
                .inc();
            return;
        }
    };
    if dropped > 0 {
        tracing::warn!(
            plugin,
            dropped,
            "plugin log lines dropped over log_lines_per_second"
        );
    }
    match level {
        types::Level::Trace => tracing::trace!(plugin, "{text}"),
        types::Level::Debug => tracing::debug!(plugin, "{text}"),
        types::Level::Info => tracing::info!(plugin, "{text}"),
        types::Level::Warn => tracing::warn!(plugin, "{text}"),
        types::Level::Error => tracing::error!(plugin, "{text}"),
    }
}

/// The session facts of a call outside any session (the delivery side).
pub fn no_session() -> types::SessionInfo {
    types::SessionInfo {
        client_ip: String::new(),
        client_port: 0,
        listener: String::new(),
        reverse_dns: None,
        helo: None,
        tls: None,
        auth_identity: None,
    }
}

/// Cuts `text` to at most `max` bytes on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A guest's stdout or stderr (where a Rust guest's panic message goes): each line becomes
/// a log line of the plugin, under the same budget as its `log` calls.
#[derive(Clone)]
struct GuestOutput {
    plugin: Arc<str>,
    stream: &'static str,
    limits: Arc<PluginLimits>,
    metrics: Arc<Metrics>,
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(GuestLines {
            output: self.clone(),
            line: Vec::new(),
        })
    }
}

/// The line being assembled from a guest's writes (bounded: a longer line is cut).
struct GuestLines {
    output: GuestOutput,
    line: Vec<u8>,
}

impl GuestLines {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let out = &self.output;
        let line = format!("{}: {}", out.stream, text.trim_end());
        write_log(
            &out.plugin,
            &out.limits,
            &out.metrics,
            types::Level::Warn,
            &line,
        );
        self.line.clear();
    }
}

impl AsyncWrite for GuestLines {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        for &byte in buf {
            if byte == b'\n' {
                this.emit();
            } else if this.line.len() < MAX_LOG_LINE {
                this.line.push(byte);
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_mut().emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for GuestLines {
    fn drop(&mut self) {
        self.emit();
    }
}

/// The message as the `message` resource sees it: parsed once, shared by the chain.
pub struct MessageHandle(pub Arc<ParsedMessage>);

/// The store data of one plugin instance.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// The memory limit, enforced by wasmtime through this limiter.
    pub limits: MemoryLimiter,
    plugin: Arc<str>,
    config_json: Arc<str>,
    bounds: Arc<PluginLimits>,
    services: Arc<HostServices>,
    /// The transaction's tags as of the current call.
    pub tags: BTreeMap<String, String>,
    /// The session's facts as of the current call.
    pub session: Arc<types::SessionInfo>,
    /// In on-delivery: the outcome's facts (`delivery-facts`).
    pub delivery: Option<Arc<types::OutcomeFacts>>,
    /// Whether the current call is on-route (`choose-egress` is allowed).
    pub routing: bool,
    /// The egress pool on-route chose (`choose-egress`).
    pub egress_choice: Option<String>,
    /// The transaction's sender authentication results as of the current call.
    pub auth_results: Arc<Vec<types::AuthResult>>,
    /// DNS queries made in the current call and in the current session.
    dns_in_call: u32,
    dns_in_session: u32,
    /// HTTP calls made in the current call, and when the current call must be answered.
    http_in_call: u32,
    call_deadline: std::time::Instant,
    /// A recorded session: the current call's host answers are written down here, or (in
    /// a replay) taken from here instead of DNS, KV, the clock and HTTP.
    pub tape: Option<CallTape>,
}

impl PluginState {
    /// State for an instance of `plugin`, limited to `memory_bytes` of linear memory and
    /// to `bounds` in its host calls.
    pub fn new(
        plugin: Arc<str>,
        config_json: Arc<str>,
        memory_bytes: usize,
        bounds: Arc<PluginLimits>,
        services: Arc<HostServices>,
    ) -> Self {
        // WASI with nothing granted: no directories, no environment, no sockets, no
        // arguments. Guests built with `std` import these interfaces; every call that
        // would reach outside the sandbox fails inside the guest. Clock waits (a guest's
        // `sleep`) are allowed but count against the call's wall-clock deadline, and what
        // the guest prints goes to the log under its log budget.
        let output = |stream| GuestOutput {
            plugin: Arc::clone(&plugin),
            stream,
            limits: Arc::clone(&bounds),
            metrics: Arc::clone(&services.metrics),
        };
        let wasi = WasiCtx::builder()
            .stdout(output("stdout"))
            .stderr(output("stderr"))
            .build();
        PluginState {
            wasi,
            table: ResourceTable::new(),
            limits: MemoryLimiter::new(memory_bytes),
            plugin,
            config_json,
            bounds,
            services,
            tags: BTreeMap::new(),
            session: Arc::new(no_session()),
            delivery: None,
            routing: false,
            egress_choice: None,
            auth_results: Arc::new(Vec::new()),
            dns_in_call: 0,
            dns_in_session: 0,
            http_in_call: 0,
            call_deadline: std::time::Instant::now(),
            tape: None,
        }
    }

    /// A new call begins, to be answered by `deadline`: its own DNS and HTTP budgets.
    pub fn start_call(&mut self, deadline: std::time::Instant) {
        self.dns_in_call = 0;
        self.http_in_call = 0;
        self.call_deadline = deadline;
    }

    /// A new session begins on this instance: nothing of the last one's budgets or tags.
    pub fn start_session(&mut self) {
        self.dns_in_session = 0;
        self.tags.clear();
        self.session = Arc::new(no_session());
        self.auth_results = Arc::new(Vec::new());
    }

    fn quota(&self) -> Quota {
        Quota {
            max_bytes: self.bounds.kv_max_bytes,
            max_keys: self.bounds.kv_max_keys,
        }
    }

    /// After a KV write: the namespace's use, for the metrics.
    fn record_kv_usage(&self, usage: Usage) {
        let Usage { keys, bytes } = usage;
        let labels = PluginLabels {
            plugin: self.plugin.to_string(),
        };
        let metrics = &self.services.metrics;
        metrics
            .plugin_kv_keys
            .get_or_create(&labels)
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
        metrics
            .plugin_kv_bytes
            .get_or_create(&labels)
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Puts a message into the resource table for one on-data call.
    pub fn lend_message(
        &mut self,
        message: Arc<ParsedMessage>,
    ) -> wasmtime::Result<Resource<MessageHandle>> {
        Ok(self.table.push(MessageHandle(message))?)
    }

    /// Takes the message back after the call.
    pub fn reclaim_message(&mut self, handle: Resource<MessageHandle>) {
        let _ = self.table.delete(handle);
    }

    pub(super) fn message(
        &self,
        handle: &Resource<MessageHandle>,
    ) -> wasmtime::Result<Arc<ParsedMessage>> {
        Ok(Arc::clone(&self.table.get(handle)?.0))
    }
}

impl wasmtime_wasi_io::IoView for PluginState {
    fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The host functions' logic, shared by every version of the contract (the trait impls
/// below and in [`super::compat`] only convert types).
impl PluginState {
    pub(super) fn write_log_line(
        &self,
        level: types::Level,
        message: &str,
        fields: &[(String, String)],
    ) {
        let enabled = match level {
            types::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            types::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            types::Level::Info => tracing::enabled!(tracing::Level::INFO),
            types::Level::Warn => tracing::enabled!(tracing::Level::WARN),
            types::Level::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        if !enabled {
            // Plugins log per message; formatting lines nobody will see is wasted work.
            return;
        }
        let mut text = cut(message, MAX_LOG_LINE).to_owned();
        for (key, value) in fields.iter().take(MAX_LOG_FIELDS) {
            let value = cut(value, MAX_LOG_FIELD);
            text.push_str(&format!(" {}={value:?}", cut(key, MAX_LOG_FIELD)));
        }
        write_log(
            &self.plugin,
            &self.bounds,
            &self.services.metrics,
            level,
            &text,
        );
    }

    /// Takes one query from the call's and the session's DNS budget.
    fn take_dns_query(&mut self) -> Result<(), types::DnsError> {
        if self.dns_in_call >= self.bounds.dns_per_call
            || self.dns_in_session >= self.bounds.dns_per_session
        {
            // The plugin sees a temporary failure it can handle like any other: a lookup
            // over its budget is never sent.
            return Err(types::DnsError::Temporary(format!(
                "DNS query budget exhausted (dns_queries_per_call {}, dns_queries_per_session {})",
                self.bounds.dns_per_call, self.bounds.dns_per_session
            )));
        }
        self.dns_in_call += 1;
        self.dns_in_session += 1;
        Ok(())
    }

    pub(super) async fn lookup(
        &mut self,
        name: &str,
        kind: types::RecordType,
    ) -> Result<Vec<String>, types::DnsError> {
        self.take_dns_query()?;
        if let Some(tape) = CallTape::replaying(&mut self.tape) {
            return convert::dns_from(tape.resolve(name, convert::record_type_to(kind)));
        }
        let result = super::dns::lookup(&self.services.dns, name, kind).await;
        CallTape::note(&mut self.tape, || Answer::Resolve {
            name: name.to_owned(),
            kind: convert::record_type_to(kind),
            result: convert::dns_to(&result),
        });
        result
    }

    pub(super) async fn kv_write(
        &mut self,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> Result<(), KvError> {
        let quota = self.quota();
        let usage = self
            .services
            .kv
            .set(
                &self.plugin,
                key,
                value,
                ttl_ms.map(Duration::from_millis),
                quota,
            )
            .await?;
        self.record_kv_usage(usage);
        Ok(())
    }

    pub(super) async fn kv_add(
        &mut self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, KvError> {
        let quota = self.quota();
        let (value, usage) = self
            .services
            .kv
            .incr(
                &self.plugin,
                key,
                delta,
                ttl_ms.map(Duration::from_millis),
                quota,
            )
            .await?;
        self.record_kv_usage(usage);
        Ok(value)
    }

    pub(super) async fn kv_read(&mut self, key: &str) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(tape) = CallTape::replaying(&mut self.tape) {
            return tape
                .kv_get(key)
                .map_err(|e| kv_failure(KvError::Backend(e)));
        }
        let result = match self.services.kv.get(&self.plugin, key).await {
            Ok(value) => Ok(value),
            // An over-long key is never stored, so it is simply absent.
            Err(KvError::KeyTooLong(_)) => Ok(None),
            Err(e) => Err(e),
        };
        CallTape::note(&mut self.tape, || Answer::KvGet {
            key: key.to_owned(),
            result: match &result {
                Ok(value) => Ok(value.clone().map(Bytes)),
                Err(e) => Err(e.to_string()),
            },
        });
        result.map_err(kv_failure)
    }

    pub(super) async fn kv_remove(&mut self, key: &str) -> wasmtime::Result<()> {
        if let Some(tape) = CallTape::replaying(&mut self.tape) {
            return tape
                .kv_delete(key)
                .map_err(|e| kv_failure(KvError::Backend(e)));
        }
        let result = match self.services.kv.delete(&self.plugin, key).await {
            Ok(()) | Err(KvError::KeyTooLong(_)) => Ok(()),
            Err(e) => Err(e),
        };
        CallTape::note(&mut self.tape, || Answer::KvDelete {
            key: key.to_owned(),
            result: result.as_ref().map(|_| ()).map_err(ToString::to_string),
        });
        result.map_err(kv_failure)
    }

    /// `kv-set` of the current contract, through the tape.
    async fn kv_set_taped(
        &mut self,
        key: &str,
        value: &[u8],
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), types::KvError>> {
        if let Some(tape) = CallTape::replaying(&mut self.tape) {
            return match tape.kv_set(key) {
                Ok(result) => Ok(result.map_err(convert::kv_error_from)),
                Err(e) => Err(kv_failure(KvError::Backend(e))),
            };
        }
        let result = kv_error(self.kv_write(key, value, ttl_ms).await);
        CallTape::note(&mut self.tape, || Answer::KvSet {
            key: key.to_owned(),
            result: match &result {
                Ok(r) => Ok(r.as_ref().map(|_| ()).map_err(convert::kv_error_to)),
                Err(e) => Err(format!("{e:#}")),
            },
        });
        result
    }

    /// `kv-incr` of the current contract, through the tape.
    async fn kv_incr_taped(
        &mut self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, types::KvError>> {
        if let Some(tape) = CallTape::replaying(&mut self.tape) {
            return match tape.kv_incr(key, delta) {
                Ok(result) => Ok(result.map_err(convert::kv_error_from)),
                Err(e) => Err(kv_failure(KvError::Backend(e))),
            };
        }
        let result = kv_error(self.kv_add(key, delta, ttl_ms).await);
        CallTape::note(&mut self.tape, || Answer::KvIncr {
            key: key.to_owned(),
            delta,
            result: match &result {
                Ok(r) => Ok(r.clone().map_err(|e| convert::kv_error_to(&e))),
                Err(e) => Err(format!("{e:#}")),
            },
        });
        result
    }

    pub(super) fn now(&mut self) -> u64 {
        if let Some(tape) = CallTape::replaying(&mut self.tape) {
            return tape.now_ms();
        }
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        CallTape::note(&mut self.tape, || Answer::NowMs { ms });
        ms
    }

    pub(super) fn add_to_counter(&self, name: String, delta: u64) -> wasmtime::Result<()> {
        // Bounded names, and a bounded number of them, keep the metrics page bounded.
        if name.is_empty()
            || name.len() > 64
            || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return Err(wasmtime::Error::new(OverLimit::quota(format!(
                "counter name `{}` is not 1 to 64 of [A-Za-z0-9_]",
                cut(&name, 80).escape_debug()
            ))));
        }
        if !self
            .services
            .admit_counter(&self.plugin, &name, self.bounds.max_counters)
        {
            return Err(wasmtime::Error::new(OverLimit::quota(format!(
                "counter `{name}` would be over max_counters ({})",
                self.bounds.max_counters
            ))));
        }
        self.services
            .metrics
            .plugin_counters
            .get_or_create(&PluginCounterLabels {
                plugin: self.plugin.to_string(),
                name,
            })
            .inc_by(delta);
        Ok(())
    }

    pub(super) fn config_text(&self) -> String {
        self.config_json.to_string()
    }

    pub(super) fn tag_value(&self, key: &str) -> Option<String> {
        self.tags.get(key).cloned()
    }

    /// One HTTP call under the plugin's grant and the call's budget, counted by outcome.
    pub(super) async fn http(
        &mut self,
        request: types::HttpRequest,
    ) -> Result<types::HttpResponse, types::HttpError> {
        let method = convert::method_name(request.method);
        if let Some(tape) = CallTape::replaying(&mut self.tape) {
            return convert::http_from(tape.http(method, &request.url));
        }
        let url = request.url.clone();
        let result = self.http_uncached(request).await;
        CallTape::note(&mut self.tape, || Answer::Http {
            method: method.to_owned(),
            url,
            result: convert::http_to(&result),
        });
        result
    }

    async fn http_uncached(
        &mut self,
        request: types::HttpRequest,
    ) -> Result<types::HttpResponse, types::HttpError> {
        let grant = &self.bounds.http;
        let result = if grant.allow.is_empty() {
            // The common case, said plainly: nothing is granted unless configured.
            Err(types::HttpError::NotAllowed(
                "this plugin has no http_allow".into(),
            ))
        } else if self.http_in_call >= grant.calls_per_hook {
            Err(types::HttpError::Budget(format!(
                "http_max_calls_per_hook ({}) reached",
                grant.calls_per_hook
            )))
        } else {
            self.http_in_call += 1;
            super::http::call(
                grant,
                &self.services.http,
                &self.services.dns,
                request,
                self.call_deadline,
            )
            .await
        };
        let outcome = super::http::outcome(&result);
        if let Err(error) = &result {
            tracing::debug!(plugin = %self.plugin, outcome, error = ?error, "plugin HTTP call failed");
        }
        self.services
            .metrics
            .plugin_http_calls
            .get_or_create(&PluginHttpLabels {
                plugin: self.plugin.to_string(),
                result: outcome,
            })
            .inc();
        result
    }
}

/// One query of a `resolve-many`: sent (its name, type and task) or answered already.
enum Lookup {
    Sent(
        String,
        types::RecordType,
        tokio::task::JoinHandle<Result<Vec<String>, types::DnsError>>,
    ),
    Done(Result<Vec<String>, types::DnsError>),
}

/// A KV operation that failed as a call: the backend could not answer (Redis down or slow),
/// so the plugin's failure policy applies (the contract's `kv-error` has no case for it, and
/// a plugin could not decide anything better than its operator's `on_error`).
pub(super) fn kv_failure(error: KvError) -> wasmtime::Error {
    let kind = match error {
        KvError::Backend(_) => Failure::Kv,
        _ => Failure::Quota,
    };
    wasmtime::Error::new(OverLimit {
        kind,
        why: error.to_string(),
    })
}

/// What a plugin sees of a KV write's failure: a `kv-error` for its own mistakes (size,
/// quota), a failed call for the backend's.
fn kv_error<T>(result: Result<T, KvError>) -> wasmtime::Result<Result<T, types::KvError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(error @ KvError::Quota { .. }) => Ok(Err(types::KvError::Quota(error.to_string()))),
        Err(error @ (KvError::KeyTooLong(_) | KvError::ValueTooLarge(_))) => {
            Ok(Err(types::KvError::TooLarge(error.to_string())))
        }
        Err(error @ KvError::Backend(_)) => Err(kv_failure(error)),
    }
}

impl types::Host for PluginState {}

impl host::Host for PluginState {
    async fn log(
        &mut self,
        level: types::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        self.write_log_line(level, &message, &fields);
        Ok(())
    }

    async fn resolve(
        &mut self,
        name: String,
        kind: types::RecordType,
    ) -> wasmtime::Result<Result<Vec<String>, types::DnsError>> {
        Ok(self.lookup(&name, kind).await)
    }

    async fn resolve_many(
        &mut self,
        queries: Vec<(String, types::RecordType)>,
    ) -> wasmtime::Result<Vec<Result<Vec<String>, types::DnsError>>> {
        // Each query takes from the budget first; those within it run concurrently.
        // (A recorded session notes each query sent; a replay answers it from the tape.)
        let mut lookups = Vec::with_capacity(queries.len());
        for (name, kind) in queries {
            match self.take_dns_query() {
                Ok(()) => {
                    if let Some(tape) = CallTape::replaying(&mut self.tape) {
                        let answer =
                            convert::dns_from(tape.resolve(&name, convert::record_type_to(kind)));
                        lookups.push(Lookup::Done(answer));
                        continue;
                    }
                    let dns = Arc::clone(&self.services.dns);
                    let asked = name.clone();
                    lookups.push(Lookup::Sent(
                        asked,
                        kind,
                        tokio::spawn(async move { super::dns::lookup(&dns, &name, kind).await }),
                    ));
                }
                Err(over) => lookups.push(Lookup::Done(Err(over))),
            }
        }
        let mut answers = Vec::with_capacity(lookups.len());
        for lookup in lookups {
            answers.push(match lookup {
                Lookup::Sent(name, kind, task) => {
                    let result = task.await.unwrap_or_else(|e| {
                        Err(types::DnsError::Temporary(format!("lookup failed: {e}")))
                    });
                    CallTape::note(&mut self.tape, || Answer::Resolve {
                        name,
                        kind: convert::record_type_to(kind),
                        result: convert::dns_to(&result),
                    });
                    result
                }
                Lookup::Done(result) => result,
            });
        }
        Ok(answers)
    }

    async fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        self.kv_read(&key).await
    }

    async fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<(), types::KvError>> {
        self.kv_set_taped(&key, &value, ttl_ms).await
    }

    async fn kv_incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<Result<i64, types::KvError>> {
        self.kv_incr_taped(&key, delta, ttl_ms).await
    }

    async fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.kv_remove(&key).await
    }

    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(self.now())
    }

    async fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        self.add_to_counter(name, delta)
    }

    async fn config(&mut self) -> wasmtime::Result<String> {
        Ok(self.config_text())
    }

    async fn tag(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.tag_value(&key))
    }

    async fn session(&mut self) -> wasmtime::Result<types::SessionInfo> {
        Ok(self.session.as_ref().clone())
    }

    async fn auth_results(&mut self) -> wasmtime::Result<Vec<types::AuthResult>> {
        Ok(self.auth_results.as_ref().clone())
    }

    async fn http_call(
        &mut self,
        request: types::HttpRequest,
    ) -> wasmtime::Result<Result<types::HttpResponse, types::HttpError>> {
        Ok(self.http(request).await)
    }

    async fn delivery_facts(&mut self) -> wasmtime::Result<Option<types::OutcomeFacts>> {
        Ok(self.delivery.as_deref().cloned())
    }

    async fn choose_egress(&mut self, pool: String) -> wasmtime::Result<bool> {
        let plausible =
            !pool.is_empty() && pool.len() <= 64 && pool.bytes().all(|b| b.is_ascii_graphic());
        if !self.routing || !plausible {
            return Ok(false);
        }
        self.egress_choice = Some(pool);
        Ok(true)
    }

    async fn suspend_destination(
        &mut self,
        seconds: u32,
        reason: String,
    ) -> wasmtime::Result<bool> {
        let Some(facts) = self.delivery.as_deref() else {
            return Ok(false);
        };
        let Some(gates) = self
            .services
            .destinations
            .get()
            .and_then(std::sync::Weak::upgrade)
        else {
            return Ok(false);
        };
        // A reason is a log line: one line, bounded, printable.
        let reason: String = reason
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        let seconds = seconds.min(86_400);
        let done = gates.suspend(&facts.destination, u64::from(seconds) * 1000, &reason);
        if done {
            tracing::warn!(plugin = %self.plugin, destination = %facts.destination, seconds, %reason, "destination suspended by a plugin");
        }
        Ok(done)
    }
}

/// The `message` resource, for one version of the contract: the same for every version
/// (`$message` and `$types` name that version's generated modules).
macro_rules! host_message {
    ($message:ident, $types:ident) => {
        impl $message::Host for PluginState {}

        impl $message::HostMessage for PluginState {
            async fn raw_size(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<u64> {
                Ok(self.message(&this)?.raw_size())
            }

            async fn header(
                &mut self,
                this: Resource<MessageHandle>,
                name: String,
            ) -> wasmtime::Result<Option<String>> {
                Ok(self.message(&this)?.header(&name))
            }

            async fn headers(
                &mut self,
                this: Resource<MessageHandle>,
                name: String,
            ) -> wasmtime::Result<Vec<String>> {
                Ok(self.message(&this)?.headers(&name))
            }

            async fn header_names(
                &mut self,
                this: Resource<MessageHandle>,
            ) -> wasmtime::Result<Vec<String>> {
                Ok(self.message(&this)?.header_names())
            }

            async fn text_parts(
                &mut self,
                this: Resource<MessageHandle>,
                max_bytes: u32,
            ) -> wasmtime::Result<Vec<String>> {
                Ok(self.message(&this)?.text_parts(max_bytes))
            }

            async fn attachments(
                &mut self,
                this: Resource<MessageHandle>,
            ) -> wasmtime::Result<Vec<$types::Attachment>> {
                Ok(self
                    .message(&this)?
                    .attachments()
                    .into_iter()
                    .map(|a| $types::Attachment {
                        name: a.name,
                        content_type: a.content_type,
                        size: a.size,
                    })
                    .collect())
            }

            async fn raw_range(
                &mut self,
                this: Resource<MessageHandle>,
                offset: u64,
                len: u32,
            ) -> wasmtime::Result<Vec<u8>> {
                Ok(self.message(&this)?.raw_range(offset, len))
            }

            async fn drop(&mut self, this: Resource<MessageHandle>) -> wasmtime::Result<()> {
                self.reclaim_message(this);
                Ok(())
            }
        }
    };
}

pub(super) use host_message;

host_message!(message, types);
