//! Failure classes: what a temporary or permanent delivery failure means, in a small
//! documented vocabulary, from its enhanced status code (RFC 3463, RFC 7372), its reply
//! text (what the big mailbox providers write) and where it happened. The class goes into
//! the delivery events, the metrics, the attempt's log line and on-delivery, so a sender
//! (or the `suppression` plugin) can tell "this mailbox does not exist" from "you are
//! sending too fast" without parsing replies itself.

/// What kind of failure a deferral or bounce was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureClass {
    /// The mailbox does not exist (5.1.1, "user unknown").
    BadMailbox,
    /// The domain does not exist or takes no mail (5.1.2, 5.1.10, NXDOMAIN, null MX).
    BadDomain,
    /// The mailbox is full or over quota (x.2.2, "quota").
    MailboxFull,
    /// The message is too large for the receiver (x.3.4, x.2.3).
    MessageTooLarge,
    /// Refused by the receiver's policy or as spam (x.7.1, "spam", "policy").
    Policy,
    /// Refused for the sender's reputation: a block list, the sending address or its
    /// reverse DNS, authentication (SPF/DKIM/DMARC) results (x.7.25–x.7.27, "listed").
    Reputation,
    /// Slowed down: rate limited or deferred for volume ("try again later", "too many").
    RateLimit,
    /// TLS could not be negotiated or verified, or was required (x.7.10, x.7.5, STARTTLS).
    Tls,
    /// DNS could not answer for now (x.4.3, SERVFAIL, timeouts).
    Dns,
    /// The next hop could not be reached or the connection broke (x.4.1, x.4.2, x.4.7
    /// expiry excepted).
    Connection,
    /// The SMTP exchange itself went wrong (x.5.x: syntax, unsupported extension, 8BITMIME
    /// or SMTPUTF8 missing).
    Protocol,
    /// The message stayed in the queue past its lifetime (4.4.7).
    Expired,
    /// A mail loop (x.4.6).
    Loop,
    /// Anything else.
    Other,
}

impl FailureClass {
    /// The class's name, as in events, metrics, logs and on-delivery.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::BadMailbox => "bad-mailbox",
            FailureClass::BadDomain => "bad-domain",
            FailureClass::MailboxFull => "mailbox-full",
            FailureClass::MessageTooLarge => "message-too-large",
            FailureClass::Policy => "policy",
            FailureClass::Reputation => "reputation",
            FailureClass::RateLimit => "rate-limit",
            FailureClass::Tls => "tls",
            FailureClass::Dns => "dns",
            FailureClass::Connection => "connection",
            FailureClass::Protocol => "protocol",
            FailureClass::Expired => "expired",
            FailureClass::Loop => "loop",
            FailureClass::Other => "other",
        }
    }
}

/// Words in reply texts that say more than the code does, checked in order (a "rate
/// limit" from a block list's text is a reputation problem first).
const TEXT_RULES: &[(&[&str], FailureClass)] = &[
    (
        &[
            "spamhaus",
            "blocklist",
            "block list",
            "blacklist",
            "listed",
            "reputation",
            "rbl",
            "dnsbl",
            "reverse dns",
            "ptr record",
            "dmarc",
            "spf",
            "dkim",
            "unauthenticated",
        ],
        FailureClass::Reputation,
    ),
    (
        &[
            "rate limit",
            "ratelimit",
            "unusual rate",
            "rate-limit",
            "too many",
            "try again later",
            "throttl",
            "slow down",
            "deferred due to",
            "temporarily rate",
            "[ts0",
        ],
        FailureClass::RateLimit,
    ),
    (
        &[
            "over quota",
            "quota exceeded",
            "mailbox full",
            "mailbox is full",
            "insufficient storage",
            "exceeded storage",
        ],
        FailureClass::MailboxFull,
    ),
    (
        &[
            "user unknown",
            "unknown user",
            "no such user",
            "unknown recipient",
            "recipient unknown",
            "does not exist",
            "invalid recipient",
            "mailbox unavailable",
            "no mailbox",
            "address rejected",
            "not found",
        ],
        FailureClass::BadMailbox,
    ),
    (
        &["spam", "content", "virus", "policy", "not accepted"],
        FailureClass::Policy,
    ),
    (&["starttls", "tls", "certificate"], FailureClass::Tls),
];

/// The class of a failure with enhanced status `status` (e.g. `5.1.1`) and reply `reply`.
pub fn classify(status: Option<&str>, reply: &str) -> FailureClass {
    let lower = reply.to_ascii_lowercase();
    let code = status.and_then(parse_status);
    // Codes that say it all.
    if let Some((_, subject, detail)) = code {
        match (subject, detail) {
            (1, 1) | (1, 6) => return FailureClass::BadMailbox,
            (1, 2) | (1, 10) => return FailureClass::BadDomain,
            (2, 2) => return FailureClass::MailboxFull,
            (2, 3) | (3, 4) => return FailureClass::MessageTooLarge,
            (4, 6) => return FailureClass::Loop,
            (4, 7) => return FailureClass::Expired,
            (7, 10) | (7, 5) => return FailureClass::Tls,
            (7, 25..=27) => return FailureClass::Reputation,
            _ => {}
        }
    }
    for (words, class) in TEXT_RULES {
        if words.iter().any(|w| lower.contains(w)) {
            return *class;
        }
    }
    match code {
        Some((_, 1, _)) => FailureClass::BadMailbox,
        Some((_, 2, _)) => FailureClass::MailboxFull,
        Some((_, 3, _)) => FailureClass::Other,
        Some((_, 4, 3)) => FailureClass::Dns,
        Some((_, 4, 4)) => FailureClass::BadDomain,
        Some((_, 4, _)) => FailureClass::Connection,
        Some((_, 5, _)) | Some((_, 6, _)) => FailureClass::Protocol,
        Some((_, 7, _)) => FailureClass::Policy,
        _ if lower.contains("timed out") || lower.contains("connect") => FailureClass::Connection,
        _ => FailureClass::Other,
    }
}

/// `class.subject.detail` of an RFC 3463 code.
fn parse_status(status: &str) -> Option<(u8, u16, u16)> {
    let mut parts = status.split('.');
    let class = parts.next()?.parse().ok()?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    parts.next().is_none().then_some((class, subject, detail))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_texts_of_real_providers_fall_into_their_classes() {
        let cases = [
            (
                Some("5.1.1"),
                "550 5.1.1 The email account that you tried to reach does not exist.",
                FailureClass::BadMailbox,
            ),
            (
                Some("5.0.0"),
                "550 Requested action not taken: mailbox unavailable",
                FailureClass::BadMailbox,
            ),
            (
                Some("5.1.10"),
                "domain has a null MX",
                FailureClass::BadDomain,
            ),
            (
                Some("5.2.2"),
                "552 5.2.2 The email account that you tried to reach is over quota.",
                FailureClass::MailboxFull,
            ),
            (
                Some("4.7.0"),
                "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume",
                FailureClass::RateLimit,
            ),
            (
                Some("4.7.28"),
                "421 4.7.28 Our system has detected an unusual rate of unsolicited mail",
                FailureClass::RateLimit,
            ),
            (
                Some("5.7.1"),
                "554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
                FailureClass::Reputation,
            ),
            (
                Some("5.7.26"),
                "550 5.7.26 This message does not pass authentication checks",
                FailureClass::Reputation,
            ),
            (
                Some("5.7.1"),
                "550 5.7.1 Message rejected as spam",
                FailureClass::Policy,
            ),
            (
                Some("5.7.10"),
                "REQUIRETLS needs verified TLS",
                FailureClass::Tls,
            ),
            (Some("4.4.3"), "mx.example: SERVFAIL", FailureClass::Dns),
            (
                Some("4.4.1"),
                "mx.example [192.0.2.1:25]: connection refused",
                FailureClass::Connection,
            ),
            (
                Some("5.3.4"),
                "552 5.3.4 Message size exceeds fixed limit",
                FailureClass::MessageTooLarge,
            ),
            (Some("5.4.6"), "loop", FailureClass::Loop),
            (Some("4.4.7"), "expired", FailureClass::Expired),
            (
                Some("5.5.2"),
                "500 5.5.2 Syntax error",
                FailureClass::Protocol,
            ),
            (None, "something odd", FailureClass::Other),
        ];
        for (status, reply, class) in cases {
            assert_eq!(classify(status, reply), class, "{reply}");
        }
    }
}
