//! Canary plugins: a new version takes a share of new sessions in place of its primary
//! (chosen by a stable hash of the client address, so one client sees one version), each
//! session's outcome is counted per version, and the canary is rolled back on its own when
//! its fault rate or refusal rate exceeds its primary's by the configured margin over at
//! least `canary_min_sessions` of its sessions. Promotion is explicit (`tidegate plugins
//! promote`) or follows a soak time without a regression.
//!
//! A session is counted for a version when that version was called in it: `fault` when any
//! call failed (trap, CPU, time, memory, invalid answer, no instance), `refusal` when it
//! answered reject, tempfail or disconnect, `ok` otherwise.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::chain::{Chain, LoadedPlugin};
use crate::config::CanaryPolicy;
use crate::metrics::rollout::CanarySessionLabels;
use crate::metrics::{Metrics, PluginLabels};

/// A canary, as attached to a chain.
#[derive(Debug, Clone)]
pub struct Canary {
    /// The index of its primary in the chain's plugins.
    pub position: usize,
    /// The canary version.
    pub plugin: Arc<LoadedPlugin>,
    /// Its state and counts, over reloads while it is unchanged.
    pub state: Arc<CanaryState>,
}

/// Where a canary stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Stage {
    /// Serving its share of new sessions.
    Serving,
    /// Every new session goes to the primary; why.
    RolledBack(String),
    /// Every new session goes to the canary; how it came to be.
    Promoted(String),
}

/// Sessions, faults and refusals of one version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// Sessions that called it.
    pub sessions: u64,
    /// Of those, sessions in which a call failed.
    pub faults: u64,
    /// Of those, sessions it refused something in (reject, tempfail, disconnect).
    pub refusals: u64,
}

impl Counts {
    fn rate(&self, of: u64) -> f64 {
        if self.sessions == 0 {
            0.0
        } else {
            of as f64 / self.sessions as f64
        }
    }
}

/// A canary's status, for `tidegate plugins`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStatus {
    /// The enforcing plugin it stands in for.
    pub canary_of: String,
    /// Its configured share of new sessions.
    pub fraction: f64,
    /// `canary`, `rolled back` or `promoted`.
    pub state: String,
    /// Why it was rolled back or how it was promoted.
    pub why: Option<String>,
    /// The primary's sessions since the canary started.
    pub primary: Counts,
    /// The canary's sessions.
    pub canary: Counts,
}

/// One canary's state, shared by every session.
#[derive(Debug)]
pub struct CanaryState {
    name: String,
    primary: String,
    policy: CanaryPolicy,
    started: Instant,
    metrics: Arc<Metrics>,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    stage: Stage,
    primary: Counts,
    canary: Counts,
}

impl CanaryState {
    /// A canary starting to serve its share.
    pub fn new(
        name: &str,
        primary: &str,
        policy: CanaryPolicy,
        metrics: Arc<Metrics>,
    ) -> CanaryState {
        let state = CanaryState {
            name: name.to_owned(),
            primary: primary.to_owned(),
            policy,
            started: Instant::now(),
            metrics,
            inner: Mutex::new(Inner {
                stage: Stage::Serving,
                primary: Counts::default(),
                canary: Counts::default(),
            }),
        };
        state.gauge(0);
        state
    }

    /// Whether this state still describes a canary of this primary under this policy.
    pub fn fits(&self, primary: &str, policy: &CanaryPolicy) -> bool {
        self.primary == primary && self.policy == *policy
    }

    fn gauge(&self, value: i64) {
        self.metrics
            .rollout
            .canary_state
            .get_or_create(&PluginLabels {
                plugin: self.name.clone(),
            })
            .set(value);
    }

    /// Whether a new session from `client` runs the canary.
    pub fn takes(&self, client: IpAddr) -> bool {
        let Ok(inner) = self.inner.lock() else {
            return false;
        };
        match inner.stage {
            Stage::Serving => share(&self.name, client) < self.policy.fraction,
            Stage::RolledBack(_) => false,
            Stage::Promoted(_) => true,
        }
    }

    /// Makes the canary take every new session.
    pub fn promote(&self, how: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.stage = Stage::Promoted(how.to_owned());
        }
        tracing::info!(plugin = %self.name, canary_of = %self.primary, how, "canary promoted: it takes every new session");
        self.gauge(2);
    }

    /// Counts a finished session for one version and judges the canary.
    pub fn report(&self, canary: bool, faulted: bool, refused: bool) {
        let outcome = if faulted {
            "fault"
        } else if refused {
            "refusal"
        } else {
            "ok"
        };
        self.metrics
            .rollout
            .canary_sessions
            .get_or_create(&CanarySessionLabels {
                plugin: self.name.clone(),
                version: if canary { "canary" } else { "primary" },
                outcome,
            })
            .inc();
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let counts = if canary {
            &mut inner.canary
        } else {
            &mut inner.primary
        };
        counts.sessions += 1;
        counts.faults += u64::from(faulted);
        counts.refusals += u64::from(refused);
        if inner.stage != Stage::Serving || inner.canary.sessions < self.policy.min_sessions {
            return;
        }
        let (c, p) = (inner.canary, inner.primary);
        let faults = (c.rate(c.faults), p.rate(p.faults));
        let refusals = (c.rate(c.refusals), p.rate(p.refusals));
        let why = if faults.0 > faults.1 + self.policy.max_fault_rate_margin {
            Some(format!(
                "fault rate {:.1}% against the primary's {:.1}% (margin {:.1}%) over {} sessions",
                faults.0 * 100.0,
                faults.1 * 100.0,
                self.policy.max_fault_rate_margin * 100.0,
                c.sessions
            ))
        } else if refusals.0 > refusals.1 + self.policy.max_refusal_rate_margin {
            Some(format!(
                "refusal rate {:.1}% against the primary's {:.1}% (margin {:.1}%) over {} sessions",
                refusals.0 * 100.0,
                refusals.1 * 100.0,
                self.policy.max_refusal_rate_margin * 100.0,
                c.sessions
            ))
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!(plugin = %self.name, canary_of = %self.primary, why = %why, "canary rolled back: every new session goes to the primary");
            inner.stage = Stage::RolledBack(why);
            drop(inner);
            self.metrics
                .rollout
                .canary_rollbacks
                .get_or_create(&PluginLabels {
                    plugin: self.name.clone(),
                })
                .inc();
            self.gauge(1);
        } else if let Some(soak) = self.policy.soak
            && self.started.elapsed() >= soak
        {
            drop(inner);
            self.promote("after its soak time without a regression");
        }
    }

    /// The status, for the admin API.
    pub fn status(&self) -> CanaryStatus {
        let (stage, primary, canary) = match self.inner.lock() {
            Ok(inner) => (inner.stage.clone(), inner.primary, inner.canary),
            Err(_) => (Stage::Serving, Counts::default(), Counts::default()),
        };
        let (state, why) = match stage {
            Stage::Serving => ("canary", None),
            Stage::RolledBack(why) => ("rolled back", Some(why)),
            Stage::Promoted(how) => ("promoted", Some(how)),
        };
        CanaryStatus {
            canary_of: self.primary.clone(),
            fraction: self.policy.fraction,
            state: state.to_owned(),
            why,
            primary,
            canary,
        }
    }
}

/// Where a client falls in `[0, 1)` for a canary: stable for a client address (and
/// independent between canaries, so that not the same clients test every new version).
fn share(canary: &str, client: IpAddr) -> f64 {
    let mut hash = Sha256::new();
    hash.update(canary.as_bytes());
    hash.update([0]);
    match client {
        IpAddr::V4(v4) => hash.update(v4.octets()),
        IpAddr::V6(v6) => hash.update(v6.octets()),
    }
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    // 53 bits make an exact f64 in [0, 1).
    (u64::from_be_bytes(first) >> 11) as f64 / (1u64 << 53) as f64
}

/// A session's record for one canary: which version it runs and how that went.
#[derive(Debug)]
struct Track {
    position: usize,
    state: Arc<CanaryState>,
    canary: bool,
    called: bool,
    faulted: bool,
    refused: bool,
}

/// What a session notes for the canaries of its chain.
#[derive(Debug, Default)]
pub struct SessionCanaries {
    tracks: Vec<Track>,
}

impl SessionCanaries {
    fn track(&mut self, position: usize) -> Option<&mut Track> {
        self.tracks.iter_mut().find(|t| t.position == position)
    }

    /// Plugin `position` was called.
    pub fn called(&mut self, position: usize) {
        if let Some(track) = self.track(position) {
            track.called = true;
        }
    }

    /// A call of plugin `position` failed.
    pub fn fault(&mut self, position: usize) {
        if let Some(track) = self.track(position) {
            track.faulted = true;
        }
    }

    /// Plugin `position` refused something.
    pub fn refused(&mut self, position: usize) {
        if let Some(track) = self.track(position) {
            track.refused = true;
        }
    }

    /// The session is over: each version it called is counted, once.
    pub fn finish(&mut self) {
        for track in self.tracks.drain(..) {
            if track.called {
                track
                    .state
                    .report(track.canary, track.faulted, track.refused);
            }
        }
    }
}

/// The chain a session from `client` runs: the canary in place of its primary when the
/// client falls in its share; and what the session must note.
pub fn pick(chain: &Arc<Chain>, client: IpAddr) -> (Arc<Chain>, SessionCanaries) {
    if chain.canaries.is_empty() {
        return (Arc::clone(chain), SessionCanaries::default());
    }
    let mut tracks = Vec::new();
    let mut swapped: Option<Chain> = None;
    for canary in &chain.canaries {
        let takes = canary.state.takes(client);
        if takes {
            let chain = swapped.get_or_insert_with(|| Chain::clone(chain));
            if let Some(slot) = chain.plugins.get_mut(canary.position) {
                *slot = Arc::clone(&canary.plugin);
            }
        }
        tracks.push(Track {
            position: canary.position,
            state: Arc::clone(&canary.state),
            canary: takes,
            called: false,
            faulted: false,
            refused: false,
        });
    }
    let chain = match swapped {
        Some(mut chain) => {
            chain.canaries.clear();
            Arc::new(chain)
        }
        None => Arc::clone(chain),
    };
    (chain, SessionCanaries { tracks })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_always_falls_in_the_same_place_and_shares_spread() {
        let a: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(share("next", a), share("next", a));
        let below = (0..=255u8)
            .filter(|n| share("next", IpAddr::from([10, 0, 0, *n])) < 0.3)
            .count();
        assert!((45..=110).contains(&below), "{below} of 256 under 0.3");
    }

    fn policy() -> CanaryPolicy {
        CanaryPolicy {
            fraction: 0.5,
            min_sessions: 10,
            max_fault_rate_margin: 0.05,
            max_refusal_rate_margin: 0.15,
            soak: None,
        }
    }

    #[test]
    fn a_faulty_canary_is_rolled_back_at_its_minimum_and_not_before() {
        let state = CanaryState::new("next", "content", policy(), Arc::new(Metrics::new()));
        for _ in 0..20 {
            state.report(false, false, false);
        }
        for n in 1..=10 {
            assert_eq!(state.status().state, "canary", "after {n} sessions");
            state.report(true, true, false);
        }
        let status = state.status();
        assert_eq!(status.state, "rolled back");
        assert!(status.why.unwrap().contains("fault rate 100.0%"));
        assert!(!state.takes("192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn a_canary_past_its_soak_without_a_regression_is_promoted_on_its_own() {
        let soaked = CanaryPolicy {
            soak: Some(std::time::Duration::ZERO),
            ..policy()
        };
        let state = CanaryState::new("next", "content", soaked, Arc::new(Metrics::new()));
        for _ in 0..9 {
            state.report(true, false, false);
        }
        // Not before its minimum of sessions, however long it has run.
        assert_eq!(state.status().state, "canary");
        state.report(true, false, false);
        let status = state.status();
        assert_eq!(status.state, "promoted");
        assert_eq!(
            status.why.as_deref(),
            Some("after its soak time without a regression")
        );
    }

    #[test]
    fn a_canary_within_its_margins_keeps_serving_and_promotion_takes_everyone() {
        let state = CanaryState::new("next", "content", policy(), Arc::new(Metrics::new()));
        for n in 0..100 {
            state.report(false, false, n % 10 == 0);
            state.report(true, false, n % 6 == 0);
        }
        assert_eq!(state.status().state, "canary");
        state.promote("by the operator");
        assert!(state.takes("192.0.2.1".parse().unwrap()));
        assert_eq!(state.status().state, "promoted");
    }
}
