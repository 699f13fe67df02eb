//! A message that needs SMTPUTF8 is not bounced because the preferred MX host lacks it:
//! the next MX host is tried (nothing was sent to the first), and only when every MX host
//! lacks it does the message bounce with 5.6.7.

use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, SmtpClient};

fn send_utf8(client: &mut SmtpClient, rcpt: &str) {
    client
        .command("MAIL FROM:<sender@example.org> SMTPUTF8")
        .expect(250, "2.1.0");
    client
        .command(&format!("RCPT TO:<{rcpt}>"))
        .expect(250, "2.1.5");
    client.command("DATA").expect_code(354);
    client.send("Subject: grüße\r\n\r\nhallo\r\n.\r\n".as_bytes());
    client.read_reply().expect(250, "2.0.0");
}

#[test]
fn the_next_mx_takes_what_the_first_cannot_and_only_all_of_them_bounce_it() {
    // Every MX host on one port (the gateway's `mx_port`), at different addresses.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let old_first = SinkServer::start(
        format!("127.0.0.2:{port}").parse().unwrap(),
        Behaviour::default().no_smtputf8(),
    );
    let modern = SinkServer::start(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Behaviour::default(),
    );
    let old_second = SinkServer::start(
        format!("127.0.0.3:{port}").parse().unwrap(),
        Behaviour::default().no_smtputf8(),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let dns = DnsServer::start_with_args(&[
        "--local=/mx.test/".into(),
        "--local=/old.test/".into(),
        "--mx-host=mx.test,mx1.mx.test,10".into(),
        "--mx-host=mx.test,mx2.mx.test,20".into(),
        "--host-record=mx1.mx.test,127.0.0.2".into(),
        "--host-record=mx2.mx.test,127.0.0.1".into(),
        "--mx-host=old.test,mx1.old.test,10".into(),
        "--mx-host=old.test,mx2.old.test,20".into(),
        "--host-record=mx1.old.test,127.0.0.2".into(),
        "--host-record=mx2.old.test,127.0.0.3".into(),
    ]);
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["mx.test".into(), "old.test".into()],
            ..GatewayConfig::default()
        }
        .dns(dns.addr(), 2000)
        .top("delivery", &format!("{{ mx_port = {port} }}"))
        .route("back", &["example.org"], senders.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    send_utf8(&mut client, "jürgen@mx.test");
    let received = modern.wait_for(1, Duration::from_secs(30));
    assert_eq!(received[0].rcpt_to, ["jürgen@mx.test"]);
    // The first MX was asked (EHLO) but given nothing.
    assert!(
        old_first.transcript().iter().any(|l| l.starts_with("EHLO")),
        "{:?}",
        old_first.transcript()
    );
    assert!(old_first.received().is_empty());

    // No MX host of old.test has SMTPUTF8: bounced, and nothing was downgraded.
    send_utf8(&mut client, "jürgen@old.test");
    let bounce = senders.wait_for(1, Duration::from_secs(30));
    let text = bounce[0].text();
    assert!(text.contains("Status: 5.6.7"), "{text}");
    assert!(old_second.received().is_empty());
    assert!(
        old_second
            .transcript()
            .iter()
            .any(|l| l.starts_with("EHLO")),
        "the second MX of old.test was never tried: {:?}",
        old_second.transcript()
    );
    assert_eq!(senders.received().len(), 1, "the first message bounced too");
}
