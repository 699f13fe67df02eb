//! PIPELINING (RFC 2920): a client that sends a whole command group in one write gets
//! every reply, in order, and the message lands in the spool.

use tidegate_e2e::{Gateway, SmtpClient, dot_stuff, sample_message, without_trace_header};

#[test]
fn a_group_up_to_data_then_the_message_and_quit_are_answered_in_order() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    assert_eq!(client.greeting.code, 220);

    // DATA ends a group (RFC 2920 §3.1), so everything up to it goes in one write.
    client.send(
        b"EHLO client.example.org\r\n\
          MAIL FROM:<sender@example.org>\r\n\
          RCPT TO:<one@example.test>\r\n\
          RCPT TO:<two@example.test>\r\n\
          DATA\r\n",
    );
    let ehlo = client.read_reply();
    assert_eq!(ehlo.code, 250, "{ehlo:?}");
    assert_eq!(ehlo.lines[0], "relay.example.test");
    assert!(ehlo.lines.iter().any(|l| l == "PIPELINING"), "{ehlo:?}");
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    client.read_reply().expect(250, "2.1.5");
    let go_ahead = client.read_reply();
    assert_eq!(go_ahead.code, 354, "{go_ahead:?}");

    // The message, its terminator and QUIT in a second write.
    let message = sample_message("pipelined", "First line.\r\n.dot line\r\nLast line.");
    let mut second = dot_stuff(message.as_bytes());
    second.extend_from_slice(b".\r\nQUIT\r\n");
    client.send(&second);
    let accepted = client.read_reply();
    accepted.expect(250, "2.0.0");
    let id = accepted.queue_id().expect("queue id");
    client.read_reply().expect(221, "2.0.0");
    assert!(client.is_closed());

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].id, id);
    assert_eq!(spooled[0].sender, "sender@example.org");
    assert_eq!(
        spooled[0].recipients,
        vec!["one@example.test".to_owned(), "two@example.test".to_owned()]
    );
    let stored = gateway.spool_message(&id);
    assert_eq!(
        String::from_utf8_lossy(without_trace_header(&stored)),
        message
    );
}

#[test]
fn a_refused_recipient_inside_a_group_does_not_upset_the_order() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    // A bad recipient in the middle: its refusal takes its place, the others still count.
    client.send(
        b"EHLO client.example.org\r\n\
          MAIL FROM:<sender@example.org>\r\n\
          RCPT TO:<one@example.test>\r\n\
          RCPT TO:<not an address>\r\n\
          RCPT TO:<two@example.test>\r\n\
          DATA\r\n",
    );
    assert_eq!(client.read_reply().code, 250);
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    client.read_reply().expect(501, "5.1.3");
    client.read_reply().expect(250, "2.1.5");
    assert_eq!(client.read_reply().code, 354);
    client.send(b"Subject: partial\r\n\r\nbody\r\n.\r\nNOOP\r\n");
    let accepted = client.read_reply();
    accepted.expect(250, "2.0.0");
    client.read_reply().expect(250, "2.0.0");

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(
        spooled[0].recipients,
        vec!["one@example.test".to_owned(), "two@example.test".to_owned()]
    );
}
