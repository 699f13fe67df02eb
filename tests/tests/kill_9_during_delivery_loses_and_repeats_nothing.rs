//! `kill -9` in the middle of delivering a burst of 1,000 messages, then a restart: the
//! receiving side ends with every message, and a message is received twice only if the
//! kill fell inside its own SMTP transaction (at most one per delivery in progress).

use std::collections::HashMap;
use std::thread;
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

const MESSAGES: usize = 1000;
const SENDERS: usize = 8;
const CONCURRENT_DELIVERIES: usize = 8;

fn subject_of(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("Subject: "))
        .map(str::to_owned)
}

#[test]
fn every_message_arrives_and_duplicates_are_bounded_by_the_deliveries_in_flight() {
    // The next hop is down while the burst is accepted: everything waits in the queue.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let next_hop = format!("127.0.0.1:{port}").parse().unwrap();
    let config = GatewayConfig::default()
        .queue("retry_intervals", r#"["1s"]"#)
        .queue(
            "max_concurrent_deliveries",
            &CONCURRENT_DELIVERIES.to_string(),
        )
        .queue("max_per_destination", &CONCURRENT_DELIVERIES.to_string())
        .route("internal", &["example.test"], next_hop);
    let mut gateway = Gateway::start_with(&config);

    let addr = gateway.addr();
    let senders: Vec<_> = (0..SENDERS)
        .map(|s| {
            thread::spawn(move || {
                let mut client = SmtpClient::ehlo(addr);
                for n in (s..MESSAGES).step_by(SENDERS) {
                    client
                        .send_mail(
                            "sender@example.org",
                            &["user@example.test"],
                            &sample_message(&format!("burst-{n:04}"), "payload"),
                        )
                        .expect(250, "2.0.0");
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender thread");
    }
    assert_eq!(gateway.spool_list().len(), MESSAGES);

    // The next hop comes up; kill -9 the gateway in the middle of the deliveries.
    let sink = SinkServer::start(
        next_hop,
        Behaviour::default().delay_data_reply(Duration::from_millis(2)),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while sink.received().len() < MESSAGES / 3 {
        assert!(
            Instant::now() < deadline,
            "deliveries never started:\n{}",
            gateway.log()
        );
        thread::sleep(Duration::from_millis(5));
    }
    gateway.kill9();
    let at_kill = sink.received().len();
    assert!(
        at_kill < MESSAGES,
        "the kill came after the last delivery; nothing was tested"
    );

    gateway.restart(1);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for message in sink.received() {
            *counts
                .entry(subject_of(&message.text()).unwrap_or_default())
                .or_default() += 1;
        }
        if counts.len() == MESSAGES && gateway.spool_list().is_empty() {
            let duplicates: Vec<(&String, &usize)> =
                counts.iter().filter(|(_, c)| **c > 1).collect();
            println!(
                "{at_kill} delivered before the kill; after the restart all {MESSAGES} arrived; duplicates: {duplicates:?}"
            );
            assert!(
                duplicates.iter().all(|(_, c)| **c == 2),
                "a message arrived more than twice: {duplicates:?}"
            );
            assert!(
                duplicates.len() <= CONCURRENT_DELIVERIES,
                "more duplicates than deliveries in flight: {duplicates:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {MESSAGES} distinct messages arrived; spool holds {}",
            counts.len(),
            gateway.spool_list().len()
        );
        thread::sleep(Duration::from_millis(50));
    }
}
