//! Plain Rust types for everything that crosses the plugin boundary.
//!
//! They mirror the WIT contract (`wit/tidegate.wit`) but are ordinary Rust values, so plugin
//! logic can be written and unit-tested natively without any WebAssembly in sight.

/// An SMTP reply a plugin chooses: basic code, RFC 3463 enhanced code, text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    /// 4xx for a temporary failure, 5xx for a permanent one.
    pub code: u16,
    /// The enhanced code, e.g. `"5.7.1"`.
    pub enhanced: String,
    /// The human-readable text.
    pub text: String,
}

/// What a plugin decides at a stage.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// No opinion: the next plugin in the chain decides.
    Continue,
    /// Accept at this stage and skip the rest of the chain for it.
    Accept,
    /// Refuse permanently (a 5xx reply).
    Reject(Reply),
    /// Refuse temporarily (a 4xx reply).
    Tempfail(Reply),
    /// Accept the message, then drop it; the reason is logged.
    Discard(String),
    /// Accept the message into quarantine; the reason is kept.
    Quarantine(String),
    /// Refuse with this reply (4xx or 5xx) and close the connection.
    Disconnect(Reply),
}

impl Verdict {
    /// A permanent refusal, e.g. `Verdict::reject(550, "5.7.1", "Not welcome")`.
    pub fn reject(code: u16, enhanced: &str, text: &str) -> Verdict {
        Verdict::Reject(Reply {
            code,
            enhanced: enhanced.to_owned(),
            text: text.to_owned(),
        })
    }

    /// A refusal that also ends the session, e.g. `Verdict::disconnect(554, "5.7.1", "Go
    /// away")` (Haraka's DENYDISCONNECT).
    pub fn disconnect(code: u16, enhanced: &str, text: &str) -> Verdict {
        Verdict::Disconnect(Reply {
            code,
            enhanced: enhanced.to_owned(),
            text: text.to_owned(),
        })
    }

    /// A temporary refusal, e.g. `Verdict::tempfail(451, "4.7.1", "Slow down")`.
    pub fn tempfail(code: u16, enhanced: &str, text: &str) -> Verdict {
        Verdict::Tempfail(Reply {
            code,
            enhanced: enhanced.to_owned(),
            text: text.to_owned(),
        })
    }
}

/// A change a plugin asks the host to make.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Edit {
    /// Add a header field at the top of the message (on-data).
    AddHeader(String, String),
    /// Remove every field with this name (on-data).
    RemoveHeader(String),
    /// Replace every field with this name by one with the new value (on-data).
    ReplaceHeader(String, String),
    /// Rewrite the envelope sender; `None` is `<>` (on-mail-from, on-data).
    SetSender(Option<String>),
    /// Add an envelope recipient (on-rcpt-to, on-data).
    AddRecipient(String),
    /// Remove an envelope recipient (on-rcpt-to, on-data).
    RemoveRecipient(String),
    /// Replace an envelope recipient (on-rcpt-to, on-data).
    RewriteRecipient(String, String),
    /// Set a transaction tag, visible to later stages, other plugins, routing and logs.
    SetTag(String, String),
}

/// A plugin's answer at a stage: a verdict and the edits to apply.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Response {
    /// The decision.
    pub verdict: Verdict,
    /// The changes, applied in order.
    pub edits: Vec<Edit>,
}

impl Response {
    /// No opinion and no changes: let the next plugin decide.
    pub fn next() -> Response {
        Verdict::Continue.into()
    }

    /// Adds an edit.
    pub fn with(mut self, edit: Edit) -> Response {
        self.edits.push(edit);
        self
    }

    /// Adds a header field (on-data).
    pub fn add_header(self, name: &str, value: &str) -> Response {
        self.with(Edit::AddHeader(name.to_owned(), value.to_owned()))
    }

    /// Sets a transaction tag.
    pub fn tag(self, key: &str, value: &str) -> Response {
        self.with(Edit::SetTag(key.to_owned(), value.to_owned()))
    }
}

impl From<Verdict> for Response {
    fn from(verdict: Verdict) -> Response {
        Response {
            verdict,
            edits: Vec::new(),
        }
    }
}

/// The stages a plugin subscribes to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hooks {
    /// on-connect
    pub connect: bool,
    /// on-helo
    pub helo: bool,
    /// on-auth
    pub auth: bool,
    /// on-mail-from
    pub mail_from: bool,
    /// on-rcpt-to
    pub rcpt_to: bool,
    /// on-data
    pub data: bool,
    /// on-route
    pub route: bool,
    /// on-delivery
    pub delivery: bool,
    /// on-disconnect
    pub disconnect: bool,
}

/// TLS on the session.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: String,
    /// The cipher suite's IANA name.
    pub cipher: String,
    /// The server name the client asked for (SNI).
    pub sni: Option<String>,
}

/// The session as the host knows it now (read-only).
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    /// The client's address.
    pub client_ip: String,
    /// The client's port.
    pub client_port: u16,
    /// The listener's name.
    pub listener: String,
    /// The client's forward-confirmed reverse DNS name.
    pub reverse_dns: Option<String>,
    /// The HELO/EHLO name, once given.
    pub helo: Option<String>,
    /// TLS, once negotiated.
    pub tls: Option<TlsInfo>,
    /// The identity the client authenticated as (SMTP AUTH).
    pub auth_identity: Option<String>,
}

/// What the host knows of the outcome on-delivery is told of (see
/// [`crate::Host::delivery_facts`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutcomeFacts {
    /// For a deferral or bounce, its class: `bad-mailbox`, `bad-domain`, `mailbox-full`,
    /// `message-too-large`, `policy`, `reputation`, `rate-limit`, `tls`, `dns`,
    /// `connection`, `protocol`, `expired`, `loop`, `other`.
    pub failure_class: Option<String>,
    /// The RFC 3463 status, e.g. `5.1.1`.
    pub enhanced: Option<String>,
    /// The destination's gate: `mx:DOMAIN`, `route:NAME` or `shape:NAME`.
    pub destination: String,
    /// The `[[shaping]]` entry it is sent under (`built-in` without one).
    pub policy: String,
    /// Why the destination admits no mail now, if it does not.
    pub closed: Option<String>,
    /// Its rates now, in percent of the configured ones.
    pub rate_percent: u32,
}

/// The end of a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// MAIL commands accepted.
    pub transactions: u32,
    /// Messages accepted.
    pub accepted: u32,
    /// How long the session lasted.
    pub duration_ms: u64,
    /// `quit`, `closed`, `timeout`, `disconnect`, `errors`, `shutdown` or `refused`.
    pub reason: String,
}

/// A sender authentication method (RFC 8601).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
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

/// What a method found (RFC 8601 §2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthVerdict {
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
    /// signed, but not acceptable (a DKIM signature with `l=`)
    Policy,
}

/// One method's result, as the gateway verified it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuthResult {
    /// The method.
    pub method: AuthMethod,
    /// What it found.
    pub verdict: AuthVerdict,
    /// The domain it is about (MAIL FROM or HELO domain, `d=`, the From domain for DMARC,
    /// the last ARC sealer).
    pub domain: Option<String>,
    /// A DKIM signature's selector.
    pub selector: Option<String>,
    /// Why, when it did not pass.
    pub reason: Option<String>,
    /// DMARC: the policy the domain publishes (`none`, `quarantine`, `reject`).
    pub policy: Option<String>,
}

/// Why a key/value write failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KvError {
    /// The key or the value is over its size limit.
    TooLarge(String),
    /// The plugin's namespace is at its quota.
    Quota(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::TooLarge(why) | KvError::Quota(why) => f.write_str(why),
        }
    }
}

/// An ESMTP parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Param {
    /// The keyword, upper-cased.
    pub keyword: String,
    /// The value, if any.
    pub value: Option<String>,
}

/// A new connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectInfo {
    /// The client's IP address as text.
    pub client_ip: String,
    /// The client's port.
    pub client_port: u16,
    /// The listener's name.
    pub listener: String,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// The client's reverse DNS name, if known.
    pub reverse_dns: Option<String>,
}

/// HELO or EHLO.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeloInfo {
    /// The name the client gave.
    pub name: String,
    /// EHLO (true) or HELO.
    pub extended: bool,
}

/// AUTH.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthInfo {
    /// The SASL mechanism.
    pub mechanism: String,
    /// The identity the client claims.
    pub username: String,
    /// The password the client gave (never log it).
    pub password: String,
    /// Whether the host's users file accepted the credentials.
    pub users_file_verdict: bool,
}

impl std::fmt::Debug for AuthInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthInfo")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("users_file_verdict", &self.users_file_verdict)
            .finish()
    }
}

/// MAIL FROM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailFromInfo {
    /// The sender; `None` is the null reverse path `<>`.
    pub sender: Option<String>,
    /// ESMTP parameters.
    pub params: Vec<Param>,
}

/// RCPT TO.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RcptToInfo {
    /// The recipient.
    pub recipient: String,
    /// ESMTP parameters.
    pub params: Vec<Param>,
}

/// The envelope when the message data is complete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Envelope {
    /// The sender; `None` is `<>`.
    pub sender: Option<String>,
    /// The recipients.
    pub recipients: Vec<String>,
}

/// Where a recipient's mail goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// MX lookup of the recipient's domain.
    Mx,
    /// A named `[[route]]` of the configuration.
    Named(String),
    /// The local maildir transport.
    Local,
    /// Drop this recipient.
    Discard,
}

/// What became of a delivery attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryStatus {
    /// Accepted by the next hop.
    Delivered,
    /// Will be retried.
    Deferred,
    /// Failed permanently.
    Bounced,
}

/// The outcome of a delivery attempt for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The message's queue ID.
    pub queue_id: String,
    /// The recipient.
    pub recipient: String,
    /// The outcome.
    pub status: DeliveryStatus,
    /// The remote reply or local reason.
    pub reply: String,
    /// The attempt number, from 1.
    pub attempt: u32,
}

/// An attachment of the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name, if the message gives one.
    pub name: Option<String>,
    /// The content type, e.g. `application/pdf`.
    pub content_type: String,
    /// The decoded size in octets.
    pub size: u64,
}

/// DNS record types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecordType {
    /// IPv4 addresses.
    A,
    /// IPv6 addresses.
    Aaaa,
    /// Mail exchangers, as `preference name`.
    Mx,
    /// Text records.
    Txt,
    /// Reverse names.
    Ptr,
}

/// Why a DNS lookup failed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DnsError {
    /// NXDOMAIN.
    NotFound,
    /// The name exists but has no records of that type.
    NoRecords,
    /// Timeout, SERVFAIL and the like.
    Temporary(String),
    /// The query is malformed.
    Invalid(String),
}

/// Log levels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Very detailed.
    Trace,
    /// For debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something odd.
    Warn,
    /// Something failed.
    Error,
}

/// The domain of an address (`user@Example.TEST` → `example.test`), lowercased.
pub fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain.trim_end_matches('>').to_ascii_lowercase())
        .filter(|d| !d.is_empty())
}
