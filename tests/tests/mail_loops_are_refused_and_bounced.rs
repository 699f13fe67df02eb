//! Mail loops are broken at both ends: a message that arrives with too many `Received:`
//! fields is refused at the end of DATA or BDAT (554 5.4.6), and a message whose next hop
//! is this gateway itself (one of its own listeners, including through a wildcard
//! listener, or a server that greets or answers EHLO with our host name) bounces with
//! 5.4.6 "mail loops back to myself" instead of circulating.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

/// A message with `hops` `Received:` fields in its header.
fn message_with_hops(hops: usize) -> String {
    let mut text = String::new();
    for n in 0..hops {
        text.push_str(&format!(
            "Received: from hop{n}.example.org\r\n\tby hop{}.example.org; Tue, 1 Dec 2026 08:00:00 +0000\r\n",
            n + 1
        ));
    }
    text + &sample_message("hops", "Received: in the body does not count")
}

fn send_data(client: &mut SmtpClient, message: &str) -> tidegate_e2e::Reply {
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
    client.command("DATA").expect_code(354);
    client.send(&tidegate_e2e::dot_stuff(message.as_bytes()));
    client.send(b".\r\n");
    client.read_reply()
}

#[test]
fn a_message_over_the_hop_limit_is_refused_with_5_4_6() {
    let gateway = Gateway::start_with(&GatewayConfig::default().limit("max_hops", 10));
    let mut client = SmtpClient::ehlo(gateway.addr());
    // Nine fields and ours make ten: at the limit, accepted.
    send_data(&mut client, &message_with_hops(9)).expect(250, "2.0.0");
    // Ten and ours would be eleven.
    let refused = send_data(&mut client, &message_with_hops(10));
    refused.expect(554, "5.4.6");
    assert!(refused.text().contains("Too many hops"), "{refused:?}");

    // BDAT, with the header split across chunks.
    let message = message_with_hops(10);
    let (first, second) = message.split_at(message.len() / 2);
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
    client.send(format!("BDAT {}\r\n{first}", first.len()).as_bytes());
    client.read_reply().expect(250, "2.0.0");
    client.send(format!("BDAT {} LAST\r\n{second}", second.len()).as_bytes());
    client.read_reply().expect(554, "5.4.6");

    // The session goes on, and only the first message is in the spool.
    client.command("NOOP").expect(250, "2.0.0");
    assert_eq!(gateway.spool_list().len(), 1, "{:?}", gateway.spool_list());
}

#[test]
fn the_default_hop_limit_is_50() {
    let gateway = Gateway::start();
    let mut client = SmtpClient::ehlo(gateway.addr());
    send_data(&mut client, &message_with_hops(49)).expect(250, "2.0.0");
    send_data(&mut client, &message_with_hops(50)).expect(554, "5.4.6");
}

/// A loopback port free right now.
fn free_port() -> u16 {
    // Free on every address: one of these ports is bound on 0.0.0.0.
    let socket = TcpListener::bind("0.0.0.0:0").expect("bind a port");
    socket.local_addr().expect("local address").port()
}

/// Waits for `count` bounces at `senders` and checks each says 5.4.6 and why.
fn expect_loop_bounces(senders: &SinkServer, count: usize, gateway: &Gateway) {
    let bounces = senders.wait_for(count, Duration::from_secs(30));
    assert_eq!(bounces.len(), count, "{}", gateway.log());
    for bounce in &bounces {
        let text = bounce.text();
        assert_eq!(bounce.mail_from, "", "a bounce goes out with a null sender");
        assert!(text.contains("Status: 5.4.6"), "{text}");
        assert!(text.contains("loops back to myself"), "{text}");
    }
}

#[test]
fn a_route_back_to_our_own_listeners_bounces_instead_of_looping() {
    let wildcard_port = free_port();
    let exact_port = free_port();
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let to_wildcard: SocketAddr = format!("127.0.0.1:{wildcard_port}").parse().unwrap();
    let to_exact: SocketAddr = format!("127.0.0.1:{exact_port}").parse().unwrap();
    let gateway = Gateway::start_with(
        &GatewayConfig {
            listeners: vec![
                ("any".into(), format!("0.0.0.0:{wildcard_port}")),
                ("exact".into(), to_exact.to_string()),
            ],
            accept_domains: vec!["a.example.test".into(), "b.example.test".into()],
            ..GatewayConfig::default()
        }
        // 127.0.0.1 reaches the listener bound to 0.0.0.0.
        .route("via-wildcard", &["a.example.test"], to_wildcard)
        .route("via-exact", &["b.example.test"], to_exact)
        .route("back", &["example.org"], senders.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr_of("exact"));
    for rcpt in ["alice@a.example.test", "bob@b.example.test"] {
        client
            .send_mail("sender@example.org", &[rcpt], &sample_message("loop", "x"))
            .expect(250, "2.0.0");
    }
    expect_loop_bounces(&senders, 2, &gateway);
    // Neither message came back in over SMTP: the gateway accepted two, not more.
    std::thread::sleep(Duration::from_millis(300));
    let accepted = gateway.log().matches("message accepted").count();
    assert_eq!(accepted, 2, "{}", gateway.log());
}

#[test]
fn a_next_hop_that_calls_itself_by_our_name_bounces_instead_of_looping() {
    let greets_as_us = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().hostname("RELAY.example.test"),
    );
    let ehlo_as_us = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().ehlo_name("relay.example.test"),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["a.example.test".into(), "b.example.test".into()],
            ..GatewayConfig::default()
        }
        .route("greeting", &["a.example.test"], greets_as_us.addr())
        .route("ehlo", &["b.example.test"], ehlo_as_us.addr())
        .route("back", &["example.org"], senders.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    for rcpt in ["alice@a.example.test", "bob@b.example.test"] {
        client
            .send_mail("sender@example.org", &[rcpt], &sample_message("loop", "x"))
            .expect(250, "2.0.0");
    }
    expect_loop_bounces(&senders, 2, &gateway);
    assert!(greets_as_us.received().is_empty());
    assert!(ehlo_as_us.received().is_empty());
    // The gateway said goodbye rather than starting a transaction.
    for sink in [&greets_as_us, &ehlo_as_us] {
        assert!(
            !sink.transcript().iter().any(|l| l.starts_with("MAIL")),
            "{:?}",
            sink.transcript()
        );
    }
}
