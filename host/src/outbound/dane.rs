//! DANE for SMTP (RFC 7672): an MX host whose TLSA records (`_<port>._tcp.<host>`) DNSSEC
//! authenticates is reached only over TLS, with a certificate those records match; the
//! CAs of the web PKI play no part. Nothing here is trusted unless the resolver proved it:
//! the MX RRset, the host's address records and the TLSA RRset must all be secure, or DANE
//! does not apply (and MTA-STS or the route's policy decides). A bogus or missing answer
//! for a host that should have one makes the host unusable for now (the mail waits).
//!
//! Usages DANE-EE(3) (the server's own certificate or key; names and dates are not
//! checked, §3.1.1) and DANE-TA(2) (a trust anchor in the server's chain; the chain, the
//! dates and the MX host name are checked, §3.1.2) are honoured; PKIX-TA(0) and PKIX-EE(1)
//! are unusable for SMTP (§3.1.3). A secure TLSA RRset without a usable record still
//! makes TLS mandatory, unauthenticated (§2.2).

use std::sync::Arc;

use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use crate::dns::{Authenticated, Dns};

/// TLSA records considered per host (a real host publishes two or three).
const MAX_RECORDS: usize = 16;
/// The largest association data kept (a full certificate, `matching` 0).
const MAX_DATA: usize = 16 * 1024;

/// One usable TLSA record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tlsa {
    /// 2 (DANE-TA) or 3 (DANE-EE).
    pub usage: u8,
    /// 0 (the whole certificate) or 1 (its SubjectPublicKeyInfo).
    pub selector: u8,
    /// 0 (the data itself), 1 (SHA-256) or 2 (SHA-512).
    pub matching: u8,
    /// The association data.
    pub data: Vec<u8>,
}

impl Tlsa {
    /// The record if Tidegate can use it for SMTP (RFC 7672 §3.1), else `None`.
    pub fn usable(usage: u8, selector: u8, matching: u8, data: &[u8]) -> Option<Tlsa> {
        let usable = matches!(usage, 2 | 3)
            && matches!(selector, 0 | 1)
            && match matching {
                0 => !data.is_empty() && data.len() <= MAX_DATA,
                1 => data.len() == 32,
                2 => data.len() == 64,
                _ => false,
            };
        usable.then(|| Tlsa {
            usage,
            selector,
            matching,
            data: data.to_vec(),
        })
    }

    /// Whether `certificate` matches this record's selector and matching type.
    fn matches(&self, certificate: &CertificateDer<'_>) -> bool {
        let selected: Vec<u8> = match self.selector {
            0 => certificate.as_ref().to_vec(),
            _ => match webpki::EndEntityCert::try_from(certificate) {
                Ok(cert) => cert.subject_public_key_info().as_ref().to_vec(),
                Err(_) => return false,
            },
        };
        match self.matching {
            0 => selected == self.data,
            1 => Sha256::digest(&selected).as_slice() == self.data.as_slice(),
            _ => Sha512::digest(&selected).as_slice() == self.data.as_slice(),
        }
    }
}

/// What DANE says about one MX host.
#[derive(Debug, Clone)]
pub enum Decision {
    /// DANE does not apply (no secure TLSA records): the usual policy decides.
    NotApplicable,
    /// STARTTLS is mandatory, and the certificate must match these records (none: any
    /// certificate, still encrypted).
    Verify(Vec<Tlsa>),
    /// The host cannot be used now: a bogus answer, or no answer where one was due.
    Defer(String),
}

/// What DNSSEC says about a domain's MX RRset, which decides whether DANE may apply to
/// its hosts at all (RFC 7672 §2.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxSecurity {
    /// Secure (a secure denial too: no MX, the domain is its own host): DANE may apply.
    Secure,
    /// Unsigned, or not known: no DANE.
    Insecure,
    /// Bogus, or no answer: a lookup error (§2.1.1), the mail waits.
    Bogus(String),
}

/// The DNSSEC status of the MX RRset of `domain` (absolute or not).
pub async fn mx_security(dns: &Dns, domain: &str) -> MxSecurity {
    let name = crate::outbound::lookup::absolute(domain);
    match dns.authenticated(&name, RecordType::MX).await {
        Authenticated::Secure(_) => MxSecurity::Secure,
        Authenticated::Bogus(why) => MxSecurity::Bogus(why),
        // No answer from the validating resolver where the plain one had one: waiting is
        // safer than a downgrade an attacker could cause by dropping DNSSEC queries.
        Authenticated::Failed(why) => MxSecurity::Bogus(format!("no DNSSEC answer: {why}")),
        Authenticated::Insecure => MxSecurity::Insecure,
    }
}

/// DANE's decision for the MX host `host` reached on `port`, its MX RRset being secure.
pub async fn decide(dns: &Dns, host: &str, port: u16) -> Decision {
    let host = host.trim_end_matches('.');
    let fqdn = crate::outbound::lookup::absolute(host);
    // §2.2.2: the TLSA records of a host whose addresses are not secure are not looked
    // up (an attacker who forged the addresses could have forged the host's name).
    let mut secure_addresses = false;
    for record_type in [RecordType::A, RecordType::AAAA] {
        match dns.authenticated(&fqdn, record_type).await {
            Authenticated::Secure(records) if !records.is_empty() => secure_addresses = true,
            Authenticated::Bogus(why) => return Decision::Defer(why),
            _ => {}
        }
        if secure_addresses {
            break;
        }
    }
    if !secure_addresses {
        return Decision::NotApplicable;
    }
    let name = format!("_{port}._tcp.{fqdn}");
    match dns.authenticated(&name, RecordType::TLSA).await {
        Authenticated::Secure(records) if records.is_empty() => Decision::NotApplicable,
        Authenticated::Secure(records) => Decision::Verify(
            records
                .iter()
                .filter_map(|record| match record {
                    RData::TLSA(tlsa) => Tlsa::usable(
                        tlsa.cert_usage.into(),
                        tlsa.selector.into(),
                        tlsa.matching.into(),
                        &tlsa.cert_data,
                    ),
                    _ => None,
                })
                .take(MAX_RECORDS)
                .collect(),
        ),
        Authenticated::Insecure => Decision::NotApplicable,
        Authenticated::Bogus(why) => Decision::Defer(format!("DNSSEC-bogus TLSA records: {why}")),
        Authenticated::Failed(why) => Decision::Defer(format!("no TLSA answer: {why}")),
    }
}

/// Judges a server's certificate by its TLSA records.
#[derive(Debug)]
pub struct DaneVerifier {
    records: Vec<Tlsa>,
    provider: Arc<CryptoProvider>,
}

impl DaneVerifier {
    /// A verifier for the host's usable `records`.
    pub fn new(records: Vec<Tlsa>) -> DaneVerifier {
        DaneVerifier {
            records,
            provider: crate::tls::crypto_provider(),
        }
    }

    /// A client configuration that verifies with these records.
    pub fn client_config(
        records: Vec<Tlsa>,
    ) -> Result<Arc<rustls::ClientConfig>, crate::tls::TlsError> {
        crate::tls::client_config_with_verifier(Arc::new(DaneVerifier::new(records)))
    }

    /// DANE-TA(2): a certificate of the chain matching a record becomes the only trust
    /// anchor, and the chain is verified to it with the name checked.
    fn verify_to_anchor(
        &self,
        record: &Tlsa,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<bool, rustls::Error> {
        let Some(anchor) = intermediates.iter().find(|c| record.matches(c)) else {
            return Ok(false);
        };
        let mut roots = RootCertStore::empty();
        roots
            .add(anchor.clone().into_owned())
            .map_err(|e| rustls::Error::General(format!("DANE-TA anchor: {e}")))?;
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&self.provider),
        )
        .build()
        .map_err(|e| rustls::Error::General(format!("DANE-TA anchor: {e}")))?;
        // The chain without the anchor itself (webpki builds the path up to it).
        let chain: Vec<CertificateDer<'_>> = intermediates
            .iter()
            .filter(|c| c.as_ref() != anchor.as_ref())
            .cloned()
            .collect();
        verifier
            .verify_server_cert(end_entity, &chain, server_name, &[], now)
            .map(|_| true)
    }
}

impl ServerCertVerifier for DaneVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.records.is_empty() {
            // §2.2: secure TLSA records, none usable: encrypt without authentication.
            return Ok(ServerCertVerified::assertion());
        }
        let mut last_error = None;
        for record in &self.records {
            let matched = match record.usage {
                3 => record.matches(end_entity),
                _ => {
                    match self.verify_to_anchor(record, end_entity, intermediates, server_name, now)
                    {
                        Ok(matched) => matched,
                        Err(e) => {
                            last_error = Some(e);
                            false
                        }
                    }
                }
            };
            if matched {
                tracing::debug!(
                    usage = record.usage,
                    selector = record.selector,
                    matching = record.matching,
                    "DANE: the certificate matches a TLSA record"
                );
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(match last_error {
            Some(e) => rustls::Error::General(format!(
                "DANE: no TLSA record matches the certificate ({e})"
            )),
            None => rustls::Error::General("DANE: no TLSA record matches the certificate".into()),
        })
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(name: &str) -> (CertificateDer<'static>, Vec<u8>) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (
            cert.der().clone(),
            rcgen::PublicKeyData::subject_public_key_info(&key),
        )
    }

    #[test]
    fn only_dane_usages_with_known_selectors_and_digests_are_usable() {
        assert!(Tlsa::usable(3, 1, 1, &[0; 32]).is_some());
        assert!(Tlsa::usable(2, 0, 2, &[0; 64]).is_some());
        assert!(Tlsa::usable(3, 0, 0, b"cert").is_some());
        // PKIX usages are not for SMTP (RFC 7672 §3.1.3).
        assert!(Tlsa::usable(1, 1, 1, &[0; 32]).is_none());
        assert!(Tlsa::usable(0, 1, 1, &[0; 32]).is_none());
        // A digest of the wrong length, unknown selectors and matching types.
        assert!(Tlsa::usable(3, 1, 1, &[0; 31]).is_none());
        assert!(Tlsa::usable(3, 2, 1, &[0; 32]).is_none());
        assert!(Tlsa::usable(3, 1, 3, &[0; 32]).is_none());
    }

    #[test]
    fn dane_ee_matches_the_key_or_the_certificate_whatever_the_name() {
        let (cert, spki) = self_signed("mx.example.test");
        let (other, _) = self_signed("mx.example.test");
        let name = ServerName::try_from("not-the-name.test").unwrap();
        let now = UnixTime::now();
        for record in [
            Tlsa::usable(3, 1, 1, &Sha256::digest(&spki)).unwrap(),
            Tlsa::usable(3, 1, 2, &Sha512::digest(&spki)).unwrap(),
            Tlsa::usable(3, 0, 1, &Sha256::digest(cert.as_ref())).unwrap(),
            Tlsa::usable(3, 0, 0, cert.as_ref()).unwrap(),
        ] {
            let verifier = DaneVerifier::new(vec![record]);
            assert!(
                verifier
                    .verify_server_cert(&cert, &[], &name, &[], now)
                    .is_ok()
            );
            assert!(
                verifier
                    .verify_server_cert(&other, &[], &name, &[], now)
                    .is_err()
            );
        }
    }

    #[test]
    fn dane_ta_needs_the_chain_to_the_anchor_and_the_name() {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, &ca_key);
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["mx.example.test".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        let record = Tlsa::usable(2, 0, 1, &Sha256::digest(ca.der().as_ref())).unwrap();
        let verifier = DaneVerifier::new(vec![record]);
        let now = UnixTime::now();
        let chain = [ca.der().clone()];
        let right = ServerName::try_from("mx.example.test").unwrap();
        let wrong = ServerName::try_from("other.example.test").unwrap();
        assert!(
            verifier
                .verify_server_cert(leaf.der(), &chain, &right, &[], now)
                .is_ok()
        );
        assert!(
            verifier
                .verify_server_cert(leaf.der(), &chain, &wrong, &[], now)
                .is_err()
        );
        // Without the anchor in the chain there is nothing to match.
        assert!(
            verifier
                .verify_server_cert(leaf.der(), &[], &right, &[], now)
                .is_err()
        );
    }
}
