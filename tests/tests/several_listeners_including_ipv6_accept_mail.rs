//! Several listeners run at once, each on its own port, and an IPv6 listener works like
//! an IPv4 one: a message through each lands in the spool, with the right client address
//! in its trace header and the right listener recorded.

use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient};

fn deliver(gateway: &Gateway, listener: &str, subject: &str) -> String {
    let addr = gateway.addr_of(listener);
    let mut client = SmtpClient::ehlo(addr);
    let message = format!("Subject: {subject}\r\n\r\nvia {listener}\r\n");
    let reply = client.send_mail("sender@example.org", &["user@example.test"], &message);
    reply.expect(250, "2.0.0");
    client.command("QUIT").expect(221, "2.0.0");
    let id = reply.queue_id().expect("queue id");
    let stored = String::from_utf8(gateway.spool_message(&id)).unwrap();
    assert!(stored.ends_with(&message), "{stored}");
    stored
}

#[test]
fn two_ipv4_listeners_both_accept_mail() {
    let config = GatewayConfig {
        listeners: vec![
            ("mx".into(), "127.0.0.1:0".into()),
            // The configuration refuses the same address twice, even with port 0.
            ("mx2".into(), "127.0.0.2:0".into()),
        ],
        ..Default::default()
    };
    let gateway = Gateway::start_with(&config);
    assert_ne!(gateway.addr_of("mx"), gateway.addr_of("mx2"));
    // Sessions on both at the same time.
    let mut first = SmtpClient::ehlo(gateway.addr_of("mx"));
    let mut second = SmtpClient::ehlo(gateway.addr_of("mx2"));
    first
        .send_mail(
            "a@example.org",
            &["user@example.test"],
            "Subject: 1\r\n\r\n1\r\n",
        )
        .expect(250, "2.0.0");
    second
        .send_mail(
            "b@example.org",
            &["user@example.test"],
            "Subject: 2\r\n\r\n2\r\n",
        )
        .expect(250, "2.0.0");
    let spooled = gateway.spool_list();
    assert_eq!(spooled.len(), 2, "{spooled:?}");
    let mut senders: Vec<&str> = spooled.iter().map(|e| e.sender.as_str()).collect();
    senders.sort_unstable();
    assert_eq!(senders, ["a@example.org", "b@example.org"]);
}

#[test]
fn an_ipv4_and_an_ipv6_listener_both_accept_mail() {
    if let Err(e) = std::net::TcpListener::bind("[::1]:0") {
        println!("skipping: IPv6 loopback is not available here ({e})");
        eprintln!("skipping: IPv6 loopback is not available here ({e})");
        return;
    }
    let config = GatewayConfig {
        listeners: vec![
            ("mx".into(), "127.0.0.1:0".into()),
            ("mx6".into(), "[::1]:0".into()),
        ],
        ..Default::default()
    };
    let gateway = Gateway::start_with(&config);
    assert!(gateway.addr_of("mx").is_ipv4());
    assert!(gateway.addr_of("mx6").is_ipv6());

    let stored4 = deliver(&gateway, "mx", "over IPv4");
    assert!(
        stored4.starts_with("Received: from client.example.org ([127.0.0.1])\r\n"),
        "{stored4}"
    );
    // ::1 is not in relay_networks, but example.test is an accepted domain.
    let stored6 = deliver(&gateway, "mx6", "over IPv6");
    assert!(
        stored6.starts_with("Received: from client.example.org ([IPv6:::1])\r\n"),
        "{stored6}"
    );
    assert_eq!(gateway.spool_list().len(), 2);

    // Relay control applies on the IPv6 listener: ::1 may not relay elsewhere.
    let mut client = SmtpClient::ehlo(gateway.addr_of("mx6"));
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    let reply = client.command("RCPT TO:<someone@elsewhere.example>");
    assert_eq!(
        (reply.code / 100, reply.enhanced()),
        (5, Some("5.7.1")),
        "{reply:?}"
    );
}
