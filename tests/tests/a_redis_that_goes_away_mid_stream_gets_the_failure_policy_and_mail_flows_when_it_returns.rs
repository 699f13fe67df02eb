//! The plugin KV store in a real `redis-server`, and that server hung (SIGSTOP) and then
//! killed while a stream of sessions goes on: each session gets the plugin's failure
//! policy (`on_error = "tempfail"`: 451 4.3.0) within the plugin call's time limit, never
//! a hang; when Redis answers again mail flows again, with no restart of Tidegate; the
//! loss and the return are each logged once, the failures are counted, and `/readyz`
//! says whether Redis answers.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tidegate_e2e::redis::RedisServer;
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
/// The plugin's `time_limit_ms`.
const CALL_LIMIT: Duration = Duration::from_millis(1500);
/// What a reply may take beyond it on a busy machine.
const SLACK: Duration = Duration::from_millis(1500);

/// One transaction; the RCPT reply's code and how long the slowest reply took.
fn attempt(gateway: &Gateway, n: usize) -> (u16, Duration) {
    let mut client = SmtpClient::connect_from(CLIENT, gateway.addr());
    assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
    client.command("EHLO client.example.org").expect_code(250);
    client
        .command(&format!("MAIL FROM:<s{n}@example.org>"))
        .expect(250, "2.1.0");
    let started = Instant::now();
    let reply = client.command("RCPT TO:<u@example.test>");
    let mut slowest = started.elapsed();
    if reply.code == 250 {
        client.command("DATA").expect_code(354);
        client.send(sample_message("stream", &format!("message {n}")).as_bytes());
        let started = Instant::now();
        client.send(b".\r\n");
        let reply = client.read_reply();
        slowest = slowest.max(started.elapsed());
        client.command("QUIT");
        return (reply.code, slowest);
    }
    if reply.code == 451 {
        assert_eq!(reply.enhanced(), Some("4.3.0"), "{reply:?}");
    }
    client.command("QUIT");
    (reply.code, slowest)
}

/// Sessions until one is accepted (or `within` passes); none may wait past the limit.
fn until_accepted(gateway: &Gateway, first: usize, within: Duration) -> usize {
    let deadline = Instant::now() + within;
    let mut n = first;
    loop {
        let (code, took) = attempt(gateway, n);
        assert!(took < CALL_LIMIT + SLACK, "session {n} waited {took:?}");
        n += 1;
        if code == 250 {
            return n;
        }
        assert_eq!(code, 451, "session {n}");
        assert!(Instant::now() < deadline, "mail did not flow again");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sessions while Redis is away: each deferred by the failure policy, none waiting long.
fn all_deferred(gateway: &Gateway, first: usize, count: usize) -> usize {
    for n in first..first + count {
        let (code, took) = attempt(gateway, n);
        assert_eq!(code, 451, "session {n} was not deferred with Redis away");
        assert!(took < CALL_LIMIT + SLACK, "session {n} waited {took:?}");
    }
    first + count
}

#[test]
fn sessions_are_deferred_in_time_while_redis_is_away_and_accepted_when_it_is_back() {
    let mut redis = RedisServer::start();
    let gateway = Gateway::start_with(
        &GatewayConfig {
            listeners: vec![("mx".into(), "127.0.0.2:0".into())],
            plugins: vec![
                PluginEntry::new("rate-limit", "rate_limit.wasm")
                    .setting(&format!("time_limit_ms = {}", CALL_LIMIT.as_millis()))
                    .config("per_ip = { limit = 1000, window = \"1h\" }"),
            ],
            ..GatewayConfig::default()
        }
        .top(
            "kv",
            &redis.kv_table("command_timeout_ms = 400, connect_timeout_ms = 400"),
        )
        .top("admin", r#"{ address = "127.0.0.1:0" }"#),
    );
    let mut n = until_accepted(&gateway, 0, Duration::from_secs(5));
    assert_eq!(gateway.spool_list().len(), 1);

    // Hung: connections are accepted and nothing answers.
    redis.pause(true);
    n = all_deferred(&gateway, n, 4);
    redis.pause(false);
    n = until_accepted(&gateway, n, Duration::from_secs(10));

    // Gone: connections refused, then a fresh server on the same port.
    redis.stop();
    n = all_deferred(&gateway, n, 4);
    // The node stays in the balancer (every node shares this Redis) and says why mail waits.
    let (status, body) = gateway.admin_get("/readyz");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("kv redis: unreachable"), "{body}");
    redis.resume_or_start();
    let n = until_accepted(&gateway, n, Duration::from_secs(10));
    // And it keeps flowing.
    for next in n..n + 3 {
        let (code, _) = attempt(&gateway, next);
        assert_eq!(code, 250);
    }
    assert_eq!(gateway.spool_list().len(), 6);
    assert!(
        gateway
            .admin_get("/readyz")
            .1
            .contains("kv redis: reachable")
    );

    let log = gateway.log();
    assert_eq!(
        log.matches("kv backend redis unreachable").count(),
        2,
        "once per outage, not per call:\n{log}"
    );
    assert_eq!(
        log.matches("kv backend redis reachable again").count(),
        2,
        "{log}"
    );
    let (_, metrics) = gateway.admin_get("/metrics");
    let errors = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidegate_kv_backend_errors_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the KV backend error counter");
    assert!(errors >= 8.0, "{errors}");
    assert!(
        metrics.contains("kind=\"kv\""),
        "plugin failures counted as kv:\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("plugin_failures"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}
