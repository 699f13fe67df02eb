//! How one next hop is secured: the one decision delivery asks for before it connects.
//! MX hosts get DANE (RFC 7672, [`crate::outbound::dane`]) when it applies, else the
//! policy MTA-STS or `[delivery] tls` gave the domain; smarthosts get their route's policy,
//! with the route's client certificate when it has one. The answer is the TLS policy, the
//! connector that verifies (when it is not one of the queue's two shared ones), and a tag
//! that keeps pooled connections apart when they were verified differently.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use tokio_rustls::TlsConnector;

use super::Shared;
use crate::config::TlsPolicy;
use crate::outbound::dane::{self, DaneVerifier, Decision};
use crate::outbound::lookup::NextHop;
use crate::outbound::tlsrpt::{PolicyRef, PolicyType};

/// An MTA-STS policy as the lines of its file (the `policy-string` of a TLS report).
fn policy_lines(policy: &crate::outbound::mta_sts::Policy) -> Vec<String> {
    use crate::outbound::mta_sts::Mode;
    let mode = match policy.mode {
        Mode::Enforce => "enforce",
        Mode::Testing => "testing",
        Mode::None => "none",
    };
    let mut lines = vec!["version: STSv1".to_owned(), format!("mode: {mode}")];
    lines.extend(policy.mx.iter().map(|mx| format!("mx: {mx}")));
    lines.push(format!("max_age: {}", policy.max_age.as_secs()));
    lines
}

/// Client-certificate connectors kept (one per route and verification).
const MAX_CONNECTORS: usize = 64;

/// What a hop's connection must do.
#[derive(Clone)]
pub(super) struct HopTls {
    /// Whether TLS is skipped, tried or required.
    pub(super) policy: TlsPolicy,
    /// The connector for STARTTLS; the queue's shared one for `policy` when `None`.
    pub(super) connector: Option<TlsConnector>,
    /// Set when the connection is verified or authenticated otherwise than the shared
    /// connectors would (DANE, a client certificate): pooled connections are kept apart.
    pub(super) tag: Option<String>,
    /// DANE applies: the outcome is logged.
    pub(super) dane: bool,
    /// The policy TLS reporting counts this hop's sessions under (MX delivery only).
    pub(super) report: Option<PolicyRef>,
}

impl HopTls {
    /// The policy with the queue's shared connectors.
    pub(super) fn plain(policy: TlsPolicy) -> HopTls {
        HopTls {
            policy,
            connector: None,
            tag: None,
            dane: false,
            report: None,
        }
    }

    /// Counts a session's TLS outcome for TLS reporting: `Ok` when TLS was established,
    /// else the RFC 8460 result type and the reason.
    pub(super) fn record(
        &self,
        shared: &Shared,
        host: &str,
        addr: std::net::SocketAddr,
        outcome: Result<(), (&'static str, String)>,
    ) {
        let (Some(collector), Some(policy)) = (&shared.tls_reports, &self.report) else {
            return;
        };
        match outcome {
            Ok(()) => collector.success(policy),
            Err((result_type, reason)) => {
                collector.failure(policy, result_type, host, Some(addr.ip()), &reason)
            }
        }
    }
}

/// How the hops of one delivery are secured.
#[derive(Debug, Clone)]
pub(super) enum Security {
    /// A smarthost route (`route` names it, for its client certificate).
    Route {
        policy: TlsPolicy,
        route: Option<String>,
    },
    /// MX hosts of `domain`: `policy` unless DANE applies (`dane`: enabled, and the MX
    /// RRset secure); `sts` holds the lines of the domain's MTA-STS policy, if it has one.
    /// `bogus`: the MX RRset failed DNSSEC validation, and no host may be used.
    Mx {
        domain: String,
        policy: TlsPolicy,
        dane: bool,
        sts: Option<Vec<String>>,
        bogus: Option<String>,
    },
}

impl Security {
    /// The same, with verified TLS required whatever the route or domain allows (a
    /// REQUIRETLS message, RFC 8689 §4.2.1; DANE counts as verified).
    pub(super) fn requiring_verified_tls(self) -> Security {
        match self {
            Security::Route { route, .. } => Security::Route {
                policy: TlsPolicy::Required,
                route,
            },
            Security::Mx {
                domain,
                dane,
                sts,
                bogus,
                ..
            } => Security::Mx {
                domain,
                policy: TlsPolicy::Required,
                dane,
                sts,
                bogus,
            },
        }
    }

    /// The policy for MX delivery to `domain` under `policy` (MTA-STS's or the default):
    /// DANE is looked at only when enabled and the domain's MX RRset is secure. A failed
    /// MTA-STS policy fetch (`sts_fetch_error`) is counted for TLS reporting.
    pub(super) async fn mx(
        shared: &Shared,
        domain: &str,
        policy: TlsPolicy,
        sts: Option<&crate::outbound::mta_sts::Policy>,
        sts_fetch_error: Option<&str>,
    ) -> Security {
        if let (Some(collector), Some(why)) = (&shared.tls_reports, sts_fetch_error) {
            let policy = PolicyRef {
                domain: domain.to_owned(),
                policy_type: PolicyType::Sts,
                policy_string: Vec::new(),
                mx_host: None,
            };
            let host = format!("mta-sts.{domain}");
            collector.failure(&policy, "sts-policy-fetch-error", &host, None, why);
        }
        let mut dane = false;
        let mut bogus = None;
        if shared.config().delivery.dane && shared.dns.validating() {
            match dane::mx_security(&shared.dns, domain).await {
                dane::MxSecurity::Secure => dane = true,
                dane::MxSecurity::Insecure => {}
                dane::MxSecurity::Bogus(why) => bogus = Some(why),
            }
        }
        Security::Mx {
            domain: domain.to_owned(),
            policy,
            dane,
            sts: sts.map(policy_lines),
            bogus,
        }
    }

    /// The policy TLS reports name for MX delivery without DANE.
    fn mx_report(domain: &str, sts: &Option<Vec<String>>) -> PolicyRef {
        match sts {
            Some(lines) => PolicyRef {
                domain: domain.to_owned(),
                policy_type: PolicyType::Sts,
                policy_string: lines.clone(),
                mx_host: None,
            },
            None => PolicyRef {
                domain: domain.to_owned(),
                policy_type: PolicyType::NoPolicyFound,
                policy_string: Vec::new(),
                mx_host: None,
            },
        }
    }

    /// What connecting to `hop` must do; `Err` when the hop cannot be used now.
    pub(super) async fn for_hop(&self, shared: &Shared, hop: &NextHop) -> Result<HopTls, String> {
        match self {
            Security::Mx {
                bogus: Some(why), ..
            } => {
                tracing::warn!(host = %hop.name, %why, "DANE: the MX records are DNSSEC-bogus, not delivering");
                Err(format!("DANE: DNSSEC-bogus MX records: {why}"))
            }
            Security::Mx {
                domain,
                policy,
                dane: false,
                sts,
                ..
            } => Ok(HopTls {
                report: Some(Security::mx_report(domain, sts)),
                ..HopTls::plain(*policy)
            }),
            Security::Mx {
                domain,
                policy,
                dane: true,
                sts,
                ..
            } => {
                let port = hop.addrs.first().map_or(25, |a| a.port());
                match dane::decide(&shared.dns, &hop.name, port).await {
                    Decision::NotApplicable => Ok(HopTls {
                        report: Some(Security::mx_report(domain, sts)),
                        ..HopTls::plain(*policy)
                    }),
                    Decision::Defer(why) => {
                        tracing::warn!(host = %hop.name, %why, "DANE: host unusable for now");
                        if let Some(collector) = &shared.tls_reports {
                            let policy = PolicyRef {
                                domain: domain.clone(),
                                policy_type: PolicyType::Tlsa,
                                policy_string: Vec::new(),
                                mx_host: Some(hop.name.clone()),
                            };
                            let result = if why.contains("bogus") {
                                "dnssec-invalid"
                            } else {
                                "tlsa-invalid"
                            };
                            collector.failure(&policy, result, &hop.name, None, &why);
                        }
                        Err(format!("DANE: {why}"))
                    }
                    Decision::Verify(records) => {
                        let report = PolicyRef {
                            domain: domain.clone(),
                            policy_type: PolicyType::Tlsa,
                            policy_string: records
                                .iter()
                                .map(|r| {
                                    let hex: String =
                                        r.data.iter().map(|b| format!("{b:02x}")).collect();
                                    format!("{} {} {} {hex}", r.usage, r.selector, r.matching)
                                })
                                .collect(),
                            mx_host: Some(hop.name.clone()),
                        };
                        tracing::info!(host = %hop.name, records = records.len(), "DANE: TLS required, the certificate must match the TLSA records");
                        let config = DaneVerifier::client_config(records)
                            .map_err(|e| format!("DANE: {e}"))?;
                        Ok(HopTls {
                            policy: TlsPolicy::Required,
                            connector: Some(TlsConnector::from(config)),
                            tag: Some("dane".into()),
                            dane: true,
                            report: Some(report),
                        })
                    }
                }
            }
            Security::Route { policy, route } => route_tls(shared, route.as_deref(), *policy),
        }
    }
}

/// What a connection to the smarthost of `route` (by name) under `policy` must do: the
/// route's client certificate, if it has one (recipient verification asks this too).
pub(super) fn route_tls(
    shared: &Shared,
    route: Option<&str>,
    policy: TlsPolicy,
) -> Result<HopTls, String> {
    let config = shared.config();
    let Some(route) = route.and_then(|name| config.routes.iter().find(|r| r.name == name)) else {
        return Ok(HopTls::plain(policy));
    };
    let (Some(certificate), Some(key)) = (&route.client_certificate, &route.client_key) else {
        return Ok(HopTls::plain(policy));
    };
    if policy == TlsPolicy::None {
        return Ok(HopTls::plain(policy));
    }
    let connector = shared.client_identities.connector(
        certificate,
        key,
        (policy == TlsPolicy::Required).then_some(config.delivery.tls_ca.as_ref()),
    )?;
    Ok(HopTls {
        policy,
        connector: Some(connector),
        tag: Some(format!("client-certificate:{}", route.name)),
        dane: false,
        report: None,
    })
}

impl HopTls {
    /// The pool key of a connection to `addr` (known as `host`) from `source` secured
    /// like this: connections verified or authenticated otherwise than the shared
    /// connectors would (DANE, a client certificate) are kept apart.
    pub(super) fn pool_key(
        &self,
        addr: std::net::SocketAddr,
        host: &str,
        source: Option<std::net::IpAddr>,
    ) -> crate::outbound::pool::PoolKey {
        let mut key =
            crate::outbound::pool::PoolKey::new(addr, host, self.policy).from_source(source);
        if let Some(tag) = &self.tag {
            key.verified_name = Some(format!("{tag}:{host}"));
        }
        key
    }
}

/// Connectors that present a route's client certificate, built once per files.
#[derive(Default)]
pub(crate) struct ClientIdentities {
    connectors: Mutex<HashMap<IdentityKey, TlsConnector>>,
}

impl std::fmt::Debug for ClientIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentities").finish_non_exhaustive()
    }
}

/// The files (and when they changed, so new files are read) and the verification.
type IdentityKey = (
    PathBuf,
    PathBuf,
    Option<SystemTime>,
    Option<SystemTime>,
    Option<Option<PathBuf>>,
);

impl ClientIdentities {
    /// The connector presenting `certificate`/`key`; verifying the server against
    /// `verify` (`Some(None)`: the web PKI, `Some(Some(ca))`: that CA file) or not at all
    /// (`None`: opportunistic).
    fn connector(
        &self,
        certificate: &std::path::Path,
        key: &std::path::Path,
        verify: Option<Option<&PathBuf>>,
    ) -> Result<TlsConnector, String> {
        let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let id: IdentityKey = (
            certificate.to_owned(),
            key.to_owned(),
            modified(certificate),
            modified(key),
            verify.map(|ca| ca.cloned()),
        );
        let mut connectors = self
            .connectors
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(connector) = connectors.get(&id) {
            return Ok(connector.clone());
        }
        let mode = match verify {
            None => crate::tls::VerifyMode::AcceptAny,
            Some(None) => crate::tls::VerifyMode::WebPki,
            Some(Some(ca)) => crate::tls::VerifyMode::CustomCa(ca.clone()),
        };
        let identity = crate::tls::ClientIdentity { certificate, key };
        let config = crate::tls::client_config_with_identity(&mode, Some(identity))
            .map_err(|e| format!("client certificate: {e}"))?;
        let connector = TlsConnector::from(config);
        if connectors.len() >= MAX_CONNECTORS {
            connectors.clear();
        }
        connectors.insert(id, connector.clone());
        Ok(connector)
    }
}
