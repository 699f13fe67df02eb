//! `content-filter`: scoring rules on headers, body text and attachment names, and
//! attachment types that are refused outright.
//!
//! ```toml
//! [[plugin]]
//! name = "content"
//! path = "plugins/dist/content_filter.wasm"
//! [plugin.config]
//! reject_threshold = 10.0            # score at or above: 550 5.7.1
//! quarantine_threshold = 5.0         # score at or above (and below reject): quarantine
//! score_header = "X-Tidegate-Score"  # added to every accepted or quarantined message
//! blocked_extensions = ["exe", "scr", "js", "vbs", "bat", "cmd", "com", "pif", "jar"]
//! blocked_content_types = ["application/x-msdownload"]
//! body_scan_bytes = 262144           # how much of each text part body rules look at
//!
//! [[plugin.config.rules]]
//! name = "viagra"
//! header = "subject"                 # or `body = true`, or `attachment = true`
//! contains = "viagra"                # or `pattern = "*cheap*meds*"`
//! score = 6.0
//! ```
//!
//! A message is checked in two steps:
//!
//! 1. **Blocked attachments.** An attachment whose file name ends in a blocked extension
//!    (`invoice.pdf.exe`, `RUN.EXE`, `setup.exe.` all end in `.exe`), or whose content type
//!    is blocked, refuses the message at once with `550 5.7.1` naming the attachment.
//! 2. **Scoring.** Every rule that matches adds its score once (negative scores are allowed,
//!    to let known-good mail through). The total, rounded to two decimals, decides:
//!    at or above `reject_threshold` the message is refused with `550 5.7.1`; at or above
//!    `quarantine_threshold` it is accepted into quarantine; below, it goes on to the next
//!    plugin. Accepted and quarantined messages get `score_header` (`X-Tidegate-Score: 6.0
//!    rules=viagra`, or `0.0` when nothing matched); any field of that name the message
//!    arrived with is removed first, so a sender cannot forge it. The transaction tag
//!    `content_score` carries the score too.
//!
//! Each rule has a `name` (letters, digits, `.`, `_`, `-`), a `score`, one target and one
//! test. Targets: `header = "name"` (every field of that name, decoded), `body = true` (each
//! text part, plain and HTML, up to `body_scan_bytes`), `attachment = true` (each
//! attachment's file name, empty when it has none). Tests, both case-insensitive:
//! `contains = "text"` (a substring) or `pattern = "glob"` (the whole value, `*` matching any
//! run of characters; `pattern = "*"` on a header scores its mere presence).
//!
//! Attachments are those of the message itself: an attached message (`message/rfc822`) is
//! one attachment, and the files inside it are not looked into.
//!
//! Defaults: thresholds 10 and 5, header `X-Tidegate-Score`, the blocked extensions and
//! content types in [`DEFAULT_BLOCKED_EXTENSIONS`] and [`DEFAULT_BLOCKED_CONTENT_TYPES`]
//! (set a list to `[]` to block nothing), 256 KiB of body text, no rules. Counters:
//! `content_filter_rejected` (with `content_filter_blocked_attachments` for the attachment
//! refusals among them) and `content_filter_quarantined`.

use std::collections::HashMap;

use serde::Deserialize;
use tidegate_plugin_sdk::prelude::*;

/// Extensions refused when `blocked_extensions` is not given: programs and scripts that
/// Windows runs on a double click.
pub const DEFAULT_BLOCKED_EXTENSIONS: &[&str] = &[
    "exe", "scr", "js", "jse", "vbs", "vbe", "wsf", "hta", "bat", "cmd", "com", "pif", "cpl",
    "msi", "ps1", "lnk", "jar",
];

/// Content types refused when `blocked_content_types` is not given: Windows executables.
pub const DEFAULT_BLOCKED_CONTENT_TYPES: &[&str] = &[
    "application/x-msdownload",
    "application/x-msdos-program",
    "application/x-dosexec",
];

/// How much of each text part body rules look at unless configured.
pub const DEFAULT_BODY_SCAN_BYTES: u32 = 256 * 1024;

/// The most `body_scan_bytes` may be (each text part is copied into the plugin's memory).
pub const MAX_BODY_SCAN_BYTES: u32 = 4 * 1024 * 1024;

/// The score header's value stays under this many octets (rule names beyond it are cut).
const MAX_HEADER_VALUE: usize = 900;

/// The plugin's configuration, as written in `[plugin.config]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Score at or above which the message is refused with 550 5.7.1.
    #[serde(default = "default_reject_threshold")]
    pub reject_threshold: f64,
    /// Score at or above which (and below `reject_threshold`) the message is quarantined.
    #[serde(default = "default_quarantine_threshold")]
    pub quarantine_threshold: f64,
    /// The header field added with the score and the matched rules.
    #[serde(default = "default_score_header")]
    pub score_header: String,
    /// File name extensions refused at once (case-insensitive, with or without the dot).
    #[serde(default = "default_blocked_extensions")]
    pub blocked_extensions: Vec<String>,
    /// Attachment content types refused at once (case-insensitive, `*` globs allowed).
    #[serde(default = "default_blocked_content_types")]
    pub blocked_content_types: Vec<String>,
    /// How many octets of each text part body rules look at.
    #[serde(default = "default_body_scan_bytes")]
    pub body_scan_bytes: u32,
    /// The scoring rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One `[[plugin.config.rules]]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Shown in the score header and the logs.
    pub name: String,
    /// Target: every field with this name.
    #[serde(default)]
    pub header: Option<String>,
    /// Target: each text part of the body.
    #[serde(default)]
    pub body: bool,
    /// Target: each attachment's file name.
    #[serde(default)]
    pub attachment: bool,
    /// Test: a case-insensitive substring.
    #[serde(default)]
    pub contains: Option<String>,
    /// Test: a case-insensitive glob over the whole value (`*` is any run of characters).
    #[serde(default)]
    pub pattern: Option<String>,
    /// Added to the message's score when the rule matches (once per message).
    pub score: f64,
}

fn default_reject_threshold() -> f64 {
    10.0
}

fn default_quarantine_threshold() -> f64 {
    5.0
}

fn default_score_header() -> String {
    "X-Tidegate-Score".to_owned()
}

fn default_blocked_extensions() -> Vec<String> {
    DEFAULT_BLOCKED_EXTENSIONS
        .iter()
        .map(|e| (*e).to_owned())
        .collect()
}

fn default_blocked_content_types() -> Vec<String> {
    DEFAULT_BLOCKED_CONTENT_TYPES
        .iter()
        .map(|t| (*t).to_owned())
        .collect()
}

fn default_body_scan_bytes() -> u32 {
    DEFAULT_BODY_SCAN_BYTES
}

/// What a rule looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// Every field with this (lowercased) name.
    Header(String),
    /// Each text part.
    Body,
    /// Each attachment's file name.
    Attachment,
}

/// How a rule tests a value; the needle is lowercased, values are lowercased before.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Test {
    Contains(String),
    Pattern(String),
}

impl Test {
    fn matches(&self, lowered: &str) -> bool {
        match self {
            Test::Contains(needle) => lowered.contains(needle.as_str()),
            Test::Pattern(pattern) => glob(pattern, lowered),
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone)]
struct Rule {
    name: String,
    target: Target,
    test: Test,
    score: f64,
}

/// The plugin: the checked configuration.
#[derive(Debug)]
pub struct ContentFilter {
    reject_threshold: f64,
    quarantine_threshold: f64,
    score_header: String,
    /// Lowercased, each with its leading dot: `.exe`.
    blocked_extensions: Vec<String>,
    /// Lowercased globs.
    blocked_content_types: Vec<String>,
    body_scan_bytes: u32,
    rules: Vec<Rule>,
}

impl ContentFilter {
    /// Checks a configuration; the error names the offending key.
    pub fn new(config: Config) -> Result<ContentFilter, String> {
        let threshold = |key: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(value)
            } else {
                Err(format!("{key} must be a number above 0, not {value}"))
            }
        };
        let reject_threshold = threshold("reject_threshold", config.reject_threshold)?;
        let quarantine_threshold = threshold("quarantine_threshold", config.quarantine_threshold)?;
        if quarantine_threshold > reject_threshold {
            return Err(format!(
                "quarantine_threshold ({quarantine_threshold}) is above reject_threshold ({reject_threshold})"
            ));
        }
        if !is_field_name(&config.score_header) {
            return Err(format!(
                "score_header `{}` is not a header field name",
                config.score_header
            ));
        }
        let mut blocked_extensions = Vec::new();
        for ext in &config.blocked_extensions {
            let ext = ext.trim_start_matches('.').to_ascii_lowercase();
            let ok = !ext.is_empty()
                && !ext.ends_with('.')
                && ext
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !ok {
                return Err(format!(
                    "blocked_extensions: `{ext}` is not a file name extension"
                ));
            }
            blocked_extensions.push(format!(".{ext}"));
        }
        let mut blocked_content_types = Vec::new();
        for ctype in &config.blocked_content_types {
            let ok = ctype.contains('/') && ctype.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                return Err(format!(
                    "blocked_content_types: `{ctype}` is not a content type such as application/x-msdownload"
                ));
            }
            blocked_content_types.push(ctype.to_ascii_lowercase());
        }
        if config.body_scan_bytes == 0 || config.body_scan_bytes > MAX_BODY_SCAN_BYTES {
            return Err(format!(
                "body_scan_bytes must be between 1 and {MAX_BODY_SCAN_BYTES}, not {}",
                config.body_scan_bytes
            ));
        }
        let mut rules: Vec<Rule> = Vec::new();
        for (i, rule) in config.rules.into_iter().enumerate() {
            let rule = check_rule(rule).map_err(|e| format!("rules[{i}]: {e}"))?;
            if rules.iter().any(|r| r.name == rule.name) {
                return Err(format!(
                    "rules[{i}]: the name `{}` is used twice",
                    rule.name
                ));
            }
            rules.push(rule);
        }
        Ok(ContentFilter {
            reject_threshold,
            quarantine_threshold,
            score_header: config.score_header,
            blocked_extensions,
            blocked_content_types,
            body_scan_bytes: config.body_scan_bytes,
            rules,
        })
    }

    fn needs_attachments(&self) -> bool {
        !self.blocked_extensions.is_empty()
            || !self.blocked_content_types.is_empty()
            || self.rules.iter().any(|r| r.target == Target::Attachment)
    }

    /// The refusal text for the first blocked attachment, if there is one.
    fn blocked(&self, attachments: &[Attachment]) -> Option<String> {
        for attachment in attachments {
            let shown = attachment.name.as_deref().map(|n| printable(n, 80));
            if let Some(name) = &attachment.name {
                let name = normalise_name(name);
                if let Some(ext) = self
                    .blocked_extensions
                    .iter()
                    .find(|ext| name.ends_with(ext.as_str()))
                {
                    let shown = shown.unwrap_or_default();
                    return Some(format!(
                        "Attachment \"{shown}\" is not allowed: {ext} files are blocked"
                    ));
                }
            }
            let ctype = attachment.content_type.to_ascii_lowercase();
            if self.blocked_content_types.iter().any(|p| glob(p, &ctype)) {
                let ctype = printable(&ctype, 80);
                return Some(match shown {
                    Some(shown) => {
                        format!("Attachment \"{shown}\" is not allowed: {ctype} content is blocked")
                    }
                    None => format!("An attachment of type {ctype} is not allowed"),
                });
            }
        }
        None
    }

    /// The message's score (rounded to two decimals) and the names of the rules that
    /// matched, in configuration order.
    fn score(&self, message: &dyn Message, attachments: &[Attachment]) -> (f64, Vec<&str>) {
        let mut headers: HashMap<&str, Vec<String>> = HashMap::new();
        let mut bodies: Option<Vec<String>> = None;
        let mut total = 0.0;
        let mut matched = Vec::new();
        for rule in &self.rules {
            let hit = match &rule.target {
                Target::Header(name) => headers
                    .entry(name.as_str())
                    .or_insert_with(|| lowered(message.headers(name)))
                    .iter()
                    .any(|value| rule.test.matches(value)),
                Target::Body => bodies
                    .get_or_insert_with(|| lowered(message.text_parts(self.body_scan_bytes)))
                    .iter()
                    .any(|text| rule.test.matches(text)),
                Target::Attachment => attachments.iter().any(|a| {
                    rule.test
                        .matches(&normalise_name(a.name.as_deref().unwrap_or_default()))
                }),
            };
            if hit {
                total += rule.score;
                matched.push(rule.name.as_str());
            }
        }
        (round2(total), matched)
    }

    /// The score header's value: `6.5 rules=a,b`, or just `0.0`.
    fn header_value(score: f64, matched: &[&str]) -> String {
        let mut value = format_score(score);
        for (i, name) in matched.iter().enumerate() {
            if value.len() + name.len() + 1 > MAX_HEADER_VALUE {
                value.push_str(",...");
                break;
            }
            value.push_str(if i == 0 { " rules=" } else { "," });
            value.push_str(name);
        }
        value
    }
}

impl Plugin for ContentFilter {
    fn init(host: &dyn Host) -> Result<Self, String> {
        ContentFilter::new(host.config()?)
    }

    /// Nothing here is per session: the checked configuration serves every session.
    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            data: true,
            ..Hooks::default()
        }
    }

    fn on_data(
        &mut self,
        host: &dyn Host,
        _envelope: &Envelope,
        message: &dyn Message,
    ) -> Response {
        let attachments = if self.needs_attachments() {
            message.attachments()
        } else {
            Vec::new()
        };
        if let Some(why) = self.blocked(&attachments) {
            host.log(
                Level::Info,
                "message refused: blocked attachment",
                &[("reason", &why)],
            );
            host.counter_add("content_filter_rejected", 1);
            host.counter_add("content_filter_blocked_attachments", 1);
            return Verdict::reject(550, "5.7.1", &why).into();
        }
        let (score, matched) = self.score(message, &attachments);
        let shown = format_score(score);
        let rules = matched.join(",");
        let fields = [("score", shown.as_str()), ("rules", rules.as_str())];
        if score >= self.reject_threshold {
            host.log(Level::Info, "message refused: content score", &fields);
            host.counter_add("content_filter_rejected", 1);
            let text = format!("Message refused by content policy (score {shown})");
            return Response::from(Verdict::reject(550, "5.7.1", &text))
                .tag("content_score", &shown);
        }
        let verdict = if score >= self.quarantine_threshold {
            host.log(Level::Info, "message quarantined: content score", &fields);
            host.counter_add("content_filter_quarantined", 1);
            Verdict::Quarantine(format!(
                "content score {shown} >= {}: {rules}",
                format_score(self.quarantine_threshold)
            ))
        } else {
            host.log(Level::Debug, "message scored", &fields);
            Verdict::Continue
        };
        Response::from(verdict)
            .with(Edit::RemoveHeader(self.score_header.clone()))
            .add_header(
                &self.score_header,
                &ContentFilter::header_value(score, &matched),
            )
            .tag("content_score", &shown)
    }
}

tidegate_plugin_sdk::export!(ContentFilter);

fn check_rule(rule: RuleConfig) -> Result<Rule, String> {
    let name_ok = !rule.name.is_empty()
        && rule.name.len() <= 64
        && rule
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !name_ok {
        return Err(format!(
            "name `{}` must be 1 to 64 letters, digits, `.`, `_` or `-`",
            rule.name
        ));
    }
    let name = rule.name;
    let target = match (rule.header, rule.body, rule.attachment) {
        (Some(header), false, false) => {
            if !is_field_name(&header) {
                return Err(format!(
                    "rule `{name}`: `{header}` is not a header field name"
                ));
            }
            Target::Header(header.to_ascii_lowercase())
        }
        (None, true, false) => Target::Body,
        (None, false, true) => Target::Attachment,
        _ => {
            return Err(format!(
                "rule `{name}`: give exactly one of `header = \"name\"`, `body = true` or `attachment = true`"
            ));
        }
    };
    let test = match (rule.contains, rule.pattern) {
        (Some(text), None) if !text.is_empty() => Test::Contains(text.to_lowercase()),
        (None, Some(pattern)) if !pattern.is_empty() => Test::Pattern(pattern.to_lowercase()),
        _ => {
            return Err(format!(
                "rule `{name}`: give exactly one non-empty `contains` or `pattern`"
            ));
        }
    };
    if !rule.score.is_finite() {
        return Err(format!("rule `{name}`: score must be a number"));
    }
    Ok(Rule {
        name,
        target,
        test,
        score: rule.score,
    })
}

/// A header field name as RFC 5322 allows it: printable ASCII without `:`.
fn is_field_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 76 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

fn lowered(values: Vec<String>) -> Vec<String> {
    values
        .into_iter()
        .map(|mut v| {
            // Most mail text is ASCII: lowercase it in place instead of building a new
            // string character by character (the largest cost of this plugin per message).
            if v.is_ascii() {
                v.make_ascii_lowercase();
                v
            } else {
                v.to_lowercase()
            }
        })
        .collect()
}

/// A file name as it is compared: lowercased, without the trailing dots, spaces and control
/// characters that Windows drops when it opens the file (so `run.exe.` is `run.exe`).
pub fn normalise_name(name: &str) -> String {
    name.trim_end_matches(|c: char| c == '.' || c.is_whitespace() || c.is_control())
        .to_lowercase()
}

/// Text safe to put in an SMTP reply: printable ASCII (`"` becomes `'`, anything else
/// `?`), cut to about `max` characters.
fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max {
            out.push_str("...");
            break;
        }
        out.push(match c {
            '"' => '\'',
            ' '..='~' => c,
            _ => '?',
        });
    }
    out
}

/// Rounds to two decimals (and turns -0 into 0), so `0.1 + 0.2` scores `0.3`.
fn round2(score: f64) -> f64 {
    (score * 100.0).round() / 100.0 + 0.0
}

/// `6` → `6.0`, `6.5` → `6.5`, `2.25` → `2.25`.
pub fn format_score(score: f64) -> String {
    let mut text = format!("{:.2}", round2(score));
    if text.ends_with('0') {
        text.pop();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    fn session(config: Value) -> Harness<ContentFilter> {
        Harness::new(TestHost::new().with_config(config)).expect("config accepted")
    }

    fn refused(config: Value) -> String {
        Harness::<ContentFilter>::new(TestHost::new().with_config(config))
            .err()
            .expect("config refused")
    }

    fn simple(subject: &str, body: &str) -> Vec<u8> {
        format!("From: a@example.org\r\nTo: b@example.test\r\nSubject: {subject}\r\n\r\n{body}\r\n")
            .into_bytes()
    }

    /// A multipart/mixed message with a text part and one base64 attachment per
    /// `(filename, content type)`; a `None` name gives a part without any file name.
    fn with_attachments(body: &str, attachments: &[(Option<&str>, &str)]) -> Vec<u8> {
        let mut m = String::from(
            "From: a@example.org\r\nTo: b@example.test\r\nSubject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XX\"\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\n",
        );
        m.push_str(body);
        m.push_str("\r\n");
        for (name, ctype) in attachments {
            m.push_str("--XX\r\n");
            m.push_str(&format!("Content-Type: {ctype}\r\n"));
            match name {
                Some(name) => m.push_str(&format!(
                    "Content-Disposition: attachment; filename=\"{name}\"\r\n"
                )),
                None => m.push_str("Content-Disposition: attachment\r\n"),
            }
            m.push_str("Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n");
        }
        m.push_str("--XX--\r\n");
        m.into_bytes()
    }

    fn data(s: &mut Harness<ContentFilter>, raw: &[u8]) -> Response {
        s.data(Some("a@example.org"), &["b@example.test"], raw)
    }

    fn rule(name: &str, target: Value, test: Value, score: f64) -> Value {
        let mut r = json!({ "name": name, "score": score });
        for (k, v) in target
            .as_object()
            .unwrap()
            .iter()
            .chain(test.as_object().unwrap())
        {
            r[k] = v.clone();
        }
        r
    }

    fn header_of(response: &Response, name: &str) -> Option<String> {
        response.edits.iter().find_map(|e| match e {
            Edit::AddHeader(n, v) if n == name => Some(v.clone()),
            _ => None,
        })
    }

    fn reject_text(response: &Response) -> String {
        match &response.verdict {
            Verdict::Reject(reply) => {
                assert_eq!((reply.code, reply.enhanced.as_str()), (550, "5.7.1"));
                reply.text.clone()
            }
            other => panic!("not rejected: {other:?}"),
        }
    }

    fn spam_config() -> Value {
        json!({
            "rules": [
                rule("viagra", json!({ "header": "Subject" }), json!({ "contains": "VIAGRA" }), 6.0),
                rule("cheap-meds", json!({ "body": true }), json!({ "pattern": "*cheap*meds*" }), 3.0),
                rule("lottery", json!({ "body": true }), json!({ "contains": "you have won" }), 5.5),
                rule("newsletter", json!({ "header": "list-id" }), json!({ "pattern": "*" }), -2.0),
            ]
        })
    }

    #[test]
    fn a_clean_message_continues_with_score_zero_header_and_tag() {
        let mut s = session(json!({}));
        let r = data(&mut s, &simple("hello", "just a note"));
        assert_eq!(r.verdict, Verdict::Continue);
        assert_eq!(
            r.edits,
            vec![
                Edit::RemoveHeader("X-Tidegate-Score".into()),
                Edit::AddHeader("X-Tidegate-Score".into(), "0.0".into()),
                Edit::SetTag("content_score".into(), "0.0".into()),
            ]
        );
        assert_eq!(s.host.tag("content_score").as_deref(), Some("0.0"));
        assert_eq!(s.host.counter("content_filter_rejected"), 0);
        assert_eq!(s.host.counter("content_filter_quarantined"), 0);
        assert!(s.plugin.hooks().data);
        assert_eq!(
            s.plugin.hooks(),
            Hooks {
                data: true,
                ..Hooks::default()
            }
        );
    }

    #[test]
    fn a_forged_score_header_is_removed_before_ours_is_added() {
        let mut s = session(json!({}));
        let raw = b"X-Tidegate-Score: -100.0\r\nSubject: hi\r\n\r\nbody\r\n";
        let r = data(&mut s, raw);
        let remove = r
            .edits
            .iter()
            .position(|e| *e == Edit::RemoveHeader("X-Tidegate-Score".into()))
            .expect("forged header removed");
        let add = r
            .edits
            .iter()
            .position(|e| matches!(e, Edit::AddHeader(n, _) if n == "X-Tidegate-Score"))
            .expect("header added");
        assert!(remove < add);
    }

    #[test]
    fn header_rules_match_case_insensitively_and_name_the_rule() {
        let mut s = session(spam_config());
        let r = data(&mut s, &simple("Cheap ViAgRa here", "hello"));
        assert!(matches!(r.verdict, Verdict::Quarantine(_)), "6.0 >= 5.0");
        assert_eq!(
            header_of(&r, "X-Tidegate-Score").as_deref(),
            Some("6.0 rules=viagra")
        );
        assert_eq!(s.host.tag("content_score").as_deref(), Some("6.0"));
    }

    #[test]
    fn scores_add_up_to_quarantine_and_the_reason_names_the_rules() {
        let mut s = session(
            spam_config()
                .as_object()
                .cloned()
                .map(|mut c| {
                    c.insert("quarantine_threshold".into(), json!(8));
                    c.insert("reject_threshold".into(), json!(12));
                    Value::Object(c)
                })
                .unwrap(),
        );
        let r = data(&mut s, &simple("viagra", "Buy CHEAP pills and MEDS"));
        let Verdict::Quarantine(reason) = &r.verdict else {
            panic!("not quarantined: {r:?}");
        };
        assert_eq!(reason, "content score 9.0 >= 8.0: viagra,cheap-meds");
        assert_eq!(
            header_of(&r, "X-Tidegate-Score").as_deref(),
            Some("9.0 rules=viagra,cheap-meds")
        );
        assert_eq!(s.host.tag("content_score").as_deref(), Some("9.0"));
        assert_eq!(s.host.counter("content_filter_quarantined"), 1);
        assert_eq!(s.host.counter("content_filter_rejected"), 0);
    }

    #[test]
    fn thresholds_are_inclusive() {
        let config = json!({
            "quarantine_threshold": 5,
            "reject_threshold": 10,
            "rules": [
                rule("five", json!({ "header": "subject" }), json!({ "contains": "five" }), 5.0),
                rule("ten", json!({ "header": "subject" }), json!({ "contains": "ten" }), 10.0),
                rule("almost", json!({ "header": "subject" }), json!({ "contains": "almost" }), 4.99),
            ]
        });
        let mut s = session(config);
        assert!(matches!(
            data(&mut s, &simple("five", "x")).verdict,
            Verdict::Quarantine(_)
        ));
        assert_eq!(
            data(&mut s, &simple("almost", "x")).verdict,
            Verdict::Continue
        );
        let r = data(&mut s, &simple("ten", "x"));
        assert_eq!(
            reject_text(&r),
            "Message refused by content policy (score 10.0)"
        );
        // A rejected message gets no header (it is not kept), only the tag for the logs.
        assert_eq!(header_of(&r, "X-Tidegate-Score"), None);
        assert_eq!(s.host.tag("content_score").as_deref(), Some("10.0"));
        assert_eq!(s.host.counter("content_filter_rejected"), 1);
        assert_eq!(s.host.counter("content_filter_quarantined"), 1);
    }

    #[test]
    fn over_the_reject_threshold_is_550_5_7_1() {
        let mut s = session(spam_config());
        let r = data(&mut s, &simple("VIAGRA", "you have won! cheap meds inside"));
        assert_eq!(
            reject_text(&r),
            "Message refused by content policy (score 14.5)"
        );
        assert_eq!(s.host.counter("content_filter_rejected"), 1);
        assert!(
            s.host
                .logs()
                .iter()
                .any(|(level, line)| *level == Level::Info
                    && line.contains("score=14.5")
                    && line.contains("rules=viagra,cheap-meds,lottery"))
        );
    }

    #[test]
    fn negative_scores_pull_a_message_back() {
        let mut s = session(spam_config());
        let raw = b"List-Id: <news.example.org>\r\nSubject: viagra news\r\n\r\nhello\r\n";
        let r = data(&mut s, raw);
        assert_eq!(r.verdict, Verdict::Continue);
        assert_eq!(
            header_of(&r, "X-Tidegate-Score").as_deref(),
            Some("4.0 rules=viagra,newsletter")
        );
        // Below zero is shown as it is.
        let r = data(&mut s, b"List-Id: <x>\r\nSubject: hi\r\n\r\nhello\r\n");
        assert_eq!(
            header_of(&r, "X-Tidegate-Score").as_deref(),
            Some("-2.0 rules=newsletter")
        );
    }

    #[test]
    fn a_rule_counts_once_however_often_it_matches() {
        let config = json!({ "rules": [
            rule("spam", json!({ "body": true }), json!({ "contains": "spam" }), 2.0),
            rule("rcvd", json!({ "header": "received" }), json!({ "contains": "evil" }), 1.0),
        ]});
        let mut s = session(config);
        let raw = b"Received: from evil\r\nReceived: from evil too\r\nSubject: x\r\n\r\nspam spam spam\r\n";
        let r = data(&mut s, raw);
        assert_eq!(
            header_of(&r, "X-Tidegate-Score").as_deref(),
            Some("3.0 rules=spam,rcvd")
        );
    }

    #[test]
    fn body_rules_see_plain_and_html_parts_and_decoded_text() {
        let config = json!({ "rules": [
            rule("html-only", json!({ "body": true }), json!({ "contains": "<b>click</b>" }), 1.0),
            rule("qp", json!({ "body": true }), json!({ "contains": "café offer" }), 1.5),
        ]});
        let mut s = session(config);
        let raw = "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"A\"\r\n\r\n--A\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nCAF=C3=89 OFFER\r\n--A\r\nContent-Type: text/html\r\n\r\n<p><B>Click</B></p>\r\n--A--\r\n";
        let r = data(&mut s, raw.as_bytes());
        assert_eq!(
            header_of(&r, "X-Tidegate-Score").as_deref(),
            Some("2.5 rules=html-only,qp")
        );
    }

    #[test]
    fn body_rules_look_only_at_body_scan_bytes_of_each_part() {
        let config = json!({
            "body_scan_bytes": 100,
            "rules": [rule("late", json!({ "body": true }), json!({ "contains": "needle" }), 1.0)]
        });
        let mut s = session(config);
        let early = format!("needle {}", "x".repeat(200));
        let late = format!("{} needle", "x".repeat(200));
        assert_eq!(
            header_of(&data(&mut s, &simple("a", &early)), "X-Tidegate-Score").as_deref(),
            Some("1.0 rules=late")
        );
        assert_eq!(
            header_of(&data(&mut s, &simple("a", &late)), "X-Tidegate-Score").as_deref(),
            Some("0.0")
        );
    }

    #[test]
    fn header_patterns_match_the_whole_decoded_value() {
        let config = json!({ "rules": [
            rule("shouty", json!({ "header": "subject" }), json!({ "pattern": "*!!!" }), 1.0),
            rule("exact", json!({ "header": "subject" }), json!({ "pattern": "hello" }), 2.0),
            rule("encoded", json!({ "header": "subject" }), json!({ "contains": "café" }), 4.0),
            rule("from-dom", json!({ "header": "from" }), json!({ "pattern": "*@spam.test*" }), 0.5),
        ]});
        let mut s = session(config);
        let h = |s: &mut Harness<ContentFilter>, raw: &str| {
            header_of(&data(s, raw.as_bytes()), "X-Tidegate-Score").unwrap()
        };
        assert_eq!(
            h(&mut s, "Subject: Buy now!!!\r\n\r\nx\r\n"),
            "1.0 rules=shouty"
        );
        assert_eq!(h(&mut s, "Subject: Buy now!!! really\r\n\r\nx\r\n"), "0.0");
        assert_eq!(h(&mut s, "Subject: HELLO\r\n\r\nx\r\n"), "2.0 rules=exact");
        assert_eq!(h(&mut s, "Subject: hello there\r\n\r\nx\r\n"), "0.0");
        assert_eq!(
            h(&mut s, "Subject: =?utf-8?q?CAF=C3=89?=\r\n\r\nx\r\n"),
            "4.0 rules=encoded"
        );
        assert_eq!(
            h(
                &mut s,
                "From: \"Bob\" <bob@SPAM.test>\r\nSubject: x\r\n\r\nx\r\n"
            ),
            "0.5 rules=from-dom"
        );
        // A header the message does not have never matches, not even `*`.
        assert_eq!(h(&mut s, "Subject: x\r\n\r\nx\r\n"), "0.0");
    }

    #[test]
    fn executable_attachments_are_refused_at_once_naming_the_file() {
        let mut s = session(spam_config());
        let raw = with_attachments("viagra", &[(Some("run.exe"), "application/octet-stream")]);
        let r = data(&mut s, &raw);
        assert_eq!(
            reject_text(&r),
            "Attachment \"run.exe\" is not allowed: .exe files are blocked"
        );
        assert_eq!(s.host.counter("content_filter_rejected"), 1);
        assert_eq!(s.host.counter("content_filter_blocked_attachments"), 1);
        assert!(r.edits.is_empty(), "no scoring after a block: {r:?}");
    }

    #[test]
    fn double_extensions_case_and_trailing_dots_do_not_hide_an_executable() {
        let mut s = session(json!({}));
        for name in [
            "invoice.pdf.exe",
            "INVOICE.PDF.EXE",
            "Setup.Exe",
            "setup.exe.",
            "setup.exe . ",
            "photo.jpg.scr",
            "macro.vbs",
            "x.tar.JS",
            "app.JAR",
        ] {
            let raw = with_attachments("hi", &[(Some(name), "application/octet-stream")]);
            let r = data(&mut s, &raw);
            let text = reject_text(&r);
            assert!(text.contains(name.trim_end()), "{name}: {text}");
        }
        for name in [
            "invoice.exe.pdf",
            "exe",
            "notes.txt",
            "report.execute",
            "scrap.pdf",
        ] {
            let raw = with_attachments("hi", &[(Some(name), "application/pdf")]);
            assert_eq!(data(&mut s, &raw).verdict, Verdict::Continue, "{name}");
        }
    }

    #[test]
    fn the_blocked_one_is_found_among_several_attachments() {
        let mut s = session(json!({}));
        let raw = with_attachments(
            "hi",
            &[
                (Some("a.pdf"), "application/pdf"),
                (Some("b.docx"), "application/octet-stream"),
                (Some("c.pdf.bat"), "application/octet-stream"),
            ],
        );
        assert!(reject_text(&data(&mut s, &raw)).contains("\"c.pdf.bat\""));
    }

    #[test]
    fn configured_extensions_replace_the_defaults_and_may_be_dotted_or_multi_part() {
        let mut s = session(json!({ "blocked_extensions": [".ISO", "tar.gz"] }));
        let r = data(
            &mut s,
            &with_attachments("hi", &[(Some("disk.iso"), "application/octet-stream")]),
        );
        assert!(reject_text(&r).contains(".iso files"));
        let r = data(
            &mut s,
            &with_attachments("hi", &[(Some("src.TAR.GZ"), "application/gzip")]),
        );
        assert!(reject_text(&r).contains(".tar.gz files"));
        let r = data(
            &mut s,
            &with_attachments("hi", &[(Some("run.exe"), "application/octet-stream")]),
        );
        assert_eq!(r.verdict, Verdict::Continue, "exe is no longer blocked");
        // An empty list blocks nothing at all.
        let mut s = session(json!({ "blocked_extensions": [], "blocked_content_types": [] }));
        let r = data(
            &mut s,
            &with_attachments("hi", &[(Some("run.exe"), "application/x-msdownload")]),
        );
        assert_eq!(r.verdict, Verdict::Continue);
    }

    #[test]
    fn blocked_content_types_catch_attachments_with_or_without_a_name() {
        let mut s = session(
            json!({ "blocked_content_types": ["Application/X-MSDownload", "application/x-ms*"] }),
        );
        let r = data(
            &mut s,
            &with_attachments("hi", &[(None, "application/x-msdownload")]),
        );
        assert_eq!(
            reject_text(&r),
            "An attachment of type application/x-msdownload is not allowed"
        );
        let r = data(
            &mut s,
            &with_attachments("hi", &[(Some("tool.bin"), "application/x-msi")]),
        );
        assert_eq!(
            reject_text(&r),
            "Attachment \"tool.bin\" is not allowed: application/x-msi content is blocked"
        );
        let r = data(
            &mut s,
            &with_attachments("hi", &[(Some("doc.pdf"), "application/pdf")]),
        );
        assert_eq!(r.verdict, Verdict::Continue);
    }

    #[test]
    fn the_default_content_types_block_windows_executables() {
        let mut s = session(json!({}));
        let r = data(
            &mut s,
            &with_attachments("hi", &[(Some("readme"), "application/x-msdownload")]),
        );
        assert!(reject_text(&r).contains("application/x-msdownload"));
    }

    #[test]
    fn hostile_file_names_are_made_safe_for_the_reply() {
        let mut s = session(json!({}));
        let long = format!("{}.exe", "a".repeat(500));
        let raw = with_attachments("hi", &[(Some(&long), "application/octet-stream")]);
        let text = reject_text(&data(&mut s, &raw));
        assert!(text.len() < 400, "{}", text.len());
        assert!(text.contains("..."));
        // RFC 2231 encoded name with a quote, non-ASCII and a control character.
        let raw = "Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhi\r\n--B\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''r%C3%A9sum%22%07%E2%80%AEfdp.exe\r\n\r\nTVqQ\r\n--B--\r\n";
        let text = reject_text(&data(&mut s, raw.as_bytes()));
        assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)), "{text:?}");
        assert!(text.contains("r?sum'??fdp.exe"), "{text}");
    }

    #[test]
    fn attachment_rules_score_file_names() {
        let config = json!({ "rules": [
            rule("zip", json!({ "attachment": true }), json!({ "pattern": "*.zip" }), 3.0),
            rule("any-attachment", json!({ "attachment": true }), json!({ "pattern": "*" }), 0.5),
        ]});
        let mut s = session(config);
        let r = data(
            &mut s,
            &with_attachments("hi", &[(Some("Invoice.ZIP"), "application/zip")]),
        );
        assert_eq!(
            header_of(&r, "X-Tidegate-Score").as_deref(),
            Some("3.5 rules=zip,any-attachment")
        );
        let r = data(
            &mut s,
            &with_attachments("hi", &[(None, "application/zip")]),
        );
        assert_eq!(
            header_of(&r, "X-Tidegate-Score").as_deref(),
            Some("0.5 rules=any-attachment")
        );
        let r = data(&mut s, &simple("no files", "hi"));
        assert_eq!(header_of(&r, "X-Tidegate-Score").as_deref(), Some("0.0"));
    }

    #[test]
    fn a_custom_score_header_is_used() {
        let mut s = session(json!({ "score_header": "X-Spam-Score" }));
        let r = data(&mut s, &simple("hi", "hi"));
        assert_eq!(header_of(&r, "X-Spam-Score").as_deref(), Some("0.0"));
        assert!(r.edits.contains(&Edit::RemoveHeader("X-Spam-Score".into())));
    }

    #[test]
    fn the_score_header_stays_short_with_many_rules() {
        let rules: Vec<Value> = (0..40)
            .map(|i| {
                rule(
                    &format!("rule-{i:02}-{}", "n".repeat(40)),
                    json!({ "body": true }),
                    json!({ "contains": "x" }),
                    0.01,
                )
            })
            .collect();
        let mut s = session(json!({ "rules": rules }));
        let value = header_of(&data(&mut s, &simple("a", "x")), "X-Tidegate-Score").unwrap();
        assert!(value.len() <= MAX_HEADER_VALUE + 4, "{}", value.len());
        assert!(value.starts_with("0.4 rules=rule-00-"), "{value}");
        assert!(value.ends_with(",..."), "{value}");
    }

    #[test]
    fn integer_and_fractional_scores_are_written_plainly() {
        assert_eq!(format_score(0.0), "0.0");
        assert_eq!(format_score(-0.0), "0.0");
        assert_eq!(format_score(6.0), "6.0");
        assert_eq!(format_score(6.5), "6.5");
        assert_eq!(format_score(2.25), "2.25");
        assert_eq!(format_score(0.1 + 0.2), "0.3");
        assert_eq!(format_score(-2.0), "-2.0");
        assert_eq!(format_score(1.0 / 3.0), "0.33");
    }

    #[test]
    fn bad_configurations_are_refused_at_load_with_the_key_named() {
        let cases = [
            (json!({ "reject_treshold": 3 }), "reject_treshold"),
            (json!({ "reject_threshold": 0 }), "reject_threshold"),
            (
                json!({ "quarantine_threshold": -1 }),
                "quarantine_threshold",
            ),
            (
                json!({ "quarantine_threshold": 8, "reject_threshold": 6 }),
                "is above reject_threshold",
            ),
            (json!({ "score_header": "X Bad" }), "score_header"),
            (json!({ "score_header": "" }), "score_header"),
            (json!({ "blocked_extensions": [""] }), "blocked_extensions"),
            (
                json!({ "blocked_extensions": ["*.exe"] }),
                "blocked_extensions",
            ),
            (
                json!({ "blocked_content_types": ["exe"] }),
                "blocked_content_types",
            ),
            (json!({ "body_scan_bytes": 0 }), "body_scan_bytes"),
            (json!({ "body_scan_bytes": 100_000_000 }), "body_scan_bytes"),
            (
                json!({ "rules": [{ "name": "x", "contains": "a", "score": 1 }] }),
                "rules[0]: rule `x`: give exactly one of",
            ),
            (
                json!({ "rules": [{ "name": "x", "body": true, "header": "subject", "contains": "a", "score": 1 }] }),
                "give exactly one of",
            ),
            (
                json!({ "rules": [{ "name": "x", "body": true, "score": 1 }] }),
                "give exactly one non-empty `contains` or `pattern`",
            ),
            (
                json!({ "rules": [{ "name": "x", "body": true, "contains": "a", "pattern": "b", "score": 1 }] }),
                "`contains` or `pattern`",
            ),
            (
                json!({ "rules": [{ "name": "x", "body": true, "contains": "", "score": 1 }] }),
                "`contains` or `pattern`",
            ),
            (
                json!({ "rules": [{ "name": "has space", "body": true, "contains": "a", "score": 1 }] }),
                "name `has space`",
            ),
            (
                json!({ "rules": [{ "name": "x", "header": "sub:ject", "contains": "a", "score": 1 }] }),
                "not a header field name",
            ),
            (
                json!({ "rules": [{ "name": "x", "body": true, "contains": "a" }] }),
                "score",
            ),
            (
                json!({ "rules": [
                    { "name": "x", "body": true, "contains": "a", "score": 1 },
                    { "name": "x", "body": true, "contains": "b", "score": 1 },
                ] }),
                "rules[1]: the name `x` is used twice",
            ),
            (
                json!({ "rules": [{ "name": "x", "body": true, "contains": "a", "score": 1, "regex": "a" }] }),
                "regex",
            ),
        ];
        for (config, expected) in cases {
            let error = refused(config.clone());
            assert!(error.contains(expected), "{config}: {error}");
        }
    }

    #[test]
    fn equal_thresholds_mean_no_quarantine() {
        let mut s = session(json!({
            "quarantine_threshold": 5,
            "reject_threshold": 5,
            "rules": [rule("r", json!({ "body": true }), json!({ "contains": "x" }), 5.0)],
        }));
        assert!(matches!(
            data(&mut s, &simple("a", "x")).verdict,
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn names_are_normalised_like_windows_does() {
        assert_eq!(normalise_name("Run.EXE. . "), "run.exe");
        assert_eq!(normalise_name("a.exe\u{0}"), "a.exe");
        assert_eq!(normalise_name(""), "");
    }
}
