//! Recipient verification: asking a route's next hop, at RCPT TO, whether a recipient
//! exists, so that an edge MX refuses at once what the internal server would refuse later.
//!
//! Without it, an edge MX accepts mail for any address in its domains, and when the
//! internal server refuses an unknown one the bounce goes to the envelope sender, which
//! for spam is forged: backscatter to an innocent third party. With `verify_recipients` on
//! a route, the session asks the queue ([`Queue::verify_recipient`]), which probes the
//! route's smarthost as Postfix's `reject_unverified_recipient` does (MAIL FROM:<>, RCPT
//! TO, RSET, on a pooled connection when one is idle) and caches the answer: an address
//! that exists for `verify_positive_ttl`, one that does not for `verify_negative_ttl`.
//! Temporary answers and unreachable hops are never cached. The probe lives on the queue
//! side, beside the outbound client; the session only asks a question and gets a verdict.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Queue;
use super::transport::{keep, open};
use crate::config::{RouteConfig, VerifyUnreachable};
use crate::outbound::lookup;

/// Cached answers at most; past that, expired entries go, then everything (a flood of
/// made-up addresses must not grow memory without bound).
const MAX_CACHED: usize = 100_000;

/// How long a whole probe may take before the recipient is judged unverifiable for now.
const PROBE_TIME_LIMIT: Duration = Duration::from_secs(20);

/// What the next hop said of a recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// It accepts mail for the address.
    Exists,
    /// It refused the address for good (its reply, for the log).
    Unknown(String),
    /// No answer either way (a 4xx, a hop that cannot be reached); what to do is the
    /// route's `verify_unreachable`.
    Unverifiable {
        /// Why.
        why: String,
        /// The route's choice.
        then: VerifyUnreachable,
    },
}

/// Answers already known, by canonical address.
#[derive(Debug, Default)]
pub(crate) struct VerifyCache {
    entries: Mutex<HashMap<String, (Instant, Verdict)>>,
}

impl VerifyCache {
    fn get(&self, address: &str) -> Option<Verdict> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(address) {
            Some((expires, verdict)) if *expires > Instant::now() => Some(verdict.clone()),
            Some(_) => {
                entries.remove(address);
                None
            }
            None => None,
        }
    }

    fn put(&self, address: String, verdict: Verdict, ttl: Duration) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_CACHED {
            let now = Instant::now();
            entries.retain(|_, (expires, _)| *expires > now);
            if entries.len() >= MAX_CACHED {
                entries.clear();
            }
        }
        entries.insert(address, (Instant::now() + ttl, verdict));
    }
}

impl Queue {
    /// Verifies `address` against its route's recipients list and/or next hop, when its
    /// domain's static route has either (`None` otherwise: nothing to check).
    pub async fn verify_recipient(&self, address: &str, smtputf8: bool) -> Option<Verdict> {
        let shared = &self.shared;
        let (_, domain) = address.rsplit_once('@')?;
        let domain = crate::config::ascii_domain(domain)?;
        let config = shared.config();
        let route = config.routes.iter().find(|r| {
            (r.verify_recipients || r.recipients_file.is_some())
                && r.domains.iter().any(|d| d.as_str() == domain)
        })?;
        if let Some(list) = shared.recipient_lists.get(&route.name) {
            if list.contains(address) {
                return Some(Verdict::Exists);
            }
            if !route.verify_recipients {
                return Some(Verdict::Unknown(format!(
                    "not in the recipients list of route {}",
                    route.name
                )));
            }
        }
        // The canonical address (domain lower-cased): local parts may be case-sensitive.
        let key = address.to_owned();
        if let Some(verdict) = shared.verify_cache.get(&key) {
            return Some(verdict);
        }
        let verdict = match tokio::time::timeout(
            PROBE_TIME_LIMIT,
            self.probe(route, address, smtputf8),
        )
        .await
        {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Unverifiable {
                why: "the next hop did not answer in time".into(),
                then: route.verify_unreachable,
            },
        };
        let ttl = match &verdict {
            Verdict::Exists => Some(route.verify_positive_ttl.0),
            Verdict::Unknown(_) => Some(route.verify_negative_ttl.0),
            Verdict::Unverifiable { .. } => None,
        };
        if let Some(ttl) = ttl {
            shared.verify_cache.put(key, verdict.clone(), ttl);
        }
        tracing::info!(recipient = %address, route = %route.name, verdict = ?verdict, "recipient verified");
        Some(verdict)
    }

    /// One probe of the route's smarthost, address by address until one answers.
    async fn probe(&self, route: &RouteConfig, address: &str, smtputf8: bool) -> Verdict {
        let shared = &self.shared;
        let unverifiable = |why: String| Verdict::Unverifiable {
            why,
            then: route.verify_unreachable,
        };
        let Some((host, port)) = route.smarthost.as_deref().and_then(lookup::parse_host_port)
        else {
            return unverifiable("the route has no smarthost".into());
        };
        let addrs = match lookup::resolve_host(&shared.dns, &host, port).await {
            Ok(addrs) => addrs,
            Err(e) => return unverifiable(e.to_string()),
        };
        let tls = route.tls.unwrap_or(shared.config().delivery.tls);
        // The route's client certificate, as its deliveries present it.
        let tls = match super::hop_tls::route_tls(shared, Some(&route.name), tls) {
            Ok(tls) => tls,
            Err(why) => return unverifiable(why),
        };
        let helo = shared
            .config()
            .delivery
            .helo_name
            .clone()
            .unwrap_or_else(|| shared.config().hostname.to_string());
        let mut last = String::from("no address to try");
        for addr in addrs {
            if shared.own_addresses.load().contains(addr) {
                // Asking ourselves would make our RCPT ask ourselves again, and so on.
                last = format!("{host} [{addr}] is one of this gateway's listeners");
                continue;
            }
            let key = tls.pool_key(addr, &host, None);
            let pooled = shared.pool.take(&key);
            let session = match pooled {
                Some(session) => Ok(session),
                None => open(shared, addr, &host, &tls, &helo).await,
            };
            let mut session = match session {
                Ok(session) => session,
                Err(e) => {
                    last = format!("{host} [{addr}]: {e}");
                    continue;
                }
            };
            let answer = session.probe(address, smtputf8).await;
            keep(shared, key, session);
            match answer {
                Ok(reply) if reply.is_positive() => return Verdict::Exists,
                Ok(reply) if reply.is_permanent() => {
                    return Verdict::Unknown(format!("{host}: {reply}"));
                }
                Ok(reply) => last = format!("{host}: {reply}"),
                Err(e) => last = format!("{host} [{addr}]: {e}"),
            }
        }
        unverifiable(last)
    }
}
