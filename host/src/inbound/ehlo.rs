//! HELO and EHLO (RFC 5321 §4.1.1.1): the greeting, and the extensions on offer.

use super::address::Domain;
use super::policy;
use super::reply::{Reply, codes};
use super::session::{Helo, Session, State};
use crate::config::Config;
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Hook, StageInput};

/// Builds the EHLO reply: the host name, then one extension per line.
pub(super) fn ehlo_reply(config: &Config) -> Reply {
    Reply::bare(
        250,
        format!(
            "{}\nPIPELINING\nSIZE {}\n8BITMIME\nSMTPUTF8\nENHANCEDSTATUSCODES\nCHUNKING\nDSN",
            config.hostname, config.limits.max_message_size
        ),
    )
}

/// Whether a HELO argument is acceptable: a domain or an address literal. Many clients
/// send a bare name without dots, which `Domain::parse` accepts; what matters is that the
/// name is safe to record in a `Received:` header.
fn valid_helo_name(name: &str) -> bool {
    name.len() <= 255 && Domain::parse(name.trim_end_matches('.'), false).is_ok()
}

impl Session {
    /// Handles HELO (`extended == false`) and EHLO; either resets any transaction.
    pub(super) async fn ehlo(&mut self, name: &str, extended: bool) -> Reply {
        if !valid_helo_name(name) {
            return Reply::new(
                501,
                codes::INVALID_ARGUMENTS,
                "Invalid domain name or address literal",
            );
        }
        // A new greeting ends any transaction, and with it the transaction's tags.
        self.tags.clone_from(&self.session_tags);
        if self.plugins.wants(Hook::Helo) {
            let info = w::HeloInfo {
                name: name.to_owned(),
                extended,
            };
            let outcome = self.run_stage(StageInput::Helo(info)).await;
            if let Some(refusal) = policy::refusal(&outcome.decision) {
                return refusal;
            }
        }
        self.session_tags.clone_from(&self.tags);
        self.state = State::Ready(Helo {
            name: name.to_owned(),
            extended,
        });
        if extended {
            let mut reply = self.live.ehlo_reply.clone();
            let mut text = reply.text.into_owned();
            if self.starttls_offered() {
                text.push_str("\nSTARTTLS");
            }
            if self.auth_offered() {
                text.push_str("\nAUTH PLAIN LOGIN");
            }
            // RFC 8689 §4.1: REQUIRETLS is offered only once the session is encrypted.
            if self.io.stream().is_tls() {
                text.push_str("\nREQUIRETLS");
            }
            reply.text = text.into();
            reply
        } else {
            Reply::bare(250, self.live.config.hostname.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::valid_helo_name;

    #[test]
    fn helo_names() {
        for good in [
            "client.test",
            "localhost",
            "[192.0.2.1]",
            "[IPv6:::1]",
            "mx.test.",
        ] {
            assert!(valid_helo_name(good), "{good}");
        }
        for bad in ["a b", "client..test", "[999.0.0.1]", "<x>", "a;b", ""] {
            assert!(!valid_helo_name(bad), "{bad}");
        }
    }
}
