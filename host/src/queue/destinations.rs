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
use super::shaping::{Closed, Pace, Policy};
use crate::spool::QueueId;

/// How long a woken message's pass (a token taken for it) waits for it to come back.
const PASS_TTL_MS: u64 = 60_000;

#[derive(Debug)]
struct Gate {
    slots: Arc<Semaphore>,
    /// The deliveries at once its policy allows (the semaphore's permits).
    limit: usize,
    /// Deliveries holding a slot.
    running: usize,
    /// Attempts waiting for a slot.
    waiting: usize,
    /// Messages waiting without an attempt, oldest first.
    parked: VecDeque<QueueId>,
    /// Rates, suspension and window.
    pace: Pace,
    /// The policy's name (for the summary and the log).
    policy: Arc<str>,
    /// Messages woken with a token taken for them, and when.
    passes: HashMap<QueueId, u64>,
}

impl Gate {
    fn idle(&mut self, now: u64) -> bool {
        self.running == 0
            && self.waiting == 0
            && self.parked.is_empty()
            && self.passes.is_empty()
            && self.pace.at_rest(now)
    }

    fn is_full(&self) -> bool {
        self.running >= self.limit && self.waiting >= self.limit
    }

    /// Whether one more message may start now (room, open, a token), without taking it.
    fn admits(&mut self, now: u64) -> bool {
        !self.is_full()
            && self.running + self.waiting < 2 * self.limit
            && self.pace.closed(now).is_none()
    }

    /// Takes the oldest parked message out to be scheduled, with a token taken for it
    /// (unless it holds one already).
    fn wake(&mut self, now: u64) -> Option<QueueId> {
        let id = self.parked.pop_front()?;
        if !self.passes.contains_key(&id) {
            self.pace.take();
        }
        self.passes.insert(id, now);
        Some(id)
    }

    fn resize(&mut self, limit: usize) {
        let limit = limit.max(1);
        if limit > self.limit {
            self.slots.add_permits(limit - self.limit);
        } else if limit < self.limit {
            // Only free permits can go; the rest go as their deliveries end.
            self.slots.forget_permits(self.limit - limit);
        }
        self.limit = limit;
    }
}

/// The gates of every destination with mail in progress (or a pace to remember).
#[derive(Debug)]
pub(crate) struct Destinations {
    gates: Mutex<HashMap<String, Gate>>,
    index: Arc<Index>,
}

/// The answer to an attempt that wants a destination.
#[derive(Debug)]
pub(crate) enum Entry {
    /// Wait for a slot with this ticket.
    Wait(Ticket),
    /// The destination is full, or closed for now: park the message
    /// ([`Destinations::park`]).
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

/// A shaped destination, for `tidegate queue summary`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PaceView {
    /// The gate: `shape:NAME` for an entry shared by its domains, else the destination.
    pub key: String,
    /// The `[[shaping]]` entry (`built-in` without one).
    pub policy: String,
    /// Deliveries running.
    pub running: usize,
    /// Messages parked.
    pub parked: usize,
    /// Why nothing is sent now, if so: `suspended until ... (reply)`, `curfew until ...`,
    /// `rate: next at ...` (times in seconds since the epoch).
    pub closed: Option<String>,
    /// The rates after a "slow down" reply, in percent of the configured ones.
    pub rate_percent: u32,
}

impl Destinations {
    /// Gates scheduling parked messages in `index`.
    pub(crate) fn new(index: Arc<Index>) -> Self {
        Destinations {
            gates: Mutex::new(HashMap::new()),
            index,
        }
    }

    /// Asks for a slot of the gate of `policy` for message `id`.
    pub(crate) fn enter(self: &Arc<Self>, policy: &Policy, id: QueueId) -> Entry {
        let now = now_ms();
        let mut gates = lock(&self.gates);
        let gate = gates.entry(policy.key.clone()).or_insert_with(|| Gate {
            slots: Arc::new(Semaphore::new(policy.connections.max(1))),
            limit: policy.connections.max(1),
            running: 0,
            waiting: 0,
            parked: VecDeque::new(),
            pace: Pace::new(policy, now),
            policy: Arc::clone(&policy.name),
            passes: HashMap::new(),
        });
        if gate.limit != policy.connections.max(1) {
            gate.resize(policy.connections);
        }
        gate.pace.update(policy);
        gate.policy = Arc::clone(&policy.name);
        let passed = gate.passes.remove(&id).is_some();
        if gate.is_full() {
            if passed {
                // Its token stays its own for when it is woken again.
                gate.passes.insert(id, now);
            }
            return Entry::Full;
        }
        if !passed {
            if gate.pace.closed(now).is_some() {
                return Entry::Full;
            }
            gate.pace.take();
        }
        gate.waiting += 1;
        Entry::Wait(Ticket {
            destinations: Arc::clone(self),
            key: policy.key.clone(),
            slots: Arc::clone(&gate.slots),
            counted: true,
        })
    }

    /// Parks message `id` on gate `key` after [`Entry::Full`]. If the gate admits it by
    /// now (deliveries ended in between, a token came), it is woken at once instead: it
    /// must never wait on a gate that nothing will open.
    pub(crate) fn park(&self, key: &str, id: QueueId) {
        let now = now_ms();
        let mut gates = lock(&self.gates);
        let Some(gate) = gates.get_mut(key) else {
            drop(gates);
            self.index.schedule(id, now);
            return;
        };
        if gate.admits(now) {
            gate.parked.push_front(id);
            let woken = gate.wake(now);
            drop(gates);
            if let Some(id) = woken {
                self.index.schedule(id, now);
            }
        } else {
            gate.parked.push_back(id);
            self.index.park(id);
        }
    }

    /// Messages parked on every destination.
    #[cfg(test)]
    fn parked(&self) -> usize {
        lock(&self.gates).values().map(|g| g.parked.len()).sum()
    }

    /// Wakes what the gates admit now: parked messages whose destination has room, is
    /// open and has tokens (each woken one with a token taken for it). Called on a timer,
    /// so that rates, suspensions and windows let mail through as time passes.
    pub(crate) fn tick(&self) {
        let now = now_ms();
        let mut woken = Vec::new();
        {
            let mut gates = lock(&self.gates);
            gates.retain(|_, gate| {
                gate.passes
                    .retain(|_, at| now.saturating_sub(*at) < PASS_TTL_MS);
                while !gate.parked.is_empty()
                    && gate.running + gate.waiting + gate.passes.len() < 2 * gate.limit
                    && gate.pace.closed(now).is_none()
                {
                    woken.extend(gate.wake(now));
                }
                !gate.idle(now)
            });
        }
        for id in woken {
            self.index.schedule(id, now);
        }
    }

    /// Schedules every parked message again, for a changed shaping configuration: each
    /// enters its gate under the new policy (and parks again if it still may not go).
    pub(crate) fn wake_all(&self) {
        let now = now_ms();
        let woken: Vec<QueueId> = lock(&self.gates)
            .values_mut()
            .flat_map(|gate| gate.parked.drain(..).collect::<Vec<_>>())
            .collect();
        for id in woken {
            self.index.schedule(id, now);
        }
    }

    /// The shaping facts of gate `key` now: (its policy, why it is closed, its rate in
    /// percent), for on-delivery.
    pub(crate) fn facts(&self, key: &str) -> Option<(String, Option<String>, u32)> {
        let now = now_ms();
        let mut gates = lock(&self.gates);
        let gate = gates.get_mut(key)?;
        let closed = gate.pace.closed(now).map(|c| describe(&c));
        Some((
            gate.policy.to_string(),
            closed,
            (gate.pace.factor() * 100.0).round() as u32,
        ))
    }

    /// Applies the reactions of `policy` to a reply its destination gave; returns what
    /// changed, for the caller to log.
    pub(crate) fn react(&self, policy: &Policy, reply: &str) -> Option<String> {
        if policy.react.is_empty() {
            return None;
        }
        let mut gates = lock(&self.gates);
        let gate = gates.get_mut(&policy.key)?;
        gate.pace.react(&policy.react, reply, now_ms())
    }

    /// The gates that are shaped or closed now, most parked first, at most `limit`.
    pub(crate) fn view(&self, limit: usize) -> Vec<PaceView> {
        let now = now_ms();
        let mut gates = lock(&self.gates);
        let mut views: Vec<PaceView> = gates
            .iter_mut()
            .filter_map(|(key, gate)| {
                let closed = gate.pace.closed(now).map(|closed| describe(&closed));
                let factor = gate.pace.factor();
                (closed.is_some()
                    || factor < 1.0
                    || !gate.parked.is_empty()
                    || &*gate.policy != "built-in")
                    .then(|| PaceView {
                        key: key.clone(),
                        policy: gate.policy.to_string(),
                        running: gate.running,
                        parked: gate.parked.len(),
                        closed,
                        rate_percent: (factor * 100.0).round() as u32,
                    })
            })
            .collect();
        views.sort_by(|a, b| b.parked.cmp(&a.parked).then_with(|| a.key.cmp(&b.key)));
        views.truncate(limit);
        views
    }

    fn release(&self, key: &str) {
        let now = now_ms();
        let mut gates = lock(&self.gates);
        let Some(gate) = gates.get_mut(key) else {
            return;
        };
        gate.running = gate.running.saturating_sub(1);
        let next = if gate.pace.closed(now).is_none() {
            gate.wake(now)
        } else {
            None
        };
        if gate.idle(now) {
            gates.remove(key);
        }
        drop(gates);
        if let Some(id) = next {
            self.index.schedule(id, now);
        }
    }

    fn stop_waiting(&self, key: &str, running: bool) {
        let now = now_ms();
        let mut gates = lock(&self.gates);
        if let Some(gate) = gates.get_mut(key) {
            gate.waiting = gate.waiting.saturating_sub(1);
            if running {
                gate.running += 1;
            } else if gate.idle(now) {
                gates.remove(key);
            }
        }
    }
}

/// Why a gate is closed, in words (times in seconds since the epoch).
fn describe(closed: &Closed) -> String {
    match closed {
        Closed::Suspended(until, why) => format!("suspended until {} ({why})", until / 1000),
        Closed::Curfew(until) => format!("curfew until {}", until / 1000),
        Closed::Rate(next) => format!("rate: next at {}", next.div_ceil(1000)),
    }
}

impl crate::plugins::services::DestinationControl for Destinations {
    fn suspend(&self, key: &str, ms: u64, reason: &str) -> bool {
        // Only keys the queue makes: a plugin cannot grow the map with names of its own.
        let known = ["mx:", "route:", "shape:", "maildir:"]
            .iter()
            .any(|p| key.starts_with(p));
        if !known || key.len() > 300 {
            return false;
        }
        let now = now_ms();
        let mut gates = lock(&self.gates);
        // The outcome's delivery has ended, so its gate may have been forgotten as idle:
        // a suspension makes it again (the next attempt gives it its policy).
        let gate = gates.entry(key.to_owned()).or_insert_with(|| Gate {
            slots: Arc::new(Semaphore::new(1)),
            limit: 1,
            running: 0,
            waiting: 0,
            parked: VecDeque::new(),
            pace: Pace::unshaped(now),
            policy: Arc::from("built-in"),
            passes: HashMap::new(),
        });
        gate.pace.suspend(now + ms, reason);
        true
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

    fn policy(key: &str, connections: usize) -> Policy {
        let mut config = crate::config::Config::parse(
            "hostname = \"h.example\"\n[[listener]]\nname = \"mx\"\naddress = \"127.0.0.1:0\"\n[spool]\npath = \"s\"\n",
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        config.queue.max_per_destination = connections;
        let mut policy = super::super::shaping::policy_for(
            &config,
            &super::super::routing::Destination::Mx {
                domain: key.to_owned(),
            },
            &[],
        );
        policy.key = key.to_owned();
        policy
    }

    #[tokio::test]
    async fn a_full_destination_parks_and_each_finished_delivery_wakes_one() {
        let index = Arc::new(Index::default());
        let gates = Arc::new(Destinations::new(Arc::clone(&index)));
        let slow = policy("slow.example", 2);
        let mut slots = Vec::new();
        for _ in 0..2 {
            let Entry::Wait(ticket) = gates.enter(&slow, id(100)) else {
                panic!("room for two deliveries");
            };
            slots.push(ticket.acquire().await.unwrap());
        }
        let waiters: Vec<Ticket> = (0..2)
            .map(|_| match gates.enter(&slow, id(100)) {
                Entry::Wait(ticket) => ticket,
                Entry::Full => panic!("room for two waiters"),
            })
            .collect();
        for n in 1..=3 {
            index.insert(id(n), 0, Default::default());
            assert_eq!(index.pop_due(0), Ok(id(n)));
            assert!(matches!(gates.enter(&slow, id(n)), Entry::Full));
            gates.park("slow.example", id(n));
        }
        assert_eq!(gates.parked(), 3);
        assert_eq!(index.pop_due(u64::MAX), Err(None), "parked, not scheduled");
        assert!(
            matches!(
                gates.enter(&policy("fast.example", 2), id(9)),
                Entry::Wait(_)
            ),
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
        let gates = Arc::new(Destinations::new(Arc::clone(&index)));
        index.insert(id(1), 0, Default::default());
        assert_eq!(index.pop_due(0), Ok(id(1)));
        gates.park("idle.example", id(1));
        assert_eq!(index.pop_due(u64::MAX), Ok(id(1)));
        assert_eq!(gates.parked(), 0);
        assert!(lock(&gates.gates).is_empty(), "idle gates are forgotten");
    }
}
