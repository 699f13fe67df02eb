//! Command order (RFC 5321 §4.1.4): commands sent out of sequence are refused with
//! 503 5.5.1 (554 5.5.1 for DATA with no recipient) and change nothing, and RSET ends a
//! transaction.

use tidegate_e2e::{Gateway, SmtpClient, without_trace_header};

#[test]
fn mail_before_ehlo_is_refused() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(503, "5.5.1");
    // Still nothing open after EHLO, so RCPT is out of sequence too.
    assert_eq!(client.command("EHLO client.example.org").code, 250);
    client
        .command("RCPT TO:<user@example.test>")
        .expect(503, "5.5.1");
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
}

#[test]
fn rcpt_and_data_before_mail_are_refused() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("RCPT TO:<user@example.test>")
        .expect(503, "5.5.1");
    client.command("DATA").expect(503, "5.5.1");
    // A refused DATA sent no 354: the next line is a command again, not message data.
    client.command("NOOP").expect(250, "2.0.0");
    assert_eq!(gateway.spool_list(), Vec::new());
}

#[test]
fn data_without_a_recipient_is_refused() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    let reply = client.command("DATA");
    assert!(
        matches!(reply.code, 503 | 554) && reply.enhanced() == Some("5.5.1"),
        "{reply:?}"
    );
    // Only refused recipients: still none to deliver to.
    client.command("RCPT TO:<bad address>").expect(501, "5.1.3");
    let reply = client.command("DATA");
    assert!(
        matches!(reply.code, 503 | 554) && reply.enhanced() == Some("5.5.1"),
        "{reply:?}"
    );
    // The transaction is still open: a recipient and DATA now work.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: late\r\n\r\nx\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].sender, "sender@example.org");
}

#[test]
fn nested_mail_is_refused_and_keeps_the_first_transaction() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<first@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client
        .command("MAIL FROM:<second@example.org>")
        .expect(503, "5.5.1");
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: nested\r\n\r\nx\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].sender, "first@example.org");
    assert_eq!(spooled[0].recipients, vec!["user@example.test".to_owned()]);
}

#[test]
fn rset_clears_the_transaction() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<dropped@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<dropped@example.test>")
        .expect(250, "2.1.5");
    client.command("RSET").expect(250, "2.0.0");
    // Sender and recipients are gone.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(503, "5.5.1");
    client.command("DATA").expect(503, "5.5.1");
    // RSET with nothing open is fine too, and the greeting survives it.
    client.command("RSET").expect(250, "2.0.0");
    let reply = client.send_mail(
        "kept@example.org",
        &["user@example.test"],
        "Subject: after rset\r\n\r\nx\r\n",
    );
    reply.expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].sender, "kept@example.org");
    assert_eq!(spooled[0].recipients, vec!["user@example.test".to_owned()]);
}

#[test]
fn a_second_ehlo_also_ends_the_transaction() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<dropped@example.org>")
        .expect(250, "2.1.0");
    assert_eq!(client.command("EHLO other.example.org").code, 250);
    client
        .command("RCPT TO:<user@example.test>")
        .expect(503, "5.5.1");
    let reply = client.send_mail(
        "kept@example.org",
        &["user@example.test"],
        "Subject: x\r\n\r\nx\r\n",
    );
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    let stored = String::from_utf8_lossy(&stored);
    // The trace header names the latest greeting.
    assert!(
        stored.starts_with("Received: from other.example.org "),
        "{stored}"
    );
    assert_eq!(
        without_trace_header(stored.as_bytes()),
        b"Subject: x\r\n\r\nx\r\n"
    );
}

#[test]
fn bdat_outside_a_transaction_is_refused_and_its_chunk_skipped() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    // The chunk's bytes look like commands; they must be skipped, never executed.
    let chunk = b"MAIL FROM:<x@example.org>\r\nRCPT TO:<user@example.test>\r\n";
    client.send(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    client.send(chunk);
    client.read_reply().expect(503, "5.5.1");
    client.command("NOOP").expect(250, "2.0.0");
    // And with MAIL but no recipient: 554, chunk skipped as well.
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client.send(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    client.send(chunk);
    let reply = client.read_reply();
    assert!(
        matches!(reply.code, 503 | 554) && reply.enhanced() == Some("5.5.1"),
        "{reply:?}"
    );
    client.command("NOOP").expect(250, "2.0.0");
    // DATA in the middle of a BDAT transfer is out of sequence.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.send(b"BDAT 4\r\nab\r\n");
    client.read_reply().expect(250, "2.0.0");
    client.command("DATA").expect(503, "5.5.1");
    client
        .command("RCPT TO:<other@example.test>")
        .expect(503, "5.5.1");
    assert_eq!(gateway.spool_list(), Vec::new());
}
