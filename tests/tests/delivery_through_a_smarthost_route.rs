//! Accepted mail is delivered: through a smarthost route to a receiving SMTP server, with
//! the trace and plugin header edits in place; the spool empties; a recipient refused by
//! the next hop bounces back to the sender as an RFC 3464 report while the others are
//! delivered; connections are reused.

use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn wait_until_spool_empty(gateway: &Gateway) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway.spool_list().is_empty() {
        assert!(
            Instant::now() < deadline,
            "spool never emptied: {:?}\n{}",
            gateway.spool_list(),
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn mail_reaches_the_smarthost_and_leaves_the_spool() {
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let mut gateway = Gateway::start_with(
        &GatewayConfig {
            plugins: vec![
                PluginEntry::new("hdr", "test_plugin.wasm")
                    .config(r#"mode = "header""#)
                    .config(r#"label = "Relay""#),
            ],
            ..GatewayConfig::default()
        }
        .route("internal", &["example.test"], sink.addr()),
    );

    let mut client = SmtpClient::ehlo(gateway.addr());
    for n in 0..3 {
        client
            .send_mail(
                "sender@example.org",
                &["alice@example.test", "bob@example.test"],
                &sample_message(&format!("relay-{n}"), ".leading dot\r\nbody"),
            )
            .expect(250, "2.0.0");
    }
    let received = sink.wait_for(3, Duration::from_secs(30));
    assert_eq!(received.len(), 3);
    for message in &received {
        assert_eq!(message.mail_from, "sender@example.org");
        assert_eq!(
            message.rcpt_to,
            vec!["alice@example.test", "bob@example.test"]
        );
        let text = message.text();
        assert!(text.starts_with("X-Test-Relay: subject=relay-"), "{text}");
        assert!(text.contains("Received: from client.example.org"), "{text}");
        assert!(
            text.contains("\r\n.leading dot\r\n"),
            "dot-stuffing lost: {text}"
        );
    }
    wait_until_spool_empty(&gateway);
    // Three messages to one host: fewer connections than messages.
    assert!(
        sink.connections() < 3,
        "no connection reuse: {} connections",
        sink.connections()
    );
    // Settled on the first attempt, the messages left no state log behind: their removal
    // is the record, and a restart (after kill -9) delivers nothing again.
    let state: Vec<_> = std::fs::read_dir(gateway.spool_dir().join("state"))
        .map(|dir| dir.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(state.is_empty(), "state files left: {state:?}");
    gateway.kill9();
    gateway.restart(1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sink.received().len(), 3, "delivered again after a restart");
}

#[test]
fn a_refused_recipient_bounces_to_the_sender_and_the_others_are_delivered() {
    let internal = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().reject_rcpt("nobody@example.test", 550, "5.1.1"),
    );
    let senders = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .route("internal", &["example.test"], internal.addr())
            .route("back", &["example.org"], senders.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["alice@example.test", "nobody@example.test"],
            &sample_message("partly", "hello"),
        )
        .expect(250, "2.0.0");

    let delivered = internal.wait_for(1, Duration::from_secs(30));
    // The sink records the recipients it accepted.
    assert_eq!(delivered[0].rcpt_to, vec!["alice@example.test"]);
    let bounce = senders.wait_for(1, Duration::from_secs(30));
    assert_eq!(bounce[0].mail_from, "", "a bounce has the null sender");
    assert_eq!(bounce[0].rcpt_to, vec!["sender@example.org"]);
    let text = bounce[0].text();
    assert!(text.contains("multipart/report"), "{text}");
    assert!(text.contains("report-type=delivery-status"), "{text}");
    assert!(
        text.contains("Final-Recipient: rfc822; nobody@example.test"),
        "{text}"
    );
    assert!(text.contains("Status: 5.1.1"), "{text}");
    assert!(text.contains("Action: failed"), "{text}");
    assert!(
        !text.contains("Final-Recipient: rfc822; alice@example.test"),
        "{text}"
    );
    assert!(
        text.contains("Subject: partly"),
        "original headers returned: {text}"
    );
    wait_until_spool_empty(&gateway);
    // Only the delivered copy and the bounce: nothing else went anywhere.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(internal.received().len(), 1);
    assert_eq!(senders.received().len(), 1);
}

#[test]
fn a_temporary_failure_is_retried_and_the_message_arrives_once() {
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().tempfail_data_first(1),
    );
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .queue("retry_intervals", r#"["1s"]"#)
            .route("internal", &["example.test"], sink.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &["alice@example.test"],
            &sample_message("retry", "again"),
        )
        .expect(250, "2.0.0");
    let received = sink.wait_for(1, Duration::from_secs(30));
    assert!(received[0].text().contains("Subject: retry"));
    wait_until_spool_empty(&gateway);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(sink.received().len(), 1, "delivered more than once");
    assert!(
        gateway.log().contains("outcome=Deferred"),
        "{}",
        gateway.log()
    );
}
