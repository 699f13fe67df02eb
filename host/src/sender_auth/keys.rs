//! DKIM keys: reading them from PEM files (the algorithm follows the key), making new ones
//! (`tidegate dkim keygen`), and the DNS TXT record that publishes each.

use std::path::Path;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine as _;
use mail_auth::common::crypto::{CryptoError, Ed25519Key, Sha256};
use mail_auth::common::headers::Writable;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// A key's algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// RSA-SHA256 (RFC 6376).
    Rsa,
    /// Ed25519-SHA256 (RFC 8463).
    Ed25519,
}

impl Algorithm {
    /// The `k=` tag of the key record.
    pub fn tag(self) -> &'static str {
        match self {
            Algorithm::Rsa => "rsa",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file could not be read or written.
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: String,
        /// The error (not a `source`: the message already says it).
        error: std::io::Error,
    },
    /// The file holds no private key this gateway can sign with.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
}

/// An RSA private key that signs RSASSA-PKCS1-v1_5 with SHA-256 (`rsa-sha256`) through
/// aws-lc-rs, for mail-auth's DKIM signer and ARC sealer.
///
/// mail-auth's own `RsaKey` signs with ring, which has no AVX-512 IFMA code for RSA: on
/// the benchmark machine (AMD EPYC, x86-64 with AVX-512 IFMA) an RSA-2048 signature takes
/// 0.41 ms with ring and 0.21 ms with aws-lc, and one is made for every message relayed.
/// Everything else of sender authentication (hashing, verification) stays with mail-auth.
pub struct RsaKey {
    inner: RsaKeyPair,
    rng: SystemRandom,
}

impl RsaKey {
    /// From a PKCS#1 or PKCS#8 DER private key.
    fn from_der(der: &PrivateKeyDer<'_>) -> Result<RsaKey, String> {
        let inner = match der {
            PrivateKeyDer::Pkcs1(der) => RsaKeyPair::from_der(der.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(der) => RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()),
            _ => return Err("not a PKCS#1 or PKCS#8 key".into()),
        }
        .map_err(|e| e.to_string())?;
        Ok(RsaKey {
            inner,
            rng: SystemRandom::new(),
        })
    }

    /// The public key, a DER PKCS#1 RSAPublicKey.
    pub fn public_key(&self) -> Vec<u8> {
        self.inner.public_key().as_ref().to_vec()
    }
}

impl mail_auth::common::crypto::SigningKey for RsaKey {
    type Hasher = Sha256;

    fn sign(&self, input: impl Writable) -> mail_auth::Result<Vec<u8>> {
        let mut data = Vec::with_capacity(256);
        input.write(&mut data);
        let mut signature = vec![0; self.inner.public_modulus_len()];
        self.inner
            .sign(&RSA_PKCS1_SHA256, &self.rng, &data, &mut signature)
            .map_err(|e| mail_auth::Error::Crypto(CryptoError::Library(e.to_string())))?;
        Ok(signature)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        mail_auth::common::crypto::Algorithm::RsaSha256
    }
}

/// A private key ready to sign, with its public half for the DNS record.
pub enum SigningKey {
    /// RSA.
    Rsa(RsaKey),
    /// Ed25519.
    Ed25519(Ed25519Key),
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigningKey::Rsa(_) => "SigningKey::Rsa",
            SigningKey::Ed25519(_) => "SigningKey::Ed25519",
        })
    }
}

impl SigningKey {
    /// Reads a PEM private key: PKCS#8 (`PRIVATE KEY`, RSA or Ed25519) or PKCS#1 (`RSA
    /// PRIVATE KEY`).
    pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
        let name = path.display().to_string();
        let pem = std::fs::read(path).map_err(|error| KeyError::Io {
            path: name.clone(),
            error,
        })?;
        let invalid = |why: String| KeyError::Invalid {
            path: name.clone(),
            why,
        };
        let der = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| invalid(format!("no PEM private key: {e}")))?;
        if let PrivateKeyDer::Pkcs8(pkcs8) = &der
            && let Ok(key) = Ed25519Key::from_pkcs8_maybe_unchecked_der(pkcs8.secret_pkcs8_der())
        {
            return Ok(SigningKey::Ed25519(key));
        }
        match der {
            PrivateKeyDer::Pkcs1(_) | PrivateKeyDer::Pkcs8(_) => RsaKey::from_der(&der)
                .map(SigningKey::Rsa)
                .map_err(|e| invalid(format!("neither an Ed25519 nor a usable RSA key: {e}"))),
            _ => Err(invalid(
                "an EC (SEC1) key: DKIM signs with RSA or Ed25519".into(),
            )),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> Algorithm {
        match self {
            SigningKey::Rsa(_) => Algorithm::Rsa,
            SigningKey::Ed25519(_) => Algorithm::Ed25519,
        }
    }

    /// The `p=` value of the key record: for RSA the SubjectPublicKeyInfo (what
    /// `openssl rsa -pubout` and opendkim-genkey publish), for Ed25519 the raw 32 bytes
    /// (RFC 8463).
    pub fn public_record_value(&self) -> String {
        let der = match self {
            SigningKey::Rsa(key) => rsa_spki(&key.public_key()),
            SigningKey::Ed25519(key) => key.public_key(),
        };
        base64::engine::general_purpose::STANDARD.encode(der)
    }

    /// The TXT record's text: `v=DKIM1; k=...; p=...`.
    pub fn record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().tag(),
            self.public_record_value()
        )
    }
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (rsaEncryption, NULL parameters).
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = content.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend(bytes);
        }
        out.extend_from_slice(content);
        out
    }
    // SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }
    const ALGORITHM: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut content = ALGORITHM.to_vec();
    content.extend(der(0x03, &bits));
    der(0x30, &content)
}

/// Makes a new private key and writes it to `out` as PKCS#8 PEM, mode 0600 (refusing to
/// overwrite a file).
pub fn generate(algorithm: Algorithm, bits: usize, out: &Path) -> Result<SigningKey, KeyError> {
    let name = out.display().to_string();
    let invalid = |why: String| KeyError::Invalid {
        path: name.clone(),
        why,
    };
    let pem = match algorithm {
        Algorithm::Rsa => {
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits)
                .map_err(|e| invalid(format!("RSA key generation: {e}")))?;
            key.to_pkcs8_pem(LineEnding::LF)
                .map_err(|e| invalid(format!("PEM: {e}")))?
                .to_string()
        }
        Algorithm::Ed25519 => {
            let der = Ed25519Key::generate_pkcs8()
                .map_err(|e| invalid(format!("Ed25519 key generation: {e}")))?;
            pem_wrap("PRIVATE KEY", &der)
        }
    };
    write_private(out, pem.as_bytes()).map_err(|error| KeyError::Io {
        path: name.clone(),
        error,
    })?;
    SigningKey::load(out)
}

fn pem_wrap(label: &str, der: &[u8]) -> String {
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The zone-file line that publishes a key: `S._domainkey.D. IN TXT "..."`, the text cut
/// into strings of at most 255 octets as a TXT record requires.
pub fn zone_line(domain: &str, selector: &str, record: &str) -> String {
    let strings: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|chunk| format!("\"{}\"", String::from_utf8_lossy(chunk)))
        .collect();
    format!(
        "{selector}._domainkey.{}. IN TXT {}",
        domain.trim_end_matches('.'),
        strings.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_back_with_their_algorithm_and_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let ed = generate(Algorithm::Ed25519, 0, &dir.path().join("ed.pem")).unwrap();
        assert_eq!(ed.algorithm(), Algorithm::Ed25519);
        assert!(ed.record().starts_with("v=DKIM1; k=ed25519; p="));
        let rsa = generate(Algorithm::Rsa, 2048, &dir.path().join("rsa.pem")).unwrap();
        assert_eq!(rsa.algorithm(), Algorithm::Rsa);
        // A SubjectPublicKeyInfo, as opendkim-genkey publishes it.
        assert!(
            rsa.public_record_value().starts_with("MIIBIj"),
            "{}",
            rsa.record()
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("rsa.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(generate(Algorithm::Ed25519, 0, &dir.path().join("ed.pem")).is_err());
    }

    #[test]
    fn a_long_record_is_cut_into_txt_strings() {
        let record = "x".repeat(300);
        let line = zone_line("example.test", "s1", &record);
        assert!(line.starts_with("s1._domainkey.example.test. IN TXT \""));
        assert_eq!(line.matches('"').count(), 4);
    }
}
