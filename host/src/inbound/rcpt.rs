//! RCPT TO (RFC 5321 §4.1.1.3): recipient syntax, the recipient limit and relay control.

use super::address::{ForwardPath, Mailbox, parse_forward_path};
use super::policy;
use super::relay::RelayDecision;
use super::reply::{Reply, address_error, codes};
use super::session::{Session, State};
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Hook, StageInput};
use crate::spool::dsn_params::check_rcpt_param;

impl Session {
    /// Handles `RCPT TO:<path> [params]`.
    pub(super) async fn rcpt(&mut self, args: &str) -> Reply {
        let State::Transaction(_, tx) = &mut self.state else {
            return Reply::new(503, codes::INVALID_COMMAND, "Need MAIL before RCPT");
        };
        if tx.chunks.is_some() {
            return Reply::new(503, codes::INVALID_COMMAND, "RCPT during a BDAT transfer");
        }
        let (path, params) = match parse_forward_path(args, tx.smtputf8) {
            Ok(parsed) => parsed,
            Err(error) => {
                return address_error(&error, codes::BAD_RECIPIENT_SYNTAX, "recipient");
            }
        };
        // RFC 3461's NOTIFY and ORCPT are the only RCPT parameters on offer.
        let mut seen: Vec<(String, Option<String>)> = Vec::with_capacity(params.len());
        for param in &params {
            match check_rcpt_param(&param.keyword, param.value.as_deref(), &seen) {
                Some(Ok(())) => seen.push((param.keyword.clone(), param.value.clone())),
                Some(Err(error)) => return super::mail::param_error(error),
                None => {
                    return Reply::new(
                        555,
                        codes::INVALID_ARGUMENTS,
                        format!("Unsupported parameter {}", param.keyword),
                    );
                }
            }
        }
        let limits = &self.live.config.limits;
        let canonical = match &path {
            ForwardPath::Postmaster => format!("postmaster@{}", self.live.config.hostname),
            ForwardPath::Mailbox(mailbox) => mailbox.to_string(),
        };
        // Repeating an accepted recipient is harmless and must not count against the limit.
        if tx.recipients.iter().any(|(known, _)| *known == canonical) {
            return Reply::new(250, codes::RECIPIENT_OK, "Ok");
        }
        if tx.recipients.len() >= limits.max_recipients {
            return Reply::new(452, codes::TOO_MANY_RECIPIENTS, "Too many recipients");
        }
        let tx_smtputf8 = tx.smtputf8;
        if self.live.relay.decide(&path, self.may_relay) == RelayDecision::Denied {
            tracing::info!(peer = %self.peer, recipient = %path, "relay access denied");
            return Reply::new(554, codes::NOT_AUTHORIZED, "Relay access denied");
        }
        if let ForwardPath::Mailbox(_) = &path
            && let Some(verdict) = self
                .ctx
                .queue
                .verify_recipient(&canonical, tx_smtputf8)
                .await
        {
            use crate::config::VerifyUnreachable;
            use crate::queue::verify::Verdict;
            match verdict {
                Verdict::Exists => {}
                Verdict::Unknown(why) => {
                    tracing::info!(peer = %self.peer, recipient = %canonical, reply = %why, "recipient refused by the next hop");
                    return Reply::new(
                        550,
                        codes::BAD_MAILBOX,
                        "Recipient address rejected: unknown user",
                    );
                }
                Verdict::Unverifiable {
                    why,
                    then: VerifyUnreachable::Tempfail,
                } => {
                    tracing::info!(peer = %self.peer, recipient = %canonical, %why, "recipient could not be verified");
                    return Reply::new(
                        450,
                        codes::MAILBOX_UNVERIFIED,
                        "Recipient address verification failed, try again later",
                    );
                }
                Verdict::Unverifiable { .. } => {}
            }
        }
        let address = canonical;
        let mut accepted = vec![address.clone()];
        if self.plugins.wants(Hook::RcptTo) {
            let info = w::RcptToInfo {
                recipient: address.clone(),
                params: policy::params(&params),
            };
            let outcome = self.run_stage(StageInput::RcptTo(info)).await;
            if let Some(refusal) = policy::refusal(&outcome.decision) {
                return refusal;
            }
            for edit in outcome.edits {
                match edit {
                    w::Edit::AddRecipient(extra) => accepted.push(extra),
                    w::Edit::RemoveRecipient(gone) => accepted.retain(|a| *a != gone),
                    w::Edit::RewriteRecipient((from, to)) => {
                        for a in &mut accepted {
                            if *a == from {
                                a.clone_from(&to);
                            }
                        }
                    }
                    _ => {}
                }
            }
            // What plugins chose is held to the same rules as what the client sent: relay
            // control, and the recipient limit.
            let before = accepted.len();
            accepted.retain(|a| *a == address || self.plugin_recipient_allowed(a));
            if accepted.is_empty() && before > 0 {
                return Reply::new(554, codes::NOT_AUTHORIZED, "Relay access denied");
            }
        }
        let max_recipients = self.live.config.limits.max_recipients;
        let State::Transaction(_, tx) = &mut self.state else {
            return Reply::new(503, codes::INVALID_COMMAND, "Need MAIL before RCPT");
        };
        for address in accepted {
            // The same recipient twice must not mean two deliveries.
            if tx.recipients.iter().any(|(known, _)| *known == address) {
                continue;
            }
            if tx.recipients.len() >= max_recipients {
                tracing::warn!(recipient = %address, "recipient added by a plugin is over max_recipients, dropped");
                continue;
            }
            tx.recipients.push((address, params.clone()));
        }
        Reply::new(250, codes::RECIPIENT_OK, "Ok")
    }

    /// Whether relay control lets a recipient a plugin added or rewrote through, as it
    /// would the same address from this client (logged when not).
    pub(super) fn plugin_recipient_allowed(&self, address: &str) -> bool {
        let allowed = Mailbox::parse(address, true).is_ok_and(|mailbox| {
            self.live
                .relay
                .decide(&ForwardPath::Mailbox(mailbox), self.may_relay)
                != RelayDecision::Denied
        });
        if !allowed {
            tracing::warn!(peer = %self.peer, recipient = %address, "recipient chosen by a plugin refused by relay control");
        }
        allowed
    }
}
