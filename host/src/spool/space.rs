//! The disk reserve: whether the spool's file system has room for new mail.
//!
//! A full disk must never cost an accepted message: the state logs that record
//! deliveries and the bounces the queue writes need room too, and a 250 is only sent
//! after the message is on disk. So new mail is refused early, at MAIL FROM with
//! `452 4.3.1` (a temporary refusal: the client keeps the message and retries), once the
//! free space falls below `[spool] min_free_space`, leaving that reserve to the queue.
//! Mail is taken again as soon as space returns.
//!
//! The free space is read with `statvfs(3)` at most about once a second, however many
//! sessions ask, since every MAIL FROM asks.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reading of the free space is trusted.
const FRESH: Duration = Duration::from_secs(1);

/// Watches the free space of the spool's file system against a reserve.
#[derive(Debug)]
pub struct FreeSpace {
    path: PathBuf,
    reserve: u64,
    /// The last reading: when, and the octets available then.
    last: Mutex<Option<(Instant, u64)>>,
}

impl FreeSpace {
    /// Watches the file system holding `path`, keeping `reserve` octets free (0: never
    /// refuses).
    pub fn new(path: PathBuf, reserve: u64) -> Self {
        FreeSpace {
            path,
            reserve,
            last: Mutex::new(None),
        }
    }

    /// Whether a message of `size` octets (0 when unknown) may be accepted: the free
    /// space minus the message must stay at or above the reserve. A file system whose
    /// free space cannot be read is taken to have room (and the problem logged): the
    /// spool's own writes will fail cleanly with 451 if it really is full.
    pub fn has_room(&self, size: u64) -> bool {
        if self.reserve == 0 {
            return true;
        }
        let Some(available) = self.available() else {
            return true;
        };
        available.saturating_sub(size) >= self.reserve
    }

    /// The octets available to the gateway, read afresh when the last reading is older
    /// than a second; logs when the spool crosses the reserve either way.
    fn available(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, available)) = *last
            && at.elapsed() < FRESH
        {
            return Some(available);
        }
        let available = match rustix::fs::statvfs(&self.path) {
            // Blocks available to unprivileged users, in fragment-size units (what
            // `df` shows as available).
            Ok(stat) => stat.f_bavail.saturating_mul(stat.f_frsize),
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot read the spool's free space");
                return None;
            }
        };
        let was_low = last.is_some_and(|(_, before)| before < self.reserve);
        let is_low = available < self.reserve;
        if is_low && !was_low {
            tracing::warn!(
                path = %self.path.display(),
                available,
                reserve = self.reserve,
                "spool file system below min_free_space: refusing new mail with 452 4.3.1"
            );
        } else if was_low && !is_low {
            tracing::info!(path = %self.path.display(), available, "spool file system has room again: taking mail");
        }
        *last = Some((Instant::now(), available));
        Some(available)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_reserve_always_has_room() {
        let space = FreeSpace::new(PathBuf::from("/nonexistent/for/sure"), 0);
        assert!(space.has_room(u64::MAX));
    }

    #[test]
    fn a_reserve_larger_than_any_disk_refuses_and_a_small_one_accepts() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!FreeSpace::new(dir.path().to_owned(), u64::MAX).has_room(0));
        let small = FreeSpace::new(dir.path().to_owned(), 1);
        assert!(small.has_room(0));
        // The size of the message counts against the room.
        assert!(!small.has_room(u64::MAX));
    }
}
