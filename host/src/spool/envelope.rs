//! The envelope record: everything the spool keeps about a message besides its bytes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// The current envelope format version, also spelled in the file footer's magic.
pub const ENVELOPE_VERSION: u32 = 1;

/// What the session learnt about a message: who sent it to whom, from where, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// The format version ([`ENVELOPE_VERSION`]).
    pub version: u32,
    /// The queue ID, as printed in the 250 reply.
    pub id: String,
    /// When the message was accepted, in seconds since the Unix epoch.
    pub received_at: u64,
    /// The reverse path; `None` is the null sender `<>` of bounces.
    pub sender: Option<String>,
    /// The ESMTP parameters given with MAIL FROM.
    pub mail_params: Vec<Param>,
    /// The accepted recipients, in the order they were given.
    pub recipients: Vec<Recipient>,
    /// The body type the client declared (BODY=); `7bit` by default.
    pub body: BodyType,
    /// Whether the client asked for SMTPUTF8.
    pub smtputf8: bool,
    /// The client that sent the message.
    pub client: ClientInfo,
    /// The size of the stored message in octets, trace header included.
    pub size: u64,
}

/// One accepted recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipient {
    /// The forward path, in canonical form.
    pub address: String,
    /// The ESMTP parameters given with RCPT TO.
    pub params: Vec<Param>,
}

/// One ESMTP parameter: `KEYWORD[=value]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// The keyword, upper-cased.
    pub keyword: String,
    /// The value, if any.
    pub value: Option<String>,
}

/// The body type of RFC 6152 / RFC 3030.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyType {
    /// 7-bit text (the default).
    #[default]
    #[serde(rename = "7bit")]
    SevenBit,
    /// 8-bit MIME text.
    #[serde(rename = "8bitmime")]
    EightBitMime,
}

/// Where a message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientInfo {
    /// The client's address and port.
    pub address: SocketAddr,
    /// The name the client gave in HELO/EHLO.
    pub helo: String,
    /// The listener that accepted the session.
    pub listener: String,
    /// The protocol keyword of the `Received:` header (SMTP, ESMTP, UTF8SMTP, ...).
    pub protocol: String,
}
