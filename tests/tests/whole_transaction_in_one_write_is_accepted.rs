//! A client that sends a whole session, message and QUIT included, in a single write
//! (more than RFC 2920 allows, but common) gets every reply in order: the server keeps
//! what arrived after DATA as message data and what arrived after the dot as commands.

use tidegate_e2e::{Gateway, SmtpClient, dot_stuff, sample_message, without_trace_header};

#[test]
fn commands_message_and_quit_in_one_write_are_all_answered() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    assert_eq!(client.greeting.code, 220);

    let message = sample_message("one-write", "Body line.\r\n..two dots\r\nEnd.");
    let mut wire = b"EHLO client.example.org\r\n\
        MAIL FROM:<sender@example.org>\r\n\
        RCPT TO:<user@example.test>\r\n\
        DATA\r\n"
        .to_vec();
    wire.extend_from_slice(&dot_stuff(message.as_bytes()));
    wire.extend_from_slice(b".\r\nNOOP\r\nQUIT\r\n");
    client.send(&wire);

    assert_eq!(client.read_reply().code, 250);
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    assert_eq!(client.read_reply().code, 354);
    let accepted = client.read_reply();
    accepted.expect(250, "2.0.0");
    let id = accepted.queue_id().expect("queue id");
    client.read_reply().expect(250, "2.0.0"); // NOOP, read as a command after the dot
    client.read_reply().expect(221, "2.0.0");
    assert!(client.is_closed());

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].id, id);
    let stored = gateway.spool_message(&id);
    assert_eq!(
        String::from_utf8_lossy(without_trace_header(&stored)),
        message
    );
}

#[test]
fn two_data_transactions_in_one_write_are_both_spooled() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    let first = sample_message("first-of-two", "one");
    let second = sample_message("second-of-two", "two");
    let mut wire = b"EHLO client.example.org\r\n".to_vec();
    for (message, rcpt) in [(&first, "a@example.test"), (&second, "b@example.test")] {
        wire.extend_from_slice(
            format!("MAIL FROM:<sender@example.org>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n").as_bytes(),
        );
        wire.extend_from_slice(&dot_stuff(message.as_bytes()));
        wire.extend_from_slice(b".\r\n");
    }
    wire.extend_from_slice(b"QUIT\r\n");
    client.send(&wire);

    assert_eq!(client.read_reply().code, 250);
    let mut ids = Vec::new();
    for _ in 0..2 {
        client.read_reply().expect(250, "2.1.0");
        client.read_reply().expect(250, "2.1.5");
        assert_eq!(client.read_reply().code, 354);
        let accepted = client.read_reply();
        accepted.expect(250, "2.0.0");
        ids.push(accepted.queue_id().expect("queue id"));
    }
    client.read_reply().expect(221, "2.0.0");
    assert_ne!(ids[0], ids[1]);

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 2, "{spooled:?}");
    for (id, message, rcpt) in [
        (&ids[0], &first, "a@example.test"),
        (&ids[1], &second, "b@example.test"),
    ] {
        let entry = spooled.iter().find(|e| &e.id == id).expect("spooled");
        assert_eq!(entry.recipients, vec![rcpt.to_owned()]);
        let stored = gateway.spool_message(id);
        assert_eq!(
            String::from_utf8_lossy(without_trace_header(&stored)),
            *message
        );
    }
}

#[test]
fn a_message_larger_than_any_buffer_and_the_commands_after_it_in_one_write() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    // About 300 KB, with dot lines scattered through it so that some straddle the
    // server's read boundaries, then more commands in the same write.
    let mut body = String::new();
    let mut n: usize = 0;
    while body.len() < 300_000 {
        n += 1;
        if n.is_multiple_of(7) {
            body.push_str(".dot line\r\n");
        } else if n.is_multiple_of(11) {
            body.push_str("..\r\n");
        } else {
            body.push_str(&format!("line {n} {}\r\n", "x".repeat(n % 90)));
        }
    }
    let message = format!("Subject: large\r\n\r\n{body}");
    let chunk = "Subject: chunk\r\n\r\nafter the large one\r\n";
    let mut wire = b"EHLO client.example.org\r\n\
        MAIL FROM:<sender@example.org>\r\n\
        RCPT TO:<user@example.test>\r\n\
        DATA\r\n"
        .to_vec();
    wire.extend_from_slice(&dot_stuff(message.as_bytes()));
    wire.extend_from_slice(
        format!(
            ".\r\nMAIL FROM:<sender@example.org>\r\nRCPT TO:<user@example.test>\r\nBDAT {} LAST\r\n{chunk}QUIT\r\n",
            chunk.len()
        )
        .as_bytes(),
    );
    client.send(&wire);

    assert_eq!(client.read_reply().code, 250);
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    assert_eq!(client.read_reply().code, 354);
    let large = client.read_reply();
    large.expect(250, "2.0.0");
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    let small = client.read_reply();
    small.expect(250, "2.0.0");
    client.read_reply().expect(221, "2.0.0");

    let stored = gateway.spool_message(&large.queue_id().unwrap());
    assert!(
        without_trace_header(&stored) == message.as_bytes(),
        "the large message differs"
    );
    let stored = gateway.spool_message(&small.queue_id().unwrap());
    assert_eq!(without_trace_header(&stored), chunk.as_bytes());
}
