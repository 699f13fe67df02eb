//! The queue manager: every spooled message is delivered, retried or bounced, exactly once
//! per recipient, across crashes.
//!
//! An in-memory [`index`] (due time → queue ID, a few tens of octets per message) is
//! rebuilt in the background at start-up from the spool and each message's state log
//! ([`state`]), while the listeners already take new mail. A scheduler task takes due
//! messages and starts an [`attempt`] for each, bounded by an active set (attempts in
//! progress, whatever they wait for), a global limit on deliveries and a gate per
//! destination ([`destinations`]), where a destination's surplus waits parked, costing
//! nothing. An attempt reads its message's envelope and state when it starts
//! ([`message`]) and keeps them only while it runs. Outcomes are
//! written to the state log and fdatasynced before the queue acts on them; a message whose
//! recipients are all final is removed from the spool. A first attempt that settles every
//! recipient (the common case) writes no log at all: the message's removal, made durable by
//! the spool's group commit, is its record.
//!
//! # The guarantee
//! A recipient that the next hop accepted (250 after DATA) is recorded as delivered before
//! anything else happens. If Tidegate is killed after that reply but before the record is on
//! disk (a window of one fsync inside a single SMTP transaction), the recipient is
//! delivered again on restart; outside that window no delivered recipient is delivered
//! again, and no recipient is forgotten: a message leaves the spool only once every
//! recipient is delivered or bounced (and the bounce itself is spooled).

pub mod attempt;
pub mod classify;
pub mod control;
mod destinations;
pub mod dsn;
mod fleet;
pub mod holds;
mod hop_tls;
mod index;
mod message;
mod notify;
mod quarantine;
pub mod recipients;
mod routing;
mod shaping;
pub mod state;
mod tls_reports;
mod transport;
pub mod verify;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dns::Dns;
use crate::metrics::Metrics;
use crate::outbound::pool::ConnectionPool;
use crate::plugins::PluginHost;
use crate::spool::{QueueId, Spool, StoredMessage};
use destinations::Destinations;
pub use destinations::PaceView;
use index::Index;
pub use message::RecipientState;
use message::{LoadError, Message};
use state::Event;

/// Shared state of the queue.
pub(crate) struct Shared {
    /// The configuration: a reload replaces it (routes, retry settings, ...); what sized
    /// the queue at start (its limits, the pool) stays until a restart.
    config: arc_swap::ArcSwap<Config>,
    pub(crate) spool: Spool,
    pub(crate) spool_dir: PathBuf,
    pub(crate) dns: Arc<Dns>,
    pub(crate) plugins: Arc<PluginHost>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pool: ConnectionPool,
    /// Recipient verification's answers (see `verify`).
    pub(crate) verify_cache: verify::VerifyCache,
    /// The routes' recipients lists (see `recipients`).
    pub(crate) recipient_lists: recipients::RecipientLists,
    /// Delivery events.
    pub(crate) events: crate::events::Events,
    /// Our own listeners: a next hop among them is a mail loop.
    pub(crate) own_addresses: arc_swap::ArcSwap<crate::outbound::loops::OwnAddresses>,
    /// STARTTLS without verification (opportunistic).
    pub(crate) tls_any: tokio_rustls::TlsConnector,
    /// STARTTLS with verification (required).
    pub(crate) tls_verified: tokio_rustls::TlsConnector,
    /// Plugin sessions of the delivery side, kept between attempts so on-route and
    /// on-delivery reuse warm instances instead of instantiating per message.
    plugin_sessions: Mutex<Vec<crate::plugins::chain::SessionPlugins>>,
    /// TLS reporting's counts (`[tls_report]`), when enabled.
    pub(crate) tls_reports: Option<crate::outbound::tlsrpt::Collector>,
    /// Connectors presenting routes' client certificates.
    pub(crate) client_identities: hop_tls::ClientIdentities,
    /// MTA-STS policies, when enabled.
    pub(crate) mta_sts: Option<crate::outbound::mta_sts::MtaSts>,
    /// What the queue knows of each message.
    index: Arc<Index>,
    /// What the operator holds.
    holds: holds::Holds,
    /// The last failure reported per recipient domain (for the summary), bounded.
    last_errors: Mutex<HashMap<String, String>>,
    /// Start-up recovery has read every message of the spool.
    recovered: std::sync::atomic::AtomicBool,
    /// Attempts in progress, whatever they are waiting for: the scheduler starts no more.
    active: Arc<Semaphore>,
    /// Deliveries in progress over all destinations.
    pub(crate) global: Semaphore,
    /// Deliveries, waiters and parked messages of each destination.
    pub(crate) destinations: Arc<Destinations>,
    /// Connections made through egress pools, for their weighted round robin.
    pub(crate) egress_turn: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("spool_dir", &self.spool_dir)
            .finish_non_exhaustive()
    }
}

/// A handle on the running queue; cheap to clone.
#[derive(Debug, Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

/// Milliseconds since the epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Queue {
    /// Starts the queue, and a task that takes in the messages found in the spool
    /// (`recovered`) in the background, replaying their state logs so that delivered
    /// recipients are not delivered again. `listeners` are the
    /// addresses the gateway listens on, which the queue never delivers to (a loop).
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts the server built, each taken once"
    )]
    pub fn start(
        config: Arc<Config>,
        listeners: Vec<std::net::SocketAddr>,
        spool: Spool,
        recovered: crate::spool::Recovery,
        recipient_lists: recipients::RecipientLists,
        events: crate::events::Events,
        dns: Arc<Dns>,
        plugins: Arc<PluginHost>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Queue, crate::tls::TlsError> {
        let spool_dir = config.spool.path.clone();
        let state_dir = spool_dir.join("state");
        if let Err(e) = std::fs::create_dir_all(&state_dir) {
            tracing::error!(dir = %state_dir.display(), error = %e, "cannot create the state directory");
        }
        let tls_any = crate::tls::client_config(&crate::tls::VerifyMode::AcceptAny)
            .map(tokio_rustls::TlsConnector::from)?;
        let verify = match &config.delivery.tls_ca {
            Some(ca) => crate::tls::VerifyMode::CustomCa(ca.clone()),
            None => crate::tls::VerifyMode::WebPki,
        };
        let tls_verified =
            crate::tls::client_config(&verify).map(tokio_rustls::TlsConnector::from)?;
        let mta_sts = config.delivery.mta_sts.then(|| {
            crate::outbound::mta_sts::MtaSts::new(
                tls_verified.clone(),
                config.delivery.mta_sts_port,
            )
            .stored_in(spool_dir.join("mta-sts.json"))
        });
        let index = Arc::new(Index::default());
        let shared = Arc::new(Shared {
            plugin_sessions: Mutex::new(Vec::new()),
            client_identities: hop_tls::ClientIdentities::default(),
            tls_reports: config
                .tls_report
                .is_some()
                .then(crate::outbound::tlsrpt::Collector::default),
            mta_sts,
            tls_any,
            tls_verified,
            global: Semaphore::new(config.queue.max_concurrent_deliveries),
            active: Arc::new(Semaphore::new(config.queue.active_limit())),
            destinations: Arc::new(Destinations::new(Arc::clone(&index))),
            egress_turn: std::sync::atomic::AtomicU64::new(0),
            index,
            holds: holds::Holds::load(&spool_dir),
            last_errors: Mutex::new(HashMap::new()),
            recovered: std::sync::atomic::AtomicBool::new(false),
            pool: ConnectionPool::new(
                config.delivery.pool_idle_timeout.0,
                config.delivery.pool_max_idle,
            ),
            own_addresses: arc_swap::ArcSwap::from_pointee(
                crate::outbound::loops::OwnAddresses::new(listeners),
            ),
            verify_cache: verify::VerifyCache::default(),
            recipient_lists,
            events,
            config: arc_swap::ArcSwap::new(config),
            spool,
            spool_dir,
            dns,
            plugins,
            metrics,
        });
        let gates = Arc::downgrade(&shared.destinations);
        let gates: std::sync::Weak<dyn crate::plugins::services::DestinationControl> = gates;
        let _ = shared.plugins.services().destinations.set(gates);
        tokio::spawn(reap_idle_connections(Arc::clone(&shared), shutdown.clone()));
        if shared.tls_reports.is_some() {
            tokio::spawn(tls_reports::run(Arc::clone(&shared), shutdown.clone()));
        }
        tokio::spawn(pace(Arc::clone(&shared.destinations), shutdown.clone()));
        let queue = Queue { shared };
        tokio::spawn(recover(Arc::clone(&queue.shared), recovered));
        if queue.shared.config().queue.hold {
            tracing::warn!("queue on hold: mail is accepted and kept, nothing is delivered");
        }
        tokio::spawn(run_scheduler(Arc::clone(&queue.shared), shutdown));
        Ok(queue)
    }

    /// Takes a newly committed message into the queue, due at once.
    pub fn enqueue(&self, stored: StoredMessage) {
        let id = stored.id;
        let stored = Arc::new(stored);
        let info =
            Message::new(Arc::clone(&stored), &[]).info(false, |d| self.shared.index.intern(d));
        self.shared.index.keep_warm(stored);
        if !self.shared.admit(id, now_ms(), info) {
            self.shared.index.take_warm(id);
        }
    }

    /// Messages the queue holds.
    pub fn len(&self) -> usize {
        self.shared.index.len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Applies a reloaded configuration: routes, retry settings and the like apply to
    /// every attempt from now on, queued mail included.
    pub fn reconfigure(&self, config: Arc<Config>) {
        // The shaping tables hold compiled patterns, which cannot be compared: their
        // printed forms (patterns as written) can.
        let reshaped =
            format!("{:?}", self.shared.config().shaping) != format!("{:?}", config.shaping);
        self.shared.config.store(config);
        if reshaped {
            // Parked mail waits under the policy its gate had: let it ask again under the
            // new one (a window that opened, a rate that rose).
            self.shared.destinations.wake_all();
        }
    }

    /// The addresses the listeners are bound to now (after a reload added or removed
    /// some): a next hop among them is a loop.
    pub fn set_listeners(&self, listeners: Vec<std::net::SocketAddr>) {
        self.shared
            .own_addresses
            .store(Arc::new(crate::outbound::loops::OwnAddresses::new(
                listeners,
            )));
    }

    /// Whether start-up recovery has read every message of the spool back.
    pub fn is_recovered(&self) -> bool {
        self.shared
            .recovered
            .load(std::sync::atomic::Ordering::Acquire)
    }
}

/// How many messages recovery reads per blocking task: enough to make the hop to the
/// blocking pool cheap, few enough that new mail is admitted between batches.
const RECOVERY_BATCH: usize = 512;

/// What [`Shared::take_in`] did with a message.
enum TakenIn {
    /// It is in the index now.
    Admitted,
    /// It was already complete: its files are removed.
    Complete,
    /// It could not be used: set aside in `corrupt/`.
    SetAside,
    /// Nothing (gone, already in the index, or could not be set aside).
    Nothing,
}

/// Takes the messages found in the spool into the queue, oldest first, in batches read
/// off the runtime, while the listeners already accept mail; then removes the state files
/// of messages that are gone.
async fn recover(shared: Arc<Shared>, recovered: crate::spool::Recovery) {
    let started = std::time::Instant::now();
    let found = recovered.messages.len();
    let (mut resumed, mut finished) = (0usize, 0usize);
    let mut set_aside = recovered.set_aside.len();
    let mut ids = recovered.messages.into_iter();
    loop {
        let batch: Vec<QueueId> = ids.by_ref().take(RECOVERY_BATCH).collect();
        if batch.is_empty() {
            break;
        }
        let dir = shared.spool_dir.clone();
        let read = tokio::task::spawn_blocking(move || {
            let now = now_ms();
            batch
                .into_iter()
                .map(|id| (id, message::recovered_due(&dir, id, now)))
                .collect::<Vec<_>>()
        })
        .await;
        let Ok(read) = read else {
            tracing::error!("spool recovery task failed");
            return;
        };
        for (id, due) in read {
            match shared.take_in(id, due) {
                TakenIn::Admitted => resumed += 1,
                TakenIn::Complete => finished += 1,
                TakenIn::SetAside => set_aside += 1,
                TakenIn::Nothing => {}
            }
        }
    }
    shared.remove_orphans();
    shared
        .recovered
        .store(true, std::sync::atomic::Ordering::Release);
    tracing::info!(
        found,
        messages = resumed,
        already_complete = finished,
        corrupt_set_aside = set_aside,
        secs = started.elapsed().as_secs_f64(),
        "spool recovered"
    );
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The queue's maps hold plain data; a panic elsewhere cannot leave them half-changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    /// The configuration as it is now.
    pub(crate) fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    pub(crate) fn state_path(&self, id: QueueId) -> PathBuf {
        self.spool_dir.join("state").join(id.to_string())
    }

    pub(crate) fn message_path(&self, id: QueueId) -> PathBuf {
        self.spool_dir.join("msg").join(id.to_string())
    }

    /// Remembers the last failure reported for a recipient domain (for the summary).
    pub(crate) fn note_error(&self, domain: &str, reply: &str) {
        /// Domains remembered at most; past that the map starts again.
        const MAX_DOMAINS: usize = 10_000;
        let mut errors = lock(&self.last_errors);
        if errors.len() >= MAX_DOMAINS && !errors.contains_key(domain) {
            errors.clear();
        }
        let mut reply = reply.to_owned();
        reply.truncate(reply.floor_char_boundary(512));
        errors.insert(domain.to_ascii_lowercase(), reply);
    }

    /// The last failure per recipient domain.
    pub(crate) fn last_errors(&self) -> HashMap<String, String> {
        lock(&self.last_errors).clone()
    }

    /// Whether the whole queue is held (by the configuration or the operator).
    fn held(&self) -> bool {
        self.config().queue.hold || self.holds.all()
    }

    /// Takes a message found in the spool (at recovery, or imported from another spool)
    /// into the index, with what its state log says.
    fn take_in(&self, id: QueueId, due: Result<Option<(u64, Message)>, LoadError>) -> TakenIn {
        match due {
            Ok(Some((due, message))) => {
                let held = self.hold_marker(id).exists();
                let info = message.info(held, |d| self.index.intern(d));
                if self.admit(id, due, info) {
                    TakenIn::Admitted
                } else {
                    TakenIn::Nothing
                }
            }
            Ok(None) => {
                // Every recipient is final: the crash fell between the last record and
                // the removal. Finish the removal now.
                self.remove_files(id);
                TakenIn::Complete
            }
            Err(LoadError::Gone) => TakenIn::Nothing,
            Err(LoadError::Corrupt(why)) => {
                if self.spool.set_aside(id, &why) {
                    TakenIn::SetAside
                } else {
                    TakenIn::Nothing
                }
            }
            Err(LoadError::Unreadable(why)) => {
                tracing::error!(queue_id = %id, error = %why, "cannot read a queued message now; trying it again in a minute");
                if self.admit(id, now_ms() + 60_000, Default::default()) {
                    TakenIn::Admitted
                } else {
                    TakenIn::Nothing
                }
            }
        }
    }

    /// Adds a message to the index, due at `due_ms`; false if it was there already.
    fn admit(&self, id: QueueId, due_ms: u64, info: index::Info) -> bool {
        let added = self.index.insert(id, due_ms, info);
        if added {
            self.metrics.queued.inc();
        }
        added
    }

    /// Drops a message from the index (its files are someone else's business).
    fn forget(&self, id: QueueId) {
        if self.index.remove(id) {
            self.metrics.queued.dec();
        }
    }

    /// A plugin session for one attempt: a warm one if it runs the current plugins.
    pub(crate) fn take_plugin_session(&self) -> crate::plugins::chain::SessionPlugins {
        let mut idle = lock(&self.plugin_sessions);
        while let Some(session) = idle.pop() {
            if self.plugins.is_current_queue_session(&session) {
                return session;
            }
        }
        drop(idle);
        self.plugins.queue_session()
    }

    /// Keeps a plugin session for the next attempt (at most one per concurrent delivery).
    pub(crate) fn return_plugin_session(&self, session: crate::plugins::chain::SessionPlugins) {
        let mut idle = lock(&self.plugin_sessions);
        if idle.len() < self.config().queue.max_concurrent_deliveries
            && self.plugins.is_current_queue_session(&session)
        {
            idle.push(session);
        }
    }

    /// Records outcomes durably, then in the attempt's copy of the message.
    pub(crate) fn record(
        &self,
        id: QueueId,
        message: &mut Message,
        events: &[Event],
    ) -> std::io::Result<()> {
        state::append(&self.state_path(id), events)?;
        message.apply(events);
        Ok(())
    }

    /// Keeps outcomes that could not be recorded, to be written before the next attempt.
    pub(crate) fn set_unrecorded(&self, id: QueueId, events: Vec<Event>) {
        self.index.set_unrecorded(id, events);
    }

    /// Takes the outcomes still to be recorded (empty for most messages).
    pub(crate) fn take_unrecorded(&self, id: QueueId) -> Vec<Event> {
        self.index.take_unrecorded(id)
    }

    /// Loads a message for an attempt: its envelope (from the cache of fresh ones, or the
    /// spool file) and its recipients' states. `None` when there is nothing to attempt:
    /// the file is gone or set aside (the message is forgotten), or cannot be read now
    /// (it is scheduled again).
    pub(crate) async fn load(&self, id: QueueId) -> Option<Message> {
        let loaded = match self.index.take_warm(id) {
            // A fresh message has no state log yet: looking costs one failed open.
            Some(warm) => Message::load(&self.spool_dir, id, Some(warm)),
            None => {
                let dir = self.spool_dir.clone();
                tokio::task::spawn_blocking(move || Message::load(&dir, id, None))
                    .await
                    .unwrap_or_else(|e| Err(LoadError::Unreadable(e.to_string())))
            }
        };
        match loaded {
            Ok(message) => Some(message),
            Err(LoadError::Gone) => {
                tracing::warn!(queue_id = %id, "a queued message is no longer in the spool; forgotten");
                self.forget(id);
                None
            }
            Err(LoadError::Corrupt(why)) => {
                self.spool.set_aside(id, &why);
                self.forget(id);
                None
            }
            Err(LoadError::Unreadable(why)) => {
                tracing::error!(queue_id = %id, error = %why, "cannot read a queued message; will retry");
                self.index.schedule(id, now_ms() + 60_000);
                None
            }
        }
    }

    /// Ends an attempt: either the message is complete and leaves the spool, or it is
    /// scheduled again.
    pub(crate) fn finish_attempt(&self, id: QueueId, message: &Message, next_due_ms: Option<u64>) {
        if message.is_complete() {
            self.forget(id);
            self.remove_files(id);
            tracing::debug!(queue_id = %id, "message complete, removed from the spool");
        } else {
            self.update_info(id, message);
            self.index
                .schedule(id, next_due_ms.unwrap_or_else(|| now_ms() + 60_000));
        }
    }

    /// Schedules a message again without looking at its recipients (an attempt that could
    /// not start).
    pub(crate) fn schedule_retry(&self, id: QueueId, due_ms: u64) {
        self.index.schedule(id, due_ms);
    }

    /// Ends an attempt that completed the message and already removed it from the spool
    /// (see `attempt::run`: a first attempt with every recipient final writes no log).
    pub(crate) fn finish_removed(&self, id: QueueId) {
        self.forget(id);
        tracing::debug!(queue_id = %id, "message complete, removed from the spool");
    }

    /// Refreshes what the index shows of a message from the attempt's copy of it.
    pub(crate) fn update_info(&self, id: QueueId, message: &Message) {
        let held = self.index.is_held(id);
        let info = message.info(held, |d| self.index.intern(d));
        self.index.update_info(id, |slot| *slot = info);
    }

    /// Ends an attempt whose pending recipients all go to held destinations: the message
    /// waits held until one of them is released.
    pub(crate) fn finish_held(&self, id: QueueId) {
        tracing::debug!(queue_id = %id, "every pending recipient's destination is held");
        self.index.hold_running(id);
    }

    /// Ends an attempt that stopped at a destination with no room: the message waits
    /// parked there until a delivery to it ends.
    pub(crate) fn finish_parked(&self, id: QueueId, destination: &str) {
        tracing::debug!(queue_id = %id, %destination, "destination busy: message parked");
        self.destinations.park(destination, id);
    }

    /// Removes a finished message: the message file first (so a crash in between leaves
    /// a state log without a message, which start-up ignores), then its log.
    fn remove_files(&self, id: QueueId) {
        let message = self.message_path(id);
        if let Err(e) = std::fs::remove_file(&message)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(queue_id = %id, error = %e, "cannot remove a finished message");
            return;
        }
        let _ = std::fs::remove_file(self.state_path(id));
        let _ = std::fs::remove_file(self.delay_marker(id));
        let _ = std::fs::remove_file(self.hold_marker(id));
    }

    /// Removes the state logs and delay markers of messages that are no longer in the
    /// spool (a crash between removing a message and its log leaves them). Left behind,
    /// they would be stale at best, and at worst read as the history of a new message that
    /// happened to get the same ID. Runs once recovery has taken in every message.
    fn remove_orphans(&self) {
        let dir = self.spool_dir.join("state");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut removed = 0usize;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let id = name
                .strip_suffix(".delayed")
                .or_else(|| name.strip_suffix(".held"))
                .unwrap_or(name);
            // Only files the queue itself names are touched.
            let Ok(id) = id.parse::<QueueId>() else {
                continue;
            };
            // The log of a file set aside in corrupt/ is kept with it for the operator.
            let set_aside = self.spool_dir.join("corrupt").join(id.to_string()).exists();
            let known = self.index.contains(id) || self.message_path(id).exists();
            if !known && !set_aside && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        if removed > 0 {
            tracing::info!(
                files = removed,
                "state files of messages no longer in the spool removed"
            );
        }
    }

    /// The marker that says the operator holds a message (so that it stays held across
    /// a restart).
    pub(crate) fn hold_marker(&self, id: QueueId) -> PathBuf {
        self.spool_dir.join("state").join(format!("{id}.held"))
    }

    /// The marker that says a delay notice went out for a message.
    pub(crate) fn delay_marker(&self, id: QueueId) -> PathBuf {
        self.spool_dir.join("state").join(format!("{id}.delayed"))
    }

    /// Spools and enqueues a message the queue itself writes (a DSN).
    pub(crate) async fn inject(
        self: &Arc<Self>,
        envelope: crate::spool::Envelope,
        message: &[u8],
    ) -> Result<QueueId, crate::spool::SpoolError> {
        let mut writer = self.spool.new_message();
        let mut envelope = envelope;
        envelope.id = writer.id().to_string();
        envelope.size = message.len() as u64;
        writer.buffer().extend_from_slice(message);
        let id = writer.commit(&envelope).await?;
        let stored = StoredMessage {
            id,
            envelope,
            message_len: message.len() as u64,
        };
        Queue {
            shared: Arc::clone(self),
        }
        .enqueue(stored);
        Ok(id)
    }
}

/// Starts an attempt for each due message, as long as the active set has room: a
/// million due messages are a million entries in the index, never a million tasks.
async fn run_scheduler(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => return,
            permit = Arc::clone(&shared.active).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let due = if shared.held() {
            // Held: wake up now and then (or when released) to look again.
            Err(Some(now_ms() + 1000))
        } else {
            shared.index.pop_due(now_ms())
        };
        match due {
            Ok(id) => {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    // The attempt takes its slots itself, per destination first and then
                    // global (see `attempt::run`), waiting there rather than here.
                    attempt::run(&shared, id).await;
                    drop(permit);
                });
            }
            Err(next) => {
                drop(permit);
                let sleep = next.map_or(Duration::from_secs(3600), |at| {
                    Duration::from_millis(at.saturating_sub(now_ms()).max(1))
                });
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = shared.index.wake.notified() => {}
                    () = tokio::time::sleep(sleep) => {}
                }
            }
        }
    }
}

/// How often the destinations' pacer looks for parked mail that may go (the resolution of
/// rates, suspensions and windows).
const PACE_TICK: Duration = Duration::from_millis(100);

/// Wakes parked mail as rates refill, suspensions end and windows open.
async fn pace(destinations: Arc<Destinations>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PACE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => destinations.tick(),
        }
    }
}

/// Closes pooled connections once they have been idle for the pool's idle timeout, so
/// idle connections do not hold file descriptors (and the next hops' slots) for long.
async fn reap_idle_connections(shared: Arc<Shared>, shutdown: CancellationToken) {
    let interval = shared.pool.reap_interval();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let expired = shared.pool.reap();
        if !expired.is_empty() {
            tracing::debug!(closed = expired.len(), "idle outbound connections closed");
        }
        // Dropping a session closes its socket; a QUIT is not owed to a server we stop
        // talking to, and waiting for its reply could hold the descriptor longer.
        drop(expired);
    }
}

/// The next attempt after `attempts` failed ones: the configured interval (the last one
/// repeats) with ±10 % jitter, so a burst deferred together does not retry together.
pub fn retry_delay(intervals: &[crate::config::Duration], attempts: u32) -> Duration {
    let index = (attempts.max(1) as usize - 1).min(intervals.len().saturating_sub(1));
    let base = intervals
        .get(index)
        .map_or(Duration::from_secs(60), |d| d.0);
    use std::hash::{BuildHasher, RandomState};
    let random = RandomState::new().hash_one(attempts) % 2001;
    let factor = 0.9 + (random as f64) / 10_000.0;
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Duration as D;

    #[test]
    fn retry_delays_follow_the_schedule_with_jitter() {
        let intervals = [D(Duration::from_secs(60)), D(Duration::from_secs(300))];
        for _ in 0..50 {
            let first = retry_delay(&intervals, 1).as_secs_f64();
            assert!((54.0..=66.0).contains(&first), "{first}");
            let later = retry_delay(&intervals, 7).as_secs_f64();
            assert!((270.0..=330.0).contains(&later), "{later}");
        }
    }
}
