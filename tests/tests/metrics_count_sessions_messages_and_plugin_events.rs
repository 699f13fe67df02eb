//! The admin listener serves Prometheus metrics: sessions, accepted and refused messages,
//! plugin failures and the counters plugins keep.

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

#[test]
fn metrics_reflect_what_happened() {
    let gateway = Gateway::start_with(
        &GatewayConfig {
            top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
            plugins: vec![
                PluginEntry::new("recipients", "recipient_policy.wasm")
                    .config(r#"deny = ["blocked@example.test"]"#),
                PluginEntry::new("fragile", "test_plugin.wasm")
                    .setting(r#"on_error = "continue""#)
                    .config(r#"mode = "trap""#)
                    .config(r#"trigger = "trap@example.test""#),
            ],
            ..GatewayConfig::default()
        }
        .limit("max_message_size", 1000),
    );

    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@example.org",
            &["user@example.test"],
            &sample_message("m1", "ok"),
        )
        .expect(250, "2.0.0");
    client
        .command("MAIL FROM:<a@example.org>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<blocked@example.test>")
        .expect(550, "5.1.1");
    client
        .command("RCPT TO:<trap@example.test>")
        .expect(250, "2.1.5");
    client.command("DATA");
    client.send(&vec![b'x'; 2000]);
    client.send(b"\r\n.\r\n");
    client.read_reply().expect(552, "5.3.4");
    client.command("QUIT");

    let (status, body) = gateway.admin_get("/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK");
    for expected in [
        r#"tidegate_sessions_total{listener="mx"} 1"#,
        r#"tidegate_messages_accepted_total{listener="mx"} 1"#,
        r#"tidegate_messages_refused_total{listener="mx"} 1"#,
        r#"tidegate_plugin_failures_total{plugin="fragile",hook="on-rcpt-to",kind="trap"} 1"#,
        // Cost accounting: every call is counted, timed and its fuel added up.
        r#"tidegate_plugin_calls_total{plugin="fragile",hook="on-rcpt-to"} 2"#,
        r#"tidegate_plugin_call_seconds_count{plugin="fragile",hook="on-rcpt-to"} 2"#,
        r#"tidegate_plugin_counter_total{plugin="recipients",name="recipient_policy_denied"} 1"#,
    ] {
        assert!(body.contains(expected), "missing {expected} in:\n{body}");
    }
    let fuel: u64 = body
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"tidegate_plugin_fuel_total{plugin="fragile",hook="on-rcpt-to"} "#)
        })
        .and_then(|v| v.parse().ok())
        .expect("fuel used by the call that returned");
    assert!(fuel > 0);
    assert!(body.contains(r#"tidegate_plugin_memory_high_water_bytes{plugin="fragile"} "#));
    let (status, body) = gateway.admin_get("/health");
    assert_eq!(
        (status.as_str(), body.as_str()),
        ("HTTP/1.1 200 OK", "ok\n")
    );
    let (status, _) = gateway.admin_get("/nothing");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
