//! The SMTP client: hands a message to the next hop (RFC 5321, client side).
//!
//! One [`ClientSession`] is one connection, which may carry several transactions
//! (connection reuse). [`ClientSession::connect`] opens it, reads the greeting and says
//! EHLO (HELO when EHLO is refused); [`ClientSession::send`] runs one transaction and
//! reports an outcome per recipient plus the outcome of the data; [`ClientSession::quit`]
//! ends it.
//!
//! Extensions used: PIPELINING (RFC 2920), SIZE (RFC 1870), 8BITMIME (RFC 6152), SMTPUTF8
//! (RFC 6531), enhanced status codes (RFC 2034), which are read when the server sends
//! them, CHUNKING (RFC 3030: the message goes in BDAT chunks, without dot-stuffing), DSN
//! (RFC 3461: RET, ENVID, NOTIFY and ORCPT passed on as the client gave them), REQUIRETLS
//! (RFC 8689: passed on, and a message that asks for it is sent only over TLS to a
//! server that offers it) and STARTTLS ([`ClientSession::starttls`]). The session is
//! generic over its stream (and [`connect`](ClientSession::connect) boxes it) so a TLS
//! stream can replace the TCP one in place.
//!
//! Nothing is downgraded: a message that needs SMTPUTF8 or 8BITMIME from a server that
//! lacks it, or that is larger than the server's SIZE, is refused before a byte is sent
//! ([`ClientError::Unsupported`]), and the queue turns that into a bounce.
//!
//! After [`send`](ClientSession::send) returns `Ok` or a reply-based error
//! ([`ClientError::Rejected`], [`ClientError::Unsupported`]) the session is ready for the
//! next transaction (it sends RSET itself where the server may still hold state). After
//! an I/O error, a timeout, a protocol error or a 421 the connection is in an unknown
//! state and [`ClientSession::is_usable`] turns false.

use std::fmt::{self, Write as _};
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use memchr::{memchr, memchr2};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::inbound::connection::Stream;
use crate::inbound::reply::{EnhancedCode, codes};
use crate::spool::envelope::BodyType;
use crate::spool::outgoing::MessageOctets;

const CR: u8 = b'\r';
const LF: u8 = b'\n';

/// The read buffer: replies are small, but a pipelined group's replies may arrive
/// together, and the buffer must hold the longest reply line allowed.
const READ_BUFFER: usize = 8 * 1024;
/// The longest reply line accepted, line ending included. RFC 5321 §4.5.3.1.5 says 512;
/// real servers exceed that in texts, so allow more, but not without bound.
const MAX_REPLY_LINE: usize = 4 * 1024;
/// The most lines one reply may have (an EHLO reply has a dozen).
const MAX_REPLY_LINES: usize = 100;
/// The most octets one reply may have: a server cannot make us buffer without bound.
const MAX_REPLY_OCTETS: usize = 64 * 1024;
/// Message octets encoded per write. Encoding at most doubles the size (every byte a
/// line ending or a stuffed dot), so each write is at most 64 KiB.
const DATA_CHUNK: usize = 32 * 1024;
/// Message octets read per BDAT chunk. Line endings are made CR LF, so a chunk is at most
/// twice this: 512 KiB, one buffer per delivery.
const BDAT_CHUNK: usize = 256 * 1024;
/// The most command octets written before the replies to them are read. Bounding a
/// pipelined group keeps the server's replies within the socket buffers: if both sides
/// wrote without reading, a transaction with thousands of recipients could deadlock.
/// 16 KiB holds MAIL, DATA and a couple of hundred RCPTs: one group in practice.
const PIPELINE_GROUP: usize = 16 * 1024;
/// The longest wait for the reply to QUIT: it is politeness, and a slow server must not
/// hold a delivery worker for the five minutes of the command timeout.
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);

/// 5.6.3 Conversion required but not supported (RFC 3463): 8-bit data, no 8BITMIME.
const CONVERSION_NOT_SUPPORTED: EnhancedCode = EnhancedCode::new(5, 6, 3);
/// 5.7.10 REQUIRETLS support required (RFC 8689 §5.2).
pub const REQUIRETLS_NEEDED: EnhancedCode = EnhancedCode::new(5, 7, 10);

/// The stream [`ClientSession::connect`] produces: boxed, so that STARTTLS can later put
/// a TLS stream in the TCP stream's place without changing the session's type.
pub type BoxedStream = Box<dyn Stream>;

/// How long to wait at each stage, per RFC 5321 §4.5.3.2.
///
/// Each reply timeout bounds the whole reply, not each read, so a server trickling one
/// byte at a time cannot stretch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP connection (not in the RFC).
    pub connect: Duration,
    /// The 220 greeting (RFC: 5 minutes).
    pub greeting: Duration,
    /// Each command and its reply: EHLO, MAIL, RCPT, RSET (RFC: 5 minutes).
    pub command: Duration,
    /// The reply to DATA, normally 354 (RFC: 2 minutes).
    pub data_init: Duration,
    /// Each write of message data (RFC: 3 minutes).
    pub data_block: Duration,
    /// The reply to the final dot (RFC: 10 minutes). Giving up earlier risks duplicate
    /// deliveries (RFC 1047), since the server may be busy accepting the message.
    pub data_end: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        const MINUTE: Duration = Duration::from_secs(60);
        Timeouts {
            connect: Duration::from_secs(30),
            greeting: 5 * MINUTE,
            command: 5 * MINUTE,
            data_init: 2 * MINUTE,
            data_block: 3 * MINUTE,
            data_end: 10 * MINUTE,
        }
    }
}

/// What the server offered in its EHLO reply. All false after a HELO fallback.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The server answered EHLO (not only HELO).
    pub esmtp: bool,
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// SIZE (RFC 1870): `None` when not offered; `Some(0)` when offered without a limit
    /// (no number, an unreadable number, or 0, which RFC 1870 defines as "no limit").
    pub size: Option<u64>,
    /// 8BITMIME (RFC 6152).
    pub eightbitmime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// CHUNKING (RFC 3030): the message goes with BDAT.
    pub chunking: bool,
    /// DSN (RFC 3461): the DSN parameters go on, and the server reports from here on.
    pub dsn: bool,
    /// REQUIRETLS (RFC 8689).
    pub requiretls: bool,
    /// STARTTLS (RFC 3207); not used yet.
    pub starttls: bool,
    /// ENHANCEDSTATUSCODES (RFC 2034). Enhanced codes are read whenever a reply has one.
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Reads the extensions from an EHLO reply: the first line is the server's name, each
    /// further line one keyword and its parameters. Keywords are case-insensitive.
    fn from_ehlo(reply: &ServerReply) -> Self {
        let mut caps = Capabilities {
            esmtp: true,
            ..Capabilities::default()
        };
        for line in reply.text.split('\n').skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => {
                    let limit = words.next().and_then(|n| n.parse().ok());
                    caps.size = Some(limit.unwrap_or(0));
                }
                "8BITMIME" => caps.eightbitmime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "CHUNKING" => caps.chunking = true,
                "DSN" => caps.dsn = true,
                "REQUIRETLS" => caps.requiretls = true,
                "STARTTLS" => caps.starttls = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                _ => {}
            }
        }
        caps
    }
}

/// A reply from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerReply {
    /// The three-digit basic code.
    pub code: u16,
    /// The enhanced status code, when the first line starts with one whose class matches
    /// the basic code.
    pub enhanced: Option<EnhancedCode>,
    /// The text: `\n` separates the lines of a multi-line reply; the enhanced code is
    /// taken off every line that repeats it. Control characters are replaced by `?`,
    /// since the text ends up in logs and bounce messages.
    pub text: String,
}

impl ServerReply {
    /// Whether the reply is a success (2xx).
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Whether the reply is a temporary failure (4xx): try again later.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Whether the reply is a permanent failure (5xx): bounce.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// The enhanced code, or `class.0.0` derived from the basic code when the server sent
    /// none (RFC 3463 §3.1), for a delivery status notification.
    pub fn status(&self) -> EnhancedCode {
        self.enhanced
            .unwrap_or(EnhancedCode::new((self.code / 100) as u8, 0, 0))
    }
}

/// The first line of a reply's text.
fn first_line(text: &str) -> String {
    text.split('\n').next().unwrap_or_default().to_owned()
}

/// One line: `451 4.3.0 first line second line`.
impl fmt::Display for ServerReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(enhanced) = self.enhanced {
            write!(f, " {enhanced}")?;
        }
        for line in self.text.split('\n').filter(|l| !l.is_empty()) {
            write!(f, " {line}")?;
        }
        Ok(())
    }
}

/// The step of the conversation an error happened in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Opening the TCP connection.
    Connect,
    /// Waiting for the greeting.
    Greeting,
    /// EHLO, or HELO after EHLO was refused.
    Ehlo,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// The DATA command and its 354.
    Data,
    /// Writing the message.
    DataBlock,
    /// Waiting for the reply to the final dot. An error here may mean the message was
    /// delivered anyway (RFC 1047): a retry can duplicate it.
    DataEnd,
    /// RSET.
    Rset,
    /// QUIT.
    Quit,
    /// STARTTLS and the handshake after it.
    StartTls,
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "EHLO",
            Stage::Mail => "MAIL FROM",
            Stage::Rcpt => "RCPT TO",
            Stage::Data => "DATA",
            Stage::DataBlock => "message data",
            Stage::DataEnd => "end of data",
            Stage::Rset => "RSET",
            Stage::Quit => "QUIT",
            Stage::StartTls => "STARTTLS",
        })
    }
}

/// Why a connection or a whole transaction failed. Per-recipient refusals are not errors:
/// they are in [`TransactionResult`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The TCP connection could not be opened (or the HELO name is unusable).
    #[error("connection failed: {0}")]
    Connect(#[source] io::Error),
    /// Reading or writing failed, or the server closed the connection.
    #[error("I/O error during {stage}: {source}")]
    Io {
        /// Where it happened.
        stage: Stage,
        /// The underlying error.
        source: io::Error,
    },
    /// The server did not answer (or accept data) in time.
    #[error("timed out during {0}")]
    Timeout(Stage),
    /// The server sent something that is not SMTP, or a reply that makes no sense here.
    #[error("protocol error during {stage}: {why}")]
    Protocol {
        /// Where it happened.
        stage: Stage,
        /// What was wrong.
        why: String,
    },
    /// The server refused the greeting, EHLO/HELO or MAIL, or answered 421 (closing)
    /// before the end of data: the whole transaction failed.
    #[error("{stage} refused: {reply}")]
    Rejected {
        /// What was refused.
        stage: Stage,
        /// The server's reply: 4xx is transient, 5xx permanent.
        reply: ServerReply,
    },
    /// The message cannot go to this server as it is (it needs an extension the server
    /// lacks, is larger than its SIZE, or has an address with control characters). Nothing
    /// was sent; the failure is permanent.
    #[error("{enhanced} {why}")]
    Unsupported {
        /// The enhanced code for the bounce: 5.6.7, 5.6.3, 5.3.4, 5.1.7 or 5.1.3.
        enhanced: EnhancedCode,
        /// A sentence for the bounce and the log.
        why: String,
    },
    /// An earlier error left the session unusable.
    #[error("the session is unusable after an earlier error")]
    Unusable,
    /// The TLS handshake failed (certificate not trusted, no common protocol...).
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// The next hop is this gateway itself (one of its listeners, or a server calling
    /// itself by our host name): delivering would loop. Permanent (5.4.6).
    #[error("mail loops back to myself ({0})")]
    LoopsBack(String),
    /// The message could not be read from the spool while it was being sent. The data
    /// was cut off without its final dot (the connection is dropped), so the server
    /// cannot have taken it; transient.
    #[error("reading the message from the spool failed: {0}")]
    Spool(#[source] io::Error),
}

impl ClientError {
    /// Whether the failure is permanent (bounce) rather than transient (retry later): only
    /// 5xx replies and messages the server cannot take are; connection problems are not.
    pub fn is_permanent(&self) -> bool {
        match self {
            ClientError::Rejected { reply, .. } => reply.is_permanent(),
            ClientError::Unsupported { .. } | ClientError::LoopsBack(_) => true,
            _ => false,
        }
    }

    /// The enhanced code for a delivery status notification, when the error has one.
    pub fn enhanced(&self) -> Option<EnhancedCode> {
        match self {
            ClientError::Rejected { reply, .. } => Some(reply.status()),
            ClientError::Unsupported { enhanced, .. } => Some(*enhanced),
            ClientError::LoopsBack(_) => Some(EnhancedCode::new(5, 4, 6)),
            _ => None,
        }
    }

    /// Where the error happened; `None` for [`ClientError::Unsupported`],
    /// [`ClientError::Unusable`] and [`ClientError::LoopsBack`], which are about the
    /// message or the destination rather than a step of the dialogue. From
    /// [`Stage::DataBlock`] on, the server may have the message: resending it elsewhere
    /// risks a duplicate.
    pub fn stage(&self) -> Option<Stage> {
        match self {
            ClientError::Connect(_) => Some(Stage::Connect),
            ClientError::Timeout(stage)
            | ClientError::Io { stage, .. }
            | ClientError::Protocol { stage, .. }
            | ClientError::Rejected { stage, .. } => Some(*stage),
            ClientError::Tls(_) => Some(Stage::StartTls),
            ClientError::Spool(_) => Some(Stage::DataBlock),
            ClientError::Unsupported { .. } | ClientError::Unusable | ClientError::LoopsBack(_) => {
                None
            }
        }
    }

    /// Whether the connection can no longer be trusted to be in step with the server.
    fn ends_session(&self) -> bool {
        match self {
            ClientError::Rejected { reply, .. } => reply.code == 421,
            ClientError::Unsupported { .. } => false,
            _ => true,
        }
    }
}

/// One message to hand over.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// The reverse path; `None` is the null sender `<>`.
    pub sender: Option<&'a str>,
    /// The forward paths, without angle brackets.
    pub recipients: &'a [String],
    /// The size declared with SIZE= and checked against the server's limit: normally
    /// `message.len()`.
    pub size: u64,
    /// The body type; 8-bit bodies need the server's 8BITMIME.
    pub body: BodyType,
    /// Whether the message needs SMTPUTF8 (also implied by a non-ASCII address).
    pub smtputf8: bool,
    /// The message octets as stored, header edits already applied (a large body is read
    /// from the spool file as it is sent). Line endings are made CR LF on the way out and
    /// dots are stuffed here, not by the caller.
    pub message: &'a MessageOctets,
    /// RET and ENVID (RFC 3461) as the client gave them, passed on to a server that
    /// offers DSN.
    pub ret: Option<&'a str>,
    /// See [`ret`](Self::ret).
    pub envid: Option<&'a str>,
    /// NOTIFY and ORCPT per recipient, in the order of [`recipients`](Self::recipients)
    /// (missing entries are none), passed on to a server that offers DSN.
    pub recipient_dsn: &'a [(Option<&'a str>, Option<&'a str>)],
    /// REQUIRETLS (RFC 8689): only over TLS to a server that offers it, and passed on.
    pub requiretls: bool,
    /// Use BDAT when the server offers CHUNKING (false: always DATA).
    pub chunking: bool,
}

/// The outcome of one transaction whose MAIL was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    /// One reply per recipient, in the order of [`Outgoing::recipients`]: `Ok` accepted
    /// (2xx), `Err` refused (4xx transient, 5xx permanent).
    pub recipients: Vec<Result<ServerReply, ServerReply>>,
    /// The outcome of the data for every accepted recipient: `Ok` is the reply to the
    /// final dot; `Err` is a refusal of the DATA command or of the message. `None` when
    /// no recipient was accepted (the data was not sent).
    pub data: Option<Result<ServerReply, ServerReply>>,
    /// The server offers DSN: the DSN parameters went with the transaction, and notices
    /// from here on are its business.
    pub dsn: bool,
}

/// One SMTP connection to a next hop.
pub struct ClientSession<S = BoxedStream> {
    stream: S,
    rbuf: Box<[u8]>,
    start: usize,
    end: usize,
    wbuf: Vec<u8>,
    greeting: ServerReply,
    /// The first line of the EHLO (or HELO) reply: the name the server gives itself.
    ehlo_name: String,
    capabilities: Capabilities,
    timeouts: Timeouts,
    usable: bool,
    tls: bool,
    /// The TLS version negotiated by STARTTLS.
    tls_version: Option<String>,
    /// Transactions started on this connection.
    transactions: u32,
}

impl<S> fmt::Debug for ClientSession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSession")
            .field("greeting", &self.greeting)
            .field("capabilities", &self.capabilities)
            .field("usable", &self.usable)
            .finish_non_exhaustive()
    }
}

impl ClientSession<BoxedStream> {
    /// Connects to `addr`, reads the greeting and introduces itself as `helo_name` with
    /// EHLO, or HELO if the server refuses EHLO with 5xx.
    ///
    /// A 4xx/5xx greeting or a refused EHLO/HELO is [`ClientError::Rejected`] (after a
    /// polite QUIT).
    pub async fn connect(
        addr: SocketAddr,
        helo_name: &str,
        timeouts: Timeouts,
    ) -> Result<Self, ClientError> {
        Self::connect_from(addr, None, helo_name, timeouts).await
    }

    /// [`ClientSession::connect`] from the local address `source` (an egress address), or
    /// the one the system chooses.
    pub async fn connect_from(
        addr: SocketAddr,
        source: Option<std::net::IpAddr>,
        helo_name: &str,
        timeouts: Timeouts,
    ) -> Result<Self, ClientError> {
        let connecting = async {
            match source {
                None => TcpStream::connect(addr).await,
                Some(source) => {
                    let socket = if addr.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(SocketAddr::new(source, 0))?;
                    socket.connect(addr).await
                }
            }
        };
        let tcp = match tokio::time::timeout(timeouts.connect, connecting).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(ClientError::Connect(e)),
            Err(_) => return Err(ClientError::Timeout(Stage::Connect)),
        };
        // Every write is a whole command group or data block already, so Nagle's
        // algorithm could only delay them.
        let _ = tcp.set_nodelay(true);
        ClientSession::start(Box::new(tcp) as BoxedStream, helo_name, timeouts).await
    }
}

impl ClientSession<BoxedStream> {
    /// Upgrades the session with STARTTLS (RFC 3207): `220`, the TLS handshake (verifying
    /// as `connector` says, for `server_name`), then EHLO again, since the server forgets
    /// everything said before the handshake. A refusal is `Rejected { stage: StartTls }`.
    pub async fn starttls(
        mut self,
        connector: &tokio_rustls::TlsConnector,
        server_name: rustls::pki_types::ServerName<'static>,
        helo_name: &str,
    ) -> Result<Self, ClientError> {
        let timeouts = self.timeouts;
        let reply = self
            .command("STARTTLS", Stage::StartTls, timeouts.command)
            .await?;
        if !reply.is_positive() {
            if reply.code == 421 {
                self.usable = false;
            }
            return Err(ClientError::Rejected {
                stage: Stage::StartTls,
                reply,
            });
        }
        // Whatever the server sent after its 220 came in the clear: never trust it.
        self.start = 0;
        self.end = 0;
        let handshake = connector.connect(server_name, self.stream);
        let tls = match tokio::time::timeout(timeouts.command, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                return Err(ClientError::Tls(e.to_string()));
            }
            Err(_) => return Err(ClientError::Timeout(Stage::StartTls)),
        };
        let tls_version = crate::tls::handshake_facts(tls.get_ref().1).map(|(version, _)| version);
        let mut session = ClientSession {
            tls_version,
            transactions: self.transactions,
            stream: Box::new(tls) as BoxedStream,
            rbuf: self.rbuf,
            start: 0,
            end: 0,
            wbuf: self.wbuf,
            greeting: self.greeting,
            ehlo_name: self.ehlo_name,
            capabilities: Capabilities::default(),
            timeouts,
            usable: true,
            tls: false,
        };
        let ehlo = session
            .command(&format!("EHLO {helo_name}"), Stage::Ehlo, timeouts.command)
            .await?;
        if !ehlo.is_positive() {
            return Err(session.refuse_handshake(Stage::Ehlo, ehlo).await);
        }
        session.capabilities = Capabilities::from_ehlo(&ehlo);
        session.tls = true;
        Ok(session)
    }
}

impl<S: Stream> ClientSession<S> {
    /// Whether the session runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The TLS version STARTTLS negotiated, if it did.
    pub fn tls_version(&self) -> Option<&str> {
        self.tls_version.as_deref()
    }

    /// Starts a session on a connected stream: greeting, then EHLO (or HELO), as
    /// [`connect`](ClientSession::connect) does.
    pub async fn start(
        stream: S,
        helo_name: &str,
        timeouts: Timeouts,
    ) -> Result<Self, ClientError> {
        // The name goes on the command line as it is: nothing that could end the line.
        if helo_name.is_empty() || !helo_name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::Connect(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("unusable HELO name {helo_name:?}"),
            )));
        }
        let mut session = ClientSession {
            tls_version: None,
            transactions: 0,
            stream,
            rbuf: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            wbuf: Vec::with_capacity(512),
            greeting: ServerReply {
                code: 0,
                enhanced: None,
                text: String::new(),
            },
            ehlo_name: String::new(),
            capabilities: Capabilities::default(),
            timeouts,
            usable: true,
            tls: false,
        };
        let greeting = session
            .read_reply(timeouts.greeting, Stage::Greeting)
            .await?;
        // Any 2xx will do (220 is the rule); being strict here would only lose mail.
        if !greeting.is_positive() {
            return Err(session.refuse_handshake(Stage::Greeting, greeting).await);
        }
        session.greeting = greeting;
        let ehlo = session
            .command(&format!("EHLO {helo_name}"), Stage::Ehlo, timeouts.command)
            .await?;
        if ehlo.is_positive() {
            session.capabilities = Capabilities::from_ehlo(&ehlo);
            session.ehlo_name = first_line(&ehlo.text);
            return Ok(session);
        }
        if ehlo.is_permanent() {
            // RFC 5321 §3.2: a server without extensions refuses EHLO with 5xx (500, 502,
            // sometimes 550 or 501); the client falls back to HELO.
            let helo = session
                .command(&format!("HELO {helo_name}"), Stage::Ehlo, timeouts.command)
                .await?;
            if helo.is_positive() {
                session.ehlo_name = first_line(&helo.text);
                return Ok(session);
            }
            return Err(session.refuse_handshake(Stage::Ehlo, helo).await);
        }
        Err(session.refuse_handshake(Stage::Ehlo, ehlo).await)
    }

    /// Asks whether the server would take mail for `recipient`, without sending any:
    /// `MAIL FROM:<>`, `RCPT TO`, then `RSET` (recipient verification, as Postfix's
    /// `reject_unverified_recipient` does). Returns the reply to RCPT; a refused MAIL is
    /// [`ClientError::Rejected`]. The session stays usable for another transaction.
    pub async fn probe(
        &mut self,
        recipient: &str,
        smtputf8: bool,
    ) -> Result<ServerReply, ClientError> {
        if recipient.bytes().any(|b| b.is_ascii_control() || b == b'>') {
            return Err(ClientError::Unsupported {
                enhanced: EnhancedCode::new(5, 1, 3),
                why: "the recipient address cannot be sent".into(),
            });
        }
        if smtputf8 && !self.capabilities.smtputf8 {
            return Err(ClientError::Unsupported {
                enhanced: EnhancedCode::new(5, 6, 7),
                why: "the server does not offer SMTPUTF8".into(),
            });
        }
        let timeout = self.timeouts.command;
        let mail = if smtputf8 {
            "MAIL FROM:<> SMTPUTF8"
        } else {
            "MAIL FROM:<>"
        };
        let reply = self.command(mail, Stage::Mail, timeout).await?;
        if !reply.is_positive() {
            if reply.code == 421 {
                self.usable = false;
            }
            return Err(ClientError::Rejected {
                stage: Stage::Mail,
                reply,
            });
        }
        let answer = self
            .command(&format!("RCPT TO:<{recipient}>"), Stage::Rcpt, timeout)
            .await;
        self.rset_quietly().await;
        answer
    }

    /// The error for a handshake reply that is not a success; a refusal is followed by
    /// QUIT, which RFC 5321 §3.1 expects even after a 554 greeting.
    async fn refuse_handshake(mut self, stage: Stage, reply: ServerReply) -> ClientError {
        if !reply.is_transient() && !reply.is_permanent() {
            return ClientError::Protocol {
                stage,
                why: format!("unexpected reply: {reply}"),
            };
        }
        // 421: the server is closing the connection; no point in a QUIT.
        self.usable = reply.code != 421;
        self.quit().await;
        ClientError::Rejected { stage, reply }
    }

    /// The greeting the server sent, for the delivery log.
    pub fn greeting(&self) -> &ServerReply {
        &self.greeting
    }

    /// Whether the server calls itself `hostname` in its greeting or its EHLO/HELO
    /// reply: then it is this gateway, and delivering to it would loop.
    pub fn announces(&self, hostname: &str) -> bool {
        super::loops::announces(&self.greeting.text, hostname)
            || super::loops::announces(&self.ehlo_name, hostname)
    }

    /// What the server offered in reply to EHLO.
    pub fn capabilities(&self) -> &Capabilities {
        &self.capabilities
    }

    /// Whether the session can carry another transaction. False after an I/O error, a
    /// timeout, a protocol error or a 421: drop the session (or [`quit`](Self::quit) it).
    pub fn is_usable(&self) -> bool {
        self.usable
    }

    /// Transactions started on this connection (for `messages_per_connection`).
    pub fn transactions(&self) -> u32 {
        self.transactions
    }

    /// Runs one transaction: MAIL, RCPT for each recipient, DATA and the message.
    ///
    /// Checks first, without sending anything, that the server can take the message:
    /// SMTPUTF8 when the message or an address needs it (5.6.7, RFC 6531 §3.2), 8BITMIME
    /// for an 8-bit body (5.6.3), the SIZE limit (5.3.4). Nothing is downgraded.
    ///
    /// With PIPELINING, MAIL, the RCPTs and DATA go in one write and the replies are read
    /// in order (RFC 2920 §3.1); without, one command at a time. A refused MAIL fails the
    /// whole transaction ([`ClientError::Rejected`]); each RCPT has its own outcome; the
    /// message is sent only when at least one recipient was accepted. When the session
    /// returns `Ok`, `Rejected` or `Unsupported` it is ready for another transaction.
    /// An empty recipient list is a transaction that does nothing.
    pub async fn send(&mut self, message: &Outgoing<'_>) -> Result<TransactionResult, ClientError> {
        if !self.usable {
            return Err(ClientError::Unusable);
        }
        let smtputf8 = self.check(message)?;
        if message.recipients.is_empty() {
            return Ok(TransactionResult {
                recipients: Vec::new(),
                data: None,
                dsn: self.capabilities.dsn,
            });
        }
        self.transactions = self.transactions.saturating_add(1);
        let result = self.transaction(message, smtputf8).await;
        if let Err(e) = &result
            && e.ends_session()
        {
            self.usable = false;
        }
        result
    }

    /// Sends RSET. [`send`](Self::send) resets by itself where needed; this is for
    /// checking that a cached connection is still alive before reusing it.
    pub async fn reset(&mut self) -> Result<(), ClientError> {
        if !self.usable {
            return Err(ClientError::Unusable);
        }
        let result = match self
            .command("RSET", Stage::Rset, self.timeouts.command)
            .await
        {
            Ok(reply) if reply.is_positive() => return Ok(()),
            Ok(reply) if reply.is_transient() || reply.is_permanent() => ClientError::Rejected {
                stage: Stage::Rset,
                reply,
            },
            Ok(reply) => ClientError::Protocol {
                stage: Stage::Rset,
                why: format!("unexpected reply: {reply}"),
            },
            Err(e) => e,
        };
        // A server that refuses RSET is not one to start a transaction with.
        self.usable = false;
        Err(result)
    }

    /// Sends QUIT and closes the connection. Errors are ignored: the work is done. The
    /// reply is awaited for at most 10 seconds (or the command timeout, if shorter).
    pub async fn quit(mut self) {
        let wait = self.timeouts.command.min(QUIT_TIMEOUT);
        if self.usable {
            let _ = self.command("QUIT", Stage::Quit, wait).await;
        }
        let _ = tokio::time::timeout(wait, self.stream.shutdown()).await;
    }

    /// Checks that the server can take the message; returns whether SMTPUTF8 is needed.
    fn check(&self, message: &Outgoing<'_>) -> Result<bool, ClientError> {
        let sender = message.sender.unwrap_or("");
        // Defence in depth: the inbound parser never lets a line ending into an address,
        // but one here would inject commands.
        let has_control = |a: &str| a.bytes().any(|b| b.is_ascii_control());
        if has_control(sender) {
            return Err(ClientError::Unsupported {
                enhanced: codes::BAD_SENDER_SYNTAX,
                why: format!("sender address {sender:?} contains control characters"),
            });
        }
        if let Some(bad) = message
            .recipients
            .iter()
            .find(|r| r.is_empty() || has_control(r))
        {
            return Err(ClientError::Unsupported {
                enhanced: codes::BAD_RECIPIENT_SYNTAX,
                why: format!("recipient address {bad:?} is empty or contains control characters"),
            });
        }
        let caps = &self.capabilities;
        let smtputf8 = message.smtputf8
            || !sender.is_ascii()
            || message.recipients.iter().any(|r| !r.is_ascii());
        if smtputf8 && !caps.smtputf8 {
            return Err(ClientError::Unsupported {
                enhanced: codes::UTF8_NOT_PERMITTED,
                why: "the message needs SMTPUTF8, which the next hop does not offer".into(),
            });
        }
        if message.body == BodyType::EightBitMime && !caps.eightbitmime {
            return Err(ClientError::Unsupported {
                enhanced: CONVERSION_NOT_SUPPORTED,
                why: "the message has an 8-bit body and the next hop does not offer 8BITMIME"
                    .into(),
            });
        }
        // RFC 8689 §4.2.1: only over TLS, to a server that promises to keep asking for it.
        if message.requiretls && !(self.tls && caps.requiretls) {
            return Err(ClientError::Unsupported {
                enhanced: REQUIRETLS_NEEDED,
                why: if self.tls {
                    "the message requires TLS (REQUIRETLS) and the next hop does not offer REQUIRETLS".into()
                } else {
                    "the message requires TLS (REQUIRETLS) and the session is not encrypted".into()
                },
            });
        }
        if let Some(limit) = caps.size
            && limit > 0
            && message.size > limit
        {
            return Err(ClientError::Unsupported {
                enhanced: codes::TOO_BIG,
                why: format!(
                    "the message ({} octets) is larger than the next hop accepts ({limit})",
                    message.size
                ),
            });
        }
        Ok(smtputf8)
    }

    /// MAIL, RCPTs, DATA, message: everything in [`send`](Self::send) that talks.
    async fn transaction(
        &mut self,
        message: &Outgoing<'_>,
        smtputf8: bool,
    ) -> Result<TransactionResult, ClientError> {
        let mail = self.mail_command(message, smtputf8);
        let n = message.recipients.len();
        let bdat = message.chunking && self.capabilities.chunking;
        // Commands are numbered: 0 is MAIL, 1..=n the RCPTs, n + 1 DATA (with BDAT, the
        // chunks follow once the RCPT replies are in: nothing is sent for nobody).
        let data_index = n + 1;
        let total = if bdat { n + 1 } else { n + 2 };
        let stage_of = |k: usize| match k {
            0 => Stage::Mail,
            k if k < data_index => Stage::Rcpt,
            _ => Stage::Data,
        };
        let mut written = 0;
        let mut read = 0;
        let mut mail_refusal: Option<ServerReply> = None;
        let mut recipients = Vec::with_capacity(n);
        let mut accepted = 0;
        let mut data_reply = None;
        loop {
            if read == written {
                // Every reply so far is in: write the next group (one command without
                // PIPELINING), unless the transaction is over.
                if mail_refusal.is_some() || written == total {
                    break;
                }
                self.wbuf.clear();
                while written < total {
                    // DATA starts a group only without pipelining or after a long
                    // recipient list; then every RCPT reply is known, and DATA is
                    // pointless if none was accepted.
                    if written == data_index && read == written && accepted == 0 {
                        break;
                    }
                    match written {
                        0 => self.wbuf.extend_from_slice(mail.as_bytes()),
                        k if k < data_index => {
                            self.wbuf.extend_from_slice(b"RCPT TO:<");
                            self.wbuf
                                .extend_from_slice(message.recipients[k - 1].as_bytes());
                            self.wbuf.push(b'>');
                            if self.capabilities.dsn
                                && let Some((notify, orcpt)) = message.recipient_dsn.get(k - 1)
                            {
                                if let Some(notify) = notify.filter(|v| safe_value(v)) {
                                    self.wbuf.extend_from_slice(b" NOTIFY=");
                                    self.wbuf.extend_from_slice(notify.as_bytes());
                                }
                                if let Some(orcpt) =
                                    orcpt.filter(|v| safe_value(v) && (v.is_ascii() || smtputf8))
                                {
                                    self.wbuf.extend_from_slice(b" ORCPT=");
                                    self.wbuf.extend_from_slice(orcpt.as_bytes());
                                }
                            }
                            self.wbuf.extend_from_slice(b"\r\n");
                        }
                        _ => self.wbuf.extend_from_slice(b"DATA\r\n"),
                    }
                    written += 1;
                    if !self.capabilities.pipelining || self.wbuf.len() >= PIPELINE_GROUP {
                        break;
                    }
                }
                if self.wbuf.is_empty() {
                    break;
                }
                write_all(
                    &mut self.stream,
                    &self.wbuf,
                    self.timeouts.command,
                    stage_of(read),
                )
                .await?;
            }
            let stage = stage_of(read);
            let timeout = if stage == Stage::Data {
                self.timeouts.data_init
            } else {
                self.timeouts.command
            };
            let reply = match self.read_reply(timeout, stage).await {
                Ok(reply) => reply,
                Err(e) => {
                    // Some servers hang up after refusing MAIL; the refusal is the news.
                    let Some(reply) = mail_refusal else {
                        return Err(e);
                    };
                    self.usable = false;
                    return Err(ClientError::Rejected {
                        stage: Stage::Mail,
                        reply,
                    });
                }
            };
            read += 1;
            if reply.code == 421 {
                // The server is closing: pipelined replies still owed will never come.
                self.usable = false;
                let (stage, reply) = match mail_refusal {
                    Some(refusal) => (Stage::Mail, refusal),
                    None => (stage, reply),
                };
                return Err(ClientError::Rejected { stage, reply });
            }
            match stage {
                Stage::Mail if reply.is_positive() => {}
                Stage::Mail if reply.is_transient() || reply.is_permanent() => {
                    mail_refusal = Some(reply);
                }
                // Pipelined RCPTs after a refused MAIL draw 503s: nothing to record.
                Stage::Rcpt if mail_refusal.is_some() => {}
                Stage::Rcpt if reply.is_positive() => {
                    accepted += 1;
                    recipients.push(Ok(reply));
                }
                Stage::Rcpt if reply.is_transient() || reply.is_permanent() => {
                    recipients.push(Err(reply));
                }
                Stage::Data => data_reply = Some(reply),
                _ => {
                    return Err(ClientError::Protocol {
                        stage,
                        why: format!("unexpected reply: {reply}"),
                    });
                }
            }
        }

        let dsn = self.capabilities.dsn;
        if bdat && mail_refusal.is_none() {
            if accepted == 0 {
                self.rset_quietly().await;
                return Ok(TransactionResult {
                    recipients,
                    data: None,
                    dsn,
                });
            }
            let end = self.send_bdat(message.message).await?;
            if end.code == 421 {
                self.usable = false;
            }
            let data = if end.is_positive() {
                Ok(end)
            } else if end.is_transient() || end.is_permanent() {
                Err(end)
            } else {
                return Err(ClientError::Protocol {
                    stage: Stage::DataEnd,
                    why: format!("unexpected reply: {end}"),
                });
            };
            if data.is_err() {
                // A refused chunk leaves the transaction to be reset (RFC 3030 §2).
                self.rset_quietly().await;
            }
            return Ok(TransactionResult {
                recipients,
                data: Some(data),
                dsn,
            });
        }
        let go_ahead = data_reply.as_ref().is_some_and(|r| r.code == 354);
        if let Some(reply) = mail_refusal {
            if go_ahead {
                self.abort_data().await;
            }
            self.rset_quietly().await;
            return Err(ClientError::Rejected {
                stage: Stage::Mail,
                reply,
            });
        }
        let data = match data_reply {
            // DATA was not sent: no recipient was accepted.
            None => None,
            Some(_) if go_ahead && accepted == 0 => {
                // RFC 2920 §3.1: with every RCPT refused the server should refuse DATA
                // too. This one said 354; end an empty message and count it as nothing.
                self.abort_data().await;
                None
            }
            Some(_) if go_ahead => {
                let end = self.send_data(message.message).await?;
                if end.code == 421 {
                    self.usable = false;
                }
                let data = if end.is_positive() {
                    Ok(end)
                } else if end.is_transient() || end.is_permanent() {
                    Err(end)
                } else {
                    return Err(ClientError::Protocol {
                        stage: Stage::DataEnd,
                        why: format!("unexpected reply: {end}"),
                    });
                };
                // The final reply ends the transaction either way: no RSET needed.
                return Ok(TransactionResult {
                    recipients,
                    data: Some(data),
                    dsn,
                });
            }
            Some(reply) if reply.is_transient() || reply.is_permanent() => {
                (accepted > 0).then_some(Err(reply))
            }
            Some(reply) => {
                return Err(ClientError::Protocol {
                    stage: Stage::Data,
                    why: format!("unexpected reply: {reply}"),
                });
            }
        };
        // The server may still hold MAIL and the accepted RCPTs.
        self.rset_quietly().await;
        Ok(TransactionResult {
            recipients,
            data,
            dsn,
        })
    }

    /// The MAIL command line, parameters included.
    fn mail_command(&self, message: &Outgoing<'_>, smtputf8: bool) -> String {
        let mut line = format!("MAIL FROM:<{}>", message.sender.unwrap_or(""));
        if self.capabilities.size.is_some() {
            let _ = write!(line, " SIZE={}", message.size);
        }
        // `check` made sure the server offers what is asked for here.
        if message.body == BodyType::EightBitMime {
            line.push_str(" BODY=8BITMIME");
        }
        if smtputf8 {
            line.push_str(" SMTPUTF8");
        }
        if self.capabilities.dsn {
            if let Some(ret) = message.ret.filter(|v| safe_value(v)) {
                let _ = write!(line, " RET={ret}");
            }
            if let Some(envid) = message.envid.filter(|v| safe_value(v)) {
                let _ = write!(line, " ENVID={envid}");
            }
        }
        // `check` made sure the server offers it.
        if message.requiretls {
            line.push_str(" REQUIRETLS");
        }
        line.push_str("\r\n");
        line
    }

    /// Sends the message in BDAT chunks (RFC 3030) and returns the reply to the last
    /// one, or the first refusal of a chunk (after which nothing more is sent). Line
    /// endings are made CR LF as for DATA, but nothing is dot-stuffed: the length, not a
    /// terminator, ends each chunk. One chunk is in flight at a time and every chunk's
    /// reply is read.
    async fn send_bdat(&mut self, message: &MessageOctets) -> Result<ServerReply, ClientError> {
        let mut encoder = DataEncoder::unstuffed();
        let mut reader = message.reader().await.map_err(ClientError::Spool)?;
        let mut chunk = vec![0u8; BDAT_CHUNK];
        let mut out = Vec::with_capacity(2 * BDAT_CHUNK + 32);
        loop {
            out.clear();
            let n = fill(&mut reader, &mut chunk).await.map_err(|e| {
                // The chunk sizes already promised cannot be kept: drop the connection
                // rather than end the message short.
                self.usable = false;
                ClientError::Spool(e)
            })?;
            let mut body = Vec::with_capacity(2 * n + 2);
            encoder.encode(&chunk[..n], &mut body);
            let last = n < chunk.len();
            if last {
                encoder.finish_line(&mut body);
            }
            let _ = write!(
                VecWriter(&mut out),
                "BDAT {}{}\r\n",
                body.len(),
                if last { " LAST" } else { "" }
            );
            out.extend_from_slice(&body);
            write_all(
                &mut self.stream,
                &out,
                self.timeouts.data_block,
                Stage::DataBlock,
            )
            .await?;
            let (timeout, stage) = if last {
                (self.timeouts.data_end, Stage::DataEnd)
            } else {
                (self.timeouts.data_end, Stage::DataBlock)
            };
            let reply = self.read_reply(timeout, stage).await?;
            if last || !reply.is_positive() {
                return Ok(reply);
            }
        }
    }

    /// Streams the message after a 354 and returns the reply to the final dot.
    async fn send_data(&mut self, message: &MessageOctets) -> Result<ServerReply, ClientError> {
        let mut encoder = DataEncoder::default();
        let mut reader = message.reader().await.map_err(ClientError::Spool)?;
        // A block at a time: the message is never copied whole, nor held whole when it
        // comes from the spool file.
        let mut chunk = vec![0u8; DATA_CHUNK];
        let mut out = Vec::with_capacity(2 * DATA_CHUNK + 5);
        loop {
            out.clear();
            let n = fill(&mut reader, &mut chunk).await.map_err(|e| {
                // Never end a cut-off message with its dot: the server would take it.
                self.usable = false;
                ClientError::Spool(e)
            })?;
            encoder.encode(&chunk[..n], &mut out);
            let last = n < chunk.len();
            if last {
                // The terminator rides with the last block: one write fewer.
                encoder.finish(&mut out);
            }
            write_all(
                &mut self.stream,
                &out,
                self.timeouts.data_block,
                Stage::DataBlock,
            )
            .await?;
            if last {
                break;
            }
        }
        self.read_reply(self.timeouts.data_end, Stage::DataEnd)
            .await
    }

    /// Answers an unwanted 354 with an empty message, ignoring the outcome.
    async fn abort_data(&mut self) {
        let result = async {
            write_all(
                &mut self.stream,
                b".\r\n",
                self.timeouts.data_block,
                Stage::DataBlock,
            )
            .await?;
            self.read_reply(self.timeouts.data_end, Stage::DataEnd)
                .await
        }
        .await;
        match result {
            Ok(reply) => tracing::debug!(reply = %reply, "empty message after an unwanted 354"),
            Err(e) => {
                tracing::debug!(error = %e, "ending an unwanted 354 failed");
                self.usable = false;
            }
        }
    }

    /// RSET after a failed transaction. The caller already has its answer, so a failure
    /// here only makes the session unusable.
    async fn rset_quietly(&mut self) {
        if !self.usable {
            return;
        }
        match self
            .command("RSET", Stage::Rset, self.timeouts.command)
            .await
        {
            Ok(reply) if reply.is_positive() => {}
            Ok(reply) => {
                tracing::debug!(reply = %reply, "RSET refused; dropping the connection");
                self.usable = false;
            }
            Err(e) => {
                tracing::debug!(error = %e, "RSET failed; dropping the connection");
                self.usable = false;
            }
        }
    }

    /// Sends one command line (given without its line ending) and reads the reply.
    async fn command(
        &mut self,
        line: &str,
        stage: Stage,
        timeout: Duration,
    ) -> Result<ServerReply, ClientError> {
        self.wbuf.clear();
        self.wbuf.extend_from_slice(line.as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
        write_all(&mut self.stream, &self.wbuf, timeout, stage).await?;
        self.read_reply(timeout, stage).await
    }

    /// Reads one reply, all its lines, within `timeout`. Bytes after it (the replies to
    /// later pipelined commands) stay buffered.
    async fn read_reply(
        &mut self,
        timeout: Duration,
        stage: Stage,
    ) -> Result<ServerReply, ClientError> {
        let deadline = Instant::now() + timeout;
        let mut reply = ReplyBuilder::default();
        let protocol = |why: String| ClientError::Protocol { stage, why };
        loop {
            while let Some(pos) = memchr(LF, &self.rbuf[self.start..self.end]) {
                if pos + 1 > MAX_REPLY_LINE {
                    return Err(protocol("reply line too long".into()));
                }
                let line = &self.rbuf[self.start..self.start + pos];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let complete = reply.push(line).map_err(protocol)?;
                self.start += pos + 1;
                if complete {
                    return Ok(reply.finish());
                }
            }
            if self.end - self.start >= MAX_REPLY_LINE {
                return Err(protocol("reply line too long".into()));
            }
            if self.start == self.end {
                self.start = 0;
                self.end = 0;
            } else if self.end == self.rbuf.len() {
                self.rbuf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let read = self.stream.read(&mut self.rbuf[self.end..]);
            match tokio::time::timeout_at(deadline, read).await {
                Ok(Ok(0)) => {
                    return Err(ClientError::Io {
                        stage,
                        source: io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed by the server",
                        ),
                    });
                }
                Ok(Ok(n)) => self.end += n,
                Ok(Err(source)) => return Err(ClientError::Io { stage, source }),
                Err(_) => return Err(ClientError::Timeout(stage)),
            }
        }
    }
}

/// Whether a parameter value from the envelope is safe on a command line: printable,
/// no space, no `=` (defence in depth: the inbound parser let nothing else in).
fn safe_value(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 500
        && value.chars().all(|c| {
            c != '=' && c != ' ' && !c.is_control() && (c.is_ascii_graphic() || !c.is_ascii())
        })
}

/// `fmt::Write` into a byte buffer.
struct VecWriter<'v>(&'v mut Vec<u8>);

impl fmt::Write for VecWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Writes `bytes` and flushes (a TLS stream buffers) within `timeout`.
async fn write_all<S: Stream>(
    stream: &mut S,
    bytes: &[u8],
    timeout: Duration,
    stage: Stage,
) -> Result<(), ClientError> {
    let write = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    match tokio::time::timeout(timeout, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ClientError::Io { stage, source }),
        Err(_) => Err(ClientError::Timeout(stage)),
    }
}

/// Reads until `buf` is full or the reader is at its end; returns the octets read.
async fn fill(
    reader: &mut (dyn tokio::io::AsyncRead + Unpin + Send + '_),
    buf: &mut [u8],
) -> io::Result<usize> {
    use tokio::io::AsyncReadExt;
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Collects the lines of one reply, checking each as it comes.
#[derive(Debug, Default)]
struct ReplyBuilder {
    code: u16,
    enhanced: Option<EnhancedCode>,
    text: String,
    lines: usize,
    octets: usize,
}

impl ReplyBuilder {
    /// Adds a line (without its line ending); returns whether it was the last one.
    fn push(&mut self, line: &[u8]) -> Result<bool, String> {
        self.lines += 1;
        self.octets += line.len() + 2;
        if self.lines > MAX_REPLY_LINES || self.octets > MAX_REPLY_OCTETS {
            return Err(format!(
                "reply longer than {MAX_REPLY_LINES} lines or {MAX_REPLY_OCTETS} octets"
            ));
        }
        let Some((code, last, mut text)) = split_reply_line(line) else {
            return Err(format!("not an SMTP reply: {}", show(line)));
        };
        if self.lines == 1 {
            self.code = code;
            if let Some((enhanced, rest)) = split_enhanced(code, text) {
                self.enhanced = Some(enhanced);
                text = rest;
            }
        } else {
            if code != self.code {
                return Err(format!(
                    "reply code changes from {} to {code} within a reply",
                    self.code
                ));
            }
            self.text.push('\n');
            if let Some((enhanced, rest)) = split_enhanced(code, text)
                && Some(enhanced) == self.enhanced
            {
                text = rest;
            }
        }
        self.text.extend(
            String::from_utf8_lossy(text)
                .chars()
                .map(|c| if c.is_control() && c != '\t' { '?' } else { c }),
        );
        Ok(last)
    }

    fn finish(self) -> ServerReply {
        ServerReply {
            code: self.code,
            enhanced: self.enhanced,
            text: self.text,
        }
    }
}

/// Splits `250-text` / `250 text` / `250` into the code, whether this is the last line,
/// and the text. `None` for anything else, or a code outside 200..=599.
fn split_reply_line(line: &[u8]) -> Option<(u16, bool, &[u8])> {
    let digits = line.get(..3)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code = digits
        .iter()
        .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    if !(200..600).contains(&code) {
        return None;
    }
    match line.get(3) {
        None => Some((code, true, b"")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// Splits an RFC 3463 code `class.subject.detail` (one to three digits each, the class
/// matching the basic code) off the start of a reply text.
fn split_enhanced(code: u16, text: &[u8]) -> Option<(EnhancedCode, &[u8])> {
    fn number(text: &[u8]) -> Option<(u16, &[u8])> {
        let len = text.iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=3).contains(&len) {
            return None;
        }
        let n = text[..len]
            .iter()
            .fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
        Some((n, &text[len..]))
    }
    let class = *text.first()?;
    if !matches!(class, b'2' | b'4' | b'5') || u16::from(class - b'0') != code / 100 {
        return None;
    }
    let rest = text.get(1..)?.strip_prefix(b".")?;
    let (subject, rest) = number(rest)?;
    let (detail, rest) = number(rest.strip_prefix(b".")?)?;
    let rest = match rest.first() {
        None => rest,
        Some(b' ' | b'\t') => rest.trim_ascii_start(),
        Some(_) => return None,
    };
    Some((EnhancedCode::new(class - b'0', subject, detail), rest))
}

/// A short, printable rendering of garbage for an error message.
fn show(bytes: &[u8]) -> String {
    let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
    format!("\"{}\"", shown.escape_debug())
}

/// Encodes message octets for DATA: CR LF line endings and dot-stuffing (RFC 5321
/// §4.5.2), fed in pieces of any size.
///
/// A bare LF or bare CR goes out as CR LF. Sending it as it is would let a next hop that
/// takes it for a line ending see `<LF>.<LF>` as the end of data, and what follows as
/// commands (SMTP smuggling). After the conversion the byte that follows is at a line
/// start, so a dot there is stuffed too.
#[derive(Debug)]
struct DataEncoder {
    /// The next byte starts a line.
    at_line_start: bool,
    /// The last byte was a CR, already sent as CR LF: an LF right after it is dropped.
    after_cr: bool,
    /// Dot-stuffing (DATA); off for BDAT.
    stuff: bool,
}

impl Default for DataEncoder {
    fn default() -> Self {
        DataEncoder {
            at_line_start: true,
            after_cr: false,
            stuff: true,
        }
    }
}

impl DataEncoder {
    /// An encoder for BDAT: line endings made CR LF, dots left alone.
    fn unstuffed() -> Self {
        DataEncoder {
            stuff: false,
            ..DataEncoder::default()
        }
    }

    /// Appends a line ending if the message lacks a final one (the end of a BDAT
    /// message: no terminator).
    fn finish_line(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
        }
    }

    /// Appends the encoding of `input` to `out` (at most twice `input.len()` octets).
    fn encode(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let mut pos = 0;
        if self.after_cr && !input.is_empty() {
            self.after_cr = false;
            if input[0] == LF {
                pos = 1;
            }
        }
        while pos < input.len() {
            if self.stuff && self.at_line_start && input[pos] == b'.' {
                out.push(b'.');
            }
            // Copy up to the next line ending in one go: dots elsewhere are left alone.
            let Some(k) = memchr2(CR, LF, &input[pos..]) else {
                out.extend_from_slice(&input[pos..]);
                self.at_line_start = false;
                return;
            };
            let at = pos + k;
            out.extend_from_slice(&input[pos..at]);
            out.extend_from_slice(b"\r\n");
            self.at_line_start = true;
            pos = at + 1;
            if input[at] == CR {
                match input.get(pos) {
                    Some(&LF) => pos += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
        }
    }

    /// Appends the end: a line ending if the message lacks a final one, then `.` CR LF.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;

    use super::*;

    /// Long enough never to fire on a loaded machine, short enough to end a hung test.
    const T: Duration = Duration::from_secs(10);
    const SHORT: Duration = Duration::from_millis(200);

    const GREETING: &str = "220 mx.test ESMTP\r\n";
    const EHLO: &str = "EHLO client.test\r\n";
    const EHLO_FULL: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 10000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n";
    const EHLO_PLAIN: &str = "250-mx.test\r\n250 ENHANCEDSTATUSCODES\r\n";

    fn timeouts() -> Timeouts {
        Timeouts {
            connect: T,
            greeting: T,
            command: T,
            data_init: T,
            data_block: T,
            data_end: T,
        }
    }

    /// One step of a scripted server.
    enum Step {
        /// Send this.
        Say(String),
        /// Expect exactly this from the client.
        Hear(String),
    }

    fn say(s: impl Into<String>) -> Step {
        Step::Say(s.into())
    }

    fn hear(s: impl Into<String>) -> Step {
        Step::Hear(s.into())
    }

    /// Greeting and EHLO with the given EHLO reply.
    fn hello(ehlo_reply: &str) -> Vec<Step> {
        vec![say(GREETING), hear(EHLO), say(ehlo_reply)]
    }

    /// Runs a script, then returns whatever the client sends until it closes.
    async fn run_script<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, steps: Vec<Step>) -> String {
        for step in steps {
            match step {
                Step::Say(text) => s.write_all(text.as_bytes()).await.unwrap(),
                Step::Hear(text) => {
                    let mut got = vec![0; text.len()];
                    tokio::time::timeout(T, s.read_exact(&mut got))
                        .await
                        .expect("the client went quiet")
                        .unwrap_or_else(|e| panic!("expected {text:?}: {e}"));
                    assert_eq!(String::from_utf8_lossy(&got), text);
                }
            }
        }
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(T, s.read_to_end(&mut rest)).await;
        String::from_utf8_lossy(&rest).into_owned()
    }

    type Writes = Arc<Mutex<Vec<Vec<u8>>>>;

    /// A stream that remembers every write the client makes, to check what was pipelined.
    struct Recording<S> {
        inner: S,
        writes: Writes,
    }

    impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = &mut *self;
            let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
            if let Poll::Ready(Ok(n)) = &poll {
                this.writes.lock().unwrap().push(buf[..*n].to_vec());
            }
            poll
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// A scripted server on the far end of an in-memory stream that records writes.
    fn fake(steps: Vec<Step>) -> (Recording<DuplexStream>, Writes, JoinHandle<String>) {
        let (client, server) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(run_script(server, steps));
        let writes = Writes::default();
        let stream = Recording {
            inner: client,
            writes: writes.clone(),
        };
        (stream, writes, server)
    }

    /// A session with a scripted server; the recorded writes start after EHLO.
    async fn open(
        steps: Vec<Step>,
    ) -> (
        ClientSession<Recording<DuplexStream>>,
        Writes,
        JoinHandle<String>,
    ) {
        let (stream, writes, server) = fake(steps);
        let session = ClientSession::start(stream, "client.test", timeouts())
            .await
            .unwrap();
        writes.lock().unwrap().clear();
        (session, writes, server)
    }

    /// A scripted server on loopback TCP.
    async fn serve_tcp(steps: Vec<Step>) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            run_script(stream, steps).await
        });
        (addr, server)
    }

    fn written(writes: &Writes) -> Vec<String> {
        writes
            .lock()
            .unwrap()
            .iter()
            .map(|w| String::from_utf8_lossy(w).into_owned())
            .collect()
    }

    fn rcpts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn outgoing<'a>(recipients: &'a [String], message: &'a [u8]) -> Outgoing<'a> {
        // Leaked: a test's few octets, kept for the 'a the struct borrows them for.
        let octets = Box::leak(Box::new(MessageOctets::in_memory(message.to_vec())));
        Outgoing {
            sender: Some("a@x.test"),
            recipients,
            size: message.len() as u64,
            body: BodyType::SevenBit,
            smtputf8: false,
            message: octets,
            ret: None,
            envid: None,
            recipient_dsn: &[],
            requiretls: false,
            chunking: true,
        }
    }

    fn encode(input: &[u8]) -> String {
        let mut encoder = DataEncoder::default();
        let mut out = Vec::new();
        encoder.encode(input, &mut out);
        encoder.finish(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn parse(wire: &str) -> Result<ServerReply, String> {
        let mut reply = ReplyBuilder::default();
        for line in wire.split_terminator("\r\n") {
            if reply.push(line.as_bytes())? {
                return Ok(reply.finish());
            }
        }
        Err("incomplete".into())
    }

    #[test]
    fn ehlo_capabilities_are_parsed_whatever_the_case() {
        let reply = parse(
            "250-mx.test greets you\r\n250-pipelining\r\n250-Size\r\n250-8bitmime\r\n\
             250-SMTPUTF8\r\n250-AUTH PLAIN LOGIN\r\n250-starttls\r\n250-CHUNKING\r\n\
             250 enhancedstatuscodes\r\n",
        )
        .unwrap();
        let caps = Capabilities::from_ehlo(&reply);
        assert_eq!(
            caps,
            Capabilities {
                esmtp: true,
                pipelining: true,
                size: Some(0),
                eightbitmime: true,
                smtputf8: true,
                chunking: true,
                dsn: false,
                requiretls: false,
                starttls: true,
                enhanced_status_codes: true,
            }
        );
        let caps = Capabilities::from_ehlo(&parse("250-mx.test\r\n250 SIZE 35882577\r\n").unwrap());
        assert_eq!(caps.size, Some(35_882_577));
        assert!(!caps.pipelining && !caps.starttls);
        // The server's name on the first line is not a keyword.
        let caps = Capabilities::from_ehlo(&parse("250 PIPELINING\r\n").unwrap());
        assert!(!caps.pipelining);
    }

    #[test]
    fn multi_line_replies_and_enhanced_codes() {
        let reply =
            parse("550-5.1.1 first line\r\n550-5.1.1 second\r\n550 5.1.1 third\r\n").unwrap();
        assert_eq!(reply.code, 550);
        assert_eq!(reply.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert_eq!(reply.text, "first line\nsecond\nthird");
        assert_eq!(reply.to_string(), "550 5.1.1 first line second third");
        assert!(reply.is_permanent() && !reply.is_transient());

        let reply = parse("451 4.3.0 try later\r\n").unwrap();
        assert_eq!(reply.to_string(), "451 4.3.0 try later");
        assert!(reply.is_transient());

        // A class that contradicts the basic code is not an enhanced code.
        let reply = parse("250 5.1.1 odd\r\n").unwrap();
        assert_eq!(reply.enhanced, None);
        assert_eq!(reply.text, "5.1.1 odd");
        assert_eq!(reply.status(), EnhancedCode::new(2, 0, 0));
        // Nor is something that merely starts like one.
        assert_eq!(parse("250 2.0.0.1 x\r\n").unwrap().enhanced, None);
        assert_eq!(parse("250 2.0 x\r\n").unwrap().enhanced, None);
        assert_eq!(parse("250 2.0.1234 x\r\n").unwrap().enhanced, None);

        // A bare code, and a code with nothing after the enhanced code.
        let reply = parse("250\r\n").unwrap();
        assert_eq!((reply.code, reply.text.as_str()), (250, ""));
        assert_eq!(reply.to_string(), "250");
        let reply = parse("221 2.0.0\r\n").unwrap();
        assert_eq!(reply.to_string(), "221 2.0.0");

        // Control characters never reach logs or bounces.
        assert_eq!(parse("550 a\x1bb\rc\r\n").unwrap().text, "a?b?c");
    }

    #[test]
    fn malformed_replies_are_refused() {
        for bad in [
            "HTTP/1.1 400 Bad Request\r\n",
            "25 short\r\n",
            "250x\r\n",
            "199 too low\r\n",
            "600 too high\r\n",
            "250-first\r\n251 second\r\n",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
        let too_many = "250-x\r\n".repeat(MAX_REPLY_LINES) + "250 x\r\n";
        assert!(parse(&too_many).unwrap_err().contains("longer"));
        let too_big = format!("250-{}\r\n", "x".repeat(4000)).repeat(20) + "250 x\r\n";
        assert!(parse(&too_big).unwrap_err().contains("longer"));
    }

    #[test]
    fn dot_stuffing_and_bare_line_endings_byte_exact() {
        assert_eq!(
            encode(b"a\n.b\r\n..c\rd\r\n.\r\nend"),
            "a\r\n..b\r\n...c\r\nd\r\n..\r\nend\r\n.\r\n"
        );
        // Smuggling attempts come out as harmless stuffed lines.
        assert_eq!(
            encode(b"x\n.\nMAIL FROM:<e@vil>\r\n"),
            "x\r\n..\r\nMAIL FROM:<e@vil>\r\n.\r\n"
        );
        assert_eq!(encode(b"x\r\n.\r\r\n"), "x\r\n..\r\n\r\n.\r\n");
        assert_eq!(encode(b".\n"), "..\r\n.\r\n");
        // Dots inside a line are left alone.
        assert_eq!(
            encode(b"see example.test. ok\r\n"),
            "see example.test. ok\r\n.\r\n"
        );
    }

    #[test]
    fn a_missing_final_line_ending_is_added() {
        assert_eq!(encode(b"no newline"), "no newline\r\n.\r\n");
        assert_eq!(encode(b"ends in cr\r"), "ends in cr\r\n.\r\n");
        assert_eq!(encode(b"ends in lf\n"), "ends in lf\r\n.\r\n");
        assert_eq!(encode(b""), ".\r\n");
    }

    #[test]
    fn encoding_does_not_depend_on_how_the_input_is_split() {
        let input: &[u8] = b".a\r\n\r\n.\n\r.\r\r\n\n..x\ry\r\n.";
        let whole = encode(input);
        let mut encoder = DataEncoder::default();
        let mut out = Vec::new();
        for byte in input.chunks(1) {
            encoder.encode(byte, &mut out);
            encoder.encode(b"", &mut out);
        }
        encoder.finish(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), whole);
    }

    #[test]
    fn session_futures_are_send() {
        // The queue spawns deliveries: nothing held across an await may be `!Send`.
        fn is_send<T: Send>(_: T) {}
        let _ = |s: &mut ClientSession, m: &Outgoing<'_>| {
            is_send(s.send(m));
            is_send(s.reset());
        };
        let _ = |s: ClientSession, a: SocketAddr| {
            is_send(ClientSession::connect(a, "x", Timeouts::default()));
            is_send(s.quit());
        };
    }

    #[tokio::test]
    async fn connect_reads_greeting_and_capabilities() {
        let mut steps = vec![
            say("220-mx.test ESMTP\r\n220 second greeting line\r\n"),
            hear(EHLO),
            say("250-mx.test\r\n250-PIPELINING\r\n250-SIZE\r\n250-STARTTLS\r\n250 8BITMIME\r\n"),
        ];
        steps.extend([hear("QUIT\r\n"), say("221 2.0.0 bye\r\n")]);
        let (addr, server) = serve_tcp(steps).await;
        let session = ClientSession::connect(addr, "client.test", timeouts())
            .await
            .unwrap();
        assert_eq!(
            session.greeting().text,
            "mx.test ESMTP\nsecond greeting line"
        );
        let caps = session.capabilities();
        assert!(caps.esmtp && caps.pipelining && caps.starttls && caps.eightbitmime);
        assert_eq!(caps.size, Some(0));
        assert!(!caps.smtputf8);
        session.quit().await;
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn helo_when_ehlo_is_refused() {
        let mut steps = vec![
            say(GREETING),
            hear(EHLO),
            say("502 5.5.1 command not recognised\r\n"),
            hear("HELO client.test\r\n"),
            say("250 mx.test\r\n"),
        ];
        // Without PIPELINING the transaction goes one command at a time.
        steps.extend([
            hear("MAIL FROM:<a@x.test>\r\n"),
            say("250 ok\r\n"),
            hear("RCPT TO:<b@y.test>\r\n"),
            say("250 ok\r\n"),
            hear("DATA\r\n"),
            say("354 go on\r\n"),
            hear("hi\r\n.\r\n"),
            say("250 queued\r\n"),
        ]);
        let (stream, writes, server) = fake(steps);
        let mut session = ClientSession::start(stream, "client.test", timeouts())
            .await
            .unwrap();
        assert_eq!(
            session.capabilities(),
            &Capabilities::default(),
            "HELO offers nothing"
        );
        writes.lock().unwrap().clear();
        let to = rcpts(&["b@y.test"]);
        let result = session.send(&outgoing(&to, b"hi\r\n")).await.unwrap();
        assert_eq!(result.data.unwrap().unwrap().text, "queued");
        assert_eq!(
            written(&writes),
            [
                "MAIL FROM:<a@x.test>\r\n",
                "RCPT TO:<b@y.test>\r\n",
                "DATA\r\n",
                "hi\r\n.\r\n"
            ]
        );
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_refused_greeting_is_rejected_and_quit() {
        let steps = vec![
            say("554 5.7.1 go away\r\n"),
            hear("QUIT\r\n"),
            say("221 bye\r\n"),
        ];
        let (stream, _, server) = fake(steps);
        let err = ClientSession::start(stream, "client.test", timeouts())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ClientError::Rejected { stage: Stage::Greeting, reply } if reply.code == 554),
            "{err}"
        );
        assert!(err.is_permanent());
        assert_eq!(err.enhanced(), Some(EnhancedCode::new(5, 7, 1)));
        assert_eq!(server.await.unwrap(), "");

        let (stream, _, server) = fake(vec![say("421 4.3.2 busy\r\n")]);
        let err = ClientSession::start(stream, "client.test", timeouts())
            .await
            .unwrap_err();
        assert!(!err.is_permanent(), "{err}");
        assert_eq!(server.await.unwrap(), "", "no QUIT after 421");
    }

    #[tokio::test]
    async fn pipelined_transaction_with_one_recipient_refused() {
        let message = b"Subject: hi\r\n\r\nhello\r\n";
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear(
                "MAIL FROM:<a@x.test> SIZE=22\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n\
                 RCPT TO:<d@y.test>\r\nDATA\r\n",
            ),
            say("250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go ahead\r\n"),
            hear("Subject: hi\r\n\r\nhello\r\n.\r\n"),
            say("250 2.0.0 queued as X\r\n"),
        ]);
        let (mut session, writes, server) = open(steps).await;
        let to = rcpts(&["b@y.test", "c@y.test", "d@y.test"]);
        let result = session.send(&outgoing(&to, message)).await.unwrap();
        assert_eq!(
            written(&writes),
            [
                "MAIL FROM:<a@x.test> SIZE=22\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\n\
                 RCPT TO:<d@y.test>\r\nDATA\r\n",
                "Subject: hi\r\n\r\nhello\r\n.\r\n"
            ],
            "one write for the whole group, then the data"
        );
        let outcomes: Vec<_> = result
            .recipients
            .iter()
            .map(|r| r.as_ref().map_or_else(|e| e.to_string(), |o| o.to_string()))
            .collect();
        assert_eq!(
            outcomes,
            ["250 2.1.5 ok", "550 5.1.1 no such user", "250 2.1.5 ok"]
        );
        assert!(result.recipients[0].is_ok() && result.recipients[1].is_err());
        assert_eq!(
            result.data.unwrap().unwrap().to_string(),
            "250 2.0.0 queued as X"
        );
        assert!(session.is_usable());
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn mail_parameters_follow_the_message_and_the_server() {
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<> SIZE=3 BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<ü@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n250 ok\r\n354 go\r\n"),
            hear("\u{e9}\r\n.\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["ü@y.test"]);
        let message = "é\n".as_bytes();
        let result = session
            .send(&Outgoing {
                sender: None,
                recipients: &to,
                size: message.len() as u64,
                body: BodyType::EightBitMime,
                smtputf8: false,
                message: &MessageOctets::in_memory(message.to_vec()),
                ret: None,
                envid: None,
                recipient_dsn: &[],
                requiretls: false,
                chunking: true,
            })
            .await
            .unwrap();
        assert!(result.data.unwrap().is_ok());
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_refused_mail_fails_the_transaction() {
        // Without pipelining nothing follows the refusal but RSET.
        let mut steps = hello(EHLO_PLAIN);
        steps.extend([
            hear("MAIL FROM:<a@x.test>\r\n"),
            say("550 5.7.1 sender refused\r\n"),
            hear("RSET\r\n"),
            say("250 2.0.0 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        let err = session.send(&outgoing(&to, b"x\r\n")).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Rejected { stage: Stage::Mail, reply } if reply.code == 550),
            "{err}"
        );
        assert!(err.is_permanent());
        assert!(session.is_usable());
        drop(session);
        assert_eq!(server.await.unwrap(), "");

        // Pipelined: the replies still owed are read, an unwanted 354 gets an empty
        // message, and the session stays in step.
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            say("451 4.3.0 try later\r\n503 5.5.1 no MAIL\r\n354 go\r\n"),
            hear(".\r\n"),
            say("554 5.5.1 no valid recipients\r\n"),
            hear("RSET\r\n"),
            say("250 2.0.0 ok\r\n"),
            hear("RSET\r\n"),
            say("250 2.0.0 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let err = session.send(&outgoing(&to, b"x\r\n")).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Rejected { stage: Stage::Mail, reply } if reply.code == 451),
            "{err}"
        );
        assert!(!err.is_permanent());
        session.reset().await.unwrap();
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn no_data_when_every_recipient_is_refused() {
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n550 5.1.1 no\r\n450 4.2.1 later\r\n554 5.5.1 no valid recipients\r\n"),
            hear("RSET\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, writes, server) = open(steps).await;
        let to = rcpts(&["b@y.test", "c@y.test"]);
        let result = session.send(&outgoing(&to, b"x\r\n")).await.unwrap();
        assert_eq!(result.data, None);
        let codes: Vec<_> = result
            .recipients
            .iter()
            .map(|r| r.as_ref().unwrap_err().code)
            .collect();
        assert_eq!(codes, [550, 450]);
        assert_eq!(
            written(&writes),
            [
                "MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n",
                "RSET\r\n"
            ],
            "no data sent"
        );
        drop(session);
        assert_eq!(server.await.unwrap(), "");

        // A server that says 354 anyway gets an empty message.
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n550 5.1.1 no\r\n354 go\r\n"),
            hear(".\r\n"),
            say("250 ok, nothing\r\n"),
            hear("RSET\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        let result = session.send(&outgoing(&to, b"x\r\n")).await.unwrap();
        assert_eq!(result.data, None);
        assert!(result.recipients[0].is_err());
        assert!(session.is_usable());
        drop(session);
        assert_eq!(server.await.unwrap(), "");

        // Without pipelining DATA is not even sent.
        let mut steps = hello(EHLO_PLAIN);
        steps.extend([
            hear("MAIL FROM:<a@x.test>\r\n"),
            say("250 ok\r\n"),
            hear("RCPT TO:<b@y.test>\r\n"),
            say("550 5.1.1 no\r\n"),
            hear("RSET\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let result = session.send(&outgoing(&to, b"x\r\n")).await.unwrap();
        assert_eq!(result.data, None);
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_refused_data_command_keeps_the_recipient_outcomes() {
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n250 ok\r\n550 5.1.1 no\r\n452 4.3.1 out of space\r\n"),
            hear("RSET\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["b@y.test", "c@y.test"]);
        let result = session.send(&outgoing(&to, b"x\r\n")).await.unwrap();
        assert!(result.recipients[0].is_ok() && result.recipients[1].is_err());
        assert_eq!(result.data.unwrap().unwrap_err().code, 452);
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn message_data_goes_out_stuffed_and_with_crlf() {
        let message = b"Subject: x\n\n.leading dot\n.\nlast line";
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear(format!(
                "MAIL FROM:<a@x.test> SIZE={}\r\nRCPT TO:<b@y.test>\r\nDATA\r\n",
                message.len()
            )),
            say("250 ok\r\n250 ok\r\n354 go\r\n"),
            hear("Subject: x\r\n\r\n..leading dot\r\n..\r\nlast line\r\n.\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        let result = session.send(&outgoing(&to, message)).await.unwrap();
        assert!(result.data.unwrap().is_ok());
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn bdat_sends_the_message_unstuffed_in_chunks_when_chunking_is_offered() {
        let ehlo = "250-mx.test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 DSN\r\n";
        let message = b"Subject: x\n\n.leading dot\n.\nlast line";
        let mut steps = hello(ehlo);
        steps.extend([
            hear("MAIL FROM:<a@x.test> RET=HDRS ENVID=id+2B1\r\nRCPT TO:<b@y.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+2Bx@y.test\r\n"),
            say("250 ok\r\n250 ok\r\n"),
            hear("BDAT 42 LAST\r\nSubject: x\r\n\r\n.leading dot\r\n.\r\nlast line\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        let dsn = [(Some("SUCCESS,FAILURE"), Some("rfc822;b+2Bx@y.test"))];
        let mut message = outgoing(&to, message);
        message.ret = Some("HDRS");
        message.envid = Some("id+2B1");
        message.recipient_dsn = &dsn;
        let result = session.send(&message).await.unwrap();
        assert!(result.data.unwrap().is_ok());
        assert!(result.dsn);
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_refused_chunk_ends_the_transaction() {
        let ehlo = "250-mx.test\r\n250 CHUNKING\r\n";
        let mut steps = hello(ehlo);
        steps.extend([
            hear("MAIL FROM:<a@x.test>\r\n"),
            say("250 ok\r\n"),
            hear("RCPT TO:<b@y.test>\r\n"),
            say("250 ok\r\n"),
            hear("BDAT 3 LAST\r\nx\r\n"),
            say("554 5.6.0 no\r\n"),
            hear("RSET\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        // Without DSN on offer the DSN parameters stay behind.
        let dsn = [(Some("NEVER"), None)];
        let mut message = outgoing(&to, b"x");
        message.size = 1;
        message.recipient_dsn = &dsn;
        message.ret = Some("FULL");
        let result = session.send(&message).await.unwrap();
        assert_eq!(result.data.unwrap().unwrap_err().code, 554);
        assert!(!result.dsn);
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn requiretls_is_never_sent_in_the_clear() {
        let ehlo = "250-mx.test\r\n250 REQUIRETLS\r\n";
        let (mut session, _, server) = open(hello(ehlo)).await;
        let to = rcpts(&["b@y.test"]);
        let mut message = outgoing(&to, b"x\r\n");
        message.requiretls = true;
        let err = session.send(&message).await.unwrap_err();
        assert_eq!(err.enhanced(), Some(REQUIRETLS_NEEDED), "{err}");
        assert!(err.is_permanent());
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_large_message_goes_out_in_bounded_writes() {
        let line = "0123456789".repeat(7) + "\r\n";
        let message = line.repeat(10_000); // 720,000 octets
        let mut steps = hello(EHLO_PLAIN);
        steps.extend([
            hear("MAIL FROM:<a@x.test>\r\n"),
            say("250 ok\r\n"),
            hear("RCPT TO:<b@y.test>\r\n"),
            say("250 ok\r\n"),
            hear("DATA\r\n"),
            say("354 go\r\n"),
            hear(message.clone() + ".\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, writes, server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        let result = session
            .send(&outgoing(&to, message.as_bytes()))
            .await
            .unwrap();
        assert!(result.data.unwrap().is_ok());
        let sizes: Vec<usize> = writes.lock().unwrap().iter().map(Vec::len).collect();
        assert!(sizes.iter().all(|&n| n <= 2 * DATA_CHUNK + 5), "{sizes:?}");
        assert!(sizes.len() > 20);
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn an_oversized_message_is_refused_before_sending() {
        let (mut session, writes, server) = open(hello(EHLO_FULL)).await;
        let to = rcpts(&["b@y.test"]);
        let big = vec![b'x'; 10_001];
        let err = session.send(&outgoing(&to, &big)).await.unwrap_err();
        assert!(matches!(&err, ClientError::Unsupported { .. }), "{err}");
        assert_eq!(err.enhanced(), Some(EnhancedCode::new(5, 3, 4)));
        assert!(err.is_permanent());
        assert!(written(&writes).is_empty());
        assert!(session.is_usable());
        drop(session);
        assert_eq!(server.await.unwrap(), "");

        // SIZE 0 means no limit.
        let mut steps = hello("250-mx.test\r\n250 SIZE 0\r\n");
        steps.extend([hear(format!("MAIL FROM:<a@x.test> SIZE={}\r\n", big.len()))]);
        steps.extend([
            say("451 not today\r\n"),
            hear("RSET\r\n"),
            say("250 ok\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let err = session.send(&outgoing(&to, &big)).await.unwrap_err();
        assert!(matches!(
            err,
            ClientError::Rejected {
                stage: Stage::Mail,
                ..
            }
        ));
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn missing_smtputf8_or_8bitmime_is_refused_before_sending() {
        let (mut session, writes, server) = open(hello(EHLO_PLAIN)).await;
        let ascii = rcpts(&["b@y.test"]);
        let message = outgoing(&ascii, b"x\r\n");

        let flagged = Outgoing {
            smtputf8: true,
            ..message
        };
        let err = session.send(&flagged).await.unwrap_err();
        assert_eq!(err.enhanced(), Some(EnhancedCode::new(5, 6, 7)), "{err}");
        assert!(err.is_permanent());

        let utf8 = rcpts(&["b@y.test", "bjørn@y.test"]);
        let err = session.send(&outgoing(&utf8, b"x\r\n")).await.unwrap_err();
        assert_eq!(err.enhanced(), Some(EnhancedCode::new(5, 6, 7)), "{err}");
        let err = session
            .send(&Outgoing {
                sender: Some("ñ@x.test"),
                ..message
            })
            .await
            .unwrap_err();
        assert_eq!(err.enhanced(), Some(EnhancedCode::new(5, 6, 7)), "{err}");

        let eight = Outgoing {
            body: BodyType::EightBitMime,
            ..message
        };
        let err = session.send(&eight).await.unwrap_err();
        assert!(matches!(&err, ClientError::Unsupported { .. }), "{err}");
        assert_eq!(err.enhanced(), Some(EnhancedCode::new(5, 6, 3)));
        assert!(err.is_permanent());

        // Line endings in an address would inject commands.
        let evil = rcpts(&["b@y.test>\r\nRCPT TO:<c@y.test"]);
        let err = session.send(&outgoing(&evil, b"x\r\n")).await.unwrap_err();
        assert_eq!(err.enhanced(), Some(EnhancedCode::new(5, 1, 3)), "{err}");

        assert!(written(&writes).is_empty());
        assert!(session.is_usable());
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_temporary_failure_at_the_end_of_data_is_transient() {
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n250 ok\r\n354 go\r\n"),
            hear("x\r\n.\r\n"),
            say("451-4.3.0 content scanner\r\n451 4.3.0 unavailable\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        let result = session.send(&outgoing(&to, b"x\r\n")).await.unwrap();
        let refusal = result.data.unwrap().unwrap_err();
        assert!(refusal.is_transient());
        assert_eq!(refusal.status(), EnhancedCode::new(4, 3, 0));
        assert_eq!(refusal.to_string(), "451 4.3.0 content scanner unavailable");
        assert!(
            session.is_usable(),
            "the transaction is over; no RSET needed"
        );
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn garbage_from_the_server_is_a_protocol_error() {
        let (stream, _, _server) = fake(vec![say("HTTP/1.1 400 Bad Request\r\n")]);
        let err = ClientSession::start(stream, "client.test", timeouts())
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                ClientError::Protocol {
                    stage: Stage::Greeting,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.is_permanent());

        // A reply that makes no sense where it comes.
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            say("354 what\r\n"),
        ]);
        let (mut session, _, _server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        let err = session.send(&outgoing(&to, b"x\r\n")).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ClientError::Protocol {
                    stage: Stage::Mail,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!session.is_usable());

        // An endless reply line.
        let (stream, _, _server) = fake(vec![say(format!("220 {}", "x".repeat(10_000)))]);
        let err = ClientSession::start(stream, "client.test", timeouts())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("too long"), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // The kernel completes the handshake; nobody ever speaks.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let short = Timeouts {
            greeting: SHORT,
            ..timeouts()
        };
        let err = ClientSession::connect(addr, "client.test", short)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ClientError::Timeout(Stage::Greeting)),
            "{err}"
        );
        assert!(!err.is_permanent());

        // Silence after the final dot.
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n250 ok\r\n354 go\r\n"),
            hear("x\r\n.\r\n"),
        ]);
        let (stream, _, server) = fake(steps);
        let short = Timeouts {
            data_end: SHORT,
            ..timeouts()
        };
        let mut session = ClientSession::start(stream, "client.test", short)
            .await
            .unwrap();
        let to = rcpts(&["b@y.test"]);
        let err = session.send(&outgoing(&to, b"x\r\n")).await.unwrap_err();
        assert!(matches!(err, ClientError::Timeout(Stage::DataEnd)), "{err}");
        assert_eq!(err.stage(), Some(Stage::DataEnd));
        assert!(!session.is_usable());
        let again = session.send(&outgoing(&to, b"x\r\n")).await.unwrap_err();
        assert!(matches!(again, ClientError::Unusable));
        drop(session);
        assert_eq!(server.await.unwrap(), "");
    }

    #[tokio::test]
    async fn a_refused_connection_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = ClientSession::connect(addr, "client.test", timeouts())
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Connect(_)), "{err}");
        assert!(!err.is_permanent());
    }

    #[tokio::test]
    async fn closing_421_ends_the_session() {
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=3\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n421 4.3.2 shutting down\r\n"),
        ]);
        let (mut session, _, server) = open(steps).await;
        let to = rcpts(&["b@y.test"]);
        let err = session.send(&outgoing(&to, b"x\r\n")).await.unwrap_err();
        assert!(
            matches!(&err, ClientError::Rejected { stage: Stage::Rcpt, reply } if reply.code == 421),
            "{err}"
        );
        assert!(!err.is_permanent());
        assert!(!session.is_usable());
        session.quit().await;
        assert_eq!(server.await.unwrap(), "", "no QUIT on a closing connection");
    }

    /// A server that answers each command as it reads it, as a real one does.
    async fn answering(stream: DuplexStream, refuse_recipients: bool) {
        use tokio::io::AsyncBufReadExt;
        let mut stream = tokio::io::BufReader::new(stream);
        stream
            .get_mut()
            .write_all(GREETING.as_bytes())
            .await
            .unwrap();
        let mut line = String::new();
        loop {
            line.clear();
            if stream.read_line(&mut line).await.unwrap() == 0 {
                return;
            }
            let reply = match &line[..4] {
                "EHLO" => EHLO_FULL,
                "RCPT" if refuse_recipients => "550 5.1.1 no\r\n",
                "DATA" if refuse_recipients => "554 5.5.1 no valid recipients\r\n",
                "DATA" => {
                    stream.get_mut().write_all(b"354 go\r\n").await.unwrap();
                    while line != ".\r\n" {
                        line.clear();
                        stream.read_line(&mut line).await.unwrap();
                    }
                    "250 ok\r\n"
                }
                "QUIT" => "221 bye\r\n",
                _ => "250 ok\r\n",
            };
            stream.get_mut().write_all(reply.as_bytes()).await.unwrap();
        }
    }

    #[tokio::test]
    async fn long_recipient_lists_go_in_bounded_groups() {
        // Each RCPT line is 64 octets; MAIL is 29: 256 RCPTs end the first group exactly.
        let address = |i: usize| format!("r{i:0>44}@y.test");
        assert_eq!(format!("RCPT TO:<{}>\r\n", address(0)).len(), 64);

        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(answering(server, false));
        let writes = Writes::default();
        let stream = Recording {
            inner: client,
            writes: writes.clone(),
        };
        let mut session = ClientSession::start(stream, "client.test", timeouts())
            .await
            .unwrap();
        writes.lock().unwrap().clear();
        let to: Vec<String> = (0..1000).map(address).collect();
        let result = session.send(&outgoing(&to, b"x\r\n")).await.unwrap();
        assert!(result.recipients.iter().all(Result::is_ok));
        assert!(result.data.unwrap().is_ok());
        let groups: Vec<String> = written(&writes)
            .into_iter()
            .filter(|w| w.starts_with("MAIL") || w.starts_with("RCPT"))
            .collect();
        assert_eq!(groups.len(), 4, "1,000 recipients in 16 KiB groups");
        assert!(groups.iter().all(|g| g.len() < PIPELINE_GROUP + 64));
        assert!(groups[3].ends_with("DATA\r\n"));
        session.quit().await;

        // When DATA would start a group and every RCPT is known refused, it is not sent.
        let (client, server) = tokio::io::duplex(1 << 20);
        tokio::spawn(answering(server, true));
        let writes = Writes::default();
        let stream = Recording {
            inner: client,
            writes: writes.clone(),
        };
        let mut session = ClientSession::start(stream, "client.test", timeouts())
            .await
            .unwrap();
        writes.lock().unwrap().clear();
        let to: Vec<String> = (0..256).map(address).collect();
        let result = session.send(&outgoing(&to, b"x\r\n")).await.unwrap();
        assert!(result.recipients.iter().all(Result::is_err));
        assert_eq!(result.data, None);
        let writes = written(&writes);
        assert_eq!(writes.len(), 2, "one group, then RSET");
        assert!(writes[0].ends_with(&format!("<{}>\r\n", address(255))));
        assert_eq!(writes[1], "RSET\r\n");
        session.quit().await;
    }

    #[tokio::test]
    async fn two_transactions_on_one_connection() {
        let mut steps = hello(EHLO_FULL);
        steps.extend([
            hear("MAIL FROM:<a@x.test> SIZE=6\r\nRCPT TO:<b@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n250 ok\r\n354 go\r\n"),
            hear("first\r\n.\r\n"),
            say("250 2.0.0 one\r\n"),
            hear("MAIL FROM:<a@x.test> SIZE=8\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"),
            say("250 ok\r\n250 ok\r\n354 go\r\n"),
            hear("second\r\n.\r\n"),
            say("250 2.0.0 two\r\n"),
            hear("QUIT\r\n"),
            say("221 2.0.0 bye\r\n"),
        ]);
        let (addr, server) = serve_tcp(steps).await;
        let mut session = ClientSession::connect(addr, "client.test", timeouts())
            .await
            .unwrap();
        let first = rcpts(&["b@y.test"]);
        let result = session.send(&outgoing(&first, b"first\n")).await.unwrap();
        assert_eq!(result.data.unwrap().unwrap().text, "one");
        let second = rcpts(&["c@y.test"]);
        let result = session
            .send(&outgoing(&second, b"second\r\n"))
            .await
            .unwrap();
        assert_eq!(result.data.unwrap().unwrap().text, "two");
        session.quit().await;
        assert_eq!(server.await.unwrap(), "");
    }
}
