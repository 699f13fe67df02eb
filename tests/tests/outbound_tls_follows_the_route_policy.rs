//! Outbound STARTTLS per route: `required` delivers only over TLS with a certificate that
//! verifies against the configured CA for the host's name, and defers when the next hop
//! offers no TLS; `opportunistic` (the default) encrypts whenever STARTTLS is offered.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, SmtpClient, sample_message};

fn gen_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    tidegate_e2e::self_signed(dir, name, name, false)
}

fn route_with_tls(config: GatewayConfig, sink: &SinkServer, tls: &str) -> GatewayConfig {
    let mut config = config.deliver();
    config.routes.push(format!(
        r#"{{ name = "internal", domains = ["example.test"], smarthost = "sink.example.test:{}", tls = "{tls}" }}"#,
        sink.addr().port()
    ));
    config
}

fn send_one(gateway: &Gateway, subject: &str) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["user@example.test"],
            &sample_message(subject, "hi"),
        )
        .expect(250, "2.0.0");
}

#[test]
fn required_tls_delivers_over_verified_tls_and_defers_without_it() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = gen_cert(certs.path(), "sink.example.test");
    let dns = DnsServer::start(&["example.test"], &[("sink.example.test", "127.0.0.1")]);

    // A next hop with STARTTLS and a certificate the gateway trusts.
    let secure = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls(&cert, &key),
    );
    let gateway = Gateway::start_with(
        &route_with_tls(
            GatewayConfig::default().dns(dns.addr(), 2000),
            &secure,
            "required",
        )
        .top("delivery", &format!("{{ tls_ca = {cert:?} }}")),
    );
    send_one(&gateway, "verified");
    let received = secure.wait_for(1, Duration::from_secs(30));
    assert!(received[0].tls, "delivered in the clear");

    // A next hop without STARTTLS: the message waits.
    let plain = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &route_with_tls(
            GatewayConfig::default().dns(dns.addr(), 2000),
            &plain,
            "required",
        )
        .top("delivery", &format!("{{ tls_ca = {cert:?} }}")),
    );
    send_one(&gateway, "must-wait");
    gateway.wait_for_log("does not offer STARTTLS and TLS is required");
    std::thread::sleep(Duration::from_millis(300));
    assert!(plain.received().is_empty(), "delivered without TLS");
    assert_eq!(
        gateway.spool_list().len(),
        1,
        "the message must wait in the queue"
    );
}

#[test]
fn required_tls_refuses_a_certificate_that_does_not_verify() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = gen_cert(certs.path(), "sink.example.test");
    let (other_ca, _) = gen_cert(certs.path(), "someone-else.test");
    let dns = DnsServer::start(&["example.test"], &[("sink.example.test", "127.0.0.1")]);
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls(&cert, &key),
    );
    let gateway = Gateway::start_with(
        &route_with_tls(
            GatewayConfig::default().dns(dns.addr(), 2000),
            &sink,
            "required",
        )
        .top("delivery", &format!("{{ tls_ca = {other_ca:?} }}")),
    );
    send_one(&gateway, "untrusted");
    gateway.wait_for_log("TLS handshake failed");
    std::thread::sleep(Duration::from_millis(300));
    assert!(sink.received().is_empty());
    assert_eq!(gateway.spool_list().len(), 1);
}

#[test]
fn opportunistic_tls_encrypts_when_offered() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = gen_cert(certs.path(), "sink.example.test");
    let dns = DnsServer::start(&["example.test"], &[("sink.example.test", "127.0.0.1")]);
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls(&cert, &key),
    );
    let gateway = Gateway::start_with(&route_with_tls(
        GatewayConfig::default().dns(dns.addr(), 2000),
        &sink,
        "opportunistic",
    ));
    send_one(&gateway, "opportunistic");
    let received = sink.wait_for(1, Duration::from_secs(30));
    assert!(received[0].tls, "STARTTLS was offered but not used");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway.spool_list().is_empty() {
        assert!(Instant::now() < deadline, "spool never emptied");
        std::thread::sleep(Duration::from_millis(50));
    }
}
