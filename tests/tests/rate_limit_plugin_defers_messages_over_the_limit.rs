//! The shipped `rate-limit` plugin, loaded as real Wasm, counts accepted messages per
//! client address and per sender in the host's key/value store, across sessions, and
//! defers the message over the limit with 451 4.7.1 at RCPT TO while other clients and
//! senders go on.

use std::net::{IpAddr, Ipv4Addr};

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

const FIRST: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const SECOND: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

fn gateway(config: &[&str]) -> Gateway {
    let mut plugin = PluginEntry::new("rate-limit", "rate_limit.wasm");
    for line in config {
        plugin = plugin.config(line);
    }
    Gateway::start_with(&GatewayConfig {
        plugins: vec![plugin],
        ..GatewayConfig::default()
    })
}

fn session(gateway: &Gateway, from: IpAddr) -> SmtpClient {
    let mut client = SmtpClient::connect_from(from, gateway.addr());
    assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
    let reply = client.command("EHLO client.example.org");
    assert_eq!(reply.code, 250, "{reply:?}");
    client
}

fn send(client: &mut SmtpClient, sender: &str, recipients: &[&str]) {
    client
        .send_mail(sender, recipients, &sample_message("rate", "counted"))
        .expect(250, "2.0.0");
}

#[test]
fn the_fourth_message_in_a_minute_from_one_address_is_deferred_and_another_address_passes() {
    let gateway = gateway(&["per_ip = { limit = 3, window = \"1m\" }"]);

    // Three messages over two sessions: the count is shared by new connections.
    let mut first = session(&gateway, FIRST);
    send(&mut first, "a@example.org", &["u@example.test"]);
    send(&mut first, "b@example.org", &["u@example.test"]);
    first.command("QUIT");
    let mut second = session(&gateway, FIRST);
    send(&mut second, "c@example.org", &["u@example.test"]);
    second.command("QUIT");

    // The fourth, in a third session, is deferred before its data is sent.
    let mut third = session(&gateway, FIRST);
    third
        .command("MAIL FROM:<d@example.org>")
        .expect(250, "2.1.0");
    let reply = third.command("RCPT TO:<u@example.test>");
    reply.expect(451, "4.7.1");
    assert!(reply.text().contains("127.0.0.1"), "{reply:?}");
    // The session goes on: it may try again, and is still deferred.
    third.command("RSET").expect(250, "2.0.0");
    third
        .command("MAIL FROM:<d@example.org>")
        .expect(250, "2.1.0");
    third
        .command("RCPT TO:<u@example.test>")
        .expect(451, "4.7.1");

    // Another client address has a count of its own.
    let mut other = session(&gateway, SECOND);
    send(&mut other, "e@example.org", &["u@example.test"]);

    assert_eq!(gateway.spool_list().len(), 4);
    gateway.wait_for_log("client address over its message limit");
}

#[test]
fn a_message_counts_once_whatever_its_recipients_and_abandoned_ones_not_at_all() {
    let gateway = gateway(&["per_ip = { limit = 2, window = \"1h\" }"]);
    let mut client = session(&gateway, FIRST);
    // Abandoned transactions cost nothing.
    for _ in 0..3 {
        client
            .command("MAIL FROM:<a@example.org>")
            .expect(250, "2.1.0");
        client
            .command("RCPT TO:<u@example.test>")
            .expect(250, "2.1.5");
        client.command("RSET").expect(250, "2.0.0");
    }
    send(
        &mut client,
        "a@example.org",
        &["u@example.test", "v@example.test", "w@example.test"],
    );
    send(&mut client, "a@example.org", &["u@example.test"]);
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<u@example.test>")
        .expect(451, "4.7.1");
    assert_eq!(gateway.spool_list().len(), 2);
}

#[test]
fn a_sender_is_counted_from_every_address_and_other_senders_go_on() {
    let gateway = gateway(&["per_sender = { limit = 1, window = \"1h\" }"]);
    let mut first = session(&gateway, FIRST);
    send(&mut first, "bulk@example.org", &["u@example.test"]);

    let mut second = session(&gateway, SECOND);
    second
        .command("MAIL FROM:<Bulk@Example.org>")
        .expect(250, "2.1.0");
    let reply = second.command("RCPT TO:<u@example.test>");
    reply.expect(451, "4.7.1");
    assert!(
        reply.text().to_lowercase().contains("<bulk@example.org>"),
        "{reply:?}"
    );
    second.command("RSET").expect(250, "2.0.0");
    send(&mut second, "someone@example.org", &["u@example.test"]);
}

#[test]
fn exempt_addresses_are_never_limited() {
    let gateway = gateway(&[
        "per_ip = { limit = 1, window = \"1h\" }",
        "exempt_ips = [\"127.0.0.1\"]",
    ]);
    let mut exempt = session(&gateway, FIRST);
    for _ in 0..3 {
        send(&mut exempt, "app@example.org", &["u@example.test"]);
    }
    let mut limited = session(&gateway, SECOND);
    send(&mut limited, "x@example.org", &["u@example.test"]);
    limited
        .command("MAIL FROM:<x@example.org>")
        .expect(250, "2.1.0");
    limited
        .command("RCPT TO:<u@example.test>")
        .expect(451, "4.7.1");
}

#[test]
fn sessions_racing_for_the_last_slot_are_settled_at_the_end_of_data() {
    let gateway = gateway(&["per_ip = { limit = 1, window = \"1h\" }"]);
    let mut a = session(&gateway, SECOND);
    let mut b = session(&gateway, SECOND);
    // Both pass RCPT while nothing has been counted yet ...
    for client in [&mut a, &mut b] {
        client
            .command("MAIL FROM:<x@example.org>")
            .expect(250, "2.1.0");
        client
            .command("RCPT TO:<u@example.test>")
            .expect(250, "2.1.5");
    }
    // ... the first to finish its data takes the slot, the other is deferred there.
    for (client, code, enhanced) in [(&mut a, 250, "2.0.0"), (&mut b, 451, "4.7.1")] {
        assert_eq!(client.command("DATA").code, 354);
        client.send(b"Subject: race\r\n\r\nwho wins\r\n.\r\n");
        client.read_reply().expect(code, enhanced);
    }
    assert_eq!(gateway.spool_list().len(), 1);
    // The slot is taken: from now on the address is deferred at RCPT.
    b.command("MAIL FROM:<x@example.org>").expect(250, "2.1.0");
    b.command("RCPT TO:<u@example.test>").expect(451, "4.7.1");
}
