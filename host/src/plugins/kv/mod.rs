//! The plugin key/value store behind the `kv-*` host functions, with a choice of backend
//! (`[kv] backend`): [`memory`], one gateway's own store, or [`redis`], one store shared by
//! a fleet of gateways.
//!
//! Both give every operation the same meaning: a namespace per plugin, TTLs, atomic
//! increments (a read-modify-write never spans two round trips), key and value size limits,
//! and a quota per namespace (`kv_max_keys`, `kv_max_bytes`) that counts the same bytes
//! (see [`cost`]). A backend that cannot answer returns [`KvError::Backend`], which the
//! host function turns into a failed call: the plugin's `on_error` applies.

pub mod memory;
pub mod redis;

use std::time::Duration;

use crate::config::{KvBackendKind, KvConfig};
use crate::metrics::Metrics;

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 1024;
/// The largest value accepted.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// What an entry costs beyond its key and value (map slot, expiry, allocation headers):
/// counted so that a flood of tiny keys meets the byte quota too.
const ENTRY_OVERHEAD: u64 = 96;

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("kv key of {0} bytes is over the {MAX_KEY_LEN}-byte limit")]
    KeyTooLong(usize),
    /// The value is larger than [`MAX_VALUE_LEN`].
    #[error("kv value of {0} bytes is over the {MAX_VALUE_LEN}-byte limit")]
    ValueTooLarge(usize),
    /// The namespace is full.
    #[error(
        "kv quota reached: {keys} keys, {bytes} bytes in use (kv_max_keys {max_keys}, kv_max_bytes {max_bytes})"
    )]
    Quota {
        /// Keys in use.
        keys: u64,
        /// Bytes in use.
        bytes: u64,
        /// The key quota.
        max_keys: u64,
        /// The byte quota.
        max_bytes: u64,
    },
    /// The backend did not answer in time, or answered something unusable.
    #[error("kv backend: {0}")]
    Backend(String),
}

/// A namespace's quota.
#[derive(Debug, Clone, Copy)]
pub struct Quota {
    /// Bytes of keys and values (with a per-entry overhead).
    pub max_bytes: u64,
    /// Live keys.
    pub max_keys: u64,
}

/// What a namespace holds after a write (expired entries not yet dropped included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Keys.
    pub keys: u64,
    /// Bytes, as [`cost`] counts them.
    pub bytes: u64,
}

/// What one entry counts against the byte quota.
pub(crate) fn cost(key: &str, value_len: usize, with_ttl: bool) -> u64 {
    // A key with a TTL is held twice: in the map and in the expiry index.
    let key_len = key.len() as u64 * if with_ttl { 2 } else { 1 };
    key_len + value_len as u64 + ENTRY_OVERHEAD
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_LEN {
        return Err(KvError::KeyTooLong(key.len()));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_LEN {
        return Err(KvError::ValueTooLarge(value.len()));
    }
    Ok(())
}

/// The store, over the configured backend.
#[derive(Debug)]
pub enum Kv {
    /// In this process.
    Memory(memory::KvStore),
    /// In a Redis (or Valkey) server shared by the fleet.
    Redis(Box<redis::RedisKv>),
}

impl Default for Kv {
    fn default() -> Self {
        Kv::Memory(memory::KvStore::default())
    }
}

impl Kv {
    /// The backend `config` asks for. A Redis backend connects lazily: a Redis that is
    /// down at start-up does not keep the gateway from starting (the plugins' failure
    /// policy applies until it is back).
    pub fn new(config: &KvConfig, metrics: std::sync::Arc<Metrics>) -> Result<Kv, KvError> {
        Ok(match config.backend {
            KvBackendKind::Memory => Kv::default(),
            KvBackendKind::Redis => Kv::Redis(Box::new(redis::RedisKv::new(config, metrics)?)),
        })
    }

    /// Reads a live key.
    pub async fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        match self {
            Kv::Memory(store) => Ok(store.get(ns, key)),
            Kv::Redis(store) => store.get(ns, key).await,
        }
    }

    /// Writes a key within the namespace's quota.
    pub async fn set(
        &self,
        ns: &str,
        key: &str,
        value: &[u8],
        ttl: Option<Duration>,
        quota: Quota,
    ) -> Result<Usage, KvError> {
        match self {
            Kv::Memory(store) => store.set(ns, key, value, ttl, quota),
            Kv::Redis(store) => store.set(ns, key, value, ttl, quota).await,
        }
    }

    /// Adds `delta` to a decimal counter (a value that is not one counts as 0; the sum
    /// saturates); the TTL applies when the key is (re)created.
    pub async fn incr(
        &self,
        ns: &str,
        key: &str,
        delta: i64,
        ttl: Option<Duration>,
        quota: Quota,
    ) -> Result<(i64, Usage), KvError> {
        match self {
            Kv::Memory(store) => store.incr(ns, key, delta, ttl, quota),
            Kv::Redis(store) => store.incr(ns, key, delta, ttl, quota).await,
        }
    }

    /// Deletes a key.
    pub async fn delete(&self, ns: &str, key: &str) -> Result<(), KvError> {
        match self {
            Kv::Memory(store) => {
                store.delete(ns, key);
                Ok(())
            }
            Kv::Redis(store) => store.delete(ns, key).await,
        }
    }

    /// Live keys of namespace `ns` starting with `prefix`, at most `limit`, with their
    /// values and remaining lifetimes: for the operator (the admin API), never a plugin.
    pub async fn list(
        &self,
        ns: &str,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<(String, Vec<u8>, Option<Duration>)>, KvError> {
        match self {
            Kv::Memory(store) => Ok(store.list(ns, prefix, limit)),
            Kv::Redis(store) => store.list(ns, prefix, limit).await,
        }
    }

    /// Whether the backend answers now (`/readyz`): always for the in-process store.
    pub async fn reachable(&self) -> bool {
        match self {
            Kv::Memory(_) => true,
            Kv::Redis(store) => store.ping().await.is_ok(),
        }
    }

    /// The store of fleet-wide limits (places held in Redis, see
    /// [`redis::RedisKv::lease`]), when this gateway is part of a fleet.
    pub fn fleet(&self) -> Option<&redis::RedisKv> {
        match self {
            Kv::Memory(_) => None,
            Kv::Redis(store) => Some(store),
        }
    }

    /// The backend's name, for logs and `/readyz`.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Kv::Memory(_) => "memory",
            Kv::Redis(_) => "redis",
        }
    }
}

/// The same behaviour asked of both backends; the Redis runs are against a real
/// `redis-server` started on a free loopback port in a temporary directory.
#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::config::{KvBackendKind, KvConfig, RedisUrl};

    const ROOMY: Quota = Quota {
        max_bytes: 1 << 30,
        max_keys: 1 << 20,
    };

    /// A redis-server of the test's own, killed when dropped.
    struct TestRedis {
        child: Option<Child>,
        dir: tempfile::TempDir,
        port: u16,
    }

    impl TestRedis {
        fn start() -> TestRedis {
            let dir = tempfile::tempdir().unwrap();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut redis = TestRedis {
                child: None,
                dir,
                port,
            };
            redis.run();
            redis
        }

        fn run(&mut self) {
            let child = Command::new("redis-server")
                .args(["--port", &self.port.to_string()])
                .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server (Debian package redis-server, see scripts/setup)");
            self.child = Some(child);
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                assert!(Instant::now() < deadline, "redis-server did not start");
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }

        fn kv(&self) -> Kv {
            let config = KvConfig {
                backend: KvBackendKind::Redis,
                url: Some(
                    RedisUrl::try_from(format!("redis://127.0.0.1:{}/0", self.port)).unwrap(),
                ),
                command_timeout_ms: 300,
                connect_timeout_ms: 300,
                ..KvConfig::default()
            };
            Kv::new(&config, Arc::default()).unwrap()
        }
    }

    impl Drop for TestRedis {
        fn drop(&mut self) {
            self.stop();
        }
    }

    async fn namespaces_ttls_and_counters(kv: &Kv) {
        kv.set("a", "k", b"v", None, ROOMY).await.unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap().as_deref(), Some(&b"v"[..]));
        assert_eq!(kv.get("b", "k").await.unwrap(), None);
        // A namespace and key cannot spell another namespace's key.
        assert_eq!(kv.get("a:v", "k").await.unwrap(), None);
        assert_eq!(kv.incr("a", "n", 2, None, ROOMY).await.unwrap().0, 2);
        assert_eq!(kv.incr("a", "n", 3, None, ROOMY).await.unwrap().0, 5);
        assert_eq!(kv.incr("a", "n", -7, None, ROOMY).await.unwrap().0, -2);
        kv.set("a", "t", b"x", Some(Duration::from_millis(20)), ROOMY)
            .await
            .unwrap();
        assert!(kv.get("a", "t").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(kv.get("a", "t").await.unwrap(), None);
        let minute = Some(Duration::from_secs(60));
        assert_eq!(kv.incr("a", "t", 1, minute, ROOMY).await.unwrap().0, 1);
        // A counter's TTL is set when it is created, not moved by later increments.
        kv.incr("a", "w", 1, Some(Duration::from_millis(50)), ROOMY)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
        kv.incr("a", "w", 1, minute, ROOMY).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(kv.get("a", "w").await.unwrap(), None);
        // Not a number counts as 0; a sum past the range saturates.
        kv.set("a", "s", b"abc", None, ROOMY).await.unwrap();
        assert_eq!(kv.incr("a", "s", 4, None, ROOMY).await.unwrap().0, 4);
        kv.set("a", "m", i64::MAX.to_string().as_bytes(), None, ROOMY)
            .await
            .unwrap();
        assert_eq!(kv.incr("a", "m", 1, None, ROOMY).await.unwrap().0, i64::MAX);
        kv.delete("a", "k").await.unwrap();
        assert_eq!(kv.get("a", "k").await.unwrap(), None);
        assert_eq!(
            kv.set("a", "big", &vec![0; MAX_VALUE_LEN + 1], None, ROOMY)
                .await,
            Err(KvError::ValueTooLarge(MAX_VALUE_LEN + 1))
        );
        assert!(matches!(
            kv.set("a", &"k".repeat(MAX_KEY_LEN + 1), b"", None, ROOMY)
                .await,
            Err(KvError::KeyTooLong(_))
        ));
        let value = vec![0xffu8; MAX_VALUE_LEN];
        kv.set("a", "binary", &value, None, ROOMY).await.unwrap();
        assert_eq!(kv.get("a", "binary").await.unwrap(), Some(value));
    }

    async fn a_full_namespace_keeps_its_live_keys(kv: &Kv) {
        let quota = Quota {
            max_bytes: 1 << 20,
            max_keys: 3,
        };
        let minute = Some(Duration::from_secs(60));
        assert_eq!(kv.incr("p", "window", 1, minute, quota).await.unwrap().0, 1);
        kv.set("p", "a", b"1", None, quota).await.unwrap();
        kv.set("p", "b", b"2", None, quota).await.unwrap();
        assert!(matches!(
            kv.set("p", "c", b"3", None, quota).await,
            Err(KvError::Quota { keys: 3, .. })
        ));
        assert!(matches!(
            kv.incr("p", "c", 1, None, quota).await,
            Err(KvError::Quota { keys: 3, .. })
        ));
        assert_eq!(
            kv.get("p", "c").await.unwrap(),
            None,
            "a refused incr left nothing"
        );
        // Rewriting an existing key still works at the quota, and nothing was evicted.
        kv.set("p", "a", b"10", None, quota).await.unwrap();
        assert_eq!(kv.incr("p", "window", 1, None, quota).await.unwrap().0, 2);
        // Another namespace has its own quota.
        kv.set("q", "c", b"3", None, quota).await.unwrap();
        // Deleting makes room.
        kv.delete("p", "b").await.unwrap();
        kv.set("p", "c", b"3", None, quota).await.unwrap();
    }

    async fn expired_entries_make_room_first(kv: &Kv) {
        let quota = Quota {
            max_bytes: 1 << 20,
            max_keys: 2,
        };
        kv.set("e", "old", b"x", Some(Duration::from_millis(10)), quota)
            .await
            .unwrap();
        kv.set("e", "live", b"y", None, quota).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        let usage = kv.set("e", "new", b"z", None, quota).await.unwrap();
        assert_eq!(usage.keys, 2);
        assert_eq!(
            kv.get("e", "live").await.unwrap().as_deref(),
            Some(&b"y"[..])
        );
    }

    async fn the_byte_quota_counts_keys_values_and_overhead(kv: &Kv) {
        let quota = Quota {
            max_bytes: 64 * 1024,
            max_keys: 1 << 20,
        };
        let value = vec![7u8; 16 * 1024];
        let mut stored = 0;
        let mut usage = Usage::default();
        while let Ok(now) = kv
            .set("b", &format!("k{stored}"), &value, None, quota)
            .await
        {
            usage = now;
            stored += 1;
        }
        assert_eq!(
            stored, 3,
            "64 KiB holds three 16 KiB values and their overhead"
        );
        assert_eq!(usage.keys, 3);
        assert_eq!(usage.bytes, 3 * cost("k0", value.len(), false));
        kv.delete("b", "k0").await.unwrap();
        let after = kv.set("b", "small", b"1", None, quota).await.unwrap();
        assert!(after.bytes < usage.bytes);
    }

    async fn every_behaviour(kv: &Kv) {
        namespaces_ttls_and_counters(kv).await;
        a_full_namespace_keeps_its_live_keys(kv).await;
        expired_entries_make_room_first(kv).await;
        the_byte_quota_counts_keys_values_and_overhead(kv).await;
    }

    #[tokio::test]
    async fn the_memory_backend_behaves_as_specified() {
        every_behaviour(&Kv::default()).await;
    }

    #[tokio::test]
    async fn the_redis_backend_behaves_like_the_memory_one() {
        let redis = TestRedis::start();
        every_behaviour(&redis.kv()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn increments_from_two_nodes_never_race() {
        let redis = TestRedis::start();
        let nodes = [Arc::new(redis.kv()), Arc::new(redis.kv())];
        let mut tasks = Vec::new();
        for i in 0..200 {
            let kv = Arc::clone(&nodes[i % 2]);
            tasks.push(tokio::spawn(async move {
                kv.incr("rl", "window", 1, Some(Duration::from_secs(60)), ROOMY)
                    .await
                    .unwrap()
                    .0
            }));
        }
        let mut seen = Vec::new();
        for task in tasks {
            seen.push(task.await.unwrap());
        }
        seen.sort_unstable();
        assert_eq!(seen, (1..=200).collect::<Vec<i64>>());
        // The quota is the namespace's total in Redis, whichever node writes.
        let quota = Quota {
            max_bytes: 1 << 20,
            max_keys: 4,
        };
        for i in 0..3 {
            nodes[i % 2]
                .set("shared", &format!("k{i}"), b"v", None, quota)
                .await
                .unwrap();
        }
        nodes[1]
            .set("shared", "k3", b"v", None, quota)
            .await
            .unwrap();
        assert!(matches!(
            nodes[0].set("shared", "k4", b"v", None, quota).await,
            Err(KvError::Quota { keys: 4, .. })
        ));
    }

    #[tokio::test]
    async fn a_redis_that_goes_away_fails_fast_and_is_used_again_when_back() {
        let mut redis = TestRedis::start();
        let kv = redis.kv();
        kv.set("d", "k", b"1", None, ROOMY).await.unwrap();
        assert!(kv.reachable().await);
        redis.stop();
        for _ in 0..3 {
            let started = Instant::now();
            let result = kv.incr("d", "n", 1, None, ROOMY).await;
            assert!(matches!(result, Err(KvError::Backend(_))), "{result:?}");
            assert!(matches!(kv.get("d", "k").await, Err(KvError::Backend(_))));
            assert!(
                started.elapsed() < Duration::from_millis(1500),
                "took {:?}",
                started.elapsed()
            );
        }
        assert!(!kv.reachable().await);
        redis.run();
        // The first operation after Redis is back succeeds: a connection left broken by
        // the outage is re-made within the operation, not failed once more.
        for i in 1..=4 {
            assert_eq!(kv.incr("d", "n", 1, None, ROOMY).await.unwrap().0, i);
        }
        assert!(kv.reachable().await);
    }

    #[tokio::test]
    async fn fleet_places_are_shared_given_back_and_lapse() {
        let redis = TestRedis::start();
        let (a, b) = (redis.kv(), redis.kv());
        let (a, b) = (a.fleet().unwrap(), b.fleet().unwrap());
        let minute = Duration::from_secs(60);
        assert!(a.lease("d", 2, minute, "a1").await.unwrap());
        assert!(b.lease("d", 2, minute, "b1").await.unwrap());
        assert!(
            !a.lease("d", 2, minute, "a2").await.unwrap(),
            "the fleet is at 2"
        );
        assert!(a.lease("other", 2, minute, "a2").await.unwrap());
        b.release("d", "b1").await.unwrap();
        assert!(a.lease("d", 2, minute, "a3").await.unwrap());
        // A place not renewed lapses (a node that died holding it).
        assert!(a.renew("d", Duration::from_millis(30), "a1").await.unwrap());
        assert!(!b.lease("d", 2, minute, "b2").await.unwrap());
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(b.lease("d", 2, minute, "b2").await.unwrap());
        assert!(!a.renew("d", minute, "a1").await.unwrap(), "a1 lapsed");
        assert!(Kv::default().fleet().is_none());
    }

    #[tokio::test]
    async fn a_silent_server_is_cut_off_at_the_command_timeout() {
        // A listener that accepts and never answers: a hung Redis.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let config = KvConfig {
            backend: KvBackendKind::Redis,
            url: Some(RedisUrl::try_from(format!("redis://127.0.0.1:{port}/0")).unwrap()),
            command_timeout_ms: 200,
            connect_timeout_ms: 200,
            ..KvConfig::default()
        };
        let kv = Kv::new(&config, Arc::default()).unwrap();
        let started = Instant::now();
        assert!(matches!(kv.get("h", "k").await, Err(KvError::Backend(_))));
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "{:?}",
            started.elapsed()
        );
    }
}
