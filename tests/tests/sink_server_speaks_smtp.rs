//! The test sink (`tidegate_e2e::sink`), the next hop of delivery tests, is itself a real
//! SMTP server: these tests drive it with the harness's plain client.

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SINK_HOSTNAME, SinkServer};
use tidegate_e2e::{PATIENCE, SmtpClient, binary, dot_stuff, sample_message};

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn start(behaviour: Behaviour) -> SinkServer {
    SinkServer::start(loopback(), behaviour)
}

#[test]
fn a_plain_transaction_is_recorded_with_its_envelope() {
    let sink = start(Behaviour::default());
    let mut client = SmtpClient::connect(sink.addr());
    assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
    let ehlo = client.command("EHLO client.example.org");
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    assert_eq!(
        ehlo.lines,
        [
            SINK_HOSTNAME,
            "PIPELINING",
            "SIZE",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES"
        ]
    );

    let message = sample_message("plain", "First line.\r\n.leading dot\r\n..two dots\r\nEnd.");
    let reply = client.send_mail(
        "sender@example.org",
        &["one@example.test", "two@example.test"],
        &message,
    );
    reply.expect(250, "2.0.0");
    assert_eq!(reply.queue_id().as_deref(), Some("sink-1"));
    client.command("QUIT").expect(221, "2.0.0");
    assert!(client.is_closed());

    let received = sink.wait_for(1, PATIENCE);
    assert_eq!(received.len(), 1);
    let m = &received[0];
    assert_eq!(m.helo, "client.example.org");
    assert_eq!(m.mail_from, "sender@example.org");
    assert!(m.mail_params.is_empty());
    assert_eq!(m.rcpt_to, ["one@example.test", "two@example.test"]);
    assert_eq!(m.text(), message, "data is unstuffed, without the dot line");
    assert_eq!(m.connection, 1);
    assert!(!m.tls);
    assert_eq!(sink.connections(), 1);
}

#[test]
fn a_pipelined_transaction_is_answered_in_order_and_seen_as_one_group() {
    let sink = start(Behaviour::default());
    let mut client = SmtpClient::connect(sink.addr());
    client.send(
        b"EHLO client.example.org\r\n\
          MAIL FROM:<> SIZE=120 BODY=8BITMIME SMTPUTF8\r\n\
          RCPT TO:<one@example.test>\r\n\
          RCPT TO:<j\xc3\xb6rg@example.test>\r\n\
          DATA\r\n",
    );
    assert_eq!(client.read_reply().code, 250);
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    client.read_reply().expect(250, "2.1.5");
    assert_eq!(client.read_reply().code, 354);

    let mut second = dot_stuff(b"Subject: pipelined\r\n\r\n.\r\nbody\r\n");
    second.extend_from_slice(b".\r\nNOOP\r\nQUIT\r\n");
    client.send(&second);
    client.read_reply().expect(250, "2.0.0");
    client.read_reply().expect(250, "2.0.0");
    client.read_reply().expect(221, "2.0.0");
    assert!(client.is_closed());

    let m = &sink.wait_for(1, PATIENCE)[0];
    assert_eq!(m.mail_from, "");
    assert_eq!(m.mail_params, ["SIZE=120", "BODY=8BITMIME", "SMTPUTF8"]);
    assert_eq!(m.rcpt_to, ["one@example.test", "jörg@example.test"]);
    assert_eq!(m.data, b"Subject: pipelined\r\n\r\n.\r\nbody\r\n");
    assert_eq!(
        sink.command_batches(),
        [
            vec![
                "EHLO client.example.org",
                "MAIL FROM:<> SIZE=120 BODY=8BITMIME SMTPUTF8",
                "RCPT TO:<one@example.test>",
                "RCPT TO:<jörg@example.test>",
                "DATA",
            ],
            vec!["NOOP", "QUIT"],
        ]
    );
}

#[test]
fn a_client_that_waits_for_each_reply_leaves_one_line_groups() {
    let sink = start(Behaviour::default().no_pipelining());
    let mut client = SmtpClient::connect(sink.addr());
    let ehlo = client.command("EHLO client.example.org");
    assert!(!ehlo.lines.iter().any(|l| l == "PIPELINING"), "{ehlo:?}");
    client
        .send_mail(
            "a@example.org",
            &["b@example.test"],
            "Subject: x\r\n\r\ny\r\n",
        )
        .expect(250, "2.0.0");
    assert!(
        sink.command_batches().iter().all(|batch| batch.len() == 1),
        "{:?}",
        sink.command_batches()
    );
}

#[test]
fn refused_and_deferred_recipients_are_left_out_of_the_message() {
    let sink = start(
        Behaviour::default()
            .reject_rcpt("nobody@example.test", 550, "5.1.1")
            .tempfail_rcpt("later@example.test"),
    );
    let mut client = SmtpClient::ehlo(sink.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    let refused = client.command("RCPT TO:<Nobody@Example.Test>");
    refused.expect(550, "5.1.1");
    client
        .command("RCPT TO:<later@example.test>")
        .expect(450, "4.2.1");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: some\r\n\r\nbody\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");

    let m = &sink.wait_for(1, PATIENCE)[0];
    assert_eq!(m.rcpt_to, ["user@example.test"]);

    // With no recipient left, DATA itself is refused.
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<nobody@example.test>")
        .expect(550, "5.1.1");
    client.command("DATA").expect(554, "5.5.1");
    client.command("RSET").expect(250, "2.0.0");
}

#[test]
fn the_first_n_data_transactions_are_deferred_over_all_connections() {
    let sink = start(Behaviour::default().tempfail_data_first(2));
    let message = sample_message("retry", "body");
    for attempt in 1..=2 {
        let mut client = SmtpClient::ehlo(sink.addr());
        let reply = client.send_mail("a@example.org", &["b@example.test"], &message);
        reply.expect(451, "4.3.0");
        assert_eq!(reply.text(), "4.3.0 try later", "attempt {attempt}");
        client.command("QUIT").expect(221, "2.0.0");
    }
    assert!(
        sink.received().is_empty(),
        "deferred messages are not recorded"
    );

    let mut client = SmtpClient::ehlo(sink.addr());
    let reply = client.send_mail("a@example.org", &["b@example.test"], &message);
    reply.expect(250, "2.0.0");
    assert_eq!(reply.queue_id().as_deref(), Some("sink-1"));
    let received = sink.wait_for(1, PATIENCE);
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].connection, 3);
    assert_eq!(sink.connections(), 3);
}

#[test]
fn the_transcript_holds_every_command_line_in_order() {
    let sink = start(Behaviour::default());
    let mut client = SmtpClient::connect(sink.addr());
    assert_eq!(client.command("HELO old.example.org").code, 250);
    client
        .command("mail from:<a@example.org>")
        .expect(250, "2.1.0");
    client.command("RSET").expect(250, "2.0.0");
    client.command("NOOP").expect(250, "2.0.0");
    client.command("FROB").expect(500, "5.5.2");
    client
        .send_mail(
            "a@example.org",
            &["b@example.test"],
            "Subject: t\r\n\r\nDATA\r\n",
        )
        .expect(250, "2.0.0");
    client.command("QUIT").expect(221, "2.0.0");
    assert_eq!(
        sink.transcript(),
        [
            "HELO old.example.org",
            "mail from:<a@example.org>",
            "RSET",
            "NOOP",
            "FROB",
            "MAIL FROM:<a@example.org>",
            "RCPT TO:<b@example.test>",
            "DATA",
            "QUIT",
        ],
        "message data is not part of the transcript"
    );
    assert_eq!(sink.received()[0].helo, "old.example.org");
}

#[test]
fn several_transactions_on_one_connection_and_a_second_connection_are_counted() {
    let sink = start(Behaviour::default());
    let mut first = SmtpClient::ehlo(sink.addr());
    for n in 1..=2 {
        let reply = first.send_mail(
            "a@example.org",
            &["b@example.test"],
            "Subject: n\r\n\r\nx\r\n",
        );
        assert_eq!(reply.queue_id(), Some(format!("sink-{n}")));
    }
    let mut second = SmtpClient::ehlo(sink.addr());
    second
        .send_mail(
            "c@example.org",
            &["d@example.test"],
            "Subject: m\r\n\r\ny\r\n",
        )
        .expect(250, "2.0.0");
    let received = sink.wait_for(3, PATIENCE);
    let connections: Vec<usize> = received.iter().map(|m| m.connection).collect();
    assert_eq!(connections, [1, 1, 2]);
    assert_eq!(sink.connections(), 2);
}

#[test]
fn only_crlf_dot_crlf_ends_the_data() {
    let sink = start(Behaviour::default());
    let mut client = SmtpClient::ehlo(sink.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<b@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    // Bare-LF and bare-CR "terminators" are data; the real one follows. `CRLF.LF` is not
    // an end either, but that line starts with a dot, which unstuffing removes.
    client.send(b"Subject: s\r\n\r\none\n.\ntwo\r.\rthree\r\n.\n\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");
    let m = &sink.wait_for(1, PATIENCE)[0];
    assert_eq!(m.data, b"Subject: s\r\n\r\none\n.\ntwo\r.\rthree\r\n\n\r\n");
}

#[test]
fn extensions_can_be_withdrawn_and_unadvertised_parameters_are_refused() {
    let sink = start(
        Behaviour::default()
            .no_8bitmime()
            .no_smtputf8()
            .max_size(100),
    );
    let mut client = SmtpClient::connect(sink.addr());
    let ehlo = client.command("EHLO client.example.org");
    assert_eq!(
        ehlo.lines,
        [
            SINK_HOSTNAME,
            "PIPELINING",
            "SIZE 100",
            "ENHANCEDSTATUSCODES"
        ]
    );
    client
        .command("MAIL FROM:<a@example.org> BODY=8BITMIME")
        .expect(555, "5.5.4");
    client
        .command("MAIL FROM:<a@example.org> SMTPUTF8")
        .expect(555, "5.5.4");
    client
        .command("MAIL FROM:<jörg@example.org>")
        .expect(553, "5.6.7");
    client
        .command("MAIL FROM:<a@example.org> SIZE=101")
        .expect(552, "5.3.4");
    client
        .command("MAIL FROM:<a@example.org> SIZE=100")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<b@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(&dot_stuff(&[b'x'; 200]));
    client.send(b".\r\n");
    client.read_reply().expect(552, "5.3.4");
    assert!(sink.received().is_empty());
}

#[test]
fn commands_out_of_order_are_refused() {
    let sink = start(Behaviour::default());
    let mut client = SmtpClient::connect(sink.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(503, "5.5.1");
    client.command("EHLO client.example.org");
    client
        .command("RCPT TO:<b@example.test>")
        .expect(503, "5.5.1");
    client.command("DATA").expect(503, "5.5.1");
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(503, "5.5.1");
    client.command("BDAT 10 LAST").expect(502, "5.5.1");
}

#[test]
fn a_refusing_greeting_closes_the_connection() {
    for code in [421, 554] {
        let sink = start(Behaviour::default().greeting(code));
        let mut client = SmtpClient::connect(sink.addr());
        assert_eq!(client.greeting.code, code, "{:?}", client.greeting);
        assert!(client.is_closed());
        assert_eq!(sink.connections(), 1);
    }
}

#[test]
fn the_data_reply_can_be_delayed() {
    let delay = Duration::from_millis(300);
    let sink = start(Behaviour::default().delay_data_reply(delay));
    let mut client = SmtpClient::ehlo(sink.addr());
    let started = Instant::now();
    client
        .send_mail(
            "a@example.org",
            &["b@example.test"],
            "Subject: d\r\n\r\nx\r\n",
        )
        .expect(250, "2.0.0");
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
}

#[test]
#[should_panic(expected = "received 0 of 1 messages")]
fn waiting_for_messages_that_never_come_fails_with_the_count() {
    let sink = start(Behaviour::default());
    sink.wait_for(1, Duration::from_millis(50));
}

#[test]
fn stopping_closes_the_port_and_open_connections() {
    let sink = start(Behaviour::default());
    let addr = sink.addr();
    let mut client = SmtpClient::ehlo(addr);
    sink.stop();
    assert!(client.is_closed(), "open connections are closed");
    assert!(
        TcpStream::connect_timeout(&addr, PATIENCE).is_err(),
        "the port is closed"
    );
}

#[test]
fn a_fixed_loopback_address_other_than_127_0_0_1_can_be_bound() {
    let sink = SinkServer::start("127.0.0.3:0".parse().unwrap(), Behaviour::default());
    assert_eq!(sink.addr().ip().to_string(), "127.0.0.3");
    let mut client = SmtpClient::ehlo(sink.addr());
    client
        .send_mail(
            "a@example.org",
            &["b@example.test"],
            "Subject: x\r\n\r\ny\r\n",
        )
        .expect(250, "2.0.0");
    assert_eq!(sink.wait_for(1, PATIENCE).len(), 1);
}

/// A certificate and key for the sink written by `tidegate gen-cert`.
struct SinkCert {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
    /// The DER of the certificate.
    der: Vec<u8>,
}

fn gen_cert() -> SinkCert {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let dir = tempfile::tempdir().expect("temporary directory");
    let cert = dir.path().join("sink.pem");
    let key = dir.path().join("sink.key");
    let output = Command::new(binary())
        .args(["gen-cert", "--name", SINK_HOSTNAME, "--cert"])
        .arg(&cert)
        .arg("--key")
        .arg(&key)
        .output()
        .expect("run tidegate gen-cert");
    assert!(
        output.status.success(),
        "gen-cert failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let der = CertificateDer::from_pem_file(&cert)
        .expect("PEM certificate")
        .to_vec();
    SinkCert {
        _dir: dir,
        cert,
        key,
        der,
    }
}

fn start_tls_sink(cert: &SinkCert) -> SinkServer {
    start(Behaviour::default().starttls(&cert.cert, &cert.key))
}

#[test]
fn starttls_is_offered_and_a_message_sent_inside_tls_is_marked_so() {
    let cert = gen_cert();
    let sink = start_tls_sink(&cert);
    let mut client = SmtpClient::connect(sink.addr());
    let ehlo = client.command("EHLO plain.example.org");
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    assert_eq!(
        ehlo.lines,
        [
            SINK_HOSTNAME,
            "PIPELINING",
            "SIZE",
            "8BITMIME",
            "SMTPUTF8",
            "STARTTLS",
            "ENHANCEDSTATUSCODES"
        ]
    );

    let presented = client.starttls(SINK_HOSTNAME);
    assert_eq!(
        presented, cert.der,
        "the sink presents the generated certificate"
    );
    let ehlo = client.command("EHLO tls.example.org");
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    assert_eq!(
        ehlo.lines,
        [
            SINK_HOSTNAME,
            "PIPELINING",
            "SIZE",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES"
        ],
        "no STARTTLS inside TLS"
    );
    let message = sample_message("tls", "Sent inside TLS.");
    client
        .send_mail("sender@example.org", &["user@example.test"], &message)
        .expect(250, "2.0.0");
    client.command("QUIT").expect(221, "2.0.0");
    assert!(client.is_closed(), "a clean close inside TLS");

    let received = sink.wait_for(1, PATIENCE);
    let m = &received[0];
    assert!(m.tls, "{m:?}");
    assert_eq!(m.helo, "tls.example.org", "the EHLO given inside TLS");
    assert_eq!(m.text(), message);
    assert_eq!(
        sink.transcript(),
        [
            "EHLO plain.example.org",
            "STARTTLS",
            "EHLO tls.example.org",
            "MAIL FROM:<sender@example.org>",
            "RCPT TO:<user@example.test>",
            "DATA",
            "QUIT",
        ]
    );
}

#[test]
fn a_message_sent_without_starttls_is_not_marked_tls() {
    let cert = gen_cert();
    let sink = start_tls_sink(&cert);
    let mut client = SmtpClient::ehlo(sink.addr());
    client
        .send_mail(
            "a@example.org",
            &["b@example.test"],
            "Subject: plain\r\n\r\nx\r\n",
        )
        .expect(250, "2.0.0");
    let mut secure = SmtpClient::ehlo(sink.addr());
    assert_eq!(secure.starttls(SINK_HOSTNAME), cert.der);
    secure.command("EHLO client.example.org");
    secure
        .send_mail(
            "c@example.org",
            &["d@example.test"],
            "Subject: tls\r\n\r\ny\r\n",
        )
        .expect(250, "2.0.0");

    let received = sink.wait_for(2, PATIENCE);
    let summary: Vec<(usize, bool)> = received.iter().map(|m| (m.connection, m.tls)).collect();
    assert_eq!(summary, [(1, false), (2, true)]);
}

#[test]
fn starttls_starts_the_session_over_and_drops_what_was_pipelined_after_it() {
    let cert = gen_cert();
    let sink = start_tls_sink(&cert);
    let mut client = SmtpClient::ehlo(sink.addr());
    client.command("STARTTLS now").expect(501, "5.5.4");
    // A command injected after STARTTLS in the same packet must not run inside TLS.
    client.send(b"STARTTLS\r\nMAIL FROM:<injected@example.org>\r\n");
    client.read_reply().expect(220, "2.0.0");
    assert_eq!(client.upgrade(SINK_HOSTNAME), cert.der);

    // The EHLO before the handshake is forgotten, and no transaction was started.
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(503, "5.5.1");
    assert_eq!(client.command("EHLO client.example.org").code, 250);
    client
        .command("RCPT TO:<b@example.test>")
        .expect(503, "5.5.1");
    client.command("STARTTLS").expect(503, "5.5.1");
    client
        .send_mail(
            "a@example.org",
            &["b@example.test"],
            "Subject: s\r\n\r\nz\r\n",
        )
        .expect(250, "2.0.0");

    let m = &sink.wait_for(1, PATIENCE)[0];
    assert!(m.tls);
    assert_eq!(m.mail_from, "a@example.org");
    let transcript = sink.transcript();
    assert!(
        !transcript.iter().any(|l| l.contains("injected")),
        "{transcript:?}"
    );
    assert!(
        sink.command_batches()
            .contains(&vec!["STARTTLS".to_owned()]),
        "{:?}",
        sink.command_batches()
    );
}

#[test]
fn without_a_certificate_starttls_is_neither_offered_nor_accepted() {
    let sink = start(Behaviour::default());
    let mut client = SmtpClient::connect(sink.addr());
    let ehlo = client.command("EHLO client.example.org");
    assert!(!ehlo.lines.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
    client.command("STARTTLS").expect(502, "5.5.1");
    client
        .send_mail(
            "a@example.org",
            &["b@example.test"],
            "Subject: x\r\n\r\ny\r\n",
        )
        .expect(250, "2.0.0");
    assert!(!sink.wait_for(1, PATIENCE)[0].tls);
}
