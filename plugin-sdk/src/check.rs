//! The checks the gateway makes of every response, for the native harness: a plugin that
//! passes its own tests cannot then fail only in the gateway. The bounds are the
//! gateway's own (the host imports [`limits`] from here), and the rules mirror its
//! validation of responses (`host/src/plugins/chain.rs`), which also parses addresses
//! with its full RFC 5321 parser where this checks their shape.

use crate::types::{Edit, Reply, Response, Verdict};

/// What one response may carry.
pub mod limits {
    /// Edits in one response.
    pub const MAX_EDITS: usize = 64;
    /// Tags a transaction may carry, from every plugin together.
    pub const MAX_TAGS: usize = 128;
    /// The longest tag name.
    pub const MAX_TAG_NAME: usize = 64;
    /// The longest tag value.
    pub const MAX_TAG_VALUE: usize = 1024;
    /// The longest reply, discard or quarantine text.
    pub const MAX_TEXT: usize = 400;
    /// The longest header field name (RFC 5322 allows 76 with the colon on a 78-column line).
    pub const MAX_HEADER_NAME: usize = 76;
    /// The longest header field value (RFC 5322 §2.1.1's line length).
    pub const MAX_HEADER_VALUE: usize = 998;
}

/// The stage a response answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// on-connect
    Connect,
    /// on-helo
    Helo,
    /// on-auth
    Auth,
    /// on-mail-from
    MailFrom,
    /// on-rcpt-to
    RcptTo,
    /// on-data
    Data,
}

/// A value a plugin chose, as error messages quote it: cut short, control characters
/// escaped, so that a hostile value cannot write lines of its own into a log.
pub fn quoted(value: &str) -> String {
    value
        .chars()
        .take(80)
        .collect::<String>()
        .escape_debug()
        .to_string()
}

fn reply(reply: &Reply, class: u16) -> Result<(), String> {
    reply_fields(reply.code, &reply.enhanced, &reply.text, class)
}

/// A reply of class `class` (4 or 5): the code, an enhanced code `class.x.y`, one line of
/// text.
pub fn reply_fields(code: u16, enhanced: &str, reply_text: &str, class: u16) -> Result<(), String> {
    if code / 100 != class || !(200..=599).contains(&code) {
        return Err(format!("reply code {code} is not {class}xx"));
    }
    let parts: Vec<&str> = enhanced.split('.').collect();
    let enhanced_ok = parts.len() == 3
        && parts[0] == class.to_string()
        && parts[1..]
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    if !enhanced_ok {
        return Err(format!(
            "enhanced code `{}` is not {class}.x.y",
            quoted(enhanced)
        ));
    }
    text("reply text", reply_text)
}

/// Single-line printable text of bounded length (reply, discard and quarantine texts).
pub fn text(what: &str, text: &str) -> Result<(), String> {
    if text.len() > limits::MAX_TEXT || text.chars().any(char::is_control) {
        return Err(format!(
            "{what} is over {} bytes or has control characters",
            limits::MAX_TEXT
        ));
    }
    Ok(())
}

/// A header field a plugin adds or replaces: an RFC 5322 field name, and a value without
/// CR or LF (nothing is folded for it; a line break would start a field of the plugin's
/// choosing, or end the header) of bounded length.
pub fn header(name: &str, value: &str) -> Result<(), String> {
    let name_ok = !name.is_empty()
        && name.len() <= limits::MAX_HEADER_NAME
        && name.bytes().all(|b| b.is_ascii_graphic() && b != b':');
    if !name_ok {
        return Err(format!(
            "header name `{}` is not an RFC 5322 field name",
            quoted(name)
        ));
    }
    if value.len() > limits::MAX_HEADER_VALUE || value.chars().any(|c| c.is_control() && c != '\t')
    {
        return Err(format!(
            "header `{name}` value is over {} bytes or has CR, LF or other control characters",
            limits::MAX_HEADER_VALUE
        ));
    }
    Ok(())
}

/// An address's shape: `local@domain`, nothing a command line could be split on.
fn address(what: &str, address: &str) -> Result<(), String> {
    let shaped = address
        .rsplit_once('@')
        .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty())
        && !address
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || "<>,;".contains(c));
    if !shaped || address.len() > 256 {
        return Err(format!(
            "{what} `{}` is not a valid address",
            quoted(address)
        ));
    }
    Ok(())
}

/// A tag: a name of 1 to 64 of `[A-Za-z0-9-_.:]`, a bounded value without control
/// characters.
pub fn tag(key: &str, value: &str) -> Result<(), String> {
    let key_ok = !key.is_empty()
        && key.len() <= limits::MAX_TAG_NAME
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if !key_ok {
        return Err(format!(
            "tag name `{}` is not 1 to {} of [A-Za-z0-9-_.:]",
            quoted(key),
            limits::MAX_TAG_NAME
        ));
    }
    if value.len() > limits::MAX_TAG_VALUE || value.chars().any(char::is_control) {
        return Err(format!(
            "tag `{key}` value is over {} bytes or has control characters",
            limits::MAX_TAG_VALUE
        ));
    }
    Ok(())
}

/// Whether the gateway would take `response` at `stage`; the error says why not, in the
/// gateway's words.
pub fn response(stage: Stage, response: &Response) -> Result<(), String> {
    match &response.verdict {
        Verdict::Reject(r) => reply(r, 5)?,
        Verdict::Tempfail(r) => reply(r, 4)?,
        Verdict::Disconnect(r) => reply(r, if r.code < 500 { 4 } else { 5 })?,
        Verdict::Discard(_) | Verdict::Quarantine(_) if stage != Stage::Data => {
            return Err("discard and quarantine are verdicts of on-data only".into());
        }
        Verdict::Discard(why) => text("discard reason", why)?,
        Verdict::Quarantine(why) => text("quarantine reason", why)?,
        Verdict::Continue | Verdict::Accept => {}
    }
    if response.edits.len() > limits::MAX_EDITS {
        return Err(format!(
            "{} edits in one response, at most {}",
            response.edits.len(),
            limits::MAX_EDITS
        ));
    }
    for edit in &response.edits {
        let allowed = match edit {
            Edit::SetTag(..) => true,
            Edit::SetSender(_) => matches!(stage, Stage::MailFrom | Stage::Data),
            Edit::AddRecipient(_) | Edit::RemoveRecipient(_) | Edit::RewriteRecipient(..) => {
                matches!(stage, Stage::RcptTo | Stage::Data)
            }
            Edit::AddHeader(..) | Edit::RemoveHeader(_) | Edit::ReplaceHeader(..) => {
                stage == Stage::Data
            }
        };
        if !allowed {
            return Err(format!("edit {edit:?} is not allowed at {stage:?}"));
        }
        match edit {
            Edit::AddHeader(name, value) | Edit::ReplaceHeader(name, value) => header(name, value)?,
            Edit::RemoveHeader(name) => header(name, "")?,
            Edit::SetSender(Some(sender)) => address("sender", sender)?,
            Edit::SetSender(None) | Edit::RemoveRecipient(_) => {}
            Edit::AddRecipient(to) | Edit::RewriteRecipient(_, to) => address("recipient", to)?,
            Edit::SetTag(key, value) => tag(key, value)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_gateway_refuses_the_harness_refuses() {
        let ok = Response::next().tag("seen", "yes");
        assert_eq!(response(Stage::RcptTo, &ok), Ok(()));
        let crlf = Response::next().add_header("X-A", "a\r\nBcc: x");
        assert!(response(Stage::Data, &crlf).is_err());
        let smuggled = Response::next().with(Edit::AddRecipient("a@b>\r\nRCPT TO:<c@d".into()));
        assert!(response(Stage::RcptTo, &smuggled).is_err());
        let header_at_rcpt = Response::next().add_header("X-A", "b");
        assert!(response(Stage::RcptTo, &header_at_rcpt).is_err());
        let bad_code = Response::from(Verdict::reject(250, "2.0.0", "no"));
        assert!(response(Stage::RcptTo, &bad_code).is_err());
        let mut many = Response::next();
        for i in 0..65 {
            many = many.tag(&format!("t{i}"), "v");
        }
        assert!(response(Stage::Helo, &many).is_err());
    }
}
