//! Traffic shaping: the policy a destination is sent to under (`[[shaping]]`, see
//! `config/shaping.rs` for the precedence), and the pace state each destination's gate
//! keeps: token buckets for the rates, a suspension and a lowered rate after a reply that
//! matched a reaction, and the delivery window.
//!
//! The state lives in the destination's gate ([`super::destinations`]): a message that
//! may not go now (no token, suspended, outside its window) parks on the gate like one
//! that found no free slot, costing nothing, and the gate's pacer wakes it when it may.

use std::sync::Arc;

use crate::config::{Config, Reaction, Window};

use super::routing::Destination;

/// Deliveries at once to a destination without an entry of its own, and per connection.
const BUILT_IN_MESSAGES_PER_CONNECTION: u32 = 100;
/// Recipients per transaction without an entry saying otherwise: what RFC 5321 §4.5.3.1.8
/// says every server must take.
const BUILT_IN_RECIPIENTS_PER_MESSAGE: usize = 100;
/// How long a lowered rate holds before it doubles back, unless the reaction says.
const DEFAULT_RECOVER_MS: u64 = 5 * 60 * 1000;
/// The lowest a rate is lowered to, as a fraction.
const MIN_FACTOR: f64 = 1.0 / 64.0;

/// What a destination is sent under.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// The entry's name (`built-in` without one), for logs and metrics.
    pub(crate) name: Arc<str>,
    /// The gate it shares: an entry naming domains, providers or routes is one gate for
    /// all of them; the default entry and the built-in one give each destination its own.
    pub(crate) key: String,
    /// Deliveries at once.
    pub(crate) connections: usize,
    /// Transactions per connection.
    pub(crate) messages_per_connection: u32,
    /// Recipients per transaction.
    pub(crate) recipients_per_message: usize,
    /// The rates, if any.
    pub(crate) rates: Rates,
    /// The hours it is delivered to.
    pub(crate) window: Option<Window>,
    /// Reactions to replies.
    pub(crate) react: Arc<[Reaction]>,
    /// The egress pool, if the entry names one.
    pub(crate) egress: Option<String>,
}

/// Messages per minute and per hour, and the burst.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Rates {
    pub(crate) per_minute: Option<u32>,
    pub(crate) per_hour: Option<u32>,
    pub(crate) burst: Option<u32>,
}

impl Rates {
    fn none() -> Rates {
        Rates {
            per_minute: None,
            per_hour: None,
            burst: None,
        }
    }

    fn is_limited(&self) -> bool {
        self.per_minute.is_some() || self.per_hour.is_some()
    }
}

/// The policy of `destination`; `mx_hosts` are its MX host names (for provider rules;
/// empty when not looked up).
pub(super) fn policy_for(
    config: &Config,
    destination: &Destination,
    mx_hosts: &[String],
) -> Policy {
    let own_key = destination.limit_key();
    let entries = &config.shaping;
    let by_name = match destination {
        Destination::Mx { domain } => entries
            .iter()
            .find(|e| e.domains.iter().any(|d| d.as_str() == domain)),
        Destination::Smarthost { route, .. } => {
            entries.iter().find(|e| e.routes.iter().any(|r| r == route))
        }
        _ => None,
    };
    let by_provider = || {
        let mut best: Option<(usize, &crate::config::ShapingConfig)> = None;
        for entry in entries {
            for suffix in &entry.mx_suffixes {
                let suffix = suffix.trim_end_matches('.').to_ascii_lowercase();
                let matches = mx_hosts.iter().any(|host| {
                    let host = host.trim_end_matches('.').to_ascii_lowercase();
                    host == suffix.trim_start_matches('.')
                        || host.ends_with(&format!(".{}", suffix.trim_start_matches('.')))
                });
                if matches && best.is_none_or(|(len, _)| suffix.len() > len) {
                    best = Some((suffix.len(), entry));
                }
            }
        }
        best.map(|(_, e)| e)
    };
    let shared = match destination {
        Destination::Mx { .. } => by_name.or_else(by_provider),
        _ => by_name,
    };
    let (entry, key) = match shared {
        Some(entry) => (Some(entry), format!("shape:{}", entry.name)),
        None => (
            matches!(
                destination,
                Destination::Mx { .. } | Destination::Smarthost { .. }
            )
            .then(|| entries.iter().find(|e| e.is_default()))
            .flatten(),
            own_key,
        ),
    };
    match entry {
        Some(entry) => Policy {
            name: Arc::from(entry.name.as_str()),
            key,
            connections: entry
                .connections
                .unwrap_or(config.queue.max_per_destination),
            messages_per_connection: entry
                .messages_per_connection
                .unwrap_or(BUILT_IN_MESSAGES_PER_CONNECTION),
            recipients_per_message: entry
                .recipients_per_message
                .unwrap_or(BUILT_IN_RECIPIENTS_PER_MESSAGE),
            rates: Rates {
                per_minute: entry.messages_per_minute,
                per_hour: entry.messages_per_hour,
                burst: entry.burst,
            },
            window: entry.window,
            react: Arc::from(entry.react.clone()),
            egress: entry.egress.clone(),
        },
        None => Policy {
            name: Arc::from("built-in"),
            key,
            connections: config.queue.max_per_destination,
            messages_per_connection: BUILT_IN_MESSAGES_PER_CONNECTION,
            recipients_per_message: BUILT_IN_RECIPIENTS_PER_MESSAGE,
            rates: Rates::none(),
            window: None,
            react: Arc::from(Vec::new()),
            egress: None,
        },
    }
}

/// Whether the configuration has any provider rule (then MX hosts are looked up before a
/// delivery is admitted, to find its provider).
pub(super) fn wants_mx_hosts(config: &Config) -> bool {
    config.shaping.iter().any(|e| !e.mx_suffixes.is_empty())
}

/// A token bucket: `capacity` tokens, refilled at `per_ms`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    at: u64,
}

/// The pace of one gate.
#[derive(Debug, Clone)]
pub(crate) struct Pace {
    rates: Rates,
    window: Option<Window>,
    minute: Bucket,
    hour: Bucket,
    /// Nothing is sent before this (ms since the epoch), and why.
    suspended: Option<(u64, String)>,
    /// The rates' factor after a "slow down" reply (1 when none), and since when.
    factor: f64,
    factor_since: u64,
    recover_ms: u64,
}

/// Why a gate admits nothing now.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Closed {
    /// Suspended until then (ms), for this reason.
    Suspended(u64, String),
    /// Outside its window; opens then (ms).
    Curfew(u64),
    /// No token; the next one comes then (ms).
    Rate(u64),
}

impl Pace {
    pub(crate) fn new(policy: &Policy, now: u64) -> Pace {
        let mut pace = Pace {
            rates: policy.rates,
            window: policy.window,
            minute: Bucket {
                tokens: 0.0,
                at: now,
            },
            hour: Bucket {
                tokens: 0.0,
                at: now,
            },
            suspended: None,
            factor: 1.0,
            factor_since: now,
            recover_ms: DEFAULT_RECOVER_MS,
        };
        pace.minute.tokens = pace.minute_capacity();
        pace.hour.tokens = pace.hour_capacity();
        pace
    }

    /// A pace with no rates and no window (for a gate made before its policy is known).
    pub(crate) fn unshaped(now: u64) -> Pace {
        Pace {
            rates: Rates::none(),
            window: None,
            minute: Bucket {
                tokens: 0.0,
                at: now,
            },
            hour: Bucket {
                tokens: 0.0,
                at: now,
            },
            suspended: None,
            factor: 1.0,
            factor_since: now,
            recover_ms: DEFAULT_RECOVER_MS,
        }
    }

    /// Takes a changed policy (a reload): the rates and window apply from now on.
    pub(crate) fn update(&mut self, policy: &Policy) {
        self.rates = policy.rates;
        self.window = policy.window;
        self.minute.tokens = self.minute.tokens.min(self.minute_capacity());
        self.hour.tokens = self.hour.tokens.min(self.hour_capacity());
    }

    fn minute_capacity(&self) -> f64 {
        match self.rates.per_minute {
            Some(rate) => f64::from(self.rates.burst.unwrap_or(rate.div_ceil(10).max(1))),
            None => f64::INFINITY,
        }
    }

    fn hour_capacity(&self) -> f64 {
        match (self.rates.per_hour, self.rates.per_minute) {
            (Some(rate), Some(_)) => f64::from(rate),
            (Some(rate), None) => f64::from(self.rates.burst.unwrap_or((rate / 600).max(1))),
            (None, _) => f64::INFINITY,
        }
    }

    fn refill(&mut self, now: u64) {
        if self.factor < 1.0 && now.saturating_sub(self.factor_since) >= self.recover_ms {
            self.factor = (self.factor * 2.0).min(1.0);
            self.factor_since = now;
        }
        let factor = self.factor;
        let fill = |bucket: &mut Bucket, per_ms: Option<f64>, capacity: f64| {
            if let Some(per_ms) = per_ms {
                let elapsed = now.saturating_sub(bucket.at) as f64;
                bucket.tokens = (bucket.tokens + elapsed * per_ms * factor).min(capacity);
            }
            bucket.at = now;
        };
        let (minute_capacity, hour_capacity) = (self.minute_capacity(), self.hour_capacity());
        fill(
            &mut self.minute,
            self.rates.per_minute.map(|r| f64::from(r) / 60_000.0),
            minute_capacity,
        );
        fill(
            &mut self.hour,
            self.rates.per_hour.map(|r| f64::from(r) / 3_600_000.0),
            hour_capacity,
        );
        if self
            .suspended
            .as_ref()
            .is_some_and(|(until, _)| *until <= now)
        {
            self.suspended = None;
        }
    }

    /// Whether a message may go now; `None` when it may.
    pub(crate) fn closed(&mut self, now: u64) -> Option<Closed> {
        self.refill(now);
        if let Some((until, why)) = &self.suspended {
            return Some(Closed::Suspended(*until, why.clone()));
        }
        if let Some(window) = self.window {
            let opens_in = window.opens_in((now / 1000) % 86_400);
            if opens_in > 0 {
                return Some(Closed::Curfew(now + opens_in * 1000));
            }
        }
        let wait = |bucket: &Bucket, per_minute_or_hour: Option<(u32, f64)>| -> Option<u64> {
            let (rate, period_ms) = per_minute_or_hour?;
            if bucket.tokens >= 1.0 {
                return None;
            }
            let per_ms = f64::from(rate) / period_ms * self.factor;
            Some(now + ((1.0 - bucket.tokens) / per_ms).ceil() as u64)
        };
        let minute = wait(&self.minute, self.rates.per_minute.map(|r| (r, 60_000.0)));
        let hour = wait(&self.hour, self.rates.per_hour.map(|r| (r, 3_600_000.0)));
        minute.max(hour).map(Closed::Rate)
    }

    /// Takes a token from each bucket (after [`Pace::closed`] said none).
    pub(crate) fn take(&mut self) {
        if self.rates.per_minute.is_some() {
            self.minute.tokens -= 1.0;
        }
        if self.rates.per_hour.is_some() {
            self.hour.tokens -= 1.0;
        }
    }

    /// Whether the pace holds nothing worth keeping (buckets full, no suspension, the
    /// rates whole): the gate may be forgotten when idle.
    pub(crate) fn at_rest(&mut self, now: u64) -> bool {
        self.refill(now);
        self.suspended.is_none()
            && self.factor >= 1.0
            && (!self.rates.is_limited()
                || (self.minute.tokens >= self.minute_capacity()
                    && self.hour.tokens >= self.hour_capacity()))
    }

    /// Applies the reactions of `react` that `reply` matches; says what changed (for the
    /// log), or `None`.
    pub(crate) fn react(&mut self, react: &[Reaction], reply: &str, now: u64) -> Option<String> {
        let mut changed = Vec::new();
        for reaction in react.iter().filter(|r| r.reply.0.is_match(reply)) {
            if let Some(suspend) = reaction.suspend {
                let until = now + suspend.0.as_millis() as u64;
                if self.suspended.as_ref().is_none_or(|(u, _)| *u < until) {
                    self.suspended = Some((until, reply.chars().take(200).collect()));
                    changed.push(format!("suspended for {}s", suspend.0.as_secs()));
                }
            }
            if let Some(rate) = reaction.rate {
                self.factor = (self.factor * rate).max(MIN_FACTOR);
                self.factor_since = now;
                self.recover_ms = reaction
                    .recover
                    .map_or(DEFAULT_RECOVER_MS, |d| d.0.as_millis() as u64)
                    .max(1000);
                changed.push(format!("rates at {:.0}%", self.factor * 100.0));
            }
        }
        (!changed.is_empty()).then(|| changed.join(", "))
    }

    /// Suspends until `until` (ms) for `why`, unless suspended longer already.
    pub(crate) fn suspend(&mut self, until: u64, why: &str) {
        if self.suspended.as_ref().is_none_or(|(u, _)| *u < until) {
            self.suspended = Some((until, why.chars().take(200).collect()));
        }
    }

    /// The rates' factor now (1 when whole).
    pub(crate) fn factor(&self) -> f64 {
        self.factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(per_minute: Option<u32>, burst: Option<u32>) -> Policy {
        Policy {
            name: Arc::from("test"),
            key: "shape:test".into(),
            connections: 1,
            messages_per_connection: 1,
            recipients_per_message: 1,
            rates: Rates {
                per_minute,
                per_hour: None,
                burst,
            },
            window: None,
            react: Arc::from(Vec::new()),
            egress: None,
        }
    }

    #[test]
    fn a_rate_is_paced_one_token_at_a_time_after_its_burst() {
        let mut pace = Pace::new(&policy(Some(120), Some(2)), 0);
        for _ in 0..2 {
            assert_eq!(pace.closed(0), None);
            pace.take();
        }
        let next_token = |pace: &mut Pace, now| match pace.closed(now) {
            Some(Closed::Rate(at)) => at,
            other => panic!("{other:?}"),
        };
        assert_eq!(next_token(&mut pace, 0), 500);
        // Within a millisecond of float rounding.
        assert!((500..=501).contains(&next_token(&mut pace, 499)));
        assert_eq!(pace.closed(500), None);
        pace.take();
        assert!(!pace.at_rest(500));
        assert!(pace.at_rest(500 + 1000));
    }

    #[test]
    fn a_slow_down_reply_suspends_and_halves_and_the_rate_recovers() {
        let reaction = |text: &str, suspend: Option<u64>, rate: Option<f64>| Reaction {
            reply: crate::config::Pattern::new(text).unwrap(),
            suspend: suspend.map(|s| crate::config::Duration(std::time::Duration::from_secs(s))),
            rate,
            recover: Some(crate::config::Duration(std::time::Duration::from_secs(60))),
        };
        let react = vec![
            reaction(r"^421 4\.7\.0 .*try again later", Some(10), None),
            reaction(r"TS0[1-3]", None, Some(0.5)),
        ];
        let mut pace = Pace::new(&policy(Some(60), Some(1)), 0);
        assert_eq!(pace.react(&react, "250 2.0.0 ok", 0), None);
        assert!(
            pace.react(&react, "421 4.7.0 [TS01] try again later", 0)
                .is_some()
        );
        assert!(matches!(
            pace.closed(5_000),
            Some(Closed::Suspended(10_000, _))
        ));
        assert!(pace.factor() < 0.6);
        assert_eq!(pace.closed(10_000), None);
        pace.take();
        // Half the rate: the next token takes 2 s instead of 1.
        assert!(
            matches!(pace.closed(10_000), Some(Closed::Rate(at)) if (12_000..=12_001).contains(&at))
        );
        assert!(pace.closed(70_000).is_none());
        assert!(
            (pace.factor() - 1.0).abs() < f64::EPSILON,
            "recovered after a minute"
        );
    }
}
