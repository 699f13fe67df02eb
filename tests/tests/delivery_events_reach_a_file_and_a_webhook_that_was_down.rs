//! Delivery events, one per fact, through the real gateway: received, refused, delivered,
//! deferred, bounced and quarantined, with their queue IDs, written to a JSON-lines file
//! and POSTed to a webhook that is down while the mail flows and comes up later: every
//! event arrives, signed (HMAC-SHA256 of the body with the shared secret), none lost.
//! With `[log] format = "json"` every log line is a JSON object, and the lines about a
//! message carry its queue ID.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tidegate_e2e::sink::{Behaviour, SinkServer};
use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, sample_message};

const SECRET: &str = "a shared webhook secret";

/// A webhook receiver: each POST's body, after its signature was checked.
struct Receiver {
    bodies: Arc<Mutex<Vec<String>>>,
    bad_signatures: Arc<Mutex<usize>>,
}

impl Receiver {
    fn start(listener: TcpListener) -> Receiver {
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let bad_signatures = Arc::new(Mutex::new(0));
        let (b, bad) = (Arc::clone(&bodies), Arc::clone(&bad_signatures));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let mut reader = BufReader::new(stream);
                let mut length = 0usize;
                let mut signature = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    if let Some((name, value)) = line.split_once(':') {
                        match name.to_ascii_lowercase().as_str() {
                            "content-length" => length = value.trim().parse().unwrap_or(0),
                            "x-tidegate-signature" => signature = value.trim().to_owned(),
                            _ => {}
                        }
                    }
                }
                let mut body = vec![0u8; length];
                if reader.read_exact(&mut body).is_err() {
                    continue;
                }
                let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
                mac.update(&body);
                let expected: String = mac
                    .finalize()
                    .into_bytes()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                if signature == format!("sha256={expected}") {
                    b.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                } else {
                    *bad.lock().unwrap() += 1;
                }
                let mut stream = reader.into_inner();
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        Receiver {
            bodies,
            bad_signatures,
        }
    }

    /// Every event received, by id.
    fn events(&self) -> BTreeMap<String, serde_json::Value> {
        let mut events = BTreeMap::new();
        for body in self.bodies.lock().unwrap().iter() {
            let batch: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
            for event in batch {
                events.insert(event["id"].as_str().unwrap().to_owned(), event);
            }
        }
        events
    }
}

fn file_events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn types(events: &[serde_json::Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_fact_reaches_the_file_and_the_webhook_that_comes_back() {
    let good = SinkServer::start("127.0.0.1:0".parse().unwrap(), Behaviour::default());
    let bad = SinkServer::start(
        "127.0.0.1:0".parse().unwrap(),
        Behaviour::default()
            .reject_rcpt("gone@bad.test", 550, "5.1.1")
            .tempfail_rcpt("later@bad.test"),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("events.jsonl");
    let secret = dir.path().join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let recipients = dir.path().join("recipients.txt");
    std::fs::write(&recipients, "@good.test\ngone@bad.test\nlater@bad.test\n").unwrap();
    // The webhook's port, with nobody listening on it yet.
    let port: SocketAddr = {
        let probe = TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let mut config = GatewayConfig {
        accept_domains: vec!["good.test".into(), "bad.test".into()],
        plugins: vec![PluginEntry::quarantine_on_subject("quarantine me")],
        ..GatewayConfig::default()
    }
    .deliver();
    config.routes.push(format!(
        r#"{{ name = "good", domains = ["good.test"], smarthost = "{}" }}"#,
        good.addr()
    ));
    config.routes.push(format!(
        r#"{{ name = "bad", domains = ["bad.test"], smarthost = "{}", recipients_file = {recipients:?} }}"#,
        bad.addr()
    ));
    let mut text = config.render();
    text.push_str(&format!(
        "\n[[events]]\nkind = \"file\"\npath = {file:?}\n\n[[events]]\nkind = \"webhook\"\nname = \"app\"\nurl = \"http://{port}/tidegate-events\"\nsecret_file = {secret:?}\nretry_min = \"200ms\"\nretry_max = \"1s\"\n\n[log]\nlevel = \"info\"\nformat = \"json\"\n"
    ));
    let gateway = Gateway::start_with_text(&text, 1);

    let mut client = SmtpClient::ehlo(gateway.addr());
    let delivered = client
        .send_mail(
            "sender@good.test",
            &["alice@good.test"],
            &sample_message("hello", "x"),
        )
        .queue_id()
        .unwrap();
    let bounced = client
        .send_mail(
            "sender@good.test",
            &["gone@bad.test"],
            &sample_message("bounce", "x"),
        )
        .queue_id()
        .unwrap();
    let deferred = client
        .send_mail(
            "sender@good.test",
            &["later@bad.test"],
            &sample_message("later", "x"),
        )
        .queue_id()
        .unwrap();
    let quarantined = client
        .send_mail(
            "sender@good.test",
            &["bob@good.test"],
            &sample_message("quarantine me", "x"),
        )
        .queue_id()
        .unwrap();
    client
        .command("MAIL FROM:<sender@good.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<stranger@bad.test>")
        .expect(550, "5.1.1");
    client.command("QUIT");

    let wanted: BTreeSet<String> = [
        "received",
        "refused",
        "delivered",
        "deferred",
        "bounced",
        "quarantined",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !wanted.is_subset(&types(&file_events(&file))) {
        assert!(
            Instant::now() < deadline,
            "events so far: {:?}\n{}",
            file_events(&file),
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let events = file_events(&file);
    let of = |kind: &str, id: &str| {
        events
            .iter()
            .find(|e| e["type"] == kind && e["queue_id"] == id)
            .unwrap_or_else(|| panic!("no {kind} event for {id}: {events:?}"))
    };
    let received = of("received", &delivered);
    assert_eq!(received["sender"], "sender@good.test");
    assert_eq!(received["recipients"][0], "alice@good.test");
    assert_eq!(received["message_id"], "<hello@example.org>");
    assert_eq!(of("delivered", &delivered)["recipient"], "alice@good.test");
    let bounce = of("bounced", &bounced);
    assert_eq!(bounce["enhanced"], "5.1.1", "{bounce}");
    assert!(bounce["reply"].as_str().unwrap().contains("550"));
    assert_eq!(of("deferred", &deferred)["attempt"], 1);
    assert!(
        of("quarantined", &quarantined)["reason"]
            .as_str()
            .unwrap()
            .contains("suspicious")
    );
    let refused = events.iter().find(|e| e["type"] == "refused").unwrap();
    assert_eq!(refused["stage"], "rcpt");
    assert_eq!(refused["code"], 550);
    assert_eq!(refused["recipient"], "stranger@bad.test");
    for event in &events {
        assert!(
            event["time"].as_str().is_some() && event["id"].as_str().is_some(),
            "{event}"
        );
    }

    // The webhook comes up: everything the file has arrives there too, signed.
    std::thread::sleep(Duration::from_secs(1));
    let receiver = Receiver::start(TcpListener::bind(port).unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let file_ids: BTreeSet<String> = file_events(&file)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect();
        let hook_ids: BTreeSet<String> = receiver.events().keys().cloned().collect();
        if file_ids.is_subset(&hook_ids) && !file_ids.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the webhook has {} of {} events\n{}",
            hook_ids.len(),
            file_ids.len(),
            gateway.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(*receiver.bad_signatures.lock().unwrap(), 0);

    // JSON logs: every line parses; the delivery lines name their queue ID.
    let log = gateway.log();
    let mut delivery_lines = 0;
    let mut accepted_quarantine = false;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if value["message"] == "message accepted" && value["queue_id"] == quarantined.as_str() {
            // The transaction's line says what each plugin decided.
            assert!(
                value["plugins"]
                    .as_str()
                    .is_some_and(|p| p.contains("content:on-data=quarantine")),
                "{line}"
            );
            accepted_quarantine = true;
        }
        if value["message"] == "delivery attempt" {
            assert!(value["queue_id"].as_str().is_some(), "{line}");
            delivery_lines += 1;
        }
    }
    assert!(delivery_lines >= 3, "{log}");
    assert!(accepted_quarantine, "{log}");
    assert!(log.contains("session ended"), "{log}");
}
