//! DKIM signing on the way out: every message whose RFC 5322 From domain has a
//! `[[dkim_sign]]` entry in its time window is signed, relaxed/relaxed, over the bytes
//! that will leave (the message with every plugin's header edits applied), once, before it
//! enters the queue: nothing edits a message after that, so no later change can break the
//! signature.
//!
//! Rotation without a gap: a domain may have several entries (selectors), each with a
//! `not_before` / `not_after` window; every entry inside its window signs. Publish a new
//! key's record, give it a `not_before` after the DNS has had time to spread, and give the
//! old one a `not_after`; keep the old record published for a while after that.

use mail_auth::common::crypto::Ed25519Key;
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};

use super::keys::{KeyError, RsaKey, SigningKey};
use crate::config::DkimSignConfig;

/// What is signed when `headers` is not configured. From is listed twice, so the signature
/// covers one more From than the message has and a From added later breaks it; a header
/// in the list that the message does not have is signed as absent, so it cannot be added
/// either (RFC 6376 §5.4.2, "over-signing").
pub const DEFAULT_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Sender",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
];

/// A signer ready for one key, domain, selector and header list.
enum Built {
    Rsa(DkimSigner<RsaKey, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// One signing key of one domain.
struct Entry {
    domain: String,
    selector: String,
    signer: Built,
    not_before: Option<i64>,
    not_after: Option<i64>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .finish_non_exhaustive()
    }
}

/// Every configured signing key.
#[derive(Debug, Default)]
pub struct Signer {
    entries: Vec<Entry>,
}

/// Why an entry could not be set up: its index and the key's problem.
#[derive(Debug, thiserror::Error)]
#[error("dkim_sign[{index}]: {error}")]
pub struct SignerError {
    /// The entry.
    pub index: usize,
    /// The key's problem.
    pub error: KeyError,
}

impl Signer {
    /// Loads the keys of every `[[dkim_sign]]` entry.
    pub fn load(config: &[DkimSignConfig]) -> Result<Signer, SignerError> {
        let mut entries = Vec::with_capacity(config.len());
        for (index, entry) in config.iter().enumerate() {
            let key =
                SigningKey::load(&entry.key_file).map_err(|error| SignerError { index, error })?;
            let headers: Vec<String> = entry
                .headers
                .clone()
                .unwrap_or_else(|| DEFAULT_HEADERS.iter().map(|h| (*h).to_owned()).collect());
            let domain = entry.domain.as_str().to_owned();
            let signer = match key {
                SigningKey::Rsa(key) => {
                    Built::Rsa(prepared(key, &domain, &entry.selector, &headers))
                }
                SigningKey::Ed25519(key) => {
                    Built::Ed25519(prepared(key, &domain, &entry.selector, &headers))
                }
            };
            entries.push(Entry {
                domain,
                selector: entry.selector.clone(),
                signer,
                not_before: entry.not_before.map(|t| t.unix_timestamp()),
                not_after: entry.not_after.map(|t| t.unix_timestamp()),
            });
        }
        Ok(Signer { entries })
    }

    /// Whether any key is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The `DKIM-Signature:` field values for `message` (as it will leave), from `domain`
    /// (its RFC 5322 From domain), at `now` (Unix seconds). Signing failures are logged
    /// and leave the message unsigned by that key: delivery must not stop for them.
    pub fn sign(&self, message: &[u8], domain: &str, now: i64) -> Vec<String> {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let mut out = Vec::new();
        for entry in self.entries.iter().filter(|e| {
            e.domain == domain
                && e.not_before.is_none_or(|t| now >= t)
                && e.not_after.is_none_or(|t| now < t)
        }) {
            let signed = match &entry.signer {
                Built::Rsa(signer) => signer.sign(message),
                Built::Ed25519(signer) => signer.sign(message),
            };
            match signed {
                Ok(signature) => out.push(field_value(&signature.to_header())),
                Err(e) => {
                    tracing::error!(domain = %entry.domain, selector = %entry.selector, error = %e, "DKIM signing failed, message left unsigned by this key");
                }
            }
        }
        out
    }
}

/// A signer for one key, relaxed/relaxed.
fn prepared<T: mail_auth::common::crypto::SigningKey>(
    key: T,
    domain: &str,
    selector: &str,
    headers: &[String],
) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(headers.iter().map(String::as_str))
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

/// The value of a `Name: value\r\n` field as mail-auth writes it. mail-auth may fold the
/// line right before the final `;` (an RSA-2048 `b=` ends at its wrapping column); the
/// signature covers `b=;` either way, but some verifiers (dkimpy) keep that folding
/// whitespace in `b=` and fail, so it is taken out.
fn field_value(field: &str) -> String {
    let value = field.split_once(':').map_or(field, |(_, v)| v);
    let value = value.trim_start().trim_end_matches("\r\n");
    match value.strip_suffix(';') {
        Some(head) => format!("{};", head.trim_end()),
        None => value.to_owned(),
    }
}
