//! A plain, unpipelined ESMTP session ends with the message, trace header first, in the
//! spool, and the spool entry records the envelope.

use tidegate_e2e::{Gateway, SmtpClient, sample_message};

#[test]
fn a_full_session_spools_the_message_with_a_received_header() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    assert_eq!(client.greeting.code, 220);
    assert_eq!(client.greeting.text(), "relay.example.test ESMTP");

    let ehlo = client.command("EHLO client.example.org");
    assert_eq!(ehlo.code, 250);
    for extension in [
        "PIPELINING",
        "SIZE 10485760",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
    ] {
        assert!(
            ehlo.lines.iter().any(|l| l == extension),
            "{extension} missing: {ehlo:?}"
        );
    }

    let message = sample_message("full-session", "Hello.\r\n.leading dot line\r\nBye.");
    let reply = client.send_mail("sender@example.org", &["user@example.test"], &message);
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().expect("queue id in reply");
    client.command("QUIT").expect(221, "2.0.0");

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].id, id);
    assert_eq!(spooled[0].sender, "sender@example.org");
    assert_eq!(spooled[0].recipients, vec!["user@example.test".to_owned()]);

    let stored = String::from_utf8(gateway.spool_message(&id)).unwrap();
    assert!(stored.starts_with("Received: from client.example.org ([127.0.0.1])\r\n\tby relay.example.test (Tidegate) with ESMTP id "), "{stored}");
    assert!(
        stored.contains(&format!("id {id}\r\n\tfor <user@example.test>;")),
        "{stored}"
    );
    // The dot-stuffed line arrives unstuffed, and the message is otherwise byte-exact.
    assert!(stored.ends_with(&message), "{stored}");
}
