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
pub(crate) enum Status {
    /// Waiting for its next attempt, due at this time (ms since the epoch).
    Scheduled(u64),
    /// An attempt is running: the scheduler must not start another.
    Running,
    /// Waiting for a destination that has as many deliveries and waiters as it may
    /// have; the destination schedules it again when a slot frees (see
    /// `destinations`).
    Parked,
    /// Held by the operator (the message, or every destination it has left): nothing
    /// happens until it is released.
    Held,
}

/// What the operator's views need of a message without reading its file: when it came,
/// where its pending recipients go, how many there are and how often they were tried.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Info {
    /// When it was accepted (seconds since the epoch).
    pub(crate) received_at: u64,
    /// The domains of its pending recipients, each once.
    pub(crate) domains: Box<[Arc<str>]>,
    /// Pending recipients.
    pub(crate) recipients: u32,
    /// The most attempts made for any pending recipient.
    pub(crate) attempts: u32,
    /// Held by the operator (by message, not by destination).
    pub(crate) held: bool,
}

/// One message as the operator's views see it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) id: QueueId,
    pub(crate) status: Status,
    pub(crate) info: Info,
}

#[derive(Debug)]
struct Slot {
    status: Status,
    info: Info,
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
    /// One copy of each destination domain named in `Info`.
    domains: Mutex<Interner>,
    /// Told when something becomes due earlier than the scheduler's next wake-up.
    pub(crate) wake: Notify,
}

/// Shared domain names: a million messages to three domains hold three strings. Names no
/// message holds any more are dropped now and then, so the set follows the queue.
#[derive(Debug, Default)]
struct Interner {
    names: std::collections::HashSet<Arc<str>>,
    /// The size at which to drop unused names next.
    prune_at: usize,
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
    /// Adds a message due at `due_ms` (or held, if `info` says so); false (and nothing
    /// changes) if it is already there.
    pub(crate) fn insert(&self, id: QueueId, due_ms: u64, info: Info) -> bool {
        let mut inner = lock(&self.inner);
        if inner.slots.contains_key(&id) {
            return false;
        }
        let held = info.held;
        inner.slots.insert(
            id,
            Slot {
                status: if held {
                    Status::Held
                } else {
                    Status::Scheduled(due_ms)
                },
                info,
                unrecorded: None,
            },
        );
        if held {
            return true;
        }
        let earliest = inner.schedule.first().is_none_or(|&(at, _)| due_ms < at);
        inner.schedule.insert((due_ms, id));
        drop(inner);
        if earliest {
            self.wake.notify_one();
        }
        true
    }

    /// The shared copy of a domain name.
    pub(crate) fn intern(&self, domain: &str) -> Arc<str> {
        let mut interner = lock(&self.domains);
        if let Some(name) = interner.names.get(domain) {
            return Arc::clone(name);
        }
        if interner.names.len() >= interner.prune_at {
            interner.names.retain(|name| Arc::strong_count(name) > 1);
            interner.prune_at = (interner.names.len() * 2).max(1024);
        }
        let name: Arc<str> = Arc::from(domain);
        interner.names.insert(Arc::clone(&name));
        name
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

    /// Schedules a message (running, parked, scheduled or held by domain) for `due_ms`;
    /// one the operator holds is held instead. Nothing happens to a message the index
    /// does not hold.
    pub(crate) fn schedule(&self, id: QueueId, due_ms: u64) {
        let mut inner = lock(&self.inner);
        let Some(slot) = inner.slots.get_mut(&id) else {
            return;
        };
        // Held by the operator while it ran or was parked: it stays held, not scheduled.
        let next = if slot.info.held {
            Status::Held
        } else {
            Status::Scheduled(due_ms)
        };
        let previous = std::mem::replace(&mut slot.status, next);
        if let Status::Scheduled(at) = previous {
            inner.schedule.remove(&(at, id));
        }
        if next == Status::Held {
            return;
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

    /// Holds a message that is not running; returns its status before (`None`: not in
    /// the index). `by_operator` marks the message itself held (not just its domains).
    pub(crate) fn hold(&self, id: QueueId, by_operator: bool) -> Option<Status> {
        let mut inner = lock(&self.inner);
        let slot = inner.slots.get_mut(&id)?;
        let before = slot.status;
        if by_operator {
            slot.info.held = true;
        }
        match before {
            Status::Running | Status::Parked => {}
            Status::Held => {}
            Status::Scheduled(at) => {
                slot.status = Status::Held;
                inner.schedule.remove(&(at, id));
            }
        }
        Some(before)
    }

    /// Holds a running message whose attempt found nothing it may deliver now (every
    /// pending recipient's destination is held).
    pub(crate) fn hold_running(&self, id: QueueId) {
        if let Some(slot) = lock(&self.inner).slots.get_mut(&id)
            && slot.status == Status::Running
        {
            slot.status = Status::Held;
        }
    }

    /// Releases a held message (due at once); false if it is not held, or held as a
    /// message when `only_by_domain`.
    pub(crate) fn release(&self, id: QueueId, only_by_domain: bool, now_ms: u64) -> bool {
        let mut inner = lock(&self.inner);
        let Some(slot) = inner.slots.get_mut(&id) else {
            return false;
        };
        if only_by_domain && slot.info.held {
            return false;
        }
        slot.info.held = false;
        if slot.status != Status::Held {
            return false;
        }
        slot.status = Status::Scheduled(now_ms);
        inner.schedule.insert((now_ms, id));
        drop(inner);
        self.wake.notify_one();
        true
    }

    /// Whether the operator holds this message.
    pub(crate) fn is_held(&self, id: QueueId) -> bool {
        lock(&self.inner)
            .slots
            .get(&id)
            .is_some_and(|slot| slot.info.held)
    }

    /// Updates what the views know of a message after an attempt.
    pub(crate) fn update_info(&self, id: QueueId, update: impl FnOnce(&mut Info)) {
        if let Some(slot) = lock(&self.inner).slots.get_mut(&id) {
            update(&mut slot.info);
        }
    }

    /// One message as the views see it.
    pub(crate) fn entry(&self, id: QueueId) -> Option<Entry> {
        let inner = lock(&self.inner);
        let slot = inner.slots.get(&id)?;
        Some(Entry {
            id,
            status: slot.status,
            info: slot.info.clone(),
        })
    }

    /// Every message for which `keep` is true, oldest first, at most `limit`.
    pub(crate) fn select(
        &self,
        limit: usize,
        mut keep: impl FnMut(&Status, &Info) -> bool,
    ) -> Vec<Entry> {
        let inner = lock(&self.inner);
        let mut ids: Vec<QueueId> = inner
            .slots
            .iter()
            .filter(|(_, slot)| keep(&slot.status, &slot.info))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids.truncate(limit);
        ids.into_iter()
            .filter_map(|id| {
                inner.slots.get(&id).map(|slot| Entry {
                    id,
                    status: slot.status,
                    info: slot.info.clone(),
                })
            })
            .collect()
    }

    /// Calls `each` for every message (the summary), under the index's lock: keep it short.
    pub(crate) fn for_each(&self, mut each: impl FnMut(QueueId, &Status, &Info)) {
        let inner = lock(&self.inner);
        for (id, slot) in &inner.slots {
            each(*id, &slot.status, &slot.info);
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
        assert!(index.insert(id(2), 200, Info::default()));
        assert!(index.insert(id(1), 100, Info::default()));
        assert!(!index.insert(id(1), 50, Info::default()), "already there");
        assert_eq!(index.pop_due(150), Ok(id(1)));
        assert_eq!(index.pop_due(150), Err(Some(200)));
        assert_eq!(index.pop_due(250), Ok(id(2)));
        assert_eq!(index.pop_due(250), Err(None));
        assert_eq!(index.len(), 2, "running messages stay in the index");
    }

    #[test]
    fn a_rescheduled_message_has_one_place_in_the_schedule() {
        let index = Index::default();
        index.insert(id(1), 100, Info::default());
        index.schedule(id(1), 500);
        index.schedule(id(1), 300);
        assert_eq!(index.pop_due(1000), Ok(id(1)));
        assert_eq!(index.pop_due(1000), Err(None));
    }

    #[test]
    fn a_parked_message_waits_until_scheduled_again() {
        let index = Index::default();
        index.insert(id(1), 0, Info::default());
        assert_eq!(index.pop_due(1), Ok(id(1)));
        index.park(id(1));
        assert_eq!(index.pop_due(u64::MAX), Err(None));
        index.schedule(id(1), 5);
        assert_eq!(index.pop_due(5), Ok(id(1)));
        assert!(index.remove(id(1)) && !index.contains(id(1)));
    }

    #[test]
    fn a_held_message_stays_held_until_released_even_if_it_was_running() {
        let index = Index::default();
        index.insert(id(1), 0, Info::default());
        index.insert(id(2), 0, Info::default());
        assert_eq!(index.pop_due(0), Ok(id(1)));
        assert_eq!(index.hold(id(1), true), Some(Status::Running));
        assert_eq!(index.hold(id(2), true), Some(Status::Scheduled(0)));
        index.schedule(id(1), 0);
        assert_eq!(index.pop_due(u64::MAX), Err(None), "both held");
        assert!(
            !index.release(id(1), true, 5),
            "held by message, not by domain"
        );
        assert!(index.release(id(1), false, 5));
        assert_eq!(index.pop_due(5), Ok(id(1)));
        assert!(index.is_held(id(2)));
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
