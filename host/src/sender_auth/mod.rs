//! Sender authentication: [`verify`] tells forged mail from real mail on the way in (SPF,
//! DKIM, DMARC, ARC, one `Authentication-Results:` field), [`sign`] makes what leaves pass
//! the receivers' checks (DKIM), and [`keys`] reads, makes and publishes the keys.
//!
//! What runs where: verification on listeners whose `verify` list asks for it (all four
//! checks on `smtp` listeners by default, none on submission, where the client is known);
//! signing only for mail from clients that may relay (authenticated, or in
//! `relay_networks`), so a forged message arriving from the internet with one of our
//! domains in its From is never signed with our key.

pub mod keys;
pub mod seal;
pub mod sign;
pub mod verify;

pub use verify::{AuthResult, Checks, Method, Report, SpfResults, Verdict, Verifier};

use crate::config::Config;
use crate::dns::Dns;

/// The gateway's sender authentication.
#[derive(Debug, Default)]
pub struct SenderAuth {
    /// Verification, when a resolver is available.
    pub verifier: Option<Verifier>,
    /// DKIM signing keys.
    pub signer: sign::Signer,
    /// ARC sealing, when `[arc_seal]` is configured.
    pub sealer: Option<seal::Sealer>,
}

impl SenderAuth {
    /// Sets up verification over `dns` and loads the signing keys of `config`.
    pub fn new(config: &Config, dns: &Dns) -> anyhow::Result<SenderAuth> {
        let sealer = match &config.arc_seal {
            Some(arc) => Some(
                seal::Sealer::load(arc, config.hostname.as_str())
                    .map_err(|e| anyhow::anyhow!("arc_seal: {e}"))?,
            ),
            None => None,
        };
        Ok(SenderAuth {
            verifier: Verifier::new(dns, config.hostname.as_str()),
            signer: sign::Signer::load(&config.dkim_sign)?,
            sealer,
        })
    }
}
