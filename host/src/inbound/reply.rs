//! SMTP replies: a basic code, an RFC 3463 enhanced status code and text.
//!
//! RFC 2034 puts an enhanced code on every 2xx, 4xx and 5xx reply except the greeting and
//! the reply to HELO/EHLO, and never on the 354 intermediate reply; the constructors here
//! follow that, so the session code cannot forget one.

use std::borrow::Cow;
use std::fmt;

/// An RFC 3463 enhanced status code `class.subject.detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnhancedCode {
    /// 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// The subject: 1 addressing, 3 mail system, 4 network, 5 protocol, 6 content, 7 security.
    pub subject: u16,
    /// The detail within the subject.
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code; the class must match the basic code's first digit.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply, possibly of several lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit basic reply code.
    pub code: u16,
    /// The enhanced status code, absent only where RFC 2034 says so.
    pub enhanced: Option<EnhancedCode>,
    /// The text; `\n` separates the lines of a multi-line reply.
    pub text: Cow<'static, str>,
}

impl Reply {
    /// A reply with an enhanced status code.
    pub fn new(code: u16, enhanced: EnhancedCode, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            enhanced: Some(enhanced),
            text: text.into(),
        }
    }

    /// A reply without an enhanced code: the greeting, EHLO/HELO and 354.
    pub fn bare(code: u16, text: impl Into<Cow<'static, str>>) -> Self {
        Reply {
            code,
            enhanced: None,
            text: text.into(),
        }
    }

    /// Whether this reply refuses something permanently (5xx).
    pub fn is_permanent_failure(&self) -> bool {
        self.code >= 500
    }

    /// Whether this reply reports success (2xx).
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Appends the wire form (`250-first\r\n250 last\r\n`) to `out`. Line breaks inside the
    /// text never reach the wire unescaped: each becomes its own reply line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut lines = self.text.split('\n').peekable();
        while let Some(line) = lines.next() {
            let separator = if lines.peek().is_some() { '-' } else { ' ' };
            out.extend_from_slice(itoa3(self.code).as_bytes());
            out.push(separator as u8);
            if let Some(enhanced) = self.enhanced {
                out.extend_from_slice(enhanced.to_string().as_bytes());
                if !line.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend(line.bytes().filter(|b| *b != b'\r'));
            out.extend_from_slice(b"\r\n");
        }
    }
}

fn itoa3(code: u16) -> String {
    format!("{:03}", code.min(999))
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut wire = Vec::new();
        self.write_to(&mut wire);
        f.write_str(String::from_utf8_lossy(&wire).trim_end())
    }
}

/// Enhanced codes used by the server, named after RFC 3463's descriptions.
pub mod codes {
    use super::EnhancedCode;

    /// 2.0.0 Other undefined status (success).
    pub const OK: EnhancedCode = EnhancedCode::new(2, 0, 0);
    /// 2.1.0 Other address status: sender accepted.
    pub const SENDER_OK: EnhancedCode = EnhancedCode::new(2, 1, 0);
    /// 2.1.5 Destination address valid.
    pub const RECIPIENT_OK: EnhancedCode = EnhancedCode::new(2, 1, 5);
    /// 2.5.0 Other or undefined protocol status (used by VRFY's 252).
    pub const PROTOCOL_OK: EnhancedCode = EnhancedCode::new(2, 5, 0);
    /// 4.3.2 System not accepting network messages (shutting down).
    pub const SHUTTING_DOWN: EnhancedCode = EnhancedCode::new(4, 3, 2);
    /// 4.3.0 Other or undefined mail system status (temporary).
    pub const SYSTEM_TEMPORARY: EnhancedCode = EnhancedCode::new(4, 3, 0);
    /// 4.3.1 Mail system full (the spool's disk reserve is reached).
    pub const INSUFFICIENT_STORAGE: EnhancedCode = EnhancedCode::new(4, 3, 1);
    /// 4.4.2 Bad connection (timeout).
    pub const TIMEOUT: EnhancedCode = EnhancedCode::new(4, 4, 2);
    /// 4.5.3 Too many recipients.
    pub const TOO_MANY_RECIPIENTS: EnhancedCode = EnhancedCode::new(4, 5, 3);
    /// 2.7.0 Other or undefined security status (the 221 that ends an HTTP "session").
    pub const SECURITY_OK: EnhancedCode = EnhancedCode::new(2, 7, 0);
    /// 4.7.0 Other or undefined security status (connection limits, error limits).
    pub const SECURITY_TEMPORARY: EnhancedCode = EnhancedCode::new(4, 7, 0);
    /// 5.1.1 Bad destination mailbox address (unknown user).
    pub const BAD_MAILBOX: EnhancedCode = EnhancedCode::new(5, 1, 1);
    /// 4.1.1 The destination mailbox could not be verified for now.
    pub const MAILBOX_UNVERIFIED: EnhancedCode = EnhancedCode::new(4, 1, 1);
    /// 5.1.3 Bad destination mailbox address syntax.
    pub const BAD_RECIPIENT_SYNTAX: EnhancedCode = EnhancedCode::new(5, 1, 3);
    /// 5.1.7 Bad sender's mailbox address syntax.
    pub const BAD_SENDER_SYNTAX: EnhancedCode = EnhancedCode::new(5, 1, 7);
    /// 5.3.4 Message too big for system.
    pub const TOO_BIG: EnhancedCode = EnhancedCode::new(5, 3, 4);
    /// 5.5.1 Invalid command (unknown, or out of sequence).
    pub const INVALID_COMMAND: EnhancedCode = EnhancedCode::new(5, 5, 1);
    /// 5.5.2 Syntax error (lines too long, bad characters, bare line endings).
    pub const SYNTAX_ERROR: EnhancedCode = EnhancedCode::new(5, 5, 2);
    /// 5.5.4 Invalid command arguments.
    pub const INVALID_ARGUMENTS: EnhancedCode = EnhancedCode::new(5, 5, 4);
    /// 5.6.7 Non-ASCII addresses not permitted (RFC 6531).
    pub const UTF8_NOT_PERMITTED: EnhancedCode = EnhancedCode::new(5, 6, 7);
    /// 5.7.1 Delivery not authorized (relay denied).
    pub const NOT_AUTHORIZED: EnhancedCode = EnhancedCode::new(5, 7, 1);
    /// REQUIRETLS support required (RFC 8689 §5.2).
    pub const REQUIRETLS_NEEDED: EnhancedCode = EnhancedCode::new(5, 7, 10);
    /// 5.4.6 Routing loop detected (too many `Received:` fields).
    pub const ROUTING_LOOP: EnhancedCode = EnhancedCode::new(5, 4, 6);
    /// 5.3.0 Other or undefined mail system status (permanent).
    pub const SYSTEM_PERMANENT: EnhancedCode = EnhancedCode::new(5, 3, 0);
}

/// The reply to a MAIL or RCPT address that does not parse: 553 5.6.7 for non-ASCII
/// without SMTPUTF8, 501 for a bad parameter, else 501 with `syntax` (5.1.7 for the
/// sender, 5.1.3 for a recipient).
pub fn address_error(
    error: &super::address::AddressError,
    syntax: EnhancedCode,
    what: &str,
) -> Reply {
    use super::address::AddressError;
    match error {
        AddressError::Utf8NotPermitted => Reply::new(
            553,
            codes::UTF8_NOT_PERMITTED,
            "Non-ASCII address needs SMTPUTF8",
        ),
        AddressError::BadParameter(why) => Reply::new(501, codes::INVALID_ARGUMENTS, *why),
        other => Reply::new(501, syntax, format!("Bad {what} address syntax: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn single_line_reply_carries_enhanced_code() {
        let reply = Reply::new(250, codes::OK, "Ok");
        assert_eq!(wire(&reply), "250 2.0.0 Ok\r\n");
    }

    #[test]
    fn multi_line_reply_uses_dashes_on_all_but_the_last_line() {
        let reply = Reply::bare(250, "relay.test\nPIPELINING\nCHUNKING");
        assert_eq!(
            wire(&reply),
            "250-relay.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
        );
        let reply = Reply::new(214, codes::OK, "one\ntwo");
        assert_eq!(wire(&reply), "214-2.0.0 one\r\n214 2.0.0 two\r\n");
    }

    #[test]
    fn carriage_returns_in_text_never_reach_the_wire() {
        let reply = Reply::new(550, codes::NOT_AUTHORIZED, "a\r\nb");
        assert_eq!(wire(&reply), "550-5.7.1 a\r\n550 5.7.1 b\r\n");
    }
}
