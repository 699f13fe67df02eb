//! `suppression`: never mail an address again that bounced hard or complained. A
//! permanent failure whose class says the address is gone (`bad-mailbox`, `bad-domain`, as
//! the gateway classifies it: see `delivery-facts`), or a complaint (an ARF feedback
//! report, RFC 5965, sent to a configured address), puts the recipient on the list; mail
//! to a listed address from the configured listeners (the submission listener, where the
//! gateway's own senders are) is refused at RCPT TO.
//!
//! ```toml
//! [[plugin]]
//! name = "suppression"
//! path = "plugins/dist/suppression.wasm"
//! [plugin.config]
//! listeners = ["submission"]          # where RCPTs to listed addresses are refused
//! classes = ["bad-mailbox", "bad-domain"]  # the bounce classes that list an address
//! ttl_days = 365                      # how long an address stays listed (0: for ever)
//! complaint_addresses = ["fbl@example.net"] # ARF reports sent here list their recipients
//! code = 550
//! enhanced = "5.1.1"
//! text = "Recipient suppressed after a hard bounce or a complaint"
//! ```
//!
//! State, in the host's key/value store (so a fleet on `[kv] backend = "redis"` shares
//! the list): `s:<address>` (lowercase) holds why (`bounce 5.1.1 <reply>`, `complaint`),
//! with `ttl_days` as its time to live. The operator lists, adds and removes entries with
//! `tidegate suppression list|add|remove` (the admin API's `/v1/kv/suppression`).
//!
//! Counters: `suppression_added` (by bounce or complaint) and `suppression_refused` (RCPTs
//! refused); tag `suppressed=<n>` on a transaction that lost recipients.

use serde::Deserialize;
use tidegate_plugin_sdk::prelude::*;

const DAY_MS: u64 = 86_400_000;
/// The most of a complaint read when looking for its recipients.
const COMPLAINT_SCAN: u32 = 256 * 1024;
/// The most addresses one complaint lists.
const MAX_COMPLAINT_ADDRESSES: usize = 100;

/// The plugin's configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The listeners whose RCPTs are checked against the list.
    #[serde(default = "default_listeners")]
    pub listeners: Vec<String>,
    /// The failure classes of a bounce that list its recipient.
    #[serde(default = "default_classes")]
    pub classes: Vec<String>,
    /// Days an address stays listed; 0: for ever.
    #[serde(default = "default_ttl_days")]
    pub ttl_days: u64,
    /// Recipients whose mail is a complaint (an ARF report).
    #[serde(default)]
    pub complaint_addresses: Vec<String>,
    /// The refusal's code (5xx).
    #[serde(default = "default_code")]
    pub code: u16,
    /// The refusal's enhanced status.
    #[serde(default = "default_enhanced")]
    pub enhanced: String,
    /// The refusal's text.
    #[serde(default = "default_text")]
    pub text: String,
}

fn default_listeners() -> Vec<String> {
    vec!["submission".into()]
}

fn default_classes() -> Vec<String> {
    vec!["bad-mailbox".into(), "bad-domain".into()]
}

fn default_ttl_days() -> u64 {
    365
}

fn default_code() -> u16 {
    550
}

fn default_enhanced() -> String {
    "5.1.1".into()
}

fn default_text() -> String {
    "Recipient suppressed after a hard bounce or a complaint".into()
}

/// The plugin.
pub struct Suppression {
    config: Config,
    /// Recipients refused in this transaction.
    refused: u32,
}

fn key(address: &str) -> String {
    format!("s:{}", address.trim().to_lowercase())
}

impl Suppression {
    fn list(&self, host: &dyn Host, address: &str, why: &str) {
        let ttl = (self.config.ttl_days > 0).then(|| self.config.ttl_days * DAY_MS);
        let why: String = why.chars().filter(|c| !c.is_control()).take(300).collect();
        match host.kv_set(&key(address), why.as_bytes(), ttl) {
            Ok(()) => {
                host.counter_add("suppression_added", 1);
                host.log(
                    Level::Info,
                    "address suppressed",
                    &[("address", address), ("why", &why)],
                );
            }
            Err(e) => host.log(
                Level::Warn,
                "address not suppressed: the store refused",
                &[("address", address), ("error", &e.to_string())],
            ),
        }
    }

    /// The recipients an ARF report names (`Original-Rcpt-To:` fields), from the start of
    /// the raw message.
    fn complained_about(message: &dyn Message) -> Vec<String> {
        let raw = message.raw_range(0, COMPLAINT_SCAN);
        let text = String::from_utf8_lossy(&raw);
        let mut found: Vec<String> = Vec::new();
        for line in text.lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if !name.trim().eq_ignore_ascii_case("original-rcpt-to") {
                continue;
            }
            let address = value
                .trim()
                .trim_start_matches("rfc822;")
                .trim()
                .trim_matches(|c| c == '<' || c == '>')
                .to_lowercase();
            let plausible = address.contains('@')
                && address.len() <= 320
                && !address.chars().any(|c| c.is_whitespace() || c.is_control());
            if plausible && !found.contains(&address) {
                found.push(address);
            }
            if found.len() >= MAX_COMPLAINT_ADDRESSES {
                break;
            }
        }
        found
    }
}

impl Plugin for Suppression {
    fn init(host: &dyn Host) -> Result<Self, String> {
        let config: Config = host.config()?;
        if !(500..600).contains(&config.code) {
            return Err("suppression: `code` must be a 5xx code".into());
        }
        let enhanced_ok = config.enhanced.starts_with("5.")
            && config.enhanced.split('.').count() == 3
            && config
                .enhanced
                .split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
        if !enhanced_ok {
            return Err("suppression: `enhanced` must be a 5.x.y status".into());
        }
        if config.text.is_empty()
            || config.text.len() > 200
            || !config.text.bytes().all(|b| (0x20..0x7f).contains(&b))
        {
            return Err("suppression: `text` must be 1 to 200 printable ASCII characters".into());
        }
        if config.ttl_days > 3650 {
            return Err("suppression: `ttl_days` is at most 3650".into());
        }
        Ok(Suppression { config, refused: 0 })
    }

    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        self.refused = 0;
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            rcpt_to: true,
            data: !self.config.complaint_addresses.is_empty(),
            delivery: true,
            ..Hooks::default()
        }
    }

    fn on_rcpt_to(&mut self, host: &dyn Host, info: &RcptToInfo) -> Response {
        let session = host.session();
        if !self.config.listeners.contains(&session.listener) {
            return Response::next();
        }
        if host.kv_get(&key(&info.recipient)).is_none() {
            return Response::next();
        }
        self.refused += 1;
        host.counter_add("suppression_refused", 1);
        Response::from(Verdict::reject(
            self.config.code,
            &self.config.enhanced,
            &self.config.text,
        ))
        .tag("suppressed", &self.refused.to_string())
    }

    fn on_data(&mut self, host: &dyn Host, envelope: &Envelope, message: &dyn Message) -> Response {
        let complaint = envelope.recipients.iter().any(|r| {
            self.config
                .complaint_addresses
                .iter()
                .any(|c| c.eq_ignore_ascii_case(r))
        });
        if complaint {
            for address in Self::complained_about(message) {
                self.list(host, &address, "complaint");
            }
        }
        Response::next()
    }

    fn on_delivery(&mut self, host: &dyn Host, info: &DeliveryInfo) {
        if info.status != DeliveryStatus::Bounced {
            return;
        }
        let Some(facts) = host.delivery_facts() else {
            return;
        };
        let listed = facts
            .failure_class
            .as_deref()
            .is_some_and(|class| self.config.classes.iter().any(|c| c == class));
        if listed {
            let why = format!(
                "bounce {} {}",
                facts.enhanced.as_deref().unwrap_or(""),
                info.reply
            );
            self.list(host, &info.recipient, &why);
        }
    }
}

tidegate_plugin_sdk::export!(Suppression);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    fn on(listener: &str) -> Harness<Suppression> {
        let host = TestHost::new()
            .with_config(json!({ "complaint_addresses": ["fbl@example.net"] }))
            .with_session(SessionInfo {
                client_ip: "192.0.2.1".into(),
                listener: listener.into(),
                ..SessionInfo::default()
            });
        Harness::new(host).expect("config accepted")
    }

    fn bounce(s: &mut Harness<Suppression>, recipient: &str, class: &str) {
        s.host.set_delivery_facts(Some(OutcomeFacts {
            failure_class: Some(class.into()),
            enhanced: Some("5.1.1".into()),
            ..OutcomeFacts::default()
        }));
        let info = DeliveryInfo {
            queue_id: "0000000000000001".into(),
            recipient: recipient.into(),
            status: DeliveryStatus::Bounced,
            reply: "550 5.1.1 no such user".into(),
            attempt: 1,
        };
        s.plugin.on_delivery(&s.host, &info);
        s.host.set_delivery_facts(None);
    }

    #[test]
    fn a_hard_bounce_suppresses_the_address_on_submission_only() {
        let mut s = on("submission");
        bounce(&mut s, "Gone@Example.test", "bad-mailbox");
        bounce(&mut s, "full@example.test", "mailbox-full");
        s.mail_from("app@example.net");
        let refused = s.rcpt_to("gone@example.test").verdict;
        assert!(matches!(refused, Verdict::Reject(r) if r.code == 550 && r.enhanced == "5.1.1"));
        assert_eq!(s.rcpt_to("full@example.test").verdict, Verdict::Continue);
        assert_eq!(s.host.counter("suppression_refused"), 1);

        let mut mx = on("mx");
        bounce(&mut mx, "gone@example.test", "bad-mailbox");
        mx.mail_from("someone@elsewhere.test");
        assert_eq!(mx.rcpt_to("gone@example.test").verdict, Verdict::Continue);
    }

    #[test]
    fn a_complaint_suppresses_the_addresses_its_report_names() {
        let mut s = on("submission");
        let report = b"From: fbl@isp.test\r\nTo: fbl@example.net\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=b\r\n\r\n--b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\nOriginal-Rcpt-To: <Angry@Example.test>\r\n\r\n--b--\r\n";
        s.data(Some("fbl@isp.test"), &["fbl@example.net"], report);
        assert!(s.host.kv_get(&key("angry@example.test")).is_some());
        s.next_session().unwrap();
        s.mail_from("app@example.net");
        assert!(matches!(
            s.rcpt_to("angry@example.test").verdict,
            Verdict::Reject(_)
        ));
    }
}
