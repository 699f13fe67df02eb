//! The plugin runtime: sandboxed WebAssembly components called at every SMTP stage.
//!
//! [`engine`] owns wasmtime (pooling allocation, fuel, epochs, the precompiled cache);
//! [`chain`] holds loaded plugins and runs a listener's chain for a session; [`services`]
//! implements the host functions of the contract (with [`kv`] and [`dns`]); [`reload`]
//! swaps plugin versions while mail keeps flowing. The set of loaded plugins is an
//! `ArcSwap` snapshot: a session takes its chain at connect and keeps it.

pub mod bindings;
pub mod cache;
pub mod chain;
pub mod compat;
pub mod dns;
pub mod engine;
pub mod http;
pub mod kv;
pub mod limits;
pub mod record;
pub mod replay;
pub mod services;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, PluginConfig};
use crate::filters::Filter;
use crate::metrics::Metrics;
use chain::{Chain, Element, LoadedPlugin, SessionPlugins};
use engine::PluginEngine;
use services::HostServices;

/// The loaded plugins and each listener's chain: one immutable snapshot.
#[derive(Debug, Default)]
pub struct PluginSet {
    /// Plugins by name.
    pub plugins: HashMap<String, Arc<LoadedPlugin>>,
    /// Chains by listener name.
    pub chains: HashMap<String, Arc<Chain>>,
    /// Plugin names in configuration order.
    pub order: Vec<String>,
    /// Every plugin in configuration order: the delivery queue's chain.
    pub queue_chain: Arc<Chain>,
    /// Milters and policy services by name.
    pub filters: HashMap<String, Arc<Filter>>,
}

/// The plugin runtime of a running server.
#[derive(Debug)]
pub struct PluginHost {
    engine: Arc<PluginEngine>,
    services: Arc<HostServices>,
    current: ArcSwap<PluginSet>,
    /// The records writer of each listener with `record` (made at start; a reload does
    /// not change it).
    recorders: HashMap<String, Arc<record::RecordWriter>>,
}

impl PluginHost {
    /// Builds the runtime and loads every configured plugin; any plugin that fails to load
    /// is an error at start-up (a gateway must not start without the policy it was given).
    pub async fn start(
        config: &Config,
        dns: Arc<crate::dns::Dns>,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Arc<PluginHost>> {
        let slot = engine::memory_slot(config.largest_plugin_memory());
        let instances = match config.plugins.max_instances {
            Some(configured) => configured,
            None => {
                // The computed default stays within what a process can map; past it, a
                // session that finds no instance free gets 451 (never skipped policy).
                let wanted = config.plugin_instances();
                let cap = engine::DEFAULT_INSTANCES_CAP.min(engine::instances_that_fit(slot));
                if wanted > cap {
                    tracing::warn!(
                        wanted,
                        cap,
                        "max_connections x the plugin chain needs more instances than the default pool holds; set [plugins] max_instances to raise it"
                    );
                }
                wanted.min(cap.max(16))
            }
        };
        let engine = PluginEngine::new(&config.plugins, instances, slot)
            .map_err(|e| anyhow::anyhow!("plugin engine: {e:#}"))?;
        let kv = kv::Kv::new(&config.kv, Arc::clone(&metrics))
            .map_err(|e| anyhow::anyhow!("[kv]: {e}"))?;
        if let kv::Kv::Redis(_) = &kv {
            tracing::info!(url = ?config.kv.url, "plugin KV store in redis");
        }
        // The gateway's own addresses: a plugin reaches them only through an entry of
        // `http_allow` that names them.
        let own = config
            .listeners
            .iter()
            .map(|l| l.address)
            .chain(config.admin.address)
            .collect();
        let mut services = HostServices::new(dns, metrics, kv);
        services.http = http::HttpServices::new(own);
        let services = Arc::new(services);
        let mut recorders = HashMap::new();
        for listener in &config.listeners {
            if let Some(settings) = &listener.record {
                let writer = record::RecordWriter::start(settings, Arc::clone(&services.metrics))
                    .map_err(|e| {
                    anyhow::anyhow!(
                        "listener `{}`: records directory {}: {e}",
                        listener.name,
                        settings.path.display()
                    )
                })?;
                recorders.insert(listener.name.clone(), writer);
            }
        }
        let host = PluginHost {
            engine,
            services,
            current: ArcSwap::from_pointee(PluginSet::default()),
            recorders,
        };
        let set = host
            .build_set(config, &PluginSet::default())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        host.current.store(Arc::new(set));
        Ok(Arc::new(host))
    }

    /// The plugins for a new session on `listener`.
    pub fn session(&self, listener: &str) -> SessionPlugins {
        let chain = self
            .current
            .load()
            .chains
            .get(listener)
            .cloned()
            .unwrap_or_default();
        let mut plugins =
            SessionPlugins::new(chain, Arc::clone(&self.engine), Arc::clone(&self.services));
        if let Some(writer) = self.recorders.get(listener).filter(|w| w.sampled()) {
            plugins.set_recorder(record::SessionRecorder::new(
                listener,
                Some(Arc::clone(writer)),
                writer.body_bytes,
            ));
        }
        plugins
    }

    /// The plugins for the delivery queue: every loaded plugin, in configuration order
    /// (only those with on-route or on-delivery are ever called there).
    pub fn queue_session(&self) -> SessionPlugins {
        SessionPlugins::new(
            Arc::clone(&self.current.load().queue_chain),
            Arc::clone(&self.engine),
            Arc::clone(&self.services),
        )
    }

    /// Whether a queue session still runs the current plugin versions (a reload since it
    /// was made means it must not be reused).
    pub fn is_current_queue_session(&self, session: &SessionPlugins) -> bool {
        Arc::ptr_eq(session.chain(), &self.current.load().queue_chain)
    }

    /// The shared host services (counters for metrics, the KV store).
    pub fn services(&self) -> &Arc<HostServices> {
        &self.services
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<PluginSet> {
        self.current.load_full()
    }

    /// Reloads against `config`, all or nothing: plugins whose file and settings are
    /// unchanged are kept, changed and new ones are loaded afresh, and only when every one
    /// of them compiles, links and initialises does the new set replace the running one.
    /// Otherwise nothing changes, and the failure is logged, counted in
    /// `tidegate_plugin_reload_failures_total` and returned. Returns the names of the
    /// plugins that changed.
    pub async fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        let old = self.current.load_full();
        let set = match self.build_set(config, &old).await {
            Ok(set) => set,
            Err(e) => {
                self.services.metrics.plugin_reload_failures.inc();
                tracing::error!(error = %e, "plugin reload refused, keeping every running plugin");
                return Err(e);
            }
        };
        let mut changed: Vec<String> = set
            .plugins
            .iter()
            .filter(|(name, p)| old.plugins.get(*name).is_none_or(|o| !Arc::ptr_eq(o, p)))
            .map(|(name, _)| name.clone())
            .collect();
        changed.extend(
            set.filters
                .iter()
                .filter(|(name, f)| old.filters.get(*name).is_none_or(|o| !Arc::ptr_eq(o, f)))
                .map(|(name, _)| name.clone()),
        );
        self.current.store(Arc::new(set));
        if !changed.is_empty() {
            self.services.metrics.plugin_reloads.inc();
        }
        Ok(changed)
    }

    async fn build_set(&self, config: &Config, old: &PluginSet) -> Result<PluginSet, String> {
        let mut plugins = HashMap::new();
        for plugin_config in &config.plugin_list {
            let previous = old.plugins.get(&plugin_config.name);
            let loaded = self.load_one(plugin_config, previous).await.map_err(|e| {
                format!(
                    "plugin `{}` ({}): {e}",
                    plugin_config.name,
                    plugin_config.path.display()
                )
            })?;
            plugins.insert(plugin_config.name.clone(), loaded);
        }
        let mut filters = HashMap::new();
        let built = config.policy_services.iter().map(Filter::policy).chain(
            config
                .milters
                .iter()
                .map(|m| Filter::milter(m, config.hostname.as_str())),
        );
        // Without a `plugins` list a listener runs every plugin, then every policy
        // service, then every milter, each in configuration order.
        let mut default_order: Vec<String> =
            config.plugin_list.iter().map(|p| p.name.clone()).collect();
        for filter in built {
            let name = filter.name().to_string();
            default_order.push(name.clone());
            // Unchanged settings keep the running filter (a policy service's open
            // connections with it).
            let filter = match old.filters.get(&name) {
                Some(previous) if previous.same_settings(&filter) => Arc::clone(previous),
                _ => Arc::new(filter),
            };
            filters.insert(name, filter);
        }
        let mut chains = HashMap::new();
        for listener in &config.listeners {
            let names: Vec<&str> = match &listener.plugins {
                Some(names) => names.iter().map(String::as_str).collect(),
                None => default_order.iter().map(String::as_str).collect(),
            };
            let mut chain = Chain::default();
            for name in names {
                if let Some(plugin) = plugins.get(name) {
                    chain.order.push(Element::Plugin(chain.plugins.len()));
                    chain.plugins.push(Arc::clone(plugin));
                } else if let Some(filter) = filters.get(name) {
                    chain.order.push(Element::Filter(chain.filters.len()));
                    chain.filters.push(Arc::clone(filter));
                }
            }
            chains.insert(listener.name.clone(), Arc::new(chain));
        }
        let order: Vec<String> = config.plugin_list.iter().map(|p| p.name.clone()).collect();
        let queue_chain = Arc::new(Chain::of_plugins(
            order
                .iter()
                .filter_map(|n| plugins.get(n).cloned())
                .collect(),
        ));
        Ok(PluginSet {
            plugins,
            chains,
            order,
            queue_chain,
            filters,
        })
    }

    async fn load_one(
        &self,
        config: &PluginConfig,
        previous: Option<&Arc<LoadedPlugin>>,
    ) -> Result<Arc<LoadedPlugin>, String> {
        if let Some(previous) = previous
            && previous.config == *config
            && let Ok(bytes) = tokio::fs::read(&config.path).await
        {
            use sha2::{Digest, Sha256};
            let hash: String = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            if hash == previous.hash {
                return Ok(Arc::clone(previous));
            }
        }
        let started = std::time::Instant::now();
        let loaded = LoadedPlugin::load(&self.engine, config, &self.services).await?;
        tracing::info!(plugin = %loaded.name, hash = &loaded.hash[..12], hooks = ?loaded.hooks, ms = started.elapsed().as_millis() as u64, "plugin loaded");
        Ok(loaded)
    }
}
