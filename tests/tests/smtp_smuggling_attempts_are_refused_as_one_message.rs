//! SMTP smuggling: a message that hides a fake end of data (`<LF>.<LF>` and friends)
//! followed by a second, injected transaction must never be split in two. Under the
//! default policy the whole thing is ONE message, refused with 550 5.5.2 for its bare
//! line endings; the injected commands are never executed (no reply of theirs ever
//! arrives) and nothing reaches the spool.

use tidegate_e2e::{Gateway, SmtpClient};

/// The fake terminators: each would end the data for some lenient server.
const FAKE_ENDS: &[(&str, &[u8])] = &[
    ("<LF>.<LF>", b"\n.\n"),
    ("<LF>.<CR><LF>", b"\n.\r\n"),
    ("<CR><LF>.<LF>", b"\r\n.\n"),
    ("<CR>.<CR>", b"\r.\r"),
    ("<CR>.<CR><LF>", b"\r.\r\n"),
    ("<CR><LF>.<CR>", b"\r\n.\r"),
    ("<LF>.<CR>", b"\n.\r"),
    ("<CR>.<LF>", b"\r.\n"),
];

/// The injected second transaction, after the fake end.
const INJECTED: &[u8] = b"MAIL FROM:<ceo@example.test>\r\n\
    RCPT TO:<victim@example.test>\r\n\
    DATA\r\n\
    Subject: smuggled\r\n\
    \r\n\
    Pay the invoice.\r\n";

fn attempt(fake_end: &[u8]) -> Vec<u8> {
    let mut data = b"Subject: cover\r\n\r\nInnocent text.".to_vec();
    data.extend_from_slice(fake_end);
    data.extend_from_slice(INJECTED);
    data.extend_from_slice(b"\r\n.\r\n");
    data
}

/// Opens a transaction on `client` and sends `data` (which carries its own terminator)
/// after the 354 reply; returns the reply to the data.
fn send_data(client: &mut SmtpClient, data: &[u8]) -> tidegate_e2e::Reply {
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(client.command("DATA").code, 354);
    client.send(data);
    client.read_reply()
}

#[test]
fn each_fake_end_of_data_yields_exactly_one_550_5_5_2() {
    let gateway = Gateway::start();
    for (name, fake_end) in FAKE_ENDS {
        // A fresh session for each, so error counting cannot interfere.
        let mut client = SmtpClient::ehlo(gateway.addr());
        let reply = send_data(&mut client, &attempt(fake_end));
        assert_eq!(
            (reply.code, reply.enhanced()),
            (550, Some("5.5.2")),
            "{name}: {reply:?}"
        );
        // Had the injected MAIL/RCPT/DATA run, their replies (250 2.1.0, 250 2.1.5, 354)
        // would come next; the next reply must be the NOOP's.
        let noop = client.command("NOOP");
        assert_eq!(
            (noop.code, noop.enhanced()),
            (250, Some("2.0.0")),
            "{name}: reply after the refusal was {noop:?}"
        );
        client.command("QUIT").expect(221, "2.0.0");
        assert!(client.is_closed(), "{name}");
        assert_eq!(gateway.spool_list(), Vec::new(), "{name}");
        assert_eq!(gateway.spool_partials(), Vec::<String>::new(), "{name}");
    }
}

#[test]
fn a_smuggling_attempt_sent_in_one_write_with_the_commands_is_one_refused_message() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    let mut wire = b"EHLO client.example.org\r\n\
        MAIL FROM:<sender@example.org>\r\n\
        RCPT TO:<user@example.test>\r\n\
        DATA\r\n"
        .to_vec();
    wire.extend_from_slice(&attempt(b"\n.\n"));
    wire.extend_from_slice(b"NOOP\r\n");
    client.send(&wire);
    assert_eq!(client.read_reply().code, 250);
    client.read_reply().expect(250, "2.1.0");
    client.read_reply().expect(250, "2.1.5");
    assert_eq!(client.read_reply().code, 354);
    client.read_reply().expect(550, "5.5.2");
    client.read_reply().expect(250, "2.0.0");
    assert_eq!(gateway.spool_list(), Vec::new());
}

#[test]
fn bare_line_endings_anywhere_are_refused_and_the_session_goes_on() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    for (name, data) in [
        ("bare LF", &b"Subject: lf\r\n\r\none\ntwo\r\n.\r\n"[..]),
        ("bare CR", b"Subject: cr\r\n\r\none\rtwo\r\n.\r\n"),
        (
            "bare LF in a header",
            b"Subject: lf\nX: y\r\n\r\nbody\r\n.\r\n",
        ),
        ("LF CR", b"Subject: lfcr\r\n\r\none\n\rtwo\r\n.\r\n"),
        ("CR CR LF", b"Subject: crcrlf\r\n\r\none\r\r\ntwo\r\n.\r\n"),
        (
            "bare LF at the very start",
            b"\nSubject: x\r\n\r\nbody\r\n.\r\n",
        ),
    ] {
        let reply = send_data(&mut client, data);
        assert_eq!(
            (reply.code, reply.enhanced()),
            (550, Some("5.5.2")),
            "{name}: {reply:?}"
        );
    }
    assert_eq!(gateway.spool_list(), Vec::new());
    // The same session still delivers a clean message.
    client
        .send_mail(
            "sender@example.org",
            &["user@example.test"],
            "Subject: clean\r\n\r\nclean\r\n",
        )
        .expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 1);
}

#[test]
fn bare_line_endings_in_bdat_are_refused_too() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let chunk = attempt(b"\n.\n");
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.send(format!("BDAT {} LAST\r\n", chunk.len()).as_bytes());
    client.send(&chunk);
    client.read_reply().expect(550, "5.5.2");
    client.command("NOOP").expect(250, "2.0.0");
    // A bare CR at the very end of the last chunk can never become CRLF.
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.send(b"BDAT 3\r\nab\rBDAT 0 LAST\r\n");
    client.read_reply().expect(250, "2.0.0");
    client.read_reply().expect(550, "5.5.2");
    assert_eq!(gateway.spool_list(), Vec::new());
}
