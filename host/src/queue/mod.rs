//! The queue manager: every spooled message is delivered, retried or bounced, exactly once
//! per recipient, across crashes.
//!
//! An in-memory schedule (due time → queue ID) is rebuilt at start-up from the spool and
//! each message's state log ([`state`]). A scheduler task takes due messages and starts an
//! [`attempt`] for each, bounded by a global limit and a limit per destination. Outcomes are
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
pub mod dsn;
mod notify;
mod quarantine;
mod routing;
pub mod state;
mod transport;
pub mod verify;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dns::Dns;
use crate::metrics::Metrics;
use crate::outbound::pool::ConnectionPool;
use crate::plugins::PluginHost;
use crate::spool::{QueueId, Spool, StoredMessage};
use state::{Event, Outcome};

/// Where a recipient stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecipientState {
    /// Not final yet: `attempts` made so far.
    Pending {
        /// Attempts made so far.
        attempts: u32,
    },
    /// Final: delivered.
    Delivered,
    /// Final: bounced.
    Bounced,
}

/// A message the queue knows about.
#[derive(Debug)]
struct Entry {
    stored: Arc<StoredMessage>,
    recipients: Vec<RecipientState>,
    /// An attempt is running: the scheduler must not start another.
    in_flight: bool,
    /// Outcomes of an attempt that could not be written to the state log: the message is
    /// held (nothing delivered) until they are.
    unrecorded: Vec<Event>,
}

/// A message and its pending recipients: (index in the envelope, attempts so far).
pub(crate) type Pending = (Arc<StoredMessage>, Vec<(usize, u32)>);

/// Shared state of the queue.
pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) spool: Spool,
    pub(crate) spool_dir: PathBuf,
    pub(crate) dns: Arc<Dns>,
    pub(crate) plugins: Arc<PluginHost>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) pool: ConnectionPool,
    /// Recipient verification's answers (see `verify`).
    pub(crate) verify_cache: verify::VerifyCache,
    /// Our own listeners: a next hop among them is a mail loop.
    pub(crate) own_addresses: crate::outbound::loops::OwnAddresses,
    /// STARTTLS without verification (opportunistic).
    pub(crate) tls_any: tokio_rustls::TlsConnector,
    /// STARTTLS with verification (required).
    pub(crate) tls_verified: tokio_rustls::TlsConnector,
    /// Plugin sessions of the delivery side, kept between attempts so on-route and
    /// on-delivery reuse warm instances instead of instantiating per message.
    plugin_sessions: Mutex<Vec<crate::plugins::chain::SessionPlugins>>,
    /// MTA-STS policies, when enabled.
    pub(crate) mta_sts: Option<crate::outbound::mta_sts::MtaSts>,
    schedule: Mutex<BTreeSet<(u64, QueueId)>>,
    entries: Mutex<HashMap<QueueId, Entry>>,
    wake: Notify,
    global: Semaphore,
    per_destination: Mutex<HashMap<String, Arc<Semaphore>>>,
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
    /// Starts the queue with the messages recovered from the spool; their state logs are
    /// replayed, so delivered recipients are not delivered again. `listeners` are the
    /// addresses the gateway listens on, which the queue never delivers to (a loop).
    #[allow(
        clippy::too_many_arguments,
        reason = "the parts the server built, each taken once"
    )]
    pub fn start(
        config: Arc<Config>,
        listeners: Vec<std::net::SocketAddr>,
        spool: Spool,
        recovered: Vec<StoredMessage>,
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
        });
        let shared = Arc::new(Shared {
            plugin_sessions: Mutex::new(Vec::new()),
            mta_sts,
            tls_any,
            tls_verified,
            global: Semaphore::new(config.queue.max_concurrent_deliveries),
            pool: ConnectionPool::new(
                config.delivery.pool_idle_timeout.0,
                config.delivery.pool_max_idle,
            ),
            own_addresses: crate::outbound::loops::OwnAddresses::new(listeners),
            verify_cache: verify::VerifyCache::default(),
            config,
            spool,
            spool_dir,
            dns,
            plugins,
            metrics,
            schedule: Mutex::new(BTreeSet::new()),
            entries: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            per_destination: Mutex::new(HashMap::new()),
        });
        tokio::spawn(reap_idle_connections(Arc::clone(&shared), shutdown.clone()));
        let queue = Queue { shared };
        let mut resumed = 0usize;
        for stored in recovered {
            if queue.admit(stored) {
                resumed += 1;
            }
        }
        queue.shared.remove_orphans();
        if queue.shared.config.queue.hold {
            tracing::warn!(
                messages = resumed,
                "queue on hold: mail is accepted and kept, nothing is delivered"
            );
        } else {
            tracing::info!(messages = resumed, "queue resumed");
            tokio::spawn(run_scheduler(Arc::clone(&queue.shared), shutdown));
        }
        Ok(queue)
    }

    /// Takes a newly committed message into the queue, due at once.
    pub fn enqueue(&self, stored: StoredMessage) {
        self.admit(stored);
    }

    /// Messages the queue holds.
    pub fn len(&self) -> usize {
        lock(&self.shared.entries).len()
    }

    /// Whether the queue is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds a message, replaying its state log; returns false if it was already complete
    /// (and removes it).
    fn admit(&self, stored: StoredMessage) -> bool {
        let id = stored.id;
        let log = self.shared.state_path(id);
        let events = match state::replay(&log) {
            Ok(events) => events,
            Err(e) => {
                tracing::error!(%id, error = %e, "cannot read the state log; retrying every recipient");
                Vec::new()
            }
        };
        let count = stored.envelope.recipients.len();
        let mut recipients = vec![RecipientState::Pending { attempts: 0 }; count];
        let mut due = now_ms();
        let mut next_due: Option<u64> = None;
        for event in &events {
            let Some(slot) = recipients.get_mut(event.rcpt) else {
                continue;
            };
            *slot = match event.outcome {
                Outcome::Delivered => RecipientState::Delivered,
                Outcome::Bounced => RecipientState::Bounced,
                Outcome::Deferred => {
                    if let Some(next) = event.next {
                        next_due = Some(next_due.map_or(next * 1000, |d| d.max(next * 1000)));
                    }
                    RecipientState::Pending {
                        attempts: event.attempt,
                    }
                }
            };
        }
        if let Some(next) = next_due {
            due = due.max(next);
        }
        if recipients
            .iter()
            .all(|r| !matches!(r, RecipientState::Pending { .. }))
        {
            // Every recipient is final: the crash fell between the last record and the
            // removal. Finish the removal now.
            self.shared.remove_files(id);
            return false;
        }
        self.shared.metrics.queued.inc();
        lock(&self.shared.entries).insert(
            id,
            Entry {
                stored: Arc::new(stored),
                recipients,
                in_flight: false,
                unrecorded: Vec::new(),
            },
        );
        self.shared.schedule_at(id, due);
        true
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The queue's maps hold plain data; a panic elsewhere cannot leave them half-changed.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    pub(crate) fn state_path(&self, id: QueueId) -> PathBuf {
        self.spool_dir.join("state").join(id.to_string())
    }

    pub(crate) fn message_path(&self, id: QueueId) -> PathBuf {
        self.spool_dir.join("msg").join(id.to_string())
    }

    fn schedule_at(&self, id: QueueId, due_ms: u64) {
        lock(&self.schedule).insert((due_ms, id));
        self.wake.notify_one();
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
        if idle.len() < self.config.queue.max_concurrent_deliveries
            && self.plugins.is_current_queue_session(&session)
        {
            idle.push(session);
        }
    }

    /// The semaphore limiting deliveries to one destination.
    pub(crate) fn destination_limit(&self, key: &str) -> Arc<Semaphore> {
        let mut map = lock(&self.per_destination);
        Arc::clone(
            map.entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.config.queue.max_per_destination))),
        )
    }

    /// Records outcomes durably, then updates memory; returns the recipients' new states.
    pub(crate) fn record(
        &self,
        id: QueueId,
        events: &[Event],
    ) -> std::io::Result<Vec<RecipientState>> {
        state::append(&self.state_path(id), events)?;
        self.record_in_memory(id, events)
    }

    /// Keeps outcomes that could not be recorded, to be written before the next attempt.
    pub(crate) fn set_unrecorded(&self, id: QueueId, events: Vec<Event>) {
        if let Some(entry) = lock(&self.entries).get_mut(&id) {
            entry.unrecorded = events;
        }
    }

    /// Takes the outcomes still to be recorded (empty for most messages).
    pub(crate) fn take_unrecorded(&self, id: QueueId) -> Vec<Event> {
        lock(&self.entries)
            .get_mut(&id)
            .map(|entry| std::mem::take(&mut entry.unrecorded))
            .unwrap_or_default()
    }

    /// Updates memory with outcomes already on disk.
    pub(crate) fn record_in_memory(
        &self,
        id: QueueId,
        events: &[Event],
    ) -> std::io::Result<Vec<RecipientState>> {
        let mut entries = lock(&self.entries);
        let Some(entry) = entries.get_mut(&id) else {
            return Ok(Vec::new());
        };
        for event in events {
            if let Some(slot) = entry.recipients.get_mut(event.rcpt) {
                *slot = match event.outcome {
                    Outcome::Delivered => RecipientState::Delivered,
                    Outcome::Bounced => RecipientState::Bounced,
                    Outcome::Deferred => RecipientState::Pending {
                        attempts: event.attempt,
                    },
                };
            }
        }
        Ok(entry.recipients.clone())
    }

    /// Ends an attempt: either the message is complete and leaves the spool, or it is
    /// scheduled again.
    pub(crate) fn finish_attempt(&self, id: QueueId, next_due_ms: Option<u64>) {
        let complete = {
            let mut entries = lock(&self.entries);
            match entries.get_mut(&id) {
                Some(entry) => {
                    entry.in_flight = false;
                    let complete = entry
                        .recipients
                        .iter()
                        .all(|r| !matches!(r, RecipientState::Pending { .. }));
                    if complete {
                        entries.remove(&id);
                        self.metrics.queued.dec();
                    }
                    complete
                }
                None => true,
            }
        };
        if complete {
            self.remove_files(id);
            tracing::info!(%id, "message complete, removed from the spool");
        } else {
            self.schedule_at(id, next_due_ms.unwrap_or_else(|| now_ms() + 60_000));
        }
    }

    /// Ends an attempt that completed the message and already removed it from the spool
    /// (see `attempt::run`: a first attempt with every recipient final writes no log).
    pub(crate) fn finish_removed(&self, id: QueueId) {
        let mut entries = lock(&self.entries);
        if entries.remove(&id).is_some() {
            self.metrics.queued.dec();
        }
        drop(entries);
        tracing::info!(%id, "message complete, removed from the spool");
    }

    /// Removes a finished message: the message file first (so a crash in between leaves
    /// a state log without a message, which start-up ignores), then its log.
    fn remove_files(&self, id: QueueId) {
        let message = self.message_path(id);
        if let Err(e) = std::fs::remove_file(&message)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::error!(%id, error = %e, "cannot remove a finished message");
            return;
        }
        let _ = std::fs::remove_file(self.state_path(id));
        let _ = std::fs::remove_file(self.delay_marker(id));
    }

    /// Removes the state logs and delay markers of messages that are no longer in the
    /// spool (a crash between removing a message and its log leaves them). Left behind,
    /// they would be stale at best, and at worst read as the history of a new message that
    /// happened to get the same ID. Runs at start-up, before anything is delivered.
    fn remove_orphans(&self) {
        let dir = self.spool_dir.join("state");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let known: std::collections::HashSet<QueueId> =
            lock(&self.entries).keys().copied().collect();
        let mut removed = 0usize;
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else {
                continue;
            };
            let id = name.strip_suffix(".delayed").unwrap_or(name);
            // Only files the queue itself names are touched.
            let Ok(id) = id.parse::<QueueId>() else {
                continue;
            };
            // The log of a file set aside in corrupt/ is kept with it for the operator.
            let set_aside = self.spool_dir.join("corrupt").join(id.to_string()).exists();
            if !known.contains(&id) && !set_aside && std::fs::remove_file(entry.path()).is_ok() {
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

    /// The marker that says a delay notice went out for a message.
    pub(crate) fn delay_marker(&self, id: QueueId) -> PathBuf {
        self.spool_dir.join("state").join(format!("{id}.delayed"))
    }

    /// The pending recipients of a message and their attempt counts.
    pub(crate) fn pending(&self, id: QueueId) -> Option<Pending> {
        let entries = lock(&self.entries);
        let entry = entries.get(&id)?;
        let pending = entry
            .recipients
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                RecipientState::Pending { attempts } => Some((i, *attempts)),
                _ => None,
            })
            .collect();
        Some((Arc::clone(&entry.stored), pending))
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

async fn run_scheduler(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        let now = now_ms();
        let mut due = Vec::new();
        let next_wake = {
            let mut schedule = lock(&shared.schedule);
            while let Some(&(at, id)) = schedule.first() {
                if at > now {
                    break;
                }
                schedule.pop_first();
                due.push(id);
            }
            schedule.first().map(|&(at, _)| at)
        };
        for id in due {
            let start = {
                let mut entries = lock(&shared.entries);
                match entries.get_mut(&id) {
                    Some(entry) if !entry.in_flight => {
                        entry.in_flight = true;
                        true
                    }
                    _ => false,
                }
            };
            if start {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    // The attempt takes its slots itself, per destination first and then
                    // global (see `attempt::run`), waiting there rather than here.
                    attempt::run(&shared, id).await;
                });
            }
        }
        let sleep = next_wake.map_or(Duration::from_secs(3600), |at| {
            Duration::from_millis(at.saturating_sub(now_ms()).max(1))
        });
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = shared.wake.notified() => {}
            () = tokio::time::sleep(sleep) => {}
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
