//! Mail loops seen from the delivery side: is the next hop this gateway itself?
//!
//! A route or an MX record that points back here (a smarthost set to our own listener, a
//! domain we accept whose MX is this host but that has no route of its own, a relay client
//! sending to `user@[127.0.0.1]`) would make the queue deliver a message to itself,
//! receive it again, and go round until the hop count stops it 50 trips later. Postfix
//! refuses such deliveries as "mail loops back to myself" (5.4.6); so do we, by two
//! checks: the address we are about to connect to is one of our listeners ([`OwnAddresses`]),
//! or the server greets or answers EHLO with our own `hostname` (in the client session).

use std::net::{IpAddr, SocketAddr};

/// The addresses our listeners accept connections on.
#[derive(Debug, Clone, Default)]
pub struct OwnAddresses {
    listeners: Vec<SocketAddr>,
}

impl OwnAddresses {
    /// The listeners' bound addresses (with the ports the kernel chose for port 0).
    pub fn new(listeners: Vec<SocketAddr>) -> Self {
        OwnAddresses { listeners }
    }

    /// Whether a connection to `target` would reach one of our own listeners: same port,
    /// and the same address, or any address of this host for a listener bound to the
    /// wildcard (`0.0.0.0` takes IPv4 only; `[::]` also takes IPv4, as Linux binds it
    /// dual-stack by default).
    pub fn contains(&self, target: SocketAddr) -> bool {
        let ip = target.ip().to_canonical();
        let mut local: Option<bool> = None;
        for listener in &self.listeners {
            if listener.port() != target.port() {
                continue;
            }
            let bound = listener.ip().to_canonical();
            if bound == ip {
                return true;
            }
            let wildcard_fits = match bound {
                IpAddr::V4(v4) => v4.is_unspecified() && ip.is_ipv4(),
                IpAddr::V6(v6) => v6.is_unspecified(),
            };
            // Asked lazily: most targets share no port with a listener.
            if wildcard_fits && *local.get_or_insert_with(|| is_local_address(ip)) {
                return true;
            }
        }
        false
    }
}

/// Whether `ip` is an address of this host: loopback (all of 127.0.0.0/8 and ::1 reach
/// the host on Linux, though only 127.0.0.1 is configured) or an interface's address.
fn is_local_address(ip: IpAddr) -> bool {
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    match interface_addresses() {
        Ok(addresses) => addresses.contains(&ip),
        Err(e) => {
            // Without the list, say "not ours": the hostname check in the greeting and
            // EHLO reply still catches a loop, one connection later.
            tracing::warn!(error = %e, "cannot list the interface addresses");
            false
        }
    }
}

/// Every address configured on this host's interfaces (`getifaddrs(3)`).
fn interface_addresses() -> std::io::Result<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `getifaddrs` writes a list head into `head`, which we free below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cursor = head;
    while !cursor.is_null() {
        // SAFETY: `cursor` is a node of the list `getifaddrs` returned, not yet freed.
        let entry = unsafe { &*cursor };
        if !entry.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points to a socket address whose family says its type.
            let family = i32::from(unsafe { (*entry.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: an AF_INET address is a `sockaddr_in`.
                let sin = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in) };
                // `s_addr` holds the address in network order: its bytes as they lie.
                out.push(IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()));
            } else if family == libc::AF_INET6 {
                // SAFETY: an AF_INET6 address is a `sockaddr_in6`.
                let sin6 = unsafe { &*(entry.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::from(sin6.sin6_addr.s6_addr));
            }
        }
        cursor = entry.ifa_next;
    }
    // SAFETY: `head` came from `getifaddrs` and is freed once; no reference outlives it.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Whether the name a server announced (the first word of its greeting or of its EHLO
/// reply) is our own host name.
pub fn announces(text: &str, hostname: &str) -> bool {
    let first_line = text.split('\n').next().unwrap_or_default();
    first_line
        .split_ascii_whitespace()
        .next()
        .is_some_and(|name| {
            name.trim_end_matches('.')
                .eq_ignore_ascii_case(hostname.trim_end_matches('.'))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn a_listener_address_is_ours_on_its_port_only() {
        let own = OwnAddresses::new(vec![addr("127.0.0.1:2525"), addr("[::1]:2587")]);
        assert!(own.contains(addr("127.0.0.1:2525")));
        assert!(own.contains(addr("[::ffff:127.0.0.1]:2525")));
        assert!(own.contains(addr("[::1]:2587")));
        assert!(!own.contains(addr("127.0.0.1:25")));
        assert!(!own.contains(addr("127.0.0.2:2525")));
        assert!(!own.contains(addr("192.0.2.1:2525")));
    }

    #[test]
    fn a_wildcard_listener_takes_every_local_address_of_its_family() {
        let v4 = OwnAddresses::new(vec![addr("0.0.0.0:2525")]);
        assert!(v4.contains(addr("127.0.0.1:2525")));
        assert!(v4.contains(addr("127.0.0.9:2525")));
        assert!(!v4.contains(addr("[::1]:2525")));
        // TEST-NET-1 is configured on no interface.
        assert!(!v4.contains(addr("192.0.2.1:2525")));
        assert!(!v4.contains(addr("127.0.0.1:25")));
        let v6 = OwnAddresses::new(vec![addr("[::]:2525")]);
        assert!(v6.contains(addr("[::1]:2525")));
        assert!(v6.contains(addr("127.0.0.1:2525")));
        assert!(!v6.contains(addr("[2001:db8::1]:2525")));
    }

    #[test]
    fn interface_addresses_include_loopback() {
        let addresses = interface_addresses().expect("getifaddrs");
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{addresses:?}"
        );
    }

    #[test]
    fn our_name_is_recognised_in_a_greeting_or_ehlo_reply() {
        assert!(announces("relay.example.test ESMTP", "relay.example.test"));
        assert!(announces(
            "RELAY.example.test.\nPIPELINING",
            "relay.example.test"
        ));
        assert!(!announces(
            "mx.example.test ESMTP relay.example.test",
            "relay.example.test"
        ));
        assert!(!announces("", "relay.example.test"));
    }
}
