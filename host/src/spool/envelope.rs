//! The envelope record: everything the spool keeps about a message besides its bytes.

use std::collections::BTreeMap;
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
    /// Header changes asked for by plugins, applied when the message is read out (so a
    /// header added to a 10 MB message costs no rewrite of the file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub header_edits: Vec<HeaderEdit>,
    /// Transaction tags set by plugins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    /// Why a plugin quarantined the message, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantine: Option<String>,
}

/// A header change kept in the envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum HeaderEdit {
    /// Add a field at the top.
    Add {
        /// Field name.
        name: String,
        /// Field value.
        value: String,
    },
    /// Remove every field with this name.
    Remove {
        /// Field name.
        name: String,
    },
    /// Replace every field with this name by one field with this value.
    Replace {
        /// Field name.
        name: String,
        /// Field value.
        value: String,
    },
    /// Remove every `Authentication-Results:` field that claims this authserv-id (RFC 8601
    /// §5: a field an upstream forged in our name must not survive).
    RemoveAuthResults {
        /// Our authserv-id, lowercase.
        authserv_id: String,
    },
}

/// Applies header edits to raw message octets: the header block is rewritten, the body
/// is copied as it is.
pub fn apply_header_edits(raw: &[u8], edits: &[HeaderEdit]) -> Vec<u8> {
    if edits.is_empty() {
        return raw.to_vec();
    }
    let header_end = find_header_end(raw);
    let (header, body) = raw.split_at(header_end);
    // Split the header block into fields, each with its continuation lines.
    let mut fields: Vec<Vec<u8>> = Vec::new();
    for line in header.split_inclusive(|b| *b == b'\n') {
        let continuation = matches!(line.first(), Some(b' ' | b'\t'));
        match fields.last_mut() {
            Some(field) if continuation => field.extend_from_slice(line),
            _ => fields.push(line.to_vec()),
        }
    }
    let name_of = |field: &[u8]| -> String {
        let end = field.iter().position(|b| *b == b':').unwrap_or(0);
        String::from_utf8_lossy(&field[..end])
            .trim()
            .to_ascii_lowercase()
    };
    let line = |name: &str, value: &str| format!("{name}: {value}\r\n").into_bytes();
    for edit in edits {
        match edit {
            HeaderEdit::Add { name, value } => fields.insert(0, line(name, value)),
            HeaderEdit::Remove { name } => {
                let name = name.to_ascii_lowercase();
                fields.retain(|f| name_of(f) != name);
            }
            HeaderEdit::RemoveAuthResults { authserv_id } => {
                fields.retain(|f| {
                    if name_of(f) != "authentication-results" {
                        return true;
                    }
                    let value = f
                        .iter()
                        .position(|b| *b == b':')
                        .map(|at| String::from_utf8_lossy(&f[at + 1..]).into_owned())
                        .unwrap_or_default();
                    crate::sender_auth::verify::authserv_id_of(&value)
                        != authserv_id.to_ascii_lowercase()
                });
            }
            HeaderEdit::Replace { name, value } => {
                let lower = name.to_ascii_lowercase();
                let at = fields.iter().position(|f| name_of(f) == lower);
                fields.retain(|f| name_of(f) != lower);
                fields.insert(at.unwrap_or(0).min(fields.len()), line(name, value));
            }
        }
    }
    let mut out = fields.concat();
    out.extend_from_slice(body);
    out
}

/// The offset of the empty line that ends the header block (or the end of the message).
pub(crate) fn find_header_end(raw: &[u8]) -> usize {
    let mut at_line_start = true;
    for (i, b) in raw.iter().enumerate() {
        if at_line_start && (*b == b'\r' || *b == b'\n') {
            return i;
        }
        at_line_start = *b == b'\n';
    }
    raw.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_edits_rewrite_only_the_header_block() {
        let raw = b"Received: x\r\nSubject: a\r\n b\r\nX-Spam: 1\r\n\r\nSubject: body\r\n";
        let edits = vec![
            HeaderEdit::Add {
                name: "X-Added".into(),
                value: "yes".into(),
            },
            HeaderEdit::Remove {
                name: "x-spam".into(),
            },
            HeaderEdit::Replace {
                name: "Subject".into(),
                value: "new".into(),
            },
        ];
        let out = apply_header_edits(raw, &edits);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "X-Added: yes\r\nReceived: x\r\nSubject: new\r\n\r\nSubject: body\r\n"
        );
    }
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
    /// The TLS version and cipher, when the session was encrypted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// The authenticated user, after AUTH.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authenticated: Option<String>,
}

/// Envelopes for unit tests elsewhere in the crate.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;
    use crate::spool::QueueId;

    /// An envelope of message `id` with `recipients` recipients at example.com.
    pub(crate) fn envelope(id: QueueId, recipients: usize) -> Envelope {
        Envelope {
            version: ENVELOPE_VERSION,
            id: id.to_string(),
            received_at: 1,
            sender: None,
            mail_params: Vec::new(),
            recipients: (0..recipients)
                .map(|n| Recipient {
                    address: format!("user{n}@example.com"),
                    params: Vec::new(),
                })
                .collect(),
            body: BodyType::SevenBit,
            smtputf8: false,
            client: ClientInfo {
                address: "192.0.2.1:25".parse().expect("an address"),
                helo: "client".into(),
                listener: "mx".into(),
                protocol: "ESMTP".into(),
                tls: None,
                authenticated: None,
            },
            size: 5,
            header_edits: Vec::new(),
            tags: Default::default(),
            quarantine: None,
        }
    }
}
