//! Loaded plugins, chains, and running a chain for one stage of one session.
//!
//! A session takes a snapshot of its listener's chain when it connects and keeps it to the
//! end, so a reload never changes the plugins under a session in progress. Each plugin gets
//! one instance per session, taken at the first hook it subscribes to. An instance that
//! fails (trap, fuel or memory exhausted, bad answer) is dropped at once and the plugin's
//! failure policy decides what the session sees.
//!
//! A chain's elements are plugins and external filters (milters and policy services, see
//! [`crate::filters`]), in the listener's order. A filter answers a stage with the same
//! response a plugin gives, and it goes through the same validation and failure policy.
//!
//! A healthy instance goes back to its plugin version's idle list when the session ends,
//! and the next session that takes it starts with a fresh `init` call: the plugin's
//! per-session value is rebuilt, while instantiation (the larger cost, paid per connection
//! otherwise) is not repeated. Instances are recycled a bounded number of times and never
//! after a call was cut off midway.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use tidegate_plugin_sdk::inspect::ParsedMessage;
use wasmtime::Store;
use wasmtime::component::Component;

use super::bindings::tidegate::plugin::types as w;
use super::bindings::v1;
use super::bindings::{Plugin, PluginPre};
use super::compat;
use super::engine::{FUEL_PER_MS, HoldsIdle, PluginEngine};
use super::limits::{CallError, Failure, PluginLimits, response as bounds};
use super::services::{HostServices, PluginState};
use crate::config::{OnError, PluginConfig};
use crate::filters::{Facts, Filter, FilterSession};
use crate::inbound::address::Mailbox;
use crate::metrics::{PluginFailureLabels, PluginHookLabels, PluginLabels};
use tidegate_plugin_sdk::check;

/// The stages of a session, as hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// on-connect
    Connect,
    /// on-helo
    Helo,
    /// on-auth
    Auth,
    /// on-mail-from
    MailFrom,
    /// on-rcpt-to
    RcptTo,
    /// on-data
    Data,
}

impl Hook {
    /// The hook's name in the contract, as in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Connect => "on-connect",
            Hook::Helo => "on-helo",
            Hook::Auth => "on-auth",
            Hook::MailFrom => "on-mail-from",
            Hook::RcptTo => "on-rcpt-to",
            Hook::Data => "on-data",
        }
    }

    fn flag(self) -> w::Hooks {
        match self {
            Hook::Connect => w::Hooks::CONNECT,
            Hook::Helo => w::Hooks::HELO,
            Hook::Auth => w::Hooks::AUTH,
            Hook::MailFrom => w::Hooks::MAIL_FROM,
            Hook::RcptTo => w::Hooks::RCPT_TO,
            Hook::Data => w::Hooks::DATA,
        }
    }

    /// Whether an edit may be asked for at this stage.
    fn allows(self, edit: &w::Edit) -> bool {
        match edit {
            w::Edit::SetTag(_) => true,
            w::Edit::SetSender(_) => matches!(self, Hook::MailFrom | Hook::Data),
            w::Edit::AddRecipient(_)
            | w::Edit::RemoveRecipient(_)
            | w::Edit::RewriteRecipient(_) => {
                matches!(self, Hook::RcptTo | Hook::Data)
            }
            w::Edit::AddHeader(_) | w::Edit::RemoveHeader(_) | w::Edit::ReplaceHeader(_) => {
                self == Hook::Data
            }
        }
    }
}

/// One version of one plugin, compiled, linked and validated.
pub struct LoadedPlugin {
    /// The configured name.
    pub name: Arc<str>,
    /// The component file.
    pub path: PathBuf,
    /// SHA-256 of the component's bytes.
    pub hash: String,
    /// The hooks it declared.
    pub hooks: w::Hooks,
    /// The configuration it was loaded with.
    pub config: PluginConfig,
    config_json: Arc<str>,
    /// What its host calls may do.
    pub limits: Arc<PluginLimits>,
    pre: Pre,
    /// The version of the contract it was built against.
    pub contract: &'static str,
    /// When this version was loaded.
    pub loaded_at: std::time::SystemTime,
    /// Instances of finished sessions, ready for the next one.
    idle: Mutex<Vec<Instance>>,
    idle_limit: usize,
}

impl HoldsIdle for LoadedPlugin {
    fn drop_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("name", &self.name)
            .field("hash", &self.hash)
            .field("hooks", &self.hooks)
            .finish_non_exhaustive()
    }
}

/// What loading one plugin version cost, measured by [`LoadedPlugin::load_measured`].
#[derive(Debug, Clone, Copy)]
pub struct LoadReport {
    /// Reading and compiling the component (or loading it from the precompiled cache).
    pub compile: std::time::Duration,
    /// Instantiating it and calling `init` the first time.
    pub instantiate: std::time::Duration,
    /// The linear memory of that instance after `init`, in bytes: what every idle or
    /// waiting instance of it holds.
    pub memory: usize,
}

impl LoadedPlugin {
    /// Compiles (or loads from cache), links, instantiates once and calls `init`, so a
    /// plugin that cannot run is refused here and never reaches a session.
    pub async fn load(
        engine: &Arc<PluginEngine>,
        config: &PluginConfig,
        services: &Arc<HostServices>,
    ) -> Result<Arc<LoadedPlugin>, String> {
        Self::load_measured(engine, config, services)
            .await
            .map(|(plugin, _)| plugin)
    }

    /// [`LoadedPlugin::load`], saying what each step took (`tidegate plugin check`).
    pub async fn load_measured(
        engine: &Arc<PluginEngine>,
        config: &PluginConfig,
        services: &Arc<HostServices>,
    ) -> Result<(Arc<LoadedPlugin>, LoadReport), String> {
        let limit = usize::try_from(config.memory_limit_mib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024 * 1024);
        if limit > engine.memory_slot() {
            return Err(format!(
                "memory_limit_mib {} is above the {} MiB the running gateway reserved per \
                 instance at start: restart to apply it",
                config.memory_limit_mib,
                engine.memory_slot() >> 20
            ));
        }
        let compile_engine = Arc::clone(engine);
        let path = config.path.clone();
        let started = Instant::now();
        let (component, hash): (Component, String) =
            tokio::task::spawn_blocking(move || compile_engine.compile(&path))
                .await
                .map_err(|e| format!("compilation task failed: {e}"))?
                .map_err(|e| e.to_string())?;
        let compiled = started.elapsed();
        let instance_pre = engine
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| format!("does not fit the host's imports: {e:#}"))?;
        let pre = match PluginPre::new(instance_pre.clone()) {
            Ok(pre) => Pre::Current(pre),
            Err(current) => match v1::PluginPre::new(instance_pre) {
                Ok(pre) => Pre::V1(pre),
                Err(_) => {
                    return Err(format!(
                        "does not export the tidegate:plugin hooks of version 0.2.0 or 0.1.0: {current:#}"
                    ));
                }
            },
        };
        let contract = match pre {
            Pre::Current(_) => "0.2.0",
            Pre::V1(_) => "0.1.0",
        };
        let config_json: Arc<str> = serde_json::to_string(&config.config)
            .map_err(|e| format!("config cannot be passed as JSON: {e}"))?
            .into();
        let mut plugin = LoadedPlugin {
            name: Arc::from(config.name.as_str()),
            path: config.path.clone(),
            hash,
            hooks: w::Hooks::empty(),
            config: config.clone(),
            config_json,
            limits: Arc::new(PluginLimits::new(config)),
            pre,
            contract,
            loaded_at: std::time::SystemTime::now(),
            idle: Mutex::new(Vec::new()),
            idle_limit: engine.idle_instances(),
        };
        let started = Instant::now();
        let probe = tokio::time::timeout(
            plugin.limits.time,
            Instance::create(&plugin, engine, services),
        )
        .await
        .map_err(|_| {
            format!(
                "init took longer than time_limit_ms ({} ms)",
                plugin.config.time_limit_ms
            )
        })?
        .map_err(|e| e.why)?;
        let report = LoadReport {
            compile: compiled,
            instantiate: started.elapsed(),
            memory: probe.store.data().limits.high_water,
        };
        plugin.hooks = probe.hooks;
        plugin.check_in(probe, &services.metrics);
        let plugin = Arc::new(plugin);
        let holder: Weak<dyn HoldsIdle> = Arc::downgrade(&plugin) as Weak<dyn HoldsIdle>;
        engine.register_idle_holder(holder);
        Ok((plugin, report))
    }

    fn fuel(&self) -> u64 {
        self.config.cpu_limit_ms.saturating_mul(FUEL_PER_MS)
    }

    /// Whether it declared this hook.
    pub fn subscribes(&self, hook: Hook) -> bool {
        self.hooks.contains(hook.flag())
    }

    /// An instance for a new session: a recycled one, re-initialised, or a new one.
    pub(super) async fn check_out(
        &self,
        engine: &PluginEngine,
        services: &Arc<HostServices>,
    ) -> Result<Instance, CallError> {
        let count = |source| {
            services
                .metrics
                .plugin_instances
                .get_or_create(&crate::metrics::PluginInstanceLabels {
                    plugin: self.name.to_string(),
                    source,
                })
                .inc();
        };
        loop {
            let recycled = self.idle.lock().map(|mut idle| idle.pop()).unwrap_or(None);
            let Some(mut instance) = recycled else {
                let created = Instance::create(self, engine, services).await;
                if created.is_ok() {
                    count("created");
                }
                return created;
            };
            match instance.begin_session(self).await {
                Ok(()) => {
                    count("reused");
                    return Ok(instance);
                }
                // It refused or trapped this time: drop it and try the next one (the
                // last resort, a new instance, reports its own failure).
                Err(why) => {
                    tracing::debug!(plugin = %self.name, error = %why, "recycled instance refused a new session");
                }
            }
        }
    }

    /// Takes back the instance of a finished session, if it is fit to serve another.
    pub(super) fn check_in(&self, instance: Instance, metrics: &crate::metrics::Metrics) {
        let high_water = instance.store.data().limits.high_water;
        let gauge = metrics.plugin_memory_bytes.get_or_create(&PluginLabels {
            plugin: self.name.to_string(),
        });
        let high_water = i64::try_from(high_water).unwrap_or(i64::MAX);
        if high_water > gauge.get() {
            gauge.set(high_water);
        }
        if instance.in_call || instance.sessions >= MAX_SESSIONS_PER_INSTANCE {
            return;
        }
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.idle_limit
        {
            idle.push(instance);
        }
    }
}

/// After this many sessions an instance is retired rather than recycled, so that what a
/// plugin accumulates in its memory over time (fragmentation, caches) stays bounded.
const MAX_SESSIONS_PER_INSTANCE: u32 = 1000;

/// One live instance of a plugin, serving one session at a time.
pub(super) struct Instance {
    store: Store<PluginState>,
    bindings: Bindings,
    hooks: w::Hooks,
    /// Sessions served, this one included.
    sessions: u32,
    /// A call is under way; if the instance is dropped in this state (its session was
    /// cancelled mid-call), its memory may be inconsistent and it must not be reused.
    in_call: bool,
}

impl Instance {
    async fn create(
        plugin: &LoadedPlugin,
        engine: &PluginEngine,
        services: &Arc<HostServices>,
    ) -> Result<Instance, CallError> {
        let memory = usize::try_from(plugin.config.memory_limit_mib)
            .unwrap_or(usize::MAX)
            .saturating_mul(1024 * 1024);
        let state = PluginState::new(
            Arc::clone(&plugin.name),
            Arc::clone(&plugin.config_json),
            memory,
            Arc::clone(&plugin.limits),
            Arc::clone(services),
        );
        let mut store = Store::new(engine.engine(), state);
        store.limiter(|state| &mut state.limits);
        store
            .set_fuel(plugin.fuel())
            .map_err(|e| CallError::new(Failure::Trap, format!("fuel: {e}")))?;
        store.epoch_deadline_async_yield_and_update(1);
        let bindings = match plugin.pre.instantiate(&mut store).await {
            Err(e) if e.is::<wasmtime::PoolConcurrencyLimitError>() => {
                // Instances kept idle for reuse must never cost a session its policy:
                // give their slots back and try once more.
                engine.drop_idle_instances();
                plugin.pre.instantiate(&mut store).await
            }
            other => other,
        }
        .map_err(|e| {
            if e.is::<wasmtime::PoolConcurrencyLimitError>() {
                CallError::new(
                    Failure::PoolFull,
                    "no plugin instance free: [plugins] max_instances are all in use",
                )
            } else {
                CallError::new(Failure::Init, format!("instantiation failed: {e:#}"))
            }
        })?;
        let mut instance = Instance {
            store,
            bindings,
            hooks: w::Hooks::empty(),
            sessions: 0,
            in_call: false,
        };
        instance.begin_session(plugin).await?;
        Ok(instance)
    }

    /// Calls `init`, which (re)builds the plugin's per-session value.
    async fn begin_session(&mut self, plugin: &LoadedPlugin) -> Result<(), CallError> {
        self.store.data_mut().start_session();
        self.start_call(plugin, Instant::now() + plugin.limits.time)?;
        let init = match &self.bindings {
            Bindings::Current(b) => b.tidegate_plugin_hooks().call_init(&mut self.store).await,
            Bindings::V1(b) => b
                .tidegate_plugin_hooks()
                .call_init(&mut self.store)
                .await
                .map(|r| r.map(compat::hooks_from)),
        };
        let hooks = init
            .map_err(|e| {
                let error = CallError::from_wasm(&e);
                CallError::new(error.kind, format!("init: {}", error.why))
            })?
            .map_err(|e| CallError::new(Failure::Init, format!("init refused: {e}")))?;
        self.in_call = false;
        self.hooks = hooks;
        self.sessions += 1;
        Ok(())
    }

    /// Gives the instance a fresh CPU and DNS budget for one call and marks the call under
    /// way (the caller clears the mark when the call returns).
    fn start_call(&mut self, plugin: &LoadedPlugin, deadline: Instant) -> Result<(), CallError> {
        self.store
            .set_fuel(plugin.fuel())
            .map_err(|e| CallError::new(Failure::Trap, format!("fuel: {e}")))?;
        self.store.data_mut().start_call(deadline);
        self.in_call = true;
        Ok(())
    }

    /// Ends a call that returned: the instance is consistent again; returns the fuel used.
    fn end_call(&mut self, plugin: &LoadedPlugin) -> u64 {
        self.in_call = false;
        plugin
            .fuel()
            .saturating_sub(self.store.get_fuel().unwrap_or(0))
    }
}

/// A plugin ready to instantiate, for the version of the contract it was built against.
enum Pre {
    Current(PluginPre<PluginState>),
    V1(v1::PluginPre<PluginState>),
}

impl Pre {
    async fn instantiate(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Bindings> {
        Ok(match self {
            Pre::Current(pre) => Bindings::Current(pre.instantiate_async(store).await?),
            Pre::V1(pre) => Bindings::V1(pre.instantiate_async(store).await?),
        })
    }
}

/// An instance's exports, by contract version.
enum Bindings {
    Current(Plugin),
    V1(v1::Plugin),
}

impl Instance {
    /// Calls a session hook, converting to and from the plugin's contract version.
    async fn call_stage(&mut self, input: &StageInput) -> Result<w::Response, CallError> {
        let store = &mut self.store;
        let result = match &self.bindings {
            Bindings::Current(b) => {
                let hooks = b.tidegate_plugin_hooks();
                match input {
                    StageInput::Connect(info) => hooks.call_on_connect(&mut *store, info).await,
                    StageInput::Helo(info) => hooks.call_on_helo(&mut *store, info).await,
                    StageInput::Auth(info) => hooks.call_on_auth(&mut *store, info).await,
                    StageInput::MailFrom(info) => hooks.call_on_mail_from(&mut *store, info).await,
                    StageInput::RcptTo(info) => hooks.call_on_rcpt_to(&mut *store, info).await,
                    StageInput::Data(envelope, message) => {
                        let handle = lend(store, message)?;
                        let borrowed = wasmtime::component::Resource::new_borrow(handle.rep());
                        let result = hooks.call_on_data(&mut *store, envelope, borrowed).await;
                        store.data_mut().reclaim_message(handle);
                        result
                    }
                }
            }
            Bindings::V1(b) => {
                let hooks = b.tidegate_plugin_hooks();
                let result = match input {
                    StageInput::Connect(info) => {
                        hooks
                            .call_on_connect(&mut *store, &compat::connect_to(info))
                            .await
                    }
                    StageInput::Helo(info) => {
                        hooks
                            .call_on_helo(&mut *store, &compat::helo_to(info))
                            .await
                    }
                    StageInput::Auth(info) => {
                        hooks
                            .call_on_auth(&mut *store, &compat::auth_to(info))
                            .await
                    }
                    StageInput::MailFrom(info) => {
                        hooks
                            .call_on_mail_from(&mut *store, &compat::mail_from_to(info))
                            .await
                    }
                    StageInput::RcptTo(info) => {
                        hooks
                            .call_on_rcpt_to(&mut *store, &compat::rcpt_to_to(info))
                            .await
                    }
                    StageInput::Data(envelope, message) => {
                        let handle = lend(store, message)?;
                        let borrowed = wasmtime::component::Resource::new_borrow(handle.rep());
                        let envelope = compat::envelope_to(envelope);
                        let result = hooks.call_on_data(&mut *store, &envelope, borrowed).await;
                        store.data_mut().reclaim_message(handle);
                        result
                    }
                };
                result.map(compat::response_from)
            }
        };
        result.map_err(|e| CallError::from_wasm(&e))
    }

    /// Calls a delivery-side hook.
    async fn call_other(&mut self, call: Other<'_>) -> Result<OtherResult, CallError> {
        let store = &mut self.store;
        let result = match (&self.bindings, call) {
            (Bindings::Current(b), Other::Route(recipient)) => b
                .tidegate_plugin_hooks()
                .call_on_route(&mut *store, recipient)
                .await
                .map(OtherResult::Route),
            (Bindings::Current(b), Other::Delivery(info)) => b
                .tidegate_plugin_hooks()
                .call_on_delivery(&mut *store, info)
                .await
                .map(|()| OtherResult::Done),
            (Bindings::Current(b), Other::Disconnect(summary)) => b
                .tidegate_plugin_hooks()
                .call_on_disconnect(&mut *store, summary)
                .await
                .map(|()| OtherResult::Done),
            (Bindings::V1(b), Other::Route(recipient)) => b
                .tidegate_plugin_hooks()
                .call_on_route(&mut *store, recipient)
                .await
                .map(|r| OtherResult::Route(r.map(compat::route_from))),
            (Bindings::V1(b), Other::Delivery(info)) => b
                .tidegate_plugin_hooks()
                .call_on_delivery(&mut *store, &compat::delivery_to(info))
                .await
                .map(|()| OtherResult::Done),
            // 0.1.0 has no on-disconnect (and never declares it).
            (Bindings::V1(_), Other::Disconnect(_)) => Ok(OtherResult::Done),
        };
        result.map_err(|e| CallError::from_wasm(&e))
    }
}

/// Puts the message into the store's resource table for one on-data call.
fn lend(
    store: &mut Store<PluginState>,
    message: &Arc<ParsedMessage>,
) -> Result<wasmtime::component::Resource<super::services::MessageHandle>, CallError> {
    store
        .data_mut()
        .lend_message(Arc::clone(message))
        .map_err(|e| CallError::new(Failure::Trap, format!("{e:#}")))
}

/// Whether an SMTP session may still call any of `hooks` after on-connect.
fn wanted_after_connect(hooks: w::Hooks) -> bool {
    [
        w::Hooks::HELO,
        w::Hooks::AUTH,
        w::Hooks::MAIL_FROM,
        w::Hooks::RCPT_TO,
        w::Hooks::DATA,
        w::Hooks::DISCONNECT,
    ]
    .into_iter()
    .any(|hook| hooks.contains(hook))
}

/// The plugins and external filters of one listener, in order.
#[derive(Debug, Clone, Default)]
pub struct Chain {
    /// The plugins, in the order they run.
    pub plugins: Vec<Arc<LoadedPlugin>>,
    /// The milters and policy services.
    pub filters: Vec<Arc<Filter>>,
    /// The order of the chain's elements.
    pub order: Vec<Element>,
    /// Shadows beside its plugins (or beside the whole chain).
    pub shadows: Vec<super::shadow::Shadow>,
    /// Canaries that may stand in for its plugins.
    pub canaries: Vec<super::canary::Canary>,
}

/// One element of a chain: an index into its plugins or its filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Element {
    /// `Chain::plugins[i]`.
    Plugin(usize),
    /// `Chain::filters[i]`.
    Filter(usize),
}

impl Chain {
    /// A chain of plugins only, in this order.
    pub fn of_plugins(plugins: Vec<Arc<LoadedPlugin>>) -> Chain {
        let order = (0..plugins.len()).map(Element::Plugin).collect();
        Chain {
            plugins,
            filters: Vec::new(),
            order,
            shadows: Vec::new(),
            canaries: Vec::new(),
        }
    }
}

/// What the session gives a stage.
#[derive(Clone)]
pub enum StageInput {
    /// on-connect
    Connect(w::ConnectInfo),
    /// on-helo
    Helo(w::HeloInfo),
    /// on-auth
    Auth(w::AuthInfo),
    /// on-mail-from
    MailFrom(w::MailFromInfo),
    /// on-rcpt-to
    RcptTo(w::RcptToInfo),
    /// on-data
    Data(w::Envelope, Arc<ParsedMessage>),
}

impl StageInput {
    /// The stage's hook.
    pub fn hook(&self) -> Hook {
        match self {
            StageInput::Connect(_) => Hook::Connect,
            StageInput::Helo(_) => Hook::Helo,
            StageInput::Auth(_) => Hook::Auth,
            StageInput::MailFrom(_) => Hook::MailFrom,
            StageInput::RcptTo(_) => Hook::RcptTo,
            StageInput::Data(..) => Hook::Data,
        }
    }
}

/// The chain's decision for a stage.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Nobody objected (every plugin said continue, or there are none).
    Continue,
    /// A plugin accepted; the rest of the chain was skipped.
    Accept,
    /// Refuse with this reply (5xx).
    Reject(w::Reply),
    /// Refuse with this reply (4xx); also what a failing plugin with `on_error =
    /// "tempfail"` produces.
    Tempfail(w::Reply),
    /// Accept and drop the message.
    Discard(String),
    /// Accept into quarantine.
    Quarantine(String),
    /// Refuse with this reply and close the connection.
    Disconnect(w::Reply),
}

/// The outcome of a stage: the decision and the edits (tags already applied).
#[derive(Debug)]
pub struct StageOutcome {
    /// The decision.
    pub decision: Decision,
    /// Edits other than tags, in order; addresses in them are valid and canonical.
    pub edits: Vec<w::Edit>,
}

/// A session's plugins: its chain snapshot and its instances.
pub struct SessionPlugins {
    chain: Arc<Chain>,
    engine: Arc<PluginEngine>,
    services: Arc<HostServices>,
    instances: Vec<Option<Instance>>,
    /// The session's state with each filter of the chain, made at its first stage.
    filter_sessions: Vec<Option<FilterSession>>,
    /// The current message's queue id, for filters (set at DATA).
    queue_id: Option<String>,
    /// What the `session` host function answers during this session's calls.
    session: Arc<w::SessionInfo>,
    /// The message's tags, for the delivery side's hooks.
    message_tags: BTreeMap<String, String>,
    /// What `auth-results` answers during this transaction's calls.
    auth_results: Arc<Vec<w::AuthResult>>,
    /// What `delivery-facts` answers during the next on-delivery calls.
    delivery_facts: Option<Arc<w::OutcomeFacts>>,
    /// The egress pool the last on-route call chose (`choose-egress`).
    egress_choice: Option<String>,
    /// Each plugin's verdicts since the last [`SessionPlugins::take_verdicts`], for the
    /// transaction's log line (bounded).
    verdicts: Vec<(Arc<str>, &'static str, &'static str)>,
    /// When the call under way must be answered (its plugin's and the stage's deadline),
    /// for host calls that wait (HTTP) to stay inside it.
    call_deadline: Instant,
    /// The session's shadow tasks.
    shadows: super::shadow::SessionShadows,
    /// What the session notes for its chain's canaries.
    canaries: super::canary::SessionCanaries,
    /// A recorded (or replayed) session's record ([`super::record`]).
    recorder: Option<super::record::SessionRecorder>,
    /// In a replay: the recorded answers for the next call.
    replay_tape: Option<tidegate_plugin_sdk::record::Tape>,
    /// The host answers of the call that just returned, for the recorder.
    last_tape: Option<super::record::CallTape>,
}

/// The most verdicts kept for one log line.
const MAX_LOGGED_VERDICTS: usize = 32;

/// The reply of a stage that policy could not decide.
fn policy_tempfail() -> Decision {
    Decision::Tempfail(w::Reply {
        code: 451,
        enhanced: "4.3.0".into(),
        text: "Temporary policy failure, try again later".into(),
    })
}

impl SessionPlugins {
    /// The plugins for a new session.
    pub fn new(chain: Arc<Chain>, engine: Arc<PluginEngine>, services: Arc<HostServices>) -> Self {
        let instances = chain.plugins.iter().map(|_| None).collect();
        let filter_sessions = chain.filters.iter().map(|_| None).collect();
        let shadows = super::shadow::SessionShadows::new(&chain.shadows);
        SessionPlugins {
            shadows,
            canaries: super::canary::SessionCanaries::default(),
            chain,
            engine,
            services,
            instances,
            filter_sessions,
            queue_id: None,
            session: Arc::new(super::services::no_session()),
            message_tags: BTreeMap::new(),
            auth_results: Arc::new(Vec::new()),
            delivery_facts: None,
            egress_choice: None,
            verdicts: Vec::new(),
            call_deadline: Instant::now(),
            recorder: None,
            replay_tape: None,
            last_tape: None,
        }
    }

    /// What the session notes for the canaries it runs (or stands beside).
    pub fn set_canaries(&mut self, canaries: super::canary::SessionCanaries) {
        self.canaries = canaries;
    }

    /// Records this session's plugin calls (a `record` listener's, or a replay's).
    pub fn set_recorder(&mut self, recorder: super::record::SessionRecorder) {
        self.recorder = Some(recorder);
    }

    /// The session's record so far.
    pub fn recorder_mut(&mut self) -> Option<&mut super::record::SessionRecorder> {
        self.recorder.as_mut()
    }

    /// In a replay: the next call's host answers come from this tape.
    pub fn set_replay_tape(&mut self, tape: tidegate_plugin_sdk::record::Tape) {
        self.replay_tape = Some(tape);
    }

    /// The plugins' verdicts since the last call, as `plugin:hook=verdict` words (for the
    /// transaction's log line), and forgets them.
    pub fn take_verdicts(&mut self) -> String {
        let words: Vec<String> = self
            .verdicts
            .drain(..)
            .map(|(plugin, hook, verdict)| format!("{plugin}:{hook}={verdict}"))
            .collect();
        words.join(" ")
    }

    fn note_verdict(&mut self, plugin: &Arc<str>, hook: &'static str, verdict: &'static str) {
        if self.verdicts.len() < MAX_LOGGED_VERDICTS {
            self.verdicts.push((Arc::clone(plugin), hook, verdict));
        }
    }

    /// The queue id of the message in progress, for filters (milter macro `i`, the
    /// policy attribute `queue_id`).
    pub fn set_queue_id(&mut self, id: Option<String>) {
        self.queue_id = id;
    }

    /// The transaction's sender authentication results, for the calls that follow.
    pub fn set_auth_results(&mut self, results: Vec<w::AuthResult>) {
        self.auth_results = Arc::new(results);
    }

    /// The session's facts, for the calls that follow.
    pub fn set_session(&mut self, info: w::SessionInfo) {
        self.session = Arc::new(info);
    }

    /// The tags of the message the delivery side's next calls are about (what `tag`
    /// answers in on-route and on-delivery).
    pub fn set_message_tags(&mut self, tags: &BTreeMap<String, String>) {
        self.message_tags.clone_from(tags);
    }

    /// Whether any plugin of the chain wants to hear of the session's end.
    pub fn wants_disconnect(&self) -> bool {
        self.has(w::Hooks::DISCONNECT)
    }

    /// Tells the plugins that want it that the session ended. Only instances the session
    /// already has are called: a session's end is no reason to start a plugin.
    pub async fn disconnect(&mut self, summary: &w::SessionSummary) {
        let deadline = Instant::now() + self.engine.stage_time_limit();
        for index in 0..self.chain.plugins.len() {
            let plugin = Arc::clone(&self.chain.plugins[index]);
            if !plugin.hooks.contains(w::Hooks::DISCONNECT) || self.instances[index].is_none() {
                continue;
            }
            let result = self
                .timed(&plugin, "on-disconnect", deadline, |this| {
                    this.call_other(index, &plugin, Other::Disconnect(summary))
                })
                .await;
            if let Err(error) = result {
                self.failed(index, &plugin, "on-disconnect", &error, None);
            }
        }
    }

    /// The chain snapshot this session runs.
    pub fn chain(&self) -> &Arc<Chain> {
        &self.chain
    }

    /// Whether any plugin of the chain subscribes to `hook` (lets the session skip work,
    /// such as parsing the message, that nobody would look at).
    pub fn wants(&self, hook: Hook) -> bool {
        self.chain
            .plugins
            .iter()
            .any(|p| p.hooks.contains(hook.flag()))
            || self.chain.filters.iter().any(|f| f.wants(hook))
    }

    /// Runs the chain for one stage. Tags set by a plugin are written to `tags` at once,
    /// so later plugins in the chain see them. The whole stage has the engine's stage
    /// deadline, each call its plugin's `time_limit_ms`, whichever comes first.
    pub async fn run(
        &mut self,
        input: StageInput,
        tags: &mut BTreeMap<String, String>,
    ) -> StageOutcome {
        let hook = input.hook();
        // A shadow of the whole chain sees the tags as the chain found them.
        let before = self.shadows.wants(None, hook).then(|| tags.clone());
        let outcome = self.run_chain(&input, tags).await;
        if let Some(before) = before {
            let (verdict, code) = decision_verdict(&outcome.decision);
            let enforced = super::shadow::Judged::new(verdict, code, &outcome.edits);
            self.offer_shadows(None, &input, before, enforced);
        }
        outcome
    }

    /// Hands a stage to the shadows of `primary` (`None`: of the chain).
    fn offer_shadows(
        &mut self,
        primary: Option<usize>,
        input: &StageInput,
        tags: BTreeMap<String, String>,
        enforced: super::shadow::Judged,
    ) {
        let offer = super::shadow::Offer {
            input,
            tags,
            session: &self.session,
            auth_results: &self.auth_results,
            enforced,
            queue_id: self.queue_id.clone(),
        };
        self.shadows
            .offer(primary, input.hook(), offer, &self.engine, &self.services);
    }

    async fn run_chain(
        &mut self,
        input: &StageInput,
        tags: &mut BTreeMap<String, String>,
    ) -> StageOutcome {
        let hook = input.hook();
        let deadline = Instant::now() + self.engine.stage_time_limit();
        if hook == Hook::MailFrom {
            for session in self.filter_sessions.iter_mut().flatten() {
                session.new_transaction();
            }
        }
        let mut edits = Vec::new();
        for position in 0..self.chain.order.len() {
            let (name, response) = match self.chain.order[position] {
                Element::Filter(index) => {
                    let filter = Arc::clone(&self.chain.filters[index]);
                    if !filter.wants(hook) {
                        continue;
                    }
                    let result = self.filter_call(index, &filter, input, deadline).await;
                    match result
                        .and_then(|r| validate(hook, r))
                        .and_then(|r| check_tag_room(r, tags))
                    {
                        Ok(response) => (Arc::clone(filter.name()), response),
                        Err(error) => {
                            let policy = filter.on_error();
                            self.filter_failed(&filter, hook.name(), &error, policy);
                            self.note_verdict(filter.name(), hook.name(), "failed");
                            match policy {
                                OnError::Continue => continue,
                                OnError::Tempfail => {
                                    return StageOutcome {
                                        decision: policy_tempfail(),
                                        edits,
                                    };
                                }
                            }
                        }
                    }
                }
                Element::Plugin(index) => {
                    // A shadow of this plugin sees the tags as the plugin found them.
                    let before = self.shadows.wants(Some(index), hook).then(|| tags.clone());
                    let step = self.plugin_stage(index, hook, input, tags, deadline).await;
                    if let Some(before) = before {
                        let enforced = match &step {
                            Step::Answer(response) => super::shadow::Judged::of(response, true),
                            Step::Skip if !self.chain.plugins[index].subscribes(hook) => {
                                super::shadow::Judged::new("continue", None, &[])
                            }
                            _ => super::shadow::Judged::new("failed", None, &[]),
                        };
                        self.offer_shadows(Some(index), input, before, enforced);
                    }
                    match step {
                        Step::Skip => continue,
                        Step::Tempfail => {
                            return StageOutcome {
                                decision: policy_tempfail(),
                                edits,
                            };
                        }
                        Step::Answer(response) => {
                            if matches!(
                                response.verdict,
                                w::Verdict::Reject(_)
                                    | w::Verdict::Tempfail(_)
                                    | w::Verdict::Disconnect(_)
                            ) {
                                self.canaries.refused(index);
                            }
                            (Arc::clone(&self.chain.plugins[index].name), response)
                        }
                    }
                }
            };
            for edit in response.edits {
                match edit {
                    w::Edit::SetTag((key, value)) => {
                        tags.insert(key, value);
                    }
                    other => edits.push(other),
                }
            }
            let verdict = match &response.verdict {
                w::Verdict::Continue => "continue",
                w::Verdict::Accept => "accept",
                w::Verdict::Reject(_) => "reject",
                w::Verdict::Tempfail(_) => "tempfail",
                w::Verdict::Discard(_) => "discard",
                w::Verdict::Quarantine(_) => "quarantine",
                w::Verdict::Disconnect(_) => "disconnect",
            };
            self.note_verdict(&name, hook.name(), verdict);
            let decision = match response.verdict {
                w::Verdict::Continue => continue,
                w::Verdict::Accept => Decision::Accept,
                w::Verdict::Reject(reply) => Decision::Reject(reply),
                w::Verdict::Tempfail(reply) => Decision::Tempfail(reply),
                w::Verdict::Discard(why) => Decision::Discard(why),
                w::Verdict::Quarantine(why) => Decision::Quarantine(why),
                w::Verdict::Disconnect(reply) => Decision::Disconnect(reply),
            };
            tracing::debug!(plugin = %name, hook = hook.name(), ?decision, "plugin decided");
            return StageOutcome { decision, edits };
        }
        StageOutcome {
            decision: Decision::Continue,
            edits,
        }
    }

    /// Calls plugin `index` for one stage and validates its answer; a failure is handled
    /// by its failure policy.
    async fn plugin_stage(
        &mut self,
        index: usize,
        hook: Hook,
        input: &StageInput,
        tags: &BTreeMap<String, String>,
        deadline: Instant,
    ) -> Step {
        let plugin = Arc::clone(&self.chain.plugins[index]);
        if !plugin.hooks.contains(hook.flag()) {
            return Step::Skip;
        }
        self.canaries.called(index);
        self.last_tape = None;
        let result = self
            .timed(&plugin, hook.name(), deadline, |this| {
                this.call(index, &plugin, input, tags)
            })
            .await;
        let result = result
            .and_then(|r| validate(hook, r))
            .and_then(|r| check_tag_room(r, tags));
        if let Some(recorder) = self.recorder.as_mut() {
            let tape = self.last_tape.take();
            let session = &self.session;
            let auth = &self.auth_results;
            recorder.call(
                &plugin.name,
                input,
                session,
                auth,
                tags,
                tape,
                result.as_ref(),
            );
        }
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let policy = if error.kind == Failure::PoolFull {
                    // Running out of instances must never skip policy, whatever the
                    // plugin's failure policy says.
                    OnError::Tempfail
                } else {
                    plugin.config.on_error
                };
                self.failed(index, &plugin, hook.name(), &error, Some(policy));
                self.note_verdict(&plugin.name, hook.name(), "failed");
                return match policy {
                    OnError::Continue => Step::Skip,
                    OnError::Tempfail => Step::Tempfail,
                };
            }
        };
        if hook == Hook::Connect && !wanted_after_connect(plugin.hooks) {
            // Nothing else of this session will call it: its instance can serve
            // another session now instead of idling with this one.
            if let Some(instance) = self.instances[index].take() {
                plugin.check_in(instance, &self.services.metrics);
            }
        }
        Step::Answer(response)
    }

    /// Asks filter `index` about one stage within the stage's deadline (each wait inside
    /// has the filter's own `timeout_ms`), counted like a plugin call. A call cut off by
    /// the deadline leaves the filter's session to drop its connection.
    async fn filter_call(
        &mut self,
        index: usize,
        filter: &Filter,
        input: &StageInput,
        deadline: Instant,
    ) -> Result<w::Response, CallError> {
        let started = Instant::now();
        let left = deadline.saturating_duration_since(started);
        let session = Arc::clone(&self.session);
        let queue_id = self.queue_id.clone();
        let facts = Facts {
            session: &session,
            queue_id: queue_id.as_deref(),
        };
        let Some(state) = self.filter_sessions.get_mut(index) else {
            return Err(CallError::new(Failure::Init, "no such filter"));
        };
        let state = state.get_or_insert_with(|| filter.session());
        let result = if left.is_zero() {
            Err(CallError::new(
                Failure::Time,
                "the stage's deadline ([plugins] stage_time_limit_ms) passed before this filter's turn",
            ))
        } else {
            match tokio::time::timeout(left, state.stage(input, &facts)).await {
                Ok(result) => result,
                Err(_) => Err(CallError::new(
                    Failure::Time,
                    "no answer by the stage's deadline ([plugins] stage_time_limit_ms)",
                )),
            }
        };
        let labels = PluginHookLabels {
            plugin: filter.name().to_string(),
            hook: input.hook().name().to_owned(),
        };
        let metrics = &self.services.metrics;
        metrics.plugin_calls.get_or_create(&labels).inc();
        metrics
            .plugin_call_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Records a failed filter call: logged with the policy applied, counted by kind.
    fn filter_failed(
        &self,
        filter: &Filter,
        hook: &'static str,
        error: &CallError,
        policy: OnError,
    ) {
        tracing::warn!(filter = %filter.name(), kind = filter.kind(), hook, failure = error.kind.as_str(), error = %error, ?policy, "filter failed");
        self.services
            .metrics
            .plugin_failures
            .get_or_create(&PluginFailureLabels {
                plugin: filter.name().to_string(),
                hook: hook.to_owned(),
                kind: error.kind.as_str(),
            })
            .inc();
    }

    /// Runs one call of plugin `index` under its deadline (and the stage's), counting it.
    /// A call past its deadline is abandoned: the future is dropped mid-call, so the
    /// instance, marked as in a call, is discarded by the caller's failure handling.
    async fn timed<'s, T, F>(
        &'s mut self,
        plugin: &LoadedPlugin,
        hook: &'static str,
        deadline: Instant,
        call: impl FnOnce(&'s mut Self) -> F,
    ) -> Result<T, CallError>
    where
        F: Future<Output = Result<T, CallError>> + 's,
    {
        let started = Instant::now();
        let labels = PluginHookLabels {
            plugin: plugin.name.to_string(),
            hook: hook.to_owned(),
        };
        let metrics = Arc::clone(&self.services.metrics);
        let limit = plugin
            .limits
            .time
            .min(deadline.saturating_duration_since(started));
        let result = if limit.is_zero() {
            Err(CallError::new(
                Failure::Time,
                "the stage's deadline ([plugins] stage_time_limit_ms) passed before this plugin's turn",
            ))
        } else {
            self.call_deadline = started + limit;
            match tokio::time::timeout(limit, call(self)).await {
                Ok(result) => result,
                Err(_) => Err(CallError::new(
                    Failure::Time,
                    if limit < plugin.limits.time {
                        format!(
                            "no answer by the stage's deadline ({} ms left of [plugins] stage_time_limit_ms)",
                            limit.as_millis()
                        )
                    } else {
                        format!(
                            "no answer within time_limit_ms ({} ms)",
                            plugin.config.time_limit_ms
                        )
                    },
                )),
            }
        };
        metrics.plugin_calls.get_or_create(&labels).inc();
        metrics
            .plugin_call_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Records a failed call: the instance is dropped (a trap or an abandoned call leaves
    /// it unusable), the failure logged with the policy applied and counted by kind.
    fn failed(
        &mut self,
        index: usize,
        plugin: &LoadedPlugin,
        hook: &'static str,
        error: &CallError,
        policy: Option<OnError>,
    ) {
        self.instances[index] = None;
        self.canaries.fault(index);
        match policy {
            Some(policy) => {
                tracing::warn!(plugin = %plugin.name, hook, kind = error.kind.as_str(), error = %error, ?policy, "plugin failed")
            }
            None => {
                tracing::warn!(plugin = %plugin.name, hook, kind = error.kind.as_str(), error = %error, "plugin failed")
            }
        }
        self.services
            .metrics
            .plugin_failures
            .get_or_create(&PluginFailureLabels {
                plugin: plugin.name.to_string(),
                hook: hook.to_owned(),
                kind: error.kind.as_str(),
            })
            .inc();
    }

    /// Asks the chain where `recipient` goes: the first plugin with an opinion decides,
    /// with the egress pool it chose, if any. A failing plugin is skipped (routing falls
    /// back to the static routes and MX).
    pub async fn route(&mut self, recipient: &str) -> Option<(w::Route, Option<String>)> {
        self.egress_choice = None;
        let deadline = Instant::now() + self.engine.stage_time_limit();
        for index in 0..self.chain.plugins.len() {
            let plugin = Arc::clone(&self.chain.plugins[index]);
            if !plugin.hooks.contains(w::Hooks::ROUTE) {
                continue;
            }
            let result = self
                .timed(&plugin, "on-route", deadline, |this| {
                    this.call_other(index, &plugin, Other::Route(recipient))
                })
                .await;
            match result {
                Ok(OtherResult::Route(Some(route))) => match validate_route(route) {
                    Ok(route) => return Some((route, self.egress_choice.take())),
                    Err(error) => self.failed(index, &plugin, "on-route", &error, None),
                },
                Ok(_) => {}
                Err(error) => self.failed(index, &plugin, "on-route", &error, None),
            }
        }
        None
    }

    /// Tells every plugin that wants it about a delivery outcome; `facts` is what
    /// `delivery-facts` answers meanwhile.
    pub async fn delivery(&mut self, info: &w::DeliveryInfo, facts: w::OutcomeFacts) {
        self.delivery_facts = Some(Arc::new(facts));
        self.delivery_calls(info).await;
        self.delivery_facts = None;
    }

    async fn delivery_calls(&mut self, info: &w::DeliveryInfo) {
        let deadline = Instant::now() + self.engine.stage_time_limit();
        for index in 0..self.chain.plugins.len() {
            let plugin = Arc::clone(&self.chain.plugins[index]);
            if !plugin.hooks.contains(w::Hooks::DELIVERY) {
                continue;
            }
            let result = self
                .timed(&plugin, "on-delivery", deadline, |this| {
                    this.call_other(index, &plugin, Other::Delivery(info))
                })
                .await;
            if let Err(error) = result {
                self.failed(index, &plugin, "on-delivery", &error, None);
            }
        }
    }

    /// Whether any plugin of the chain has this hook.
    pub fn has(&self, flag: w::Hooks) -> bool {
        self.chain.plugins.iter().any(|p| p.hooks.contains(flag))
    }

    async fn call_other(
        &mut self,
        index: usize,
        plugin: &LoadedPlugin,
        call: Other<'_>,
    ) -> Result<OtherResult, CallError> {
        let hook = match call {
            Other::Route(_) => "on-route",
            Other::Delivery(_) => "on-delivery",
            Other::Disconnect(_) => "on-disconnect",
        };
        let metrics = Arc::clone(&self.services.metrics);
        let tags = self.message_tags.clone();
        let facts = self.delivery_facts.clone();
        let deadline = self.call_deadline;
        let instance = self.instance(index, plugin).await?;
        let routing = matches!(call, Other::Route(_));
        instance.store.data_mut().tags = tags;
        instance.store.data_mut().delivery = facts;
        instance.store.data_mut().routing = routing;
        instance.store.data_mut().egress_choice = None;
        instance.start_call(plugin, deadline)?;
        let result = instance.call_other(call).await;
        // Facts of one outcome (or a choice for one recipient) are never seen by a later
        // call.
        let data = instance.store.data_mut();
        data.delivery = None;
        data.routing = false;
        let chosen = data.egress_choice.take();
        let result = result?;
        let fuel = instance.end_call(plugin);
        count_fuel(&metrics, plugin, hook, fuel);
        self.egress_choice = chosen;
        Ok(result)
    }

    /// The session's instance of plugin `index`, taken from the plugin at first use.
    async fn instance(
        &mut self,
        index: usize,
        plugin: &LoadedPlugin,
    ) -> Result<&mut Instance, CallError> {
        if self.instances[index].is_none() {
            let instance = plugin.check_out(&self.engine, &self.services).await?;
            self.instances[index] = Some(instance);
        }
        self.instances[index]
            .as_mut()
            .ok_or_else(|| CallError::new(Failure::Init, "no instance"))
    }

    async fn call(
        &mut self,
        index: usize,
        plugin: &LoadedPlugin,
        input: &StageInput,
        tags: &BTreeMap<String, String>,
    ) -> Result<w::Response, CallError> {
        let metrics = Arc::clone(&self.services.metrics);
        let session = Arc::clone(&self.session);
        let auth_results = Arc::clone(&self.auth_results);
        let deadline = self.call_deadline;
        let tape = match self.replay_tape.take() {
            Some(tape) => Some(super::record::CallTape::Replay(tape)),
            None if self.recorder.is_some() => Some(super::record::CallTape::Record(Vec::new())),
            None => None,
        };
        let instance = self.instance(index, plugin).await?;
        if !instance.hooks.contains(input.hook().flag()) {
            // This instance declared otherwise than the probe at load time: treat it as
            // having nothing to say rather than calling an export it disowned.
            return Ok(w::Response {
                verdict: w::Verdict::Continue,
                edits: Vec::new(),
            });
        }
        instance.store.data_mut().tags.clone_from(tags);
        instance.store.data_mut().session = session;
        instance.store.data_mut().auth_results = auth_results;
        instance.store.data_mut().tape = tape;
        instance.start_call(plugin, deadline)?;
        let response = instance.call_stage(input).await;
        let taped = instance.store.data_mut().tape.take();
        let response = response.map(|r| (r, instance.end_call(plugin)));
        self.last_tape = taped;
        let (response, fuel) = response?;
        count_fuel(&metrics, plugin, input.hook().name(), fuel);
        Ok(response)
    }
}

fn count_fuel(metrics: &crate::metrics::Metrics, plugin: &LoadedPlugin, hook: &str, fuel: u64) {
    metrics
        .plugin_fuel
        .get_or_create(&PluginHookLabels {
            plugin: plugin.name.to_string(),
            hook: hook.to_owned(),
        })
        .inc_by(fuel);
}

impl SessionPlugins {
    /// Ends the session's use of its instances: healthy ones go back to their plugins for
    /// the next session. Also done on drop; a session calls it before closing its
    /// connection, so a client's next connection finds them.
    pub fn release(&mut self) {
        self.canaries.finish();
        if let Some(recorder) = self.recorder.take() {
            recorder.finish();
        }
        for (plugin, instance) in self.chain.plugins.iter().zip(self.instances.iter_mut()) {
            if let Some(instance) = instance.take() {
                plugin.check_in(instance, &self.services.metrics);
            }
        }
        for session in self.filter_sessions.iter_mut() {
            if let Some(mut session) = session.take() {
                session.end();
            }
        }
    }
}

impl Drop for SessionPlugins {
    fn drop(&mut self) {
        self.release();
    }
}

/// What one plugin's turn in a stage came to.
enum Step {
    /// It has nothing to say here (or failed with `on_error = "continue"`).
    Skip,
    /// It failed with `on_error = "tempfail"` (or no instance was free).
    Tempfail,
    /// Its validated answer.
    Answer(w::Response),
}

/// The hooks that are not a session stage: the delivery side's, and the session's end.
enum Other<'a> {
    Route(&'a str),
    Delivery(&'a w::DeliveryInfo),
    Disconnect(&'a w::SessionSummary),
}

/// What those hooks return.
enum OtherResult {
    Route(Option<w::Route>),
    Done,
}

/// A decision's verdict name and reply code, as a shadow's answer is compared with it.
fn decision_verdict(decision: &Decision) -> (&'static str, Option<u16>) {
    match decision {
        Decision::Continue => ("continue", None),
        Decision::Accept => ("accept", None),
        Decision::Reject(r) => ("reject", Some(r.code)),
        Decision::Tempfail(r) => ("tempfail", Some(r.code)),
        Decision::Discard(_) => ("discard", None),
        Decision::Quarantine(_) => ("quarantine", None),
        Decision::Disconnect(r) => ("disconnect", Some(r.code)),
    }
}

/// One call of a shadow's instance on a copy of a stage's inputs, validated like any
/// plugin's answer (its failure is the caller's to count).
pub(super) async fn shadow_call(
    plugin: &LoadedPlugin,
    instance: &mut Instance,
    input: &StageInput,
    tags: &BTreeMap<String, String>,
    session: &Arc<w::SessionInfo>,
    auth_results: &Arc<Vec<w::AuthResult>>,
) -> Result<w::Response, CallError> {
    let hook = input.hook();
    if !instance.hooks.contains(hook.flag()) {
        return Ok(w::Response {
            verdict: w::Verdict::Continue,
            edits: Vec::new(),
        });
    }
    instance.store.data_mut().tags.clone_from(tags);
    instance.store.data_mut().session = Arc::clone(session);
    instance.store.data_mut().auth_results = Arc::clone(auth_results);
    instance.start_call(plugin, Instant::now() + plugin.limits.time)?;
    let response = instance.call_stage(input).await?;
    instance.end_call(plugin);
    validate(hook, response).and_then(|r| check_tag_room(r, tags))
}

fn invalid(why: impl Into<String>) -> CallError {
    CallError::new(Failure::Invalid, why)
}

/// The SDK's checks (shared with its native harness, so the two never disagree), as
/// plugin failures.
fn check_text(what: &str, text: &str) -> Result<(), CallError> {
    check::text(what, text).map_err(invalid)
}

/// An address a plugin hands back, through the same parser as SMTP input, in canonical
/// form: nothing a parser would refuse (CR, LF, `>`, spaces, parameters) reaches the
/// envelope or the next hop's MAIL and RCPT commands.
fn check_address(what: &str, address: &str) -> Result<String, CallError> {
    match Mailbox::parse(address, true) {
        Ok(mailbox) => Ok(mailbox.to_string()),
        Err(e) => Err(invalid(format!(
            "{what} `{}` is not a valid address: {e}",
            check::quoted(address)
        ))),
    }
}

fn check_reply(reply: &w::Reply, class: u16) -> Result<(), CallError> {
    check::reply_fields(reply.code, &reply.enhanced, &reply.text, class).map_err(invalid)
}

fn check_header(name: &str, value: &str) -> Result<(), CallError> {
    check::header(name, value).map_err(invalid)
}

fn check_tag(key: &str, value: &str) -> Result<(), CallError> {
    check::tag(key, value).map_err(invalid)
}

/// Checks that a plugin's answer makes sense at this stage and stays within the response
/// bounds; addresses in edits come back canonical.
fn validate(hook: Hook, mut response: w::Response) -> Result<w::Response, CallError> {
    match &response.verdict {
        w::Verdict::Reject(reply) => check_reply(reply, 5)?,
        w::Verdict::Tempfail(reply) => check_reply(reply, 4)?,
        w::Verdict::Discard(_) | w::Verdict::Quarantine(_) if hook != Hook::Data => {
            return Err(invalid(
                "discard and quarantine are verdicts of on-data only",
            ));
        }
        w::Verdict::Discard(why) => check_text("discard reason", why)?,
        w::Verdict::Quarantine(why) => check_text("quarantine reason", why)?,
        w::Verdict::Disconnect(reply) => check_reply(reply, if reply.code < 500 { 4 } else { 5 })?,
        w::Verdict::Continue | w::Verdict::Accept => {}
    }
    if response.edits.len() > bounds::MAX_EDITS {
        return Err(invalid(format!(
            "{} edits in one response, at most {}",
            response.edits.len(),
            bounds::MAX_EDITS
        )));
    }
    for edit in &mut response.edits {
        if !hook.allows(edit) {
            return Err(invalid(format!(
                "edit {} is not allowed in {}",
                edit_name(edit),
                hook.name()
            )));
        }
        match edit {
            w::Edit::AddHeader((name, value)) | w::Edit::ReplaceHeader((name, value)) => {
                check_header(name, value)?;
            }
            w::Edit::RemoveHeader(name) => check_header(name, "")?,
            w::Edit::SetSender(Some(sender)) => *sender = check_address("sender", sender)?,
            w::Edit::SetSender(None) => {}
            w::Edit::AddRecipient(address) => *address = check_address("recipient", address)?,
            w::Edit::RemoveRecipient(address) => {
                // Nothing is sent with it, but compare it in canonical form when it parses.
                if let Ok(canonical) = check_address("recipient", address) {
                    *address = canonical;
                }
            }
            w::Edit::RewriteRecipient((from, to)) => {
                if let Ok(canonical) = check_address("recipient", from) {
                    *from = canonical;
                }
                *to = check_address("new recipient", to)?;
            }
            w::Edit::SetTag((key, value)) => check_tag(key, value)?,
        }
    }
    Ok(response)
}

/// The transaction's tags stay bounded: a response may not take them past the limit.
fn check_tag_room(
    response: w::Response,
    tags: &BTreeMap<String, String>,
) -> Result<w::Response, CallError> {
    let mut new = std::collections::BTreeSet::new();
    for edit in &response.edits {
        if let w::Edit::SetTag((key, _)) = edit
            && !tags.contains_key(key)
        {
            new.insert(key.as_str());
        }
    }
    if tags.len() + new.len() > bounds::MAX_TAGS {
        return Err(invalid(format!(
            "the transaction would carry {} tags, at most {}",
            tags.len() + new.len(),
            bounds::MAX_TAGS
        )));
    }
    Ok(response)
}

/// A route a plugin chose: a named route's name is bounded printable text, a
/// recipient-independent choice the queue checks against the configuration.
fn validate_route(route: w::Route) -> Result<w::Route, CallError> {
    if let w::Route::Named(name) = &route
        && (name.is_empty() || name.len() > 128 || !name.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Err(invalid("route name is not 1 to 128 printable characters"));
    }
    Ok(route)
}

/// An edit's kind, for error messages (never the plugin's whole payload).
fn edit_name(edit: &w::Edit) -> &'static str {
    match edit {
        w::Edit::AddHeader(_) => "add-header",
        w::Edit::RemoveHeader(_) => "remove-header",
        w::Edit::ReplaceHeader(_) => "replace-header",
        w::Edit::SetSender(_) => "set-sender",
        w::Edit::AddRecipient(_) => "add-recipient",
        w::Edit::RemoveRecipient(_) => "remove-recipient",
        w::Edit::RewriteRecipient(_) => "rewrite-recipient",
        w::Edit::SetTag(_) => "set-tag",
    }
}
