//! Dot-stuffing (RFC 5321 §4.5.2): whatever lines start with dots, the stored message
//! (after the gateway's trace header) is byte for byte what the client meant to send,
//! through DATA; BDAT, which has no stuffing, stores its dots untouched.

use tidegate_e2e::{Gateway, SmtpClient, dot_stuff, without_trace_header};

fn send_and_fetch(gateway: &Gateway, client: &mut SmtpClient, original: &[u8]) -> Vec<u8> {
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    let stuffed = dot_stuff(original);
    client.send(&stuffed);
    client.send(b".\r\n");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().expect("queue id"));
    without_trace_header(&stored).to_vec()
}

#[test]
fn lines_starting_with_dots_come_back_unchanged() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let originals: &[&[u8]] = &[
        b"Subject: dots\r\n\r\n.one dot\r\n..two dots\r\n...three\r\n",
        b"Subject: dot lines\r\n\r\n.\r\n..\r\n...\r\nend\r\n",
        b"Subject: last line is a dot\r\n\r\nbody\r\n.\r\n",
        b"Subject: last line is two dots\r\n\r\n..\r\n",
        b".starts with a dot\r\n\r\nbody\r\n",
        b"Subject: dots inside\r\n\r\na.b\r\n .\r\nx..\r\n",
        b"Subject: empty lines\r\n\r\n\r\n\r\n.\r\n\r\n",
    ];
    for original in originals {
        let stored = send_and_fetch(&gateway, &mut client, original);
        assert_eq!(
            String::from_utf8_lossy(&stored),
            String::from_utf8_lossy(original)
        );
    }
    assert_eq!(gateway.spool_list().len(), originals.len());
}

#[test]
fn an_empty_message_is_stored_empty() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    // The terminator straight away: the DATA line's own CRLF starts the first line.
    client.send(b".\r\n");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    assert_eq!(without_trace_header(&stored), b"");
    // The trace header alone is the whole stored message, and spool list agrees.
    let entry = gateway.spool_list().pop().unwrap();
    assert_eq!(entry.size as usize, stored.len());
}

#[test]
fn stuffing_split_across_writes_is_undone_the_same_way() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    // Each piece ends where a decoder could lose track: after CR, after CRLF, after a
    // line-start dot, after `.` CR. The socket is set to send each write at once.
    client.stream().set_nodelay(true).unwrap();
    for piece in [
        &b"Subject: split\r\n\r\nline\r"[..],
        b"\n",
        b".",
        b".dot\r\n.",
        b"\r",
        b"\n",
    ] {
        client.send(piece);
    }
    // `..dot` unstuffs to `.dot`; `.` CR LF is the terminator.
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    assert_eq!(
        String::from_utf8_lossy(without_trace_header(&stored)),
        "Subject: split\r\n\r\nline\r\n.dot\r\n"
    );
}

#[test]
fn bdat_stores_dots_as_sent() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let original = b"Subject: bdat dots\r\n\r\n..\r\n.\r\n.x\r\n";
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.send(format!("BDAT {} LAST\r\n", original.len()).as_bytes());
    client.send(original);
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    let stored = gateway.spool_message(&reply.queue_id().unwrap());
    assert_eq!(without_trace_header(&stored), original);
}
