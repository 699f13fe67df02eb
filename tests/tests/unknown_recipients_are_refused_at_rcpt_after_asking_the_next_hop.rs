//! Recipient verification against backscatter: with `verify_recipients` on a route, the
//! gateway asks the route's smarthost at RCPT TO (MAIL FROM:<>, RCPT, RSET) and refuses
//! an address it refuses with 550 5.1.1 at once, instead of accepting the mail and
//! bouncing it later to a sender that is usually forged. Answers are cached; a next hop
//! that cannot be asked gets 450 4.1.1 (or, if the route says so, the recipient is
//! accepted unverified).

use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

fn verified_route(
    name: &str,
    domain: &str,
    smarthost: std::net::SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"{{ name = "{name}", domains = ["{domain}"], smarthost = "{smarthost}", verify_recipients = true{extra} }}"#
    )
}

#[test]
fn unknown_recipients_get_550_at_rcpt_and_known_ones_are_delivered() {
    let internal = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().reject_rcpt("nobody@example.test", 550, "5.1.1"),
    );
    let mut config = GatewayConfig {
        relay_networks: Vec::new(),
        ..GatewayConfig::default()
    }
    .deliver();
    config.routes.push(verified_route(
        "internal",
        "example.test",
        internal.addr(),
        "",
    ));
    let gateway = Gateway::start_with(&config);

    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<someone@elsewhere.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<nobody@example.test>")
        .expect(550, "5.1.1");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
    client.command("DATA").expect_code(354);
    client.send(sample_message("verified", "x").as_bytes());
    client.send(b".\r\n");
    client.read_reply().expect(250, "2.0.0");

    // The probes: a null sender, the recipient, and a reset, never a message.
    let received = internal.wait_for(1, Duration::from_secs(30));
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, ["alice@example.test"]);
    let transcript = internal.transcript();
    assert!(
        transcript.iter().any(|l| l == "MAIL FROM:<>"),
        "{transcript:?}"
    );
    assert!(
        transcript
            .iter()
            .any(|l| l == "RCPT TO:<nobody@example.test>")
    );
    assert!(transcript.iter().any(|l| l == "RSET"), "{transcript:?}");

    // Answers are cached: asking again sends no new probe.
    let probes = |t: &[String]| t.iter().filter(|l| *l == "MAIL FROM:<>").count();
    let before = probes(&internal.transcript());
    client
        .command("MAIL FROM:<someone@elsewhere.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<nobody@example.test>")
        .expect(550, "5.1.1");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(
        probes(&internal.transcript()),
        before,
        "the cache was not used"
    );
}

#[test]
fn a_next_hop_that_cannot_be_asked_defers_or_accepts_as_configured() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut config = GatewayConfig {
        accept_domains: vec!["strict.example.test".into(), "lenient.example.test".into()],
        relay_networks: Vec::new(),
        ..GatewayConfig::default()
    }
    .deliver()
    .top("delivery", r#"{ connect_timeout = "2s" }"#);
    config
        .routes
        .push(verified_route("strict", "strict.example.test", down, ""));
    config.routes.push(verified_route(
        "lenient",
        "lenient.example.test",
        down,
        r#", verify_unreachable = "accept""#,
    ));
    let gateway = Gateway::start_with(&config);
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<someone@elsewhere.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<a@strict.example.test>")
        .expect(450, "4.1.1");
    client
        .command("RCPT TO:<b@lenient.example.test>")
        .expect(250, "2.1.5");
}

/// A route's recipients list answers without asking anyone: a listed address (or any
/// address of a listed `@domain`) passes, any other gets 550 5.1.1, and the next hop never
/// sees a probe. A changed file applies at once; one that does not load keeps the last.
#[test]
fn a_recipients_list_refuses_unlisted_addresses_and_reloads_when_it_changes() {
    let internal = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let lists = tempfile::tempdir().unwrap();
    let file = lists.path().join("recipients.txt");
    std::fs::write(
        &file,
        "# internal users\nAlice@example.test\n@sales.example.test\n",
    )
    .unwrap();
    let mut config = GatewayConfig {
        relay_networks: Vec::new(),
        accept_domains: vec!["example.test".into(), "sales.example.test".into()],
        ..GatewayConfig::default()
    }
    .deliver();
    config.routes.push(format!(
        r#"{{ name = "internal", domains = ["example.test", "sales.example.test"], smarthost = "{}", recipients_file = {:?} }}"#,
        internal.addr(),
        file
    ));
    let gateway = Gateway::start_with(&config);

    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<someone@elsewhere.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<nobody@example.test>")
        .expect(550, "5.1.1");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
    client
        .command("RCPT TO:<anyone@sales.example.test>")
        .expect(250, "2.1.5");
    client.command("RSET").expect(250, "2.0.0");
    assert!(
        internal.transcript().is_empty(),
        "the list needs no probe: {:?}",
        internal.transcript()
    );

    // Bob joins; a broken edit afterwards changes nothing.
    std::fs::write(&file, "alice@example.test\nbob@example.test\n").unwrap();
    gateway.wait_for_log("recipients list reloaded");
    client
        .command("MAIL FROM:<someone@elsewhere.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<bob@example.test>")
        .expect(250, "2.1.5");
    client
        .command("RCPT TO:<anyone@sales.example.test>")
        .expect(550, "5.1.1");
    client.command("RSET").expect(250, "2.0.0");
    std::fs::write(&file, "bob@example.test\nthis is not an address\n").unwrap();
    gateway.wait_for_log("recipients list not reloaded");
    assert!(
        gateway.log().contains("recipients.txt:2"),
        "{}",
        gateway.log()
    );
    client
        .command("MAIL FROM:<someone@elsewhere.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<alice@example.test>")
        .expect(250, "2.1.5");
}
