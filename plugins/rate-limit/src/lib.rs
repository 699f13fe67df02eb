//! `rate-limit`: limits the messages a client address and an envelope sender may send
//! within a time window, and defers the rest with `451 4.7.1`.
//!
//! ```toml
//! [[plugin]]
//! name = "rate-limit"
//! path = "plugins/dist/rate_limit.wasm"
//! [plugin.config]
//! per_ip = { limit = 100, window = "1h" }      # messages per client address
//! per_sender = { limit = 50, window = "1h" }   # messages per envelope sender
//! exempt_ips = ["127.0.0.1", "10.0.0.0/8"]     # addresses and networks never limited
//! ipv6_prefix = 64                             # IPv6 clients are counted per /64
//! ```
//!
//! Either limit may be left out, not both. Windows are written `30s`, `5m`, `1h`, `1d` (or
//! `500ms`). The counters live in the host's key/value store (`kv-incr` with the window as
//! time to live), so every session of every listener that runs this plugin counts
//! together, and a count drops back to zero when its window ends: a fixed window that
//! starts with the first message counted. (A client may therefore send up to twice the
//! limit across a window boundary; the limit is a bound on sustained rate, not on bursts.)
//!
//! ## When a message is counted, and when it is refused
//!
//! What users expect to limit is messages, not recipients or connections: a message to
//! fifty recipients is one message. So a message is counted once, when its data is
//! complete (on-data runs exactly once per message), and only if it got that far: a
//! transaction abandoned with RSET or QUIT, or refused by an earlier stage, costs nothing.
//!
//! The refusal, on the other hand, comes at RCPT TO, from the counts as they stand: a
//! client over its limit hears `451 4.7.1` before it sends the message, rather than after
//! transferring megabytes that would be thrown away, and every SMTP client handles a 4xx
//! to RCPT (it keeps the message queued and retries later). At MAIL FROM some clients
//! handle refusals badly, which is why MTAs traditionally delay them to RCPT. The count is
//! checked again when it is taken at the end of DATA, because sessions running side by
//! side may all have passed RCPT with the last free slot; the message that would go over
//! the limit is refused there (and not counted), so the limit is exact.
//!
//! The null sender `<>` (bounces) is not limited per sender — all bounces share that
//! "sender" — only per client address. Senders are compared case-insensitively.
//!
//! A refusal sets the tag `rate_limit=ip` or `rate_limit=sender`, is logged, and adds to
//! the counter `rate_limit_refused`.
//!
//! The plugin learns the client's address in on-connect; if an earlier plugin of the
//! chain accepts at connect (skipping the rest of the chain), that session is limited per
//! sender only. Put the plugin after plugins that refuse messages, so refused messages do
//! not count.

use std::net::IpAddr;

use serde::Deserialize;
use tidegate_plugin_sdk::net::{Network, mask};
use tidegate_plugin_sdk::prelude::*;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Messages per client address.
    pub per_ip: Option<Limit>,
    /// Messages per envelope sender.
    pub per_sender: Option<Limit>,
    /// Client addresses and networks never limited.
    #[serde(default)]
    pub exempt_ips: Vec<Network>,
    /// The prefix length IPv6 clients are counted by (default 64).
    #[serde(default = "default_ipv6_prefix")]
    pub ipv6_prefix: u8,
}

fn default_ipv6_prefix() -> u8 {
    64
}

/// A number of messages per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// The most messages counted within one window.
    pub limit: u32,
    /// The window.
    pub window: Window,
}

/// A window length, written `30s`, `5m`, `1h`, `1d` or `500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Window {
    /// The length in milliseconds.
    pub ms: u64,
}

impl TryFrom<String> for Window {
    type Error = String;

    fn try_from(text: String) -> Result<Window, String> {
        Window::parse(&text)
    }
}

impl Window {
    /// Parses `30s`, `5m`, `1h`, `1d` or `500ms`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("window `{text}` is not a duration such as 30s, 5m, 1h or 1d");
        let digits = text.trim().bytes().take_while(u8::is_ascii_digit).count();
        let (number, unit) = text.trim().split_at(digits);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let scale = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        match number.checked_mul(scale) {
            Some(0) => Err(format!("window `{text}` is empty")),
            Some(ms) => Ok(Window { ms }),
            None => Err(bad()),
        }
    }
}

/// Which limit a message ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    Ip,
    Sender,
}

/// The plugin: one value per session.
pub struct RateLimit {
    config: Config,
    /// The client, as counted (an IPv6 address masked to its prefix); `None` if unknown.
    client: Option<IpAddr>,
    /// Whether the client is exempt.
    exempt: bool,
    /// The sender of MAIL FROM in the transaction in progress (`Some(None)` is `<>`).
    sender: Option<Option<String>>,
}

impl Plugin for RateLimit {
    fn init(host: &dyn Host) -> Result<Self, String> {
        let config: Config = host.config()?;
        if config.per_ip.is_none() && config.per_sender.is_none() {
            return Err("rate-limit: neither `per_ip` nor `per_sender` is set".into());
        }
        for (name, limit) in [("per_ip", config.per_ip), ("per_sender", config.per_sender)] {
            if limit.is_some_and(|l| l.limit == 0) {
                return Err(format!("rate-limit: `{name}.limit` must be at least 1"));
            }
        }
        if config.ipv6_prefix == 0 || config.ipv6_prefix > 128 {
            return Err("rate-limit: `ipv6_prefix` must be between 1 and 128".into());
        }
        Ok(RateLimit {
            config,
            client: None,
            exempt: false,
            sender: None,
        })
    }

    /// Keeps the checked configuration and forgets the last session's client and sender.
    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        self.client = None;
        self.exempt = false;
        self.sender = None;
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            connect: self.config.per_ip.is_some() || !self.config.exempt_ips.is_empty(),
            mail_from: self.config.per_sender.is_some(),
            rcpt_to: true,
            data: true,
            ..Hooks::default()
        }
    }

    fn on_connect(&mut self, host: &dyn Host, info: &ConnectInfo) -> Response {
        match info.client_ip.parse::<IpAddr>() {
            Ok(ip) => {
                let ip = ip.to_canonical();
                self.exempt = self.config.exempt_ips.iter().any(|n| n.contains(ip));
                self.client = Some(match ip {
                    IpAddr::V4(_) => ip,
                    IpAddr::V6(_) => mask(ip, self.config.ipv6_prefix),
                });
            }
            Err(_) => host.log(
                Level::Warn,
                "client address is not an IP address, not limited per address",
                &[("ip", &info.client_ip)],
            ),
        }
        Response::next()
    }

    fn on_mail_from(&mut self, _host: &dyn Host, info: &MailFromInfo) -> Response {
        self.sender = Some(info.sender.clone());
        Response::next()
    }

    fn on_rcpt_to(&mut self, host: &dyn Host, _info: &RcptToInfo) -> Response {
        if self.exempt {
            return Response::next();
        }
        let sender = self.sender.clone().flatten();
        for (over, limit, key) in self.counted(sender.as_deref()) {
            let count = read_count(host, &key);
            if count >= i64::from(limit.limit) {
                return self.refuse(host, over, sender.as_deref(), count);
            }
        }
        Response::next()
    }

    fn on_data(
        &mut self,
        host: &dyn Host,
        envelope: &Envelope,
        _message: &dyn Message,
    ) -> Response {
        // The sender as MAIL FROM gave it (what RCPT checked), unless this plugin did not
        // see MAIL FROM for this transaction.
        let sender = self
            .sender
            .take()
            .unwrap_or_else(|| envelope.sender.clone());
        if self.exempt {
            return Response::next();
        }
        let mut taken: Vec<(String, u64)> = Vec::new();
        let mut over = None;
        for (which, limit, key) in self.counted(sender.as_deref()) {
            let count = match host.kv_incr(&key, 1, Some(limit.window.ms)) {
                Ok(count) => count,
                Err(e) => {
                    // A counter that cannot be kept cannot say the sender is within its
                    // limit: give back what was taken and defer, never wave through.
                    host.log(
                        Level::Warn,
                        "rate counter not kept",
                        &[("error", &e.to_string())],
                    );
                    for (key, ttl) in &taken {
                        let _ = host.kv_incr(key, -1, Some(*ttl));
                    }
                    return Verdict::tempfail(
                        451,
                        "4.3.0",
                        "Rate limit state unavailable, try again later",
                    )
                    .into();
                }
            };
            taken.push((key, limit.window.ms));
            if count > i64::from(limit.limit) && over.is_none() {
                over = Some((which, count - 1));
            }
        }
        match over {
            Some((which, count)) => {
                // The message is refused: give back what it took.
                for (key, ttl) in taken {
                    let _ = host.kv_incr(&key, -1, Some(ttl));
                }
                self.refuse(host, which, sender.as_deref(), count)
            }
            None => Response::next(),
        }
    }
}

tidegate_plugin_sdk::export!(RateLimit);

impl RateLimit {
    /// The limits that apply to this session and sender, with their keys.
    fn counted(&self, sender: Option<&str>) -> Vec<(Over, Limit, String)> {
        let mut counted = Vec::new();
        if let (Some(limit), Some(client)) = (self.config.per_ip, self.client) {
            let key = match client {
                IpAddr::V4(_) => format!("ip:{client}"),
                IpAddr::V6(_) => format!("ip:{client}/{}", self.config.ipv6_prefix),
            };
            counted.push((Over::Ip, limit, key));
        }
        if let (Some(limit), Some(sender)) = (self.config.per_sender, sender) {
            counted.push((Over::Sender, limit, sender_key(sender)));
        }
        counted
    }

    fn refuse(&self, host: &dyn Host, over: Over, sender: Option<&str>, count: i64) -> Response {
        let count = count.to_string();
        host.counter_add("rate_limit_refused", 1);
        let (tag, text) = match over {
            Over::Ip => {
                let client = self.client.map(|c| c.to_string()).unwrap_or_default();
                host.log(
                    Level::Info,
                    "client address over its message limit",
                    &[("ip", &client), ("count", &count)],
                );
                (
                    "ip",
                    format!("Too many messages from [{client}], try again later"),
                )
            }
            Over::Sender => {
                let sender = sender.unwrap_or_default();
                host.log(
                    Level::Info,
                    "sender over its message limit",
                    &[("sender", sender), ("count", &count)],
                );
                (
                    "sender",
                    format!("Too many messages from <{sender}>, try again later"),
                )
            }
        };
        Response::from(Verdict::tempfail(451, "4.7.1", &text)).tag("rate_limit", tag)
    }
}

/// The store key of a sender: compared case-insensitively.
fn sender_key(sender: &str) -> String {
    format!("sender:{}", sender.to_lowercase())
}

/// A counter's current value (0 when absent or expired).
fn read_count(host: &dyn Host, key: &str) -> i64 {
    host.kv_get(key)
        .and_then(|v| String::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    const MESSAGE: &[u8] = b"Subject: hi\r\n\r\nhello\r\n";
    const MINUTE: u64 = 60_000;

    fn session(config: serde_json::Value) -> Harness<RateLimit> {
        Harness::new(TestHost::new().with_config(config)).expect("config accepted")
    }

    fn config_error(config: serde_json::Value) -> String {
        match Harness::<RateLimit>::new(TestHost::new().with_config(config)) {
            Ok(_) => panic!("config accepted"),
            Err(e) => e,
        }
    }

    /// Runs one transaction; returns the first refusal, or `None` if the message was taken.
    fn send(s: &mut Harness<RateLimit>, sender: &str, recipients: &[&str]) -> Option<Reply> {
        assert_eq!(s.mail_from(sender).verdict, Verdict::Continue);
        for recipient in recipients {
            if let Verdict::Tempfail(reply) = s.rcpt_to(recipient).verdict {
                return Some(reply);
            }
        }
        let from = (!sender.is_empty()).then_some(sender);
        match s.data(from, recipients, MESSAGE).verdict {
            Verdict::Tempfail(reply) => Some(reply),
            Verdict::Continue => None,
            other => panic!("unexpected verdict {other:?}"),
        }
    }

    fn per_ip(limit: u32, window: &str) -> serde_json::Value {
        json!({ "per_ip": { "limit": limit, "window": window } })
    }

    #[test]
    fn the_message_over_the_per_ip_limit_is_deferred_at_rcpt_with_451_4_7_1() {
        let mut s = session(per_ip(3, "1m"));
        s.connect("192.0.2.1", 1);
        for _ in 0..3 {
            assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        }
        s.mail_from("a@example.org");
        let response = s.rcpt_to("u@example.test");
        let Verdict::Tempfail(reply) = &response.verdict else {
            panic!("not deferred: {response:?}");
        };
        assert_eq!((reply.code, reply.enhanced.as_str()), (451, "4.7.1"));
        assert!(reply.text.contains("[192.0.2.1]"), "{}", reply.text);
        assert_eq!(s.host.tag("rate_limit").as_deref(), Some("ip"));
        assert_eq!(s.host.counter("rate_limit_refused"), 1);
    }

    #[test]
    fn a_value_reused_for_the_next_session_counts_its_new_client() {
        let mut s = session(per_ip(1, "1m"));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        s.next_session().unwrap();
        s.connect("192.0.2.2", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert_eq!(read_count(&s.host, "ip:192.0.2.2"), 1);
        s.next_session().unwrap();
        s.connect("192.0.2.1", 2);
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
    }

    #[test]
    fn a_message_counts_once_whatever_its_recipients() {
        let mut s = session(per_ip(2, "1m"));
        s.connect("192.0.2.1", 1);
        let many = [
            "a@example.test",
            "b@example.test",
            "c@example.test",
            "d@example.test",
        ];
        assert_eq!(send(&mut s, "a@example.org", &many), None);
        assert_eq!(send(&mut s, "a@example.org", &many), None);
        assert!(send(&mut s, "a@example.org", &many).is_some());
        assert_eq!(read_count(&s.host, "ip:192.0.2.1"), 2);
    }

    #[test]
    fn abandoned_transactions_are_not_counted() {
        let mut s = session(per_ip(1, "1m"));
        s.connect("192.0.2.1", 1);
        for _ in 0..5 {
            s.mail_from("a@example.org");
            assert_eq!(s.rcpt_to("u@example.test").verdict, Verdict::Continue);
            // RSET: the plugin is not called, nothing was counted.
        }
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
    }

    #[test]
    fn other_clients_have_their_own_count() {
        let mut s = session(per_ip(1, "1m"));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
        let mut other = RateLimit::init(&s.host).unwrap();
        other.on_connect(&s.host, &connect_info("192.0.2.2"));
        other.on_mail_from(&s.host, &mail_info("a@example.org"));
        assert_eq!(
            other.on_rcpt_to(&s.host, &rcpt_info()).verdict,
            Verdict::Continue
        );
    }

    #[test]
    fn sessions_from_one_client_count_together() {
        let mut s = session(per_ip(2, "1m"));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        // A second connection from the same address: a new plugin value, the same store.
        let mut second = RateLimit::init(&s.host).unwrap();
        second.on_connect(&s.host, &connect_info("192.0.2.1"));
        second.on_mail_from(&s.host, &mail_info("b@example.org"));
        assert_eq!(
            second.on_rcpt_to(&s.host, &rcpt_info()).verdict,
            Verdict::Continue
        );
        let envelope = Envelope {
            sender: Some("b@example.org".into()),
            recipients: vec!["u@example.test".into()],
        };
        let message = tidegate_plugin_sdk::inspect::ParsedMessage::parse(MESSAGE.to_vec());
        assert_eq!(
            second.on_data(&s.host, &envelope, &message).verdict,
            Verdict::Continue
        );
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
    }

    #[test]
    fn the_count_starts_again_when_the_window_ends() {
        let mut s = session(per_ip(2, "1m"));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        s.host.advance_ms(30_000);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
        // The window started with the first message: 30 s later it is over.
        s.host.advance_ms(30_000);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
    }

    #[test]
    fn refusals_do_not_extend_the_window() {
        let mut s = session(per_ip(1, "1m"));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        for _ in 0..10 {
            s.host.advance_ms(5_000);
            assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
        }
        s.host.advance_ms(10_000);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
    }

    #[test]
    fn per_sender_limits_count_a_sender_from_any_client_case_insensitively() {
        let mut s = session(json!({ "per_sender": { "limit": 2, "window": "1h" } }));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "Bulk@Example.org", &["u@example.test"]), None);
        assert_eq!(send(&mut s, "bulk@example.org", &["u@example.test"]), None);
        let reply = send(&mut s, "BULK@example.org", &["u@example.test"]).expect("deferred");
        assert_eq!((reply.code, reply.enhanced.as_str()), (451, "4.7.1"));
        assert!(reply.text.contains("<BULK@example.org>"), "{}", reply.text);
        assert_eq!(s.host.tag("rate_limit").as_deref(), Some("sender"));
        assert_eq!(send(&mut s, "other@example.org", &["u@example.test"]), None);
        assert!(
            !s.plugin.hooks().connect,
            "per-sender only needs no client address"
        );
    }

    #[test]
    fn the_null_sender_is_limited_only_per_ip() {
        let mut s = session(json!({
            "per_ip": { "limit": 3, "window": "1h" },
            "per_sender": { "limit": 1, "window": "1h" },
        }));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "", &["u@example.test"]), None);
        assert_eq!(send(&mut s, "", &["u@example.test"]), None);
        assert_eq!(send(&mut s, "", &["u@example.test"]), None);
        assert!(send(&mut s, "", &["u@example.test"]).is_some());
    }

    #[test]
    fn both_limits_apply_and_the_first_reached_refuses() {
        let mut s = session(json!({
            "per_ip": { "limit": 3, "window": "1h" },
            "per_sender": { "limit": 2, "window": "1h" },
        }));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        let reply = send(&mut s, "a@example.org", &["u@example.test"]).expect("sender limit");
        assert!(reply.text.contains("<a@example.org>"));
        assert_eq!(send(&mut s, "b@example.org", &["u@example.test"]), None);
        let reply = send(&mut s, "c@example.org", &["u@example.test"]).expect("ip limit");
        assert!(reply.text.contains("[192.0.2.1]"));
    }

    #[test]
    fn the_check_at_data_closes_the_race_between_sessions_and_does_not_count_the_refused() {
        let mut s = session(json!({
            "per_ip": { "limit": 1, "window": "1h" },
            "per_sender": { "limit": 5, "window": "1h" },
        }));
        s.connect("192.0.2.1", 1);
        // Two sessions pass RCPT while the count is still 0 ...
        let mut second = RateLimit::init(&s.host).unwrap();
        second.on_connect(&s.host, &connect_info("192.0.2.1"));
        second.on_mail_from(&s.host, &mail_info("a@example.org"));
        assert_eq!(
            second.on_rcpt_to(&s.host, &rcpt_info()).verdict,
            Verdict::Continue
        );
        s.mail_from("a@example.org");
        assert_eq!(s.rcpt_to("u@example.test").verdict, Verdict::Continue);
        // ... the first to finish DATA takes the slot, the other is deferred.
        assert_eq!(
            s.data(Some("a@example.org"), &["u@example.test"], MESSAGE)
                .verdict,
            Verdict::Continue
        );
        let envelope = Envelope {
            sender: Some("a@example.org".into()),
            recipients: vec!["u@example.test".into()],
        };
        let message = tidegate_plugin_sdk::inspect::ParsedMessage::parse(MESSAGE.to_vec());
        let Verdict::Tempfail(reply) = second.on_data(&s.host, &envelope, &message).verdict else {
            panic!("not deferred at DATA");
        };
        assert_eq!((reply.code, reply.enhanced.as_str()), (451, "4.7.1"));
        // The refused message gave its counts back.
        assert_eq!(read_count(&s.host, "ip:192.0.2.1"), 1);
        assert_eq!(read_count(&s.host, "sender:a@example.org"), 1);
    }

    #[test]
    fn data_counts_the_sender_mail_from_gave_even_if_the_envelope_was_rewritten() {
        let mut s = session(json!({ "per_sender": { "limit": 1, "window": "1h" } }));
        s.connect("192.0.2.1", 1);
        s.mail_from("a@example.org");
        s.rcpt_to("u@example.test");
        s.data(Some("rewritten@example.org"), &["u@example.test"], MESSAGE);
        assert_eq!(read_count(&s.host, "sender:a@example.org"), 1);
        assert_eq!(read_count(&s.host, "sender:rewritten@example.org"), 0);
        // Without a MAIL FROM seen in this transaction, the envelope's sender counts.
        s.data(Some("b@example.org"), &["u@example.test"], MESSAGE);
        assert_eq!(read_count(&s.host, "sender:b@example.org"), 1);
    }

    #[test]
    fn exempt_addresses_and_networks_are_never_limited_or_counted() {
        let config = json!({
            "per_ip": { "limit": 1, "window": "1h" },
            "per_sender": { "limit": 1, "window": "1h" },
            "exempt_ips": ["127.0.0.1", "10.0.0.0/8", "2001:db8::/32"],
        });
        for ip in [
            "127.0.0.1",
            "10.9.8.7",
            "2001:db8:ffff::1",
            "::ffff:10.0.0.1",
        ] {
            let mut s = session(config.clone());
            s.connect(ip, 1);
            for _ in 0..5 {
                assert_eq!(
                    send(&mut s, "a@example.org", &["u@example.test"]),
                    None,
                    "{ip}"
                );
            }
            assert_eq!(read_count(&s.host, "sender:a@example.org"), 0);
        }
        let mut s = session(config);
        s.connect("127.0.0.2", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
    }

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        let mut s = session(per_ip(1, "1h"));
        s.connect("2001:db8:1:2::1", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert_eq!(read_count(&s.host, "ip:2001:db8:1:2::/64"), 1);
        let mut same_net = RateLimit::init(&s.host).unwrap();
        same_net.on_connect(&s.host, &connect_info("2001:db8:1:2:ffff::9"));
        same_net.on_mail_from(&s.host, &mail_info("a@example.org"));
        assert!(matches!(
            same_net.on_rcpt_to(&s.host, &rcpt_info()).verdict,
            Verdict::Tempfail(_)
        ));
        let mut other_net = RateLimit::init(&s.host).unwrap();
        other_net.on_connect(&s.host, &connect_info("2001:db8:1:3::1"));
        other_net.on_mail_from(&s.host, &mail_info("a@example.org"));
        assert_eq!(
            other_net.on_rcpt_to(&s.host, &rcpt_info()).verdict,
            Verdict::Continue
        );

        let mut exact = session(json!({
            "per_ip": { "limit": 1, "window": "1h" }, "ipv6_prefix": 128
        }));
        exact.connect("2001:db8::1", 1);
        assert_eq!(send(&mut exact, "a@example.org", &["u@example.test"]), None);
        assert_eq!(read_count(&exact.host, "ip:2001:db8::1/128"), 1);
    }

    #[test]
    fn windows() {
        assert_eq!(Window::parse("30s"), Ok(Window { ms: 30_000 }));
        assert_eq!(Window::parse("5m"), Ok(Window { ms: 300_000 }));
        assert_eq!(Window::parse("1h"), Ok(Window { ms: 3_600_000 }));
        assert_eq!(Window::parse("1d"), Ok(Window { ms: 86_400_000 }));
        assert_eq!(Window::parse("250ms"), Ok(Window { ms: 250 }));
        for bad in [
            "",
            "1",
            "h",
            "1 h",
            "1w",
            "-1h",
            "1.5h",
            "0s",
            "99999999999999999999d",
        ] {
            assert!(Window::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn bad_configurations_are_refused_at_load_with_a_reason() {
        assert!(config_error(json!({})).contains("neither"));
        assert!(config_error(per_ip(0, "1h")).contains("at least 1"));
        assert!(config_error(per_ip(1, "1w")).contains("not a duration"));
        assert!(config_error(json!({ "per_ip": { "limit": 1 } })).contains("window"));
        assert!(
            config_error(json!({ "per_ip": { "limit": 1, "window": "1h", "burst": 2 } }))
                .contains("unknown field")
        );
        assert!(
            config_error(json!({ "per_ip": { "limit": -1, "window": "1h" } }))
                .contains("invalid value")
        );
        assert!(
            config_error(json!({ "per_ipp": { "limit": 1, "window": "1h" } }))
                .contains("unknown field")
        );
        assert!(
            config_error(json!({
                "per_ip": { "limit": 1, "window": "1h" }, "exempt_ips": ["localhost"]
            }))
            .contains("not an IP address")
        );
        assert!(
            config_error(json!({
                "per_ip": { "limit": 1, "window": "1h" }, "ipv6_prefix": 0
            }))
            .contains("ipv6_prefix")
        );
    }

    #[test]
    fn hooks_follow_the_configuration() {
        let s = session(per_ip(1, "1h"));
        assert_eq!(
            s.plugin.hooks(),
            Hooks {
                connect: true,
                rcpt_to: true,
                data: true,
                ..Hooks::default()
            }
        );
    }

    #[test]
    fn an_unparseable_client_address_is_limited_per_sender_only() {
        let mut s = session(json!({
            "per_ip": { "limit": 1, "window": "1h" },
            "per_sender": { "limit": 2, "window": "1h" },
        }));
        s.connect("unix-socket", 1);
        assert!(s.host.logs().iter().any(|(l, _)| *l == Level::Warn));
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
    }

    #[test]
    fn a_window_of_a_minute_is_a_minute() {
        let mut s = session(per_ip(1, "1m"));
        s.connect("192.0.2.1", 1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
        s.host.advance_ms(MINUTE - 1);
        assert!(send(&mut s, "a@example.org", &["u@example.test"]).is_some());
        s.host.advance_ms(1);
        assert_eq!(send(&mut s, "a@example.org", &["u@example.test"]), None);
    }

    fn connect_info(ip: &str) -> ConnectInfo {
        ConnectInfo {
            client_ip: ip.into(),
            client_port: 1,
            listener: "mx".into(),
            tls: false,
            reverse_dns: None,
        }
    }

    fn mail_info(sender: &str) -> MailFromInfo {
        MailFromInfo {
            sender: Some(sender.into()),
            params: Vec::new(),
        }
    }

    fn rcpt_info() -> RcptToInfo {
        RcptToInfo {
            recipient: "u@example.test".into(),
            params: Vec::new(),
        }
    }
}
