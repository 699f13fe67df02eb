//! Delivery status notifications: the bounce (or delay warning) sent back to the original
//! sender when the queue gives up on recipients or is still trying.
//!
//! [`build_dsn`] writes a complete RFC 5322 message: a `multipart/report;
//! report-type=delivery-status` (RFC 6522) with three parts:
//!
//! 1. `text/plain`: a human-readable explanation: which recipients failed or are
//!    delayed, why, and that the message is automatic;
//! 2. `message/delivery-status` (RFC 3464): the per-message fields, then one block of
//!    per-recipient fields for each recipient;
//! 3. `text/rfc822-headers`: the header block of the original message, never its body
//!    (privacy and size).
//!
//! Everything that came from outside (addresses, remote host names, diagnostic text,
//! the original headers) is made safe before it is written: CR, LF and other control
//! characters never reach the output as such, so nothing can inject a header field or a
//! MIME boundary; every line ends with CRLF and is at most 998 octets long (fields are
//! folded at whitespace near 78 columns, words too long for a line are split).
//!
//! Internationalised content (RFC 6533): when an address or diagnostic is not ASCII the
//! report part is `message/global-delivery-status` and such an address is given with the
//! `utf-8` address type; when the original header block is not ASCII it is returned as
//! `message/global-headers`. A report like that is 8-bit (it needs an `8BITMIME`, and for a
//! non-ASCII sender an `SMTPUTF8`, transport); a report about ASCII mail is pure 7-bit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::inbound::received::rfc5322_date;
use crate::spool::envelope::Envelope;

/// The most octets of the original header block returned; a longer block is cut at the
/// last line boundary before it.
pub const MAX_RETURNED_HEADERS: usize = 64 * 1024;

/// The most octets of the original message returned whole (RET=FULL); a longer message
/// is returned as its header block only.
pub const MAX_RETURNED_FULL: usize = 256 * 1024;

/// The most octets of one diagnostic text kept; a longer one is cut and marked.
pub const MAX_DIAGNOSTIC: usize = 2048;

/// The hard limit on a line, CRLF excluded (RFC 5322 §2.1.1).
const MAX_LINE: usize = 998;

/// Where folding and wrapping try to break lines (RFC 5322 §2.1.1's "SHOULD").
const FOLD_AT: usize = 78;

/// What happened to a recipient (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The queue gave up: the message will not be delivered to this recipient.
    Failed,
    /// Not delivered yet; the queue keeps trying.
    Delayed,
    /// Delivered into a mailbox here (NOTIFY=SUCCESS, RFC 3461 §4.1).
    Delivered,
    /// Handed to a next hop that does not offer DSN, so no further notice will come
    /// (NOTIFY=SUCCESS, RFC 3461 §4.1).
    Relayed,
}

impl Action {
    /// The `Action:` field value.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }

    /// The status reported when the recorded one is not a valid code.
    fn generic_status(self) -> &'static str {
        match self {
            Action::Failed => "5.0.0",
            Action::Delayed => "4.0.0",
            Action::Delivered | Action::Relayed => "2.0.0",
        }
    }
}

/// One recipient the report is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRecipient {
    /// The final recipient: the address the queue tried to deliver to.
    pub address: String,
    /// The original recipient: the ORCPT parameter as given on RCPT
    /// (`addr-type;xtext`, e.g. `rfc822;user+2Bx@example.test`, xtext decoded for the
    /// report), or a bare address (taken as `rfc822`). `None` leaves the field out.
    pub original: Option<String>,
    /// Failed or delayed.
    pub action: Action,
    /// The enhanced status code (RFC 3463), e.g. `5.1.1`; an invalid one is reported as
    /// `5.0.0` (failed) or `4.0.0` (delayed).
    pub status: String,
    /// The host that gave the answer, e.g. `mx.example.test`.
    pub remote_mta: Option<String>,
    /// The diagnostic, e.g. `smtp; 550 5.1.1 No such user`; without a `type;` prefix it
    /// is taken as an SMTP reply. A multi-line reply may keep its line breaks: they become
    /// spaces.
    pub diagnostic: Option<String>,
    /// When delivery to this recipient was last tried.
    pub last_attempt: SystemTime,
}

/// What a report is built from.
#[derive(Debug, Clone, Copy)]
pub struct DsnInput<'a> {
    /// This gateway's host name: the `Reporting-MTA` and the `MAILER-DAEMON@` domain.
    pub reporting_mta: &'a str,
    /// The envelope of the message reported on; its sender receives the report.
    pub original: &'a Envelope,
    /// The message as it was (to be) delivered, header edits applied by the caller; only
    /// its header block is returned unless `return_full`.
    pub original_message: &'a [u8],
    /// Return the whole of `original_message` as `message/rfc822` (RET=FULL, RFC 3461
    /// §4.3), not only its header block. The caller says so only for a failure notice
    /// about a message it holds whole.
    pub return_full: bool,
    /// The recipients reported on (at least one is expected).
    pub recipients: &'a [FailedRecipient],
    /// When the original message arrived.
    pub arrival: SystemTime,
    /// The report's `Date:`.
    pub now: SystemTime,
    /// The domain of the report's `Message-ID`.
    pub message_id_domain: &'a str,
}

/// Makes every Message-ID (and boundary) of this process distinct, even within a
/// nanosecond and for the same original message.
static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Builds the report as a complete RFC 5322 message with CRLF line endings.
///
/// The report goes to the original sender, `To: <sender>`. The queue never bounces a
/// message from the null sender `<>` (that would risk bounce loops); should it be asked
/// to anyway, the report is still built, addressed `To: undisclosed-recipients:;` (valid
/// syntax, nobody named), and it is for the caller not to send it.
///
/// The subject says "Undelivered Mail Returned to Sender" when any recipient failed and
/// "Delivery Status Notification (Delay)" when all are only delayed.
pub fn build_dsn(input: &DsnInput) -> Vec<u8> {
    let host = host_name(input.reporting_mta);
    let id_domain = id_domain(input.message_id_domain);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let unique = unique_token(input, sequence);

    let any_failed =
        input.recipients.is_empty() || input.recipients.iter().any(|r| r.action == Action::Failed);
    let any_delayed = input.recipients.iter().any(|r| r.action == Action::Delayed);
    let subject = if any_failed {
        "Undelivered Mail Returned to Sender"
    } else if any_delayed {
        "Delivery Status Notification (Delay)"
    } else {
        "Successful Mail Delivery Report"
    };

    let notification = notification(input, &host);
    let (report, report_is_global) = delivery_status(input, &host);
    let headers = if input.return_full {
        returned_message(input.original_message)
    } else {
        returned_headers(input.original_message)
    };

    let notification_is_ascii = notification.is_ascii();
    let headers_are_ascii = headers.is_ascii();
    let mut parts: Vec<(String, Vec<u8>)> = Vec::with_capacity(3);
    parts.push((
        format!(
            "Content-Description: Notification\r\n\
             Content-Type: text/plain; charset={}\r\n\
             Content-Transfer-Encoding: {}\r\n",
            if notification_is_ascii {
                "us-ascii"
            } else {
                "utf-8"
            },
            seven_or_eight(notification_is_ascii)
        ),
        notification.into_bytes(),
    ));
    parts.push((
        format!(
            "Content-Description: Delivery report\r\n\
             Content-Type: message/{}delivery-status\r\n\
             Content-Transfer-Encoding: {}\r\n",
            if report_is_global { "global-" } else { "" },
            seven_or_eight(!report_is_global)
        ),
        report.into_bytes(),
    ));
    let (description, content_type) = match (input.return_full, headers_are_ascii) {
        (false, true) => ("Undelivered message headers", "text/rfc822-headers"),
        (false, false) => ("Undelivered message headers", "message/global-headers"),
        (true, true) => ("Undelivered message", "message/rfc822"),
        (true, false) => ("Undelivered message", "message/global"),
    };
    let description = if any_failed || any_delayed {
        description
    } else {
        "Message headers"
    };
    // A message/rfc822 part may only be 7bit, 8bit or binary (RFC 2046 §5.2.1): the
    // original went out as it is, so 8bit unless it is ASCII.
    parts.push((
        format!(
            "Content-Description: {description}\r\n\
             Content-Type: {content_type}\r\n\
             Content-Transfer-Encoding: {}\r\n",
            seven_or_eight(headers_are_ascii)
        ),
        headers,
    ));
    let boundary = boundary(&unique, parts.iter().map(|(_, body)| body.as_slice()));

    let mut head = String::with_capacity(1024);
    push_field(
        &mut head,
        "From",
        &format!("\"Mail Delivery System\" <MAILER-DAEMON@{host}>"),
    );
    match &input.original.sender {
        Some(sender) => push_field(&mut head, "To", &format!("<{}>", one_line(sender))),
        None => push_field(&mut head, "To", "undisclosed-recipients:;"),
    }
    push_field(&mut head, "Subject", subject);
    push_field(&mut head, "Date", &rfc5322_date(input.now));
    push_field(&mut head, "Message-ID", &format!("<{unique}@{id_domain}>"));
    push_field(&mut head, "Auto-Submitted", "auto-replied");
    push_field(&mut head, "MIME-Version", "1.0");
    push_field(
        &mut head,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    push_field(
        &mut head,
        "Content-Transfer-Encoding",
        seven_or_eight(notification_is_ascii && !report_is_global && headers_are_ascii),
    );
    head.push_str("\r\nThis is a MIME-encapsulated message.\r\n");

    let mut out = head.into_bytes();
    for (part_head, body) in parts {
        out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
        out.extend_from_slice(part_head.as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
    }
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn seven_or_eight(ascii: bool) -> &'static str {
    if ascii { "7bit" } else { "8bit" }
}

/// The local part of the Message-ID: time, process, sequence and the queue ID.
fn unique_token(input: &DsnInput, sequence: u64) -> String {
    let now = input.now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let queue_id: String = input
        .original
        .id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(64)
        .collect();
    format!(
        "{}.{:09}.{}.{sequence}.{queue_id}.dsn",
        now.as_secs(),
        now.subsec_nanos(),
        std::process::id()
    )
}

/// A boundary that occurs in none of the parts (RFC 2046 §5.1.1); at most 70 characters.
fn boundary<'b>(unique: &str, parts: impl Iterator<Item = &'b [u8]> + Clone) -> String {
    let base: String = unique
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(50)
        .collect();
    (0u32..)
        .map(|attempt| format!("=_tidegate_{base}_{attempt}"))
        .find(|candidate| {
            parts
                .clone()
                .all(|part| !contains(part, candidate.as_bytes()))
        })
        .expect("some attempt is free")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// The human-readable part.
fn notification(input: &DsnInput, host: &str) -> String {
    let failed: Vec<&FailedRecipient> = input
        .recipients
        .iter()
        .filter(|r| r.action == Action::Failed)
        .collect();
    let delayed: Vec<&FailedRecipient> = input
        .recipients
        .iter()
        .filter(|r| r.action == Action::Delayed)
        .collect();
    let delivered: Vec<&FailedRecipient> = input
        .recipients
        .iter()
        .filter(|r| r.action == Action::Delivered)
        .collect();
    let relayed: Vec<&FailedRecipient> = input
        .recipients
        .iter()
        .filter(|r| r.action == Action::Relayed)
        .collect();

    let mut text = String::with_capacity(1024);
    push_paragraph(
        &mut text,
        &format!(
            "This is the mail system at {host}. This message was generated automatically; \
             please do not reply to it."
        ),
    );
    if !failed.is_empty() {
        push_paragraph(
            &mut text,
            "Your message could not be delivered to the following recipients. \
             The mail system has given up on them; the message will not be delivered \
             to them.",
        );
        for recipient in &failed {
            push_recipient(&mut text, recipient);
        }
    }
    if !delayed.is_empty() {
        push_paragraph(
            &mut text,
            "Your message has not yet been delivered to the following recipients. \
             The mail system will keep trying and will tell you if it gives up. \
             You do not need to send the message again.",
        );
        for recipient in &delayed {
            push_recipient(&mut text, recipient);
        }
    }
    if !delivered.is_empty() {
        push_paragraph(
            &mut text,
            "Your message was delivered to the following recipients, as you asked to be told.",
        );
        for recipient in &delivered {
            push_recipient(&mut text, recipient);
        }
    }
    if !relayed.is_empty() {
        push_paragraph(
            &mut text,
            "Your message was passed on to the following recipients' mail systems, which \
             do not report deliveries: no further notice about them will come.",
        );
        for recipient in &relayed {
            push_recipient(&mut text, recipient);
        }
    }
    push_paragraph(
        &mut text,
        &format!(
            "Your message (queue ID {}) arrived on {}. A delivery report and the header \
             of your message are attached.",
            one_line(&input.original.id),
            rfc5322_date(input.arrival)
        ),
    );
    text
}

fn push_recipient(text: &mut String, recipient: &FailedRecipient) {
    let mut line = format!("<{}>:", one_line(&recipient.address));
    let (_, diagnostic) = recipient
        .diagnostic
        .as_deref()
        .map(split_diagnostic)
        .unwrap_or_default();
    match (&recipient.remote_mta, diagnostic.is_empty()) {
        (Some(mta), false) => {
            line.push_str(&format!(" host {} said: {diagnostic}", host_name(mta)));
        }
        (None, false) => line.push_str(&format!(" {diagnostic}")),
        (Some(mta), true) => line.push_str(&format!(" (host {})", host_name(mta))),
        (None, true) => {}
    }
    line.push_str(&format!(" (status {})", status(recipient)));
    wrap(text, &line, "    ", "        ");
    text.push_str("\r\n");
}

fn push_paragraph(text: &mut String, paragraph: &str) {
    wrap(text, paragraph, "", "");
    text.push_str("\r\n");
}

/// The `message/delivery-status` content, and whether it needs the global (UTF-8) form.
fn delivery_status(input: &DsnInput, host: &str) -> (String, bool) {
    let mut fields = String::with_capacity(512);
    push_field(&mut fields, "Reporting-MTA", &format!("dns; {host}"));
    push_field(
        &mut fields,
        "X-Tidegate-Queue-ID",
        &one_line(&input.original.id),
    );
    if let Some(sender) = &input.original.sender {
        push_field(&mut fields, "X-Tidegate-Sender", &typed_address(sender));
    }
    if let Some(envid) = input
        .original
        .mail_params
        .iter()
        .find(|p| p.keyword.eq_ignore_ascii_case("ENVID"))
        .and_then(|p| p.value.as_deref())
    {
        push_field(
            &mut fields,
            "Original-Envelope-Id",
            &one_line(&xtext_decode(envid)),
        );
    }
    push_field(&mut fields, "Arrival-Date", &rfc5322_date(input.arrival));

    for recipient in input.recipients {
        fields.push_str("\r\n");
        if let Some(original) = &recipient.original {
            push_field(
                &mut fields,
                "Original-Recipient",
                &original_recipient(original),
            );
        }
        push_field(
            &mut fields,
            "Final-Recipient",
            &typed_address(&recipient.address),
        );
        push_field(&mut fields, "Action", recipient.action.as_str());
        push_field(&mut fields, "Status", &status(recipient));
        if let Some(mta) = &recipient.remote_mta {
            push_field(
                &mut fields,
                "Remote-MTA",
                &format!("dns; {}", host_name(mta)),
            );
        }
        if let Some(diagnostic) = &recipient.diagnostic {
            let (kind, text) = split_diagnostic(diagnostic);
            push_field(&mut fields, "Diagnostic-Code", &format!("{kind}; {text}"));
        }
        push_field(
            &mut fields,
            "Last-Attempt-Date",
            &rfc5322_date(recipient.last_attempt),
        );
    }
    let global = !fields.is_ascii();
    (fields, global)
}

/// `rfc822; address`, or `utf-8; address` for an internationalised one (RFC 6533 §3).
fn typed_address(address: &str) -> String {
    let address = one_line(address);
    let kind = if address.is_ascii() {
        "rfc822"
    } else {
        "utf-8"
    };
    format!("{kind}; {address}")
}

/// The Original-Recipient value from an ORCPT parameter or a bare address.
fn original_recipient(original: &str) -> String {
    match original.split_once(';') {
        Some((kind, address)) if is_token(kind.trim()) => {
            format!(
                "{}; {}",
                kind.trim(),
                one_line(&xtext_decode(address.trim()))
            )
        }
        _ => typed_address(original),
    }
}

/// The status code, or the generic one for the action when it is not a valid code.
fn status(recipient: &FailedRecipient) -> String {
    let code = recipient.status.trim();
    let mut parts = code.split('.');
    let valid = matches!(parts.next(), Some("2" | "4" | "5"))
        && parts.clone().count() == 2
        && parts.all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if valid {
        code.to_owned()
    } else {
        recipient.action.generic_status().into()
    }
}

/// Splits `type; text` (RFC 3464 §2.3.6); text without a type is an SMTP reply. The text
/// comes back on one line, cut to [`MAX_DIAGNOSTIC`] octets.
fn split_diagnostic(diagnostic: &str) -> (String, String) {
    let (kind, text) = match diagnostic.split_once(';') {
        Some((kind, text)) if is_token(kind.trim()) => (kind.trim().to_owned(), text),
        _ => ("smtp".to_owned(), diagnostic),
    };
    let mut text = one_line(text);
    if text.len() > MAX_DIAGNOSTIC {
        text.truncate(floor_char_boundary(&text, MAX_DIAGNOSTIC));
        text.push_str(" [...]");
    }
    (kind, text)
}

/// An address type or diagnostic type: letters, digits and hyphens.
fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Decodes xtext (RFC 3461 §4): `+XX` is the octet with hex value XX.
fn xtext_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'+'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(octet) = u8::from_str_radix(hex, 16)
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            out.push(octet);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A value from outside on one line: every control character (CR and LF included),
/// and the Unicode line and paragraph separators, become spaces; runs of white space
/// collapse to one space; the ends are trimmed.
fn one_line(s: &str) -> String {
    s.split(|c: char| c.is_control() || c.is_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A host name from outside, reduced to the characters of a domain or an address literal
/// (`mx.example.test`, `[192.0.2.1]`, `[IPv6:2001:db8::1]`); `invalid` if nothing is left.
fn host_name(s: &str) -> String {
    let name: String = s
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '.' | '_' | '[' | ']' | ':'))
        .take(255)
        .collect();
    if name.is_empty() {
        "invalid".into()
    } else {
        name
    }
}

/// Where to split a word too long for the `room` left on a line: the last character
/// boundary that fits, but at least one character.
fn split_point(word: &str, room: usize) -> usize {
    match floor_char_boundary(word, room) {
        0 => word.chars().next().map_or(word.len(), char::len_utf8),
        cut => cut,
    }
}

/// The domain of a Message-ID (RFC 5322 §3.6.4 `dot-atom-text`): letters, digits, `-`
/// and `.` of the given name; `invalid` if nothing is left.
fn id_domain(s: &str) -> String {
    let name: String = s
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '.'))
        .take(255)
        .collect();
    let name = name.trim_matches('.');
    if name.is_empty() {
        "invalid".into()
    } else {
        name.replace("..", ".")
    }
}

fn floor_char_boundary(s: &str, at: usize) -> usize {
    let mut at = at.min(s.len());
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Appends `Name: value` CRLF, folded. The value must already be on one line
/// ([`one_line`] or built here); it is folded at spaces to keep lines near [`FOLD_AT`]
/// columns, and a word too long for [`MAX_LINE`] is split across lines.
fn push_field(out: &mut String, name: &str, value: &str) {
    out.push_str(name);
    out.push(':');
    let mut line = name.len() + 1;
    for word in value.split(' ').filter(|w| !w.is_empty()) {
        if line > name.len() + 1 && line + 1 + word.len() > FOLD_AT {
            out.push_str("\r\n");
            line = 0;
        }
        let mut rest = word;
        loop {
            let room = MAX_LINE - line - 1;
            if rest.len() <= room {
                out.push(' ');
                out.push_str(rest);
                line += 1 + rest.len();
                break;
            }
            let cut = split_point(rest, room);
            out.push(' ');
            out.push_str(&rest[..cut]);
            out.push_str("\r\n");
            line = 0;
            rest = &rest[cut..];
        }
    }
    out.push_str("\r\n");
}

/// Appends `text` wrapped at spaces near [`FOLD_AT`] columns, the first line indented by
/// `first`, the others by `rest`; a word too long for [`MAX_LINE`] is split.
fn wrap(out: &mut String, text: &str, first: &str, rest_indent: &str) {
    let text = one_line(text);
    out.push_str(first);
    let mut line = first.len();
    let mut at_start = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        if !at_start && line + 1 + word.len() > FOLD_AT {
            out.push_str("\r\n");
            out.push_str(rest_indent);
            line = rest_indent.len();
            at_start = true;
        }
        let mut rest = word;
        loop {
            let space = usize::from(!at_start);
            let room = MAX_LINE - line - space;
            if space == 1 {
                out.push(' ');
            }
            if rest.len() <= room {
                out.push_str(rest);
                line += space + rest.len();
                at_start = false;
                break;
            }
            let cut = split_point(rest, room);
            out.push_str(&rest[..cut]);
            out.push_str("\r\n");
            out.push_str(rest_indent);
            line = rest_indent.len();
            at_start = true;
            rest = &rest[cut..];
        }
    }
    out.push_str("\r\n");
}

/// The whole original message for RET=FULL, made safe as [`returned_headers`] makes the
/// header block (CRLF line endings, no NUL, no over-long line), cut at a line boundary to
/// [`MAX_RETURNED_FULL`] octets. No line of it can be the report's boundary, which is
/// chosen to occur nowhere in it.
fn returned_message(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len().min(MAX_RETURNED_FULL) + 2);
    for raw_line in message.split_inclusive(|b| *b == b'\n') {
        let line = raw_line.strip_suffix(b"\n").unwrap_or(raw_line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let mut clean: Vec<u8> = line
            .iter()
            .filter(|b| **b != 0)
            .map(|b| if *b == b'\r' { b' ' } else { *b })
            .collect();
        if clean.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            while cut > 0 && clean[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            clean.truncate(cut);
        }
        if out.len() + clean.len() + 2 > MAX_RETURNED_FULL {
            break;
        }
        out.extend_from_slice(&clean);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// The header block of the original message, made safe to return: cut at the empty line
/// (the body is never included), every line ending normalised to CRLF, a lone CR turned
/// into a space, NUL dropped, over-long lines cut to [`MAX_LINE`] octets, the whole cut
/// at a line boundary to [`MAX_RETURNED_HEADERS`] octets.
fn returned_headers(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len().min(MAX_RETURNED_HEADERS) + 2);
    for raw_line in message.split_inclusive(|b| *b == b'\n') {
        let line = raw_line.strip_suffix(b"\n").unwrap_or(raw_line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // the end of the header block
        }
        let mut clean: Vec<u8> = line
            .iter()
            .filter(|b| **b != 0)
            .map(|b| if *b == b'\r' { b' ' } else { *b })
            .collect();
        if clean.len() > MAX_LINE {
            let mut cut = MAX_LINE;
            // Do not leave half a UTF-8 sequence behind.
            while cut > 0 && clean[cut] & 0xC0 == 0x80 {
                cut -= 1;
            }
            clean.truncate(cut);
        }
        if out.len() + clean.len() + 2 > MAX_RETURNED_HEADERS {
            break;
        }
        out.extend_from_slice(&clean);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mail_parser::{MessageParser, MimeHeaders, PartType};

    use super::*;
    use crate::spool::envelope::{BodyType, ClientInfo, Param, Recipient};

    const ORIGINAL: &[u8] = b"Received: from client.example.org ([127.0.0.1])\r\n\
        \tby relay.example.test (Tidegate) with ESMTP id 00000000000000AB;\r\n\
        \tThu, 26 Nov 2026 12:00:00 +0000\r\n\
        From: Sender <sender@example.org>\r\n\
        To: one@example.test, two@example.test\r\n\
        Subject: quarterly numbers\r\n\
        Message-ID: <original@example.org>\r\n\
        \r\n\
        SECRET BODY LINE: the numbers are 42.\r\n\
        Subject: not a header, body text\r\n";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn envelope(sender: Option<&str>) -> Envelope {
        Envelope {
            version: 1,
            id: "00000000000000AB".into(),
            received_at: 1_795_694_400,
            sender: sender.map(str::to_owned),
            mail_params: Vec::new(),
            recipients: ["one@example.test", "two@example.test"]
                .into_iter()
                .map(|a| Recipient {
                    address: a.into(),
                    params: Vec::new(),
                })
                .collect(),
            body: BodyType::SevenBit,
            smtputf8: false,
            client: ClientInfo {
                address: "127.0.0.1:40000".parse().unwrap(),
                helo: "client.example.org".into(),
                listener: "mx".into(),
                protocol: "ESMTP".into(),
                tls: None,
                authenticated: None,
            },
            size: ORIGINAL.len() as u64,
            header_edits: Vec::new(),
            tags: Default::default(),
            quarantine: None,
        }
    }

    fn failed(address: &str) -> FailedRecipient {
        FailedRecipient {
            address: address.into(),
            original: None,
            action: Action::Failed,
            status: "5.1.1".into(),
            remote_mta: Some("mx.example.test".into()),
            diagnostic: Some("smtp; 550 5.1.1 <one@example.test>: No such user".into()),
            last_attempt: at(1_795_694_645),
        }
    }

    fn delayed(address: &str) -> FailedRecipient {
        FailedRecipient {
            address: address.into(),
            original: Some("rfc822;Two+2Bextra@example.test".into()),
            action: Action::Delayed,
            status: "4.4.1".into(),
            remote_mta: None,
            diagnostic: Some("connection refused".into()),
            last_attempt: at(1_795_694_700),
        }
    }

    fn build(envelope: &Envelope, recipients: &[FailedRecipient], message: &[u8]) -> Vec<u8> {
        build_dsn(&DsnInput {
            reporting_mta: "relay.example.test",
            original: envelope,
            original_message: message,
            return_full: false,
            recipients,
            arrival: at(1_795_694_400),
            now: at(1_795_698_000),
            message_id_domain: "relay.example.test",
        })
    }

    fn text(dsn: &[u8]) -> &str {
        std::str::from_utf8(dsn).expect("UTF-8 report")
    }

    /// The body of the part whose Content-Type is `content_type`, as raw text.
    fn part_body<'m>(message: &'m mail_parser::Message<'m>, content_type: &str) -> String {
        let part = message
            .parts
            .iter()
            .find(|p| {
                p.content_type().is_some_and(|ct| {
                    format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
                        .eq_ignore_ascii_case(content_type)
                })
            })
            .unwrap_or_else(|| panic!("no {content_type} part"));
        String::from_utf8(part.contents().to_vec()).unwrap()
    }

    /// The blocks of a delivery-status body: each a list of (name, unfolded value).
    fn field_blocks(body: &str) -> Vec<Vec<(String, String)>> {
        let mut blocks = Vec::new();
        for block in body.split("\r\n\r\n").filter(|b| !b.trim().is_empty()) {
            let mut fields: Vec<(String, String)> = Vec::new();
            for line in block.split("\r\n").filter(|l| !l.is_empty()) {
                if line.starts_with([' ', '\t']) {
                    fields.last_mut().expect("continuation").1.push_str(line);
                } else {
                    let (name, value) = line.split_once(':').expect("field");
                    fields.push((name.to_owned(), value.trim_start().to_owned()));
                }
            }
            blocks.push(fields);
        }
        blocks
    }

    fn field<'f>(fields: &'f [(String, String)], name: &str) -> Option<&'f str> {
        fields
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn dsn_is_a_multipart_report_with_three_parts() {
        let envelope = envelope(Some("sender@example.org"));
        let dsn = build(&envelope, &[failed("one@example.test")], ORIGINAL);
        let message = MessageParser::default().parse(&dsn).expect("parses");

        assert_eq!(
            message
                .from()
                .and_then(|a| a.first())
                .and_then(|a| a.address()),
            Some("MAILER-DAEMON@relay.example.test")
        );
        assert_eq!(
            message
                .from()
                .and_then(|a| a.first())
                .and_then(|a| a.name()),
            Some("Mail Delivery System")
        );
        assert_eq!(
            message
                .to()
                .and_then(|a| a.first())
                .and_then(|a| a.address()),
            Some("sender@example.org")
        );
        assert_eq!(
            message.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        assert_eq!(
            message.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(
            message.header_raw("MIME-Version").map(str::trim),
            Some("1.0")
        );
        assert_eq!(
            message.header_raw("Date").map(str::trim),
            Some("Thu, 26 Nov 2026 13:00:00 +0000")
        );
        let id = message.message_id().expect("Message-ID");
        assert!(id.ends_with("@relay.example.test"), "{id}");

        let content_type = message.content_type().expect("Content-Type");
        assert_eq!(content_type.ctype(), "multipart");
        assert_eq!(content_type.subtype(), Some("report"));
        assert_eq!(
            content_type.attribute("report-type"),
            Some("delivery-status")
        );
        let PartType::Multipart(children) = &message.parts[0].body else {
            panic!("not multipart: {:?}", message.parts[0].body)
        };
        let types: Vec<String> = children
            .iter()
            .map(|&i| {
                let ct = message.parts[i as usize].content_type().unwrap();
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or_default())
            })
            .collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );

        let notice = part_body(&message, "text/plain");
        assert!(notice.contains("<one@example.test>"), "{notice}");
        assert!(notice.contains("No such user"), "{notice}");
        assert!(notice.contains("automatically"), "{notice}");
        assert!(notice.contains("mx.example.test"), "{notice}");
    }

    #[test]
    fn dsn_delivery_status_fields_are_correct_per_recipient() {
        let mut envelope = envelope(Some("sender@example.org"));
        envelope.mail_params.push(Param {
            keyword: "ENVID".into(),
            value: Some("QQ+2B314".into()),
        });
        let dsn = build(
            &envelope,
            &[failed("one@example.test"), delayed("two@example.test")],
            ORIGINAL,
        );
        let message = MessageParser::default().parse(&dsn).expect("parses");
        let blocks = field_blocks(&part_body(&message, "message/delivery-status"));
        assert_eq!(blocks.len(), 3, "{blocks:#?}");

        let per_message = &blocks[0];
        assert_eq!(
            field(per_message, "Reporting-MTA"),
            Some("dns; relay.example.test")
        );
        assert_eq!(
            field(per_message, "Arrival-Date"),
            Some("Thu, 26 Nov 2026 12:00:00 +0000")
        );
        assert_eq!(field(per_message, "Original-Envelope-Id"), Some("QQ+314"));
        assert_eq!(
            field(per_message, "X-Tidegate-Queue-ID"),
            Some("00000000000000AB")
        );

        let one = &blocks[1];
        assert_eq!(field(one, "Original-Recipient"), None);
        assert_eq!(
            field(one, "Final-Recipient"),
            Some("rfc822; one@example.test")
        );
        assert_eq!(field(one, "Action"), Some("failed"));
        assert_eq!(field(one, "Status"), Some("5.1.1"));
        assert_eq!(field(one, "Remote-MTA"), Some("dns; mx.example.test"));
        assert_eq!(
            field(one, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 <one@example.test>: No such user")
        );
        assert_eq!(
            field(one, "Last-Attempt-Date"),
            Some("Thu, 26 Nov 2026 12:04:05 +0000")
        );

        let two = &blocks[2];
        assert_eq!(
            field(two, "Original-Recipient"),
            Some("rfc822; Two+extra@example.test")
        );
        assert_eq!(
            field(two, "Final-Recipient"),
            Some("rfc822; two@example.test")
        );
        assert_eq!(field(two, "Action"), Some("delayed"));
        assert_eq!(field(two, "Status"), Some("4.4.1"));
        assert_eq!(field(two, "Remote-MTA"), None);
        assert_eq!(
            field(two, "Diagnostic-Code"),
            Some("smtp; connection refused")
        );
        // The order RFC 3464 §2.3 gives.
        let names: Vec<&str> = two.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "Original-Recipient",
                "Final-Recipient",
                "Action",
                "Status",
                "Diagnostic-Code",
                "Last-Attempt-Date"
            ]
        );
        // One failure is enough for the bounce subject; both are explained.
        assert_eq!(
            message.subject(),
            Some("Undelivered Mail Returned to Sender")
        );
        let notice = part_body(&message, "text/plain");
        assert!(notice.contains("<two@example.test>"), "{notice}");
        assert!(notice.contains("keep trying"), "{notice}");
    }

    #[test]
    fn dsn_for_delays_only_says_so_in_the_subject() {
        let envelope = envelope(Some("sender@example.org"));
        let dsn = build(&envelope, &[delayed("two@example.test")], ORIGINAL);
        let message = MessageParser::default().parse(&dsn).expect("parses");
        assert_eq!(
            message.subject(),
            Some("Delivery Status Notification (Delay)")
        );
        let notice = part_body(&message, "text/plain");
        assert!(!notice.contains("given up"), "{notice}");
    }

    #[test]
    fn dsn_returns_only_the_header_block_of_the_original() {
        let envelope = envelope(Some("sender@example.org"));
        let dsn = build(&envelope, &[failed("one@example.test")], ORIGINAL);
        assert!(!contains(&dsn, b"SECRET BODY LINE"), "{}", text(&dsn));
        assert!(!contains(&dsn, b"not a header, body text"));

        let message = MessageParser::default().parse(&dsn).expect("parses");
        let headers = part_body(&message, "text/rfc822-headers");
        let end = ORIGINAL.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        assert_eq!(headers.as_bytes(), &ORIGINAL[..end + 2]);
    }

    #[test]
    fn dsn_normalises_the_returned_headers_and_limits_them() {
        let mut original = b"Subject: bare\nX-Lone: a\rb\r\nX-Long: ".to_vec();
        original.extend(std::iter::repeat_n(b'x', 3000));
        original.extend_from_slice(b"\r\n\nbody after a bare LF blank line\r\n");
        let envelope = envelope(Some("sender@example.org"));
        let dsn = build(&envelope, &[failed("one@example.test")], &original);
        assert!(!contains(&dsn, b"body after"));
        assert!(contains(
            &dsn,
            b"Subject: bare\r\nX-Lone: a b\r\nX-Long: xxx"
        ));

        let huge: Vec<u8> = (0..10_000)
            .flat_map(|i| format!("X-Filler-{i}: {}\r\n", "y".repeat(60)).into_bytes())
            .collect();
        let dsn = build(&envelope, &[failed("one@example.test")], &huge);
        let message = MessageParser::default().parse(&dsn).expect("parses");
        let headers = part_body(&message, "text/rfc822-headers");
        assert!(headers.len() <= MAX_RETURNED_HEADERS, "{}", headers.len());
        assert!(headers.starts_with("X-Filler-0: "));
        assert!(headers.ends_with("y\r\n"));
    }

    #[test]
    fn dsn_uses_crlf_only_and_no_line_is_over_998_octets() {
        let envelope = envelope(Some("sender@example.org"));
        let mut long = failed("one@example.test");
        long.diagnostic = Some(format!(
            "smtp; 550-5.7.1 {}\n550-5.7.1 {}\r\n550 5.7.1 {}",
            "z".repeat(1500),
            "é".repeat(600),
            "words ".repeat(300),
        ));
        long.remote_mta = Some("m".repeat(2000));
        let mut original = ORIGINAL.to_vec();
        original.splice(0..0, b"X-Bare: lf\n".iter().copied());
        let dsn = build(&envelope, &[long, delayed("two@example.test")], &original);

        for (i, &b) in dsn.iter().enumerate() {
            if b == b'\n' {
                assert_eq!(dsn.get(i.wrapping_sub(1)), Some(&b'\r'), "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(dsn.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        assert!(dsn.ends_with(b"\r\n"));
        for line in dsn.split(|b| *b == b'\n') {
            assert!(line.len() <= MAX_LINE + 1, "line of {} octets", line.len());
        }

        // Folded or not, the whole diagnostic (up to the cut) is still there.
        let message = MessageParser::default().parse(&dsn).expect("parses");
        let blocks = field_blocks(&part_body(&message, "message/global-delivery-status"));
        let diagnostic = field(&blocks[1], "Diagnostic-Code").unwrap();
        assert!(
            diagnostic.starts_with("smtp; 550-5.7.1 zzzz"),
            "{diagnostic}"
        );
        assert!(diagnostic.contains("550-5.7.1 éé"), "{diagnostic}");
        assert!(diagnostic.ends_with("é [...]"), "{diagnostic}");
        assert!(
            !diagnostic.contains("words"),
            "cut at {MAX_DIAGNOSTIC} octets"
        );
    }

    #[test]
    fn dsn_values_from_outside_cannot_inject_header_fields() {
        let envelope = envelope(Some("sender@example.org>\r\nBcc: victim@example.net"));
        let mut evil = failed("one@example.test\r\nX-Injected-Rcpt: 1");
        evil.diagnostic = Some(
            "smtp; 550 5.1.1 gone\r\nBcc: victim@example.net\r\n\r\n--fake-boundary\n\
             X-Injected: 1"
                .into(),
        );
        evil.remote_mta = Some("mx.example.test\r\nX-Injected-Mta: 1".into());
        evil.original = Some("rfc822;a+0D+0AX-Injected-Orcpt: 1".into());
        evil.status = "5.1.1\r\nX-Injected-Status: 1".into();
        let dsn = build_dsn(&DsnInput {
            reporting_mta: "relay.example.test\r\nX-Injected-Host: 1",
            original: &envelope,
            original_message: ORIGINAL,
            return_full: false,
            recipients: &[evil],
            arrival: at(0),
            now: at(0),
            message_id_domain: "example.test>\r\nX-Injected-Id: 1",
        });
        let text = text(&dsn);
        for line in text.split("\r\n") {
            assert!(
                !line.starts_with("Bcc:") && !line.starts_with("X-Injected"),
                "injected line {line:?} in\n{text}"
            );
        }
        let message = MessageParser::default().parse(&dsn).expect("parses");
        assert!(message.header("Bcc").is_none());
        let blocks = field_blocks(&part_body(&message, "message/delivery-status"));
        assert_eq!(blocks.len(), 2, "{blocks:#?}");
        assert_eq!(field(&blocks[1], "Status"), Some("5.0.0"));
        assert_eq!(
            field(&blocks[1], "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 gone Bcc: victim@example.net --fake-boundary X-Injected: 1")
        );
        assert_eq!(
            field(&blocks[1], "Original-Recipient"),
            Some("rfc822; a X-Injected-Orcpt: 1")
        );
    }

    #[test]
    fn dsn_boundary_avoids_the_content() {
        let first = boundary("abc", std::iter::empty());
        assert_eq!(first, "=_tidegate_abc_0");
        let trap = format!("X-Trap: --{first}\r\n");
        let body = b"plain text".as_slice();
        let chosen = boundary("abc", [body, trap.as_bytes()].into_iter());
        assert_eq!(chosen, "=_tidegate_abc_1");

        // And in a whole report: the boundary is in no part.
        let envelope = envelope(Some("sender@example.org"));
        let dsn = build(&envelope, &[failed("one@example.test")], ORIGINAL);
        let message = MessageParser::default().parse(&dsn).unwrap();
        let used = message
            .content_type()
            .unwrap()
            .attribute("boundary")
            .unwrap();
        assert_eq!(text(&dsn).matches(&format!("--{used}\r\n")).count(), 3);
        assert_eq!(text(&dsn).matches(&format!("--{used}--\r\n")).count(), 1);
        assert!(used.len() <= 70, "{used}");
    }

    #[test]
    fn dsn_message_ids_differ_between_reports() {
        let envelope = envelope(Some("sender@example.org"));
        let a = build(&envelope, &[failed("one@example.test")], ORIGINAL);
        let b = build(&envelope, &[failed("one@example.test")], ORIGINAL);
        let id = |dsn: &[u8]| {
            MessageParser::default()
                .parse(dsn)
                .unwrap()
                .message_id()
                .unwrap()
                .to_owned()
        };
        assert_ne!(id(&a), id(&b));
    }

    #[test]
    fn dsn_to_the_null_sender_is_still_built() {
        let envelope = envelope(None);
        let dsn = build(&envelope, &[failed("one@example.test")], ORIGINAL);
        assert!(text(&dsn).contains("\r\nTo: undisclosed-recipients:;\r\n"));
        assert!(MessageParser::default().parse(&dsn).is_some());
    }

    #[test]
    fn dsn_for_international_addresses_uses_the_global_types() {
        let mut envelope = envelope(Some("jörg@example.org"));
        envelope.smtputf8 = true;
        let mut original = "Subject: Grüße\r\n".as_bytes().to_vec();
        original.extend_from_slice(ORIGINAL);
        let dsn = build(&envelope, &[failed("ünï@example.test")], &original);
        let message = MessageParser::default().parse(&dsn).expect("parses");
        let blocks = field_blocks(&part_body(&message, "message/global-delivery-status"));
        assert_eq!(
            field(&blocks[1], "Final-Recipient"),
            Some("utf-8; ünï@example.test")
        );
        assert!(part_body(&message, "message/global-headers").starts_with("Subject: Grüße\r\n"));
        assert!(text(&dsn).contains("\r\nTo: <jörg@example.org>\r\n"));
        assert!(text(&dsn).contains("charset=utf-8"));

        // ASCII mail gets a 7-bit report.
        let plain = build(
            &self::envelope(Some("a@example.org")),
            &[failed("b@example.test")],
            ORIGINAL,
        );
        assert!(plain.is_ascii());
    }

    #[test]
    fn a_success_notice_says_delivered_or_relayed_and_returns_only_headers() {
        let envelope = envelope(Some("sender@example.org"));
        let mut delivered = failed("one@example.test");
        delivered.action = Action::Delivered;
        delivered.status = "2.0.0".into();
        let mut relayed = failed("two@example.test");
        relayed.action = Action::Relayed;
        relayed.status = "garbage".into();
        let dsn = build(&envelope, &[delivered, relayed], ORIGINAL);
        let message = MessageParser::default().parse(&dsn).expect("parses");
        assert_eq!(message.subject(), Some("Successful Mail Delivery Report"));
        let blocks = field_blocks(&part_body(&message, "message/delivery-status"));
        assert_eq!(field(&blocks[1], "Action"), Some("delivered"));
        assert_eq!(field(&blocks[2], "Action"), Some("relayed"));
        // An unusable status falls back to the generic one of the action.
        assert_eq!(field(&blocks[2], "Status"), Some("2.0.0"));
        assert!(!text(&dsn).contains("SECRET BODY"));
        assert!(part_body(&message, "text/plain").contains("passed on"));
    }

    #[test]
    fn ret_full_returns_the_whole_message_as_message_rfc822() {
        let envelope = envelope(Some("sender@example.org"));
        let dsn = build_dsn(&DsnInput {
            reporting_mta: "relay.example.test",
            original: &envelope,
            original_message: ORIGINAL,
            return_full: true,
            recipients: &[failed("one@example.test")],
            arrival: at(1_795_694_400),
            now: at(1_795_698_000),
            message_id_domain: "relay.example.test",
        });
        assert!(text(&dsn).contains("Content-Type: message/rfc822\r\n"));
        assert!(text(&dsn).contains("SECRET BODY LINE: the numbers are 42.\r\n"));
        let message = MessageParser::default().parse(&dsn).expect("parses");
        let PartType::Multipart(children) = &message.parts[0].body else {
            panic!("not multipart")
        };
        assert_eq!(children.len(), 3);
    }
}
