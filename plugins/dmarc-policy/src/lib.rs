//! `dmarc-policy`: applies the DMARC policy (RFC 7489) the sender's domain publishes, from
//! the gateway's own verification (`auth-results`), at the end of the data.
//!
//! ```toml
//! [[plugin]]
//! name = "dmarc"
//! path = "plugins/dist/dmarc_policy.wasm"
//! [plugin.config]
//! only_tag = false                          # true: never refuse or quarantine, only tag
//! trusted_networks = ["192.0.2.0/24"]       # forwarders and mailing lists, by address
//! trusted_arc_sealers = ["lists.example"]   # ... or by the ARC chain they sealed
//! ```
//!
//! A message that fails DMARC gets what its domain asks for: `p=reject` → 550 5.7.1,
//! `p=quarantine` → quarantine, `p=none` → a tag only. A message from a trusted network,
//! or whose ARC chain passes and was last sealed by a trusted sealer, is let through with
//! a tag saying so (forwarders and lists break SPF and DKIM, ARC tells who did it). Every
//! message gets the tag `dmarc` (`pass`, `fail`, `none`, ...), and a failure also
//! `dmarc-policy` with what was applied.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;
use tidegate_plugin_sdk::prelude::*;

/// The plugin's configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Only tag: never refuse or quarantine (to watch what the policy would do).
    #[serde(default)]
    pub only_tag: bool,
    /// Clients whose mail is never refused or quarantined for DMARC.
    #[serde(default)]
    pub trusted_networks: Vec<IpNet>,
    /// ARC sealers (`d=` of the last ARC-Seal) whose passing chain overrides a failure.
    #[serde(default)]
    pub trusted_arc_sealers: Vec<String>,
}

/// The plugin.
pub struct DmarcPolicy {
    config: Config,
}

impl Plugin for DmarcPolicy {
    fn init(host: &dyn Host) -> Result<Self, String> {
        let mut config: Config = host.config()?;
        for sealer in &mut config.trusted_arc_sealers {
            *sealer = sealer.trim_end_matches('.').to_ascii_lowercase();
            if sealer.is_empty() {
                return Err("empty name in trusted_arc_sealers".into());
            }
        }
        Ok(DmarcPolicy { config })
    }

    /// The configuration is all there is; nothing is per session.
    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            data: true,
            ..Hooks::default()
        }
    }

    fn on_data(
        &mut self,
        host: &dyn Host,
        _envelope: &Envelope,
        _message: &dyn Message,
    ) -> Response {
        let results = host.auth_results();
        let Some(dmarc) = results.iter().find(|r| r.method == AuthMethod::Dmarc) else {
            return Response::next();
        };
        let verdict = verdict_name(dmarc.verdict);
        let response = Response::next().tag("dmarc", verdict);
        if dmarc.verdict != AuthVerdict::Fail {
            return response;
        }
        let domain = dmarc.domain.clone().unwrap_or_default();
        let policy = dmarc.policy.as_deref().unwrap_or("none");
        if let Some(why) = self.exempt(host, &results) {
            host.counter_add("dmarc_policy_overridden", 1);
            return response.tag("dmarc-policy", &format!("{policy} overridden: {why}"));
        }
        if self.config.only_tag || policy == "none" {
            return response.tag("dmarc-policy", &format!("{policy} (tagged only)"));
        }
        host.counter_add(&format!("dmarc_policy_{policy}"), 1);
        host.log(
            Level::Info,
            "DMARC policy applied",
            &[("domain", &domain), ("policy", policy)],
        );
        match policy {
            "reject" => Response::from(Verdict::reject(
                550,
                "5.7.1",
                &format!(
                    "Unauthenticated mail from {domain} is not accepted due to its DMARC policy"
                ),
            ))
            .tag("dmarc", verdict)
            .tag("dmarc-policy", "reject"),
            _ => Response::from(Verdict::Quarantine(format!(
                "DMARC policy of {domain} (quarantine)"
            )))
            .tag("dmarc", verdict)
            .tag("dmarc-policy", "quarantine"),
        }
    }
}

impl DmarcPolicy {
    /// Why this message is let through despite failing DMARC, if it is.
    fn exempt(&self, host: &dyn Host, results: &[AuthResult]) -> Option<String> {
        if let Ok(ip) = host.session().client_ip.parse::<IpAddr>()
            && self.config.trusted_networks.iter().any(|n| n.contains(&ip))
        {
            return Some(format!("trusted network ({ip})"));
        }
        let arc = results
            .iter()
            .find(|r| r.method == AuthMethod::Arc && r.verdict == AuthVerdict::Pass)?;
        let sealer = arc.domain.as_deref()?.to_ascii_lowercase();
        self.config
            .trusted_arc_sealers
            .contains(&sealer)
            .then(|| format!("ARC sealed by {sealer}"))
    }
}

fn verdict_name(verdict: AuthVerdict) -> &'static str {
    match verdict {
        AuthVerdict::Pass => "pass",
        AuthVerdict::Fail => "fail",
        AuthVerdict::SoftFail => "softfail",
        AuthVerdict::Neutral => "neutral",
        AuthVerdict::None => "none",
        AuthVerdict::TempError => "temperror",
        AuthVerdict::PermError => "permerror",
        AuthVerdict::Policy => "policy",
    }
}

tidegate_plugin_sdk::export!(DmarcPolicy);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    fn result(
        method: AuthMethod,
        verdict: AuthVerdict,
        domain: &str,
        policy: Option<&str>,
    ) -> AuthResult {
        AuthResult {
            method,
            verdict,
            domain: Some(domain.into()),
            selector: None,
            reason: None,
            policy: policy.map(str::to_owned),
        }
    }

    fn data(config: serde_json::Value, results: Vec<AuthResult>) -> Response {
        let host = TestHost::new()
            .with_config(config)
            .with_auth_results(results);
        let mut session = Harness::<DmarcPolicy>::new(host).unwrap();
        session.data(
            Some("a@forged.test"),
            &["u@example.test"],
            b"From: a@forged.test\r\n\r\nhi\r\n",
        )
    }

    #[test]
    fn each_published_policy_is_applied_to_a_failure() {
        let reject = data(
            json!({}),
            vec![result(
                AuthMethod::Dmarc,
                AuthVerdict::Fail,
                "forged.test",
                Some("reject"),
            )],
        );
        assert!(
            matches!(&reject.verdict, Verdict::Reject(r) if r.code == 550 && r.enhanced == "5.7.1")
        );
        let quarantine = data(
            json!({}),
            vec![result(
                AuthMethod::Dmarc,
                AuthVerdict::Fail,
                "forged.test",
                Some("quarantine"),
            )],
        );
        assert!(matches!(quarantine.verdict, Verdict::Quarantine(_)));
        let none = data(
            json!({}),
            vec![result(
                AuthMethod::Dmarc,
                AuthVerdict::Fail,
                "forged.test",
                Some("none"),
            )],
        );
        assert_eq!(none.verdict, Verdict::Continue);
        assert!(
            none.edits
                .contains(&Edit::SetTag("dmarc".into(), "fail".into()))
        );
    }

    #[test]
    fn a_pass_or_no_dmarc_result_changes_nothing() {
        let pass = data(
            json!({}),
            vec![result(
                AuthMethod::Dmarc,
                AuthVerdict::Pass,
                "good.test",
                Some("reject"),
            )],
        );
        assert_eq!(pass.verdict, Verdict::Continue);
        let nothing = data(json!({}), Vec::new());
        assert_eq!(nothing, Response::next());
    }

    #[test]
    fn only_tag_trusted_networks_and_trusted_arc_sealers_override() {
        let failing = || {
            result(
                AuthMethod::Dmarc,
                AuthVerdict::Fail,
                "forged.test",
                Some("reject"),
            )
        };
        let tagged = data(json!({ "only_tag": true }), vec![failing()]);
        assert_eq!(tagged.verdict, Verdict::Continue);
        // The harness's client is 192.0.2.1.
        let trusted = data(
            json!({ "trusted_networks": ["192.0.2.0/24"] }),
            vec![failing()],
        );
        assert_eq!(trusted.verdict, Verdict::Continue);
        let sealed = data(
            json!({ "trusted_arc_sealers": ["Lists.Example"] }),
            vec![
                failing(),
                result(AuthMethod::Arc, AuthVerdict::Pass, "lists.example", None),
            ],
        );
        assert_eq!(sealed.verdict, Verdict::Continue);
        let untrusted_sealer = data(
            json!({ "trusted_arc_sealers": ["lists.example"] }),
            vec![
                failing(),
                result(AuthMethod::Arc, AuthVerdict::Pass, "other.example", None),
            ],
        );
        assert!(matches!(untrusted_sealer.verdict, Verdict::Reject(_)));
    }
}
