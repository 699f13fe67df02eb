//! A listener with `record` writes its sessions' plugin calls (the shipped `dnsbl` plugin
//! asking a real dnsmasq) to JSON lines, and `tidegate replay` runs them again offline:
//! the same plugin and configuration give no diff and exit 0, even with the DNS server
//! gone (the answers come from the recording); a changed configuration gives the expected
//! diff and exits 1. A records directory stays within its files as it rotates by size.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tidegate_e2e::{
    DnsServer, Gateway, GatewayConfig, PluginEntry, SmtpClient, binary, plugin_dist, sample_message,
};

const LISTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const UNLISTED: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));

fn recording_gateway(dns: &DnsServer, record: &str) -> Gateway {
    let config = GatewayConfig {
        plugins: vec![
            PluginEntry::new("dnsbl", "dnsbl.wasm")
                .config(r#"zones = ["bl.example.test"]"#)
                .config("check_private = true"),
        ],
        top: vec![("admin".into(), r#"{ address = "127.0.0.1:0" }"#.into())],
        ..GatewayConfig::default()
    }
    .dns(dns.addr(), 2000);
    let text = config.render().replacen(
        "verify = []\n",
        &format!("verify = []\nrecord = {record}\n"),
        1,
    );
    assert!(text.contains("record = "), "no listener to record:\n{text}");
    Gateway::start_with_text(&text, 1)
}

/// The session lines of every records file, waiting until there are `count`.
fn records(dir: &Path, count: usize) -> Vec<serde_json::Value> {
    let started = Instant::now();
    loop {
        let mut lines = Vec::new();
        for file in files(dir) {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            lines.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("a JSON line")),
            );
        }
        if lines.len() >= count || started.elapsed() > Duration::from_secs(10) {
            assert_eq!(lines.len(), count, "session records in {}", dir.display());
            return lines;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|e| e == "jsonl"));
    files.sort();
    files
}

fn replay(records: &Path, config: &serde_json::Value, json: bool) -> Output {
    let dir = records.parent().expect("a parent");
    let config_file = dir.join("replay-config.json");
    std::fs::write(&config_file, config.to_string()).expect("write the config");
    let mut command = Command::new(binary());
    command
        .arg("replay")
        .arg("--plugin")
        .arg(plugin_dist().join("dnsbl.wasm"))
        .arg("--config")
        .arg(&config_file)
        .arg("--records")
        .arg(records)
        .args(["--as", "dnsbl"]);
    if json {
        command.arg("--json");
    }
    command.output().expect("run tidegate replay")
}

#[test]
fn recorded_sessions_replay_with_no_diff_and_a_changed_policy_shows_its_diff() {
    let dns = DnsServer::start(
        &["bl.example.test"],
        &[("2.0.0.127.bl.example.test", "127.0.0.2")],
    );
    let gateway = recording_gateway(&dns, r#"{ path = "records", body_bytes = 64 }"#);

    let listed = SmtpClient::connect_from(LISTED, gateway.addr());
    listed.greeting.expect(554, "5.7.1");
    let mut unlisted = SmtpClient::connect_from(UNLISTED, gateway.addr());
    assert_eq!(unlisted.greeting.code, 220, "{:?}", unlisted.greeting);
    unlisted.command("EHLO client.example.org");
    unlisted
        .send_mail(
            "alice@example.org",
            &["bob@example.test"],
            &sample_message("recorded", &"a long body line\r\n".repeat(20)),
        )
        .expect(250, "2.0.0");
    unlisted.command("QUIT");
    drop(unlisted);

    let dir = gateway.dir().join("records");
    let sessions = records(&dir, 2);
    for session in &sessions {
        assert_eq!(session["version"], 1, "{session}");
        assert_eq!(session["listener"], "mx", "{session}");
        assert_eq!(session["calls"][0]["plugin"], "dnsbl", "{session}");
        assert!(
            session["calls"][0]["input"]["connect"].is_object(),
            "{session}"
        );
    }
    let text = serde_json::to_string(&sessions).unwrap();
    assert!(
        text.contains(r#""name":"2.0.0.127.bl.example.test""#)
            && text.contains(r#""name":"1.0.0.127.bl.example.test""#),
        "the DNS answers are not in the records: {text}"
    );
    let refused = sessions
        .iter()
        .find(|s| s["calls"][0]["session"]["client_ip"] == "127.0.0.2")
        .expect("the listed client's session");
    assert_eq!(
        refused["calls"][0]["outcome"]["answer"]["verdict"]["reject"]["code"], 554,
        "{refused}"
    );
    let metrics = gateway.admin_get("/metrics").1;
    assert!(
        metrics.contains("tidegate_records_written_total 2"),
        "records not counted:\n{metrics}"
    );

    // The blocklist goes away: a replay never asks it.
    drop(dns);
    let same = serde_json::json!({ "zones": ["bl.example.test"], "check_private": true });
    let output = replay(&dir, &same, false);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "replay of the same version differs: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("2 calls replayed: 2 same, 0 different, 0 answers not in the recording"),
        "{stdout}"
    );

    // The same plugin told to skip loopback clients no longer refuses the listed one.
    let changed = serde_json::json!({ "zones": ["bl.example.test"], "check_private": false });
    let output = replay(&dir, &changed, true);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    let differences = report["differences"].as_array().expect("differences");
    assert_eq!(differences.len(), 1, "{report}");
    assert_eq!(differences[0]["stage"], "on-connect", "{report}");
    assert_eq!(
        differences[0]["recorded"]["answer"]["verdict"]["reject"]["code"], 554,
        "{report}"
    );
    assert_eq!(
        differences[0]["replayed"]["answer"]["verdict"], "continue",
        "{report}"
    );
    let text = replay(&dir, &changed, false);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("- recorded: reject 554 5.7.1") && text.contains("+ replayed: continue"),
        "{text}"
    );
}

#[test]
fn a_records_directory_rotates_by_size_and_keeps_its_last_files() {
    let dns = DnsServer::start(&["bl.example.test"], &[]);
    let gateway = recording_gateway(
        &dns,
        r#"{ path = "records", max_file_bytes = 4096, keep_files = 2 }"#,
    );
    let dir = gateway.dir().join("records");
    for _ in 0..20 {
        let mut client = SmtpClient::connect_from(UNLISTED, gateway.addr());
        assert_eq!(client.greeting.code, 220, "{:?}", client.greeting);
        client.command("QUIT");
    }
    let started = Instant::now();
    while !gateway
        .admin_get("/metrics")
        .1
        .contains("tidegate_records_written_total 20")
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "20 records not written"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let files = files(&dir);
    assert_eq!(files.len(), 2, "{files:?}");
    for file in &files {
        let size = std::fs::metadata(file).expect("a records file").len();
        assert!(size <= 4096, "{} is {size} bytes", file.display());
    }
}

fn users_line(user: &str, password: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(binary())
        .args(["hash-password", "--user", user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run hash-password");
    writeln!(child.stdin.take().expect("stdin"), "{password}").expect("write the password");
    let output = child.wait_with_output().expect("hash-password");
    assert!(output.status.success());
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// `AUTH PLAIN` initial response: base64 of NUL user NUL password.
fn plain(user: &str, password: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let raw = format!("\0{user}\0{password}");
    let mut out = String::new();
    for chunk in raw.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn replay_plugin(
    records: &Path,
    file: &str,
    name: &str,
    config: &serde_json::Value,
) -> (Option<i32>, String) {
    let config_file = records
        .parent()
        .expect("a parent")
        .join(format!("{name}.json"));
    std::fs::write(&config_file, config.to_string()).expect("write the config");
    let output = Command::new(binary())
        .arg("replay")
        .arg("--plugin")
        .arg(plugin_dist().join(file))
        .arg("--config")
        .arg(&config_file)
        .arg("--records")
        .arg(records)
        .args(["--as", name])
        .output()
        .expect("run tidegate replay");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn kv_answers_are_replayed_and_no_password_is_recorded() {
    const PASSWORD: &str = "s3cret-pass-phrase";
    let dir = tempfile::tempdir().expect("a temp dir");
    let users = dir.path().join("users.txt");
    std::fs::write(&users, users_line("alice@example.test", PASSWORD)).expect("users file");
    let config = GatewayConfig {
        plugins: vec![
            PluginEntry::new("auth-check", "test_plugin.wasm").config(r#"mode = "auth""#),
            PluginEntry::new("rate-limit", "rate_limit.wasm")
                .config(r#"per_ip = { limit = 2, window = "1m" }"#),
        ],
        ..GatewayConfig::default()
    };
    let mut text = config.render().replacen(
        "verify = []\n",
        "verify = []\nrecord = { path = \"records\", body_bytes = 16 }\n",
        1,
    );
    text.push_str(&format!(
        "\n[auth]\nusers_file = {:?}\nallow_plaintext = true\n",
        users.display().to_string()
    ));
    let gateway = Gateway::start_with_text(&text, 1);

    let mut client = SmtpClient::connect(gateway.addr());
    client.command("EHLO client.example.org").expect_code(250);
    client
        .command(&format!(
            "AUTH PLAIN {}",
            plain("alice@example.test", PASSWORD)
        ))
        .expect(235, "2.7.0");
    let body = "a body line that is longer than sixteen octets\r\n".repeat(4);
    for _ in 0..2 {
        client
            .send_mail(
                "alice@example.test",
                &["bob@example.test"],
                &sample_message("counted", &body),
            )
            .expect(250, "2.0.0");
    }
    client
        .command("MAIL FROM:<alice@example.test>")
        .expect(250, "2.1.0");
    client
        .command("RCPT TO:<bob@example.test>")
        .expect(451, "4.7.1");
    client.command("QUIT");
    drop(client);

    let records_dir = gateway.dir().join("records");
    let session = records(&records_dir, 1).remove(0);
    let text = session.to_string();
    assert!(
        !text.contains(PASSWORD) && !text.contains(&plain("alice@example.test", PASSWORD)),
        "the password is in the record: {text}"
    );
    let calls = session["calls"].as_array().expect("calls");
    let auth = calls
        .iter()
        .find(|c| c["input"]["auth"].is_object())
        .expect("the on-auth call");
    assert_eq!(auth["input"]["auth"]["username"], "alice@example.test");
    assert!(auth["input"]["auth"].get("password").is_none(), "{auth}");
    let data = calls
        .iter()
        .find(|c| c["input"]["data"].is_object() && c["plugin"] == "rate-limit")
        .expect("an on-data call");
    assert_eq!(data["session"]["auth_identity"], "alice@example.test");
    assert_eq!(data["input"]["data"]["truncated"], true, "{data}");
    let kept = data["input"]["data"]["message"].as_str().expect("text");
    let size = data["input"]["data"]["size"].as_u64().expect("size");
    assert!(kept.ends_with(&body[..16]), "{kept:?}");
    assert!((kept.len() as u64) < size, "{kept:?} of {size}");
    assert!(
        text.contains(r#""call":"kv-incr""#) && text.contains(r#""call":"kv-get""#),
        "the KV answers are not in the record: {text}"
    );

    // The replay's own KV store is empty: only the recorded answers make the third
    // message's RCPT come out deferred again.
    let same = serde_json::json!({ "per_ip": { "limit": 2, "window": "1m" } });
    let (code, out) = replay_plugin(&records_dir, "rate_limit.wasm", "rate-limit", &same);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("0 different, 0 answers not in the recording"),
        "{out}"
    );
    // The same session recorded twice: a replay counting in a KV store of its own would
    // find the second one over the limit at its first message.
    let twice = dir.path().join("twice.jsonl");
    let line = session.to_string();
    std::fs::write(&twice, format!("{line}\n{line}\n")).expect("write twice.jsonl");
    let (code, out) = replay_plugin(&twice, "rate_limit.wasm", "rate-limit", &same);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("2 sessions, 12 calls replayed: 12 same"),
        "{out}"
    );
    let (code, out) = replay_plugin(
        &records_dir,
        "test_plugin.wasm",
        "auth-check",
        &serde_json::json!({ "mode": "auth" }),
    );
    assert_eq!(code, Some(0), "{out}");

    let raised = serde_json::json!({ "per_ip": { "limit": 5, "window": "1m" } });
    let (code, out) = replay_plugin(&records_dir, "rate_limit.wasm", "rate-limit", &raised);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("on-rcpt-to:\n  - recorded: tempfail 451 4.7.1")
            && out.contains("+ replayed: continue")
            && out.contains("1 different"),
        "{out}"
    );
}
