//! A large message leaves the spool streamed, its body read from the spool file a block
//! at a time: what reaches the next hop over SMTP, and what the maildir transport stores,
//! is byte for byte what was accepted, with the header edits applied to its header block
//! (here the removal of an `Authentication-Results:` field forged in the gateway's name),
//! whatever lines start with dots and wherever the blocks end.

use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, dot_stuff, without_trace_header};

/// A 3 MB message: a forged Authentication-Results in the header, and body lines that
/// start with dots at every offset, so some of them straddle the reader's blocks.
fn large_message() -> (Vec<u8>, Vec<u8>) {
    let header_kept = b"From: sender@example.org\r\nTo: someone\r\nSubject: large\r\n";
    let forged = b"Authentication-Results: relay.example.test; dkim=pass header.d=example.org\r\n";
    let mut body = Vec::new();
    let mut n = 0usize;
    while body.len() < 3 * 1024 * 1024 {
        let dots = ".".repeat(n % 3);
        let pad = "x".repeat(n % 97);
        body.extend_from_slice(format!("{dots}line {n} {pad}\r\n").as_bytes());
        n += 1;
    }
    let mut sent = header_kept.to_vec();
    sent.extend_from_slice(forged);
    sent.extend_from_slice(b"\r\n");
    sent.extend_from_slice(&body);
    let mut expected = header_kept.to_vec();
    expected.extend_from_slice(b"\r\n");
    expected.extend_from_slice(&body);
    (sent, expected)
}

fn send(gateway: &Gateway, recipient: &str, message: &[u8]) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command(&format!("RCPT TO:<{recipient}>"))
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(&dot_stuff(message));
    client.send(b".\r\n");
    client.read_reply().expect(250, "2.0.0");
}

#[test]
fn a_large_message_reaches_the_smarthost_and_the_maildir_byte_exact() {
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let mailboxes = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .route("internal", &["example.test"], sink.addr())
            .maildir_route("local", &["local.test"], mailboxes.path()),
    );
    let (sent, expected) = large_message();

    send(&gateway, "alice@example.test", &sent);
    let received = sink.wait_for(1, Duration::from_secs(60));
    let data = &received[0].data;
    assert!(
        without_trace_header(data) == expected.as_slice(),
        "the message changed on its way: {} octets sent, {} expected, {} received",
        sent.len(),
        expected.len(),
        data.len()
    );

    send(&gateway, "bob@local.test", &sent);
    let new = mailboxes.path().join("bob@local.test").join("new");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let files: Vec<_> = std::fs::read_dir(&new)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if let Some(file) = files.first() {
            break std::fs::read(file).unwrap();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing in {}:\n{}",
            new.display(),
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = String::from_utf8_lossy(&stored);
    assert!(
        text.starts_with("Return-Path: <sender@example.org>\r\nDelivered-To: bob@local.test\r\n"),
        "{}",
        &text[..200]
    );
    let after_delivery_fields = stored
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w == b"\r\n")
        .nth(1)
        .map(|(at, _)| at + 2)
        .unwrap();
    assert!(
        without_trace_header(&stored[after_delivery_fields..]) == expected.as_slice(),
        "the maildir copy changed"
    );
}
