//! The in-process backend of the plugin KV store (`[kv] backend = "memory"`, the default):
//! one gateway's own namespaces, gone at restart.
//!
//! Each namespace has its own lock, and no operation scans a namespace: expired entries
//! are found through an index ordered by expiry, so one plugin's busy namespace never holds
//! up another's calls, and a namespace at its quota costs no more per call than an empty
//! one. At the quota a write fails (the plugin's failure policy applies); expired entries
//! are dropped first, and a live entry, such as a rate counter inside its window, is never
//! evicted to make room.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use super::{KvError, Quota, Usage, check_key, check_value, cost};

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires: Option<Instant>,
}

#[derive(Debug, Default)]
struct Namespace {
    entries: HashMap<String, Entry>,
    expiries: BTreeSet<(Instant, String)>,
    bytes: u64,
}

impl Namespace {
    fn live(&mut self, key: &str, now: Instant) -> Option<&Entry> {
        let expired = self
            .entries
            .get(key)
            .is_some_and(|e| e.expires.is_some_and(|x| x <= now));
        if expired {
            self.remove(key);
        }
        self.entries.get(key)
    }

    fn usage(&self) -> Usage {
        Usage {
            keys: self.entries.len() as u64,
            bytes: self.bytes,
        }
    }

    fn remove(&mut self, key: &str) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.bytes -= cost(key, entry.value.len(), entry.expires.is_some());
        if let Some(at) = entry.expires {
            self.expiries.remove(&(at, key.to_owned()));
        }
        Some(entry)
    }

    /// Drops every entry whose time has passed, oldest first, without looking at the rest.
    fn expire(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiries.first()
            && *at <= now
        {
            if let Some((_, key)) = self.expiries.pop_first()
                && let Some(entry) = self.entries.remove(&key)
            {
                self.bytes -= cost(&key, entry.value.len(), entry.expires.is_some());
            }
        }
    }

    fn insert(
        &mut self,
        key: &str,
        entry: Entry,
        quota: Quota,
        now: Instant,
    ) -> Result<Usage, KvError> {
        let old = self
            .entries
            .get(key)
            .map_or(0, |e| cost(key, e.value.len(), e.expires.is_some()));
        let new = cost(key, entry.value.len(), entry.expires.is_some());
        let fits = |ns: &Namespace| {
            let keys = ns.entries.len() as u64 + u64::from(!ns.entries.contains_key(key));
            keys <= quota.max_keys && ns.bytes - old + new <= quota.max_bytes
        };
        if !fits(self) {
            self.expire(now);
        }
        if !fits(self) {
            return Err(KvError::Quota {
                keys: self.entries.len() as u64,
                bytes: self.bytes,
                max_keys: quota.max_keys,
                max_bytes: quota.max_bytes,
            });
        }
        self.remove(key);
        if let Some(at) = entry.expires {
            self.expiries.insert((at, key.to_owned()));
        }
        self.bytes += new;
        self.entries.insert(key.to_owned(), entry);
        Ok(self.usage())
    }
}

/// The store: one namespace per plugin name.
#[derive(Debug, Default)]
pub struct KvStore {
    namespaces: RwLock<HashMap<String, Arc<Mutex<Namespace>>>>,
}

impl KvStore {
    fn namespace(&self, ns: &str) -> Arc<Mutex<Namespace>> {
        // Plain data behind the locks: a poisoned lock is still consistent.
        if let Some(found) = self
            .namespaces
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(ns)
        {
            return Arc::clone(found);
        }
        let mut all = self
            .namespaces
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(all.entry(ns.to_owned()).or_default())
    }

    fn with<R>(&self, ns: &str, f: impl FnOnce(&mut Namespace) -> R) -> R {
        let namespace = self.namespace(ns);
        let mut guard = namespace.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut guard)
    }

    /// Reads a live key.
    pub fn get(&self, ns: &str, key: &str) -> Option<Vec<u8>> {
        let now = Instant::now();
        self.with(ns, |map| map.live(key, now).map(|e| e.value.clone()))
    }

    /// Writes a key within the namespace's quota.
    pub fn set(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Quota,
    ) -> Result<Usage, KvError> {
        check_key(key)?;
        check_value(value)?;
        let now = Instant::now();
        let entry = Entry {
            value: value.to_vec(),
            expires: ttl.map(|t| now + t),
        };
        self.with(ns, |map| map.insert(key, entry, quota, now))
    }

    /// Adds `delta` to a decimal counter; the TTL applies when the key is (re)created.
    pub fn incr(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        quota: Quota,
    ) -> Result<(i64, Usage), KvError> {
        check_key(key)?;
        let now = Instant::now();
        self.with(ns, |map| {
            let (current, expires) = match map.live(key, now) {
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
            let entry = Entry {
                value: value.to_string().into_bytes(),
                expires,
            };
            map.insert(key, entry, quota, now)
                .map(|usage| (value, usage))
        })
    }

    /// Deletes a key.
    pub fn delete(&self, ns: &str, key: &str) {
        self.with(ns, |map| {
            map.remove(key);
        });
    }

    /// Live keys starting with `prefix`, in order, at most `limit`, with their values and
    /// remaining lifetimes (for the operator: it looks at the whole namespace).
    pub fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Vec<(String, Vec<u8>, Option<Duration>)> {
        let now = Instant::now();
        self.with(ns, |map| {
            let mut found: Vec<(String, Vec<u8>, Option<Duration>)> = map
                .entries
                .iter()
                .filter(|(key, entry)| {
                    key.starts_with(prefix) && entry.expires.is_none_or(|at| at > now)
                })
                .map(|(key, entry)| {
                    let left = entry.expires.map(|at| at.saturating_duration_since(now));
                    (key.clone(), entry.value.clone(), left)
                })
                .collect();
            found.sort_by(|a, b| a.0.cmp(&b.0));
            found.truncate(limit);
            found
        })
    }

    /// Keys and bytes in use in a namespace (expired entries not yet dropped included).
    pub fn usage(&self, ns: &str) -> Usage {
        self.with(ns, |map| map.usage())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{MAX_KEY_LEN, MAX_VALUE_LEN};
    use super::*;

    const ROOMY: Quota = Quota {
        max_bytes: 1 << 30,
        max_keys: 1 << 20,
    };

    #[test]
    fn namespaces_ttls_and_counters() {
        let kv = KvStore::default();
        kv.set("a", "k", b"v", None, ROOMY).unwrap();
        assert_eq!(kv.get("a", "k").as_deref(), Some(&b"v"[..]));
        assert_eq!(kv.get("b", "k"), None);
        assert_eq!(kv.incr("a", "n", 2, None, ROOMY).map(|r| r.0), Ok(2));
        assert_eq!(kv.incr("a", "n", 3, None, ROOMY).map(|r| r.0), Ok(5));
        kv.set("a", "t", b"x", Some(Duration::from_millis(1)), ROOMY)
            .unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(kv.get("a", "t"), None);
        assert_eq!(
            kv.incr("a", "t", 1, Some(Duration::from_secs(60)), ROOMY)
                .map(|r| r.0),
            Ok(1)
        );
        kv.delete("a", "k");
        assert_eq!(kv.get("a", "k"), None);
        assert_eq!(
            kv.set("a", "big", &vec![0; MAX_VALUE_LEN + 1], None, ROOMY),
            Err(KvError::ValueTooLarge(MAX_VALUE_LEN + 1))
        );
        assert!(
            kv.set("a", &"k".repeat(MAX_KEY_LEN + 1), b"", None, ROOMY)
                .is_err()
        );
    }

    #[test]
    fn a_full_namespace_refuses_new_keys_but_never_evicts_a_live_counter() {
        let kv = KvStore::default();
        let quota = Quota {
            max_bytes: 1 << 20,
            max_keys: 3,
        };
        assert_eq!(
            kv.incr("p", "window", 1, Some(Duration::from_secs(60)), quota)
                .map(|r| r.0),
            Ok(1)
        );
        kv.set("p", "a", b"1", None, quota).unwrap();
        kv.set("p", "b", b"2", None, quota).unwrap();
        assert!(matches!(
            kv.set("p", "c", b"3", None, quota),
            Err(KvError::Quota { keys: 3, .. })
        ));
        // Rewriting an existing key still works at the quota, and nothing was evicted.
        kv.set("p", "a", b"10", None, quota).unwrap();
        assert_eq!(kv.incr("p", "window", 1, None, quota).map(|r| r.0), Ok(2));
        // Another namespace has its own quota.
        kv.set("q", "c", b"3", None, quota).unwrap();
    }

    #[test]
    fn expired_entries_make_room_first() {
        let kv = KvStore::default();
        let quota = Quota {
            max_bytes: 1 << 20,
            max_keys: 2,
        };
        kv.set("p", "old", b"x", Some(Duration::from_millis(1)), quota)
            .unwrap();
        kv.set("p", "live", b"y", None, quota).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        kv.set("p", "new", b"z", None, quota).unwrap();
        assert_eq!(kv.usage("p").keys, 2);
        assert_eq!(kv.get("p", "live").as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn the_byte_quota_counts_keys_values_and_overhead() {
        let kv = KvStore::default();
        let quota = Quota {
            max_bytes: 64 * 1024,
            max_keys: 1 << 20,
        };
        let value = vec![7u8; 16 * 1024];
        let mut stored = 0;
        while kv
            .set("p", &format!("k{stored}"), &value, None, quota)
            .is_ok()
        {
            stored += 1;
        }
        assert_eq!(
            stored, 3,
            "64 KiB holds three 16 KiB values and their overhead"
        );
        let Usage { keys, bytes } = kv.usage("p");
        assert_eq!(keys, 3);
        assert!(bytes <= quota.max_bytes);
        kv.delete("p", "k0");
        assert!(kv.usage("p").bytes < bytes);
    }
}
