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
use super::connection::{Connection, FillEvent, LineEvent};
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

/// What the client did before the greeting.
enum Pregreet {
    /// Nothing, as it should: greet it.
    Quiet,
    /// It sent something: refuse it with this reply.
    TalkedFirst(Reply),
    /// It closed the connection.
    Gone,
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
    /// The reloadable configuration as it was when the session started.
    pub(super) live: Arc<super::Live>,
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
    /// The client's forward-confirmed reverse DNS name, looked up at connect.
    pub(super) reverse_dns: Option<String>,
    errors: u32,
    /// NOOP, RSET, VRFY, EXPN and HELP since the last accepted message.
    pub(super) junk: u32,
    /// Why the session is being closed, when a command closes it for something other than
    /// QUIT (a protocol violation: `errors`; message data too slow: `timeout`).
    pub(super) close_reason: Option<&'static str>,
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
        let live = ctx.live.load_full();
        let may_relay = live.relay.is_relay_client(peer.ip());
        let plugins = ctx.plugins.session_for(&listener, peer.ip());
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
            reverse_dns: None,
            checks: live
                .config
                .listeners
                .iter()
                .find(|l| *l.name == *listener)
                .map(|l| l.checks())
                .unwrap_or_default(),
            io: Connection::new(stream),
            live,
            ctx,
            peer,
            listener,
            state: State::AwaitingHelo,
            may_relay,
            errors: 0,
            junk: 0,
            close_reason: None,
            line: Vec::with_capacity(MAX_PATH_COMMAND_LINE),
        }
    }

    pub(super) fn command_timeout(&self) -> Duration {
        Duration::from_secs(self.live.config.limits.command_timeout_secs)
    }

    pub(super) fn data_timeout(&self) -> Duration {
        Duration::from_secs(self.live.config.limits.data_timeout_secs)
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
        match self.talked_first().await {
            Pregreet::Quiet => {}
            Pregreet::TalkedFirst(refusal) => {
                self.io.queue(&refusal);
                return ("refused", true);
            }
            Pregreet::Gone => return ("closed", false),
        }
        let greeting = Reply::bare(220, format!("{} ESMTP", self.live.config.hostname));
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
                Ok(LineEvent::Line) => {
                    let flow = self.dispatch(&line).await;
                    (flow, self.close_reason.take().unwrap_or("quit"))
                }
                Ok(LineEvent::TooLong) => {
                    let reply = Reply::new(500, codes::SYNTAX_ERROR, "Line too long");
                    if is_bdat(self.io.long_line_head()) {
                        let flow = self.bdat_lost(reply);
                        (flow, self.close_reason.take().unwrap_or("errors"))
                    } else {
                        self.respond(reply);
                        (Flow::Continue, "quit")
                    }
                }
                Ok(LineEvent::Closed) => {
                    tracing::debug!(peer = %self.peer, "client closed the connection");
                    return ("closed", false);
                }
                Ok(LineEvent::TimedOut) => (
                    self.close_with(Reply::new(
                        421,
                        codes::TIMEOUT,
                        format!("{} Error: timeout exceeded", self.live.config.hostname),
                    )),
                    "timeout",
                ),
                Ok(LineEvent::Shutdown) => (
                    self.close_with(Reply::new(
                        421,
                        codes::SHUTTING_DOWN,
                        format!("{} Service shutting down", self.live.config.hostname),
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
            if flow == Flow::Continue && self.errors >= self.live.config.limits.max_errors {
                self.close_with(Reply::new(
                    421,
                    codes::SECURITY_TEMPORARY,
                    format!("{} Too many errors, closing", self.live.config.hostname),
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
        let duration_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        // One line per session: who, how, what it did.
        tracing::info!(
            peer = %self.peer,
            listener = %self.listener,
            helo = self.helo_name().unwrap_or(""),
            tls = self.io.stream().tls_summary().as_deref().unwrap_or("none"),
            auth = self.authenticated.as_deref().unwrap_or(""),
            transactions = self.transactions,
            accepted = self.accepted,
            duration_ms,
            reason,
            "session ended"
        );
        if self.plugins.wants_disconnect() {
            let summary = w::SessionSummary {
                transactions: self.transactions,
                accepted: self.accepted,
                duration_ms,
                reason: reason.to_owned(),
            };
            self.plugins.disconnect(&summary).await;
        }
        self.plugins.release();
        if close {
            let _ = self.io.close(self.command_timeout()).await;
        }
    }

    /// The name the client gave in HELO/EHLO, if it did.
    fn helo_name(&self) -> Option<&str> {
        match &self.state {
            State::Ready(helo) | State::Transaction(helo, _) => Some(&helo.name),
            State::AwaitingHelo => None,
        }
    }

    /// Counts a TLS session that has just started, by its version.
    pub(super) fn count_tls(&self) {
        if let Some((version, _, _)) = self.io.stream().tls_facts() {
            self.ctx
                .metrics
                .tls_sessions
                .get_or_create(&crate::metrics::TlsLabels {
                    direction: "in",
                    version,
                })
                .inc();
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
            Ok(Ok(())) => {
                self.count_tls();
                true
            }
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

    /// Pregreet detection (as Postfix's postscreen and Sendmail's greet_pause do): a
    /// client that sends anything before our greeting is not waiting for the server, as
    /// RFC 5321 §3.1 requires, and is typically a spam engine. Waits `greet_pause` for
    /// such input (0: only looks at what has already arrived) and returns the refusal.
    async fn talked_first(&mut self) -> Pregreet {
        let pause = self
            .live
            .config
            .smtp
            .greet_pause
            .map_or(Duration::ZERO, |d| d.0);
        // With a zero timeout the read is still polled once, so input already received
        // is seen; nothing is waited for.
        match self.io.fill(pause).await {
            Ok(FillEvent::TimedOut) => Pregreet::Quiet,
            Ok(FillEvent::Filled) => {
                tracing::info!(peer = %self.peer, listener = %self.listener, "client sent data before the greeting, refused");
                Pregreet::TalkedFirst(Reply::new(
                    554,
                    codes::INVALID_COMMAND,
                    format!(
                        "{} Protocol error: data sent before the greeting",
                        self.live.config.hostname
                    ),
                ))
            }
            // The client left (or the connection broke) before being greeted.
            Ok(FillEvent::Closed) | Err(_) => Pregreet::Gone,
        }
    }

    /// Runs on-connect; a refusal replaces the greeting.
    async fn on_connect(&mut self) -> Option<Reply> {
        // The name costs DNS lookups: only sessions whose plugins could see it pay them.
        if self.live.config.smtp.reverse_dns && !self.plugins.chain().plugins.is_empty() {
            self.reverse_dns = self.ctx.dns.confirmed_name(self.peer.ip()).await;
        }
        if !self.plugins.wants(Hook::Connect) {
            return None;
        }
        let info = w::ConnectInfo {
            client_ip: self.peer.ip().to_canonical().to_string(),
            client_port: self.peer.port(),
            listener: self.listener.to_string(),
            tls: self.io.stream().is_tls(),
            reverse_dns: self.reverse_dns.clone(),
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
        if let Some(what) = http_request_line(line) {
            // A browser or HTTP proxy made to talk to the SMTP port (a page that posts a
            // form to port 25, a CONNECT through an open proxy): its lines must never be
            // taken as SMTP commands, which could make it a relay client. Postfix closes
            // such sessions (smtpd_forbidden_commands); so do we, with a last 221 that an
            // SMTP client would understand and a browser ignores.
            tracing::info!(peer = %self.peer, listener = %self.listener, line = what, "HTTP request on the SMTP port, disconnecting");
            self.close_reason = Some("errors");
            return self.close_with(Reply::new(
                221,
                codes::SECURITY_OK,
                "Error: HTTP is not SMTP, closing",
            ));
        }
        let command = match Command::parse(line) {
            Ok(command) => command,
            Err(error) => return self.refuse_command(line, error),
        };
        if matches!(
            command,
            Command::Noop | Command::Rset | Command::Vrfy | Command::Expn | Command::Help
        ) {
            // Commands that move no mail: a client looping over them holds a session (and
            // a connection slot) while doing nothing. The count starts again with every
            // accepted message, so a long session that sends mail is never cut off.
            self.junk = self.junk.saturating_add(1);
            if self.junk > self.live.config.limits.max_junk_commands {
                tracing::info!(peer = %self.peer, listener = %self.listener, "too many junk commands, closing");
                self.close_reason = Some("errors");
                return self.close_with(Reply::new(
                    421,
                    codes::SECURITY_TEMPORARY,
                    format!(
                        "{} Too many junk commands, closing",
                        self.live.config.hostname
                    ),
                ));
            }
        }
        let path_command = matches!(command, Command::Mail(_) | Command::Rcpt(_));
        if !path_command && line.len() + 2 > MAX_COMMAND_LINE {
            let reply = Reply::new(500, codes::SYNTAX_ERROR, "Line too long");
            if matches!(command, Command::Bdat { .. }) {
                return self.bdat_lost(reply);
            }
            self.respond(reply);
            return Flow::Continue;
        }
        let refusal_stage = match &command {
            Command::Ehlo(_) | Command::Helo(_) => Some(crate::events::Stage::Helo),
            Command::Mail(_) => Some(crate::events::Stage::Mail),
            Command::Rcpt(_) => Some(crate::events::Stage::Rcpt),
            _ => None,
        };
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
        if let Some(stage) = refusal_stage
            && reply.code >= 400
            && !(500..=504).contains(&reply.code)
        {
            // A policy's refusal (not a syntax or sequence error): an event, with the
            // address it was about.
            let path = path_of(line);
            let (sender, recipient) = match stage {
                crate::events::Stage::Mail => (path.as_deref(), None),
                crate::events::Stage::Rcpt => (None, path.as_deref()),
                _ => (None, None),
            };
            self.ctx.events.emit(crate::events::Event::refused(
                stage,
                &reply,
                self.peer.ip(),
                sender,
                recipient,
            ));
        }
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
            return self.bdat_lost(reply);
        }
        self.respond(reply);
        Flow::Continue
    }

    /// A BDAT command that is refused before its size is taken (bad syntax, or a line
    /// over the limit): its chunk cannot be skipped, and its bytes must never be read as
    /// commands (that would be a smuggling vector), so the session ends.
    fn bdat_lost(&mut self, reply: Reply) -> Flow {
        self.io.queue(&reply);
        self.close_reason = Some("errors");
        self.close_with(Reply::new(
            421,
            codes::SECURITY_TEMPORARY,
            "Cannot resynchronise after a bad BDAT, closing",
        ))
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

/// Whether a command line (or the start of one) is a BDAT command.
fn is_bdat(line: &[u8]) -> bool {
    line.get(..4)
        .is_some_and(|v| v.eq_ignore_ascii_case(b"BDAT"))
        && matches!(line.get(4), Some(b' ' | b'\t'))
}

/// Recognises the lines an HTTP client sends (a request line such as `GET / HTTP/1.1`, or
/// the `Host:` and `User-Agent:` header fields every browser sends), returning which one
/// it is. None of them can begin a valid SMTP command.
fn http_request_line(line: &[u8]) -> Option<&'static str> {
    const METHODS: [&str; 8] = [
        "GET", "POST", "CONNECT", "HEAD", "PUT", "OPTIONS", "DELETE", "PATCH",
    ];
    const HEADERS: [&str; 2] = ["Host:", "User-Agent:"];
    let starts_with = |prefix: &str| {
        line.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    };
    for method in METHODS {
        if starts_with(method) && matches!(line.get(method.len()), Some(b' ' | b'\t') | None) {
            return Some(method);
        }
    }
    HEADERS.into_iter().find(|header| starts_with(header))
}

/// The address inside the angle brackets of a MAIL or RCPT line, for an event.
fn path_of(line: &[u8]) -> Option<String> {
    let start = line.iter().position(|b| *b == b'<')? + 1;
    let end = line[start..].iter().position(|b| *b == b'>')? + start;
    Some(String::from_utf8_lossy(&line[start..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::http_request_line;

    #[test]
    fn http_lines_are_recognised_and_smtp_lines_are_not() {
        for line in [
            "GET / HTTP/1.1",
            "POST /form HTTP/1.0",
            "CONNECT mail.example.test:25 HTTP/1.1",
            "head / HTTP/1.1",
            "PUT",
            "Host: relay.example.test",
            "host:relay.example.test",
            "User-Agent: Mozilla/5.0",
        ] {
            assert!(http_request_line(line.as_bytes()).is_some(), "{line}");
        }
        for line in [
            "EHLO client.test",
            "MAIL FROM:<get@example.test>",
            "GETX",
            "HELO host",
            "Hostname: x",
            "",
        ] {
            assert!(http_request_line(line.as_bytes()).is_none(), "{line}");
        }
    }
}
