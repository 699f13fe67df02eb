//! `recipient-policy`: allow and deny lists for envelope recipients and senders.
//!
//! ```toml
//! [[plugin]]
//! name = "recipients"
//! path = "plugins/dist/recipient_policy.wasm"
//! [plugin.config]
//! deny = ["blocked@example.test", "*@spam.test"]   # recipients refused with 550 5.1.1
//! allow = []                  # if not empty, only these recipients are accepted
//! deny_senders = ["*@bad.test"]                     # senders refused with 550 5.7.1
//! ```
//!
//! Patterns are matched case-insensitively; `*` matches any run of characters, so
//! `*@example.test` is a whole domain and `postmaster@*` a local part in every domain.

use serde::Deserialize;
use tidegate_plugin_sdk::prelude::*;

/// The plugin's configuration.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Recipient patterns refused with 550 5.1.1.
    #[serde(default)]
    pub deny: Vec<String>,
    /// If not empty, recipients that match none of these are refused with 550 5.1.1.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Sender patterns refused with 550 5.7.1 (`<>` is matched as the empty string).
    #[serde(default)]
    pub deny_senders: Vec<String>,
}

/// The plugin.
pub struct RecipientPolicy {
    config: Config,
}

impl Plugin for RecipientPolicy {
    fn init(host: &dyn Host) -> Result<Self, String> {
        let config: Config = host.config()?;
        for pattern in config.deny.iter().chain(&config.allow) {
            if pattern.is_empty() {
                return Err("empty pattern in recipient-policy config".into());
            }
        }
        Ok(RecipientPolicy { config })
    }

    /// Nothing here is per session: the checked configuration serves every session.
    fn new_session(&mut self, _host: &dyn Host) -> Result<(), String> {
        Ok(())
    }

    fn hooks(&self) -> Hooks {
        Hooks {
            mail_from: !self.config.deny_senders.is_empty(),
            rcpt_to: true,
            ..Hooks::default()
        }
    }

    fn on_mail_from(&mut self, host: &dyn Host, info: &MailFromInfo) -> Response {
        let sender = info.sender.as_deref().unwrap_or("");
        if matches_any(&self.config.deny_senders, sender) {
            host.log(Level::Info, "sender denied", &[("sender", sender)]);
            return Verdict::reject(550, "5.7.1", "Sender address rejected").into();
        }
        Response::next()
    }

    fn on_rcpt_to(&mut self, host: &dyn Host, info: &RcptToInfo) -> Response {
        let recipient = info.recipient.as_str();
        let denied = matches_any(&self.config.deny, recipient)
            || (!self.config.allow.is_empty() && !matches_any(&self.config.allow, recipient));
        if denied {
            host.log(Level::Info, "recipient denied", &[("recipient", recipient)]);
            host.counter_add("recipient_policy_denied", 1);
            return Verdict::reject(550, "5.1.1", "Recipient address rejected").into();
        }
        Response::next()
    }
}

tidegate_plugin_sdk::export!(RecipientPolicy);

fn matches_any(patterns: &[String], address: &str) -> bool {
    patterns.iter().any(|p| glob(p, address))
}

/// Case-insensitive glob with `*` only.
pub fn glob(pattern: &str, text: &str) -> bool {
    tidegate_plugin_sdk::pattern::glob(&pattern.to_ascii_lowercase(), &text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tidegate_plugin_sdk::testing::{Harness, TestHost};

    fn session(config: serde_json::Value) -> Harness<RecipientPolicy> {
        Harness::new(TestHost::new().with_config(config)).expect("config accepted")
    }

    #[test]
    fn denied_recipients_get_550_5_1_1() {
        let mut s = session(json!({ "deny": ["blocked@example.test", "*@spam.test"] }));
        let Verdict::Reject(reply) = s.rcpt_to("Blocked@Example.test").verdict else {
            panic!("not rejected");
        };
        assert_eq!((reply.code, reply.enhanced.as_str()), (550, "5.1.1"));
        assert!(matches!(
            s.rcpt_to("x@spam.test").verdict,
            Verdict::Reject(_)
        ));
        assert_eq!(s.rcpt_to("ok@example.test").verdict, Verdict::Continue);
        assert_eq!(s.host.counter("recipient_policy_denied"), 2);
    }

    #[test]
    fn an_allow_list_refuses_everything_else() {
        let mut s = session(json!({ "allow": ["*@example.test"] }));
        assert_eq!(s.rcpt_to("a@example.test").verdict, Verdict::Continue);
        assert!(matches!(
            s.rcpt_to("a@other.test").verdict,
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn denied_senders_get_550_5_7_1_and_null_sender_is_matchable() {
        let mut s = session(json!({ "deny_senders": ["*@bad.test", ""] }));
        let Verdict::Reject(reply) = s.mail_from("x@bad.test").verdict else {
            panic!("not rejected");
        };
        assert_eq!(reply.enhanced, "5.7.1");
        assert_eq!(s.mail_from("x@good.test").verdict, Verdict::Continue);
        assert!(s.plugin.hooks().mail_from);
    }

    #[test]
    fn bad_config_is_refused_at_load() {
        assert!(
            Harness::<RecipientPolicy>::new(TestHost::new().with_config(json!({ "denny": [] })))
                .is_err()
        );
    }

    #[test]
    fn glob_patterns() {
        assert!(glob("*@example.test", "a@example.test"));
        assert!(glob("a*c", "abbbc"));
        assert!(!glob("a*c", "abbb"));
        assert!(glob("postmaster@*", "postmaster@x.test"));
        assert!(!glob("a@x.test", "a@x.test.evil"));
        assert!(glob("*", "anything"));
    }
}
