//! Relay control: a client outside the relay networks may send only to the accepted
//! domains, whatever trick it spells the recipient with; a client inside them may send
//! anywhere. A transaction whose every recipient was refused carries no message.

use std::net::IpAddr;

use tidegate_e2e::{Gateway, SmtpClient, sample_message};

/// 127.0.0.2 is loopback but outside the default `relay_networks = ["127.0.0.1/32"]`.
fn stranger() -> IpAddr {
    "127.0.0.2".parse().unwrap()
}

fn stranger_in_transaction(gateway: &Gateway) -> SmtpClient {
    let mut client = SmtpClient::connect_from(stranger(), gateway.addr());
    assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
    assert_eq!(client.command("EHLO stranger.example.org").code, 250);
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
}

#[test]
fn every_relay_trick_is_denied_to_a_stranger() {
    let gateway = Gateway::start();
    let mut client = stranger_in_transaction(&gateway);
    for trick in [
        "<user@other.test>",
        "<user@OTHER.TEST>",
        "<user%other.test@example.test>",
        "<other.test!user@example.test>",
        "<\"user@other.test\"@example.test>",
        // A source route: the final domain is the one that counts.
        "<@example.test,@example.test:user@other.test>",
        "<user@[127.0.0.1]>",
        "<user@sub.example.test>",
    ] {
        let reply = client.command(&format!("RCPT TO:{trick}"));
        assert_eq!(
            (reply.code, reply.enhanced()),
            (554, Some("5.7.1")),
            "{trick} was not denied: {reply:?}"
        );
    }
    // A trailing dot is a syntax error, never normalised into an accepted domain.
    let reply = client.command("RCPT TO:<user@example.test.>");
    assert_eq!(
        (reply.code, reply.enhanced()),
        (501, Some("5.1.3")),
        "trailing dot: {reply:?}"
    );

    // The transaction is still usable, and only the accepted recipient is in it.
    client
        .command("RCPT TO:<user@example.test>")
        .expect(250, "2.1.5");
    client.command("DATA");
    client.send(&tidegate_e2e::dot_stuff(
        sample_message("tricks", "Only one recipient.").as_bytes(),
    ));
    client.send(b".\r\n");
    let reply = client.read_reply();
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().expect("queue id");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].id, id);
    assert_eq!(spooled[0].recipients, vec!["user@example.test".to_owned()]);
}

#[test]
fn a_stranger_may_still_write_to_the_accepted_domains() {
    let gateway = Gateway::start();
    let mut client = stranger_in_transaction(&gateway);
    for recipient in ["<user@example.test>", "<user@EXAMPLE.TEST>", "<Postmaster>"] {
        client
            .command(&format!("RCPT TO:{recipient}"))
            .expect(250, "2.1.5");
    }
    client.command("DATA");
    client.send(&tidegate_e2e::dot_stuff(
        sample_message("local", "For us.").as_bytes(),
    ));
    client.send(b".\r\n");
    client.read_reply().expect(250, "2.0.0");
    client.command("QUIT").expect(221, "2.0.0");

    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    let recipients = &spooled[0].recipients;
    assert!(
        recipients.contains(&"postmaster@relay.example.test".to_owned()),
        "{recipients:?}"
    );
    assert!(
        recipients
            .iter()
            .any(|r| r.eq_ignore_ascii_case("user@example.test")),
        "{recipients:?}"
    );
    // The session really came from the stranger's address.
    let stored = String::from_utf8(gateway.spool_message(&spooled[0].id)).unwrap();
    assert!(stored.contains("[127.0.0.2]"), "{stored}");
}

#[test]
fn a_relay_network_client_may_send_anywhere() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail(
        "sender@example.test",
        &["user@other.test"],
        &sample_message("relayed", "Onward."),
    );
    reply.expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 1, "{spooled:?}");
    assert_eq!(spooled[0].recipients, vec!["user@other.test".to_owned()]);
}

#[test]
fn data_without_an_accepted_recipient_is_refused_and_nothing_is_spooled() {
    let gateway = Gateway::start();
    let mut client = stranger_in_transaction(&gateway);
    client
        .command("RCPT TO:<user@other.test>")
        .expect(554, "5.7.1");
    let reply = client.command("DATA");
    assert_eq!(reply.code, 554, "DATA with no recipient: {reply:?}");
    // Nothing was started: the session is back to commands, not in message data.
    client.command("NOOP").expect(250, "2.0.0");
    client.command("QUIT").expect(221, "2.0.0");
    assert!(client.is_closed());

    assert_eq!(gateway.spool_list(), Vec::new());
    assert_eq!(gateway.spool_partials(), Vec::<String>::new());
}
