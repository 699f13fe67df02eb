//! A receiving SMTP server for end-to-end tests: the "next hop" Tidegate delivers to.
//!
//! [`SinkServer`] is a small but real SMTP server (RFC 5321) on plain blocking
//! `std::net`, one thread per connection. It speaks EHLO/HELO, MAIL, RCPT, DATA (with
//! dot-unstuffing; only `CRLF.CRLF` ends the data), BDAT when it offers CHUNKING (RFC
//! 3030), RSET, NOOP, QUIT and, when given a certificate, STARTTLS (RFC 3207), takes the
//! DSN (RFC 3461) and REQUIRETLS (RFC 8689) parameters when it offers them, answers
//! pipelined commands in order, and records
//! everything a test may want to assert on: the accepted messages (and whether each came
//! inside TLS), the number of connections, and every command line.
//!
//! Its [`Behaviour`] is chosen up front: which extensions it advertises, which recipients
//! it refuses, how many DATA transactions it defers, what it greets with, whether it
//! offers STARTTLS.
//!
//! ```ignore
//! let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
//! // ... point the gateway at sink.addr() and send it a message ...
//! let messages = sink.wait_for(1, PATIENCE);
//! assert_eq!(messages[0].rcpt_to, ["user@example.test"]);
//! ```
//!
//! Replies to pipelined commands are collected and written together once no further
//! complete command is buffered (as Postfix does), so a pipelining client sees several
//! replies in one read. The server is deliberately strict where a strict peer finds
//! client bugs: it wants HELO/EHLO before MAIL, refuses MAIL parameters it did not
//! advertise (555 5.5.4), refuses non-ASCII addresses without `SMTPUTF8` (553 5.6.7) and
//! command lines with a bare CR or LF (500 5.5.2).

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The host name the sink greets with and gives in its EHLO reply.
pub const SINK_HOSTNAME: &str = "sink.example.test";

/// The longest command line (without CRLF) the sink reads before it answers 500 and
/// closes; generous, so a client is only caught out by a runaway line.
const MAX_COMMAND_LINE: usize = 64 * 1024;

/// How often blocked reads and accepts look at the stop flag.
const POLL: Duration = Duration::from_millis(20);

/// How long the sink waits for a client to finish the TLS handshake after STARTTLS.
const HANDSHAKE_TIMEOUT: Duration = crate::PATIENCE;

/// How the sink behaves. [`Default`] accepts everything and advertises `PIPELINING`,
/// `SIZE`, `8BITMIME`, `SMTPUTF8` and `ENHANCEDSTATUSCODES` (no `STARTTLS`: the command
/// gets 502 unless [`Behaviour::starttls`] gave a certificate).
#[derive(Debug, Clone)]
pub struct Behaviour {
    pipelining: bool,
    smtputf8: bool,
    eightbitmime: bool,
    max_size: Option<u64>,
    tempfail_data_first: usize,
    rcpt_rules: Vec<RcptRule>,
    greeting: u16,
    delay_data_reply: Option<Duration>,
    reply_delay: Option<Duration>,
    hostname: String,
    ehlo_name: Option<String>,
    starttls_refusal: Option<String>,
    tls: Option<Arc<rustls::ServerConfig>>,
    dsn: bool,
    chunking: bool,
    requiretls: bool,
}

/// A fixed reply for one recipient address.
#[derive(Debug, Clone)]
struct RcptRule {
    address: String,
    code: u16,
    enhanced: String,
    text: &'static str,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            pipelining: true,
            smtputf8: true,
            eightbitmime: true,
            max_size: None,
            tempfail_data_first: 0,
            rcpt_rules: Vec::new(),
            greeting: 220,
            delay_data_reply: None,
            reply_delay: None,
            hostname: SINK_HOSTNAME.to_owned(),
            ehlo_name: None,
            starttls_refusal: None,
            tls: None,
            dsn: false,
            chunking: false,
            requiretls: false,
        }
    }
}

impl Behaviour {
    /// Does not advertise `PIPELINING` (commands still get answered in order if a client
    /// pipelines anyway; [`SinkServer::command_batches`] shows whether it did).
    pub fn no_pipelining(mut self) -> Self {
        self.pipelining = false;
        self
    }

    /// Does not advertise `SMTPUTF8`: the `SMTPUTF8` MAIL parameter gets 555 5.5.4, and a
    /// non-ASCII address 553 5.6.7 (RFC 6531 §3.5).
    pub fn no_smtputf8(mut self) -> Self {
        self.smtputf8 = false;
        self
    }

    /// Does not advertise `8BITMIME`: `BODY=8BITMIME` gets 555 5.5.4.
    pub fn no_8bitmime(mut self) -> Self {
        self.eightbitmime = false;
        self
    }

    /// Advertises `SIZE n` and enforces it: a larger `SIZE=` on MAIL, or more than `n`
    /// octets of (unstuffed) data, gets 552 5.3.4. Without it the sink advertises a bare
    /// `SIZE` (no fixed limit, RFC 1870).
    pub fn max_size(mut self, n: u64) -> Self {
        self.max_size = Some(n);
        self
    }

    /// The first `n` DATA transactions (counted over all connections) end with
    /// `451 4.3.0 try later` and the message is not recorded; later ones get 250.
    pub fn tempfail_data_first(mut self, n: usize) -> Self {
        self.tempfail_data_first = n;
        self
    }

    /// `RCPT TO:<address>` (compared ignoring ASCII case) gets `code enhanced ...`, e.g.
    /// `reject_rcpt("nobody@example.test", 550, "5.1.1")`.
    pub fn reject_rcpt(self, address: &str, code: u16, enhanced: &str) -> Self {
        self.reply_rcpt(address, code, enhanced, "Recipient address rejected")
    }

    /// `RCPT TO:<address>` gets `code enhanced text`.
    pub fn reply_rcpt(
        mut self,
        address: &str,
        code: u16,
        enhanced: &str,
        text: &'static str,
    ) -> Self {
        self.rcpt_rules.push(RcptRule {
            address: address.to_owned(),
            code,
            enhanced: enhanced.to_owned(),
            text,
        });
        self
    }

    /// `RCPT TO:<address>` gets `450 4.2.1 Mailbox temporarily unavailable`.
    pub fn tempfail_rcpt(self, address: &str) -> Self {
        self.reply_rcpt(address, 450, "4.2.1", "Mailbox temporarily unavailable")
    }

    /// Greets with this code instead of 220; any code other than 220 (e.g. 421 or 554)
    /// is followed by closing the connection without reading a command.
    pub fn greeting(mut self, code: u16) -> Self {
        self.greeting = code;
        self
    }

    /// Sleeps this long after the final dot of DATA before answering it (a window in
    /// which a test can kill the sending gateway). The message is recorded when the reply
    /// is written, whether or not the client is still there to read it: like a real
    /// server that committed the message.
    pub fn delay_data_reply(mut self, d: Duration) -> Self {
        self.delay_data_reply = Some(d);
        self
    }

    /// A tarpit: waits this long before each write of replies (the greeting, and each
    /// batch of answers), as a slow or overloaded server does.
    pub fn reply_delay(mut self, d: Duration) -> Self {
        self.reply_delay = Some(d);
        self
    }

    /// Calls itself `name` in its greeting and EHLO/HELO reply instead of
    /// [`SINK_HOSTNAME`].
    pub fn hostname(mut self, name: &str) -> Self {
        self.hostname = name.to_owned();
        self
    }

    /// Calls itself `name` in its EHLO/HELO reply only (the greeting keeps the host name).
    pub fn ehlo_name(mut self, name: &str) -> Self {
        self.ehlo_name = Some(name.to_owned());
        self
    }

    /// Advertises STARTTLS but answers the command with this reply line (e.g.
    /// `554 5.7.3 TLS not available`), as a server with a broken TLS setup does.
    pub fn refuse_starttls(mut self, reply: &str) -> Self {
        self.starttls_refusal = Some(reply.to_owned());
        self
    }

    /// Offers STARTTLS (RFC 3207) with this certificate chain (PEM, the sink's own
    /// certificate first) and private key (PEM: PKCS#8, PKCS#1 or SEC1). EHLO advertises
    /// `STARTTLS` until TLS is in use; the command gets `220 2.0.0 Ready to start TLS`,
    /// anything the client pipelined after it is discarded unanswered (it came in the
    /// clear), the server handshake follows (TLS 1.2 and 1.3, no client certificates), and
    /// the session starts over inside TLS: HELO/EHLO is required again. Panics if the
    /// files cannot be read or do not hold a usable certificate and key.
    pub fn starttls(mut self, cert_pem_path: &Path, key_pem_path: &Path) -> Self {
        self.tls = Some(server_tls_config(cert_pem_path, key_pem_path, false));
        self
    }

    /// [`starttls`](Behaviour::starttls), and the handshake requires a client certificate:
    /// any certificate is accepted (its handshake signature is checked) and recorded in
    /// [`ReceivedMessage::client_certificate`]; a client without one fails the handshake.
    pub fn starttls_requiring_client_certificate(
        mut self,
        cert_pem_path: &Path,
        key_pem_path: &Path,
    ) -> Self {
        self.tls = Some(server_tls_config(cert_pem_path, key_pem_path, true));
        self
    }

    /// Advertises `DSN` (RFC 3461) and takes `RET`/`ENVID` on MAIL and `NOTIFY`/`ORCPT`
    /// on RCPT (recorded as given, not checked further).
    pub fn dsn(mut self) -> Self {
        self.dsn = true;
        self
    }

    /// Advertises `CHUNKING` (RFC 3030) and takes `BDAT n [LAST]`; the chunk sizes are
    /// recorded in [`ReceivedMessage::chunks`].
    pub fn chunking(mut self) -> Self {
        self.chunking = true;
        self
    }

    /// Advertises `REQUIRETLS` (RFC 8689) inside TLS, and takes the MAIL parameter there
    /// (outside TLS it gets 555 5.5.4, as an unadvertised parameter does).
    pub fn requiretls(mut self) -> Self {
        self.requiretls = true;
        self
    }

    fn rcpt_rule(&self, address: &str) -> Option<&RcptRule> {
        self.rcpt_rules
            .iter()
            .find(|rule| rule.address.eq_ignore_ascii_case(address))
    }
}

/// A message the sink accepted with 250 after DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The name given in the last HELO/EHLO of the connection.
    pub helo: String,
    /// The reverse path inside the brackets; empty for `<>`.
    pub mail_from: String,
    /// The MAIL parameters exactly as given, e.g. `["SIZE=1234", "BODY=8BITMIME"]`.
    pub mail_params: Vec<String>,
    /// The accepted recipients (inside the brackets), in order; refused ones are absent.
    pub rcpt_to: Vec<String>,
    /// The RCPT parameters of each accepted recipient exactly as given, in the order of
    /// `rcpt_to`, e.g. `[["NOTIFY=SUCCESS", "ORCPT=rfc822;a@b.test"]]`.
    pub rcpt_params: Vec<Vec<String>>,
    /// The sizes of the BDAT chunks the message came in; empty when it came with DATA.
    pub chunks: Vec<usize>,
    /// The message octets, un-dot-stuffed, without the terminating `.` line.
    pub data: Vec<u8>,
    /// The connection it came over: 1 for the first the sink accepted, and so on.
    pub connection: usize,
    /// Whether it came inside TLS (after STARTTLS).
    pub tls: bool,
    /// The address the connection came from.
    pub peer: Option<SocketAddr>,
    /// The DER of the certificate the client presented in the TLS handshake, if any.
    pub client_certificate: Option<Vec<u8>>,
}

impl ReceivedMessage {
    /// The data as text (lossily decoded).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

/// What all connection threads share.
#[derive(Default)]
struct State {
    messages: Vec<ReceivedMessage>,
    transcript: Vec<String>,
    batches: Vec<Vec<String>>,
    connections: usize,
    data_transactions: usize,
    queued: usize,
    /// Clones of the open connections, to shut them down on stop.
    open: Vec<(usize, TcpStream)>,
    threads: Vec<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    stop: AtomicBool,
    behaviour: Behaviour,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking connection thread must not hide what was recorded before.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// A running sink; stops (closing its port and its connections) when dropped.
pub struct SinkServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl SinkServer {
    /// Binds `bind` (e.g. `127.0.0.1:0`, or a fixed `127.0.0.3:2526`) and starts
    /// accepting connections. Panics if the address cannot be bound.
    pub fn start(bind: SocketAddr, behaviour: Behaviour) -> SinkServer {
        let listener =
            TcpListener::bind(bind).unwrap_or_else(|e| panic!("sink cannot bind {bind}: {e}"));
        let addr = listener.local_addr().expect("sink local address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            behaviour,
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name(format!("sink-{addr}"))
                .spawn(move || accept_loop(&listener, &shared))
                .expect("spawn sink thread")
        };
        SinkServer {
            addr,
            shared,
            acceptor: Some(acceptor),
        }
    }

    /// The address the sink listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every message accepted so far, in the order the 250s were given.
    pub fn received(&self) -> Vec<ReceivedMessage> {
        self.shared.lock().messages.clone()
    }

    /// Waits until at least `count` messages have been accepted and returns all of them;
    /// panics after `within`, saying what did arrive.
    #[track_caller]
    pub fn wait_for(&self, count: usize, within: Duration) -> Vec<ReceivedMessage> {
        let deadline = Instant::now() + within;
        let mut state = self.shared.lock();
        while state.messages.len() < count {
            let now = Instant::now();
            if now >= deadline {
                let tail = state.transcript.len().saturating_sub(40);
                panic!(
                    "sink {} received {} of {count} messages within {within:?} \
                     ({} connections); messages: {:#?}\nlast commands: {:#?}",
                    self.addr,
                    state.messages.len(),
                    state.connections,
                    state.messages,
                    &state.transcript[tail..],
                );
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        state.messages.clone()
    }

    /// The number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// The number of connections open now (accepted and not yet closed by the client).
    pub fn open_connections(&self) -> usize {
        self.shared.lock().open.len()
    }

    /// Every command line received (without its CRLF), over all connections, in the
    /// order they were read. Message data is not included, nor are lines a client
    /// pipelined after STARTTLS (discarded unread).
    pub fn transcript(&self) -> Vec<String> {
        self.shared.lock().transcript.clone()
    }

    /// The command lines grouped by arrival: lines that were already buffered together
    /// when the sink read from the socket form one group. A client that waits for each
    /// reply produces only one-line groups; a group of several lines means it pipelined.
    pub fn command_batches(&self) -> Vec<Vec<String>> {
        self.shared.lock().batches.clone()
    }

    /// Stops accepting, closes the port and every open connection, and waits for the
    /// sink's threads to end. Dropping the server does the same.
    pub fn stop(self) {}

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
        let (open, threads) = {
            let mut state = self.shared.lock();
            (
                std::mem::take(&mut state.open),
                std::mem::take(&mut state.threads),
            )
        };
        for (_, stream) in open {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for thread in threads {
            let _ = thread.join();
        }
    }
}

impl Drop for SinkServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for SinkServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((stream, _)) => {
                let mut state = shared.lock();
                state.connections += 1;
                let number = state.connections;
                if let Ok(clone) = stream.try_clone() {
                    state.open.push((number, clone));
                }
                let thread_shared = Arc::clone(shared);
                let thread = std::thread::Builder::new()
                    .name(format!("sink-conn-{number}"))
                    .spawn(move || {
                        serve(stream, number, &thread_shared);
                        thread_shared.lock().open.retain(|(n, _)| *n != number);
                    })
                    .expect("spawn sink connection thread");
                state.threads.push(thread);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                std::thread::sleep(Duration::from_millis(5));
            }
            // Transient accept errors (e.g. a connection reset before it was accepted).
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
    // The listener is dropped by the caller's thread ending: the port closes.
}

/// The envelope of the transaction in progress.
#[derive(Debug, Default)]
struct Transaction {
    mail_from: String,
    mail_params: Vec<String>,
    smtputf8: bool,
    rcpt_to: Vec<String>,
    rcpt_params: Vec<Vec<String>>,
    /// The BDAT data so far, and each chunk's size.
    chunked: Vec<u8>,
    chunks: Vec<usize>,
}

/// A BDAT chunk being read: how many octets are still to come, whether it is the last,
/// and whether it is to be thrown away (the command was refused, RFC 3030 §2: its octets
/// are read all the same).
#[derive(Debug)]
struct Chunk {
    remaining: usize,
    last: bool,
    discard: Option<String>,
}

/// The message being read after a 354.
#[derive(Debug, Default)]
struct Data {
    bytes: Vec<u8>,
    /// The unstuffed size, counted even once over the limit.
    size: u64,
}

/// One connection's SMTP session.
struct Session<'a> {
    shared: &'a Shared,
    behaviour: &'a Behaviour,
    connection: usize,
    helo: Option<String>,
    transaction: Option<Transaction>,
    data: Option<Data>,
    out: Vec<u8>,
    closing: bool,
    /// Whether the connection is inside TLS.
    tls: bool,
    /// The client's certificate (DER), if it presented one.
    client_certificate: Option<Vec<u8>>,
    /// STARTTLS was answered with 220: the handshake comes once the reply is out.
    upgrade: bool,
    /// The client's address.
    peer: Option<SocketAddr>,
    /// A BDAT chunk whose octets are being read.
    chunk: Option<Chunk>,
}

/// A connection's stream: plain TCP, or TLS over it after STARTTLS.
enum SinkStream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl SinkStream {
    fn tcp(&self) -> &TcpStream {
        match self {
            SinkStream::Plain(tcp) => tcp,
            SinkStream::Tls(tls) => &tls.sock,
        }
    }

    /// Writes all of `bytes` out to the socket.
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)?;
        self.flush()
    }

    /// Closes the connection; inside TLS with a `close_notify` alert first, so the client
    /// sees a clean end of the encrypted stream rather than a truncation.
    fn close(&mut self) {
        if let SinkStream::Tls(tls) = self {
            tls.conn.send_close_notify();
            while tls.conn.wants_write() {
                match tls.conn.write_tls(&mut tls.sock) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

impl Read for SinkStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            SinkStream::Plain(s) => s.read(buf),
            SinkStream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for SinkStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SinkStream::Plain(s) => s.write(buf),
            SinkStream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SinkStream::Plain(s) => s.flush(),
            SinkStream::Tls(s) => s.flush(),
        }
    }
}

/// The server configuration for STARTTLS: ring, TLS 1.2 and 1.3, no client certificates,
/// the chain and key from the PEM files. Panics on unreadable or unusable files.
fn server_tls_config(
    cert_pem_path: &Path,
    key_pem_path: &Path,
    client_certificate: bool,
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let chain = CertificateDer::pem_file_iter(cert_pem_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .unwrap_or_else(|e| panic!("sink certificate chain {}: {e}", cert_pem_path.display()));
    assert!(
        !chain.is_empty(),
        "sink certificate chain {}: no certificate in it",
        cert_pem_path.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_pem_path)
        .unwrap_or_else(|e| panic!("sink private key {}: {e}", key_pem_path.display()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .expect("TLS 1.2 and 1.3 with the ring provider");
    let builder = if client_certificate {
        builder.with_client_cert_verifier(Arc::new(AnyClientCertificate { provider }))
    } else {
        builder.with_no_client_auth()
    };
    let config = builder.with_single_cert(chain, key).unwrap_or_else(|e| {
        panic!(
            "sink certificate {} and key {}: {e}",
            cert_pem_path.display(),
            key_pem_path.display()
        )
    });
    Arc::new(config)
}

/// Requires a client certificate and accepts any (the test looks at what was presented);
/// the handshake signatures are verified, so the client must hold the certificate's key.
#[derive(Debug)]
struct AnyClientCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::server::danger::ClientCertVerifier for AnyClientCertificate {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        Ok(rustls::server::danger::ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server side of the TLS handshake after the 220 to STARTTLS went out; `None` if it
/// failed, did not finish within [`HANDSHAKE_TIMEOUT`], or the sink is stopping.
fn accept_tls(
    tcp: TcpStream,
    config: &Arc<rustls::ServerConfig>,
    shared: &Shared,
) -> Option<SinkStream> {
    let connection = rustls::ServerConnection::new(Arc::clone(config)).ok()?;
    let mut tls = rustls::StreamOwned::new(connection, tcp);
    let deadline = Instant::now() + HANDSHAKE_TIMEOUT;
    while tls.conn.is_handshaking() {
        if shared.stopped() || Instant::now() >= deadline {
            let _ = tls.sock.shutdown(Shutdown::Both);
            return None;
        }
        // Reads time out every POLL (the socket's read timeout), to look at the flag.
        match tls.conn.complete_io(&mut tls.sock) {
            // Nothing to do while still handshaking: the client has given up (close_notify).
            Ok((0, 0)) => {
                let _ = tls.sock.shutdown(Shutdown::Both);
                return None;
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(_) => {
                let _ = tls.sock.shutdown(Shutdown::Both);
                return None;
            }
        }
    }
    Some(SinkStream::Tls(Box::new(tls)))
}

fn serve(tcp: TcpStream, connection: usize, shared: &Shared) {
    let _ = tcp.set_nonblocking(false);
    let _ = tcp.set_read_timeout(Some(POLL));
    let behaviour = &shared.behaviour;
    if behaviour.greeting != 220 {
        let mut tcp = tcp;
        let _ = write!(
            tcp,
            "{} {} Service not available, closing transmission channel\r\n",
            behaviour.greeting, behaviour.hostname
        );
        let _ = tcp.shutdown(Shutdown::Both);
        return;
    }
    let peer = tcp.peer_addr().ok();
    let mut stream = SinkStream::Plain(tcp);
    let mut session = Session {
        peer,
        shared,
        behaviour,
        connection,
        helo: None,
        transaction: None,
        data: None,
        out: format!("220 {} ESMTP Tidegate test sink\r\n", behaviour.hostname).into_bytes(),
        closing: false,
        tls: false,
        client_certificate: None,
        upgrade: false,
        chunk: None,
    };
    let mut input: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut batch = Vec::new();
        while !session.closing && !session.upgrade {
            if let Some(chunk) = &mut session.chunk {
                let n = chunk.remaining.min(input.len());
                let octets: Vec<u8> = input.drain(..n).collect();
                chunk.remaining -= n;
                let done = chunk.remaining == 0;
                session.chunk_octets(&octets, done);
                if !done {
                    break;
                }
                continue;
            }
            let Some(pos) = input.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line: Vec<u8> = input.drain(..pos + 2).collect();
            if session.data.is_some() {
                if line == b".\r\n" {
                    session.end_of_data(&mut stream);
                } else {
                    session.data_line(&line);
                }
            } else {
                let line = String::from_utf8_lossy(&line[..pos]).into_owned();
                {
                    let mut state = shared.lock();
                    state.transcript.push(line.clone());
                }
                batch.push(line.clone());
                session.command(&line);
            }
        }
        if !batch.is_empty() {
            shared.lock().batches.push(batch);
        }
        if session.data.is_none()
            && session.chunk.is_none()
            && !session.closing
            && !session.upgrade
            && input.len() > MAX_COMMAND_LINE
        {
            session.reply("500 5.5.6 Line too long");
            session.closing = true;
        }
        if let Some(delay) = behaviour.reply_delay
            && !session.out.is_empty()
        {
            // Slept in small steps, so a stopped sink does not wait out the whole delay.
            let until = Instant::now() + delay;
            while Instant::now() < until && !shared.stopped() {
                std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
            }
        }
        if stream.send(&session.out).is_err() {
            return;
        }
        session.out.clear();
        if session.closing {
            stream.close();
            return;
        }
        if session.upgrade {
            // Whatever was pipelined after STARTTLS came in the clear: RFC 3207 §4.2 says
            // it must not count inside TLS, so it is dropped unanswered.
            input.clear();
            let (SinkStream::Plain(tcp), Some(config)) = (stream, &behaviour.tls) else {
                return;
            };
            let Some(tls) = accept_tls(tcp, config, shared) else {
                return;
            };
            if let SinkStream::Tls(tls) = &tls {
                session.client_certificate = tls
                    .conn
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| c.to_vec());
            }
            stream = tls;
            session.start_over_in_tls();
        }
        // Wait for more input, looking at the stop flag now and then.
        loop {
            if shared.stopped() {
                stream.close();
                return;
            }
            match stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    input.extend_from_slice(&chunk[..n]);
                    break;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                    ) => {}
                Err(_) => return,
            }
        }
    }
}

impl Session<'_> {
    fn reply(&mut self, line: &str) {
        self.out.extend_from_slice(line.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn command(&mut self, line: &str) {
        if line.contains(['\r', '\n']) {
            self.reply("500 5.5.2 Bare CR or LF in a command line");
            return;
        }
        let (verb, rest) = match line.split_once(' ') {
            Some((verb, rest)) => (verb, rest),
            None => (line, ""),
        };
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" => self.hello(rest, true),
            "HELO" => self.hello(rest, false),
            "MAIL" => self.mail(line),
            "RCPT" => self.rcpt(line),
            "DATA" => self.data_command(rest),
            "RSET" => {
                self.transaction = None;
                self.reply("250 2.0.0 Ok");
            }
            "NOOP" => self.reply("250 2.0.0 Ok"),
            "QUIT" => {
                let name = self.behaviour.hostname.clone();
                self.reply(&format!("221 2.0.0 {name} closing transmission channel"));
                self.closing = true;
            }
            "VRFY" => self.reply("252 2.5.0 Cannot VRFY user, but will accept message"),
            "STARTTLS" => self.starttls(rest),
            "BDAT" if self.behaviour.chunking => self.bdat(rest),
            "BDAT" | "AUTH" | "ETRN" | "EXPN" | "TURN" => {
                self.reply("502 5.5.1 Command not implemented");
            }
            _ => self.reply("500 5.5.2 Command unrecognized"),
        }
    }

    fn starttls(&mut self, rest: &str) {
        if let Some(refusal) = &self.behaviour.starttls_refusal {
            let refusal = refusal.clone();
            self.reply(&refusal);
        } else if self.behaviour.tls.is_none() {
            self.reply("502 5.5.1 Command not implemented");
        } else if !rest.trim().is_empty() {
            self.reply("501 5.5.4 Syntax: STARTTLS");
        } else if self.tls {
            self.reply("503 5.5.1 Error: already using TLS");
        } else {
            self.reply("220 2.0.0 Ready to start TLS");
            self.upgrade = true;
        }
    }

    /// After the handshake: everything learnt in the clear is forgotten (RFC 3207 §4.2).
    fn start_over_in_tls(&mut self) {
        self.helo = None;
        self.transaction = None;
        self.data = None;
        self.tls = true;
        self.upgrade = false;
    }

    fn hello(&mut self, rest: &str, extended: bool) {
        let name = rest.trim();
        if name.is_empty() || name.contains(' ') {
            let verb = if extended { "EHLO" } else { "HELO" };
            self.reply(&format!("501 5.5.4 Syntax: {verb} hostname"));
            return;
        }
        self.helo = Some(name.to_owned());
        self.transaction = None;
        let b = self.behaviour;
        let own_name = b.ehlo_name.clone().unwrap_or_else(|| b.hostname.clone());
        if !extended {
            self.reply(&format!("250 {own_name}"));
            return;
        }
        let mut lines = vec![own_name];
        if b.pipelining {
            lines.push("PIPELINING".into());
        }
        lines.push(match b.max_size {
            Some(n) => format!("SIZE {n}"),
            None => "SIZE".into(),
        });
        if b.eightbitmime {
            lines.push("8BITMIME".into());
        }
        if b.smtputf8 {
            lines.push("SMTPUTF8".into());
        }
        if (b.tls.is_some() || b.starttls_refusal.is_some()) && !self.tls {
            lines.push("STARTTLS".into());
        }
        if b.dsn {
            lines.push("DSN".into());
        }
        if b.chunking {
            lines.push("CHUNKING".into());
        }
        if b.requiretls && self.tls {
            lines.push("REQUIRETLS".into());
        }
        lines.push("ENHANCEDSTATUSCODES".into());
        let last = lines.len() - 1;
        for (i, text) in lines.iter().enumerate() {
            let separator = if i == last { ' ' } else { '-' };
            self.reply(&format!("250{separator}{text}"));
        }
    }

    fn mail(&mut self, line: &str) {
        let Some(rest) = strip_prefix_ignore_case(line, "MAIL FROM:") else {
            self.reply("501 5.5.4 Syntax: MAIL FROM:<address>");
            return;
        };
        if self.helo.is_none() {
            self.reply("503 5.5.1 Error: send HELO/EHLO first");
            return;
        }
        if self.transaction.is_some() {
            self.reply("503 5.5.1 Error: nested MAIL command");
            return;
        }
        let Some((address, params)) = parse_path(rest) else {
            self.reply("501 5.1.7 Bad sender address syntax");
            return;
        };
        let b = self.behaviour;
        let mut smtputf8 = false;
        for param in &params {
            let (keyword, value) = match param.split_once('=') {
                Some((k, v)) => (k.to_ascii_uppercase(), Some(v)),
                None => (param.to_ascii_uppercase(), None),
            };
            match (keyword.as_str(), value) {
                ("SIZE", Some(value)) => match value.parse::<u64>() {
                    Ok(size) if b.max_size.is_some_and(|max| size > max) => {
                        self.reply("552 5.3.4 Message size exceeds fixed limit");
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        self.reply("501 5.5.4 Bad SIZE parameter");
                        return;
                    }
                },
                ("BODY", Some(value)) if value.eq_ignore_ascii_case("7BIT") => {}
                ("BODY", Some(value))
                    if value.eq_ignore_ascii_case("8BITMIME") && b.eightbitmime => {}
                ("SMTPUTF8", None) if b.smtputf8 => smtputf8 = true,
                ("RET" | "ENVID", Some(_)) if b.dsn => {}
                ("REQUIRETLS", None) if b.requiretls && self.tls => {}
                _ => {
                    self.reply(&format!("555 5.5.4 Unsupported parameter {param}"));
                    return;
                }
            }
        }
        if !address.is_ascii() && !smtputf8 {
            self.reply("553 5.6.7 Non-ASCII address without SMTPUTF8");
            return;
        }
        self.transaction = Some(Transaction {
            mail_from: address,
            mail_params: params,
            smtputf8,
            ..Transaction::default()
        });
        self.reply("250 2.1.0 Ok");
    }

    fn rcpt(&mut self, line: &str) {
        let Some(rest) = strip_prefix_ignore_case(line, "RCPT TO:") else {
            self.reply("501 5.5.4 Syntax: RCPT TO:<address>");
            return;
        };
        let Some(transaction) = &self.transaction else {
            self.reply("503 5.5.1 Error: need MAIL command");
            return;
        };
        let smtputf8 = transaction.smtputf8;
        let Some((address, params)) = parse_path(rest) else {
            self.reply("501 5.1.3 Bad recipient address syntax");
            return;
        };
        if address.is_empty() {
            self.reply("501 5.1.3 Bad recipient address syntax");
            return;
        }
        let dsn_param = |p: &String| {
            let keyword = p.split('=').next().unwrap_or_default().to_ascii_uppercase();
            matches!(keyword.as_str(), "NOTIFY" | "ORCPT") && p.contains('=')
        };
        if let Some(param) = params
            .iter()
            .find(|p| !(self.behaviour.dsn && dsn_param(p)))
        {
            self.reply(&format!("555 5.5.4 Unsupported parameter {param}"));
            return;
        }
        if !address.is_ascii() && !smtputf8 {
            self.reply("553 5.6.7 Non-ASCII address without SMTPUTF8");
            return;
        }
        if let Some(rule) = self.behaviour.rcpt_rule(&address) {
            let reply = format!("{} {} <{address}>: {}", rule.code, rule.enhanced, rule.text);
            let accepted = (200..300).contains(&rule.code);
            self.reply(&reply);
            if !accepted {
                return;
            }
        } else {
            self.reply("250 2.1.5 Ok");
        }
        if let Some(transaction) = &mut self.transaction {
            transaction.rcpt_to.push(address);
            transaction.rcpt_params.push(params);
        }
    }

    /// `BDAT n [LAST]`: the octets follow; the reply comes once they are read.
    fn bdat(&mut self, rest: &str) {
        let mut words = rest.split_ascii_whitespace();
        let size = words.next().and_then(|n| n.parse::<usize>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case("LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(size), Some(last), None) = (size, last, words.next()) else {
            // The size is unknown: the session cannot go on (RFC 3030 §2).
            self.reply("501 5.5.4 Syntax: BDAT size [LAST]");
            self.closing = true;
            return;
        };
        let discard = match &self.transaction {
            None => Some("503 5.5.1 Error: need MAIL command".to_owned()),
            Some(t) if t.rcpt_to.is_empty() => {
                Some("554 5.5.1 Error: no valid recipients".to_owned())
            }
            Some(_) => None,
        };
        self.chunk = Some(Chunk {
            remaining: size,
            last,
            discard,
        });
        if size == 0 {
            self.chunk_octets(&[], true);
        }
    }

    /// Octets of the BDAT chunk being read; `done` when it is complete.
    fn chunk_octets(&mut self, octets: &[u8], done: bool) {
        let Some(chunk) = &self.chunk else { return };
        if chunk.discard.is_none()
            && let Some(t) = &mut self.transaction
        {
            t.chunked.extend_from_slice(octets);
        }
        if !done {
            return;
        }
        let Some(chunk) = self.chunk.take() else {
            return;
        };
        if let Some(refusal) = chunk.discard {
            self.reply(&refusal);
            return;
        }
        let size = self
            .transaction
            .as_ref()
            .map_or(0, |t| t.chunked.len() - t.chunks.iter().sum::<usize>());
        if let Some(t) = &mut self.transaction {
            t.chunks.push(size);
        }
        if !chunk.last {
            self.reply(&format!("250 2.0.0 {size} octets received"));
            return;
        }
        let transaction = self.transaction.take().unwrap_or_default();
        let mut state = self.shared.lock();
        state.data_transactions += 1;
        if state.data_transactions <= self.behaviour.tempfail_data_first {
            drop(state);
            self.reply("451 4.3.0 try later");
            return;
        }
        state.queued += 1;
        let id = state.queued;
        state.messages.push(ReceivedMessage {
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: transaction.mail_from,
            mail_params: transaction.mail_params,
            rcpt_to: transaction.rcpt_to,
            rcpt_params: transaction.rcpt_params,
            chunks: transaction.chunks,
            data: transaction.chunked,
            connection: self.connection,
            tls: self.tls,
            peer: self.peer,
            client_certificate: self.client_certificate.clone(),
        });
        drop(state);
        self.shared.changed.notify_all();
        self.reply(&format!("250 2.0.0 Ok: queued as sink-{id}"));
    }

    fn data_command(&mut self, rest: &str) {
        if !rest.trim().is_empty() {
            self.reply("501 5.5.4 Syntax: DATA");
            return;
        }
        match &self.transaction {
            None => self.reply("503 5.5.1 Error: need MAIL command"),
            Some(t) if t.rcpt_to.is_empty() => self.reply("554 5.5.1 Error: no valid recipients"),
            Some(_) => {
                self.data = Some(Data::default());
                self.reply("354 End data with <CR><LF>.<CR><LF>");
            }
        }
    }

    /// One data line, with its CRLF.
    fn data_line(&mut self, line: &[u8]) {
        let Some(data) = &mut self.data else { return };
        let line = line.strip_prefix(b".").unwrap_or(line);
        data.size += line.len() as u64;
        if self.behaviour.max_size.is_none_or(|max| data.size <= max) {
            data.bytes.extend_from_slice(line);
        }
    }

    fn end_of_data(&mut self, stream: &mut SinkStream) {
        let data = self.data.take().unwrap_or_default();
        let transaction = self.transaction.take().unwrap_or_default();
        if let Some(delay) = self.behaviour.delay_data_reply {
            // The replies to anything before the dot go out first.
            let _ = stream.send(&self.out);
            self.out.clear();
            let deadline = Instant::now() + delay;
            while Instant::now() < deadline {
                if self.shared.stopped() {
                    self.closing = true;
                    return;
                }
                std::thread::sleep(POLL.min(deadline.saturating_duration_since(Instant::now())));
            }
        }
        let mut state = self.shared.lock();
        state.data_transactions += 1;
        if state.data_transactions <= self.behaviour.tempfail_data_first {
            drop(state);
            self.reply("451 4.3.0 try later");
            return;
        }
        if self.behaviour.max_size.is_some_and(|max| data.size > max) {
            drop(state);
            self.reply("552 5.3.4 Message size exceeds fixed limit");
            return;
        }
        state.queued += 1;
        let id = state.queued;
        state.messages.push(ReceivedMessage {
            helo: self.helo.clone().unwrap_or_default(),
            mail_from: transaction.mail_from,
            mail_params: transaction.mail_params,
            rcpt_to: transaction.rcpt_to,
            rcpt_params: transaction.rcpt_params,
            chunks: Vec::new(),
            data: data.bytes,
            connection: self.connection,
            tls: self.tls,
            peer: self.peer,
            client_certificate: self.client_certificate.clone(),
        });
        drop(state);
        self.shared.changed.notify_all();
        self.reply(&format!("250 2.0.0 Ok: queued as sink-{id}"));
    }
}

fn strip_prefix_ignore_case<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    let head = line.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &line[prefix.len()..])
}

/// Parses `<address> [PARAM ...]` (a space after the colon is tolerated): the address
/// inside the brackets (a `>` inside a quoted local part does not close it) and the
/// parameters.
fn parse_path(rest: &str) -> Option<(String, Vec<String>)> {
    let rest = rest.trim_start_matches(' ').strip_prefix('<')?;
    let mut quoted = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in rest.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end?;
    let address = &rest[..end];
    let after = &rest[end + 1..];
    if !after.is_empty() && !after.starts_with(' ') {
        return None;
    }
    if address.contains(' ') && !address.contains('"') {
        return None;
    }
    let params = after.split_whitespace().map(str::to_owned).collect();
    Some((address.to_owned(), params))
}
