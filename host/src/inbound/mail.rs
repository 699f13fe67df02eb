//! MAIL FROM (RFC 5321 §4.1.1.2): opens a transaction, with SIZE (RFC 1870), BODY
//! (RFC 6152) and SMTPUTF8 (RFC 6531).

use super::address::{Mailbox, ReversePath, parse_reverse_path};
use super::policy;
use super::reply::{Reply, address_error, codes};
use super::session::{Session, State, Transaction};
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Hook, StageInput};
use crate::spool::dsn_params::{ParamError, check_mail_param, is_xtext};
use crate::spool::envelope::BodyType;

impl Session {
    /// Handles `MAIL FROM:<path> [params]`.
    pub(super) async fn mail(&mut self, args: &str) -> Reply {
        let helo = match &self.state {
            State::AwaitingHelo => {
                return Reply::new(503, codes::INVALID_COMMAND, "Send HELO/EHLO first");
            }
            State::Transaction(..) => {
                return Reply::new(503, codes::INVALID_COMMAND, "Nested MAIL command");
            }
            State::Ready(helo) => helo.clone(),
        };
        if self.auth_required() {
            return crate::auth::replies::required();
        }
        let (sender, params) = match parse_reverse_path(args, helo.extended) {
            Ok(parsed) => parsed,
            Err(error) => return address_error(&error, codes::BAD_SENDER_SYNTAX, "sender"),
        };
        if !helo.extended && !params.is_empty() {
            return Reply::new(555, codes::INVALID_ARGUMENTS, "MAIL parameters need EHLO");
        }
        let mut body = BodyType::SevenBit;
        let mut smtputf8 = false;
        let mut declared_size = 0;
        let tls = self.io.stream().is_tls();
        let mut seen: Vec<(String, Option<String>)> = Vec::with_capacity(params.len());
        for param in &params {
            let value = param.value.as_deref();
            if let Some(checked) = check_mail_param(&param.keyword, value, &seen, tls) {
                if let Err(error) = checked {
                    return param_error(error);
                }
                seen.push((param.keyword.clone(), param.value.clone()));
                continue;
            }
            seen.push((param.keyword.clone(), param.value.clone()));
            match (param.keyword.as_str(), value) {
                ("SIZE", Some(size)) => {
                    // RFC 1870: size-value = 1*20DIGIT; a valid value beyond u64 is
                    // simply too big, not a syntax error.
                    let declared = (!size.is_empty()
                        && size.len() <= 20
                        && size.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| size.parse::<u64>().unwrap_or(u64::MAX));
                    match declared {
                        Some(n) if n > self.live.config.limits.max_message_size => {
                            return Reply::new(
                                552,
                                codes::TOO_BIG,
                                "Message size exceeds fixed maximum message size",
                            );
                        }
                        Some(n) => declared_size = n,
                        None => {
                            return Reply::new(501, codes::INVALID_ARGUMENTS, "Bad SIZE value");
                        }
                    }
                }
                ("BODY", Some(kind)) if kind.eq_ignore_ascii_case("7BIT") => {
                    body = BodyType::SevenBit;
                }
                ("BODY", Some(kind)) if kind.eq_ignore_ascii_case("8BITMIME") => {
                    body = BodyType::EightBitMime;
                }
                ("SMTPUTF8", None) => smtputf8 = true,
                // RFC 4954 §5: the identity that submitted the message, as xtext, or `<>`
                // when unknown. Accepted and kept with the MAIL parameters, but vouched
                // for by nothing, so it is not passed on to next hops.
                ("AUTH", Some(identity)) => {
                    if identity != "<>" && !is_xtext(identity) {
                        return Reply::new(501, codes::INVALID_ARGUMENTS, "Bad AUTH value");
                    }
                }
                (keyword, _) => {
                    return Reply::new(
                        555,
                        codes::INVALID_ARGUMENTS,
                        format!("Unsupported parameter {keyword}"),
                    );
                }
            }
        }
        // Below the disk reserve (or without room for the declared size above it), the
        // client is asked to keep the message for now: the reserve is for the queue's
        // state logs and bounces, so that nothing already accepted is ever lost.
        if !self.ctx.free_space.has_room(declared_size) {
            return Reply::new(
                452,
                codes::INSUFFICIENT_STORAGE,
                "Insufficient system storage",
            );
        }
        if let ReversePath::Mailbox(mailbox) = &sender
            && mailbox.is_utf8()
            && !smtputf8
        {
            return Reply::new(
                553,
                codes::UTF8_NOT_PERMITTED,
                "Non-ASCII sender address needs SMTPUTF8",
            );
        }
        if let (Some(user), Some(auth), ReversePath::Mailbox(mailbox)) =
            (&self.authenticated, &self.live.config.auth, &sender)
            && auth.require_sender_match
            && !mailbox.to_string().eq_ignore_ascii_case(user)
        {
            return Reply::new(
                553,
                codes::NOT_AUTHORIZED,
                "Sender address not owned by the authenticated user",
            );
        }
        let mut sender = sender;
        // A new transaction starts from the session's tags only: what the previous one set
        // (at MAIL, RCPT or DATA, whether its message was accepted or refused) ended with it.
        self.tags.clone_from(&self.session_tags);
        // SPF is checked for the identities the client gave, before any plugin rewrites
        // them, and is what plugins see from here on.
        let client_sender = match &sender {
            ReversePath::Null => None,
            ReversePath::Mailbox(mailbox) => Some(mailbox.to_string()),
        };
        let spf = self
            .check_spf(&helo.name, client_sender.as_deref())
            .await
            .map(Box::new);
        if self.plugins.wants(Hook::MailFrom) {
            let info = w::MailFromInfo {
                sender: match &sender {
                    ReversePath::Null => None,
                    ReversePath::Mailbox(mailbox) => Some(mailbox.to_string()),
                },
                params: policy::params(&params),
            };
            let outcome = self.run_stage(StageInput::MailFrom(info)).await;
            if let Some(refusal) = policy::refusal(&outcome.decision) {
                self.tags.clone_from(&self.session_tags);
                return refusal;
            }
            for edit in outcome.edits {
                if let w::Edit::SetSender(new) = edit {
                    match new {
                        None => sender = ReversePath::Null,
                        Some(text) => match Mailbox::parse(&text, true) {
                            Ok(mailbox) => sender = ReversePath::Mailbox(mailbox),
                            Err(e) => {
                                tracing::warn!(sender = %text, error = %e, "plugin set an invalid sender, ignored")
                            }
                        },
                    }
                }
            }
        }
        self.transactions += 1;
        self.state = State::Transaction(
            helo,
            Transaction {
                sender,
                mail_params: params,
                body,
                smtputf8,
                recipients: Vec::new(),
                chunks: None,
                spf,
            },
        );
        Reply::new(250, codes::SENDER_OK, "Ok")
    }
}

/// The reply to a DSN or REQUIRETLS parameter that was refused.
pub(super) fn param_error(error: ParamError) -> Reply {
    match error {
        ParamError::Malformed(name) => Reply::new(
            501,
            codes::INVALID_ARGUMENTS,
            format!("Bad {name} parameter"),
        ),
        ParamError::Repeated(name) => Reply::new(
            501,
            codes::INVALID_ARGUMENTS,
            format!("{name} given more than once"),
        ),
        // RFC 8689 §4.1 offers REQUIRETLS only over TLS; 5.7.10 is its code for
        // "REQUIRETLS support required" (§5.2).
        ParamError::NeedsTls => Reply::new(
            530,
            codes::REQUIRETLS_NEEDED,
            "REQUIRETLS needs a TLS session",
        ),
    }
}
