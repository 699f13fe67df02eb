//! `greylist`: defers the first attempt of every new (client network, sender, recipient)
//! triplet with `451 4.7.1`, and lets it through when the client retries after a delay, as
//! real MTAs do and most spam software does not.
//!
//! ```toml
//! [[plugin]]
//! name = "greylist"
//! path = "plugins/dist/greylist.wasm"
//! [plugin.config]
//! delay_secs = 300                 # a retry sooner than this is deferred again
//! retry_window_secs = 172800       # a retry later than this starts over (2 days)
//! pass_ttl_days = 35               # how long a client that retried is let through
//! whitelist = "client"             # after a pass, whitelist the client network ("client")
//!                                  # or only that triplet ("triplet")
//! pass_networks = ["10.0.0.0/8"]   # clients never greylisted
//! text = "Greylisted, please try again later"
//! ```
//!
//! Everything is in the host's key/value store, so with `[kv] backend = "redis"` every
//! gateway of a fleet shares it: a client greylisted by one node is accepted by another
//! once the delay has passed. The client is counted by network (its /24 for IPv4, its /64
//! for IPv6), because large senders retry from another address of the same pool. Senders
//! and recipients are compared case-insensitively; the null sender `<>` is a sender like
//! any other.
//!
//! Sessions that authenticated (SMTP AUTH) and clients in `pass_networks` are never
//! greylisted. The check runs at RCPT TO, so each recipient of a transaction is judged on
//! its own.
//!
//! State: `t:<net>|<sender>|<recipient>` holds when the triplet was first seen (ms since
//! the epoch), with `retry_window_secs` as its time to live; `p:<net>` (or
//! `p:<net>|<sender>|<recipient>` with `whitelist = "triplet"`) marks a pass, with
//! `pass_ttl_days` as its time to live. A KV write that fails (the namespace is at its
//! quota) lets the message through and logs why: greylisting that cannot remember a first
//! attempt would defer that sender forever. A KV store that cannot be reached at all
//! (Redis down) fails the call, and the plugin's `on_error` decides (`tempfail` by
//! default, `continue` to let mail through unchecked).
//!
//! Counters: `greylist_deferred`, `greylist_passed` (a retry after the delay), and tag
//! `greylist=deferred` or `greylist=passed` on the transaction.

use std::net::IpAddr;

use serde::Deserialize;
use tidegate_plugin_sdk::net::{Network, mask};
use tidegate_plugin_sdk::prelude::*;

const DAY_MS: u64 = 86_400_000;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Seconds a new triplet must wait before a retry passes.
    #[serde(default = "default_delay")]
    pub delay_secs: u64,
    /// Seconds after the first attempt within which a retry passes; later, it starts over.
    #[serde(default = "default_retry_window")]
    pub retry_window_secs: u64,
    /// Days a client (or triplet) that retried is let through without a delay.
    #[serde(default = "default_pass_ttl_days")]
    pub pass_ttl_days: u64,
    /// What a pass whitelists.
    #[serde(default)]
    pub whitelist: Whitelist,
    /// Client addresses and networks never greylisted.
    #[serde(default)]
    pub pass_networks: Vec<Network>,
    /// The text of the 451 reply.
    #[serde(default = "default_text")]
    pub text: String,
}

fn default_delay() -> u64 {
    300
}

fn default_retry_window() -> u64 {
    2 * 86_400
}

fn default_pass_ttl_days() -> u64 {
    35
}

fn default_text() -> String {
    "Greylisted, please try again later".into()
}

/// What a retry after the delay whitelists.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Whitelist {
    /// The client network, for every sender and recipient (postgrey's auto-whitelisting).
    #[default]
    Client,
    /// Only the triplet that retried.
    Triplet,
}

/// The network a client is greylisted by: its /24 or /64, written as `net/len`.
fn client_network(ip: IpAddr) -> String {
    let ip = ip.to_canonical();
    let prefix = if ip.is_ipv4() { 24 } else { 64 };
    format!("{}/{prefix}", mask(ip, prefix))
}

/// The plugin: one value per session.
pub struct Greylist {
    config: Config,
    /// The sender of the transaction in progress, lowercased (`<>` for the null sender).
    sender: String,
}

impl Plugin for Greylist {
    fn init(host: &dyn Host) -> Result<Self, String> {
        let config: Config = host.config()?;
        if config.delay_secs == 0 || config.delay_secs > 86_400 {
            return Err("greylist: `delay_secs` must be between 1 and 86400".into());
        }
        if config.retry_window_secs <= config.delay_secs || config.retry_window_secs > 30 * 86_400 {
            return Err(
                "greylist: `retry_window_secs` must be more than `delay_secs` and at most 30 days"
                    .into(),
            );
        }
        if config.pass_ttl_days == 0 || config.pass_ttl_days > 366 {
            return Err("greylist: `pass_ttl_days` must be between 1 and 366".into());
        }
        if config.text.is_empty()
            || config.text.len() > 200
            || !config.text.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err("greylist: `text` must be 1 to 200 printable ASCII characters".into());
        }
        Ok(Greylist {
            config,
            sender: "<>".into(),
        })
    }

    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        self.sender = "<>".into();
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            mail_from: true,
            rcpt_to: true,
            ..Hooks::default()
        }
    }

    fn on_mail_from(&mut self, _host: &dyn Host, info: &MailFromInfo) -> Response {
        self.sender = info
            .sender
            .as_deref()
            .map_or_else(|| "<>".into(), str::to_lowercase);
        Response::next()
    }

    fn on_rcpt_to(&mut self, host: &dyn Host, info: &RcptToInfo) -> Response {
        let session = host.session();
        if session.auth_identity.is_some() {
            return Response::next();
        }
        let Ok(ip) = session.client_ip.parse::<IpAddr>() else {
            host.log(
                Level::Warn,
                "client address is not an IP address, not greylisted",
                &[("ip", &session.client_ip)],
            );
            return Response::next();
        };
        if self.config.pass_networks.iter().any(|n| n.contains(ip)) {
            return Response::next();
        }
        let net = client_network(ip);
        let triplet = format!("{net}|{}|{}", self.sender, info.recipient.to_lowercase());
        let pass_key = match self.config.whitelist {
            Whitelist::Client => format!("p:{net}"),
            Whitelist::Triplet => format!("p:{triplet}"),
        };
        if host.kv_get(&pass_key).is_some() {
            return Response::next();
        }
        let seen_key = format!("t:{triplet}");
        let now = host.now_ms();
        let first = host
            .kv_get(&seen_key)
            .and_then(|v| String::from_utf8(v).ok()?.parse::<u64>().ok());
        match first {
            Some(first) if now.saturating_sub(first) >= self.config.delay_secs * 1000 => {
                let ttl = self.config.pass_ttl_days * DAY_MS;
                if let Err(e) = host.kv_set(&pass_key, b"1", Some(ttl)) {
                    host.log(
                        Level::Warn,
                        "greylist pass not kept",
                        &[("error", &e.to_string())],
                    );
                }
                host.kv_delete(&seen_key);
                host.counter_add("greylist_passed", 1);
                host.log(
                    Level::Info,
                    "greylisted triplet retried after the delay, passed",
                    &[("client", &net), ("sender", &self.sender)],
                );
                Response::next().tag("greylist", "passed")
            }
            Some(_) => self.defer(host),
            None => {
                let ttl = self.config.retry_window_secs * 1000;
                if let Err(e) = host.kv_set(&seen_key, now.to_string().as_bytes(), Some(ttl)) {
                    // Deferring what cannot be remembered would defer it on every retry.
                    host.log(
                        Level::Warn,
                        "greylist state not kept, letting the message through",
                        &[("error", &e.to_string())],
                    );
                    return Response::next();
                }
                self.defer(host)
            }
        }
    }
}

tidegate_plugin_sdk::export!(Greylist);

impl Greylist {
    fn defer(&self, host: &dyn Host) -> Response {
        host.counter_add("greylist_deferred", 1);
        Response::from(Verdict::tempfail(451, "4.7.1", &self.config.text))
            .tag("greylist", "deferred")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    fn session(config: serde_json::Value) -> Harness<Greylist> {
        Harness::new(TestHost::new().with_config(config)).expect("config accepted")
    }

    fn host_from(ip: &str) -> TestHost {
        TestHost::new()
            .with_config(json!({ "delay_secs": 60 }))
            .with_session(SessionInfo {
                client_ip: ip.into(),
                ..SessionInfo::default()
            })
    }

    /// MAIL FROM and one RCPT TO; the RCPT verdict.
    fn attempt(s: &mut Harness<Greylist>, sender: &str, recipient: &str) -> Verdict {
        s.mail_from(sender);
        s.rcpt_to(recipient).verdict
    }

    fn deferred(verdict: &Verdict) -> bool {
        matches!(verdict, Verdict::Tempfail(r) if r.code == 451 && r.enhanced == "4.7.1")
    }

    #[test]
    fn a_first_attempt_is_deferred_and_a_retry_after_the_delay_passes() {
        let mut s = Harness::<Greylist>::new(host_from("192.0.2.10")).unwrap();
        assert!(deferred(&attempt(
            &mut s,
            "a@example.org",
            "u@example.test"
        )));
        assert_eq!(s.host.tag("greylist").as_deref(), Some("deferred"));
        // Too soon: still deferred, and the wait is not restarted.
        s.host.advance_ms(30_000);
        assert!(deferred(&attempt(
            &mut s,
            "a@example.org",
            "u@example.test"
        )));
        s.host.advance_ms(30_000);
        assert_eq!(
            attempt(&mut s, "A@Example.org", "U@example.test"),
            Verdict::Continue
        );
        assert_eq!(s.host.tag("greylist").as_deref(), Some("passed"));
        assert_eq!(s.host.counter("greylist_deferred"), 2);
        assert_eq!(s.host.counter("greylist_passed"), 1);
        // The client network is whitelisted now, for any sender and recipient.
        assert_eq!(
            attempt(&mut s, "b@example.org", "v@example.test"),
            Verdict::Continue
        );
    }

    #[test]
    fn the_client_is_greylisted_by_its_network() {
        let mut first = Harness::<Greylist>::new(host_from("192.0.2.10")).unwrap();
        assert!(deferred(&attempt(
            &mut first,
            "a@example.org",
            "u@example.test"
        )));
        assert_eq!(
            first
                .host
                .kv_get("t:192.0.2.0/24|a@example.org|u@example.test"),
            Some(b"1000000000000".to_vec())
        );
        let v6 = Harness::<Greylist>::new(host_from("2001:db8:1:2::7")).unwrap();
        let mut v6 = v6;
        assert!(deferred(&attempt(
            &mut v6,
            "a@example.org",
            "u@example.test"
        )));
        assert!(
            v6.host
                .kv_get("t:2001:db8:1:2::/64|a@example.org|u@example.test")
                .is_some()
        );
    }

    #[test]
    fn a_retry_after_the_window_starts_over() {
        let mut s = session(json!({ "delay_secs": 60, "retry_window_secs": 600 }));
        assert!(deferred(&attempt(
            &mut s,
            "a@example.org",
            "u@example.test"
        )));
        s.host.advance_ms(601_000);
        assert!(deferred(&attempt(
            &mut s,
            "a@example.org",
            "u@example.test"
        )));
        s.host.advance_ms(60_000);
        assert_eq!(
            attempt(&mut s, "a@example.org", "u@example.test"),
            Verdict::Continue
        );
    }

    #[test]
    fn a_pass_lasts_pass_ttl_days() {
        let mut s = session(json!({ "delay_secs": 60, "pass_ttl_days": 1 }));
        assert!(deferred(&attempt(
            &mut s,
            "a@example.org",
            "u@example.test"
        )));
        s.host.advance_ms(60_000);
        assert_eq!(
            attempt(&mut s, "a@example.org", "u@example.test"),
            Verdict::Continue
        );
        s.host.advance_ms(DAY_MS - 1);
        assert_eq!(
            attempt(&mut s, "c@example.org", "u@example.test"),
            Verdict::Continue
        );
        s.host.advance_ms(1);
        assert!(deferred(&attempt(
            &mut s,
            "c@example.org",
            "u@example.test"
        )));
    }

    #[test]
    fn triplet_whitelisting_leaves_other_senders_greylisted() {
        let mut s = session(json!({ "delay_secs": 60, "whitelist": "triplet" }));
        assert!(deferred(&attempt(
            &mut s,
            "a@example.org",
            "u@example.test"
        )));
        s.host.advance_ms(60_000);
        assert_eq!(
            attempt(&mut s, "a@example.org", "u@example.test"),
            Verdict::Continue
        );
        assert_eq!(
            attempt(&mut s, "a@example.org", "u@example.test"),
            Verdict::Continue
        );
        assert!(deferred(&attempt(
            &mut s,
            "b@example.org",
            "u@example.test"
        )));
        assert!(deferred(&attempt(
            &mut s,
            "a@example.org",
            "v@example.test"
        )));
    }

    #[test]
    fn each_recipient_and_the_null_sender_are_judged_on_their_own() {
        let mut s = session(json!({ "delay_secs": 60 }));
        s.mail_from("");
        assert!(deferred(&s.rcpt_to("u@example.test").verdict));
        assert!(deferred(&s.rcpt_to("v@example.test").verdict));
        assert!(s.host.kv_get("t:192.0.2.0/24|<>|v@example.test").is_some());
    }

    #[test]
    fn authenticated_sessions_and_pass_networks_are_never_greylisted() {
        let host = TestHost::new()
            .with_config(json!({}))
            .with_session(SessionInfo {
                client_ip: "198.51.100.1".into(),
                auth_identity: Some("alice".into()),
                ..SessionInfo::default()
            });
        let mut s = Harness::<Greylist>::new(host).unwrap();
        assert_eq!(
            attempt(&mut s, "a@example.org", "u@example.test"),
            Verdict::Continue
        );
        let host = TestHost::new()
            .with_config(json!({ "pass_networks": ["198.51.100.0/24", "2001:db8::/32"] }))
            .with_session(SessionInfo {
                client_ip: "198.51.100.1".into(),
                ..SessionInfo::default()
            });
        let mut s = Harness::<Greylist>::new(host).unwrap();
        assert_eq!(
            attempt(&mut s, "a@example.org", "u@example.test"),
            Verdict::Continue
        );
        assert_eq!(s.host.counter("greylist_deferred"), 0);
    }

    #[test]
    fn a_store_at_its_quota_lets_mail_through_rather_than_deferring_it_forever() {
        let host = TestHost::new().with_config(json!({})).with_kv_quota(0);
        let mut s = Harness::<Greylist>::new(host).unwrap();
        assert_eq!(
            attempt(&mut s, "a@example.org", "u@example.test"),
            Verdict::Continue
        );
        assert!(s.host.logs().iter().any(|(l, _)| *l == Level::Warn));
    }

    #[test]
    fn the_reply_text_is_configurable() {
        let mut s = session(json!({ "text": "Come back in five minutes" }));
        let Verdict::Tempfail(reply) = attempt(&mut s, "a@example.org", "u@example.test") else {
            panic!("not deferred");
        };
        assert_eq!(reply.text, "Come back in five minutes");
    }

    #[test]
    fn bad_configurations_are_refused_with_a_reason() {
        let error = |config| match Harness::<Greylist>::new(TestHost::new().with_config(config)) {
            Ok(_) => panic!("config accepted"),
            Err(e) => e,
        };
        assert!(error(json!({ "delay_secs": 0 })).contains("delay_secs"));
        assert!(
            error(json!({ "delay_secs": 600, "retry_window_secs": 300 }))
                .contains("retry_window_secs")
        );
        assert!(error(json!({ "pass_ttl_days": 0 })).contains("pass_ttl_days"));
        assert!(error(json!({ "text": "" })).contains("text"));
        assert!(error(json!({ "text": "bad\r\n250 ok" })).contains("text"));
        assert!(error(json!({ "pass_networks": ["x"] })).contains("not an IP address"));
        assert!(error(json!({ "whitelist": "sender" })).contains("unknown variant"));
        assert!(error(json!({ "delay": 1 })).contains("unknown field"));
    }

    #[test]
    fn networks() {
        let net = Network::parse("192.0.2.0/24").unwrap();
        assert!(net.contains("192.0.2.77".parse().unwrap()));
        assert!(net.contains("::ffff:192.0.2.1".parse().unwrap()));
        assert!(!net.contains("192.0.3.1".parse().unwrap()));
        assert_eq!(
            client_network("::ffff:192.0.2.9".parse().unwrap()),
            "192.0.2.0/24"
        );
        for bad in ["", "x", "192.0.2.0/33", "::/129"] {
            assert!(Network::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
