//! The in-process key/value store behind the `kv-*` host functions: namespaced per plugin,
//! with TTLs and atomic increments.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Keys and values a plugin may store; bounded so a plugin cannot eat the host's memory.
const MAX_ENTRIES_PER_NAMESPACE: usize = 100_000;
/// The largest value accepted.
pub const MAX_VALUE_LEN: usize = 64 * 1024;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

/// The store: one namespace per plugin name.
#[derive(Debug, Default)]
pub struct KvStore {
    namespaces: Mutex<HashMap<String, HashMap<String, Entry>>>,
}

impl KvStore {
    fn with_namespace<R>(&self, ns: &str, f: impl FnOnce(&mut HashMap<String, Entry>) -> R) -> R {
        // Plain data behind the lock: a poisoned lock is still consistent.
        let mut all = self
            .namespaces
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let map = all.entry(ns.to_owned()).or_default();
        f(map)
    }

    /// Reads a live key.
    pub fn get(&self, ns: &str, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.with_namespace(ns, |map| match map.get(key) {
            Some(entry) if entry.expires.is_none_or(|e| e > now) => Some(entry.value.clone()),
            Some(_) => {
                map.remove(key);
                None
            }
            None => None,
        })
    }

    /// Writes a key; values over [`MAX_VALUE_LEN`] are refused (returns false).
    pub fn set(&self, ns: &str, key: &str, value: &[u8], ttl: Option<Duration>) -> bool {
        if value.len() > MAX_VALUE_LEN {
            return false;
        }
        let expires = ttl.map(|t| Instant::now() + t);
        self.with_namespace(ns, |map| {
            make_room(map);
            map.insert(
                key.to_owned(),
                Entry {
                    value: value.to_vec(),
                    expires,
                },
            );
        });
        true
    }

    /// Adds `delta` to a decimal counter; the TTL applies when the key is (re)created.
    pub fn incr(&self, ns: &str, key: &str, delta: i64, ttl: Option<Duration>) -> i64 {
        let now = Instant::now();
        self.with_namespace(ns, |map| {
            let live = map.get(key).filter(|e| e.expires.is_none_or(|x| x > now));
            let (current, expires) = match live {
                Some(entry) => (
                    std::str::from_utf8(&entry.value)
                        .ok()
                        .and_then(|v| v.parse::<i64>().ok())
                        .unwrap_or(0),
                    entry.expires,
                ),
                None => (0, ttl.map(|t| now + t)),
            };
            let value = current.saturating_add(delta);
            make_room(map);
            map.insert(
                key.to_owned(),
                Entry {
                    value: value.to_string().into_bytes(),
                    expires,
                },
            );
            value
        })
    }

    /// Deletes a key.
    pub fn delete(&self, ns: &str, key: &str) {
        self.with_namespace(ns, |map| {
            map.remove(key);
        });
    }
}

/// Drops expired entries, and if the namespace is still full, an arbitrary one: a bounded
/// store that forgets beats an unbounded one that takes the host down.
fn make_room(map: &mut HashMap<String, Entry>) {
    if map.len() < MAX_ENTRIES_PER_NAMESPACE {
        return;
    }
    let now = Instant::now();
    map.retain(|_, e| e.expires.is_none_or(|x| x > now));
    if map.len() >= MAX_ENTRIES_PER_NAMESPACE
        && let Some(victim) = map.keys().next().cloned()
    {
        map.remove(&victim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_ttls_and_counters() {
        let kv = KvStore::default();
        assert!(kv.set("a", "k", b"v", None));
        assert_eq!(kv.get("a", "k").as_deref(), Some(&b"v"[..]));
        assert_eq!(kv.get("b", "k"), None);
        assert_eq!(kv.incr("a", "n", 2, None), 2);
        assert_eq!(kv.incr("a", "n", 3, None), 5);
        kv.set("a", "t", b"x", Some(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("a", "t"), None);
        assert_eq!(kv.incr("a", "t", 1, Some(Duration::from_secs(60))), 1);
        kv.delete("a", "k");
        assert_eq!(kv.get("a", "k"), None);
        assert!(!kv.set("a", "big", &vec![0; MAX_VALUE_LEN + 1], None));
    }
}
