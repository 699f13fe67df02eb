//! Two Tidegate processes on different loopback addresses, both with `[kv] backend =
//! "redis"` pointed at one real `redis-server` the test runs: the shipped `rate-limit`
//! plugin's count is the fleet's, so a client that used its limit on one node is deferred
//! by the other. (With the in-process store each node would count on its own and the
//! second node would accept.)

use std::net::{IpAddr, Ipv4Addr};

use tidegate_e2e::redis::RedisServer;
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));

fn node(address: &str, redis: &RedisServer) -> Gateway {
    Gateway::start_with(
        &GatewayConfig {
            listeners: vec![("mx".into(), format!("{address}:0"))],
            plugins: vec![
                PluginEntry::new("rate-limit", "rate_limit.wasm")
                    .config("per_ip = { limit = 5, window = \"1h\" }"),
            ],
            ..GatewayConfig::default()
        }
        .top("kv", &redis.kv_table("")),
    )
}

fn session(gateway: &Gateway) -> SmtpClient {
    let mut client = SmtpClient::connect_from(CLIENT, gateway.addr());
    assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
    client.command("EHLO client.example.org").expect_code(250);
    client
}

fn send(gateway: &Gateway, subject: &str) {
    let mut client = session(gateway);
    client
        .send_mail(
            "a@example.org",
            &["u@example.test"],
            &sample_message(subject, "counted"),
        )
        .expect(250, "2.0.0");
    client.command("QUIT");
}

#[test]
fn a_client_that_used_its_limit_on_node_a_is_deferred_by_node_b() {
    let redis = RedisServer::start();
    let a = node("127.0.0.2", &redis);
    let b = node("127.0.0.3", &redis);
    assert_ne!(a.addr().ip(), b.addr().ip());
    a.wait_for_log("plugin KV store in redis");

    for i in 0..3 {
        send(&a, &format!("via a {i}"));
    }
    // Node B has seen nothing of this client, yet only two of its five remain.
    send(&b, "via b 0");
    send(&b, "via b 1");
    let mut third = session(&b);
    third
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    let reply = third.command("RCPT TO:<u@example.test>");
    reply.expect(451, "4.7.1");
    assert!(reply.text().contains("127.0.0.9"), "{reply:?}");
    // And node A agrees.
    let mut again = session(&a);
    again
        .command("MAIL FROM:<b@example.org>")
        .expect(250, "2.1.0");
    again
        .command("RCPT TO:<u@example.test>")
        .expect(451, "4.7.1");

    assert_eq!(a.spool_list().len(), 3);
    assert_eq!(b.spool_list().len(), 2);
    // The count lives in Redis, under the plugin's namespace.
    let keys = redis
        .command("KEYS tidegate:10:rate-limit:v:*")
        .unwrap_or_default();
    assert!(keys.starts_with("*1"), "one counter key in Redis: {keys:?}");
    // A client of its own is not held back by the other's count.
    let mut other = SmtpClient::connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 10)), b.addr());
    other.command("EHLO other.example.org").expect_code(250);
    other
        .send_mail(
            "c@example.org",
            &["u@example.test"],
            &sample_message("other", "x"),
        )
        .expect(250, "2.0.0");
}
