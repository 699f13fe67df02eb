//! Connections kept open after a transaction so the next message to the same host reuses
//! them, saving a TCP handshake, a greeting and an EHLO per message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::client::ClientSession;

/// How long an idle connection is kept; servers commonly close idle clients after a minute
/// or so, and a stale connection costs a failed first command.
const MAX_IDLE: Duration = Duration::from_secs(15);
/// Idle connections kept per address.
const MAX_IDLE_PER_ADDRESS: usize = 8;

/// Idle client sessions by server address.
#[derive(Default)]
pub struct ConnectionPool {
    idle: Mutex<HashMap<SocketAddr, Vec<(ClientSession, Instant)>>>,
}

impl std::fmt::Debug for ConnectionPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionPool").finish_non_exhaustive()
    }
}

impl ConnectionPool {
    /// An idle session to `addr` that is young enough to trust, if any.
    pub fn take(&self, addr: SocketAddr) -> Option<ClientSession> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let sessions = idle.get_mut(&addr)?;
        while let Some((session, since)) = sessions.pop() {
            if since.elapsed() < MAX_IDLE {
                return Some(session);
            }
            // Too old: drop it (closing the socket) rather than risk a failed command.
            drop(session);
        }
        None
    }

    /// Keeps a session that just finished a transaction for the next message.
    pub fn put(&self, addr: SocketAddr, session: ClientSession) {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let sessions = idle.entry(addr).or_default();
        sessions.retain(|(_, since)| since.elapsed() < MAX_IDLE);
        if sessions.len() < MAX_IDLE_PER_ADDRESS {
            sessions.push((session, Instant::now()));
        }
    }
}
