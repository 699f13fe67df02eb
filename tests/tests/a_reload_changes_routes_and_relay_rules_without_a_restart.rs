//! Live reconfiguration: `tidegate reload` (as SIGHUP and a change to the file) applies a
//! new route to mail already queued, and new relay rules to the sessions that start after
//! it, without a restart and without dropping the session in progress (which keeps the
//! rules it started with). What only a restart applies is named; a configuration that
//! does not load changes nothing.

use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, SmtpClient, sample_message};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[test]
fn a_new_route_applies_to_queued_mail_and_new_rules_to_new_sessions() {
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    // The internal server is at a port where nothing listens: mail to it is deferred.
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec!["example.test".into()],
            relay_networks: Vec::new(),
            top: vec![(
                "admin".into(),
                format!(r#"{{ address = "127.0.0.1:0", token_file = {token_file:?} }}"#),
            )],
            ..GatewayConfig::default()
        }
        .queue("retry_intervals", r#"["1h"]"#)
        .route(
            "internal",
            &["example.test"],
            "127.0.0.1:1".parse().unwrap(),
        ),
    );

    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "a@elsewhere.test",
            &["alice@example.test"],
            &sample_message("queued", "x"),
        )
        .expect(250, "2.0.0");
    let deadline = Instant::now() + Duration::from_secs(30);
    while gateway.cli_json(&["queue", "summary"])["messages"]["deferred"] != 1 {
        assert!(Instant::now() < deadline, "not deferred\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // A session in the middle of a transaction while the configuration changes.
    client
        .command("MAIL FROM:<b@elsewhere.test>")
        .expect(250, "2.1.0");

    let path = gateway.config_path();
    let before = std::fs::read_to_string(&path).unwrap();
    let after = before
        .replace("127.0.0.1:1", &sink.addr().to_string())
        .replace(
            r#"accept_domains = ["example.test"]"#,
            r#"accept_domains = ["example.test", "new.test"]"#,
        )
        .replace("hostname =", "shutdown_grace = \"7s\"\nhostname =");
    assert_ne!(before, after);
    // A broken file first (a key that does not exist): refused, nothing changes.
    std::fs::write(&path, format!("no_such_key = 1\n{after}")).unwrap();
    let refused = gateway.cli(&["reload"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("nothing changed"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    let mut fresh = SmtpClient::ehlo(gateway.addr());
    fresh
        .command("MAIL FROM:<c@elsewhere.test>")
        .expect(250, "2.1.0");
    fresh.command("RCPT TO:<bob@new.test>").expect_code(554);
    fresh.command("QUIT");

    // The file watch applies it as soon as it is written; `tidegate reload` again finds
    // nothing more to apply, and both name what needs a restart.
    std::fs::write(&path, &after).unwrap();
    gateway.wait_for_log("configuration reloaded");
    let line = gateway
        .log()
        .lines()
        .find(|l| l.contains("configuration reloaded"))
        .unwrap()
        .to_owned();
    assert!(line.contains(r#"applied=["relay", "route"]"#), "{line}");
    let report = gateway.cli_json(&["reload"]);
    assert!(report["failed"].is_null(), "{report}");
    assert_eq!(
        report["needs_restart"],
        serde_json::json!(["shutdown_grace"]),
        "{report}"
    );

    // The session in progress goes on, under the rules it started with.
    client.command("RCPT TO:<bob@new.test>").expect_code(554);
    client
        .command("RCPT TO:<carol@example.test>")
        .expect(250, "2.1.5");
    client.command("DATA").expect_code(354);
    client.send(sample_message("in progress", "x").as_bytes());
    client.send(b".\r\n");
    client.read_reply().expect(250, "2.0.0");
    // A new session has the new rules.
    let mut fresh = SmtpClient::ehlo(gateway.addr());
    fresh
        .send_mail(
            "c@elsewhere.test",
            &["bob@new.test"],
            &sample_message("new rules", "x"),
        )
        .expect(250, "2.0.0");

    // The queued message takes the new route at its next attempt.
    gateway.cli_ok(&["queue", "retry", "--all"]);
    let received = sink.wait_for(2, Duration::from_secs(30));
    let subjects: Vec<String> = received
        .iter()
        .filter_map(|m| {
            m.text()
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect();
    assert!(subjects.contains(&"queued".to_owned()), "{subjects:?}");
    assert!(subjects.contains(&"in progress".to_owned()), "{subjects:?}");
    assert!(gateway.log().contains("configuration reloaded"));
    let metrics = gateway.admin_get("/metrics").1;
    assert!(
        metrics.contains("tidegate_config_reloads_total{result=\"refused\"}")
            && metrics.contains("tidegate_config_reloads_total{result=\"applied\"}"),
        "{metrics}"
    );

    // A listener added by a reload takes mail; removed again, it stops accepting while
    // the session it still has finishes.
    let with_extra = after.replace(
        "\n[spool]",
        "\n[[listener]]\nname = \"extra\"\naddress = \"127.0.0.1:0\"\nprotocol = \"smtp\"\nverify = []\n\n[spool]",
    );
    std::fs::write(&path, &with_extra).unwrap();
    let report = gateway.cli_json(&["reload"]);
    assert!(report["failed"].is_null(), "{report}");
    gateway.wait_for_log("listener=extra");
    let extra: std::net::SocketAddr = gateway
        .log()
        .lines()
        .filter(|l| l.contains("listening") && l.contains("listener=extra"))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("address="))
                .and_then(|a| a.parse().ok())
        })
        .expect("the extra listener's address");
    let mut on_extra = SmtpClient::ehlo(extra);
    on_extra
        .send_mail(
            "d@elsewhere.test",
            &["dave@example.test"],
            &sample_message("extra", "x"),
        )
        .expect(250, "2.0.0");
    std::fs::write(&path, &after).unwrap();
    gateway.cli_json(&["reload"]);
    gateway.wait_for_log("listener closed");
    assert!(
        std::net::TcpStream::connect_timeout(&extra, Duration::from_secs(2)).is_err(),
        "the removed listener still accepts"
    );
    on_extra
        .send_mail(
            "d@elsewhere.test",
            &["erin@example.test"],
            &sample_message("still on extra", "x"),
        )
        .expect(250, "2.0.0");
    sink.wait_for(4, Duration::from_secs(30));
}
