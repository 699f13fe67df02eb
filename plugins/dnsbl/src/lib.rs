//! `dnsbl`: refuses clients listed in DNS blocklists (RFC 5782) when they connect.
//!
//! ```toml
//! [[plugin]]
//! name = "dnsbl"
//! path = "plugins/dist/dnsbl.wasm"
//! [plugin.config]
//! # Queried in order; the first listing decides. A zone is a name, or a table that
//! # counts only some answers as a listing.
//! zones = ["bl.example.test", { zone = "zen.spamhaus.org", match = ["127.0.0.2", "127.0.0.3"] }]
//! # The refusal, as a string or as { code = 554, enhanced = "5.7.1", text = "..." };
//! # `{ip}` and `{zone}` are replaced. A 4xx code turns the refusal into a tempfail.
//! reply = "554 5.7.1 Service unavailable; client [{ip}] blocked using {zone}"
//! on_dns_error = "continue"   # or "tempfail": 421 4.4.3 when no zone could be asked
//! check_private = false       # also check loopback and private addresses
//! ```
//!
//! For a client `192.0.2.99` and the zone `bl.example.test` the plugin asks for the A record
//! of `99.2.0.192.bl.example.test`; for IPv6 the 32 nibbles of the address in reverse order
//! (RFC 5782 §2.4). An answer in `127.0.0.0/8` means "listed" (RFC 5782 §2.1), unless the
//! zone has a `match` list, in which case only the answers in it count. Answers outside
//! `127.0.0.0/8` are ignored: they are what a resolver that rewrites NXDOMAIN returns, not
//! a listing. Answers in `127.255.255.0/24` are how some lists (Spamhaus) say "your query
//! was refused" (public resolver, over quota): they are treated as a DNS error, never as a
//! listing, and logged as a warning.
//!
//! A listed client gets the refusal instead of the greeting and the connection is closed
//! (RFC 5321 §3.1 allows a 554 in place of the 220). The plugin sets the tag
//! `dnsbl=<zone>`, logs the listing and adds to the counter `dnsbl_listed`.
//!
//! A DNS failure (timeout, SERVFAIL, refused) must not stop mail: by default the zone is
//! skipped (`on_dns_error = "continue"`, counted in `dnsbl_dns_errors`). With `"tempfail"`,
//! a client that no zone listed but some zone could not be asked about gets
//! `421 4.4.3` and may come back later. A listing in another zone still wins.
//!
//! Loopback, private (RFC 1918, RFC 4193), link-local, shared (RFC 6598) and unspecified
//! addresses are never listed in public zones, so they are not looked up unless
//! `check_private = true` (which the end-to-end tests, whose clients are `127.x`, use).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use tidegate_plugin_sdk::prelude::*;

/// The host refuses reply texts longer than this.
const MAX_REPLY_TEXT: usize = 400;
/// The longest zone name: the IPv6 query prefix (32 nibbles and their dots) must still fit
/// in a 253-octet name.
const MAX_ZONE_LEN: usize = 253 - 64;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The zones, queried in order.
    pub zones: Vec<Zone>,
    /// The refusal for a listed client.
    #[serde(default)]
    pub reply: ReplyTemplate,
    /// What a failed lookup means.
    #[serde(default)]
    pub on_dns_error: OnDnsError,
    /// Whether loopback and private addresses are looked up too.
    #[serde(default)]
    pub check_private: bool,
}

/// What a DNS failure means for the client.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnDnsError {
    /// Skip the zone: an outage of a blocklist must not stop mail (the default).
    #[default]
    Continue,
    /// Answer `421 4.4.3` if no zone listed the client and some zone could not be asked.
    Tempfail,
}

/// One blocklist zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Zone {
    /// The zone name, lowercase, without a trailing dot.
    pub name: String,
    /// If not empty, only these answers mean "listed".
    pub matches: Vec<Ipv4Addr>,
}

impl Zone {
    /// Checks and normalises a zone name and its `match` list.
    pub fn new(name: &str, matches: &[String]) -> Result<Zone, String> {
        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
        if name.is_empty() {
            return Err("empty zone name".into());
        }
        if name.len() > MAX_ZONE_LEN {
            return Err(format!(
                "zone `{name}` is longer than {MAX_ZONE_LEN} characters"
            ));
        }
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if !name.split('.').all(label_ok) {
            return Err(format!("zone `{name}` is not a valid DNS name"));
        }
        let matches = matches
            .iter()
            .map(|m| match m.trim().parse::<Ipv4Addr>() {
                Ok(ip) if ip.octets()[0] == 127 => Ok(ip),
                Ok(_) => Err(format!(
                    "match `{m}` of zone `{name}` is not in 127.0.0.0/8 (RFC 5782 §2.1)"
                )),
                Err(_) => Err(format!(
                    "match `{m}` of zone `{name}` is not an IPv4 address"
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Zone { name, matches })
    }
}

/// `zone = "name"` or `{ zone = "name", match = [...] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZoneTable {
    zone: String,
    #[serde(default, rename = "match")]
    matches: Vec<String>,
}

impl<'de> Deserialize<'de> for Zone {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Zone, D::Error> {
        struct ZoneVisitor;
        impl<'de> Visitor<'de> for ZoneVisitor {
            type Value = Zone;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(r#"a zone name or a table { zone = "...", match = ["127.0.0.2"] }"#)
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Zone, E> {
                Zone::new(value, &[]).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Zone, A::Error> {
                let table = ZoneTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Zone::new(&table.zone, &table.matches).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(ZoneVisitor)
    }
}

/// The refusal for a listed client, with `{ip}` and `{zone}` in its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTemplate {
    /// 5xx (reject) or 4xx (tempfail).
    pub code: u16,
    /// The RFC 3463 enhanced code; its class matches `code`.
    pub enhanced: String,
    /// The text, with placeholders.
    pub text: String,
}

impl Default for ReplyTemplate {
    fn default() -> Self {
        ReplyTemplate {
            code: 554,
            enhanced: "5.7.1".into(),
            text: "Service unavailable; client [{ip}] blocked using {zone}".into(),
        }
    }
}

impl ReplyTemplate {
    /// Checks a reply: a 4xx or 5xx code, an enhanced code of the same class, a text
    /// without control characters.
    pub fn new(code: u16, enhanced: &str, text: &str) -> Result<ReplyTemplate, String> {
        if !(400..=599).contains(&code) {
            return Err(format!("reply code {code} is not 4xx or 5xx"));
        }
        let parts: Vec<&str> = enhanced.split('.').collect();
        let enhanced_ok = parts.len() == 3
            && parts[0] == (code / 100).to_string()
            && parts[1..]
                .iter()
                .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        if !enhanced_ok {
            return Err(format!(
                "enhanced code `{enhanced}` is not {}.x.y",
                code / 100
            ));
        }
        if text.chars().any(char::is_control) || text.len() > 200 {
            return Err("reply text has control characters or is over 200 characters".into());
        }
        Ok(ReplyTemplate {
            code,
            enhanced: enhanced.to_owned(),
            text: text.to_owned(),
        })
    }

    /// Parses `"554 5.7.1 Some text"`.
    pub fn parse(line: &str) -> Result<ReplyTemplate, String> {
        let mut parts = line.trim().splitn(3, ' ');
        let code = parts
            .next()
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| format!("reply `{line}` does not start with a code such as 554"))?;
        let enhanced = parts.next().unwrap_or_default();
        let text = parts.next().unwrap_or_default().trim();
        ReplyTemplate::new(code, enhanced, text)
    }

    /// The verdict for a client listed in `zone`.
    pub fn verdict(&self, ip: &str, zone: &str) -> Verdict {
        let mut text = self.text.replace("{ip}", ip).replace("{zone}", zone);
        if text.len() > MAX_REPLY_TEXT {
            let mut end = MAX_REPLY_TEXT;
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let reply = Reply {
            code: self.code,
            enhanced: self.enhanced.clone(),
            text,
        };
        if self.code >= 500 {
            Verdict::Reject(reply)
        } else {
            Verdict::Tempfail(reply)
        }
    }
}

/// `{ code = 554, enhanced = "5.7.1", text = "..." }`, every key optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplyTable {
    code: Option<u16>,
    enhanced: Option<String>,
    text: Option<String>,
}

impl<'de> Deserialize<'de> for ReplyTemplate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<ReplyTemplate, D::Error> {
        struct ReplyVisitor;
        impl<'de> Visitor<'de> for ReplyVisitor {
            type Value = ReplyTemplate;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    r#""554 5.7.1 text" or a table { code = 554, enhanced = "5.7.1", text = "..." }"#,
                )
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<ReplyTemplate, E> {
                ReplyTemplate::parse(value).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ReplyTemplate, A::Error> {
                let table = ReplyTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let default = ReplyTemplate::default();
                let code = table.code.unwrap_or(default.code);
                // A 4xx code without an enhanced code gets the 4xx twin of the default.
                let enhanced = table
                    .enhanced
                    .unwrap_or_else(|| format!("{}.7.1", code / 100));
                let text = table.text.unwrap_or(default.text);
                ReplyTemplate::new(code, &enhanced, &text).map_err(de::Error::custom)
            }
        }
        deserializer.deserialize_any(ReplyVisitor)
    }
}

/// What one zone said about a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Listed; the answer that counted.
    Listed(Ipv4Addr),
    /// Not listed (NXDOMAIN, no A record, or only answers that do not count).
    NotListed,
    /// The zone could not be asked, or refused to answer.
    Failed(String),
}

/// The name to look up for `ip` in `zone` (RFC 5782 §2.1, §2.4).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let mut name = String::with_capacity(64 + zone.len() + 1);
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            for octet in v4.octets().iter().rev() {
                name.push_str(&octet.to_string());
                name.push('.');
            }
        }
        IpAddr::V6(v6) => {
            for byte in v6.octets().iter().rev() {
                for nibble in [byte & 0x0f, byte >> 4] {
                    name.push(char::from_digit(u32::from(nibble), 16).unwrap_or('0'));
                    name.push('.');
                }
            }
        }
    }
    name.push_str(zone);
    name
}

/// Whether an address is never listed in public zones: loopback, private, link-local,
/// shared address space, unspecified, broadcast.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_loopback()
                || v6.is_unspecified()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
        }
    }
}

/// Decides what the answers of an A lookup mean for `zone`.
pub fn classify(zone: &Zone, answer: Result<Vec<String>, DnsError>) -> Lookup {
    let answers = match answer {
        Ok(answers) => answers,
        Err(DnsError::NotFound | DnsError::NoRecords) => return Lookup::NotListed,
        Err(DnsError::Temporary(why)) => return Lookup::Failed(why),
        Err(DnsError::Invalid(why)) => return Lookup::Failed(format!("invalid query: {why}")),
    };
    let addresses: Vec<Ipv4Addr> = answers
        .iter()
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .collect();
    if let Some(refusal) = addresses
        .iter()
        .find(|a| a.octets()[..3] == [127, 255, 255])
    {
        return Lookup::Failed(format!(
            "the zone refused the query (answer {refusal}): check the resolver and any access key"
        ));
    }
    let counts = |a: &Ipv4Addr| {
        a.octets()[0] == 127 && (zone.matches.is_empty() || zone.matches.contains(a))
    };
    match addresses.into_iter().find(counts) {
        Some(listed) => Lookup::Listed(listed),
        None => Lookup::NotListed,
    }
}

/// The plugin.
pub struct Dnsbl {
    config: Config,
}

impl Plugin for Dnsbl {
    fn init(host: &dyn Host) -> Result<Self, String> {
        let config: Config = host.config()?;
        if config.zones.is_empty() {
            return Err("dnsbl: `zones` lists no zone".into());
        }
        Ok(Dnsbl { config })
    }

    /// Nothing here is per session: the checked configuration serves every session.
    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            connect: true,
            ..Hooks::default()
        }
    }

    fn on_connect(&mut self, host: &dyn Host, info: &ConnectInfo) -> Response {
        let Ok(ip) = info.client_ip.parse::<IpAddr>() else {
            host.log(
                Level::Warn,
                "client address is not an IP address, not checked",
                &[("ip", &info.client_ip)],
            );
            return Response::next();
        };
        let ip = ip.to_canonical();
        if !self.config.check_private && is_private(ip) {
            return Response::next();
        }
        host.counter_add("dnsbl_checked", 1);
        let ip_text = ip.to_string();
        let mut failed = false;
        // Every zone is asked at once: the session waits for the slowest, not the sum.
        let names: Vec<String> = self
            .config
            .zones
            .iter()
            .map(|zone| query_name(ip, &zone.name))
            .collect();
        let queries: Vec<(&str, RecordType)> =
            names.iter().map(|n| (n.as_str(), RecordType::A)).collect();
        let answers = host.resolve_many(&queries);
        for (zone, answer) in self.config.zones.iter().zip(answers) {
            match classify(zone, answer) {
                Lookup::Listed(answer) => {
                    let answer = answer.to_string();
                    host.log(
                        Level::Info,
                        "client listed",
                        &[("ip", &ip_text), ("zone", &zone.name), ("answer", &answer)],
                    );
                    host.counter_add("dnsbl_listed", 1);
                    return Response::from(self.config.reply.verdict(&ip_text, &zone.name))
                        .tag("dnsbl", &zone.name);
                }
                Lookup::NotListed => {}
                Lookup::Failed(why) => {
                    host.log(
                        Level::Warn,
                        "blocklist lookup failed",
                        &[("ip", &ip_text), ("zone", &zone.name), ("error", &why)],
                    );
                    host.counter_add("dnsbl_dns_errors", 1);
                    failed = true;
                }
            }
        }
        if failed && self.config.on_dns_error == OnDnsError::Tempfail {
            return Verdict::tempfail(421, "4.4.3", "DNS blocklist lookup failed, try again later")
                .into();
        }
        Response::next()
    }
}

tidegate_plugin_sdk::export!(Dnsbl);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    const LISTED_V4: &str = "2.0.0.127.bl.example.test";

    fn session(host: TestHost) -> Harness<Dnsbl> {
        Harness::new(host).expect("config accepted")
    }

    fn config_error(config: serde_json::Value) -> String {
        match Harness::<Dnsbl>::new(TestHost::new().with_config(config)) {
            Ok(_) => panic!("config accepted"),
            Err(e) => e,
        }
    }

    fn reply_of(response: &Response) -> &Reply {
        match &response.verdict {
            Verdict::Reject(reply) | Verdict::Tempfail(reply) => reply,
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[test]
    fn ipv4_query_names_reverse_the_octets() {
        let ip: IpAddr = "192.0.2.99".parse().unwrap();
        assert_eq!(
            query_name(ip, "bl.example.test"),
            "99.2.0.192.bl.example.test"
        );
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(
            query_name(ip, "zen.example.test"),
            "2.0.0.127.zen.example.test"
        );
    }

    #[test]
    fn ipv6_query_names_reverse_the_nibbles() {
        // RFC 5782 §2.4: every nibble, low-order first, as in ip6.arpa.
        let ip: IpAddr = "2001:db8:1:2:3:4:567:89ab".parse().unwrap();
        assert_eq!(
            query_name(ip, "ugly.example.com"),
            "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ugly.example.com"
        );
        let name = query_name("::1".parse().unwrap(), "z.test");
        assert_eq!(name.matches('.').count(), 33);
        assert!(name.starts_with("1.0.0.0."));
    }

    #[test]
    fn ipv4_mapped_ipv6_clients_are_queried_as_ipv4() {
        let ip: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(query_name(ip, "bl.test"), "1.2.0.192.bl.test");
    }

    #[test]
    fn a_listed_client_is_rejected_with_554_5_7_1_naming_the_zone() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["bl.example.test"], "check_private": true }))
            .with_dns(LISTED_V4, RecordType::A, Ok(vec!["127.0.0.2"]));
        let mut s = session(host);
        let response = s.connect("127.0.0.2", 40000);
        let Verdict::Reject(reply) = &response.verdict else {
            panic!("not rejected: {response:?}");
        };
        assert_eq!((reply.code, reply.enhanced.as_str()), (554, "5.7.1"));
        assert!(reply.text.contains("bl.example.test"), "{}", reply.text);
        assert!(reply.text.contains("[127.0.0.2]"), "{}", reply.text);
        assert_eq!(s.host.tag("dnsbl").as_deref(), Some("bl.example.test"));
        assert_eq!(s.host.counter("dnsbl_listed"), 1);
        assert!(s.host.logs().iter().any(|(l, m)| *l == Level::Info
            && m.contains("client listed")
            && m.contains("zone=bl.example.test")));
    }

    #[test]
    fn an_unlisted_client_goes_on() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["bl.example.test"], "check_private": true }))
            .with_dns(LISTED_V4, RecordType::A, Ok(vec!["127.0.0.2"]));
        let mut s = session(host);
        assert_eq!(s.connect("127.0.0.1", 40000), Response::next());
        assert_eq!(s.host.counter("dnsbl_listed"), 0);
        assert_eq!(s.host.counter("dnsbl_checked"), 1);
        assert_eq!(s.host.tag("dnsbl"), None);
    }

    #[test]
    fn no_records_is_not_a_listing() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["bl.example.test"] }))
            .with_dns(
                "1.2.0.192.bl.example.test",
                RecordType::A,
                Err(DnsError::NoRecords),
            );
        assert_eq!(session(host).connect("192.0.2.1", 1), Response::next());
    }

    #[test]
    fn zones_are_asked_in_order_and_the_first_listing_names_the_zone() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["one.test", "two.test", "three.test"] }))
            .with_dns("1.2.0.192.two.test", RecordType::A, Ok(vec!["127.0.0.4"]))
            .with_dns("1.2.0.192.three.test", RecordType::A, Ok(vec!["127.0.0.2"]));
        let mut s = session(host);
        let response = s.connect("192.0.2.1", 1);
        assert!(reply_of(&response).text.contains("two.test"));
        assert_eq!(s.host.tag("dnsbl").as_deref(), Some("two.test"));
    }

    #[test]
    fn ipv6_clients_are_looked_up_by_nibbles() {
        let ip = "2001:db8::1";
        let name = query_name(ip.parse().unwrap(), "bl.example.test");
        let host = TestHost::new()
            .with_config(json!({ "zones": ["bl.example.test"] }))
            .with_dns(&name, RecordType::A, Ok(vec!["127.0.0.2"]));
        let mut s = session(host);
        let response = s.connect(ip, 1);
        assert!(reply_of(&response).text.contains("[2001:db8::1]"));
    }

    #[test]
    fn private_and_loopback_clients_are_skipped_unless_asked_for() {
        let host = || {
            TestHost::new()
                .with_dns(LISTED_V4, RecordType::A, Ok(vec!["127.0.0.2"]))
                .with_dns(
                    "1.0.0.10.bl.example.test",
                    RecordType::A,
                    Ok(vec!["127.0.0.2"]),
                )
        };
        let mut s = session(host().with_config(json!({ "zones": ["bl.example.test"] })));
        assert_eq!(s.connect("127.0.0.2", 1), Response::next());
        assert_eq!(s.connect("10.0.0.1", 1), Response::next());
        assert_eq!(s.host.counter("dnsbl_checked"), 0);
        let mut s = session(
            host().with_config(json!({ "zones": ["bl.example.test"], "check_private": true })),
        );
        assert!(matches!(
            s.connect("127.0.0.2", 1).verdict,
            Verdict::Reject(_)
        ));
        assert!(matches!(
            s.connect("10.0.0.1", 1).verdict,
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn private_ranges() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.255",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fc00::1",
            "fe80::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip} should be private");
        }
        for ip in [
            "192.0.2.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2001:db8::1",
            "2a00::1",
            "::ffff:8.8.8.8",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip} should be public");
        }
    }

    #[test]
    fn only_answers_in_the_match_list_count() {
        let config = json!({
            "zones": [{ "zone": "zen.example.test", "match": ["127.0.0.2", "127.0.0.3"] }]
        });
        let host = TestHost::new()
            .with_config(config.clone())
            .with_dns(
                "1.2.0.192.zen.example.test",
                RecordType::A,
                Ok(vec!["127.0.0.10"]),
            )
            .with_dns(
                "2.2.0.192.zen.example.test",
                RecordType::A,
                Ok(vec!["127.0.0.10", "127.0.0.3"]),
            );
        let mut s = session(host);
        assert_eq!(s.connect("192.0.2.1", 1), Response::next());
        assert!(matches!(
            s.connect("192.0.2.2", 1).verdict,
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn answers_outside_127_8_are_ignored() {
        // What a resolver that rewrites NXDOMAIN to an advertising page answers.
        let host = TestHost::new()
            .with_config(json!({ "zones": ["bl.example.test"], "on_dns_error": "tempfail" }))
            .with_dns(
                "1.2.0.192.bl.example.test",
                RecordType::A,
                Ok(vec!["198.51.100.7"]),
            );
        assert_eq!(session(host).connect("192.0.2.1", 1), Response::next());
    }

    #[test]
    fn refusal_answers_in_127_255_255_are_errors_not_listings() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["zen.example.test"] }))
            .with_dns(
                "1.2.0.192.zen.example.test",
                RecordType::A,
                Ok(vec!["127.255.255.254"]),
            );
        let mut s = session(host);
        assert_eq!(s.connect("192.0.2.1", 1), Response::next());
        assert_eq!(s.host.counter("dnsbl_dns_errors"), 1);
        assert!(
            s.host
                .logs()
                .iter()
                .any(|(l, m)| *l == Level::Warn && m.contains("refused the query"))
        );
    }

    #[test]
    fn dns_errors_continue_by_default() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["bl.example.test"] }))
            .with_dns(
                "1.2.0.192.bl.example.test",
                RecordType::A,
                Err(DnsError::Temporary("timed out".into())),
            );
        let mut s = session(host);
        assert_eq!(s.connect("192.0.2.1", 1), Response::next());
        assert_eq!(s.host.counter("dnsbl_dns_errors"), 1);
        assert!(
            s.host
                .logs()
                .iter()
                .any(|(l, m)| *l == Level::Warn && m.contains("timed out"))
        );
    }

    #[test]
    fn dns_errors_tempfail_with_421_4_4_3_when_configured() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["down.test", "up.test"], "on_dns_error": "tempfail" }))
            .with_dns(
                "1.2.0.192.down.test",
                RecordType::A,
                Err(DnsError::Temporary("SERVFAIL".into())),
            );
        let mut s = session(host);
        let response = s.connect("192.0.2.1", 1);
        let Verdict::Tempfail(reply) = &response.verdict else {
            panic!("not a tempfail: {response:?}");
        };
        assert_eq!((reply.code, reply.enhanced.as_str()), (421, "4.4.3"));
    }

    #[test]
    fn a_listing_wins_over_an_error_in_another_zone() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["down.test", "up.test"], "on_dns_error": "tempfail" }))
            .with_dns(
                "1.2.0.192.down.test",
                RecordType::A,
                Err(DnsError::Temporary("SERVFAIL".into())),
            )
            .with_dns("1.2.0.192.up.test", RecordType::A, Ok(vec!["127.0.0.2"]));
        let response = session(host).connect("192.0.2.1", 1);
        assert_eq!(reply_of(&response).code, 554);
    }

    #[test]
    fn the_reply_can_be_set_as_a_string_with_placeholders() {
        let host = TestHost::new()
            .with_config(json!({
                "zones": ["bl.example.test"],
                "reply": "550 5.7.1 {ip} is listed at {zone}, see https://{zone}/lookup",
            }))
            .with_dns(
                "1.2.0.192.bl.example.test",
                RecordType::A,
                Ok(vec!["127.0.0.2"]),
            );
        let response = session(host).connect("192.0.2.1", 1);
        let reply = reply_of(&response);
        assert_eq!((reply.code, reply.enhanced.as_str()), (550, "5.7.1"));
        assert_eq!(
            reply.text,
            "192.0.2.1 is listed at bl.example.test, see https://bl.example.test/lookup"
        );
    }

    #[test]
    fn the_reply_can_be_set_as_a_table_and_a_4xx_code_tempfails() {
        let host = TestHost::new()
            .with_config(json!({
                "zones": ["bl.example.test"],
                "reply": { "code": 421, "text": "Try later, {ip}" },
            }))
            .with_dns(
                "1.2.0.192.bl.example.test",
                RecordType::A,
                Ok(vec!["127.0.0.2"]),
            );
        let response = session(host).connect("192.0.2.1", 1);
        let Verdict::Tempfail(reply) = &response.verdict else {
            panic!("not a tempfail: {response:?}");
        };
        assert_eq!(
            (reply.code, reply.enhanced.as_str(), reply.text.as_str()),
            (421, "4.7.1", "Try later, 192.0.2.1")
        );
    }

    #[test]
    fn long_replies_are_cut_to_what_the_host_accepts() {
        let template = ReplyTemplate::new(554, "5.7.1", &"{zone}".repeat(33)).unwrap();
        let zone = "a".repeat(60);
        let Verdict::Reject(reply) = template.verdict("192.0.2.1", &zone) else {
            panic!("not a reject");
        };
        assert_eq!(reply.text.len(), MAX_REPLY_TEXT);
    }

    #[test]
    fn zone_names_are_normalised() {
        let host = TestHost::new()
            .with_config(json!({ "zones": ["BL.Example.TEST."] }))
            .with_dns(
                "1.2.0.192.bl.example.test",
                RecordType::A,
                Ok(vec!["127.0.0.2"]),
            );
        let mut s = session(host);
        assert!(matches!(
            s.connect("192.0.2.1", 1).verdict,
            Verdict::Reject(_)
        ));
        assert_eq!(s.host.tag("dnsbl").as_deref(), Some("bl.example.test"));
    }

    #[test]
    fn bad_configurations_are_refused_at_load_with_a_reason() {
        assert!(config_error(json!({})).contains("zones"));
        assert!(config_error(json!({ "zones": [] })).contains("no zone"));
        assert!(
            config_error(json!({ "zones": ["bl.test"], "zone": [] })).contains("unknown field")
        );
        assert!(config_error(json!({ "zones": [""] })).contains("empty zone"));
        assert!(
            config_error(json!({ "zones": ["bad name.test"] })).contains("not a valid DNS name")
        );
        assert!(config_error(json!({ "zones": ["a..test"] })).contains("not a valid DNS name"));
        assert!(
            config_error(json!({ "zones": [format!("{}.test", "a.".repeat(100))] }))
                .contains("longer than")
        );
        assert!(
            config_error(json!({ "zones": [{ "zone": "z.test", "match": ["10.0.0.2"] }] }))
                .contains("127.0.0.0/8")
        );
        assert!(
            config_error(json!({ "zones": [{ "zone": "z.test", "match": ["nope"] }] }))
                .contains("not an IPv4 address")
        );
        assert!(
            config_error(json!({ "zones": [{ "zone": "z.test", "matches": [] }] }))
                .contains("unknown field")
        );
        assert!(config_error(json!({ "zones": [42] })).contains("zone name or a table"));
        assert!(
            config_error(json!({ "zones": ["z.test"], "reply": "250 2.0.0 ok" }))
                .contains("not 4xx or 5xx")
        );
        assert!(
            config_error(json!({ "zones": ["z.test"], "reply": "554 4.7.1 mixed" }))
                .contains("is not 5.x.y")
        );
        assert!(
            config_error(json!({ "zones": ["z.test"], "reply": "blocked" }))
                .contains("does not start with a code")
        );
        assert!(
            config_error(json!({ "zones": ["z.test"], "reply": { "code": 554, "txt": "x" } }))
                .contains("unknown field")
        );
        assert!(
            config_error(json!({ "zones": ["z.test"], "reply": { "text": "a\r\nb" } }))
                .contains("control characters")
        );
        assert!(
            config_error(json!({ "zones": ["z.test"], "on_dns_error": "ignore" }))
                .contains("unknown variant")
        );
    }

    #[test]
    fn the_defaults_are_554_5_7_1_and_continue() {
        let config: Config = serde_json::from_value(json!({ "zones": ["z.test"] })).unwrap();
        assert_eq!(config.reply, ReplyTemplate::default());
        assert_eq!(config.on_dns_error, OnDnsError::Continue);
        assert!(!config.check_private);
        let plugin =
            Harness::<Dnsbl>::new(TestHost::new().with_config(json!({ "zones": ["z.test"] })))
                .unwrap();
        assert_eq!(
            plugin.plugin.hooks(),
            Hooks {
                connect: true,
                ..Hooks::default()
            }
        );
    }

    #[test]
    fn an_unparseable_client_address_is_logged_and_let_through() {
        let mut s = session(TestHost::new().with_config(json!({ "zones": ["z.test"] })));
        assert_eq!(s.connect("not-an-ip", 1), Response::next());
        assert!(s.host.logs().iter().any(|(l, _)| *l == Level::Warn));
    }
}
