//! MX routing with a DNS server the test runs itself: the preferred MX host is down, so
//! the message goes to the next one; a domain with a null MX bounces at once (5.1.10);
//! a domain without MX records is delivered to its address record.

use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, SmtpClient, sample_message};

fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn the_second_mx_takes_the_mail_when_the_first_is_down_and_a_null_mx_bounces() {
    // Both MX hosts use the same port (the gateway's `mx_port`); nothing listens on it at
    // 127.0.0.2, so the preferred host refuses the connection.
    let port = free_port_on("127.0.0.1");
    let sink = SinkServer::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Behaviour::default(),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let dns = DnsServer::start_with_args(&[
        "--local=/mx.test/".into(),
        "--local=/nullmx.test/".into(),
        "--local=/plain.test/".into(),
        "--mx-host=mx.test,mx1.mx.test,10".into(),
        "--mx-host=mx.test,mx2.mx.test,20".into(),
        "--host-record=mx1.mx.test,127.0.0.2".into(),
        "--host-record=mx2.mx.test,127.0.0.1".into(),
        "--mx-host=nullmx.test,.,0".into(),
        "--host-record=plain.test,127.0.0.1".into(),
    ]);
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["mx.test".into(), "nullmx.test".into(), "plain.test".into()],
            ..GatewayConfig::default()
        }
        .dns(dns.addr(), 2000)
        .top(
            "delivery",
            &format!("{{ mx_port = {port}, connect_timeout = \"2s\" }}"),
        )
        .route("back", &["example.org"], senders.addr()),
    );

    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["user@mx.test"],
            &sample_message("via-mx", "hi"),
        )
        .expect(250, "2.0.0");
    client
        .send_mail(
            "sender@example.org",
            &["user@plain.test"],
            &sample_message("implicit-mx", "hi"),
        )
        .expect(250, "2.0.0");
    client
        .send_mail(
            "sender@example.org",
            &["user@nullmx.test"],
            &sample_message("null-mx", "hi"),
        )
        .expect(250, "2.0.0");

    let received = sink.wait_for(2, Duration::from_secs(30));
    let mut subjects: Vec<String> = received
        .iter()
        .map(|m| {
            m.text()
                .lines()
                .find(|l| l.starts_with("Subject: "))
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    subjects.sort();
    assert_eq!(subjects, vec!["Subject: implicit-mx", "Subject: via-mx"]);

    let bounce = senders.wait_for(1, Duration::from_secs(30));
    let text = bounce[0].text();
    assert!(
        text.contains("Final-Recipient: rfc822; user@nullmx.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.10"), "{text}");
    assert!(
        gateway.log().contains("127.0.0.2"),
        "the preferred MX was not tried first:\n{}",
        gateway.log()
    );
}
