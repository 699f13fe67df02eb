//! Egress pools (`[[egress]]`): which local address a connection leaves from, and the
//! HELO name that belongs to it. Receivers judge a sender by its address (reputation,
//! reverse DNS matching the HELO name), so a pool's addresses are chosen by weight among
//! those of the next hop's address family, each with its own name.

use std::net::IpAddr;

use crate::config::{EgressAddress, EgressConfig};

/// The address of `pool` for connection number `turn` to an IPv6 (or IPv4) next hop:
/// weighted round robin over the pool's addresses of that family; `None` when it has none.
pub fn choose(pool: &EgressConfig, turn: u64, ipv6: bool) -> Option<&EgressAddress> {
    let family = |a: &&EgressAddress| is_v6(a.address) == ipv6;
    let total: u64 = pool
        .addresses
        .iter()
        .filter(family)
        .map(|a| u64::from(a.weight))
        .sum();
    if total == 0 {
        return None;
    }
    let mut point = turn % total;
    for address in pool.addresses.iter().filter(family) {
        let weight = u64::from(address.weight);
        if point < weight {
            return Some(address);
        }
        point -= weight;
    }
    None
}

fn is_v6(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(_) => false,
        // An IPv4-mapped address sends IPv4.
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn address(text: &str, weight: u32) -> EgressAddress {
        EgressAddress {
            address: text.parse().unwrap(),
            helo: Some(format!("out-{weight}.example.net")),
            weight,
        }
    }

    #[test]
    fn addresses_are_chosen_by_weight_within_the_next_hops_family() {
        let pool = EgressConfig {
            name: "out".into(),
            addresses: vec![
                address("192.0.2.1", 3),
                address("2001:db8::1", 5),
                address("192.0.2.2", 1),
            ],
        };
        let picks: Vec<String> = (0..8)
            .map(|turn| choose(&pool, turn, false).unwrap().address.to_string())
            .collect();
        assert_eq!(picks.iter().filter(|a| *a == "192.0.2.1").count(), 6);
        assert_eq!(picks.iter().filter(|a| *a == "192.0.2.2").count(), 2);
        assert_eq!(
            choose(&pool, 7, true).map(|a| a.address.to_string()),
            Some("2001:db8::1".into())
        );
        let v4_only = EgressConfig {
            name: "v4".into(),
            addresses: vec![address("192.0.2.1", 1)],
        };
        assert!(choose(&v4_only, 0, true).is_none());
    }
}
