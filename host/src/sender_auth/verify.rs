//! Verification on the way in: SPF (RFC 7208) for HELO and MAIL FROM, DKIM (RFC 6376) for
//! every signature, DMARC (RFC 7489) with alignment and the published policy, and ARC
//! (RFC 8617) chain validation, with `mail-auth` over the gateway's own resolver. The
//! results become one `Authentication-Results:` field (RFC 8601) and typed values for
//! plugins.
//!
//! Bounded by construction: `mail-auth` enforces SPF's ten-lookup and two-void-lookup
//! limits and caps ARC chains; every lookup has the resolver's timeout, and a timeout is a
//! `temperror`, never a hang. A DKIM signature with `l=` covers only part of the body: it
//! is reported as `policy` and never counts towards DMARC, since anything could be
//! appended after the part it covers.

use std::net::IpAddr;

use mail_auth::dmarc::Policy;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult,
    MessageAuthenticator, SpfOutput, SpfResult, dmarc::verify::DmarcParameters,
    spf::verify::SpfParameters,
};

use crate::dns::Dns;

/// Which checks a listener runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checks {
    /// SPF for HELO and MAIL FROM.
    pub spf: bool,
    /// DKIM signatures.
    pub dkim: bool,
    /// DMARC (needs the SPF and DKIM results; runs them if asked for alone).
    pub dmarc: bool,
    /// The ARC chain.
    pub arc: bool,
}

impl Checks {
    /// Whether any check runs.
    pub fn any(self) -> bool {
        self.spf || self.dkim || self.dmarc || self.arc
    }
}

/// A method of RFC 8601.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// SPF for the MAIL FROM identity.
    Spf,
    /// SPF for the HELO identity.
    SpfHelo,
    /// One DKIM signature.
    Dkim,
    /// DMARC.
    Dmarc,
    /// The ARC chain.
    Arc,
}

/// A result of RFC 8601 §2.7.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// pass
    Pass,
    /// fail
    Fail,
    /// softfail (SPF)
    SoftFail,
    /// neutral
    Neutral,
    /// none
    None,
    /// temperror
    TempError,
    /// permerror
    PermError,
    /// policy: signed, but not acceptable (DKIM with `l=`)
    Policy,
}

impl Verdict {
    /// The RFC 8601 keyword.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::SoftFail => "softfail",
            Verdict::Neutral => "neutral",
            Verdict::None => "none",
            Verdict::TempError => "temperror",
            Verdict::PermError => "permerror",
            Verdict::Policy => "policy",
        }
    }
}

/// One method's result, as plugins see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthResult {
    /// The method.
    pub method: Method,
    /// What it found.
    pub verdict: Verdict,
    /// The domain it is about: the MAIL FROM or HELO domain, a signature's `d=`, the
    /// RFC 5322.From domain for DMARC.
    pub domain: Option<String>,
    /// A DKIM signature's selector.
    pub selector: Option<String>,
    /// Why, when it did not pass.
    pub reason: Option<String>,
    /// DMARC: the policy the domain publishes (`none`, `quarantine`, `reject`).
    pub policy: Option<String>,
}

/// SPF's results for one transaction, computed at MAIL FROM.
#[derive(Debug, Clone)]
pub struct SpfResults {
    helo: SpfOutput,
    mail_from: SpfOutput,
    helo_name: String,
    sender: String,
    client: IpAddr,
}

impl SpfResults {
    /// Adds these results to an `Authentication-Results:` field being built.
    pub fn add_to<'x>(&self, header: AuthenticationResults<'x>) -> AuthenticationResults<'x> {
        header
            .with_spf_ehlo_result(&self.helo, self.client, &self.helo_name)
            .with_spf_mailfrom_result(&self.mail_from, self.client, &self.sender, &self.helo_name)
    }

    /// The client the results are for.
    pub fn client(&self) -> IpAddr {
        self.client
    }

    /// The typed results (HELO, then MAIL FROM).
    pub fn results(&self) -> Vec<AuthResult> {
        let mail_domain = self
            .sender
            .rsplit_once('@')
            .map_or_else(|| self.helo_name.clone(), |(_, d)| d.to_owned());
        vec![
            spf_result(Method::SpfHelo, &self.helo, &self.helo_name),
            spf_result(Method::Spf, &self.mail_from, &mail_domain),
        ]
    }
}

fn spf_result(method: Method, output: &SpfOutput, domain: &str) -> AuthResult {
    let verdict = match output.result() {
        SpfResult::Pass => Verdict::Pass,
        SpfResult::Fail => Verdict::Fail,
        SpfResult::SoftFail => Verdict::SoftFail,
        SpfResult::Neutral => Verdict::Neutral,
        SpfResult::TempError => Verdict::TempError,
        SpfResult::PermError => Verdict::PermError,
        SpfResult::None => Verdict::None,
    };
    AuthResult {
        method,
        verdict,
        domain: Some(domain.to_owned()),
        selector: None,
        reason: output.explanation().map(str::to_owned),
        policy: None,
    }
}

/// Everything verification found about one message.
#[derive(Debug, Clone)]
pub struct Report {
    /// The value of the `Authentication-Results:` field.
    pub header_value: String,
    /// The typed results.
    pub results: Vec<AuthResult>,
}

/// The verifier: the gateway's resolver and its authserv-id.
#[derive(Clone)]
pub struct Verifier {
    authenticator: MessageAuthenticator,
    authserv_id: String,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("authserv_id", &self.authserv_id)
            .finish_non_exhaustive()
    }
}

fn dkim_verdict(result: &DkimResult) -> (Verdict, Option<String>) {
    match result {
        DkimResult::Pass => (Verdict::Pass, None),
        // A body that no longer matches its hash is a failed signature (RFC 6376 §6.1.3:
        // the message was changed), whatever mail-auth calls it.
        DkimResult::Neutral(
            e @ mail_auth::Error::Dkim(mail_auth::dkim::DkimError::FailedBodyHashMatch),
        ) => (Verdict::Fail, Some(e.to_string())),
        DkimResult::Neutral(e) => (Verdict::Neutral, Some(e.to_string())),
        DkimResult::Fail(e) => (Verdict::Fail, Some(e.to_string())),
        DkimResult::PermError(e) => (Verdict::PermError, Some(e.to_string())),
        DkimResult::TempError(e) => (Verdict::TempError, Some(e.to_string())),
        DkimResult::None => (Verdict::None, None),
    }
}

fn dmarc_verdict(result: &DmarcResult) -> (Verdict, Option<String>) {
    match result {
        DmarcResult::Pass => (Verdict::Pass, None),
        DmarcResult::Fail(e) => (Verdict::Fail, Some(e.to_string())),
        DmarcResult::TempError(e) => (Verdict::TempError, Some(e.to_string())),
        DmarcResult::PermError(e) => (Verdict::PermError, Some(e.to_string())),
        DmarcResult::None => (Verdict::None, None),
    }
}

/// Whether a signature's `l=` leaves part of the body unsigned.
fn covers_part(output: &DkimOutput<'_>) -> bool {
    output.signature().is_some_and(|s| s.l > 0)
}

impl Verifier {
    /// A verifier over the gateway's resolver; `None` without one.
    pub fn new(dns: &Dns, authserv_id: &str) -> Option<Verifier> {
        Some(Verifier {
            authenticator: MessageAuthenticator(dns.resolver()?.clone()),
            authserv_id: authserv_id.to_owned(),
        })
    }

    /// The authenticator, over the gateway's resolver (for sealing).
    pub fn authenticator(&self) -> &MessageAuthenticator {
        &self.authenticator
    }

    /// The authserv-id of our `Authentication-Results:` fields (the hostname).
    pub fn authserv_id(&self) -> &str {
        &self.authserv_id
    }

    /// SPF for HELO and MAIL FROM (the null sender is checked as `postmaster@HELO`).
    pub async fn spf(&self, client: IpAddr, helo: &str, sender: Option<&str>) -> SpfResults {
        let helo_output = self
            .authenticator
            .verify_spf(SpfParameters::verify_ehlo(client, helo, &self.authserv_id))
            .await;
        let postmaster = format!("postmaster@{helo}");
        let identity = sender.unwrap_or(&postmaster);
        let mail_from = self
            .authenticator
            .verify_spf(SpfParameters::verify_mail_from(
                client,
                helo,
                &self.authserv_id,
                identity,
            ))
            .await;
        SpfResults {
            helo: helo_output,
            mail_from,
            helo_name: helo.to_owned(),
            sender: sender.unwrap_or_default().to_owned(),
            client,
        }
    }

    /// DKIM, DMARC and ARC over the message as received, with SPF from MAIL FROM.
    pub async fn message(&self, raw: &[u8], spf: &SpfResults, checks: Checks) -> Report {
        let mut results = Vec::new();
        let mut header = AuthenticationResults::new(&self.authserv_id);
        if checks.spf || checks.dmarc {
            header = spf.add_to(header);
            results.extend(spf.results());
        }
        let Some(message) = AuthenticatedMessage::parse(raw) else {
            // Not a message mail-auth can read (no header block): nothing to verify.
            return Report {
                header_value: header_value(&header),
                results,
            };
        };
        let header_from = message.from.first().cloned().unwrap_or_default();
        let dkim = if checks.dkim || checks.dmarc {
            self.authenticator.verify_dkim(&message).await
        } else {
            Vec::new()
        };
        // Signatures with l= are reported, but neither DMARC nor anyone else may lean on them.
        let (partial, whole): (Vec<_>, Vec<_>) = dkim.into_iter().partition(covers_part);
        if checks.dkim {
            header = header.with_dkim_results(&whole, &header_from);
            for output in whole.iter().chain(&partial) {
                let (mut verdict, mut reason) = dkim_verdict(output.result());
                if covers_part(output) {
                    verdict = Verdict::Policy;
                    reason = Some("the signature's l= covers only part of the body".into());
                }
                results.push(AuthResult {
                    method: Method::Dkim,
                    verdict,
                    domain: output.signature().map(|s| s.d.clone()),
                    selector: output.signature().map(|s| s.s.clone()),
                    reason,
                    policy: None,
                });
            }
        }
        if checks.arc {
            let arc = self.authenticator.verify_arc(&message).await;
            header = header.with_arc_result(&arc, spf.client);
            let (verdict, reason) = dkim_verdict(arc.result());
            results.push(AuthResult {
                method: Method::Arc,
                verdict,
                domain: arc.sets().last().map(|set| set.seal.header.d.clone()),
                selector: None,
                reason,
                policy: None,
            });
        }
        if checks.dmarc {
            let mail_from_domain = spf
                .sender
                .rsplit_once('@')
                .map_or(spf.helo_name.as_str(), |(_, d)| d);
            let dmarc = self
                .authenticator
                .verify_dmarc(DmarcParameters::new(
                    &message,
                    &whole,
                    mail_from_domain,
                    &spf.mail_from,
                ))
                .await;
            header = header.with_dmarc_result(&dmarc);
            // The best of the two identifiers' results (pass before temperror, permerror
            // and fail); a published record that neither aligns with fails.
            let outcome = dmarc.result();
            let (verdict, reason) = dmarc_verdict(&outcome);
            let policy = match dmarc.policy() {
                Policy::Reject => "reject",
                Policy::Quarantine => "quarantine",
                Policy::None | Policy::Unspecified => "none",
            };
            results.push(AuthResult {
                method: Method::Dmarc,
                verdict,
                domain: Some(dmarc.domain().to_owned()).filter(|d| !d.is_empty()),
                selector: None,
                reason,
                policy: (verdict != Verdict::None).then(|| policy.to_owned()),
            });
        }
        Report {
            header_value: header_value(&header),
            results,
        }
    }
}

fn header_value(header: &AuthenticationResults<'_>) -> String {
    // See dkim_verdict: a changed body is `fail`.
    let text = header.to_string().replace(
        "dkim=neutral (body hash did not verify)",
        "dkim=fail (body hash did not verify)",
    );
    if text.contains(';') {
        text
    } else {
        format!("{text}; none")
    }
}

/// The authserv-id of an `Authentication-Results:` field's value (what precedes the first
/// `;`, with any comment removed), lowercased.
pub fn authserv_id_of(value: &str) -> String {
    let head = value.split(';').next().unwrap_or_default();
    let mut plain = String::new();
    let mut depth = 0usize;
    for c in head.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            c if depth == 0 => plain.push(c),
            _ => {}
        }
    }
    // A version number may follow the authserv-id (RFC 8601 §2.2): `id 1; ...`.
    plain
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authserv_id_is_found_through_comments_and_versions() {
        assert_eq!(
            authserv_id_of(" relay.example.test; spf=pass"),
            "relay.example.test"
        );
        assert_eq!(
            authserv_id_of("(forged) Relay.Example.Test ; dkim=pass"),
            "relay.example.test"
        );
        assert_eq!(authserv_id_of("other.example; none"), "other.example");
        assert_eq!(authserv_id_of("mx1.example 1; none"), "mx1.example");
    }
}
