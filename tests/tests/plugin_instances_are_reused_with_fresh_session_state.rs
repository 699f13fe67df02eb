//! A finished session's plugin instance serves the next session after a new `init`: the
//! plugin's per-session state starts afresh, and an instance that failed is never reused.
//! A plugin with nothing to do after on-connect gives its instance back at once, and
//! instances kept for reuse give way when the pool is full.

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

#[test]
fn a_plugin_done_after_connect_frees_its_instance_for_the_next_client() {
    let gateway = gateway(
        PluginEntry::new("dnsbl", "dnsbl.wasm")
            .config(r#"zones = ["bl.example.test"]"#)
            .config("check_private = false"),
    );
    // Three clients connected at once, all idle after EHLO: one instance serves them all,
    // since each is handed back as soon as its on-connect is answered.
    let clients: Vec<SmtpClient> = (0..3).map(|_| SmtpClient::ehlo(gateway.addr())).collect();
    assert_eq!(instances(&gateway, "dnsbl", "reused"), 3);
    assert_eq!(instances(&gateway, "dnsbl", "created"), 0);
    drop(clients);
}

#[test]
fn idle_instances_give_way_when_the_pool_is_full() {
    // A pool of two instances, taken by the two plugins' load-time instances, which are
    // then kept idle; `b` runs only on the second listener.
    let mut config = GatewayConfig {
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        plugins: vec![
            PluginEntry::new("a", "test_plugin.wasm").config(r#"mode = "count""#),
            PluginEntry::new("b", "test_plugin.wasm").config(r#"mode = "count""#),
        ],
        // Two sessions through a chain of one plugin: what `tidegate check` asks of a
        // pool of two.
        limits: vec![("max_connections".into(), "2".into())],
        ..GatewayConfig::default()
    };
    config
        .listeners
        .push(("other".into(), "127.0.0.2:0".into()));
    let text = config
        .render()
        .replace("[plugins]\n", "[plugins]\nmax_instances = 2\n")
        .replace(
            "name = \"mx\"\naddress = \"127.0.0.1:0\"\n",
            "name = \"mx\"\naddress = \"127.0.0.1:0\"\nplugins = [\"a\"]\n",
        )
        .replace(
            "name = \"other\"\naddress = \"127.0.0.2:0\"\n",
            "name = \"other\"\naddress = \"127.0.0.2:0\"\nplugins = [\"b\"]\n",
        );
    assert!(text.contains("plugins = [\"a\"]"), "{text}");
    let gateway = Gateway::start_with_text(&text, 2);
    let rcpt = |client: &mut SmtpClient| {
        client
            .command("MAIL FROM:<a@example.org>")
            .expect(250, "2.1.0");
        client.command("RCPT TO:<u@example.test>").text()
    };
    // The first session reuses `a`'s idle instance; the second needs a new one, and the
    // only free slot is held by `b`'s idle instance, which must give it up.
    let mut first = SmtpClient::ehlo(gateway.addr_of("mx"));
    assert_eq!(rcpt(&mut first), "5.7.1 call 1 of this session");
    let mut second = SmtpClient::ehlo(gateway.addr_of("mx"));
    assert_eq!(rcpt(&mut second), "5.7.1 call 1 of this session");
    assert_eq!(instances(&gateway, "a", "created"), 1);
}
