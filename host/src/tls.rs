//! TLS building blocks: the server side for STARTTLS and implicit TLS, certificate hot
//! reload, the client side for delivery, and self-signed certificates for `gen-cert`.
//!
//! Everything runs on rustls with the *ring* provider, handed to every configuration
//! explicitly: a process-wide default provider would make the behaviour depend on which
//! crate happened to install one first, and aws-lc-rs (rustls' own default) needs cmake,
//! NASM and a long C build.
//!
//! Only TLS 1.2 and 1.3 exist here, by construction: rustls implements nothing older, so no
//! setting can bring back SSLv3, TLS 1.0 or 1.1, and the cipher suites are the provider's
//! defaults (AEAD only, forward secret).
//!
//! On the server, one [`rustls::ServerConfig`] lives as long as the [`ServerTls`]; what
//! changes on reload is the certificate set its resolver reads at each handshake. So an
//! acceptor handed out before a reload still presents the new certificates, and handshakes
//! in progress keep the ones they started with.

use std::collections::HashMap;
use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, CommonState, DigitallySignedStruct, ProtocolVersion, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme, SupportedProtocolVersion,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::DomainName;

/// The protocol versions offered and accepted, newest first. rustls has nothing older than
/// TLS 1.2, so this list is also the complete set of what could ever be negotiated.
static VERSIONS: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];

/// The *ring* crypto provider with its default (modern) cipher suites, built once and
/// passed explicitly to every configuration.
fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: LazyLock<Arc<CryptoProvider>> =
        LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    PROVIDER.clone()
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// The `[tls]` table: the default certificate and, in `[[tls.sni]]`, certificates chosen by
/// the name the client asks for (SNI).
///
/// ```toml
/// [tls]
/// certificate = "cert.pem"   # the chain, the server's own certificate first
/// key = "key.pem"            # PKCS#8, PKCS#1 (RSA) or SEC1 (EC), unencrypted
///
/// [[tls.sni]]
/// names = ["mx.example.test", "*.example.org"]
/// certificate = "mx.pem"
/// key = "mx.key"
/// ```
///
/// Relative paths are resolved by the caller ([`TlsConfig::resolve_paths`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The PEM certificate chain presented when no `[[tls.sni]]` entry matches.
    pub certificate: PathBuf,
    /// The PEM private key of `certificate`.
    pub key: PathBuf,
    /// Certificates chosen by the client's server name.
    #[serde(default)]
    pub sni: Vec<SniCertificate>,
}

/// One `[[tls.sni]]` entry: a certificate for the names listed.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// The server names this certificate is presented for: exact names, or `*.domain` for
    /// any single label under `domain`.
    pub names: Vec<CertName>,
    /// The PEM certificate chain.
    pub certificate: PathBuf,
    /// The PEM private key of `certificate`.
    pub key: PathBuf,
}

impl TlsConfig {
    /// Makes every relative path relative to `base` (the configuration file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        resolve(&mut self.certificate);
        resolve(&mut self.key);
        for entry in &mut self.sni {
            resolve(&mut entry.certificate);
            resolve(&mut entry.key);
        }
    }

    /// Every certificate and key file, in configuration order.
    pub fn files(&self) -> Vec<&Path> {
        let mut files = vec![self.certificate.as_path(), self.key.as_path()];
        for entry in &self.sni {
            files.push(&entry.certificate);
            files.push(&entry.key);
        }
        files
    }
}

/// A server name in a `[[tls.sni]]` entry, checked and lowercased when the configuration
/// is read (so a bad name is reported with its line): a DNS name, or `*.` and a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct CertName(String);

impl CertName {
    /// The name in lowercase, without a trailing dot; wildcards keep their `*.`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// For `*.example.test`, `Some("example.test")`.
    fn wildcard_base(&self) -> Option<&str> {
        self.0.strip_prefix("*.")
    }
}

impl fmt::Display for CertName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for CertName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        match name.strip_prefix("*.") {
            Some(base) => {
                let base = DomainName::try_from(base.to_owned())?;
                // A wildcard straight under a top-level domain would cover a whole registry.
                if !base.as_str().contains('.') {
                    return Err(format!(
                        "`{name}`: a wildcard needs a domain of at least two labels after `*.`"
                    ));
                }
                Ok(CertName(format!("*.{base}")))
            }
            None => Ok(CertName(DomainName::try_from(name)?.as_str().to_owned())),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

/// What went wrong loading, generating or writing certificates; file problems name the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("{}: cannot write: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file is not well-formed PEM.
    #[error("{}: not valid PEM: {message}", path.display())]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        message: String,
    },
    /// A certificate file holds no `CERTIFICATE` block.
    #[error("{}: no certificate in it (expected a PEM `-----BEGIN CERTIFICATE-----` block)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate could not be parsed or used.
    #[error("{}: unusable certificate: {message}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A key file holds no private key that can be read.
    #[error("{}: no private key in it (expected an unencrypted PEM `PRIVATE KEY`, `RSA PRIVATE KEY` or `EC PRIVATE KEY` block)", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// A private key is of a kind the provider cannot sign with.
    #[error("{}: unusable private key: {message}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// The key is not the key of the (first) certificate.
    #[error(
        "{}: this key does not belong to the first certificate in {} (the server's own certificate must come first in the chain)",
        key.display(),
        certificate.display()
    )]
    KeyMismatch {
        /// The certificate file.
        certificate: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A problem with the names or the shape of the TLS settings.
    #[error("{0}")]
    Settings(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// rcgen could not generate a certificate.
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

// ---------------------------------------------------------------------------------------
// Loading certificates and keys
// ---------------------------------------------------------------------------------------

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses every `CERTIFICATE` block of a PEM file, in order.
fn parse_certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    if certificates.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certificates)
}

/// Parses the first private key (PKCS#8, PKCS#1 or SEC1) of a PEM file; other blocks, such
/// as the `EC PARAMETERS` openssl writes first, are skipped.
fn parse_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::pem_slice_iter(pem).next() {
        Some(Ok(key)) => Ok(key),
        Some(Err(e)) => Err(TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        }),
        None => Err(TlsError::NoKey {
            path: path.to_owned(),
        }),
    }
}

/// Loads a certificate chain and its key, checking that they belong together. `digest`
/// takes in the files' bytes so a reload can tell whether anything changed.
fn load_pair(
    certificate: &Path,
    key: &Path,
    digest: &mut Sha256,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let cert_pem = read_file(certificate)?;
    let key_pem = read_file(key)?;
    digest.update(&cert_pem);
    digest.update(&key_pem);
    let chain = parse_certificates(certificate, &cert_pem)?;
    let key_der = parse_key(key, &key_pem)?;
    let signing_key = provider()
        .key_provider
        .load_private_key(key_der)
        .map_err(|e| TlsError::BadKey {
            path: key.to_owned(),
            message: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        // `Unknown`: the key cannot tell its public half; the handshake will tell instead.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::KeyMismatch {
                certificate: certificate.to_owned(),
                key: key.to_owned(),
            });
        }
        // Anything else comes from parsing the certificate itself.
        Err(e) => {
            return Err(TlsError::BadCertificate {
                path: certificate.to_owned(),
                message: e.to_string(),
            });
        }
    }
    Ok(Arc::new(certified))
}

/// One loaded set of certificates: what the resolver picks from at each handshake.
#[derive(Debug)]
struct CertStore {
    default: Arc<CertifiedKey>,
    /// Exact names, lowercase.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.test` entries, keyed by `example.test`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    /// A digest of every file's bytes, to tell a real change from a touched file.
    digest: [u8; 32],
}

impl CertStore {
    fn load(config: &TlsConfig) -> Result<CertStore, TlsError> {
        let mut digest = Sha256::new();
        let default = load_pair(&config.certificate, &config.key, &mut digest)?;
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, entry) in config.sni.iter().enumerate() {
            if entry.names.is_empty() {
                return Err(TlsError::Settings(format!(
                    "tls.sni[{i}].names: at least one name is needed"
                )));
            }
            let certified = load_pair(&entry.certificate, &entry.key, &mut digest)?;
            for name in &entry.names {
                let (map, key) = match name.wildcard_base() {
                    Some(base) => (&mut wildcard, base),
                    None => (&mut exact, name.as_str()),
                };
                if map.insert(key.to_owned(), certified.clone()).is_some() {
                    return Err(TlsError::Settings(format!(
                        "tls.sni[{i}].names: `{name}` is listed in two [[tls.sni]] entries"
                    )));
                }
            }
            // Names are part of the settings: a change of names alone is a change too.
            for name in &entry.names {
                digest.update(name.as_str().as_bytes());
                digest.update([0]);
            }
        }
        Ok(CertStore {
            default,
            exact,
            wildcard,
            digest: digest.finalize().into(),
        })
    }

    /// The certificate for the name the client asked for: an exact entry, else a wildcard
    /// entry for its parent domain (one label only), else the default.
    fn select(&self, server_name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(certified) = self.exact.get(&name) {
            return certified.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(certified) = self.wildcard.get(parent)
        {
            return certified.clone();
        }
        self.default.clone()
    }
}

/// The certificate resolver installed in the one `ServerConfig`; reloads swap its store.
#[derive(Debug)]
struct SniResolver {
    store: ArcSwap<CertStore>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // Never `None`: a client without SNI, or with an unknown name, still gets TLS (the
        // default certificate) rather than an aborted handshake; SMTP clients rarely check
        // names, and those that do will report the mismatch themselves.
        Some(self.store.load().select(client_hello.server_name()))
    }
}

// ---------------------------------------------------------------------------------------
// The server side
// ---------------------------------------------------------------------------------------

/// The server's TLS: one acceptor whose certificates can be reloaded while it runs.
pub struct ServerTls {
    resolver: Arc<SniResolver>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("resolver", &self.resolver)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificates and builds the acceptor: TLS 1.2 and 1.3, the provider's
    /// default cipher suites, no client certificates, SNI selection. Blocking file I/O.
    pub fn load(config: &TlsConfig) -> Result<ServerTls, TlsError> {
        let resolver = Arc::new(SniResolver {
            store: ArcSwap::from_pointee(CertStore::load(config)?),
        });
        let server_config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(VERSIONS)?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(ServerTls {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(server_config)),
        })
    }

    /// The acceptor for a new handshake (a reference-count increment). It follows reloads:
    /// the certificates are picked when the handshake starts, not when this is called.
    pub fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Loads the certificates again and, if they all load, uses them for new handshakes;
    /// on error the current ones stay. Returns whether any file's contents (or the names)
    /// changed. Blocking file I/O.
    pub fn reload(&self, config: &TlsConfig) -> Result<bool, TlsError> {
        let store = CertStore::load(config)?;
        let changed = store.digest != self.resolver.store.load().digest;
        self.resolver.store.store(Arc::new(store));
        Ok(changed)
    }

    /// Watches the directories of the certificate and key files until `shutdown`, and
    /// reloads on a change (debounced) or SIGHUP, logging the outcome.
    ///
    /// Directories rather than files are watched: renewal tools and Kubernetes secrets
    /// replace files by rename (or swap a symlinked directory), which a watch on the file's
    /// inode would miss. Any event there triggers a reload; an unchanged set is not logged
    /// at info level. `config` is fixed for the watch's life: when the configuration file
    /// changes, the caller restarts the watch (or calls [`ServerTls::reload`]) itself.
    pub async fn watch(self: Arc<Self>, config: TlsConfig, shutdown: CancellationToken) {
        let mut trigger = crate::watch::Trigger::new("TLS certificates");
        trigger.watch_files(config.files());
        while let Some(why) = trigger.next(&shutdown).await {
            let (this, files) = (self.clone(), config.clone());
            match tokio::task::spawn_blocking(move || this.reload(&files)).await {
                Ok(Ok(true)) => tracing::info!(trigger = why, "TLS certificates reloaded"),
                Ok(Ok(false)) => tracing::debug!(trigger = why, "TLS certificates unchanged"),
                Ok(Err(e)) => tracing::error!(
                    trigger = why,
                    error = %e,
                    "TLS certificates not reloaded, keeping the current ones"
                ),
                Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
            }
        }
    }
}

/// The negotiated protocol and cipher suite, for the `Received:` header and logs, e.g.
/// `TLSv1.3 cipher TLS13_AES_256_GCM_SHA384`; `None` before the handshake is done.
///
/// Takes the state shared by both sides, so a `&ServerConnection` (what
/// `tokio_rustls::server::TlsStream::get_ref` gives) and a `&ClientConnection` both work.
pub fn handshake_summary(conn: &CommonState) -> Option<String> {
    let (version, suite) = handshake_facts(conn)?;
    Some(format!("{version} cipher {suite}"))
}

/// The negotiated TLS version (`TLSv1.3`) and cipher suite (its IANA name).
pub fn handshake_facts(conn: &CommonState) -> Option<(String, String)> {
    let version = match conn.protocol_version()? {
        ProtocolVersion::TLSv1_3 => "TLSv1.3".to_owned(),
        ProtocolVersion::TLSv1_2 => "TLSv1.2".to_owned(),
        other => format!("{other:?}"),
    };
    let suite = conn.negotiated_cipher_suite()?.suite();
    let suite = match suite.as_str() {
        Some(name) => name.to_owned(),
        None => format!("{suite:?}"),
    };
    Some((version, suite))
}

/// The server name the client sent (SNI), lowercase; `None` when it sent none (IP address
/// literals are never sent as SNI).
pub fn sni_name(conn: &ServerConnection) -> Option<&str> {
    conn.server_name()
}

// ---------------------------------------------------------------------------------------
// The client side
// ---------------------------------------------------------------------------------------

/// How the delivery client checks the certificate of the server it connects to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyMode {
    /// Against the Mozilla root store (`webpki-roots`), with the name checked.
    WebPki,
    /// Against the certificates in this PEM file only (a private or test CA, or a
    /// self-signed server certificate), with the name checked.
    CustomCa(PathBuf),
    /// Opportunistic TLS (RFC 7435): encrypt, but accept any certificate. What MTAs do by
    /// default on port 25, where a verification failure would only push the mail back to
    /// plaintext; the handshake signatures are still verified.
    AcceptAny,
}

/// A client configuration for delivery: TLS 1.2 and 1.3, the provider's default cipher
/// suites, the given verification. Build it once and share it; `CustomCa` reads the file.
pub fn client_config(mode: &VerifyMode) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_versions(mode, VERSIONS, None)
}

/// A client certificate and its key (PEM files) that a next hop authenticates us by.
#[derive(Debug, Clone, Copy)]
pub struct ClientIdentity<'a> {
    /// The certificate chain, leaf first.
    pub certificate: &'a Path,
    /// Its private key.
    pub key: &'a Path,
}

/// [`client_config`], presenting `identity` when the server asks for a certificate
/// (`[[route]] client_certificate`). The files are read now and checked to belong together.
pub fn client_config_with_identity(
    mode: &VerifyMode,
    identity: Option<ClientIdentity<'_>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    client_config_with_versions(mode, VERSIONS, identity)
}

/// A client configuration whose server certificates `verifier` judges (DANE: the TLSA
/// records of the MX host decide, not a CA).
pub fn client_config_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_protocol_versions(VERSIONS)?;
    Ok(Arc::new(
        builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth(),
    ))
}

/// The crypto provider of every TLS configuration (ring), for verifiers built elsewhere.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    provider()
}

fn client_config_with_versions(
    mode: &VerifyMode,
    versions: &[&'static SupportedProtocolVersion],
    identity: Option<ClientIdentity<'_>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_protocol_versions(versions)?;
    let identity = match identity {
        Some(ClientIdentity { certificate, key }) => {
            let chain = parse_certificates(certificate, &read_file(certificate)?)?;
            let private = parse_key(key, &read_file(key)?)?;
            Some((chain, private, certificate.to_owned()))
        }
        None => None,
    };
    let finish =
        |builder: rustls::ConfigBuilder<ClientConfig, rustls::client::WantsClientCert>| {
            match identity {
                Some((chain, private, path)) => builder
                    .with_client_auth_cert(chain, private)
                    .map_err(|e| TlsError::BadKey {
                        path,
                        message: e.to_string(),
                    }),
                None => Ok(builder.with_no_client_auth()),
            }
        };
    let config = match mode {
        VerifyMode::WebPki => {
            let roots: RootCertStore = webpki_roots::TLS_SERVER_ROOTS.iter().cloned().collect();
            finish(builder.with_root_certificates(roots))?
        }
        VerifyMode::CustomCa(path) => {
            let mut roots = RootCertStore::empty();
            for certificate in parse_certificates(path, &read_file(path)?)? {
                roots
                    .add(certificate)
                    .map_err(|e| TlsError::BadCertificate {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
            }
            finish(builder.with_root_certificates(roots))?
        }
        VerifyMode::AcceptAny => finish(builder.dangerous().with_custom_certificate_verifier(
            Arc::new(AcceptAnyCertificate {
                provider: provider(),
            }),
        ))?,
    };
    Ok(Arc::new(config))
}

/// Opportunistic TLS (RFC 7435): any certificate is accepted, because for SMTP between MTAs
/// the alternative to an unverified certificate is plaintext, not a refused delivery.
/// This still buys protection from passive eavesdropping. The handshake signatures are
/// verified all the same: they prove the peer holds the key of the certificate it sent,
/// and skipping them would let a broken or tampered handshake pass unnoticed.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
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

// ---------------------------------------------------------------------------------------
// Self-signed certificates
// ---------------------------------------------------------------------------------------

/// A self-signed certificate (ECDSA P-256, for the names given: DNS names, `*.` wildcards
/// or IP addresses) and its key, as PEM text `(certificate, key)`. Valid from yesterday for
/// ten years: long enough not to surprise an operator, finite so that checkers do not flag
/// it. Meant for opportunistic TLS, tests and labs; the first name is also the subject CN.
pub fn generate_self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    if names.is_empty() {
        return Err(TlsError::Settings(
            "a certificate needs at least one name".into(),
        ));
    }
    let mut checked = Vec::with_capacity(names.len());
    for name in names {
        if name.parse::<IpAddr>().is_ok() {
            checked.push(name.clone());
        } else {
            let name = CertName::try_from(name.clone()).map_err(TlsError::Settings)?;
            checked.push(name.0);
        }
    }
    let mut params = rcgen::CertificateParams::new(checked.clone())?;
    let mut subject = rcgen::DistinguishedName::new();
    subject.push(rcgen::DnType::CommonName, checked[0].as_str());
    params.distinguished_name = subject;
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let today = days_since_epoch();
    let (y, m, d) = civil_from_days(today - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today);
    // Day 28 exists in every month, so 29 February needs no special case.
    params.not_after = rcgen::date_time_ymd(y + 10, m, d.min(28));
    let key = rcgen::KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok((certificate.pem(), key.serialize_pem()))
}

/// Generates a self-signed certificate ([`generate_self_signed`]) and writes it to
/// `cert_path` and its key to `key_path` (mode 0600). Without `force`, an existing file at
/// either path is an error and nothing is written.
pub fn write_self_signed(
    names: &[String],
    cert_path: &Path,
    key_path: &Path,
    force: bool,
) -> Result<(), TlsError> {
    if cert_path == key_path {
        return Err(TlsError::Settings(
            "the certificate and the key need two different files".into(),
        ));
    }
    if !force {
        // Check both first, so a refusal never leaves one new file next to an old one.
        for path in [cert_path, key_path] {
            if path.exists() {
                return Err(TlsError::Settings(format!(
                    "{} exists; use --force to overwrite it",
                    path.display()
                )));
            }
        }
    }
    let (cert_pem, key_pem) = generate_self_signed(names)?;
    write_new(key_path, key_pem.as_bytes(), 0o600, force)?;
    write_new(cert_path, cert_pem.as_bytes(), 0o644, force)?;
    Ok(())
}

/// Writes a file with the given mode; without `force` it must not exist yet (checked
/// atomically, by `O_EXCL`).
fn write_new(path: &Path, contents: &[u8], mode: u32, force: bool) -> Result<(), TlsError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(mode);
    if force {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path).map_err(error)?;
    // `mode` applies only to a new file: an overwritten one keeps its old permissions
    // unless they are set here, before the key is written into it.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)
}

fn days_since_epoch() -> i64 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    i64::try_from(secs / 86_400).unwrap_or(0)
}

/// The date of a day count since 1970-01-01, in the types rcgen wants.
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let (year, month, day) = crate::inbound::received::civil_from_days(days);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::TlsConnector;

    /// A generated certificate and key written into `dir` as `<stem>.pem` / `<stem>.key`.
    struct Pair {
        cert: PathBuf,
        key: PathBuf,
        der: CertificateDer<'static>,
    }

    fn write_pair(dir: &Path, stem: &str, names: &[&str]) -> Pair {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let (cert_pem, key_pem) = generate_self_signed(&names).unwrap();
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &cert_pem).unwrap();
        std::fs::write(&key, &key_pem).unwrap();
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        Pair { cert, key, der }
    }

    fn config_for(pair: &Pair) -> TlsConfig {
        TlsConfig {
            certificate: pair.cert.clone(),
            key: pair.key.clone(),
            sni: Vec::new(),
        }
    }

    fn sni(pair: &Pair, names: &[&str]) -> SniCertificate {
        SniCertificate {
            names: names
                .iter()
                .map(|n| CertName::try_from((*n).to_owned()).unwrap())
                .collect(),
            certificate: pair.cert.clone(),
            key: pair.key.clone(),
        }
    }

    /// A PEM bundle of the given certificates, to trust them with `CustomCa`.
    fn ca_bundle(dir: &Path, pairs: &[&Pair]) -> VerifyMode {
        let mut bundle = String::new();
        for pair in pairs {
            bundle.push_str(&std::fs::read_to_string(&pair.cert).unwrap());
        }
        let path = dir.join("ca-bundle.pem");
        std::fs::write(&path, bundle).unwrap();
        VerifyMode::CustomCa(path)
    }

    /// What one in-process handshake showed each side.
    #[derive(Debug)]
    struct Seen {
        /// The server certificate the client received.
        certificate: CertificateDer<'static>,
        server_summary: Option<String>,
        client_summary: Option<String>,
        sni: Option<String>,
    }

    /// A real handshake over an in-memory pipe, then one byte each way to prove the
    /// channel works. `server_name` of `None` sends no SNI.
    async fn handshake(
        acceptor: TlsAcceptor,
        client: Arc<ClientConfig>,
        server_name: Option<&str>,
    ) -> Result<Seen, std::io::Error> {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let mut client = (*client).clone();
        client.enable_sni = server_name.is_some();
        // Each handshake a full one: a resumed session reports the certificate of the
        // session it resumes, which would hide what the server presents now.
        client.resumption = rustls::client::Resumption::disabled();
        let connector = TlsConnector::from(Arc::new(client));
        let name =
            ServerName::try_from(server_name.unwrap_or("unnamed.example.test").to_owned()).unwrap();
        let server = async move {
            let mut stream = acceptor.accept(server_io).await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            stream.write_all(b"s").await?;
            stream.flush().await?;
            let (_, conn) = stream.get_ref();
            Ok::<_, std::io::Error>((
                handshake_summary(conn),
                sni_name(conn).map(str::to_owned),
                stream,
            ))
        };
        let client = async move {
            let mut stream = connector.connect(name, client_io).await?;
            stream.write_all(b"c").await?;
            stream.flush().await?;
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await?;
            let (_, conn) = stream.get_ref();
            let certificate = conn.peer_certificates().unwrap()[0].clone().into_owned();
            Ok::<_, std::io::Error>((certificate, handshake_summary(conn), stream))
        };
        let (server, client) = tokio::join!(server, client);
        let (certificate, client_summary, _client_stream) = client?;
        let (server_summary, sni, _server_stream) = server?;
        Ok(Seen {
            certificate,
            server_summary,
            client_summary,
            sni,
        })
    }

    #[test]
    fn a_generated_pair_loads() {
        let dir = tempfile::tempdir().unwrap();
        let pair = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let tls = ServerTls::load(&config_for(&pair)).unwrap();
        let _ = tls.acceptor();
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pair = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let mut config = config_for(&pair);
        config.key = dir.path().join("absent.key");
        let err = ServerTls::load(&config).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("absent.key") && text.contains("cannot read"),
            "{text}"
        );
    }

    #[test]
    fn a_pem_file_without_a_certificate_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let pair = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let mut config = config_for(&pair);
        // The key file is valid PEM, but holds no certificate.
        config.certificate = pair.key.clone();
        let err = ServerTls::load(&config).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(
            err.to_string().contains("relay.key: no certificate"),
            "{err}"
        );

        // And the other way round: no key in the certificate file.
        let mut config = config_for(&pair);
        config.key = pair.cert.clone();
        let err = ServerTls::load(&config).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        assert!(
            err.to_string().contains("relay.pem: no private key"),
            "{err}"
        );

        // Text that is not PEM at all has no certificate either.
        std::fs::write(&pair.cert, "hello\n").unwrap();
        let err = ServerTls::load(&config_for(&pair)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let one = write_pair(dir.path(), "one", &["one.example.test"]);
        let two = write_pair(dir.path(), "two", &["two.example.test"]);
        let config = TlsConfig {
            certificate: one.cert.clone(),
            key: two.key.clone(),
            sni: Vec::new(),
        };
        let err = ServerTls::load(&config).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.contains("two.key")
                && text.contains("one.pem")
                && text.contains("does not belong"),
            "{text}"
        );

        // The same in an SNI entry.
        let mut config = config_for(&one);
        config.sni.push(SniCertificate {
            names: vec![CertName::try_from("two.example.test".to_owned()).unwrap()],
            certificate: two.cert.clone(),
            key: one.key.clone(),
        });
        let err = ServerTls::load(&config).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
    }

    #[test]
    fn sni_names_are_checked_when_read() {
        let ok = |name: &str| CertName::try_from(name.to_owned()).map(|n| n.0);
        assert_eq!(ok("MX.Example.TEST.").unwrap(), "mx.example.test");
        assert_eq!(ok("*.Example.test").unwrap(), "*.example.test");
        for bad in [
            "",
            "*",
            "*.test",
            "a.*.example.test",
            "**.example.test",
            "a b.test",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }

        let dir = tempfile::tempdir().unwrap();
        let one = write_pair(dir.path(), "one", &["one.example.test"]);
        let mut config = config_for(&one);
        config.sni.push(sni(&one, &[]));
        assert!(
            ServerTls::load(&config)
                .unwrap_err()
                .to_string()
                .contains("tls.sni[0].names")
        );
        config.sni = vec![
            sni(&one, &["a.example.test"]),
            sni(&one, &["A.example.test"]),
        ];
        assert!(
            ServerTls::load(&config)
                .unwrap_err()
                .to_string()
                .contains("two [[tls.sni]] entries")
        );
    }

    #[test]
    fn settings_deserialize_from_toml() {
        let text = r#"
certificate = "cert.pem"
key = "key.pem"

[[sni]]
names = ["mx.example.test", "*.example.org"]
certificate = "mx.pem"
key = "mx.key"
"#;
        let mut config: TlsConfig = toml::from_str(text).unwrap();
        config.resolve_paths(Path::new("/etc/tidegate"));
        assert_eq!(config.certificate, Path::new("/etc/tidegate/cert.pem"));
        assert_eq!(config.sni[0].key, Path::new("/etc/tidegate/mx.key"));
        assert_eq!(config.sni[0].names[1].as_str(), "*.example.org");
        assert!(toml::from_str::<TlsConfig>("certificate = \"a\"\nkey = \"b\"\nkeys = 1").is_err());
        assert!(
            toml::from_str::<TlsConfig>(
                "certificate = \"a\"\nkey = \"b\"\n[[sni]]\nnames = [\"*\"]\ncertificate = \"a\"\nkey = \"b\""
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn sni_picks_the_matching_certificate_and_falls_back_to_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let default = write_pair(dir.path(), "default", &["relay.example.test"]);
        let mx = write_pair(dir.path(), "mx", &["mx.example.test"]);
        let wild = write_pair(dir.path(), "wild", &["*.wild.example.test"]);
        let mut config = config_for(&default);
        config.sni.push(sni(&mx, &["mx.example.test"]));
        config.sni.push(sni(&wild, &["*.wild.example.test"]));
        let tls = ServerTls::load(&config).unwrap();
        // A verifying client that trusts the three certificates: a successful handshake
        // also proves each certificate is valid for the name asked for.
        let verifying = client_config(&ca_bundle(dir.path(), &[&default, &mx, &wild])).unwrap();

        let seen = handshake(tls.acceptor(), verifying.clone(), Some("mx.example.test"))
            .await
            .unwrap();
        assert_eq!(seen.certificate, mx.der);
        assert_eq!(seen.sni.as_deref(), Some("mx.example.test"));

        // Case does not matter.
        let seen = handshake(tls.acceptor(), verifying.clone(), Some("MX.Example.Test"))
            .await
            .unwrap();
        assert_eq!(seen.certificate, mx.der);

        // A wildcard covers exactly one label.
        let seen = handshake(
            tls.acceptor(),
            verifying.clone(),
            Some("a.wild.example.test"),
        )
        .await
        .unwrap();
        assert_eq!(seen.certificate, wild.der);

        let seen = handshake(
            tls.acceptor(),
            verifying.clone(),
            Some("relay.example.test"),
        )
        .await
        .unwrap();
        assert_eq!(seen.certificate, default.der);

        // Names no entry covers get the default; an opportunistic client shows which one
        // (a verifying client would rightly refuse the name mismatch).
        let any = client_config(&VerifyMode::AcceptAny).unwrap();
        for name in [
            Some("b.a.wild.example.test"),
            Some("wild.example.test"),
            Some("other.example.test"),
            None,
        ] {
            let seen = handshake(tls.acceptor(), any.clone(), name).await.unwrap();
            assert_eq!(seen.certificate, default.der, "{name:?}");
        }
        let refused = handshake(tls.acceptor(), verifying, Some("other.example.test")).await;
        assert!(refused.is_err());
    }

    #[tokio::test]
    async fn tls_1_3_is_preferred_and_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let pair = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let tls = ServerTls::load(&config_for(&pair)).unwrap();
        let client = client_config(&ca_bundle(dir.path(), &[&pair])).unwrap();
        let seen = handshake(tls.acceptor(), client, Some("relay.example.test"))
            .await
            .unwrap();
        assert_eq!(
            seen.server_summary.as_deref(),
            Some("TLSv1.3 cipher TLS13_AES_256_GCM_SHA384")
        );
        assert_eq!(seen.client_summary, seen.server_summary);
    }

    #[tokio::test]
    async fn tls_1_2_clients_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let pair = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let tls = ServerTls::load(&config_for(&pair)).unwrap();
        let client = client_config_with_versions(
            &ca_bundle(dir.path(), &[&pair]),
            &[&rustls::version::TLS12],
            None,
        )
        .unwrap();
        let seen = handshake(tls.acceptor(), client, Some("relay.example.test"))
            .await
            .unwrap();
        let summary = seen.server_summary.unwrap();
        assert!(
            summary.starts_with("TLSv1.2 cipher TLS_ECDHE_ECDSA_WITH_"),
            "{summary}"
        );
    }

    /// TLS 1.0 and 1.1 cannot be enabled (rustls has no `SupportedProtocolVersion` below
    /// 1.2, so `VERSIONS` cannot name one); this checks the wire: a TLS 1.0 or 1.1
    /// ClientHello is answered with a fatal `protocol_version` alert.
    #[tokio::test]
    async fn tls_1_0_and_1_1_clients_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let pair = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let tls = ServerTls::load(&config_for(&pair)).unwrap();

        for version in [[0x03, 0x01], [0x03, 0x02]] {
            // A minimal ClientHello of that version: no supported_versions extension, two
            // suites of the time (ECDHE-ECDSA-AES128-SHA, AES128-SHA), null compression,
            // and signature_algorithms (ecdsa_secp256r1_sha256), without which rustls
            // would refuse earlier with handshake_failure.
            let mut body = version.to_vec();
            body.extend_from_slice(&[0x42; 32]); // random
            body.push(0); // no session ID
            body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x09, 0x00, 0x2f]);
            body.extend_from_slice(&[0x01, 0x00]);
            body.extend_from_slice(&[0x00, 0x08, 0x00, 0x0d, 0x00, 0x04, 0x00, 0x02, 0x04, 0x03]);
            let mut message = vec![0x01, 0x00];
            message.extend_from_slice(&(body.len() as u16).to_be_bytes());
            message.extend_from_slice(&body);
            let mut record = vec![0x16, 0x03, 0x01];
            record.extend_from_slice(&(message.len() as u16).to_be_bytes());
            record.extend_from_slice(&message);

            let (mut client_io, server_io) = tokio::io::duplex(1 << 16);
            let acceptor = tls.acceptor();
            let server = tokio::spawn(async move { acceptor.accept(server_io).await.map(|_| ()) });
            client_io.write_all(&record).await.unwrap();
            let result = server.await.unwrap();
            assert!(result.is_err(), "a {version:?} handshake must fail");
            let mut answer = Vec::new();
            client_io.read_to_end(&mut answer).await.unwrap();
            // An alert record: type 21, level fatal (2), description protocol_version (70).
            assert_eq!(answer.first(), Some(&0x15), "{answer:?}");
            assert_eq!(&answer[answer.len() - 2..], &[2, 70], "{answer:?}");
        }
    }

    #[tokio::test]
    async fn reload_swaps_certificates_and_a_broken_reload_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let old = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let config = config_for(&old);
        let tls = ServerTls::load(&config).unwrap();
        let any = client_config(&VerifyMode::AcceptAny).unwrap();
        // Taken before the reload: acceptors follow reloads too.
        let early_acceptor = tls.acceptor();
        let seen = handshake(tls.acceptor(), any.clone(), Some("relay.example.test"))
            .await
            .unwrap();
        assert_eq!(seen.certificate, old.der);

        assert!(!tls.reload(&config).unwrap(), "nothing changed yet");
        let new = write_pair(dir.path(), "relay", &["relay.example.test"]);
        assert_ne!(new.der, old.der);
        assert!(tls.reload(&config).unwrap());
        let seen = handshake(tls.acceptor(), any.clone(), Some("relay.example.test"))
            .await
            .unwrap();
        assert_eq!(seen.certificate, new.der);
        let seen = handshake(early_acceptor, any.clone(), Some("relay.example.test"))
            .await
            .unwrap();
        assert_eq!(seen.certificate, new.der);

        // Half an update (a new certificate, the old key) is refused and changes nothing.
        write_pair(dir.path(), "next", &["relay.example.test"]);
        std::fs::copy(dir.path().join("next.pem"), &new.cert).unwrap();
        let err = tls.reload(&config).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        std::fs::write(&new.cert, "garbage").unwrap();
        assert!(tls.reload(&config).is_err());
        let seen = handshake(tls.acceptor(), any, Some("relay.example.test"))
            .await
            .unwrap();
        assert_eq!(seen.certificate, new.der);
    }

    #[tokio::test]
    async fn the_watch_reloads_when_the_files_change() {
        let dir = tempfile::tempdir().unwrap();
        let old = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let config = config_for(&old);
        let tls = Arc::new(ServerTls::load(&config).unwrap());
        let shutdown = CancellationToken::new();
        let watch = tokio::spawn(tls.clone().watch(config.clone(), shutdown.clone()));
        // Let the watcher start before the files change.
        tokio::time::sleep(Duration::from_millis(200)).await;

        // Written by rename, as renewal tools do.
        let staging = tempfile::tempdir_in(dir.path()).unwrap();
        let new = write_pair(staging.path(), "relay", &["relay.example.test"]);
        std::fs::rename(&new.key, &old.key).unwrap();
        std::fs::rename(&new.cert, &old.cert).unwrap();

        let any = client_config(&VerifyMode::AcceptAny).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let seen = handshake(tls.acceptor(), any.clone(), Some("relay.example.test"))
                .await
                .unwrap();
            if seen.certificate == new.der {
                break;
            }
            assert!(Instant::now() < deadline, "the watch never reloaded");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        shutdown.cancel();
        watch.await.unwrap();
    }

    #[tokio::test]
    async fn accept_any_encrypts_to_a_self_signed_server_but_verifying_modes_refuse_it() {
        let dir = tempfile::tempdir().unwrap();
        let pair = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let stranger = write_pair(dir.path(), "stranger", &["relay.example.test"]);
        let tls = ServerTls::load(&config_for(&pair)).unwrap();

        let any = client_config(&VerifyMode::AcceptAny).unwrap();
        let seen = handshake(tls.acceptor(), any, Some("relay.example.test"))
            .await
            .unwrap();
        assert_eq!(seen.certificate, pair.der);
        assert!(seen.client_summary.unwrap().starts_with("TLSv1.3 cipher "));

        let webpki = client_config(&VerifyMode::WebPki).unwrap();
        let err = handshake(tls.acceptor(), webpki, Some("relay.example.test"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("UnknownIssuer"), "{err}");

        let wrong_ca = client_config(&ca_bundle(dir.path(), &[&stranger])).unwrap();
        assert!(
            handshake(tls.acceptor(), wrong_ca, Some("relay.example.test"))
                .await
                .is_err()
        );
    }

    #[test]
    fn a_custom_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.pem");
        let err = client_config(&VerifyMode::CustomCa(missing)).unwrap_err();
        assert!(err.to_string().contains("ca.pem: cannot read"), "{err}");
        let pair = write_pair(dir.path(), "relay", &["relay.example.test"]);
        let err = client_config(&VerifyMode::CustomCa(pair.key)).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
    }

    #[test]
    fn self_signed_certificates_take_dns_names_wildcards_and_addresses() {
        let names = vec![
            "Relay.Example.Test".to_owned(),
            "*.example.test".to_owned(),
            "192.0.2.1".to_owned(),
            "2001:db8::1".to_owned(),
        ];
        let (cert, key) = generate_self_signed(&names).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"), "{cert}");
        assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        assert!(generate_self_signed(&[]).is_err());
        assert!(generate_self_signed(&["bad name".to_owned()]).is_err());
    }

    #[test]
    fn write_self_signed_uses_mode_0600_for_the_key_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        let names = ["relay.example.test".to_owned()];
        write_self_signed(&names, &cert, &key, false).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        let first = std::fs::read(&key).unwrap();

        let err = write_self_signed(&names, &cert, &key, false).unwrap_err();
        assert!(err.to_string().contains("--force"), "{err}");
        assert_eq!(std::fs::read(&key).unwrap(), first);

        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_self_signed(&names, &cert, &key, true).unwrap();
        assert_ne!(std::fs::read(&key).unwrap(), first);
        assert_eq!(
            mode(&key),
            0o600,
            "an overwritten key is made private again"
        );
        assert!(write_self_signed(&names, &cert, &cert, true).is_err());
    }

    #[test]
    fn civil_dates_are_computed() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_000), (2024, 10, 4));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }
}
