//! A new plugin version in shadow runs on a copy of what its primary sees and is compared
//! with it: a shadow that rejects more has its disagreements counted (metrics, `tidegate
//! plugins shadow`) and sampled, and a shadow that traps has its failures counted, while
//! every session gets exactly what the enforcing plugin decides. Both shadows are the test
//! plugin with another `[plugin.config]` than the primary's.

use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

const SESSIONS: usize = 10;

/// The admin API on an ephemeral port, with a token file in `dir`.
fn admin(dir: &std::path::Path) -> (String, String) {
    let token_file = dir.join("admin.token");
    std::fs::write(&token_file, "ops 0123456789abcdef0123456789abcdef\n").unwrap();
    (
        "admin".into(),
        format!(r#"{{ address = "127.0.0.1:0", token_file = {token_file:?} }}"#),
    )
}

fn test_plugin(name: &str, mode: &str) -> PluginEntry {
    PluginEntry::new(name, "test_plugin.wasm")
        .config(&format!("mode = {mode:?}"))
        .config(&format!("label = {name:?}"))
}

/// Polls `tidegate plugins shadow NAME --json` until `done` holds (shadows run off the
/// session's path, so their counts trail the sessions a little).
fn shadow_report(
    gateway: &Gateway,
    name: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = gateway.cli_json(&["plugins", "shadow", name]);
        if done(&report) {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "shadow {name} never got there: {report:#}\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_stricter_shadow_is_counted_and_sampled_and_a_trapping_one_never_touches_a_session() {
    let secrets = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(&GatewayConfig {
        top: vec![admin(secrets.path())],
        plugins: vec![
            test_plugin("content", "reject").config(r#"trigger = "blocked@example.test""#),
            // Rejects every recipient, where the primary rejects one.
            test_plugin("content-next", "reject")
                .setting(r#"mode = "shadow""#)
                .setting(r#"shadow_of = "content""#),
            // Traps at every on-rcpt-to; compared with the chain's decision.
            test_plugin("content-trap", "trap").setting(r#"mode = "shadow""#),
        ],
        ..GatewayConfig::default()
    });
    for n in 0..SESSIONS {
        let mut client = SmtpClient::ehlo(gateway.addr());
        client
            .command("MAIL FROM:<sender@example.org>")
            .expect(250, "2.1.0");
        let recipient = format!("user{n}@example.test");
        client
            .command(&format!("RCPT TO:<{recipient}>"))
            .expect(250, "2.1.5");
        let refused = client.command("RCPT TO:<blocked@example.test>");
        refused.expect(550, "5.7.1");
        assert_eq!(refused.text(), "5.7.1 Rejected by content");
        client.command("DATA").expect_code(354);
        let mut message = sample_message("shadowed", "body").into_bytes();
        message.extend_from_slice(b".\r\n");
        client.send(&message);
        client.read_reply().expect(250, "2.0.0");
        client.command("QUIT").expect_code(221);
    }
    assert_eq!(gateway.spool_list().len(), SESSIONS, "{}", gateway.log());

    // The stricter shadow: on-rcpt-to disagreed for every accepted recipient, agreed on
    // the one both reject and at on-data.
    let report = shadow_report(&gateway, "content-next", |r| {
        r["agreements"].as_u64() == Some(2 * SESSIONS as u64)
            && r["disagreements"][0]["count"].as_u64() == Some(SESSIONS as u64)
    });
    assert_eq!(report["shadow_of"], "content");
    assert_eq!(report["failures"], 0);
    assert_eq!(report["skipped"], 0);
    let disagreements = report["disagreements"].as_array().unwrap();
    assert_eq!(disagreements.len(), 1, "{report:#}");
    assert_eq!(disagreements[0]["hook"], "on-rcpt-to");
    assert_eq!(disagreements[0]["enforced"], "continue");
    assert_eq!(disagreements[0]["shadow"], "reject");
    let samples = report["samples"].as_array().unwrap();
    assert_eq!(samples.len(), SESSIONS, "{report:#}");
    for (n, sample) in samples.iter().enumerate() {
        assert_eq!(sample["hook"], "on-rcpt-to");
        assert_eq!(sample["enforced"], "continue");
        assert_eq!(sample["shadow"], "reject 550");
        assert_eq!(sample["input"], format!("rcpt to <user{n}@example.test>"));
    }
    let table = gateway.cli_ok(&["plugins", "shadow", "content-next"]);
    assert!(
        table.contains("shadow content-next of content: 20 agreements, 10 disagreements"),
        "{table}"
    );
    assert!(table.contains("rcpt to <user9@example.test>"), "{table}");
    let (_, metrics) = gateway.admin_get("/metrics");
    assert!(
        metrics.contains(
            "tidegate_plugin_shadow_disagreements_total{plugin=\"content-next\",hook=\"on-rcpt-to\",enforced=\"continue\",shadow=\"reject\"} 10"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "tidegate_plugin_shadow_agreements_total{plugin=\"content-next\",hook=\"on-rcpt-to\"} 10"
        ),
        "{metrics}"
    );

    // The trapping shadow: every on-rcpt-to call failed and was only counted; its fresh
    // instance at on-data agreed with the chain.
    let report = shadow_report(&gateway, "content-trap", |r| {
        r["failures"].as_u64() == Some(2 * SESSIONS as u64)
            && r["agreements"].as_u64() == Some(SESSIONS as u64)
    });
    assert_eq!(report["shadow_of"], serde_json::Value::Null);
    assert_eq!(report["disagreements"], serde_json::json!([]));
    let plugins = gateway.cli_json(&["plugins"]);
    let trap = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "content-trap")
        .unwrap();
    assert_eq!(trap["mode"], "shadow");
    assert_eq!(trap["failures"]["trap"], 2 * SESSIONS as u64, "{plugins:#}");
    let listed = gateway.cli_ok(&["plugins"]);
    assert!(listed.contains("shadow of content"), "{listed}");
    assert!(listed.contains("shadow of the chain"), "{listed}");
    // Nothing a shadow said reached a message.
    for entry in gateway.spool_list() {
        let shown = String::from_utf8(gateway.spool_show(&entry.id)).unwrap();
        assert!(!shown.contains("content-next"), "{shown}");
    }
}

#[test]
fn a_shadows_header_edits_are_compared_and_sampled_with_the_queue_id_but_never_applied() {
    let secrets = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(&GatewayConfig {
        top: vec![admin(secrets.path())],
        plugins: vec![
            test_plugin("content", "none"),
            // Adds `X-Test-content-next` and removes `X-Remove-Me` at on-data.
            test_plugin("content-next", "header")
                .setting(r#"mode = "shadow""#)
                .setting(r#"shadow_of = "content""#),
        ],
        ..GatewayConfig::default()
    });
    let mut client = SmtpClient::ehlo(gateway.addr());
    let message = format!(
        "X-Remove-Me: still here\r\n{}",
        sample_message("edited", "body")
    );
    let reply = client.send_mail("sender@example.org", &["user@example.test"], &message);
    reply.expect(250, "2.0.0");
    let id = reply.queue_id().unwrap();
    let report = shadow_report(&gateway, "content-next", |r| {
        r["samples"].as_array().is_some_and(|s| !s.is_empty())
    });
    let sample = &report["samples"][0];
    assert_eq!(sample["hook"], "on-data");
    assert_eq!(sample["queue_id"], id.as_str(), "{report:#}");
    // Same verdict, different edits: a disagreement all the same.
    assert_eq!(sample["enforced"], "continue");
    assert_eq!(sample["shadow"], "continue");
    assert_eq!(sample["enforced_edits"], serde_json::json!([]));
    assert_eq!(
        sample["shadow_edits"],
        serde_json::json!([
            "add-header X-Test-content-next: subject=edited calls=1 tag=",
            "remove-header X-Remove-Me"
        ]),
        "{report:#}"
    );
    assert!(
        sample["input"].as_str().unwrap().starts_with(
            "data from <sender@example.org> to <user@example.test> subject \"edited\""
        ),
        "{report:#}"
    );
    let shown = String::from_utf8(gateway.spool_show(&id)).unwrap();
    assert!(shown.contains("X-Remove-Me: still here"), "{shown}");
    assert!(!shown.contains("X-Test-content-next"), "{shown}");
}
