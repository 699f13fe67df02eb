//! A destination that answers every command slowly (a tarpit) holds only its own
//! delivery slots: messages queued behind it wait for that destination's slot without
//! taking a global one, so mail to a normal destination is delivered promptly all along.

use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

/// How long the tarpit waits before each reply (the greeting included): one transaction
/// with it takes several times this.
const TARPIT_DELAY: Duration = Duration::from_secs(5);

/// Sends `slow` messages to a tarpit, then mail to a normal destination, which must each
/// arrive in far less than one tarpit reply, with `queue` settings on top of one global
/// slot per destination.
fn fast_mail_flows_past_a_tarpit(queue: &[(&str, &str)], slow: usize) {
    let tarpit = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().reply_delay(TARPIT_DELAY),
    );
    let normal = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let mut config = GatewayConfig {
        accept_domains: vec!["slow.example.test".into(), "fast.example.test".into()],
        ..GatewayConfig::default()
    }
    .queue("max_per_destination", "1");
    for (key, value) in queue {
        config = config.queue(key, value);
    }
    let gateway = Gateway::start_with(
        &config
            .route("slow", &["slow.example.test"], tarpit.addr())
            .route("fast", &["fast.example.test"], normal.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    for n in 0..slow {
        client
            .send_mail(
                "sender@example.org",
                &["user@slow.example.test"],
                &sample_message(&format!("slow-{n}"), "x"),
            )
            .expect(250, "2.0.0");
    }
    // The tarpit has its one connection: its slot is taken, the rest wait for it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while tarpit.open_connections() == 0 {
        assert!(
            Instant::now() < deadline,
            "no delivery to the tarpit started"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in 0..3 {
        let sent = Instant::now();
        client
            .send_mail(
                "sender@example.org",
                &["user@fast.example.test"],
                &sample_message(&format!("fast-{n}"), "x"),
            )
            .expect(250, "2.0.0");
        normal.wait_for(n + 1, Duration::from_secs(30));
        // Far less than one tarpit reply: the fast mail never waited for the tarpit.
        assert!(
            sent.elapsed() < TARPIT_DELAY - Duration::from_secs(1),
            "message {n} to the normal destination took {:?}",
            sent.elapsed()
        );
    }
    assert!(tarpit.received().is_empty(), "the tarpit was not that slow");
    assert_eq!(tarpit.open_connections(), 1, "more than its one slot");
}

#[test]
fn mail_to_a_normal_destination_flows_while_a_tarpit_holds_its_slots() {
    // Two global slots, one per destination: messages waiting for the tarpit's slot would
    // take the second global slot if they took it first, and nothing else could be
    // delivered until the tarpit finished a whole transaction.
    fast_mail_flows_past_a_tarpit(&[("max_concurrent_deliveries", "2")], 3);
}

/// The queue bounds its active set (attempts in progress, whatever they wait for). A
/// destination takes at most its deliveries and as many waiters from it; the rest of its
/// backlog waits parked, outside the active set, so the active set always has room for
/// mail to other destinations.
#[test]
fn a_tarpit_backlog_waits_parked_outside_the_active_set() {
    // Three active attempts: the tarpit's delivery and its one waiter leave exactly one.
    // If the backlog waited in the active set, it would fill it, and nothing else could
    // even start until the tarpit finished a transaction.
    fast_mail_flows_past_a_tarpit(
        &[("max_concurrent_deliveries", "2"), ("max_active", "3")],
        10,
    );
}

/// Parked messages are not forgotten: each delivery that ends wakes the next, and a
/// backlog for a destination that takes one message at a time drains completely, each
/// message once.
#[test]
fn a_parked_backlog_drains_completely_each_message_once() {
    let slow = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().delay_data_reply(Duration::from_millis(30)),
    );
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["slow.example.test".into()],
            ..GatewayConfig::default()
        }
        .queue("max_concurrent_deliveries", "2")
        .queue("max_active", "4")
        .queue("max_per_destination", "1")
        .route("slow", &["slow.example.test"], slow.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    let count = 40;
    for n in 0..count {
        client
            .send_mail(
                "sender@example.org",
                &["user@slow.example.test"],
                &sample_message(&format!("backlog-{n}"), "x"),
            )
            .expect(250, "2.0.0");
    }
    let received = slow.wait_for(count, Duration::from_secs(60));
    let mut subjects: Vec<String> = received
        .iter()
        .map(|m| {
            m.text()
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), count, "a message missing or repeated");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway.spool_list().is_empty() {
        assert!(Instant::now() < deadline, "the spool never emptied");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(slow.received().len(), count, "delivered twice");
}
