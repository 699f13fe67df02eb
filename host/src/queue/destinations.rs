//! Per-destination gates: how many deliveries to one destination run at once, how many
//! attempts may wait for one of those slots, and where the rest wait without costing
//! anything.
//!
//! A destination that tarpits, or a hundred thousand messages released to one domain at
//! once, must not take the queue's whole active set: each gate lets `limit` deliveries
//! run and `limit` attempts wait; an attempt that finds both full parks its message (its
//! ID goes on the gate's list, the attempt ends and gives back everything it held). Each
//! delivery that ends schedules one parked message again, so a destination drains at
//! the pace it accepts mail, and mail to every other destination keeps flowing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::index::Index;
use super::lock;
use super::now_ms;
use crate::spool::QueueId;

#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    /// Deliveries holding a slot.
    running: usize,
    /// Attempts waiting for a slot.
    waiting: usize,
    /// Messages waiting without an attempt, oldest first.
    parked: VecDeque<QueueId>,
}

impl Gate {
    fn idle(&self) -> bool {
        self.running == 0 && self.waiting == 0 && self.parked.is_empty()
    }
}

/// The gates of every destination with mail in progress.
#[derive(Debug)]
pub(crate) struct Destinations {
    gates: Mutex<HashMap<String, Gate>>,
    limit: usize,
    index: Arc<Index>,
}

/// The answer to an attempt that wants a destination.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Wait for a slot with this ticket.
    Wait(Ticket),
    /// The destination is full: park the message ([`Destinations::park`]).
    Full,
}

/// A place among a destination's waiters.
#[derive(Debug)]
pub(crate) struct Ticket {
    destinations: Arc<Destinations>,
    key: String,
    slots: Arc<Semaphore>,
    /// Still counted among the waiters (until it becomes a slot or is dropped).
    counted: bool,
}

/// A delivery slot of a destination, given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    destinations: Arc<Destinations>,
    key: String,
    permit: Option<OwnedSemaphorePermit>,
}

impl Destinations {
    /// Gates letting `limit` deliveries run per destination, scheduling parked messages
    /// in `index`.
    pub(crate) fn new(limit: usize, index: Arc<Index>) -> Self {
        Destinations {
            gates: Mutex::new(HashMap::new()),
            limit: limit.max(1),
            index,
        }
    }

    /// Asks for a slot of destination `key`.
    pub(crate) fn enter(self: &Arc<Self>, key: &str) -> Entry {
        let mut gates = lock(&self.gates);
        let gate = gates.entry(key.to_owned()).or_insert_with(|| Gate {
            slots: Arc::new(Semaphore::new(self.limit)),
            running: 0,
            waiting: 0,
            parked: VecDeque::new(),
        });
        if self.is_full(gate) {
            return Entry::Full;
        }
        gate.waiting += 1;
        Entry::Wait(Ticket {
            destinations: Arc::clone(self),
            key: key.to_owned(),
            slots: Arc::clone(&gate.slots),
            counted: true,
        })
    }

    fn is_full(&self, gate: &Gate) -> bool {
        gate.running >= self.limit && gate.waiting >= self.limit
    }

    /// Parks message `id` on destination `key` after [`Entry::Full`]. If the gate has
    /// room again by now (deliveries ended in between), the message is scheduled at once
    /// instead: it must never wait on a gate that nothing will open.
    pub(crate) fn park(&self, key: &str, id: QueueId) {
        let mut gates = lock(&self.gates);
        match gates.get_mut(key) {
            Some(gate) if self.is_full(gate) => {
                gate.parked.push_back(id);
                self.index.park(id);
            }
            _ => {
                drop(gates);
                self.index.schedule(id, now_ms());
            }
        }
    }

    /// Messages parked on every destination.
    #[cfg(test)]
    fn parked(&self) -> usize {
        lock(&self.gates).values().map(|g| g.parked.len()).sum()
    }

    fn release(&self, key: &str) {
        let mut gates = lock(&self.gates);
        let Some(gate) = gates.get_mut(key) else {
            return;
        };
        gate.running = gate.running.saturating_sub(1);
        let next = gate.parked.pop_front();
        if gate.idle() {
            gates.remove(key);
        }
        drop(gates);
        if let Some(id) = next {
            self.index.schedule(id, now_ms());
        }
    }

    fn stop_waiting(&self, key: &str, running: bool) {
        let mut gates = lock(&self.gates);
        if let Some(gate) = gates.get_mut(key) {
            gate.waiting = gate.waiting.saturating_sub(1);
            if running {
                gate.running += 1;
            } else if gate.idle() {
                gates.remove(key);
            }
        }
    }
}

impl Ticket {
    /// Waits for the slot; `None` if the queue is shutting down.
    pub(crate) async fn acquire(mut self) -> Option<Slot> {
        let permit = Arc::clone(&self.slots).acquire_owned().await.ok()?;
        self.counted = false;
        self.destinations.stop_waiting(&self.key, true);
        Some(Slot {
            destinations: Arc::clone(&self.destinations),
            key: std::mem::take(&mut self.key),
            permit: Some(permit),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.counted {
            self.destinations.stop_waiting(&self.key, false);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // The permit goes back before a parked message is woken, so that it finds room.
        drop(self.permit.take());
        self.destinations.release(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> QueueId {
        format!("{n:016X}").parse().unwrap()
    }

    #[tokio::test]
    async fn a_full_destination_parks_and_each_finished_delivery_wakes_one() {
        let index = Arc::new(Index::default());
        let gates = Arc::new(Destinations::new(2, Arc::clone(&index)));
        let mut slots = Vec::new();
        for _ in 0..2 {
            let Entry::Wait(ticket) = gates.enter("slow.example") else {
                panic!("room for two deliveries");
            };
            slots.push(ticket.acquire().await.unwrap());
        }
        let waiters: Vec<Ticket> = (0..2)
            .map(|_| match gates.enter("slow.example") {
                Entry::Wait(ticket) => ticket,
                Entry::Full => panic!("room for two waiters"),
            })
            .collect();
        for n in 1..=3 {
            index.insert(id(n), 0, Default::default());
            assert_eq!(index.pop_due(0), Ok(id(n)));
            assert!(matches!(gates.enter("slow.example"), Entry::Full));
            gates.park("slow.example", id(n));
        }
        assert_eq!(gates.parked(), 3);
        assert_eq!(index.pop_due(u64::MAX), Err(None), "parked, not scheduled");
        assert!(
            matches!(gates.enter("fast.example"), Entry::Wait(_)),
            "other destinations are not affected"
        );

        drop(slots.pop());
        assert_eq!(index.pop_due(u64::MAX), Ok(id(1)), "oldest first");
        assert_eq!(gates.parked(), 2);
        drop(waiters);
        drop(slots);
        assert_eq!(index.pop_due(u64::MAX), Ok(id(2)));
        assert_eq!(gates.parked(), 1);
    }

    #[tokio::test]
    async fn parking_on_a_gate_that_opened_meanwhile_schedules_at_once() {
        let index = Arc::new(Index::default());
        let gates = Arc::new(Destinations::new(1, Arc::clone(&index)));
        index.insert(id(1), 0, Default::default());
        assert_eq!(index.pop_due(0), Ok(id(1)));
        gates.park("idle.example", id(1));
        assert_eq!(index.pop_due(u64::MAX), Ok(id(1)));
        assert_eq!(gates.parked(), 0);
        assert!(lock(&gates.gates).is_empty(), "idle gates are forgotten");
    }
}
