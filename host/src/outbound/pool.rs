//! Connections kept open after a transaction so the next message to the same host reuses
//! them, saving a TCP handshake, a greeting and an EHLO per message.
//!
//! Three rules keep the pool from doing harm. A connection serves only deliveries whose
//! TLS requirements it met when it was opened: it is kept under a [`PoolKey`] of address,
//! TLS policy and the name its certificate was verified for, so a connection opened
//! under opportunistic TLS (any certificate) is never reused for a `required` route or an
//! MTA-STS `enforce` domain on the same address. Idle connections are closed after
//! `idle_timeout` by a reaper ([`ConnectionPool::reap`]), not only when the next message
//! to that host happens to look, so a burst to a thousand domains does not keep a
//! thousand file descriptors open. And the pool holds at most `max_idle` connections in
//! all (and a few per key); past that a finished session is closed.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::client::ClientSession;
use crate::config::TlsPolicy;

/// Idle connections kept per key: enough for the concurrency one host usually gets.
const MAX_IDLE_PER_KEY: usize = 8;

/// What a pooled connection is good for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// The server's address.
    pub addr: SocketAddr,
    /// The TLS policy the connection was opened under.
    pub tls: TlsPolicy,
    /// Under `required`: the name the server's certificate was verified for.
    pub verified_name: Option<String>,
    /// The local address it was opened from (an egress address), if chosen.
    pub source: Option<std::net::IpAddr>,
}

impl PoolKey {
    /// The key of a delivery to `addr` (known as `host`) under `tls`.
    pub fn new(addr: SocketAddr, host: &str, tls: TlsPolicy) -> Self {
        PoolKey {
            addr,
            tls,
            verified_name: (tls == TlsPolicy::Required)
                .then(|| host.trim_end_matches('.').to_ascii_lowercase()),
            source: None,
        }
    }

    /// The same key for a connection from the local address `source`.
    pub fn from_source(mut self, source: Option<std::net::IpAddr>) -> Self {
        self.source = source;
        self
    }
}

/// Idle client sessions by what they can serve.
#[derive(Debug)]
pub struct ConnectionPool {
    idle: Mutex<Idle>,
    idle_timeout: Duration,
    max_idle: usize,
}

#[derive(Debug, Default)]
struct Idle {
    sessions: HashMap<PoolKey, Vec<(ClientSession, Instant)>>,
    /// Sessions in all of `sessions`.
    count: usize,
}

impl ConnectionPool {
    /// A pool that closes connections idle longer than `idle_timeout` and keeps at most
    /// `max_idle` (0 turns reuse off).
    pub fn new(idle_timeout: Duration, max_idle: usize) -> Self {
        ConnectionPool {
            idle: Mutex::new(Idle::default()),
            idle_timeout,
            max_idle,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Idle> {
        // Plain data: a panic elsewhere cannot leave it half-changed.
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle session for `key` that is young enough to trust, if any.
    pub fn take(&self, key: &PoolKey) -> Option<ClientSession> {
        let mut idle = self.lock();
        let Idle { sessions, count } = &mut *idle;
        let list = sessions.get_mut(key)?;
        let mut found = None;
        while let Some((session, since)) = list.pop() {
            *count -= 1;
            if since.elapsed() < self.idle_timeout {
                found = Some(session);
                break;
            }
            // Too old: dropped (closing the socket) rather than risk a failed command.
        }
        if list.is_empty() {
            sessions.remove(key);
        }
        found
    }

    /// Keeps a session that just finished a transaction for the next message; closes it
    /// instead when the pool is full.
    pub fn put(&self, key: PoolKey, session: ClientSession) {
        let mut idle = self.lock();
        if idle.count >= self.max_idle {
            return;
        }
        let list = idle.sessions.entry(key).or_default();
        if list.len() >= MAX_IDLE_PER_KEY {
            return;
        }
        list.push((session, Instant::now()));
        idle.count += 1;
    }

    /// Takes out every session idle longer than the idle timeout, for the caller to close
    /// (outside the lock).
    pub fn reap(&self) -> Vec<ClientSession> {
        let mut idle = self.lock();
        let Idle { sessions, count } = &mut *idle;
        let mut expired = Vec::new();
        sessions.retain(|_, list| {
            let (old, young): (Vec<_>, Vec<_>) = std::mem::take(list)
                .into_iter()
                .partition(|(_, since)| since.elapsed() >= self.idle_timeout);
            *list = young;
            expired.extend(old.into_iter().map(|(session, _)| session));
            !list.is_empty()
        });
        *count -= expired.len();
        expired
    }

    /// Idle sessions held now.
    pub fn len(&self) -> usize {
        self.lock().count
    }

    /// Whether the pool holds no session.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How often the reaper should look: a fraction of the idle timeout, so a connection
    /// outlives it by little.
    pub fn reap_interval(&self) -> Duration {
        (self.idle_timeout / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_tls_policies_and_verified_names() {
        let addr: SocketAddr = "192.0.2.1:25".parse().unwrap();
        let opportunistic = PoolKey::new(addr, "mx.example.test", TlsPolicy::Opportunistic);
        let required = PoolKey::new(addr, "MX.example.test.", TlsPolicy::Required);
        let other_name = PoolKey::new(addr, "mx2.example.test", TlsPolicy::Required);
        assert_ne!(opportunistic, required);
        assert_ne!(required, other_name);
        assert_eq!(required.verified_name.as_deref(), Some("mx.example.test"));
        assert_eq!(
            opportunistic,
            PoolKey::new(addr, "mx2.example.test", TlsPolicy::Opportunistic)
        );
    }
}
