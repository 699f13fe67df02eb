//! Queue IDs: the name of a message from the 250 reply until it leaves the spool.
//!
//! An ID is 16 upper-case hex digits of a 64-bit number that starts from the clock in
//! microseconds and only ever grows within a process. The generator is seeded with the
//! largest ID already in the spool, so IDs stay unique when the clock steps back across a
//! restart, and they sort in arrival order, which keeps logs and directory listings readable.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The identifier of one spooled message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId(u64);

impl QueueId {
    /// The numeric value (monotonic, roughly microseconds since the epoch).
    pub fn value(self) -> u64 {
        self.0
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", self.0)
    }
}

/// A string that is not a queue ID.
#[derive(Debug, thiserror::Error)]
#[error("not a queue ID (16 upper-case hex digits)")]
pub struct BadQueueId;

impl FromStr for QueueId {
    type Err = BadQueueId;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let well_formed = s.len() == 16
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b));
        if !well_formed {
            return Err(BadQueueId);
        }
        u64::from_str_radix(s, 16)
            .map(QueueId)
            .map_err(|_| BadQueueId)
    }
}

/// Hands out unique, increasing queue IDs.
#[derive(Debug)]
pub struct QueueIdGenerator {
    last: AtomicU64,
}

impl QueueIdGenerator {
    /// A generator whose IDs are all greater than `floor` (the largest ID in the spool).
    pub fn new(floor: Option<QueueId>) -> Self {
        QueueIdGenerator {
            last: AtomicU64::new(floor.map_or(0, |id| id.0)),
        }
    }

    /// The next ID: the current time in microseconds, or one more than the last ID if the
    /// clock has not moved on (or went back).
    pub fn next(&self) -> QueueId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = now.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return QueueId(next),
                Err(actual) => last = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_round_trip() {
        let generator = QueueIdGenerator::new(None);
        let mut previous = generator.next();
        for _ in 0..10_000 {
            let id = generator.next();
            assert!(id > previous);
            assert_eq!(id.to_string().parse::<QueueId>().unwrap(), id);
            previous = id;
        }
    }

    #[test]
    fn ids_stay_above_the_floor_when_the_clock_is_behind() {
        let floor = QueueId(u64::MAX / 2);
        let generator = QueueIdGenerator::new(Some(floor));
        assert_eq!(generator.next().value(), floor.value() + 1);
    }

    #[test]
    fn malformed_ids_are_refused() {
        for bad in [
            "",
            "0123",
            "0123456789abcdef",
            "0123456789ABCDEG",
            "../../etc/passwd",
        ] {
            assert!(bad.parse::<QueueId>().is_err(), "{bad}");
        }
    }
}
