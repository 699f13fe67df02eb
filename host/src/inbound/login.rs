//! STARTTLS (RFC 3207) and AUTH (RFC 4954): upgrading the connection and authenticating
//! the client.

use std::sync::Arc;
use std::time::Duration;

use super::connection::LineEvent;
use super::policy;
use super::reply::{Reply, codes};
use super::session::{Flow, Session, State};
use crate::auth::{self, Credentials, Mechanism, SaslError, replies};
use crate::config::Protocol;
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Decision, Hook, StageInput};

/// RFC 4954 §4: an authentication exchange line may be up to 12,288 octets.
const MAX_AUTH_LINE: usize = 12_288;

impl Session {
    /// Whether STARTTLS is on offer now: a certificate is configured and the connection
    /// is not encrypted yet.
    pub(super) fn starttls_offered(&self) -> bool {
        self.ctx.tls.is_some() && !self.io.stream().is_tls()
    }

    /// Whether AUTH is on offer now: configured, not done yet, and over TLS (unless
    /// plaintext AUTH is allowed for tests).
    pub(super) fn auth_offered(&self) -> bool {
        match &self.live.config.auth {
            Some(auth) => {
                self.authenticated.is_none() && (self.io.stream().is_tls() || auth.allow_plaintext)
            }
            None => false,
        }
    }

    /// Whether this listener requires AUTH before MAIL (submission, RFC 6409 §4.3).
    pub(super) fn auth_required(&self) -> bool {
        self.protocol != Protocol::Smtp && self.authenticated.is_none()
    }

    /// Handles STARTTLS: 220, then the handshake; the session starts over inside TLS.
    pub(super) async fn starttls(&mut self) -> Flow {
        let Some(tls) = self.ctx.tls.clone() else {
            self.respond(Reply::new(
                502,
                codes::INVALID_COMMAND,
                "Command not implemented",
            ));
            return Flow::Continue;
        };
        if self.io.stream().is_tls() {
            self.respond(Reply::new(503, codes::INVALID_COMMAND, "Already using TLS"));
            return Flow::Continue;
        }
        self.io
            .queue(&Reply::new(220, codes::OK, "Ready to start TLS"));
        let timeout = self.command_timeout();
        if self.io.flush(timeout).await.is_err() {
            return Flow::Close;
        }
        // Anything pipelined after STARTTLS was sent in the clear and must not run inside
        // the encrypted session (RFC 3207 §4.2).
        self.io.discard_buffered();
        let acceptor = tls.acceptor();
        let handshake = self.io.stream_mut().upgrade(&acceptor);
        match tokio::time::timeout(timeout, handshake).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, error = %e, "TLS handshake failed");
                return Flow::Close;
            }
            Err(_) => {
                tracing::info!(peer = %self.peer, "TLS handshake timed out");
                return Flow::Close;
            }
        }
        tracing::debug!(peer = %self.peer, tls = ?self.io.stream().tls_summary(), "STARTTLS done");
        self.count_tls();
        // RFC 3207 §4.2: the server forgets everything it learnt before the handshake.
        self.state = State::AwaitingHelo;
        self.session_tags.clear();
        self.tags.clear();
        self.authenticated = None;
        self.may_relay = self.live.relay.is_relay_client(self.peer.ip());
        Flow::Continue
    }

    /// Handles `AUTH mechanism [initial-response]`.
    pub(super) async fn auth(&mut self, argument: &str) -> Flow {
        let Some(config) = self.live.config.auth.clone() else {
            self.respond(Reply::new(
                502,
                codes::INVALID_COMMAND,
                "Command not implemented",
            ));
            return Flow::Continue;
        };
        let refusal = match &self.state {
            _ if self.authenticated.is_some() => Some(replies::already_authenticated()),
            State::AwaitingHelo => Some(Reply::new(503, codes::INVALID_COMMAND, "Send EHLO first")),
            State::Transaction(..) => Some(replies::not_during_transaction()),
            State::Ready(_) if !self.io.stream().is_tls() && !config.allow_plaintext => {
                Some(replies::encryption_required())
            }
            State::Ready(_) if self.ctx.auth_failures.is_blocked(self.peer.ip()) => {
                Some(replies::too_many_failures())
            }
            State::Ready(_) => None,
        };
        if let Some(refusal) = refusal {
            self.respond(refusal);
            return Flow::Continue;
        }
        let command = match auth::parse_auth_command(argument) {
            Ok(command) => command,
            Err(e) => {
                self.respond(e.reply());
                return Flow::Continue;
            }
        };
        // The attempt holds a place under the client's failure limit while it is being
        // checked, so parallel sessions from one client cannot each get a guess in before
        // the first failure is recorded.
        let ctx = Arc::clone(&self.ctx);
        let Some(attempt) = ctx.auth_failures.begin(self.peer.ip()) else {
            self.respond(replies::too_many_failures());
            return Flow::Continue;
        };
        let credentials = match self
            .exchange(command.mechanism, command.initial_response)
            .await
        {
            Ok(credentials) => credentials,
            Err(Exchange::Refused(e)) => {
                if e != SaslError::Cancelled {
                    attempt.failed();
                    self.count_auth("failure");
                }
                self.respond(e.reply());
                return Flow::Continue;
            }
            Err(Exchange::Ended(flow)) => return flow,
        };
        let file_says = match &self.ctx.users {
            Some(users) => {
                users
                    .load_full()
                    .verify_async(&credentials.username, &credentials.password)
                    .await
            }
            None => false,
        };
        let mut accepted = file_says;
        if self.plugins.wants(Hook::Auth) {
            let info = w::AuthInfo {
                mechanism: command.mechanism.name().to_owned(),
                username: credentials.username.clone(),
                password: String::from_utf8_lossy(&credentials.password).into_owned(),
                users_file_verdict: file_says,
            };
            let outcome = self.run_stage(StageInput::Auth(info)).await;
            self.session_tags.clone_from(&self.tags);
            if let Some(refusal) = policy::refusal(&outcome.decision) {
                if refusal.is_permanent_failure() {
                    attempt.failed();
                    self.count_auth("failure");
                }
                tracing::info!(peer = %self.peer, user = %credentials.username, reply = %refusal, "authentication refused by policy");
                self.respond(refusal);
                return Flow::Continue;
            }
            if matches!(outcome.decision, Decision::Accept) {
                accepted = true;
            }
        }
        if accepted {
            attempt.succeeded();
            self.count_auth("success");
            tracing::info!(peer = %self.peer, user = %credentials.username, mechanism = %command.mechanism, "authenticated");
            self.authenticated = Some(credentials.username.clone());
            self.may_relay = true;
            // Plugins see the identity at every later stage (and it lands in the envelope).
            self.session_tags
                .insert("auth".to_owned(), credentials.username.clone());
            self.tags
                .insert("auth".to_owned(), credentials.username.clone());
            self.respond(replies::success());
        } else {
            attempt.failed();
            self.count_auth("failure");
            tracing::info!(peer = %self.peer, user = %credentials.username, "authentication failed");
            // A short pause makes guessing slower without holding a worker.
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.respond(replies::invalid_credentials());
        }
        Flow::Continue
    }

    /// Counts an AUTH attempt by its result.
    fn count_auth(&self, result: &'static str) {
        self.ctx
            .metrics
            .auth_attempts
            .get_or_create(&crate::metrics::AuthLabels { result })
            .inc();
    }

    /// Runs the challenge/response part of a mechanism.
    async fn exchange(
        &mut self,
        mechanism: Mechanism,
        initial: Option<&str>,
    ) -> Result<Credentials, Exchange> {
        match mechanism {
            Mechanism::Plain => {
                let response = match initial {
                    Some(text) => text.to_owned(),
                    None => self.challenge(replies::challenge("")).await?,
                };
                auth::decode_plain(&response).map_err(Exchange::Refused)
            }
            Mechanism::Login => {
                let username = match initial {
                    Some(text) => text.to_owned(),
                    None => self.challenge(replies::login_username()).await?,
                };
                let username = auth::decode_login_username(&username).map_err(Exchange::Refused)?;
                let password = self.challenge(replies::login_password()).await?;
                let password = auth::decode_login_password(&password).map_err(Exchange::Refused)?;
                Ok(Credentials { username, password })
            }
        }
    }

    /// Sends a 334 challenge and reads the client's response line.
    async fn challenge(&mut self, challenge: Reply) -> Result<String, Exchange> {
        self.io.queue(&challenge);
        let mut line = Vec::new();
        let timeout = self.command_timeout();
        match self
            .io
            .read_line(&mut line, MAX_AUTH_LINE, timeout, None)
            .await
        {
            Ok(LineEvent::Line) => {}
            Ok(LineEvent::TooLong) => return Err(Exchange::Refused(SaslError::TooLong)),
            Ok(LineEvent::TimedOut) => {
                return Err(Exchange::Ended(self.close_with(Reply::new(
                    421,
                    codes::TIMEOUT,
                    format!("{} Error: timeout exceeded", self.live.config.hostname),
                ))));
            }
            Ok(LineEvent::Closed | LineEvent::Shutdown) | Err(_) => {
                return Err(Exchange::Ended(Flow::Close));
            }
        }
        let text = String::from_utf8(line).map_err(|_| Exchange::Refused(SaslError::BadBase64))?;
        if text.trim() == "*" {
            return Err(Exchange::Refused(SaslError::Cancelled));
        }
        Ok(text)
    }
}

/// Why an exchange stopped.
enum Exchange {
    /// Refused with the error's reply; the session goes on.
    Refused(SaslError),
    /// The connection ended (or must): the flow to return.
    Ended(Flow),
}
