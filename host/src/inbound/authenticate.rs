//! Where sessions meet sender authentication: SPF at MAIL FROM, the rest of verification
//! at the end of the data (its `Authentication-Results:` field added, any field claiming
//! our authserv-id removed), and DKIM signing after every plugin edit, on the bytes that
//! will leave.

use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::sender_auth::{AuthResult, Method, SpfResults, Verdict};
use crate::spool::envelope::{Envelope, HeaderEdit, apply_header_edits};

use super::session::Session;

/// Messages up to this size are signed on the session's own task.
const INLINE_SIGN_LIMIT: usize = 128 * 1024;

impl Session {
    /// Whether this session's mail is verified: the listener asks for it and the client
    /// did not authenticate (submission clients are known, not judged).
    fn verifies(&self) -> bool {
        self.checks.any()
            && self.authenticated.is_none()
            && self.live.sender_auth.verifier.is_some()
    }

    /// SPF for the transaction MAIL FROM opens, if the listener checks SPF (or DMARC,
    /// which needs it); the results are what plugins see from on-mail-from on.
    pub(super) async fn check_spf(
        &mut self,
        helo: &str,
        sender: Option<&str>,
    ) -> Option<SpfResults> {
        let verifier = self.live.sender_auth.verifier.as_ref()?;
        if !self.verifies() || !(self.checks.spf || self.checks.dmarc) {
            self.plugins.set_auth_results(Vec::new());
            return None;
        }
        let spf = verifier
            .spf(self.peer.ip().to_canonical(), helo, sender)
            .await;
        self.plugins
            .set_auth_results(spf.results().iter().map(to_plugin).collect());
        Some(spf)
    }

    /// Removes, from every message whatever the listener verifies, the
    /// `Authentication-Results:` fields that claim our authserv-id (RFC 8601 §5): a forged
    /// one must never survive, not even from an authenticated client.
    pub(super) fn drop_forged_results(&self, envelope: &mut Envelope) {
        envelope.header_edits.push(HeaderEdit::RemoveAuthResults {
            authserv_id: self.live.config.hostname.as_str().to_owned(),
        });
    }

    /// Verifies the complete message and records our `Authentication-Results:` field in
    /// the envelope's header edits (applied when the message leaves, after the removal of
    /// forged ones). Plugins see the results in on-data.
    pub(super) async fn verify_message(
        &mut self,
        raw: &[u8],
        spf: Option<&SpfResults>,
        envelope: &mut Envelope,
    ) {
        let Some(verifier) = self.live.sender_auth.verifier.clone() else {
            return;
        };
        if !self.verifies() {
            return;
        }
        let fallback;
        let spf = match spf {
            Some(spf) => spf,
            None => {
                let helo = envelope.client.helo.clone();
                fallback = verifier
                    .spf(
                        self.peer.ip().to_canonical(),
                        &helo,
                        envelope.sender.as_deref(),
                    )
                    .await;
                &fallback
            }
        };
        let report = verifier.message(raw, spf, self.checks).await;
        envelope.header_edits.push(HeaderEdit::Add {
            name: "Authentication-Results".into(),
            value: report.header_value,
        });
        self.plugins
            .set_auth_results(report.results.iter().map(to_plugin).collect());
    }

    /// Seals the message as it will leave with ARC, when `[arc_seal]` is configured and
    /// this session's mail was verified (what the seal vouches for).
    pub(super) async fn seal_message(
        &mut self,
        raw: &[u8],
        spf: Option<&SpfResults>,
        envelope: &mut Envelope,
    ) {
        if !self.verifies() {
            return;
        }
        // The session itself is not shared across threads: hold only the context over the
        // lookups.
        let live = std::sync::Arc::clone(&self.live);
        let (Some(sealer), Some(verifier), Some(spf)) = (
            live.sender_auth.sealer.as_ref(),
            live.sender_auth.verifier.as_ref(),
            spf,
        ) else {
            return;
        };
        let rendered = apply_header_edits(raw, &envelope.header_edits);
        if let Some(fields) = sealer.seal(verifier.authenticator(), &rendered, spf).await {
            // Edits prepend: the last added is on top, and ARC-Seal belongs there.
            for (name, value) in fields.into_iter().rev() {
                envelope.header_edits.push(HeaderEdit::Add { name, value });
            }
        }
    }

    /// Signs the message as it will leave (the spooled bytes with every header edit
    /// applied) with each key of its From domain that is in its window. Only mail from a
    /// client that may relay is signed: an MX must never lend its key to a forged message
    /// arriving from outside.
    ///
    /// A signature costs its key's operation (RSA-2048: about 0.2 ms) and hashing the
    /// body (milliseconds per megabyte): a message above `INLINE_SIGN_LIMIT` is signed
    /// on the blocking pool, so that it never holds a runtime worker, and the sessions
    /// waiting for it, for that long. A small one is signed here, where handing it over
    /// would cost two thread wake-ups.
    pub(super) async fn sign_message(&mut self, raw: &[u8], envelope: &mut Envelope) {
        let live = std::sync::Arc::clone(&self.live);
        if live.sender_auth.signer.is_empty() || !(self.may_relay || self.authenticated.is_some()) {
            return;
        }
        let rendered = apply_header_edits(raw, &envelope.header_edits);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let sign = move || {
            let Some(domain) = from_domain(&rendered) else {
                return Vec::new();
            };
            live.sender_auth.signer.sign(&rendered, &domain, now)
        };
        let values = if raw.len() <= INLINE_SIGN_LIMIT {
            sign()
        } else {
            tokio::task::spawn_blocking(sign).await.unwrap_or_else(|e| {
                tracing::error!(error = %e, "DKIM signing failed, message left unsigned");
                Vec::new()
            })
        };
        for value in values {
            envelope.header_edits.push(HeaderEdit::Add {
                name: "DKIM-Signature".into(),
                value,
            });
        }
    }
}

/// The domain of the message's (first) RFC 5322 From address.
fn from_domain(message: &[u8]) -> Option<String> {
    let parsed = mail_auth::AuthenticatedMessage::parse(message)?;
    let from = parsed.from.first()?;
    from.rsplit_once('@').map(|(_, d)| d.to_ascii_lowercase())
}

/// A result as the contract types it.
fn to_plugin(result: &AuthResult) -> w::AuthResult {
    w::AuthResult {
        method: match result.method {
            Method::Spf => w::AuthMethod::Spf,
            Method::SpfHelo => w::AuthMethod::SpfHelo,
            Method::Dkim => w::AuthMethod::Dkim,
            Method::Dmarc => w::AuthMethod::Dmarc,
            Method::Arc => w::AuthMethod::Arc,
        },
        verdict: match result.verdict {
            Verdict::Pass => w::AuthVerdict::Pass,
            Verdict::Fail => w::AuthVerdict::Fail,
            Verdict::SoftFail => w::AuthVerdict::Softfail,
            Verdict::Neutral => w::AuthVerdict::Neutral,
            Verdict::None => w::AuthVerdict::None,
            Verdict::TempError => w::AuthVerdict::Temperror,
            Verdict::PermError => w::AuthVerdict::Permerror,
            Verdict::Policy => w::AuthVerdict::Policy,
        },
        domain: result.domain.clone(),
        selector: result.selector.clone(),
        reason: result.reason.clone(),
        policy: result.policy.clone(),
    }
}
