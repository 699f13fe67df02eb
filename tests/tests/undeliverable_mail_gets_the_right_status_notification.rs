//! Delivery status notifications beyond a plain refusal: a message that needs SMTPUTF8
//! bounces (5.6.7) when the next hop lacks it; a message that keeps being deferred gets
//! one delay notice, and bounces (4.4.7) once it outlives `max_lifetime`.

use std::time::Duration;

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

#[test]
fn a_message_needing_smtputf8_bounces_with_5_6_7() {
    let internal = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().no_smtputf8(),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .route("internal", &["example.test"], internal.addr())
            .route("back", &["example.org"], senders.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<sender@example.org> SMTPUTF8")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<jürgen@example.test>")
        .expect(250, "2.1.5");
    client.command("DATA");
    client.send(b"Subject: utf8\r\n\r\nhallo\r\n.\r\n");
    client.read_reply().expect(250, "2.0.0");

    let bounce = senders.wait_for(1, Duration::from_secs(30));
    let text = bounce[0].text();
    assert!(text.contains("Status: 5.6.7"), "{text}");
    assert!(internal.received().is_empty());
}

#[test]
fn a_deferred_message_gets_one_delay_notice_then_expires_with_4_4_7() {
    let internal = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().tempfail_data_first(usize::MAX),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let events = tempfile::tempdir().unwrap();
    let events_file = events.path().join("events.jsonl");
    let gateway = Gateway::start_with(
        &GatewayConfig {
            top: vec![(
                "events".into(),
                format!(r#"[{{ kind = "file", path = {events_file:?} }}]"#),
            )],
            ..GatewayConfig::default()
        }
        .queue("retry_intervals", r#"["500ms"]"#)
        .queue("delay_notice_after", r#""1s""#)
        .queue("max_lifetime", r#""4s""#)
        .route("internal", &["example.test"], internal.addr())
        .route("back", &["example.org"], senders.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["alice@example.test"],
            &sample_message("slow", "wait"),
        )
        .expect(250, "2.0.0");

    let reports = senders.wait_for(2, Duration::from_secs(30));
    let delay = reports[0].text();
    assert!(delay.contains("Action: delayed"), "{delay}");
    assert!(delay.contains("Status: 4.3.0"), "{delay}");
    let expired = reports[1].text();
    assert!(expired.contains("Action: failed"), "{expired}");
    assert!(expired.contains("Status: 4.4.7"), "{expired}");
    // One delay notice, one bounce: nothing more.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(senders.received().len(), 2);
    assert!(
        gateway.spool_list().is_empty(),
        "{:?}",
        gateway.spool_list()
    );
    // The expiry is a delivery event of its own, after the deferrals.
    let kinds: Vec<String> = std::fs::read_to_string(&events_file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["type"] == "expired")
        .map(|e| e["recipients"][0].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(kinds, vec!["alice@example.test".to_owned()]);
}
