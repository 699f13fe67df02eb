//! The outbound connection pool: a connection kept for the next message is closed after
//! `pool_idle_timeout`, the pool keeps at most `pool_max_idle` connections, and a
//! connection opened under opportunistic TLS (any certificate) is never reused for a
//! route that requires a verified certificate, even to the same address. (And the
//! open-files limit is raised at start-up, since every pooled connection holds one.)

use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

fn send(gateway: &Gateway, rcpt: &str, subject: &str) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &[rcpt],
            &sample_message(subject, "hi"),
        )
        .expect(250, "2.0.0");
}

/// Waits until `condition` holds, panicking with `what` after `within`.
fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn an_idle_pooled_connection_is_closed_after_the_idle_timeout() {
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &GatewayConfig::default()
            .top("delivery", r#"{ pool_idle_timeout = "600ms" }"#)
            .route("internal", &["example.test"], sink.addr()),
    );
    // At start-up the open-files limit was raised to the hard limit (and logged).
    let log = gateway.log();
    assert!(log.contains("open files limit"), "{log}");
    send(&gateway, "alice@example.test", "one");
    sink.wait_for(1, Duration::from_secs(30));
    // Kept open for the next message at first...
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(sink.open_connections(), 1, "the connection was not pooled");
    // ... and closed once idle for the timeout, though no other message came.
    eventually(
        Duration::from_secs(5),
        "the idle connection was never closed",
        || sink.open_connections() == 0,
    );
}

#[test]
fn the_pool_keeps_no_more_than_pool_max_idle_connections() {
    let first = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let second = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["a.example.test".into(), "b.example.test".into()],
            ..GatewayConfig::default()
        }
        .top(
            "delivery",
            r#"{ pool_idle_timeout = "60s", pool_max_idle = 1 }"#,
        )
        .route("a", &["a.example.test"], first.addr())
        .route("b", &["b.example.test"], second.addr()),
    );
    send(&gateway, "alice@a.example.test", "one");
    first.wait_for(1, Duration::from_secs(30));
    eventually(
        Duration::from_secs(5),
        "first connection not pooled",
        || first.open_connections() == 1,
    );
    send(&gateway, "bob@b.example.test", "two");
    second.wait_for(1, Duration::from_secs(30));
    // The pool is full with the first connection: the second is closed, not kept.
    eventually(
        Duration::from_secs(5),
        "a second idle connection was kept",
        || second.open_connections() == 0,
    );
    assert_eq!(first.open_connections(), 1);
}

#[test]
fn an_opportunistic_connection_is_never_reused_for_required_tls() {
    let certs = tempfile::tempdir().unwrap();
    // A certificate for another name: good enough for opportunistic TLS, never for
    // `required` (which verifies it for 127.0.0.1 against the web PKI roots).
    let (cert, key) = tidegate_e2e::self_signed(certs.path(), "other", "other.example", false);
    let sink = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().starttls(&cert, &key),
    );
    let mut config = GatewayConfig {
        accept_domains: vec!["open.example.test".into(), "strict.example.test".into()],
        ..GatewayConfig::default()
    }
    .top("delivery", r#"{ pool_idle_timeout = "60s" }"#)
    .deliver();
    for (name, domain, tls) in [
        ("open", "open.example.test", "opportunistic"),
        ("strict", "strict.example.test", "required"),
    ] {
        config.routes.push(format!(
            r#"{{ name = "{name}", domains = ["{domain}"], smarthost = "{}", tls = "{tls}" }}"#,
            sink.addr()
        ));
    }
    let gateway = Gateway::start_with(&config);
    send(&gateway, "alice@open.example.test", "open");
    let received = sink.wait_for(1, Duration::from_secs(30));
    assert!(received[0].tls, "STARTTLS was offered but not used");
    eventually(Duration::from_secs(5), "connection not pooled", || {
        sink.open_connections() == 1
    });

    // The same address, but the certificate must verify: the pooled connection does not
    // qualify, a new one fails verification, and the message waits.
    send(&gateway, "bob@strict.example.test", "strict");
    gateway.wait_for_log("TLS handshake failed");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sink.received().len(), 1, "delivered over unverified TLS");
    assert_eq!(gateway.spool_list().len(), 1, "{:?}", gateway.spool_list());
    assert_eq!(sink.connections(), 2, "no fresh connection was opened");
}
