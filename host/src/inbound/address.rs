//! SMTP paths and ESMTP parameters: the argument of `MAIL FROM:` and `RCPT TO:`.
//!
//! The grammar is RFC 5321 §4.1.2 (Reverse-path, Forward-path, Mailbox, Local-part,
//! Dot-string, Quoted-string, Domain, address-literal, Mail-parameters), with the RFC 6531
//! extensions for SMTPUTF8 (UTF-8 in local parts, U-labels in domains, UTF-8 in
//! parameter values) enabled only when the caller says so.
//!
//! The parser is strict, because what it accepts feeds relay control: a trailing dot in a
//! domain, a space inside the path or junk after `>` is an error rather than something to
//! be normalised away. It is liberal in one way only, allowing spaces before `<`, because
//! many clients send `MAIL FROM: <a@b>`. Source routes must be accepted but should be
//! ignored (RFC 5321 §3.6.1), so they are checked for syntax and then dropped.
//!
//! Lengths (64 octets for a local part, 255 for a domain, 63 for a label, 256 for a path)
//! are counted on the text as the client sent it, quotes, backslashes and any source route
//! included, which is what the limits of RFC 5321 §4.5.3.1 are about. The canonical
//! [`fmt::Display`] form is never longer (bar the rare capital whose lowercase takes more
//! octets, for which the domain and path limits are checked again on the canonical form),
//! so a parsed mailbox can be sent on again.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Longest local part, in octets (RFC 5321 §4.5.3.1.1).
const MAX_LOCAL_PART: usize = 64;
/// Longest domain, in octets (RFC 5321 §4.5.3.1.2).
const MAX_DOMAIN: usize = 255;
/// Longest domain label, in octets (RFC 1035 §2.3.4).
const MAX_LABEL: usize = 63;
/// Longest path between the angle brackets, in octets (RFC 5321 §4.5.3.1.3).
const MAX_PATH: usize = 256;

/// Why a path or its parameters were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path does not follow the RFC 5321 grammar; the text says briefly how.
    #[error("syntax error in address: {0}")]
    Syntax(&'static str),
    /// Non-ASCII text where SMTPUTF8 is not in effect (RFC 6531 §3.5).
    #[error("non-ASCII address or parameter not permitted without SMTPUTF8")]
    Utf8NotPermitted,
    /// The local part is longer than 64 octets.
    #[error("local part longer than 64 octets")]
    LocalPartTooLong,
    /// The domain is longer than 255 octets.
    #[error("domain longer than 255 octets")]
    DomainTooLong,
    /// The path between the angle brackets is longer than 256 octets.
    #[error("path longer than 256 octets")]
    PathTooLong,
    /// An ESMTP parameter is malformed or repeated; the text says briefly how.
    #[error("invalid ESMTP parameter: {0}")]
    BadParameter(&'static str),
}

/// An address literal: the domain part written as `[...]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AddressLiteral {
    /// `[192.0.2.1]`.
    V4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`; the tag is matched case-insensitively.
    V6(Ipv6Addr),
    /// `[tag:content]`, a General-address-literal, kept as sent.
    General {
        /// The Standardized-tag before the first colon.
        tag: String,
        /// Everything after the first colon.
        content: String,
    },
}

impl fmt::Display for AddressLiteral {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddressLiteral::V4(ip) => write!(f, "[{ip}]"),
            AddressLiteral::V6(ip) => write!(f, "[IPv6:{ip}]"),
            AddressLiteral::General { tag, content } => write!(f, "[{tag}:{content}]"),
        }
    }
}

/// The domain part of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name, lowercased (U-labels with Unicode lowercasing), never with a trailing
    /// dot, so that relay checks can compare it directly.
    Name(String),
    /// An address literal.
    Literal(AddressLiteral),
}

impl Domain {
    /// Parses a bare domain or address literal (as in `EHLO`'s argument), with the same
    /// rules as the domain part of a path; `utf8` permits U-labels.
    pub fn parse(input: &str, utf8: bool) -> Result<Domain, AddressError> {
        check_characters(input, utf8)?;
        let mut cur = Cursor::new(input, utf8);
        let domain = cur.domain()?;
        cur.expect_end("unexpected text after domain")?;
        Ok(domain)
    }

    /// True when the domain is a name with non-ASCII labels, which needs SMTPUTF8 to relay.
    pub fn is_utf8(&self) -> bool {
        match self {
            Domain::Name(name) => !name.is_ascii(),
            Domain::Literal(_) => false,
        }
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Literal(literal) => literal.fmt(f),
        }
    }
}

/// A mailbox `local-part@domain`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part as the client meant it: a Quoted-string is stored without its quotes
    /// and backslashes, so `"abc"` and `abc` compare equal, as RFC 5321 §4.1.2 says they are.
    local_part: String,
    domain: Domain,
}

impl Mailbox {
    /// Parses a bare mailbox without angle brackets or source route (e.g. from
    /// configuration); `utf8` permits UTF-8 as in SMTPUTF8. The whole mailbox must fit the
    /// 256-octet path limit, so that it can always be used in a path.
    pub fn parse(input: &str, utf8: bool) -> Result<Mailbox, AddressError> {
        check_characters(input, utf8)?;
        let mut cur = Cursor::new(input, utf8);
        let mailbox = cur.mailbox()?;
        cur.expect_end("unexpected text after mailbox")?;
        check_path_length(input.len())?;
        Ok(mailbox)
    }

    /// The local part, unquoted and unescaped; case is preserved because local parts are
    /// case-sensitive (RFC 5321 §2.4).
    pub fn local_part(&self) -> &str {
        &self.local_part
    }

    /// The domain part.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }

    /// True when the local part contains '%', '!' or '@' (possible only quoted) — characters
    /// that some mail systems treat as source routing (the "percent hack", bang paths); the
    /// relay check must not trust such an address from a non-relay client.
    pub fn local_part_routes(&self) -> bool {
        self.local_part.contains(['%', '!', '@'])
    }

    /// True when the local part or the domain is non-ASCII: relaying it needs SMTPUTF8.
    pub fn is_utf8(&self) -> bool {
        !self.local_part.is_ascii() || self.domain.is_utf8()
    }
}

/// The canonical form: the local part as a Dot-string when it is one, otherwise as a
/// Quoted-string escaping only `"` and `\`; then `@` and the domain.
impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local_part) {
            f.write_str(&self.local_part)?;
        } else {
            f.write_str("\"")?;
            for c in self.local_part.chars() {
                if matches!(c, '"' | '\\') {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// The argument of `MAIL FROM:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`: the null sender of bounces and other notifications (RFC 5321 §4.5.5).
    Null,
    /// A sender mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(mailbox) => write!(f, "<{mailbox}>"),
        }
    }
}

/// The argument of `RCPT TO:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ForwardPath {
    /// `<Postmaster>` without a domain, which every server must accept (RFC 5321 §4.5.1).
    Postmaster,
    /// A recipient mailbox.
    Mailbox(Mailbox),
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("<Postmaster>"),
            ForwardPath::Mailbox(mailbox) => write!(f, "<{mailbox}>"),
        }
    }
}

/// One ESMTP parameter, `KEYWORD` or `KEYWORD=value` (RFC 5321 §4.1.2).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Param {
    /// The keyword, ASCII-uppercased because keywords are case-insensitive.
    pub keyword: String,
    /// The value as sent, if any; never empty.
    pub value: Option<String>,
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}={value}", self.keyword),
            None => f.write_str(&self.keyword),
        }
    }
}

/// Parses the text after `MAIL FROM:`: a reverse path, then optional parameters.
///
/// `utf8` permits UTF-8 in the path and parameter values. Pass whether SMTPUTF8 is
/// advertised; the `SMTPUTF8` parameter itself arrives in the result, so whether a UTF-8
/// sender came without it (RFC 6531 §3.4) is the caller's check, via [`Mailbox::is_utf8`].
pub fn parse_reverse_path(
    input: &str,
    utf8: bool,
) -> Result<(ReversePath, Vec<Param>), AddressError> {
    let mut cur = open_path(input, utf8)?;
    let start = cur.pos;
    let path = if cur.peek() == Some(b'>') {
        ReversePath::Null
    } else {
        ReversePath::Mailbox(cur.path_body()?)
    };
    let params = finish_path(cur, start)?;
    Ok((path, params))
}

/// Parses the text after `RCPT TO:`: a forward path, then optional parameters.
///
/// `utf8` permits UTF-8 in the path and parameter values: pass whether the transaction's
/// `MAIL` carried SMTPUTF8.
pub fn parse_forward_path(
    input: &str,
    utf8: bool,
) -> Result<(ForwardPath, Vec<Param>), AddressError> {
    let mut cur = open_path(input, utf8)?;
    let start = cur.pos;
    let path = if cur.peek() == Some(b'>') {
        return Err(AddressError::Syntax("empty forward-path"));
    } else if cur.eat_postmaster() {
        ForwardPath::Postmaster
    } else {
        ForwardPath::Mailbox(cur.path_body()?)
    };
    let params = finish_path(cur, start)?;
    Ok((path, params))
}

/// Parses Mail-parameters / Rcpt-parameters: `esmtp-param *(SP esmtp-param)`.
///
/// Runs of spaces and leading or trailing spaces are tolerated, since they carry no
/// meaning and some clients send them. A repeated keyword is an error because its meaning
/// would be ambiguous. `utf8` permits UTF-8 in values (RFC 6531 §3.3).
pub fn parse_params(input: &str, utf8: bool) -> Result<Vec<Param>, AddressError> {
    check_characters(input, utf8)?;
    param_list(input, utf8)
}

/// [`parse_params`] on text whose characters were already checked.
fn param_list(input: &str, utf8: bool) -> Result<Vec<Param>, AddressError> {
    let mut params: Vec<Param> = Vec::new();
    for word in input.split(' ').filter(|word| !word.is_empty()) {
        let param = parse_param(word, utf8)?;
        // Linear search: a command line holds a handful of parameters at most.
        if params.iter().any(|p| p.keyword == param.keyword) {
            return Err(AddressError::BadParameter("duplicate keyword"));
        }
        params.push(param);
    }
    Ok(params)
}

/// Parses one `esmtp-keyword ["=" esmtp-value]`.
fn parse_param(word: &str, utf8: bool) -> Result<Param, AddressError> {
    let (keyword, value) = match word.split_once('=') {
        Some((keyword, value)) => (keyword, Some(value)),
        None => (word, None),
    };
    if !is_esmtp_keyword(keyword) {
        return Err(AddressError::BadParameter("invalid keyword"));
    }
    if let Some(value) = value {
        if value.is_empty() {
            return Err(AddressError::BadParameter("'=' without a value"));
        }
        if !value.chars().all(|c| is_esmtp_value_char(c, utf8)) {
            return Err(AddressError::BadParameter("invalid character in value"));
        }
    }
    Ok(Param {
        keyword: keyword.to_ascii_uppercase(),
        value: value.map(str::to_owned),
    })
}

/// Checks the characters of the whole argument, skips the spaces allowed before the path
/// and consumes its `<`.
fn open_path(input: &str, utf8: bool) -> Result<Cursor<'_>, AddressError> {
    check_characters(input, utf8)?;
    let mut cur = Cursor::new(input, utf8);
    // The one liberty: `MAIL FROM: <a@b>` is common enough to accept.
    cur.skip_spaces();
    if cur.eat(b'<') {
        Ok(cur)
    } else {
        Err(AddressError::Syntax("path must be enclosed in '<' and '>'"))
    }
}

/// Checks the length of the path that began at `start`, consumes its `>` and parses what
/// follows: nothing, or at least one space and then parameters.
fn finish_path(mut cur: Cursor<'_>, start: usize) -> Result<Vec<Param>, AddressError> {
    check_path_length(cur.pos - start)?;
    cur.expect_close()?;
    let rest = cur.rest();
    if rest.is_empty() {
        Ok(Vec::new())
    } else if rest.starts_with(' ') {
        param_list(rest, cur.utf8)
    } else {
        Err(AddressError::Syntax("expected a space after '>'"))
    }
}

fn check_path_length(len: usize) -> Result<(), AddressError> {
    if len > MAX_PATH {
        Err(AddressError::PathTooLong)
    } else {
        Ok(())
    }
}

/// Rejects control characters and, without SMTPUTF8, any non-ASCII text up front, so the
/// grammar below never has to report them and the error is the same wherever they occur.
fn check_characters(input: &str, utf8: bool) -> Result<(), AddressError> {
    if input.chars().any(char::is_control) {
        Err(AddressError::Syntax("control character"))
    } else if !utf8 && !input.is_ascii() {
        Err(AddressError::Utf8NotPermitted)
    } else {
        Ok(())
    }
}

/// A byte cursor over the input. `pos` always sits on a char boundary: it only moves by a
/// whole char or past an ASCII byte.
struct Cursor<'a> {
    input: &'a str,
    pos: usize,
    /// Whether UTF8-non-ascii is allowed where RFC 6531 extends the grammar.
    utf8: bool,
}

impl<'a> Cursor<'a> {
    fn new(input: &'a str, utf8: bool) -> Self {
        Cursor {
            input,
            pos: 0,
            utf8,
        }
    }

    fn rest(&self) -> &'a str {
        self.input.get(self.pos..).unwrap_or_default()
    }

    /// The text consumed since `start`.
    fn since(&self, start: usize) -> &'a str {
        self.input.get(start..self.pos).unwrap_or_default()
    }

    fn peek(&self) -> Option<u8> {
        self.input.as_bytes().get(self.pos).copied()
    }

    fn peek_char(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump_char(&mut self) -> Option<char> {
        let c = self.peek_char()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    /// Consumes `byte`, which must be ASCII, if it is next.
    fn eat(&mut self, byte: u8) -> bool {
        debug_assert!(byte.is_ascii());
        let found = self.peek() == Some(byte);
        if found {
            self.pos += 1;
        }
        found
    }

    /// Consumes chars while `accept` holds; returns how many octets were consumed.
    fn eat_while(&mut self, accept: impl Fn(char) -> bool) -> usize {
        let start = self.pos;
        while let Some(c) = self.peek_char() {
            if !accept(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        self.pos - start
    }

    fn skip_spaces(&mut self) {
        while self.eat(b' ') {}
    }

    /// A syntax error at the current position; a space or the end of the input explain
    /// themselves better than `reason`.
    fn error(&self, reason: &'static str) -> AddressError {
        match self.peek() {
            Some(b' ') => AddressError::Syntax("unexpected space"),
            None => AddressError::Syntax("unexpected end of address"),
            Some(_) => AddressError::Syntax(reason),
        }
    }

    fn expect_end(&self, reason: &'static str) -> Result<(), AddressError> {
        if self.peek().is_none() {
            Ok(())
        } else {
            Err(self.error(reason))
        }
    }

    fn expect_close(&mut self) -> Result<(), AddressError> {
        if self.eat(b'>') {
            Ok(())
        } else if self.peek().is_none() {
            Err(AddressError::Syntax("missing '>'"))
        } else {
            Err(self.error("unexpected character in path"))
        }
    }

    /// Consumes `Postmaster` (any case) if it is the whole path, leaving the `>`.
    fn eat_postmaster(&mut self) -> bool {
        const POSTMASTER: &str = "postmaster>";
        let found = self
            .rest()
            .get(..POSTMASTER.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(POSTMASTER));
        if found {
            self.pos += POSTMASTER.len() - 1;
        }
        found
    }

    /// `[ A-d-l ":" ] Mailbox`: an optional source route, discarded, then the mailbox.
    fn path_body(&mut self) -> Result<Mailbox, AddressError> {
        if self.peek() == Some(b'@') {
            self.source_route()?;
        }
        self.mailbox()
    }

    /// `At-domain *( "," At-domain ) ":"`. RFC 5321 §4.1.2 says servers MUST accept and
    /// SHOULD ignore it; the domains are still checked so garbage is not waved through.
    fn source_route(&mut self) -> Result<(), AddressError> {
        loop {
            if !self.eat(b'@') {
                return Err(self.error("expected '@' in source route"));
            }
            self.domain_name()?;
            if self.eat(b':') {
                return Ok(());
            }
            if self.peek() == Some(b'>') {
                // `<@example.test>`: more likely a forgotten local part than a route.
                return Err(AddressError::Syntax("missing local part"));
            }
            if !self.eat(b',') {
                return Err(self.error("expected ',' or ':' in source route"));
            }
        }
    }

    /// `Local-part "@" ( Domain / address-literal )`.
    fn mailbox(&mut self) -> Result<Mailbox, AddressError> {
        let local_part = self.local_part()?;
        if !self.eat(b'@') {
            return Err(self.error("expected '@' after local part"));
        }
        let domain = self.domain()?;
        let mailbox = Mailbox { local_part, domain };
        // The limits are counted on the text as sent, but the canonical form is what goes
        // on to the next hop: a domain whose lowercase is longer (U+0130 'İ' becomes "i̇")
        // can push it past the path limit even though the domain itself still fits.
        check_path_length(mailbox.to_string().len())?;
        Ok(mailbox)
    }

    /// `Dot-string / Quoted-string`, returned unquoted and unescaped.
    fn local_part(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        let local_part = match self.peek() {
            Some(b'"') => self.quoted_string()?,
            Some(b'@') => return Err(AddressError::Syntax("missing local part")),
            _ => self.dot_string()?,
        };
        if self.pos - start > MAX_LOCAL_PART {
            return Err(AddressError::LocalPartTooLong);
        }
        Ok(local_part)
    }

    /// `Atom *("." Atom)`: no leading, trailing or doubled dot.
    fn dot_string(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        loop {
            let utf8 = self.utf8;
            if self.eat_while(|c| is_atext(c, utf8)) == 0 {
                return Err(match self.peek() {
                    Some(b'.') => AddressError::Syntax("empty atom in local part"),
                    Some(b'@') => AddressError::Syntax("local part ends with a dot"),
                    _ => self.error("invalid character in local part"),
                });
            }
            if !self.eat(b'.') {
                return Ok(self.since(start).to_owned());
            }
        }
    }

    /// `DQUOTE *QcontentSMTP DQUOTE`, returning the content with quoted pairs resolved.
    fn quoted_string(&mut self) -> Result<String, AddressError> {
        self.eat(b'"');
        let mut content = String::new();
        loop {
            match self.bump_char() {
                None => return Err(AddressError::Syntax("unterminated quoted string")),
                Some('"') => return Ok(content),
                Some('\\') => match self.bump_char() {
                    Some(c @ ' '..='~') => content.push(c),
                    _ => return Err(AddressError::Syntax("invalid quoted pair")),
                },
                Some(c) if is_qtext(c, self.utf8) => content.push(c),
                Some(_) => return Err(AddressError::Syntax("invalid character in quoted string")),
            }
        }
    }

    /// `Domain / address-literal`.
    fn domain(&mut self) -> Result<Domain, AddressError> {
        if self.peek() == Some(b'[') {
            self.address_literal().map(Domain::Literal)
        } else {
            self.domain_name().map(Domain::Name)
        }
    }

    /// `sub-domain *("." sub-domain)`, lowercased. A trailing dot is an error: accepting
    /// `example.test.` as `example.test` could let an address slip past relay control.
    fn domain_name(&mut self) -> Result<String, AddressError> {
        let start = self.pos;
        self.label(true)?;
        while self.eat(b'.') {
            self.label(false)?;
        }
        let name = self.since(start);
        if name.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        // ASCII stays ASCII under to_lowercase; U-labels get Unicode lowercasing, the
        // first step of the IDNA mapping that a resolver would apply.
        let name = name.to_lowercase();
        // A few capitals take more octets in lowercase (U+0130 'İ' becomes "i̇"): check
        // again so that the stored name is within the limits too.
        if name.len() > MAX_DOMAIN {
            return Err(AddressError::DomainTooLong);
        }
        if name.split('.').any(|label| label.len() > MAX_LABEL) {
            return Err(AddressError::Syntax("domain label longer than 63 octets"));
        }
        Ok(name)
    }

    /// `Let-dig [Ldh-str]`, or a U-label when SMTPUTF8 is in effect.
    fn label(&mut self, first: bool) -> Result<(), AddressError> {
        let start = self.pos;
        let utf8 = self.utf8;
        if self.eat_while(|c| is_ldh(c, utf8)) == 0 {
            return Err(match self.peek() {
                _ if first => self.error("missing domain"),
                Some(b'.') => AddressError::Syntax("empty label in domain"),
                Some(b'>' | b',' | b':') | None => AddressError::Syntax("domain ends with a dot"),
                _ => self.error("invalid character in domain"),
            });
        }
        let label = self.since(start);
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::Syntax(
                "domain label starts or ends with a hyphen",
            ));
        }
        if label.len() > MAX_LABEL {
            return Err(AddressError::Syntax("domain label longer than 63 octets"));
        }
        Ok(())
    }

    /// `"[" ( IPv4-address-literal / IPv6-address-literal / General-address-literal ) "]"`.
    fn address_literal(&mut self) -> Result<AddressLiteral, AddressError> {
        self.eat(b'[');
        let start = self.pos;
        // dcontent excludes '[', '\' and ']', and every literal form uses a subset of it,
        // so the first non-dcontent char must be the closing bracket.
        self.eat_while(|c| u8::try_from(c).is_ok_and(is_dcontent));
        let content = self.since(start);
        if !self.eat(b']') {
            return Err(self.error("invalid character in address literal"));
        }
        parse_literal(content)
    }
}

/// Classifies and checks the text between the brackets of an address literal.
fn parse_literal(content: &str) -> Result<AddressLiteral, AddressError> {
    let Some((tag, rest)) = content.split_once(':') else {
        return parse_ipv4(content)
            .map(AddressLiteral::V4)
            .ok_or(AddressError::Syntax("invalid IPv4 address literal"));
    };
    if tag.eq_ignore_ascii_case("IPv6") {
        // std's parser takes exactly RFC 4291 text form (full, compressed, embedded IPv4)
        // with no zone index, which is what RFC 5321's IPv6-addr describes.
        return rest
            .parse()
            .map(AddressLiteral::V6)
            .map_err(|_| AddressError::Syntax("invalid IPv6 address literal"));
    }
    if !is_ldh_str(tag) || rest.is_empty() {
        return Err(AddressError::Syntax("invalid general address literal"));
    }
    Ok(AddressLiteral::General {
        tag: tag.to_owned(),
        content: rest.to_owned(),
    })
}

/// `Snum 3("." Snum)`, Snum being 1 to 3 digits up to 255. Written out rather than using
/// std's parser because RFC 5321 allows leading zeros (`010`), which std rejects.
fn parse_ipv4(text: &str) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = text.split('.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *octet = part.parse().ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

/// Whether `local_part` can be written as a Dot-string (with UTF-8 atext, since a mailbox
/// holding non-ASCII was necessarily parsed with SMTPUTF8).
fn is_dot_string(local_part: &str) -> bool {
    local_part
        .split('.')
        .all(|atom| !atom.is_empty() && atom.chars().all(|c| is_atext(c, true)))
}

/// `UTF8-non-ascii` of RFC 6532, minus controls and whitespace: those would make an address
/// that looks like another one, or breaks logs, and no real mailbox needs them.
fn is_utf8_non_ascii(c: char) -> bool {
    !c.is_ascii() && !c.is_control() && !c.is_whitespace()
}

/// RFC 5322 `atext`, extended by RFC 6531.
fn is_atext(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '!' | '#'
                | '$'
                | '%'
                | '&'
                | '\''
                | '*'
                | '+'
                | '-'
                | '/'
                | '='
                | '?'
                | '^'
                | '_'
                | '`'
                | '{'
                | '|'
                | '}'
                | '~'
        )
        || (utf8 && is_utf8_non_ascii(c))
}

/// `qtextSMTP` (%d32-33 / %d35-91 / %d93-126), extended by RFC 6531.
fn is_qtext(c: char, utf8: bool) -> bool {
    matches!(c, ' ' | '!' | '#'..='[' | ']'..='~') || (utf8 && is_utf8_non_ascii(c))
}

/// A char of a domain label: `Let-dig` or `-`, plus U-label text under SMTPUTF8.
fn is_ldh(c: char, utf8: bool) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || (utf8 && is_utf8_non_ascii(c))
}

/// `dcontent` of a General-address-literal: %d33-90 / %d94-126.
fn is_dcontent(b: u8) -> bool {
    matches!(b, 33..=90 | 94..=126)
}

/// `Ldh-str`: letters, digits and hyphens, ending in a letter or digit.
fn is_ldh_str(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
}

/// `esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")`.
fn is_esmtp_keyword(s: &str) -> bool {
    s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A char of `esmtp-value` (%d33-60 / %d62-126), extended by RFC 6531.
fn is_esmtp_value_char(c: char, utf8: bool) -> bool {
    matches!(c, '!'..='<' | '>'..='~') || (utf8 && is_utf8_non_ascii(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(input: &str) -> Result<(ReversePath, Vec<Param>), AddressError> {
        parse_reverse_path(input, false)
    }

    fn fwd(input: &str) -> Result<(ForwardPath, Vec<Param>), AddressError> {
        parse_forward_path(input, false)
    }

    /// The mailbox of a forward path that must parse, with no parameters.
    fn mailbox(input: &str, utf8: bool) -> Mailbox {
        match parse_forward_path(input, utf8) {
            Ok((ForwardPath::Mailbox(mailbox), params)) if params.is_empty() => mailbox,
            other => panic!("{input:?} gave {other:?}"),
        }
    }

    fn fwd_err(input: &str) -> AddressError {
        match fwd(input) {
            Err(e) => e,
            Ok(ok) => panic!("{input:?} parsed as {ok:?}"),
        }
    }

    fn syntax(input: &str) {
        assert!(
            matches!(fwd(input), Err(AddressError::Syntax(_))),
            "{input:?} gave {:?}",
            fwd(input)
        );
    }

    fn name(s: &str) -> Domain {
        Domain::Name(s.to_owned())
    }

    fn param(keyword: &str, value: Option<&str>) -> Param {
        Param {
            keyword: keyword.to_owned(),
            value: value.map(str::to_owned),
        }
    }

    #[test]
    fn plain_mailbox() {
        let m = mailbox("<user@example.test>", false);
        assert_eq!(m.local_part(), "user");
        assert_eq!(m.domain(), &name("example.test"));
        assert!(!m.local_part_routes());
        assert!(!m.is_utf8());
        assert_eq!(m.to_string(), "user@example.test");
    }

    #[test]
    fn dot_string_with_all_atext() {
        let m = mailbox("<a.b+tag!#$&'*/=?^_`{|}~-x@example.test>", false);
        assert_eq!(m.local_part(), "a.b+tag!#$&'*/=?^_`{|}~-x");
    }

    #[test]
    fn reverse_and_forward_paths() {
        assert_eq!(rev("<>"), Ok((ReversePath::Null, vec![])));
        let (path, params) = rev("<a@b.test>").expect("valid");
        assert!(params.is_empty());
        assert_eq!(path.to_string(), "<a@b.test>");
        assert_eq!(fwd_err("<>"), AddressError::Syntax("empty forward-path"));
    }

    #[test]
    fn spaces_before_bracket_allowed() {
        assert_eq!(rev(" <>"), Ok((ReversePath::Null, vec![])));
        assert_eq!(mailbox("   <a@b.test>", false).to_string(), "a@b.test");
    }

    #[test]
    fn postmaster() {
        for input in [
            "<Postmaster>",
            "<postmaster>",
            "<POSTMASTER>",
            " <PostMaster>",
        ] {
            assert_eq!(fwd(input), Ok((ForwardPath::Postmaster, vec![])), "{input}");
        }
        assert_eq!(ForwardPath::Postmaster.to_string(), "<Postmaster>");
        let (path, params) = fwd("<postmaster> NOTIFY=NEVER").expect("valid");
        assert_eq!(path, ForwardPath::Postmaster);
        assert_eq!(params, vec![param("NOTIFY", Some("NEVER"))]);
        // With a domain it is an ordinary mailbox, case preserved.
        let m = mailbox("<Postmaster@Example.test>", false);
        assert_eq!(m.local_part(), "Postmaster");
        assert_eq!(m.domain(), &name("example.test"));
        // Not special in MAIL FROM, nor when quoted or followed by junk.
        assert!(matches!(rev("<Postmaster>"), Err(AddressError::Syntax(_))));
        syntax("<\"Postmaster\">");
        syntax("<Postmasterx>");
        syntax("<Postmaster >");
    }

    #[test]
    fn quoted_local_parts() {
        let m = mailbox(r#"<"john smith"@example.test>"#, false);
        assert_eq!(m.local_part(), "john smith");
        assert_eq!(m.to_string(), r#""john smith"@example.test"#);

        let m = mailbox(r#"<"a\"b\\c\ d"@example.test>"#, false);
        assert_eq!(m.local_part(), r#"a"b\c d"#);
        assert_eq!(m.to_string(), r#""a\"b\\c d"@example.test"#);

        // A quoted string that is a valid Dot-string is the same mailbox as the unquoted one.
        let m = mailbox(r#"<"abc.def"@example.test>"#, false);
        assert_eq!(m, mailbox("<abc.def@example.test>", false));
        assert_eq!(m.to_string(), "abc.def@example.test");

        // '>' inside quotes does not end the path.
        assert_eq!(
            mailbox(r#"<"a>b"@example.test>"#, false).local_part(),
            "a>b"
        );
        // The empty quoted string is allowed by the grammar.
        let m = mailbox(r#"<""@example.test>"#, false);
        assert_eq!(m.local_part(), "");
        assert_eq!(m.to_string(), r#"""@example.test"#);
    }

    #[test]
    fn quoted_local_part_errors() {
        syntax(r#"<"abc@example.test>"#);
        syntax(r#"<"a"b"@example.test>"#);
        syntax(r#"<a"b"@example.test>"#);
        assert_eq!(
            fwd_err("<\"a\\\u{7}\"@example.test>"),
            AddressError::Syntax("control character")
        );
        assert_eq!(
            fwd_err("<\"a\tb\"@example.test>"),
            AddressError::Syntax("control character")
        );
    }

    #[test]
    fn routing_characters_in_local_part() {
        let m = mailbox(r#"<"user@other.test"@example.test>"#, false);
        assert_eq!(m.local_part(), "user@other.test");
        assert_eq!(m.domain(), &name("example.test"));
        assert!(m.local_part_routes());

        let m = mailbox("<user%other.test@example.test>", false);
        assert_eq!(m.local_part(), "user%other.test");
        assert!(m.local_part_routes());

        let m = mailbox("<a!b@example.test>", false);
        assert!(m.local_part_routes());

        assert!(!mailbox("<a.b-c+d@example.test>", false).local_part_routes());
    }

    #[test]
    fn source_routes_are_discarded() {
        let m = mailbox("<@a.test,@b.test:user@c.test>", false);
        assert_eq!(m.local_part(), "user");
        assert_eq!(m.domain(), &name("c.test"));
        assert_eq!(m, mailbox("<@relay.example.test:user@c.test>", false));
        let (path, _) = rev("<@a.test:user@c.test>").expect("valid");
        assert_eq!(path.to_string(), "<user@c.test>");
    }

    #[test]
    fn bad_source_routes() {
        for input in [
            "<@a.test.:user@c.test>",
            "<@:user@c.test>",
            "<@a.test,:user@c.test>",
            "<@a.test,b.test:user@c.test>",
            "<@a.test;@b.test:user@c.test>",
            "<@a.test user@c.test>",
            "<@a.test:>",
            "<@a.test>",
            "<@[192.0.2.1]:user@c.test>",
            "<@-a.test:user@c.test>",
            "<:user@c.test>",
        ] {
            syntax(input);
        }
    }

    #[test]
    fn domains_are_lowercased() {
        let m = mailbox("<User@Mail.EXAMPLE.Test>", false);
        assert_eq!(m.local_part(), "User");
        assert_eq!(m.domain(), &name("mail.example.test"));
        assert_eq!(m.to_string(), "User@mail.example.test");
    }

    #[test]
    fn domain_syntax() {
        assert_eq!(mailbox("<a@localhost>", false).domain(), &name("localhost"));
        assert_eq!(
            mailbox("<a@x-1.b2.test>", false).domain(),
            &name("x-1.b2.test")
        );
        assert_eq!(mailbox("<a@1.2.3.4>", false).domain(), &name("1.2.3.4"));
        assert_eq!(
            fwd_err("<user@example.test.>"),
            AddressError::Syntax("domain ends with a dot")
        );
        assert_eq!(
            fwd_err("<user@example..test>"),
            AddressError::Syntax("empty label in domain")
        );
        for input in [
            "<user@.example.test>",
            "<user@-example.test>",
            "<user@example-.test>",
            "<user@ex_ample.test>",
            "<user@exa mple.test>",
            "<user@example.test.:>",
            "<user@>",
            "<user@[]>",
        ] {
            syntax(input);
        }
        assert_eq!(
            Domain::parse("example.test.", false),
            Err(AddressError::Syntax("domain ends with a dot"))
        );
    }

    #[test]
    fn missing_parts() {
        assert_eq!(
            fwd_err("<@example.test>"),
            AddressError::Syntax("missing local part")
        );
        assert_eq!(fwd_err("<\"\"@>"), AddressError::Syntax("missing domain"));
        assert_eq!(fwd_err("<user@>"), AddressError::Syntax("missing domain"));
        assert_eq!(
            fwd_err("<user>"),
            AddressError::Syntax("expected '@' after local part")
        );
        syntax("<@>");
        syntax("<user@@example.test>");
        assert_eq!(
            Mailbox::parse("@example.test", false),
            Err(AddressError::Syntax("missing local part"))
        );
    }

    #[test]
    fn local_part_dots() {
        assert_eq!(
            fwd_err("<.a@example.test>"),
            AddressError::Syntax("empty atom in local part")
        );
        assert_eq!(
            fwd_err("<a..b@example.test>"),
            AddressError::Syntax("empty atom in local part")
        );
        assert_eq!(
            fwd_err("<a.@example.test>"),
            AddressError::Syntax("local part ends with a dot")
        );
    }

    #[test]
    fn brackets_and_junk() {
        assert_eq!(
            fwd_err("user@example.test"),
            AddressError::Syntax("path must be enclosed in '<' and '>'")
        );
        assert_eq!(fwd_err(""), fwd_err("user@example.test"));
        assert_eq!(
            fwd_err("<user@example.test"),
            AddressError::Syntax("missing '>'")
        );
        assert_eq!(
            fwd_err("<user@example.test>X"),
            AddressError::Syntax("expected a space after '>'")
        );
        assert_eq!(
            fwd_err("<user@example.test>>"),
            AddressError::Syntax("expected a space after '>'")
        );
        assert_eq!(
            fwd_err("< user@example.test>"),
            AddressError::Syntax("unexpected space")
        );
        assert_eq!(
            fwd_err("<user @example.test>"),
            AddressError::Syntax("unexpected space")
        );
        assert_eq!(
            fwd_err("<user@example.test >"),
            AddressError::Syntax("unexpected space")
        );
        syntax("<<user@example.test>>");
        syntax("\t<user@example.test>");
        syntax("<user@example.test>\r\n");
        syntax("<us\0er@example.test>");
        syntax("<user@exa\u{7f}mple.test>");
    }

    #[test]
    fn address_literals() {
        let m = mailbox("<a@[192.0.2.1]>", false);
        assert_eq!(
            m.domain(),
            &Domain::Literal(AddressLiteral::V4(Ipv4Addr::new(192, 0, 2, 1)))
        );
        assert_eq!(m.to_string(), "a@[192.0.2.1]");
        // RFC 5321's Snum allows leading zeros.
        assert_eq!(
            mailbox("<a@[010.000.002.001]>", false).domain(),
            &Domain::Literal(AddressLiteral::V4(Ipv4Addr::new(10, 0, 2, 1)))
        );

        let m = mailbox("<a@[IPv6:2001:DB8::1]>", false);
        let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
        assert_eq!(m.domain(), &Domain::Literal(AddressLiteral::V6(v6)));
        assert_eq!(m.to_string(), "a@[IPv6:2001:db8::1]");
        assert_eq!(mailbox("<a@[ipv6:2001:db8::1]>", false), m);
        assert_eq!(
            mailbox("<a@[IPv6:::1]>", false).domain(),
            &Domain::Literal(AddressLiteral::V6(Ipv6Addr::LOCALHOST))
        );
        assert_eq!(
            mailbox("<a@[IPv6:::ffff:192.0.2.1]>", false).to_string(),
            "a@[IPv6:::ffff:192.0.2.1]"
        );

        let m = mailbox("<a@[x-tag:some:Content!]>", false);
        assert_eq!(
            m.domain(),
            &Domain::Literal(AddressLiteral::General {
                tag: "x-tag".to_owned(),
                content: "some:Content!".to_owned(),
            })
        );
        assert_eq!(m.to_string(), "a@[x-tag:some:Content!]");
    }

    #[test]
    fn bad_address_literals() {
        for input in [
            "<a@[192.0.2.256]>",
            "<a@[192.0.2]>",
            "<a@[192.0.2.1.5]>",
            "<a@[192.0.2.0001]>",
            "<a@[192.0..1]>",
            "<a@[+1.2.3.4]>",
            "<a@[IPv6:2001:db8::g]>",
            "<a@[IPv6:1.2.3.4]>",
            "<a@[IPv6:fe80::1%eth0]>",
            "<a@[IPv6:]>",
            "<a@[-tag-:x]>",
            "<a@[tag:]>",
            "<a@[:x]>",
            "<a@[192.0.2.1>",
            "<a@[192.0.2.1]x>",
            "<a@[192.0.2.1] >",
            "<a@[a[b:c]>",
            "<a@[a\\b:c]>",
            "<a@[1.2.3.4].test>",
        ] {
            syntax(input);
        }
    }

    #[test]
    fn utf8_needs_permission() {
        for input in [
            "<jøran@example.test>",
            "<user@bücher.test>",
            "<\"jø ran\"@example.test>",
            "<user@example.test> X=ü",
        ] {
            assert_eq!(fwd(input), Err(AddressError::Utf8NotPermitted), "{input}");
        }
        assert_eq!(rev(" <>\u{a0}"), Err(AddressError::Utf8NotPermitted));
    }

    #[test]
    fn utf8_with_permission() {
        let m = mailbox("<jøran@Bücher.Test>", true);
        assert_eq!(m.local_part(), "jøran");
        assert_eq!(m.domain(), &name("bücher.test"));
        assert!(m.is_utf8());
        assert_eq!(m.to_string(), "jøran@bücher.test");

        let m = mailbox("<用户@例子.测试>", true);
        assert!(m.is_utf8());
        assert!(!m.local_part_routes());

        let m = mailbox("<\"jø ran\"@example.test>", true);
        assert_eq!(m.local_part(), "jø ran");
        assert!(m.is_utf8());

        // Domain alone non-ASCII still needs SMTPUTF8.
        let m = mailbox("<user@ÜBER.test>", true);
        assert!(m.is_utf8());
        assert_eq!(m.domain(), &name("über.test"));
        // Lowercasing may lengthen a label past 63 octets: checked after lowercasing too.
        let label = format!("{}a", "İ".repeat(31));
        assert_eq!(label.len(), 63);
        assert_eq!(
            parse_forward_path(&format!("<u@{label}.test>"), true),
            Err(AddressError::Syntax("domain label longer than 63 octets"))
        );
        // Plain ASCII parsed in UTF-8 mode is not flagged.
        assert!(!mailbox("<user@example.test>", true).is_utf8());

        let (_, params) = parse_forward_path("<u@example.test> ORCPT=rfc822;ü", true)
            .expect("utf8 values allowed");
        assert_eq!(params, vec![param("ORCPT", Some("rfc822;ü"))]);
    }

    #[test]
    fn utf8_oddities_rejected() {
        for input in [
            "<a\u{a0}b@example.test>",   // no-break space
            "<ab@exa\u{2028}mple.test>", // line separator
            "<a\u{85}b@example.test>",   // C1 control
            "<\"a\\ü\"@example.test>",   // quoted pair is ASCII only
            "<a@[IPv6:ü]>",
            "<a@-ü.test>",
        ] {
            assert!(
                matches!(
                    parse_forward_path(input, true),
                    Err(AddressError::Syntax(_))
                ),
                "{input}"
            );
        }
    }

    #[test]
    fn local_part_length() {
        let at_limit = "a".repeat(64);
        assert_eq!(
            mailbox(&format!("<{at_limit}@example.test>"), false).local_part(),
            at_limit
        );
        assert_eq!(
            fwd_err(&format!("<{at_limit}a@example.test>")),
            AddressError::LocalPartTooLong
        );
        // Counted on the wire: quotes and backslashes included.
        let quoted = format!("\"{}\"", "b".repeat(62));
        mailbox(&format!("<{quoted}@example.test>"), false);
        let quoted = format!("\"\\{}\"", "b".repeat(62));
        assert_eq!(
            fwd_err(&format!("<{quoted}@example.test>")),
            AddressError::LocalPartTooLong
        );
        // UTF-8 counts octets: 32 two-octet chars fit, 33 do not.
        mailbox(&format!("<{}@example.test>", "ø".repeat(32)), true);
        assert_eq!(
            parse_forward_path(&format!("<{}@example.test>", "ø".repeat(33)), true),
            Err(AddressError::LocalPartTooLong)
        );
    }

    /// A domain of exactly `len` octets made of labels of at most 63.
    fn long_domain(len: usize) -> String {
        let mut domain = String::new();
        while domain.len() < len {
            if !domain.is_empty() {
                domain.push('.');
            }
            let remaining = len - domain.len();
            let mut label_len = remaining.min(63);
            // Never leave exactly one octet: ".x" needs two.
            if remaining - label_len == 1 {
                label_len -= 1;
            }
            domain.push_str(&"d".repeat(label_len));
        }
        assert_eq!(domain.len(), len);
        domain
    }

    #[test]
    fn domain_length() {
        let at_limit = long_domain(255);
        assert_eq!(Domain::parse(&at_limit, false), Ok(name(&at_limit)));
        assert_eq!(
            Domain::parse(&long_domain(256), false),
            Err(AddressError::DomainTooLong)
        );
        // In a path the domain limit is reported before the path limit.
        assert_eq!(
            fwd_err(&format!("<a@{}>", long_domain(256))),
            AddressError::DomainTooLong
        );
    }

    #[test]
    fn label_length() {
        let label = "l".repeat(63);
        mailbox(&format!("<a@{label}.test>"), false);
        assert_eq!(
            fwd_err(&format!("<a@{label}l.test>")),
            AddressError::Syntax("domain label longer than 63 octets")
        );
    }

    #[test]
    fn path_length() {
        let local = "a".repeat(64);
        // 64 + 1 + 191 = 256 octets between the brackets.
        let at_limit = format!("<{local}@{}>", long_domain(191));
        mailbox(&at_limit, false);
        let over = format!("<{local}@{}>", long_domain(192));
        assert_eq!(fwd_err(&over), AddressError::PathTooLong);
        assert_eq!(
            rev(&format!("{over} SIZE=1")),
            Err(AddressError::PathTooLong)
        );
        // A source route counts towards the path as sent.
        let route = format!("@{}:", long_domain(100));
        let domain = long_domain(256 - route.len() - 2);
        mailbox(&format!("<{route}a@{domain}>"), false);
        assert_eq!(
            fwd_err(&format!("<{route}a@{domain}d>")),
            AddressError::PathTooLong
        );
        // Mailbox::parse keeps mailboxes usable in a path.
        assert!(Mailbox::parse(&format!("{local}@{}", long_domain(191)), false).is_ok());
        assert_eq!(
            Mailbox::parse(&format!("{local}@{}", long_domain(192)), false),
            Err(AddressError::PathTooLong)
        );
    }

    /// Found by the `address` fuzz target: `İ` lowercases to two code points (three octets
    /// for two), so a 256-octet mailbox came out 257 octets in canonical form, a path the
    /// next hop may refuse and that did not parse again.
    #[test]
    fn a_capital_that_grows_in_lowercase_cannot_push_a_mailbox_past_the_path_limit() {
        let domain = format!(
            "\u{130}{}.{}.{}.{}",
            "a".repeat(60),
            "a".repeat(63),
            "a".repeat(63),
            "a".repeat(62)
        );
        let input = format!("ab@{domain}");
        assert_eq!(input.len(), 256);
        assert_eq!(Mailbox::parse(&input, true), Err(AddressError::PathTooLong));
        assert_eq!(
            parse_forward_path(&format!("<{input}>"), true),
            Err(AddressError::PathTooLong)
        );
        assert_eq!(
            parse_reverse_path(&format!("<{input}>"), true),
            Err(AddressError::PathTooLong)
        );
        // One octet shorter as sent is 256 in canonical form, and round-trips.
        let fits = format!("a@{domain}");
        let mailbox = Mailbox::parse(&fits, true).unwrap();
        assert_eq!(mailbox.to_string().len(), 256);
        assert_eq!(Mailbox::parse(&mailbox.to_string(), true), Ok(mailbox));
    }

    #[test]
    fn params() {
        let (path, params) = rev("<a@b.test> SIZE=123 BODY=8BITMIME").expect("valid");
        assert_eq!(path.to_string(), "<a@b.test>");
        assert_eq!(
            params,
            vec![param("SIZE", Some("123")), param("BODY", Some("8BITMIME"))]
        );

        let (_, params) = parse_reverse_path("<> smtputf8 body=8bitmime", true).expect("valid");
        assert_eq!(
            params,
            vec![param("SMTPUTF8", None), param("BODY", Some("8bitmime"))]
        );
        assert_eq!(params[0].to_string(), "SMTPUTF8");
        assert_eq!(params[1].to_string(), "BODY=8bitmime");

        // Extra spaces between and after parameters are tolerated.
        let (_, params) = rev("<a@b.test>   SIZE=1    X-Y-2   ").expect("valid");
        assert_eq!(params, vec![param("SIZE", Some("1")), param("X-Y-2", None)]);
        assert_eq!(
            rev("<a@b.test>   "),
            Ok((rev("<a@b.test>").expect("valid").0, vec![]))
        );

        // Values may contain anything printable but '=' and space.
        let (_, params) =
            fwd("<a@b.test> ORCPT=rfc822;a+2Bb@c.test NOTIFY=SUCCESS,FAILURE").expect("valid");
        assert_eq!(params[0].value.as_deref(), Some("rfc822;a+2Bb@c.test"));
    }

    #[test]
    fn bad_params() {
        let cases = [
            ("<a@b.test> SIZE=1 size=2", "duplicate keyword"),
            ("<a@b.test> SMTPUTF8 SMTPUTF8", "duplicate keyword"),
            ("<a@b.test> SIZE=", "'=' without a value"),
            ("<a@b.test> =1", "invalid keyword"),
            ("<a@b.test> -SIZE=1", "invalid keyword"),
            ("<a@b.test> SI_ZE=1", "invalid keyword"),
            ("<a@b.test> SIZE=1=2", "invalid character in value"),
        ];
        for (input, reason) in cases {
            assert_eq!(
                rev(input),
                Err(AddressError::BadParameter(reason)),
                "{input}"
            );
        }
        assert_eq!(
            rev("<a@b.test> SIZE=1\t"),
            Err(AddressError::Syntax("control character"))
        );
        assert_eq!(
            parse_reverse_path("<a@b.test> Ü=1", true),
            Err(AddressError::BadParameter("invalid keyword"))
        );
    }

    #[test]
    fn parse_params_directly() {
        assert_eq!(parse_params("", false), Ok(vec![]));
        assert_eq!(parse_params("  ", false), Ok(vec![]));
        assert_eq!(
            parse_params("8bit=x A", false),
            Ok(vec![param("8BIT", Some("x")), param("A", None)])
        );
        assert_eq!(
            parse_params("A=ü", false),
            Err(AddressError::Utf8NotPermitted)
        );
    }

    #[test]
    fn display_round_trip() {
        let tricky = [
            "<user@example.test>",
            "<First.Last@Example.TEST>",
            r#"<"john smith"@example.test>"#,
            r#"<"a\"b\\c"@example.test>"#,
            r#"<"user@other.test"@example.test>"#,
            r#"<".leading"@example.test>"#,
            r#"<"trailing."@example.test>"#,
            r#"<"dou..ble"@example.test>"#,
            r#"<"a,b"@example.test>"#,
            r#"<"a>b<c"@example.test>"#,
            r#"<""@example.test>"#,
            r#"<" "@example.test>"#,
            r#"<"\ \!"@example.test>"#,
            "<user%other.test@example.test>",
            "<a!b@example.test>",
            "<a@[192.0.2.1]>",
            "<a@[IPv6:2001:db8:0:0:0:0:0:1]>",
            "<a@[IPv6:::ffff:1.2.3.4]>",
            "<a@[X-Tag:a:b]>",
            "<@a.test,@b.test:user@c.test>",
            "<jøran@bücher.test>",
            r#"<"jø ran"@ÜBER.test>"#,
            "<用户@例子.测试>",
        ];
        for input in tricky {
            let original = mailbox(input, true);
            let text = original.to_string();
            let reparsed = Mailbox::parse(&text, original.is_utf8())
                .unwrap_or_else(|e| panic!("{input:?} displayed as {text:?}: {e}"));
            assert_eq!(reparsed, original, "{input:?} displayed as {text:?}");
            let path = ForwardPath::Mailbox(original);
            assert_eq!(
                parse_forward_path(&path.to_string(), true),
                Ok((path, vec![]))
            );
        }
    }

    #[test]
    fn mailbox_parse_rejects_extras() {
        assert!(matches!(
            Mailbox::parse("<a@b.test>", false),
            Err(AddressError::Syntax(_))
        ));
        assert!(matches!(
            Mailbox::parse("@r.test:a@b.test", false),
            Err(AddressError::Syntax(_))
        ));
        assert!(matches!(
            Mailbox::parse("a@b.test ", false),
            Err(AddressError::Syntax(_))
        ));
    }

    #[test]
    fn domain_parse_literals() {
        assert_eq!(
            Domain::parse("[IPv6:::1]", false),
            Ok(Domain::Literal(AddressLiteral::V6(Ipv6Addr::LOCALHOST)))
        );
        assert!(!Domain::parse("[IPv6:::1]", false).is_ok_and(|d| d.is_utf8()));
        assert_eq!(
            Domain::parse("", false),
            Err(AddressError::Syntax("unexpected end of address"))
        );
    }

    #[test]
    fn error_display() {
        assert_eq!(
            AddressError::Syntax("missing '>'").to_string(),
            "syntax error in address: missing '>'"
        );
        assert_eq!(
            AddressError::BadParameter("duplicate keyword").to_string(),
            "invalid ESMTP parameter: duplicate keyword"
        );
        assert_eq!(
            AddressError::PathTooLong.to_string(),
            "path longer than 256 octets"
        );
    }
}
