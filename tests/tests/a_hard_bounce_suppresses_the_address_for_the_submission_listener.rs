//! Bounces that teach: a recipient that bounces with "no such user" is classified
//! `bad-mailbox` (in the delivery event and the metrics), the shipped `suppression` plugin
//! lists it from on-delivery, and mail to it from the submission listener is refused at
//! RCPT with 550 5.1.1 while the MX listener still takes it; a feedback loop's ARF
//! complaint lists the recipient it names; the operator lists, adds and removes entries
//! with `tidegate suppression`.

use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

#[test]
fn a_hard_bounce_suppresses_the_address_for_the_submission_listener() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ops 0123456789abcdef0123456789abcdef\n").unwrap();
    let events = dir.path().join("events.jsonl");
    let next_hop = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().reject_rcpt("gone@remote.test", 550, "5.1.1"),
    );
    let config = GatewayConfig {
        listeners: vec![
            ("mx".into(), "127.0.0.1:0".into()),
            ("submission".into(), "127.0.0.1:0".into()),
        ],
        accept_domains: vec!["remote.test".into()],
        top: vec![
            (
                "admin".into(),
                format!(r#"{{ address = "127.0.0.1:0", token_file = {tokens:?} }}"#),
            ),
            (
                "events".into(),
                format!(r#"[{{ kind = "file", path = {events:?} }}]"#),
            ),
        ],
        plugins: vec![
            PluginEntry::new("suppression", "suppression.wasm")
                .config("listeners = [\"submission\"]")
                .config("complaint_addresses = [\"fbl@remote.test\"]"),
        ],
        ..GatewayConfig::default()
    }
    .route("remote", &["remote.test"], next_hop.addr());
    let gateway = Gateway::start_with(&config);
    let submission = gateway.addr_of("submission");

    let mut client = SmtpClient::ehlo(submission);
    client
        .send_mail(
            "app@remote.test",
            &["gone@remote.test", "here@remote.test"],
            &sample_message("newsletter", "x"),
        )
        .expect(250, "2.0.0");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = gateway.cli_json(&["suppression", "list"]);
        if listed.to_string().contains("s:gone@remote.test") {
            assert!(listed.to_string().contains("bounce 5.1.1"), "{listed}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never listed: {listed}\n{}",
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = std::fs::read_to_string(&events).unwrap();
    let bounced = text
        .lines()
        .find(|l| l.contains("\"bounced\"") && l.contains("gone@remote.test"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(bounced.contains("\"class\":\"bad-mailbox\""), "{bounced}");
    let (_, metrics) = gateway.admin_get("/metrics");
    assert!(
        metrics.contains(
            "tidegate_delivery_failures_total{outcome=\"bounced\",class=\"bad-mailbox\"} 1"
        ),
        "{metrics}"
    );

    // From the submission listener: refused. From the MX listener: taken.
    let mut client = SmtpClient::ehlo(submission);
    client
        .command("MAIL FROM:<app@remote.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<Gone@remote.test>")
        .expect(550, "5.1.1");
    client
        .command("RCPT TO:<here@remote.test>")
        .expect(250, "2.1.5");
    let mut mx = SmtpClient::ehlo(gateway.addr_of("mx"));
    mx.command("MAIL FROM:<someone@remote.test>")
        .expect(250, "2.1.0");
    mx.command("RCPT TO:<gone@remote.test>")
        .expect(250, "2.1.5");

    // The operator's hand: add one, remove the other.
    let out = gateway.cli_ok(&[
        "suppression",
        "add",
        "other@remote.test",
        "--reason",
        "asked to stop",
    ]);
    assert!(out.contains("suppressed"), "{out}");
    gateway.cli_ok(&["suppression", "remove", "gone@remote.test"]);
    let listed = gateway.cli_ok(&["suppression", "list"]);
    assert!(
        listed.contains("other@remote.test") && listed.contains("asked to stop"),
        "{listed}"
    );
    assert!(!listed.contains("gone@remote.test"), "{listed}");
    let mut client = SmtpClient::ehlo(submission);
    client
        .command("MAIL FROM:<app@remote.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<other@remote.test>")
        .expect(550, "5.1.1");
    client
        .command("RCPT TO:<gone@remote.test>")
        .expect(250, "2.1.5");
    // A feedback loop's complaint (an ARF report to the complaint address) lists the
    // recipient it names.
    let report = "From: fbl@isp.test\r\nTo: fbl@remote.test\r\nSubject: complaint\r\n\
        MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=feedback-report; boundary=\"b\"\r\n\r\n\
        --b\r\nContent-Type: text/plain\r\n\r\nA complaint.\r\n\
        --b\r\nContent-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n\
        Original-Rcpt-To: <angry@remote.test>\r\n\r\n--b--\r\n";
    let mut isp = SmtpClient::ehlo(gateway.addr_of("mx"));
    isp.send_mail("fbl@isp.test", &["fbl@remote.test"], report)
        .expect(250, "2.0.0");
    let listed = gateway.cli_ok(&["suppression", "list"]);
    assert!(
        listed.contains("angry@remote.test") && listed.contains("complaint"),
        "{listed}"
    );
    let mut client = SmtpClient::ehlo(submission);
    client
        .command("MAIL FROM:<app@remote.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<angry@remote.test>")
        .expect(550, "5.1.1");

    let refused = gateway.cli(&["suppression", "add", "not an address"]);
    assert!(!refused.status.success());
    let unknown = gateway.cli(&["kv", "list", "--plugin", "nobody"]);
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no plugin nobody"));
}
