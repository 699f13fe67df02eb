//! The queue's index: what the queue keeps in memory about each message, and nothing
//! more. A queue of a million messages must not cost a million envelopes: the index
//! holds a message's ID, where it stands (scheduled for a time, running, parked behind a
//! busy destination) and, rarely, outcomes that could not be written yet, a few tens of
//! octets per message. Everything else (envelope, recipients' states) is read from the
//! spool file and the state log when an attempt starts.
//!
//! The one exception is a small cache of the envelopes of messages just received, whose
//! first attempt is due at once: reading back what the session has just written would
//! cost every message a file read. It is bounded by an estimate of the octets it holds,
//! and a message that does not fit is read from disk like any other.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::lock;
use super::state::Event;
use crate::spool::{QueueId, StoredMessage};

/// The most the cache of fresh envelopes holds, estimated in octets.
const WARM_BYTES: usize = 32 * 1024 * 1024;

/// Where a message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    /// Waiting for its next attempt, due at this time (ms since the epoch).
    Scheduled(u64),
    /// An attempt is running: the scheduler must not start another.
    Running,
    /// Waiting for a destination that has as many deliveries and waiters as it may
    /// have; the destination schedules it again when a slot frees (see
    /// `destinations`).
    Parked,
}

#[derive(Debug)]
struct Slot {
    status: Status,
    /// Outcomes of an attempt that could not be written to the state log: the message is
    /// held (nothing delivered) until they are.
    unrecorded: Option<Box<[Event]>>,
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<QueueId, Slot>,
    schedule: BTreeSet<(u64, QueueId)>,
}

#[derive(Debug, Default)]
struct Warm {
    envelopes: HashMap<QueueId, (Arc<StoredMessage>, usize)>,
    bytes: usize,
}

/// The index of the messages in the queue.
#[derive(Debug, Default)]
pub(crate) struct Index {
    inner: Mutex<Inner>,
    warm: Mutex<Warm>,
    /// Told when something becomes due earlier than the scheduler's next wake-up.
    pub(crate) wake: Notify,
}

/// A rough size of an envelope in memory, for the cache's bound.
fn estimate(stored: &StoredMessage) -> usize {
    let envelope = &stored.envelope;
    let recipients: usize = envelope
        .recipients
        .iter()
        .map(|r| r.address.len() + 64)
        .sum();
    let tags: usize = envelope.tags.iter().map(|(k, v)| k.len() + v.len()).sum();
    let edits = envelope.header_edits.len() * 128;
    512 + recipients + tags + edits
}

impl Index {
    /// Adds a message due at `due_ms`; false (and nothing changes) if it is already there.
    pub(crate) fn insert(&self, id: QueueId, due_ms: u64) -> bool {
        let mut inner = lock(&self.inner);
        if inner.slots.contains_key(&id) {
            return false;
        }
        inner.slots.insert(
            id,
            Slot {
                status: Status::Scheduled(due_ms),
                unrecorded: None,
            },
        );
        let earliest = inner.schedule.first().is_none_or(|&(at, _)| due_ms < at);
        inner.schedule.insert((due_ms, id));
        drop(inner);
        if earliest {
            self.wake.notify_one();
        }
        true
    }

    /// Keeps the envelope of a message just received for its first attempt, if the cache
    /// has room.
    pub(crate) fn keep_warm(&self, stored: Arc<StoredMessage>) {
        let size = estimate(&stored);
        let mut warm = lock(&self.warm);
        if warm.bytes + size <= WARM_BYTES {
            warm.bytes += size;
            warm.envelopes.insert(stored.id, (stored, size));
        }
    }

    /// The cached envelope of a message, taken out of the cache.
    pub(crate) fn take_warm(&self, id: QueueId) -> Option<Arc<StoredMessage>> {
        let mut warm = lock(&self.warm);
        let (stored, size) = warm.envelopes.remove(&id)?;
        warm.bytes -= size;
        Some(stored)
    }

    /// Takes the first message due at `now_ms`, marking it running; `Err` with the time
    /// the next one is due (or `None`) when none is due yet.
    pub(crate) fn pop_due(&self, now_ms: u64) -> Result<QueueId, Option<u64>> {
        let mut inner = lock(&self.inner);
        match inner.schedule.first().copied() {
            Some((at, id)) if at <= now_ms => {
                inner.schedule.pop_first();
                if let Some(slot) = inner.slots.get_mut(&id) {
                    slot.status = Status::Running;
                }
                Ok(id)
            }
            Some((at, _)) => Err(Some(at)),
            None => Err(None),
        }
    }

    /// Schedules a message (running, parked or scheduled) for `due_ms`. Nothing happens
    /// to a message the index does not hold.
    pub(crate) fn schedule(&self, id: QueueId, due_ms: u64) {
        let mut inner = lock(&self.inner);
        let Some(slot) = inner.slots.get_mut(&id) else {
            return;
        };
        let previous = std::mem::replace(&mut slot.status, Status::Scheduled(due_ms));
        if let Status::Scheduled(at) = previous {
            inner.schedule.remove(&(at, id));
        }
        let earliest = inner.schedule.first().is_none_or(|&(at, _)| due_ms < at);
        inner.schedule.insert((due_ms, id));
        drop(inner);
        if earliest {
            self.wake.notify_one();
        }
    }

    /// Marks a running message parked: only its destination schedules it again.
    pub(crate) fn park(&self, id: QueueId) {
        if let Some(slot) = lock(&self.inner).slots.get_mut(&id)
            && slot.status == Status::Running
        {
            slot.status = Status::Parked;
        }
    }

    /// Forgets a message; returns whether it was there.
    pub(crate) fn remove(&self, id: QueueId) -> bool {
        let mut inner = lock(&self.inner);
        let Some(slot) = inner.slots.remove(&id) else {
            return false;
        };
        if let Status::Scheduled(at) = slot.status {
            inner.schedule.remove(&(at, id));
        }
        drop(inner);
        self.take_warm(id);
        true
    }

    /// Whether the index holds a message.
    pub(crate) fn contains(&self, id: QueueId) -> bool {
        lock(&self.inner).slots.contains_key(&id)
    }

    /// Messages held.
    pub(crate) fn len(&self) -> usize {
        lock(&self.inner).slots.len()
    }

    /// Keeps outcomes that could not be recorded, to be written before the next attempt.
    pub(crate) fn set_unrecorded(&self, id: QueueId, events: Vec<Event>) {
        if let Some(slot) = lock(&self.inner).slots.get_mut(&id) {
            slot.unrecorded = (!events.is_empty()).then(|| events.into_boxed_slice());
        }
    }

    /// Takes the outcomes still to be recorded (none for almost every message).
    pub(crate) fn take_unrecorded(&self, id: QueueId) -> Vec<Event> {
        lock(&self.inner)
            .slots
            .get_mut(&id)
            .and_then(|slot| slot.unrecorded.take())
            .map(Vec::from)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> QueueId {
        format!("{n:016X}").parse().unwrap()
    }

    #[test]
    fn messages_come_out_in_due_order_once_each() {
        let index = Index::default();
        assert!(index.insert(id(2), 200));
        assert!(index.insert(id(1), 100));
        assert!(!index.insert(id(1), 50), "already there");
        assert_eq!(index.pop_due(150), Ok(id(1)));
        assert_eq!(index.pop_due(150), Err(Some(200)));
        assert_eq!(index.pop_due(250), Ok(id(2)));
        assert_eq!(index.pop_due(250), Err(None));
        assert_eq!(index.len(), 2, "running messages stay in the index");
    }

    #[test]
    fn a_rescheduled_message_has_one_place_in_the_schedule() {
        let index = Index::default();
        index.insert(id(1), 100);
        index.schedule(id(1), 500);
        index.schedule(id(1), 300);
        assert_eq!(index.pop_due(1000), Ok(id(1)));
        assert_eq!(index.pop_due(1000), Err(None));
    }

    #[test]
    fn a_parked_message_waits_until_scheduled_again() {
        let index = Index::default();
        index.insert(id(1), 0);
        assert_eq!(index.pop_due(1), Ok(id(1)));
        index.park(id(1));
        assert_eq!(index.pop_due(u64::MAX), Err(None));
        index.schedule(id(1), 5);
        assert_eq!(index.pop_due(5), Ok(id(1)));
        assert!(index.remove(id(1)) && !index.contains(id(1)));
    }

    #[test]
    fn the_cache_of_fresh_envelopes_is_bounded() {
        let index = Index::default();
        let stored = |n: u64| {
            Arc::new(StoredMessage {
                id: id(n),
                envelope: crate::spool::envelope::tests_support::envelope(id(n), 1),
                message_len: 10,
            })
        };
        let per = estimate(&stored(0));
        let fit = WARM_BYTES / per;
        for n in 0..fit as u64 + 10 {
            index.keep_warm(stored(n));
        }
        assert!(index.take_warm(id(0)).is_some());
        assert!(index.take_warm(id(0)).is_none(), "taken once");
        assert!(
            index.take_warm(id(fit as u64 + 5)).is_none(),
            "over the bound"
        );
        assert!(lock(&index.warm).bytes <= WARM_BYTES);
    }
}
