//! What the host offers plugins: the `host` and `message` interfaces of the contract, and
//! the per-instance state (the wasmtime store data) they run against.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{Resource, ResourceTable};
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use tidegate_plugin_sdk::Message as _;
use tidegate_plugin_sdk::inspect::ParsedMessage;

use super::bindings::tidegate::plugin::{host, message, types};
use super::dns::Dns;
use super::kv::KvStore;
use crate::metrics::{Metrics, PluginCounterLabels};

/// Services shared by every plugin instance.
#[derive(Debug)]
pub struct HostServices {
    /// The key/value store.
    pub kv: KvStore,
    /// DNS for `resolve`.
    pub dns: Arc<Dns>,
    /// Where plugin counters and failures are counted.
    pub metrics: Arc<Metrics>,
}

/// The message as the `message` resource sees it: parsed once, shared by the chain.
pub struct MessageHandle(pub Arc<ParsedMessage>);

/// The store data of one plugin instance.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Memory and instance limits, enforced by wasmtime.
    pub limits: StoreLimits,
    plugin: Arc<str>,
    config_json: Arc<str>,
    services: Arc<HostServices>,
    /// The transaction's tags as of the current call.
    pub tags: BTreeMap<String, String>,
}

impl PluginState {
    /// State for an instance of `plugin`, limited to `memory_bytes` of linear memory.
    pub fn new(
        plugin: Arc<str>,
        config_json: Arc<str>,
        memory_bytes: usize,
        services: Arc<HostServices>,
    ) -> Self {
        // WASI with nothing granted: no directories, no environment, no sockets, no
        // arguments. Guests built with `std` import these interfaces; every call that
        // would reach outside the sandbox fails inside the guest.
        let wasi = WasiCtx::builder().build();
        PluginState {
            wasi,
            table: ResourceTable::new(),
            limits: StoreLimitsBuilder::new()
                .memory_size(memory_bytes)
                .trap_on_grow_failure(true)
                .build(),
            plugin,
            config_json,
            services,
            tags: BTreeMap::new(),
        }
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

    fn message(&self, handle: &Resource<MessageHandle>) -> wasmtime::Result<Arc<ParsedMessage>> {
        Ok(Arc::clone(&self.table.get(handle)?.0))
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

/// Bounds on what a plugin may pass the host in one call.
const MAX_LOG_LEN: usize = 4096;
const MAX_KEY_LEN: usize = 1024;

impl types::Host for PluginState {}

impl host::Host for PluginState {
    async fn log(
        &mut self,
        level: types::Level,
        message: String,
        fields: Vec<(String, String)>,
    ) -> wasmtime::Result<()> {
        let enabled = match level {
            types::Level::Trace => tracing::enabled!(tracing::Level::TRACE),
            types::Level::Debug => tracing::enabled!(tracing::Level::DEBUG),
            types::Level::Info => tracing::enabled!(tracing::Level::INFO),
            types::Level::Warn => tracing::enabled!(tracing::Level::WARN),
            types::Level::Error => tracing::enabled!(tracing::Level::ERROR),
        };
        if !enabled {
            // Plugins log per message; formatting lines nobody will see is wasted work.
            return Ok(());
        }
        let mut text: String = message.chars().take(MAX_LOG_LEN).collect();
        for (key, value) in fields.iter().take(32) {
            text.push_str(&format!(" {key}={value:?}"));
        }
        let plugin = &*self.plugin;
        match level {
            types::Level::Trace => tracing::trace!(plugin, "{text}"),
            types::Level::Debug => tracing::debug!(plugin, "{text}"),
            types::Level::Info => tracing::info!(plugin, "{text}"),
            types::Level::Warn => tracing::warn!(plugin, "{text}"),
            types::Level::Error => tracing::error!(plugin, "{text}"),
        }
        Ok(())
    }

    async fn resolve(
        &mut self,
        name: String,
        kind: types::RecordType,
    ) -> wasmtime::Result<Result<Vec<String>, types::DnsError>> {
        Ok(self.services.dns.lookup(&name, kind).await)
    }

    async fn kv_get(&mut self, key: String) -> wasmtime::Result<Option<Vec<u8>>> {
        Ok(self.services.kv.get(&self.plugin, &key))
    }

    async fn kv_set(
        &mut self,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<()> {
        if key.len() <= MAX_KEY_LEN {
            let ttl = ttl_ms.map(Duration::from_millis);
            if !self.services.kv.set(&self.plugin, &key, &value, ttl) {
                tracing::warn!(plugin = &*self.plugin, "kv-set value too large, ignored");
            }
        }
        Ok(())
    }

    async fn kv_incr(
        &mut self,
        key: String,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> wasmtime::Result<i64> {
        if key.len() > MAX_KEY_LEN {
            return Ok(0);
        }
        let ttl = ttl_ms.map(Duration::from_millis);
        Ok(self.services.kv.incr(&self.plugin, &key, delta, ttl))
    }

    async fn kv_delete(&mut self, key: String) -> wasmtime::Result<()> {
        self.services.kv.delete(&self.plugin, &key);
        Ok(())
    }

    async fn now_ms(&mut self) -> wasmtime::Result<u64> {
        Ok(std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)))
    }

    async fn counter_add(&mut self, name: String, delta: u64) -> wasmtime::Result<()> {
        // Bounded names keep the label set (and the metrics page) bounded.
        if name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            self.services
                .metrics
                .plugin_counters
                .get_or_create(&PluginCounterLabels {
                    plugin: self.plugin.to_string(),
                    name,
                })
                .inc_by(delta);
        }
        Ok(())
    }

    async fn config(&mut self) -> wasmtime::Result<String> {
        Ok(self.config_json.to_string())
    }

    async fn tag(&mut self, key: String) -> wasmtime::Result<Option<String>> {
        Ok(self.tags.get(&key).cloned())
    }
}

impl message::Host for PluginState {}

impl message::HostMessage for PluginState {
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
    ) -> wasmtime::Result<Vec<types::Attachment>> {
        Ok(self
            .message(&this)?
            .attachments()
            .into_iter()
            .map(|a| types::Attachment {
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
