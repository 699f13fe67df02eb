//! With `bare_line_endings = "normalize"`, a smuggling attempt is still ONE message: it is
//! accepted whole, the would-be injected transaction stays inside it as text, and every
//! line ending is stored as CRLF.

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, without_trace_header};

const INJECTED: &str = "MAIL FROM:<ceo@example.test>\r\n\
    RCPT TO:<victim@example.test>\r\n\
    DATA\r\n\
    Subject: smuggled\r\n\
    \r\n\
    Pay the invoice.\r\n";

/// (fake end, what it is stored as). A dot after a real CRLF is a stuffing dot and is
/// removed; a dot after a bare ending is not at a line start and is kept.
const CASES: &[(&str, &str)] = &[
    ("\n.\n", "\r\n.\r\n"),
    ("\n.\r\n", "\r\n.\r\n"),
    ("\r\n.\n", "\r\n\r\n"),
    ("\r.\r", "\r\n.\r\n"),
    ("\r.\r\n", "\r\n.\r\n"),
    ("\r\n.\r", "\r\n\r\n"),
];

fn is_crlf_only(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

#[test]
fn a_smuggling_attempt_is_stored_as_one_crlf_message() {
    let config = GatewayConfig::default().smtp("bare_line_endings", "\"normalize\"");
    let gateway = Gateway::start_with(&config);
    let mut client = SmtpClient::ehlo(gateway.addr());
    let mut ids = Vec::new();
    for (fake_end, stored_as) in CASES {
        let data = format!("Subject: cover\r\n\r\nInnocent text.{fake_end}{INJECTED}\r\n.\r\n");
        client
            .command("MAIL FROM:<sender@example.org>")
            .expect(250, "2.1.0");
        client
            .command("RCPT TO:<user@example.test>")
            .expect(250, "2.1.5");
        assert_eq!(client.command("DATA").code, 354);
        client.send(data.as_bytes());
        let reply = client.read_reply();
        reply.expect(250, "2.0.0");
        // The next reply is the NOOP's: no injected command ran.
        client.command("NOOP").expect(250, "2.0.0");

        let id = reply.queue_id().expect("queue id");
        let stored = gateway.spool_message(&id);
        let message = without_trace_header(&stored);
        let expected = format!("Subject: cover\r\n\r\nInnocent text.{stored_as}{INJECTED}\r\n");
        assert_eq!(
            String::from_utf8_lossy(message),
            expected,
            "fake end {fake_end:?}"
        );
        assert!(is_crlf_only(&stored), "{fake_end:?}: {stored:?}");
        ids.push(id);
    }
    // One message per attempt, each for the real recipient only.
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), CASES.len(), "{spooled:?}");
    for entry in &spooled {
        assert!(ids.contains(&entry.id));
        assert_eq!(entry.sender, "sender@example.org");
        assert_eq!(entry.recipients, vec!["user@example.test".to_owned()]);
    }
}

#[test]
fn bare_line_endings_in_bdat_are_normalized_too() {
    let config = GatewayConfig::default().smtp("bare_line_endings", "\"normalize\"");
    let gateway = Gateway::start_with(&config);
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    // A bare LF, a bare CR, and a CR at the end of a chunk that the next chunk's LF
    // completes into one CRLF; the last chunk ends in a bare CR.
    client.send(b"BDAT 12\r\nSubject: x\n\rBDAT 6\r\na\rb\r\r\nBDAT 3 LAST\r\n\nc\r");
    client.read_reply().expect(250, "2.0.0");
    client.read_reply().expect(250, "2.0.0");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    assert_eq!(
        String::from_utf8_lossy(without_trace_header(&stored)),
        "Subject: x\r\n\r\na\r\nb\r\n\r\n\r\nc\r\n"
    );
}
