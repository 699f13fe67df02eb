//! The small commands and the reply format itself: the greeting, the multi-line EHLO
//! reply byte for byte, HELO, VRFY, HELP, NOOP, EXPN and QUIT.

use tidegate_e2e::{Gateway, SmtpClient};

#[test]
fn the_ehlo_reply_is_well_formed_on_the_wire() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    assert_eq!(client.greeting.code, 220);
    assert_eq!(client.greeting.lines, vec!["relay.example.test ESMTP"]);
    client.send(b"EHLO client.example.org\r\n");
    let raw = client.read_raw_reply();
    // Every line but the last has `250-`, the last `250 `, each ends in CRLF, and no
    // enhanced code appears (RFC 2034 excludes the EHLO reply).
    assert_eq!(
        raw,
        "250-relay.example.test\r\n\
         250-PIPELINING\r\n\
         250-SIZE 10485760\r\n\
         250-8BITMIME\r\n\
         250-SMTPUTF8\r\n\
         250-ENHANCEDSTATUSCODES\r\n\
         250-CHUNKING\r\n\
         250 DSN\r\n"
    );
    // Nothing else follows: the next reply is the NOOP's.
    client.command("NOOP").expect(250, "2.0.0");
}

#[test]
fn helo_gets_a_single_line_reply() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    client.send(b"HELO client.example.org\r\n");
    assert_eq!(client.read_raw_reply(), "250 relay.example.test\r\n");
    // HELO is enough for a plain transaction.
    let reply = client.send_mail(
        "sender@example.org",
        &["user@example.test"],
        "Subject: helo\r\n\r\nx\r\n",
    );
    reply.expect(250, "2.0.0");
    let stored = String::from_utf8(gateway.spool_message(&reply.queue_id().unwrap())).unwrap();
    assert!(stored.contains(" with SMTP id "), "{stored}");
}

#[test]
fn vrfy_help_noop_expn_and_rset_answer_without_side_effects() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    // VRFY neither confirms nor denies (RFC 5321 §3.5.3).
    let vrfy = client.command("VRFY user@example.test");
    vrfy.expect(252, "2.5.0");
    let help = client.command("HELP");
    help.expect(214, "2.0.0");
    assert!(help.text().contains("EHLO"), "{help:?}");
    client.command("HELP MAIL").expect(214, "2.0.0");
    client.command("NOOP").expect(250, "2.0.0");
    client.command("NOOP with an argument").expect(250, "2.0.0");
    client
        .command("EXPN staff@example.test")
        .expect(502, "5.5.1");
    client.command("RSET").expect(250, "2.0.0");
    // Case does not matter.
    client.command("noop").expect(250, "2.0.0");
    // None of this opened or needed a transaction, and one still works.
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client.command("VRFY someone").expect(252, "2.5.0");
    client.command("NOOP").expect(250, "2.0.0");
    // NOOP and VRFY inside a transaction keep it.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: x\r\n\r\nx\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");
}

#[test]
fn quit_is_answered_with_221_and_closes_the_connection() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client.send(b"QUIT\r\nNOOP\r\n");
    let bye = client.read_reply();
    bye.expect(221, "2.0.0");
    // The server closes: no reply to the NOOP sent after QUIT.
    assert!(client.is_closed());

    // QUIT works before EHLO, too.
    let mut client = SmtpClient::connect(gateway.addr());
    client.command("QUIT").expect(221, "2.0.0");
    assert!(client.is_closed());
}

#[test]
fn quit_in_the_middle_of_a_transaction_delivers_nothing() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.command("QUIT").expect(221, "2.0.0");
    assert!(client.is_closed());
    assert_eq!(gateway.spool_list(), Vec::new());
}
