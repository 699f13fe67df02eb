//! Admission control: how many sessions may run at once, in all and per client address.
//!
//! An IPv6 client counts per /64, not per address: one host usually owns a whole /64 and
//! can connect from as many of its 2^64 addresses as it likes, which would make a
//! per-address limit no limit at all. IPv4 clients count per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Counts running sessions; a [`Permit`] is held for the life of each.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    counts: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server runs as many sessions as it may.
    #[error("too many connections")]
    Total,
    /// This client address runs as many sessions as it may.
    #[error("too many connections from your address")]
    PerIp,
}

/// One admitted session; dropping it frees the slot.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    /// Limits of `max_total` sessions, `max_per_ip` of them from one address.
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// Admits a session from `ip`, or says why not. IPv4-mapped IPv6 addresses count as
    /// their IPv4 address, so a dual-stack listener cannot double a client's allowance,
    /// and IPv6 addresses count per /64.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let ip = crate::auth::client_key(ip);
        // The lock guards two integers and a map entry; a panic while holding it cannot
        // leave them inconsistent, so a poisoned lock is still usable.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.total >= self.max_total {
            return Err(Refusal::Total);
        }
        let mine = counts.per_ip.entry(ip).or_insert(0);
        if *mine >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *mine += 1;
        counts.total += 1;
        Ok(Permit {
            admission: Arc::clone(self),
            ip,
        })
    }

    /// Sessions running now.
    pub fn running(&self) -> usize {
        self.counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut counts = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(mine) = counts.per_ip.get_mut(&self.ip) {
            *mine -= 1;
            if *mine == 0 {
                counts.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_are_enforced_and_released() {
        let admission = Admission::new(3, 2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let p1 = admission.admit(a).unwrap();
        let _p2 = admission.admit(a).unwrap();
        assert_eq!(admission.admit(a).unwrap_err(), Refusal::PerIp);
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(admission.admit(mapped).unwrap_err(), Refusal::PerIp);
        let _p3 = admission.admit(b).unwrap();
        assert_eq!(admission.admit(b).unwrap_err(), Refusal::Total);
        drop(p1);
        assert_eq!(admission.running(), 2);
        let _p4 = admission.admit(a).unwrap();
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let admission = Admission::new(10, 2);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let _p1 = admission.admit(one).unwrap();
        let p2 = admission.admit(same_64).unwrap();
        assert_eq!(admission.admit(one).unwrap_err(), Refusal::PerIp);
        let _p3 = admission.admit(other_64).unwrap();
        drop(p2);
        let _p4 = admission
            .admit("2001:db8:1:2::77".parse().unwrap())
            .unwrap();
    }
}
