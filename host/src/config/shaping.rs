//! The outbound traffic shaping and egress tables: `[[shaping]]` (how fast, how much at
//! once and when each destination or mailbox provider is sent to, and how to react to what
//! it says) and `[[egress]]` (the local addresses mail leaves from, with their HELO names).
//!
//! # Precedence
//! A destination's policy is, in order: the `[[shaping]]` entry naming its recipient
//! domain in `domains` (or, for a smarthost route, its route in `routes`); else the entry
//! whose `mx_suffixes` has the longest suffix matching one of the domain's MX hosts (every
//! domain a provider hosts shares that entry's limits); else the entry with neither (the
//! default, at most one), applied to each destination on its own; else the built-in
//! default. A domain or route named by two entries, or two defaults, is a configuration
//! error.

use std::net::IpAddr;

use serde::Deserialize;

use super::{DomainName, Duration};

/// One `[[shaping]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapingConfig {
    /// Its name, in logs, metrics and `tidegate queue summary`.
    pub name: String,
    /// Recipient domains it applies to (exact).
    #[serde(default)]
    pub domains: Vec<DomainName>,
    /// Or: every domain with an MX host ending in one of these (a provider's domains).
    #[serde(default)]
    pub mx_suffixes: Vec<String>,
    /// Or: these smarthost routes.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Deliveries at once (connections); `[queue] max_per_destination` when absent.
    pub connections: Option<usize>,
    /// Transactions on one connection before it is closed.
    pub messages_per_connection: Option<u32>,
    /// Messages per minute (a token bucket refilled continuously).
    pub messages_per_minute: Option<u32>,
    /// Messages per hour (a second bucket).
    pub messages_per_hour: Option<u32>,
    /// Messages sent at once after a quiet spell (the buckets' depth; default 1 per
    /// started 10 per minute, so a rate is paced rather than sent in bursts).
    pub burst: Option<u32>,
    /// Recipients in one transaction; more make more transactions.
    pub recipients_per_message: Option<usize>,
    /// Hours of the day (UTC) it is delivered to, `HH:MM-HH:MM`; mail waits outside them.
    pub window: Option<Window>,
    /// What to do when its replies say "slow down".
    #[serde(default)]
    pub react: Vec<Reaction>,
    /// The `[[egress]]` pool its mail leaves from.
    pub egress: Option<String>,
}

impl ShapingConfig {
    /// Whether this is the default entry (it names no domain, provider or route).
    pub fn is_default(&self) -> bool {
        self.domains.is_empty() && self.mx_suffixes.is_empty() && self.routes.is_empty()
    }
}

/// A reaction to a reply (`react = [{ reply = "...", suspend = "10m" }]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reaction {
    /// A regular expression matched against the whole reply, `421 4.7.0 text...`.
    pub reply: Pattern,
    /// Stop delivering to the destination for this long.
    pub suspend: Option<Duration>,
    /// Multiply its rates by this (0 < rate < 1); they recover, doubling back every
    /// `recover` without a reply that matches.
    pub rate: Option<f64>,
    /// How long the lowered rate holds before it doubles back (default 5m).
    pub recover: Option<Duration>,
}

/// A regular expression, compiled when the configuration is read.
#[derive(Debug, Clone)]
pub struct Pattern(pub regex::Regex);

impl Pattern {
    /// Compiles `text`, with a bound on the compiled size.
    pub fn new(text: &str) -> Result<Pattern, String> {
        regex::RegexBuilder::new(text)
            .size_limit(1 << 20)
            .build()
            .map(Pattern)
            // The regex crate's message spans lines (with a caret under the spot): one
            // line for the configuration error.
            .map_err(|e| {
                let message: Vec<String> = e
                    .to_string()
                    .split_whitespace()
                    .map(str::to_owned)
                    .collect();
                format!("not a regular expression: {}", message.join(" "))
            })
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Pattern::new(&text).map_err(serde::de::Error::custom)
    }
}

/// Hours of the day, UTC: `08:00-20:00`; `22:00-06:00` spans midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct Window {
    /// Opens, in minutes after midnight.
    pub start: u32,
    /// Closes, in minutes after midnight.
    pub end: u32,
}

impl TryFrom<String> for Window {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        let bad = || format!("`{text}` is not a window of hours (write e.g. 08:00-20:00, UTC)");
        let minutes = |hhmm: &str| -> Option<u32> {
            let (h, m) = hhmm.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
        };
        let (start, end) = text.split_once('-').ok_or_else(bad)?;
        let (start, end) = (
            minutes(start).ok_or_else(bad)?,
            minutes(end).ok_or_else(bad)?,
        );
        if start == end {
            return Err(format!("`{text}` is an empty window"));
        }
        Ok(Window { start, end })
    }
}

impl Window {
    /// Whether the window is open at `minute` after midnight.
    pub fn is_open(&self, minute: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// Seconds from `secs_of_day` (seconds after midnight) until it opens; 0 when open.
    pub fn opens_in(&self, secs_of_day: u64) -> u64 {
        let minute = (secs_of_day / 60) as u32 % 1440;
        if self.is_open(minute) {
            return 0;
        }
        let start = u64::from(self.start) * 60;
        (start + 86_400 - secs_of_day % 86_400) % 86_400
    }
}

/// One `[[egress]]` pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {
    /// Its name (routes, shaping entries and `[delivery] egress` refer to it).
    pub name: String,
    /// The local addresses, chosen by weight among those of the next hop's family.
    pub addresses: Vec<EgressAddress>,
}

/// A local address of an egress pool.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressAddress {
    /// The address connections are made from.
    pub address: IpAddr,
    /// The name said in EHLO from it (its reverse DNS name, as receivers check);
    /// `[delivery] helo_name` or the hostname when absent.
    pub helo: Option<String>,
    /// Its share of the connections (default 1).
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Checks the tables against each other and the routes; the key and the problem.
pub(super) fn validate(
    shaping: &[ShapingConfig],
    egress: &[EgressConfig],
    routes: &[String],
    default_egress: Option<&str>,
) -> Result<(), (String, String)> {
    let mut pools = std::collections::HashSet::new();
    for (i, pool) in egress.iter().enumerate() {
        if pool.name.is_empty() || !pools.insert(pool.name.as_str()) {
            return Err((
                format!("egress[{i}].name"),
                format!("egress name `{}` is empty or used twice", pool.name),
            ));
        }
        if pool.addresses.is_empty() || pool.addresses.len() > 256 {
            return Err((
                format!("egress[{i}].addresses"),
                "an egress pool has 1 to 256 addresses".into(),
            ));
        }
        for (j, address) in pool.addresses.iter().enumerate() {
            if address.weight == 0 || address.weight > 1000 {
                return Err((
                    format!("egress[{i}].addresses[{j}].weight"),
                    "a weight is 1 to 1000".into(),
                ));
            }
            if address.address.is_unspecified() || address.address.is_multicast() {
                return Err((
                    format!("egress[{i}].addresses[{j}].address"),
                    format!("{} is not an address to send from", address.address),
                ));
            }
            if let Some(helo) = &address.helo
                && super::ascii_domain(helo).is_none_or(|h| h.is_empty() || !h.contains('.'))
            {
                return Err((
                    format!("egress[{i}].addresses[{j}].helo"),
                    format!("`{helo}` is not a host name"),
                ));
            }
        }
    }
    let known_pool = |name: &str| pools.contains(name);
    if let Some(name) = default_egress
        && !known_pool(name)
    {
        return Err((
            "delivery.egress".into(),
            format!("no [[egress]] is named `{name}`"),
        ));
    }
    let mut names = std::collections::HashSet::new();
    let mut domains = std::collections::HashMap::new();
    let mut suffixes = std::collections::HashMap::new();
    let mut shaped_routes = std::collections::HashMap::new();
    let mut default: Option<usize> = None;
    for (i, entry) in shaping.iter().enumerate() {
        let at = |key: &str| format!("shaping[{i}].{key}");
        if entry.name.is_empty()
            || !entry.name.bytes().all(|b| b.is_ascii_graphic())
            || !names.insert(entry.name.as_str())
        {
            return Err((
                at("name"),
                format!(
                    "shaping name `{}` is empty, not printable ASCII, or used twice",
                    entry.name
                ),
            ));
        }
        if entry.is_default() {
            if let Some(first) = default {
                return Err((
                    at("domains"),
                    format!(
                        "two default entries (neither domains, mx_suffixes nor routes): `{}` and `{}`",
                        shaping[first].name, entry.name
                    ),
                ));
            }
            default = Some(i);
        }
        for domain in &entry.domains {
            if let Some(other) = domains.insert(domain.as_str(), i) {
                return Err((
                    at("domains"),
                    format!(
                        "domain {domain} is in shaping `{}` too",
                        shaping[other].name
                    ),
                ));
            }
        }
        for suffix in &entry.mx_suffixes {
            let normal = suffix.trim_end_matches('.').to_ascii_lowercase();
            if normal.trim_start_matches('.').is_empty() || !normal.is_ascii() {
                return Err((
                    at("mx_suffixes"),
                    format!("`{suffix}` is not a host name suffix"),
                ));
            }
            if let Some(other) = suffixes.insert(normal, i) {
                return Err((
                    at("mx_suffixes"),
                    format!(
                        "MX suffix {suffix} is in shaping `{}` too",
                        shaping[other].name
                    ),
                ));
            }
        }
        for route in &entry.routes {
            if !routes.iter().any(|r| r == route) {
                return Err((at("routes"), format!("no [[route]] is named `{route}`")));
            }
            if let Some(other) = shaped_routes.insert(route.as_str(), i) {
                return Err((
                    at("routes"),
                    format!("route {route} is in shaping `{}` too", shaping[other].name),
                ));
            }
        }
        let positive = [
            ("connections", entry.connections.map(|n| n as u64)),
            (
                "messages_per_connection",
                entry.messages_per_connection.map(u64::from),
            ),
            (
                "messages_per_minute",
                entry.messages_per_minute.map(u64::from),
            ),
            ("messages_per_hour", entry.messages_per_hour.map(u64::from)),
            ("burst", entry.burst.map(u64::from)),
            (
                "recipients_per_message",
                entry.recipients_per_message.map(|n| n as u64),
            ),
        ];
        for (key, value) in positive {
            if value.is_some_and(|v| v == 0 || v > 1_000_000) {
                return Err((at(key), "must be 1 to 1000000".into()));
            }
        }
        if let Some(pool) = &entry.egress
            && !known_pool(pool)
        {
            return Err((at("egress"), format!("no [[egress]] is named `{pool}`")));
        }
        if entry.react.len() > 64 {
            return Err((at("react"), "at most 64 reactions".into()));
        }
        for (j, reaction) in entry.react.iter().enumerate() {
            if reaction.suspend.is_none() && reaction.rate.is_none() {
                return Err((
                    format!("shaping[{i}].react[{j}].reply"),
                    "a reaction suspends (`suspend`), lowers the rate (`rate`), or both".into(),
                ));
            }
            if reaction.rate.is_some_and(|r| !(r > 0.0 && r < 1.0)) {
                return Err((
                    format!("shaping[{i}].react[{j}].rate"),
                    "a rate factor is between 0 and 1 (0.5 halves the rates)".into(),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_open_and_close_across_midnight() {
        let day: Window = "08:00-20:00".to_owned().try_into().unwrap();
        assert!(day.is_open(8 * 60) && !day.is_open(20 * 60) && !day.is_open(7 * 60 + 59));
        assert_eq!(day.opens_in(7 * 3600), 3600);
        assert_eq!(day.opens_in(21 * 3600), 11 * 3600);
        assert_eq!(day.opens_in(9 * 3600), 0);
        let night: Window = "22:00-06:00".to_owned().try_into().unwrap();
        assert!(night.is_open(23 * 60) && night.is_open(60) && !night.is_open(12 * 60));
        for bad in ["8-20", "08:00", "25:00-01:00", "08:00-08:00", "08:61-09:00"] {
            assert!(Window::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
