//! The plugin runtime: sandboxed WebAssembly components called at every SMTP stage.
//!
//! [`engine`] owns wasmtime (pooling allocation, fuel, epochs, the precompiled cache);
//! [`chain`] holds loaded plugins and runs a listener's chain for a session; [`services`]
//! implements the host functions of the contract (with [`kv`] and [`dns`]); [`reload`]
//! swaps plugin versions while mail keeps flowing. The set of loaded plugins is an
//! `ArcSwap` snapshot: a session takes its chain at connect and keeps it. [`shadow`] and
//! [`canary`] run new versions beside (or instead of, for some sessions) the ones they may
//! replace.

pub mod bindings;
pub mod cache;
pub mod canary;
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
pub mod shadow;

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, PluginConfig, PluginMode};
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
    /// Shadow plugins' counts, by name.
    pub shadows: HashMap<String, Arc<shadow::ShadowStats>>,
    /// Canaries' states, by name (a reload's canary under its primary's name).
    pub canaries: HashMap<String, Arc<canary::CanaryState>>,
    /// New versions that entered a reload as canaries (`reload_as_canary`), by the name
    /// of the plugin they stand in for, which keeps running its previous version.
    pub candidates: HashMap<String, Arc<LoadedPlugin>>,
}

/// The plugin runtime of a running server.
#[derive(Debug)]
pub struct PluginHost {
    engine: Arc<PluginEngine>,
    services: Arc<HostServices>,
    current: ArcSwap<PluginSet>,
    /// Serialises building sets, so that shadow counts and canary states carried from one
    /// set to the next are never forked by two reloads at once.
    building: tokio::sync::Mutex<()>,
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
            building: tokio::sync::Mutex::new(()),
            recorders,
        };
        let set = host
            .build_set(config, &PluginSet::default())
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        host.current.store(Arc::new(set));
        Ok(Arc::new(host))
    }

    /// The plugins for a new session on `listener` (from an unknown client: no canary).
    pub fn session(&self, listener: &str) -> SessionPlugins {
        let chain = self
            .current
            .load()
            .chains
            .get(listener)
            .cloned()
            .unwrap_or_default();
        let plugins =
            SessionPlugins::new(chain, Arc::clone(&self.engine), Arc::clone(&self.services));
        self.recorded(listener, plugins)
    }

    /// The plugins for a new session on `listener` from `client`: canaries take the
    /// clients that fall in their share, and a `record` listener records the session.
    pub fn session_for(&self, listener: &str, client: std::net::IpAddr) -> SessionPlugins {
        let chain = self
            .current
            .load()
            .chains
            .get(listener)
            .cloned()
            .unwrap_or_default();
        let (chain, canaries) = canary::pick(&chain, client);
        let mut session =
            SessionPlugins::new(chain, Arc::clone(&self.engine), Arc::clone(&self.services));
        session.set_canaries(canaries);
        self.recorded(listener, session)
    }

    /// `plugins` with a recorder when `listener` records (and this session is sampled).
    fn recorded(&self, listener: &str, mut plugins: SessionPlugins) -> SessionPlugins {
        if let Some(writer) = self.recorders.get(listener).filter(|w| w.sampled()) {
            plugins.set_recorder(record::SessionRecorder::new(
                listener,
                Some(Arc::clone(writer)),
                writer.body_bytes,
            ));
        }
        plugins
    }

    /// A shadow's counts and sample of disagreements.
    pub fn shadow_report(&self, name: &str) -> Option<shadow::ShadowReport> {
        self.current.load().shadows.get(name).map(|s| s.report())
    }

    /// Makes canary `name` take every new session (until a reload changes it).
    pub fn promote(&self, name: &str) -> Result<canary::CanaryStatus, String> {
        let set = self.current.load();
        let state = set
            .canaries
            .get(name)
            .ok_or_else(|| format!("no canary is named `{name}`"))?;
        state.promote("by the operator");
        Ok(state.status())
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
            set.candidates
                .iter()
                .filter(|(name, c)| old.candidates.get(*name).is_none_or(|o| !Arc::ptr_eq(o, c)))
                .map(|(name, _)| format!("{name} (as a canary)")),
        );
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
        let _building = self.building.lock().await;
        let mut plugins = HashMap::new();
        let mut candidates = HashMap::new();
        for plugin_config in &config.plugin_list {
            let (loaded, candidate) = self.load_entry(plugin_config, old).await.map_err(|e| {
                format!(
                    "plugin `{}` ({}): {e}",
                    plugin_config.name,
                    plugin_config.path.display()
                )
            })?;
            plugins.insert(plugin_config.name.clone(), loaded);
            if let Some(candidate) = candidate {
                candidates.insert(plugin_config.name.clone(), candidate);
            }
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
        let mut default_order: Vec<String> = config
            .plugin_list
            .iter()
            .filter(|p| p.mode == PluginMode::Enforce)
            .map(|p| p.name.clone())
            .collect();
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
        let mut rollout = Rollout::new(config, &plugins, &candidates, old, &self.services.metrics);
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
            rollout.attach(&mut chain);
            chains.insert(listener.name.clone(), Arc::new(chain));
        }
        let order: Vec<String> = config.plugin_list.iter().map(|p| p.name.clone()).collect();
        // The delivery side runs the enforcing versions only.
        let queue_chain = Arc::new(Chain::of_plugins(
            config
                .plugin_list
                .iter()
                .filter(|p| p.mode == PluginMode::Enforce)
                .filter_map(|p| plugins.get(&p.name).cloned())
                .collect(),
        ));
        Ok(PluginSet {
            plugins,
            chains,
            order,
            queue_chain,
            filters,
            shadows: rollout.shadow_stats,
            canaries: rollout.canary_states,
            candidates,
        })
    }

    /// Loads one `[[plugin]]`: the version that runs, and the new version that enters as
    /// its canary when the plugin has `reload_as_canary` and its file or settings changed
    /// (a canary already under way is kept while its file is unchanged, and a promoted one
    /// becomes the running version at the next reload).
    async fn load_entry(
        &self,
        config: &PluginConfig,
        old: &PluginSet,
    ) -> Result<(Arc<LoadedPlugin>, Option<Arc<LoadedPlugin>>), String> {
        let previous = old.plugins.get(&config.name);
        let (Some(_), Some(previous)) = (config.reload_as_canary, previous) else {
            return Ok((self.load_one(config, previous).await?, None));
        };
        if config.mode != PluginMode::Enforce {
            return Ok((self.load_one(config, Some(previous)).await?, None));
        }
        if let Some(candidate) = old.candidates.get(&config.name) {
            let loaded = self.load_one(config, Some(candidate)).await?;
            if Arc::ptr_eq(&loaded, candidate) {
                let promoted = old
                    .canaries
                    .get(&config.name)
                    .is_some_and(|state| state.status().state == "promoted");
                if promoted {
                    tracing::info!(plugin = %config.name, hash = &loaded.hash[..12], "promoted canary is now the running version");
                    return Ok((loaded, None));
                }
                return Ok((Arc::clone(previous), Some(loaded)));
            }
            tracing::info!(plugin = %config.name, hash = &loaded.hash[..12], "plugin reloaded as a canary, replacing the previous canary");
            return Ok((Arc::clone(previous), Some(loaded)));
        }
        let loaded = self.load_one(config, Some(previous)).await?;
        if Arc::ptr_eq(&loaded, previous) {
            return Ok((loaded, None));
        }
        tracing::info!(plugin = %config.name, hash = &loaded.hash[..12], running = &previous.hash[..12], share = config.reload_as_canary, "plugin reloaded as a canary");
        Ok((Arc::clone(previous), Some(loaded)))
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

/// The shadows and canaries of a set being built: their counts and states carried over from
/// the running set where they still fit, and attached to each chain that runs their primary.
struct Rollout {
    shadows: Vec<(
        Arc<chain::LoadedPlugin>,
        Option<String>,
        Arc<tokio::sync::Semaphore>,
    )>,
    canaries: Vec<(Arc<chain::LoadedPlugin>, String)>,
    shadow_stats: HashMap<String, Arc<shadow::ShadowStats>>,
    canary_states: HashMap<String, Arc<canary::CanaryState>>,
}

impl Rollout {
    fn new(
        config: &Config,
        plugins: &HashMap<String, Arc<LoadedPlugin>>,
        candidates: &HashMap<String, Arc<LoadedPlugin>>,
        old: &PluginSet,
        metrics: &Arc<Metrics>,
    ) -> Rollout {
        let mut rollout = Rollout {
            shadows: Vec::new(),
            canaries: Vec::new(),
            shadow_stats: HashMap::new(),
            canary_states: HashMap::new(),
        };
        for plugin_config in &config.plugin_list {
            let Some(plugin) = plugins.get(&plugin_config.name) else {
                continue;
            };
            let name = &plugin_config.name;
            match plugin_config.mode {
                PluginMode::Enforce => {
                    let Some(candidate) = candidates.get(name) else {
                        continue;
                    };
                    // A reload's canary stands in for the running version of its own
                    // name; it keeps its state while it is the same candidate.
                    let policy = plugin_config.canary_policy();
                    let kept = old.canaries.get(name).filter(|state| {
                        state.fits(name, &policy)
                            && old
                                .candidates
                                .get(name)
                                .is_some_and(|c| Arc::ptr_eq(c, candidate))
                    });
                    let state = match kept {
                        Some(state) => Arc::clone(state),
                        None => Arc::new(canary::CanaryState::new(
                            name,
                            name,
                            policy,
                            Arc::clone(metrics),
                        )),
                    };
                    rollout.canary_states.insert(name.clone(), state);
                    rollout.canaries.push((Arc::clone(candidate), name.clone()));
                }
                PluginMode::Shadow => {
                    let of = plugin_config.shadow_of.clone();
                    let stats = match old.shadows.get(name) {
                        Some(stats) if stats.compares_with(of.as_deref()) => Arc::clone(stats),
                        _ => Arc::new(shadow::ShadowStats::new(name, of.as_deref())),
                    };
                    rollout.shadow_stats.insert(name.clone(), stats);
                    let sessions =
                        usize::try_from(plugin_config.shadow_max_sessions).unwrap_or(usize::MAX);
                    rollout.shadows.push((
                        Arc::clone(plugin),
                        of,
                        Arc::new(tokio::sync::Semaphore::new(sessions)),
                    ));
                }
                PluginMode::Canary => {
                    let Some(primary) = plugin_config.canary_of.clone() else {
                        continue;
                    };
                    let policy = plugin_config.canary_policy();
                    // An unchanged canary keeps its counts and its state (rolled back or
                    // promoted) over a reload; a new version of it starts afresh.
                    let kept = old.canaries.get(name).filter(|state| {
                        state.fits(&primary, &policy)
                            && old
                                .plugins
                                .get(name)
                                .is_some_and(|p| Arc::ptr_eq(p, plugin))
                    });
                    let state = match kept {
                        Some(state) => Arc::clone(state),
                        None => Arc::new(canary::CanaryState::new(
                            name,
                            &primary,
                            policy,
                            Arc::clone(metrics),
                        )),
                    };
                    rollout.canary_states.insert(name.clone(), state);
                    rollout.canaries.push((Arc::clone(plugin), primary));
                }
            }
        }
        rollout
    }

    /// Puts each shadow beside its primary in `chain` (or beside the chain), and each
    /// canary on its primary.
    fn attach(&mut self, chain: &mut Chain) {
        let position =
            |chain: &Chain, name: &str| chain.plugins.iter().position(|p| &*p.name == name);
        for (plugin, of, gate) in &self.shadows {
            let primary = match of {
                Some(of) => match position(chain, of) {
                    Some(index) => Some(index),
                    None => continue,
                },
                None => None,
            };
            let Some(stats) = self.shadow_stats.get(&*plugin.name) else {
                continue;
            };
            chain.shadows.push(shadow::Shadow {
                plugin: Arc::clone(plugin),
                primary,
                stats: Arc::clone(stats),
                gate: Arc::clone(gate),
            });
        }
        for (plugin, of) in &self.canaries {
            let (Some(index), Some(state)) =
                (position(chain, of), self.canary_states.get(&*plugin.name))
            else {
                continue;
            };
            chain.canaries.push(canary::Canary {
                position: index,
                plugin: Arc::clone(plugin),
                state: Arc::clone(state),
            });
        }
    }
}
