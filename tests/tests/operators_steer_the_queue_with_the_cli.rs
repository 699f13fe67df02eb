//! Operations through the admin API and the CLI on top of it, against a running gateway
//! holding delivered, deferred, held and quarantined mail: each command's effect is
//! checked where it shows, at the next hop, not only in its reply. The token is required
//! on every mutating endpoint (401, counted), a held destination keeps its mail across a
//! restart, `/readyz` flips while draining, and a command against a gateway that is not
//! running fails with a clear message.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, binary, sample_message};

const TOKEN: &str = "ops 0123456789abcdef0123456789abcdef";

fn config(good: &SinkServer, flaky: &SinkServer, token_file: &Path) -> GatewayConfig {
    let events = token_file.with_file_name("events.jsonl");
    GatewayConfig {
        accept_domains: vec!["good.test".into(), "flaky.test".into(), "held.test".into()],
        top: vec![
            ("drain_delay".into(), r#""3s""#.into()),
            (
                "admin".into(),
                format!(r#"{{ address = "127.0.0.1:0", token_file = {token_file:?} }}"#),
            ),
            (
                "events".into(),
                format!(r#"[{{ kind = "file", path = {events:?} }}]"#),
            ),
        ],
        plugins: vec![PluginEntry::quarantine_on_subject("quarantine me")],
        ..GatewayConfig::default()
    }
    .queue("retry_intervals", r#"["1h"]"#)
    .route("good", &["good.test", "held.test"], good.addr())
    .route("flaky", &["flaky.test"], flaky.addr())
}

fn send(gateway: &Gateway, to: &str, subject: &str) -> String {
    let mut client = SmtpClient::ehlo(gateway.addr());
    let reply = client.send_mail("sender@good.test", &[to], &sample_message(subject, "x"));
    reply.expect(250, "2.0.0");
    reply.queue_id().expect("queue id")
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

fn subjects(sink: &SinkServer) -> Vec<String> {
    sink.received()
        .iter()
        .filter_map(|m| {
            m.text()
                .lines()
                .find_map(|l| l.strip_prefix("Subject: ").map(str::to_owned))
        })
        .collect()
}

/// An HTTP request to the admin API; (status code, body).
fn http(
    gateway: &Gateway,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(gateway.admin_addr()).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (code, body)
}

#[test]
fn an_operator_steers_deferred_held_and_quarantined_mail() {
    let good = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let flaky = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default().tempfail_rcpt("bob@flaky.test"),
    );
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let mut gateway = Gateway::start_with(&config(&good, &flaky, &token_file));

    // Delivered, deferred, held (by destination, before the mail came) and quarantined.
    assert!(
        gateway
            .cli_ok(&["queue", "hold", "--domain", "held.test"])
            .contains("held")
    );
    send(&gateway, "alice@good.test", "delivered");
    let deferred = send(&gateway, "bob@flaky.test", "deferred");
    let held = send(&gateway, "carol@held.test", "held");
    let quarantined = send(&gateway, "dave@good.test", "quarantine me");
    let unwanted = send(&gateway, "dave@good.test", "quarantine me too");
    good.wait_for(1, Duration::from_secs(30));
    wait_until("the deferral", &gateway, || {
        gateway.cli_json(&["queue", "summary"])["messages"]["deferred"] == 1
    });
    wait_until("the hold", &gateway, || {
        gateway.cli_json(&["queue", "summary"])["messages"]["held"] == 1
    });

    let summary = gateway.cli_json(&["queue", "summary"]);
    assert_eq!(summary["quarantined"], 2, "{summary}");
    let destinations = summary["destinations"].as_array().unwrap();
    let flaky_line = destinations
        .iter()
        .find(|d| d["domain"] == "flaky.test")
        .unwrap();
    assert_eq!(flaky_line["messages"]["deferred"], 1, "{summary}");
    assert!(
        flaky_line["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("450"),
        "{summary}"
    );
    let held_line = destinations
        .iter()
        .find(|d| d["domain"] == "held.test")
        .unwrap();
    assert_eq!(held_line["held"], true, "{summary}");
    let table = gateway.cli_ok(&["queue", "summary"]);
    assert!(
        table.contains("DESTINATION") && table.contains("flaky.test"),
        "{table}"
    );

    // The same figures for Prometheus, and what the attempts did.
    let metrics = gateway.admin_get("/metrics").1;
    for line in [
        "tidegate_queue_messages{state=\"deferred\"} 1",
        "tidegate_queue_messages{state=\"held\"} 1",
        "tidegate_queue_messages{state=\"quarantined\"} 2",
        "tidegate_queue_destination_messages{destination=\"flaky.test\"} 1",
        "tidegate_delivery_attempts_total{outcome=\"delivered\",class=\"smarthost\"} 1",
        "tidegate_delivery_attempts_total{outcome=\"deferred\",class=\"smarthost\"} 1",
        "tidegate_delivery_latency_seconds_count 1",
    ] {
        assert!(metrics.contains(line), "no {line} in\n{metrics}");
    }

    let list = gateway.cli_json(&["queue", "list", "--state", "deferred"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list[0]["id"], deferred.as_str());
    let by_sender = gateway.cli_json(&["queue", "list", "--sender", "sender@good.test"]);
    assert_eq!(by_sender.as_array().unwrap().len(), 2, "{by_sender}");
    let shown = gateway.cli_json(&["queue", "show", &deferred]);
    assert_eq!(shown["recipients"][0]["address"], "bob@flaky.test");
    assert_eq!(shown["recipients"][0]["state"], "pending");
    assert_eq!(shown["recipients"][0]["attempts"], 1);
    assert!(
        shown["recipients"][0]["next_attempt"].as_u64().is_some(),
        "{shown}"
    );
    assert!(
        gateway
            .cli_ok(&["queue", "show", &deferred])
            .contains("bob@flaky.test")
    );

    // Retry now: the flaky next hop is asked again at once (its retry was an hour away).
    let asked = |sink: &SinkServer| {
        sink.transcript()
            .iter()
            .filter(|l| l.as_str() == "RCPT TO:<bob@flaky.test>")
            .count()
    };
    assert_eq!(asked(&flaky), 1);
    gateway.cli_ok(&["queue", "retry", &deferred]);
    wait_until("the retry", &gateway, || asked(&flaky) == 2);

    // Releasing the destination delivers what it kept.
    gateway.cli_ok(&["queue", "release", "--domain", "held.test"]);
    wait_until("the held message", &gateway, || {
        subjects(&good).contains(&"held".to_owned())
    });
    let _ = held;

    // The quarantine: listed, shown, released into delivery as it would have gone.
    let listed = gateway.cli_json(&["quarantine", "list"]);
    assert_eq!(listed[0]["id"], quarantined.as_str(), "{listed}");
    gateway.cli_ok(&["quarantine", "delete", &unwanted]);
    let listed = gateway.cli_json(&["quarantine", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert!(
        !gateway
            .spool_dir()
            .join("quarantine")
            .join(&unwanted)
            .exists()
    );
    assert!(listed[0]["reason"].as_str().unwrap().contains("suspicious"));
    let shown = gateway.cli_json(&["quarantine", "show", &quarantined]);
    assert_eq!(shown["state"], "quarantined");
    gateway.cli_ok(&["quarantine", "release", &quarantined]);
    wait_until("the released quarantine", &gateway, || {
        subjects(&good).contains(&"quarantine me".to_owned())
    });
    let released = good
        .received()
        .into_iter()
        .find(|m| m.text().contains("Subject: quarantine me"))
        .unwrap();
    assert!(
        released.text().contains("X-Tidegate-Score: 6.0"),
        "edits kept"
    );

    // Delete with a DSN: the sender hears of it, the flaky hop is not asked again.
    gateway.cli_ok(&["queue", "delete", &deferred, "--bounce"]);
    wait_until("the DSN", &gateway, || {
        good.received()
            .iter()
            .any(|m| m.mail_from.is_empty() && m.text().contains("deleted by the operator"))
    });
    assert!(
        gateway
            .cli_json(&["queue", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    let fail = gateway.cli(&["queue", "show", &deferred]);
    assert!(!fail.status.success());
    assert!(String::from_utf8_lossy(&fail.stderr).contains("no message"));

    // Every mutating endpoint wants the token; each refusal is counted.
    for (method, path) in [
        ("POST", "/v1/queue/retry"),
        ("POST", "/v1/queue/hold"),
        ("POST", "/v1/queue/release"),
        ("POST", "/v1/queue/delete"),
        ("POST", "/v1/reload"),
        ("PUT", "/v1/log-level"),
        ("POST", &format!("/v1/quarantine/{quarantined}/release")),
        ("DELETE", &format!("/v1/quarantine/{quarantined}")),
        ("GET", "/v1/queue/summary"),
    ] {
        let (code, _) = http(&gateway, method, path, None, r#"{"all":true}"#);
        assert_eq!(code, 401, "{method} {path} without a token");
        let (code, _) = http(
            &gateway,
            method,
            path,
            Some("0123456789abcdef0123456789abcdeX"),
            r#"{"all":true}"#,
        );
        assert_eq!(code, 401, "{method} {path} with a wrong token");
    }
    assert!(
        gateway
            .admin_get("/metrics")
            .1
            .contains("tidegate_admin_unauthorized_total 18"),
        "{}",
        gateway.admin_get("/metrics").1
    );
    assert!(
        gateway.log().contains("by=ops"),
        "changes are logged with who asked"
    );

    // The whole queue held, across a restart; released, it delivers.
    gateway.cli_ok(&["queue", "hold", "--all"]);
    send(&gateway, "erin@good.test", "while held");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!subjects(&good).contains(&"while held".to_owned()));
    gateway.signal(libc::SIGTERM);
    gateway.wait_exit();
    gateway.restart(1);
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        !subjects(&good).contains(&"while held".to_owned()),
        "a restart released it"
    );
    assert!(gateway.cli_json(&["queue", "summary"])["holds"]["all"] == true);
    gateway.cli_ok(&["queue", "release", "--all"]);
    wait_until("the release", &gateway, || {
        subjects(&good).contains(&"while held".to_owned())
    });

    // Plugins (counted since this start), log level, reload.
    send(&gateway, "frank@good.test", "after the restart");
    let plugins = gateway.cli_json(&["plugins"]);
    assert_eq!(plugins[0]["name"], "content");
    assert!(plugins[0]["calls"].as_u64().unwrap() > 0, "{plugins}");
    assert_eq!(plugins[0]["hash"].as_str().unwrap().len(), 64);
    gateway.cli_ok(&["log-level", "debug"]);
    assert!(gateway.log().contains("log level changed"));
    let bad = gateway.cli(&["log-level", "no such level=="]);
    assert!(!bad.status.success());
    let reload = gateway.cli_json(&["reload"]);
    assert!(reload["failed"].is_null(), "{reload}");

    // Draining: not ready while the listener still accepts, for drain_delay.
    assert_eq!(gateway.admin_get("/readyz").0, "HTTP/1.1 200 OK");
    gateway.signal(libc::SIGTERM);
    wait_until("not ready", &gateway, || {
        gateway.admin_get("/readyz").0.contains("503")
    });
    assert!(gateway.admin_get("/readyz").1.contains("draining"));
    let mut client = SmtpClient::ehlo(gateway.addr());
    client.command("NOOP").expect(250, "2.0.0");
    drop(client);
    gateway.wait_exit();

    // Nobody home.
    let down = std::process::Command::new(binary())
        .args(["queue", "summary", "-c"])
        .arg(gateway.config_path())
        .args(["--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!down.status.success());
    assert!(
        String::from_utf8_lossy(&down.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
}
