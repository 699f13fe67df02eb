//! A new plugin version as a canary takes its share of new sessions in place of its
//! primary, by client address (one client always sees one version); a canary that traps
//! is rolled back automatically under a stream of sessions, failing no more sessions than
//! its policy allows; an operator can promote a canary with `tidegate plugins promote`; a
//! hot reload of a plugin with `reload_as_canary` enters as a canary of the running
//! version.
//! The versions are the test plugin under different `[plugin.config]` tables.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tidegate_e2e::{Gateway, GatewayConfig, PluginEntry, SmtpClient, binary};

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

fn client(third: u8, fourth: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, third, fourth))
}

/// One session from `from`: the reply to RCPT TO.
fn rcpt_from(gateway: &Gateway, from: IpAddr) -> (u16, String) {
    let mut client = SmtpClient::connect_from(from, gateway.addr());
    client.command("EHLO client.example.org").expect_code(250);
    client
        .command("MAIL FROM:<sender@example.org>")
        .expect(250, "2.1.0");
    let reply = client.command("RCPT TO:<user@example.test>");
    client.command("QUIT").expect_code(221);
    (reply.code, reply.text())
}

/// The canary's entry in `tidegate plugins --json`.
fn canary_status(gateway: &Gateway, name: &str) -> serde_json::Value {
    let plugins = gateway.cli_json(&["plugins"]);
    plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in {plugins:#}"))["canary"]
        .clone()
}

/// Waits until the canary has counted `sessions` sessions over both versions (a session
/// is counted as it ends, just after its last reply).
fn counted(gateway: &Gateway, name: &str, sessions: u64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = canary_status(gateway, name);
        let total = status["canary"]["sessions"].as_u64().unwrap()
            + status["primary"]["sessions"].as_u64().unwrap();
        if total >= sessions {
            return status;
        }
        assert!(Instant::now() < deadline, "{status:#}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_canary_takes_its_share_of_clients_and_each_client_keeps_its_version() {
    let secrets = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(&GatewayConfig {
        top: vec![admin(secrets.path())],
        plugins: vec![
            test_plugin("content", "reject"),
            // Refuses as much as its primary (so no rollback), in its own words.
            test_plugin("content-next", "reject")
                .setting(r#"mode = "canary""#)
                .setting(r#"canary_of = "content""#)
                .setting("canary = 0.3"),
        ],
        ..GatewayConfig::default()
    });
    const CLIENTS: u8 = 100;
    let mut first = Vec::new();
    for n in 0..CLIENTS {
        let (code, text) = rcpt_from(&gateway, client(1, 10 + n));
        assert_eq!(code, 550, "{text}");
        first.push(text);
    }
    let canaries = first
        .iter()
        .filter(|t| *t == "5.7.1 Rejected by content-next")
        .count();
    let primaries = first
        .iter()
        .filter(|t| *t == "5.7.1 Rejected by content")
        .count();
    assert_eq!(canaries + primaries, usize::from(CLIENTS), "{first:?}");
    // 30 % of 100 clients, within about 2.6 standard deviations.
    assert!(
        (18..=42).contains(&canaries),
        "{canaries} of 100 took the canary"
    );
    for n in 0..CLIENTS {
        let (_, text) = rcpt_from(&gateway, client(1, 10 + n));
        assert_eq!(text, first[usize::from(n)], "client {n} changed version");
    }
    let status = counted(&gateway, "content-next", 2 * u64::from(CLIENTS));
    assert_eq!(status["state"], "canary", "{status:#}");
    assert_eq!(status["canary"]["sessions"], 2 * canaries as u64);
    assert_eq!(status["canary"]["refusals"], 2 * canaries as u64);
    assert_eq!(status["primary"]["sessions"], 2 * primaries as u64);
    let listed = gateway.cli_ok(&["plugins"]);
    assert!(listed.contains("canary 30% of content"), "{listed}");
}

#[test]
fn a_trapping_canary_is_rolled_back_under_a_stream_of_sessions() {
    const MIN_SESSIONS: usize = 5;
    const THREADS: usize = 4;
    const PER_THREAD: u8 = 20;
    let secrets = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(&GatewayConfig {
        top: vec![admin(secrets.path())],
        plugins: vec![
            test_plugin("content", "tag"),
            test_plugin("content-next", "trap")
                .setting(r#"on_error = "tempfail""#)
                .setting(r#"mode = "canary""#)
                .setting(r#"canary_of = "content""#)
                .setting("canary = 0.5")
                .setting(&format!("canary_min_sessions = {MIN_SESSIONS}"))
                .setting("canary_max_fault_rate_margin = 0.1"),
        ],
        ..GatewayConfig::default()
    });
    let failed = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (gateway, failed) = (&gateway, &failed);
            scope.spawn(move || {
                for n in 0..PER_THREAD {
                    let from = client(2 + thread as u8, 10 + n);
                    match rcpt_from(gateway, from) {
                        (250, _) => {}
                        (451, _) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                        other => panic!("{from}: {other:?}"),
                    }
                }
            });
        }
    });
    let failed = failed.into_inner();
    // The policy allows the canary its minimum of sessions, plus the sessions already
    // running on it when it reached that minimum (at most one per other client thread).
    assert!(
        (MIN_SESSIONS..=MIN_SESSIONS + THREADS - 1).contains(&failed),
        "{failed} sessions failed\n{}",
        gateway.log()
    );
    let status = counted(
        &gateway,
        "content-next",
        (THREADS * PER_THREAD as usize) as u64,
    );
    assert_eq!(status["state"], "rolled back", "{status:#}");
    assert!(
        status["why"]
            .as_str()
            .unwrap()
            .starts_with("fault rate 100.0% against the primary's 0.0%"),
        "{status:#}"
    );
    assert_eq!(status["canary"]["faults"], failed as u64);
    assert!(gateway.log().contains("canary rolled back"));
    let listed = gateway.cli_ok(&["plugins"]);
    assert!(
        listed.contains("rolled back (fault rate 100.0%"),
        "{listed}"
    );
    let (_, metrics) = gateway.admin_get("/metrics");
    assert!(
        metrics.contains("tidegate_plugin_canary_rollbacks_total{plugin=\"content-next\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tidegate_plugin_canary_state{plugin=\"content-next\"} 1"),
        "{metrics}"
    );
    // Every client again, the canary's included: no session fails any more.
    for thread in 0..THREADS {
        for n in 0..PER_THREAD {
            let from = client(2 + thread as u8, 10 + n);
            assert_eq!(rcpt_from(&gateway, from).0, 250, "{from}");
        }
    }
}

#[test]
fn an_operator_promotes_a_canary_to_every_session() {
    let secrets = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(&GatewayConfig {
        top: vec![admin(secrets.path())],
        plugins: vec![
            test_plugin("content", "reject"),
            test_plugin("content-next", "reject")
                .setting(r#"mode = "canary""#)
                .setting(r#"canary_of = "content""#)
                .setting("canary = 0.05"),
        ],
        ..GatewayConfig::default()
    });
    let clients: Vec<IpAddr> = (10..30).map(|n| client(6, n)).collect();
    let before: Vec<String> = clients.iter().map(|c| rcpt_from(&gateway, *c).1).collect();
    assert!(
        before.iter().any(|t| t == "5.7.1 Rejected by content"),
        "{before:?}"
    );
    let said = gateway.cli_ok(&["plugins", "promote", "content-next"]);
    assert!(
        said.contains("content-next: promoted (by the operator)"),
        "{said}"
    );
    for client in &clients {
        assert_eq!(
            rcpt_from(&gateway, *client).1,
            "5.7.1 Rejected by content-next"
        );
    }
    let listed = gateway.cli_ok(&["plugins"]);
    assert!(
        listed.contains("promoted (by the operator) from content"),
        "{listed}"
    );
    // Promoting what is not a canary says so.
    let output = gateway.cli(&["plugins", "promote", "content"]);
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no canary is named `content`"),
        "{output:?}"
    );
}

#[test]
fn tidegate_check_refuses_a_canary_without_an_enforcing_primary_or_listed_in_a_chain() {
    let dir = tempfile::tempdir().unwrap();
    let check = |text: &str| {
        let path = dir.path().join("tidegate.toml");
        std::fs::write(&path, text).unwrap();
        let output = Command::new(binary())
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let base = GatewayConfig {
        plugins: vec![
            test_plugin("content", "reject"),
            test_plugin("content-next", "reject")
                .setting(r#"mode = "canary""#)
                .setting(r#"canary_of = "contnet""#)
                .setting("canary = 0.05"),
        ],
        ..GatewayConfig::default()
    }
    .render();
    let (ok, said) = check(&base);
    assert!(!ok);
    let line = base
        .lines()
        .position(|l| l == r#"canary_of = "contnet""#)
        .unwrap()
        + 1;
    assert!(
        said.contains(&format!(
            "tidegate.toml:{line}: plugin[1].canary_of: no enforcing [[plugin]] is named `contnet`"
        )),
        "{said}"
    );
    let listed = base.replace("contnet", "content").replace(
        "verify = []\n",
        "verify = []\nplugins = [\"content\", \"content-next\"]\n",
    );
    let (ok, said) = check(&listed);
    assert!(!ok);
    assert!(said.contains("listener[0].plugins"), "{said}");
    assert!(said.contains("leave it out of `plugins`"), "{said}");
    let (ok, said) = check(&listed.replace(", \"content-next\"]", "]"));
    assert!(ok, "{said}");
}

#[test]
fn a_hot_reload_enters_as_a_canary_and_a_trapping_new_version_is_rolled_back() {
    const MIN_SESSIONS: usize = 3;
    let secrets = tempfile::tempdir().unwrap();
    let gateway = Gateway::start_with(&GatewayConfig {
        top: vec![admin(secrets.path())],
        plugins: vec![
            test_plugin("content", "tag")
                .setting(r#"on_error = "tempfail""#)
                .setting("reload_as_canary = 0.5")
                .setting(&format!("canary_min_sessions = {MIN_SESSIONS}"))
                .setting("canary_max_fault_rate_margin = 0.1"),
        ],
        ..GatewayConfig::default()
    });
    let clients: Vec<IpAddr> = (10..50).map(|n| client(7, n)).collect();
    for from in &clients {
        assert_eq!(rcpt_from(&gateway, *from).0, 250);
    }
    // The new settings make the plugin trap at every RCPT TO.
    let text = std::fs::read_to_string(gateway.config_path()).unwrap();
    assert_eq!(text.matches(r#"mode = "tag""#).count(), 1);
    std::fs::write(
        gateway.config_path(),
        text.replace(r#"mode = "tag""#, r#"mode = "trap""#),
    )
    .unwrap();
    gateway.wait_for_log("plugin reloaded as a canary");
    let listed = gateway.cli_ok(&["plugins"]);
    assert!(
        listed.contains("enforce; its reload as canary 50%"),
        "{listed}"
    );
    let mut failed = 0;
    for from in &clients {
        match rcpt_from(&gateway, *from) {
            (250, _) => {}
            (451, _) => failed += 1,
            other => panic!("{from}: {other:?}"),
        }
    }
    // One session at a time: exactly its minimum of sessions failed, then it was rolled
    // back and the running version took every session.
    assert_eq!(failed, MIN_SESSIONS, "{}", gateway.log());
    let status = counted(&gateway, "content", clients.len() as u64);
    assert_eq!(status["state"], "rolled back", "{status:#}");
    assert_eq!(status["canary"]["sessions"], MIN_SESSIONS as u64);
    for from in &clients {
        assert_eq!(rcpt_from(&gateway, *from).0, 250, "{from}");
    }
    let listed = gateway.cli_ok(&["plugins"]);
    assert!(
        listed.contains("enforce; its reload rolled back (fault rate 100.0%"),
        "{listed}"
    );
}
