//! Steering the queue: what the admin API (and the CLI on top of it) asks of it. A
//! summary by destination and state, lists and single messages, and the operations on one
//! message, one destination or everything: retry now, hold, release, delete (silently or
//! with a DSN to the sender), and the quarantine's list, release and delete.
//!
//! Every view reads the index, which holds a few facts per message; only a single
//! message's details, and a list filtered by sender, read spool files. An operation on a
//! message whose attempt is running is refused (the caller is told to try again): the
//! attempt owns the message until it ends.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::holds::HoldSet;
use super::index::{Entry, Status};
use super::message::{LoadError, Message, RecipientState};
use super::state::{self, Event, Outcome};
use super::{Queue, now_ms};
use crate::spool::QueueId;

/// The most messages a list returns.
pub const MAX_LIST: usize = 10_000;
/// The most spool files one request reads (a sender filter, the quarantine list).
const MAX_READS: usize = 100_000;
/// The most destinations a summary shows by name; the rest are added up as `other`.
const MAX_SUMMARY_DESTINATIONS: usize = 500;

/// Messages by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    /// New, due, running or waiting for a slot of their destination.
    pub active: u64,
    /// Tried, waiting for the next attempt.
    pub deferred: u64,
    /// Held by the operator (the message or its destination).
    pub held: u64,
}

impl StateCounts {
    fn add(&mut self, state: MessageState) {
        match state {
            MessageState::Active => self.active += 1,
            MessageState::Deferred => self.deferred += 1,
            MessageState::Held => self.held += 1,
        }
    }
}

/// Where a message stands, for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageState {
    /// New, due, running or waiting for a slot of its destination.
    Active,
    /// Tried, waiting for its next attempt.
    Deferred,
    /// Held by the operator.
    Held,
}

impl std::str::FromStr for MessageState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "active" => Ok(MessageState::Active),
            "deferred" => Ok(MessageState::Deferred),
            "held" => Ok(MessageState::Held),
            other => Err(format!("`{other}` is not active, deferred or held")),
        }
    }
}

fn state_of(status: &Status, attempts: u32) -> MessageState {
    match status {
        Status::Held => MessageState::Held,
        Status::Scheduled(_) if attempts > 0 => MessageState::Deferred,
        _ => MessageState::Active,
    }
}

/// One destination (recipient domain) in the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationSummary {
    /// The recipient domain (`other` for the rest past the summary's bound).
    pub domain: String,
    /// Messages with pending recipients there, by state.
    pub messages: StateCounts,
    /// Pending recipients there.
    pub recipients: u64,
    /// Age of the oldest such message, in seconds.
    pub oldest_secs: u64,
    /// The last temporary or permanent failure reported for it.
    pub last_error: Option<String>,
    /// Whether the operator holds it.
    pub held: bool,
}

/// The queue at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    /// Messages by state.
    pub messages: StateCounts,
    /// Messages in quarantine.
    pub quarantined: u64,
    /// By destination, most messages first.
    pub destinations: Vec<DestinationSummary>,
    /// What the operator holds.
    pub holds: HoldSet,
    /// Whether the spool is still being read back after a start.
    pub recovering: bool,
    /// Shaped destinations: their policy, parked mail, and why they admit nothing now
    /// (suspended after a "slow down" reply, outside their window, out of tokens).
    #[serde(default)]
    pub shaped: Vec<super::PaceView>,
}

/// One message in a list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageLine {
    /// Queue ID.
    pub id: String,
    /// Where it stands.
    pub state: MessageState,
    /// When it was accepted (seconds since the epoch).
    pub received_at: u64,
    /// Its age in seconds.
    pub age_secs: u64,
    /// Pending recipients.
    pub recipients: u32,
    /// The most attempts of a pending recipient.
    pub attempts: u32,
    /// The pending recipients' domains.
    pub domains: Vec<String>,
}

/// Which messages a list shows.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListQuery {
    /// Only this state.
    pub state: Option<MessageState>,
    /// Only messages with pending recipients at this domain.
    pub domain: Option<String>,
    /// Only messages from this sender (`<>` for the null sender); reads spool files.
    pub sender: Option<String>,
    /// Only messages older than this many seconds.
    pub older_than_secs: Option<u64>,
    /// At most this many (100 when absent, at most [`MAX_LIST`]).
    pub limit: Option<usize>,
}

/// One recipient of a message in detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientDetail {
    /// The address.
    pub address: String,
    /// `pending`, `delivered`, `bounced` or `deleted`.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// The last reply or reason recorded for it.
    pub last_reply: Option<String>,
    /// Its enhanced status code, if any.
    pub last_status: Option<String>,
    /// The host that gave it.
    pub remote: Option<String>,
    /// When it is tried next (seconds since the epoch), if deferred.
    pub next_attempt: Option<u64>,
}

/// One message in detail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDetail {
    /// Queue ID.
    pub id: String,
    /// Where it stands (`quarantined` for a message in quarantine).
    pub state: String,
    /// The reverse path (`None` for `<>`).
    pub sender: Option<String>,
    /// When it was accepted.
    pub received_at: u64,
    /// Its size in octets.
    pub size: u64,
    /// The client it came from, and the listener.
    pub client: String,
    /// Its recipients.
    pub recipients: Vec<RecipientDetail>,
    /// Its tags.
    pub tags: BTreeMap<String, String>,
    /// Why it is quarantined, if it is.
    pub quarantine: Option<String>,
}

/// What an operation applies to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selector {
    /// One message.
    pub id: Option<String>,
    /// Every message with pending recipients at this domain (and, for hold and release,
    /// the destination itself).
    pub domain: Option<String>,
    /// Everything.
    #[serde(default)]
    pub all: bool,
    /// For delete: send the sender a DSN for the deleted recipients.
    #[serde(default)]
    pub bounce: bool,
}

/// What an operation did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    /// Messages it changed.
    pub messages: u64,
    /// What it did, in words (for the log and the CLI).
    pub detail: String,
}

/// Why an operation was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ControlError {
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such message.
    #[error("no message {0} in the queue")]
    NotFound(String),
    /// The message's attempt is running.
    #[error("message {0} is being delivered right now; try again in a moment")]
    Busy(String),
    /// The spool could not be changed.
    #[error("{0}")]
    Io(String),
}

fn parse_id(id: &str) -> Result<QueueId, ControlError> {
    id.parse()
        .map_err(|_| ControlError::BadRequest(format!("`{id}` is not a queue ID")))
}

fn ascii(domain: &str) -> Result<String, ControlError> {
    crate::config::ascii_domain(domain)
        .ok_or_else(|| ControlError::BadRequest(format!("`{domain}` is not a domain")))
}

impl Selector {
    /// Exactly one of id, domain and all.
    fn target(&self) -> Result<Target, ControlError> {
        match (&self.id, &self.domain, self.all) {
            (Some(id), None, false) => Ok(Target::Message(parse_id(id)?)),
            (None, Some(domain), false) => Ok(Target::Domain(ascii(domain)?)),
            (None, None, true) => Ok(Target::All),
            _ => Err(ControlError::BadRequest(
                "name exactly one of: a queue ID, --domain, --all".into(),
            )),
        }
    }
}

enum Target {
    Message(QueueId),
    Domain(String),
    All,
}

impl Queue {
    /// The queue at a glance.
    pub fn summary(&self) -> Summary {
        let shared = &self.shared;
        let now = now_ms() / 1000;
        let holds = shared.holds.current();
        let mut summary = Summary {
            holds: holds.clone(),
            recovering: !self.is_recovered(),
            quarantined: quarantine_ids(&shared.spool_dir).len() as u64,
            ..Summary::default()
        };
        let mut by_domain: BTreeMap<Arc<str>, DestinationSummary> = BTreeMap::new();
        shared.index.for_each(|_, status, info| {
            let state = state_of(status, info.attempts);
            summary.messages.add(state);
            for domain in &info.domains {
                let entry = by_domain.entry(Arc::clone(domain)).or_default();
                entry.messages.add(state);
                entry.oldest_secs = entry.oldest_secs.max(now.saturating_sub(info.received_at));
            }
            // Recipients by domain are not in the index; a message's are counted at its
            // first domain (most messages have one).
            if let Some(first) = info.domains.first() {
                by_domain.entry(Arc::clone(first)).or_default().recipients +=
                    u64::from(info.recipients);
            }
        });
        let errors = shared.last_errors();
        let mut destinations: Vec<DestinationSummary> = by_domain
            .into_iter()
            .map(|(domain, mut d)| {
                d.held = holds.domains.contains(&*domain);
                d.last_error = errors.get(&*domain).cloned();
                d.domain = domain.to_string();
                d
            })
            .collect();
        for domain in &holds.domains {
            if !destinations.iter().any(|d| &d.domain == domain) {
                destinations.push(DestinationSummary {
                    domain: domain.clone(),
                    held: true,
                    ..Default::default()
                });
            }
        }
        destinations.sort_by(|a, b| {
            let total =
                |d: &DestinationSummary| d.messages.active + d.messages.deferred + d.messages.held;
            total(b)
                .cmp(&total(a))
                .then_with(|| a.domain.cmp(&b.domain))
        });
        if destinations.len() > MAX_SUMMARY_DESTINATIONS {
            let rest = destinations.split_off(MAX_SUMMARY_DESTINATIONS - 1);
            let mut other = DestinationSummary {
                domain: "other".into(),
                ..Default::default()
            };
            for d in rest {
                other.messages.active += d.messages.active;
                other.messages.deferred += d.messages.deferred;
                other.messages.held += d.messages.held;
                other.recipients += d.recipients;
                other.oldest_secs = other.oldest_secs.max(d.oldest_secs);
            }
            destinations.push(other);
        }
        summary.destinations = destinations;
        summary.shaped = shared.destinations.view(MAX_SUMMARY_DESTINATIONS);
        summary
    }

    /// The messages a query selects, oldest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Vec<MessageLine>, ControlError> {
        let domain = query.domain.as_deref().map(ascii).transpose()?;
        let limit = query.limit.unwrap_or(100).min(MAX_LIST);
        let now = now_ms() / 1000;
        let wanted = |status: &Status, info: &super::index::Info| {
            query
                .state
                .is_none_or(|s| s == state_of(status, info.attempts))
                && domain
                    .as_deref()
                    .is_none_or(|d| info.domains.iter().any(|x| &**x == d))
                && query
                    .older_than_secs
                    .is_none_or(|age| now.saturating_sub(info.received_at) > age)
        };
        let entries = match &query.sender {
            None => self.shared.index.select(limit, wanted),
            Some(sender) => {
                let candidates = self.shared.index.select(MAX_READS, wanted);
                let sender = (sender != "<>").then(|| sender.to_ascii_lowercase());
                let dir = self.shared.spool_dir.clone();
                tokio::task::spawn_blocking(move || {
                    candidates
                        .into_iter()
                        .filter(|entry| {
                            Message::load(&dir, entry.id, None).is_ok_and(|m| {
                                m.stored
                                    .envelope
                                    .sender
                                    .as_ref()
                                    .map(|s| s.to_ascii_lowercase())
                                    == sender
                            })
                        })
                        .take(limit)
                        .collect()
                })
                .await
                .map_err(|e| ControlError::Io(e.to_string()))?
            }
        };
        Ok(entries.iter().map(|e| line(e, now)).collect())
    }

    /// One message in detail (in the queue or in quarantine).
    pub async fn show(&self, id: &str) -> Result<MessageDetail, ControlError> {
        let queue_id = parse_id(id)?;
        let entry = self.shared.index.entry(queue_id);
        let dir = self.shared.spool_dir.clone();
        let quarantined = entry.is_none();
        let loaded = tokio::task::spawn_blocking(move || -> Result<_, LoadError> {
            if quarantined {
                let path = dir.join("quarantine").join(queue_id.to_string());
                let stored = crate::spool::read_stored(&path)
                    .map_err(|e| LoadError::Unreadable(e.to_string()))?;
                return Ok((Message::new(Arc::new(stored), &[]), Vec::new()));
            }
            let message = Message::load(&dir, queue_id, None)?;
            let events = state::replay(&dir.join("state").join(queue_id.to_string()))
                .map_err(|e| LoadError::Unreadable(e.to_string()))?;
            Ok((message, events))
        })
        .await
        .map_err(|e| ControlError::Io(e.to_string()))?;
        let (message, events) = loaded.map_err(|_| ControlError::NotFound(id.to_owned()))?;
        let envelope = &message.stored.envelope;
        let state = match &entry {
            Some(entry) => serde_json::to_value(state_of(&entry.status, entry.info.attempts))
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            None => "quarantined".into(),
        };
        let recipients = envelope
            .recipients
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let last = events.iter().rev().find(|e| e.rcpt == i);
                let (state, attempts) = match message.recipient(i) {
                    Some(RecipientState::Pending { attempts }) => ("pending", attempts),
                    Some(RecipientState::Delivered) => ("delivered", last.map_or(0, |e| e.attempt)),
                    Some(RecipientState::Bounced) => ("bounced", last.map_or(0, |e| e.attempt)),
                    Some(RecipientState::Deleted) => ("deleted", last.map_or(0, |e| e.attempt)),
                    None => ("pending", 0),
                };
                RecipientDetail {
                    address: r.address.clone(),
                    state: if quarantined {
                        "quarantined".into()
                    } else {
                        state.into()
                    },
                    attempts,
                    last_reply: last.map(|e| e.reply.clone()),
                    last_status: last.and_then(|e| e.status.clone()),
                    remote: last.and_then(|e| e.remote.clone()),
                    next_attempt: last.and_then(|e| e.next),
                }
            })
            .collect();
        Ok(MessageDetail {
            id: id.to_owned(),
            state,
            sender: envelope.sender.clone(),
            received_at: envelope.received_at,
            size: envelope.size,
            client: format!(
                "{} ({}) on {}",
                envelope.client.address, envelope.client.helo, envelope.client.listener
            ),
            recipients,
            tags: envelope.tags.clone(),
            quarantine: envelope.quarantine.clone(),
        })
    }

    /// Makes messages due now.
    pub fn retry(&self, selector: &Selector) -> Result<Done, ControlError> {
        let index = &self.shared.index;
        let now = now_ms();
        let ids = match selector.target()? {
            Target::Message(id) => {
                let entry = index
                    .entry(id)
                    .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
                match entry.status {
                    Status::Scheduled(_) => vec![id],
                    Status::Held => {
                        return Err(ControlError::BadRequest(format!(
                            "message {id} is held: release it"
                        )));
                    }
                    _ => Vec::new(),
                }
            }
            Target::Domain(domain) => scheduled_ids(index, |info| has_domain(info, &domain)),
            Target::All => scheduled_ids(index, |_| true),
        };
        for id in &ids {
            index.schedule(*id, now);
        }
        Ok(Done {
            messages: ids.len() as u64,
            detail: format!("{} message(s) due now", ids.len()),
        })
    }

    /// Holds a message, a destination or the whole queue.
    pub fn hold(&self, selector: &Selector) -> Result<Done, ControlError> {
        let shared = &self.shared;
        match selector.target()? {
            Target::Message(id) => {
                shared
                    .index
                    .hold(id, true)
                    .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
                std::fs::write(shared.hold_marker(id), b"")
                    .map_err(|e| ControlError::Io(format!("cannot mark {id} held: {e}")))?;
                Ok(Done {
                    messages: 1,
                    detail: format!("message {id} held"),
                })
            }
            Target::Domain(domain) => {
                shared
                    .holds
                    .change(|h| {
                        h.domains.insert(domain.clone());
                    })
                    .map_err(|e| ControlError::Io(e.to_string()))?;
                // Messages already scheduled are held at their next attempt, which finds
                // their destination held; nothing is delivered there meanwhile.
                Ok(Done {
                    messages: 0,
                    detail: format!("destination {domain} held"),
                })
            }
            Target::All => {
                shared
                    .holds
                    .change(|h| h.all = true)
                    .map_err(|e| ControlError::Io(e.to_string()))?;
                Ok(Done {
                    messages: 0,
                    detail: "the whole queue is held".into(),
                })
            }
        }
    }

    /// Releases a message, a destination or the whole queue; `by` is who asked.
    pub fn release(&self, selector: &Selector, by: &str) -> Result<Done, ControlError> {
        let shared = &self.shared;
        let now = now_ms();
        match selector.target()? {
            Target::Message(id) => {
                if shared.index.entry(id).is_none() {
                    return Err(ControlError::NotFound(id.to_string()));
                }
                let _ = std::fs::remove_file(shared.hold_marker(id));
                let released = shared.index.release(id, false, now);
                if released {
                    shared.events.emit(crate::events::Event::released(id, by));
                }
                Ok(Done {
                    messages: u64::from(released),
                    detail: format!("message {id} released"),
                })
            }
            Target::Domain(domain) => {
                shared
                    .holds
                    .change(|h| {
                        h.domains.remove(&domain);
                    })
                    .map_err(|e| ControlError::Io(e.to_string()))?;
                let ids: Vec<QueueId> = shared
                    .index
                    .select(usize::MAX, |status, info| {
                        *status == Status::Held && !info.held && has_domain(info, &domain)
                    })
                    .into_iter()
                    .map(|e| e.id)
                    .collect();
                let released = ids
                    .iter()
                    .filter(|id| shared.index.release(**id, true, now))
                    .count();
                Ok(Done {
                    messages: released as u64,
                    detail: format!(
                        "destination {domain} released ({released} message(s) due now)"
                    ),
                })
            }
            Target::All => {
                shared
                    .holds
                    .change(|h| h.all = false)
                    .map_err(|e| ControlError::Io(e.to_string()))?;
                shared.index.wake.notify_one();
                let detail = if shared.config().queue.hold {
                    "released, but the configuration holds the queue ([queue] hold = true)".into()
                } else {
                    "the whole queue is released".into()
                };
                Ok(Done {
                    messages: 0,
                    detail,
                })
            }
        }
    }

    /// Deletes a message, or a destination's recipients, silently or with a DSN; `by` is
    /// who asked.
    pub async fn delete(&self, selector: &Selector, by: &str) -> Result<Done, ControlError> {
        let ids = match selector.target()? {
            Target::Message(id) => {
                let entry = self
                    .shared
                    .index
                    .entry(id)
                    .ok_or_else(|| ControlError::NotFound(id.to_string()))?;
                if matches!(entry.status, Status::Running | Status::Parked) {
                    return Err(ControlError::Busy(id.to_string()));
                }
                vec![(id, None)]
            }
            Target::Domain(domain) => self
                .shared
                .index
                .select(usize::MAX, |status, info| {
                    !matches!(status, Status::Running | Status::Parked) && has_domain(info, &domain)
                })
                .into_iter()
                .map(|e| (e.id, Some(domain.clone())))
                .collect(),
            Target::All => {
                return Err(ControlError::BadRequest(
                    "delete takes a queue ID or --domain, not --all".into(),
                ));
            }
        };
        let mut changed = 0u64;
        for (id, domain) in ids {
            match self
                .delete_one(id, domain.as_deref(), selector.bounce)
                .await
            {
                Ok(true) => {
                    changed += 1;
                    self.shared
                        .events
                        .emit(crate::events::Event::deleted(id, by));
                }
                Ok(false) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(Done {
            messages: changed,
            detail: format!(
                "{changed} message(s) {}",
                if selector.bounce {
                    "deleted, with a DSN to the sender"
                } else {
                    "deleted"
                }
            ),
        })
    }

    /// Deletes the pending recipients of one message (those at `domain`, or all).
    async fn delete_one(
        &self,
        id: QueueId,
        domain: Option<&str>,
        bounce: bool,
    ) -> Result<bool, ControlError> {
        let shared = &self.shared;
        // The message must not start an attempt while it is being deleted.
        let Some(before) = shared.index.hold(id, false) else {
            return Ok(false);
        };
        if matches!(before, Status::Running | Status::Parked) {
            // The attempt (or the destination that will wake it) owns it for now.
            return Err(ControlError::Busy(id.to_string()));
        }
        let restore = |shared: &super::Shared| {
            if let Status::Scheduled(at) = before {
                shared.index.schedule(id, at);
            } else {
                shared.index.release(id, true, now_ms());
            }
        };
        let Some(mut message) = shared.load(id).await else {
            return Ok(false);
        };
        let stored = Arc::clone(&message.stored);
        let at = now_ms() / 1000;
        let events: Vec<Event> = message
            .pending()
            .into_iter()
            .filter(|(rcpt, _)| {
                domain.is_none_or(|d| {
                    stored.envelope.recipients[*rcpt]
                        .address
                        .rsplit_once('@')
                        .is_some_and(|(_, x)| x.eq_ignore_ascii_case(d))
                })
            })
            .map(|(rcpt, attempts)| Event {
                rcpt,
                outcome: if bounce {
                    Outcome::Bounced
                } else {
                    Outcome::Deleted
                },
                attempt: attempts,
                at,
                next: None,
                reply: "deleted by the operator".into(),
                status: bounce.then(|| "5.0.0".into()),
                remote: None,
                owed_notice: None,
            })
            .collect();
        if events.is_empty() {
            restore(shared);
            return Ok(false);
        }
        if bounce {
            let head = super::attempt::message_head(shared, id, &stored).await;
            let refs: Vec<&Event> = events.iter().collect();
            if super::notify::bounce(shared, &stored, &refs, &head, false).await
                == super::notify::Report::Failed
            {
                restore(shared);
                return Err(ControlError::Io(format!(
                    "the DSN for {id} could not be spooled; nothing was deleted"
                )));
            }
        }
        if let Err(e) = shared.record(id, &mut message, &events) {
            restore(shared);
            return Err(ControlError::Io(format!(
                "cannot record the deletion of {id}: {e}"
            )));
        }
        for event in &events {
            tracing::info!(queue_id = %id, recipient = %stored.envelope.recipients[event.rcpt].address, bounce, "recipient deleted by the operator");
        }
        if message.is_complete() {
            shared.forget(id);
            shared.remove_files(id);
        } else {
            shared.update_info(id, &message);
            restore(shared);
        }
        Ok(true)
    }
}

/// A message in quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuarantinedLine {
    /// Queue ID.
    pub id: String,
    /// When it was accepted.
    pub received_at: u64,
    /// The reverse path (`None` for `<>`).
    pub sender: Option<String>,
    /// Its recipients.
    pub recipients: Vec<String>,
    /// Why a plugin quarantined it.
    pub reason: Option<String>,
}

impl Queue {
    /// The quarantined messages, oldest first, at most `limit`.
    pub async fn quarantine_list(
        &self,
        limit: usize,
    ) -> Result<Vec<QuarantinedLine>, ControlError> {
        let dir = self.shared.spool_dir.clone();
        let limit = limit.min(MAX_LIST);
        tokio::task::spawn_blocking(move || {
            quarantine_ids(&dir)
                .into_iter()
                .take(limit)
                .filter_map(|id| {
                    let stored =
                        crate::spool::read_stored(&dir.join("quarantine").join(id.to_string()))
                            .ok()?;
                    Some(QuarantinedLine {
                        id: id.to_string(),
                        received_at: stored.envelope.received_at,
                        sender: stored.envelope.sender.clone(),
                        recipients: stored
                            .envelope
                            .recipients
                            .iter()
                            .map(|r| r.address.clone())
                            .collect(),
                        reason: stored.envelope.quarantine.clone(),
                    })
                })
                .collect()
        })
        .await
        .map_err(|e| ControlError::Io(e.to_string()))
    }

    /// Delivers a quarantined message as it would have been delivered; `by` is who asked.
    pub async fn quarantine_release(&self, id: &str, by: &str) -> Result<Done, ControlError> {
        let queue_id = parse_id(id)?;
        let spool = self.shared.spool.clone();
        let released = tokio::task::spawn_blocking(move || spool.release_quarantined(queue_id))
            .await
            .map_err(|e| ControlError::Io(e.to_string()))?;
        match released {
            Ok(stored) => {
                self.enqueue(stored);
                tracing::info!(queue_id = %queue_id, by, "quarantined message released into the queue");
                self.shared
                    .events
                    .emit(crate::events::Event::released(queue_id, by));
                Ok(Done {
                    messages: 1,
                    detail: format!("message {id} released from quarantine"),
                })
            }
            Err(crate::spool::SpoolError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Err(ControlError::NotFound(id.to_owned()))
            }
            Err(e) => Err(ControlError::Io(e.to_string())),
        }
    }

    /// Deletes a quarantined message for good; `by` is who asked.
    pub fn quarantine_delete(&self, id: &str, by: &str) -> Result<Done, ControlError> {
        let queue_id = parse_id(id)?;
        let path = self
            .shared
            .spool_dir
            .join("quarantine")
            .join(queue_id.to_string());
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(queue_id = %queue_id, by, "quarantined message deleted");
                self.shared
                    .events
                    .emit(crate::events::Event::deleted(queue_id, by));
                Ok(Done {
                    messages: 1,
                    detail: format!("message {id} deleted from quarantine"),
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(ControlError::NotFound(id.to_owned()))
            }
            Err(e) => Err(ControlError::Io(e.to_string())),
        }
    }

    /// Takes up to `max` messages of a stopped gateway's spool at `source` into this one
    /// and into the queue, each with its history (`spool::import`); `by` is who asked.
    pub async fn import(
        &self,
        source: &std::path::Path,
        max: usize,
        by: &str,
    ) -> Result<crate::spool::import::ImportReport, ControlError> {
        if !self.is_recovered() {
            // The journal's promise needs recovery done: until then an imported message's
            // state files could be taken for orphans.
            return Err(ControlError::Busy("the spool (still recovering)".into()));
        }
        if !source.is_absolute() {
            return Err(ControlError::BadRequest(format!(
                "`{}` is not an absolute path",
                source.display()
            )));
        }
        let spool = self.shared.spool.clone();
        let from = source.to_owned();
        let report = tokio::task::spawn_blocking(move || spool.import(&from, max))
            .await
            .map_err(|e| ControlError::Io(e.to_string()))?
            .map_err(|e| match e {
                crate::spool::SpoolError::Locked(path) => ControlError::BadRequest(format!(
                    "{} is in use by a running gateway: stop it first",
                    path.display()
                )),
                crate::spool::SpoolError::Corrupt { .. } => ControlError::BadRequest(e.to_string()),
                other => ControlError::Io(other.to_string()),
            })?;
        let ids: Vec<QueueId> = report
            .imported
            .iter()
            .filter_map(|id| id.parse().ok())
            .collect();
        let dir = self.shared.spool_dir.clone();
        let now = super::now_ms();
        let loaded = tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|id| (id, super::message::recovered_due(&dir, id, now)))
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ControlError::Io(e.to_string()))?;
        for (id, due) in loaded {
            self.shared.take_in(id, due);
        }
        tracing::info!(
            from = %source.display(),
            by,
            imported = report.imported.len(),
            quarantined = report.quarantined,
            already_imported = report.already_imported,
            failed = report.failed.len(),
            remaining = report.remaining,
            "spool import"
        );
        Ok(report)
    }
}

fn has_domain(info: &super::index::Info, domain: &str) -> bool {
    info.domains.iter().any(|d| &**d == domain)
}

fn scheduled_ids(
    index: &super::index::Index,
    keep: impl Fn(&super::index::Info) -> bool,
) -> Vec<QueueId> {
    index
        .select(usize::MAX, |status, info| {
            matches!(status, Status::Scheduled(_)) && keep(info)
        })
        .into_iter()
        .map(|e| e.id)
        .collect()
}

fn line(entry: &Entry, now: u64) -> MessageLine {
    MessageLine {
        id: entry.id.to_string(),
        state: state_of(&entry.status, entry.info.attempts),
        received_at: entry.info.received_at,
        age_secs: now.saturating_sub(entry.info.received_at),
        recipients: entry.info.recipients,
        attempts: entry.info.attempts,
        domains: entry.info.domains.iter().map(|d| d.to_string()).collect(),
    }
}

/// The queue IDs in `<spool>/quarantine/` (at most [`MAX_READS`]).
pub(crate) fn quarantine_ids(spool_dir: &std::path::Path) -> Vec<QueueId> {
    let mut ids: Vec<QueueId> = std::fs::read_dir(spool_dir.join("quarantine"))
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .take(MAX_READS)
                .collect()
        })
        .unwrap_or_default();
    ids.sort_unstable();
    ids
}
