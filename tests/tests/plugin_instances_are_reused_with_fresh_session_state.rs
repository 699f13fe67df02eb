//! A finished session's plugin instance serves the next session after a new `init`: the
//! plugin's per-session state starts afresh, and an instance that failed is never reused.

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient};

fn gateway(plugin: PluginEntry) -> Gateway {
    Gateway::start_with(&GatewayConfig {
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        plugins: vec![plugin],
        ..GatewayConfig::default()
    })
}

/// The value of `tidegate_plugin_instances_total` for this plugin and source (0 if absent).
fn instances(gateway: &Gateway, plugin: &str, source: &str) -> u64 {
    let (_, body) = gateway.admin_get("/metrics");
    let prefix =
        format!(r#"tidegate_plugin_instances_total{{plugin="{plugin}",source="{source}"}} "#);
    body.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.trim().parse().expect("a counter value"))
        .unwrap_or(0)
}

/// Runs one session with two recipients and returns the plugin's answers.
fn session(gateway: &Gateway) -> Vec<String> {
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    let answers = ["one@example.test", "two@example.test"]
        .iter()
        .map(|rcpt| client.command(&format!("RCPT TO:<{rcpt}>")).text())
        .collect();
    client.command("QUIT").expect(221, "2.0.0");
    // The session ends (and gives its instance back) when the server closes the connection.
    assert!(client.is_closed());
    answers
}

#[test]
fn every_session_starts_with_fresh_state_on_a_reused_instance() {
    let gateway =
        gateway(PluginEntry::new("counter", "test_plugin.wasm").config(r#"mode = "count""#));
    for _ in 0..4 {
        assert_eq!(
            session(&gateway),
            [
                "5.7.1 call 1 of this session",
                "5.7.1 call 2 of this session"
            ]
        );
    }
    let created = instances(&gateway, "counter", "created");
    let reused = instances(&gateway, "counter", "reused");
    assert_eq!(created + reused, 4, "one instance per session");
    // One after the other, the sessions all share the instance made at load time (a
    // session gives its instances back before its connection closes).
    assert_eq!((created, reused), (0, 4));
}

#[test]
fn a_failed_instance_is_replaced_not_reused() {
    let gateway = gateway(
        PluginEntry::new("fragile", "test_plugin.wasm")
            .setting(r#"on_error = "continue""#)
            .config(r#"mode = "trap""#)
            .config(r#"trigger = "one@example.test""#),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    // The instance made at load time serves this session and traps here ...
    client
        .command("RCPT TO:<one@example.test>")
        .expect(250, "2.1.5");
    // ... so the next call needs a new one: the trapped instance is gone, not recycled.
    client
        .command("RCPT TO:<two@example.test>")
        .expect(250, "2.1.5");
    assert_eq!(instances(&gateway, "fragile", "reused"), 1);
    assert_eq!(instances(&gateway, "fragile", "created"), 1);
    client.command("QUIT").expect(221, "2.0.0");
    assert!(client.is_closed());

    // The healthy replacement is recycled for the next session.
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<two@example.test>")
        .expect(250, "2.1.5");
    client.command("QUIT").expect(221, "2.0.0");
    assert_eq!(instances(&gateway, "fragile", "reused"), 2);
    assert_eq!(instances(&gateway, "fragile", "created"), 1);
}
