//! One message as an attempt sees it: its envelope and where each recipient stands,
//! loaded from the spool file and the state log when the attempt starts and owned by the
//! attempt until it ends. Between attempts nothing of it stays in memory (see `index`).

use std::sync::Arc;

use super::index::Info;
use super::state::{self, Event, Outcome};
use crate::spool::{QueueId, SpoolError, StoredMessage};

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
    /// Final: deleted by the operator.
    Deleted,
}

/// A message and its recipients' states.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) stored: Arc<StoredMessage>,
    recipients: Vec<RecipientState>,
}

/// Why a message could not be loaded.
#[derive(Debug)]
pub(crate) enum LoadError {
    /// Its spool file is gone (quarantined, or removed by hand).
    Gone,
    /// Its spool file is not a valid one: set it aside.
    Corrupt(String),
    /// It could not be read now; try again later.
    Unreadable(String),
}

impl Message {
    /// A message with the outcomes of its state log applied.
    pub(crate) fn new(stored: Arc<StoredMessage>, events: &[Event]) -> Self {
        let count = stored.envelope.recipients.len();
        let mut message = Message {
            stored,
            recipients: vec![RecipientState::Pending { attempts: 0 }; count],
        };
        message.apply(events);
        message
    }

    /// Reads a message's envelope (unless `warm` already has it) and replays its state
    /// log. Blocking: run it off the runtime.
    pub(crate) fn load(
        spool_dir: &std::path::Path,
        id: QueueId,
        warm: Option<Arc<StoredMessage>>,
    ) -> Result<Self, LoadError> {
        let stored = match warm {
            Some(stored) => stored,
            None => read_envelope(spool_dir, id)?,
        };
        let log = spool_dir.join("state").join(id.to_string());
        let events = state::replay(&log)
            .map_err(|e| LoadError::Unreadable(format!("state log {}: {e}", log.display())))?;
        Ok(Message::new(stored, &events))
    }

    /// Applies outcomes already on disk.
    pub(crate) fn apply(&mut self, events: &[Event]) {
        for event in events {
            if let Some(slot) = self.recipients.get_mut(event.rcpt) {
                *slot = match event.outcome {
                    Outcome::Delivered => RecipientState::Delivered,
                    Outcome::Bounced => RecipientState::Bounced,
                    Outcome::Deleted => RecipientState::Deleted,
                    Outcome::Deferred => RecipientState::Pending {
                        attempts: event.attempt,
                    },
                };
            }
        }
    }

    /// Where recipient `i` stands.
    pub(crate) fn recipient(&self, i: usize) -> Option<RecipientState> {
        self.recipients.get(i).copied()
    }

    /// The pending recipients: (index in the envelope, attempts so far).
    pub(crate) fn pending(&self) -> Vec<(usize, u32)> {
        self.recipients
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r {
                RecipientState::Pending { attempts } => Some((i, *attempts)),
                _ => None,
            })
            .collect()
    }

    /// What the index keeps of the message for the operator's views; `intern` shares one
    /// copy of each domain name between messages.
    pub(crate) fn info(&self, held: bool, intern: impl Fn(&str) -> Arc<str>) -> Info {
        let envelope = &self.stored.envelope;
        let mut domains: Vec<Arc<str>> = Vec::new();
        let mut recipients = 0u32;
        let mut attempts = 0u32;
        for (i, state) in self.recipients.iter().enumerate() {
            let RecipientState::Pending { attempts: tried } = state else {
                continue;
            };
            recipients += 1;
            attempts = attempts.max(*tried);
            let domain = envelope.recipients[i]
                .address
                .rsplit_once('@')
                .map_or("", |(_, d)| d)
                .to_ascii_lowercase();
            if !domains.iter().any(|d| **d == *domain) {
                domains.push(intern(&domain));
            }
        }
        Info {
            received_at: envelope.received_at,
            domains: domains.into_boxed_slice(),
            recipients,
            attempts,
            held,
        }
    }

    /// Whether every recipient is delivered or bounced.
    pub(crate) fn is_complete(&self) -> bool {
        self.recipients
            .iter()
            .all(|r| !matches!(r, RecipientState::Pending { .. }))
    }
}

/// Reads the envelope of a spooled message. Blocking.
fn read_envelope(
    spool_dir: &std::path::Path,
    id: QueueId,
) -> Result<Arc<StoredMessage>, LoadError> {
    let path = spool_dir.join("msg").join(id.to_string());
    match crate::spool::read_stored(&path) {
        Ok(stored) => Ok(Arc::new(stored)),
        Err(SpoolError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(LoadError::Gone)
        }
        Err(e @ SpoolError::Corrupt { .. }) => Err(LoadError::Corrupt(e.to_string())),
        // What reading the same file again cannot change (a directory where a file should
        // be, a file the gateway may not read, one cut short) makes it unusable: set it
        // aside. Anything else (out of descriptors, an I/O hiccup) is tried again.
        Err(e @ SpoolError::Io { .. }) if is_lasting(&e) => Err(LoadError::Corrupt(e.to_string())),
        Err(e) => Err(LoadError::Unreadable(e.to_string())),
    }
}

fn is_lasting(error: &SpoolError) -> bool {
    use std::io::ErrorKind::{InvalidData, IsADirectory, PermissionDenied, UnexpectedEof};
    matches!(error, SpoolError::Io { source, .. }
        if matches!(source.kind(), IsADirectory | PermissionDenied | InvalidData | UnexpectedEof))
}

/// When a recovered message is next due, from its state log: the latest `next` of its
/// deferrals (or now), with the message; or `None` when every recipient is already final. The envelope is
/// read (and so checked) even for a message never tried, so that a file that cannot be
/// used is set aside at start-up rather than at its first attempt. Blocking.
pub(crate) fn recovered_due(
    spool_dir: &std::path::Path,
    id: QueueId,
    now_ms: u64,
) -> Result<Option<(u64, Message)>, LoadError> {
    let stored = read_envelope(spool_dir, id)?;
    let log = spool_dir.join("state").join(id.to_string());
    let events = state::replay(&log)
        .map_err(|e| LoadError::Unreadable(format!("state log {}: {e}", log.display())))?;
    let message = Message::new(stored, &events);
    if message.is_complete() {
        return Ok(None);
    }
    let next = events
        .iter()
        .filter(|e| e.outcome == Outcome::Deferred)
        .filter_map(|e| e.next)
        .max()
        .map_or(now_ms, |next| next.saturating_mul(1000).max(now_ms));
    Ok(Some((next, message)))
}
