//! SMTP AUTH (RFC 4954) building blocks: the users file, password hashing, SASL PLAIN
//! (RFC 4616) and LOGIN decoding, and a limiter for failed attempts.
//!
//! Nothing here speaks SMTP by itself; the session drives the exchange:
//!
//! 1. `AUTH <mechanism> [initial-response]` → [`parse_auth_command`].
//! 2. PLAIN: the initial response, or the line answering an empty `334 ` challenge, goes
//!    through [`decode_plain`]. LOGIN: `334 VXNlcm5hbWU6` ([`LOGIN_USERNAME_CHALLENGE`]) then
//!    `334 UGFzc3dvcmQ6` ([`LOGIN_PASSWORD_CHALLENGE`]), each answer through
//!    [`decode_login_username`] / [`decode_login_password`] (a LOGIN initial response, if a
//!    client sends one, is the user name and skips the first challenge).
//! 3. [`UsersFile::verify_async`] checks the password off the async threads.
//! 4. [`FailureLimiter`] refuses clients that keep failing; [`replies`] has the RFC 4954
//!    answers, and [`SaslError::reply`] the answer to each decoding problem.
//!
//! Passwords never appear in logs or `Debug` output: [`Credentials`] redacts its password
//! and wipes it when dropped.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use argon2::password_hash::phc::{Output, ParamsString, Salt};
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use tokio::sync::Semaphore;
use zeroize::{Zeroize, Zeroizing};

use crate::inbound::reply::{EnhancedCode, Reply};

pub use argon2::Params as HashParams;

/// The largest SASL message accepted, in decoded octets.
pub const MAX_SASL_DECODED: usize = 2048;

/// The longest base64 text that can decode to [`MAX_SASL_DECODED`] octets.
const MAX_SASL_ENCODED: usize = MAX_SASL_DECODED.div_ceil(3) * 4;

/// The first LOGIN challenge: base64 of `Username:`.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";

/// The second LOGIN challenge: base64 of `Password:`.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// The EHLO keyword line advertising the mechanisms understood here.
pub const EHLO_KEYWORD: &str = "AUTH PLAIN LOGIN";

/// A problem with the users file or with hashing a password.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The users file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The users file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line of the users file is malformed.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        /// The users file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong (never the hash itself).
        message: String,
    },
    /// An empty password was given to be hashed.
    #[error("the password is empty")]
    EmptyPassword,
    /// The hash function failed (bad parameters, no randomness).
    #[error("hashing the password: {0}")]
    Hash(String),
}

// ---------------------------------------------------------------------------------------
// The users file
// ---------------------------------------------------------------------------------------

/// A loaded users file: `user:hash` lines, the hash an argon2 PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`); `#` comments and blank lines are
/// ignored.
///
/// Immutable: to reload, [`UsersFile::load`] the [`path`](UsersFile::path) again and swap
/// the `Arc`.
pub struct UsersFile {
    path: PathBuf,
    users: HashMap<String, PasswordHash>,
    /// Verified against for unknown users, so that the time taken does not tell whether a
    /// user exists: same parameters as the first user's hash, a fixed salt and an all-zero
    /// output that no password produces.
    dummy: PasswordHash,
}

impl fmt::Debug for UsersFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UsersFile")
            .field("path", &self.path)
            .field("users", &self.users.len())
            .finish_non_exhaustive()
    }
}

impl UsersFile {
    /// Reads and checks a users file. Every line is checked (user name, PHC syntax,
    /// argon2 algorithm and parameters, duplicates), so a bad file is refused as a whole
    /// and the error names the file and line.
    pub fn load(path: &Path) -> Result<UsersFile, AuthError> {
        let text = std::fs::read_to_string(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        UsersFile::parse(&text, path)
    }

    /// Parses the text of a users file; `path` is used in errors and kept for reloading.
    pub fn parse(text: &str, path: &Path) -> Result<UsersFile, AuthError> {
        let error = |line: usize, message: String| AuthError::Line {
            path: path.to_owned(),
            line,
            message,
        };
        let mut users = HashMap::new();
        let mut first_line_of: HashMap<String, usize> = HashMap::new();
        let mut template = None;
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((user, hash)) = line.split_once(':') else {
                return Err(error(number, "expected `user:hash`".to_owned()));
            };
            let (user, hash) = (user.trim(), hash.trim());
            check_username(user)
                .map_err(|problem| error(number, format!("user name {problem}")))?;
            if let Some(first) = first_line_of.get(user) {
                return Err(error(
                    number,
                    format!("user `{user}` appears twice (first on line {first})"),
                ));
            }
            let hash = parse_hash(hash)
                .map_err(|problem| error(number, format!("`{user}`: {problem}")))?;
            if template.is_none() {
                template = Some(hash.clone());
            }
            first_line_of.insert(user.to_owned(), number);
            users.insert(user.to_owned(), hash);
        }
        let dummy = dummy_like(template.as_ref());
        Ok(UsersFile {
            path: path.to_owned(),
            users,
            dummy,
        })
    }

    /// The file this was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Whether `password` is `user`'s. CPU-heavy (one argon2 computation, tens of
    /// milliseconds with the default parameters): call [`verify_async`](Self::verify_async)
    /// from async code. An unknown user costs the same computation, against a dummy hash.
    pub fn verify(&self, user: &str, password: &[u8]) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(hash) => (hash, true),
            None => (&self.dummy, false),
        };
        let matches = match Argon2::default().verify_password(password, hash) {
            Ok(()) => true,
            Err(argon2::password_hash::Error::PasswordInvalid) => false,
            Err(error) => {
                if known {
                    tracing::warn!(user, "password verification failed: {error}");
                }
                false
            }
        };
        known & matches
    }

    /// [`verify`](Self::verify) on the blocking thread pool. At most one verification per
    /// CPU runs at once, process-wide (each one holds the hash's memory cost, 19 MiB by
    /// default); the others wait their turn. Must be called within a tokio runtime.
    pub async fn verify_async(self: &Arc<Self>, user: &str, password: &[u8]) -> bool {
        let slots = VERIFY_SLOTS.get_or_init(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            Semaphore::new(cpus.clamp(1, 64))
        });
        let Ok(permit) = slots.acquire().await else {
            return false;
        };
        let this = Arc::clone(self);
        let user = user.to_owned();
        let password = Zeroizing::new(password.to_vec());
        let verified = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.verify(&user, &password)
        })
        .await;
        verified.unwrap_or(false)
    }
}

static VERIFY_SLOTS: OnceLock<Semaphore> = OnceLock::new();

/// Checks a user name for the users file: not empty, at most 255 octets, no `:`, no
/// white space or control characters.
pub fn check_username(user: &str) -> Result<(), &'static str> {
    if user.is_empty() {
        Err("is empty")
    } else if user.len() > 255 {
        Err("is longer than 255 octets")
    } else if user.contains(':') {
        Err("contains `:`")
    } else if user.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Err("contains white space or control characters")
    } else {
        Ok(())
    }
}

/// Parses and checks one PHC string: argon2 (id, i or d), with salt, output and valid
/// parameters.
fn parse_hash(text: &str) -> Result<PasswordHash, String> {
    let hash = PasswordHash::new(text).map_err(|e| format!("not a PHC string ({e})"))?;
    argon2::Algorithm::new(hash.algorithm.as_str())
        .map_err(|_| format!("`{}` is not an argon2 hash", hash.algorithm.as_str()))?;
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err("the hash has no salt or no output".to_owned());
    }
    if let Some(version) = hash.version {
        argon2::Version::try_from(version).map_err(|e| format!("bad version ({e})"))?;
    }
    HashParams::try_from(&hash).map_err(|e| format!("bad argon2 parameters ({e})"))?;
    Ok(hash)
}

/// A hash with `template`'s algorithm and parameters (the defaults without one), a fixed
/// salt and an all-zero output.
fn dummy_like(template: Option<&PasswordHash>) -> PasswordHash {
    let fallback;
    let template = match template {
        Some(template) => template,
        None => {
            fallback = PasswordHash {
                algorithm: argon2::ARGON2ID_IDENT,
                version: Some(argon2::Version::default().into()),
                params: ParamsString::try_from(&HashParams::default())
                    .expect("the default parameters encode"),
                salt: None,
                hash: None,
            };
            &fallback
        }
    };
    let salt_len = template.salt.as_ref().map_or(16, |s| s.len());
    let output_len = template.hash.as_ref().map_or(32, |o| o.len());
    PasswordHash {
        salt: Some(Salt::new(&vec![0x5a; salt_len]).expect("a valid salt length")),
        hash: Some(Output::new(&vec![0; output_len]).expect("a valid output length")),
        ..template.clone()
    }
}

/// Hashes a password with argon2id, the default parameters and a random salt, giving the
/// PHC string for a users file.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    hash_password_with(password, HashParams::default())
}

/// [`hash_password`] with chosen argon2 parameters (tests use cheap ones).
pub fn hash_password_with(password: &[u8], params: HashParams) -> Result<String, AuthError> {
    if password.is_empty() {
        return Err(AuthError::EmptyPassword);
    }
    let argon2 = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    argon2
        .hash_password(password)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

// ---------------------------------------------------------------------------------------
// SASL
// ---------------------------------------------------------------------------------------

/// A SASL mechanism this server understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616 PLAIN: one message `authzid NUL authcid NUL passwd`.
    Plain,
    /// The LOGIN mechanism: user name and password in answer to two challenges.
    Login,
}

impl Mechanism {
    /// The mechanism's name as advertised.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mechanism {
    type Err = SaslError;

    /// Parses a mechanism name, ignoring case.
    fn from_str(name: &str) -> Result<Self, SaslError> {
        if name.eq_ignore_ascii_case("PLAIN") {
            Ok(Mechanism::Plain)
        } else if name.eq_ignore_ascii_case("LOGIN") {
            Ok(Mechanism::Login)
        } else {
            Err(SaslError::UnknownMechanism)
        }
    }
}

/// The argument of an `AUTH` command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthCommand<'a> {
    /// The mechanism asked for.
    pub mechanism: Mechanism,
    /// The initial response, still base64; `=` (an empty initial response, RFC 4954 §4)
    /// is given as `""`.
    pub initial_response: Option<&'a str>,
}

/// Parses the argument of `AUTH`: `mechanism [initial-response]`.
pub fn parse_auth_command(argument: &str) -> Result<AuthCommand<'_>, SaslError> {
    let mut words = argument.split_ascii_whitespace();
    let mechanism = words.next().ok_or(SaslError::Syntax)?.parse()?;
    let initial_response = words
        .next()
        .map(|response| if response == "=" { "" } else { response });
    if words.next().is_some() {
        return Err(SaslError::Syntax);
    }
    Ok(AuthCommand {
        mechanism,
        initial_response,
    })
}

/// A decoded user name and password.
///
/// `Debug` shows the user name only, and the password is wiped from memory on drop.
pub struct Credentials {
    /// The authentication identity (PLAIN's authcid, LOGIN's user name).
    pub username: String,
    /// The password, as sent.
    pub password: Vec<u8>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Drop for Credentials {
    fn drop(&mut self) {
        self.password.zeroize();
    }
}

/// Why a SASL exchange cannot go on. [`reply`](SaslError::reply) gives the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 §4).
    #[error("authentication cancelled by the client")]
    Cancelled,
    /// The text is not valid base64.
    #[error("the response is not valid base64")]
    BadBase64,
    /// The response decodes to more than [`MAX_SASL_DECODED`] octets.
    #[error("the response is too long")]
    TooLong,
    /// The decoded message is not well formed (missing NULs, empty fields, not UTF-8).
    #[error("malformed SASL message: {0}")]
    Malformed(&'static str),
    /// PLAIN named an authorization identity other than the authentication identity.
    #[error("the authorization identity differs from the authentication identity")]
    AuthzidMismatch,
    /// The mechanism is not one of [`Mechanism`].
    #[error("unrecognized authentication mechanism")]
    UnknownMechanism,
    /// `AUTH` without a mechanism, or with more than one response.
    #[error("syntax: AUTH mechanism [initial-response]")]
    Syntax,
}

impl SaslError {
    /// The reply RFC 4954 gives for this problem.
    pub fn reply(&self) -> Reply {
        match self {
            SaslError::Cancelled => Reply::new(501, code(5, 7, 0), "Authentication cancelled"),
            SaslError::BadBase64 => Reply::new(501, code(5, 5, 2), "Cannot decode the response"),
            SaslError::TooLong => Reply::new(
                500,
                code(5, 5, 6),
                "Authentication exchange line is too long",
            ),
            SaslError::Malformed(_) => {
                Reply::new(501, code(5, 5, 2), "Malformed authentication response")
            }
            SaslError::AuthzidMismatch => replies::invalid_credentials(),
            SaslError::UnknownMechanism => {
                Reply::new(504, code(5, 5, 4), "Unrecognized authentication type")
            }
            SaslError::Syntax => Reply::new(
                501,
                code(5, 5, 4),
                "Syntax: AUTH mechanism [initial-response]",
            ),
        }
    }
}

const fn code(class: u8, subject: u16, detail: u16) -> EnhancedCode {
    EnhancedCode::new(class, subject, detail)
}

/// Standard base64 alphabet; padding accepted whether present or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decodes one base64 client response (without its CRLF; surrounding white space is
/// ignored). `*` alone is [`SaslError::Cancelled`]; an empty line decodes to nothing.
pub fn decode_base64_line(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim_ascii();
    if text == "*" {
        return Err(SaslError::Cancelled);
    }
    if text.len() > MAX_SASL_ENCODED {
        return Err(SaslError::TooLong);
    }
    let decoded = BASE64.decode(text).map_err(|_| SaslError::BadBase64)?;
    if decoded.len() > MAX_SASL_DECODED {
        let _wipe = Zeroizing::new(decoded);
        return Err(SaslError::TooLong);
    }
    Ok(decoded)
}

/// Decodes an RFC 4616 PLAIN message, `[authzid] NUL authcid NUL passwd`, from base64.
/// The authzid must be empty or equal to the authcid: nobody may act as someone else.
pub fn decode_plain(base64_text: &str) -> Result<Credentials, SaslError> {
    let decoded = Zeroizing::new(decode_base64_line(base64_text)?);
    let mut fields = decoded.splitn(3, |b| *b == 0);
    let authzid = fields.next().unwrap_or_default();
    let (Some(authcid), Some(password)) = (fields.next(), fields.next()) else {
        return Err(SaslError::Malformed(
            "expected authzid NUL authcid NUL passwd",
        ));
    };
    if password.contains(&0) {
        return Err(SaslError::Malformed("more than two NULs"));
    }
    if authcid.is_empty() {
        return Err(SaslError::Malformed("empty authentication identity"));
    }
    if password.is_empty() {
        return Err(SaslError::Malformed("empty password"));
    }
    let username = std::str::from_utf8(authcid)
        .map_err(|_| SaslError::Malformed("authentication identity is not UTF-8"))?;
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        username: username.to_owned(),
        password: password.to_vec(),
    })
}

/// Decodes the answer to the LOGIN `Username:` challenge (or a LOGIN initial response).
pub fn decode_login_username(text: &str) -> Result<String, SaslError> {
    let decoded = decode_base64_line(text)?;
    if decoded.is_empty() {
        return Err(SaslError::Malformed("empty user name"));
    }
    String::from_utf8(decoded).map_err(|_| SaslError::Malformed("user name is not UTF-8"))
}

/// Decodes the answer to the LOGIN `Password:` challenge.
pub fn decode_login_password(text: &str) -> Result<Vec<u8>, SaslError> {
    let decoded = decode_base64_line(text)?;
    if decoded.is_empty() {
        return Err(SaslError::Malformed("empty password"));
    }
    Ok(decoded)
}

/// The RFC 4954 replies of an AUTH exchange.
pub mod replies {
    use super::{LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE, code};
    use crate::inbound::reply::Reply;

    /// `235 2.7.0`: authenticated.
    pub fn success() -> Reply {
        Reply::new(235, code(2, 7, 0), "Authentication successful")
    }

    /// `334 <base64>`: a server challenge (no enhanced code). PLAIN without an initial
    /// response gets an empty one, `334 `.
    pub fn challenge(base64: &'static str) -> Reply {
        Reply::bare(334, base64)
    }

    /// `334 VXNlcm5hbWU6`, LOGIN's first challenge.
    pub fn login_username() -> Reply {
        challenge(LOGIN_USERNAME_CHALLENGE)
    }

    /// `334 UGFzc3dvcmQ6`, LOGIN's second challenge.
    pub fn login_password() -> Reply {
        challenge(LOGIN_PASSWORD_CHALLENGE)
    }

    /// `535 5.7.8`: wrong user name or password (the same for both).
    pub fn invalid_credentials() -> Reply {
        Reply::new(535, code(5, 7, 8), "Authentication credentials invalid")
    }

    /// `454 4.7.0`: the client failed too often; try later.
    pub fn too_many_failures() -> Reply {
        Reply::new(
            454,
            code(4, 7, 0),
            "Too many failed authentication attempts, try again later",
        )
    }

    /// `454 4.7.0`: the server could not check the credentials right now.
    pub fn temporary_failure() -> Reply {
        Reply::new(454, code(4, 7, 0), "Temporary authentication failure")
    }

    /// `503 5.5.1`: AUTH after a successful AUTH.
    pub fn already_authenticated() -> Reply {
        Reply::new(503, code(5, 5, 1), "Already authenticated")
    }

    /// `503 5.5.1`: AUTH during a mail transaction.
    pub fn not_during_transaction() -> Reply {
        Reply::new(
            503,
            code(5, 5, 1),
            "AUTH is not permitted during a mail transaction",
        )
    }

    /// `530 5.7.0`: this command needs authentication first.
    pub fn required() -> Reply {
        Reply::new(530, code(5, 7, 0), "Authentication required")
    }

    /// `538 5.7.11`: the mechanism needs an encrypted connection (STARTTLS first).
    pub fn encryption_required() -> Reply {
        Reply::new(
            538,
            code(5, 7, 11),
            "Encryption required for requested authentication mechanism",
        )
    }
}

// ---------------------------------------------------------------------------------------
// Failed attempts
// ---------------------------------------------------------------------------------------

/// Counts failed AUTH attempts per client and blocks clients with too many.
///
/// IPv4 clients are counted per address, IPv6 clients per /64 (one host usually owns a
/// whole /64); IPv4-mapped IPv6 addresses count as IPv4. Failures are counted in a window
/// that starts at the first failure; the failure that reaches `max_failures` blocks the
/// client for a whole `window` from then on, and each further failure recorded while
/// blocked extends the block. A success clears the client's count. At most
/// [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY) clients are tracked: when full, expired
/// entries go first, then those closest to expiry.
#[derive(Debug)]
pub struct FailureLimiter {
    max_failures: u32,
    window: Duration,
    capacity: usize,
    clients: Mutex<HashMap<IpAddr, Failures>>,
    /// Attempts being verified right now, per client: they count against the limit until
    /// they are settled, so that parallel sessions cannot each get a guess in before any
    /// failure is recorded. (Locked after `clients` when both are needed.)
    in_flight: Mutex<HashMap<IpAddr, u32>>,
}

/// One AUTH attempt in progress, from [`FailureLimiter::begin`]: it holds a place under
/// the client's limit until it is settled with [`failed`](Self::failed) or
/// [`succeeded`](Self::succeeded), or dropped (a cancelled or abandoned attempt).
#[derive(Debug)]
pub struct Attempt<'a> {
    limiter: &'a FailureLimiter,
    key: IpAddr,
}

impl Attempt<'_> {
    /// The attempt failed: it becomes a recorded failure.
    pub fn failed(self) {
        self.limiter.record_failure(self.key);
    }

    /// The attempt succeeded: the client's failures are forgotten.
    pub fn succeeded(self) {
        self.limiter.record_success(self.key);
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let mut in_flight = self
            .limiter
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = in_flight.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                in_flight.remove(&self.key);
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    expires: Instant,
}

impl FailureLimiter {
    /// How many clients are tracked at most, by default.
    pub const DEFAULT_CAPACITY: usize = 100_000;

    /// A limiter blocking a client after `max_failures` failures within `window`;
    /// `max_failures` 0 never blocks.
    pub fn new(max_failures: u32, window: Duration) -> Self {
        FailureLimiter::with_capacity(max_failures, window, Self::DEFAULT_CAPACITY)
    }

    /// [`new`](Self::new) tracking at most `capacity` clients (at least one).
    pub fn with_capacity(max_failures: u32, window: Duration, capacity: usize) -> Self {
        FailureLimiter {
            max_failures,
            window,
            capacity: capacity.max(1),
            clients: Mutex::new(HashMap::new()),
            in_flight: Mutex::new(HashMap::new()),
        }
    }

    /// Starts an attempt by `ip`, or `None` when the client's recorded failures and the
    /// attempts it has in progress (in other sessions) already reach the limit: then it
    /// must be refused before it tries.
    pub fn begin(&self, ip: IpAddr) -> Option<Attempt<'_>> {
        self.begin_at(ip, Instant::now())
    }

    fn begin_at(&self, ip: IpAddr, now: Instant) -> Option<Attempt<'_>> {
        let key = client_key(ip);
        let clients = self.lock();
        let failed = match clients.get(&key) {
            Some(entry) if entry.expires > now => entry.count,
            _ => 0,
        };
        let mut in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mine = in_flight.entry(key).or_insert(0);
        if self.max_failures > 0 && failed.saturating_add(*mine) >= self.max_failures {
            if *mine == 0 {
                in_flight.remove(&key);
            }
            return None;
        }
        *mine += 1;
        Some(Attempt { limiter: self, key })
    }

    /// Whether `ip` has failed too often and must be refused before it tries again.
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    /// Counts one failed attempt by `ip`.
    pub fn record_failure(&self, ip: IpAddr) {
        self.record_failure_at(ip, Instant::now());
    }

    /// Forgets `ip`'s failures after it authenticated.
    pub fn record_success(&self, ip: IpAddr) {
        self.lock().remove(&client_key(ip));
    }

    /// The number of clients tracked.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no client is tracked.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Failures>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_blocked_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.max_failures == 0 {
            return false;
        }
        let key = client_key(ip);
        let mut clients = self.lock();
        match clients.get(&key) {
            Some(entry) if entry.expires <= now => {
                clients.remove(&key);
                false
            }
            Some(entry) => entry.count >= self.max_failures,
            None => false,
        }
    }

    fn record_failure_at(&self, ip: IpAddr, now: Instant) {
        if self.max_failures == 0 {
            return;
        }
        let key = client_key(ip);
        let mut clients = self.lock();
        if let Some(entry) = clients.get_mut(&key)
            && entry.expires > now
        {
            entry.count = entry.count.saturating_add(1);
            if entry.count >= self.max_failures {
                entry.expires = now + self.window;
            }
            return;
        }
        if !clients.contains_key(&key) && clients.len() >= self.capacity {
            self.make_room(&mut clients, now);
        }
        clients.insert(
            key,
            Failures {
                count: 1,
                expires: now + self.window,
            },
        );
    }

    /// Drops expired entries and, if the map is still full, the sixteenth of the entries
    /// closest to expiry (at least one), so a flood of new clients costs one scan per
    /// batch rather than one per client.
    fn make_room(&self, clients: &mut HashMap<IpAddr, Failures>, now: Instant) {
        clients.retain(|_, entry| entry.expires > now);
        if clients.len() < self.capacity {
            return;
        }
        let batch = (self.capacity / 16).clamp(1, clients.len());
        let mut by_expiry: Vec<(Instant, IpAddr)> = clients
            .iter()
            .map(|(key, entry)| (entry.expires, *key))
            .collect();
        by_expiry.select_nth_unstable(batch - 1);
        for (_, key) in &by_expiry[..batch] {
            clients.remove(key);
        }
    }
}

/// The key a client is counted under: its IPv4 address, or its IPv6 /64 (the admission
/// limits count clients the same way).
pub(crate) fn client_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u128::from(u64::MAX)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn attempts_in_progress_count_against_the_limit() {
        let limiter = FailureLimiter::new(3, Duration::from_secs(60));
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let a = limiter.begin(ip).expect("first");
        let b = limiter.begin(ip).expect("second");
        let c = limiter.begin(ip).expect("third");
        assert!(
            limiter.begin(ip).is_none(),
            "a fourth guess while three are pending"
        );
        // A cancelled attempt gives its place back; a failed one keeps it.
        drop(c);
        let c = limiter.begin(ip).expect("third again");
        a.failed();
        assert!(limiter.begin(ip).is_none());
        b.failed();
        c.failed();
        assert!(limiter.is_blocked(ip));
        assert!(limiter.begin(ip).is_none());
        // Another client is not affected, and a success clears the count.
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        limiter.begin(other).expect("other").succeeded();
        assert!(limiter.in_flight.lock().unwrap().is_empty());
    }

    /// Cheap parameters: 8 KiB, one pass.
    fn cheap() -> HashParams {
        HashParams::new(8, 1, 1, None).unwrap()
    }

    fn cheap_hash(password: &str) -> String {
        hash_password_with(password.as_bytes(), cheap()).unwrap()
    }

    fn parse(text: &str) -> Result<UsersFile, AuthError> {
        UsersFile::parse(text, Path::new("users"))
    }

    fn line_error(text: &str) -> (usize, String) {
        match parse(text) {
            Err(AuthError::Line { line, message, .. }) => (line, message),
            other => panic!("expected a line error, got {other:?}"),
        }
    }

    #[test]
    fn users_file_skips_comments_and_blank_lines() {
        let text = format!(
            "\u{feff}# users\n\n   \nalice:{}\n  # indented comment\r\nbob@example.org : {}\r\n",
            cheap_hash("wonderland"),
            cheap_hash("builder")
        );
        let users = parse(&text).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(users.path(), Path::new("users"));
        assert!(users.verify("alice", b"wonderland"));
        assert!(users.verify("bob@example.org", b"builder"));
        assert!(format!("{users:?}").contains("users: 2"));
    }

    #[test]
    fn users_file_errors_name_the_file_and_line() {
        let good = cheap_hash("x");
        let (line, message) = line_error(&format!("# c\nalice:{good}\n\nno colon here\n"));
        assert_eq!(line, 4);
        assert!(message.contains("user:hash"), "{message}");

        let (line, message) = line_error(&format!(":{good}\n"));
        assert_eq!(line, 1);
        assert!(message.contains("empty"), "{message}");

        let (line, message) = line_error("alice:not-a-hash\n");
        assert_eq!(line, 1);
        assert!(message.contains("alice"), "{message}");

        let (line, message) = line_error("carol:$6$salt$abcdef\n");
        assert_eq!(line, 1);
        assert!(message.contains("not a PHC string"), "{message}");

        let scrypt = "$scrypt$ln=15,r=8,p=1$c2FsdHNhbHQxMjM$aGFzaGhhc2hoYXNoaGFzaA";
        let (line, message) = line_error(&format!("\n\nerin:{scrypt}\n"));
        assert_eq!(line, 3);
        assert!(message.contains("not an argon2 hash"), "{message}");

        // Argon2 parameters out of range (t=0).
        let bad_params = good.replace("t=1", "t=0");
        let (line, message) = line_error(&format!("dave:{bad_params}\n"));
        assert_eq!(line, 1);
        assert!(message.contains("parameters"), "{message}");

        let (line, message) =
            line_error("a b:$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\n");
        assert_eq!(line, 1);
        assert!(message.contains("white space"), "{message}");

        let error = parse("x\n").unwrap_err().to_string();
        assert_eq!(error, "users:1: expected `user:hash`");
    }

    #[test]
    fn a_duplicate_user_is_an_error() {
        let text = format!(
            "alice:{}\nbob:{}\n# again\nalice:{}\n",
            cheap_hash("a"),
            cheap_hash("b"),
            cheap_hash("c")
        );
        let (line, message) = line_error(&text);
        assert_eq!(line, 4);
        assert!(message.contains("twice (first on line 1)"), "{message}");
    }

    #[test]
    fn load_reads_the_file_and_names_it_when_missing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        std::fs::write(&path, format!("alice:{}\n", cheap_hash("pw"))).unwrap();
        let users = UsersFile::load(&path).unwrap();
        assert!(users.verify("alice", b"pw"));
        assert_eq!(users.path(), path);

        let missing = dir.path().join("nope");
        let error = UsersFile::load(&missing).unwrap_err();
        assert!(matches!(error, AuthError::Read { .. }));
        assert!(error.to_string().contains("nope"), "{error}");
    }

    #[test]
    fn verify_accepts_the_right_password_only() {
        let users = parse(&format!("alice:{}\n", cheap_hash("correct horse"))).unwrap();
        assert!(users.verify("alice", b"correct horse"));
        assert!(!users.verify("alice", b"correct horsf"));
        assert!(!users.verify("alice", b""));
        assert!(!users.verify("Alice", b"correct horse"));
        assert!(!users.verify("mallory", b"correct horse"));
        assert!(!users.verify("", b"correct horse"));
    }

    #[test]
    fn verify_accepts_any_argon2_variant_and_the_defaults() {
        let argon2i = Argon2::new(argon2::Algorithm::Argon2i, argon2::Version::V0x13, cheap())
            .hash_password(b"eye")
            .unwrap()
            .to_string();
        assert!(argon2i.starts_with("$argon2i$"), "{argon2i}");
        let default = hash_password(b"defaults").unwrap();
        assert!(
            default.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{default}"
        );
        let users = parse(&format!("ivy:{argon2i}\ndee:{default}\n")).unwrap();
        assert!(users.verify("ivy", b"eye"));
        assert!(users.verify("dee", b"defaults"));
        assert!(!users.verify("dee", b"default"));
    }

    #[test]
    fn unknown_users_are_checked_against_a_dummy_with_the_same_cost() {
        let users = parse(&format!("alice:{}\n", cheap_hash("pw"))).unwrap();
        let real = &users.users["alice"];
        assert_eq!(users.dummy.params, real.params);
        assert_eq!(users.dummy.algorithm, real.algorithm);
        assert_ne!(users.dummy.hash, real.hash);
        // No users at all: a dummy with the default parameters, which still verifies
        // (and fails) without an error.
        let empty = parse("# nobody\n").unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            HashParams::try_from(&empty.dummy).unwrap().m_cost(),
            HashParams::DEFAULT_M_COST
        );
        assert!(matches!(
            Argon2::default().verify_password(b"x", &empty.dummy),
            Err(argon2::password_hash::Error::PasswordInvalid)
        ));
        assert!(!empty.verify("anyone", b"x"));
    }

    #[tokio::test]
    async fn verify_async_runs_off_the_async_threads() {
        let users = Arc::new(parse(&format!("alice:{}\n", cheap_hash("pw"))).unwrap());
        assert!(users.verify_async("alice", b"pw").await);
        assert!(!users.verify_async("alice", b"nope").await);
        assert!(!users.verify_async("bob", b"pw").await);
    }

    #[test]
    fn hashing_refuses_an_empty_password_and_salts_each_hash() {
        assert!(matches!(hash_password(b""), Err(AuthError::EmptyPassword)));
        assert_ne!(cheap_hash("same"), cheap_hash("same"));
    }

    #[test]
    fn usernames_are_checked() {
        assert!(check_username("alice@example.org").is_ok());
        assert!(check_username("").is_err());
        assert!(check_username("a:b").is_err());
        assert!(check_username("a\tb").is_err());
        assert!(check_username(&"x".repeat(256)).is_err());
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn mechanisms_parse_case_insensitively() {
        assert_eq!("PLAIN".parse::<Mechanism>(), Ok(Mechanism::Plain));
        assert_eq!("plain".parse::<Mechanism>(), Ok(Mechanism::Plain));
        assert_eq!("LoGiN".parse::<Mechanism>(), Ok(Mechanism::Login));
        assert_eq!(
            "CRAM-MD5".parse::<Mechanism>(),
            Err(SaslError::UnknownMechanism)
        );
        assert_eq!(Mechanism::Login.to_string(), "LOGIN");
    }

    #[test]
    fn auth_command_arguments() {
        assert_eq!(
            parse_auth_command("plain AGFsaWNlAHB3"),
            Ok(AuthCommand {
                mechanism: Mechanism::Plain,
                initial_response: Some("AGFsaWNlAHB3"),
            })
        );
        assert_eq!(
            parse_auth_command("LOGIN"),
            Ok(AuthCommand {
                mechanism: Mechanism::Login,
                initial_response: None,
            })
        );
        assert_eq!(
            parse_auth_command("PLAIN =").unwrap().initial_response,
            Some("")
        );
        assert_eq!(parse_auth_command(""), Err(SaslError::Syntax));
        assert_eq!(parse_auth_command("PLAIN a b"), Err(SaslError::Syntax));
        assert_eq!(
            parse_auth_command("GSSAPI"),
            Err(SaslError::UnknownMechanism)
        );
    }

    #[test]
    fn plain_without_authzid() {
        let credentials = decode_plain(&b64(b"\0alice\0s3cret")).unwrap();
        assert_eq!(credentials.username, "alice");
        assert_eq!(credentials.password, b"s3cret");
    }

    #[test]
    fn plain_with_a_matching_authzid() {
        let credentials = decode_plain(&b64(b"alice\0alice\0s3cret")).unwrap();
        assert_eq!(credentials.username, "alice");
        assert_eq!(credentials.password, b"s3cret");
        // RFC 4616's example, with surrounding white space and no padding.
        let text = format!(
            " {} ",
            b64(b"\0tim\0tanstaaftanstaaf").trim_end_matches('=')
        );
        let credentials = decode_plain(&text).unwrap();
        assert_eq!(credentials.username, "tim");
        assert_eq!(credentials.password, b"tanstaaftanstaaf");
    }

    #[test]
    fn plain_with_another_authzid_is_refused() {
        assert_eq!(
            decode_plain(&b64(b"root\0alice\0s3cret")).unwrap_err(),
            SaslError::AuthzidMismatch
        );
        assert_eq!(SaslError::AuthzidMismatch.reply().code, 535);
    }

    #[test]
    fn plain_missing_nuls_or_fields_is_malformed() {
        for message in [
            &b"alice s3cret"[..],
            b"alice\0s3cret",
            b"",
            b"\0\0s3cret",
            b"\0alice\0",
            b"\0alice\0s3c\0ret",
            b"\0\xff\xfe\0pw",
        ] {
            assert!(
                matches!(decode_plain(&b64(message)), Err(SaslError::Malformed(_))),
                "{message:?}"
            );
        }
        assert_eq!(decode_plain("=").unwrap_err(), SaslError::BadBase64);
        assert!(matches!(decode_plain(""), Err(SaslError::Malformed(_))));
    }

    #[test]
    fn plain_bad_base64_is_refused() {
        for text in ["not base64!", "AGFsaWNl AHB3", "A", "AGFsaWNlAHB3=="] {
            assert_eq!(
                decode_plain(text).unwrap_err(),
                SaslError::BadBase64,
                "{text}"
            );
        }
        let reply = SaslError::BadBase64.reply();
        assert_eq!((reply.code, reply.enhanced), (501, Some(code(5, 5, 2))));
    }

    #[test]
    fn plain_longer_than_the_limit_is_refused() {
        let mut message = b"\0alice\0".to_vec();
        message.resize(MAX_SASL_DECODED, b'p');
        assert!(decode_plain(&b64(&message)).is_ok());
        message.push(b'p');
        assert_eq!(
            decode_plain(&b64(&message)).unwrap_err(),
            SaslError::TooLong
        );
        assert_eq!(
            decode_plain(&"A".repeat(100_000)).unwrap_err(),
            SaslError::TooLong
        );
        assert_eq!(SaslError::TooLong.reply().code, 500);
    }

    #[test]
    fn credentials_debug_hides_the_password() {
        let credentials = decode_plain(&b64(b"\0alice\0hunter2")).unwrap();
        let debug = format!("{credentials:?}");
        assert!(debug.contains("alice"), "{debug}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");
    }

    #[test]
    fn login_challenges_and_answers() {
        let standard = base64::engine::general_purpose::STANDARD;
        assert_eq!(
            standard.decode(LOGIN_USERNAME_CHALLENGE).unwrap(),
            b"Username:"
        );
        assert_eq!(
            standard.decode(LOGIN_PASSWORD_CHALLENGE).unwrap(),
            b"Password:"
        );
        assert_eq!(replies::login_username().to_string(), "334 VXNlcm5hbWU6");
        assert_eq!(replies::login_password().to_string(), "334 UGFzc3dvcmQ6");
        let mut wire = Vec::new();
        replies::challenge("").write_to(&mut wire);
        assert_eq!(wire, b"334 \r\n");

        assert_eq!(decode_base64_line("YWxpY2U=").unwrap(), b"alice");
        assert_eq!(decode_base64_line("YWxpY2U\r\n").unwrap(), b"alice");
        assert_eq!(decode_base64_line("").unwrap(), b"");
        assert_eq!(decode_login_username("YWxpY2U=").unwrap(), "alice");
        assert_eq!(decode_login_password(&b64(b"s3cret")).unwrap(), b"s3cret");
        assert!(matches!(
            decode_login_username(""),
            Err(SaslError::Malformed(_))
        ));
        assert!(matches!(
            decode_login_password(""),
            Err(SaslError::Malformed(_))
        ));
        assert!(matches!(
            decode_login_username(&b64(b"\xff")),
            Err(SaslError::Malformed(_))
        ));
        assert_eq!(
            decode_base64_line("YW*x").unwrap_err(),
            SaslError::BadBase64
        );
        assert_eq!(
            decode_base64_line(&"QUFB".repeat(700)).unwrap_err(),
            SaslError::TooLong
        );
    }

    #[test]
    fn a_lone_star_cancels() {
        assert_eq!(decode_base64_line("*").unwrap_err(), SaslError::Cancelled);
        assert_eq!(
            decode_base64_line(" *\r\n").unwrap_err(),
            SaslError::Cancelled
        );
        assert_eq!(decode_plain("*").unwrap_err(), SaslError::Cancelled);
        assert_eq!(
            decode_login_username("*").unwrap_err(),
            SaslError::Cancelled
        );
        assert_eq!(
            decode_login_password("*").unwrap_err(),
            SaslError::Cancelled
        );
        assert_eq!(
            SaslError::Cancelled.reply().to_string(),
            "501 5.7.0 Authentication cancelled"
        );
    }

    #[test]
    fn replies_carry_the_rfc_4954_codes() {
        assert_eq!(
            replies::success().to_string(),
            "235 2.7.0 Authentication successful"
        );
        assert_eq!(
            replies::invalid_credentials().to_string(),
            "535 5.7.8 Authentication credentials invalid"
        );
        assert_eq!(
            replies::encryption_required().to_string().get(..10),
            Some("538 5.7.11")
        );
        assert_eq!(SaslError::UnknownMechanism.reply().code, 504);
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn limiter_blocks_after_max_failures() {
        let limiter = FailureLimiter::new(3, MINUTE);
        let now = Instant::now();
        for _ in 0..2 {
            limiter.record_failure_at(v4(1), now);
            assert!(!limiter.is_blocked_at(v4(1), now));
        }
        limiter.record_failure_at(v4(1), now);
        assert!(limiter.is_blocked_at(v4(1), now));
        assert!(
            !limiter.is_blocked_at(v4(2), now),
            "others are not affected"
        );
        // The public, clock-reading methods agree.
        assert!(limiter.is_blocked(v4(1)));
        limiter.record_failure(v4(3));
        assert!(!limiter.is_blocked(v4(3)));
    }

    #[test]
    fn limiter_window_expires() {
        let limiter = FailureLimiter::new(2, MINUTE);
        let start = Instant::now();
        // Failures spread over more than a window never add up.
        limiter.record_failure_at(v4(1), start);
        limiter.record_failure_at(v4(1), start + MINUTE);
        assert!(!limiter.is_blocked_at(v4(1), start + MINUTE));
        // Reaching the limit blocks for a whole window from the last failure.
        let t = start + MINUTE + Duration::from_secs(50);
        limiter.record_failure_at(v4(1), t);
        assert!(limiter.is_blocked_at(v4(1), t));
        assert!(limiter.is_blocked_at(v4(1), t + Duration::from_secs(59)));
        assert!(!limiter.is_blocked_at(v4(1), t + MINUTE));
        assert!(limiter.is_empty(), "the expired entry is dropped");
        // Failing again while blocked extends the block.
        limiter.record_failure_at(v4(2), start);
        limiter.record_failure_at(v4(2), start);
        limiter.record_failure_at(v4(2), start + Duration::from_secs(30));
        assert!(limiter.is_blocked_at(v4(2), start + Duration::from_secs(80)));
        assert!(!limiter.is_blocked_at(v4(2), start + Duration::from_secs(90)));
    }

    #[test]
    fn limiter_success_clears() {
        let limiter = FailureLimiter::new(2, MINUTE);
        let now = Instant::now();
        limiter.record_failure_at(v4(1), now);
        limiter.record_failure_at(v4(1), now);
        assert!(limiter.is_blocked_at(v4(1), now));
        limiter.record_success(v4(1));
        assert!(!limiter.is_blocked_at(v4(1), now));
        assert!(limiter.is_empty());
        limiter.record_failure_at(v4(1), now);
        assert!(!limiter.is_blocked_at(v4(1), now), "counting starts again");
    }

    #[test]
    fn limiter_counts_ipv6_per_64_and_mapped_ipv4_as_ipv4() {
        let limiter = FailureLimiter::new(2, MINUTE);
        let now = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        limiter.record_failure_at(a, now);
        limiter.record_failure_at(b, now);
        assert!(limiter.is_blocked_at(a, now));
        assert!(limiter.is_blocked_at(b, now));
        assert!(!limiter.is_blocked_at(other, now));
        assert_eq!(limiter.len(), 1);

        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        limiter.record_failure_at(mapped, now);
        limiter.record_failure_at(v4(7), now);
        assert!(limiter.is_blocked_at(v4(7), now));
        assert!(limiter.is_blocked_at(mapped, now));
        assert!(!limiter.is_blocked_at(v4(8), now), "IPv4 is per address");
    }

    #[test]
    fn limiter_memory_is_capped() {
        let limiter = FailureLimiter::with_capacity(1, MINUTE, 4);
        let start = Instant::now();
        let at = |i: u64| start + Duration::from_secs(i);
        for i in 0..4u8 {
            limiter.record_failure_at(v4(i), at(u64::from(i)));
        }
        assert_eq!(limiter.len(), 4);
        // Full: the entry closest to expiry (the oldest) makes room for the newcomer.
        limiter.record_failure_at(v4(10), at(10));
        assert_eq!(limiter.len(), 4);
        assert!(!limiter.is_blocked_at(v4(0), at(10)));
        assert!(limiter.is_blocked_at(v4(1), at(10)));
        assert!(limiter.is_blocked_at(v4(10), at(10)));
        // Expired entries go first, all at once.
        limiter.record_failure_at(v4(20), at(68));
        assert_eq!(limiter.len(), 2, "v4(10) and v4(20) remain");
        // A flood never grows the map past the cap.
        let big = FailureLimiter::with_capacity(5, MINUTE, 1000);
        for i in 0..5000u32 {
            big.record_failure_at(IpAddr::V4(Ipv4Addr::from(i)), start);
        }
        assert!(big.len() <= 1000);
        // Disabled limiter: never blocks, tracks nothing.
        let off = FailureLimiter::new(0, MINUTE);
        off.record_failure_at(v4(1), start);
        assert!(!off.is_blocked_at(v4(1), start));
        assert!(off.is_empty());
    }
}
