//! Line limits (RFC 5321 §4.5.3.1.4 and §4.5.3.1.6): a command line over 512 octets is
//! refused with 500 5.5.2 and the session goes on; a message line over 998 octets gets
//! the whole message refused with 500 5.5.2 after the dot, while exactly 998 is fine.

use tidegate_e2e::{Gateway, SmtpClient, without_trace_header};

/// A NOOP line of exactly `octets` octets, CRLF included.
fn noop_line(octets: usize) -> Vec<u8> {
    let mut line = b"NOOP ".to_vec();
    line.resize(octets - 2, b'n');
    line.extend_from_slice(b"\r\n");
    assert_eq!(line.len(), octets);
    line
}

#[test]
fn a_command_over_512_octets_is_refused_and_the_session_goes_on() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    // Exactly 512 octets with the CRLF is allowed.
    client.send(&noop_line(512));
    client.read_reply().expect(250, "2.0.0");
    client.send(&noop_line(513));
    client.read_reply().expect(500, "5.5.2");
    // Far longer than any buffer: thrown away whole, never read as several commands.
    let mut huge = b"NOOP ".to_vec();
    huge.resize(100_000, b'x');
    huge.extend_from_slice(b" QUIT\r\n");
    client.send(&huge);
    client.read_reply().expect(500, "5.5.2");
    client.command("NOOP").expect(250, "2.0.0");

    // A transaction still works after all that.
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        "Subject: after long lines\r\n\r\nok\r\n",
    );
    reply.expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 1);
}

#[test]
fn an_over_long_line_in_a_transaction_leaves_the_transaction_intact() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    let mut long = b"RCPT TO:<".to_vec();
    long.resize(3000, b'a');
    long.extend_from_slice(b"@example.test>\r\n");
    client.send(&long);
    client.read_reply().expect(500, "5.5.2");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: x\r\n\r\nx\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].recipients, vec!["user@example.test".to_owned()]);
}

fn message_with_line(octets: usize) -> String {
    format!(
        "Subject: line of {octets}\r\n\r\nbefore\r\n{}\r\nafter\r\n",
        "L".repeat(octets)
    )
}

#[test]
fn a_message_line_over_998_octets_is_refused_after_the_dot() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());

    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        &message_with_line(999),
    );
    reply.expect(500, "5.5.2");
    // Much longer still, and a very long header line too.
    for message in [
        message_with_line(200_000),
        format!("Subject: {}\r\n\r\nbody\r\n", "s".repeat(1000)),
    ] {
        client
            .send_mail("sender@example.org", &["user@example.test"], &message)
            .expect(500, "5.5.2");
    }
    assert_eq!(gateway.spool_list(), Vec::new());
    assert_eq!(gateway.spool_partials(), Vec::<String>::new());

    // Exactly 998 octets is fine, in the same session, and stored whole.
    let message = message_with_line(998);
    let reply = client.send_mail("sender@example.org", &["user@example.test"], &message);
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    assert_eq!(without_trace_header(&stored), message.as_bytes());
}

#[test]
fn a_stuffing_dot_does_not_count_toward_the_line_length() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    // 998 octets starting with a dot: 999 on the wire once stuffed, 998 stored.
    let line = format!(".{}", "d".repeat(997));
    let message = format!("Subject: dot line\r\n\r\n{line}\r\n");
    let reply = client.send_mail("sender@example.org", &["user@example.test"], &message);
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    assert_eq!(without_trace_header(&stored), message.as_bytes());
}

#[test]
fn a_bdat_line_over_998_octets_is_refused() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let message = message_with_line(999);
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.send(format!("BDAT {} LAST\r\n{message}", message.len()).as_bytes());
    client.read_reply().expect(500, "5.5.2");
    client.command("NOOP").expect(250, "2.0.0");
    assert_eq!(gateway.spool_list(), Vec::new());
}
