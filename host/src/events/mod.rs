//! Delivery events: what happened to each message (received, refused, delivered, deferred,
//! bounced, expired, quarantined, released, deleted), told to the operator's own systems as
//! it happens.
//!
//! The session and the queue call [`Events::emit`], which never blocks and never fails: the
//! event is serialised once and handed to every configured sink through a bounded channel
//! of its own, so a slow or dead sink costs mail nothing; when a sink's channel is full the
//! event is dropped for that sink, counted (`events_dropped{reason="queue_full"}`) and
//! logged at most once a second. The sinks run as tasks: [`file`] appends JSON lines to a
//! file rotated by size, [`webhook`] POSTs signed batches from a durable on-disk buffer.
//!
//! Every event carries a unique `id`: the webhook delivers at least once (a batch whose
//! acknowledgement was lost is sent again), and the id lets the receiver drop duplicates.

mod buffer;
pub mod file;
pub mod webhook;

#[cfg(test)]
mod tests;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{EventSinkConfig, EventSinkKind};
use crate::inbound::reply::Reply;
use crate::metrics::{EventDropLabels, EventKindLabels, Metrics};

/// The largest serialised event a sink is given; a bigger one (which only an absurd
/// recipient list could make) is dropped rather than let one event bloat a batch.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// One delivery event. Serialised as one flat JSON object: `id`, `time`, `queue_id`, then
/// `type` and the fields of its kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event (a per-process random prefix and a counter), for deduplication.
    pub id: String,
    /// When it happened, as RFC 3339 UTC.
    #[serde(with = "rfc3339")]
    pub time: SystemTime,
    /// The message's queue ID, when there is a message (not for a refused connection).
    pub queue_id: Option<String>,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, with its own fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// A message was accepted into the spool (`250 ... queued as`).
    Received(Received),
    /// Something was refused during a session.
    Refused {
        /// Where: connect, helo, auth, mail, rcpt or data.
        stage: Stage,
        /// The reply code.
        code: u16,
        /// The enhanced status code, e.g. `5.7.1`.
        enhanced: Option<String>,
        /// The reply's text.
        text: String,
        /// The client's address.
        client_ip: IpAddr,
        /// The envelope sender, once known.
        sender: Option<String>,
        /// The recipient refused, at RCPT.
        recipient: Option<String>,
    },
    /// A recipient was accepted by the next hop.
    Delivered(Delivery),
    /// A recipient's attempt failed temporarily; it will be retried.
    Deferred(Delivery),
    /// A recipient failed permanently; the sender is notified.
    Bounced(Delivery),
    /// A message outlived the queue's lifetime; its remaining recipients bounce.
    Expired {
        /// The recipients not delivered.
        recipients: Vec<String>,
    },
    /// A message was quarantined instead of delivered.
    Quarantined {
        /// Why (the plugin's reason).
        reason: String,
    },
    /// A quarantined message was released into the queue.
    Released {
        /// Who released it.
        by: String,
    },
    /// A message was deleted from the queue or the quarantine.
    Deleted {
        /// Who deleted it.
        by: String,
    },
}

/// A message accepted: the session's facts about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Received {
    /// The client's address.
    pub client_ip: IpAddr,
    /// What it said in EHLO/HELO.
    pub helo: Option<String>,
    /// The envelope sender (empty for `<>`).
    pub sender: String,
    /// The envelope recipients.
    pub recipients: Vec<String>,
    /// The message's size in octets, as spooled.
    pub size: u64,
    /// The `Message-ID:` field, when there is one.
    pub message_id: Option<String>,
    /// The transaction's tags set by plugins.
    pub tags: Vec<String>,
    /// The listener's name.
    pub listener: String,
    /// Whether the session was over TLS.
    pub tls: bool,
    /// The authenticated identity (SMTP AUTH), when there is one.
    pub auth: Option<String>,
}

/// The outcome of one delivery attempt for one recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The recipient.
    pub recipient: String,
    /// The next hop that answered (host name or address), when one did.
    pub remote_host: Option<String>,
    /// The reply, as the next hop gave it (or the local reason, e.g. a connection error).
    pub reply: String,
    /// The enhanced status code, e.g. `2.0.0`.
    pub enhanced: Option<String>,
    /// The attempt's number, from 1.
    pub attempt: u32,
    /// How long the attempt took.
    pub duration_ms: u64,
    /// For a deferral or bounce: what kind of failure it was (`bad-mailbox`,
    /// `rate-limit`, `tls`, ...; see the README's list).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

/// The session stage at which something was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// At connect (limits, a plugin).
    Connect,
    /// At EHLO/HELO.
    Helo,
    /// At AUTH.
    Auth,
    /// At MAIL FROM.
    Mail,
    /// At RCPT TO.
    Rcpt,
    /// After DATA/BDAT.
    Data,
}

impl EventKind {
    /// The `type` field, as a metric label.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Received(_) => "received",
            EventKind::Refused { .. } => "refused",
            EventKind::Delivered(_) => "delivered",
            EventKind::Deferred(_) => "deferred",
            EventKind::Bounced(_) => "bounced",
            EventKind::Expired { .. } => "expired",
            EventKind::Quarantined { .. } => "quarantined",
            EventKind::Released { .. } => "released",
            EventKind::Deleted { .. } => "deleted",
        }
    }
}

impl Event {
    /// An event that happens now, with a fresh id.
    pub fn new(queue_id: Option<String>, kind: EventKind) -> Event {
        Event {
            id: next_id(),
            time: SystemTime::now(),
            queue_id,
            kind,
        }
    }

    /// A message accepted into the spool.
    pub fn received(queue_id: impl ToString, received: Received) -> Event {
        Event::new(Some(queue_id.to_string()), EventKind::Received(received))
    }

    /// A refusal during a session, from the reply sent.
    pub fn refused(
        stage: Stage,
        reply: &Reply,
        client_ip: IpAddr,
        sender: Option<&str>,
        recipient: Option<&str>,
    ) -> Event {
        Event::new(
            None,
            EventKind::Refused {
                stage,
                code: reply.code,
                enhanced: reply.enhanced.map(|e| e.to_string()),
                text: reply.text.to_string(),
                client_ip,
                sender: sender.map(str::to_owned),
                recipient: recipient.map(str::to_owned),
            },
        )
    }

    /// A recipient delivered.
    pub fn delivered(queue_id: impl ToString, delivery: Delivery) -> Event {
        Event::new(Some(queue_id.to_string()), EventKind::Delivered(delivery))
    }

    /// A recipient deferred.
    pub fn deferred(queue_id: impl ToString, delivery: Delivery) -> Event {
        Event::new(Some(queue_id.to_string()), EventKind::Deferred(delivery))
    }

    /// A recipient bounced.
    pub fn bounced(queue_id: impl ToString, delivery: Delivery) -> Event {
        Event::new(Some(queue_id.to_string()), EventKind::Bounced(delivery))
    }

    /// A message expired with these recipients undelivered.
    pub fn expired(queue_id: impl ToString, recipients: Vec<String>) -> Event {
        Event::new(
            Some(queue_id.to_string()),
            EventKind::Expired { recipients },
        )
    }

    /// A message quarantined.
    pub fn quarantined(queue_id: impl ToString, reason: impl Into<String>) -> Event {
        let reason = reason.into();
        Event::new(
            Some(queue_id.to_string()),
            EventKind::Quarantined { reason },
        )
    }

    /// A quarantined message released.
    pub fn released(queue_id: impl ToString, by: impl Into<String>) -> Event {
        let by = by.into();
        Event::new(Some(queue_id.to_string()), EventKind::Released { by })
    }

    /// A message deleted.
    pub fn deleted(queue_id: impl ToString, by: impl Into<String>) -> Event {
        let by = by.into();
        Event::new(Some(queue_id.to_string()), EventKind::Deleted { by })
    }
}

impl Delivery {
    /// One attempt's outcome for `recipient`; `reply` is the next hop's reply (or the
    /// local reason).
    pub fn new(recipient: impl Into<String>, attempt: u32, duration: std::time::Duration) -> Self {
        Delivery {
            recipient: recipient.into(),
            attempt,
            duration_ms: u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            ..Delivery::default()
        }
    }

    /// With the host that answered.
    pub fn host(mut self, remote_host: impl Into<String>) -> Self {
        self.remote_host = Some(remote_host.into());
        self
    }

    /// With the reply and its enhanced code.
    pub fn reply(mut self, reply: impl Into<String>, enhanced: Option<String>) -> Self {
        self.reply = reply.into();
        self.enhanced = enhanced;
        self
    }

    /// With the failure's class.
    pub fn class(mut self, class: &str) -> Self {
        self.class = Some(class.to_owned());
        self
    }
}

/// A unique event id: a random prefix chosen once per process, and a counter. Two
/// processes (or a restart) cannot collide unless the 64-bit prefixes do.
fn next_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        // RandomState is seeded from the OS's random source; mixing in the time guards
        // against a platform where it is not.
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        hasher.write_u128(now);
        hasher.write_u32(std::process::id());
        hasher.finish()
    });
    format!(
        "{prefix:016x}-{:x}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// RFC 3339 UTC timestamps (`2026-05-01T12:00:00.123456Z`).
mod rfc3339 {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;

    pub fn serialize<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
        let text = OffsetDateTime::from(*time)
            .format(&Rfc3339)
            .map_err(serde::ser::Error::custom)?;
        serializer.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        OffsetDateTime::parse(&text, &Rfc3339)
            .map(SystemTime::from)
            .map_err(serde::de::Error::custom)
    }
}

/// A problem starting the sinks; each names the sink.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The file sink's file cannot be opened.
    #[error("events sink `{sink}`: cannot open {path}: {source}")]
    File {
        /// The sink.
        sink: String,
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The webhook's secret cannot be read, or is empty.
    #[error("events sink `{sink}`: secret_file {path}: {problem}")]
    Secret {
        /// The sink.
        sink: String,
        /// The secret file.
        path: std::path::PathBuf,
        /// Why.
        problem: String,
    },
    /// The webhook's buffer cannot be opened or recovered.
    #[error("events sink `{sink}`: buffer {path}: {source}")]
    Buffer {
        /// The sink.
        sink: String,
        /// The buffer directory.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The sink's configuration is incomplete (a configuration that passed validation
    /// never is).
    #[error("events sink `{sink}`: {problem}")]
    Config {
        /// The sink.
        sink: String,
        /// What is missing.
        problem: String,
    },
}

/// The emitting side of the sinks; cheap to clone.
#[derive(Clone)]
pub struct Events {
    inner: Arc<Inner>,
}

struct Inner {
    sinks: Vec<SinkHandle>,
    metrics: Option<Arc<Metrics>>,
    tasks: TaskTracker,
}

/// A sink opened, not yet running.
enum Opened {
    File(file::FileSink),
    Webhook(webhook::WebhookSink),
}

/// One sink's channel.
struct SinkHandle {
    name: String,
    queue: mpsc::Sender<Arc<str>>,
    /// The second (since the epoch) of the last "dropped" log line, to log once a second.
    last_drop_log: AtomicU64,
}

impl Events {
    /// No sinks: emit is a no-op.
    pub fn disabled() -> Events {
        Events {
            inner: Arc::new(Inner {
                sinks: Vec::new(),
                metrics: None,
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Starts every configured sink (tasks on the current tokio runtime); `state_dir` is
    /// where durable webhook buffers live (the gateway passes `<spool>/events/`). Errors
    /// name the sink.
    pub fn start(
        sinks: &[EventSinkConfig],
        state_dir: &Path,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Result<Events, EventsError> {
        // Everything is opened before any task starts, so a bad sink starts nothing.
        let mut opened = Vec::with_capacity(sinks.len());
        for (index, config) in sinks.iter().enumerate() {
            let name = config.label(index);
            let sink = match config.kind {
                EventSinkKind::File => {
                    Opened::File(file::FileSink::open(&name, config, metrics.clone())?)
                }
                EventSinkKind::Webhook => Opened::Webhook(webhook::WebhookSink::open(
                    &name,
                    config,
                    &state_dir.join(&name),
                    metrics.clone(),
                )?),
            };
            opened.push((name, config.queue_size.max(1), sink));
        }
        let tasks = TaskTracker::new();
        let mut handles = Vec::with_capacity(opened.len());
        for (name, queue_size, sink) in opened {
            let (queue, receiver) = mpsc::channel(queue_size);
            match sink {
                Opened::File(sink) => tasks.spawn(sink.run(receiver, shutdown.clone())),
                Opened::Webhook(sink) => tasks.spawn(sink.run(receiver, shutdown.clone())),
            };
            handles.push(SinkHandle {
                name,
                queue,
                last_drop_log: AtomicU64::new(0),
            });
        }
        tasks.close();
        Ok(Events {
            inner: Arc::new(Inner {
                sinks: handles,
                metrics: Some(metrics),
                tasks,
            }),
        })
    }

    /// Never blocks and never fails: the event is queued for every sink (bounded; when a
    /// sink's in-memory queue is full the event is dropped, counted and logged at most once
    /// per second).
    pub fn emit(&self, event: Event) {
        let inner = &self.inner;
        if let Some(metrics) = &inner.metrics {
            metrics
                .events_emitted
                .get_or_create(&EventKindLabels {
                    kind: event.kind.name(),
                })
                .inc();
        }
        if inner.sinks.is_empty() {
            return;
        }
        // Serialised once for every sink; the sinks only ever copy bytes.
        let line: Arc<str> = match serde_json::to_string(&event) {
            Ok(line) if line.len() <= MAX_EVENT_BYTES => line.into(),
            Ok(line) => {
                tracing::warn!(id = %event.id, kind = event.kind.name(), bytes = line.len(),
                    "delivery event too large for the sinks: dropped");
                for sink in &inner.sinks {
                    self.dropped(sink, "too_large");
                }
                return;
            }
            Err(e) => {
                tracing::error!(id = %event.id, error = %e, "cannot serialise a delivery event");
                return;
            }
        };
        for sink in &inner.sinks {
            match sink.queue.try_send(line.clone()) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped(sink, "queue_full");
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let last = sink.last_drop_log.load(Ordering::Relaxed);
                    if last != now
                        && sink
                            .last_drop_log
                            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                            .is_ok()
                    {
                        tracing::warn!(sink = %sink.name,
                            "events sink queue full: events dropped (see tidegate_events_dropped)");
                    }
                }
                // The sink has stopped (shutdown): nothing can be done with the event.
                Err(mpsc::error::TrySendError::Closed(_)) => self.dropped(sink, "stopped"),
            }
        }
    }

    /// Checks what the sinks need from outside the configuration file, as `start` would
    /// (for `tidegate check`): each webhook's secret file.
    pub fn check(sinks: &[EventSinkConfig]) -> Result<(), EventsError> {
        for (index, sink) in sinks.iter().enumerate() {
            if let Some(path) = &sink.secret_file {
                webhook::check_secret(&sink.label(index), path)?;
            }
        }
        Ok(())
    }

    /// Whether any sink is configured (so that callers skip work only events need).
    pub fn is_enabled(&self) -> bool {
        !self.inner.sinks.is_empty()
    }

    /// Waits until every sink has stopped: after the shutdown token is cancelled, each
    /// writes out what it holds (the file flushed, the webhook's queue into its buffer).
    pub async fn stopped(&self) {
        self.inner.tasks.wait().await;
    }

    fn dropped(&self, sink: &SinkHandle, reason: &'static str) {
        if let Some(metrics) = &self.inner.metrics {
            metrics
                .events_dropped
                .get_or_create(&EventDropLabels {
                    sink: sink.name.clone(),
                    reason,
                })
                .inc();
        }
    }
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.inner.sinks.iter().map(|s| s.name.as_str()).collect();
        f.debug_struct("Events").field("sinks", &names).finish()
    }
}

/// Counts events dropped by a sink task (shared by the sinks).
pub(crate) fn count_dropped(metrics: &Metrics, sink: &str, reason: &'static str, n: u64) {
    if n > 0 {
        metrics
            .events_dropped
            .get_or_create(&EventDropLabels {
                sink: sink.to_owned(),
                reason,
            })
            .inc_by(n);
    }
}
