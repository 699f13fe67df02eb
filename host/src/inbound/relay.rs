//! Relay control: the rule that keeps Tidegate from ever being an open relay.
//!
//! A recipient in an accepted domain is taken from anyone; any other recipient only from a
//! client allowed to relay (a relay network now, an authenticated client later). The
//! decision is made on the parsed address, so the classic tricks fail by construction:
//! - source routes `<@a,@b:user@c>` are already stripped by the parser, so `c` is judged;
//! - a trailing dot (`user@example.test.`) is a syntax error, never normalised into a match;
//! - domains are compared in lowercase, so case games change nothing;
//! - a local part that some downstream system could read as a route (`user%other@ours`,
//!   `a!b@ours`, `"user@other"@ours`) is refused from a client that may not relay, since
//!   the next hop might forward it to a domain we never agreed to serve;
//! - address literals (`user@[192.0.2.1]`) are never an accepted domain.

use std::collections::HashSet;
use std::net::IpAddr;

use ipnet::IpNet;

use super::address::{Domain, ForwardPath, Mailbox};
use crate::config::RelayConfig;

/// The relay rules, built once from the configuration.
#[derive(Debug, Clone)]
pub struct RelayPolicy {
    accept_domains: HashSet<String>,
    relay_networks: Vec<IpNet>,
}

/// What relay control says of one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayDecision {
    /// The recipient is in an accepted domain.
    Local,
    /// The recipient is elsewhere and the client may relay.
    Relay,
    /// The recipient is elsewhere (or looks like a route) and the client may not relay.
    Denied,
}

impl RelayPolicy {
    /// Builds the policy from the `[relay]` table.
    pub fn new(config: &RelayConfig) -> Self {
        RelayPolicy {
            accept_domains: config
                .accept_domains
                .iter()
                .map(|d| d.as_str().to_owned())
                .collect(),
            relay_networks: config.relay_networks.clone(),
        }
    }

    /// Whether a client address is in a relay network. IPv4 clients seen through an IPv6
    /// socket (`::ffff:192.0.2.1`) are judged by their IPv4 address.
    pub fn is_relay_client(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.relay_networks.iter().any(|net| net.contains(&ip))
    }

    /// Whether `domain` is one this gateway accepts mail for.
    pub fn accepts_domain(&self, domain: &Domain) -> bool {
        match domain {
            // Compared as A-labels, so an IDN matches in either form (U-labels arrive
            // with SMTPUTF8).
            Domain::Name(name) => crate::config::ascii_domain(name)
                .is_some_and(|ascii| self.accept_domains.contains(&ascii)),
            Domain::Literal(_) => false,
        }
    }

    /// Judges one recipient for a client that may (`may_relay`) or may not relay.
    pub fn decide(&self, recipient: &ForwardPath, may_relay: bool) -> RelayDecision {
        let mailbox: &Mailbox = match recipient {
            // RFC 5321 §4.5.1: <Postmaster> must always be accepted; it is local by
            // definition.
            ForwardPath::Postmaster => return RelayDecision::Local,
            ForwardPath::Mailbox(mailbox) => mailbox,
        };
        let local = self.accepts_domain(mailbox.domain()) && !mailbox.local_part_routes();
        match (local, may_relay) {
            (true, _) => RelayDecision::Local,
            (false, true) => RelayDecision::Relay,
            (false, false) => RelayDecision::Denied,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DomainName;
    use crate::inbound::address::parse_forward_path;

    fn policy() -> RelayPolicy {
        RelayPolicy::new(&RelayConfig {
            accept_domains: vec![DomainName::try_from("example.test".to_owned()).unwrap()],
            relay_networks: vec![
                "127.0.0.1/32".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
        })
    }

    fn decide(address: &str, may_relay: bool) -> Option<RelayDecision> {
        let (path, _) = parse_forward_path(address, true).ok()?;
        Some(policy().decide(&path, may_relay))
    }

    #[test]
    fn accepted_domains_are_local_for_everyone() {
        assert_eq!(
            decide("<user@example.test>", false),
            Some(RelayDecision::Local)
        );
        assert_eq!(
            decide("<user@EXAMPLE.Test>", false),
            Some(RelayDecision::Local)
        );
        assert_eq!(decide("<Postmaster>", false), Some(RelayDecision::Local));
        assert_eq!(
            decide("<@other.test:user@example.test>", false),
            Some(RelayDecision::Local)
        );
    }

    #[test]
    fn relay_tricks_are_denied_to_strangers() {
        for trick in [
            "<user@other.test>",
            "<user@OTHER.TEST>",
            "<user%other.test@example.test>",
            "<other.test!user@example.test>",
            "<\"user@other.test\"@example.test>",
            "<@example.test,@example.test:user@other.test>",
            "<user@[127.0.0.1]>",
            "<user@sub.example.test>",
            "<user@example.test.other.test>",
        ] {
            assert_eq!(decide(trick, false), Some(RelayDecision::Denied), "{trick}");
            assert_eq!(decide(trick, true), Some(RelayDecision::Relay), "{trick}");
        }
        // A trailing dot never parses, so it never reaches a decision.
        assert_eq!(decide("<user@example.test.>", false), None);
    }

    #[test]
    fn relay_networks_match_canonical_addresses() {
        let policy = policy();
        assert!(policy.is_relay_client("127.0.0.1".parse().unwrap()));
        assert!(policy.is_relay_client("::ffff:127.0.0.1".parse().unwrap()));
        assert!(policy.is_relay_client("2001:db8::5".parse().unwrap()));
        assert!(!policy.is_relay_client("127.0.0.2".parse().unwrap()));
        assert!(!policy.is_relay_client("::1".parse().unwrap()));
    }
}
