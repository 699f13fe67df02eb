//! One SMTP session: the read loop, the session state, and the commands too small to need
//! a file of their own (RSET, NOOP, QUIT, HELP, VRFY, EXPN).
//!
//! The loop answers every complete command already received before it waits for more
//! (that is PIPELINING, RFC 2920): replies are queued on the [`Connection`] and flushed
//! when the session is about to block. Stage handlers live in `ehlo.rs`, `mail.rs`,
//! `rcpt.rs` and `data.rs`, as `impl Session` blocks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::InboundContext;
use super::address::{Param, ReversePath};
use super::command::{Command, CommandError};
use super::connection::{Connection, LineEvent};
use super::policy;
use super::reply::{Reply, codes};
use super::stream::SessionStream;
use crate::config::Protocol;
use crate::plugins::bindings::tidegate::plugin::types as w;
use crate::plugins::chain::{Hook, SessionPlugins, StageInput};
use crate::spool::envelope::BodyType;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets with its CRLF.
const MAX_COMMAND_LINE: usize = 512;
/// MAIL and RCPT may be longer: each ESMTP extension used adds to the limit (RFC 1870 adds
/// 26 octets for SIZE, and so on); this allows them all generously, still bounded.
const MAX_PATH_COMMAND_LINE: usize = 1024;

/// What the client said in HELO or EHLO.
#[derive(Debug, Clone)]
pub struct Helo {
    /// The domain or address literal the client gave.
    pub name: String,
    /// EHLO (true) or HELO (false).
    pub extended: bool,
}

/// One mail transaction, from MAIL to the end of DATA or the last BDAT chunk.
#[derive(Debug)]
pub struct Transaction {
    /// The reverse path.
    pub sender: ReversePath,
    /// MAIL's ESMTP parameters.
    pub mail_params: Vec<Param>,
    /// The declared body type.
    pub body: BodyType,
    /// Whether MAIL carried SMTPUTF8.
    pub smtputf8: bool,
    /// Accepted recipients in canonical form, with their parameters.
    pub recipients: Vec<(String, Vec<Param>)>,
    /// A BDAT transfer in progress.
    pub chunks: Option<Box<super::data::ChunkedMessage>>,
    /// SPF's results for this transaction, when the listener checks them.
    pub spf: Option<Box<crate::sender_auth::SpfResults>>,
}

/// Where the session is in the protocol; each variant holds exactly what is known there.
#[derive(Debug)]
pub enum State {
    /// Connected, no HELO/EHLO yet.
    AwaitingHelo,
    /// Greeted, no transaction.
    Ready(Helo),
    /// A transaction in progress.
    Transaction(Helo, Transaction),
}

/// Whether the session goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Read the next command.
    Continue,
    /// Close the connection (the final reply is queued).
    Close,
}

/// A running SMTP session.
pub struct Session {
    pub(super) io: Connection<SessionStream>,
    pub(super) ctx: Arc<InboundContext>,
    pub(super) peer: SocketAddr,
    pub(super) listener: Arc<str>,
    pub(super) state: State,
    /// Whether this client may relay to any domain.
    pub(super) may_relay: bool,
    /// The plugin chain of this session, pinned at connect.
    pub(super) plugins: SessionPlugins,
    /// Transaction tags set by plugins (connection-level ones survive RSET).
    pub(super) tags: BTreeMap<String, String>,
    /// Tags set before any transaction (on-connect, on-helo).
    pub(super) session_tags: BTreeMap<String, String>,
    /// What the listener speaks (smtp, submission, smtps).
    pub(super) protocol: Protocol,
    /// The authenticated user, after a successful AUTH.
    pub(super) authenticated: Option<String>,
    /// A plugin answered `disconnect`: the connection closes after the reply.
    pub(super) disconnect_asked: bool,
    /// Transactions started and messages accepted, for the session's summary.
    pub(super) transactions: u32,
    pub(super) accepted: u32,
    started: std::time::Instant,
    /// The sender authentication checks of this listener.
    pub(super) checks: crate::sender_auth::Checks,
    errors: u32,
    line: Vec<u8>,
}

impl Session {
    /// A session on a freshly accepted connection.
    pub fn new(
        stream: SessionStream,
        peer: SocketAddr,
        listener: Arc<str>,
        protocol: Protocol,
        ctx: Arc<InboundContext>,
    ) -> Self {
        let may_relay = ctx.relay.is_relay_client(peer.ip());
        let plugins = ctx.plugins.session(&listener);
        Session {
            plugins,
            tags: BTreeMap::new(),
            session_tags: BTreeMap::new(),
            protocol,
            authenticated: None,
            disconnect_asked: false,
            transactions: 0,
            accepted: 0,
            started: std::time::Instant::now(),
            checks: ctx
                .config
                .listeners
                .iter()
                .find(|l| *l.name == *listener)
                .map(|l| l.checks())
                .unwrap_or_default(),
            io: Connection::new(stream),
            ctx,
            peer,
            listener,
            state: State::AwaitingHelo,
            may_relay,
            errors: 0,
            line: Vec::with_capacity(MAX_PATH_COMMAND_LINE),
        }
    }

    pub(super) fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.ctx.config.limits.command_timeout_secs)
    }

    pub(super) fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.ctx.config.limits.data_timeout_secs)
    }

    /// Runs the session to its end.
    pub async fn run(mut self) {
        if self.protocol == Protocol::Smtps && !self.implicit_tls().await {
            return;
        }
        let (reason, close) = self.serve().await;
        self.end(reason, close).await;
    }

    /// Serves commands until the session ends; returns why, and whether the connection
    /// is still there to be closed cleanly (final replies queued).
    async fn serve(&mut self) -> (&'static str, bool) {
        if let Some(refusal) = self.on_connect().await {
            self.io.queue(&refusal);
            return ("refused", true);
        }
        let greeting = Reply::bare(220, format!("{} ESMTP", self.ctx.config.hostname));
        self.io.queue(&greeting);
        loop {
            // An idle session is closed at shutdown; one inside a transaction may finish.
            let shutdown = match self.state {
                State::Transaction(..) => None,
                _ => Some(self.ctx.shutdown.clone()),
            };
            let timeout = self.command_timeout();
            let mut line = std::mem::take(&mut self.line);
            let event = self
                .io
                .read_line(&mut line, MAX_PATH_COMMAND_LINE, timeout, shutdown.as_ref())
                .await;
            let (flow, reason) = match event {
                Ok(LineEvent::Line) => (self.dispatch(&line).await, "quit"),
                Ok(LineEvent::TooLong) => {
                    self.respond(Reply::new(500, codes::SYNTAX_ERROR, "Line too long"));
                    (Flow::Continue, "quit")
                }
                Ok(LineEvent::Closed) => {
                    tracing::debug!(peer = %self.peer, "client closed the connection");
                    return ("closed", false);
                }
                Ok(LineEvent::TimedOut) => (
                    self.close_with(Reply::new(
                        421,
                        codes::TIMEOUT,
                        format!("{} Error: timeout exceeded", self.ctx.config.hostname),
                    )),
                    "timeout",
                ),
                Ok(LineEvent::Shutdown) => (
                    self.close_with(Reply::new(
                        421,
                        codes::SHUTTING_DOWN,
                        format!("{} Service shutting down", self.ctx.config.hostname),
                    )),
                    "shutdown",
                ),
                Err(e) => {
                    tracing::debug!(peer = %self.peer, error = %e, "connection error");
                    return ("closed", false);
                }
            };
            self.line = line;
            if self.disconnect_asked {
                // The plugin's reply is queued; nothing more is read from this client.
                return ("disconnect", true);
            }
            if flow == Flow::Continue && self.errors >= self.ctx.config.limits.max_errors {
                self.close_with(Reply::new(
                    421,
                    codes::SECURITY_TEMPORARY,
                    format!("{} Too many errors, closing", self.ctx.config.hostname),
                ));
                return ("errors", true);
            }
            if flow == Flow::Close {
                return (reason, true);
            }
        }
    }

    /// Ends the session: plugins that asked are told (on-disconnect), its plugin instances
    /// go back for reuse, so that a client that sees the connection close and reconnects
    /// finds them, then the final replies are flushed and the connection shut down.
    async fn end(&mut self, reason: &'static str, close: bool) {
        if self.plugins.wants_disconnect() {
            let summary = w::SessionSummary {
                transactions: self.transactions,
                accepted: self.accepted,
                duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                reason: reason.to_owned(),
            };
            self.plugins.disconnect(&summary).await;
        }
        self.plugins.release();
        if close {
            let _ = self.io.close(self.command_timeout()).await;
        }
    }

    /// The handshake of an `smtps` listener (RFC 8314), before the greeting.
    async fn implicit_tls(&mut self) -> bool {
        let Some(tls) = self.ctx.tls.clone() else {
            return false;
        };
        let acceptor = tls.acceptor();
        let timeout = self.command_timeout();
        match tokio::time::timeout(timeout, self.io.stream_mut().upgrade(&acceptor)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, error = %e, "TLS handshake failed");
                false
            }
            Err(_) => {
                tracing::info!(peer = %self.peer, "TLS handshake timed out");
                false
            }
        }
    }

    /// Runs on-connect; a refusal replaces the greeting.
    async fn on_connect(&mut self) -> Option<Reply> {
        if !self.plugins.wants(Hook::Connect) {
            return None;
        }
        let info = w::ConnectInfo {
            client_ip: self.peer.ip().to_canonical().to_string(),
            client_port: self.peer.port(),
            listener: self.listener.to_string(),
            tls: self.io.stream().is_tls(),
            reverse_dns: None,
        };
        let outcome = self.run_stage(StageInput::Connect(info)).await;
        self.session_tags.clone_from(&self.tags);
        policy::refusal(&outcome.decision)
    }

    /// Queues a reply, counting refusals toward the error limit.
    pub(super) fn respond(&mut self, reply: Reply) {
        if reply.is_permanent_failure() {
            self.errors += 1;
        }
        self.io.queue(&reply);
    }

    /// Queues a final reply and asks for the connection to be closed.
    pub(super) fn close_with(&mut self, reply: Reply) -> Flow {
        self.io.queue(&reply);
        Flow::Close
    }

    async fn dispatch(&mut self, line: &[u8]) -> Flow {
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(error) => return self.refuse_command(line, error),
        };
        let path_command = matches!(command, Command::Mail(_) | Command::Rcpt(_));
        if !path_command && line.len() + 2 > MAX_COMMAND_LINE {
            self.respond(Reply::new(500, codes::SYNTAX_ERROR, "Line too long"));
            return Flow::Continue;
        }
        let reply = match command {
            Command::Ehlo(name) => self.ehlo(name, true).await,
            Command::Helo(name) => self.ehlo(name, false).await,
            Command::Mail(args) => self.mail(args).await,
            Command::Rcpt(args) => self.rcpt(args).await,
            Command::Data => return self.data().await,
            Command::Bdat { size, last } => return self.bdat(size, last).await,
            Command::Rset => {
                self.reset_transaction();
                Reply::new(250, codes::OK, "Ok")
            }
            Command::Noop => Reply::new(250, codes::OK, "Ok"),
            Command::Quit => {
                return self.close_with(Reply::new(221, codes::OK, "Bye"));
            }
            Command::Help => Reply::new(
                214,
                codes::OK,
                "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY",
            ),
            // RFC 5321 §3.5.3: 252 neither confirms nor denies; nothing is disclosed.
            Command::Vrfy => Reply::new(
                252,
                codes::PROTOCOL_OK,
                "Cannot VRFY user, but will accept message and attempt delivery",
            ),
            Command::StartTls => return self.starttls().await,
            Command::Auth(argument) => return self.auth(argument).await,
            Command::Expn => Reply::new(502, codes::INVALID_COMMAND, "Command not implemented"),
        };
        self.respond(reply);
        Flow::Continue
    }

    fn refuse_command(&mut self, line: &[u8], error: CommandError) -> Flow {
        let reply = match error {
            CommandError::Unknown => Reply::new(500, codes::INVALID_COMMAND, "Unknown command"),
            CommandError::Syntax(why) => Reply::new(501, codes::INVALID_ARGUMENTS, why),
            CommandError::BadCharacters => {
                Reply::new(500, codes::SYNTAX_ERROR, "Invalid characters in command")
            }
        };
        let verb = line
            .split(|b| *b == b' ' || *b == b'\t')
            .next()
            .unwrap_or_default();
        if verb.eq_ignore_ascii_case(b"BDAT") {
            // Without a valid size the chunk cannot be skipped, and its bytes must never
            // be read as commands (that would be a smuggling vector): end the session.
            self.io.queue(&reply);
            return self.close_with(Reply::new(
                421,
                codes::SECURITY_TEMPORARY,
                "Cannot resynchronise after a bad BDAT, closing",
            ));
        }
        self.respond(reply);
        Flow::Continue
    }

    /// Ends any transaction (RSET, a new EHLO, or the end of DATA), keeping the greeting.
    pub(super) fn reset_transaction(&mut self) {
        self.tags.clone_from(&self.session_tags);
        self.state = match std::mem::replace(&mut self.state, State::AwaitingHelo) {
            State::Transaction(helo, _) | State::Ready(helo) => State::Ready(helo),
            State::AwaitingHelo => State::AwaitingHelo,
        };
    }
}
