//! A node of a fleet dies with mail in its spool; `tidegate spool import` takes that spool
//! into a running node, which delivers what was left on the schedule it had, each
//! recipient once: recipients the
//! dead node had delivered are not delivered again, quarantined mail lands in the new
//! node's quarantine, a second import of a copy of the same spool (an operator trying
//! again) imports nothing, and a spool still in use by a running gateway is refused.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

fn node(sink: &SinkServer, token_file: &Path) -> GatewayConfig {
    GatewayConfig {
        accept_domains: vec!["fleet.test".into()],
        top: vec![(
            "admin".into(),
            format!(r#"{{ address = "127.0.0.1:0", token_file = {token_file:?} }}"#),
        )],
        plugins: vec![PluginEntry::quarantine_on_subject("quarantine me")],
        ..GatewayConfig::default()
    }
    .queue("retry_intervals", r#"["1h"]"#)
    .route("fleet", &["fleet.test"], sink.addr())
}

fn wait_until(what: &str, gateway: &Gateway, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(
            Instant::now() < deadline,
            "never: {what}\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

#[test]
fn a_dead_nodes_spool_is_delivered_by_another_node_each_recipient_once() {
    let work = tempfile::tempdir().unwrap();
    let token_file = work.path().join("tokens");
    std::fs::write(&token_file, "ops 0123456789abcdef0123456789abcdef\n").unwrap();

    // Node A delivers to `now@` and is told to try `later@` again later; then it dies.
    let sink_a = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().tempfail_rcpt("later@fleet.test"),
    );
    let mut a = Gateway::start_with(&node(&sink_a, &token_file));
    for i in 0..10 {
        let mut client = SmtpClient::ehlo(a.addr());
        client
            .send_mail(
                "sender@fleet.test",
                &["now@fleet.test", "later@fleet.test"],
                &sample_message(&format!("message {i}"), "x"),
            )
            .expect(250, "2.0.0");
    }
    for i in 0..2 {
        let mut client = SmtpClient::ehlo(a.addr());
        client
            .send_mail(
                "sender@fleet.test",
                &["now@fleet.test"],
                &sample_message(&format!("quarantine me {i}"), "x"),
            )
            .expect(250, "2.0.0");
    }
    sink_a.wait_for(10, Duration::from_secs(30));
    wait_until("A deferred every later@", &a, || {
        a.log().matches("outcome=Deferred").count() >= 10
    });
    a.kill9();
    let spool_a = a.spool_dir();
    assert_eq!(files(&spool_a.join("msg")), 10);
    assert_eq!(files(&spool_a.join("quarantine")), 2);
    // The operator's copy of the dead node's disk, taken before the import.
    let copy = work.path().join("copy-of-a");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(&spool_a)
        .arg(&copy)
        .status()
        .unwrap();
    assert!(copied.success());

    // Node B takes A's spool in.
    let sink_b = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let b = Gateway::start_with(&node(&sink_b, &token_file));
    let out = b.cli_ok(&["spool", "import", spool_a.to_str().unwrap()]);
    assert!(
        out.contains("imported 10 queued and 2 quarantined messages"),
        "{out}"
    );
    // Imported mail keeps its schedule (A's deferrals said "in an hour"), and nothing
    // is delivered before the operator says so.
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink_b.received().is_empty());
    let summary = b.cli_json(&["queue", "summary"]);
    assert_eq!(summary["messages"]["deferred"], 10, "{summary}");
    assert_eq!(summary["quarantined"], 2, "{summary}");
    b.cli_ok(&["queue", "retry", "--all"]);
    let delivered = sink_b.wait_for(10, Duration::from_secs(30));
    for message in &delivered {
        assert_eq!(
            message.rcpt_to,
            vec!["later@fleet.test".to_owned()],
            "{message:?}"
        );
    }
    let mut subjects: Vec<String> = delivered
        .iter()
        .filter_map(|m| {
            m.text()
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect();
    subjects.sort();
    let mut expected: Vec<String> = (0..10).map(|i| format!("message {i}")).collect();
    expected.sort();
    assert_eq!(subjects, expected);
    assert_eq!(files(&spool_a.join("msg")), 0);
    assert_eq!(files(&spool_a.join("quarantine")), 0);
    let quarantined = b.cli_json(&["quarantine", "list"]);
    assert_eq!(
        quarantined.as_array().map(Vec::len),
        Some(2),
        "{quarantined}"
    );

    // The copy holds the same messages: all recognised as imported already.
    let out = b.cli_ok(&["spool", "import", copy.to_str().unwrap()]);
    assert!(
        out.contains("imported 0 queued and 0 quarantined")
            && out.contains("12 were imported before"),
        "{out}"
    );
    assert_eq!(files(&copy.join("msg")), 0);
    b.cli_ok(&["queue", "retry", "--all"]);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        sink_b.received().len(),
        10,
        "a recipient was delivered twice"
    );
    assert_eq!(sink_a.received().len(), 10);

    // A spool in use is refused, and so is the node's own.
    a.restart(1);
    let refused = b.cli(&["spool", "import", spool_a.to_str().unwrap()]);
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("in use by a running gateway"), "{why}");
    let own = b.cli(&["spool", "import", b.spool_dir().to_str().unwrap()]);
    assert!(!own.status.success());
    let why = String::from_utf8_lossy(&own.stderr);
    assert!(why.contains("in use") || why.contains("own spool"), "{why}");
}
