//! Internationalised domain names are one name in two spellings: a domain configured as
//! U-labels (`bücher.example.test`) or as A-labels (`xn--mnchen-3ya.example.test`) accepts
//! and routes recipients written either way (U-labels arriving with SMTPUTF8), and a
//! name that is neither is still refused.

use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient};

#[test]
fn accepted_domains_and_routes_match_u_labels_and_a_labels() {
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec![
                "bücher.example.test".into(),
                "xn--mnchen-3ya.example.test".into(),
            ],
            // Nobody may relay: only accepted domains get through.
            relay_networks: Vec::new(),
            ..GatewayConfig::default()
        }
        .route("books", &["xn--bcher-kva.example.test"], sink.addr())
        .route("city", &["münchen.example.test"], sink.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org> SMTPUTF8")
        .expect(250, "2.1.0");
    for rcpt in [
        "a@xn--bcher-kva.example.test",
        "b@bücher.example.test",
        "c@BÜCHER.example.test",
        "d@münchen.example.test",
        "e@xn--mnchen-3ya.example.test",
    ] {
        client
            .command(&format!("RCPT TO:<{rcpt}>"))
            .expect(250, "2.1.5");
    }
    client
        .command("RCPT TO:<f@buecher.example.test>")
        .expect(554, "5.7.1");
    client.command("DATA").expect_code(354);
    client.send("Subject: idn\r\n\r\nhallo\r\n.\r\n".as_bytes());
    client.read_reply().expect(250, "2.0.0");

    // Both routes matched, whichever spelling the route and the recipient used: the two
    // destinations each got their recipients.
    let received = sink.wait_for(2, Duration::from_secs(30));
    let mut rcpts: Vec<String> = received.iter().flat_map(|m| m.rcpt_to.clone()).collect();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "a@xn--bcher-kva.example.test",
            "b@bücher.example.test",
            // Domains are case-folded when the address is parsed.
            "c@bücher.example.test",
            "d@münchen.example.test",
            "e@xn--mnchen-3ya.example.test",
        ],
        "{}",
        gateway.log()
    );
}
