//! ARC sealing (RFC 8617) on the way out, for a gateway that forwards mail after changing
//! it (a mailing list, a footer, a rewritten subject): the next hop's DKIM will fail, but
//! the seal records what this gateway verified when the message arrived, under its own
//! key, so a receiver that trusts it can still judge the original sender.
//!
//! The seal is made over the bytes that will leave (every edit applied), with the chain
//! as it stands (a broken chain is never sealed over, `cv=fail` ends it) and the results
//! of verifying those same bytes.

use mail_auth::arc::ArcSealer;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, Done};
use mail_auth::{AuthenticatedMessage, AuthenticationResults, MessageAuthenticator};

use super::keys::{KeyError, RsaKey, SigningKey};
use super::verify::SpfResults;
use crate::config::ArcSealConfig;

/// What an ARC message signature covers besides the ARC fields themselves. Fields that
/// a message may carry several times (DKIM-Signature, Received) are left out: mail-auth
/// orders several instances of one field differently when signing than when verifying,
/// and the seal would not survive the next hop of this same gateway.
const SEALED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
];

/// The configured sealer.
pub struct Sealer {
    sealer: ArcSealer<RsaKey, Done>,
    authserv_id: String,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("authserv_id", &self.authserv_id)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// The sealer of `[arc_seal]`; its key must be RSA (RFC 8617 seals with rsa-sha256).
    pub fn load(config: &ArcSealConfig, authserv_id: &str) -> Result<Sealer, KeyError> {
        let key = match SigningKey::load(&config.key_file)? {
            SigningKey::Rsa(key) => key,
            SigningKey::Ed25519(_) => {
                return Err(KeyError::Invalid {
                    path: config.key_file.display().to_string(),
                    why: "an ARC seal is RSA-SHA256 (RFC 8617): an Ed25519 key cannot seal".into(),
                });
            }
        };
        let sealer = ArcSealer::from_key(key)
            .domain(config.domain.as_str())
            .selector(config.selector.as_str())
            .headers(SEALED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        Ok(Sealer {
            sealer,
            authserv_id: authserv_id.to_owned(),
        })
    }

    /// The ARC set for `message` (as it will leave) as header fields `(name, value)`, top
    /// first; `None` when the chain is broken (nothing may be sealed over it) or the
    /// message cannot be read.
    pub async fn seal(
        &self,
        authenticator: &MessageAuthenticator,
        message: &[u8],
        spf: &SpfResults,
    ) -> Option<Vec<(String, String)>> {
        let parsed = AuthenticatedMessage::parse(message)?;
        let arc = authenticator.verify_arc(&parsed).await;
        if !arc.can_be_sealed() {
            tracing::info!(result = ?arc.result(), "ARC chain broken: not sealed");
            return None;
        }
        let dkim = authenticator.verify_dkim(&parsed).await;
        let header_from = parsed.from.first().cloned().unwrap_or_default();
        let results = spf
            .add_to(AuthenticationResults::new(&self.authserv_id))
            .with_dkim_results(&dkim, &header_from)
            .with_arc_result(&arc, spf.client());
        let set = match self.sealer.seal(&parsed, &results, &arc) {
            Ok(set) => set,
            Err(e) => {
                tracing::error!(error = %e, "ARC sealing failed, message left unsealed");
                return None;
            }
        };
        Some(split_fields(&set.to_header()))
    }
}

/// `Name: value\r\n` fields (values folded with CRLF + WSP) into `(name, value)` pairs.
fn split_fields(text: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in text.split_inclusive("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push_str(line);
            }
        } else if let Some((name, value)) = line.split_once(':') {
            fields.push((name.to_owned(), value.trim_start().to_owned()));
        }
    }
    for (_, value) in &mut fields {
        let trimmed = value.trim_end_matches("\r\n").len();
        value.truncate(trimmed);
    }
    fields
}
