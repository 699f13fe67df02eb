//! The contract can grow without breaking plugins: a component built against
//! `tidegate:plugin@0.1.0` (committed as it was built, in `tests/fixtures/contract-0.1.0/`)
//! still loads into the current gateway and decides, tags, edits headers and keeps
//! per-session state as it did; and what contract 0.2.0 added works for plugins built
//! against it: the read-only session (TLS facts, the AUTH identity), the `disconnect`
//! verdict and the on-disconnect hook.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tidegate_e2e::{DnsServer, Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/contract-0.1.0/test_plugin.wasm")
}

fn old_plugin(name: &str, mode: &str) -> PluginEntry {
    PluginEntry::new(name, fixture().to_str().expect("UTF-8 path"))
        .config(&format!("mode = {mode:?}"))
        .config(&format!("label = {name:?}"))
}

#[test]
fn a_0_1_0_plugin_loads_decides_and_edits_as_it_did() {
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![
            old_plugin("first", "accept").config(r#"trigger = "accepted@example.test""#),
            old_plugin("refuser", "reject").config(r#"trigger = "victim@example.test""#),
            old_plugin("stamper", "header"),
        ],
        ..GatewayConfig::default()
    });
    gateway.wait_for_log("plugin loaded");
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    let refused = client.command("RCPT TO:<victim@example.test>");
    refused.expect(550, "5.7.1");
    assert_eq!(refused.text(), "5.7.1 Rejected by refuser");
    // `accept` ends the chain for this recipient: the refuser never sees it.
    client
        .command("RCPT TO:<accepted@example.test>")
        .expect(250, "2.1.5");
    client.command("DATA").expect_code(354);
    client.send(sample_message("old contract", "body").as_bytes());
    client.send(b".\r\n");
    let id = client.read_reply().queue_id().expect("queued");
    let shown = String::from_utf8(gateway.spool_show(&id)).unwrap();
    assert!(
        shown.contains("X-Test-stamper: subject=old contract calls=0 tag=first"),
        "{shown}"
    );
}

#[test]
fn a_0_1_0_plugin_on_a_reused_instance_starts_every_session_fresh() {
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![old_plugin("counter", "count")],
        ..GatewayConfig::default()
    });
    for _ in 0..3 {
        let mut client = SmtpClient::ehlo(gateway.addr());
        client
            .command("MAIL FROM:<a@example.org>")
            .expect(250, "2.1.0");
        let reply = client.command("RCPT TO:<u@example.test>");
        assert_eq!(reply.text(), "5.7.1 call 1 of this session");
        client.command("QUIT");
    }
}

#[test]
fn a_plugin_reads_the_helo_name_and_the_tls_facts_of_its_session() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) =
        tidegate_e2e::self_signed(certs.path(), "default", "relay.example.test", false);
    let config = GatewayConfig {
        plugins: vec![
            PluginEntry::new("session", "test_plugin.wasm").config(r#"mode = "session""#),
        ],
        top: vec![(
            "tls".into(),
            format!("{{ certificate = {cert:?}, key = {key:?} }}"),
        )],
        ..GatewayConfig::default()
    };
    let gateway = Gateway::start_with(&config);
    let mut client = SmtpClient::ehlo(gateway.addr());
    let ask = |client: &mut SmtpClient| {
        client
            .command("MAIL FROM:<a@example.org>")
            .expect(250, "2.1.0");
        let reply = client.command("RCPT TO:<u@example.test>");
        client.command("RSET");
        reply.text()
    };
    assert_eq!(
        ask(&mut client),
        "5.7.1 user=nobody tls=none helo=client.example.org rdns=none"
    );
    client.starttls("relay.example.test");
    client.command("EHLO again.example.org").expect_code(250);
    assert_eq!(
        ask(&mut client),
        "5.7.1 user=nobody tls=TLSv1.3 helo=again.example.org rdns=none"
    );
}

fn counter(gateway: &Gateway, name: &str) -> u64 {
    gateway
        .admin_get("/metrics")
        .1
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!(
                "tidegate_plugin_counter_total{{plugin=\"watcher\",name=\"{name}\"}} "
            ))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn wait_for_counter(gateway: &Gateway, name: &str, value: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(gateway, name) != value {
        assert!(
            Instant::now() < deadline,
            "counter {name} is {}, not {value}",
            counter(gateway, name)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_disconnect_verdict_refuses_and_closes_and_on_disconnect_hears_of_every_end() {
    let gateway = Gateway::start_with(&GatewayConfig {
        plugins: vec![
            PluginEntry::new("watcher", "test_plugin.wasm")
                .config(r#"mode = "disconnect""#)
                .config(r#"trigger = "victim@example.test""#),
        ],
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        ..GatewayConfig::default()
    });
    // A session that quits after one message.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@example.org",
            &["user@example.test"],
            &sample_message("s", "b"),
        )
        .expect(250, "2.0.0");
    client.command("QUIT").expect(221, "2.0.0");
    wait_for_counter(&gateway, "disconnect_quit", 1);
    wait_for_counter(&gateway, "disconnect_accepted", 1);

    // The victim is refused and the connection closed: nothing more is read.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    let reply = client.command("RCPT TO:<victim@example.test>");
    reply.expect(554, "5.7.1");
    assert_eq!(reply.text(), "5.7.1 Go away");
    assert!(client.is_closed(), "the connection stayed open");
    wait_for_counter(&gateway, "disconnect_disconnect", 1);
}

#[test]
fn the_clients_reverse_dns_name_is_given_when_forward_confirmed() {
    // Loopback names are special-use (RFC 6761): the resolver answers 127.0.0.1's PTR with
    // `localhost` itself, whose address is 127.0.0.1 again (confirmed), and 127.0.0.2 has
    // no name. The lab's DNS server stands in for the system's, so nothing else is asked.
    let dns = DnsServer::start(&["rdns.test"], &[]);
    let gateway = Gateway::start_with(
        &GatewayConfig {
            plugins: vec![
                PluginEntry::new("session", "test_plugin.wasm").config(r#"mode = "session""#),
            ],
            relay_networks: Vec::new(),
            ..GatewayConfig::default()
        }
        .smtp("reverse_dns", "true")
        .dns(dns.addr(), 1000),
    );
    let ask = |local: &str| {
        let mut client = SmtpClient::connect_from(local.parse().unwrap(), gateway.addr());
        client.command("EHLO client.example.org").expect_code(250);
        client
            .command("MAIL FROM:<a@example.org>")
            .expect(250, "2.1.0");
        client.command("RCPT TO:<u@example.test>").text()
    };
    let confirmed = ask("127.0.0.1");
    assert!(confirmed.ends_with("rdns=localhost"), "{confirmed}");
    let unnamed = ask("127.0.0.2");
    assert!(unnamed.ends_with("rdns=none"), "{unnamed}");
}

#[test]
fn the_delivery_side_hooks_see_the_tags_the_session_set() {
    use tidegate_e2e::sink::{Behaviour, SinkServer};
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let gateway = Gateway::start_with(
        &GatewayConfig {
            top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
            plugins: vec![
                // At RCPT it sets the tag `seen-watcher`; on-delivery counts the messages
                // whose tags it finds.
                PluginEntry::new("watcher", "test_plugin.wasm")
                    .config(r#"mode = "tag""#)
                    .config(r#"label = "watcher""#),
            ],
            ..GatewayConfig::default()
        }
        .route("internal", &["example.test"], sink.addr()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@example.org",
            &["user@example.test"],
            &sample_message("tags", "x"),
        )
        .expect(250, "2.0.0");
    sink.wait_for(1, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(20);
    while counter(&gateway, "delivery_tagged") != 1 {
        assert!(Instant::now() < deadline, "on-delivery never saw the tag");
        std::thread::sleep(Duration::from_millis(50));
    }
}
