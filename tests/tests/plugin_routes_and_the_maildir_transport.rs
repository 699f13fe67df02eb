//! Routing decided by a plugin (`domain-router`'s on-route) overrides the static routes:
//! one domain goes to a named smarthost route, another to the local maildir transport,
//! a third is discarded; maildir delivery writes one file per mailbox atomically.

use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn files_in(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default()
}

#[test]
fn on_route_sends_each_domain_its_own_way() {
    let sink = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let maildir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(
        &GatewayConfig {
            accept_domains: vec![
                "example.test".into(),
                "lists.example.test".into(),
                "void.example.test".into(),
            ],
            plugins: vec![
                PluginEntry::new("router", "domain_router.wasm")
                    .config(r#"routes = { "example.test" = "internal", "lists.example.test" = "local", "void.example.test" = "discard" }"#),
            ],
            ..GatewayConfig::default()
        }
        .top("delivery", &format!("{{ local_maildir = {:?} }}", maildir.path()))
        // The static route would send example.test to a dead port: the plugin wins.
        .route("internal", &[], sink.addr())
        .route("unused", &["example.test"], "127.0.0.1:9".parse().unwrap()),
    );
    let mut client = SmtpClient::ehlo(gateway.addr());
    client
        .send_mail(
            "sender@example.org",
            &[
                "alice@example.test",
                "Bob@lists.example.test",
                "gone@void.example.test",
            ],
            &sample_message("routed", "three ways"),
        )
        .expect(250, "2.0.0");

    let received = sink.wait_for(1, Duration::from_secs(30));
    assert_eq!(received[0].rcpt_to, vec!["alice@example.test"]);

    let new_dir = maildir.path().join("bob@lists.example.test").join("new");
    let deadline = Instant::now() + Duration::from_secs(30);
    while files_in(&new_dir).is_empty() {
        assert!(
            Instant::now() < deadline,
            "nothing in {}:\n{}",
            new_dir.display(),
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let files = files_in(&new_dir);
    assert_eq!(files.len(), 1);
    let stored = std::fs::read_to_string(&files[0]).unwrap();
    assert!(
        stored.starts_with(
            "Return-Path: <sender@example.org>\r\nDelivered-To: Bob@lists.example.test\r\n"
        ),
        "{stored}"
    );
    assert!(stored.contains("Subject: routed"));
    assert!(files_in(&maildir.path().join("bob@lists.example.test").join("tmp")).is_empty());

    // The discarded recipient went nowhere, and the message is finished.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gateway.spool_list().is_empty() {
        assert!(
            Instant::now() < deadline,
            "spool never emptied:\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!maildir.path().join("gone@void.example.test").exists());
    assert_eq!(sink.received().len(), 1);
}
