//! REQUIRETLS (RFC 8689) end to end: offered only inside TLS and refused at MAIL outside
//! it (530 5.7.10); such a message is delivered only over TLS with a certificate that
//! verifies, to a next hop that offers REQUIRETLS (and is told so), whatever the route
//! says; one that cannot go that way bounces with 5.7.10, and the bounce itself travels
//! with REQUIRETLS. `TLS-Required: No` (§5) lets a message past a route that demands TLS.

use std::path::PathBuf;
use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, PATIENCE, SmtpClient, sample_message};

struct Certs {
    _dir: tempfile::TempDir,
    gateway: (PathBuf, PathBuf),
    sink: (PathBuf, PathBuf),
}

fn certs() -> Certs {
    let dir = tempfile::tempdir().unwrap();
    let gateway = tidegate_e2e::self_signed(dir.path(), "gateway", "relay.example.test", false);
    let sink = tidegate_e2e::self_signed(dir.path(), "sink", "sink.example.test", false);
    Certs {
        _dir: dir,
        gateway,
        sink,
    }
}

/// A gateway with inbound TLS, trusting the sinks' certificate, routing each domain to a
/// sink called sink.example.test with the route's TLS policy.
fn gateway(certs: &Certs, dns: &DnsServer, routes: &[(&str, &str, &SinkServer, &str)]) -> Gateway {
    let mut config = GatewayConfig::default().dns(dns.addr(), 2000).deliver();
    for (name, domain, sink, tls) in routes {
        config.routes.push(format!(
            r#"{{ name = "{name}", domains = ["{domain}"], smarthost = "sink.example.test:{}", tls = "{tls}" }}"#,
            sink.addr().port()
        ));
    }
    let (cert, key) = &certs.gateway;
    Gateway::start_with(
        &config
            .top(
                "tls",
                &format!("{{ certificate = {cert:?}, key = {key:?} }}"),
            )
            .top("delivery", &format!("{{ tls_ca = {:?} }}", certs.sink.0)),
    )
}

fn tls_sink(cert: &(PathBuf, PathBuf), requiretls: bool) -> SinkServer {
    let mut behaviour = Behaviour::default().starttls(&cert.0, &cert.1);
    if requiretls {
        behaviour = behaviour.requiretls();
    }
    SinkServer::start("127.0.0.1:0".parse().unwrap(), behaviour)
}

fn dns() -> DnsServer {
    DnsServer::start(&["example.test"], &[("sink.example.test", "127.0.0.1")])
}

/// Sends one REQUIRETLS message over STARTTLS.
fn send_requiretls(gateway: &Gateway, recipient: &str, subject: &str) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client.starttls("relay.example.test");
    client.command("EHLO client.example.org").expect_code(250);
    client.send_mail_with(
        "MAIL FROM:<sender@example.org> REQUIRETLS",
        recipient,
        subject,
    );
}

trait SendWith {
    fn send_mail_with(&mut self, mail: &str, recipient: &str, subject: &str);
}

impl SendWith for SmtpClient {
    fn send_mail_with(&mut self, mail: &str, recipient: &str, subject: &str) {
        self.command(mail).expect(250, "2.1.0");
        self.command(&format!("RCPT TO:<{recipient}>"))
            .expect(250, "2.1.5");
        assert_eq!(self.command("DATA").code, 354);
        self.send(sample_message(subject, "secret").as_bytes());
        self.send(b".\r\n");
        self.read_reply().expect(250, "2.0.0");
    }
}

#[test]
fn requiretls_is_offered_and_taken_only_inside_tls() {
    let certs = certs();
    let dns = dns();
    let gateway = gateway(&certs, &dns, &[]);
    let mut client = SmtpClient::ehlo(gateway.addr());
    let ehlo = client.command("EHLO client.example.org");
    assert!(!ehlo.lines.iter().any(|l| l == "REQUIRETLS"), "{ehlo:?}");
    client
        .command("MAIL FROM:<sender@example.org> REQUIRETLS")
        .expect(530, "5.7.10");
    client.starttls("relay.example.test");
    let ehlo = client.command("EHLO client.example.org");
    assert!(ehlo.lines.iter().any(|l| l == "REQUIRETLS"), "{ehlo:?}");
    client
        .command("MAIL FROM:<sender@example.org> REQUIRETLS=yes")
        .expect(501, "5.5.4");
    client
        .command("MAIL FROM:<sender@example.org> REQUIRETLS")
        .expect(250, "2.1.0");
}

#[test]
fn a_requiretls_message_goes_over_verified_tls_even_on_an_opportunistic_route() {
    let certs = certs();
    let dns = dns();
    let sink = tls_sink(&certs.sink, true);
    let gateway = gateway(&certs, &dns, &[("internal", "example.test", &sink, "none")]);
    send_requiretls(&gateway, "alice@example.test", "must be encrypted");
    let received = sink.wait_for(1, PATIENCE);
    assert!(received[0].tls, "delivered in the clear");
    assert!(
        received[0].mail_params.contains(&"REQUIRETLS".to_owned()),
        "{:?}",
        received[0].mail_params
    );
}

#[test]
fn a_requiretls_message_bounces_with_5_7_10_where_it_cannot_go_safely_and_so_does_its_bounce() {
    let certs = certs();
    let dns = dns();
    // No TLS at all; TLS but no REQUIRETLS; and the sender's side, which has both.
    let plain = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let no_requiretls = tls_sink(&certs.sink, false);
    let senders = tls_sink(&certs.sink, true);
    let gateway = gateway(
        &certs,
        &dns,
        &[
            ("plain", "example.test", &plain, "opportunistic"),
            ("tls", "other.test", &no_requiretls, "required"),
            ("back", "example.org", &senders, "opportunistic"),
        ],
    );
    send_requiretls(&gateway, "alice@example.test", "to a plain hop");
    send_requiretls(&gateway, "bob@other.test", "to a hop without requiretls");

    let bounces = senders.wait_for(2, PATIENCE);
    for bounce in &bounces {
        let text = bounce.text();
        assert!(text.contains("Action: failed"), "{text}");
        assert!(text.contains("Status: 5.7.10"), "{text}");
        assert!(text.contains("REQUIRETLS"), "{text}");
        assert!(!text.contains("secret"), "the body came back: {text}");
        assert!(bounce.tls);
        assert!(
            bounce.mail_params.contains(&"REQUIRETLS".to_owned()),
            "{:?}",
            bounce.mail_params
        );
    }
    let text: String = bounces.iter().map(|b| b.text()).collect();
    assert!(text.contains("alice@example.test") && text.contains("bob@other.test"));
    assert!(plain.received().is_empty());
    assert!(no_requiretls.received().is_empty());
}

#[test]
fn tls_required_no_lets_a_message_past_a_route_that_demands_tls() {
    let certs = certs();
    let dns = dns();
    let plain = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = gateway(
        &certs,
        &dns,
        &[("internal", "example.test", &plain, "required")],
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    // Without the header field the route's policy holds the message.
    client
        .send_mail(
            "sender@example.org",
            &["alice@example.test"],
            &sample_message("held", "x"),
        )
        .expect(250, "2.0.0");
    gateway.wait_for_log("does not offer STARTTLS and TLS is required");
    client
        .send_mail(
            "sender@example.org",
            &["alice@example.test"],
            "TLS-Required: No\r\nSubject: let through\r\n\r\nplain is fine\r\n",
        )
        .expect(250, "2.0.0");
    let received = plain.wait_for(1, PATIENCE);
    assert!(received[0].text().contains("let through"));
    assert!(!received[0].tls);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(plain.received().len(), 1, "the held message went too");
    assert_eq!(gateway.spool_list().len(), 1);
}
