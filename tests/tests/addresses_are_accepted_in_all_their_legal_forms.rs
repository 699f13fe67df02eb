//! Legal but unusual paths are accepted and recorded faithfully in the envelope: the null
//! reverse path, quoted local parts, source routes (dropped), postmaster, and UTF-8
//! addresses, which need SMTPUTF8 (RFC 6531) and are refused with 553 5.6.7 without it.

use tidegate_e2e::{Gateway, SmtpClient};

fn deliver(client: &mut SmtpClient, mail: &str, rcpts: &[&str]) -> String {
    client.command(mail).expect(250, "2.1.0");
    for rcpt in rcpts {
        client.command(rcpt).expect(250, "2.1.5");
    }
    assert_eq!(client.command("DATA").code, 354);
    client.send(b"Subject: addresses\r\n\r\nx\r\n.\r\n");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    reply.queue_id().expect("queue id")
}

#[test]
fn the_null_reverse_path_is_accepted() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let id = deliver(
        &mut client,
        "MAIL FROM:<>",
        &["RCPT TO:<user@example.test>"],
    );
    // Also with a space before the path, as many clients send it.
    let id2 = deliver(
        &mut client,
        "MAIL FROM: <>",
        &["RCPT TO: <user@example.test>"],
    );
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 2);
    for id in [id, id2] {
        let entry = spooled.iter().find(|e| e.id == id).unwrap();
        assert_eq!(entry.sender, "");
        assert_eq!(entry.recipients, vec!["user@example.test".to_owned()]);
    }
}

#[test]
fn a_quoted_local_part_is_accepted_and_kept_in_the_envelope() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let id = deliver(
        &mut client,
        "MAIL FROM:<sender@example.org>",
        &["RCPT TO:<\"john doe\"@example.test>"],
    );
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(
        spooled[0].recipients,
        vec!["\"john doe\"@example.test".to_owned()]
    );
    let stored = String::from_utf8(gateway.spool_message(&id)).unwrap();
    assert!(
        stored.contains("\r\n\tfor <\"john doe\"@example.test>;"),
        "{stored}"
    );
}

#[test]
fn domains_are_lowercased_routes_dropped_and_duplicates_merged() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    deliver(
        &mut client,
        "MAIL FROM:<Sender@Example.ORG>",
        &[
            "RCPT TO:<User@EXAMPLE.test>",
            "RCPT TO:<@relay.example.net,@other.example.net:User@example.TEST>",
            "RCPT TO:<Postmaster>",
            "RCPT TO:<other@[127.0.0.1]>",
        ],
    );
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    // Local parts keep their case; the same recipient twice is one recipient.
    assert_eq!(spooled[0].sender, "Sender@example.org");
    assert_eq!(
        spooled[0].recipients,
        vec![
            "User@example.test".to_owned(),
            "postmaster@relay.example.test".to_owned(),
            "other@[127.0.0.1]".to_owned(),
        ]
    );
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    // Without SMTPUTF8: refused, for the sender and for a recipient.
    client
        .command("MAIL FROM:<jøran@example.org>")
        .expect(553, "5.6.7");
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<用户@example.test>")
        .expect(553, "5.6.7");
    client.command("RSET").expect(250, "2.0.0");

    // With SMTPUTF8 on MAIL: accepted, and recorded as UTF-8.
    let id = deliver(
        &mut client,
        "MAIL FROM:<jøran@example.org> SMTPUTF8",
        &["RCPT TO:<用户@example.test>"],
    );
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1);
    assert_eq!(spooled[0].sender, "jøran@example.org");
    assert_eq!(spooled[0].recipients, vec!["用户@example.test".to_owned()]);
    let stored = String::from_utf8(gateway.spool_message(&id)).unwrap();
    assert!(stored.contains(" with UTF8SMTP id "), "{stored}");
    assert!(stored.contains("for <用户@example.test>;"), "{stored}");
}

#[test]
fn utf8_addresses_are_refused_after_helo() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::connect(gateway.addr());
    assert_eq!(client.command("HELO client.example.org").code, 250);
    client
        .command("MAIL FROM:<jøran@example.org>")
        .expect(553, "5.6.7");
}
