//! CHUNKING (RFC 3030) with PIPELINING: several transactions sent back to back in one
//! write, each chunk's octets following its BDAT command directly, all come out as
//! separate, byte-exact messages; BDAT does no dot handling at all.

use tidegate_e2e::{Gateway, SmtpClient, without_trace_header};

#[test]
fn three_bdat_transactions_in_one_write_are_answered_and_spooled() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    assert_eq!(client.greeting.code, 220);

    // The first message in one LAST chunk; the second split over two chunks with a CRLF
    // straddling the boundary; the third holds a lone dot line, which is not a terminator
    // in BDAT and must be stored as is.
    let first = "Subject: bdat one\r\n\r\nfirst\r\n".to_owned();
    let second_parts = ["Subject: bdat two\r\n\r\nsecond\r", "\n..and more\r\n"];
    let third = "Subject: bdat three\r\n\r\n.\r\nthird\r\n".to_owned();

    let mut wire = b"EHLO client.example.org\r\n".to_vec();
    let mail = |wire: &mut Vec<u8>, rcpt: &str| {
        wire.extend_from_slice(
            format!("MAIL FROM:<sender@example.org>\r\nRCPT TO:<{rcpt}>\r\n").as_bytes(),
        );
    };
    mail(&mut wire, "one@example.test");
    wire.extend_from_slice(format!("BDAT {} LAST\r\n{first}", first.len()).as_bytes());
    mail(&mut wire, "two@example.test");
    wire.extend_from_slice(
        format!("BDAT {}\r\n{}", second_parts[0].len(), second_parts[0]).as_bytes(),
    );
    wire.extend_from_slice(
        format!("BDAT {} LAST\r\n{}", second_parts[1].len(), second_parts[1]).as_bytes(),
    );
    mail(&mut wire, "three@example.test");
    wire.extend_from_slice(format!("BDAT {} LAST\r\n{third}", third.len()).as_bytes());
    wire.extend_from_slice(b"QUIT\r\n");
    client.send(&wire);

    assert_eq!(client.read_reply().code, 250);
    let mut ids = Vec::new();
    // First transaction.
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    ids.push(reply.queue_id().expect("queue id"));
    // Second: the intermediate chunk is acknowledged with its size.
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    let chunk = client.read_reply();
    chunk.expect(250, "2.0.0");
    assert!(
        chunk
            .text()
            .contains(&format!("{} octets", second_parts[0].len())),
        "{chunk:?}"
    );
    assert_eq!(chunk.queue_id(), None, "{chunk:?}");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    ids.push(reply.queue_id().expect("queue id"));
    // Third.
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    ids.push(reply.queue_id().expect("queue id"));
    client.read_reply().expect(221, "2.0.0");
    assert!(client.is_closed());

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 3, "{spooled:?}");
    let second = second_parts.concat();
    for (id, message, rcpt) in [
        (&ids[0], &first, "one@example.test"),
        (&ids[1], &second, "two@example.test"),
        (&ids[2], &third, "three@example.test"),
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
fn bdat_and_data_transactions_mix_in_one_session() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let chunked = "Subject: chunked\r\n\r\nbody\r\n";
    client.send(
        format!(
            "MAIL FROM:<>\r\nRCPT TO:<user@example.test>\r\nBDAT {} LAST\r\n{chunked}",
            chunked.len()
        )
        .as_bytes(),
    );
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    let first = client.read_reply();
    first.expect(250, "2.0.0");
    // An empty LAST chunk ends a message whose content came in earlier chunks.
    client.send(b"MAIL FROM:<>\r\nRCPT TO:<user@example.test>\r\nBDAT 4\r\nhi\r\nBDAT 0 LAST\r\n");
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    client.read_reply().expect(250, "2.0.0");
    let second = client.read_reply();
    second.expect(250, "2.0.0");
    let reply = client.send_mail(
        "s@example.org",
        &["user@example.test"],
        "Subject: data\r\n\r\nx",
    );
    reply.expect(250, "2.0.0");

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 3, "{spooled:?}");
    let stored = gateway.spool_message(&second.queue_id().expect("queue id"));
    assert_eq!(without_trace_header(&stored), b"hi\r\n");
    let stored = gateway.spool_message(&first.queue_id().expect("queue id"));
    assert_eq!(without_trace_header(&stored), chunked.as_bytes());
}
