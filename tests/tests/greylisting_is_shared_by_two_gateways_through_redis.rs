//! The shipped `greylist` plugin, loaded as real Wasm in two Tidegate processes on
//! different loopback addresses that share one real `redis-server` (`[kv] backend =
//! "redis"`): the first attempt of a client, sender and recipient is deferred with
//! 451 4.7.1 on node A, a retry before the delay is deferred again, and a retry after the
//! delay is accepted by node B, which never saw the first attempt; the client is then
//! let through for other senders too.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tidegate_e2e::redis::RedisServer;
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
const DELAY: Duration = Duration::from_secs(2);

fn node(address: &str, redis: &RedisServer) -> Gateway {
    Gateway::start_with(
        &GatewayConfig {
            listeners: vec![("mx".into(), format!("{address}:0"))],
            plugins: vec![
                PluginEntry::new("greylist", "greylist.wasm")
                    .config(&format!("delay_secs = {}", DELAY.as_secs()))
                    .config("retry_window_secs = 600")
                    .config("text = \"Greylisted by the fleet, retry later\""),
            ],
            ..GatewayConfig::default()
        }
        .top("kv", &redis.kv_table("")),
    )
}

fn session(gateway: &Gateway) -> SmtpClient {
    let mut client = SmtpClient::connect_from(CLIENT, gateway.addr());
    assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
    client.command("EHLO mta.example.org").expect_code(250);
    client
}

/// MAIL FROM and RCPT TO on a new session; the RCPT reply's code (the session is kept
/// for DATA when it is 250).
fn rcpt(gateway: &Gateway, sender: &str, recipient: &str) -> (u16, String, SmtpClient) {
    let mut client = session(gateway);
    client
        .command(&format!("MAIL FROM:<{sender}>"))
        .expect(250, "2.1.0");
    let reply = client.command(&format!("RCPT TO:<{recipient}>"));
    (reply.code, reply.text(), client)
}

#[test]
fn greylisted_on_node_a_and_accepted_by_node_b_after_the_delay() {
    let redis = RedisServer::start();
    let a = node("127.0.0.2", &redis);
    let b = node("127.0.0.3", &redis);

    let first_attempt = Instant::now();
    let (code, text, _) = rcpt(&a, "news@example.org", "u@example.test");
    assert_eq!(code, 451, "{text}");
    assert!(text.contains("Greylisted by the fleet"), "{text}");
    // Too soon, on either node: deferred again.
    let (code, _, _) = rcpt(&b, "news@example.org", "u@example.test");
    assert_eq!(code, 451);
    // Another recipient is a triplet of its own.
    let (code, _, _) = rcpt(&a, "news@example.org", "v@example.test");
    assert_eq!(code, 451);

    std::thread::sleep(DELAY.saturating_sub(first_attempt.elapsed()) + Duration::from_millis(300));
    let (code, text, mut client) = rcpt(&b, "news@example.org", "u@example.test");
    assert_eq!(
        code, 250,
        "the retry after the delay, on the other node: {text}"
    );
    client.command("DATA").expect_code(354);
    client.send(sample_message("retried", "after the delay").as_bytes());
    client.send(b".\r\n");
    client.read_reply().expect(250, "2.0.0");
    client.command("QUIT");
    assert_eq!(b.spool_list().len(), 1);
    assert!(a.spool_list().is_empty());

    // The client network is whitelisted now, on both nodes, for any sender.
    let (code, text, _) = rcpt(&a, "someone-else@example.org", "w@example.test");
    assert_eq!(code, 250, "{text}");
    // The state is in Redis: the client's pass, and the other recipient's first attempt
    // still waiting.
    let pass = redis
        .command("EXISTS \"tidegate:8:greylist:v:p:127.0.0.0/24\"")
        .unwrap_or_default();
    assert!(pass.starts_with(":1"), "the pass is in Redis: {pass:?}");
    let waiting = redis
        .command("EXISTS \"tidegate:8:greylist:v:t:127.0.0.0/24|news@example.org|v@example.test\"")
        .unwrap_or_default();
    assert!(
        waiting.starts_with(":1"),
        "the other triplet waits in Redis: {waiting:?}"
    );
    b.wait_for_log("greylisted triplet retried");
}
