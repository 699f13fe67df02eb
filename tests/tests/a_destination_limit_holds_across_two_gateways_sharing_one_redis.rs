//! `[queue] fleet_max_per_destination`: two Tidegate processes sharing one real
//! `redis-server` open at most that many connections to one destination between them
//! (each could open four on its own), every message is delivered, and when Redis goes
//! away each node falls back to its own `max_per_destination`, says so, and keeps
//! delivering.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tidegate_e2e::redis::RedisServer;
use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

fn node(address: &str, redis: &RedisServer, sink: &SinkServer) -> Gateway {
    Gateway::start_with(
        &GatewayConfig {
            listeners: vec![("mx".into(), format!("{address}:0"))],
            accept_domains: vec!["dest.example.test".into()],
            ..GatewayConfig::default()
        }
        .queue("max_per_destination", "4")
        .queue("fleet_max_per_destination", "2")
        .route("dest", &["dest.example.test"], sink.addr())
        // No idle connections kept: every open connection at the sink is a delivery.
        .top("delivery", "{ pool_max_idle = 0 }")
        .top("kv", &redis.kv_table("")),
    )
}

fn send(gateway: &Gateway, count: usize, tag: &str) {
    let mut client = SmtpClient::ehlo(gateway.addr());
    for n in 0..count {
        client
            .send_mail(
                "sender@example.org",
                &["user@dest.example.test"],
                &sample_message(&format!("{tag}-{n}"), "x"),
            )
            .expect(250, "2.0.0");
    }
    client.command("QUIT");
}

#[test]
fn two_nodes_open_at_most_the_fleet_limit_to_one_destination() {
    let mut redis = RedisServer::start();
    let sink = Arc::new(SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().delay_data_reply(Duration::from_millis(700)),
    ));
    let a = node("127.0.0.2", &redis, &sink);
    let b = node("127.0.0.3", &redis, &sink);

    // Watch the sink's open connections while the nodes deliver.
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (sink, most, done) = (Arc::clone(&sink), Arc::clone(&most), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(sink.open_connections(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    send(&a, 6, "a");
    send(&b, 6, "b");
    sink.wait_for(12, Duration::from_secs(60));
    done.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let most = most.load(Ordering::Relaxed);
    assert!(most <= 2, "{most} connections at once to one destination");
    assert_eq!(most, 2, "the fleet used its two places");

    // Without Redis, each node keeps to its own limit and says so; mail still flows.
    redis.stop();
    send(&a, 2, "after");
    sink.wait_for(14, Duration::from_secs(60));
    a.wait_for_log("fleet delivery limits unavailable");
}
